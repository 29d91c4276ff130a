//! The store's own upkeep task: batched recency (and what the edge saved the WAN) written
//! to the index every 10 s, expired
//! content swept every minute. The store starts it (`Store::spawn_upkeep`) and it stops
//! when its [`Upkeep`] handle is dropped.
//!
//! Owns: the schedule. Must not: run store work on async workers (each round runs on the
//! blocking pool).

use super::error::StoreError;
use std::sync::Arc;
use std::time::Duration;

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

/// One round of upkeep: flush recency, and sweep expired content when told to.
pub(crate) type Round = dyn Fn(bool) -> Result<(), StoreError> + Send + Sync;

impl Upkeep {
    /// Starts the schedule on the current tokio runtime; each round runs `round` on the
    /// blocking pool.
    pub(crate) fn spawn(round: Arc<Round>) -> Upkeep {
        Upkeep {
            task: tokio::spawn(run(round)),
        }
    }
}

async fn run(round: Arc<Round>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.tick().await; // the first tick is immediate
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let sweep = n.is_multiple_of(SWEEP_EVERY_ROUNDS);
        let round = Arc::clone(&round);
        let result = tokio::task::spawn_blocking(move || round(sweep)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "store upkeep failed"),
            Err(e) => tracing::warn!(error = %e, "store upkeep task failed"),
        }
    }
}
