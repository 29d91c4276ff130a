//! HTTP client to one upstream registry (docker.io, ghcr.io, quay.io, a private registry):
//! the read side of the OCI distribution API, as the cache needs it.
//!
//! Owns: [`Upstream`] (one per configured upstream; cheap to clone) and its requests for
//! manifests, blobs (streamed, with `Range`), blob sizes and tag lists; the auth flow
//! around each request (proactive credentials, one retry after a 401 challenge); short
//! upstream rate limits (429, 503 with `Retry-After`) waited out and retried; mapping
//! of answers to [`ManifestResponse`], [`BlobResponse`] or an [`UpstreamError`] the cache
//! can act on (`is_unavailable` → serve stale, `is_not_found`).
//!
//! Submodules: `client` (reqwest + rustls construction), [`proxy`] (which outbound proxy,
//! and its precedence), `endpoints` (order and health of an upstream's endpoints),
//! `exchange` (the endpoint walk, rate-limit waits, auth around each attempt, the prober),
//! `auth` (credentials, tokens),
//! [`challenge`] (`WWW-Authenticate` parsing), `transport` (one measured exchange, bounded
//! bodies), `error`.
//!
//! Must not: import `server`, `registry`, `cache` or `store`; verify digests or store
//! anything (the cache does); log credentials or tokens.

mod auth;
pub mod challenge;
mod client;
mod endpoints;
mod error;
mod exchange;
pub mod proxy;
mod push;
mod transport;

pub use client::{MAX_REDIRECTS, USER_AGENT};
pub use error::{retry_after_seconds, UpstreamError};
pub use push::{MountOutcome, PushError, UpstreamUpload};

use crate::config::{OutboundConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepositoryName, MANIFEST_MEDIA_TYPES};
use auth::{Authenticator, Credentials};
use bytes::Bytes;
use endpoints::Endpoints;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode, Url};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use transport::{content_length, read_limited, RequestKind, UpstreamMetrics};

/// Largest manifest accepted from an upstream.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Largest tag list accepted from an upstream.
pub const MAX_TAGS_LIST_SIZE: usize = 16 * 1024 * 1024;
/// Most rate-limit waits for one request (a `Retry-After` of 0 must not spin).
pub const MAX_RATE_LIMIT_RETRIES: u32 = 3;

/// One configured upstream registry. Clones share the HTTP connection pool and the token
/// cache.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// The registry's API roots in the order they are tried (`url`, then `urls`).
    endpoints: Endpoints,
    /// How each endpoint is reached, by the same index as `endpoints`.
    reach: Vec<Reach>,
    metrics: UpstreamMetrics,
    /// `[outbound] max_rate_limit_wait`: the most one request waits out `Retry-After`s.
    max_rate_limit_wait: Duration,
}

/// The HTTP client (TLS and proxy settings) and credentials of one endpoint.
struct Reach {
    client: reqwest::Client,
    /// For upstreams with `push = true`: the same settings without a read timeout (reqwest
    /// counts it from the start of the request, so a long upload would hit it).
    push_client: Option<reqwest::Client>,
    auth: Authenticator,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.inner.name)
            .field("url", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// A manifest (GET) or its description (HEAD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestResponse {
    /// `Docker-Content-Digest`, when the upstream sent a valid sha256 one.
    pub digest: Option<Digest>,
    /// `Content-Type` without parameters (for a GET without one: the body's `mediaType`).
    pub media_type: String,
    /// The body's length (GET) or `Content-Length` (HEAD).
    pub size: Option<u64>,
    /// The manifest bytes, exactly as sent; `None` for HEAD.
    pub body: Option<Bytes>,
}

/// A blob download under way.
#[derive(Debug)]
pub struct BlobResponse {
    /// The blob's full size when known (`Content-Length` of a 200, or the total of a 206's
    /// `Content-Range`).
    pub size: Option<u64>,
    /// Offset of the first body byte in the blob: the requested range start when the
    /// upstream answered 206, else 0 (an upstream may ignore `Range`).
    pub start: u64,
    pub body: BlobBody,
}

/// The bytes of a blob as they arrive. Counts `upstream_bytes`; a broken connection or a
/// read timeout ends it with an error.
pub struct BlobBody {
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>,
}

impl BlobBody {
    /// A body from any stream (for tests of layers above this one).
    pub fn from_stream(
        stream: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
    ) -> Self {
        BlobBody {
            stream: Box::pin(stream),
        }
    }
}

impl Stream for BlobBody {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobBody")
    }
}

