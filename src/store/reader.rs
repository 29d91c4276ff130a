//! Streaming reads of visible blobs.
//!
//! Owns: [`BlobReader`]: pinning the blob for the reader's lifetime, mapping a byte range
//! onto the chunk list, and reading it in frames of at most [`FRAME_BYTES`], one chunk file
//! open at a time (bounded memory whatever the blob size).
//!
//! Must not: read a whole chunk or blob into memory, write anything, or leave a pin behind
//! (the pin is dropped with the reader).

use super::chunks::ChunkRef;
use super::error::StoreError;
use super::index::ItemKind;
use super::StoreInner;
use crate::oci::Digest;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

/// Largest frame a [`BlobReader`] yields.
pub const FRAME_BYTES: usize = 256 << 10;

/// Bytes `start..end` of a blob as frames of at most [`FRAME_BYTES`]. While it lives, the
/// blob is pinned: it is never evicted, expired or purged under it.
pub struct BlobReader {
    inner: Arc<StoreInner>,
    digest: Digest,
    size: u64,
    chunks: Vec<ChunkRef>,
    /// Index in `chunks` of the chunk holding `pos`, and that chunk's blob offset.
    chunk_index: usize,
    chunk_start: u64,
    pos: u64,
    end: u64,
    /// The open file of `chunks[chunk_index]`, positioned at `pos`.
    file: Option<File>,
    /// A buffer for the next frame, from [`BlobReader::provide_buffer`].
    spare: Option<BytesMut>,
}

/// Pins blob `d`, then looks it up (so eviction cannot slip between the two).
pub(crate) fn open(
    inner: &Arc<StoreInner>,
    d: &Digest,
    start: u64,
    end: u64,
) -> Result<Option<BlobReader>, StoreError> {
    {
        let mut st = inner.lock_state();
        *st.blob_pins.entry(*d).or_insert(0) += 1;
    }
    let unpin = || unpin_blob(inner, d);
    let rec = match inner.load_blob(d) {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            unpin();
            return Ok(None);
        }
        Err(e) => {
            unpin();
            return Err(e);
        }
    };
    if start > end || end > rec.size {
        unpin();
        return Err(StoreError::RangeNotSatisfiable {
            start,
            end,
            size: rec.size,
        });
    }
    inner.record_access(ItemKind::Blob, d);
    let mut chunk_index = 0;
    let mut chunk_start = 0u64;
    while chunk_index < rec.chunks.len()
        && chunk_start + u64::from(rec.chunks[chunk_index].len) <= start
    {
        chunk_start += u64::from(rec.chunks[chunk_index].len);
        chunk_index += 1;
    }
    Ok(Some(BlobReader {
        inner: Arc::clone(inner),
        digest: *d,
        size: rec.size,
        chunks: rec.chunks,
        chunk_index,
        chunk_start,
        pos: start,
        end,
        file: None,
        spare: None,
    }))
}

fn unpin_blob(inner: &StoreInner, d: &Digest) {
    let mut st = inner.lock_state();
    match st.blob_pins.get_mut(d) {
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            st.blob_pins.remove(d);
        }
        None => {}
    }
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

    /// A buffer (ideally of [`FRAME_BYTES`] capacity) for the next frame. Callers that run
    /// the reader on a blocking-pool thread allocate it on their own thread: glibc gives
    /// every allocating thread an arena of its own, and a pool of threads each keeping the
    /// frames they once allocated about doubles the daemon's peak RSS under load.
    pub fn provide_buffer(&mut self, buf: BytesMut) {
        self.spare = Some(buf);
    }

    fn next_frame(&mut self) -> io::Result<Bytes> {
        while self.chunk_start + u64::from(self.chunks[self.chunk_index].len) <= self.pos {
            self.chunk_start += u64::from(self.chunks[self.chunk_index].len);
            self.chunk_index += 1;
            self.file = None;
        }
        let chunk = self.chunks[self.chunk_index];
        let chunk_end = self.chunk_start + u64::from(chunk.len);
        let chunk_path = |inner: &StoreInner| inner.chunks.path(&chunk.id);
        if self.file.is_none() {
            let mut file = File::open(chunk_path(&self.inner))?;
            file.seek(SeekFrom::Start(self.pos - self.chunk_start))?;
            self.file = Some(file);
        }
        let n = (chunk_end.min(self.end) - self.pos).min(FRAME_BYTES as u64) as usize;
        let mut frame = self.spare.take().unwrap_or_default();
        frame.clear();
        frame.resize(n, 0);
        let read = match self.file.as_mut() {
            Some(file) => file.read_exact(&mut frame),
            None => Err(io::Error::other("chunk file not open")),
        };
        read.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "blob {}: chunk file {} is shorter than its index entry says ({e}); run `verify`",
                    self.digest,
                    chunk_path(&self.inner).display()
                ),
            )
        })?;
        self.pos += n as u64;
        Ok(frame.freeze())
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
            self.file = None;
        }
        Some(frame)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        unpin_blob(&self.inner, &self.digest);
    }
}
