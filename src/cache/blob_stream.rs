//! Blob bodies as streams of `Bytes` frames: from a stored blob (a hit), or from a fill
//! under way (a miss or a joiner), which reads durable chunks from disk and the rest from
//! the fill's in-memory tail, then follows the fill live. The last byte of a blob is only
//! released once the fill has verified the digest; a failed fill aborts the stream with an
//! error so the client never sees a clean end on wrong bytes.

use super::fill::{Fill, FillFailure, FillPhase};
use super::BlobStream;
use crate::metrics::Metrics;
use crate::store::{BlobReader, Store, FRAME_BYTES};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;

/// Largest frame read from a chunk file at once.
const FRAME: u64 = 256 << 10;

fn abort(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// The reader's next frame, read off the async workers; the reader comes back with it.
async fn next_frame_of(
    mut reader: BlobReader,
) -> io::Result<(Option<io::Result<Bytes>>, BlobReader)> {
    // The frame is allocated here, on a runtime worker, not on a blocking-pool thread
    // (each of those would keep its own malloc arena of freed frames: RSS grows).
    reader.provide_buffer(BytesMut::with_capacity(FRAME_BYTES));
    tokio::task::spawn_blocking(move || {
        let item = reader.next();
        (item, reader)
    })
    .await
    .map_err(|e| abort(format!("read task failed: {e}")))
}

/// Streams a stored blob through its pinned reader.
pub(super) fn from_store(reader: BlobReader, metrics: Arc<Metrics>) -> BlobStream {
    Box::pin(futures_util::stream::unfold(Some(reader), move |reader| {
        let metrics = metrics.clone();
        async move {
            let (item, reader) = match next_frame_of(reader?).await {
                Ok(x) => x,
                Err(e) => return Some((Err(e), None)),
            };
            match item {
                Some(Ok(bytes)) => {
                    metrics
                        .served_bytes
                        .with_label_values(&["cache"])
                        .inc_by(bytes.len() as u64);
                    Some((Ok(bytes), Some(reader)))
                }
                Some(Err(e)) => {
                    metrics.store_errors.with_label_values(&["read"]).inc();
                    Some((Err(e), None))
                }
                None => None,
            }
        }
    }))
}

/// A ranged upstream body passed straight to one client (exactly `len` bytes, or an
/// error: a short body never ends cleanly).
pub(super) fn direct_range(
    body: crate::upstream::BlobBody,
    len: u64,
    metrics: Arc<Metrics>,
) -> BlobStream {
    use futures_util::StreamExt;
    let state = (body, 0u64, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut body, sent, done)| {
            let metrics = metrics.clone();
            async move {
                if done || sent >= len {
                    return None;
                }
                match body.next().await {
                    Some(Ok(mut b)) => {
                        if sent + b.len() as u64 > len {
                            b = b.slice(..(len - sent) as usize);
                        }
                        metrics
                            .served_bytes
                            .with_label_values(&["upstream"])
                            .inc_by(b.len() as u64);
                        let sent = sent + b.len() as u64;
                        Some((Ok(b), (body, sent, false)))
                    }
                    Some(Err(e)) => Some((
                        Err(abort(format!("upstream failed mid-range: {e}"))),
                        (body, sent, true),
                    )),
                    None => Some((
                        Err(abort(format!(
                            "upstream range ended after {sent} of {len} bytes"
                        ))),
                        (body, sent, true),
                    )),
                }
            }
        },
    ))
}

enum Step {
    Chunk {
        id: crate::store::ChunkId,
        offset: u32,
        len: u32,
    },
    Tail(Bytes),
    SwitchToStore,
    Fail(String),
    Wait,
}

struct FollowState {
    fill: Arc<Fill>,
    store: Store,
    pos: u64,
    end: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    /// Set once the fill completed into the store: read the committed blob from here on.
    stored: Option<BlobReader>,
    metrics: Arc<Metrics>,
    done: bool,
}

/// Streams `[start, end)` of the blob `fill` is fetching.
pub(super) fn follow_fill(
    fill: Arc<Fill>,
    store: Store,
    start: u64,
    end: u64,
    metrics: Arc<Metrics>,
) -> BlobStream {
    let rx = fill.subscribe();
    let st = FollowState {
        fill,
        store,
        pos: start,
        end,
        rx,
        stored: None,
        metrics,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        match next_frame(&mut st).await {
            Ok(Some(b)) => Some((Ok(b), st)),
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    }))
}

