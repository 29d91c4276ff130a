//! Single-flight blob fills. The first request for an uncached blob starts one [`Fill`];
//! every concurrent request for the same digest, from any repository or route of a public
//! upstream, joins it. A fill for a private upstream is joined only by requests for that
//! same upstream ([`FillKey`]).
//!
//! Every state of a fill is a named [`FillPhase`]. The fill runs in its own task, so a
//! client that disconnects does not cancel it. Bytes go two ways as they arrive: into the
//! in-memory tail that readers take from, and to a writer thread that cuts them into chunk
//! files in the store; once a chunk is durable, its bytes leave the tail and readers that
//! are behind read them from the chunk file. So memory per fill is bounded (about one
//! chunk plus the writer's queue) and one slow client never slows the fill or the others.
//!
//! If the upstream connection breaks mid-blob, the fill resumes with a `Range` request from
//! the bytes already received (a few tries with backoff). A [`FillGuard`] turns a fill task
//! that died without finishing into `Failed(Abandoned)`, so waiters are never left hanging.

use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName, Sha256Verifier};
use crate::store::{BlobFill, ChunkRef, Store, StoreError};
use crate::upstream::{BlobResponse, Upstream, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How many times a broken upstream body is resumed before the fill gives up.
const RESUME_TRIES: u32 = 4;
/// Bytes kept for readers when the blob cannot be stored (pass-through).
const PASS_THROUGH_WINDOW: u64 = 32 << 20;
/// Frames queued for the writer thread before the fill waits for the disk.
const WRITER_QUEUE: usize = 64;

#[derive(Clone, Debug)]
pub(super) enum FillFailure {
    NotFound,
    Unavailable(String),
    DigestMismatch(String),
    Store(String),
    /// The fill task ended without reaching an end state.
    Abandoned,
}

#[derive(Clone, Debug)]
pub(super) enum FillPhase {
    /// Asking the upstream; the size is not known yet.
    Connecting,
    /// Bytes are arriving.
    Streaming,
    /// Every byte arrived and matched the digest. `stored`: the blob is now in the store
    /// (false when there was no room and it was passed through).
    Complete {
        stored: bool,
    },
    Failed(FillFailure),
}

pub(super) struct FillState {
    pub phase: FillPhase,
    pub size: Option<u64>,
    /// Bytes received from the upstream so far.
    pub received: u64,
    /// Durable chunk files, in blob order (empty when passing through).
    pub chunks: Vec<ChunkRef>,
    /// Bytes covered by `chunks`.
    pub chunk_bytes: u64,
    /// Received bytes from `tail_start` on, not yet durable.
    pub tail: VecDeque<Bytes>,
    pub tail_start: u64,
    /// The blob is not being stored (no room, or the store failed): readers get a bounded
    /// window of recent bytes instead of chunk files.
    pub passing_through: bool,
}

/// What a fill is shared by: the digest, plus the upstream when it is private.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct FillKey {
    pub digest: Digest,
    pub private_upstream: Option<String>,
}

impl FillKey {
    pub fn new(digest: Digest, upstream: &str, private: bool) -> Self {
        FillKey {
            digest,
            private_upstream: private.then(|| upstream.to_string()),
        }
    }
}

pub(super) struct Fill {
    pub key: FillKey,
    pub digest: Digest,
    pub upstream: String,
    state: Mutex<FillState>,
    changed: watch::Sender<u64>,
}

impl Fill {
    fn new(key: FillKey, upstream: String) -> Self {
        Fill {
            digest: key.digest,
            key,
            upstream,
            state: Mutex::new(FillState {
                phase: FillPhase::Connecting,
                size: None,
                received: 0,
                chunks: Vec::new(),
                chunk_bytes: 0,
                tail: VecDeque::new(),
                tail_start: 0,
                passing_through: false,
            }),
            changed: watch::channel(0).0,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, FillState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut FillState)) {
        f(&mut self.state());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits until the fill knows its size or failed.
    pub async fn wait_started(&self) -> Result<Option<u64>, FillFailure> {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = self.state();
                match &s.phase {
                    FillPhase::Connecting => {}
                    FillPhase::Failed(f) => return Err(f.clone()),
                    _ => return Ok(s.size),
                }
            }
            if rx.changed().await.is_err() {
                return Err(FillFailure::Abandoned);
            }
        }
    }
}

