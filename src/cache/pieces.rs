//! A large blob fetched as parallel ranged pieces, so that one big layer is not held to one
//! TCP flow's window on a long path (150 ms RTT and 4 MiB in flight: 25 MB/s per flow).
//!
//! The rule (constants below, `cache.fill_pieces` for the number in flight):
//! - The fill's first request asks for `bytes=0-(FIRST_PIECE-1)` (4 MiB). A `206` whose
//!   `Content-Range` says a total above that means the source honours ranges: the rest of
//!   the blob is cut into pieces that partition it (each byte asked for once, so upstream
//!   bytes stay 1.0× the blob). A `200` (range ignored), a `206` without a total, or a
//!   blob of at most 4 MiB: one stream, resumed after breaks, exactly as without pieces
//!   (a `416`, an empty blob, is asked for again without `Range`).
//! - Pieces pay only on a long path. A flow carries at most its window per round trip, so
//!   one stream is window-bound only where the round trip is long; on a LAN or loopback a
//!   flow already runs at the link's rate and pieces only add a reorder buffer, spool-file
//!   writes and requests (measured on loopback: a 1 GiB cold miss 2.86 s in pieces against
//!   2.26 s in one stream, peak RSS +40 MiB). So the fill times the first request (from
//!   asking to the answer's headers: at least one round trip, plus the connection and the
//!   token when they were cold): under `SLOW_PATH` (10 ms; a 4 MiB window over 10 ms
//!   carries 400 MB/s) the rest of the blob is one more request read after the first
//!   piece, one stream; at or over it, the rest is cut into pieces as below.
//! - After the first piece, pieces are the rest ÷ 32, at least 8 MiB (4 MiB on a long
//!   path, 100 ms or more to the first answer's headers) and at most 64 MiB: a blob up to
//!   2 GiB has at most about 32 pieces, and no piece is small enough that its request's
//!   round trip dominates (4 MiB is a round trip's window at 150 ms and 1.4 s of a 3 MB/s
//!   lossy flow, so a 16 MiB layer there is four pieces at once; on a short path a piece
//!   carries a few round trips' worth anyway). How many run at once is the blob's width
//!   (`piece_width`): 4 at the start, more while more raise the blob's rate, at most
//!   `cache.fill_pieces` (default 16) and never an upstream's last free connections. A
//!   piece starts only within 2 × the width pieces of the one the prefix is in (which
//!   bounds what waits on the spool file).
//! - Bytes go to the growing blob in order: a piece's bytes ahead of the prefix wait in
//!   the fill's reorder buffer (`reorder`: at most 8 MiB in memory, the rest on an unlinked
//!   spool file under the store's `tmp/`). If that file cannot be made or written (a full
//!   disk), the bytes stay in memory and no further piece starts until those running end:
//!   the rest of the blob is fetched one piece at a time (a write error fails no blob).
//! - A piece that breaks is asked for again from the byte it reached, alone (the resume
//!   loop's strict piece form: `resume`); a piece that still fails after its tries fails
//!   the fill, like a single stream does. Every answer must be a `206` from exactly the
//!   byte asked for and of the same total; anything else fails the fill (never a guess).
//! - The whole blob's sha256 is checked at the end as always: a corrupt piece means no
//!   client gets a complete response and nothing is stored.
//!
//! Owns: the piece rule, running the pieces and putting their bytes in order. Must not:
//! verify or keep bytes (the growing blob and its writer do), know about HTTP, or fetch a
//! blob from a tier (a tier's answer is one stream, see `tiered`).