impl Upstream {
    /// The client for `cfg`: reads `password_file` and `ca_file` now; errors name them.
    /// Each endpoint gets its own HTTP client and credentials (see
    /// [`UpstreamConfig::endpoint_configs`]); its proxy follows its settings, then
    /// `outbound`, then the process environment.
    pub fn from_config(
        cfg: &UpstreamConfig,
        outbound: &OutboundConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamError> {
        let env = proxy::ProxyEnv::from_process();
        let upstream_metrics = UpstreamMetrics::new(metrics.clone(), &cfg.name);
        let mut urls = Vec::new();
        let mut reach = Vec::new();
        for endpoint in cfg.endpoint_configs() {
            urls.push(parse_base_url(&cfg.name, &endpoint.url)?);
            let credentials = Credentials::from_config(&endpoint)?;
            let proxy = proxy::ProxyChoice::choose(&endpoint, outbound, &env);
            let client = client::build_http_client(&endpoint, &proxy)?;
            let push_client = if cfg.push {
                let unbounded = UpstreamConfig {
                    read_timeout: crate::config::HumanDuration(Duration::ZERO),
                    ..endpoint.clone()
                };
                Some(client::build_http_client(&unbounded, &proxy)?)
            } else {
                None
            };
            tracing::info!(upstream = %cfg.name, endpoint = %endpoint.url, "outbound: {}", proxy.describe());
            reach.push(Reach {
                client,
                push_client,
                auth: Authenticator::new(credentials, upstream_metrics.clone()),
            });
        }
        let endpoints = Endpoints::new(&cfg.name, urls, &metrics);
        let upstream = Upstream {
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                endpoints,
                reach,
                metrics: upstream_metrics,
                max_rate_limit_wait: outbound.max_rate_limit_wait.get(),
            }),
        };
        if upstream.inner.endpoints.len() > 1 {
            upstream.spawn_prober(outbound.endpoint_backoff.get());
        }
        Ok(upstream)
    }

    /// The endpoints skipped now after failures (empty when all are in use).
    pub fn endpoints_down(&self) -> Vec<String> {
        self.inner.endpoints.down()
    }

    /// Every endpoint's API root (without the trailing `/`), in configured order, and
    /// whether it is in use (`false`: skipped after a failure until a probe answers).
    pub fn endpoints(&self) -> Vec<(String, bool)> {
        let e = &self.inner.endpoints;
        (0..e.len())
            .map(|i| {
                let url = e.get(i).url.as_str().trim_end_matches('/').to_string();
                (url, !e.is_down(i))
            })
            .collect()
    }

    /// The upstream's configured name (`docker.io`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The API root requests go to.
    pub fn base_url(&self) -> &str {
        self.inner.endpoints.get(0).url.as_str()
    }

    /// `GET` (or `HEAD` when `head_only`) `/v2/<repo>/manifests/<reference>`. An empty
    /// `accept` asks for every type in [`MANIFEST_MEDIA_TYPES`].
    pub async fn manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &[String],
        head_only: bool,
    ) -> Result<ManifestResponse, UpstreamError> {
        let path = format!("v2/{repo}/manifests/{reference}");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, accept_header(accept));
        let method = if head_only { Method::HEAD } else { Method::GET };
        let (response, _) = self
            .send(
                RequestKind::Manifest,
                method,
                (&path, None),
                repo,
                headers,
                None,
            )
            .await?;
        let response = success_or_error(response).await?;
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok());
        let header_media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty());
        if head_only {
            let size = content_length(response.headers());
            let media_type = header_media_type.ok_or_else(|| {
                UpstreamError::BadResponse("manifest HEAD without Content-Type".into())
            })?;
            return Ok(ManifestResponse {
                digest,
                media_type,
                size,
                body: None,
            });
        }
        let body = read_limited(response, MAX_MANIFEST_SIZE, self.inner.metrics.bytes()).await?;
        let media_type = match header_media_type {
            Some(t) if t != "application/json" && t != "text/plain" => t,
            from_header => crate::oci::manifest_media_type(&body)
                .or(from_header)
                .ok_or_else(|| {
                    UpstreamError::BadResponse("manifest without Content-Type or mediaType".into())
                })?,
        };
        Ok(ManifestResponse {
            digest,
            media_type,
            size: Some(body.len() as u64),
            body: Some(body),
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, following redirects (to CDNs, without our
    /// `Authorization`). `range` is `(start, inclusive end)`; check [`BlobResponse::start`]
    /// to see whether the upstream honoured it.
    pub async fn blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobResponse, UpstreamError> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let mut headers = HeaderMap::new();
        if let Some((start, end)) = range {
            if end.is_some_and(|end| end < start) {
                return Err(UpstreamError::BadResponse(format!(
                    "invalid range {start}-{end:?} requested"
                )));
            }
            let value = match end {
                Some(end) => format!("bytes={start}-{end}"),
                None => format!("bytes={start}-"),
            };
            headers.insert(
                RANGE,
                HeaderValue::from_str(&value).expect("digits and dashes are a valid header value"),
            );
        }
        // A resume goes first to the endpoint that sent the start of the blob.
        let prefer = range.and_then(|_| self.inner.endpoints.pinned(digest));
        let (response, endpoint) = self
            .send(
                RequestKind::Blob,
                Method::GET,
                (&path, None),
                repo,
                headers,
                prefer,
            )
            .await?;
        let response = success_or_error(response).await?;
        self.inner.endpoints.pin(digest, endpoint);
        let (start, size) = if response.status() == StatusCode::PARTIAL_CONTENT {
            let (start, total) = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| {
                    UpstreamError::BadResponse("206 without a valid Content-Range".into())
                })?;
            let requested_start = range.map(|(start, _)| start);
            if requested_start != Some(start) {
                return Err(UpstreamError::BadResponse(format!(
                    "asked for range from {requested_start:?}, got one from {start}"
                )));
            }
            (start, total)
        } else {
            (0, content_length(response.headers()))
        };
        let bytes_counter = self.inner.metrics.bytes().clone();
        let stream = response.bytes_stream().map(move |chunk| match chunk {
            Ok(bytes) => {
                bytes_counter.inc_by(bytes.len() as u64);
                Ok(bytes)
            }
            Err(err) => Err(UpstreamError::from_body(&err)),
        });
        Ok(BlobResponse {
            size,
            start,
            body: BlobBody::from_stream(stream),
        })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: the blob's size if the upstream says.
    pub async fn blob_head(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let (response, _) = self
            .send(
                RequestKind::Blob,
                Method::HEAD,
                (&path, None),
                repo,
                HeaderMap::new(),
                None,
            )
            .await?;
        let response = success_or_error(response).await?;
        Ok(content_length(response.headers()))
    }

    /// `GET /v2/<repo>/tags/list[?query]`, the JSON body as sent. `query` is the client's
    /// raw `n=..&last=..`.
    pub async fn tags_list(
        &self,
        repo: &RepositoryName,
        query: Option<&str>,
    ) -> Result<Bytes, UpstreamError> {
        Ok(self.tags_list_page(repo, query).await?.body)
    }

    /// One page of `GET /v2/<repo>/tags/list[?query]`, with the query of the next page when
    /// the upstream sent a `Link: <...>; rel="next"` header.
    pub async fn tags_list_page(
        &self,
        repo: &RepositoryName,
        query: Option<&str>,
    ) -> Result<TagsPage, UpstreamError> {
        let path = format!("v2/{repo}/tags/list");
        let query = query.filter(|q| !q.is_empty());
        let (response, _) = self
            .send(
                RequestKind::Tags,
                Method::GET,
                (&path, query),
                repo,
                HeaderMap::new(),
                None,
            )
            .await?;
        let response = success_or_error(response).await?;
        let next_query = next_link_query(response.headers());
        let body = read_limited(response, MAX_TAGS_LIST_SIZE, self.inner.metrics.bytes()).await?;
        Ok(TagsPage { body, next_query })
    }

    /// `GET /v2/<repo>/referrers/<digest>[?artifactType=]` (distribution-spec 1.1). A 404
    /// (the upstream has no referrers API) is [`UpstreamError::NotFound`].
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersResponse, UpstreamError> {
        let path = format!("v2/{repo}/referrers/{subject}");
        // The query, percent-encoded by the URL parser.
        let query = match artifact_type {
            Some(t) => {
                let mut url = self.url_at(0, &path, None)?;
                url.query_pairs_mut().append_pair("artifactType", t);
                url.query().map(str::to_string)
            }
            None => None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        );
        let (response, _) = self
            .send(
                RequestKind::Manifest,
                Method::GET,
                (&path, query.as_deref()),
                repo,
                headers,
                None,
            )
            .await?;
        let response = success_or_error(response).await?;
        let filtered = response
            .headers()
            .get("OCI-Filters-Applied")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|f| f.trim() == "artifactType"));
        let body = read_limited(response, MAX_MANIFEST_SIZE, self.inner.metrics.bytes()).await?;
        Ok(ReferrersResponse { body, filtered })
    }

    /// `GET /v2/` at each endpoint in order until one answers: whether the upstream
    /// answers at all. 200 and 401 both count as up (no credentials are sent or tokens
    /// fetched).
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        let mut last = None;
        for i in self.inner.endpoints.order(None) {
            match self.ping_endpoint(i).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Config("no endpoints".into())))
    }
}

