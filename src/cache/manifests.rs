//! Manifests: by digest (verified, then stored) and by tag (fresh within `tag_ttl`,
//! then revalidated with a HEAD — which does not count against Docker Hub's pull quota —
//! and fetched again only when the digest moved). Concurrent revalidations of one tag
//! collapse into one upstream request. When the upstream fails, a cached answer is served
//! (stale) and counted; with nothing cached the answer is 503.
//!
//! A tag's record is what the upstream answers for every manifest type (`tag_accept`),
//! whatever the asking client accepts: one client with a narrow `Accept` must not pin a
//! multi-arch tag to one platform for everyone. Each client is then served from the
//! record: the record's manifest when it takes its type; for an index it does not take,
//! the index's `linux/amd64` manifest (what registry:2 and Docker Hub do); else
//! `MANIFEST_UNKNOWN`.
//!
//! An upstream with a `quota_reserve`: once its announced pull quota is at or below it, a
//! cached tag whose digest moved (the revalidating HEAD is free) is served from the cache,
//! marked stale, instead of spending a manifest GET; misses with nothing cached still go.

use super::{blocking, Cache, CacheError, FetchFailure, ManifestAnswer};
use crate::oci::RepoTarget;
use crate::oci::{default_platform_manifest, tag_accept, Digest, Reference, Tag};
use crate::store::{StoredManifest, TagKey, TagRecord};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl Cache {
    pub async fn manifest(
        &self,
        target: &RepoTarget,
        reference: &Reference,
        accept: &[String],
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(target, d, accept, head).await,
            // The edge's own referrers records are not tags of the repository.
            Reference::Tag(t) if super::referrers::is_cache_tag(t) => {
                Err(CacheError::ManifestUnknown(t.to_string()))
            }
            Reference::Tag(t) => self.manifest_by_tag(target, t, accept, head).await,
        }
    }

    /// An index lookup, cheap enough for the async worker (no blocking-pool round trip).
    async fn stored_manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, CacheError> {
        Ok(self.store.manifest(d)?)
    }

    fn answer(d: Digest, m: StoredManifest, head: bool) -> ManifestAnswer {
        ManifestAnswer {
            digest: d,
            media_type: m.media_type,
            size: m.bytes.len() as u64,
            bytes: (!head).then_some(m.bytes),
            from_cache: true,
            stale: false,
            quota_reserved: false,
            upstream_cache_status: None,
            decision: None,
        }
    }

    /// Records that `target` also names this content (for the catalog and `purge --repo`).
    async fn note_repo(&self, d: &Digest, repos: &[String], target: &RepoTarget) {
        let key = target.key();
        if repos.iter().any(|r| key == *r) {
            return;
        }
        if let Err(e) = self.store.add_repo(d, key.as_str()) {
            tracing::debug!(error = %e, "cannot record repository for {d}");
        }
    }

    async fn manifest_by_digest(
        &self,
        target: &RepoTarget,
        d: &Digest,
        accept: &[String],
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let hit = self
            .stored_manifest(d)
            .await?
            .filter(|m| self.visible_through(&m.repos, target));
        if let Some(m) = hit {
            if !Self::seen_under(&m.repos, target) {
                // Stored, but never seen under this repository: only once the upstream
                // says the repository has it.
                self.metrics
                    .repo_confirmations
                    .with_label_values(&["manifest"])
                    .inc();
                self.manifest_source(target)?
                    .manifest(&target.repo, &Reference::Digest(*d), accept, true)
                    .await
                    .map_err(|e| {
                        self.fetch_failure(target, e, CacheError::ManifestUnknown(d.to_string()))
                    })?;
            }
            self.metrics
                .cache_hits
                .with_label_values(&["manifest"])
                .inc();
            self.note_repo(d, &m.repos, target).await;
            return Ok(Self::answer(*d, m, head));
        }
        self.metrics
            .cache_misses
            .with_label_values(&["manifest"])
            .inc();
        if let Some(answer) = self.shared_manifest(target, d, accept, head).await {
            return Ok(answer);
        }
        let upstream = self.manifest_source(target)?;
        let reference = Reference::Digest(*d);
        // Content addressed: fetch it whole even for a HEAD, so the next GET is a hit.
        let resp = upstream
            .manifest(&target.repo, &reference, accept, false)
            .await
            .map_err(|e| {
                self.fetch_failure(target, e, CacheError::ManifestUnknown(d.to_string()))
            })?;
        let body = resp.body.unwrap_or_default();
        let actual = Digest::of(&body);
        if actual != *d {
            self.metrics.digest_mismatches.inc();
            return Err(CacheError::BadUpstreamContent {
                upstream: target.upstream.clone(),
                source: FetchFailure::Content(format!("manifest {d} arrived with digest {actual}")),
            });
        }
        self.put_manifest(target, d, &resp.media_type, &body).await;
        self.write_manifest_through(target, d, &resp.media_type, &body);
        Ok(ManifestAnswer {
            digest: *d,
            media_type: resp.media_type,
            size: body.len() as u64,
            bytes: (!head).then_some(body),
            from_cache: false,
            stale: false,
            quota_reserved: false,
            upstream_cache_status: resp.cache_status,
            decision: None,
        })
    }

    async fn put_manifest(&self, target: &RepoTarget, d: &Digest, media_type: &str, body: &Bytes) {
        let (store, d2, mt, b, key) = (
            self.store.clone(),
            *d,
            media_type.to_string(),
            body.clone(),
            target.key(),
        );
        if let Err(e) = blocking(move || store.put_manifest(&d2, &mt, &b, key.as_str())).await {
            // Still answer the client: the bytes are verified, only caching failed.
            self.metrics
                .store_errors
                .with_label_values(&["put_manifest"])
                .inc();
            tracing::warn!(error = %e, manifest = %d, "cannot store manifest");
        }
    }

    /// A manifest by digest from the shared tier (after a local miss), verified, stored
    /// locally. Under another repository than it was first fetched for, only once the
    /// upstream confirms this one has it.
    async fn shared_manifest(
        &self,
        target: &RepoTarget,
        d: &Digest,
        accept: &[String],
        head: bool,
    ) -> Option<ManifestAnswer> {
        let shared = self.tiers.shared.as_ref()?;
        if self.is_private(&target.upstream) {
            return None;
        }
        let found = shared.manifest(d).await?;
        if Digest::of(&found.bytes) != *d {
            self.metrics.tiers.shared_corrupt.inc();
            tracing::error!(manifest = %d, "the shared tier's copy of this manifest does not match its digest; asking the upstream");
            return None;
        }
        let key = target.key();
        if found.repo.as_deref() != Some(key.as_str()) {
            self.manifest_source(target)
                .ok()?
                .manifest(&target.repo, &Reference::Digest(*d), accept, true)
                .await
                .ok()?;
        }
        self.put_manifest(target, d, &found.media_type, &found.bytes)
            .await;
        Some(ManifestAnswer {
            digest: *d,
            media_type: found.media_type,
            size: found.bytes.len() as u64,
            bytes: (!head).then_some(found.bytes),
            from_cache: false,
            stale: false,
            quota_reserved: false,
            upstream_cache_status: None,
            decision: None,
        })
    }

    /// Writes a manifest fetched from an upstream through to the shared tier.
    fn write_manifest_through(
        &self,
        target: &RepoTarget,
        d: &Digest,
        media_type: &str,
        body: &Bytes,
    ) {
        if let Some(shared) = &self.tiers.shared {
            if !self.is_private(&target.upstream) {
                shared.put_manifest(
                    *d,
                    media_type.to_string(),
                    body.clone(),
                    target.key().to_string(),
                );
            }
        }
    }

    fn tag_key(target: &RepoTarget, tag: &Tag) -> TagKey {
        TagKey {
            upstream: target.upstream.clone(),
            repo: target.repo.clone(),
            tag: tag.clone(),
        }
    }

    async fn tag_record(&self, key: &TagKey) -> Result<Option<TagRecord>, CacheError> {
        Ok(self.store.tag(key)?)
    }

    /// The answer for a client accepting `accept` from a tag's manifest `m` (digest `d`):
    /// `m` itself when the client takes its type, else the `linux/amd64` manifest of an
    /// index (by digest: from the store, else the upstream), else `MANIFEST_UNKNOWN`.
    pub(super) async fn for_client(
        &self,
        target: &RepoTarget,
        key: &TagKey,
        (d, m): (Digest, StoredManifest),
        accept: &[String],
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        if accepts(accept, &m.media_type) {
            return Ok(Self::answer(d, m, head));
        }
        let Some(child) = default_platform_manifest(&m.bytes)
            .filter(|c| !accept.is_empty() && accepts(accept, &c.media_type))
        else {
            return Err(CacheError::ManifestUnknown(format!(
                "{}:{} (its manifest is {}, which the client does not accept{})",
                key.repo,
                key.tag,
                m.media_type,
                if crate::oci::INDEX_MEDIA_TYPES.contains(&m.media_type.as_str()) {
                    ", and it lists no linux/amd64 manifest the client accepts"
                } else {
                    ""
                }
            )));
        };
        self.manifest_by_digest(target, &child.digest, &tag_accept(), head)
            .await
    }

    async fn manifest_by_tag(
        &self,
        target: &RepoTarget,
        tag: &Tag,
        accept: &[String],
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let key = Self::tag_key(target, tag);
        let asked_at = SystemTime::now();
        if let Some(answer) = self
            .fresh_tag(target, &key, (accept, head), asked_at, false)
            .await?
        {
            return Ok(answer);
        }
        // One revalidation per tag at a time; whoever waited re-reads the fresh record.
        let lock = self.tag_lock(&key);
        let _guard = lock.lock().await;
        let result = match self
            .fresh_tag(target, &key, (accept, head), asked_at, true)
            .await?
        {
            Some(answer) => Ok(answer),
            None => self.revalidate_tag(target, &key, accept, head).await,
        };
        drop(_guard);
        self.release_tag_lock(&key, lock);
        result
    }

    /// A cached answer for the tag if it is within `tag_ttl` (or, for a request that waited
    /// on another's revalidation, validated after this request arrived).
    async fn fresh_tag(
        &self,
        target: &RepoTarget,
        key: &TagKey,
        (accept, head): (&[String], bool),
        asked_at: SystemTime,
        waited: bool,
    ) -> Result<Option<ManifestAnswer>, CacheError> {
        let Some(rec) = self.tag_record(key).await? else {
            return Ok(None);
        };
        let fresh = self.within_tag_ttl(&rec) || (waited && rec.validated_at >= asked_at);
        if !fresh {
            return Ok(None);
        }
        let Some(m) = self.stored_manifest(&rec.digest).await? else {
            return Ok(None);
        };
        self.metrics
            .cache_hits
            .with_label_values(&["manifest"])
            .inc();
        self.for_client(target, key, (rec.digest, m), accept, head)
            .await
            .map(Some)
    }

    /// Whether the upstream confirmed `rec`'s tag within `tag_ttl`.
    pub(super) fn within_tag_ttl(&self, rec: &TagRecord) -> bool {
        let age = SystemTime::now()
            .duration_since(rec.validated_at)
            .unwrap_or_default();
        age < self.settings.tag_ttl
    }

    async fn revalidate_tag(
        &self,
        target: &RepoTarget,
        key: &TagKey,
        accept: &[String],
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let upstream = self.manifest_source(target)?;
        let reference = Reference::Tag(key.tag.clone());
        let cached = self.tag_record(key).await?;
        let stale = match &cached {
            Some(rec) => self
                .stored_manifest(&rec.digest)
                .await?
                .map(|m| (rec.clone(), m)),
            None => None,
        };
        let started = Instant::now();
        // HEAD first when we have something to compare with; always for every type, so the
        // record stays the tag's own answer.
        let unchanged = match &stale {
            Some((rec, _)) => Some(
                upstream
                    .manifest(&target.repo, &reference, &tag_accept(), true)
                    .await
                    .map(|h| h.digest == Some(rec.digest)),
            ),
            None => None,
        };
        match (unchanged, stale) {
            // Moved, but the pull quota is at its reserve: the GET would spend what real
            // misses need, and the cached copy can serve (HEADs do not count).
            (Some(Ok(false)), Some((rec, m))) if self.quota_at_reserve(&target.upstream) => {
                self.metrics
                    .stale_served
                    .with_label_values(&["manifest"])
                    .inc();
                tracing::info!(upstream = %target.upstream, repo = %key.repo, tag = %key.tag, "tag moved upstream, but its pull quota is at quota_reserve: serving the cached manifest");
                let mut answer = self
                    .for_client(target, key, (rec.digest, m), accept, head)
                    .await?;
                answer.stale = true;
                answer.quota_reserved = true;
                Ok(answer)
            }
            (Some(Ok(true)), Some((rec, m))) => {
                self.metrics
                    .cache_hits
                    .with_label_values(&["manifest"])
                    .inc();
                let digest = rec.digest;
                let mut fresh = rec;
                fresh.validated_at = SystemTime::now();
                self.put_tag(key, fresh).await;
                tracing::debug!(tag = %key.tag, repo = %key.repo, ms = started.elapsed().as_millis() as u64, "tag revalidated, unchanged");
                self.for_client(target, key, (digest, m), accept, head)
                    .await
            }
            (Some(Err(e)), stale) => {
                self.serve_stale_or_fail(target, key, e, stale, (accept, head))
                    .await
            }
            // Moved (or no digest header): GET it. Keep the stale copy for failures.
            (_, stale_copy) => {
                self.fetch_tag(target, key, (accept, head), cached, stale_copy)
                    .await
            }
        }
    }

    async fn fetch_tag(
        &self,
        target: &RepoTarget,
        key: &TagKey,
        (accept, head): (&[String], bool),
        cached: Option<TagRecord>,
        stale: Option<(TagRecord, StoredManifest)>,
    ) -> Result<ManifestAnswer, CacheError> {
        let upstream = self.manifest_source(target)?;
        let reference = Reference::Tag(key.tag.clone());
        self.metrics
            .cache_misses
            .with_label_values(&["manifest"])
            .inc();
        let resp = match upstream
            .manifest(&target.repo, &reference, &tag_accept(), false)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                return self
                    .serve_stale_or_fail(target, key, e, stale, (accept, head))
                    .await
            }
        };
        let body = resp.body.unwrap_or_default();
        let digest = Digest::of(&body);
        if let Some(claimed) = resp.digest {
            if claimed != digest {
                self.metrics.digest_mismatches.inc();
                return Err(CacheError::BadUpstreamContent {
                    upstream: target.upstream.clone(),
                    source: FetchFailure::Content(format!(
                        "tag {} claimed {claimed} but the manifest hashes to {digest}",
                        key.tag
                    )),
                });
            }
        }
        self.write_manifest_through(target, &digest, &resp.media_type, &body);
        self.put_manifest(target, &digest, &resp.media_type, &body)
            .await;
        let now = SystemTime::now();
        let fetched_at = match &cached {
            Some(c) if c.digest == digest => c.fetched_at,
            _ => now,
        };
        let rec = TagRecord {
            digest,
            media_type: resp.media_type.clone(),
            fetched_at,
            validated_at: now,
            seen: super::cooldown::moved_to(cached.as_ref(), digest, now),
        };
        self.put_tag(key, rec).await;
        let m = StoredManifest {
            media_type: resp.media_type,
            bytes: body,
            repos: Vec::new(),
        };
        let mut answer = self
            .for_client(target, key, (digest, m), accept, head)
            .await?;
        if answer.digest == digest {
            answer.from_cache = false;
            answer.upstream_cache_status = resp.cache_status;
        }
        Ok(answer)
    }

    async fn serve_stale_or_fail(
        &self,
        target: &RepoTarget,
        key: &TagKey,
        e: UpstreamError,
        stale: Option<(TagRecord, StoredManifest)>,
        (accept, head): (&[String], bool),
    ) -> Result<ManifestAnswer, CacheError> {
        match stale {
            Some((rec, m)) if e.is_unavailable() => {
                self.metrics
                    .stale_served
                    .with_label_values(&["manifest"])
                    .inc();
                tracing::warn!(upstream = %target.upstream, repo = %key.repo, tag = %key.tag, error = %e, "upstream failed; serving the cached manifest (stale)");
                let mut answer = self
                    .for_client(target, key, (rec.digest, m), accept, head)
                    .await?;
                answer.stale = true;
                Ok(answer)
            }
            _ => Err(self.fetch_failure(
                target,
                e,
                CacheError::ManifestUnknown(format!("{}:{}", key.repo, key.tag)),
            )),
        }
    }

    async fn put_tag(&self, key: &TagKey, rec: TagRecord) {
        let (store, key2) = (self.store.clone(), key.clone());
        if let Err(e) = blocking(move || store.put_tag(&key2, &rec)).await {
            self.metrics
                .store_errors
                .with_label_values(&["put_tag"])
                .inc();
            tracing::warn!(error = %e, tag = %key.tag, "cannot store tag");
        }
    }

    fn tag_lock(&self, key: &TagKey) -> Arc<tokio::sync::Mutex<()>> {
        self.named_lock(&lock_name(key))
    }

    fn release_tag_lock(&self, key: &TagKey, lock: Arc<tokio::sync::Mutex<()>>) {
        self.release_named_lock(&lock_name(key), lock)
    }

    /// Whether `upstream`'s announced pull quota is at or below its `quota_reserve`.
    fn quota_at_reserve(&self, upstream: &str) -> bool {
        let Some(reserve) = self.settings.quota_reserves.get(upstream) else {
            return false;
        };
        self.metrics
            .activity
            .quota_remaining(upstream)
            .is_some_and(|left| left <= *reserve)
    }

    /// The lock that lets one request at a time ask the upstream about `name` (a tag, a
    /// tag list); the others wait and then read what it got.
    pub(super) fn named_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.tag_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    pub(super) fn release_named_lock(&self, name: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.tag_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's are the only references left: nobody is waiting.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(name);
        }
    }
}

fn lock_name(key: &TagKey) -> String {
    format!("{}/{}:{}", key.upstream, key.repo, key.tag)
}

/// Whether a client listing `accept` takes `media_type` (an empty list or `*/*` takes all).
fn accepts(accept: &[String], media_type: &str) -> bool {
    accept.is_empty()
        || accept
            .iter()
            .any(|a| a == media_type || a == "*/*" || a == "application/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_rules() {
        assert!(accepts(&[], "application/vnd.oci.image.index.v1+json"));
        assert!(accepts(&["*/*".into()], "x"));
        assert!(!accepts(
            &["application/vnd.docker.distribution.manifest.v2+json".into()],
            "application/vnd.oci.image.index.v1+json"
        ));
    }
}
