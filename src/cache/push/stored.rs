//! What a push leaves in the store, and only after the upstream's 201: the blob (its fill
//! named and finished) and the manifest with its tag.
//!
//! Must not: talk to the upstream about blobs, or keep session state (`super` does).

use super::spool::{Kept, Spooled};
use super::{blocking, PushFailure, PushedManifest, Pushes};
use crate::oci::{Digest, Reference, RepoTarget};
use crate::store::{TagKey, TagRecord};
use bytes::Bytes;
use std::time::SystemTime;

impl Pushes {
    /// Commits a pushed blob to the store: its fill, named `digest`. A failure here only
    /// costs the write-through: the upstream has it.
    pub(super) async fn write_through(
        &self,
        target: &RepoTarget,
        digest: &Digest,
        spooled: Spooled,
    ) -> bool {
        let (store, d, repo) = (self.store.clone(), *digest, target.key().to_string());
        let result = match spooled.kept {
            Kept::Nothing => {
                // The store could not take the bytes (the spool thread logged why).
                self.metrics
                    .push_failures
                    .with_label_values(&["store"])
                    .inc();
                return false;
            }
            Kept::Fill(fill) => {
                blocking(move || {
                    if store.blob(&d)?.is_some() {
                        drop(fill);
                        return store.add_repo(&d, &repo);
                    }
                    fill.finish_as(d, &repo).map(|_| ())
                })
                .await
            }
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.metrics
                    .push_failures
                    .with_label_values(&["store"])
                    .inc();
                tracing::warn!(repo = %target.key(), digest = %digest, error = %e, "pushed blob not written through to the cache");
                false
            }
        }
    }

    /// `PUT` of a manifest: the upstream first; on its 201 the edge stores the manifest
    /// and, for a tag, records the tag.
    pub async fn put_manifest(
        &self,
        target: &RepoTarget,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<PushedManifest, PushFailure> {
        let upstream = self.upstream(target)?;
        let digest = Digest::of(&bytes);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return self.failed(PushFailure::DigestMismatch {
                    expected: *d,
                    actual: digest,
                });
            }
        }
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
            return self.failed(PushFailure::ManifestInvalid(
                "the manifest is not JSON".into(),
            ));
        }
        if let Err(e) = upstream
            .put_manifest(
                &target.repo,
                &reference.to_string(),
                media_type,
                bytes.clone(),
            )
            .await
        {
            return self.failed(self.upstream_failure(target, e));
        }
        let (store, repo_key) = (self.store.clone(), target.key().to_string());
        let tag = match reference {
            Reference::Tag(t) => Some(TagKey {
                upstream: target.upstream.clone(),
                repo: target.repo.clone(),
                tag: t.clone(),
            }),
            Reference::Digest(_) => None,
        };
        let media = media_type.to_string();
        let stored = blocking(move || {
            store.put_manifest(&digest, &media, &bytes, &repo_key)?;
            if let Some(key) = tag {
                let now = SystemTime::now();
                store.put_tag(
                    &key,
                    &TagRecord {
                        digest,
                        media_type: media,
                        fetched_at: now,
                        validated_at: now,
                        seen: Vec::new(),
                    },
                )?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = stored {
            self.metrics
                .push_failures
                .with_label_values(&["store"])
                .inc();
            tracing::warn!(repo = %target.key(), %digest, error = %e, "pushed manifest not written through to the cache");
        }
        self.metrics
            .pushes_completed
            .with_label_values(&["manifest"])
            .inc();
        tracing::info!(repo = %target.key(), reference = %reference, %digest, "manifest pushed through the edge");
        Ok(PushedManifest { digest })
    }
}
