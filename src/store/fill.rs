//! Blob fills: turning a byte stream into chunk files and, once the stream's sha256
//! matches the digest, a committed blob.
//!
//! Owns: [`ChunkSink`] (cutting bytes into fixed-size chunks written straight into temp
//! files with buffered writes, naming each by its blake3 hash when it is full, per-chunk
//! budget reservation when the size is unknown, pinning each chunk before it is named or
//! reused, making every chunk durable once per blob, the index commit, and abort on drop),
//! and [`BlobFill`], the synchronous fill (`write` then `finish`) that adds its own sha256
//! and size checks, and may be named only at the end (used by `import`, pushes and tests;
//! the daemon's pull fills go through `growing.rs`, which checks the digest itself).
//!
//! Must not: make a blob visible before its digest is verified, name a chunk in the index
//! before its file and directory entry are durable, or unlink a chunk that a committed
//! blob or another fill still needs (reservations, pins, the commit and unlinking go
//! through [`Budget`]).

use super::budget::Budget;
use super::chunks::{ChunkFiles, ChunkId, ChunkRef};
use super::error::{count, IoContext, StoreError};
use super::values::BlobInfo;
use crate::metrics::Metrics;
use crate::oci::{Digest, Sha256Verifier};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The parts of a store a fill writes through: shared handles, cheap to clone.
#[derive(Clone)]
pub(crate) struct FillParts {
    budget: Arc<Budget>,
    chunks: Arc<ChunkFiles>,
    metrics: Arc<Metrics>,
    chunk_size: usize,
}

impl FillParts {
    pub fn new(
        budget: Arc<Budget>,
        chunks: Arc<ChunkFiles>,
        metrics: Arc<Metrics>,
        chunk_size: usize,
    ) -> FillParts {
        FillParts {
            budget,
            chunks,
            metrics,
            chunk_size,
        }
    }

    /// An unlinked file for bytes that pass through without being stored.
    pub fn create_spool(&self) -> Result<File, StoreError> {
        self.chunks.create_spool()
    }

    /// Where spool files live (for error messages).
    pub fn spool_dir(&self) -> &Path {
        self.chunks.tmp_dir()
    }

    pub fn count_error(&self, op: &'static str, e: &StoreError) {
        count(&self.metrics, op, e);
    }
}

/// The chunk being assembled: a temp file and the hash of what it holds.
struct OpenChunk {
    file: Arc<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    len: usize,
}

/// Bytes becoming the chunk files of one blob. Dropping it uncommitted aborts: its
/// reservation is released and chunk files that nothing else references are removed
/// (files still open elsewhere stay readable through their handles).
pub(crate) struct ChunkSink {
    parts: FillParts,
    digest: Digest,
    expected_size: Option<u64>,
    chunk_size: usize,
    current: Option<OpenChunk>,
    /// Chunks named so far, in blob order.
    completed: Vec<ChunkRef>,
    /// Parallel to `completed`: the file this sink wrote and placed (to fsync at the end),
    /// or `None` where an identical chunk file was already in place.
    placed: Vec<Option<Arc<File>>>,
    /// One pin per chunk this sink holds (released on commit or abort).
    pinned: Vec<ChunkId>,
    /// Budget bytes this sink holds.
    reserved: u64,
    written: u64,
    committed: bool,
    /// Start each placed chunk's writeback at once (see [`ChunkSink::write_back_early`]).
    write_back_early: bool,
}

