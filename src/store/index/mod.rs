//! The sled index: which blobs, manifests, tags and chunks the store holds, and the
//! index's schema version.
//!
//! Owns: opening sled (and checking or migrating its schema), the trees, and every
//! operation on them. A rule that spans two trees is written once, here: a blob or
//! manifest and its LRU entry are inserted, touched and removed together; chunk refcounts
//! are added and released per blob. Records that cannot be decoded are dropped and counted
//! where they are met, never a panic (encodings are in `codec.rs`).
//!
//! Trees:
//! - `blobs`: digest (32 bytes) → [`BlobRecord`]
//! - `manifests`: digest → [`ManifestRecord`]
//! - `tags`: `upstream \0 repo \0 tag` → tag record
//! - `tag_lists`: `upstream \0 repo` → [`TagListRecord`]
//! - `chunk_refs`: chunk id → [`ChunkCount`] (references from committed blobs)
//! - `lru`: `last_access µs (BE u64) ++ kind ++ digest` → `()`; eviction scans it in order
//! - `meta`: `stored_bytes` → BE u64, `schema_version` → BE u32, `edge_id` → 32 hex
//!   characters (made once, the edge's identity in headers)
//! - `savings`: what the edge saved the WAN, per upstream and hour and in total
//!   (`savings.rs`)
//!
//! This file: opening, blobs, manifests, recency and chunk references. `schema.rs`: the
//! schema version and migrations; `tags.rs`: tags, tag lists and the catalog;
//! `rebuild.rs`: recovery's pass over the records. The trees are private to this module
//! and its files.
//!
//! Must not: hold blob bytes (they are chunk files), touch the file system outside sled's
//! own directory, take the budget lock or decide policy (callers that must serialize a
//! change with budget accounting hold that lock around the call; see `budget.rs`).

mod rebuild;
mod savings;
mod schema;
mod tags;

pub(crate) use rebuild::Rebuilt;
pub use savings::{SavingsHistory, SavingsSummary, UpstreamSavings, HISTORY_HOURS};
pub use schema::{SchemaOpen, SCHEMA_VERSION};

use super::chunks::{ChunkId, ChunkRef};
use super::codec::{
    self, digest_from_key, lru_key, parse_lru_key, BlobRecord, ChunkCount, ItemKind, ManifestRecord,
};
use super::error::StoreError;
use crate::metrics::Metrics;
use crate::oci::Digest;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

const META_STORED_BYTES: &[u8] = b"stored_bytes";
const META_SCHEMA_VERSION: &[u8] = b"schema_version";
const META_EDGE_ID: &[u8] = b"edge_id";

/// sled's page cache size: the index is small, records are small.
const INDEX_CACHE_BYTES: u64 = 64 << 20;

/// An entry of the LRU order, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct LruEntry {
    key: sled::IVec,
    pub kind: ItemKind,
    pub digest: Digest,
}

impl LruEntry {
    /// Whether this entry is the one `last_access` of the item's record puts in the order
    /// (an entry left behind by a crash between two writes is not).
    pub fn is_current(&self, last_access: SystemTime) -> bool {
        lru_key(last_access, self.kind, &self.digest)[..] == self.key[..]
    }
}

/// What became of one chunk whose references a removed blob released.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChunkRelease {
    /// Other blobs still reference it.
    StillReferenced,
    /// No committed blob references it any more: its bytes stop counting as stored.
    Unreferenced { id: ChunkId, len: u32 },
    /// Its refcount record was corrupt and is dropped; the file is kept until the next
    /// open recounts.
    Unknown,
}

/// The open sled database and its trees.
pub(crate) struct Index {
    db: sled::Db,
    blobs: sled::Tree,
    manifests: sled::Tree,
    tags: sled::Tree,
    tag_lists: sled::Tree,
    chunk_refs: sled::Tree,
    lru: sled::Tree,
    meta: sled::Tree,
    /// What the edge saved the WAN, per upstream and hour (see `savings.rs`).
    savings: sled::Tree,
    metrics: Arc<Metrics>,
    /// Tags in the `tags` tree.
    tag_count: AtomicU64,
}

