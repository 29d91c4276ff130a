//! Blob fills: turning a byte stream into durable chunk files and, once the stream's sha256
//! matches the digest, a committed blob.
//!
//! Owns: [`BlobFill`]: buffering into fixed-size chunks, per-chunk budget reservation (when
//! the size is unknown), pinning each chunk before it is written or reused, the sha256 and
//! size checks, the index commit, and abort on drop.
//!
//! Must not: make a blob visible before its digest is verified, name a chunk in the index
//! before its file is durable, or unlink a chunk that a committed blob or another fill
//! still needs (unlinking goes through `policy.rs` under the state lock).

use super::chunks::{ChunkId, ChunkRef};
use super::error::StoreError;
use super::index::{lru_key, BlobRecord, ItemKind};
use super::records::push_repo;
use super::{BlobInfo, StoreInner};
use crate::oci::{Digest, Sha256Verifier};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A blob being stored. Write its bytes in order, then [`finish`](Self::finish). Dropping
/// it unfinished aborts: its reservation is released and chunk files that nothing else
/// references are removed.
pub struct BlobFill {
    inner: Arc<StoreInner>,
    digest: Digest,
    expected_size: Option<u64>,
    chunk_size: usize,
    /// Bytes of the chunk being assembled.
    pending: Vec<u8>,
    verifier: Sha256Verifier,
    /// Chunks written durably, in blob order.
    completed: Vec<ChunkRef>,
    /// One pin per chunk this fill holds (released on commit or abort).
    pinned: Vec<ChunkId>,
    /// Budget bytes this fill holds.
    reserved: u64,
    broken: bool,
    committed: bool,
}

impl BlobFill {
    pub(crate) fn begin(
        inner: Arc<StoreInner>,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobFill, StoreError> {
        let mut reserved = 0;
        if let Some(size) = expected_size {
            let mut st = inner.lock_state();
            inner.reserve_locked(&mut st, size)?;
            reserved = size;
        }
        let chunk_size = inner.opts.chunk_size;
        Ok(BlobFill {
            inner,
            digest,
            expected_size,
            chunk_size,
            pending: Vec::new(),
            verifier: Sha256Verifier::new(),
            completed: Vec::new(),
            pinned: Vec::new(),
            reserved,
            broken: false,
            committed: false,
        })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn expected_size(&self) -> Option<u64> {
        self.expected_size
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.verifier.len()
    }

    /// Chunks already durable, in blob order (readers joining a fill in progress read them
    /// with `Store::read_chunk`; they stay on disk while this fill lives).
    pub fn completed_chunks(&self) -> &[ChunkRef] {
        &self.completed
    }

    /// Appends `data`; every full chunk is written durably before this returns.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::FillBroken);
        }
        let result = self.write_inner(data);
        if let Err(e) = &result {
            self.broken = true;
            self.inner.count_error("fill_write", e);
        }
        result
    }

    fn write_inner(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        if let Some(expected) = self.expected_size {
            let total = self.written() + data.len() as u64;
            if total > expected {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected,
                    actual: total,
                });
            }
        }
        self.verifier.update(data);
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= self.chunk_size {
                let (chunk, rest) = data.split_at(self.chunk_size);
                self.store_chunk(chunk)?;
                data = rest;
                continue;
            }
            let take = (self.chunk_size - self.pending.len()).min(data.len());
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(self.chunk_size);
            }
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == self.chunk_size {
                let chunk = std::mem::take(&mut self.pending);
                self.store_chunk(&chunk)?;
                self.pending = chunk;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Reserves (if the size was unknown), pins, and writes one chunk unless an identical
    /// chunk file is already in place.
    fn store_chunk(&mut self, content: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(content.len()).map_err(|_| {
            StoreError::InvalidOptions(format!("chunk of {} bytes is too large", content.len()))
        })?;
        let id = ChunkId::of(content);
        {
            let mut st = self.inner.lock_state();
            if self.expected_size.is_none() {
                self.inner.reserve_locked(&mut st, u64::from(len))?;
                self.reserved += u64::from(len);
            }
            *st.chunk_pins.entry(id).or_insert(0) += 1;
            self.pinned.push(id);
        }
        // Pinned: nobody unlinks this chunk now, so an existing file can be reused.
        if !self.inner.chunks.exists_with_len(&id, len) {
            let started = Instant::now();
            self.inner.chunks.write(&id, content)?;
            self.inner
                .metrics
                .store_chunk_write_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.completed.push(ChunkRef { id, len });
        Ok(())
    }

    /// Writes the last chunk, checks size and sha256, commits the blob to the index and
    /// flushes it. On a mismatch nothing is stored and the chunk files are cleaned up.
    pub fn finish(mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        let result = self.finish_inner(repo);
        if let Err(e) = &result {
            self.inner.count_error("finish", e);
        }
        result
        // `self` drops here: after a failure that aborts; after a commit it does nothing.
    }

    fn finish_inner(&mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        if self.broken {
            return Err(StoreError::FillBroken);
        }
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.store_chunk(&last)?;
        }
        let written = self.written();
        if let Some(expected) = self.expected_size {
            if written != expected {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected,
                    actual: written,
                });
            }
        }
        let actual = self.verifier.clone().finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let info = self.commit(repo)?;
        self.inner.index.flush()?;
        self.inner.enforce_budget()?;
        Ok(info)
    }

    fn commit(&mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        let inner = Arc::clone(&self.inner);
        let d = self.digest;
        let mut st = inner.lock_state();
        let info = match inner.load_blob(&d)? {
            Some(mut existing) => {
                // Filled twice (e.g. two fills raced): keep the first, forget this one.
                if push_repo(&mut existing.repos, repo) {
                    inner.index.blobs.insert(d.as_bytes(), existing.encode())?;
                }
                BlobInfo {
                    digest: d,
                    size: existing.size,
                    repos: existing.repos,
                }
            }
            None => {
                inner.reference_chunks_locked(&mut st, &self.completed)?;
                let now = SystemTime::now();
                let mut repos = Vec::new();
                push_repo(&mut repos, repo);
                let rec = BlobRecord {
                    size: self.written(),
                    chunks: self.completed.clone(),
                    created: now,
                    last_access: now,
                    repos,
                };
                inner
                    .index
                    .lru
                    .insert(lru_key(now, ItemKind::Blob, &d), &[])?;
                // The commit point: from here on the blob is visible.
                inner.index.blobs.insert(d.as_bytes(), rec.encode())?;
                st.blobs += 1;
                inner.index.set_stored_bytes(st.stored_bytes)?;
                BlobInfo {
                    digest: d,
                    size: rec.size,
                    repos: rec.repos,
                }
            }
        };
        self.committed = true;
        st.reserved_bytes = st.reserved_bytes.saturating_sub(self.reserved);
        self.reserved = 0;
        let pinned = std::mem::take(&mut self.pinned);
        inner.unpin_chunks_locked(&mut st, &pinned)?;
        inner.publish_gauges(&st);
        Ok(info)
    }
}

impl Drop for BlobFill {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut st = self.inner.lock_state();
        st.reserved_bytes = st.reserved_bytes.saturating_sub(self.reserved);
        self.reserved = 0;
        let pinned = std::mem::take(&mut self.pinned);
        if let Err(e) = self.inner.unpin_chunks_locked(&mut st, &pinned) {
            self.inner.count_error("abort", &e);
        }
    }
}
