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
//! Blob GETs go through a second client per endpoint, HTTP/1.1 only, so each download in
//! flight has a TCP connection of its own (see `client::Protocols`); each takes one of the
//! upstream's `max_connections` slots before it is sent, and its body holds it and passes
//! its bytes through the `max_rate` caps (`pacing`). A ranged GET of a blob that was just
//! redirected to another origin goes straight to the redirect's target (`redirects`).
//!
//! Submodules: `client` (reqwest + rustls construction), [`proxy`] (which outbound proxy,
//! and its precedence), `endpoints` (order and health of an upstream's endpoints),
//! `exchange` (the endpoint walk, rate-limit waits, auth around each attempt, the prober),
//! `auth` (credentials, tokens),
//! [`challenge`] (`WWW-Authenticate` parsing), `transport` (one measured exchange, bounded
//! bodies), `pacing` (blob slots, rate caps), `redirects` (recent redirect targets),
//! `error`.
//!
//! Must not: import `server`, `registry`, `cache` or `store`; verify digests or store
//! anything (the cache does); log credentials or tokens.

mod auth;
pub mod challenge;
mod client;
mod endpoints;
mod error;
mod exchange;
mod pacing;
pub mod proxy;
mod push;
pub mod quota;
mod redirects;
mod transport;
mod trust;

pub use client::{MAX_REDIRECTS, USER_AGENT};
pub use error::{retry_after_seconds, UpstreamError};
pub use pacing::RateLimit;
pub use push::{MountOutcome, PushError, UpstreamUpload};

use crate::config::{OutboundConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepositoryName, MANIFEST_MEDIA_TYPES};
use auth::{Authenticator, Credentials};
use bytes::Bytes;
use client::Protocols;
use endpoints::Endpoints;
use futures_util::{Stream, StreamExt};
use pacing::{BlobSlot, BlobSlots, Pace};
use redirects::Redirects;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode, Url};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use transport::{content_length, read_limited, RequestKind, UpstreamMetrics};
use trust::CredentialTrust;

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
    /// `max_connections`: one slot per blob GET, held by its body. Other requests take
    /// none: they go through the other client, so they are never queued behind blobs
    /// (the reserved slot).
    blob_slots: BlobSlots,
    /// The `max_rate` caps every blob body goes through (this upstream's, the edge's).
    pace: Pace,
    /// Where recent blob GETs were redirected to.
    redirects: Redirects,
}

/// The HTTP clients (TLS and proxy settings) and credentials of one endpoint.
struct Reach {
    /// Manifests, tags, tokens, HEADs (HTTP/2 when offered: one connection for all).
    client: reqwest::Client,
    /// Blob GETs only, HTTP/1.1: a connection per download in flight (see
    /// `client::Protocols`). Same proxy, trust and timeouts as `client`.
    blob_client: reqwest::Client,
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
    /// The upstream's own `Cache-Status` (a parent edge's entries, at most 1 KiB), so an
    /// answer through a chain of edges shows every hop.
    pub cache_status: Option<String>,
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
    /// The upstream answered 206: the body is the requested range, not the whole blob
    /// (the two look alike by `start` and `size` when the range starts at 0).
    pub partial: bool,
    /// The upstream's `Cache-Status` (a parent edge's entries), at most 1 KiB.
    pub cache_status: Option<String>,
    pub body: BlobBody,
}

