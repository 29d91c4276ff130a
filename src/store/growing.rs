//! Blobs being filled, as their readers see them: every byte lands in a file (chunk files
//! of the blob being stored, or a spool file when it cannot be kept) as it arrives, and
//! every reader reads at its own pace from there, or from the few most recent frames kept
//! in memory.
//!
//! One fill has three roles, each its own type:
//! - [`BlobInput`] (the task receiving the bytes): pushes frames, has every byte it
//!   receives hashed, and ends the blob: verified, or failed. Dropped without an end, the
//!   blob fails as abandoned, so no reader waits forever. Past the first MiB the sha256
//!   runs on a thread of the input's own, so the task that receives the bytes (and the
//!   readers it feeds) never waits for the hash: receiving runs at the upstream's pace
//!   and the hash catches up by the end.
//! - [`BlobWriter`] (a blocking thread): puts the frames on disk. Its sink degrades, never
//!   fails the blob: chunk files of a blob being stored → a spool file (over budget,
//!   everything in use, store error) → memory only (no room on disk at all). After the
//!   input verified the digest it makes the chunks durable and commits the blob.
//! - [`GrowingBlob`] (shared by readers): `read_at` any offset, wait for more, the end.
//!   A fill that fetches pieces out of order lends it the bytes past the prefix (`ahead`),
//!   so a reader there reads them as they land, and learns where readers wait.
//!
//! Rules readers can rely on: the last byte of a blob is handed out only after its sha256
//! matched; bytes below the durable file length are always readable; in memory-only mode a
//! reader that falls behind the window gets [`BlobRead::Behind`] with the hash state of a
//! [`Checkpoint`] before its offset, from which it can fetch and verify the rest itself.
//!
//! Must not: fetch anything (the cache owns upstreams), fsync before the input ends, or
//! commit a blob whose digest did not match.

use super::ahead::{Ahead, BytesAhead, Want};
use super::block_maps::{BlockMaps, FileRead};
use super::error::StoreError;
use super::fill::{ChunkSink, FillParts};
use crate::mapped;
use crate::oci::{Digest, Sha256Verifier};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// Recent frames kept in memory for readers at the front while bytes go to a file.
const FRONT_KEEP: u64 = 2 << 20;
/// Frames kept in memory when no file takes the bytes.
pub const MEMORY_WINDOW: u64 = 32 << 20;
/// The input waits for the writer (and the hash) when this many bytes are not on file (or
/// not hashed) yet.
const MAX_UNWRITTEN: u64 = 32 << 20;
/// Bytes hashed on the receiving task before the hash moves to a thread of its own (small
/// blobs never start a thread).
const HASH_INLINE: u64 = 1 << 20;
/// A hash checkpoint is kept at least this often (for readers resuming on their own).
const CHECKPOINT_EVERY: u64 = 8 << 20;
/// Largest frame a read returns: a mapped block (a read from a file ends at its block's end).
pub const READ_FRAME: usize = super::block_maps::BLOCK as usize;

/// Why a growing blob failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrowthFailure {
    /// The bytes are not the blob: wrong digest, or more or fewer bytes than announced.
    Mismatch(String),
    /// The input's source failed (the upstream); the message says how.
    Source(String),
    /// The input was dropped without ending the blob.
    Abandoned,
}

impl std::fmt::Display for GrowthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrowthFailure::Mismatch(m) | GrowthFailure::Source(m) => f.write_str(m),
            GrowthFailure::Abandoned => f.write_str("the blob fill stopped before the end"),
        }
    }
}

/// Where the blob's bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keeping {
    /// Chunk files of a blob being stored.
    Storing,
    /// Committed to the store: visible as a hit from now on.
    Stored,
    /// A spool file deleted with the last reader.
    Spooled,
    /// Only the recent frames in memory.
    MemoryOnly,
}

/// The sha256 state after the first `offset` bytes.
#[derive(Clone)]
pub struct Checkpoint {
    pub offset: u64,
    pub hasher: Sha256Verifier,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checkpoint({})", self.offset)
    }
}

