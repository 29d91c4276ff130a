//! Connection workers: one single-threaded tokio runtime per core, each serving the
//! connections it is handed from the first byte to the close, the way nginx runs one worker
//! process per core.
//!
//! On tokio's work-stealing runtime every readable socket woke a second worker to look for
//! work: a futex wake per small request, about a fifth of the CPU a 300-byte blob hit
//! costs. A connection pinned to one thread has no one to wake. A new connection goes to
//! the worker with the fewest open connections.
//!
//! Owns: the worker threads (started once per process and kept for its lifetime, like
//! tokio's blocking pool, so a task a connection starts may outlive the connection) and
//! choosing a worker. Must not: host what other connections wait for or shutdown drains:
//! blob fills run on the daemon's runtime (the cache spawns them there).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::runtime::Handle;

struct Worker {
    handle: Handle,
    /// Connections this worker serves now.
    open: Arc<AtomicUsize>,
}

/// The process's connection workers.
pub struct ConnWorkers {
    workers: Vec<Worker>,
}

/// Counts a connection as open on its worker until dropped.
struct OpenConn(Arc<AtomicUsize>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnWorkers {
    /// The process's workers, started on first use: one per core the process may use.
    /// When no thread can be started there are none, and [`spawn`](Self::spawn) runs
    /// connections on the caller's runtime.
    pub fn shared() -> &'static ConnWorkers {
        static WORKERS: OnceLock<ConnWorkers> = OnceLock::new();
        WORKERS.get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            ConnWorkers::start(n)
        })
    }

    fn start(n: usize) -> ConnWorkers {
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            match start_worker(i) {
                Ok(handle) => workers.push(Worker {
                    handle,
                    open: Arc::new(AtomicUsize::new(0)),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection worker thread; serving connections on the main runtime");
                    break;
                }
            }
        }
        ConnWorkers { workers }
    }

    /// Runs `conn` on the least busy worker (first polled on that worker's thread, so a
    /// socket it registers there belongs to that worker's reactor); with no workers, on the
    /// caller's runtime.
    pub fn spawn<F>(&self, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            tokio::spawn(conn);
            return;
        };
        w.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenConn(w.open.clone());
        w.handle.spawn(async move {
            let _open = open;
            conn.await
        });
    }
}

fn start_worker(i: usize) -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("sparkcr-conn-{i}"))
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[tokio::test]
    async fn a_connection_runs_on_a_worker_thread_and_leaves_its_count() {
        let workers = ConnWorkers::start(2);
        assert_eq!(workers.workers.len(), 2);
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            // A socket made here registers with this worker's reactor.
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await;
            let _ = tx.send((thread_name(), l.is_ok()));
        });
        let (name, bound) = rx.await.expect("the worker ran the connection");
        assert!(name.starts_with("sparkcr-conn-"), "ran on {name:?}");
        assert!(bound);
        // The count drops when the connection's future ends.
        for _ in 0..100 {
            if workers
                .workers
                .iter()
                .all(|w| w.open.load(Ordering::Relaxed) == 0)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("a finished connection still counts as open");
    }

    #[tokio::test]
    async fn a_new_connection_goes_to_the_least_busy_worker() {
        let workers = ConnWorkers::start(2);
        let (hold_tx, hold_rx) = oneshot::channel::<()>();
        let (first_tx, first_rx) = oneshot::channel();
        workers.spawn(async move {
            let _ = first_tx.send(thread_name());
            let _ = hold_rx.await;
        });
        let first = first_rx.await.expect("first connection ran");
        let (second_tx, second_rx) = oneshot::channel();
        workers.spawn(async move {
            let _ = second_tx.send(thread_name());
        });
        let second = second_rx.await.expect("second connection ran");
        assert_ne!(first, second, "both connections went to one worker");
        drop(hold_tx);
    }

    #[tokio::test]
    async fn with_no_workers_a_connection_runs_on_the_callers_runtime() {
        let workers = ConnWorkers {
            workers: Vec::new(),
        };
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            let _ = tx.send(thread_name());
        });
        let name = rx.await.expect("the connection ran");
        assert!(!name.starts_with("sparkcr-conn-"), "ran on {name:?}");
    }
}
