//! The fill of one uncached blob, run by the [`flight`](super::flight) leader in a task of
//! its own (a client that disconnects does not cancel it).
//!
//! It asks the upstream once, hands the store's [`GrowingBlob`] to every follower, and
//! pumps the body into it: each frame is pushed to the readers the moment it arrives (and
//! handed to the input's hash thread) and queued for a blocking writer thread that puts it on disk with buffered
//! writes. The input waits only when the writer is far behind (bounded memory). A broken
//! upstream body is resumed with `Range` from the bytes received (a few tries with
//! backoff). At the end the input verifies the digest, which releases the last byte to
//! every reader; then the writer makes the chunks durable and commits the blob, off every
//! client's critical path.
//!
//! Must not: read the blob's bytes back, or decide where they are kept (that is the
//! store's), or know about HTTP.

use super::flight::{FlightTable, Leader};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName};
use crate::store::{BlobInput, GrowingBlob, GrowthFailure, Keeping, Store};
use crate::upstream::{BlobBody, BlobResponse, Upstream, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How many times a broken upstream body is resumed before the fill gives up.
pub(super) const RESUME_TRIES: u32 = 4;

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

pub(super) type Fills = FlightTable<FillKey, GrowingBlob, FillFailure>;
pub(super) type FillLeader = Leader<FillKey, GrowingBlob, FillFailure>;

/// Everything a fill task needs.
pub(super) struct FillJob {
    pub store: Store,
    pub upstream: Upstream,
    pub repo: RepositoryName,
    pub digest: Digest,
    /// `upstream/repo`, recorded with the stored blob.
    pub repo_key: String,
    pub metrics: Arc<Metrics>,
    /// Test hook: wait this long between verifying and committing.
    pub hold_commit: Duration,
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
pub(super) async fn run(job: FillJob, leader: FillLeader) {
    run_from(job, leader, None).await
}

/// [`run`] with the blob's bytes from another tier (the shared tier, the owning peer),
/// read and verified like the upstream's; `None`: ask the upstream. Resumes after a broken
/// body go to the upstream.
pub(super) async fn run_from(job: FillJob, leader: FillLeader, from_tier: Option<BlobResponse>) {
    job.metrics.fills_in_flight.inc();
    let _in_flight = InFlight(job.metrics.clone());
    let first = match from_tier {
        Some(r) => Ok(r),
        None => job.upstream.blob(&job.repo, &job.digest, None).await,
    };
    let first = match first {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(digest = %job.digest, upstream = %job.upstream.name(), error = %e, "blob fill could not start");
            job.metrics.fills_ended.with_label_values(&["failed"]).inc();
            leader.fail(map_upstream(&e));
            return;
        }
    };
    let (blob, mut input, mut writer) = job.store.begin_growing(job.digest, first.size);
    leader.started(Arc::clone(&blob));
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
    };
    let pumped = pump(&job, &mut input, first, &mut queue).await;
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
    let mut leader = Some(leader);
    if ended.is_err() {
        // A failed fill leaves the table now: the next request tries again.
        leader = None;
    }
    let keeping = writer_task.await.unwrap_or(Keeping::MemoryOnly);
    let label = match (&ended, keeping) {
        (Err(GrowthFailure::Mismatch(m)), _) => {
            job.metrics.digest_mismatches.inc();
            tracing::error!(digest = %job.digest, upstream = %job.upstream.name(), "{m}; nothing stored, clients aborted");
            "failed"
        }
        (Err(f), _) => {
            tracing::warn!(digest = %job.digest, upstream = %job.upstream.name(), error = %f, "blob fill failed");
            "failed"
        }
        (Ok(()), Keeping::Stored | Keeping::Storing) => "stored",
        (Ok(()), Keeping::Spooled) => "spooled",
        (Ok(()), Keeping::MemoryOnly) => "memory",
    };
    job.metrics.fills_ended.with_label_values(&[label]).inc();
    if let Some(leader) = leader.as_mut() {
        if keeping == Keeping::Spooled && blob.all_on_file() {
            // Requests that come while readers still hold the spool join it.
            leader.linger(&blob);
        }
    }
}

