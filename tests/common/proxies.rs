//! Real outbound proxies on 127.0.0.1 for the upstream-reach tests: Debian's `squid` (HTTP
//! proxy) and `dante-server` (`danted`, SOCKS5), each started as a child process with its
//! own config in a temp dir, on a free loopback port, with an access log the tests read.
//!
//! Squid gets a `hosts_file` mapping [`PROXY_ONLY_HOST`] to 127.0.0.1: that name resolves
//! only inside squid, so an upstream URL using it is reachable through squid and nowhere
//! else.
#![allow(dead_code)]

use super::registry2::free_port;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SQUID_BIN: &str = "/usr/sbin/squid";
pub const DANTED_BIN: &str = "/usr/sbin/danted";
/// A host name only squid resolves (to 127.0.0.1).
pub const PROXY_ONLY_HOST: &str = "registry.behind-proxy.test";

/// A proxy child process; killed on drop.
pub struct ProxyProcess {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    what: &'static str,
}

impl ProxyProcess {
    /// `squid -N` with its access log in the temp dir. A squid that exits at start (its
    /// port taken between `free_port` and its bind, as can happen while other tests start
    /// servers) is started again on another port, up to three times.
    pub fn squid() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_squid() {
                Ok(p) => return p,
                Err(why) => last = why,
            }
        }
        panic!("squid did not start three times: {last}")
    }

    fn try_squid() -> Result<Self, String> {
        let dir = tempdir_open_to_all();
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("hosts"),
            format!("127.0.0.1 {PROXY_ONLY_HOST}\n"),
        )
        .expect("squid hosts file");
        let config = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log squid\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             cache deny all\n\
             hosts_file {d}/hosts\n\
             dns_nameservers 127.0.0.1\n\
             acl loopback src 127.0.0.0/8\n\
             http_access allow loopback\n\
             http_access deny all\n\
             coredump_dir {d}\n\
             pinger_enable off\n\
             netdb_filename none\n\
             shutdown_lifetime 0 seconds\n"
        );
        let conf = dir.path().join("squid.conf");
        std::fs::write(&conf, config).expect("squid.conf");
        let child = Command::new(SQUID_BIN)
            .arg("-N")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start squid (apt-get install squid)");
        let log = dir.path().join("access.log");
        Self::start_or_why(child, port, dir, log, "squid")
    }

    /// `danted` (SOCKS5, no authentication) logging every connection it passes.
    pub fn dante() -> Self {
        let dir = tempdir_open_to_all();
        let port = free_port();
        let log = dir.path().join("sockd.log");
        let config = format!(
            "logoutput: {log}\n\
             internal: 127.0.0.1 port = {port}\n\
             external: 127.0.0.1\n\
             clientmethod: none\n\
             socksmethod: none\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: error\n}}\n\
             socks pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n  log: connect\n}}\n",
            log = log.display()
        );
        let conf = dir.path().join("sockd.conf");
        std::fs::write(&conf, config).expect("sockd.conf");
        let child = Command::new(DANTED_BIN)
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path().join("sockd.pid"))
            // danted forks a process per client; its own group lets `stop` end them all.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start danted (apt-get install dante-server)");
        Self::start_or_why(child, port, dir, log, "danted").unwrap_or_else(|why| panic!("{why}"))
    }

    /// Waits until the proxy listens; `Err` (with the end of its log) when it exits first.
    fn start_or_why(
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
        log: PathBuf,
        what: &'static str,
    ) -> Result<Self, String> {
        let mut p = ProxyProcess {
            child: Some(child),
            port,
            dir,
            log,
            what,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                let log: String = ["cache.log", "sockd.log"]
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(p.dir.path().join(f)).ok())
                    .collect::<Vec<_>>()
                    .join("\n");
                let tail: String = log.lines().rev().take(8).collect::<Vec<_>>().join(" | ");
                return Err(format!("{what} exited at start ({status}): {tail}"));
            }
            assert!(Instant::now() < deadline, "{what} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The access log so far (empty when nothing was written yet).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the access log containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Kills the proxy (and, for danted, the processes it forked for open connections);
    /// connections to its port are refused from then on.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.what == "danted" {
                if let Ok(pid) = i32::try_from(c.id()) {
                    // SAFETY: kill(2) on the process group this test started.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            eprintln!("[{}] log:\n{}", self.what, self.log_text());
        }
        self.stop();
    }
}

/// A temp dir the proxies' unprivileged users can write their logs into (they drop root).
fn tempdir_open_to_all() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod tempdir");
    dir
}
