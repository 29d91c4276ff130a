//! Blobs: hits stream from the store; misses start or join the single-flight fill for the
//! digest; HEAD on a miss asks the upstream for the size without fetching.

use super::blob_stream;
use super::fill::{self, FillFailure, FillJob};
use super::{blocking, BlobAnswer, Cache, CacheError};
use crate::oci::Digest;
use crate::registry::range::ByteRangeSpec;
use crate::registry::RepoTarget;

impl Cache {
    pub async fn blob(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        range: Option<ByteRangeSpec>,
        head: bool,
    ) -> Result<BlobAnswer, CacheError> {
        let (store, d) = (self.store.clone(), *digest);
        let hit = blocking(move || store.blob(&d))
            .await?
            .filter(|info| self.visible_through(&info.repos, target));
        if let Some(info) = hit {
            let (start, end, partial) = resolve(range, info.size)?;
            let body = if head {
                None
            } else {
                let (store, d) = (self.store.clone(), *digest);
                match blocking(move || store.read_blob(&d, start, end)).await? {
                    Some(reader) => Some(blob_stream::from_store(reader, self.metrics.clone())),
                    None => return Box::pin(self.blob_miss(target, digest, range, head)).await,
                }
            };
            self.metrics.cache_hits.with_label_values(&["blob"]).inc();
            self.note_blob_repo(digest, &info.repos, target).await;
            return Ok(BlobAnswer {
                digest: *digest,
                size: Some(info.size),
                range: (start, end),
                partial,
                body,
                from_cache: true,
            });
        }
        self.blob_miss(target, digest, range, head).await
    }

    async fn note_blob_repo(&self, d: &Digest, repos: &[String], target: &RepoTarget) {
        let key = target.key();
        if repos.contains(&key) {
            return;
        }
        let (store, d) = (self.store.clone(), *d);
        if let Err(e) = blocking(move || store.add_repo(&d, &key)).await {
            tracing::debug!(error = %e, "cannot record repository for blob {d}");
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
        let key = fill::FillKey::new(*digest, &target.upstream, self.is_private(&target.upstream));
        let existing = self
            .fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if head && existing.is_none() {
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
        let job = FillJob {
            store: self.store.clone(),
            upstream: upstream.clone(),
            repo: target.repo.clone(),
            repo_key: target.key(),
            metrics: self.metrics.clone(),
            fills: self.fills.clone(),
        };
        let (fill, joined) = fill::join_or_start(job, key);
        if joined {
            self.metrics.singleflight_joins.inc();
        } else {
            self.metrics.cache_misses.with_label_values(&["blob"]).inc();
        }
        let size = fill.wait_started().await.map_err(|f| match f {
            FillFailure::NotFound => CacheError::BlobUnknown(*digest),
            FillFailure::Unavailable(m) => CacheError::Unavailable {
                upstream: target.upstream.clone(),
                detail: m,
            },
            other => CacheError::BadUpstreamContent {
                upstream: target.upstream.clone(),
                detail: format!("{other:?}"),
            },
        })?;
        // Without a size (no Content-Length upstream) the whole blob is streamed.
        let (start, end, partial, size) = match size {
            Some(size) => {
                let (s, e, p) = resolve(range, size)?;
                (s, e, p, Some(size))
            }
            None => (0, u64::MAX, false, None),
        };
        if !head && partial && start > fill.state().received + DIRECT_RANGE_AHEAD {
            // Far ahead of the fill: this client gets its own ranged request now instead of
            // waiting for the fill to get there (the fill goes on and caches the blob).
            if let Ok(resp) = upstream
                .blob(&target.repo, digest, Some((start, Some(end - 1))))
                .await
            {
                if resp.start == start {
                    let body =
                        blob_stream::direct_range(resp.body, end - start, self.metrics.clone());
                    return Ok(BlobAnswer {
                        digest: *digest,
                        size,
                        range: (start, end),
                        partial,
                        body: Some(body),
                        from_cache: false,
                    });
                }
            }
        }
        let body = (!head).then(|| {
            blob_stream::follow_fill(fill, self.store.clone(), start, end, self.metrics.clone())
        });
        Ok(BlobAnswer {
            digest: *digest,
            size,
            range: (start, end),
            partial,
            body,
            from_cache: false,
        })
    }
}

/// A cold-miss Range starting this far beyond the fill's progress is fetched on its own.
const DIRECT_RANGE_AHEAD: u64 = 16 << 20;

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
