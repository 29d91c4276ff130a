//! Listeners and HTTP plumbing: plain HTTP and HTTPS (rustls, ALPN h2 + http/1.1) via
//! hyper-util's auto builder, certificate reload on SIGHUP (and the daemon's reload hook),
//! graceful shutdown on SIGTERM/SIGINT, per-request logging and metrics, and the
//! operations endpoints.
//!
//! Owns: sockets, TLS handshakes, connection lifetimes and signals; the connection cap,
//! header-read and idle timeouts, head-size limits (`[server]`), and turning away clients
//! outside `auth.allow_cidrs` before anything else (`access` decides and counts); the
//! operations endpoints (`/metrics`, `/healthz`, `/readyz`, the status page for
//! `auth.admin_cidrs` or an `admin` token); plain-HTTP connections send file-backed frames
//! with `sendfile(2)` (`sendfile.rs`); each accepted connection is served whole on one
//! per-core worker thread (`workers.rs`).
//!
//! Imports `registry` (every other request goes to [`crate::registry::RegistryApi`]) and
//! `access` (the network and admin checks). One import reaches past `registry`, on
//! purpose: the status page (`status.rs`) reads the cache's and the store's read-only
//! views (fills under way, upstream endpoints, store totals) through
//! [`crate::registry::RegistryApi::cache`], because that report is about those layers
//! and passing each view up through `registry` would only copy them.
//!
//! Must not: interpret registry paths (that is `registry`), decide access (that is
//! `access`), or change the cache or the store.

mod bind;
pub(crate) mod cert_expiry;
mod conn_table;
mod limits;
mod logged_body;
mod sendfile;
mod service;
pub mod status;
mod status_page;
pub mod tls;
mod workers;

pub use service::{App, ConnInfo, MAX_REQUEST_TARGET};

use crate::config::ServerConfig;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::{ReloadableCert, TlsError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers in one HTTP/1.1 request.
const MAX_HEADERS: usize = 100;
/// What a plain-HTTP client over `server.max_connections` is told before the close.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Connection limits from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
}

impl Limits {
    pub fn from_config(cfg: &ServerConfig) -> Self {
        Limits {
            max_connections: cfg.max_connections,
            header_read_timeout: cfg.header_read_timeout.get(),
            idle_timeout: cfg.idle_timeout.get(),
            max_header_size: cfg.max_header_size.get() as usize,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    Https,
}

impl ListenerKind {
    fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }
}

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<(ListenerKind, TcpListener)>,
    tls: Option<(Arc<ReloadableCert>, tokio_rustls::TlsAcceptor)>,
    app: Arc<App>,
    limits: Limits,
}

impl Server {
    /// Loads the certificate (if any HTTPS listener is configured) and binds every listener.
    pub async fn bind(cfg: &ServerConfig, app: Arc<App>) -> Result<Server, ServerError> {
        let tls = if cfg.tls_listen.is_empty() {
            None
        } else {
            let cert = Arc::new(ReloadableCert::load(&cfg.tls_cert, &cfg.tls_key)?);
            app.set_tls(cert.clone());
            warn_if_expiring(&app);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(cert.clone())?);
            Some((cert, acceptor))
        };
        let mut listeners = Vec::new();
        let all: Vec<(ListenerKind, SocketAddr)> = cfg
            .listen
            .iter()
            .map(|a| (ListenerKind::Http, *a))
            .chain(cfg.tls_listen.iter().map(|a| (ListenerKind::Https, *a)))
            .collect();
        let addrs: Vec<SocketAddr> = all.iter().map(|(_, a)| *a).collect();
        for (kind, addr) in all {
            let l = bind::listen(addr, bind::needs_v6_only(addr, &addrs))
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push((kind, l));
        }
        Ok(Server {
            listeners,
            tls,
            app,
            limits: Limits::from_config(cfg),
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(k, l)| l.local_addr().ok().map(|a| (*k, a)))
            .collect()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight
    /// connections finish for up to `grace`. Returns whether every connection finished.
    pub async fn serve(self, shutdown: impl Future<Output = ()>, grace: Duration) -> bool {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone of `alive_tx`; when all are gone, recv() ends.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let acceptor = self.tls.as_ref().map(|(_, a)| a.clone());
        let slots = conn_table::ConnTable::new(self.limits.max_connections);
        let mut accept_tasks = Vec::new();
        for (kind, listener) in self.listeners {
            let conn = ConnShared {
                app: self.app.clone(),
                limits: self.limits,
                slots: slots.clone(),
            };
            let acceptor = acceptor.clone();
            let stop_rx = stop_rx.clone();
            let alive_tx = alive_tx.clone();
            accept_tasks.push(tokio::spawn(accept_loop(
                kind, listener, acceptor, conn, stop_rx, alive_tx,
            )));
        }
        drop(alive_tx);
        shutdown.await;
        tracing::info!(grace = ?grace, open = self.app.metrics.connections_open.get(), "shutting down: no new connections, letting in-flight requests finish");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        match tokio::time::timeout(grace, alive_rx.recv()).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!("grace period over; closing the connections still open");
                false
            }
        }
    }
}

