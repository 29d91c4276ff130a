//! Cache policy between the API and the bytes: hit or miss, tag TTL and revalidation,
//! serve-stale, and single-flight blob fills that stream to every waiting client at its
//! own pace.
//!
//! Owns: deciding whether an answer comes from the [`Store`] or an [`Upstream`], keeping
//! the store filled, and the rules of freshness (`cache.tag_ttl`) and failure (serve what is
//! cached when the upstream is down; 503 when nothing is). Like registry:2's proxy store,
//! it wraps the local store and the remote behind one interface.
//!
//! Private upstreams: content is shared by digest across upstreams, but what was fetched
//! only through an upstream marked `private` is never a hit for a request that names
//! another upstream (see `Cache::visible_through`); such a request is a miss and asks its
//! own upstream, which either has the same bytes or answers 404. Blob fills for a private
//! upstream are single-flight per (digest, upstream), so no other route joins them.
//!
//! Must not: know about HTTP requests or responses (that is `registry`), or how bytes are
//! laid out on disk (that is `store`).

mod blob_stream;
mod blobs;
mod fill;
mod flight;
mod manifests;

use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName};
use crate::registry::RepoTarget;
use crate::store::{Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};
use bytes::Bytes;
use futures_util::Stream;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub struct ManifestAnswer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `None` for HEAD.
    pub bytes: Option<Bytes>,
    /// Answered from the store without fetching it from the upstream.
    pub from_cache: bool,
}

pub struct BlobAnswer {
    pub digest: Digest,
    /// `None` when the upstream did not say (the body is then sent without a length).
    pub size: Option<u64>,
    /// Half-open byte range served.
    pub range: (u64, u64),
    pub partial: bool,
    /// `None` for HEAD.
    pub body: Option<BlobStream>,
    /// The blob is in the store (a hit), not being fetched.
    pub from_cache: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("manifest {0} is unknown")]
    ManifestUnknown(String),
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    #[error("{0}")]
    NameUnknown(String),
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("upstream {upstream} is unreachable: {detail}")]
    Unavailable { upstream: String, detail: String },
    /// The upstream is rate-limiting us for longer than we wait; `retry_after` is what it
    /// asked for, to pass on to the client.
    #[error("upstream {upstream} is rate-limiting this edge: {detail}")]
    RateLimited {
        upstream: String,
        retry_after: Option<Duration>,
        detail: String,
    },
    #[error("upstream {upstream} sent bad content: {detail}")]
    BadUpstreamContent { upstream: String, detail: String },
    #[error("{0}")]
    Denied(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl CacheError {
    /// An upstream failure that may pass (`RateLimited` when the upstream asked us to
    /// wait, else `Unavailable`).
    fn unavailable(upstream: &str, e: &UpstreamError) -> Self {
        match e.rate_limit_wait() {
            Some(retry_after) => CacheError::RateLimited {
                upstream: upstream.to_string(),
                retry_after,
                detail: e.to_string(),
            },
            None => CacheError::Unavailable {
                upstream: upstream.to_string(),
                detail: e.to_string(),
            },
        }
    }
}

/// Settings the cache reads from the config.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// How long a cached tag answers without asking the upstream.
    pub tag_ttl: Duration,
    /// Names of the upstreams marked `private = true`.
    pub private_upstreams: HashSet<String>,
    /// Test hook (`SPARKCR_EDGE_TEST_HOLD_COMMIT_MS`): how long a verified fill waits
    /// before it makes the blob durable and commits it. Zero in production.
    pub hold_commit: Duration,
}

pub struct Cache {
    store: Store,
    upstreams: HashMap<String, Upstream>,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    /// Blob fills under way, by digest (and upstream, for private ones): single-flight.
    fills: fill::Fills,
    /// One revalidation at a time per tag; waiters then read the fresh record.
    tag_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Runs a blocking store call off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, CacheError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(CacheError::from),
        Err(e) => Err(CacheError::Internal(format!("store task failed: {e}"))),
    }
}

