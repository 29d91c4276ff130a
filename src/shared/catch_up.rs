//! Catch-up (`[storage.shared] catch_up = true`): the writes through the tier missed while
//! it was down or failing (blobs filled from an upstream, manifests by digest) are
//! remembered — digest, kind and the repository the object carries — and uploaded from the
//! local store once the tier answers again.
//!
//! Rules: remembered only with `catch_up` on, and only what the write-through would have
//! written (so never content of a `private = true` upstream: the cache never writes it
//! through). A blob is remembered once its fill is verified and committed (a fill that
//! fails is never remembered). At most `catch_up_max` items: beyond it the oldest is
//! forgotten (`dropped`). One background task runs a pass whenever the tier is marked up
//! again (the probe, or any successful operation) and something is pending: items go up
//! one at a time, oldest first; an object already in the tier (`HEAD`) or no longer in the
//! local store is skipped; a blob is streamed from the local store through the same
//! [`ObjectUpload`] as a write-through, and completed only after the bytes read back
//! hashed to the digest (else aborted, never retried). The tier failing again stops the
//! pass and keeps the item (it is given up after three such failures).
//!
//! Must not: write to the local store, load a blob whole into memory, or hold up a pull
//! (everything here runs in its own task).

use super::upload::ObjectUpload;
use super::SharedTier;
use crate::oci::{Digest, Sha256Verifier};
use crate::store::{GrowingBlob, Keeping, Store};
use object_store::ObjectStoreExt;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// An item is given up after the tier failed on it this many times.
const MAX_ATTEMPTS: u8 = 3;

/// How long a missed blob's fill may take to commit after verification before it is
/// remembered anyway (a pass then skips it if it is still not stored).
const COMMIT_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Blob,
    Manifest,
}

/// One write the tier missed.
#[derive(Debug)]
struct Missed {
    kind: Kind,
    digest: Digest,
    /// `upstream/repo`, recorded with the object.
    repo: String,
    /// Passes the tier failed on this item.
    attempts: u8,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<Missed>,
    keys: HashSet<(Kind, Digest)>,
}

/// The remembered writes of one tier (present only with `catch_up = true`).
pub(super) struct CatchUp {
    max: usize,
    pending: Mutex<Pending>,
    /// Woken when the tier answers again, or when an item is remembered while it is up.
    wake: Arc<Notify>,
}