/// What `read_at` found.
#[derive(Debug)]
pub enum BlobRead {
    /// Bytes from the offset asked for (at most the `max` asked for).
    Data(Bytes),
    /// Nothing there yet (or only the held-back last byte): wait for a change.
    Wait,
    /// The offset is the verified blob's end.
    End,
    /// The bytes at that offset are gone (memory-only, behind the window); the latest
    /// checkpoint at or before it.
    Behind(Checkpoint),
    /// The blob failed; no more bytes will be handed out.
    Failed(GrowthFailure),
    /// This read failed (a file could not be read); the blob goes on.
    ReadError(String),
}

/// A file holding the blob's bytes from blob offset `start` on, at file offset 0.
struct Extent {
    start: u64,
    file: Arc<File>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Verified,
    Failed(GrowthFailure),
}

struct Growth {
    received: u64,
    /// Files covering `[0, file_end)`, sorted by start; each ends where the next begins.
    extents: Vec<Extent>,
    file_end: u64,
    /// A file still takes the bytes (else memory only from `file_end` on).
    sink_alive: bool,
    keeping: Keeping,
    window: VecDeque<Bytes>,
    window_start: u64,
    checkpoints: Vec<Checkpoint>,
    end: Option<End>,
    /// Mappings of fully written blocks of the files, shared by the readers.
    maps: BlockMaps,
}

impl Growth {
    fn trim(&mut self) {
        let front = self.received.saturating_sub(FRONT_KEEP);
        let mut limit = self.file_end.min(front);
        if !self.sink_alive {
            limit = limit.max(self.received.saturating_sub(MEMORY_WINDOW));
        }
        while let Some(f) = self.window.front() {
            let end = self.window_start + f.len() as u64;
            if end > limit {
                break;
            }
            self.window_start = end;
            self.window.pop_front();
        }
    }
}

/// A blob being filled, shared by its readers.
pub struct GrowingBlob {
    digest: Digest,
    /// As announced by the source, if it did.
    announced: Option<u64>,
    state: Mutex<Growth>,
    changed: watch::Sender<u64>,
    /// Bytes past the prefix lent by the fill, and where readers wait.
    ahead: Ahead,
}

impl GrowingBlob {
    fn lock(&self) -> MutexGuard<'_, Growth> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Growth) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The size: as announced, or once verified, as received.
    pub fn size(&self) -> Option<u64> {
        let g = self.lock();
        match (self.announced, &g.end) {
            (Some(s), _) => Some(s),
            (None, Some(End::Verified)) => Some(g.received),
            (None, _) => None,
        }
    }

    pub fn received(&self) -> u64 {
        self.lock().received
    }

    pub fn keeping(&self) -> Keeping {
        self.lock().keeping
    }

    /// Every byte is in a file (a reader starting now at 0 can read it all).
    pub fn all_on_file(&self) -> bool {
        let g = self.lock();
        g.sink_alive && g.file_end == g.received
    }

    /// `Some(Ok)` once verified, `Some(Err)` once failed.
    pub fn outcome(&self) -> Option<Result<(), GrowthFailure>> {
        match &self.lock().end {
            None => None,
            Some(End::Verified) => Some(Ok(())),
            Some(End::Failed(f)) => Some(Err(f.clone())),
        }
    }

    /// The hash checkpoints kept so far.
    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> Vec<Checkpoint> {
        self.lock().checkpoints.clone()
    }