use super::fill::{self, FillJob, WriterQueue};
use super::piece_width::{self, PieceWidth};
use super::reorder::{ReorderBuffer, REORDER_MEMORY};
use super::resume::{ResumeFrom, ResumingBody};
use crate::metrics::Metrics;
use crate::oci::BlobSpan;
use crate::store::{BlobInput, GrowthFailure};
use crate::upstream::{BlobResponse, UpstreamError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The first request's range: `bytes=0-(FIRST_PIECE-1)`. Blobs up to this size are one
/// request.
pub const FIRST_PIECE: u64 = 4 << 20;
/// Smallest piece after the first.
pub const MIN_PIECE: u64 = 8 << 20;
/// Smallest piece after the first on a long path (see `piece_width::is_long`): one round
/// trip's window at 150 ms, 1.4 s of a 3 MB/s lossy flow.
pub const MIN_PIECE_LONG: u64 = 4 << 20;
/// Largest piece.
pub const MAX_PIECE: u64 = 64 << 20;
/// Pieces after the first aim at the rest of the blob ÷ this.
pub const PIECES_PER_BLOB: u64 = 32;
/// The default of `cache.fill_pieces`: the most pieces of one blob in flight at once.
pub const DEFAULT_IN_FLIGHT: usize = 16;
/// The first request's time to headers at and over which the rest of a blob is fetched in
/// pieces (under it: one stream, see the module doc).
pub const SLOW_PATH: Duration = Duration::from_millis(10);
/// Events queued from the pieces to the fill (frames and ends).
const EVENTS: usize = 32;

/// How a large blob is cut into pieces (see the module doc). Tests use small sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceRule {
    /// Most pieces of one blob in flight at once (`cache.fill_pieces`); `1` turns pieces
    /// off (one stream per blob).
    pub in_flight: usize,
    /// Pieces in flight at the start; the width grows from here (`piece_width`).
    pub start: usize,
    pub first: u64,
    pub min_len: u64,
    /// Smallest piece on a long path.
    pub min_len_long: u64,
    pub max_len: u64,
    pub per_blob: u64,
    /// Bytes ahead of the prefix held in memory, at most.
    pub reorder_memory: u64,
    /// Pieces only when the first request's answer took at least this long (`SLOW_PATH`;
    /// zero: always).
    pub slow_path: Duration,
}

impl Default for PieceRule {
    fn default() -> Self {
        PieceRule::with_in_flight(DEFAULT_IN_FLIGHT)
    }
}

impl PieceRule {
    /// The production rule with at most `in_flight` pieces at once (`0` counts as `1`),
    /// starting with [`piece_width::START`].
    pub fn with_in_flight(in_flight: usize) -> PieceRule {
        PieceRule {
            in_flight: in_flight.max(1),
            start: piece_width::START.min(in_flight.max(1)),
            first: FIRST_PIECE,
            min_len: MIN_PIECE,
            min_len_long: MIN_PIECE_LONG,
            max_len: MAX_PIECE,
            per_blob: PIECES_PER_BLOB,
            reorder_memory: REORDER_MEMORY,
            slow_path: SLOW_PATH,
        }
    }

    fn enabled(&self) -> bool {
        self.in_flight > 1 && self.first > 0
    }

    /// The pieces of a blob of `total` bytes, partitioning it; the first is `[0, first)`.
    fn plan(&self, total: u64, long_path: bool) -> Vec<BlobSpan> {
        let rest = total.saturating_sub(self.first);
        let min = if long_path {
            self.min_len_long
        } else {
            self.min_len
        }
        .max(1);
        let len = rest
            .div_ceil(self.per_blob.max(1))
            .clamp(min, self.max_len.max(min));
        let mut spans = Vec::new();
        let mut at = 0;
        while at < total {
            let end = if at == 0 {
                self.first.min(total)
            } else {
                (at + len).min(total)
            };
            spans.extend(BlobSpan::between(at, end));
            at = end;
        }
        spans
    }
}

/// The fill's first answer, and how long it took to come.
pub(super) struct FirstAnswer {
    pub response: BlobResponse,
    /// From asking to the answer's headers.
    pub waited: Duration,
}

/// The fill's first request: the first piece when pieces are on, else the whole blob.
/// A source that refuses the range (`416`: an empty blob) or answers it without a total
/// is asked again without `Range`.
pub(super) async fn first_request(job: &FillJob) -> Result<FirstAnswer, UpstreamError> {
    let asked = Instant::now();
    let answer = |response: BlobResponse| FirstAnswer {
        response,
        waited: asked.elapsed(),
    };
    let whole = || job.source.blob(&job.target, &job.digest, BlobSpan::WHOLE);
    let first = BlobSpan::between(0, job.pieces.first).filter(|_| job.pieces.enabled());
    let Some(span) = first else {
        return whole().await.map(|b| answer(b.response));
    };
    match job.source.blob(&job.target, &job.digest, span).await {
        Ok(b) if b.response.partial && b.response.size.is_none() => {
            whole().await.map(|b| answer(b.response))
        }
        Ok(b) => Ok(answer(b.response)),
        Err(UpstreamError::Status { status: 416, .. }) => whole().await.map(|b| answer(b.response)),
        Err(e) => Err(e),
    }
}

