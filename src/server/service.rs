//! The per-request service: the client-network check first, a bound on the request
//! target's length, operations endpoints (`/metrics`, `/healthz`, `/readyz`) and everything
//! else to the registry API, wrapped so each request is logged and counted.

use super::limits::ConnActivity;
use super::logged_body::{LoggedBody, RequestRecord};
use crate::access::DenyReason;
use crate::metrics::Metrics;
use crate::registry::body;
use crate::registry::{error_response, ClientInfo, ErrorCode, OciError, RegistryApi};
use http::{header, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// What every connection shares: the API, the metrics, and readiness.
pub struct App {
    pub api: RegistryApi,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl App {
    pub fn new(api: RegistryApi, metrics: Arc<Metrics>) -> Self {
        App {
            api,
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    /// Listeners are up and the store is open.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<LoggedBody> {
        let started = Instant::now();
        let in_flight = conn.activity.as_ref().map(|a| a.begin());
        let peer = conn.peer;
        let (parts, _body) = req.into_parts();
        let head_only = parts.method == http::Method::HEAD;
        let target_len = parts.uri.path().len() + parts.uri.query().map_or(0, |q| q.len() + 1);
        let (response, route) = if !self.api.access().peer_allowed(peer.ip()) {
            // Before anything else: clients outside auth.allow_cidrs get nothing but this.
            self.api.access().count_denial(DenyReason::Network);
            let e = OciError::denied("this edge does not serve your network");
            (error_response(&e, head_only), "denied")
        } else if target_len > MAX_REQUEST_TARGET {
            let e = OciError::new(
                StatusCode::URI_TOO_LONG,
                ErrorCode::NameInvalid,
                format!("request target longer than {MAX_REQUEST_TARGET} bytes"),
            );
            (error_response(&e, head_only), "error")
        } else {
            match (parts.method.as_str(), parts.uri.path()) {
                ("GET" | "HEAD", "/metrics") => (
                    text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        self.metrics.render(),
                    ),
                    "metrics",
                ),
                ("GET" | "HEAD", "/healthz") => {
                    (text(StatusCode::OK, "text/plain", "ok\n".into()), "healthz")
                }
                ("GET" | "HEAD", "/readyz") => {
                    let (status, mut msg) = if self.is_ready() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
                    };
                    // A down endpoint does not make the edge unready (others, or the
                    // cache, still answer), but an operator looking here should see it.
                    for (upstream, endpoint) in self.api.endpoints_down() {
                        msg.push_str(&format!(
                            "upstream {upstream}: endpoint {endpoint} is down (skipped; probed in the background)\n"
                        ));
                    }
                    (text(status, "text/plain", msg), "readyz")
                }
                _ => {
                    let client = ClientInfo {
                        peer,
                        tls: conn.tls,
                    };
                    let r = self.api.handle(&parts, client).await;
                    (r.response, r.route)
                }
            }
        };
        let (head, body) = response.into_parts();
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
            path: parts.uri.path().chars().take(512).collect(),
            status: head.status.as_u16(),
            route,
            peer,
            started,
            metrics: self.metrics.clone(),
            in_flight,
        };
        Response::from_parts(head, LoggedBody::new(body, record))
    }
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
