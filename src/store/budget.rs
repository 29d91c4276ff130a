//! The byte budget: what the store holds and has promised, and every change that must be
//! serialized with it.
//!
//! Owns: [`Budget`], whose one lock (private to this file) guards the totals (stored and
//! reserved bytes; blob, manifest and chunk counts) and the pins (chunks held by fills,
//! blobs held by readers and `verify`). Under that lock, and only here: reservations and
//! LRU eviction down to the low watermark, committing a blob (referencing its chunks),
//! removing a blob or manifest (releasing its chunks and unlinking the files no blob
//! references and no fill pins), storing a manifest, pinning and unpinning, and applying
//! batched last-access times to the index. It also publishes the `store_*` gauges of what
//! it counts.
//!
//! Must not: write chunk files (see `chunks.rs`), touch sled trees other than through
//! [`Index`]'s operations, or remove anything pinned by a reader or a fill.

use super::chunks::{ChunkFiles, ChunkId, ChunkRef};
use super::codec::{BlobRecord, ItemKind, ManifestRecord};
use super::error::{count, StoreError};
use super::index::{ChunkRelease, Index};
use super::values::BlobInfo;
use crate::metrics::Metrics;
use crate::oci::Digest;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// At most this many `upstream/repo` names are remembered per blob or manifest.
const MAX_REPOS_PER_ITEM: usize = 256;

/// The totals the budget keeps, as a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Distinct chunk bytes of committed blobs + manifest bytes.
    pub stored_bytes: u64,
    /// Bytes promised to fills in progress.
    pub reserved_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    /// Distinct chunks referenced by committed blobs.
    pub chunks: u64,
}

/// What the caller of [`Budget::settle_blob`] / [`Budget::settle_manifest`] wants done
/// with an item, decided from its current record.
pub(crate) enum Verdict {
    Keep,
    /// Keep it for these repositories only (it forgets the others).
    Detach(Vec<String>),
    Remove,
}

/// What [`Budget::settle_blob`] / [`Budget::settle_manifest`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Not in the index (any more).
    Gone,
    Kept,
    Detached,
    Removed {
        freed: u64,
    },
    /// To be removed, but a reader holds it.
    InUse,
}

/// The state behind the lock.
#[derive(Debug, Default)]
struct Ledger {
    totals: Totals,
    /// Chunks held by fills in progress (count of holds per chunk).
    chunk_pins: HashMap<ChunkId, u32>,
    /// Blobs held by readers and by `verify` (count of holds per blob).
    blob_pins: HashMap<Digest, u32>,
    /// Manifests kept from eviction and expiry until a time: those a cooldown serves in
    /// place of a tag's newest digest.
    manifest_holds: HashMap<Digest, SystemTime>,
}

