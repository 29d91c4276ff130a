//! Cache policy between the API and the bytes: hit or miss, tag TTL and revalidation,
//! serve-stale (manifests, tag lists, referrers), which repositories may see content stored
//! by digest, and single-flight blob fills that stream to every waiting client at its
//! own pace.
//!
//! Owns: deciding whether an answer comes from the [`Store`] or an upstream, keeping
//! the store filled, and the rules of freshness (`cache.tag_ttl`) and failure (serve what is
//! cached when the upstream is down; 503 when nothing is). Like registry:2's proxy store,
//! it wraps the local store and the remote behind one interface. The remote is reached
//! through the seams of `sources` ([`BlobSource`], [`ManifestSource`]): the real
//! [`Upstream`], shared tier and peers in production, fakes in the tests of `tests`.
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
mod cooldown;
mod fill;
mod fill_registry;
mod flight;
mod gate;
mod manifests;
mod piece_width;
mod pieces;
pub mod push;
mod referrers;
mod reorder;
mod resume;
mod signatures;
mod sources;
mod tags;
#[cfg(test)]
mod tests;
mod tiered;

pub use fill_registry::FillProgress;
pub use gate::PullRules;
pub use pieces::PieceRule;
pub use referrers::{ReferrersAnswer, INDEX_MEDIA_TYPE as REFERRERS_MEDIA_TYPE};
pub use sources::{BlobSource, ManifestSource, Origin, SourceFuture, SourcedBlob};
pub use tags::TagList;
pub use tiered::{Requester, Tiers, PEER_HEADER};

use crate::metrics::Metrics;
use crate::oci::{Digest, RepoKey, RepoTarget, RepositoryName};
use crate::store::{GrowthFailure, Store, StoreError};
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
    /// Served from the store because the upstream could not be asked (tag past its TTL).
    pub stale: bool,
    /// Served from the store although the tag moved upstream, because the upstream's pull
    /// quota is at its `quota_reserve` (also `stale`).
    pub quota_reserved: bool,
    /// The upstream's `Cache-Status` for a manifest it answered now (a parent edge's
    /// entries), shown before this edge's own.
    pub upstream_cache_status: Option<String>,
    /// What the trust gate decided for this answer, in words (for the audit trail): a
    /// cooldown serving an earlier digest, a verified signature.
    pub decision: Option<Arc<str>>,
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
    /// A miss served by another request's fill (single flight): no upstream request of
    /// its own.
    pub collapsed: bool,
    /// The upstream's `Cache-Status` for the fill this answer follows (a parent edge's
    /// entries), shown before this edge's own.
    pub upstream_cache_status: Option<String>,
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
    #[error("upstream {upstream} is unreachable")]
    Unavailable {
        upstream: String,
        #[source]
        source: FetchFailure,
    },
    /// The upstream is rate-limiting us for longer than we wait; `retry_after` is what it
    /// asked for, to pass on to the client.
    #[error("upstream {upstream} is rate-limiting this edge")]
    RateLimited {
        upstream: String,
        retry_after: Option<Duration>,
        #[source]
        source: FetchFailure,
    },
    #[error("upstream {upstream} sent content this edge will not serve")]
    BadUpstreamContent {
        upstream: String,
        #[source]
        source: FetchFailure,
    },
    /// The trust gate refused the manifest: a `[[policy]]` block's cooldown or signature
    /// requirement (`check`: `cooldown` or `signature`).
    #[error("{message}")]
    PolicyRefused {
        block: Arc<str>,
        check: &'static str,
        message: String,
    },
    #[error("the cache store failed")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// Why content could not be fetched through an upstream: the source carried by
/// [`CacheError::Unavailable`] and [`CacheError::BadUpstreamContent`]. Upstream, fill and
/// store-growth failures all become this one type, and [`Cache::fetch_failure`] turns it
/// into a [`CacheError`] in one place.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The blob fill this request joined could not start or stopped.
    #[error("{0}")]
    Fill(String),
    /// The fill's bytes failed verification or their source broke.
    #[error("{0}")]
    Growth(GrowthFailure),
    /// The upstream's answer was well-formed HTTP but wrong content (digest mismatch,
    /// missing length).
    #[error("{0}")]
    Content(String),
}

