//! The reorder buffer of a pieced fill (`pieces`): bytes of pieces that arrived ahead of
//! the growing blob's prefix, held until the prefix reaches them. At most a fixed number of
//! bytes are held in memory (the pieced fill's is [`REORDER_MEMORY`]); the rest goes to one
//! spool file (an unlinked file under the store's `tmp/`, at the bytes' blob offsets: a
//! sparse file) and is read back, a slice at a time, when the prefix gets there. If the
//! spool file cannot be made or written (a full disk), bytes stay in memory and the buffer
//! says so ([`ReorderBuffer::spool_failed`]): the pieced fill then starts no piece ahead of
//! the prefix, so what memory holds is bounded by the pieces already running (a write
//! error fails no blob, as for the growing blob's own files).
//!
//! Everything held is also readable at its offset through the buffer's [`AheadView`],
//! which the fill lends to the growing blob (`store::BytesAhead`): a reader waiting past
//! the prefix reads the bytes as soon as they land, from memory or the spool file.
//!
//! Owns: where held bytes are kept and the memory bound. Must not: hash, verify or hand
//! bytes to readers other than through the view (the growing blob decides what a reader
//! may read), fetch anything, or choose which pieces run (that is `pieces`).

use crate::store::BytesAhead;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes a pieced fill holds in memory ahead of the prefix, at most (spill batch included).
pub(super) const REORDER_MEMORY: u64 = 8 << 20;
/// Bytes gathered before one write to the spool file (one blocking call per batch).
const SPILL_BATCH: u64 = 1 << 20;
/// Most bytes read back from the spool file at once.
const READ_BACK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(super) enum ReorderError {
    #[error("could not create the spool file for pieces ahead of the prefix: {0}")]
    Create(String),
    #[error("spool file {op} of {len} bytes at blob byte {offset} failed: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("spool file task failed: {0}")]
    Task(String),
}

/// Most bytes one read through the view takes from the spool file (a read on the
/// reader's task).
const VIEW_READ: u64 = 256 << 10;

/// A run of held bytes as readers see it.
#[derive(Clone)]
enum Lent {
    Memory(Bytes),
    Spooled { len: u64, file: Arc<File> },
}

impl Lent {
    fn len(&self) -> u64 {
        match self {
            Lent::Memory(b) => b.len() as u64,
            Lent::Spooled { len, .. } => *len,
        }
    }

    /// The run's bytes from `skip` on.
    fn tail(&self, skip: u64) -> Lent {
        match self {
            Lent::Memory(b) => Lent::Memory(b.slice(skip as usize..)),
            Lent::Spooled { len, file } => Lent::Spooled {
                len: len - skip,
                file: Arc::clone(file),
            },
        }
    }
}

/// What a reorder buffer holds, readable at blob offsets by readers past the prefix.
#[derive(Default)]
pub(super) struct AheadView {
    runs: Mutex<BTreeMap<u64, Lent>>,
}

impl AheadView {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Lent>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, offset: u64, run: Lent) {
        self.lock().insert(offset, run);
    }

    /// The runs within `[offset, offset + len)` are now one spooled run.
    fn spooled(&self, offset: u64, len: u64, file: Arc<File>) {
        let mut runs = self.lock();
        let inside: Vec<u64> = runs.range(offset..offset + len).map(|(&k, _)| k).collect();
        for k in inside {
            runs.remove(&k);
        }
        runs.insert(offset, Lent::Spooled { len, file });
    }

    /// Everything below `prefix` became the blob's prefix: no longer lent.
    fn below(&self, prefix: u64) {
        let mut runs = self.lock();
        let kept = runs.split_off(&prefix);
        let straddling = runs
            .iter()
            .next_back()
            .filter(|(&at, run)| at + run.len() > prefix)
            .map(|(&at, run)| run.tail(prefix - at));
        *runs = kept;
        if let Some(tail) = straddling {
            runs.insert(prefix, tail);
        }
    }
}

impl BytesAhead for AheadView {
    fn read_ahead(&self, pos: u64, max: usize) -> Option<Bytes> {
        let (at, run) = {
            let runs = self.lock();
            let (&at, run) = runs.range(..=pos).next_back()?;
            (at, run.clone())
        };
        let skip = pos - at;
        if skip >= run.len() {
            return None;
        }
        match run {
            Lent::Memory(b) => {
                let from = skip as usize;
                Some(b.slice(from..b.len().min(from + max)))
            }
            Lent::Spooled { len, file } => {
                let n = (len - skip).min(max as u64).min(VIEW_READ) as usize;
                let mut buf = BytesMut::zeroed(n);
                // Bytes once written stay at their offset: a run taken meanwhile still
                // reads right.
                file.read_exact_at(&mut buf, pos).ok()?;
                Some(buf.freeze())
            }
        }
    }
}

