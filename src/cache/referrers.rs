//! The referrers API (`GET /v2/<name>/referrers/<digest>`, distribution-spec 1.1, "Listing
//! Referrers"): which signatures, SBOMs and other artifacts have a given manifest as their
//! `subject`.
//!
//! The unfiltered index is asked of the upstream, kept under the subject digest with the
//! tag TTL (a tag record named [`cache_tag`] in the subject's repository, pointing at the
//! stored index), revalidated after the TTL, and served stale when the upstream is down.
//! An upstream without the API (404) is read through the referrers tag schema
//! (`sha256-<hex>`, "Backwards Compatibility"); without that tag the answer is an empty
//! index, as the spec asks. The `artifactType` filter is applied here, on the cached index,
//! so every filter is answered from one upstream answer.

use super::sources::ManifestSource;
use super::{blocking, Cache, CacheError};
use crate::oci::{Digest, Reference, RepoTarget, Tag};
use crate::store::{TagKey, TagRecord};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use std::time::SystemTime;

/// `application/vnd.oci.image.index.v1+json`: the media type of every referrers answer.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Suffix of the tag record the edge keeps a referrers index under. No client asks for such
/// a tag (see [`is_cache_tag`]).
const CACHE_TAG_SUFFIX: &str = ".edge-referrers";

/// A referrers answer, ready to send.
pub struct ReferrersAnswer {
    /// An OCI image index (`application/vnd.oci.image.index.v1+json`).
    pub body: Bytes,
    /// The `artifactType` filter was applied (`OCI-Filters-Applied: artifactType`).
    pub filtered: bool,
    /// Served from the last answer because the upstream could not be asked.
    pub stale: bool,
}

/// The referrers tag schema's tag for `subject` (`sha256-<hex>`).
pub fn schema_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// The tag record a referrers index is kept under.
fn cache_tag(subject: &Digest) -> Tag {
    format!("{}{CACHE_TAG_SUFFIX}", schema_tag(subject))
        .parse()
        .unwrap_or_else(|_| unreachable!("sha256-<64 hex>.edge-referrers is a valid tag"))
}

/// A tag name the edge reserves for its referrers cache.
pub(crate) fn is_cache_tag(tag: &Tag) -> bool {
    tag.as_str().ends_with(CACHE_TAG_SUFFIX)
}

fn empty_index() -> Bytes {
    Bytes::from(
        serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [] })
            .to_string(),
    )
}

/// `body` if it is an image index with a `manifests` list.
fn is_index(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["manifests"].is_array())
}

/// The index with only descriptors of `artifact_type` (the spec's `artifactType` filter).
fn filter_index(body: &[u8], artifact_type: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return empty_index();
    };
    if let Some(list) = v["manifests"].as_array_mut() {
        list.retain(|d| d["artifactType"].as_str() == Some(artifact_type));
    }
    Bytes::from(v.to_string())
}

