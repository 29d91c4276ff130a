//! OCI errors: the codes of the distribution spec, their HTTP statuses, and the
//! `{"errors":[{"code","message","detail"}]}` body. Every error a client sees is built here,
//! and this is the one place the layer below's failures become OCI errors: a pull's
//! [`CacheError`] ([`OciError::from_cache`]) and a push's [`PushFailure`]
//! ([`OciError::from_push`]), both already classified by `cache`.
//!
//! Must not: classify an upstream's or the store's errors itself (`cache` does), or build
//! HTTP responses (that is `response.rs`).

use crate::cache::push::PushFailure;
use crate::cache::CacheError;
use http::StatusCode;
use std::time::Duration;

/// The error codes of the OCI distribution spec v1.1 ("Error Codes" table, code-1 to
/// code-14); the edge answers with no other. Failures that have no code of their own in the
/// table (an unreachable upstream, an internal error, an unsatisfiable range) carry the code
/// of what could not be served, with the HTTP status that says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    // The push side (issue 11).
    BlobUploadInvalid,
    BlobUploadUnknown,
    ManifestBlobUnknown,
    ManifestInvalid,
    SizeInvalid,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
        }
    }

    /// The code an upstream sent, when it is one of the spec's.
    pub fn from_spec(code: &str) -> Option<ErrorCode> {
        [
            ErrorCode::BlobUnknown,
            ErrorCode::DigestInvalid,
            ErrorCode::ManifestUnknown,
            ErrorCode::NameInvalid,
            ErrorCode::NameUnknown,
            ErrorCode::Unauthorized,
            ErrorCode::Denied,
            ErrorCode::Unsupported,
            ErrorCode::TooManyRequests,
            ErrorCode::BlobUploadInvalid,
            ErrorCode::BlobUploadUnknown,
            ErrorCode::ManifestBlobUnknown,
            ErrorCode::ManifestInvalid,
            ErrorCode::SizeInvalid,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
    }
}

/// What a request asked for: decides the code of failures that have none of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Manifest,
    Blob,
    /// Tag lists, referrers, the catalog: about a repository as a whole.
    Repository,
}

impl Subject {
    pub fn unknown_code(self) -> ErrorCode {
        match self {
            Subject::Manifest => ErrorCode::ManifestUnknown,
            Subject::Blob => ErrorCode::BlobUnknown,
            Subject::Repository => ErrorCode::NameUnknown,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Subject::Manifest => "manifest",
            Subject::Blob => "blob",
            Subject::Repository => "repository content",
        }
    }
}

/// One OCI error, ready to become a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<String>,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate` challenges (401), one header line each, preferred first.
    pub challenges: Vec<String>,
    /// `Content-Range: bytes */<size>` (416).
    pub content_range_size: Option<u64>,
}

