//! A response body wrapper that counts the bytes sent and, when the body ends or is
//! dropped (client gone), writes the request's log line and records its metrics. This is
//! how one line per request carries the bytes actually sent and the full duration.
//!
//! Owns: that line and those per-request metrics. Must not: change the bytes it passes on.

use crate::audit::{AuditFile, AuditRecord, AuditSubject, RequestFacts};
use crate::metrics::activity::{unix_now, RecentError};
use crate::metrics::Metrics;
use crate::registry::body::ResponseBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the log line and metrics need to know about the request.
pub struct RequestRecord {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub route: &'static str,
    pub peer: SocketAddr,
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    /// The response's `Content-Length`, if it has one.
    pub content_length: Option<u64>,
    /// Keeps the connection from counting as idle until the body is done.
    pub in_flight: Option<super::limits::InFlight>,
    /// A manifest or blob request's audit record, to finish when the body ends.
    pub audit: Option<Audited>,
}

/// What the registry said of an audited request, and where its record goes besides the log.
pub struct Audited {
    pub subject: AuditSubject,
    pub user_agent: Option<String>,
    pub file: Option<Arc<AuditFile>>,
}

pub struct LoggedBody {
    inner: ResponseBody,
    record: RequestRecord,
    sent: u64,
    outcome: &'static str,
}

impl LoggedBody {
    pub fn new(inner: ResponseBody, record: RequestRecord) -> Self {
        LoggedBody {
            inner,
            record,
            sent: 0,
            outcome: "incomplete",
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.outcome = "aborted",
            Poll::Ready(None) => this.outcome = "complete",
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `method` label of `http_requests_total`: one of a closed set, so a client sending
/// made-up methods cannot grow `/metrics` (each label value is a series kept forever).
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A method as the status page's recent errors show it: at most 16 characters of it.
fn shown_method(method: &http::Method) -> String {
    method.as_str().chars().take(16).collect()
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let r = &self.record;
        let elapsed = r.started.elapsed();
        // hyper stops polling once Content-Length bytes are out (and never polls an empty
        // body), so "every announced byte sent" also means complete.
        let all_sent =
            r.content_length.is_some_and(|n| n == self.sent) || self.inner.is_end_stream();
        let outcome = if self.outcome == "incomplete" && all_sent {
            "complete"
        } else {
            self.outcome
        };
        let m = &r.metrics;
        m.http_requests
            .with_label_values(&[r.route, method_label(&r.method), itoa(r.status).as_str()])
            .inc();
        m.http_duration
            .with_label_values(&[r.route])
            .observe(elapsed.as_secs_f64());
        m.http_response_bytes
            .with_label_values(&[r.route])
            .inc_by(self.sent);
        if r.status >= 400 {
            m.activity.request_failed(RecentError {
                at: unix_now(),
                method: shown_method(&r.method),
                path: r.path.clone(),
                status: r.status,
                route: r.route.to_string(),
                client: r.peer.ip().to_string(),
            });
        }
        // A 5xx is the edge failing a client (the upstream down for content not cached, no
        // room, a bug): a warning, so `journalctl -p warning` shows it among the problems.
        let level = if r.status >= 500 {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        let ms = elapsed.as_secs_f64() * 1000.0;
        let audited = self.record.audit.take().map(|a| {
            let facts = RequestFacts {
                at: std::time::SystemTime::now(),
                client: self.record.peer.ip(),
                user_agent: a.user_agent.as_deref(),
                method: self.record.method.as_str(),
                status: self.record.status,
                bytes: self.sent,
                seconds: elapsed.as_secs_f64(),
                result: outcome,
            };
            (a.subject.into_record(&facts), a.file)
        });
        let r = &self.record;
        if let Some((a, _)) = audited.as_ref() {
            // Bytes served per `upstream/repo`, for the status page (none for an empty body).
            if r.status < 300 && self.sent > 0 {
                let repo = format!("{}/{}", a.upstream, a.repository);
                r.metrics.activity.served(&repo, self.sent);
            }
            if let (true, Some(cache)) = (r.status < 400, &a.cache) {
                r.metrics.count_saving(&a.upstream, cache, self.sent);
            }
        }
        // An audited request's line carries its audit record's fields too.
        access_line(
            level,
            r,
            self.sent,
            ms,
            outcome,
            audited.as_ref().map(|(a, _)| a),
        );
        if let Some((record, Some(file))) = audited {
            file.write(&record);
        }
    }
}

/// The request's log line (target `sparkcr_edge::access`); a manifest or blob request's
/// carries its audit record's fields too.
fn access_line(
    level: tracing::Level,
    r: &RequestRecord,
    sent: u64,
    ms: f64,
    outcome: &str,
    audit: Option<&AuditRecord>,
) {
    macro_rules! line {
        ($level:expr) => {
            match audit {
                None => tracing::event!(
                    target: "sparkcr_edge::access",
                    $level,
                    method = %r.method,
                    path = %r.path,
                    status = r.status,
                    bytes = sent,
                    ms = format_args!("{ms:.1}"),
                    client = %r.peer,
                    outcome,
                    "request"
                ),
                Some(a) => tracing::event!(
                    target: "sparkcr_edge::access",
                    $level,
                    method = %r.method,
                    path = %r.path,
                    status = r.status,
                    bytes = sent,
                    ms = format_args!("{ms:.1}"),
                    client = %r.peer,
                    outcome,
                    who = %a.who,
                    upstream = %a.upstream,
                    repository = %a.repository,
                    tag = %a.tag.as_deref().unwrap_or("-"),
                    digest = %a.digest.as_deref().unwrap_or("-"),
                    range = %a.range.as_deref().unwrap_or("-"),
                    cache = %a.cache.as_deref().unwrap_or("-"),
                    user_agent = a.user_agent.as_deref().unwrap_or("-"),
                    decision = a.decision.as_deref().unwrap_or("-"),
                    "request"
                ),
            }
        };
    }
    if level == tracing::Level::WARN {
        line!(tracing::Level::WARN);
    } else {
        line!(tracing::Level::INFO);
    }
}

fn itoa(n: u16) -> String {
    n.to_string()
}