/// The rest of a blob after its first piece, and how many of its pieces run at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PiecePlan {
    /// Partitioning the blob; the first is the one the first request asked for.
    pub spans: Vec<BlobSpan>,
    /// Pieces in flight at the start, and at most.
    pub start: usize,
    pub most: usize,
    /// The round trip's estimate: the first request's time to headers.
    pub rtt: Duration,
}

/// The plan for the blob `first` answers, when it is the first piece of a blob larger than
/// it (a `206` from byte 0 with a total): pieces when the answer took `slow_path` or more,
/// else the rest as one request after it. `None`: read `first` as one stream.
pub(super) fn pieces_for(
    rule: &PieceRule,
    first: &BlobResponse,
    waited: Duration,
) -> Option<PiecePlan> {
    let total = first.size?;
    if !(rule.enabled() && first.partial && first.start == 0 && total > rule.first) {
        return None;
    }
    Some(if waited >= rule.slow_path {
        PiecePlan {
            spans: rule.plan(total, piece_width::is_long(waited)),
            start: piece_width::start_for(rule.start, waited).clamp(1, rule.in_flight),
            most: rule.in_flight,
            rtt: waited,
        }
    } else {
        PiecePlan {
            spans: [(0, rule.first), (rule.first, total)]
                .into_iter()
                .filter_map(|(a, b)| BlobSpan::between(a, b))
                .collect(),
            start: 1,
            most: 1,
            rtt: waited,
        }
    })
}

/// Starts fetching the piece `span` (`first`: its answer, when already asked for).
fn spawn_piece(
    job: &FillJob,
    tasks: &mut JoinSet<()>,
    span: BlobSpan,
    first: Option<BlobResponse>,
    total: u64,
    events: &mpsc::Sender<Event>,
) {
    let from = ResumeFrom {
        source: Arc::clone(&job.source),
        target: job.target.clone(),
        digest: job.digest,
        resumes: Some(job.metrics.fill_resumes.clone()),
    };
    tasks.spawn(fetch_piece(
        span,
        first,
        total,
        from,
        events.clone(),
        job.metrics.clone(),
    ));
}

/// What a piece tells the fill.
enum Event {
    /// Bytes of the blob from `offset` on.
    Frame { offset: u64, bytes: Bytes },
    /// The piece ended: all its bytes were sent, or it failed after its tries.
    Done(Result<(), GrowthFailure>),
}

/// Counts a piece in `fill_pieces_in_flight` while it runs.
struct PieceInFlight(Arc<Metrics>);

impl PieceInFlight {
    fn new(metrics: Arc<Metrics>) -> PieceInFlight {
        metrics.fill_pieces_in_flight.inc();
        PieceInFlight(metrics)
    }
}

impl Drop for PieceInFlight {
    fn drop(&mut self) {
        self.0.fill_pieces_in_flight.dec();
    }
}

/// One piece: its bytes, resumed from the byte reached after a break, sent in order.
async fn fetch_piece(
    span: BlobSpan,
    first: Option<BlobResponse>,
    total: u64,
    from: ResumeFrom,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let _in_flight = PieceInFlight::new(metrics.clone());
    let read = async {
        let mut body = ResumingBody::piece(span, first, total, from).await?;
        loop {
            while let Some(bytes) = body.next_frame().await {
                let offset = body.at() - bytes.len() as u64;
                if events.send(Event::Frame { offset, bytes }).await.is_err() {
                    // The fill is gone.
                    return Ok(body.resumes());
                }
            }
            if !body.resume().await? {
                return Ok(body.resumes());
            }
        }
    };
    let result: Result<u32, GrowthFailure> = read.await;
    let label = match &result {
        Ok(0) => "ok",
        Ok(_) => "retried",
        Err(_) => "failed",
    };
    metrics.fill_pieces.with_label_values(&[label]).inc();
    let _ = events.send(Event::Done(result.map(|_| ()))).await;
}

