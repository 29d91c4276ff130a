//! Building the registry's answers: the headers every answer carries
//! (`Docker-Distribution-API-Version`), manifests byte-exact with `Content-Type`,
//! `Docker-Content-Digest`, `ETag` and `X-Cache`, streamed blobs with their `Range`
//! headers, referrers indexes, JSON bodies, stale marks, and every [`OciError`] as its
//! JSON with status, `Retry-After`, `Content-Range` and `WWW-Authenticate`.
//!
//! Owns: turning answers the cache gave and errors into HTTP responses. Must not: decide
//! what to answer (that is `pull.rs`, `push.rs` and `door.rs`).

use super::body::{self, ResponseBody};
use super::error::{OciError, Subject};
use crate::cache::{BlobAnswer, ManifestAnswer, ReferrersAnswer, REFERRERS_MEDIA_TYPE};
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

const API_VERSION: &str = "registry/2.0";
/// Whether an answer came from the store (`HIT`) or the upstream (`MISS`).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The digest of a manifest or blob answered or pushed.
pub(super) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
const DOCKER_API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// Room reserved once for a registry answer's headers (a blob answer sets 8), instead of
/// growing the map header by header.
const ANSWER_HEADERS: usize = 12;

fn cache_status(from_cache: bool) -> &'static str {
    if from_cache {
        "HIT"
    } else {
        "MISS"
    }
}

pub(super) fn base_response(status: StatusCode) -> http::response::Builder {
    let mut b = Response::builder();
    if let Some(h) = b.headers_mut() {
        h.reserve(ANSWER_HEADERS);
    }
    b.status(status)
        .header(DOCKER_API_VERSION, HeaderValue::from_static(API_VERSION))
}

pub(super) fn json_response(
    status: StatusCode,
    body: bytes::Bytes,
    head: bool,
) -> Response<ResponseBody> {
    let len = body.len();
    let b = base_response(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len);
    finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(body)
        },
    )
}

/// The OCI error JSON response for `e`.
pub fn error_response(e: &OciError, head: bool) -> Response<ResponseBody> {
    let text = e.body();
    let mut b = base_response(e.status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len());
    if let Some(retry) = e.retry_after {
        b = b.header(header::RETRY_AFTER, retry);
    }
    if let Some(size) = e.content_range_size {
        b = b.header(header::CONTENT_RANGE, format!("bytes */{size}"));
    }
    for challenge in &e.challenges {
        b = b.header(header::WWW_AUTHENTICATE, challenge.as_str());
    }
    finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(text)
        },
    )
}

pub(super) fn finish(b: http::response::Builder, body: ResponseBody) -> Response<ResponseBody> {
    b.body(body).unwrap_or_else(|e| {
        // Only reachable with an invalid header value, which we never build from input.
        let mut r = Response::new(body::full(
            OciError::internal(Subject::Repository, e.to_string()).body(),
        ));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Marks an answer served from the cache because the upstream could not be asked.
pub(super) fn mark_stale(headers: &mut http::HeaderMap) {
    headers.insert(X_CACHE, HeaderValue::from_static("STALE"));
    headers.insert(
        header::WARNING,
        HeaderValue::from_static("110 sparkcr-edge \"Response is Stale\""),
    );
}

/// An image index of referrers (spec, "Listing Referrers").
pub(super) fn referrers_response(a: ReferrersAnswer, head: bool) -> Response<ResponseBody> {
    let len = a.body.len();
    let mut b = base_response(StatusCode::OK)
        .header(header::CONTENT_TYPE, REFERRERS_MEDIA_TYPE)
        .header(header::CONTENT_LENGTH, len);
    if a.filtered {
        b = b.header("OCI-Filters-Applied", "artifactType");
    }
    let mut response = finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(a.body)
        },
    );
    if a.stale {
        mark_stale(response.headers_mut());
    }
    response
}

pub(super) fn manifest_response(a: ManifestAnswer, head: bool) -> Response<ResponseBody> {
    let len = a.size;
    let b = base_response(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&a.media_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
        .header(DOCKER_CONTENT_DIGEST, a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest))
        .header(X_CACHE, cache_status(a.from_cache))
        .header(header::CONTENT_LENGTH, len);
    let stale = a.stale;
    let body = match (head, a.bytes) {
        (false, Some(bytes)) => body::full(bytes),
        _ => body::empty(),
    };
    let mut response = finish(b, body);
    if stale {
        mark_stale(response.headers_mut());
    }
    response
}

pub(super) fn blob_response(a: BlobAnswer) -> Response<ResponseBody> {
    let (start, end) = a.range;
    let partial = a.partial;
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut b = base_response(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(X_CACHE, cache_status(a.from_cache));
    // Without a known size (the upstream gave none) the body goes out chunked.
    if let Some(size) = a.size {
        b = b.header(header::CONTENT_LENGTH, end - start);
        if partial {
            let range = format!("bytes {}-{}/{}", start, end.saturating_sub(1), size);
            b = b.header(header::CONTENT_RANGE, range);
        }
    }
    let body = match a.body {
        Some(stream) => body::stream(stream),
        None => body::empty(),
    };
    finish(b, body)
}