impl Cache {
    pub fn new(
        store: Store,
        upstreams: Vec<Upstream>,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Cache {
            store,
            upstreams: upstreams
                .into_iter()
                .map(|u| (u.name().to_string(), u))
                .collect(),
            settings,
            metrics,
            fills: Default::default(),
            tag_locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Upstream endpoints skipped now after failures, as (upstream, endpoint URL), sorted.
    pub fn endpoints_down(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .upstreams
            .iter()
            .flat_map(|(name, up)| up.endpoints_down().into_iter().map(|e| (name.clone(), e)))
            .collect();
        out.sort();
        out
    }

    pub(crate) fn is_private(&self, upstream: &str) -> bool {
        self.settings.private_upstreams.contains(upstream)
    }

    /// Whether content recorded as fetched through `repos` (`upstream/repo` each) may be a
    /// hit for `target`: unless every origin is a private upstream other than the target's.
    /// Content with no recorded origin is visible only when no upstream is private.
    pub(crate) fn visible_through(&self, repos: &[String], target: &RepoTarget) -> bool {
        if self.settings.private_upstreams.is_empty() {
            return true;
        }
        let visible = repos.iter().any(|r| {
            let upstream = r.split_once('/').map_or(r.as_str(), |(u, _)| u);
            upstream == target.upstream || !self.is_private(upstream)
        });
        if !visible {
            self.metrics.private_content_refusals.inc();
            tracing::debug!(upstream = %target.upstream, repo = %target.repo, "cached content came only through other, private upstreams; asking the requested upstream");
        }
        visible
    }

    fn upstream(&self, target: &RepoTarget) -> Result<&Upstream, CacheError> {
        self.upstreams.get(&target.upstream).ok_or_else(|| {
            CacheError::NameUnknown(format!("upstream {:?} is not configured", target.upstream))
        })
    }

    /// Maps an upstream failure for content we do not have.
    fn upstream_failure(
        &self,
        target: &RepoTarget,
        e: UpstreamError,
        unknown: CacheError,
    ) -> CacheError {
        if e.is_not_found() {
            unknown
        } else if e.is_unavailable() {
            CacheError::unavailable(&target.upstream, &e)
        } else {
            CacheError::BadUpstreamContent {
                upstream: target.upstream.clone(),
                detail: e.to_string(),
            }
        }
    }

    /// `/v2/<name>/tags/list`: proxied; the last answer is kept and served when the
    /// upstream is down.
    pub async fn tags_list(
        &self,
        target: &RepoTarget,
        query: Option<&str>,
    ) -> Result<Bytes, CacheError> {
        let upstream = self.upstream(target)?;
        let query = query.filter(|q| !q.is_empty());
        match upstream.tags_list(&target.repo, query).await {
            Ok(body) => {
                if query.is_none() {
                    let (store, up, repo, b) = (
                        self.store.clone(),
                        target.upstream.clone(),
                        target.repo.clone(),
                        body.clone(),
                    );
                    if let Err(e) = blocking(move || store.put_tag_list(&up, &repo, &b)).await {
                        tracing::warn!(error = %e, "cannot keep the tag list");
                    }
                }
                Ok(body)
            }
            Err(e) if e.is_unavailable() => {
                let (store, up, repo) = (
                    self.store.clone(),
                    target.upstream.clone(),
                    target.repo.clone(),
                );
                match blocking(move || store.tag_list(&up, &repo)).await? {
                    Some(cached) => {
                        self.metrics.stale_served.with_label_values(&["tags"]).inc();
                        tracing::warn!(upstream = %target.upstream, repo = %target.repo, error = %e, "upstream down; serving the cached tag list");
                        Ok(cached)
                    }
                    None => Err(CacheError::unavailable(&target.upstream, &e)),
                }
            }
            Err(e) => Err(self.upstream_failure(
                target,
                e,
                CacheError::NameUnknown(format!(
                    "repository {} is unknown to {}",
                    target.repo, target.upstream
                )),
            )),
        }
    }

    /// `/v2/_catalog`: the repositories this edge has cached, as `<upstream>/<repo>`.
    pub async fn catalog(&self) -> Result<Vec<String>, CacheError> {
        let store = self.store.clone();
        let repos: Vec<(String, RepositoryName)> = blocking(move || store.repositories()).await?;
        let mut names: Vec<String> = repos.into_iter().map(|(u, r)| format!("{u}/{r}")).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}