impl Index {
    /// Opens (creating) the index in `dir` and brings its schema to [`SCHEMA_VERSION`];
    /// refuses an index written by a newer release.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<(Index, SchemaOpen), StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(INDEX_CACHE_BYTES)
            .open()?;
        let index = Index {
            blobs: db.open_tree("blobs")?,
            manifests: db.open_tree("manifests")?,
            tags: db.open_tree("tags")?,
            tag_lists: db.open_tree("tag_lists")?,
            chunk_refs: db.open_tree("chunk_refs")?,
            lru: db.open_tree("lru")?,
            meta: db.open_tree("meta")?,
            savings: db.open_tree("savings")?,
            db,
            metrics,
            tag_count: AtomicU64::new(0),
        };
        let schema = index.bring_schema_up_to_date(dir)?;
        Ok((index, schema))
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// The edge's id: made once (16 random bytes, hex) and kept.
    pub fn edge_id(&self) -> Result<String, StoreError> {
        let fresh = hex::encode(rand::random::<[u8; 16]>());
        // Only the first writer's id stays (compare-and-swap from nothing).
        let _ = self.meta.compare_and_swap(
            META_EDGE_ID,
            None as Option<&[u8]>,
            Some(fresh.as_bytes()),
        )?;
        let kept = self.meta.get(META_EDGE_ID)?.map(|v| v.to_vec());
        Ok(kept
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or(fresh))
    }

    pub fn set_stored_bytes(&self, n: u64) -> Result<(), StoreError> {
        self.meta.insert(META_STORED_BYTES, &n.to_be_bytes())?;
        Ok(())
    }

