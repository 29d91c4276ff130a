//! The one table of blob fills: the single-flight [`FlightTable`] by [`FillKey`] and, for
//! each fill task, its record — what it fills, for which repository, since when, how many
//! requests joined it, and (through its growing blob) how far along it is.
//!
//! A record lives from the claim that made a request the leader until the fill task ends
//! (its [`FillLead`] is dropped): that is what `fills_running` counts, and what a request
//! for another repository checks before joining (it joins only after the upstream confirms
//! the repository has the blob). The status page shows the records whose fill has not
//! ended. A follower that sees its fill stall can [`take_over`](FillRegistry::take_over):
//! the stalled flight leaves the table, so the next claim leads a new one.
//!
//! Owns: the table and the records. Must not: fetch, read or write anything (that is
//! `fill`), or decide who may join (that is `blobs`).

use super::fill::{FillFailure, FillKey};
use super::flight::{Claim, FlightTable, Follower, Leader};
use crate::oci::Digest;
use crate::store::GrowingBlob;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

type Flights = FlightTable<FillKey, GrowingBlob, FillFailure>;
pub(super) type FillFollower = Follower<GrowingBlob, FillFailure>;

/// One fill under way, as the status page shows it.
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

/// What a leader fills, for its record.
pub(super) struct FillOrigin {
    pub digest: Digest,
    pub upstream: String,
    pub repo: String,
    /// `upstream/repo`: the repository the fill is for.
    pub repo_key: String,
}

struct FillRecord {
    key: FillKey,
    origin: FillOrigin,
    started: Instant,
    joined: u64,
    blob: Option<Weak<GrowingBlob>>,
}

#[derive(Default)]
struct Records {
    next_id: u64,
    by_id: HashMap<u64, FillRecord>,
    /// The first upstream answer's `Cache-Status` (a parent edge's entries) of each fill
    /// that had one, for as long as its blob is alive (the answers that follow it hold it).
    upstream_statuses: HashMap<FillKey, (Weak<GrowingBlob>, String)>,
}

impl Records {
    /// The newest record of a fill for `key` (an older one may still be committing).
    fn newest(&mut self, key: &FillKey) -> Option<&mut FillRecord> {
        self.by_id
            .iter_mut()
            .filter(|(_, r)| r.key == *key)
            .max_by_key(|(id, _)| **id)
            .map(|(_, r)| r)
    }
}

type SharedRecords = Arc<Mutex<Records>>;

fn lock(records: &SharedRecords) -> MutexGuard<'_, Records> {
    records.lock().unwrap_or_else(|p| p.into_inner())
}

/// The blob fills: single flight plus each fill's record.
#[derive(Default)]
pub(super) struct FillRegistry {
    flights: Flights,
    records: SharedRecords,
}

/// The role a blob request got.
pub(super) enum FillRole {
    /// Run the fill (in a task of its own, which owns the [`FillLead`]).
    Lead(FillLead),
    /// Follow a fill already under way.
    Join(FillJoin),
}

/// A request that follows a fill under way.
pub(super) struct FillJoin {
    pub follower: FillFollower,
    /// The repository (`upstream/repo`) the fill is for; `None` when its task has ended
    /// (a spooled blob still being read).
    pub filling_under: Option<String>,
}

impl FillRegistry {
    /// Leader of a new fill for `key` (recorded with `origin`), or a follower of the one
    /// under way.
    pub fn claim(&self, key: &FillKey, origin: FillOrigin) -> FillRole {
        match self.flights.claim(key) {
            Claim::Leader(leader) => {
                let mut records = lock(&self.records);
                let id = records.next_id;
                records.next_id += 1;
                records.by_id.insert(
                    id,
                    FillRecord {
                        key: key.clone(),
                        origin,
                        started: Instant::now(),
                        joined: 0,
                        blob: None,
                    },
                );
                FillRole::Lead(FillLead {
                    leader: Some(leader),
                    id,
                    records: Arc::clone(&self.records),
                })
            }
            Claim::Follower(follower) => FillRole::Join(FillJoin {
                follower,
                filling_under: lock(&self.records)
                    .newest(key)
                    .map(|r| r.origin.repo_key.clone()),
            }),
        }
    }

    /// A request joined the fill for `key` (for the status page).
    pub fn joined(&self, key: &FillKey) {
        if let Some(r) = lock(&self.records).newest(key) {
            r.joined += 1;
        }
    }

