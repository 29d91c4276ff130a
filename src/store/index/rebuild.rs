//! Recovery's pass over the records: dropping what cannot be decoded or has lost its chunk
//! files, and rewriting the derived trees (chunk refcounts, the LRU order, the stored byte
//! total) from what is left. Driven by `recovery.rs`, which owns the file side.
//!
//! Must not: touch chunk files (it is told which chunks are intact).

use super::Index;
use crate::store::chunks::{ChunkId, ChunkRef};
use crate::store::codec::{
    chunk_id_from_key, decode_tag, digest_from_key, lru_key, BlobRecord, ChunkCount, ItemKind,
    ManifestRecord, TagListRecord, LRU_KEY_LEN,
};
use crate::store::error::StoreError;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

/// The totals recovery recomputes from the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rebuilt {
    pub blobs_dropped: usize,
    pub corrupt_records: usize,
    pub derived_entries_fixed: usize,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Distinct chunks committed blobs reference, with their lengths.
    pub chunks: HashMap<ChunkId, u32>,
    pub manifest_bytes: u64,
}

impl Rebuilt {
    /// Distinct chunk bytes + manifest bytes: what the budget counts as stored.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.values().map(|&len| u64::from(len)).sum::<u64>() + self.manifest_bytes
    }
}

impl Index {
    // ---- recovery ----------------------------------------------------------------------

    /// Recovery's pass over the records (see `recovery.rs`): drops undecodable records and
    /// blobs for which `intact` says no, then rewrites the derived trees (chunk refcounts,
    /// the LRU order, the stored byte total) to match what is left, and counts tags.
    pub fn rebuild(&self, intact: impl Fn(&ChunkRef) -> bool) -> Result<Rebuilt, StoreError> {
        let mut out = Rebuilt::default();
        let mut refcounts: HashMap<ChunkId, ChunkCount> = HashMap::new();
        let mut lru_keys: HashSet<[u8; LRU_KEY_LEN]> = HashSet::new();
        for entry in self.blobs.iter() {
            let (key, raw) = entry?;
            let (Some(d), Ok(rec)) = (digest_from_key(&key), BlobRecord::decode(&raw)) else {
                self.blobs.remove(&key)?;
                out.corrupt_records += 1;
                continue;
            };
            if !rec.chunks.iter().all(&intact) {
                tracing::warn!(digest = %d, "dropping blob with missing or short chunk files");
                self.blobs.remove(&key)?;
                out.blobs_dropped += 1;
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
            out.blobs += 1;
        }
        for entry in self.manifests.iter() {
            let (key, raw) = entry?;
            let (Some(d), Ok(rec)) = (digest_from_key(&key), ManifestRecord::decode(&raw)) else {
                self.manifests.remove(&key)?;
                out.corrupt_records += 1;
                continue;
            };
            out.manifest_bytes += rec.bytes.len() as u64;
            lru_keys.insert(lru_key(rec.last_access, ItemKind::Manifest, &d));
            out.manifests += 1;
        }

        // Derived: chunk refcounts.
        let mut unseen: HashSet<ChunkId> = refcounts.keys().copied().collect();
        for entry in self.chunk_refs.iter() {
            let (key, raw) = entry?;
            let wanted = chunk_id_from_key(&key).and_then(|id| refcounts.get(&id).map(|c| (id, c)));
            match wanted {
                Some((id, want)) if ChunkCount::decode(&raw).ok().as_ref() == Some(want) => {
                    unseen.remove(&id);
                }
                Some((id, want)) => {
                    self.chunk_refs.insert(key, &want.encode())?;
                    unseen.remove(&id);
                    out.derived_entries_fixed += 1;
                }
                None => {
                    self.chunk_refs.remove(&key)?;
                    out.derived_entries_fixed += 1;
                }
            }
        }
        for id in unseen {
            if let Some(want) = refcounts.get(&id) {
                self.chunk_refs.insert(id.as_bytes(), &want.encode())?;
                out.derived_entries_fixed += 1;
            }
        }

        // Derived: the LRU order.
        for key in self.lru.iter().keys() {
            let key = key?;
            let known = <[u8; LRU_KEY_LEN]>::try_from(&key[..])
                .ok()
                .is_some_and(|k| lru_keys.remove(&k));
            if !known {
                self.lru.remove(&key)?;
                out.derived_entries_fixed += 1;
            }
        }
        for key in lru_keys {
            self.lru.insert(key, &[])?;
            out.derived_entries_fixed += 1;
        }

        // Tags and tag lists: drop what cannot be decoded.
        for entry in self.tags.iter() {
            let (key, raw) = entry?;
            if decode_tag(&raw).is_ok() {
                out.tags += 1;
            } else {
                self.tags.remove(&key)?;
                out.corrupt_records += 1;
            }
        }
        for entry in self.tag_lists.iter() {
            let (key, raw) = entry?;
            if TagListRecord::decode(&raw).is_err() {
                self.tag_lists.remove(&key)?;
                out.corrupt_records += 1;
            }
        }
        self.tag_count.store(out.tags, Ordering::Relaxed);

        out.chunks = refcounts.into_iter().map(|(id, c)| (id, c.len)).collect();
        self.set_stored_bytes(out.stored_bytes())?;
        self.flush()?;
        Ok(out)
    }
}
