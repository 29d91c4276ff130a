//! Blob bodies as streams of `Bytes` frames: from a stored blob (a hit), or following a
//! [`GrowingBlob`] (a miss or a joiner) at the client's own pace.
//!
//! A range is streamed as its bytes arrive, like a whole blob; its last byte waits until
//! the whole blob's digest matched, so a mismatch ends the response short of its length.
//!
//! A follower that falls behind the in-memory window of a blob that could not be kept on
//! disk fetches the rest on its own: from the store's hash [`Checkpoint`] at or before its
//! offset, with a `Range` request, hashing every byte, so what it sends is verified just
//! like the fill's (the last frame of a whole-body response, and all of a range, wait for
//! the digest); the resumes are `resume`'s. A follower whose fill delivers no new bytes
//! for `cache.follower_stall` takes it over: it leads a new fill (or joins the one another
//! follower started) and reads on from where it was. Every failure ends the stream with an
//! error, so hyper aborts the response and the client never sees a clean end on partial
//! or wrong bytes.
//!
//! Must not: decide hit or miss, or read chunk files (the store hands out the frames).

use super::resume::{ResumeFrom, ResumingBody};
use super::sources::BlobSource;
use super::BlobStream;
use crate::metrics::Metrics;
use crate::oci::{BlobSpan, RepoTarget};
use crate::store::{BlobRead, BlobReader, Checkpoint, GrowingBlob, MEMORY_WINDOW, READ_FRAME};
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