/// Where a held run of bytes is.
#[derive(Debug)]
enum Held {
    Memory(Bytes),
    /// This many bytes in the spool file, at their blob offset.
    Spooled(u64),
}

/// Makes the spool file when the first bytes must go there.
pub(super) type MakeSpool = Box<dyn FnMut() -> Result<File, String> + Send>;

/// Contiguous bytes waiting to be written to the spool file.
struct Batch {
    start: u64,
    frames: Vec<Bytes>,
    len: u64,
}

/// Bytes ahead of the prefix, by blob offset (runs never overlap).
pub(super) struct ReorderBuffer {
    held: BTreeMap<u64, Held>,
    /// Bytes of `Held::Memory` runs plus the batch.
    memory: u64,
    limit: u64,
    peak_memory: u64,
    spooled: u64,
    batch: Option<Batch>,
    spool: Option<Arc<File>>,
    make_spool: MakeSpool,
    /// Why the spool file could not be made or written, once it failed.
    spool_failed: Option<String>,
    view: Arc<AheadView>,
}

impl ReorderBuffer {
    /// A buffer holding at most `limit` bytes in memory (at least one spill batch).
    pub fn new(limit: u64, make_spool: MakeSpool) -> ReorderBuffer {
        ReorderBuffer {
            held: BTreeMap::new(),
            memory: 0,
            limit: limit.max(SPILL_BATCH),
            peak_memory: 0,
            spooled: 0,
            batch: None,
            spool: None,
            make_spool,
            spool_failed: None,
            view: Arc::default(),
        }
    }

    /// What the buffer holds, for readers past the prefix.
    pub fn view(&self) -> Arc<AheadView> {
        Arc::clone(&self.view)
    }

