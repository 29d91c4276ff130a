//! The per-request service: the client-network check first, a bound on the request
//! target's length, operations endpoints (`/metrics`, `/healthz`, `/readyz`, `/status` and
//! `/status.json`) and everything else to the registry API, wrapped so each request is
//! logged and counted.
//!
//! Owns: that order, and handing the registry the request's parts and body. Must not:
//! interpret registry paths (that is `registry`), or decide or count access (it asks
//! `access`, which counts its refusals).

use super::limits::ConnActivity;
use super::logged_body::{Audited, LoggedBody, RequestRecord};
use super::status::CertStatus;
use super::tls::ReloadableCert;
use crate::access::DenyReason;
use crate::audit::{AuditFile, AuditSubject};
use crate::metrics::activity::{unix_now, RecentDenial};
use crate::metrics::Metrics;
use crate::registry::body;
use crate::registry::{
    error_response, ClientInfo, ErrorCode, OciError, PolicyDenial, RegistryApi, UploadBody,
    RELEASE_PATH,
};
use http::{header, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest request target (path and query) accepted; names are at most 255 bytes, so a
/// longer one is never a registry request.
pub const MAX_REQUEST_TARGET: usize = 8 << 10;

/// The connection a request arrived on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Requests in flight, for the idle timeout.
    pub activity: Option<Arc<ConnActivity>>,
}

/// What every connection shares: the API, the metrics, readiness, and the served
/// certificate (for its expiry).
pub struct App {
    pub api: RegistryApi,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    tls: OnceLock<Arc<ReloadableCert>>,
    /// The audit trail's file (`[audit] path`), if one is set.
    audit: Option<Arc<AuditFile>>,
    /// What else SIGHUP reloads (the daemon's config-backed parts); returns its status.
    reload: OnceLock<ReloadHook>,
}

/// A reload the daemon adds to SIGHUP's certificate reload; returns its status in words.
pub type ReloadHook = Box<dyn Fn() -> String + Send + Sync>;

impl App {
    pub fn new(api: RegistryApi, metrics: Arc<Metrics>) -> Self {
        App {
            api,
            metrics,
            ready: AtomicBool::new(false),
            tls: OnceLock::new(),
            audit: None,
            reload: OnceLock::new(),
        }
    }

    /// Runs `hook` on every SIGHUP too (after the certificate); set once.
    pub fn on_reload(&self, hook: ReloadHook) {
        if self.reload.set(hook).is_err() {
            tracing::warn!("a reload hook was already set; keeping the first");
        }
    }

    /// Runs the reload hook, if one is set; its status.
    pub(super) fn reload_hook(&self) -> Option<String> {
        self.reload.get().map(|hook| hook())
    }

    /// Writes the audit trail's records to `file` too (they always go to the log).
    pub fn with_audit_file(mut self, file: Arc<AuditFile>) -> Self {
        self.audit = Some(file);
        self
    }

    /// The certificate the HTTPS listeners serve.
    pub fn set_tls(&self, cert: Arc<ReloadableCert>) {
        let _ = self.tls.set(cert);
    }

    /// The served certificate's file, when there is an HTTPS listener.
    pub fn tls_cert_path(&self) -> Option<String> {
        Some(self.tls.get()?.cert_path().display().to_string())
    }

    /// The served certificate's expiry, when there is an HTTPS listener.
    pub fn cert_status(&self) -> Option<CertStatus> {
        let not_after = self.tls.get()?.not_after()?;
        let now = unix_now() as i64;
        Some(CertStatus {
            not_after,
            days_left: (not_after - now).div_euclid(86_400),
        })
    }

