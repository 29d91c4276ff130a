//! The audit file: a record becomes a JSON line on the request's thread and is appended to
//! a shared in-memory buffer (one short lock, a copy: a request never waits for the disk and
//! wakes no thread). One writer thread takes the whole buffer at least every quarter second
//! (sooner once 64 KiB are waiting) and writes it out, so `sparkcr-edge audit` sees a record
//! within a second. Before a line would take the file past `max_size` the file is rotated:
//! `audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.<keep>` (the oldest removed). A new
//! file is made with mode 0640 (records name clients and repositories).
//!
//! If the writer falls behind by more than 8 MiB (the disk far slower than the requests) or
//! a write fails, records are dropped, counted, and a warning is logged at most once a
//! minute: the audit never slows or fails a pull.

use super::AuditRecord;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes waiting for the writer at most; records beyond are dropped.
const MAX_PENDING: usize = 8 << 20;
/// Waiting bytes that wake the writer before its next round.
const WAKE_AT: usize = 64 << 10;
/// The writer takes what is waiting at least this often.
const ROUND: Duration = Duration::from_millis(250);
/// At most one warning about dropped records per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuditFileError {
    #[error("cannot open the audit file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the audit writer: {0}")]
    Thread(std::io::Error),
}

/// Where and how much: `[audit]`'s `path`, `max_size` and `keep`.
#[derive(Clone, Debug)]
pub struct AuditFileSettings {
    pub path: PathBuf,
    /// The file is rotated before it would pass this many bytes.
    pub max_size: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
    /// Counts records written to the file.
    pub written: prometheus::IntCounter,
    /// Counts records dropped (queue full, a failed write).
    pub dropped: prometheus::IntCounter,
}

/// The open audit file (see the module docs). Dropping it writes out what is waiting.
pub struct AuditFile {
    shared: Arc<Shared>,
    written: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
    writer: Option<JoinHandle<()>>,
}

/// What the requests and the writer share: the lines waiting, and the writer's wake-up.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The file is being closed: the writer writes what is left and ends.
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AuditFile {
    /// Opens (or creates) the file now, so a mistake in `path` stops the start.
    pub fn open(settings: AuditFileSettings) -> Result<AuditFile, AuditFileError> {
        let file = open_append(&settings.path).map_err(|source| AuditFileError::Open {
            path: settings.path.clone(),
            source,
        })?;
        let size = file.metadata().map_or(0, |m| m.len());
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let (written, dropped) = (settings.written.clone(), settings.dropped.clone());
        let writer = Writer {
            settings,
            out: file,
            size,
            cut_line: false,
            last_warning: None,
            reported: 0,
            last_error: None,
        };
        let for_writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&for_writer))
            .map_err(AuditFileError::Thread)?;
        Ok(AuditFile {
            shared,
            written,
            dropped,
            writer: Some(handle),
        })
    }

    /// Appends `record` for the writer (never waits on the disk; dropped, and counted, when
    /// the writer is more than 8 MiB behind).
    pub fn write(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut pending = self.shared.lock();
        if pending.closing || pending.lines.len() + line.len() > MAX_PENDING {
            drop(pending);
            self.dropped.inc();
            return;
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(&line);
        let wake = before < WAKE_AT && pending.lines.len() >= WAKE_AT;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Records written to the file so far.
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// Records dropped so far (the writer too far behind, or a failed write).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

impl Drop for AuditFile {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The path of rotated file `n` (`audit.jsonl.1` is the newest).
pub(super) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

struct Writer {
    settings: AuditFileSettings,
    out: File,
    /// The last write failed part-way: the file may end inside a line.
    cut_line: bool,
    /// Bytes in the current file.
    size: u64,
    last_warning: Option<Instant>,
    /// Dropped records already warned about.
    reported: u64,
    /// The last write or rotation error since the last warning.
    last_error: Option<String>,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let mut taken = Vec::new();
        loop {
            let closing = {
                let mut pending = shared.lock();
                if !pending.closing && pending.lines.len() < WAKE_AT {
                    pending = shared
                        .wake
                        .wait_timeout(pending, ROUND)
                        .map_or_else(|p| p.into_inner().0, |(g, _)| g);
                }
                // Swap buffers: the requests go on appending to the one just emptied.
                std::mem::swap(&mut pending.lines, &mut taken);
                pending.closing
            };
            self.write_batch(&taken);
            taken.clear();
            self.report();
            if closing {
                return;
            }
        }
    }

    /// Writes `batch` (whole lines) to the file, rotating between lines where the file
    /// would pass `max_size`; counts each line written or dropped.
    fn write_batch(&mut self, batch: &[u8]) {
        let (mut run_start, mut run_lines, mut at) = (0, 0u64, 0);
        for line in batch.split_inclusive(|b| *b == b'\n') {
            let run_len = (at - run_start) as u64;
            if self.size + run_len > 0
                && self.size + run_len + line.len() as u64 > self.settings.max_size
            {
                self.write_run(&batch[run_start..at], run_lines);
                if let Err(e) = self.rotate() {
                    self.last_error = Some(format!("cannot rotate the audit file: {e}"));
                }
                (run_start, run_lines) = (at, 0);
            }
            at += line.len();
            run_lines += 1;
        }
        self.write_run(&batch[run_start..at], run_lines);
    }

    /// Appends `lines` (`n` of them) in one write.
    fn write_run(&mut self, lines: &[u8], n: u64) {
        if n == 0 {
            return;
        }
        // A write that failed part-way left a line without its end: end it first, so the
        // next record is a line of its own (the cut one is skipped by readers).
        if self.cut_line {
            if let Err(e) = self.out.write_all(b"\n") {
                self.settings.dropped.inc_by(n);
                self.last_error = Some(format!("cannot write the audit file: {e}"));
                return;
            }
            self.cut_line = false;
            self.size += 1;
        }
        match self.out.write_all(lines) {
            Ok(()) => {
                self.size += lines.len() as u64;
                self.settings.written.inc_by(n);
            }
            Err(e) => {
                // What reached the file: whole lines count as written, the rest dropped.
                let now = self.out.metadata().map_or(self.size, |m| m.len());
                let got = (now.saturating_sub(self.size) as usize).min(lines.len());
                let whole = lines[..got].iter().filter(|b| **b == b'\n').count() as u64;
                self.cut_line = got > 0 && lines[got - 1] != b'\n';
                self.size = now;
                self.settings.written.inc_by(whole);
                self.settings.dropped.inc_by(n - whole);
                self.last_error = Some(format!("cannot write the audit file: {e}"));
            }
        }
    }

    /// Current file → `.1`, `.1` → `.2`, … the oldest beyond `keep` removed; then a new
    /// current file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.settings.path;
        let keep = self.settings.keep;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            match std::fs::remove_file(rotated(path, keep)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            for n in (1..keep).rev() {
                match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        self.out = open_append(path)?;
        self.size = 0;
        self.cut_line = false;
        Ok(())
    }

    /// Warns about records dropped since the last warning, at most once a minute.
    fn report(&mut self) {
        let dropped = self.settings.dropped.get();
        if dropped == self.reported || self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let why = self.last_error.take().unwrap_or_else(|| {
            "the audit queue was full (the disk is slower than the requests)".into()
        });
        tracing::warn!(
            path = %self.settings.path.display(),
            records_dropped = dropped - self.reported,
            "{why}; audit records were dropped (check the disk and audit.path)"
        );
        self.reported = dropped;
        self.last_warning = Some(Instant::now());
    }
}
