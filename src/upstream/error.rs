//! What can go wrong talking to an upstream, and how the cache should read it.
//!
//! Owns: [`UpstreamError`]; turning a reqwest transport error into `Connect`, `Timeout`,
//! `Tls` or `Body` (by walking the error's source chain); turning a non-success HTTP
//! response into `NotFound`, `Unauthorized`, `RateLimited` (429, or 503 with
//! `Retry-After`) or `Status`, with the OCI error JSON body (read with a small bound) as
//! the message; `Retry-After` in both its forms (seconds, HTTP-date).
//!
//! Must not: put credentials or tokens in messages, or read unbounded error bodies, or put
//! a request's URL in a message (messages reach clients as error details: an internal
//! endpoint, a token realm's query or a CDN's signed URL is not theirs to see; the URL is
//! logged at debug level instead).

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use std::error::Error as StdError;
use std::time::Duration;

/// Most bytes of an error response body read for its message.
const ERROR_BODY_LIMIT: usize = 4 * 1024;
/// Longest message kept from an error body.
const ERROR_MESSAGE_LIMIT: usize = 300;
/// A `Retry-After` longer than this is capped (a hostile upstream could say "a year").
const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream's configuration cannot be used (bad URL, unreadable password or CA file).
    #[error("upstream configuration: {0}")]
    Config(String),
    /// No connection: refused, DNS failure, reset before a response.
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    /// Connecting, or waiting for the next byte, took longer than the configured timeout.
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// The TLS handshake failed (untrusted certificate, wrong host name, protocol error).
    #[error("TLS with upstream failed: {0}")]
    Tls(String),
    /// The response body broke off part way.
    #[error("upstream response body broke off: {0}")]
    Body(String),
    /// 404: no such manifest, blob or repository.
    #[error("not found upstream")]
    NotFound,
    /// 401/403 after trying the credentials and tokens we have.
    #[error("upstream refused our credentials (HTTP {status})")]
    Unauthorized { status: u16 },
    /// 429, or 503 with `Retry-After`: the upstream asks us to come back later.
    #[error("{}", rate_limited_sentence(*status, *retry_after))]
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other unexpected status.
    #[error("upstream answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// The upstream answered something that does not follow the protocol.
    #[error("bad upstream response: {0}")]
    BadResponse(String),
    /// A manifest, tag list or token response larger than we accept.
    #[error("upstream response is larger than allowed")]
    TooLarge,
}

/// `upstream answered HTTP 429 (too many requests) and asked us to wait 3600 seconds`.
fn rate_limited_sentence(status: u16, retry_after: Option<Duration>) -> String {
    let what = if status == 429 {
        "too many requests"
    } else {
        "overloaded"
    };
    match retry_after {
        Some(wait) => {
            let secs = retry_after_seconds(wait);
            let unit = if secs == 1 { "second" } else { "seconds" };
            format!("upstream answered HTTP {status} ({what}) and asked us to wait {secs} {unit}")
        }
        None => format!("upstream answered HTTP {status} ({what}) without saying how long to wait"),
    }
}

/// A `Retry-After` delay in whole seconds, rounded up (a client told 0 would retry at once).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl UpstreamError {
    /// How long the upstream asked us to wait, when it is rate-limiting us.
    pub fn rate_limit_wait(&self) -> Option<Option<Duration>> {
        match self {
            UpstreamError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The endpoint itself failed (no connection, timeout, TLS): another endpoint of the
    /// same upstream may do better.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Tls(_)
        )
    }

    /// The upstream could not give a usable answer right now (network, TLS, auth, rate
    /// limit, server error, broken or malformed response): the cache may serve stale.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout(_)
            | UpstreamError::Tls(_)
            | UpstreamError::Body(_)
            | UpstreamError::Unauthorized { .. }
            | UpstreamError::RateLimited { .. }
            | UpstreamError::BadResponse(_)
            | UpstreamError::TooLarge => true,
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 408,
            UpstreamError::NotFound | UpstreamError::Config(_) => false,
        }
    }

    /// The upstream says the manifest, blob or repository does not exist (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound)
    }

    /// A transport-level failure from reqwest (no HTTP status to go by).
    pub(crate) fn from_transport(err: &reqwest::Error) -> Self {
        let detail = without_url(err);
        if has_rustls_error(err) {
            UpstreamError::Tls(detail)
        } else if err.is_timeout() {
            UpstreamError::Timeout(detail)
        } else if err.is_redirect() {
            UpstreamError::BadResponse(detail)
        } else if err.is_body() || err.is_decode() {
            UpstreamError::Body(detail)
        } else {
            UpstreamError::Connect(detail)
        }
    }

    /// A failure while reading a response body.
    pub(crate) fn from_body(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            UpstreamError::Timeout(without_url(err))
        } else {
            UpstreamError::Body(without_url(err))
        }
    }

    /// The error for a response whose status is not a success (and not a 401 we could
    /// answer). Reads at most a few KiB of the body for its message.
    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status();
        match status {
            StatusCode::NOT_FOUND => return UpstreamError::NotFound,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return UpstreamError::Unauthorized {
                    status: status.as_u16(),
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return UpstreamError::RateLimited {
                    status: status.as_u16(),
                    retry_after: retry_after(response.headers()),
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                if let Some(wait) = retry_after(response.headers()) {
                    return UpstreamError::RateLimited {
                        status: status.as_u16(),
                        retry_after: Some(wait),
                    };
                }
            }
            _ => {}
        }
        let body = read_error_body(response).await;
        UpstreamError::Status {
            status: status.as_u16(),
            message: error_message(&body).unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("unexpected status")
                    .to_string()
            }),
        }
    }
}

