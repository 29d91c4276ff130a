//! The store's own upkeep task: batched recency written to the index every 10 s, expired
//! content swept every minute. The store starts it ([`Store::spawn_upkeep`]) and it stops
//! when its [`Upkeep`] handle is dropped.
//!
//! Owns: the schedule. Must not: run store work on async workers (each round runs on the
//! blocking pool).

use super::Store;
use std::time::{Duration, SystemTime};

const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Sweeps per flush round.
const SWEEP_EVERY_ROUNDS: u64 = 6;

/// The running upkeep task; dropping this stops it.
pub struct Upkeep {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store {
    /// Starts the upkeep task on the current tokio runtime.
    pub fn spawn_upkeep(&self) -> Upkeep {
        Upkeep {
            task: tokio::spawn(run(self.clone())),
        }
    }
}

async fn run(store: Store) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.tick().await; // the first tick is immediate
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let s = store.clone();
        let sweep = n % SWEEP_EVERY_ROUNDS == 0;
        let result = tokio::task::spawn_blocking(move || {
            s.flush_access()?;
            if sweep {
                let report = s.sweep_expired(SystemTime::now())?;
                tracing::debug!(?report, "TTL sweep");
            }
            Ok::<(), super::StoreError>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "store upkeep failed"),
            Err(e) => tracing::warn!(error = %e, "store upkeep task failed"),
        }
    }
}
