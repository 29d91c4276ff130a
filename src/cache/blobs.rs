//! Blobs: hits stream from the store (inline, no blocking-pool round trip); misses lead or
//! follow the single-flight fill for the digest; HEAD on a miss asks the upstream for the
//! size without fetching.
//!
//! A `Range` request on a blob that is not stored yet is answered at once, like a whole
//! GET: headers as soon as the fill knows the blob's size, bytes as the fill reaches them,
//! and the range's last byte only once the whole blob's digest matched (a mismatch ends
//! the response short, so no client takes it as complete). A bounded range therefore
//! completes only when the whole blob is verified: early headers and bytes, not early
//! completion. A fill whose source announced no size is waited for (the range cannot be
//! resolved before). Ranges of stored blobs are immediate.
//!
//! A client following a fill that delivers no new bytes for `cache.follower_stall` takes
//! it over (`FillStarter::take_over`): never a deadline on a fill still delivering bytes.

use super::blob_stream::{self, OnStall, Refetch, StallWatch, TakeOverFuture, Watched, STALLED};
use super::fill::{FillJob, FillKey};
use super::fill_registry::{FillFollower, FillLead, FillOrigin, FillRegistry, FillRole};
use super::flight::Landing;
use super::pieces::PieceRule;
use super::sources::BlobSource;
use super::tiered::{self, Requester, Tiers};
use super::{BlobAnswer, Cache, CacheError, FetchFailure};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::oci::{ByteRangeSpec, RepoTarget};
use crate::store::{GrowingBlob, GrowthFailure, Store};
use std::sync::Arc;
use std::time::Duration;

/// What the store has for a blob request.
enum Hit {
    Served(Box<BlobAnswer>),
    /// Stored, but not recorded under the requested repository of that upstream.
    Unseen,
    Miss,
}

/// How often a request re-claims a fill whose leader died before it started.
const ABANDONED_RETRIES: u32 = 2;

impl Cache {
    pub async fn blob(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
    ) -> Result<BlobAnswer, CacheError> {
        self.blob_for(target, digest, range, head, Requester::Client)
            .await
    }

    /// [`blob`](Self::blob) for a client or for a peer edge of the cluster (a peer's miss
    /// is never forwarded to another peer).
    pub async fn blob_for(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
        requester: Requester,
    ) -> Result<BlobAnswer, CacheError> {
        if requester == Requester::Peer {
            self.metrics.tiers.peer_requests_served.inc();
        }
        match self.blob_hit(target, digest, range, head, false, requester)? {
            Hit::Served(answer) => Ok(*answer),
            Hit::Miss => self.blob_miss(target, digest, range, head, requester).await,
            Hit::Unseen => {
                // Stored, but never seen under this repository: only once the upstream
                // says the repository has it (bytes stay shared across repositories).
                self.confirm_blob(target, digest).await?;
                match self.blob_hit(target, digest, range, head, true, requester)? {
                    Hit::Served(answer) => Ok(*answer),
                    Hit::Miss | Hit::Unseen => {
                        self.blob_miss(target, digest, range, head, requester).await
                    }
                }
            }
        }
    }

    /// A HEAD to the upstream: does `target`'s repository have this blob?
    async fn confirm_blob(&self, target: &RepoTarget, digest: &Digest) -> Result<(), CacheError> {
        self.metrics
            .repo_confirmations
            .with_label_values(&["blob"])
            .inc();
        self.origin(target)?
            .blobs
            .blob_size(target, digest)
            .await
            .map(|_| ())
            .map_err(|e| self.fetch_failure(target, e, CacheError::BlobUnknown(*digest)))
    }