/// The fills under way.
pub(super) type FillMap = Arc<Mutex<HashMap<FillKey, Arc<Fill>>>>;

/// Turns a fill task that ends without finishing into `Failed(Abandoned)` and always takes
/// the fill out of the map.
struct FillGuard {
    fill: Arc<Fill>,
    fills: FillMap,
    metrics: Arc<Metrics>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let unfinished = matches!(
            self.fill.state().phase,
            FillPhase::Connecting | FillPhase::Streaming
        );
        if unfinished {
            self.fill
                .update(|s| s.phase = FillPhase::Failed(FillFailure::Abandoned));
        }
        let mut map = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.fill.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.fill.key);
        }
        self.metrics.fills_in_flight.dec();
    }
}

/// Everything a fill task needs.
pub(super) struct FillJob {
    pub store: Store,
    pub upstream: Upstream,
    pub repo: RepositoryName,
    /// `upstream/repo`, recorded with the stored blob.
    pub repo_key: String,
    pub metrics: Arc<Metrics>,
    pub fills: FillMap,
}

/// Returns the fill under way for `key`, or starts one. `true` = joined an existing one.
pub(super) fn join_or_start(job: FillJob, key: FillKey) -> (Arc<Fill>, bool) {
    let fills = job.fills.clone();
    let mut map = fills.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = map.get(&key) {
        return (f.clone(), true);
    }
    let fill = Arc::new(Fill::new(key.clone(), job.upstream.name().to_string()));
    map.insert(key, fill.clone());
    drop(map);
    job.metrics.fills_in_flight.inc();
    let guard = FillGuard {
        fill: fill.clone(),
        fills: job.fills.clone(),
        metrics: job.metrics.clone(),
    };
    tokio::spawn(run(job, guard));
    (fill, false)
}

/// Messages to the writer thread.
enum WriterMsg {
    Data(Bytes),
    Finish(oneshot::Sender<Result<bool, FillFailure>>),
}

async fn run(job: FillJob, guard: FillGuard) {
    let fill = guard.fill.clone();
    let outcome = fetch(&job, &fill).await;
    let phase = match outcome {
        Ok(stored) => FillPhase::Complete { stored },
        Err(f) => {
            if let FillFailure::DigestMismatch(ref m) = f {
                job.metrics.digest_mismatches.inc();
                tracing::error!(digest = %fill.digest, upstream = %fill.upstream, "{m}; nothing stored, clients aborted");
            } else {
                tracing::warn!(digest = %fill.digest, upstream = %fill.upstream, failure = ?f, "blob fill failed");
            }
            FillPhase::Failed(f)
        }
    };
    fill.update(|s| {
        s.phase = phase;
        if matches!(s.phase, FillPhase::Failed(_)) {
            s.tail.clear();
        }
    });
    drop(guard);
}

fn map_upstream(e: &UpstreamError) -> FillFailure {
    if e.is_not_found() {
        FillFailure::NotFound
    } else {
        FillFailure::Unavailable(e.to_string())
    }
}