/// A configured endpoint URL as an API root: http(s), ending in `/` so paths join under it.
fn parse_base_url(name: &str, text: &str) -> Result<Url, UpstreamError> {
    let bad = |why: &str| UpstreamError::Config(format!("upstream {name:?}: url {text:?} {why}"));
    let mut url = Url::parse(text).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("must not have a query, fragment or user info"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The Accept header: the caller's types (those that are valid header text), else all
/// manifest types we know.
fn accept_header(accept: &[String]) -> HeaderValue {
    let usable: Vec<&str> = accept
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty() && HeaderValue::from_str(a).is_ok())
        .collect();
    let joined = if usable.is_empty() {
        MANIFEST_MEDIA_TYPES.join(", ")
    } else {
        usable.join(", ")
    };
    HeaderValue::from_str(&joined).unwrap_or_else(|_| {
        HeaderValue::from_str(&MANIFEST_MEDIA_TYPES.join(", "))
            .expect("the built-in media types are valid header text")
    })
}

/// The response if its status is 2xx, else its error.
/// One page of a tag list.
pub struct TagsPage {
    pub body: Bytes,
    /// The query (`n=..&last=..`) of the next page, from the upstream's `Link` header.
    pub next_query: Option<String>,
}

/// An upstream's referrers answer (an OCI image index).
pub struct ReferrersResponse {
    pub body: Bytes,
    /// The upstream applied the `artifactType` filter (`OCI-Filters-Applied`).
    pub filtered: bool,
}

/// The query of a `Link: <url?query>; rel="next"` header (RFC 8288), if any.
fn next_link_query(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let target = link.trim().strip_prefix('<')?.split('>').next()?;
            let query = target.split_once('?')?.1;
            (!query.is_empty()).then(|| query.to_string())
        })
}

