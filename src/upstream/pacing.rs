//! Pacing of blob downloads: how many run at once per upstream (`max_connections`) and how
//! fast their bytes may arrive (`max_rate`, per upstream and for the whole edge).
//!
//! Owns: [`BlobSlots`] (a semaphore per upstream; a blob GET takes a [`BlobSlot`] before it
//! is sent and its body holds it until the body ends or is dropped), [`RateLimit`] (a token
//! bucket shared by every body it applies to; the edge-wide one is made by the caller of
//! `Upstream::from_config` and shared by all upstreams), [`Pace`] (the buckets one body
//! passes its bytes through) and their metrics (`upstream_blob_connections_in_use`,
//! `upstream_blob_slot_waits_total`, `upstream_rate_limited_seconds_total`).
//!
//! Must not: send requests or read bodies (`mod.rs` does, and calls [`Pace::pace`] as bytes
//! arrive), or hold a slot for anything but a blob GET: manifests, tags, tokens and HEADs
//! never wait for one, so they never queue behind blob downloads.

use crate::config::ByteRate;
use prometheus::{Counter, IntCounter, IntGauge};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// The smallest burst of a [`RateLimit`] (a tenth of a second of a slow rate would make
/// every network read wait).
const MIN_BURST: f64 = 64.0 * 1024.0;

/// A byte-rate cap: a token bucket refilled at `rate` bytes per second holding at most
/// about a tenth of a second of it (at least 64 KiB). Clones share the bucket.
///
/// Takers queue on an async mutex (first come, first served); the one at the head sleeps
/// off the bucket's debt while holding it, so a body that has to wait delays the next
/// read of its connection, and TCP's window makes the sender slow down.
#[derive(Clone)]
pub struct RateLimit {
    bucket: Arc<Bucket>,
}

struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    /// Bytes that may pass now without waiting; negative: the debt to sleep off.
    tokens: f64,
    refilled: Instant,
}

impl BucketState {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
    }
}

impl RateLimit {
    /// A full bucket for `rate`.
    pub fn new(rate: ByteRate) -> Self {
        let rate = rate.get() as f64;
        let burst = (rate / 10.0).max(MIN_BURST);
        RateLimit {
            bucket: Arc::new(Bucket {
                rate,
                burst,
                state: Mutex::new(BucketState {
                    tokens: burst,
                    refilled: Instant::now(),
                }),
            }),
        }
    }

    /// Takes `bytes` (they have arrived already) and waits until the bucket is out of
    /// debt, behind earlier takers. Returns how long it waited.
    pub(crate) async fn take(&self, bytes: usize) -> Duration {
        let started = Instant::now();
        let bucket = &*self.bucket;
        let mut state = bucket.state.lock().await;
        state.refill(Instant::now(), bucket.rate, bucket.burst);
        state.tokens -= bytes as f64;
        if state.tokens < 0.0 {
            let debt = Duration::from_secs_f64(-state.tokens / bucket.rate);
            // Held while sleeping: later takers wait their turn behind this one.
            tokio::time::sleep(debt).await;
            state.refill(Instant::now(), bucket.rate, bucket.burst);
        }
        started.elapsed()
    }
}

/// The rate caps one blob body goes through (the upstream's, then the edge's), and where
/// its waits are counted.
#[derive(Clone)]
pub(crate) struct Pace {
    limits: Vec<RateLimit>,
    waited_seconds: Counter,
}

/// Waits shorter than this are the bucket's lock, not a cap holding a body back.
const NOT_A_WAIT: Duration = Duration::from_micros(200);

impl Pace {
    pub(crate) fn new(limits: Vec<RateLimit>, waited_seconds: Counter) -> Self {
        Pace {
            limits,
            waited_seconds,
        }
    }

    /// Passes `bytes` through every cap, waiting as they say.
    pub(crate) async fn pace(&self, bytes: usize) {
        for limit in &self.limits {
            let waited = limit.take(bytes).await;
            if waited >= NOT_A_WAIT {
                self.waited_seconds.inc_by(waited.as_secs_f64());
            }
        }
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.limits.is_empty()
    }
}

/// The `max_connections` blob downloads of one upstream at once.
pub(crate) struct BlobSlots {
    semaphore: Arc<Semaphore>,
    max: usize,
    in_use: IntGauge,
    waits: IntCounter,
}