    /// Removes a record that cannot be decoded, and counts it.
    fn drop_corrupt(
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

    // ---- blobs -------------------------------------------------------------------------

    pub fn blob(&self, d: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        let Some(raw) = self.blobs.get(d.as_bytes())? else {
            return Ok(None);
        };
        match BlobRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt(&self.blobs, d.as_bytes(), &e)?;
                Ok(None)
            }
        }
    }

    /// Every decodable blob record (corrupt ones are dropped).
    pub fn all_blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, StoreError> {
        scan(self, &self.blobs, "blob", BlobRecord::decode)
    }

    /// The commit point of a blob: its LRU entry, then its record; from here on it is
    /// visible. The caller referenced its chunks first.
    pub fn commit_blob(&self, d: &Digest, rec: &BlobRecord) -> Result<(), StoreError> {
        self.lru
            .insert(lru_key(rec.last_access, ItemKind::Blob, d), &[])?;
        self.blobs.insert(d.as_bytes(), rec.encode())?;
        Ok(())
    }

    /// Rewrites a blob's record with the same last access (its repositories changed).
    pub fn update_blob(&self, d: &Digest, rec: &BlobRecord) -> Result<(), StoreError> {
        self.blobs.insert(d.as_bytes(), rec.encode())?;
        Ok(())
    }

    /// Removes blob `d` (record `rec`) and its LRU entry; the caller releases its chunks.
    pub fn remove_blob(&self, d: &Digest, rec: &BlobRecord) -> Result<(), StoreError> {
        self.blobs.remove(d.as_bytes())?;
        self.lru
            .remove(lru_key(rec.last_access, ItemKind::Blob, d))?;
        Ok(())
    }

    // ---- manifests ---------------------------------------------------------------------

    pub fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>, StoreError> {
        let Some(raw) = self.manifests.get(d.as_bytes())? else {
            return Ok(None);
        };
        match ManifestRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt(&self.manifests, d.as_bytes(), &e)?;
                Ok(None)
            }
        }
    }

    pub fn all_manifests(&self) -> Result<Vec<(Digest, ManifestRecord)>, StoreError> {
        scan(self, &self.manifests, "manifest", ManifestRecord::decode)
    }

    /// Inserts a new manifest with its LRU entry.
    pub fn insert_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<(), StoreError> {
        self.lru
            .insert(lru_key(rec.last_access, ItemKind::Manifest, d), &[])?;
        self.manifests.insert(d.as_bytes(), rec.encode())?;
        Ok(())
    }

    /// Rewrites a manifest's record with the same last access.
    pub fn update_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<(), StoreError> {
        self.manifests.insert(d.as_bytes(), rec.encode())?;
        Ok(())
    }

    pub fn remove_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<(), StoreError> {
        self.manifests.remove(d.as_bytes())?;
        self.lru
            .remove(lru_key(rec.last_access, ItemKind::Manifest, d))?;
        Ok(())
    }

    // ---- recency -----------------------------------------------------------------------

    /// Moves item `d` to `at` in the LRU order, and its record's last access with it, if
    /// `at` is later than what the record says. Unknown items are ignored.
    pub fn touch(&self, kind: ItemKind, d: &Digest, at: SystemTime) -> Result<(), StoreError> {
        let later = |last: SystemTime| codec::micros(at) > codec::micros(last);
        match kind {
            ItemKind::Blob => {
                if let Some(mut rec) = self.blob(d)? {
                    if later(rec.last_access) {
                        self.lru.remove(lru_key(rec.last_access, kind, d))?;
                        rec.last_access = at;
                        self.lru.insert(lru_key(at, kind, d), &[])?;
                        self.blobs.insert(d.as_bytes(), rec.encode())?;
                    }
                }
            }
            ItemKind::Manifest => {
                if let Some(mut rec) = self.manifest(d)? {
                    if later(rec.last_access) {
                        self.lru.remove(lru_key(rec.last_access, kind, d))?;
                        rec.last_access = at;
                        self.lru.insert(lru_key(at, kind, d), &[])?;
                        self.manifests.insert(d.as_bytes(), rec.encode())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The first LRU entry after `after` (from the oldest when `None`); unreadable keys met
    /// on the way are removed.
    pub fn lru_next(&self, after: Option<&LruEntry>) -> Result<Option<LruEntry>, StoreError> {
        let mut cursor: Option<sled::IVec> = after.map(|e| e.key.clone());
        loop {
            let next = match &cursor {
                None => self.lru.iter().keys().next(),
                Some(k) => self
                    .lru
                    .range::<sled::IVec, _>((
                        std::ops::Bound::Excluded(k.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .keys()
                    .next(),
            };
            let Some(key) = next else {
                return Ok(None);
            };
            let key = key?;
            match parse_lru_key(&key) {
                Some((_, kind, digest)) => return Ok(Some(LruEntry { key, kind, digest })),
                None => {
                    self.lru.remove(&key)?;
                    cursor = Some(key);
                }
            }
        }
    }

    /// Removes an LRU entry that no longer matches its item (see [`LruEntry::is_current`]).
    pub fn forget_lru(&self, entry: &LruEntry) -> Result<(), StoreError> {
        self.lru.remove(&entry.key)?;
        Ok(())
    }

    /// Every item whose last access is before `cutoff`.
    pub fn accessed_before(
        &self,
        cutoff: SystemTime,
    ) -> Result<Vec<(ItemKind, Digest)>, StoreError> {
        let bound = codec::micros(cutoff).to_be_bytes();
        let mut out = Vec::new();
        for key in self.lru.range(..&bound[..]).keys() {
            if let Some((_, kind, d)) = parse_lru_key(&key?) {
                out.push((kind, d));
            }
        }
        Ok(out)
    }

    // ---- chunk references --------------------------------------------------------------

    /// Adds one reference per chunk slot of a blob being committed; returns the chunks
    /// that became referenced (their bytes now count as stored).
    pub fn reference_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<(ChunkId, u32)>, StoreError> {
        let mut added = Vec::new();
        for (id, (slots, len)) in count_slots(chunks) {
            let count = match self.chunk_count(&id) {
                Ok(Some(c)) => ChunkCount {
                    refcount: c.refcount.saturating_add(slots),
                    len,
                },
                Ok(None) | Err(StoreError::Corrupt(_)) => {
                    added.push((id, len));
                    ChunkCount {
                        refcount: slots,
                        len,
                    }
                }
                Err(e) => return Err(e),
            };
            self.chunk_refs.insert(id.as_bytes(), &count.encode())?;
        }
        Ok(added)
    }

    /// Drops one reference per chunk slot of a blob being removed.
    pub fn release_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<ChunkRelease>, StoreError> {
        let mut out = Vec::new();
        for (id, (slots, len)) in count_slots(chunks) {
            let release = match self.chunk_count(&id) {
                Ok(Some(c)) if c.refcount > slots => {
                    let count = ChunkCount {
                        refcount: c.refcount - slots,
                        len: c.len,
                    };
                    self.chunk_refs.insert(id.as_bytes(), &count.encode())?;
                    ChunkRelease::StillReferenced
                }
                Ok(_) => {
                    self.chunk_refs.remove(id.as_bytes())?;
                    ChunkRelease::Unreferenced { id, len }
                }
                Err(StoreError::Corrupt(msg)) => {
                    tracing::warn!(chunk = %id, "chunk refcount record is corrupt ({msg}); keeping the file");
                    self.chunk_refs.remove(id.as_bytes())?;
                    ChunkRelease::Unknown
                }
                Err(e) => return Err(e),
            };
            out.push(release);
        }
        Ok(out)
    }

    /// Whether a committed blob references chunk `id` (an unreadable count says yes: the
    /// file is kept).
    pub fn chunk_is_referenced(&self, id: &ChunkId) -> bool {
        !matches!(self.chunk_count(id), Ok(None))
    }

    fn chunk_count(&self, id: &ChunkId) -> Result<Option<ChunkCount>, StoreError> {
        match self.chunk_refs.get(id.as_bytes())? {
            Some(v) => ChunkCount::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `value` under `key` in tree `tree` as it is, bypassing every rule: for
    /// tests of corrupt records, recovery and migration.
    #[cfg(test)]
    pub fn write_raw(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let tree = match tree {
            "blobs" => &self.blobs,
            "manifests" => &self.manifests,
            "tags" => &self.tags,
            "tag_lists" => &self.tag_lists,
            "chunk_refs" => &self.chunk_refs,
            "lru" => &self.lru,
            _ => &self.meta,
        };
        tree.insert(key, value)?;
        Ok(())
    }

    /// Removes `key` from the `meta` tree: for tests that make an index look like one
    /// written before schema versions.
    #[cfg(test)]
    pub fn remove_meta(&self, key: &[u8]) -> Result<(), StoreError> {
        self.meta.remove(key)?;
        self.db.flush()?;
        Ok(())
    }
}

/// Every decodable record of `tree` by digest; undecodable ones (or keys that are not
/// digests) are dropped and counted.
fn scan<R>(
    index: &Index,
    tree: &sled::Tree,
    what: &str,
    decode: fn(&[u8]) -> Result<R, StoreError>,
) -> Result<Vec<(Digest, R)>, StoreError> {
    let mut out = Vec::new();
    for entry in tree.iter() {
        let (key, raw) = entry?;
        match (digest_from_key(&key), decode(&raw)) {
            (Some(d), Ok(rec)) => out.push((d, rec)),
            (_, Err(e)) => index.drop_corrupt(tree, &key, &e)?,
            (None, Ok(_)) => index.drop_corrupt(
                tree,
                &key,
                &StoreError::Corrupt(format!("{what} key is not a digest")),
            )?,
        }
    }
    Ok(out)
}

/// Slots per distinct chunk (a blob may repeat a chunk, e.g. runs of zeros), with length.
fn count_slots(chunks: &[ChunkRef]) -> HashMap<ChunkId, (u32, u32)> {
    let mut slots: HashMap<ChunkId, (u32, u32)> = HashMap::new();
    for c in chunks {
        slots.entry(c.id).or_insert((0, c.len)).0 += 1;
    }
    slots
}