/// What every connection of every listener shares.
#[derive(Clone)]
struct ConnShared {
    app: Arc<App>,
    limits: Limits,
    /// The open connections (`server.max_connections`, see `conn_table`).
    slots: Arc<conn_table::ConnTable>,
}

async fn accept_loop(
    kind: ListenerKind,
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: ConnShared,
    mut stop_rx: watch::Receiver<bool>,
    alive_tx: mpsc::Sender<()>,
) {
    let app = shared.app.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop_rx.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if kind == ListenerKind::Https && !app.api.access().peer_allowed(peer.ip()) {
            // Outside auth.allow_cidrs: no TLS handshake is spent on it. (Plain HTTP
            // clients get a 403 answer at request time.) Access counted the refusal.
            tracing::debug!(client = %peer, "network not allowed; closed");
            continue;
        }
        let Some((slot, admission)) = shared.slots.admit(peer.ip()) else {
            // Over server.max_connections with no idle connection to take from an address
            // that holds more: say so (plain HTTP, best effort) and close.
            app.metrics
                .connections_rejected
                .with_label_values(&["limit"])
                .inc();
            if kind == ListenerKind::Http {
                let _ = stream.try_write(BUSY_RESPONSE);
            }
            tracing::debug!(client = %peer, "too many connections; closed");
            drop(stream);
            continue;
        };
        if admission == conn_table::Admission::MadeRoom {
            app.metrics
                .connections_rejected
                .with_label_values(&["room"])
                .inc();
            tracing::debug!(client = %peer, "at server.max_connections: closed an idle connection of the address holding the most for this one");
        }
        app.metrics
            .connections_total
            .with_label_values(&[kind.as_str()])
            .inc();
        let app = app.clone();
        let limits = shared.limits;
        let stop_rx = stop_rx.clone();
        let alive = alive_tx.clone();
        let acceptor = acceptor.clone();
        // The socket leaves this runtime's reactor for its worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "cannot hand the connection to a worker; closed");
                continue;
            }
        };
        workers::ConnWorkers::shared().spawn(async move {
            let slot = slot;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "cannot register the connection; closed");
                    drop(alive);
                    return;
                }
            };
            app.metrics.connections_open.inc();
            tracing::debug!(client = %peer, "connection accepted");
            // A client that connects and never sends a byte (no TLS hello, no request
            // line) is closed after header_read_timeout, like one whose head stalls.
            // (peek waits for a byte without taking it; readable() may wake at once.)
            // One told to make room for another address before its first byte closes too.
            let mut first = [0u8; 1];
            let silent = tokio::select! {
                r = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)) => r.is_err(),
                _ = slot.close.notified() => {
                    tracing::debug!(client = %peer, "closed before its first byte to make room for another address");
                    app.metrics.connections_open.dec();
                    drop(alive);
                    return;
                }
            };
            if silent {
                app.metrics
                    .connections_rejected
                    .with_label_values(&["silent"])
                    .inc();
                tracing::debug!(client = %peer, "nothing received within header_read_timeout; closed");
                app.metrics.connections_open.dec();
                drop(alive);
                return;
            }
            match (kind, acceptor) {
                (ListenerKind::Https, Some(acceptor)) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            serve_connection(
                                TokioIo::new(tls),
                                (peer, true),
                                &slot,
                                app.clone(),
                                limits,
                                stop_rx,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            app.metrics.tls_handshake_failures.inc();
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            app.metrics.tls_handshake_failures.inc();
                            tracing::debug!(client = %peer, "TLS handshake timed out");
                        }
                    }
                }
                _ => {
                    serve_connection(
                        TokioIo::new(sendfile::SendfileStream::new(stream)),
                        (peer, false),
                        &slot,
                        app.clone(),
                        limits,
                        stop_rx,
                    )
                    .await
                }
            }
            app.metrics.connections_open.dec();
            tracing::debug!(client = %peer, "connection closed");
            drop(alive);
        });
    }
}

