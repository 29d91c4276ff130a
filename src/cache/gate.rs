//! The trust gate on manifest pulls: what the `[[policy]]` block that allowed a pull asks
//! of the manifest it gets ([`PullRules`]): a cooldown (`cooldown.rs`) chooses the digest a
//! tag resolves to, then a signature requirement (`signatures.rs`) must hold for it. By
//! digest, a held-back digest is refused and an unsigned one too. Blobs pass: they are
//! reached through manifests, which are what is gated. Signature artifacts themselves
//! (`sha256-<hex>` tags: `.sig`, `.att`, the referrers tag schema) are not gated.
//!
//! Owns: the order of the checks and the answer the client gets. Must not: decide which
//! rules apply (the registry's front door hands them over from the policy).

use super::{Cache, CacheError, ManifestAnswer};
use crate::config::CooldownRule;
use crate::oci::signature::SignatureRule;
use crate::oci::{Digest, Reference, RepoTarget, Tag};
use crate::store::{StoredManifest, TagKey, TagRecord};
use std::sync::Arc;
use std::time::SystemTime;

/// What the policy block that allowed a pull asks of the manifest it gets.
#[derive(Clone, Debug, Default)]
pub struct PullRules {
    pub cooldown: Option<Arc<CooldownRule>>,
    pub signature: Option<Arc<SignatureRule>>,
}

impl PullRules {
    pub fn is_empty(&self) -> bool {
        self.cooldown.is_none() && self.signature.is_none()
    }
}

/// A tag that names a signature, attestation or referrers list of a digest
/// (`sha256-<64 hex>` and anything after it), or the edge's own referrers record.
pub(super) fn is_artifact_tag(tag: &Tag) -> bool {
    let t = tag.as_str();
    t.strip_prefix("sha256-").is_some_and(|rest| {
        rest.len() >= 64 && rest.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit)
    })
}

impl Cache {
    /// A manifest pull under `rules` (the plain [`Cache::manifest`] when there are none).
    pub async fn manifest_under(
        &self,
        target: &RepoTarget,
        reference: &Reference,
        accept: &[String],
        head: bool,
        rules: &PullRules,
    ) -> Result<ManifestAnswer, CacheError> {
        let mut decision = None;
        let tag = match reference {
            _ if rules.is_empty() => None,
            Reference::Tag(t) if is_artifact_tag(t) => None,
            Reference::Digest(d) => {
                if let Some(rule) = &rules.cooldown {
                    self.refuse_held_digest(target, d, rule)?;
                }
                if let Some(rule) = &rules.signature {
                    let what = || format!("{}@{d}", target.repo);
                    decision = Some(self.require_signed(target, d, rule, what).await?);
                }
                None
            }
            Reference::Tag(t) => Some(t),
        };
        let Some(tag) = tag else {
            let mut answer = self.manifest(target, reference, accept, head).await?;
            answer.decision = decision;
            return Ok(answer);
        };
        let key = TagKey {
            upstream: target.upstream.clone(),
            repo: target.repo.clone(),
            tag: tag.clone(),
        };
        // Within tag_ttl the record is the answer (a hit, as without rules); else the tag's
        // own manifest (every type taken, no body) revalidates it first.
        let (rec, newest) = match self.fresh_record(&key)? {
            Some(rec) => {
                self.metrics
                    .cache_hits
                    .with_label_values(&["manifest"])
                    .inc();
                (rec, None)
            }
            None => {
                let newest = self.manifest(target, reference, &[], true).await?;
                let rec = self.store.tag(&key)?.unwrap_or_else(|| TagRecord {
                    // Not kept (the store failed): the answer stands for it.
                    digest: newest.digest,
                    media_type: newest.media_type.clone(),
                    fetched_at: SystemTime::now(),
                    validated_at: SystemTime::now(),
                    seen: Vec::new(),
                });
                (rec, Some(newest))
            }
        };
        let (digest, held_back) = match &rules.cooldown {
            Some(rule) => self.choose_under_cooldown(target, tag, &rec, rule)?,
            None => (rec.digest, None),
        };
        let signed = match &rules.signature {
            Some(rule) => {
                let what = || format!("{}:{tag}", target.repo);
                Some(self.require_signed(target, &digest, rule, what).await?)
            }
            None => None,
        };
        let m = self.stored_or_fetched(target, &digest).await?;
        let mut answer = self
            .for_client(target, &key, (digest, m), accept, head)
            .await?;
        if let Some(newest) = newest.filter(|n| held_back.is_none() && n.digest == digest) {
            answer.from_cache = newest.from_cache;
            answer.stale = newest.stale;
            answer.quota_reserved = newest.quota_reserved;
            answer.upstream_cache_status = newest.upstream_cache_status;
        }
        answer.decision = match (held_back, signed) {
            (Some(held), Some(signed)) => Some(format!("{held}; {signed}").into()),
            (Some(held), None) => Some(held.into()),
            (None, signed) => signed,
        };
        Ok(answer)
    }

    /// The tag's record if it is within `tag_ttl`.
    fn fresh_record(&self, key: &TagKey) -> Result<Option<TagRecord>, CacheError> {
        Ok(self.store.tag(key)?.filter(|rec| self.within_tag_ttl(rec)))
    }

    /// Manifest `d` from the store, or by digest through the cache (evicted since: a
    /// restart forgets cooldown holds).
    async fn stored_or_fetched(
        &self,
        target: &RepoTarget,
        d: &Digest,
    ) -> Result<StoredManifest, CacheError> {
        if let Some(m) = self.store.manifest(d)? {
            return Ok(m);
        }
        let a = self
            .manifest(target, &Reference::Digest(*d), &[], false)
            .await?;
        Ok(StoredManifest {
            media_type: a.media_type,
            bytes: a.bytes.unwrap_or_default(),
            repos: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_and_referrers_tags_are_artifact_tags() {
        let tag = |s: &str| s.parse::<Tag>().expect("tag");
        let hex = "a".repeat(64);
        assert!(is_artifact_tag(&tag(&format!("sha256-{hex}.sig"))));
        assert!(is_artifact_tag(&tag(&format!("sha256-{hex}"))));
        assert!(is_artifact_tag(&tag(&format!(
            "sha256-{hex}.edge-referrers"
        ))));
        assert!(!is_artifact_tag(&tag("latest")));
        assert!(!is_artifact_tag(&tag("sha256-abc")));
        assert!(!is_artifact_tag(&tag(&format!(
            "sha256-{}",
            "g".repeat(64)
        ))));
    }
}