    /// A receiver that changes whenever anything about the blob does.
    /// How many subscribers wait on this blob (readers following it, waiters on its
    /// outcome): none means nobody would get the rest of its bytes.
    pub fn watchers(&self) -> usize {
        self.changed.receiver_count()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until the blob is verified or failed.
    pub async fn verified(&self) -> Result<(), GrowthFailure> {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err(GrowthFailure::Abandoned);
            }
        }
    }

    /// A reader waits at `pos` (past the prefix) until the guard is dropped: the fill
    /// starts the piece holding it next.
    pub fn want(&self, pos: u64) -> Want {
        self.ahead.want(pos)
    }

    /// The offsets readers wait at, at or past `from`, lowest first.
    pub fn wanted_from(&self, from: u64) -> Vec<u64> {
        self.ahead.wanted_from(from)
    }

    /// Whether a reader waits at or past `from`.
    pub fn waits_from(&self, from: u64) -> bool {
        self.ahead.any_wanted_from(from)
    }

    /// Up to `max` bytes from `pos` (see [`BlobRead`]).
    pub fn read_at(&self, pos: u64, max: usize) -> BlobRead {
        let (file, file_pos, len) = {
            let mut guard = self.lock();
            let g = &mut *guard;
            let verified = match &g.end {
                Some(End::Failed(f)) => return BlobRead::Failed(f.clone()),
                Some(End::Verified) => true,
                None => false,
            };
            // The last byte waits for the digest.
            let avail = if verified {
                g.received
            } else {
                let last = self.announced.unwrap_or(g.received).saturating_sub(1);
                g.received.min(last)
            };
            if pos >= avail {
                if verified && pos >= g.received {
                    return BlobRead::End;
                }
                // Past the prefix: bytes a fill lent, never the blob's last one.
                let lendable = match self.announced {
                    Some(size) if !verified && pos >= g.received => {
                        size.saturating_sub(1).saturating_sub(pos)
                    }
                    _ => 0,
                };
                drop(guard);
                let max = (max as u64).min(lendable) as usize;
                return match (max > 0).then(|| self.ahead.read(pos, max)).flatten() {
                    Some(b) => BlobRead::Data(b),
                    None => BlobRead::Wait,
                };
            }
            let limit = avail.min(pos.saturating_add(max as u64));
            if pos >= g.window_start {
                // Readers are mostly near the front: look from the newest frame back.
                let mut end = g.received;
                for f in g.window.iter().rev() {
                    let base = end - f.len() as u64;
                    if pos >= base {
                        let from = (pos - base) as usize;
                        let to = (limit.min(end) - base) as usize;
                        return BlobRead::Data(f.slice(from..to));
                    }
                    end = base;
                }
                return BlobRead::Wait;
            }
            if pos >= g.file_end {
                let cp = g
                    .checkpoints
                    .iter()
                    .rev()
                    .find(|c| c.offset <= pos)
                    .cloned()
                    .unwrap_or(Checkpoint {
                        offset: 0,
                        hasher: Sha256Verifier::new(),
                    });
                return BlobRead::Behind(cp);
            }
            let i = g.extents.partition_point(|e| e.start <= pos) - 1;
            let extent_end = g.extents.get(i + 1).map_or(g.file_end, |e| e.start);
            let e = &g.extents[i];
            let len = limit.min(extent_end).min(g.file_end) - pos;
            // A file takes no more bytes once the next one started, or once every byte of
            // the verified blob is on file.
            let complete = i + 1 < g.extents.len()
                || (g.end == Some(End::Verified) && g.file_end == g.received);
            let read = FileRead {
                file: &e.file,
                key: e.start,
                offset: pos - e.start,
                len,
                written: extent_end.min(g.file_end) - e.start,
                complete,
            };
            match g.maps.read(&read) {
                Some(frame) => return self.frame_read(pos, frame),
                // Its block is still being written: a mapping of this read alone.
                None => (Arc::clone(&e.file), pos - e.start, len as usize),
            }
        };
        self.frame_read(pos, mapped::map_range(&file, file_pos, len))
    }

    /// What a read at `pos` found in a file.
    fn frame_read(&self, pos: u64, frame: std::io::Result<Bytes>) -> BlobRead {
        match frame {
            Ok(b) => BlobRead::Data(b),
            Err(e) => BlobRead::ReadError(format!(
                "cannot read blob {} at byte {pos}: {e}",
                self.digest
            )),
        }
    }
}

/// Starts a growing blob: the store decides where its bytes go (see the module doc).
pub(crate) fn begin(
    parts: &FillParts,
    digest: Digest,
    size: Option<u64>,
) -> (Arc<GrowingBlob>, BlobInput, BlobWriter) {
    let (sink, keeping) = match ChunkSink::begin(parts, digest, size) {
        Ok(s) => (Sink::Chunks(Box::new(s)), Keeping::Storing),
        Err(e) => {
            tracing::warn!(digest = %digest, reason = %e, "not storing this blob (every later pull of it crosses the WAN again); spooling it for its readers");
            spool_or_memory(parts, 0)
        }
    };
    let sink_alive = !matches!(sink, Sink::Memory);
    let mut extents = Vec::new();
    if let Sink::Spool { file, start } = &sink {
        extents.push(Extent {
            start: *start,
            file: Arc::clone(file),
        });
    }
    let blob = Arc::new(GrowingBlob {
        digest,
        announced: size,
        state: Mutex::new(Growth {
            received: 0,
            extents,
            file_end: 0,
            sink_alive,
            keeping,
            window: VecDeque::new(),
            window_start: 0,
            checkpoints: vec![Checkpoint {
                offset: 0,
                hasher: Sha256Verifier::new(),
            }],
            end: None,
            maps: BlockMaps::default(),
        }),
        changed: watch::channel(0).0,
        ahead: Ahead::default(),
    });
    let input = BlobInput {
        blob: Arc::clone(&blob),
        received: 0,
        hashing: Hashing::Inline(Sha256Verifier::new()),
        inline_only: false,
        ended: false,
    };
    let writer = BlobWriter {
        blob: Arc::clone(&blob),
        parts: parts.clone(),
        sink,
    };
    (blob, input, writer)
}

