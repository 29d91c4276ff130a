//! Blobs: hits stream from the store (inline, no blocking-pool round trip); misses lead or
//! follow the single-flight fill for the digest; HEAD on a miss asks the upstream for the
//! size without fetching.
//!
//! A `Range` request on a blob that is not stored yet is answered only once the fill has
//! verified the whole blob's digest (it waits for the fill): never from unverified bytes.
//! Ranges of stored blobs are immediate.

use super::blob_stream::{self, Refetch};
use super::fill::{self, FillFailure, FillJob, FillKey};
use super::flight::{Claim, Landing};
use super::{BlobAnswer, Cache, CacheError};
use crate::oci::Digest;
use crate::registry::range::ByteRangeSpec;
use crate::registry::RepoTarget;
use crate::store::{GrowingBlob, GrowthFailure};
use std::sync::Arc;

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
        match self.blob_hit(target, digest, range, head)? {
            Some(answer) => Ok(answer),
            None => self.blob_miss(target, digest, range, head).await,
        }
    }

    fn blob_hit(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
    ) -> Result<Option<BlobAnswer>, CacheError> {
        let Some(info) = self
            .store
            .blob(digest)?
            .filter(|info| self.visible_through(&info.repos, target))
        else {
            return Ok(None);
        };
        let (start, end, partial) = resolve(range, info.size)?;
        let body = if head {
            None
        } else {
            match self.store.read_blob(digest, start, end)? {
                Some(reader) => Some(blob_stream::from_store(reader, self.metrics.clone())),
                // Evicted between the two lookups.
                None => return Ok(None),
            }
        };
        self.metrics.cache_hits.with_label_values(&["blob"]).inc();
        self.note_blob_repo(digest, &info.repos, target);
        Ok(Some(BlobAnswer {
            digest: *digest,
            size: Some(info.size),
            range: (start, end),
            partial,
            body,
            from_cache: true,
        }))
    }

    fn note_blob_repo(&self, d: &Digest, repos: &[String], target: &RepoTarget) {
        let key = target.key();
        if repos.contains(&key) {
            return;
        }
        if let Err(e) = self.store.add_repo(d, &key) {
            tracing::debug!(error = %e, "cannot record repository for blob {d}");
        }
    }

    fn fill_failure(&self, target: &RepoTarget, digest: &Digest, f: FillFailure) -> CacheError {
        match f {
            FillFailure::NotFound => CacheError::BlobUnknown(*digest),
            FillFailure::Unavailable(m) => CacheError::Unavailable {
                upstream: target.upstream.clone(),
                detail: m,
            },
            FillFailure::RateLimited {
                retry_after,
                detail,
            } => CacheError::RateLimited {
                upstream: target.upstream.clone(),
                retry_after,
                detail,
            },
        }
    }

    fn growth_failure(&self, target: &RepoTarget, f: GrowthFailure) -> CacheError {
        match f {
            GrowthFailure::Mismatch(m) => CacheError::BadUpstreamContent {
                upstream: target.upstream.clone(),
                detail: m,
            },
            other => CacheError::Unavailable {
                upstream: target.upstream.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// The growing blob of the fill for `key`: joined, or started by this request.
    async fn join_fill(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        key: &FillKey,
    ) -> Result<Arc<GrowingBlob>, CacheError> {
        let upstream = self.upstream(target)?;
        let mut tries = 0;
        loop {
            let follower = match self.fills.claim(key) {
                Claim::Leader(leader) => {
                    self.metrics.cache_misses.with_label_values(&["blob"]).inc();
                    let follower = leader.follower();
                    let job = FillJob {
                        store: self.store.clone(),
                        upstream: upstream.clone(),
                        repo: target.repo.clone(),
                        digest: *digest,
                        repo_key: target.key(),
                        metrics: self.metrics.clone(),
                        hold_commit: self.settings.hold_commit,
                    };
                    tokio::spawn(fill::run(job, leader));
                    follower
                }
                Claim::Follower(f) => {
                    self.metrics.singleflight_joins.inc();
                    f
                }
            };
            match follower.landing().await {
                Landing::Started(blob) => return Ok(blob),
                Landing::Failed(f) => return Err(self.fill_failure(target, digest, f)),
                Landing::Abandoned if tries < ABANDONED_RETRIES => tries += 1,
                Landing::Abandoned => {
                    return Err(CacheError::Unavailable {
                        upstream: target.upstream.clone(),
                        detail: "the blob fill stopped before it started; retry".into(),
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
    ) -> Result<BlobAnswer, CacheError> {
        let upstream = self.upstream(target)?;
        let key = FillKey::new(*digest, &target.upstream, self.is_private(&target.upstream));
        if head && !self.fills.contains(&key) {
            self.metrics.cache_misses.with_label_values(&["blob"]).inc();
            let size = upstream
                .blob_head(&target.repo, digest)
                .await
                .map_err(|e| self.upstream_failure(target, e, CacheError::BlobUnknown(*digest)))?
                .ok_or_else(|| CacheError::BadUpstreamContent {
                    upstream: target.upstream.clone(),
                    detail: "HEAD answer without Content-Length".into(),
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
        let blob = self.join_fill(target, digest, &key).await?;
        if range.is_some() && !head {
            // Only verified bytes answer a range: wait for the whole blob.
            blob.verified()
                .await
                .map_err(|f| self.growth_failure(target, f))?;
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
