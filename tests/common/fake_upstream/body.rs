//! How the fake serves one blob: `Range` (`bytes=a-b`, `bytes=a-`, `bytes=-n`; 206 with
//! `Content-Range`, 416 when unsatisfiable) and the per-blob fault modes, applied to
//! whatever part of the blob a response covers. Bodies are streamed from a task so a
//! response can be cut, stalled or slowed at a chosen byte.

use super::{corrupted, error, response, with_header, Recorded};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::Response;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

pub type FakeBody = BoxBody<Bytes, io::Error>;

/// How one blob misbehaves. Offsets are blob offsets, whatever range a request asked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Always a 200 with the whole blob, whatever `Range` says.
    pub ignore_range: bool,
    /// A response that would carry byte `at` closes the connection right before it (after
    /// the headers only, when the response starts at or after `at`).
    pub cut_at: Option<u64>,
    /// Only the first `n` responses reaching `cut_at` are cut (all of them when `None`).
    pub cut_times: Option<usize>,
    /// Bytes in this range are flipped (`!b`) in every response that covers them.
    pub corrupt: Option<Range<u64>>,
    /// A response that would carry byte `at` sends the bytes before it, then nothing
    /// (the connection stays open for minutes).
    pub stall_at: Option<u64>,
    /// A cap per response, in bytes per second.
    pub rate: Option<u64>,
    /// GETs and HEADs answer (status, `Retry-After`): for the next `n`, or always (`None`).
    pub refuse: Option<(u16, String, Option<usize>)>,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn ignore_range(mut self) -> Self {
        self.ignore_range = true;
        self
    }

    /// Every response reaching byte `at` is cut there.
    pub fn cut_at(mut self, at: u64) -> Self {
        self.cut_at = Some(at);
        self
    }

    /// The first `times` responses reaching byte `at` are cut there; later ones are whole.
    pub fn cut_first(mut self, at: u64, times: usize) -> Self {
        self.cut_at = Some(at);
        self.cut_times = Some(times);
        self
    }

    pub fn corrupt(mut self, range: Range<u64>) -> Self {
        self.corrupt = Some(range);
        self
    }

    pub fn stall_at(mut self, at: u64) -> Self {
        self.stall_at = Some(at);
        self
    }

    pub fn rate(mut self, bytes_per_second: u64) -> Self {
        self.rate = Some(bytes_per_second.max(1));
        self
    }

    /// Every GET and HEAD answers `status` with `Retry-After: retry_after`.
    pub fn refuse(mut self, status: u16, retry_after: &str) -> Self {
        self.refuse = Some((status, retry_after.to_string(), None));
        self
    }

    /// The next `times` GETs and HEADs answer `status`; later ones are served.
    pub fn refuse_next(mut self, status: u16, retry_after: &str, times: usize) -> Self {
        self.refuse = Some((status, retry_after.to_string(), Some(times)));
        self
    }
}

pub struct BlobEntry {
    pub bytes: Bytes,
    faults: Faults,
    /// Responses cut so far.
    cuts: usize,
}

impl BlobEntry {
    pub fn new(bytes: Bytes, faults: Faults) -> Self {
        BlobEntry {
            bytes,
            faults,
            cuts: 0,
        }
    }

