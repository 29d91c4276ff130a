//! Policy: the byte budget, LRU eviction, recency batching, TTL expiry, and the chunk
//! lifecycle (refcounts and pins) that eviction and fills share.
//!
//! Owns: [`StoreState`] (the one lock under which chunks are referenced, pinned and
//! unlinked), reservations, eviction down to the low watermark, removal of a blob or
//! manifest with its chunk references, applying batched last-access times to the index,
//! the TTL sweep, and the `store_*` gauges.
//!
//! Must not: write chunk files (see `chunks.rs`), or remove anything pinned by a reader or
//! a fill. Functions named `*_locked` must be called with the state lock held (they take
//! the guard's `&mut StoreState` to prove it).

use super::chunks::{ChunkId, ChunkRef};
use super::error::StoreError;
use super::index::{self, lru_key, micros, parse_lru_key, BlobRecord, ChunkCount, ItemKind};
use super::StoreInner;
use crate::config::TtlFrom;
use crate::oci::Digest;
use std::collections::HashMap;
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::SystemTime;

/// Budget, counts and pins, guarded by `StoreInner::state`.
#[derive(Debug, Default)]
pub(crate) struct StoreState {
    /// Distinct chunk bytes of committed blobs + manifest bytes.
    pub stored_bytes: u64,
    /// Bytes promised to fills in progress.
    pub reserved_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    /// Distinct chunks referenced by committed blobs.
    pub chunks: u64,
    /// Chunks held by fills in progress (count of holds per chunk).
    pub chunk_pins: HashMap<ChunkId, u32>,
    /// Blobs held by readers and by `verify` (count of holds per blob).
    pub blob_pins: HashMap<Digest, u32>,
}

