//! Log lines gathered in memory and written to stderr in batches, so that a busy server
//! makes about a thousand `write(2)`s a second however many lines it logs, and a quiet one
//! writes each line at once.
//!
//! A line is written by the logger itself when the last write is at least [`COALESCE`] old
//! (always the case when the server is quiet), when the batch is full, or when it is a
//! warning or an error. Otherwise it waits in the batch, and the flusher thread (woken once
//! per batch, not once per line) writes it [`COALESCE`] later.
//!
//! A busy server logs a line per request; writing each with its own `write(2)` under
//! stderr's lock (shared by every worker), or waking a writer thread for each, costs more
//! than serving a small blob. Here a line is a copy under a short lock.
//!
//! Must not: format lines (tracing-subscriber does), lose a line logged before the
//! [`BatchGuard`] dropped, or hold the batch lock while writing.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in memory.
pub const COALESCE: Duration = Duration::from_millis(1);
/// A batch this large is written by the logger that filled it.
const BATCH_BYTES: usize = 64 << 10;

struct Batch {
    lines: Vec<u8>,
    last_write: Instant,
    /// The flusher has been asked to write this batch.
    flusher_asked: bool,
    stop: bool,
}

struct Shared {
    batch: Mutex<Batch>,
    /// Held while a batch is taken and written, so batches go out in order.
    out: Mutex<Box<dyn Write + Send>>,
    wake: Condvar,
    /// A flusher thread runs (else loggers write every line themselves).
    flusher: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Writes out everything logged so far.
    fn flush(&self) {
        let mut out = lock(&self.out);
        let lines = {
            let mut b = lock(&self.batch);
            b.last_write = Instant::now();
            b.flusher_asked = false;
            std::mem::take(&mut b.lines)
        };
        if !lines.is_empty() {
            // Nowhere to report a failure to write the log.
            let _ = out.write_all(&lines).and_then(|()| out.flush());
        }
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let write_now = {
            let mut b = lock(&self.batch);
            b.lines.extend_from_slice(line);
            let now = urgent
                || !self.flusher.load(Ordering::Relaxed)
                || b.lines.len() >= BATCH_BYTES
                || b.last_write.elapsed() >= COALESCE;
            if !now && !b.flusher_asked {
                b.flusher_asked = true;
                self.wake.notify_one();
            }
            now
        };
        if write_now {
            self.flush();
        }
    }

    /// The flusher thread: once asked, waits [`COALESCE`] for more lines, then writes them.
    fn run_flusher(&self) {
        loop {
            {
                let mut b = lock(&self.batch);
                while !b.flusher_asked && !b.stop {
                    b = self.wake.wait(b).unwrap_or_else(|p| p.into_inner());
                }
                if b.stop {
                    return;
                }
            }
            std::thread::sleep(COALESCE);
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

/// A batched writer in front of `out`, and the guard of its flusher thread (when no thread
/// can be started, every line is written at once).
pub fn batched(out: Box<dyn Write + Send>) -> (BatchedWriter, BatchGuard) {
    let shared = Arc::new(Shared {
        batch: Mutex::new(Batch {
            lines: Vec::with_capacity(BATCH_BYTES),
            last_write: Instant::now(),
            flusher_asked: false,
            stop: false,
        }),
        out: Mutex::new(out),
        wake: Condvar::new(),
        flusher: AtomicBool::new(true),
    });
    let runner = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("sparkcr-log".into())
        .spawn(move || runner.run_flusher())
        .ok();
    if thread.is_none() {
        shared.flusher.store(false, Ordering::Relaxed);
    }
    let writer = BatchedWriter(Arc::clone(&shared));
    (writer, BatchGuard { shared, thread })
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        lock(&self.shared.batch).stop = true;
        self.shared.wake.notify_all();
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
    fn a_line_on_a_quiet_server_is_written_at_once() {
        let rec = Recorder::default();
        let (w, _guard) = batched(Box::new(rec.clone()));
        std::thread::sleep(COALESCE * 2);
        writeln!(w.make_writer(), "alone").unwrap();
        assert_eq!(rec.text(), "alone\n");
    }

    #[test]
    fn a_burst_goes_out_in_few_writes_in_order_and_soon() {
        let rec = Recorder::default();
        let (w, _guard) = batched(Box::new(rec.clone()));
        for i in 0..1000 {
            writeln!(w.make_writer(), "line {i}").unwrap();
        }
        std::thread::sleep(COALESCE * 20);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(rec.text(), expected);
        assert!(rec.writes() < 100, "{} writes for 1000 lines", rec.writes());
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