    /// The refusal this request gets, if any (counting it).
    pub fn refusal(&mut self) -> Option<Response<FakeBody>> {
        let (status, retry_after, times) = self.faults.refuse.as_mut()?;
        match times {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        let r = error(*status, "TOOMANYREQUESTS", "slow down");
        Some(with_header(r, "retry-after", retry_after))
    }
}

enum Stop {
    Cut,
    Stall,
}

/// Blob bodies being sent, and the most at once: from the GET's headers until the fake
/// hands its last byte to hyper (a cut or stalled body: until it is cut, or the client goes
/// away). So a body is counted for less time than the client waits for it, never more.
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> Sending {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Sending(self.clone())
    }

    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One body counted in [`InFlight`] until dropped.
struct Sending(Arc<InFlight>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The answer to a HEAD or GET of a known blob, with its faults; a GET's body is counted
/// in `in_flight` while it is being sent.
pub fn blob_response(
    entry: &mut BlobEntry,
    digest: &str,
    req: &Recorded,
    in_flight: &Arc<InFlight>,
) -> Response<FakeBody> {
    let len = entry.bytes.len() as u64;
    let range = match req.range() {
        Some(r) if !entry.faults.ignore_range => parse_range(r, len),
        _ => Ok(None),
    };
    let (start, end) = match range {
        Err(()) => {
            return with_header(
                error(416, "RANGE_INVALID", "requested range not satisfiable"),
                "content-range",
                &format!("bytes */{len}"),
            )
        }
        Ok(None) => (0, len),
        Ok(Some((s, e))) => (s, e),
    };
    let mut head = response(if range == Ok(None) { 200 } else { 206 }, Bytes::new());
    if range != Ok(None) {
        head = with_header(
            head,
            "content-range",
            &format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    head = with_header(head, "content-length", &(end - start).to_string());
    head = with_header(head, "content-type", "application/octet-stream");
    head = with_header(head, "docker-content-digest", digest);
    head = with_header(head, "accept-ranges", "bytes");
    if req.method == "HEAD" {
        return head;
    }
    let faults = entry.faults.clone();
    let mut stop = None;
    if let Some(at) = faults.cut_at.filter(|at| end > *at) {
        if faults.cut_times.is_none_or(|n| entry.cuts < n) {
            entry.cuts += 1;
            stop = Some((at.max(start), Stop::Cut));
        }
    }
    if let Some(at) = faults.stall_at.filter(|at| end > *at) {
        if stop.as_ref().is_none_or(|(cut, _)| at.max(start) < *cut) {
            stop = Some((at.max(start), Stop::Stall));
        }
    }
    let mut data = entry.bytes.slice(start as usize..end as usize);
    if let Some(c) = faults.corrupt.filter(|c| c.start < end && c.end > start) {
        let shifted = c.start.saturating_sub(start)..c.end.min(end) - start;
        data = Bytes::from(corrupted(&data, shifted));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(produce(
        tx,
        data,
        stop.map(|(at, how)| ((at - start) as usize, how)),
        faults.rate,
        in_flight.enter(),
    ));
    let (parts, _) = head.into_parts();
    Response::from_parts(parts, ChannelBody(rx).boxed())
}

/// `Range: bytes=...` against a blob of `len` bytes: `Ok(None)` to answer whole (a header
/// this fake does not understand), `Ok(Some((start, end_exclusive)))`, or `Err` for 416.
fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some((first, last)) = header
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
    else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Ok(n) = last.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len)));
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ok(None);
    };
    let end = match last {
        "" => len,
        l => match l.parse::<u64>() {
            Ok(e) if e >= start => (e + 1).min(len),
            _ => return Ok(None),
        },
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn produce(
    tx: mpsc::Sender<io::Result<Bytes>>,
    data: Bytes,
    stop: Option<(usize, Stop)>,
    rate: Option<u64>,
    sending: Sending,
) {
    let mut sending = Some(sending);
    let limit = stop.as_ref().map_or(data.len(), |(at, _)| *at);
    let chunk = rate.map_or(64 << 10, |r| (r as usize / 10).max(1));
    let mut pos = 0;
    while pos < limit {
        let n = chunk.min(limit - pos);
        if tx.send(Ok(data.slice(pos..pos + n))).await.is_err() {
            return;
        }
        pos += n;
        if pos == limit && stop.is_none() {
            drop(sending.take());
        }
        if let Some(r) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
        }
    }
    match stop {
        None => {}
        Some((_, Stop::Cut)) => {
            // Let hyper flush what was sent before the error closes the connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Err(io::Error::other("fake upstream: cut"))).await;
        }
        Some((_, Stop::Stall)) => {
            tokio::select! {
                _ = tx.closed() => {}
                _ = tokio::time::sleep(Duration::from_secs(300)) => {
                    let _ = tx.send(Err(io::Error::other("fake upstream: stalled"))).await;
                }
            }
        }
    }
}

struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
