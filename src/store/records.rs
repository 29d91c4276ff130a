//! Blob and manifest records on behalf of the `Store` facade: loading them (a record that
//! cannot be decoded is dropped and counted, never a panic), scanning them, storing
//! manifests, and remembering which repositories content was requested through.
//!
//! Owns: the error counting helper and the corrupt-record rule shared by every module.
//!
//! Must not: write or unlink chunk files, or remove blobs (removal releases chunk
//! references and lives in `policy.rs`).

use super::error::StoreError;
use super::index::{self, BlobRecord, ItemKind, ManifestRecord};
use super::StoreInner;
use crate::oci::Digest;
use bytes::Bytes;
use std::time::SystemTime;

/// At most this many `upstream/repo` names are remembered per blob or manifest.
const MAX_REPOS_PER_ITEM: usize = 256;

impl StoreInner {
    pub(crate) fn count_error(&self, op: &'static str, e: &StoreError) {
        self.metrics.store_errors.with_label_values(&[op]).inc();
        if !matches!(
            e,
            StoreError::NoSpace { .. } | StoreError::DigestMismatch { .. }
        ) {
            tracing::warn!(op, error = %e, "store operation failed");
        }
    }

    /// Removes a record that cannot be decoded, and counts it.
    pub(crate) fn drop_corrupt_record(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        e: &StoreError,
    ) -> Result<(), StoreError> {
        tracing::warn!(error = %e, "dropping corrupt store record");
        self.metrics
            .store_errors
            .with_label_values(&["corrupt_record"])
            .inc();
        tree.remove(key)?;
        Ok(())
    }

    pub(crate) fn load_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        let Some(raw) = self.index.blobs.get(d.as_bytes())? else {
            return Ok(None);
        };
        match BlobRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt_record(&self.index.blobs, d.as_bytes(), &e)?;
                Ok(None)
            }
        }
    }

    pub(crate) fn load_manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>, StoreError> {
        let Some(raw) = self.index.manifests.get(d.as_bytes())? else {
            return Ok(None);
        };
        match ManifestRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt_record(&self.index.manifests, d.as_bytes(), &e)?;
                Ok(None)
            }
        }
    }

    /// Every decodable blob record (corrupt ones are dropped).
    pub(crate) fn scan_blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.index.blobs.iter() {
            let (key, raw) = entry?;
            match (index::digest_from_key(&key), BlobRecord::decode(&raw)) {
                (Some(d), Ok(rec)) => out.push((d, rec)),
                (_, Err(e)) => self.drop_corrupt_record(&self.index.blobs, &key, &e)?,
                (None, Ok(_)) => self.drop_corrupt_record(
                    &self.index.blobs,
                    &key,
                    &StoreError::Corrupt("blob key is not a digest".into()),
                )?,
            }
        }
        Ok(out)
    }

    pub(crate) fn scan_manifests(&self) -> Result<Vec<(Digest, ManifestRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.index.manifests.iter() {
            let (key, raw) = entry?;
            match (index::digest_from_key(&key), ManifestRecord::decode(&raw)) {
                (Some(d), Ok(rec)) => out.push((d, rec)),
                (_, Err(e)) => self.drop_corrupt_record(&self.index.manifests, &key, &e)?,
                (None, Ok(_)) => self.drop_corrupt_record(
                    &self.index.manifests,
                    &key,
                    &StoreError::Corrupt("manifest key is not a digest".into()),
                )?,
            }
        }
        Ok(out)
    }

    pub(crate) fn add_repo(&self, d: &Digest, repo: &str) -> Result<(), StoreError> {
        let _st = self.lock_state();
        if let Some(mut rec) = self.load_blob(d)? {
            if push_repo(&mut rec.repos, repo) {
                self.index.blobs.insert(d.as_bytes(), rec.encode())?;
            }
        } else if let Some(mut rec) = self.load_manifest(d)? {
            if push_repo(&mut rec.repos, repo) {
                self.index.manifests.insert(d.as_bytes(), rec.encode())?;
            }
        }
        Ok(())
    }

    pub(crate) fn put_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
        repo: &str,
    ) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        {
            let mut st = self.lock_state();
            if let Some(mut rec) = self.load_manifest(d)? {
                if push_repo(&mut rec.repos, repo) {
                    self.index.manifests.insert(d.as_bytes(), rec.encode())?;
                }
            } else {
                let len = bytes.len() as u64;
                self.reserve_locked(&mut st, len)?;
                st.reserved_bytes -= len;
                let now = SystemTime::now();
                let mut repos = Vec::new();
                push_repo(&mut repos, repo);
                let rec = ManifestRecord {
                    media_type: media_type.to_string(),
                    bytes: Bytes::copy_from_slice(bytes),
                    created: now,
                    last_access: now,
                    repos,
                };
                self.index
                    .lru
                    .insert(index::lru_key(now, ItemKind::Manifest, d), &[])?;
                self.index.manifests.insert(d.as_bytes(), rec.encode())?;
                st.stored_bytes += len;
                st.manifests += 1;
                self.index.set_stored_bytes(st.stored_bytes)?;
                self.publish_gauges(&st);
            }
        }
        self.index.flush()
    }
}

/// Adds `repo` to `repos` unless present, empty or the list is full; true if added.
pub(crate) fn push_repo(repos: &mut Vec<String>, repo: &str) -> bool {
    if repo.is_empty() || repos.len() >= MAX_REPOS_PER_ITEM || repos.iter().any(|r| r == repo) {
        return false;
    }
    repos.push(repo.to_string());
    true
}
