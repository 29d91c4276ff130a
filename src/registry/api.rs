//! The API handler: one request in, one response out.

use super::accept::accepted_media_types;
use super::body::{self, ResponseBody};
use super::error::OciError;
use super::range::ByteRangeSpec;
use super::route::{route, ApiRoute, RequestParts, UpstreamTable};
use crate::cache::{BlobAnswer, Cache, CacheError, ManifestAnswer};
use http::{header, HeaderValue, Method, Response, StatusCode};
use std::sync::Arc;

const API_VERSION: &str = "registry/2.0";
/// Whether an answer came from the store (`HIT`) or the upstream (`MISS`).
const X_CACHE: &str = "X-Cache";

fn cache_status(from_cache: bool) -> &'static str {
    if from_cache {
        "HIT"
    } else {
        "MISS"
    }
}

/// A response plus the route label metrics and logs use.
pub struct ApiResponse {
    pub response: Response<ResponseBody>,
    pub route: &'static str,
}

pub struct RegistryApi {
    table: UpstreamTable,
    cache: Arc<Cache>,
}

impl RegistryApi {
    pub fn new(table: UpstreamTable, cache: Arc<Cache>) -> Self {
        RegistryApi { table, cache }
    }

    pub async fn handle(&self, req: &http::request::Parts) -> ApiResponse {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let parts = RequestParts {
            method: &req.method,
            host,
            path: req.uri.path(),
            query: req.uri.query(),
        };
        let head = req.method == Method::HEAD;
        let routed = match route(&parts, &self.table) {
            Ok(r) => r,
            Err(e) => {
                return ApiResponse {
                    response: error_response(&e, head),
                    route: "error",
                }
            }
        };
        let (label, result) = match routed {
            ApiRoute::Ping => ("ping", Ok(json_response(StatusCode::OK, "{}".into(), head))),
            ApiRoute::Catalog => ("catalog", self.catalog(head).await),
            ApiRoute::TagsList { target } => (
                "tags",
                self.cache
                    .tags_list(&target, req.uri.query())
                    .await
                    .map(|b| json_response(StatusCode::OK, b, head))
                    .map_err(|e| map_cache_error(e, "tags")),
            ),
            ApiRoute::Manifest { target, reference } => {
                let accept = accepted_media_types(&req.headers);
                let answer = self
                    .cache
                    .manifest(&target, &reference, &accept, head)
                    .await;
                (
                    "manifest",
                    answer
                        .map(|a| manifest_response(a, head))
                        .map_err(|e| map_cache_error(e, "manifest")),
                )
            }
            ApiRoute::Blob { target, digest } => {
                let range = req
                    .headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ByteRangeSpec::parse);
                let answer = self.cache.blob(&target, &digest, range, head).await;
                (
                    "blob",
                    answer
                        .map(blob_response)
                        .map_err(|e| map_cache_error(e, "blob")),
                )
            }
        };
        let response = result.unwrap_or_else(|e| error_response(&e, head));
        ApiResponse {
            response,
            route: label,
        }
    }

    async fn catalog(&self, head: bool) -> Result<Response<ResponseBody>, OciError> {
        let repos = self
            .cache
            .catalog()
            .await
            .map_err(|e| map_cache_error(e, "catalog"))?;
        let body = serde_json::json!({ "repositories": repos }).to_string();
        Ok(json_response(StatusCode::OK, body.into(), head))
    }
}

fn base_response(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("Docker-Distribution-API-Version", API_VERSION)
}

fn json_response(status: StatusCode, body: bytes::Bytes, head: bool) -> Response<ResponseBody> {
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
    if let Some(challenge) = &e.challenge {
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

fn finish(b: http::response::Builder, body: ResponseBody) -> Response<ResponseBody> {
    b.body(body).unwrap_or_else(|e| {
        // Only reachable with an invalid header value, which we never build from input.
        let mut r = Response::new(body::full(OciError::internal(e.to_string()).body()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn manifest_response(a: ManifestAnswer, head: bool) -> Response<ResponseBody> {
    let len = a.size;
    let b = base_response(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&a.media_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
        .header("Docker-Content-Digest", a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest))
        .header(X_CACHE, cache_status(a.from_cache))
        .header(header::CONTENT_LENGTH, len);
    let body = match (head, a.bytes) {
        (false, Some(bytes)) => body::full(bytes),
        _ => body::empty(),
    };
    finish(b, body)
}

fn blob_response(a: BlobAnswer) -> Response<ResponseBody> {
    let (start, end) = a.range;
    let partial = a.partial;
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut b = base_response(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", a.digest.to_string())
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

/// The one place cache-layer errors become what clients see.
fn map_cache_error(e: CacheError, kind: &str) -> OciError {
    match e {
        CacheError::ManifestUnknown(r) => OciError::manifest_unknown(r),
        CacheError::BlobUnknown(d) => OciError::blob_unknown(d),
        CacheError::NameUnknown(m) => OciError::name_unknown(m),
        CacheError::RangeNotSatisfiable { size } => {
            OciError::range_invalid(format!("the blob has {size} bytes")).with_content_range(size)
        }
        CacheError::Unavailable { upstream, detail } => {
            OciError::upstream_unavailable(&upstream, detail)
        }
        CacheError::Denied(m) => OciError::new(StatusCode::FORBIDDEN, super::ErrorCode::Denied, m),
        CacheError::BadUpstreamContent { upstream, detail } => OciError::new(
            StatusCode::BAD_GATEWAY,
            super::ErrorCode::Unavailable,
            format!("upstream {upstream} sent content this edge will not serve"),
        )
        .with_detail(detail),
        other => {
            tracing::error!(kind, error = %other, "request failed");
            OciError::internal(other.to_string())
        }
    }
}