fn spool_or_memory(parts: &FillParts, start: u64) -> (Sink, Keeping) {
    match parts.create_spool() {
        Ok(f) => (
            Sink::Spool {
                file: Arc::new(f),
                start,
            },
            Keeping::Spooled,
        ),
        Err(e) => {
            parts.count_error("spool", &e);
            tracing::warn!(error = %e, "no room for a spool file either; readers that fall behind fetch on their own");
            (Sink::Memory, Keeping::MemoryOnly)
        }
    }
}

/// Where the input's sha256 runs.
enum Hashing {
    /// On the receiving task (the first [`HASH_INLINE`] bytes).
    Inline(Sha256Verifier),
    /// On a thread fed frame by frame; it returns the finished state when the channel
    /// closes, and counts what it hashed on the `hashed` watch.
    Thread {
        frames: mpsc::Sender<Bytes>,
        thread: JoinHandle<Sha256Verifier>,
        hashed: watch::Receiver<u64>,
    },
    /// Handed over for the end (only while finishing).
    Done,
}

/// Adds a checkpoint to the blob when one is due after `hasher`'s bytes.
fn checkpoint(blob: &GrowingBlob, hasher: &Sha256Verifier) {
    let total = hasher.len();
    let mut g = blob.lock();
    let last = g.checkpoints.last().map_or(0, |c| c.offset);
    if total - last >= CHECKPOINT_EVERY {
        g.checkpoints.push(Checkpoint {
            offset: total,
            hasher: hasher.clone(),
        });
    }
}

/// The hash thread: every frame the input pushes, in order, until the input closes the
/// channel. Checkpoints need no wake-up (readers look for them only once behind).
fn hash_frames(
    blob: Arc<GrowingBlob>,
    mut hasher: Sha256Verifier,
    frames: mpsc::Receiver<Bytes>,
    hashed: watch::Sender<u64>,
) -> Sha256Verifier {
    while let Ok(frame) = frames.recv() {
        hasher.update(&frame);
        drop(frame);
        checkpoint(&blob, &hasher);
        hashed.send_replace(hasher.len());
    }
    hasher
}

/// The receiving side of a growing blob.
pub struct BlobInput {
    blob: Arc<GrowingBlob>,
    received: u64,
    hashing: Hashing,
    /// No hash thread could be started: hash on the receiving task to the end.
    inline_only: bool,
    ended: bool,
}

