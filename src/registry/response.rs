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

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// This edge's `Cache-Status` entries, made once (a hit answer only clones one).
#[derive(Clone, Debug)]
pub struct CacheStatusEntries {
    hit: HeaderValue,
    miss: HeaderValue,
    collapsed: HeaderValue,
    stale: HeaderValue,
    reserved: HeaderValue,
    denied: HeaderValue,
    unreachable: HeaderValue,
}

impl CacheStatusEntries {
    /// Entries named `edge` (an RFC 8941 token when it starts with a letter, else a
    /// string); `None` when the name cannot be a header value.
    pub fn named(edge: &str) -> Option<CacheStatusEntries> {
        let name = if edge.starts_with(|c: char| c.is_ascii_alphabetic()) {
            edge.to_string()
        } else {
            format!("\"{edge}\"")
        };
        let entry = |params: &str| HeaderValue::from_str(&format!("{name}; {params}")).ok();
        Some(CacheStatusEntries {
            hit: entry("hit")?,
            miss: entry("fwd=uri-miss")?,
            collapsed: entry("fwd=uri-miss; collapsed")?,
            stale: entry("hit; fwd=stale; detail=upstream-unreachable")?,
            reserved: entry("hit; fwd=stale; detail=quota-reserve")?,
            denied: entry("detail=denied")?,
            unreachable: entry("fwd=uri-miss; detail=upstream-unreachable")?,
        })
    }
}

/// What the edge did for an answer, kept in the response's extensions (never sent) for
/// [`set_cache_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CacheOutcome {
    Hit,
    Miss,
    /// A miss served by another request's fill.
    Collapsed,
    Stale,
    /// Served from the cache although it moved upstream: the upstream's quota is at its
    /// reserve.
    QuotaReserve,
}

/// `Cache-Status` (RFC 9211) for this edge, from what the answer says it did (its
/// [`CacheOutcome`]): `hit`, `fwd=uri-miss` (asked the upstream), `fwd=uri-miss;
/// collapsed` (joined another request's fetch), `hit; fwd=stale;
/// detail=upstream-unreachable` (served stale because the upstream failed); without an
/// outcome, `detail=denied` (401, 403) or `fwd=uri-miss; detail=upstream-unreachable`
/// (502, 503, 504: nothing to serve). Other answers (the API root, pushes, errors of the
/// request itself) get no entry. An entry the answer already has (a parent edge's) is
/// kept, this edge's after it.
pub(super) fn set_cache_status(response: &mut Response<ResponseBody>, ours: &CacheStatusEntries) {
    let outcome = response.extensions().get::<CacheOutcome>().copied();
    let entry = match outcome {
        Some(CacheOutcome::Hit) => &ours.hit,
        Some(CacheOutcome::Miss) => &ours.miss,
        Some(CacheOutcome::Collapsed) => &ours.collapsed,
        Some(CacheOutcome::Stale) => &ours.stale,
        Some(CacheOutcome::QuotaReserve) => &ours.reserved,
        None => match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => &ours.denied,
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => &ours.unreachable,
            _ => return,
        },
    };
    let headers = response.headers_mut();
    let value = match headers.get(CACHE_STATUS).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.is_empty() => {
            let joined = format!("{earlier}, {}", entry.to_str().unwrap_or_default());
            HeaderValue::from_str(&joined).unwrap_or_else(|_| entry.clone())
        }
        _ => entry.clone(),
    };
    headers.insert(CACHE_STATUS, value);
}

/// Marks an answer served from the cache because the upstream could not be asked.
pub(super) fn mark_stale(response: &mut Response<ResponseBody>) {
    response.extensions_mut().insert(CacheOutcome::Stale);
    let headers = response.headers_mut();
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
        mark_stale(&mut response);
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
    let reserved = a.quota_reserved;
    // A parent edge's entries first; this edge's own is appended by `set_cache_status`.
    let b = match a
        .upstream_cache_status
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        Some(parent) => b.header(CACHE_STATUS, parent),
        None => b,
    };
    let body = match (head, a.bytes) {
        (false, Some(bytes)) => body::full(bytes),
        _ => body::empty(),
    };
    let mut response = finish(b, body);
    response.extensions_mut().insert(if a.from_cache {
        CacheOutcome::Hit
    } else {
        CacheOutcome::Miss
    });
    if stale {
        mark_stale(&mut response);
    }
    if reserved {
        response.extensions_mut().insert(CacheOutcome::QuotaReserve);
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
    // A parent edge's entries first (the fill's first answer); this edge's own is appended
    // by `set_cache_status`.
    if let Some(parent) = a
        .upstream_cache_status
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        b = b.header(CACHE_STATUS, parent);
    }
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
    let mut response = finish(b, body);
    response
        .extensions_mut()
        .insert(match (a.from_cache, a.collapsed) {
            (true, _) => CacheOutcome::Hit,
            (false, true) => CacheOutcome::Collapsed,
            (false, false) => CacheOutcome::Miss,
        });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_for(
        outcome: Option<CacheOutcome>,
        status: StatusCode,
        edge: &'static str,
    ) -> Option<String> {
        let mut r = Response::new(body::empty());
        *r.status_mut() = status;
        if let Some(o) = outcome {
            r.extensions_mut().insert(o);
        }
        set_cache_status(&mut r, &CacheStatusEntries::named(edge).expect("a name"));
        r.headers()
            .get(CACHE_STATUS)
            .map(|v| v.to_str().expect("ascii").to_string())
    }

    #[test]
    fn cache_status_says_what_this_edge_did() {
        use CacheOutcome::*;
        let ok = StatusCode::OK;
        let e = "edge-a";
        assert_eq!(status_for(Some(Hit), ok, e).as_deref(), Some("edge-a; hit"));
        assert_eq!(
            status_for(Some(Miss), ok, e).as_deref(),
            Some("edge-a; fwd=uri-miss")
        );
        assert_eq!(
            status_for(Some(Collapsed), ok, e).as_deref(),
            Some("edge-a; fwd=uri-miss; collapsed")
        );
        assert_eq!(
            status_for(Some(Stale), ok, e).as_deref(),
            Some("edge-a; hit; fwd=stale; detail=upstream-unreachable")
        );
        assert_eq!(
            status_for(Some(QuotaReserve), ok, e).as_deref(),
            Some("edge-a; hit; fwd=stale; detail=quota-reserve")
        );
        assert_eq!(
            status_for(None, StatusCode::FORBIDDEN, e).as_deref(),
            Some("edge-a; detail=denied")
        );
        assert_eq!(
            status_for(None, StatusCode::SERVICE_UNAVAILABLE, e).as_deref(),
            Some("edge-a; fwd=uri-miss; detail=upstream-unreachable")
        );
        assert_eq!(status_for(None, ok, e), None, "the API root");
        assert_eq!(status_for(None, StatusCode::NOT_FOUND, e), None);
        // A name that is not a token is sent as a string.
        assert_eq!(
            status_for(Some(Hit), ok, "10.0.0.1").as_deref(),
            Some("\"10.0.0.1\"; hit")
        );
    }

    #[test]
    fn a_parent_edges_entry_is_kept_before_ours() {
        let mut r = Response::new(body::empty());
        r.extensions_mut().insert(CacheOutcome::Miss);
        r.headers_mut()
            .insert(CACHE_STATUS, HeaderValue::from_static("parent; hit"));
        let child = CacheStatusEntries::named("child").expect("a name");
        set_cache_status(&mut r, &child);
        assert_eq!(
            r.headers()[CACHE_STATUS],
            "parent; hit, child; fwd=uri-miss"
        );
    }
}