/// Fetches the blob, feeding readers and the writer; `Ok(stored)` once verified.
async fn fetch(job: &FillJob, fill: &Arc<Fill>) -> Result<bool, FillFailure> {
    let first = job
        .upstream
        .blob(&job.repo, &fill.digest, None)
        .await
        .map_err(|e| map_upstream(&e))?;
    let size = first.size;
    fill.update(|s| {
        s.size = size;
        s.phase = FillPhase::Streaming;
    });
    let (tx, rx) = mpsc::channel::<WriterMsg>(WRITER_QUEUE);
    let writer = {
        let (store, fill, digest) = (job.store.clone(), fill.clone(), fill.digest);
        let repo_key = job.repo_key.clone();
        tokio::task::spawn_blocking(move || write_chunks(store, fill, digest, size, repo_key, rx))
    };
    let streamed = stream_body(job, fill, first, size, &tx).await;
    let result = match streamed {
        Ok(()) => {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(WriterMsg::Finish(done_tx)).await.is_err() {
                Err(FillFailure::Store("the store writer stopped".into()))
            } else {
                done_rx
                    .await
                    .unwrap_or(Err(FillFailure::Store("the store writer stopped".into())))
            }
        }
        Err(f) => Err(f),
    };
    drop(tx); // without Finish, the writer aborts its BlobFill (no visible blob, no files)
    let _ = writer.await;
    result
}

/// Reads the upstream body (resuming after breaks) into the tail and the writer queue.
async fn stream_body(
    job: &FillJob,
    fill: &Arc<Fill>,
    first: BlobResponse,
    size: Option<u64>,
    tx: &mpsc::Sender<WriterMsg>,
) -> Result<(), FillFailure> {
    let mut response = first;
    let mut tries = 0;
    let mut received: u64 = 0;
    loop {
        // An upstream that ignored our Range starts again at 0: skip what we have.
        let mut skip = received.saturating_sub(response.start);
        if response.start > received {
            return Err(FillFailure::Unavailable(format!(
                "upstream resumed at byte {} but {received} were received",
                response.start
            )));
        }
        let mut broke: Option<String> = None;
        while let Some(frame) = response.body.next().await {
            let mut bytes = match frame {
                Ok(b) => b,
                Err(e) => {
                    broke = Some(e.to_string());
                    break;
                }
            };
            if skip > 0 {
                let n = skip.min(bytes.len() as u64) as usize;
                bytes = bytes.slice(n..);
                skip -= n as u64;
            }
            if bytes.is_empty() {
                continue;
            }
            received += bytes.len() as u64;
            if size.is_some_and(|s| received > s) {
                return Err(FillFailure::DigestMismatch(format!(
                    "upstream sent more than the {} bytes it announced",
                    size.unwrap_or_default()
                )));
            }
            fill.update(|s| {
                s.received = received;
                s.tail.push_back(bytes.clone());
                trim_pass_through(s);
            });
            if tx.send(WriterMsg::Data(bytes)).await.is_err() {
                return Err(FillFailure::Store("the store writer stopped".into()));
            }
        }
        let short = size.is_some_and(|s| received < s);
        if broke.is_none() && !short {
            return Ok(());
        }
        tries += 1;
        let why = broke.unwrap_or_else(|| {
            format!(
                "body ended at byte {received} of {}",
                size.unwrap_or_default()
            )
        });
        if tries > RESUME_TRIES {
            return Err(FillFailure::Unavailable(format!(
                "gave up after {RESUME_TRIES} resumes: {why}"
            )));
        }
        let backoff = Duration::from_millis(200 * (1 << (tries - 1)));
        tracing::warn!(digest = %fill.digest, received, tries, error = %why, "upstream broke mid-blob; resuming with Range");
        tokio::time::sleep(backoff).await;
        job.metrics.fill_resumes.inc();
        response = match job
            .upstream
            .blob(&job.repo, &fill.digest, Some((received, None)))
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Err(FillFailure::NotFound),
            Err(e) => {
                tracing::warn!(error = %e, "resume request failed");
                // Try again with an empty response: the loop counts it as a break.
                BlobResponse {
                    size,
                    start: received,
                    body: crate::upstream::BlobBody::from_stream(futures_util::stream::iter(
                        Vec::<Result<Bytes, UpstreamError>>::new(),
                    )),
                }
            }
        };
    }
}

/// When there is no store fill, readers get a bounded window of recent bytes.
fn trim_pass_through(s: &mut FillState) {
    if !s.passing_through {
        return;
    }
    let held = s.received - s.tail_start;
    if held <= PASS_THROUGH_WINDOW * 2 {
        return;
    }
    while s.received - s.tail_start > PASS_THROUGH_WINDOW {
        match s.tail.pop_front() {
            Some(b) => s.tail_start += b.len() as u64,
            None => break,
        }
    }
}