    /// Listeners are up and the store is open.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<LoggedBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let started = Instant::now();
        let in_flight = conn.activity.as_ref().map(|a| a.begin());
        let peer = conn.peer;
        let (parts, request_body) = req.into_parts();
        let head_only = parts.method == http::Method::HEAD;
        let target_len = parts.uri.path().len() + parts.uri.query().map_or(0, |q| q.len() + 1);
        let (response, route) = if !self.api.access().peer_allowed(peer.ip()) {
            // Before anything else: clients outside auth.allow_cidrs get nothing but this
            // (access counted the refusal).
            let e = OciError::denied("this edge does not serve your network");
            (error_response(&e, head_only), "denied")
        } else if target_len > MAX_REQUEST_TARGET {
            let e = OciError::new(
                StatusCode::URI_TOO_LONG,
                ErrorCode::NameInvalid,
                format!("request target longer than {MAX_REQUEST_TARGET} bytes"),
            );
            (error_response(&e, head_only), "error")
        } else if let Some(wait) = self.operator_wait(&parts, peer) {
            // An operator endpoint asked too often from outside auth.admin_cidrs.
            let e = OciError::too_many_requests(wait);
            (error_response(&e, head_only), "ops-limited")
        } else {
            match (parts.method.as_str(), parts.uri.path()) {
                // Metrics name private upstreams and internal endpoints: admins only.
                ("GET" | "HEAD", "/metrics") => (
                    self.admin_refusal(&parts, peer, "/metrics")
                        .unwrap_or_else(|| {
                            text(
                                StatusCode::OK,
                                "text/plain; version=0.0.4",
                                self.metrics.render(),
                            )
                        }),
                    "metrics",
                ),
                ("GET" | "HEAD", "/healthz") => {
                    (text(StatusCode::OK, "text/plain", "ok\n".into()), "healthz")
                }
                ("GET" | "HEAD", "/readyz") => {
                    let (status, mut msg) = if self.is_ready() {
                        (StatusCode::OK, String::from("ready\n"))
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, String::from("not ready\n"))
                    };
                    // Still ready: warnings are for the operator, not the load balancer (a down
                    // endpoint: others, or the cache, still answer); they name upstreams and
                    // internal URLs, so only admins get them.
                    let details = self.api.access().is_admin(
                        peer.ip(),
                        parts
                            .headers
                            .get(header::AUTHORIZATION)
                            .map(|v| v.as_bytes()),
                    );
                    for (upstream, endpoint) in
                        self.api.endpoints_down().into_iter().filter(|_| details)
                    {
                        msg.push_str(&format!(
                            "upstream {upstream}: endpoint {endpoint} is down (skipped; probed in the background)\n"
                        ));
                    }
                    if let Some(w) = self.api.shared_tier_warning().filter(|_| details) {
                        msg.push_str(&format!("{w}\n"));
                    }
                    if let Some(w) = self
                        .cert_status()
                        .and_then(|c| c.warning())
                        .filter(|_| details)
                    {
                        msg.push_str(&format!("warning: {w}\n"));
                    }
                    (text(status, "text/plain", msg), "readyz")
                }
                ("GET" | "HEAD", "/status" | "/status.json") => {
                    (self.status(&parts, peer), "status")
                }
                ("POST", RELEASE_PATH) => {
                    let r = match self.admin_refusal(&parts, peer, "the admin API") {
                        Some(refused) => refused,
                        None => match read_small_body(request_body).await {
                            Ok(json) => self.api.release_from_cooldown(&json),
                            Err(e) => error_response(&e, false),
                        },
                    };
                    (r, "admin")
                }
                _ => {
                    let client = ClientInfo {
                        peer,
                        tls: conn.tls,
                    };
                    let r = self
                        .api
                        .handle(&parts, request_stream(request_body), client)
                        .await;
                    (r.response, r.route)
                }
            }
        };
        let (mut head, body) = response.into_parts();
        // No browser may guess a type from the bytes: a blob or manifest an upstream labelled
        // `text/html` must not run as a page on the edge's origin (the status page's).
        head.headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
        if let Some(d) = head.extensions.remove::<PolicyDenial>() {
            self.metrics
                .policy_refusals
                .with_label_values(&[d.check, &d.upstream, &d.block])
                .inc();
            self.metrics.activity.policy_denied(RecentDenial {
                at: unix_now(),
                client: peer.ip().to_string(),
                upstream: d.upstream,
                repository: d.repository,
                reference: d.reference,
                block: d.block,
                check: d.check.to_string(),
                message: d.message,
            });
        }
        let audit = head
            .extensions
            .remove::<AuditSubject>()
            .map(|subject| Audited {
                subject,
                user_agent: parts
                    .headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                file: self.audit.clone(),
            });
        let body = if parts.method == http::Method::HEAD && route != "blob" && route != "manifest" {
            body::empty()
        } else {
            body
        };
        let content_length = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .filter(|_| parts.method != http::Method::HEAD);
        let record = RequestRecord {
            content_length,
            method: parts.method,
            path: head_of(parts.uri.path(), MAX_LOGGED_PATH).to_string(),
            status: head.status.as_u16(),
            route,
            peer,
            started,
            metrics: self.metrics.clone(),
            in_flight,
            audit,
        };
        Response::from_parts(head, LoggedBody::new(body, record))
    }
}