/// The store's budget and the lock that serializes every change to what it counts.
/// Lock order: the ledger before the pending accesses.
pub(crate) struct Budget {
    max_size: u64,
    index: Arc<Index>,
    chunks: Arc<ChunkFiles>,
    metrics: Arc<Metrics>,
    ledger: Mutex<Ledger>,
    /// Last accesses not yet written to the index (see [`Budget::apply_accesses`]).
    pending_access: Mutex<HashMap<(ItemKind, Digest), SystemTime>>,
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Budget {
    /// A budget of `max_size` bytes over what recovery counted (`totals`).
    pub fn new(
        max_size: u64,
        index: Arc<Index>,
        chunks: Arc<ChunkFiles>,
        metrics: Arc<Metrics>,
        totals: Totals,
    ) -> Budget {
        metrics.store_budget_bytes.set(gauge_value(max_size));
        let budget = Budget {
            max_size,
            index,
            chunks,
            metrics,
            ledger: Mutex::new(Ledger {
                totals,
                ..Ledger::default()
            }),
            pending_access: Mutex::new(HashMap::new()),
        };
        budget.publish(&budget.lock().totals);
        budget
    }

    /// The one place the lock is taken.
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<(ItemKind, Digest), SystemTime>> {
        self.pending_access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn totals(&self) -> Totals {
        self.lock().totals
    }

    /// Chunks pinned by fills and blobs pinned by readers (for tests of the guarantees).
    #[cfg(test)]
    pub fn pins(&self) -> (usize, usize) {
        let l = self.lock();
        (l.chunk_pins.len(), l.blob_pins.len())
    }

    fn low_watermark(&self) -> u64 {
        self.max_size / 10 * 9
    }

    fn publish(&self, t: &Totals) {
        let m = &self.metrics;
        m.store_bytes.set(gauge_value(t.stored_bytes));
        m.store_blobs.set(gauge_value(t.blobs));
        m.store_manifests.set(gauge_value(t.manifests));
        m.store_chunks.set(gauge_value(t.chunks));
    }

    // ---- reservations and eviction -----------------------------------------------------

    /// Refuses a blob of `size` bytes that could never fit (larger than the whole budget),
    /// without reserving or evicting anything.
    pub fn check_fits(&self, size: u64) -> Result<(), StoreError> {
        if size > self.max_size {
            return Err(StoreError::NoSpace {
                needed: size,
                budget: self.max_size,
            });
        }
        Ok(())
    }

    fn reserve_locked(&self, l: &mut Ledger, needed: u64) -> Result<(), StoreError> {
        self.check_fits(needed)?;
        let budget = self.max_size;
        let no_space = StoreError::NoSpace { needed, budget };
        let t = &l.totals;
        if t.stored_bytes + t.reserved_bytes + needed > budget {
            let target = self.low_watermark().saturating_sub(needed);
            self.evict_locked(l, target)?;
            let t = &l.totals;
            if t.stored_bytes + t.reserved_bytes + needed > budget {
                return Err(no_space);
            }
        }
        l.totals.reserved_bytes += needed;
        Ok(())
    }

    /// Evicts down to the low watermark if the store is over budget (e.g. after the budget
    /// was lowered, or a fill of unknown size committed).
    pub fn enforce(&self) -> Result<(), StoreError> {
        let mut l = self.lock();
        if l.totals.stored_bytes + l.totals.reserved_bytes > self.max_size {
            self.evict_locked(&mut l, self.low_watermark())?;
        }
        self.publish(&l.totals);
        Ok(())
    }

    /// Evicts least-recently-accessed unpinned blobs and manifests until stored + reserved
    /// bytes are at most `target`, or nothing evictable is left.
    fn evict_locked(&self, l: &mut Ledger, target: u64) -> Result<(), StoreError> {
        self.apply_accesses_locked(l)?;
        let mut cursor = None;
        while l.totals.stored_bytes + l.totals.reserved_bytes > target {
            let Some(entry) = self.index.lru_next(cursor.as_ref())? else {
                break;
            };
            let d = entry.digest;
            let freed = match entry.kind {
                ItemKind::Blob => {
                    if l.blob_pins.contains_key(&d) {
                        cursor = Some(entry);
                        continue;
                    }
                    match self.index.blob(&d)? {
                        Some(rec) if entry.is_current(rec.last_access) => {
                            self.remove_blob_locked(l, &d, &rec)?
                        }
                        _ => {
                            self.index.forget_lru(&entry)?;
                            cursor = Some(entry);
                            continue;
                        }
                    }
                }
                ItemKind::Manifest if Self::held_locked(l, &d) => {
                    cursor = Some(entry);
                    continue;
                }
                ItemKind::Manifest => match self.index.manifest(&d)? {
                    Some(rec) if entry.is_current(rec.last_access) => {
                        self.remove_manifest_locked(l, &d, &rec)?
                    }
                    _ => {
                        self.index.forget_lru(&entry)?;
                        cursor = Some(entry);
                        continue;
                    }
                },
            };
            self.metrics.store_evictions.inc();
            self.metrics.store_evicted_bytes.inc_by(freed);
            tracing::debug!(kind = entry.kind.label(), digest = %d.short(), freed, "evicted");
            cursor = Some(entry);
        }
        self.index.set_stored_bytes(l.totals.stored_bytes)?;
        self.publish(&l.totals);
        Ok(())
    }

    // ---- fills -------------------------------------------------------------------------

    /// Pins chunk `id` for a fill (so nobody unlinks it while the fill may reuse or write
    /// it), reserving its `len` bytes first (evicting down to the low watermark if they do
    /// not fit).
    pub fn pin_chunk(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        let mut l = self.lock();
        self.reserve_locked(&mut l, len)?;
        *l.chunk_pins.entry(id).or_insert(0) += 1;
        Ok(())
    }

    /// A fill ends without a commit: its reservation goes back and its pins are dropped;
    /// chunk files that no committed blob references and no other fill pins are unlinked.
    pub fn abandon_fill(&self, reserved: u64, pinned: &[ChunkId]) {
        let mut l = self.lock();
        l.totals.reserved_bytes = l.totals.reserved_bytes.saturating_sub(reserved);
        self.unpin_chunks_locked(&mut l, pinned);
    }

    /// Commits a verified, durable blob: references its chunks, writes its record (the
    /// commit point), returns the fill's reservation and pins, flushes the index and
    /// enforces the budget. A blob already committed (two fills raced) is kept and only
    /// learns `repo`.
    pub fn commit_blob(
        &self,
        d: &Digest,
        size: u64,
        chunks: &[ChunkRef],
        repo: &str,
        reserved: u64,
        pinned: &[ChunkId],
    ) -> Result<BlobInfo, StoreError> {
        let info = {
            let mut l = self.lock();
            let info = self.commit_locked(&mut l, d, size, chunks, repo);
            // Committed or not, the fill's reservation and pins end here (on a failure
            // its chunk files that nothing references are unlinked, as on an abort).
            l.totals.reserved_bytes = l.totals.reserved_bytes.saturating_sub(reserved);
            self.unpin_chunks_locked(&mut l, pinned);
            self.publish(&l.totals);
            info?
        };
        self.index.flush()?;
        self.enforce()?;
        Ok(info)
    }

    fn commit_locked(
        &self,
        l: &mut Ledger,
        d: &Digest,
        size: u64,
        chunks: &[ChunkRef],
        repo: &str,
    ) -> Result<BlobInfo, StoreError> {
        if let Some(mut existing) = self.index.blob(d)? {
            if push_repo(&mut existing.repos, repo) {
                self.index.update_blob(d, &existing)?;
            }
            return Ok(BlobInfo {
                digest: *d,
                size: existing.size,
                repos: existing.repos,
            });
        }
        for (_, len) in self.index.reference_chunks(chunks)? {
            l.totals.stored_bytes += u64::from(len);
            l.totals.chunks += 1;
        }
        let now = SystemTime::now();
        let mut repos = Vec::new();
        push_repo(&mut repos, repo);
        let rec = BlobRecord {
            size,
            chunks: chunks.to_vec(),
            created: now,
            last_access: now,
            repos,
        };
        self.index.commit_blob(d, &rec)?;
        l.totals.blobs += 1;
        self.index.set_stored_bytes(l.totals.stored_bytes)?;
        Ok(BlobInfo {
            digest: *d,
            size,
            repos: rec.repos,
        })
    }

    fn unpin_chunks_locked(&self, l: &mut Ledger, pinned: &[ChunkId]) {
        for id in pinned {
            match l.chunk_pins.get_mut(id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    continue;
                }
                Some(_) => {
                    l.chunk_pins.remove(id);
                }
                None => {}
            }
            if !self.index.chunk_is_referenced(id) {
                self.unlink_chunk(id);
            }
        }
    }

    fn unlink_chunk(&self, id: &ChunkId) {
        if let Err(e) = self.chunks.remove(id) {
            // The file becomes an orphan that the next open removes.
            count(&self.metrics, "unlink", &e);
        }
    }

    // ---- readers -----------------------------------------------------------------------

    /// Holds blob `d` against eviction, expiry and purges (pin before looking it up, so
    /// that nothing slips between the two).
    pub fn pin_blob(&self, d: &Digest) {
        *self.lock().blob_pins.entry(*d).or_insert(0) += 1;
    }

    pub fn unpin_blob(&self, d: &Digest) {
        let mut l = self.lock();
        match l.blob_pins.get_mut(d) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                l.blob_pins.remove(d);
            }
            None => {}
        }
    }

    /// Keeps manifest `d` from eviction and TTL expiry until `until` (a later hold of the
    /// same manifest extends it; a purge still removes it).
    pub fn hold_manifest(&self, d: &Digest, until: SystemTime) {
        let mut l = self.lock();
        let now = SystemTime::now();
        l.manifest_holds.retain(|_, t| *t > now);
        if until > now {
            let t = l.manifest_holds.entry(*d).or_insert(until);
            *t = (*t).max(until);
        }
    }

    /// Whether manifest `d` is held now (see [`Budget::hold_manifest`]).
    pub fn manifest_held(&self, d: &Digest) -> bool {
        Self::held_locked(&self.lock(), d)
    }

    fn held_locked(l: &Ledger, d: &Digest) -> bool {
        l.manifest_holds
            .get(d)
            .is_some_and(|t| *t > SystemTime::now())
    }

    // ---- manifests and repositories ----------------------------------------------------

    /// Stores manifest `d` (already verified) or, if it is stored, notes `repo`; flushes.
    pub fn put_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
        repo: &str,
    ) -> Result<(), StoreError> {
        {
            let mut l = self.lock();
            if let Some(mut rec) = self.index.manifest(d)? {
                if push_repo(&mut rec.repos, repo) {
                    self.index.update_manifest(d, &rec)?;
                }
            } else {
                let len = bytes.len() as u64;
                self.reserve_locked(&mut l, len)?;
                l.totals.reserved_bytes -= len;
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
                self.index.insert_manifest(d, &rec)?;
                l.totals.stored_bytes += len;
                l.totals.manifests += 1;
                self.index.set_stored_bytes(l.totals.stored_bytes)?;
                self.publish(&l.totals);
            }
        }
        self.index.flush()
    }

    /// Records that blob or manifest `d` was also requested through `repo`.
    pub fn add_repo(&self, d: &Digest, repo: &str) -> Result<(), StoreError> {
        let _l = self.lock();
        if let Some(mut rec) = self.index.blob(d)? {
            if push_repo(&mut rec.repos, repo) {
                self.index.update_blob(d, &rec)?;
            }
        } else if let Some(mut rec) = self.index.manifest(d)? {
            if push_repo(&mut rec.repos, repo) {
                self.index.update_manifest(d, &rec)?;
            }
        }
        Ok(())
    }

    // ---- removal -----------------------------------------------------------------------

    /// Decides about blob `d` on its current record (its last access brought up to date)
    /// and carries the verdict out; a blob to remove that a reader holds is left alone.
    pub fn settle_blob(
        &self,
        d: &Digest,
        decide: impl FnOnce(&BlobRecord) -> Verdict,
    ) -> Result<Settled, StoreError> {
        let mut l = self.lock();
        self.apply_pending_of(ItemKind::Blob, d)?;
        let Some(mut rec) = self.index.blob(d)? else {
            return Ok(Settled::Gone);
        };
        let settled = match decide(&rec) {
            Verdict::Keep => Settled::Kept,
            Verdict::Detach(repos) => {
                rec.repos = repos;
                self.index.update_blob(d, &rec)?;
                Settled::Detached
            }
            Verdict::Remove if l.blob_pins.contains_key(d) => Settled::InUse,
            Verdict::Remove => Settled::Removed {
                freed: self.remove_blob_locked(&mut l, d, &rec)?,
            },
        };
        self.publish(&l.totals);
        Ok(settled)
    }

    /// [`settle_blob`](Self::settle_blob) for manifests (readers do not pin them).
    pub fn settle_manifest(
        &self,
        d: &Digest,
        decide: impl FnOnce(&ManifestRecord) -> Verdict,
    ) -> Result<Settled, StoreError> {
        let mut l = self.lock();
        self.apply_pending_of(ItemKind::Manifest, d)?;
        let Some(mut rec) = self.index.manifest(d)? else {
            return Ok(Settled::Gone);
        };
        let settled = match decide(&rec) {
            Verdict::Keep => Settled::Kept,
            Verdict::Detach(repos) => {
                rec.repos = repos;
                self.index.update_manifest(d, &rec)?;
                Settled::Detached
            }
            Verdict::Remove => Settled::Removed {
                freed: self.remove_manifest_locked(&mut l, d, &rec)?,
            },
        };
        self.publish(&l.totals);
        Ok(settled)
    }

    /// Removes blob `d` (record `rec`) and releases its chunks; returns the bytes freed.
    fn remove_blob_locked(
        &self,
        l: &mut Ledger,
        d: &Digest,
        rec: &BlobRecord,
    ) -> Result<u64, StoreError> {
        self.index.remove_blob(d, rec)?;
        l.totals.blobs = l.totals.blobs.saturating_sub(1);
        let mut freed = 0;
        for release in self.index.release_chunks(&rec.chunks)? {
            if let ChunkRelease::Unreferenced { id, len } = release {
                freed += u64::from(len);
                l.totals.chunks = l.totals.chunks.saturating_sub(1);
                if !l.chunk_pins.contains_key(&id) {
                    self.unlink_chunk(&id);
                }
            }
        }
        l.totals.stored_bytes = l.totals.stored_bytes.saturating_sub(freed);
        self.index.set_stored_bytes(l.totals.stored_bytes)?;
        Ok(freed)
    }

    fn remove_manifest_locked(
        &self,
        l: &mut Ledger,
        d: &Digest,
        rec: &ManifestRecord,
    ) -> Result<u64, StoreError> {
        self.index.remove_manifest(d, rec)?;
        l.totals.manifests = l.totals.manifests.saturating_sub(1);
        let freed = rec.bytes.len() as u64;
        l.totals.stored_bytes = l.totals.stored_bytes.saturating_sub(freed);
        self.index.set_stored_bytes(l.totals.stored_bytes)?;
        Ok(freed)
    }

    // ---- recency -----------------------------------------------------------------------

    /// Notes an access in memory (no index write on the read path).
    pub fn note_access(&self, kind: ItemKind, d: &Digest) {
        let now = SystemTime::now();
        let mut pending = self.pending();
        let at = pending.entry((kind, *d)).or_insert(now);
        if *at < now {
            *at = now;
        }
    }

    /// Writes pending last-access times into the records and the LRU order.
    pub fn apply_accesses(&self) -> Result<(), StoreError> {
        let mut l = self.lock();
        self.apply_accesses_locked(&mut l)
    }

    fn apply_accesses_locked(&self, _l: &mut Ledger) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.pending());
        for ((kind, d), at) in pending {
            self.index.touch(kind, &d, at)?;
        }
        Ok(())
    }

    /// Applies the pending access of one item (the caller holds the lock).
    fn apply_pending_of(&self, kind: ItemKind, d: &Digest) -> Result<(), StoreError> {
        let at = self.pending().remove(&(kind, *d));
        match at {
            Some(at) => self.index.touch(kind, d, at),
            None => Ok(()),
        }
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
