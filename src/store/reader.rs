//! Streaming reads of visible blobs.
//!
//! Owns: [`BlobReader`]: pinning the blob for the reader's lifetime, mapping a byte range
//! onto the chunk list, and handing it out in frames of at most [`FRAME_BYTES`]. Frames are
//! slices of whole chunks from `ChunkFiles::whole` (`crate::mapped`): small chunks are read
//! into memory, larger ones are read-only mappings of the chunk file, so nothing is copied
//! or zero-filled in user space, and a plain-HTTP connection sends them with `sendfile`.
//! A frame costs at most an `open` and an `mmap` (none for a recently read chunk), cheap
//! enough for async workers (no blocking-pool round trip).
//!
//! Must not: copy a large chunk or a blob into memory, write anything, or leave a pin behind
//! (the pin is dropped with the reader).

use super::budget::Budget;
use super::chunks::{ChunkFiles, ChunkRef};
use super::codec::ItemKind;
use super::error::StoreError;
use super::index::Index;
use crate::oci::Digest;
use bytes::Bytes;
use std::io;
use std::sync::Arc;

/// Largest frame a [`BlobReader`] yields.
pub const FRAME_BYTES: usize = 1 << 20;

/// Bytes `start..end` of a blob as frames of at most [`FRAME_BYTES`]. While it lives, the
/// blob is pinned: it is never evicted, expired or purged under it.
pub struct BlobReader {
    budget: Arc<Budget>,
    chunk_files: Arc<ChunkFiles>,
    digest: Digest,
    size: u64,
    chunks: Vec<ChunkRef>,
    /// Index in `chunks` of the chunk holding `pos`, and that chunk's blob offset.
    chunk_index: usize,
    chunk_start: u64,
    pos: u64,
    end: u64,
}

/// Pins blob `d`, then looks it up (so eviction cannot slip between the two).
pub(crate) fn open(
    budget: &Arc<Budget>,
    index: &Index,
    chunk_files: &Arc<ChunkFiles>,
    d: &Digest,
    start: u64,
    end: u64,
) -> Result<Option<BlobReader>, StoreError> {
    budget.pin_blob(d);
    let rec = match index.blob(d) {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            budget.unpin_blob(d);
            return Ok(None);
        }
        Err(e) => {
            budget.unpin_blob(d);
            return Err(e);
        }
    };
    if start > end || end > rec.size {
        budget.unpin_blob(d);
        return Err(StoreError::RangeNotSatisfiable {
            start,
            end,
            size: rec.size,
        });
    }
    budget.note_access(ItemKind::Blob, d);
    let mut chunk_index = 0;
    let mut chunk_start = 0u64;
    while chunk_index < rec.chunks.len()
        && chunk_start + u64::from(rec.chunks[chunk_index].len) <= start
    {
        chunk_start += u64::from(rec.chunks[chunk_index].len);
        chunk_index += 1;
    }
    Ok(Some(BlobReader {
        budget: Arc::clone(budget),
        chunk_files: Arc::clone(chunk_files),
        digest: *d,
        size: rec.size,
        chunks: rec.chunks,
        chunk_index,
        chunk_start,
        pos: start,
        end,
    }))
}

impl BlobReader {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The whole blob's size.
    pub fn blob_size(&self) -> u64 {
        self.size
    }

    /// Bytes this reader has yet to yield.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    fn next_frame(&mut self) -> io::Result<Bytes> {
        while self.chunk_start + u64::from(self.chunks[self.chunk_index].len) <= self.pos {
            self.chunk_start += u64::from(self.chunks[self.chunk_index].len);
            self.chunk_index += 1;
        }
        let chunk = self.chunks[self.chunk_index];
        let chunk_end = self.chunk_start + u64::from(chunk.len);
        let whole = self.chunk_files.whole(&chunk.id, chunk.len).map_err(|e| {
            io::Error::other(format!(
                "blob {}: chunk {} cannot be read as its index entry says ({e}); run `verify`",
                self.digest, chunk.id
            ))
        })?;
        let n = (chunk_end.min(self.end) - self.pos).min(FRAME_BYTES as u64) as usize;
        let from = (self.pos - self.chunk_start) as usize;
        let frame = whole.slice(from..from + n);
        self.pos += n as u64;
        Ok(frame)
    }
}

impl Iterator for BlobReader {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.end {
            return None;
        }
        let frame = self.next_frame();
        if frame.is_err() {
            // Stop after the first error.
            self.pos = self.end;
        }
        Some(frame)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        self.budget.unpin_blob(&self.digest);
    }
}