impl App {
    /// How long a client must wait before asking an operator endpoint again, when it is
    /// over its quota (see [`crate::access::Access::operator_rate`]); `None` for every other
    /// request.
    fn operator_wait(&self, parts: &http::request::Parts, peer: SocketAddr) -> Option<Duration> {
        let operator = matches!(parts.method.as_str(), "GET" | "HEAD")
            && matches!(
                parts.uri.path(),
                "/metrics" | "/readyz" | "/status" | "/status.json"
            );
        if !operator {
            return None;
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        self.api
            .access()
            .operator_rate(peer.ip(), authorization)
            .err()
    }

    /// The 401 (with a Basic challenge) or 403 for a client that may not read `what` (an
    /// operator endpoint: for `auth.admin_cidrs` or an `admin` token); `None` for an admin.
    fn admin_refusal(
        &self,
        parts: &http::request::Parts,
        peer: SocketAddr,
        what: &str,
    ) -> Option<Response<body::ResponseBody>> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let reason = self
            .api
            .access()
            .admin_allowed(peer.ip(), authorization)
            .err()?;
        let mut r = text(
            if reason == DenyReason::NoCredentials {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            },
            "text/plain; charset=utf-8",
            format!("{what} is for auth.admin_cidrs or a token with the admin scope\n"),
        );
        if reason == DenyReason::NoCredentials {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"sparkcr-edge admin\""),
            );
        }
        Some(r)
    }

    /// `/status` (HTML) or `/status.json`, for `auth.admin_cidrs` or an `admin` token.
    fn status(
        &self,
        parts: &http::request::Parts,
        peer: SocketAddr,
    ) -> Response<body::ResponseBody> {
        if let Err(e) = self.api.check_host(parts) {
            return error_response(&e, parts.method == http::Method::HEAD);
        }
        if let Some(refused) = self.admin_refusal(parts, peer, "the status page") {
            return refused;
        }
        let report = self.status_report();
        let mut r = if parts.uri.path() == "/status.json" {
            let json = serde_json::to_string_pretty(&report)
                .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the status: {e}\"}}"));
            text(StatusCode::OK, "application/json", json)
        } else {
            let mut page = text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                super::status_page::render(&report),
            );
            page.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(super::status_page::CONTENT_SECURITY_POLICY),
            );
            page.headers_mut().insert(
                header::REFERRER_POLICY,
                header::HeaderValue::from_static("no-referrer"),
            );
            page
        };
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        r
    }
}

/// Bytes of a request path kept for the access log and the status page.
const MAX_LOGGED_PATH: usize = 512;

/// The first `max` bytes of `s`, cut back to a character boundary.
fn head_of(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A request body as the stream of bytes the push API reads (other routes never poll it).
/// The body of an admin action: JSON of at most [`MAX_ADMIN_BODY`] bytes.
async fn read_small_body<B>(body: B) -> Result<bytes::Bytes, OciError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let refuse = |why: String| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            format!("cannot read the request body (at most {MAX_ADMIN_BODY} bytes of JSON): {why}"),
        )
    };
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refuse(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_ADMIN_BODY {
                return Err(refuse("it is longer".into()));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(bytes::Bytes::from(buf))
}

/// The largest admin action body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

fn request_stream<B>(body: B) -> UploadBody
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    use futures_util::StreamExt;
    Box::pin(
        http_body_util::BodyDataStream::new(body)
            .map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
    )
}

fn text(status: StatusCode, content_type: &'static str, s: String) -> Response<body::ResponseBody> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::head_of;

    #[test]
    fn a_long_path_is_cut_at_a_character_boundary() {
        assert_eq!(head_of("/v2/a", 512), "/v2/a");
        assert_eq!(head_of("abcdef", 3), "abc");
        // 'é' is two bytes: a cut inside it moves back before it.
        assert_eq!(head_of("aé", 2), "a");
        assert_eq!(head_of("aé", 3), "aé");
    }
}