/// Frames for the writer thread, handed over in batches (one thread wake-up per batch, not
/// per frame).
struct WriterQueue {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Bytes>>,
    batch: Vec<Bytes>,
    bytes: usize,
}

/// Bytes gathered before the writer thread is woken.
const WRITER_BATCH: usize = 1 << 20;

impl WriterQueue {
    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.batch.push(frame);
        if self.bytes >= WRITER_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            // The writer going away only means the bytes stay in memory.
            let _ = self.tx.send(std::mem::take(&mut self.batch));
            self.bytes = 0;
        }
    }
}

/// An upstream body answering a request from byte `at`, yielding only bytes from `at` on:
/// an upstream that ignored the `Range` and started earlier has its head skipped.
pub(super) struct ResumedBody {
    body: BlobBody,
    skip: u64,
    broke: Option<String>,
}

impl ResumedBody {
    /// `None` when `response` starts after `at` (bytes would be missing).
    pub fn new(response: BlobResponse, at: u64) -> Option<ResumedBody> {
        (response.start <= at).then(|| ResumedBody {
            skip: at - response.start,
            body: response.body,
            broke: None,
        })
    }

    /// The next non-empty frame; `None` at the end of the body or when it broke (see
    /// [`broke`](Self::broke)).
    pub async fn next(&mut self) -> Option<Bytes> {
        while let Some(frame) = self.body.next().await {
            let mut bytes = match frame {
                Ok(b) => b,
                Err(e) => {
                    self.broke = Some(e.to_string());
                    return None;
                }
            };
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64) as usize;
                bytes = bytes.slice(n..);
                self.skip -= n as u64;
            }
            if !bytes.is_empty() {
                return Some(bytes);
            }
        }
        None
    }

    /// Why the body ended early, if it broke.
    pub fn broke(self) -> Option<String> {
        self.broke
    }
}

/// An empty body, standing in for a resume request that failed (counted as a break).
fn no_body() -> BlobBody {
    BlobBody::from_stream(futures_util::stream::iter(Vec::<
        Result<Bytes, UpstreamError>,
    >::new()))
}

/// Reads the upstream body (resuming after breaks) into the growing blob and the writer.
async fn pump(
    job: &FillJob,
    input: &mut BlobInput,
    first: BlobResponse,
    queue: &mut WriterQueue,
) -> Result<(), GrowthFailure> {
    let size = first.size;
    let mut response = first;
    let mut tries = 0;
    loop {
        let received = input.received();
        let start = response.start;
        let Some(mut body) = ResumedBody::new(response, received) else {
            return Err(GrowthFailure::Source(format!(
                "upstream resumed at byte {start} but {received} were received"
            )));
        };
        while let Some(bytes) = body.next().await {
            input.push(bytes.clone())?;
            queue.push(bytes);
            input.writer_caught_up().await;
        }
        let broke = body.broke();
        let received = input.received();
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
            return Err(GrowthFailure::Source(format!(
                "upstream failed mid-blob; gave up after {RESUME_TRIES} resumes: {why}"
            )));
        }
        queue.flush();
        let backoff = Duration::from_millis(200 * (1 << (tries - 1)));
        tracing::warn!(digest = %job.digest, received, tries, error = %why, "upstream broke mid-blob; resuming with Range");
        tokio::time::sleep(backoff).await;
        job.metrics.fill_resumes.inc();
        response = match job
            .upstream
            .blob(&job.repo, &job.digest, Some((received, None)))
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                return Err(GrowthFailure::Source(
                    "the upstream no longer has this blob".into(),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "resume request failed");
                BlobResponse {
                    size,
                    start: received,
                    body: no_body(),
                }
            }
        };
    }
}
