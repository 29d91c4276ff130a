//! Per-connection limits the HTTP stack does not give: the cap on open connections
//! (`server.max_connections`) and the idle timeout (`server.idle_timeout`: a connection
//! with no request in flight for that long is closed, for HTTP/1.1 keep-alive and h2 alike).
//!
//! Owns: counting requests in flight per connection and knowing when it went idle.
//! Must not: read requests or write responses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight on one connection and when the last one started or ended.
pub struct ConnActivity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` of the last start or end of a request.
    last_ms: AtomicU64,
}

/// Held by a response body: the request is in flight until it drops.
pub struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnActivity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::SeqCst);
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = self.born + Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        Some(last.elapsed())
    }

    /// Resolves once no request has been in flight for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let last = self.born + Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
            let quiet_since = last.elapsed();
            if self.in_flight.load(Ordering::SeqCst) == 0 && quiet_since >= idle {
                return;
            }
            let wait = idle
                .saturating_sub(quiet_since)
                .max(Duration::from_millis(100));
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_only_without_requests_in_flight() {
        let a = ConnActivity::new();
        let guard = a.begin();
        let idle = a.idle(Duration::from_millis(150));
        tokio::pin!(idle);
        // A long request keeps the connection busy.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), idle.as_mut())
                .await
                .is_err()
        );
        drop(guard);
        let started = Instant::now();
        idle.await;
        assert!(started.elapsed() >= Duration::from_millis(140));
    }
}