    fn blob_hit(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
        confirmed: bool,
        requester: Requester,
    ) -> Result<Hit, CacheError> {
        let Some(info) = self
            .store
            .blob(digest)?
            .filter(|info| self.visible_through(&info.repos, target))
        else {
            return Ok(Hit::Miss);
        };
        if !confirmed && !Self::seen_under(&info.repos, target) {
            return Ok(Hit::Unseen);
        }
        let (start, end, partial) = resolve(range, info.size)?;
        let body = if head {
            None
        } else {
            match self.store.read_blob(digest, start, end)? {
                Some(reader) => Some(blob_stream::from_store(reader, self.metrics.clone())),
                // Evicted between the two lookups.
                None => return Ok(Hit::Miss),
            }
        };
        // A peer edge's request is not a client pull.
        if requester == Requester::Client {
            self.metrics.cache_hits.with_label_values(&["blob"]).inc();
        }
        self.note_blob_repo(digest, &info.repos, target);
        Ok(Hit::Served(Box::new(BlobAnswer {
            digest: *digest,
            size: Some(info.size),
            range: (start, end),
            partial,
            body,
            from_cache: true,
            collapsed: false,
            upstream_cache_status: None,
        })))
    }

    fn note_blob_repo(&self, d: &Digest, repos: &[String], target: &RepoTarget) {
        let key = target.key();
        if repos.iter().any(|r| key == *r) {
            return;
        }
        if let Err(e) = self.store.add_repo(d, key.as_str()) {
            tracing::debug!(error = %e, "cannot record repository for blob {d}");
        }
    }

    /// What it takes to lead the fill of `digest` for `target` (and to take over a stalled
    /// one).
    fn fill_starter(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        key: &FillKey,
        requester: Requester,
    ) -> Result<FillStarter, CacheError> {
        Ok(FillStarter {
            fills: Arc::clone(&self.fills),
            store: self.store.clone(),
            source: Arc::clone(&self.origin(target)?.blobs),
            target: target.clone(),
            digest: *digest,
            key: key.clone(),
            requester,
            metrics: self.metrics.clone(),
            hold_commit: self.settings.hold_commit,
            pieces: self.settings.pieces,
            unread_grace: self.settings.unread_grace,
            tiers: self.tiers.clone(),
            runtime: self.runtime.clone(),
        })
    }

    /// The growing blob of the fill `starter` is for: joined, or started by this request.
    /// The fill's blob, and whether this request joined another's fill (collapsed).
    async fn join_fill(
        &self,
        starter: &FillStarter,
    ) -> Result<(Arc<GrowingBlob>, bool), CacheError> {
        let (target, digest) = (&starter.target, &starter.digest);
        let mut tries = 0;
        loop {
            let mut joined = false;
            let follower = match starter.claim() {
                FillRole::Lead(lead) => {
                    if starter.requester == Requester::Client {
                        self.metrics.cache_misses.with_label_values(&["blob"]).inc();
                    }
                    starter.spawn(lead)
                }
                FillRole::Join(join) => {
                    self.metrics.singleflight_joins.inc();
                    // A fill for another repository: join it only if the upstream says this
                    // repository has the blob too.
                    let same_repo = join
                        .filling_under
                        .as_deref()
                        .is_some_and(|k| target.key().as_str() == k);
                    if !same_repo {
                        self.confirm_blob(target, digest).await?;
                    }
                    self.fills.joined(&starter.key);
                    joined = true;
                    Some(join.follower)
                }
            };
            let landing = match follower {
                Some(f) => f.landing().await,
                None => Landing::Abandoned,
            };
            match landing {
                Landing::Started(blob) => return Ok((blob, joined)),
                Landing::Failed(f) => {
                    return Err(self.fetch_failure(target, f, CacheError::BlobUnknown(*digest)))
                }
                Landing::Abandoned if tries < ABANDONED_RETRIES => tries += 1,
                Landing::Abandoned => {
                    return Err(CacheError::Unavailable {
                        upstream: target.upstream.clone(),
                        source: FetchFailure::Fill(
                            "the blob fill stopped before it started; retry".into(),
                        ),
                    })
                }
            }
        }
    }

