//! OCI error responses: the codes of the distribution spec, their HTTP statuses, and the
//! `{"errors":[{"code","message","detail"}]}` body. Every error a client sees is built here.

use http::StatusCode;

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

    /// 429 with `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many requests from this address without a token; log in for no limit",
        );
        e.retry_after = Some(retry_after_secs.max(1));
        e
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
}
