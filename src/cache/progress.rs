//! The blob fills under way, as the status page shows them: which blob, for which
//! repository, how far along, and how many requests joined it.
//!
//! Owns: a read-only record kept beside the single-flight table (`flight.rs` stays
//! unaware of it): `blobs.rs` notes who led and who joined each fill; the growing blob
//! itself says how many bytes arrived. Must not: change or wait for any fill.

use super::fill::FillKey;
use crate::oci::Digest;
use crate::store::GrowingBlob;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// One fill under way.
#[derive(Clone, Debug, Serialize)]
pub struct FillProgress {
    pub digest: String,
    pub upstream: String,
    pub repo: String,
    /// `None` until the upstream said (or when it never does).
    pub size: Option<u64>,
    pub received: u64,
    /// Requests that joined this fill besides the one that started it.
    pub joined: u64,
    pub seconds: f64,
}

struct Entry {
    digest: Digest,
    upstream: String,
    repo: String,
    started: Instant,
    blob: Option<Weak<GrowingBlob>>,
    joined: u64,
}

impl Entry {
    /// Still under way: its blob is alive and not finished, or (not started yet) the
    /// single-flight table still has the fill (`under_way`). A leading request that went
    /// away before the start leaves no trace.
    fn live(&self, key: &FillKey, under_way: &dyn Fn(&FillKey) -> bool) -> bool {
        match &self.blob {
            None => under_way(key),
            Some(w) => w.upgrade().is_some_and(|b| b.outcome().is_none()),
        }
    }
}

#[derive(Default)]
pub(super) struct FillBoard {
    entries: Mutex<HashMap<FillKey, Entry>>,
}

impl FillBoard {
    fn lock(&self) -> MutexGuard<'_, HashMap<FillKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request became the leader of the fill for `key`; `under_way` asks the
    /// single-flight table whether a fill is still there.
    pub fn led(
        &self,
        key: &FillKey,
        (digest, upstream, repo): (Digest, &str, &str),
        under_way: &dyn Fn(&FillKey) -> bool,
    ) {
        let mut entries = self.lock();
        entries.retain(|k, e| e.live(k, under_way));
        entries.insert(
            key.clone(),
            Entry {
                digest,
                upstream: upstream.to_string(),
                repo: repo.to_string(),
                started: Instant::now(),
                blob: None,
                joined: 0,
            },
        );
    }

    /// The fill for `key` started producing `blob`.
    pub fn started(&self, key: &FillKey, blob: &Arc<GrowingBlob>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.blob = Some(Arc::downgrade(blob));
        }
    }

    /// The fill for `key` could not start.
    pub fn ended(&self, key: &FillKey) {
        self.lock().remove(key);
    }

    /// A request joined the fill for `key`.
    pub fn joined(&self, key: &FillKey) {
        if let Some(e) = self.lock().get_mut(key) {
            e.joined += 1;
        }
    }

    /// The fills under way, longest running first.
    pub fn snapshot(&self, under_way: &dyn Fn(&FillKey) -> bool) -> Vec<FillProgress> {
        let mut entries = self.lock();
        entries.retain(|k, e| e.live(k, under_way));
        let mut out: Vec<FillProgress> = entries
            .values()
            .map(|e| {
                let blob = e.blob.as_ref().and_then(Weak::upgrade);
                FillProgress {
                    digest: e.digest.to_string(),
                    upstream: e.upstream.clone(),
                    repo: e.repo.clone(),
                    size: blob.as_ref().and_then(|b| b.size()),
                    received: blob.as_ref().map_or(0, |b| b.received()),
                    joined: e.joined,
                    seconds: e.started.elapsed().as_secs_f64(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_not_started_shows_while_the_flight_table_has_it() {
        let board = FillBoard::default();
        let d = Digest::of(b"layer");
        let key = FillKey::new(d, "docker.io", false);
        board.led(&key, (d, "docker.io", "library/x"), &|_| true);
        board.joined(&key);
        let shown = board.snapshot(&|_| true);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (shown[0].joined, shown[0].received, shown[0].size),
            (1, 0, None)
        );
        assert_eq!(shown[0].digest, d.to_string());
        // The leading request went away before the fill started: gone.
        assert!(board.snapshot(&|_| false).is_empty());
        board.joined(&key);
        assert!(board.snapshot(&|_| true).is_empty());
    }
}