impl ChunkSink {
    /// Starts a sink for blob `digest`. Nothing is reserved (nor evicted) for bytes that
    /// have not arrived: each chunk is reserved in the budget as it is named, whatever size
    /// was announced (a client or an upstream can announce any `Content-Length`). An
    /// `expected_size` larger than the whole budget is refused at once, and the bytes
    /// written are checked against it.
    pub fn begin(
        parts: &FillParts,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<ChunkSink, StoreError> {
        if let Some(size) = expected_size {
            parts.budget.check_fits(size)?;
        }
        let chunk_size = parts.chunk_size;
        Ok(ChunkSink {
            parts: parts.clone(),
            digest,
            expected_size,
            chunk_size,
            current: None,
            completed: Vec::new(),
            placed: Vec::new(),
            pinned: Vec::new(),
            reserved: 0,
            written: 0,
            committed: false,
            write_back_early: false,
        })
    }

    /// Starts each chunk's writeback to disk as soon as it is placed, so the fsync before
    /// the commit waits for little more than the last chunk. For fills whose caller waits
    /// for the commit (a push's client waits for its write-through); the daemon's pull
    /// fills commit after their clients have every byte and leave the writeback to the end.
    pub fn write_back_early(&mut self) {
        self.write_back_early = true;
    }

    pub fn completed(&self) -> &[ChunkRef] {
        &self.completed
    }

    /// Appends `data`. `on_file(offset, file)` is called for each new chunk file, with the
    /// blob offset of its first byte: readers may read what was written from the handle.
    pub fn write(
        &mut self,
        mut data: &[u8],
        on_file: &mut dyn FnMut(u64, &Arc<File>),
    ) -> Result<(), StoreError> {
        if let Some(expected) = self.expected_size {
            let total = self.written + data.len() as u64;
            if total > expected {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected,
                    actual: total,
                });
            }
        }
        while !data.is_empty() {
            if self.current.is_none() {
                let (file, path) = self.parts.chunks.create_temp()?;
                let file = Arc::new(file);
                on_file(self.written, &file);
                self.current = Some(OpenChunk {
                    file,
                    path,
                    hasher: blake3::Hasher::new(),
                    len: 0,
                });
            }
            let Some(cur) = self.current.as_mut() else {
                break;
            };
            let take = (self.chunk_size - cur.len).min(data.len());
            let part = &data[..take];
            (&*cur.file)
                .write_all(part)
                .ctx("write temp chunk file", &cur.path)?;
            cur.hasher.update(part);
            cur.len += take;
            self.written += take as u64;
            data = &data[take..];
            if cur.len == self.chunk_size {
                self.seal()?;
            }
        }
        Ok(())
    }

    /// Names the chunk being assembled: reserves its bytes, pins it, and moves it into place
    /// unless an identical chunk file is already there.
    fn seal(&mut self) -> Result<(), StoreError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let result = self.seal_chunk(&cur);
        if result.is_err() || !self.placed.last().is_some_and(|p| p.is_some()) {
            // Failed, or reused an existing file: the temp name goes (the handle stays valid).
            let _ = std::fs::remove_file(&cur.path);
        }
        result
    }

    fn seal_chunk(&mut self, cur: &OpenChunk) -> Result<(), StoreError> {
        let len = u32::try_from(cur.len).map_err(|_| {
            StoreError::InvalidOptions(format!("chunk of {} bytes is too large", cur.len))
        })?;
        let id = ChunkId::from_bytes(*cur.hasher.finalize().as_bytes());
        self.parts.budget.pin_chunk(id, u64::from(len))?;
        self.reserved += u64::from(len);
        self.pinned.push(id);
        // Pinned: nobody unlinks this chunk now, so an existing file can be reused.
        if self.parts.chunks.exists_with_len(&id, len) {
            self.placed.push(None);
        } else {
            let started = Instant::now();
            self.parts.chunks.place(&cur.path, &id)?;
            if self.write_back_early {
                ChunkFiles::start_writeback(&cur.file);
            }
            self.parts
                .metrics
                .store_chunk_write_seconds
                .observe(started.elapsed().as_secs_f64());
            self.placed.push(Some(Arc::clone(&cur.file)));
        }
        self.completed.push(ChunkRef { id, len });
        Ok(())
    }

    /// Names the last chunk and checks the size against the announced one.
    pub fn seal_last(&mut self) -> Result<(), StoreError> {
        self.seal()?;
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected,
                    actual: self.written,
                });
            }
        }
        Ok(())
    }

    /// Makes every chunk of the blob durable, then commits it to the index and flushes.
    /// The caller has verified the digest of exactly the bytes written.
    pub fn commit_verified(&mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        let started = Instant::now();
        self.parts.chunks.sync_placed(
            self.completed
                .iter()
                .zip(&self.placed)
                .map(|(c, f)| (&c.id, f.as_deref())),
        )?;
        self.parts
            .metrics
            .store_chunk_write_seconds
            .observe(started.elapsed().as_secs_f64());
        let pinned = std::mem::take(&mut self.pinned);
        let result = self.parts.budget.commit_blob(
            &self.digest,
            self.written,
            &self.completed,
            repo,
            self.reserved,
            &pinned,
        );
        // The budget took back the reservation and the pins, whether it committed or not.
        self.committed = true;
        self.reserved = 0;
        result
    }
}

