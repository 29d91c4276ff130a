//! Process-wide log setup for the `sparkcr-edge` command: the tracing subscriber (text or
//! JSON to stderr, filtered by `RUST_LOG` or `log.level`) and, when stderr is a journald
//! stream, a syslog priority prefix (`<3>` error .. `<7>` debug) on every line so that
//! `journalctl -p err` finds errors.
//!
//! Lines reach stderr in batches ([`batched`]): a line per request, each with its own
//! `write(2)`, cost a busy server a fifth of its small-blob throughput.
//!
//! Owns: choosing the format and the writer. Must not: decide what is logged (every other
//! module does that), or read the config file (it is handed the parsed `[log]` section).

mod batched;

use crate::config::{LogConfig, LogFormat};
use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The syslog priority journald gives a line that starts with `<N>`.
pub fn journal_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is
/// `<device>:<inode>` of that stream, and a redirected stderr (a pipe, a file) differs.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self/fd/2 follows to the stream itself (a socket or a file).
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Wraps a line format with the `<N>` prefix journald turns into the line's priority.
pub struct JournalPrefix<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", journal_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Keeps the log's flusher thread; dropping it writes out every line logged so far. Hold
/// it until the command returns.
#[must_use = "dropping the guard stops the log's flusher"]
pub struct LogGuard(#[allow(dead_code)] Option<batched::BatchGuard>);

/// Installs the process's subscriber (once; later calls do nothing). Under journald the
/// lines carry priorities and no timestamp (the journal has its own).
pub fn init(log: &LogConfig) -> LogGuard {
    use tracing_subscriber::fmt::format;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = batched::batched(Box::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let journal = stderr_is_journal();
    let installed = match (log.format, journal) {
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder
            .event_format(JournalPrefix(format().json()))
            .fmt_fields(format::JsonFields::new())
            .try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder
            .event_format(JournalPrefix(format().without_time()))
            .try_init(),
    };
    // Already installed: this writer is not the one in use.
    LogGuard(installed.is_ok().then_some(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(journal_priority(Level::ERROR), 3);
        assert_eq!(journal_priority(Level::WARN), 4);
        assert_eq!(journal_priority(Level::INFO), 6);
        assert_eq!(journal_priority(Level::DEBUG), 7);
    }
}
