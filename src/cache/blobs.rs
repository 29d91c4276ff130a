//! Blobs: hits stream from the store (inline, no blocking-pool round trip); misses lead or
//! follow the single-flight fill for the digest; HEAD on a miss asks the upstream for the
//! size without fetching.
//!
//! A `Range` request on a blob that is not stored yet is answered only once the fill has
//! verified the whole blob's digest (it waits for the fill): never from unverified bytes.
//! Ranges of stored blobs are immediate.

use super::blob_stream::{self, Refetch};
use super::fill::{FillJob, FillKey};
use super::flight::{Claim, Landing};
use super::tiered::{self, Requester};
use super::{BlobAnswer, Cache, CacheError, FetchFailure};
use crate::oci::Digest;
use crate::oci::{ByteRangeSpec, RepoTarget};
use crate::store::GrowingBlob;
use std::collections::HashMap;
use std::sync::Arc;

/// The repository (`upstream/repo`) each running fill was started for.
pub(super) type FillingUnder = Arc<std::sync::Mutex<HashMap<FillKey, String>>>;

pub(super) fn lock_filling(
    m: &FillingUnder,
) -> std::sync::MutexGuard<'_, HashMap<FillKey, String>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
        self.upstream(target)?
            .blob_head(&target.repo, digest)
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

    /// The growing blob of the fill for `key`: joined, or started by this request.
    async fn join_fill(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        key: &FillKey,
        requester: Requester,
    ) -> Result<Arc<GrowingBlob>, CacheError> {
        let upstream = self.upstream(target)?;
        let mut tries = 0;
        loop {
            let mut led = false;
            let follower = match self.fills.claim(key) {
                Claim::Leader(leader) => {
                    led = true;
                    self.progress.led(
                        key,
                        (*digest, &target.upstream, target.repo.as_str()),
                        &|k| self.fills.contains(k),
                    );
                    if requester == Requester::Client {
                        self.metrics.cache_misses.with_label_values(&["blob"]).inc();
                    }
                    let follower = leader.follower();
                    let job = FillJob {
                        store: self.store.clone(),
                        upstream: upstream.clone(),
                        repo: target.repo.clone(),
                        digest: *digest,
                        repo_key: target.key().to_string(),
                        metrics: self.metrics.clone(),
                        hold_commit: self.settings.hold_commit,
                    };
                    // Which repository this fill is for, while it runs (see the follower arm).
                    let filling = self.filling_under.clone();
                    lock_filling(&filling).insert(key.clone(), target.key().to_string());
                    let done_key = key.clone();
                    let (tiers, target, private) = (
                        self.tiers.clone(),
                        target.clone(),
                        key.private_upstream.is_some(),
                    );
                    self.spawn_fill(async move {
                        tiered::run(tiers, job, leader, target, requester, private).await;
                        lock_filling(&filling).remove(&done_key);
                    });
                    follower
                }
                Claim::Follower(f) => {
                    self.metrics.singleflight_joins.inc();
                    // A fill for another repository: join it only if the upstream says this
                    // repository has the blob too.
                    let same_repo = lock_filling(&self.filling_under)
                        .get(key)
                        .is_some_and(|k| target.key() == *k);
                    if !same_repo {
                        self.confirm_blob(target, digest).await?;
                    }
                    self.progress.joined(key);
                    f
                }
            };
            let landing = follower.landing().await;
            if led {
                match &landing {
                    Landing::Started(blob) => self.progress.started(key, blob),
                    _ => self.progress.ended(key),
                }
            }
            match landing {
                Landing::Started(blob) => return Ok(blob),
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

    async fn blob_miss(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
        requester: Requester,
    ) -> Result<BlobAnswer, CacheError> {
        let upstream = self.upstream(target)?;
        let private = self.is_private(&target.upstream);
        let key = FillKey::new(*digest, &target.upstream, private);
        if head && !self.fills.contains(&key) {
            self.metrics.cache_misses.with_label_values(&["blob"]).inc();
            let size = match upstream.blob_head(&target.repo, digest).await {
                Ok(size) => size,
                Err(e) => {
                    // The upstream cannot be asked: the shared tier may know the size.
                    let in_shared = match (&self.tiers.shared, private, e.is_unavailable()) {
                        (Some(shared), false, true) => shared.blob_size(digest).await,
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
            });
        }
        let blob = self.join_fill(target, digest, &key, requester).await?;
        if range.is_some() && !head {
            // Only verified bytes answer a range: wait for the whole blob.
            blob.verified()
                .await
                .map_err(|f| self.fetch_failure(target, f, CacheError::BlobUnknown(*digest)))?;
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
                upstream: upstream.clone(),
                repo: target.repo.clone(),
                metrics: self.metrics.clone(),
            };
            blob_stream::follow(blob, start, end, refetch)
        });
        Ok(BlobAnswer {
            digest: *digest,
            size,
            range: (start, end.unwrap_or(u64::MAX)),
            partial,
            body,
            from_cache: false,
        })
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