/// Reads the pieces of `plan` (the first answered by `first`) into the growing blob and the
/// writer, in order, with at most `plan.in_flight` running.
pub(super) async fn pump(
    job: &FillJob,
    input: &mut BlobInput,
    first: BlobResponse,
    queue: &mut WriterQueue,
    plan: PiecePlan,
) -> Result<(), GrowthFailure> {
    let spans = plan.spans;
    let total = spans.last().and_then(|s| s.end()).unwrap_or(0);
    let store = job.store.clone();
    let mut reorder = ReorderBuffer::new(
        job.pieces.reorder_memory,
        Box::new(move || store.create_spool().map_err(|e| e.to_string())),
    );
    input.lend_ahead(reorder.view());
    let mut tasks = JoinSet::new();
    let result = run_pieces(
        job,
        (input, queue),
        first,
        &mut tasks,
        (
            &spans,
            PieceWidth::new(plan.start, plan.most, plan.rtt, Instant::now()),
        ),
        total,
        &mut reorder,
    )
    .await;
    // A failed fill stops its pieces before it says so (and no piece outlives its fill).
    tasks.shutdown().await;
    job.metrics
        .fill_pieces_spooled_bytes
        .inc_by(reorder.spooled());
    tracing::debug!(digest = %job.digest, pieces = spans.len(), spooled = reorder.spooled(), peak_memory = reorder.peak_memory(), ok = result.is_ok(), "pieced fill ended");
    result
}

/// [`pump`]'s loop: starts pieces, puts their bytes in order, until every piece ended.
async fn run_pieces(
    job: &FillJob,
    (input, queue): (&mut BlobInput, &mut WriterQueue),
    first: BlobResponse,
    tasks: &mut JoinSet<()>,
    (spans, mut width): (&[BlobSpan], PieceWidth),
    total: u64,
    reorder: &mut ReorderBuffer,
) -> Result<(), GrowthFailure> {
    let (tx, mut rx) = mpsc::channel(EVENTS);
    let (mut started, mut next, mut done) = (vec![false; spans.len()], 0, 0);
    let piece_of = |offset: u64| spans.partition_point(|s| s.end().is_some_and(|e| e <= offset));
    let failed = |e: super::reorder::ReorderError| GrowthFailure::Source(e.to_string());
    // The first answer is the first piece's.
    spawn_piece(job, tasks, spans[0], Some(first), total, &tx);
    started[0] = true;
    let mut running = 1;
    while done < spans.len() {
        let prefix_piece = piece_of(input.received());
        // Without a spool file (a full disk) no piece runs ahead of the prefix's.
        let limit = if reorder.spool_failed() {
            1
        } else {
            width.width()
        };
        let ahead = 2 * width.width();
        // A piece a reader waits in starts first (when a place is free: no running piece
        // is stopped for it).
        if running < limit && !reorder.spool_failed() {
            for want in input.blob().wanted_from(input.received()) {
                let i = piece_of(want);
                if running < limit && i < spans.len() && !started[i] {
                    job.metrics.fill_pieces_wanted.inc();
                    spawn_piece(job, tasks, spans[i], None, total, &tx);
                    (started[i], running) = (true, running + 1);
                }
            }
        }
        while running < limit && next < spans.len() && next < prefix_piece + ahead {
            if !started[next] {
                spawn_piece(job, tasks, spans[next], None, total, &tx);
                (started[next], running) = (true, running + 1);
            }
            next += 1;
        }
        while next < spans.len() && started[next] {
            next += 1;
        }
        if next == spans.len() {
            width.settle();
        }
        let event = next_event(&mut rx, tasks).await?;
        if let Some(Event::Frame { bytes, .. }) = &event {
            let spare = || job.source.spare_connections();
            if width.arrived(bytes.len() as u64, Instant::now(), spare) {
                job.metrics.fill_pieces_widened.inc();
            }
        }
        match event {
            Some(Event::Frame { offset, bytes }) if offset == input.received() => {
                fill::deliver(input, queue, bytes).await?;
                while let Some(b) = reorder.take(input.received()).await.map_err(failed)? {
                    fill::deliver(input, queue, b).await?;
                }
            }
            Some(Event::Frame { offset, bytes }) => {
                reorder.insert(offset, bytes).await.map_err(failed)?;
                // Wake readers only when one waits past the prefix.
                if input.blob().waits_from(input.received() + 1) {
                    input.landed_ahead();
                }
            }
            Some(Event::Done(Ok(()))) => {
                running -= 1;
                done += 1;
            }
            Some(Event::Done(Err(f))) => return Err(f),
            None => break,
        }
    }
    let received = input.received();
    if received != total {
        return Err(GrowthFailure::Source(format!(
            "the pieces ended at byte {received} of {total}"
        )));
    }
    Ok(())
}