fn abort(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Streams a stored blob through its pinned reader (page-cache frames, read inline).
pub(super) fn from_store(reader: BlobReader, metrics: Arc<Metrics>) -> BlobStream {
    Box::pin(futures_util::stream::iter(reader).map(move |frame| {
        match &frame {
            Ok(b) => metrics
                .served_bytes
                .with_label_values(&["cache"])
                .inc_by(b.len() as u64),
            Err(_) => metrics.store_errors.with_label_values(&["read"]).inc(),
        }
        frame
    }))
}

/// Where a follower that fell behind fetches the rest.
#[derive(Clone)]
pub(super) struct Refetch {
    pub source: Arc<dyn BlobSource>,
    pub target: RepoTarget,
    pub metrics: Arc<Metrics>,
}

/// A new fill's blob for a follower whose fill stalled (it leads the new fill, or joins the
/// one another follower started); `None` when none could start.
pub(super) type TakeOverFuture = Pin<Box<dyn Future<Output = Option<Arc<GrowingBlob>>> + Send>>;

/// Takes over the stalled fill it is given (see [`TakeOverFuture`]).
pub(super) type TakeOver = Box<dyn FnMut(Arc<GrowingBlob>) -> TakeOverFuture + Send>;

/// What a follower does when its fill delivers no new bytes for `after`.
pub(super) struct OnStall {
    pub after: Duration,
    pub take_over: TakeOver,
}

/// Why a follower of a stalled fill gives up.
pub(super) const STALLED: &str = "the blob fill stalled and no new one could start";

/// What became of a growing blob a follower waited on.
pub(super) enum Watched {
    /// Something changed (bytes, or the end): look again.
    Changed,
    /// The fill is gone without an end.
    Stopped,
    /// No new bytes for the stall limit.
    Stalled,
}

/// A follower's watch on its fill's progress: stalled only when no new byte arrived for
/// `after`, however long the follower itself took between waits.
pub(super) struct StallWatch {
    seen: u64,
    moved: Instant,
    after: Duration,
}

impl StallWatch {
    pub fn new(blob: &GrowingBlob, after: Duration) -> StallWatch {
        StallWatch {
            seen: blob.received(),
            moved: Instant::now(),
            after,
        }
    }

    /// Waits for a change of `blob` (`rx` is its subscription), at most until it has had
    /// no new bytes for the limit.
    pub async fn wait(&mut self, blob: &GrowingBlob, rx: &mut watch::Receiver<u64>) -> Watched {
        let received = blob.received();
        if received != self.seen {
            (self.seen, self.moved) = (received, Instant::now());
        }
        match tokio::time::timeout_at(self.moved + self.after, rx.changed()).await {
            Ok(Ok(())) => Watched::Changed,
            Ok(Err(_)) => Watched::Stopped,
            Err(_) => Watched::Stalled,
        }
    }
}

/// Frames in flight between a follower task and its response.
const FOLLOW_QUEUE: usize = 2;

/// Streams `[start, end)` of `blob` (`end` = `None`: to the blob's end, size unknown).
pub(super) fn follow(
    blob: Arc<GrowingBlob>,
    (start, end): (u64, Option<u64>),
    refetch: Refetch,
    on_stall: OnStall,
) -> BlobStream {
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    tokio::spawn(follow_task(blob, (start, end), refetch, on_stall, tx));
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

type Out = mpsc::Sender<io::Result<Bytes>>;

async fn follow_task(
    mut blob: Arc<GrowingBlob>,
    (mut pos, end): (u64, Option<u64>),
    refetch: Refetch,
    mut on_stall: OnStall,
    tx: Out,
) {
    let mut rx = blob.subscribe();
    let served = refetch
        .metrics
        .served_bytes
        .with_label_values(&["upstream"]);
    let mut stall = StallWatch::new(&blob, on_stall.after);
    // A range that ends before the blob's end keeps its last byte until the whole blob is
    // verified (the growing blob holds back only the blob's own last byte).
    let hold_last = end.is_some_and(|e| e > pos && blob.size() != Some(e));
    loop {
        let want = end.map_or(READ_FRAME as u64, |e| e.saturating_sub(pos));
        if want == 0 {
            return;
        }
        rx.borrow_and_update();
        let verified = match blob.outcome() {
            Some(Ok(())) => true,
            Some(Err(f)) => {
                let _ = tx.send(Err(abort(f.to_string()))).await;
                return;
            }
            None => false,
        };
        let read = if hold_last && !verified && want == 1 {
            BlobRead::Wait
        } else {
            let max = if hold_last && !verified {
                want - 1
            } else {
                want
            };
            blob.read_at(pos, max.min(READ_FRAME as u64) as usize)
        };
        match read {
            BlobRead::Data(b) => {
                pos += b.len() as u64;
                served.inc_by(b.len() as u64);
                if tx.send(Ok(b)).await.is_err() {
                    return; // the client went away
                }
            }
            BlobRead::Wait => {
                // Past the prefix: the fill starts the piece this offset is in next.
                let _want = (pos > blob.received()).then(|| blob.want(pos));
                match stall.wait(&blob, &mut rx).await {
                    Watched::Changed => {}
                    Watched::Stopped => {
                        let _ = tx.send(Err(abort("the blob fill stopped"))).await;
                        return;
                    }
                    Watched::Stalled => {
                        tracing::warn!(digest = %blob.digest(), received = blob.received(), offset = pos, "blob fill stalled; a waiting client takes it over");
                        let Some(fresh) = (on_stall.take_over)(Arc::clone(&blob)).await else {
                            let _ = tx.send(Err(abort(STALLED))).await;
                            return;
                        };
                        blob = fresh;
                        rx = blob.subscribe();
                        stall = StallWatch::new(&blob, on_stall.after);
                    }
                }
            }
            BlobRead::End => {
                if end.is_some_and(|e| pos < e) {
                    let _ = tx
                        .send(Err(abort("the blob ended before the requested range")))
                        .await;
                }
                return;
            }
            BlobRead::Behind(cp) => {
                refetch.metrics.reader_refetches.inc();
                tracing::info!(digest = %blob.digest(), offset = pos, from = cp.offset, "client fell behind a blob kept only in memory; fetching the rest for it");
                if let Err(e) = fetch_rest(&blob, cp, pos, end, &refetch, &tx).await {
                    let _ = tx.send(Err(e)).await;
                }
                return;
            }
            BlobRead::Failed(f) => {
                let _ = tx.send(Err(abort(f.to_string()))).await;
                return;
            }
            BlobRead::ReadError(m) => {
                refetch
                    .metrics
                    .store_errors
                    .with_label_values(&["read"])
                    .inc();
                let _ = tx.send(Err(abort(m))).await;
                return;
            }
        }
    }
}

/// Bytes of one follower's own fetch not yet sent: the last frame of a whole body, or the
/// whole of a range, wait until the follower's own hash of the blob matched.
struct Held {
    frames: Vec<Bytes>,
    bytes: u64,
    /// Everything is held (a range), not just the last frame.
    all: bool,
}

impl Held {
    /// Takes `piece`; returns what may go out now.
    fn take(&mut self, piece: Bytes) -> io::Result<Vec<Bytes>> {
        self.bytes += piece.len() as u64;
        self.frames.push(piece);
        if self.all {
            if self.bytes > MEMORY_WINDOW {
                return Err(abort(format!(
                    "cannot verify a range of more than {} MiB of a blob that could not be kept on disk; retry when there is room",
                    MEMORY_WINDOW >> 20
                )));
            }
            return Ok(Vec::new());
        }
        let keep = self.frames.pop();
        let out = std::mem::take(&mut self.frames);
        self.bytes = keep.as_ref().map_or(0, |b| b.len() as u64);
        self.frames.extend(keep);
        Ok(out)
    }
}

async fn send_all(tx: &Out, frames: Vec<Bytes>) -> io::Result<()> {
    for f in frames {
        if tx.send(Ok(f)).await.is_err() {
            return Err(abort("client went away"));
        }
    }
    Ok(())
}

/// A follower's own verified fetch of `[pos, end)`, from checkpoint `cp`.
async fn fetch_rest(
    blob: &GrowingBlob,
    cp: Checkpoint,
    pos: u64,
    end: Option<u64>,
    refetch: &Refetch,
    tx: &Out,
) -> io::Result<()> {
    let digest = *blob.digest();
    let size = blob.size();
    let stop = match (end, size) {
        (Some(e), _) => Some(e),
        (None, s) => s,
    };
    let mut held = Held {
        frames: Vec::new(),
        bytes: 0,
        all: matches!((end, size), (Some(e), Some(s)) if e < s),
    };
    let mut hasher = cp.hasher;
    let first = refetch
        .source
        .blob(&refetch.target, &digest, BlobSpan::starting_at(cp.offset))
        .await
        .map_err(|e| abort(format!("upstream failed: {e}")))?;
    let resume_from = ResumeFrom {
        source: Arc::clone(&refetch.source),
        target: refetch.target.clone(),
        digest,
        resumes: None,
    };
    let mut body = ResumingBody::new(first.response, cp.offset, size, resume_from)
        .map_err(|f| abort(f.to_string()))?;
    loop {
        while let Some(bytes) = body.next_frame().await {
            hasher.update(&bytes);
            let at = body.at();
            let frame_start = at - bytes.len() as u64;
            if size.is_some_and(|s| at > s) {
                return Err(abort("upstream sent more bytes than the blob has"));
            }
            let lo = frame_start.max(pos);
            let hi = stop.map_or(at, |s| at.min(s));
            if lo < hi {
                let piece = bytes.slice((lo - frame_start) as usize..(hi - frame_start) as usize);
                refetch
                    .metrics
                    .served_bytes
                    .with_label_values(&["upstream"])
                    .inc_by(piece.len() as u64);
                send_all(tx, held.take(piece)?).await?;
            }
        }
        if !body.resume().await.map_err(|f| abort(f.to_string()))? {
            break;
        }
    }
    let actual = hasher.finish();
    if actual != digest {
        refetch.metrics.digest_mismatches.inc();
        return Err(abort(format!("blob {digest} arrived with digest {actual}")));
    }
    send_all(tx, held.frames).await
}