async fn success_or_error(response: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(UpstreamError::from_response(response).await)
    }
}

/// `bytes <start>-<end>/<total|*>` → (start, total).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|total| *total > end)?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache spawns tasks around these calls: the client and its futures must be Send.
    #[allow(dead_code)]
    fn futures_are_send(upstream: &Upstream, repo: &RepositoryName, digest: &Digest) {
        fn send<T: Send>(_: T) {}
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Upstream>();
        send(upstream.manifest(repo, &Reference::Digest(*digest), &[], false));
        send(upstream.blob(repo, digest, None));
        send(upstream.blob_head(repo, digest));
        send(upstream.tags_list(repo, None));
        send(upstream.ping());
        fn body_stream<T: Stream + Send + Unpin>() {}
        body_stream::<BlobBody>();
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, Some(10))));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(
            parse_content_range(" bytes  5-5/1000 "),
            Some((5, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 9-0/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("bytes -5/10"), None);
    }

    #[test]
    fn base_urls() {
        let cfg = |url: &'static str| url;
        let url = parse_base_url("x", cfg("https://registry-1.docker.io")).expect("valid");
        assert_eq!(
            url.join("v2/a/b").expect("joins").as_str(),
            "https://registry-1.docker.io/v2/a/b"
        );
        let url = parse_base_url("x", cfg("http://127.0.0.1:5000/mirror")).expect("valid");
        assert_eq!(
            url.join("v2/").expect("joins").as_str(),
            "http://127.0.0.1:5000/mirror/v2/"
        );
        assert!(parse_base_url("x", cfg("ftp://x")).is_err());
        assert!(parse_base_url("x", cfg("registry.example")).is_err());
        assert!(parse_base_url("x", cfg("https://u:p@r.example")).is_err());
    }

    #[test]
    fn accept_headers() {
        let all = accept_header(&[]);
        assert_eq!(
            all.to_str().ok(),
            Some(MANIFEST_MEDIA_TYPES.join(", ").as_str())
        );
        let one = accept_header(&["application/vnd.oci.image.index.v1+json".to_string()]);
        assert_eq!(
            one.to_str().ok(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        let junk = accept_header(&["bad\nvalue".to_string(), " ".to_string()]);
        assert_eq!(junk, all);
    }

    #[test]
    fn media_type_from_body() {
        assert_eq!(
            crate::oci::manifest_media_type(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
            )
            .as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(crate::oci::manifest_media_type(b"{}"), None);
        assert_eq!(crate::oci::manifest_media_type(b"junk"), None);
    }
}