/// One blob download's slot: given back when dropped (the body that holds it ended or was
/// dropped).
pub(crate) struct BlobSlot {
    _permit: OwnedSemaphorePermit,
    in_use: IntGauge,
}

impl Drop for BlobSlot {
    fn drop(&mut self) {
        self.in_use.dec();
    }
}

impl BlobSlots {
    pub(crate) fn new(max_connections: usize, in_use: IntGauge, waits: IntCounter) -> Self {
        BlobSlots {
            semaphore: Arc::new(Semaphore::new(max_connections.max(1))),
            max: max_connections.max(1),
            in_use,
            waits,
        }
    }

    /// Slots in use now, and how many there are.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (
            self.max - self.semaphore.available_permits().min(self.max),
            self.max,
        )
    }

    /// A slot, waiting for one to be given back when all are taken (counted in
    /// `upstream_blob_slot_waits_total`).
    pub(crate) async fn acquire(&self) -> BlobSlot {
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.inc();
                self.semaphore
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the slots' semaphore is never closed")
            }
        };
        self.in_use.inc();
        BlobSlot {
            _permit: permit,
            in_use: self.in_use.clone(),
        }
    }

    /// Slots free now.
    pub(crate) fn free(&self) -> usize {
        self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bytes_per_second: u64) -> ByteRate {
        ByteRate::per_second(bytes_per_second).expect("above 0")
    }

    // Timed tests assert lower bounds only (a busy machine is slower, never faster).

    #[tokio::test]
    async fn a_bucket_lets_its_burst_through_then_holds_to_its_rate() {
        // 1 MB/s: a burst of 100 kB, then 100 ms per 100 kB.
        let limit = RateLimit::new(rate(1_000_000));
        assert!(
            limit.take(100_000).await < Duration::from_millis(50),
            "the burst is free"
        );
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        for _ in 0..3 {
            waited += limit.take(100_000).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "{:?}",
            started.elapsed()
        );
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
    }

    #[tokio::test]
    async fn a_slow_rate_still_has_a_64_kib_burst() {
        let limit = RateLimit::new(rate(10_000));
        assert!(limit.take(64 * 1024).await < Duration::from_millis(50));
        let waited = limit.take(2_000).await;
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn takers_share_the_rate() {
        let limit = RateLimit::new(rate(1_000_000));
        limit.take(100_000).await; // empty the burst
        let started = Instant::now();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    for _ in 0..4 {
                        limit.take(25_000).await;
                    }
                })
            })
            .collect();
        for taker in takers {
            taker.await.expect("taker");
        }
        // 4 × 4 × 25 kB = 400 kB at 1 MB/s, however they interleave.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(390), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn takers_over_the_rate_take_turns() {
        // Two bodies reading as fast as they can through one capped bucket: neither runs
        // ahead of the other (the bucket's queue is first come, first served).
        let limit = RateLimit::new(rate(2_000_000));
        limit.take(200_000).await; // empty the burst
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let takers: Vec<_> = (0..2)
            .map(|body| {
                let (limit, order) = (limit.clone(), order.clone());
                tokio::spawn(async move {
                    for _ in 0..8 {
                        limit.take(20_000).await;
                        order.lock().expect("order").push(body);
                    }
                })
            })
            .collect();
        for taker in takers {
            taker.await.expect("taker");
        }
        let order = order.lock().expect("order").clone();
        let longest_run = order
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest_run <= 2, "{order:?}");
    }

    #[tokio::test]
    async fn slots_cap_and_count_waits() {
        let metrics = crate::metrics::Metrics::new();
        let in_use = metrics
            .upstream_blob_connections_in_use
            .with_label_values(&["up"]);
        let waits = metrics.upstream_blob_slot_waits.with_label_values(&["up"]);
        let slots = Arc::new(BlobSlots::new(2, in_use.clone(), waits.clone()));
        let first = slots.acquire().await;
        let second = slots.acquire().await;
        assert_eq!((slots.free(), in_use.get(), waits.get()), (0, 2, 0));
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third download waits");
        assert_eq!(waits.get(), 1);
        drop(first);
        let third = waiting.await.expect("gets the slot given back");
        assert_eq!((slots.free(), in_use.get()), (0, 2));
        drop((second, third));
        assert_eq!((slots.free(), in_use.get()), (2, 0));
    }
}