/// `Retry-After` as a delay from now: delay-seconds, or an HTTP-date (a date in the past
/// is no delay). Capped at [`RETRY_AFTER_CAP`]; anything else gives `None`.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let when = httpdate::parse_http_date(text).ok()?;
            when.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(RETRY_AFTER_CAP))
}

/// Up to [`ERROR_BODY_LIMIT`] bytes of the body; a body that fails part way gives what came.
pub(crate) async fn read_error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ERROR_BODY_LIMIT - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// `CODE: message; CODE: message` from an OCI error body
/// (`{"errors":[{"code":..,"message":..}]}`), else the start of a plain-text body.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let errors = json.get("errors")?.as_array()?;
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                match (code.is_empty(), message.is_empty()) {
                    (false, false) => format!("{code}: {message}"),
                    (false, true) => code.to_string(),
                    _ => message.to_string(),
                }
            })
            .filter(|part| !part.is_empty())
            .collect();
        return (!parts.is_empty()).then(|| printable(&parts.join("; ")));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty() && !text.starts_with('<')).then(|| printable(text))
}

/// One line of printable text, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_MESSAGE_LIMIT)
        .collect()
}

/// `outer: inner: innermost`, skipping repeats (reqwest and hyper often repeat a cause).
/// reqwest's error chain without the request's URL (which reqwest writes as
/// ` for url (…)`); the URL goes to the debug log.
fn without_url(err: &reqwest::Error) -> String {
    let text = error_chain(err);
    match err.url() {
        Some(url) => {
            tracing::debug!(%url, error = %text, "upstream request failed");
            text.replace(&format!(" for url ({url})"), "")
                .replace(url.as_str(), "the upstream")
        }
        None => text,
    }
}

fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// Whether a rustls error is anywhere in the chain. hyper-rustls wraps it in an
/// `io::Error`, whose `source()` skips the wrapped error, so look inside those too.
fn has_rustls_error(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>() || has_rustls_error(inner))
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_error_bodies_become_messages() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            error_message(body).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        let two = br#"{"errors":[{"code":"A"},{"message":"b"}]}"#;
        assert_eq!(error_message(two).as_deref(), Some("A; b"));
        assert_eq!(error_message(b"{\"other\":1}"), None);
        assert_eq!(
            error_message(b"  upstream\nbroke  ").as_deref(),
            Some("upstream broke")
        );
        assert_eq!(error_message(b"<html>bad gateway</html>"), None);
        assert_eq!(error_message(b""), None);
        let long = "x".repeat(10_000);
        assert_eq!(
            error_message(long.as_bytes()).map(|m| m.len()),
            Some(ERROR_MESSAGE_LIMIT)
        );
    }

    #[test]
    fn retry_after_both_forms_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "17".parse().expect("valid header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(17)));
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:30:00 GMT"
                .parse()
                .expect("valid header"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:00:00 GMT"
                .parse()
                .expect("valid header"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().expect("valid header"));
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "999999999".parse().expect("valid header"));
        assert_eq!(retry_after(&h), Some(RETRY_AFTER_CAP));
    }

    #[test]
    fn rate_limits_are_plain_sentences() {
        let e = UpstreamError::RateLimited {
            status: 429,
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            e.to_string(),
            "upstream answered HTTP 429 (too many requests) and asked us to wait 2 seconds"
        );
        let e = UpstreamError::RateLimited {
            status: 503,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(e.to_string().ends_with("wait 1 second"), "{e}");
        let e = UpstreamError::RateLimited {
            status: 429,
            retry_after: None,
        };
        assert!(!e.to_string().contains("None"), "{e}");
        assert!(!e.to_string().contains("Some"), "{e}");
    }

    #[test]
    fn availability_classes() {
        assert!(UpstreamError::Status {
            status: 502,
            message: String::new()
        }
        .is_unavailable());
        assert!(!UpstreamError::Status {
            status: 400,
            message: String::new()
        }
        .is_unavailable());
        assert!(UpstreamError::Unauthorized { status: 403 }.is_unavailable());
        assert!(!UpstreamError::NotFound.is_unavailable());
        assert!(UpstreamError::NotFound.is_not_found());
        assert!(!UpstreamError::Connect(String::new()).is_not_found());
    }

    #[test]
    fn finds_rustls_error_inside_io_error() {
        let tls = rustls::Error::General("bad cert".into());
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        assert!(has_rustls_error(&Outer(io)));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!has_rustls_error(&Outer(plain)));
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[tokio::test]
    async fn transport_errors_do_not_carry_the_request_url() {
        // Nothing listens on port 1 of loopback: connection refused.
        let url = "http://127.0.0.1:1/v2/internal/app/blobs/sha256:00?token=s3cret";
        let err = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect_err("nothing listens there");
        assert!(
            err.to_string().contains("127.0.0.1:1"),
            "reqwest names the URL: {err}"
        );
        let ours = UpstreamError::from_transport(&err);
        assert!(matches!(ours, UpstreamError::Connect(_)), "{ours:?}");
        let text = ours.to_string();
        for secret in ["127.0.0.1", "internal/app", "s3cret", "for url"] {
            assert!(!text.contains(secret), "{secret:?} in {text:?}");
        }
        assert!(text.starts_with("cannot connect to upstream: "), "{text}");
    }
}