impl Cache {
    /// The referrers of `subject` in `target`'s repository, filtered by `artifact_type`.
    pub async fn referrers(
        &self,
        target: &RepoTarget,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersAnswer, CacheError> {
        let key = TagKey {
            upstream: target.upstream.clone(),
            repo: target.repo.clone(),
            tag: cache_tag(subject),
        };
        let cached = self.cached_referrers(&key).await?;
        let answer = |body: Bytes, stale: bool| match artifact_type {
            Some(t) => ReferrersAnswer {
                body: filter_index(&body, t),
                filtered: true,
                stale,
            },
            None => ReferrersAnswer {
                body,
                filtered: false,
                stale,
            },
        };
        if let Some((rec, body)) = &cached {
            let age = SystemTime::now()
                .duration_since(rec.validated_at)
                .unwrap_or_default();
            if age < self.settings.tag_ttl {
                self.metrics
                    .cache_hits
                    .with_label_values(&["referrers"])
                    .inc();
                return Ok(answer(body.clone(), false));
            }
        }
        self.metrics
            .cache_misses
            .with_label_values(&["referrers"])
            .inc();
        let upstream = self.manifest_source(target)?;
        match fetch_referrers(upstream, target, subject).await {
            Ok(body) => {
                self.keep_referrers(target, &key, &body).await;
                Ok(answer(body, false))
            }
            Err(e) if e.is_unavailable() && cached.is_some() => {
                self.metrics
                    .stale_served
                    .with_label_values(&["referrers"])
                    .inc();
                tracing::warn!(upstream = %target.upstream, repo = %target.repo, subject = %subject, error = %e, "upstream down; serving the cached referrers (stale)");
                let (_, body) = cached.unwrap_or_else(|| unreachable!("checked above"));
                Ok(answer(body, true))
            }
            Err(e) => Err(self.fetch_failure(
                target,
                e,
                CacheError::NameUnknown(format!(
                    "repository {} is unknown to {}",
                    target.repo, target.upstream
                )),
            )),
        }
    }

    async fn cached_referrers(
        &self,
        key: &TagKey,
    ) -> Result<Option<(TagRecord, Bytes)>, CacheError> {
        let Some(rec) = self.store.tag(key)? else {
            return Ok(None);
        };
        Ok(self.store.manifest(&rec.digest)?.map(|m| (rec, m.bytes)))
    }

    async fn keep_referrers(&self, target: &RepoTarget, key: &TagKey, body: &Bytes) {
        let digest = Digest::of(body);
        let now = SystemTime::now();
        let rec = TagRecord {
            digest,
            media_type: INDEX_MEDIA_TYPE.to_string(),
            fetched_at: now,
            validated_at: now,
            seen: Vec::new(),
        };
        let (store, key, body, repo) = (
            self.store.clone(),
            key.clone(),
            body.clone(),
            target.key().to_string(),
        );
        let kept = blocking(move || {
            store.put_manifest(&digest, INDEX_MEDIA_TYPE, &body, &repo)?;
            store.put_tag(&key, &rec)
        })
        .await;
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the referrers index");
        }
    }
}

/// The unfiltered referrers index from the upstream: its referrers API, else the referrers
/// tag schema, else an empty index.
async fn fetch_referrers(
    upstream: &dyn ManifestSource,
    target: &RepoTarget,
    subject: &Digest,
) -> Result<Bytes, UpstreamError> {
    match upstream.referrers(&target.repo, subject).await {
        Ok(r) if is_index(&r.body) => return Ok(r.body),
        Ok(_) => {
            return Err(UpstreamError::BadResponse(
                "the referrers answer is not an OCI image index".into(),
            ))
        }
        Err(UpstreamError::NotFound) => {}
        Err(e) => return Err(e),
    }
    let tag: Tag = schema_tag(subject)
        .parse()
        .unwrap_or_else(|_| unreachable!("sha256-<64 hex> is a valid tag"));
    let accept = [INDEX_MEDIA_TYPE.to_string()];
    match upstream
        .manifest(&target.repo, &Reference::Tag(tag), &accept, false)
        .await
    {
        Ok(m) => Ok(m.body.filter(|b| is_index(b)).unwrap_or_else(empty_index)),
        Err(UpstreamError::NotFound) => Ok(empty_index()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_keeps_only_the_artifact_type() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                { "digest": "sha256:a", "artifactType": "application/vnd.example.sbom" },
                { "digest": "sha256:b", "artifactType": "application/vnd.example.sig" },
                { "digest": "sha256:c" }
            ]
        })
        .to_string();
        let v: serde_json::Value = serde_json::from_slice(&filter_index(
            body.as_bytes(),
            "application/vnd.example.sig",
        ))
        .expect("json");
        assert_eq!(v["manifests"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["manifests"][0]["digest"], "sha256:b");
        assert!(is_index(&empty_index()));
        assert!(!is_index(b"{\"tags\":[]}"));
    }

    #[test]
    fn cache_tag_is_reserved_and_schema_tag_follows_the_spec() {
        let d = Digest::of(b"x");
        assert_eq!(schema_tag(&d), format!("sha256-{}", d.hex()));
        assert!(is_cache_tag(&cache_tag(&d)));
        assert!(!is_cache_tag(&schema_tag(&d).parse().expect("tag")));
    }
}
