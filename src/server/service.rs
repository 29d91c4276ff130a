//! The per-request service: operations endpoints (`/metrics`, `/healthz`, `/readyz`) and
//! everything else to the registry API, wrapped so each request is logged and counted.

use super::logged_body::{LoggedBody, RequestRecord};
use crate::metrics::Metrics;
use crate::registry::body;
use crate::registry::RegistryApi;
use http::{header, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<LoggedBody> {
        let started = Instant::now();
        let (parts, _body) = req.into_parts();
        let (response, route) = match (parts.method.as_str(), parts.uri.path()) {
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
                let (status, msg) = if self.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
                (text(status, "text/plain", msg.into()), "readyz")
            }
            _ => {
                let r = self.api.handle(&parts).await;
                (r.response, r.route)
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