/// What a [`FetchFailure`] means for the client.
enum FailureKind {
    NotFound,
    /// Rate-limited, with the delay the upstream asked for.
    RateLimited(Option<Duration>),
    Unavailable,
    BadContent,
}

impl FetchFailure {
    fn kind(&self) -> FailureKind {
        match self {
            FetchFailure::Upstream(e) if e.is_not_found() => FailureKind::NotFound,
            FetchFailure::Upstream(UpstreamError::RateLimited { retry_after, .. }) => {
                FailureKind::RateLimited(*retry_after)
            }
            FetchFailure::Upstream(e) if e.is_unavailable() => FailureKind::Unavailable,
            FetchFailure::Upstream(_) => FailureKind::BadContent,
            FetchFailure::Fill(_) => FailureKind::Unavailable,
            FetchFailure::Growth(GrowthFailure::Mismatch(_)) => FailureKind::BadContent,
            FetchFailure::Growth(_) => FailureKind::Unavailable,
            FetchFailure::Content(_) => FailureKind::BadContent,
        }
    }
}

impl From<GrowthFailure> for FetchFailure {
    fn from(f: GrowthFailure) -> Self {
        FetchFailure::Growth(f)
    }
}

impl From<fill::FillFailure> for FetchFailure {
    fn from(f: fill::FillFailure) -> Self {
        match f {
            fill::FillFailure::NotFound => FetchFailure::Upstream(UpstreamError::NotFound),
            fill::FillFailure::Unavailable(m) => FetchFailure::Fill(m),
            fill::FillFailure::RateLimited {
                status,
                retry_after,
            } => FetchFailure::Upstream(UpstreamError::RateLimited {
                status,
                retry_after,
            }),
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
    /// `cache.follower_stall`: a client following a blob fill that delivers no new bytes
    /// for this long takes it over with a new fill. Never a deadline on a fill that is
    /// still delivering bytes, however slowly.
    pub follower_stall: Duration,
    /// How a large blob is cut into ranged pieces fetched at once (`cache.fill_pieces` in
    /// flight; `1`: one stream per blob). See `pieces`.
    pub pieces: PieceRule,
    /// A fill of a blob the store is not keeping (larger than the budget) stops after
    /// nobody has read it for this long (`DEFAULT_UNREAD_GRACE` in production).
    pub unread_grace: Duration,
    /// `quota_reserve` of the upstreams that set one (see `manifests`).
    pub quota_reserves: HashMap<String, u64>,
}

impl CacheSettings {
    /// The default of `cache.follower_stall`.
    pub const DEFAULT_FOLLOWER_STALL: Duration = Duration::from_secs(30);
    /// How long a fill of a blob that is not being stored goes on with no reader.
    pub const DEFAULT_UNREAD_GRACE: Duration = fill::UNREAD_GRACE;
}

/// An upstream's name, first endpoint, and every endpoint's API root with whether it is in
/// use (for the status page).
pub struct UpstreamEndpoints {
    pub name: String,
    pub base_url: String,
    pub endpoints: Vec<(String, bool)>,
    /// Blob downloads open now, and the upstream's `max_connections`.
    pub blob_connections: (usize, usize),
}

pub struct Cache {
    store: Store,
    /// The upstreams' clients (the push side and the status page use them); empty for a
    /// cache built on other sources (see [`Cache::from_origins`]).
    upstreams: HashMap<String, Upstream>,
    /// What the cache asks for content, by upstream name.
    origins: HashMap<String, Origin>,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    /// Blob fills under way, by digest (and upstream, for private ones): single flight,
    /// and each fill's record (repository, start, joins, progress).
    fills: Arc<fill_registry::FillRegistry>,
    /// One revalidation at a time per tag; waiters then read the fresh record.
    tag_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tag lists of public upstreams fetched within `tag_ttl`, with when (see `tags`).
    tag_lists: Mutex<HashMap<String, (std::time::Instant, Vec<String>)>>,
    /// Signature verdicts (`[[policy]] require_signature`).
    signatures: signatures::SignatureVerdicts,
    /// The shared tier and the cluster's peers, behind the local store (see `tiered`).
    tiers: Tiers,
    /// The runtime the cache was built on, where blob fills run: a request may arrive on a
    /// connection worker, but a fill serves every joiner and shutdown waits for it.
    runtime: Option<tokio::runtime::Handle>,
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
    /// The cache over the configured upstreams.
    pub fn new(
        store: Store,
        upstreams: Vec<Upstream>,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let origins = upstreams
            .iter()
            .map(|u| (u.name().to_string(), Origin::upstream(u)))
            .collect();
        let mut cache = Cache::from_origins(store, origins, settings, metrics);
        cache.upstreams = upstreams
            .into_iter()
            .map(|u| (u.name().to_string(), u))
            .collect();
        cache
    }

    /// The cache over any sources, by upstream name (tests drive it in-process this way).
    pub fn from_origins(
        store: Store,
        origins: HashMap<String, Origin>,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Cache {
            store,
            upstreams: HashMap::new(),
            origins,
            settings,
            metrics,
            fills: Default::default(),
            tag_locks: Mutex::new(HashMap::new()),
            tag_lists: Mutex::new(HashMap::new()),
            signatures: Default::default(),
            tiers: Tiers::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Puts the shared tier and the cluster's peers behind the local store.
    pub fn with_tiers(mut self, tiers: Tiers) -> Self {
        self.tiers = tiers;
        self
    }

    /// Why the shared tier is not used now, for `/readyz` and the status page.
    pub fn shared_tier_warning(&self) -> Option<String> {
        self.tiers.shared.as_ref().and_then(|s| s.warning())
    }

    /// Blob fills still running (receiving, or making a verified blob durable).
    pub fn fills_running(&self) -> usize {
        self.fills.running()
    }

    /// Waits, at most `limit`, until no blob fill is running, so that a stop does not
    /// throw away blobs whose bytes all arrived but that are not committed yet. Returns
    /// whether every fill ended in time.
    pub async fn fills_settled(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.fills_running() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The client of upstream `name` (the push side shares it, and its token cache).
    pub fn upstream_named(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.get(name)
    }

    /// The blob fills under way (for the status page).
    pub fn fills_in_progress(&self) -> Vec<FillProgress> {
        self.fills.in_progress()
    }

    /// The configured upstreams, by name.
    pub fn upstream_urls(&self) -> Vec<UpstreamEndpoints> {
        let mut all: Vec<_> = self
            .upstreams
            .values()
            .map(|u| UpstreamEndpoints {
                name: u.name().to_string(),
                base_url: u.base_url().to_string(),
                endpoints: u.endpoints(),
                blob_connections: u.blob_connections(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
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
            let key = RepoKey::from_stored(r.as_str());
            key.upstream() == target.upstream || !self.is_private(key.upstream())
        });
        if !visible {
            self.metrics.private_content_refusals.inc();
            tracing::debug!(upstream = %target.upstream, repo = %target.repo, "cached content came only through other, private upstreams; asking the requested upstream");
        }
        visible
    }

    /// Content recorded under `target`'s repository of that upstream (`upstream/repo`).
    pub(crate) fn seen_under(repos: &[String], target: &RepoTarget) -> bool {
        let key = target.key();
        repos.iter().any(|r| key == *r)
    }

    fn origin(&self, target: &RepoTarget) -> Result<&Origin, CacheError> {
        self.origins.get(&target.upstream).ok_or_else(|| {
            CacheError::NameUnknown(format!("upstream {} is not configured", target.upstream))
        })
    }

    /// Where `target`'s manifests, tag lists and referrers come from.
    fn manifest_source(&self, target: &RepoTarget) -> Result<&dyn ManifestSource, CacheError> {
        Ok(&*self.origin(target)?.manifests)
    }

    /// The one conversion of a fetch failure for content we do not have: `unknown` when
    /// the upstream says it does not exist, else unavailable or bad content.
    pub(crate) fn fetch_failure(
        &self,
        target: &RepoTarget,
        failure: impl Into<FetchFailure>,
        unknown: CacheError,
    ) -> CacheError {
        let source = failure.into();
        let upstream = target.upstream.clone();
        match source.kind() {
            FailureKind::NotFound => unknown,
            FailureKind::RateLimited(retry_after) => CacheError::RateLimited {
                upstream,
                retry_after,
                source,
            },
            FailureKind::Unavailable => CacheError::Unavailable { upstream, source },
            FailureKind::BadContent => CacheError::BadUpstreamContent { upstream, source },
        }
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
