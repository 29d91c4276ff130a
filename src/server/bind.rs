//! Opening the listening sockets the way an admin's listen lists mean them. On Linux an
//! IPv6 wildcard socket (`[::]:5000`) also takes IPv4 on its port unless it is marked
//! IPv6-only, so `listen = ["0.0.0.0:5000", "[::]:5000"]` — what an admin writes for "IPv4
//! and IPv6" — would fail with "address in use" on the second socket. An IPv6 listener
//! whose port an IPv4 listener of the same lists also uses is therefore IPv6-only; an IPv6
//! listener alone keeps the system's dual-stack default (`[::]:5000` by itself serves both).
//!
//! Owns: socket options and binding. Must not: accept connections or know about HTTP.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Pending connections the kernel queues per listener (std's default).
const BACKLOG: i32 = 128;

/// Whether the IPv6 listener `addr` must be IPv6-only: some IPv4 listener in `all` uses its
/// port.
pub(super) fn needs_v6_only(addr: SocketAddr, all: &[SocketAddr]) -> bool {
    addr.is_ipv6() && all.iter().any(|a| a.is_ipv4() && a.port() == addr.port())
}

/// Binds `addr` (address reuse on, as std does; IPv6-only when `v6_only`), ready for a
/// tokio runtime.
pub(super) fn listen(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && v6_only {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn only_an_ipv6_listener_sharing_a_port_with_ipv4_is_v6_only() {
        let all = [a("0.0.0.0:5000"), a("[::]:5000"), a("[::]:443")];
        assert!(needs_v6_only(a("[::]:5000"), &all));
        assert!(
            !needs_v6_only(a("[::]:443"), &all),
            "alone on its port: dual stack"
        );
        assert!(
            !needs_v6_only(a("0.0.0.0:5000"), &all),
            "IPv4 is never v6-only"
        );
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_wildcards_on_one_port_both_bind() {
        // A free port: ask the kernel for one on the IPv4 wildcard, then add the IPv6 one.
        let v4 = listen(a("0.0.0.0:0"), false).expect("IPv4 wildcard");
        let port = v4.local_addr().expect("local addr").port();
        let v6_addr = SocketAddr::from(([0u16; 8], port));
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return; // no IPv6 on this machine: nothing to check
        }
        let v6 = listen(v6_addr, true).expect("the IPv6 wildcard binds beside the IPv4 one");
        assert_eq!(v6.local_addr().expect("local addr").port(), port);
        let dual = listen(v6_addr, false);
        assert!(
            dual.is_err(),
            "a dual-stack IPv6 socket collides with the IPv4 one (why v6-only is needed)"
        );
    }
}
