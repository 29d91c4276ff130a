//! One HTTP exchange with an upstream, measured: send a request, count it in
//! `upstream_requests{upstream,kind,status}`, turn transport failures into
//! [`UpstreamError`]s, and read bodies with a byte bound while counting `upstream_bytes`.
//!
//! Must not: decide anything about auth, status meanings or registry paths; callers do.

use super::UpstreamError;
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use reqwest::header::{HeaderMap, CONTENT_LENGTH};
use std::sync::Arc;

/// What a request is for, as the `kind` label of `upstream_requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Manifest,
    Blob,
    Tags,
    Token,
    Ping,
    /// Upload sessions, chunks, mounts, manifest puts and deletes.
    Push,
}

impl RequestKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            RequestKind::Manifest => "manifest",
            RequestKind::Blob => "blob",
            RequestKind::Tags => "tags",
            RequestKind::Token => "token",
            RequestKind::Ping => "ping",
            RequestKind::Push => "push",
        }
    }
}

/// The metric handles of one upstream, with its name label applied where it can be.
#[derive(Clone)]
pub(crate) struct UpstreamMetrics {
    metrics: Arc<Metrics>,
    upstream: String,
    bytes: IntCounter,
}

impl UpstreamMetrics {
    pub(crate) fn new(metrics: Arc<Metrics>, upstream: &str) -> Self {
        let bytes = metrics.upstream_bytes.with_label_values(&[upstream]);
        UpstreamMetrics {
            metrics,
            upstream: upstream.to_string(),
            bytes,
        }
    }

    pub(crate) fn request(&self, kind: RequestKind, status: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[self.upstream.as_str(), kind.label(), status])
            .inc();
    }

    /// The time to the response head, and the answer, for the status page's upstream health.
    fn answered(&self, result: Result<u16, &str>, latency: std::time::Duration) {
        self.metrics
            .upstream_duration
            .with_label_values(&[self.upstream.as_str()])
            .observe(latency.as_secs_f64());
        self.metrics
            .activity
            .upstream_result(&self.upstream, result, latency);
    }

    pub(crate) fn token_fetch(&self, result: &str) {
        self.metrics
            .upstream_token_fetches
            .with_label_values(&[self.upstream.as_str(), result])
            .inc();
    }

    /// What the upstream last said about its pull quota (`/metrics`, the status page).
    pub(crate) fn quota(&self, q: &super::quota::Quota) {
        let m = &self.metrics;
        let up = [self.upstream.as_str()];
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.upstream_quota_remaining
            .with_label_values(&up)
            .set(gauge(q.remaining));
        if let Some(l) = q.limit {
            m.upstream_quota_limit.with_label_values(&up).set(gauge(l));
        }
        if let Some(w) = q.window_seconds {
            m.upstream_quota_window_seconds
                .with_label_values(&up)
                .set(gauge(w));
        }
        m.activity
            .upstream_quota(&self.upstream, q.remaining, q.limit, q.window_seconds);
    }

    /// One rate-limit wait before a retry.
    pub(crate) fn rate_limit_wait(&self) {
        self.metrics
            .upstream_rate_limit_waits
            .with_label_values(&[self.upstream.as_str()])
            .inc();
    }

    /// The `upstream_bytes` counter of this upstream (cheap to clone into body streams).
    pub(crate) fn bytes(&self) -> &IntCounter {
        &self.bytes
    }
}

/// Sends `request`, counting it under `kind` with the final status (after redirects) or
/// `error` when no response came.
pub(crate) async fn send(
    metrics: &UpstreamMetrics,
    kind: RequestKind,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, UpstreamError> {
    let started = std::time::Instant::now();
    // The chain of the client request this one serves, when there is one (else the
    // client's default `Via`: this edge's hop alone).
    let request = match crate::oci::hops::current()
        .and_then(|v| reqwest::header::HeaderValue::from_str(&v).ok())
    {
        Some(via) => request.header(reqwest::header::VIA, via),
        None => request,
    };
    match request.send().await {
        Ok(response) => {
            metrics.request(kind, response.status().as_str());
            if let Some(q) = super::quota::read(response.headers()) {
                metrics.quota(&q);
            }
            metrics.answered(Ok(response.status().as_u16()), started.elapsed());
            Ok(response)
        }
        Err(err) => {
            metrics.request(kind, "error");
            let error = UpstreamError::from_transport(&err);
            metrics.answered(Err(&error.to_string()), started.elapsed());
            tracing::debug!(kind = kind.label(), error = %error, "upstream request failed");
            Err(error)
        }
    }
}

/// Most bytes of an unused body [`discard`] reads, and how long it waits for them.
const DISCARD_LIMIT: usize = 64 * 1024;
const DISCARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the rest of a response that will not be used (a 401 before the retry with a
/// token, a 429 waited out), when it is short and arrives quickly, so that its HTTP/1.1
/// connection goes back to the pool: the retry then reuses it instead of paying a new TCP
/// (and TLS) handshake. A longer or slower body is dropped, and its connection with it.
pub(crate) async fn discard(mut response: reqwest::Response) {
    let drain = async {
        let mut left = DISCARD_LIMIT;
        while let Ok(Some(chunk)) = response.chunk().await {
            if chunk.len() > left {
                return;
            }
            left -= chunk.len();
        }
    };
    let _ = tokio::time::timeout(DISCARD_WAIT, drain).await;
}

/// `Content-Length`, when present and a number. (reqwest's own `content_length()` reports
/// the body it will yield, which is 0 for HEAD.)
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The whole body, refusing more than `limit` bytes (by `Content-Length` up front, or as
/// bytes arrive).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    bytes_counter: &IntCounter,
) -> Result<Bytes, UpstreamError> {
    if content_length(response.headers()).is_some_and(|len| len > limit as u64) {
        return Err(UpstreamError::TooLarge);
    }
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes_counter.inc_by(chunk.len() as u64);
                if body.len() + chunk.len() > limit {
                    return Err(UpstreamError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(err) => return Err(UpstreamError::from_body(&err)),
        }
    }
}