    /// `blob` once verified, or the blob of the fill that took over when it stalled (no new
    /// bytes for `cache.follower_stall`).
    async fn verified(
        &self,
        mut blob: Arc<GrowingBlob>,
        starter: &FillStarter,
    ) -> Result<Arc<GrowingBlob>, CacheError> {
        let failed =
            |f| self.fetch_failure(&starter.target, f, CacheError::BlobUnknown(starter.digest));
        let mut rx = blob.subscribe();
        let mut stall = StallWatch::new(&blob, self.settings.follower_stall);
        loop {
            rx.borrow_and_update();
            match blob.outcome() {
                Some(Ok(())) => return Ok(blob),
                Some(Err(f)) => return Err(failed(f)),
                None => {}
            }
            match stall.wait(&blob, &mut rx).await {
                Watched::Changed => {}
                Watched::Stopped => return Err(failed(GrowthFailure::Abandoned)),
                Watched::Stalled => {
                    let Some(fresh) = starter.take_over(Arc::clone(&blob)).await else {
                        return Err(failed(GrowthFailure::Source(STALLED.into())));
                    };
                    blob = fresh;
                    rx = blob.subscribe();
                    stall = StallWatch::new(&blob, self.settings.follower_stall);
                }
            }
        }
    }

    async fn blob_miss(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
        requester: Requester,
    ) -> Result<BlobAnswer, CacheError> {
        let source = Arc::clone(&self.origin(target)?.blobs);
        let private = self.is_private(&target.upstream);
        let key = FillKey::new(*digest, &target.upstream, private);
        if head && !self.fills.contains(&key) {
            self.metrics.cache_misses.with_label_values(&["blob"]).inc();
            let size = match source.blob_size(target, digest).await {
                Ok(size) => size,
                Err(e) => {
                    // The upstream cannot be asked: the shared tier may know the size.
                    let in_shared = match (&self.tiers.shared, private, e.is_unavailable()) {
                        (Some(shared), false, true) => {
                            BlobSource::blob_size(shared.as_ref(), target, digest)
                                .await
                                .ok()
                                .flatten()
                        }
                        _ => None,
                    };
                    match in_shared {
                        Some(size) => Some(size),
                        None => {
                            return Err(self.fetch_failure(
                                target,
                                e,
                                CacheError::BlobUnknown(*digest),
                            ))
                        }
                    }
                }
            };
            let size = size.ok_or_else(|| CacheError::BadUpstreamContent {
                upstream: target.upstream.clone(),
                source: FetchFailure::Content(
                    "the upstream answered HEAD without a Content-Length".into(),
                ),
            })?;
            let (start, end, partial) = resolve(range, size)?;
            return Ok(BlobAnswer {
                digest: *digest,
                size: Some(size),
                range: (start, end),
                partial,
                body: None,
                from_cache: false,
                collapsed: false,
                upstream_cache_status: None,
            });
        }
        let starter = self.fill_starter(target, digest, &key, requester)?;
        let (mut blob, collapsed) = self.join_fill(&starter).await?;
        let upstream_cache_status = self.fills.upstream_cache_status(&starter.key, &blob);
        if range.is_some() && !head && blob.size().is_none() {
            // Without a size the range cannot be resolved before the whole blob is here.
            blob = self.verified(blob, &starter).await?;
        }
        // Without a size (no Content-Length upstream) the whole blob is streamed.
        let (start, end, partial, size) = match blob.size() {
            Some(size) => {
                let (s, e, p) = resolve(range, size)?;
                (s, Some(e), p, Some(size))
            }
            None => (0, None, false, None),
        };
        let body = (!head).then(|| {
            let refetch = Refetch {
                source,
                target: target.clone(),
                metrics: self.metrics.clone(),
            };
            let on_stall = OnStall {
                after: self.settings.follower_stall,
                take_over: Box::new(move |stalled| -> TakeOverFuture {
                    let starter = starter.clone();
                    Box::pin(async move { starter.take_over(stalled).await })
                }),
            };
            blob_stream::follow(blob, (start, end), refetch, on_stall)
        });
        Ok(BlobAnswer {
            digest: *digest,
            size,
            range: (start, end.unwrap_or(u64::MAX)),
            partial,
            body,
            from_cache: false,
            collapsed,
            upstream_cache_status,
        })
    }
}