impl Drop for ChunkSink {
    fn drop(&mut self) {
        if let Some(cur) = self.current.take() {
            let _ = std::fs::remove_file(&cur.path);
        }
        if self.committed {
            return;
        }
        let pinned = std::mem::take(&mut self.pinned);
        self.parts.budget.abandon_fill(self.reserved, &pinned);
        self.reserved = 0;
    }
}

/// A blob being stored synchronously. Write its bytes in order, then
/// [`finish`](Self::finish). Dropping it unfinished aborts.
pub struct BlobFill {
    sink: ChunkSink,
    verifier: Sha256Verifier,
    broken: bool,
    /// Begun without a digest ([`BlobFill::begin_unnamed`]): it is given at the end.
    unnamed: bool,
}

impl BlobFill {
    pub(crate) fn begin(
        parts: &FillParts,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobFill, StoreError> {
        let mut sink = ChunkSink::begin(parts, digest, expected_size)?;
        sink.write_back_early();
        Ok(BlobFill {
            sink,
            verifier: Sha256Verifier::new(),
            broken: false,
            unnamed: false,
        })
    }

    /// A fill whose digest is given at the end, by [`finish_as`](Self::finish_as). Until
    /// then its sink carries a placeholder digest (the empty blob's), used only in errors
    /// about sizes, which cannot happen without an expected size.
    pub(crate) fn begin_unnamed(parts: &FillParts) -> Result<BlobFill, StoreError> {
        let mut fill = BlobFill::begin(parts, Digest::of(b""), None)?;
        fill.unnamed = true;
        Ok(fill)
    }

    pub fn digest(&self) -> &Digest {
        &self.sink.digest
    }

    pub fn expected_size(&self) -> Option<u64> {
        self.sink.expected_size
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.verifier.len()
    }

    /// Chunks already named, in blob order (readable with `Store::read_chunk`; they stay
    /// on disk while this fill lives).
    pub fn completed_chunks(&self) -> &[ChunkRef] {
        self.sink.completed()
    }

    /// The sha256 state of every byte accepted so far (for a caller that needs the digest
    /// of what it wrote before [`finish`](Self::finish), without hashing it twice).
    pub fn hashed(&self) -> &Sha256Verifier {
        &self.verifier
    }

    /// Appends `data`; every full chunk is named before this returns.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::FillBroken);
        }
        let result = self.sink.write(data, &mut |_, _| {});
        match &result {
            Ok(()) => self.verifier.update(data),
            Err(e) => {
                self.broken = true;
                self.sink.parts.count_error("fill_write", e);
            }
        }
        result
    }

    /// Writes the last chunk, checks size and sha256, makes the chunks durable, commits
    /// the blob to the index and flushes it. On a mismatch nothing is stored and the chunk
    /// files are cleaned up.
    pub fn finish(mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        let result = self.finish_inner(repo);
        if let Err(e) = &result {
            self.sink.parts.count_error("finish", e);
        }
        result
        // `self` drops here: after a failure that aborts; after a commit it does nothing.
    }

    /// [`finish`](Self::finish) for blob `digest`: names an unnamed fill; a fill begun for
    /// another digest fails with a mismatch and stores nothing.
    pub fn finish_as(mut self, digest: Digest, repo: &str) -> Result<BlobInfo, StoreError> {
        if self.unnamed {
            self.sink.digest = digest;
            self.unnamed = false;
        } else if self.sink.digest != digest {
            let e = StoreError::DigestMismatch {
                expected: digest,
                actual: self.sink.digest,
            };
            self.sink.parts.count_error("finish", &e);
            return Err(e);
        }
        self.finish(repo)
    }

    fn finish_inner(&mut self, repo: &str) -> Result<BlobInfo, StoreError> {
        if self.unnamed {
            return Err(StoreError::InvalidOptions(
                "a fill begun without a digest must be finished with finish_as".into(),
            ));
        }
        if self.broken {
            return Err(StoreError::FillBroken);
        }
        self.sink.seal_last()?;
        let actual = self.verifier.clone().finish();
        if actual != self.sink.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.sink.digest,
                actual,
            });
        }
        self.sink.commit_verified(repo)
    }
}