    /// The `Cache-Status` of the first upstream answer of the fill producing `blob` (a
    /// parent edge's entries), if it had one.
    pub fn upstream_cache_status(&self, key: &FillKey, blob: &Arc<GrowingBlob>) -> Option<String> {
        lock(&self.records)
            .upstream_statuses
            .get(key)
            .filter(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(blob)))
            .map(|(_, s)| s.clone())
    }

    /// Whether a fill for `key` is under way (or a spooled one still joinable).
    pub fn contains(&self, key: &FillKey) -> bool {
        self.flights.contains(key)
    }

    /// Fill tasks still running (receiving, or making a verified blob durable).
    pub fn running(&self) -> usize {
        lock(&self.records).by_id.len()
    }

    /// The fill producing `stalled` stopped delivering bytes: it leaves the table (its
    /// task goes on), so the next claim for `key` leads a new fill. Whether it was still
    /// there (another follower may have taken over already).
    pub fn take_over(&self, key: &FillKey, stalled: &Arc<GrowingBlob>) -> bool {
        self.flights.evict_started(key, stalled)
    }

    /// The fills under way (not yet verified or failed), longest running first.
    pub fn in_progress(&self) -> Vec<FillProgress> {
        let records = lock(&self.records);
        let mut out: Vec<FillProgress> = records
            .by_id
            .values()
            .filter_map(|r| {
                let blob = r.blob.as_ref().and_then(Weak::upgrade);
                let live = match (&r.blob, &blob) {
                    (None, _) => self.flights.contains(&r.key),
                    (Some(_), Some(b)) => b.outcome().is_none(),
                    (Some(_), None) => false,
                };
                live.then(|| FillProgress {
                    digest: r.origin.digest.to_string(),
                    upstream: r.origin.upstream.clone(),
                    repo: r.origin.repo.clone(),
                    size: blob.as_ref().and_then(|b| b.size()),
                    received: blob.as_ref().map_or(0, |b| b.received()),
                    joined: r.joined,
                    seconds: r.started.elapsed().as_secs_f64(),
                })
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out
    }
}

/// The fill task's side of a fill: the flight's leader and the fill's record, which goes
/// when this is dropped (the task ended, however).
pub(super) struct FillLead {
    leader: Option<Leader<FillKey, GrowingBlob, FillFailure>>,
    id: u64,
    records: SharedRecords,
}

impl FillLead {
    /// The fill started: followers get `blob`, the record shows its progress and keeps the
    /// upstream's `Cache-Status` for the answers.
    pub fn started(&self, blob: &Arc<GrowingBlob>, upstream_cache_status: Option<String>) {
        let mut records = lock(&self.records);
        let key = records.by_id.get_mut(&self.id).map(|r| {
            r.blob = Some(Arc::downgrade(blob));
            r.key.clone()
        });
        if let (Some(key), Some(status)) = (key, upstream_cache_status) {
            let statuses = &mut records.upstream_statuses;
            statuses.retain(|_, (w, _)| w.strong_count() > 0);
            statuses.insert(key, (Arc::downgrade(blob), status));
        }
        drop(records);
        if let Some(leader) = &self.leader {
            leader.started(Arc::clone(blob));
        }
    }

    /// The fill could not start: followers get `why`.
    pub fn fail(&mut self, why: FillFailure) {
        if let Some(leader) = self.leader.take() {
            leader.fail(why);
        }
    }

    /// A follower of this fill (for the request that became the leader, and for the
    /// task's own after-start work).
    pub fn follower(&self) -> Option<FillFollower> {
        self.leader.as_ref().map(|l| l.follower())
    }

    /// The fill failed: it leaves the single-flight table now (the next request tries
    /// again) while the task finishes up.
    pub fn leave_flight(&mut self) {
        self.leader = None;
    }

    /// When the task ends, keep `blob` joinable while anyone else holds it.
    pub fn linger(&mut self, blob: &Arc<GrowingBlob>) {
        if let Some(leader) = self.leader.as_mut() {
            leader.linger(blob);
        }
    }
}

impl Drop for FillLead {
    fn drop(&mut self) {
        // The flight's leader goes first (single flight ends, or lingers), then the record.
        self.leader = None;
        lock(&self.records).by_id.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(d: Digest, repo: &str) -> FillOrigin {
        FillOrigin {
            digest: d,
            upstream: "docker.io".into(),
            repo: repo.into(),
            repo_key: format!("docker.io/{repo}"),
        }
    }

    #[test]
    fn a_record_lives_with_its_fill_task_and_tells_joiners_the_repository() {
        let registry = FillRegistry::default();
        let d = Digest::of(b"layer");
        let key = FillKey::new(d, "docker.io", false);
        let FillRole::Lead(lead) = registry.claim(&key, origin(d, "library/x")) else {
            panic!("first claim leads");
        };
        let FillRole::Join(join) = registry.claim(&key, origin(d, "library/y")) else {
            panic!("second claim joins");
        };
        assert_eq!(join.filling_under.as_deref(), Some("docker.io/library/x"));
        registry.joined(&key);
        assert_eq!(registry.running(), 1);
        let shown = registry.in_progress();
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].joined, shown[0].received), (1, 0));
        assert_eq!(shown[0].repo, "library/x");
        drop(lead);
        assert_eq!(registry.running(), 0);
        assert!(registry.in_progress().is_empty());
        assert!(!registry.contains(&key));
    }

    #[test]
    fn a_failed_fill_leaves_the_flight_but_runs_until_its_task_ends() {
        let registry = FillRegistry::default();
        let d = Digest::of(b"layer");
        let key = FillKey::new(d, "docker.io", false);
        let FillRole::Lead(mut lead) = registry.claim(&key, origin(d, "a")) else {
            panic!("leads");
        };
        lead.leave_flight();
        assert!(!registry.contains(&key));
        assert_eq!(registry.running(), 1);
        // A new fill for the key leads; the old task's end does not remove its record.
        let FillRole::Lead(next) = registry.claim(&key, origin(d, "b")) else {
            panic!("leads again");
        };
        drop(lead);
        assert_eq!(registry.running(), 1);
        let FillRole::Join(join) = registry.claim(&key, origin(d, "c")) else {
            panic!("joins");
        };
        assert_eq!(join.filling_under.as_deref(), Some("docker.io/b"));
        drop(next);
    }
}