/// The next event of the pieces; a piece's task that panicked fails the fill.
async fn next_event(
    rx: &mut mpsc::Receiver<Event>,
    tasks: &mut JoinSet<()>,
) -> Result<Option<Event>, GrowthFailure> {
    loop {
        tokio::select! {
            biased;
            e = rx.recv() => return Ok(e),
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    return Err(GrowthFailure::Source(format!("a piece's task failed: {e}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_partition_the_blob_and_follow_the_rule() {
        let rule = PieceRule::default();
        for total in [
            FIRST_PIECE + 1,
            16 << 20,
            100 << 20,
            (1 << 30) + 7,
            (10 << 30) + 3,
        ] {
            let spans = rule.plan(total, false);
            assert_eq!(spans[0], BlobSpan::between(0, FIRST_PIECE).expect("span"));
            let mut at = 0;
            for s in &spans {
                assert_eq!(
                    s.start(),
                    at,
                    "{total}: pieces leave no gap and never overlap"
                );
                let len = s.bounded_len().expect("bounded");
                assert!(len <= MAX_PIECE);
                at = s.end().expect("bounded");
            }
            assert_eq!(at, total);
            let middle = &spans[1..spans.len() - 1];
            assert!(middle.iter().all(|s| s.bounded_len() >= Some(MIN_PIECE)));
            assert!(
                spans.len() as u64 <= PIECES_PER_BLOB + 2 || total > MAX_PIECE * PIECES_PER_BLOB
            );
        }
        assert_eq!(
            rule.plan(100 << 20, false).len(),
            1 + ((100u64 << 20) - FIRST_PIECE).div_ceil(MIN_PIECE) as usize
        );
    }

    #[test]
    fn small_blobs_and_ignored_ranges_are_one_stream() {
        let rule = PieceRule::default();
        let answer = |partial, size| BlobResponse {
            cache_status: None,
            size,
            start: 0,
            partial,
            body: crate::upstream::BlobBody::from_stream(futures_util::stream::empty()),
        };
        let slow = SLOW_PATH;
        assert!(pieces_for(&rule, &answer(true, Some(FIRST_PIECE)), slow).is_none());
        assert!(pieces_for(&rule, &answer(false, Some(64 << 20)), slow).is_none());
        assert!(pieces_for(&rule, &answer(true, None), slow).is_none());
        let one = PieceRule::with_in_flight(1);
        assert!(pieces_for(&one, &answer(true, Some(64 << 20)), slow).is_none());
        let plan = pieces_for(&rule, &answer(true, Some(64 << 20)), slow).expect("pieces");
        assert_eq!(
            (plan.start, plan.most),
            (piece_width::START, DEFAULT_IN_FLIGHT)
        );
        assert_eq!(plan.spans, rule.plan(64 << 20, false));
        let long = pieces_for(
            &rule,
            &answer(true, Some(64 << 20)),
            Duration::from_millis(150),
        )
        .expect("pieces");
        assert_eq!(long.spans, rule.plan(64 << 20, true));
        assert_eq!(long.spans.len(), 16, "4 MiB pieces on a long path");
        assert_eq!(plan.spans.len(), 9, "the first 4 MiB, then 8 MiB pieces");
    }

    #[test]
    fn a_fast_path_reads_the_rest_as_one_stream() {
        let rule = PieceRule::default();
        let answer = BlobResponse {
            cache_status: None,
            size: Some(1 << 30),
            start: 0,
            partial: true,
            body: crate::upstream::BlobBody::from_stream(futures_util::stream::empty()),
        };
        let fast = SLOW_PATH - Duration::from_millis(1);
        let plan = pieces_for(&rule, &answer, fast).expect("a plan");
        assert_eq!((plan.start, plan.most), (1, 1), "one request at a time");
        assert_eq!(
            plan.spans,
            vec![
                BlobSpan::between(0, FIRST_PIECE).expect("span"),
                BlobSpan::between(FIRST_PIECE, 1 << 30).expect("span"),
            ]
        );
        let slow = pieces_for(&rule, &answer, SLOW_PATH).expect("a plan");
        assert!(slow.spans.len() > 2 && slow.most == DEFAULT_IN_FLIGHT);
    }
}
