//! `sparkcr-edge audit`: the audit trail's records a query selects, as a table or as JSON
//! lines. Reads the files (the current one and its rotations), never the daemon.

use super::args::AuditArgs;
use super::Failure;
use sparkcr_edge::audit::query::{self, AuditQuery};
use sparkcr_edge::audit::AuditRecord;
use std::io::Write;

pub fn run(args: &AuditArgs) -> Result<(), Failure> {
    let path = match &args.file {
        Some(p) => p.clone(),
        None => {
            let loaded = super::load_config_without_tls_pair(&args.config)?;
            loaded.config.audit.path.clone().ok_or_else(|| {
                Failure::Config(format!(
                    "{}: audit.path is not set, so the daemon writes no audit file: set it in [audit] (records are in the log meanwhile), or give --file",
                    loaded.origin
                ))
            })?
        }
    };
    let q = AuditQuery {
        repository: args.repo.clone(),
        tag: args.tag.clone(),
        digest: args.digest.clone(),
        client: args.client,
        upstream: args.upstream.clone(),
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    let found = query::read(&path, &q).map_err(Failure::runtime)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        found.records.iter().try_for_each(|r| {
            let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        })
    } else {
        table(&mut out, &found.records)
    };
    match written {
        Ok(()) => {}
        // `| head`: the reader is gone, which is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(Failure::runtime(format!("cannot write the records: {e}"))),
    }
    if found.records.is_empty() {
        eprintln!(
            "no audit record matches (read {} file(s): {})",
            found.files.len(),
            found
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if found.unreadable_lines > 0 {
        eprintln!(
            "note: {} line(s) were not audit records and were skipped (a line being written, or a file not written by sparkcr-edge)",
            found.unreadable_lines
        );
    }
    Ok(())
}

const HEADINGS: [&str; 10] = [
    "TIME", "CLIENT", "WHO", "METHOD", "IMAGE", "CACHE", "STATUS", "BYTES", "MS", "RESULT",
];

fn table(out: &mut impl Write, records: &[AuditRecord]) -> std::io::Result<()> {
    let rows: Vec<[String; 10]> = records.iter().map(row).collect();
    let mut widths = HEADINGS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &HEADINGS)?;
    for r in &rows {
        line(out, &r.each_ref().map(String::as_str))?;
    }
    Ok(())
}

fn row(r: &AuditRecord) -> [String; 10] {
    // Seconds are enough in a table (the JSON keeps milliseconds).
    let time = r.time.get(..19).map_or(r.time.clone(), |t| format!("{t}Z"));
    let image = format!(
        "{}/{}{}{}",
        r.upstream,
        r.repository,
        r.tag.as_ref().map_or(String::new(), |t| format!(":{t}")),
        r.digest
            .as_ref()
            .map_or(String::new(), |d| format!("@{}", short_digest(d))),
    );
    let image = match &r.range {
        Some(range) => format!("{image} [{range}]"),
        None => image,
    };
    let result = match &r.decision {
        Some(d) => format!("{} ({d})", r.result),
        None => r.result.clone(),
    };
    [
        time,
        r.client.clone(),
        r.who.clone(),
        format!("{} {}", r.method, r.kind.as_str()),
        image,
        r.cache.clone().unwrap_or_else(|| "-".into()),
        r.status.to_string(),
        bytesize::ByteSize(r.bytes).to_string(),
        format!("{:.1}", r.ms),
        result,
    ]
}

/// `sha256:` and the first 12 hex digits (the JSON output keeps the whole digest).
fn short_digest(d: &str) -> &str {
    let cut = d.find(':').map_or(12, |i| i + 13);
    d.get(..cut).unwrap_or(d)
}