async fn serve_connection<IO>(
    io: TokioIo<IO>,
    (peer, tls): (SocketAddr, bool),
    slot: &conn_table::ConnSlot,
    app: Arc<App>,
    limits: Limits,
    mut stop_rx: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = slot.activity.clone();
    let info = Arc::new(ConnInfo {
        peer,
        tls,
        activity: Some(activity.clone()),
    });
    let service = hyper::service::service_fn(move |req| {
        let (app, info) = (app.clone(), info.clone());
        async move { Ok::<_, std::convert::Infallible>(app.handle(req, &info).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(limits.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(limits.max_header_size as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => log_conn_end(peer, r),
        _ = stop_rx.changed() => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(peer, conn.await);
        }
        _ = slot.close.notified() => {
            // Told to make room for another address: only an idle connection is told, but
            // a request may have begun since; graceful shutdown lets it finish.
            tracing::debug!(client = %peer, "idle connection closed to make room for another address");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn.as_mut()).await;
        }
        _ = activity.idle(limits.idle_timeout) => {
            tracing::debug!(client = %peer, "idle connection closed");
            conn.as_mut().graceful_shutdown();
            // Nothing is in flight; a client that keeps the close from finishing is cut off.
            let _ = tokio::time::timeout(limits.header_read_timeout, conn.as_mut()).await;
        }
    }
}

fn log_conn_end(peer: SocketAddr, r: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = r {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}

/// Publishes when the served certificate expires (the `tls_cert_expiry_timestamp_seconds`
/// gauge, for alerts) and logs a warning when that is within [`status::CERT_WARN_DAYS`]
/// (at start, on every reload, and once a day).
pub(crate) fn warn_if_expiring(app: &App) {
    let status = app.cert_status();
    if let Some(c) = &status {
        app.metrics.tls_cert_expiry.set(c.not_after);
    }
    if let Some(w) = status.and_then(|c| c.warning()) {
        tracing::warn!(cert = %app.tls_cert_path().unwrap_or_default(), "{w}");
    }
}

/// Serves until SIGTERM or SIGINT, reloading the certificate on SIGHUP.
pub async fn serve_until_signalled(server: Server, grace: Duration) -> std::io::Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let reload_target = ReloadHandle {
        tls: server.tls.as_ref().map(|(c, _)| c.clone()),
        app: server.app.clone(),
    };
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let mut reloading = vec![sd_notify::NotifyState::Reloading];
                    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                        reloading.push(now);
                    }
                    notify_systemd(&reloading);
                    let status = reload_target.reload();
                    notify_systemd(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::Status(&status),
                    ]);
                }
                _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            }
        }
        notify_systemd(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping: finishing in-flight responses"),
        ]);
    };
    Ok(server.serve(shutdown, grace).await)
}

/// Tells systemd (`Type=notify`) about a state change; a no-op outside systemd.
pub fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

struct ReloadHandle {
    tls: Option<Arc<ReloadableCert>>,
    app: Arc<App>,
}

impl ReloadHandle {
    /// Reloads the certificate and what the daemon added (the policy); returns the
    /// `STATUS=` line for systemd.
    fn reload(&self) -> String {
        let cert = self.reload_cert();
        match self.app.reload_hook() {
            Some(more) => format!("{cert}; {more}"),
            None => cert,
        }
    }

    fn reload_cert(&self) -> String {
        let Some(cert) = &self.tls else {
            tracing::info!("SIGHUP received; no HTTPS listener, no certificate to reload");
            return "serving".into();
        };
        match cert.reload() {
            Ok(()) => {
                self.app
                    .metrics
                    .tls_reloads
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!("SIGHUP: certificate and key reloaded");
                warn_if_expiring(&self.app);
                "serving (certificate reloaded)".into()
            }
            Err(e) => {
                self.app
                    .metrics
                    .tls_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "SIGHUP: new certificate refused; still serving the previous one");
                format!("serving the previous certificate: the new one was refused: {e}")
            }
        }
    }
}