/// Everything a request needs to lead the fill for its key: the first request's, and a
/// follower's that takes over a stalled fill.
#[derive(Clone)]
struct FillStarter {
    fills: Arc<FillRegistry>,
    store: Store,
    source: Arc<dyn BlobSource>,
    target: RepoTarget,
    digest: Digest,
    key: FillKey,
    requester: Requester,
    metrics: Arc<Metrics>,
    hold_commit: Duration,
    pieces: PieceRule,
    unread_grace: Duration,
    tiers: Tiers,
    runtime: Option<tokio::runtime::Handle>,
}

impl FillStarter {
    fn claim(&self) -> FillRole {
        self.fills.claim(
            &self.key,
            FillOrigin {
                digest: self.digest,
                upstream: self.target.upstream.clone(),
                repo: self.target.repo.to_string(),
                repo_key: self.target.key().to_string(),
            },
        )
    }

    /// Runs the fill `lead` leads in a task of its own, on the cache's runtime (a request
    /// may arrive on a connection worker, but a fill serves every joiner and shutdown waits
    /// for it); a follower for the leading request.
    fn spawn(&self, lead: FillLead) -> Option<FillFollower> {
        let follower = lead.follower();
        let job = FillJob {
            store: self.store.clone(),
            source: Arc::clone(&self.source),
            target: self.target.clone(),
            digest: self.digest,
            repo_key: self.target.key().to_string(),
            metrics: self.metrics.clone(),
            hold_commit: self.hold_commit,
            pieces: self.pieces,
            unread_grace: self.unread_grace,
        };
        let private = self.key.private_upstream.is_some();
        // The fill's upstream requests carry the `Via` chain of the request that started it.
        let task = crate::oci::hops::scope(
            crate::oci::hops::current(),
            tiered::run(self.tiers.clone(), job, lead, self.requester, private),
        );
        match &self.runtime {
            Some(rt) => drop(rt.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        follower
    }

    /// A follower's fill delivered no new bytes for `cache.follower_stall`: the stalled
    /// flight leaves the table and this follower leads a new fill (or, when another
    /// follower was first, joins that one). `None` when no new fill could start.
    async fn take_over(&self, stalled: Arc<GrowingBlob>) -> Option<Arc<GrowingBlob>> {
        if self.fills.take_over(&self.key, &stalled) {
            self.metrics.fill_takeovers.inc();
        }
        for _ in 0..=ABANDONED_RETRIES {
            let follower = match self.claim() {
                FillRole::Lead(lead) => self.spawn(lead),
                FillRole::Join(join) => {
                    self.fills.joined(&self.key);
                    Some(join.follower)
                }
            };
            match follower?.landing().await {
                // Joined the stalled fill again (it lingered, spooled): it ended, or not.
                Landing::Started(blob) if Arc::ptr_eq(&blob, &stalled) => return None,
                Landing::Started(blob) => return Some(blob),
                Landing::Failed(_) => return None,
                Landing::Abandoned => {}
            }
        }
        None
    }
}

/// `(start, end, partial)` for a blob of `size` bytes.
fn resolve(range: Option<ByteRangeSpec>, size: u64) -> Result<(u64, u64, bool), CacheError> {
    match range {
        None => Ok((0, size, false)),
        Some(spec) => {
            let (s, e) = spec
                .resolve(size)
                .map_err(|_| CacheError::RangeNotSatisfiable { size })?;
            Ok((s, e, true))
        }
    }
}
