//! Why a push failed: [`PushFailure`], and the one place an upstream client's push error
//! becomes one of its variants.
//!
//! Owns: sorting failures by what they mean for the client (the upstream refused, has no
//! such thing, refused the edge's credentials, is rate-limiting, cannot be reached) and the
//! `reason` label of `push_failures_total`. Must not: build OCI errors or HTTP answers
//! (`registry` maps each variant to its OCI error once).

use crate::oci::Digest;
use crate::upstream::{PushError, UpstreamError};
use std::time::Duration;

/// Why a push request failed, classified here (as the cache classifies a pull's
/// [`crate::cache::FetchFailure`] into a [`crate::cache::CacheError`]): an upstream's
/// failure is already sorted by what it means for the client, so `registry` maps each
/// variant to its OCI error once, without looking into the upstream client's errors.
#[derive(Debug, thiserror::Error)]
pub enum PushFailure {
    #[error("upstream {0} does not take pushes through this edge")]
    NotEnabled(String),
    #[error("no upload session {0} on this edge (finished, cancelled or expired)")]
    UploadUnknown(String),
    #[error("the blob's bytes hash to {actual}, not to the digest {expected} the client gave")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the upload is larger than push.max_upload_size ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("the chunk starts at byte {start}, but the upload has {offset} bytes so far")]
    OutOfOrder { start: u64, offset: u64 },
    #[error("this token already has {limit} uploads open (push.max_uploads_per_token)")]
    TooManyUploads { limit: usize },
    #[error("the client's request body broke off: {0}")]
    ClientBody(String),
    #[error("{0}")]
    ManifestInvalid(String),
    /// The upstream answered and refused: its HTTP status, its OCI error code (as it
    /// spelled it) and its message.
    #[error("upstream {upstream} refused the push: HTTP {status}: {message}")]
    UpstreamRefused {
        upstream: String,
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The upstream answered 404 (no such repository, blob or manifest).
    #[error("upstream {upstream} answered 404")]
    UpstreamNotFound { upstream: String },
    /// The upstream refused the edge's own credentials for the push.
    #[error("upstream {upstream} refused this edge's credentials for the push (HTTP {status})")]
    UpstreamCredentials { upstream: String, status: u16 },
    /// The upstream is rate-limiting the edge; `retry_after` is what it asked for.
    #[error("upstream {upstream} is rate-limiting this edge")]
    UpstreamRateLimited {
        upstream: String,
        retry_after: Option<Duration>,
    },
    /// No usable answer from the upstream: connection, timeout, TLS, a bad response.
    #[error("upstream {upstream} could not take the push")]
    UpstreamUnavailable {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl PushFailure {
    /// The one classification of an upstream client's push error.
    pub(super) fn from_upstream(upstream: &str, source: PushError) -> PushFailure {
        let upstream = upstream.to_string();
        match source {
            PushError::Refused {
                status,
                code,
                message,
            } => PushFailure::UpstreamRefused {
                upstream,
                status,
                code,
                message,
            },
            PushError::Upstream(UpstreamError::NotFound) => {
                PushFailure::UpstreamNotFound { upstream }
            }
            PushError::Upstream(UpstreamError::Unauthorized { status }) => {
                PushFailure::UpstreamCredentials { upstream, status }
            }
            PushError::Upstream(UpstreamError::RateLimited { retry_after, .. }) => {
                PushFailure::UpstreamRateLimited {
                    upstream,
                    retry_after,
                }
            }
            PushError::Upstream(source) => PushFailure::UpstreamUnavailable { upstream, source },
        }
    }

    /// The `reason` label of `push_failures_total`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            PushFailure::DigestMismatch { .. } => "digest",
            PushFailure::TooLarge { .. } => "too_large",
            PushFailure::UpstreamRefused { .. }
            | PushFailure::UpstreamNotFound { .. }
            | PushFailure::UpstreamCredentials { .. }
            | PushFailure::UpstreamRateLimited { .. }
            | PushFailure::UpstreamUnavailable { .. } => "upstream",
            PushFailure::ClientBody(_) => "client",
            PushFailure::TooManyUploads { .. } => "limit",
            PushFailure::Internal(_) => "store",
            PushFailure::NotEnabled(_)
            | PushFailure::UploadUnknown(_)
            | PushFailure::OutOfOrder { .. }
            | PushFailure::ManifestInvalid(_) => "client",
        }
    }
}