    /// The most bytes held in memory at once so far.
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory
    }

    /// Bytes written to the spool file so far.
    pub fn spooled(&self) -> u64 {
        self.spooled
    }

    /// Whether the spool file could not be made or written: held bytes stay in memory.
    pub fn spool_failed(&self) -> bool {
        self.spool_failed.is_some()
    }

    fn hold_in_memory(&mut self, offset: u64, bytes: Bytes) {
        self.memory += bytes.len() as u64;
        self.peak_memory = self.peak_memory.max(self.memory);
        self.view.put(offset, Lent::Memory(bytes.clone()));
        self.held.insert(offset, Held::Memory(bytes));
    }

    /// Holds `bytes`, the blob's bytes from `offset` on: in memory while there is room
    /// (leaving room for one spill batch), else on the spool file (in memory after all if
    /// the spool file failed).
    pub async fn insert(&mut self, offset: u64, bytes: Bytes) -> Result<(), ReorderError> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Ok(());
        }
        if self.spool_failed() || self.memory + len <= self.limit - SPILL_BATCH {
            self.hold_in_memory(offset, bytes);
            return Ok(());
        }
        let follows = self
            .batch
            .as_ref()
            .is_some_and(|b| b.start + b.len == offset && b.len + len <= SPILL_BATCH);
        if !follows {
            self.flush().await?;
        }
        if len > SPILL_BATCH {
            return self.write(offset, vec![bytes]).await;
        }
        let batch = self.batch.get_or_insert_with(|| Batch {
            start: offset,
            frames: Vec::new(),
            len: 0,
        });
        self.view.put(offset, Lent::Memory(bytes.clone()));
        batch.frames.push(bytes);
        batch.len += len;
        self.memory += len;
        self.peak_memory = self.peak_memory.max(self.memory);
        if batch.len >= SPILL_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// The held bytes starting exactly at `prefix` (at most [`READ_BACK`] of a spooled
    /// run at once), if any.
    pub async fn take(&mut self, prefix: u64) -> Result<Option<Bytes>, ReorderError> {
        self.view.below(prefix);
        if self.batch.as_ref().is_some_and(|b| b.start == prefix) {
            self.flush().await?;
        }
        let Some(held) = self.held.remove(&prefix) else {
            return Ok(None);
        };
        let taken = match held {
            Held::Memory(b) => {
                self.memory -= b.len() as u64;
                b
            }
            Held::Spooled(len) => {
                let n = len.min(READ_BACK);
                if len > n {
                    self.held.insert(prefix + n, Held::Spooled(len - n));
                }
                self.read(prefix, n).await?
            }
        };
        self.view.below(prefix + taken.len() as u64);
        Ok(Some(taken))
    }

    /// Writes the batch to the spool file.
    async fn flush(&mut self) -> Result<(), ReorderError> {
        match self.batch.take() {
            Some(b) => {
                self.memory -= b.len;
                self.write(b.start, b.frames).await
            }
            None => Ok(()),
        }
    }

    fn spool(&mut self) -> Result<Arc<File>, ReorderError> {
        if let Some(f) = &self.spool {
            return Ok(Arc::clone(f));
        }
        let file = Arc::new((self.make_spool)().map_err(ReorderError::Create)?);
        self.spool = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Writes contiguous `frames` at blob offset `offset` and records them as spooled; if
    /// the spool file fails, holds them in memory instead (and every later insert too).
    async fn write(&mut self, offset: u64, frames: Vec<Bytes>) -> Result<(), ReorderError> {
        let len: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let written = match self.spool() {
            Ok(file) => {
                let frames = frames.clone();
                tokio::task::spawn_blocking(move || {
                    let mut at = offset;
                    for f in &frames {
                        file.write_all_at(f, at)?;
                        at += f.len() as u64;
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await
                .map_err(|e| ReorderError::Task(e.to_string()))?
                .map_err(|source| ReorderError::Io {
                    op: "write",
                    offset,
                    len,
                    source,
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "pieces ahead of the prefix stay in memory; no more pieces start ahead of it");
            self.spool_failed = Some(e.to_string());
            let mut at = offset;
            for f in frames {
                let n = f.len() as u64;
                self.hold_in_memory(at, f);
                at += n;
            }
            return Ok(());
        }
        self.spooled += len;
        if let Some(file) = &self.spool {
            self.view.spooled(offset, len, Arc::clone(file));
        }
        // Runs written one after another become one.
        let before = self.held.range(..offset).next_back();
        if let Some((&start, Held::Spooled(n))) = before {
            if start + n == offset {
                self.held.insert(start, Held::Spooled(n + len));
                return Ok(());
            }
        }
        self.held.insert(offset, Held::Spooled(len));
        Ok(())
    }

    async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes, ReorderError> {
        let file = self.spool()?;
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(len as usize);
            file.read_exact_at(&mut buf, offset)?;
            Ok::<Bytes, std::io::Error>(buf.freeze())
        })
        .await
        .map_err(|e| ReorderError::Task(e.to_string()))?
        .map_err(|source| ReorderError::Io {
            op: "read",
            offset,
            len,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_spool() -> MakeSpool {
        Box::new(|| tempfile::tempfile().map_err(|e| e.to_string()))
    }

    /// Pieces of 64 KiB frames arriving out of order come back in order, byte-exact, and
    /// no more than the limit is ever held in memory.
    #[tokio::test]
    async fn bytes_ahead_of_the_prefix_come_back_in_order_within_the_memory_bound() {
        let blob: Vec<u8> = (0..(24u32 << 20) / 4)
            .flat_map(|i| i.to_le_bytes())
            .collect();
        let frame = 64usize << 10;
        let limit = 4u64 << 20;
        let mut buf = ReorderBuffer::new(limit, temp_spool());
        // Everything but the first frame arrives first, the last piece before the middle.
        let frames: Vec<usize> = (1..blob.len() / frame).collect();
        let (low, high) = frames.split_at(frames.len() / 2);
        for &i in high.iter().chain(low) {
            let at = i * frame;
            buf.insert(at as u64, Bytes::copy_from_slice(&blob[at..at + frame]))
                .await
                .expect("held");
            assert!(buf.memory <= limit, "{} bytes in memory", buf.memory);
        }
        assert!(buf.peak_memory() <= limit);
        assert!(buf.spooled() >= blob.len() as u64 - limit - frame as u64);
        assert_eq!(buf.take(0).await.expect("take"), None, "nothing at 0 yet");
        let mut out = blob[..frame].to_vec();
        while let Some(b) = buf.take(out.len() as u64).await.expect("take") {
            assert!(b.len() as u64 <= READ_BACK.max(frame as u64));
            out.extend_from_slice(&b);
        }
        assert_eq!(out.len(), blob.len());
        assert!(out == blob, "bytes differ");
        assert_eq!(buf.memory, 0);
        assert!(buf.held.is_empty());
    }

    /// Every held byte, in memory, in a batch or on the spool file, reads right through
    /// the view at any offset; bytes the prefix took are no longer lent.
    #[tokio::test]
    async fn the_view_lends_every_held_byte_until_the_prefix_takes_it() {
        let frame = 64u64 << 10;
        let blob: Vec<u8> = (0..64 * frame).map(|i| (i * 7 % 253) as u8).collect();
        let limit = 2 * SPILL_BATCH;
        let mut buf = ReorderBuffer::new(limit, temp_spool());
        let view = buf.view();
        for i in (1..64u64).rev() {
            let at = (i * frame) as usize;
            buf.insert(
                i * frame,
                Bytes::copy_from_slice(&blob[at..at + frame as usize]),
            )
            .await
            .expect("held");
        }
        assert!(buf.spooled() > 0 && buf.memory > 0, "some of each");
        assert_eq!(view.read_ahead(0, 100), None, "nothing at the prefix yet");
        for pos in [
            frame,
            frame + 1,
            10 * frame - 3,
            40 * frame + 17,
            64 * frame - 5,
        ] {
            let got = view.read_ahead(pos, 1000).expect("held bytes are lent");
            assert!(!got.is_empty() && got.len() <= 1000);
            assert_eq!(
                &got[..],
                &blob[pos as usize..pos as usize + got.len()],
                "at {pos}"
            );
        }
        assert_eq!(view.read_ahead(64 * frame, 10), None, "past the end");
        let mut prefix = frame;
        while prefix < 20 * frame {
            let b = buf.take(prefix).await.expect("take").expect("held");
            prefix += b.len() as u64;
        }
        assert_eq!(
            view.read_ahead(prefix - 1, 10),
            None,
            "taken: part of the prefix"
        );
        assert_eq!(view.read_ahead(frame, 10), None);
        let got = view.read_ahead(prefix, 10).expect("still lent");
        assert_eq!(&got[..], &blob[prefix as usize..prefix as usize + 10]);
    }

    /// A full disk: the spool file cannot be made, the bytes stay in memory (the pieced fill
    /// then stops running ahead), and they still come back in order.
    #[tokio::test]
    async fn a_spool_that_cannot_be_made_keeps_bytes_in_memory_and_says_so() {
        let mut buf = ReorderBuffer::new(SPILL_BATCH, Box::new(|| Err("no room".into())));
        let frame = 64u64 << 10;
        let blob: Vec<u8> = (0..64 * frame).map(|i| (i % 251) as u8).collect();
        for i in 1..64u64 {
            let at = (i * frame) as usize;
            buf.insert(
                i * frame,
                Bytes::copy_from_slice(&blob[at..at + frame as usize]),
            )
            .await
            .expect("held in memory");
        }
        assert!(buf.spool_failed());
        assert_eq!(buf.spooled(), 0);
        assert_eq!(buf.memory, 63 * frame);
        let mut out = blob[..frame as usize].to_vec();
        while let Some(b) = buf.take(out.len() as u64).await.expect("take") {
            out.extend_from_slice(&b);
        }
        assert!(out == blob, "bytes differ");
        assert_eq!(buf.memory, 0);
    }

    /// A spool file that is made but cannot be written (read-only): the same.
    #[tokio::test]
    async fn a_spool_that_cannot_be_written_keeps_bytes_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").expect("file");
        let mut buf = ReorderBuffer::new(
            SPILL_BATCH,
            Box::new(move || File::open(&path).map_err(|e| e.to_string())),
        );
        let frame = Bytes::from(vec![9u8; 256 << 10]);
        for i in 1..9u64 {
            buf.insert(i * (256 << 10), frame.clone())
                .await
                .expect("held");
        }
        assert!(buf.spool_failed());
        assert_eq!(buf.spooled(), 0);
        let mut at = 256u64 << 10;
        while let Some(b) = buf.take(at).await.expect("take") {
            assert!(b.iter().all(|&x| x == 9));
            at += b.len() as u64;
        }
        assert_eq!(at, 9 * (256 << 10));
    }
}