impl BlobInput {
    pub fn blob(&self) -> &Arc<GrowingBlob> {
        &self.blob
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Lends the blob the bytes the fill holds past its prefix (see [`BytesAhead`]) until
    /// the blob ends.
    pub fn lend_ahead(&self, lender: Arc<dyn BytesAhead>) {
        self.blob.ahead.lend(Some(lender));
    }

    /// Bytes past the prefix landed: readers waiting there look again.
    pub fn landed_ahead(&self) {
        self.blob.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Adds the next bytes. Fails (and fails the blob) past the announced size.
    pub fn push(&mut self, bytes: Bytes) -> Result<(), GrowthFailure> {
        if bytes.is_empty() || self.ended {
            return Ok(());
        }
        let total = self.received + bytes.len() as u64;
        if let Some(size) = self.blob.announced {
            if total > size {
                let f = GrowthFailure::Mismatch(format!(
                    "upstream sent more than the {size} bytes it announced"
                ));
                self.fail_with(f.clone());
                return Err(f);
            }
        }
        self.received = total;
        self.hash(&bytes);
        self.blob.update(|g| {
            g.received = total;
            g.window.push_back(bytes);
            g.trim();
        });
        Ok(())
    }

    fn hash(&mut self, bytes: &Bytes) {
        match &mut self.hashing {
            Hashing::Inline(h) => {
                h.update(bytes);
                checkpoint(&self.blob, h);
                if h.len() >= HASH_INLINE && !self.inline_only {
                    let state = h.clone();
                    self.hand_over(state);
                }
            }
            Hashing::Thread { frames, .. } => {
                if frames.send(bytes.clone()).is_err() {
                    self.fail_with(GrowthFailure::Source("the hash thread stopped".into()));
                }
            }
            Hashing::Done => {}
        }
    }

    /// Moves the hash, at `state`, to a thread of its own.
    fn hand_over(&mut self, state: Sha256Verifier) {
        let (tx, rx) = mpsc::channel();
        let (hashed_tx, hashed) = watch::channel(state.len());
        let blob = Arc::clone(&self.blob);
        let spawned = std::thread::Builder::new()
            .name("sparkcr-sha256".into())
            .spawn(move || hash_frames(blob, state, rx, hashed_tx));
        match spawned {
            Ok(thread) => {
                self.hashing = Hashing::Thread {
                    frames: tx,
                    thread,
                    hashed,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a hash thread; hashing on the receiving task");
                self.inline_only = true;
            }
        }
    }

    /// Waits while the writer or the hash is far behind (bounded memory; the disk and the
    /// hash set the pace only when they cannot keep up).
    pub async fn writer_caught_up(&self) {
        if let Hashing::Thread { hashed, .. } = &self.hashing {
            let mut hashed = hashed.clone();
            let received = self.received;
            // An error means the thread ended: `finish` will say why.
            let _ = hashed.wait_for(|h| received - *h <= MAX_UNWRITTEN).await;
        }
        let caught_up = || {
            let g = self.blob.lock();
            !g.sink_alive || g.received - g.file_end <= MAX_UNWRITTEN
        };
        if caught_up() {
            return;
        }
        let mut rx = self.blob.subscribe();
        loop {
            rx.borrow_and_update();
            if caught_up() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until every byte pushed is hashed, so that [`finish`](Self::finish) does not
    /// block.
    pub async fn hashed_all(&self) {
        if let Hashing::Thread { hashed, .. } = &self.hashing {
            let mut hashed = hashed.clone();
            let received = self.received;
            let _ = hashed.wait_for(|h| *h >= received).await;
        }
    }

    /// The finished hash of every byte pushed (blocks until the hash thread is done; after
    /// [`hashed_all`](Self::hashed_all) it is).
    fn take_hash(&mut self) -> Result<Sha256Verifier, GrowthFailure> {
        match std::mem::replace(&mut self.hashing, Hashing::Done) {
            Hashing::Inline(h) => Ok(h),
            Hashing::Thread { frames, thread, .. } => {
                drop(frames);
                thread
                    .join()
                    .map_err(|_| GrowthFailure::Source("the hash thread failed".into()))
            }
            Hashing::Done => Err(GrowthFailure::Source("the blob was hashed already".into())),
        }
    }

    /// All bytes are in: checks the size and the digest and ends the blob.
    pub fn finish(mut self) -> Result<(), GrowthFailure> {
        let received = self.received;
        let failure = match (self.blob.announced, self.take_hash()) {
            (_, Err(f)) => Some(f),
            (_, Ok(h)) if h.len() != received => Some(GrowthFailure::Source(format!(
                "{} of the {received} bytes received were hashed",
                h.len()
            ))),
            (Some(size), _) if size != received => Some(GrowthFailure::Mismatch(format!(
                "upstream sent {received} of the {size} bytes it announced"
            ))),
            (_, Ok(h)) => {
                let actual = h.finish();
                (actual != self.blob.digest).then(|| {
                    GrowthFailure::Mismatch(format!(
                        "blob {} arrived with digest {actual}",
                        self.blob.digest
                    ))
                })
            }
        };
        self.ended = true;
        self.blob.ahead.lend(None);
        match failure {
            None => {
                self.blob.update(|g| g.end = Some(End::Verified));
                Ok(())
            }
            Some(f) => {
                self.blob.update(|g| {
                    g.end = Some(End::Failed(f.clone()));
                    g.window.clear();
                });
                Err(f)
            }
        }
    }

    /// The source failed: so does the blob.
    pub fn fail(mut self, why: GrowthFailure) {
        self.fail_with(why);
    }

    fn fail_with(&mut self, why: GrowthFailure) {
        self.ended = true;
        self.blob.ahead.lend(None);
        self.blob.update(|g| {
            if g.end.is_none() {
                g.end = Some(End::Failed(why));
            }
            g.window.clear();
        });
    }
}

impl Drop for BlobInput {
    fn drop(&mut self) {
        if !self.ended {
            self.fail_with(GrowthFailure::Abandoned);
        }
    }
}

enum Sink {
    Chunks(Box<ChunkSink>),
    Spool { file: Arc<File>, start: u64 },
    Memory,
}

/// The disk side of a growing blob; runs on a blocking thread.
pub struct BlobWriter {
    blob: Arc<GrowingBlob>,
    parts: FillParts,
    sink: Sink,
}

impl BlobWriter {
    /// Puts `bytes` (the next frame the input pushed) on file; on a failure, the rest of
    /// the blob goes to the next sink (see the module doc).
    pub fn write(&mut self, bytes: &[u8]) {
        let at = self.blob.lock().file_end;
        let mut fresh: Vec<Extent> = Vec::new();
        let result = match &mut self.sink {
            Sink::Chunks(s) => s.write(bytes, &mut |start, file| {
                fresh.push(Extent {
                    start,
                    file: Arc::clone(file),
                })
            }),
            Sink::Spool { file, .. } => (&**file).write_all(bytes).map_err(|e| StoreError::Io {
                op: "write spool file",
                path: self.parts.spool_dir().to_path_buf(),
                source: e,
            }),
            Sink::Memory => return,
        };
        match result {
            Ok(()) => self.blob.update(|g| {
                g.extents.extend(fresh);
                g.file_end += bytes.len() as u64;
                g.trim();
            }),
            Err(e) => {
                self.parts.count_error("fill_write", &e);
                let was_storing = matches!(self.sink, Sink::Chunks(_));
                tracing::warn!(digest = %self.blob.digest, at, error = %e, "cannot write the blob to disk; keeping the rest elsewhere for its readers");
                let (sink, keeping) = if was_storing {
                    spool_or_memory(&self.parts, at)
                } else {
                    (Sink::Memory, Keeping::MemoryOnly)
                };
                // Dropping a chunk sink aborts it; its files stay readable through the
                // handles the extents hold.
                self.sink = sink;
                let spool = match &self.sink {
                    Sink::Spool { file, start } => Some(Extent {
                        start: *start,
                        file: Arc::clone(file),
                    }),
                    _ => None,
                };
                let retry = spool.is_some();
                self.blob.update(|g| {
                    g.keeping = keeping;
                    g.sink_alive = retry;
                    if let Some(x) = spool {
                        g.extents.push(x);
                    }
                    g.trim();
                });
                if retry {
                    self.write(bytes);
                }
            }
        }
    }

    /// Every pushed frame was written and the input ended: when it was verified and the
    /// blob is being stored, makes it durable and commits it (after `hold`, a test hook).
    pub fn finish(self, repo: &str, hold: Duration) -> Keeping {
        let BlobWriter { blob, parts, sink } = self;
        let verified = matches!(blob.outcome(), Some(Ok(())));
        let keeping = match sink {
            Sink::Chunks(mut s) if verified => {
                if !hold.is_zero() {
                    tracing::info!(digest = %blob.digest, ms = hold.as_millis() as u64, "holding the commit (test hook)");
                    std::thread::sleep(hold);
                }
                match s.seal_last().and_then(|()| s.commit_verified(repo)) {
                    Ok(_) => Keeping::Stored,
                    Err(e) => {
                        parts.count_error("finish", &e);
                        tracing::warn!(digest = %blob.digest, error = %e, "verified blob could not be stored");
                        Keeping::Spooled
                    }
                }
            }
            Sink::Chunks(_) | Sink::Spool { .. } => Keeping::Spooled,
            Sink::Memory => Keeping::MemoryOnly,
        };
        let keeping = if verified {
            keeping
        } else {
            blob.lock().keeping
        };
        blob.update(|g| g.keeping = keeping);
        keeping
    }
}
