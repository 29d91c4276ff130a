//! The fill of one uncached blob, run by the leader of its flight (see `fill_registry`) in a
//! task of its own (a client that disconnects does not cancel it).
//!
//! It asks its source (`sources::BlobSource`: the upstream, unless a tier answered) once,
//! hands the store's [`GrowingBlob`](crate::store::GrowingBlob) to every follower, and
//! pumps the body into it: each frame is pushed to the readers the moment it arrives (and
//! handed to the input's hash thread) and queued for a blocking writer thread that puts it
//! on disk with buffered writes. The input waits only when the writer is far behind
//! (bounded memory). A broken upstream body is resumed with `Range` from the bytes
//! received (`resume`). At the end the input verifies the digest, which releases the last
//! byte to every reader; then the writer makes the chunks durable and commits the blob,
//! off every client's critical path. A fill whose blob the store is not keeping (larger
//! than the budget) stops once nobody has read it for [`UNREAD_GRACE`]; a stored blob's
//! fill always completes, so the next pull is a hit.
//!
//! Must not: read the blob's bytes back, or decide where they are kept (that is the
//! store's), or know about HTTP.

use super::fill_registry::FillLead;
use super::pieces::{self, PieceRule};
use super::resume::{ResumeFrom, ResumingBody};
use super::sources::BlobSource;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoTarget};
use crate::store::{BlobInput, GrowingBlob, GrowthFailure, Keeping, Store};
use crate::upstream::{BlobResponse, UpstreamError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Why a fill could not start.
#[derive(Clone, Debug)]
pub(super) enum FillFailure {
    NotFound,
    Unavailable(String),
    /// The upstream is rate-limiting us (429, or 503 with `Retry-After`).
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
    },
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

/// Everything a fill task needs.
pub(super) struct FillJob {
    pub store: Store,
    /// The upstream's blobs: the first request (unless a tier answered) and every resume.
    pub source: Arc<dyn BlobSource>,
    pub target: RepoTarget,
    pub digest: Digest,
    /// `upstream/repo`, recorded with the stored blob.
    pub repo_key: String,
    pub metrics: Arc<Metrics>,
    /// Test hook: wait this long between verifying and committing.
    pub hold_commit: Duration,
    /// How a large blob is cut into ranged pieces (see `pieces`).
    pub pieces: PieceRule,
    /// A fill of a blob the store is not keeping stops after nobody read it this long
    /// ([`UNREAD_GRACE`]).
    pub unread_grace: Duration,
}

pub(super) fn map_upstream(e: &UpstreamError) -> FillFailure {
    if e.is_not_found() {
        FillFailure::NotFound
    } else if let UpstreamError::RateLimited {
        status,
        retry_after,
    } = e
    {
        FillFailure::RateLimited {
            status: *status,
            retry_after: *retry_after,
        }
    } else {
        FillFailure::Unavailable(e.to_string())
    }
}

/// Counts the fill in `fills_in_flight` for as long as it lives.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fills_in_flight.dec();
    }
}

/// The leader's task.
pub(super) async fn run(job: FillJob, lead: FillLead) {
    run_from(job, lead, None).await
}

/// [`run`] with the blob's bytes from another tier (the shared tier, the owning peer),
/// read and verified like the upstream's; `None`: ask the upstream. Resumes after a broken
/// body go to the upstream.
pub(super) async fn run_from(job: FillJob, mut lead: FillLead, from_tier: Option<BlobResponse>) {
    job.metrics.fills_in_flight.inc();
    let _in_flight = InFlight(job.metrics.clone());
    let first = match from_tier {
        Some(response) => Ok(pieces::FirstAnswer {
            response,
            waited: Duration::ZERO,
        }),
        None => pieces::first_request(&job).await,
    };
    let pieces::FirstAnswer {
        response: first,
        waited,
    } = match first {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(digest = %job.digest, upstream = %job.target.upstream, error = %e, "blob fill could not start");
            job.metrics.fills_ended.with_label_values(&["failed"]).inc();
            lead.fail(map_upstream(&e));
            return;
        }
    };
    let (blob, mut input, mut writer) = job.store.begin_growing(job.digest, first.size);
    lead.started(&blob, first.cache_status.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Bytes>>();
    let (repo_key, hold) = (job.repo_key.clone(), job.hold_commit);
    let writer_task = tokio::task::spawn_blocking(move || {
        while let Some(batch) = rx.blocking_recv() {
            for frame in batch {
                writer.write(&frame);
            }
        }
        writer.finish(&repo_key, hold)
    });
    let mut queue = WriterQueue {
        tx,
        batch: Vec::new(),
        bytes: 0,
        unread: Unread::new(job.unread_grace),
    };
    let pumped = match pieces::pieces_for(&job.pieces, &first, waited) {
        Some(plan) => pieces::pump(&job, &mut input, first, &mut queue, plan).await,
        None => pump(&job, &mut input, first, &mut queue).await,
    };
    queue.flush();
    let ended = match pumped {
        Ok(()) => {
            input.hashed_all().await;
            input.finish()
        }
        Err(f) => {
            input.fail(f.clone());
            Err(f)
        }
    };
    drop(queue);
    if ended.is_err() {
        // A failed fill leaves the table now: the next request tries again.
        lead.leave_flight();
    }
    let keeping = writer_task.await.unwrap_or(Keeping::MemoryOnly);
    let label = match (&ended, keeping) {
        (Err(GrowthFailure::Abandoned), Keeping::Spooled | Keeping::MemoryOnly) => {
            tracing::info!(digest = %job.digest, upstream = %job.target.upstream, at = blob.received(), "nobody reads this blob any more and it is not being stored (larger than the budget, or no room): its fill stopped");
            "abandoned"
        }
        (Err(GrowthFailure::Mismatch(m)), _) => {
            job.metrics.digest_mismatches.inc();
            tracing::error!(digest = %job.digest, upstream = %job.target.upstream, "{m}; nothing stored, clients aborted");
            "failed"
        }
        (Err(f), _) => {
            tracing::warn!(digest = %job.digest, upstream = %job.target.upstream, error = %f, "blob fill failed");
            "failed"
        }
        (Ok(()), Keeping::Stored | Keeping::Storing) => "stored",
        (Ok(()), Keeping::Spooled) => "spooled",
        (Ok(()), Keeping::MemoryOnly) => "memory",
    };
    job.metrics.fills_ended.with_label_values(&[label]).inc();
    if keeping == Keeping::Spooled && blob.all_on_file() {
        // Requests that come while readers still hold the spool join it.
        lead.linger(&blob);
    }
}