impl OciError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            retry_after: None,
            challenges: Vec::new(),
            content_range_size: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_content_range(mut self, size: u64) -> Self {
        self.content_range_size = Some(size);
        self
    }

    /// 404 for a path that is no endpoint of the read API.
    pub fn not_found_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "no such endpoint on this registry",
        )
    }

    pub fn name_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            "invalid repository name",
        )
        .with_detail(detail)
    }

    pub fn name_unknown(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, message)
    }

    pub fn digest_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "invalid digest",
        )
        .with_detail(detail)
    }

    pub fn unsupported_method(method: &http::Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{method} is not supported: this is a read-only pull-through cache"),
        )
    }

    pub fn manifest_unknown(reference: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            format!("manifest {reference} is unknown"),
        )
    }

    pub fn blob_unknown(digest: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("blob {digest} is unknown"),
        )
    }

    /// 429: the upstream is rate-limiting this edge and the edge has no copy; its
    /// `Retry-After` is passed on when it gave one.
    pub fn upstream_rate_limited(
        subject: Subject,
        upstream: &str,
        retry_after_secs: Option<u64>,
        detail: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!(
                "upstream {upstream} is rate-limiting this edge and this {} is not cached; try again later",
                subject.noun()
            ),
        )
        .with_detail(detail);
        e.retry_after = retry_after_secs.map(|s| s.max(1));
        e
    }

    /// 503: the upstream cannot be reached and the edge has no copy.
    pub fn upstream_unavailable(
        subject: Subject,
        upstream: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            subject.unknown_code(),
            format!(
                "upstream {upstream} is unreachable and this {} is not cached",
                subject.noun()
            ),
        )
        .with_detail(detail)
    }

    /// 502: the upstream answered with content the edge will not pass on.
    pub fn bad_upstream_content(
        subject: Subject,
        upstream: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            subject.unknown_code(),
            format!(
                "upstream {upstream} sent a {} this edge will not serve",
                subject.noun()
            ),
        )
        .with_detail(detail)
    }

    /// 416 with `Content-Range: bytes */<size>` (RFC 9110, 15.5.17).
    pub fn range_not_satisfiable(size: u64) -> Self {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unsupported,
            "the requested Range is not satisfiable",
        )
        .with_detail(format!("the blob has {size} bytes"))
        .with_content_range(size)
    }

    /// 401: credentials are missing or wrong; `challenges` tell the client how to log in.
    pub fn unauthorized(message: impl Into<String>, challenges: Vec<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
        e.challenges = challenges;
        e
    }

    /// 403: the credentials are valid but do not allow this.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
    }

    /// 429 with `Retry-After`: an anonymous client over its per-address quota.
    pub fn too_many_requests(retry_after: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many requests from this address without a token; log in for no limit",
        );
        e.retry_after = Some(whole_seconds(retry_after).max(1));
        e
    }

    /// 400 `BLOB_UPLOAD_INVALID`: what the client sent cannot continue its upload.
    pub fn blob_upload_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            "invalid blob upload",
        )
        .with_detail(detail)
    }

    /// The one place a pull's cache error becomes what clients see: the code and status
    /// from the spec's table, a plain-sentence message, and the error's source chain as
    /// `detail`.
    pub fn from_cache(e: CacheError, subject: Subject) -> Self {
        match e {
            CacheError::ManifestUnknown(r) => Self::manifest_unknown(r),
            CacheError::BlobUnknown(d) => Self::blob_unknown(d),
            CacheError::NameUnknown(m) => Self::name_unknown(m),
            CacheError::RangeNotSatisfiable { size } => Self::range_not_satisfiable(size),
            CacheError::Unavailable { upstream, source } => {
                Self::upstream_unavailable(subject, &upstream, source_chain(&source))
            }
            CacheError::RateLimited {
                upstream,
                retry_after,
                source,
            } => Self::upstream_rate_limited(
                subject,
                &upstream,
                retry_after.map(whole_seconds),
                source_chain(&source),
            ),
            CacheError::PolicyRefused { message, .. } => Self::denied(message),
            CacheError::BadUpstreamContent { upstream, source } => {
                Self::bad_upstream_content(subject, &upstream, source_chain(&source))
            }
            other => {
                let detail = source_chain(&other);
                tracing::error!(?subject, error = %detail, "request failed");
                Self::internal(subject, detail)
            }
        }
    }

    /// The one place a push failure becomes what clients see. An upstream's refusal keeps
    /// its own status and OCI code; failures to reach it are 503 like a pull's.
    pub fn from_push(e: PushFailure, subject: Subject) -> Self {
        let text = e.to_string();
        match e {
            PushFailure::NotEnabled(u) => Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                format!("upstream {u} does not take pushes through this edge"),
            ),
            PushFailure::UploadUnknown(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown, text)
            }
            PushFailure::DigestMismatch { .. } => Self::digest_invalid(text),
            PushFailure::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid, text)
            }
            PushFailure::OutOfOrder { .. } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
                text,
            ),
            PushFailure::TooManyUploads { .. } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TooManyRequests,
                    text,
                );
                e.retry_after = Some(1);
                e
            }
            PushFailure::ClientBody(_) => Self::blob_upload_invalid(text),
            PushFailure::ManifestInvalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, text)
            }
            PushFailure::UpstreamRefused {
                upstream,
                status,
                code,
                message,
            } => {
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let code = code
                    .as_deref()
                    .and_then(ErrorCode::from_spec)
                    .unwrap_or(match subject {
                        Subject::Manifest => ErrorCode::ManifestInvalid,
                        _ => ErrorCode::BlobUploadInvalid,
                    });
                Self::new(status, code, format!("upstream {upstream} refused: {message}"))
            }
            PushFailure::UpstreamNotFound { upstream } => Self::new(
                StatusCode::NOT_FOUND,
                subject.unknown_code(),
                format!("upstream {upstream} answered 404"),
            ),
            PushFailure::UpstreamCredentials { upstream, status } => Self::denied(format!(
                "upstream {upstream} refused this edge's credentials for the push (HTTP {status}); check its username and password in the edge's config"
            )),
            PushFailure::UpstreamRateLimited {
                upstream,
                retry_after,
            } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TooManyRequests,
                    format!("upstream {upstream} is rate-limiting this edge"),
                );
                e.retry_after = retry_after.map(whole_seconds);
                e
            }
            PushFailure::UpstreamUnavailable { upstream, source } => {
                Self::upstream_unavailable(subject, &upstream, source.to_string())
            }
            PushFailure::Internal(detail) => Self::internal(subject, detail),
        }
    }

    /// 500: the edge itself failed (its store, a task).
    pub fn internal(subject: Subject, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            subject.unknown_code(),
            format!("this edge failed to serve the {}", subject.noun()),
        )
        .with_detail(detail)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let mut e = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = &self.detail {
            e["detail"] = serde_json::Value::String(d.clone());
        }
        serde_json::json!({ "errors": [e] }).to_string()
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code.as_str(),
            self.message
        )
    }
}

/// A `Retry-After` delay in whole seconds, rounded up (a client told 0 would retry at once).
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// `error: cause: cause`, each level's `Display` (plain sentences, never `Debug`).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_error_json() {
        let e = OciError::digest_invalid("sha256:zz");
        let v: serde_json::Value = serde_json::from_str(&e.body()).expect("json");
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(v["errors"][0]["detail"], "sha256:zz");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn push_failures_keep_the_upstreams_status_and_code() {
        let refused = |status, code: Option<&str>| PushFailure::UpstreamRefused {
            upstream: "corp.lan".into(),
            status,
            code: code.map(str::to_string),
            message: "no".into(),
        };
        let e = OciError::from_push(
            refused(400, Some("MANIFEST_BLOB_UNKNOWN")),
            Subject::Manifest,
        );
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown)
        );
        assert_eq!(e.message, "upstream corp.lan refused: no");
        let e = OciError::from_push(refused(200, None), Subject::Blob);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_GATEWAY, ErrorCode::BlobUploadInvalid)
        );
        let e = OciError::from_push(
            PushFailure::UpstreamRateLimited {
                upstream: "corp.lan".into(),
                retry_after: Some(Duration::from_millis(1500)),
            },
            Subject::Blob,
        );
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(2))
        );
        let e = OciError::from_push(
            PushFailure::UpstreamNotFound {
                upstream: "corp.lan".into(),
            },
            Subject::Manifest,
        );
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
        );
    }
}
