//! Crash recovery, run by `Store::open` while it holds the store lock.
//!
//! Owns: making the index and the chunk files agree again after any crash: emptying
//! `tmp/`, dropping undecodable records, dropping blobs whose chunk files are missing or
//! have the wrong size, removing chunk files that no blob names, and recomputing the
//! derived data (chunk refcounts, the LRU order, the stored byte total) from the blob and
//! manifest records. Every step is idempotent, so a crash during recovery is harmless.
//!
//! Must not: re-hash chunk contents (startup must stay fast with a large cache: sizes are
//! checked with `stat` only; `verify` does the hashing), or run while anything else uses
//! the store.

use super::chunks::{ChunkFiles, ChunkId};
use super::error::StoreError;
use super::index::{
    self, chunk_id_from_key, digest_from_key, lru_key, BlobRecord, ChunkCount, Index, ItemKind,
    ManifestRecord, TagListRecord,
};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What recovery found and did, and the totals it recomputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Leftover temp files removed from `tmp/`.
    pub tmp_removed: usize,
    /// Chunk files no blob names (fills interrupted before their commit), removed.
    pub orphan_chunks_removed: usize,
    /// Files under `chunks/` not named like chunks, removed.
    pub stray_files_removed: usize,
    /// Blobs whose chunk files were missing or of the wrong size, dropped.
    pub blobs_dropped: usize,
    /// Undecodable records dropped.
    pub corrupt_records: usize,
    /// Chunk refcount and LRU entries rewritten to match the records.
    pub derived_entries_fixed: usize,
    pub blobs: u64,
    pub manifests: u64,
    pub chunks: u64,
    pub tags: u64,
    pub stored_bytes: u64,
}

impl RecoveryReport {
    /// Whether recovery had to change anything.
    pub fn repaired(&self) -> bool {
        self.tmp_removed
            + self.orphan_chunks_removed
            + self.stray_files_removed
            + self.blobs_dropped
            + self.corrupt_records
            + self.derived_entries_fixed
            > 0
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} temp files, {} orphan chunks and {} stray files removed; {} blobs with \
             missing or short chunks and {} corrupt records dropped; {} derived index \
             entries fixed",
            self.tmp_removed,
            self.orphan_chunks_removed,
            self.stray_files_removed,
            self.blobs_dropped,
            self.corrupt_records,
            self.derived_entries_fixed
        )
    }
}

/// Brings `index` and `chunks` back into agreement; see the module doc.
pub(crate) fn recover(index: &Index, chunks: &ChunkFiles) -> Result<RecoveryReport, StoreError> {
    let mut report = RecoveryReport {
        tmp_removed: chunks.clear_tmp()?,
        ..RecoveryReport::default()
    };
    let scan = chunks.scan()?;
    for stray in &scan.strays {
        tracing::warn!(path = %stray.display(), "removing stray file from the chunk directory");
        chunks.remove_stray(stray)?;
        report.stray_files_removed += 1;
    }

    // Blobs: keep those whose every chunk file exists with the right size.
    let mut refcounts: HashMap<ChunkId, ChunkCount> = HashMap::new();
    let mut lru_keys: HashSet<[u8; index::LRU_KEY_LEN]> = HashSet::new();
    for entry in index.blobs.iter() {
        let (key, raw) = entry?;
        let (Some(d), Ok(rec)) = (digest_from_key(&key), BlobRecord::decode(&raw)) else {
            index.blobs.remove(&key)?;
            report.corrupt_records += 1;
            continue;
        };
        let intact = rec
            .chunks
            .iter()
            .all(|c| scan.files.get(&c.id) == Some(&u64::from(c.len)));
        if !intact {
            tracing::warn!(digest = %d, "dropping blob with missing or short chunk files");
            index.blobs.remove(&key)?;
            report.blobs_dropped += 1;
            continue;
        }
        for c in &rec.chunks {
            let count = refcounts.entry(c.id).or_insert(ChunkCount {
                refcount: 0,
                len: c.len,
            });
            count.refcount = count.refcount.saturating_add(1);
        }
        lru_keys.insert(lru_key(rec.last_access, ItemKind::Blob, &d));
        report.blobs += 1;
    }

    let mut manifest_bytes = 0u64;
    for entry in index.manifests.iter() {
        let (key, raw) = entry?;
        let (Some(d), Ok(rec)) = (digest_from_key(&key), ManifestRecord::decode(&raw)) else {
            index.manifests.remove(&key)?;
            report.corrupt_records += 1;
            continue;
        };
        manifest_bytes += rec.bytes.len() as u64;
        lru_keys.insert(lru_key(rec.last_access, ItemKind::Manifest, &d));
        report.manifests += 1;
    }

    // Derived: chunk refcounts.
    let mut unseen: HashSet<ChunkId> = refcounts.keys().copied().collect();
    for entry in index.chunk_refs.iter() {
        let (key, raw) = entry?;
        let wanted = chunk_id_from_key(&key).and_then(|id| refcounts.get(&id).map(|c| (id, c)));
        match wanted {
            Some((id, want)) if ChunkCount::decode(&raw).ok().as_ref() == Some(want) => {
                unseen.remove(&id);
            }
            Some((id, want)) => {
                index.chunk_refs.insert(key, &want.encode())?;
                unseen.remove(&id);
                report.derived_entries_fixed += 1;
            }
            None => {
                index.chunk_refs.remove(&key)?;
                report.derived_entries_fixed += 1;
            }
        }
    }
    for id in unseen {
        if let Some(want) = refcounts.get(&id) {
            index.chunk_refs.insert(id.as_bytes(), &want.encode())?;
            report.derived_entries_fixed += 1;
        }
    }

    // Derived: the LRU order.
    for key in index.lru.iter().keys() {
        let key = key?;
        let known = <[u8; index::LRU_KEY_LEN]>::try_from(&key[..])
            .ok()
            .is_some_and(|k| lru_keys.remove(&k));
        if !known {
            index.lru.remove(&key)?;
            report.derived_entries_fixed += 1;
        }
    }
    for key in lru_keys {
        index.lru.insert(key, &[])?;
        report.derived_entries_fixed += 1;
    }

    // Chunk files nothing names.
    for id in scan.files.keys() {
        if !refcounts.contains_key(id) {
            chunks.remove(id)?;
            report.orphan_chunks_removed += 1;
        }
    }

    // Tags and tag lists: drop what cannot be decoded.
    for entry in index.tags.iter() {
        let (key, raw) = entry?;
        if index::decode_tag(&raw).is_ok() {
            report.tags += 1;
        } else {
            index.tags.remove(&key)?;
            report.corrupt_records += 1;
        }
    }
    for entry in index.tag_lists.iter() {
        let (key, raw) = entry?;
        if TagListRecord::decode(&raw).is_err() {
            index.tag_lists.remove(&key)?;
            report.corrupt_records += 1;
        }
    }

    report.chunks = refcounts.len() as u64;
    report.stored_bytes =
        refcounts.values().map(|c| u64::from(c.len)).sum::<u64>() + manifest_bytes;
    index.set_stored_bytes(report.stored_bytes)?;
    index.flush()?;
    Ok(report)
}