impl CatchUp {
    pub(super) fn new(max: usize) -> CatchUp {
        CatchUp {
            max: max.max(1),
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What became of one item.
enum Done {
    Uploaded(u64),
    /// Already in the tier, or no longer in the local store.
    Skipped(&'static str),
    /// The local copy is unusable (does not match its digest, or cannot be read).
    Failed(String),
    /// The tier failed (and is marked down): the item stays pending.
    TierFailed,
}

#[derive(Default)]
struct PassCounts {
    uploaded: u64,
    skipped: u64,
    failed: u64,
    bytes: u64,
}

impl SharedTier {
    pub(super) fn catches_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// Remembers a write the tier missed (with `catch_up` on; a no-op otherwise).
    pub(super) fn missed(&self, kind: Kind, digest: Digest, repo: String) {
        let Some(c) = &self.catch_up else { return };
        let dropped = {
            let mut p = c.lock();
            if !p.keys.insert((kind, digest)) {
                return;
            }
            p.queue.push_back(Missed {
                kind,
                digest,
                repo,
                attempts: 0,
            });
            let dropped = forget_over(&mut p, c.max);
            self.metrics
                .tiers
                .shared_catch_up_pending
                .set(p.queue.len() as i64);
            dropped
        };
        if dropped > 0 {
            self.count_catch_up("dropped", dropped);
            tracing::debug!(
                dropped,
                max = c.max,
                "catch-up: forgot the oldest missed writes (storage.shared.catch_up_max)"
            );
        }
        // The tier may have come back between the failure and now.
        if self.is_up() {
            c.wake();
        }
    }

    /// Remembers a blob whose write-through the tier missed, once its fill is verified and
    /// committed to the local store (a fill that fails, or a blob the store could not keep,
    /// is not remembered).
    pub(super) async fn missed_blob_once_stored(&self, blob: Arc<GrowingBlob>, repo: String) {
        if blob.verified().await.is_err() {
            return;
        }
        let mut changed = blob.subscribe();
        let committed = tokio::time::timeout(COMMIT_WAIT, async {
            loop {
                changed.borrow_and_update();
                if blob.keeping() != Keeping::Storing {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if committed.is_ok() && blob.keeping() != Keeping::Stored {
            tracing::debug!(digest = %blob.digest(), "catch-up: the blob was not stored locally; nothing to catch up from");
            return;
        }
        self.missed(Kind::Blob, *blob.digest(), repo);
    }

    fn count_catch_up(&self, outcome: &str, n: u64) {
        self.metrics
            .tiers
            .shared_catch_up
            .with_label_values(&[outcome])
            .inc_by(n);
    }

    /// Runs a catch-up pass from `store` whenever the tier is marked up again with writes
    /// pending (only with `catch_up` on). Ends with the daemon's runtime.
    pub fn spawn_catch_up(self: &Arc<Self>, store: Store) -> Option<tokio::task::JoinHandle<()>> {
        let wake = Arc::clone(&self.catch_up.as_ref()?.wake);
        let tier = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(tier) = tier.upgrade() else { return };
                tier.catch_up_pass(&store).await;
            }
        }))
    }

    /// Uploads the pending writes from `store`, oldest first, until none is left or the
    /// tier fails again.
    pub(super) async fn catch_up_pass(&self, store: &Store) {
        let Some(c) = &self.catch_up else { return };
        let pending = c.lock().queue.len();
        if pending == 0 || !self.is_up() {
            return;
        }
        tracing::info!(tier = %self.describe, pending, "shared tier: catching up the writes it missed");
        let mut n = PassCounts::default();
        let mut stopped = false;
        while self.is_up() {
            let Some(mut item) = c.lock().queue.pop_front() else {
                break;
            };
            let done = match item.kind {
                Kind::Blob => self.catch_up_blob(store, &item).await,
                Kind::Manifest => self.catch_up_manifest(store, &item).await,
            };
            let mut p = c.lock();
            match done {
                Done::TierFailed if item.attempts + 1 < MAX_ATTEMPTS => {
                    item.attempts += 1;
                    p.queue.push_front(item);
                    stopped = true;
                    break;
                }
                Done::TierFailed => {
                    p.keys.remove(&(item.kind, item.digest));
                    n.failed += 1;
                    self.count_catch_up("failed", 1);
                    tracing::warn!(digest = %item.digest, attempts = MAX_ATTEMPTS, "catch-up: the shared tier failed on this write every time; giving it up");
                    stopped = true;
                }
                Done::Uploaded(bytes) => {
                    p.keys.remove(&(item.kind, item.digest));
                    n.uploaded += 1;
                    n.bytes += bytes;
                    self.count_catch_up("uploaded", 1);
                }
                Done::Skipped(why) => {
                    p.keys.remove(&(item.kind, item.digest));
                    n.skipped += 1;
                    self.count_catch_up("skipped", 1);
                    tracing::debug!(digest = %item.digest, why, "catch-up: skipped");
                }
                Done::Failed(why) => {
                    p.keys.remove(&(item.kind, item.digest));
                    n.failed += 1;
                    self.count_catch_up("failed", 1);
                    tracing::error!(digest = %item.digest, error = %why, "catch-up: the local copy cannot be uploaded; nothing written to the shared tier");
                }
            }
            self.metrics
                .tiers
                .shared_catch_up_pending
                .set(p.queue.len() as i64);
            drop(p);
            if stopped {
                break;
            }
        }
        let left = c.lock().queue.len();
        tracing::info!(
            tier = %self.describe,
            uploaded = n.uploaded,
            bytes = n.bytes,
            skipped = n.skipped,
            failed = n.failed,
            left,
            stopped_by_tier = stopped || !self.is_up(),
            "shared tier: catch-up pass ended"
        );
    }

    /// Whether the object is already in the tier: `None` when the tier failed.
    async fn exists(&self, key: &object_store::path::Path) -> Option<bool> {
        self.bounded("head", self.objects.head(key))
            .await
            .map(|found| found.is_some())
    }

    async fn catch_up_blob(&self, store: &Store, item: &Missed) -> Done {
        let d = item.digest;
        let key = self.blob_key(&d);
        match self.exists(&key).await {
            None => return Done::TierFailed,
            Some(true) => return Done::Skipped("already in the shared tier"),
            Some(false) => {}
        }
        let size = match store.blob(&d) {
            Ok(Some(info)) => info.size,
            Ok(None) => return Done::Skipped("no longer in the local store"),
            Err(e) => return Done::Failed(format!("local store: {e}")),
        };
        // Pinned while it is read: not evicted under the upload.
        let reader = match store.read_blob(&d, 0, size) {
            Ok(Some(r)) => r,
            Ok(None) => return Done::Skipped("no longer in the local store"),
            Err(e) => return Done::Failed(format!("local store: {e}")),
        };
        let mut upload = ObjectUpload::new(self, key, super::repo_attributes(&item.repo));
        let mut hash = Sha256Verifier::new();
        let mut tier_error = None;
        for frame in reader {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    upload.abort(&d).await;
                    return Done::Failed(format!("local store: {e}"));
                }
            };
            hash.update(&frame);
            if let Err(e) = upload.push(frame).await {
                tier_error = Some(e);
                break;
            }
        }
        if tier_error.is_none() {
            let (read, got) = (hash.len(), hash.finish());
            if got != d || read != size {
                upload.abort(&d).await;
                return Done::Failed(format!(
                    "the local copy ({read} bytes) hashes to {got}; run `sparkcr-edge cache verify`"
                ));
            }
            match upload.complete().await {
                Ok(bytes) => {
                    self.answered();
                    self.metrics
                        .tiers
                        .shared_bytes
                        .with_label_values(&["written"])
                        .inc_by(bytes);
                    return Done::Uploaded(bytes);
                }
                Err(e) => tier_error = Some(e),
            }
        }
        upload.abort(&d).await;
        let why = tier_error.map_or_else(String::new, |e| super::one_line(&e.to_string()));
        self.failed("upload", &why);
        Done::TierFailed
    }

    async fn catch_up_manifest(&self, store: &Store, item: &Missed) -> Done {
        let d = item.digest;
        let key = self.manifest_key(&d);
        match self.exists(&key).await {
            None => return Done::TierFailed,
            Some(true) => return Done::Skipped("already in the shared tier"),
            Some(false) => {}
        }
        let m = match store.manifest(&d) {
            Ok(Some(m)) => m,
            Ok(None) => return Done::Skipped("no longer in the local store"),
            Err(e) => return Done::Failed(format!("local store: {e}")),
        };
        let got = Digest::of(&m.bytes);
        if got != d {
            return Done::Failed(format!(
                "the local copy hashes to {got}; run `sparkcr-edge cache verify`"
            ));
        }
        match self
            .write_manifest(&d, m.media_type, m.bytes, &item.repo)
            .await
        {
            Some(len) => Done::Uploaded(len),
            None => Done::TierFailed,
        }
    }
}

/// Forgets the oldest items beyond `max`; how many.
fn forget_over(p: &mut Pending, max: usize) -> u64 {
    let mut dropped = 0;
    while p.queue.len() > max {
        if let Some(old) = p.queue.pop_front() {
            p.keys.remove(&(old.kind, old.digest));
            dropped += 1;
        }
    }
    dropped
}