/// Frames for the writer thread, handed over in batches (one thread wake-up per batch, not
/// per frame), and whether anyone still reads a blob that is not being stored.
pub(super) struct WriterQueue {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Bytes>>,
    batch: Vec<Bytes>,
    bytes: usize,
    unread: Unread,
}

/// How long a pass-through fill (a blob the store is not keeping: larger than the budget,
/// or no room) goes on with nobody reading it before it stops. Fetching the rest would
/// only spend WAN for bytes that are thrown away; a stored blob's fill always completes.
pub(super) const UNREAD_GRACE: Duration = Duration::from_secs(5);
/// How often a fill looks at its readers.
const UNREAD_CHECK: Duration = Duration::from_millis(200);

/// When a pass-through fill last had a reader (`since`: nobody since then).
struct Unread {
    checked: std::time::Instant,
    since: Option<std::time::Instant>,
    grace: Duration,
}

impl Unread {
    fn new(grace: Duration) -> Unread {
        Unread {
            checked: std::time::Instant::now(),
            since: None,
            grace,
        }
    }

    /// `Err(Abandoned)` once `blob` is not being stored and has had no reader (a client
    /// stream, a waiter, a shared-tier upload) for the grace period.
    fn check(&mut self, blob: &GrowingBlob) -> Result<(), GrowthFailure> {
        let now = std::time::Instant::now();
        if now.duration_since(self.checked) < UNREAD_CHECK {
            return Ok(());
        }
        self.checked = now;
        let passing_through = matches!(blob.keeping(), Keeping::Spooled | Keeping::MemoryOnly);
        if !passing_through || blob.watchers() > 0 {
            self.since = None;
            return Ok(());
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= self.grace {
            return Err(GrowthFailure::Abandoned);
        }
        Ok(())
    }
}

/// Bytes gathered before the writer thread is woken.
const WRITER_BATCH: usize = 1 << 20;

impl WriterQueue {
    pub(super) fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.batch.push(frame);
        if self.bytes >= WRITER_BATCH {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        if !self.batch.is_empty() {
            // The writer going away only means the bytes stay in memory.
            let _ = self.tx.send(std::mem::take(&mut self.batch));
            self.bytes = 0;
        }
    }
}

/// Reads the source's body (resuming after breaks) into the growing blob and the writer.
async fn pump(
    job: &FillJob,
    input: &mut BlobInput,
    first: BlobResponse,
    queue: &mut WriterQueue,
) -> Result<(), GrowthFailure> {
    let size = first.size;
    let resume_from = ResumeFrom {
        source: Arc::clone(&job.source),
        target: job.target.clone(),
        digest: job.digest,
        resumes: Some(job.metrics.fill_resumes.clone()),
    };
    let mut body = ResumingBody::new(first, input.received(), size, resume_from)?;
    loop {
        while let Some(bytes) = body.next_frame().await {
            deliver(input, queue, bytes).await?;
        }
        // The writer gets what it has while the resume waits.
        queue.flush();
        if !body.resume().await? {
            return Ok(());
        }
    }
}

/// Hands the blob's next bytes to the growing blob (its readers and hash) and the writer,
/// then waits while the writer is far behind.
pub(super) async fn deliver(
    input: &mut BlobInput,
    queue: &mut WriterQueue,
    bytes: Bytes,
) -> Result<(), GrowthFailure> {
    input.push(bytes.clone())?;
    queue.push(bytes);
    input.writer_caught_up().await;
    queue.unread.check(input.blob())
}