/// The writer thread: cuts the bytes into chunk files, publishes each durable chunk to the
/// readers (and drops those bytes from the tail), and commits or aborts the blob.
fn write_chunks(
    store: Store,
    fill: Arc<Fill>,
    digest: Digest,
    size: Option<u64>,
    repo_key: String,
    mut rx: mpsc::Receiver<WriterMsg>,
) {
    let mut target: Option<BlobFill> = match store.begin_fill(digest, size) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(digest = %digest, error = %e, "not caching this blob; passing it through");
            fill.update(|s| s.passing_through = true);
            None
        }
    };
    // Used only when passing through: the store's fill verifies its own bytes. `None`:
    // the bytes can no longer be verified (the store failed after some left the tail).
    let mut verifier = Some(Sha256Verifier::new());
    let mut published = 0usize;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriterMsg::Data(bytes) => match target.as_mut() {
                Some(f) => {
                    if let Err(e) = f.write(&bytes) {
                        tracing::warn!(digest = %digest, error = %e, "store write failed; passing the rest through");
                        verifier = rehash_received(&fill);
                        target = None;
                        fill.update(|s| {
                            s.chunks.clear();
                            s.chunk_bytes = 0;
                            s.passing_through = true;
                        });
                        continue;
                    }
                    let done = f.completed_chunks();
                    if done.len() > published {
                        let fresh: Vec<ChunkRef> = done[published..].to_vec();
                        published = done.len();
                        fill.update(|s| publish_chunks(s, fresh));
                    }
                }
                None => {
                    if let Some(v) = verifier.as_mut() {
                        v.update(&bytes);
                    }
                }
            },
            WriterMsg::Finish(reply) => {
                let result = match target.take() {
                    Some(f) => match f.finish(&repo_key) {
                        Ok(_) => Ok(true),
                        Err(StoreError::DigestMismatch { expected, actual }) => {
                            Err(FillFailure::DigestMismatch(format!(
                                "blob {expected} arrived with digest {actual}"
                            )))
                        }
                        Err(e) => Err(FillFailure::Store(e.to_string())),
                    },
                    None => match verifier.take().map(Sha256Verifier::finish) {
                        Some(actual) if actual == digest => Ok(false),
                        Some(actual) => Err(FillFailure::DigestMismatch(format!(
                            "blob {digest} arrived with digest {actual}"
                        ))),
                        None => Err(FillFailure::Store(
                            "the store failed mid-blob; the bytes cannot be verified".into(),
                        )),
                    },
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
    // Sender gone without Finish: dropping `target` aborts the store fill.
}

/// Moves newly durable chunks out of the tail.
fn publish_chunks(s: &mut FillState, fresh: Vec<ChunkRef>) {
    for c in fresh {
        s.chunk_bytes += u64::from(c.len);
        s.chunks.push(c);
    }
    let mut drop_bytes = s.chunk_bytes.saturating_sub(s.tail_start);
    while drop_bytes > 0 {
        let Some(front) = s.tail.front_mut() else {
            break;
        };
        let n = front.len() as u64;
        if n <= drop_bytes {
            s.tail.pop_front();
            drop_bytes -= n;
            s.tail_start += n;
        } else {
            *front = front.slice(drop_bytes as usize..);
            s.tail_start += drop_bytes;
            drop_bytes = 0;
        }
    }
}

/// Falling back to pass-through mid-blob needs a hash of everything so far, which only the
/// tail still holds if nothing was made durable; otherwise the fill cannot be verified.
fn rehash_received(fill: &Fill) -> Option<Sha256Verifier> {
    let s = fill.state();
    if s.tail_start != 0 {
        return None;
    }
    let mut v = Sha256Verifier::new();
    for b in &s.tail {
        v.update(b);
    }
    Some(v)
}