/// What a TTL sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Budget bytes released (distinct chunk bytes + manifest bytes).
    pub bytes: u64,
    /// Expired blobs kept because a reader holds them (swept next time).
    pub skipped_in_use: u64,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expired {} blobs, {} manifests, {} tags ({} bytes freed); {} in use kept",
            self.blobs, self.manifests, self.tags, self.bytes, self.skipped_in_use
        )
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl StoreInner {
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn low_watermark(&self) -> u64 {
        self.opts.max_size / 10 * 9
    }

    pub(crate) fn publish_gauges(&self, st: &StoreState) {
        let m = &self.metrics;
        m.store_bytes.set(gauge_value(st.stored_bytes));
        m.store_blobs.set(gauge_value(st.blobs));
        m.store_manifests.set(gauge_value(st.manifests));
        m.store_chunks.set(gauge_value(st.chunks));
        self.publish_tag_gauge();
    }

    pub(crate) fn publish_tag_gauge(&self) {
        self.metrics
            .store_tags
            .set(gauge_value(self.tag_count.load(Ordering::Relaxed)));
    }

    /// Reserves `needed` bytes of budget, evicting least-recently-used unpinned content
    /// down to the low watermark if they do not fit.
    pub(crate) fn reserve_locked(
        &self,
        st: &mut StoreState,
        needed: u64,
    ) -> Result<(), StoreError> {
        let budget = self.opts.max_size;
        let no_space = StoreError::NoSpace { needed, budget };
        if needed > budget {
            return Err(no_space);
        }
        if st.stored_bytes + st.reserved_bytes + needed > budget {
            let target = self.low_watermark().saturating_sub(needed);
            self.evict_locked(st, target)?;
            if st.stored_bytes + st.reserved_bytes + needed > budget {
                return Err(no_space);
            }
        }
        st.reserved_bytes += needed;
        Ok(())
    }

    /// Evicts down to the low watermark if the store is over budget (e.g. after the budget
    /// was lowered).
    pub(crate) fn enforce_budget(&self) -> Result<(), StoreError> {
        let mut st = self.lock_state();
        if st.stored_bytes + st.reserved_bytes > self.opts.max_size {
            self.evict_locked(&mut st, self.low_watermark())?;
        }
        Ok(())
    }

    /// Evicts least-recently-accessed unpinned blobs and manifests until stored + reserved
    /// bytes are at most `target`, or nothing evictable is left.
    fn evict_locked(&self, st: &mut StoreState, target: u64) -> Result<(), StoreError> {
        self.apply_access_locked(st)?;
        let mut after: Option<sled::IVec> = None;
        while st.stored_bytes + st.reserved_bytes > target {
            let next = match &after {
                None => self.index.lru.iter().keys().next(),
                Some(k) => self
                    .index
                    .lru
                    .range::<sled::IVec, _>((Bound::Excluded(k.clone()), Bound::Unbounded))
                    .keys()
                    .next(),
            };
            let Some(key) = next else { break };
            let key = key?;
            after = Some(key.clone());
            let Some((_, kind, d)) = parse_lru_key(&key) else {
                self.index.lru.remove(&key)?;
                continue;
            };
            let freed = match kind {
                ItemKind::Blob => {
                    if st.blob_pins.contains_key(&d) {
                        continue;
                    }
                    match self.load_blob(&d)? {
                        Some(rec) if lru_key(rec.last_access, kind, &d)[..] == key[..] => {
                            self.remove_blob_locked(st, &d, &rec)?
                        }
                        _ => {
                            self.index.lru.remove(&key)?;
                            continue;
                        }
                    }
                }
                ItemKind::Manifest => match self.load_manifest(&d)? {
                    Some(rec) if lru_key(rec.last_access, kind, &d)[..] == key[..] => {
                        self.remove_manifest_locked(st, &d, rec.last_access, rec.bytes.len())?
                    }
                    _ => {
                        self.index.lru.remove(&key)?;
                        continue;
                    }
                },
            };
            self.metrics.store_evictions.inc();
            self.metrics.store_evicted_bytes.inc_by(freed);
            tracing::debug!(kind = kind.label(), digest = %d.short(), freed, "evicted");
        }
        self.index.set_stored_bytes(st.stored_bytes)?;
        self.publish_gauges(st);
        Ok(())
    }

    /// Adds one reference per chunk slot; returns the bytes of chunks that became
    /// referenced (they now count as stored).
    pub(crate) fn reference_chunks_locked(
        &self,
        st: &mut StoreState,
        chunks: &[ChunkRef],
    ) -> Result<u64, StoreError> {
        let mut added = 0;
        for (id, (slots, len)) in count_slots(chunks) {
            let count = match self.index.chunk_count(&id) {
                Ok(Some(c)) => ChunkCount {
                    refcount: c.refcount.saturating_add(slots),
                    len,
                },
                Ok(None) | Err(StoreError::Corrupt(_)) => {
                    added += u64::from(len);
                    st.chunks += 1;
                    ChunkCount {
                        refcount: slots,
                        len,
                    }
                }
                Err(e) => return Err(e),
            };
            self.index
                .chunk_refs
                .insert(id.as_bytes(), &count.encode())?;
        }
        st.stored_bytes += added;
        Ok(added)
    }

    /// Drops one reference per chunk slot; chunks left unreferenced stop counting as stored
    /// and their files are unlinked unless a fill pins them. Returns the bytes released.
    fn release_chunks_locked(
        &self,
        st: &mut StoreState,
        chunks: &[ChunkRef],
    ) -> Result<u64, StoreError> {
        let mut freed = 0;
        for (id, (slots, len)) in count_slots(chunks) {
            match self.index.chunk_count(&id) {
                Ok(Some(c)) if c.refcount > slots => {
                    let count = ChunkCount {
                        refcount: c.refcount - slots,
                        len: c.len,
                    };
                    self.index
                        .chunk_refs
                        .insert(id.as_bytes(), &count.encode())?;
                }
                Ok(_) => {
                    self.index.chunk_refs.remove(id.as_bytes())?;
                    freed += u64::from(len);
                    st.chunks = st.chunks.saturating_sub(1);
                    if !st.chunk_pins.contains_key(&id) {
                        self.unlink_chunk(&id);
                    }
                }
                // Unknown count: keep the file; the next open recounts and collects it.
                Err(StoreError::Corrupt(msg)) => {
                    tracing::warn!(chunk = %id, "chunk refcount record is corrupt ({msg}); keeping the file");
                    self.index.chunk_refs.remove(id.as_bytes())?;
                }
                Err(e) => return Err(e),
            }
        }
        st.stored_bytes = st.stored_bytes.saturating_sub(freed);
        Ok(freed)
    }

    fn unlink_chunk(&self, id: &ChunkId) {
        if let Err(e) = self.chunks.remove(id) {
            // The file becomes an orphan that the next open removes.
            self.count_error("unlink", &e);
        }
    }

    /// Drops the pins a fill held on `pinned` (one per entry) and unlinks every such chunk
    /// that no committed blob references and no other fill pins.
    pub(crate) fn unpin_chunks_locked(
        &self,
        st: &mut StoreState,
        pinned: &[ChunkId],
    ) -> Result<(), StoreError> {
        for id in pinned {
            let left = match st.chunk_pins.get_mut(id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    continue;
                }
                Some(_) => {
                    st.chunk_pins.remove(id);
                    0
                }
                None => 0,
            };
            if left == 0 && matches!(self.index.chunk_count(id), Ok(None)) {
                self.unlink_chunk(id);
            }
        }
        Ok(())
    }

    /// Removes blob `d` (whose record is `rec`) from the index and releases its chunks.
    pub(crate) fn remove_blob_locked(
        &self,
        st: &mut StoreState,
        d: &Digest,
        rec: &BlobRecord,
    ) -> Result<u64, StoreError> {
        self.index.blobs.remove(d.as_bytes())?;
        self.index
            .lru
            .remove(lru_key(rec.last_access, ItemKind::Blob, d))?;
        st.blobs = st.blobs.saturating_sub(1);
        let freed = self.release_chunks_locked(st, &rec.chunks)?;
        self.index.set_stored_bytes(st.stored_bytes)?;
        Ok(freed)
    }

    pub(crate) fn remove_manifest_locked(
        &self,
        st: &mut StoreState,
        d: &Digest,
        last_access: SystemTime,
        len: usize,
    ) -> Result<u64, StoreError> {
        self.index.manifests.remove(d.as_bytes())?;
        self.index
            .lru
            .remove(lru_key(last_access, ItemKind::Manifest, d))?;
        st.manifests = st.manifests.saturating_sub(1);
        let freed = len as u64;
        st.stored_bytes = st.stored_bytes.saturating_sub(freed);
        self.index.set_stored_bytes(st.stored_bytes)?;
        Ok(freed)
    }

    /// Notes an access in memory (no index write on the read path).
    pub(crate) fn record_access(&self, kind: ItemKind, d: &Digest) {
        let now = SystemTime::now();
        let mut pending = self.access.lock().unwrap_or_else(|p| p.into_inner());
        let at = pending.entry((kind, *d)).or_insert(now);
        if *at < now {
            *at = now;
        }
    }

    /// Writes pending last-access times into the records and the LRU order.
    pub(crate) fn apply_access_locked(&self, _st: &mut StoreState) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.access.lock().unwrap_or_else(|p| p.into_inner()));
        for ((kind, d), at) in pending {
            match kind {
                ItemKind::Blob => {
                    if let Some(mut rec) = self.load_blob(&d)? {
                        if micros(at) > micros(rec.last_access) {
                            self.index.lru.remove(lru_key(rec.last_access, kind, &d))?;
                            rec.last_access = at;
                            self.index.lru.insert(lru_key(at, kind, &d), &[])?;
                            self.index.blobs.insert(d.as_bytes(), rec.encode())?;
                        }
                    }
                }
                ItemKind::Manifest => {
                    if let Some(mut rec) = self.load_manifest(&d)? {
                        if micros(at) > micros(rec.last_access) {
                            self.index.lru.remove(lru_key(rec.last_access, kind, &d))?;
                            rec.last_access = at;
                            self.index.lru.insert(lru_key(at, kind, &d), &[])?;
                            self.index.manifests.insert(d.as_bytes(), rec.encode())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The TTL sweep: with `ttl_from = access` an item expires `ttl` after its last access
    /// (a tag: after the upstream last confirmed it); with `fetch`, `ttl` after it was
    /// stored (a tag: after it was first fetched).
    pub(crate) fn sweep_expired(&self, now: SystemTime) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let Some(ttl) = self.opts.ttl else {
            return Ok(report);
        };
        let Some(cutoff) = now.checked_sub(ttl) else {
            return Ok(report);
        };
        let by_access = self.opts.ttl_from == TtlFrom::Access;
        {
            let mut st = self.lock_state();
            self.apply_access_locked(&mut st)?;
            let mut expired: Vec<(ItemKind, Digest)> = Vec::new();
            if by_access {
                let bound = micros(cutoff).to_be_bytes();
                for key in self.index.lru.range(..&bound[..]).keys() {
                    if let Some((_, kind, d)) = parse_lru_key(&key?) {
                        expired.push((kind, d));
                    }
                }
            } else {
                for (d, rec) in self.scan_blobs()? {
                    if rec.created < cutoff {
                        expired.push((ItemKind::Blob, d));
                    }
                }
                for (d, rec) in self.scan_manifests()? {
                    if rec.created < cutoff {
                        expired.push((ItemKind::Manifest, d));
                    }
                }
            }
            for (kind, d) in expired {
                let freed = match kind {
                    ItemKind::Blob => {
                        if st.blob_pins.contains_key(&d) {
                            report.skipped_in_use += 1;
                            continue;
                        }
                        let Some(rec) = self.load_blob(&d)? else {
                            continue;
                        };
                        report.blobs += 1;
                        self.remove_blob_locked(&mut st, &d, &rec)?
                    }
                    ItemKind::Manifest => {
                        let Some(rec) = self.load_manifest(&d)? else {
                            continue;
                        };
                        report.manifests += 1;
                        self.remove_manifest_locked(&mut st, &d, rec.last_access, rec.bytes.len())?
                    }
                };
                report.bytes += freed;
                self.metrics
                    .store_expired
                    .with_label_values(&[kind.label()])
                    .inc();
                self.metrics.store_expired_bytes.inc_by(freed);
            }
            self.publish_gauges(&st);
        }
        for entry in self.index.tags.iter() {
            let (key, raw) = entry?;
            let stamp = match index::decode_tag(&raw) {
                Ok(rec) if by_access => rec.validated_at,
                Ok(rec) => rec.fetched_at,
                Err(e) => {
                    self.drop_corrupt_record(&self.index.tags, &key, &e)?;
                    self.tag_count.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            if stamp < cutoff && self.index.tags.remove(&key)?.is_some() {
                report.tags += 1;
                self.tag_count.fetch_sub(1, Ordering::Relaxed);
                self.metrics.store_expired.with_label_values(&["tag"]).inc();
            }
        }
        self.publish_tag_gauge();
        self.index.flush()?;
        if report != SweepReport::default() {
            tracing::info!("store TTL sweep: {report}");
        }
        Ok(report)
    }
}

/// Slots per distinct chunk (a blob may repeat a chunk, e.g. runs of zeros), with length.
fn count_slots(chunks: &[ChunkRef]) -> HashMap<ChunkId, (u32, u32)> {
    let mut slots: HashMap<ChunkId, (u32, u32)> = HashMap::new();
    for c in chunks {
        slots.entry(c.id).or_insert((0, c.len)).0 += 1;
    }
    slots
}