fn plan(st: &mut FollowState) -> Step {
    st.rx.borrow_and_update();
    let s = st.fill.state();
    let complete = match &s.phase {
        FillPhase::Failed(f) => return Step::Fail(describe(f)),
        FillPhase::Complete { stored: true } => return Step::SwitchToStore,
        FillPhase::Complete { stored: false } => true,
        FillPhase::Connecting | FillPhase::Streaming => false,
    };
    // Hold back the blob's last byte until the digest is verified.
    let releasable = if complete {
        s.received
    } else {
        let last = s
            .size
            .map_or(s.received.saturating_sub(1), |size| size.saturating_sub(1));
        s.received.min(last)
    };
    if st.pos >= releasable {
        return if complete {
            Step::Fail("blob ended before the requested range".into())
        } else {
            Step::Wait
        };
    }
    // Never past `releasable`, whichever side the bytes are on: a blob that ends on a chunk
    // boundary is all in chunk files before its digest is checked.
    let limit = st.end.min(releasable);
    if st.pos < s.chunk_bytes {
        let mut base = 0u64;
        for c in &s.chunks {
            let len = u64::from(c.len);
            if st.pos < base + len {
                let offset = st.pos - base;
                let n = (len - offset).min(limit - st.pos).min(FRAME);
                return Step::Chunk {
                    id: c.id,
                    offset: offset as u32,
                    len: n as u32,
                };
            }
            base += len;
        }
    }
    if st.pos < s.tail_start {
        return Step::Fail(format!(
            "client fell more than {} MiB behind a blob that is not being stored",
            s.tail_start >> 20
        ));
    }
    let mut base = s.tail_start;
    for b in &s.tail {
        let len = b.len() as u64;
        if st.pos < base + len {
            let from = (st.pos - base) as usize;
            let to = (len.min(limit - base)) as usize;
            return Step::Tail(b.slice(from..to));
        }
        base += len;
    }
    Step::Wait
}

fn describe(f: &FillFailure) -> String {
    match f {
        FillFailure::NotFound => "the upstream no longer has this blob".into(),
        FillFailure::Unavailable(m) => format!("upstream failed mid-blob: {m}"),
        FillFailure::DigestMismatch(m) => m.clone(),
        FillFailure::Store(m) => format!("store failed: {m}"),
        FillFailure::Abandoned => "the blob fill stopped".into(),
    }
}

async fn next_frame(st: &mut FollowState) -> io::Result<Option<Bytes>> {
    loop {
        if st.pos >= st.end {
            return Ok(None);
        }
        if let Some(reader) = st.stored.take() {
            let (item, reader) = next_frame_of(reader).await?;
            return match item {
                Some(Ok(b)) => {
                    st.pos += b.len() as u64;
                    st.stored = Some(reader);
                    st.metrics
                        .served_bytes
                        .with_label_values(&["upstream"])
                        .inc_by(b.len() as u64);
                    Ok(Some(b))
                }
                Some(Err(e)) => Err(e),
                None => Ok(None),
            };
        }
        match plan(st) {
            Step::Tail(b) => {
                st.pos += b.len() as u64;
                st.metrics
                    .served_bytes
                    .with_label_values(&["upstream"])
                    .inc_by(b.len() as u64);
                return Ok(Some(b));
            }
            Step::Chunk { id, offset, len } => {
                let store = st.store.clone();
                let buf = BytesMut::with_capacity(len as usize);
                let b = tokio::task::spawn_blocking(move || {
                    store.read_chunk_into(&id, offset, len, buf)
                })
                .await
                .map_err(|e| abort(format!("read task failed: {e}")))?
                .map_err(|e| abort(format!("cannot read chunk {id}: {e}")))?;
                st.pos += b.len() as u64;
                st.metrics
                    .served_bytes
                    .with_label_values(&["upstream"])
                    .inc_by(b.len() as u64);
                return Ok(Some(b));
            }
            Step::SwitchToStore => {
                let (store, d, pos, end) = (st.store.clone(), st.fill.digest, st.pos, st.end);
                let reader = tokio::task::spawn_blocking(move || store.read_blob(&d, pos, end))
                    .await
                    .map_err(|e| abort(format!("read task failed: {e}")))?
                    .map_err(|e| abort(format!("cannot read stored blob: {e}")))?;
                match reader {
                    Some(r) => st.stored = Some(r),
                    None => return Err(abort("the blob was evicted while being served".into())),
                }
            }
            Step::Fail(m) => return Err(abort(m)),
            Step::Wait => {
                if st.rx.changed().await.is_err() {
                    // The fill is gone; its final phase is still readable.
                    if matches!(plan(st), Step::Wait) {
                        return Err(abort("the blob fill stopped".into()));
                    }
                }
            }
        }
    }
}