/// A response's `Cache-Status` (a parent edge's entries), if it has a short one.
fn cache_status_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 1024)
        .map(str::to_string)
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
    /// Each endpoint gets its own HTTP clients and credentials (see
    /// [`UpstreamConfig::endpoint_configs`]); its proxy follows its settings, then
    /// `outbound`, then the process environment. `edge_rate` is the edge-wide cap of
    /// `[outbound] max_rate`, one [`RateLimit`] shared by every upstream (made by the
    /// caller from `outbound.max_rate`).
    pub fn from_config(
        cfg: &UpstreamConfig,
        outbound: &OutboundConfig,
        edge_rate: Option<&RateLimit>,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamError> {
        Upstream::from_config_via(cfg, outbound, edge_rate, None, metrics)
    }

    /// [`from_config`](Self::from_config), with `via` (this edge's hop,
    /// [`crate::oci::hops::own_hop`]) in a `Via` header on every request that serves no
    /// client request (one that does carries that request's chain).
    pub fn from_config_via(
        cfg: &UpstreamConfig,
        outbound: &OutboundConfig,
        edge_rate: Option<&RateLimit>,
        via: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamError> {
        let via = via
            .map(reqwest::header::HeaderValue::from_str)
            .transpose()
            .map_err(|e| UpstreamError::Config(format!("Via header: {e}")))?;
        let via = via.as_ref();
        let env = proxy::ProxyEnv::from_process();
        let upstream_metrics = UpstreamMetrics::new(metrics.clone(), &cfg.name);
        let mut urls = Vec::new();
        let mut reach = Vec::new();
        for endpoint in cfg.endpoint_configs() {
            let url = parse_base_url(&cfg.name, &endpoint.url)?;
            let trust = CredentialTrust::new(&cfg.name, &url, &cfg.token_hosts);
            urls.push(url);
            let credentials = Credentials::from_config(&endpoint)?;
            let proxy = proxy::ProxyChoice::choose(&endpoint, outbound, &env);
            let client = client::build_http_client(&endpoint, &proxy, Protocols::H2OrHttp11, via)?;
            let blob_client =
                client::build_http_client(&endpoint, &proxy, Protocols::Http11Only, via)?;
            let push_client = if cfg.push {
                let unbounded = UpstreamConfig {
                    read_timeout: crate::config::HumanDuration(Duration::ZERO),
                    ..endpoint.clone()
                };
                Some(client::build_http_client(
                    &unbounded,
                    &proxy,
                    Protocols::H2OrHttp11,
                    via,
                )?)
            } else {
                None
            };
            tracing::info!(upstream = %cfg.name, endpoint = %endpoint.url, "outbound: {}", proxy.describe());
            reach.push(Reach {
                client,
                blob_client,
                push_client,
                auth: Authenticator::new(credentials, trust, upstream_metrics.clone()),
            });
        }
        let endpoints = Endpoints::new(&cfg.name, urls, &metrics);
        let label = [cfg.name.as_str()];
        let blob_slots = BlobSlots::new(
            cfg.max_connections,
            metrics
                .upstream_blob_connections_in_use
                .with_label_values(&label),
            metrics.upstream_blob_slot_waits.with_label_values(&label),
        );
        let rate_limits = cfg
            .max_rate
            .map(RateLimit::new)
            .into_iter()
            .chain(edge_rate.cloned())
            .collect();
        let pace = Pace::new(
            rate_limits,
            metrics
                .upstream_rate_limited_seconds
                .with_label_values(&label),
        );
        let upstream = Upstream {
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                endpoints,
                reach,
                metrics: upstream_metrics,
                max_rate_limit_wait: outbound.max_rate_limit_wait.get(),
                blob_slots,
                pace,
                redirects: Redirects::default(),
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

    /// Blob downloads (one connection each) open now, and `max_connections`.
    pub fn blob_connections(&self) -> (usize, usize) {
        self.inner.blob_slots.usage()
    }

    /// Blob downloads that may start now without waiting (of `max_connections`).
    pub fn blob_slots_free(&self) -> usize {
        self.inner.blob_slots.free()
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
        let cache_status = cache_status_of(response.headers());
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
                cache_status,
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
            cache_status,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, following redirects (to CDNs, without our
    /// `Authorization`). `range` is `(start, inclusive end)`; check [`BlobResponse::start`]
    /// to see whether the upstream honoured it.
    ///
    /// Waits for one of the upstream's `max_connections` slots first; the body holds it
    /// until it ends or is dropped, and its bytes are paced by `max_rate`. Each download in
    /// flight has its own connection, so several ranged GETs of one blob may run at once.
    /// A ranged GET of a blob redirected to another origin (a CDN) less than a minute ago
    /// goes straight to the redirect's target; if that fails, to the registry as usual.
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
        let slot = self.inner.blob_slots.acquire().await;
        if range.is_some() {
            if let Some(response) = self.get_redirect_target(repo, digest, &headers).await {
                return self.blob_response(response, range, slot);
            }
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
        // Only a redirect to another origin is remembered: reqwest dropped our
        // `Authorization` on the way there, so the target answers without it (a redirect
        // within the registry kept it, and the target may need it).
        let asked = self.url_at(endpoint, &path, None)?;
        if response.url().origin() != asked.origin() {
            self.inner
                .redirects
                .remember(repo, digest, response.url().clone(), endpoint);
        }
        self.blob_response(response, range, slot)
    }

    /// A GET of the target `digest` in `repo` was redirected to lately, if there is one
    /// and it answers 200 or 206: sent without `Authorization` (the target is signed),
    /// through the blob client of the endpoint that was redirected. Any other answer
    /// forgets the target.
    async fn get_redirect_target(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        headers: &HeaderMap,
    ) -> Option<reqwest::Response> {
        let (url, endpoint) = self.inner.redirects.target(repo, digest)?;
        let reach = self.inner.reach.get(endpoint)?;
        let request = reach.blob_client.get(url).headers(headers.clone());
        match transport::send(&self.inner.metrics, RequestKind::Blob, request).await {
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::OK | StatusCode::PARTIAL_CONTENT
                ) =>
            {
                return Some(response);
            }
            Ok(response) => {
                tracing::debug!(upstream = %self.inner.name, %repo, %digest, status = response.status().as_u16(), "redirect target refused; asking the registry again");
                transport::discard(response).await;
            }
            Err(e) => {
                tracing::debug!(upstream = %self.inner.name, %repo, %digest, error = %e, "redirect target failed; asking the registry again");
            }
        }
        self.inner.redirects.forget(repo, digest);
        None
    }

    /// The [`BlobResponse`] of a 200 or 206 to a GET for `range`; its body holds `slot`.
    fn blob_response(
        &self,
        response: reqwest::Response,
        range: Option<(u64, Option<u64>)>,
        slot: BlobSlot,
    ) -> Result<BlobResponse, UpstreamError> {
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        let (start, size) = if partial {
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
        let cache_status = cache_status_of(response.headers());
        Ok(BlobResponse {
            size,
            start,
            partial,
            cache_status,
            body: paced_body(
                response,
                slot,
                self.inner.pace.clone(),
                self.inner.metrics.bytes().clone(),
            ),
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

/// A blob body: counts `upstream_bytes`, passes the bytes through `pace` as they arrive
/// (a body over its rate waits before yielding, so its connection is read no faster), and
/// holds `slot` until it ends, fails or is dropped.
fn paced_body(
    response: reqwest::Response,
    slot: BlobSlot,
    pace: Pace,
    bytes_counter: prometheus::IntCounter,
) -> BlobBody {
    type Chunks = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;
    struct Reading {
        chunks: Chunks,
        pace: Pace,
        bytes_counter: prometheus::IntCounter,
        _slot: BlobSlot,
    }
    let reading = Reading {
        chunks: Box::pin(response.bytes_stream()),
        pace,
        bytes_counter,
        _slot: slot,
    };
    // `None` once the body ended or failed: the slot is given back then.
    let stream = futures_util::stream::unfold(Some(reading), |reading| async move {
        let mut reading = reading?;
        match reading.chunks.next().await? {
            Ok(bytes) => {
                reading.bytes_counter.inc_by(bytes.len() as u64);
                if !reading.pace.is_unlimited() {
                    reading.pace.pace(bytes.len()).await;
                }
                Some((Ok(bytes), Some(reading)))
            }
            Err(err) => Some((Err(UpstreamError::from_body(&err)), None)),
        }
    });
    BlobBody::from_stream(stream)
}

/// A configured endpoint URL as an API root: http(s), ending in `/` so paths join under it.
fn parse_base_url(name: &str, text: &str) -> Result<Url, UpstreamError> {
    let bad = |why: &str| {
        let shown = crate::config::outbound::redacted_url(text);
        UpstreamError::Config(format!("upstream {name:?}: url {shown:?} {why}"))
    };
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
