//! Log lines gathered in memory and written to stderr in batches: by a flusher thread every
//! [`FLUSH_EVERY`], by the logger whose line fills the batch, and at once for warnings and
//! errors (so the line explaining a failure is out before the process acts on it).
//!
//! A busy server logs a line per request; writing each one with its own `write(2)` under
//! stderr's lock (shared by every worker), or handing each to a writer thread that must be
//! woken, costs more than serving a small blob. Here a line is a copy under a short lock.
//!
//! Must not: format lines (tracing-subscriber does), lose a line that was logged before the
//! [`BatchGuard`] dropped, or hold the batch lock while writing.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written by the logger that filled it.
const BATCH_BYTES: usize = 64 << 10;

struct Shared {
    batch: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches go out in order.
    out: Mutex<Box<dyn Write + Send>>,
    stop: Mutex<bool>,
    stopping: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Writes out everything logged so far.
    fn flush(&self) {
        let mut out = lock(&self.out);
        let lines = std::mem::take(&mut *lock(&self.batch));
        if !lines.is_empty() {
            // Nowhere to report a failure to write the log.
            let _ = out.write_all(&lines).and_then(|()| out.flush());
        }
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let full = {
            let mut batch = lock(&self.batch);
            batch.extend_from_slice(line);
            batch.len() >= BATCH_BYTES
        };
        if full || urgent {
            self.flush();
        }
    }
}

/// The writer handed to tracing-subscriber.
#[derive(Clone)]
pub struct BatchedWriter(Arc<Shared>);

/// Keeps the flusher thread; dropping it writes out every line logged so far.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A batched writer in front of `out`, and the guard of its flusher thread (`None` when no
/// thread could be started: then every line is written at once).
pub fn batched(out: Box<dyn Write + Send>) -> (BatchedWriter, BatchGuard) {
    let shared = Arc::new(Shared {
        batch: Mutex::new(Vec::with_capacity(BATCH_BYTES)),
        out: Mutex::new(out),
        stop: Mutex::new(false),
        stopping: Condvar::new(),
    });
    let flusher = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("sparkcr-log".into())
        .spawn(move || {
            let mut stop = lock(&flusher.stop);
            while !*stop {
                stop = flusher
                    .stopping
                    .wait_timeout(stop, FLUSH_EVERY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                flusher.flush();
            }
        })
        .ok();
    let writer = BatchedWriter(Arc::clone(&shared));
    (writer, BatchGuard { shared, thread })
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.stopping.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.flush();
    }
}

/// One event's writer: tracing-subscriber writes a whole line through it.
pub struct LineWriter {
    shared: Arc<Shared>,
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            shared: Arc::clone(&self.0),
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            shared: Arc::clone(&self.0),
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what reached it, write by write.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0).concat()).into_owned()
        }
        fn writes(&self) -> usize {
            lock(&self.0).len()
        }
    }

    #[test]
    fn lines_go_out_together_in_order_within_the_flush_interval() {
        let rec = Recorder::default();
        let (w, _guard) = batched(Box::new(rec.clone()));
        for i in 0..100 {
            writeln!(w.make_writer(), "line {i}").unwrap();
        }
        // (the flusher may have ticked once meanwhile)
        assert!(rec.writes() <= 1, "{} writes for 100 lines", rec.writes());
        std::thread::sleep(FLUSH_EVERY * 4);
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(rec.text(), expected);
        assert!(rec.writes() <= 2, "{} writes for 100 lines", rec.writes());
    }

    #[test]
    fn dropping_the_guard_writes_out_every_line() {
        let rec = Recorder::default();
        let (w, guard) = batched(Box::new(rec.clone()));
        writeln!(w.make_writer(), "last words").unwrap();
        drop(guard);
        assert_eq!(rec.text(), "last words\n");
    }

    #[test]
    fn a_full_batch_is_written_by_the_logger_that_filled_it() {
        let rec = Recorder::default();
        let (w, _guard) = batched(Box::new(rec.clone()));
        let line = "x".repeat(1000) + "\n";
        for _ in 0..(BATCH_BYTES / line.len() + 1) {
            w.make_writer().write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(rec.writes(), 1, "the batch went out when it filled");
    }

    #[test]
    fn warnings_are_written_at_once_after_the_lines_before_them() {
        let rec = Recorder::default();
        let (w, _guard) = batched(Box::new(rec.clone()));
        writeln!(w.make_writer(), "info").unwrap();
        let mut warn = LineWriter {
            shared: Arc::clone(&w.0),
            urgent: true,
        };
        writeln!(warn, "warn").unwrap();
        assert_eq!(rec.text(), "info\nwarn\n");
    }
}
