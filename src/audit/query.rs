//! Reading the audit trail back: the current file and its rotations, oldest first, each
//! line a record; the records a [`AuditQuery`] selects. It reads plain files, so it works
//! while the daemon writes (a line still being written is skipped, and counted).

use super::file::rotated;
use super::AuditRecord;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Rotations looked for at most (`audit.jsonl.1` … `.1000`).
const MAX_ROTATIONS: u32 = 1000;

/// Which records to show: every field set must match.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// `repo`, `upstream/repo`, or a Docker Hub official image's short name (`busybox`).
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// A digest or a prefix of one (`sha256:ab12`, or the hex alone).
    pub digest: Option<String>,
    /// A client address or network.
    pub client: Option<ipnet::IpNet>,
    pub upstream: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Only the newest this many.
    pub limit: Option<usize>,
}

/// The records a query selected, oldest first.
#[derive(Debug, Default)]
pub struct AuditRead {
    pub records: Vec<AuditRecord>,
    /// Lines that were not a record (a line being written, or not from this program).
    pub unreadable_lines: usize,
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the audit file {path}: {source}")]
pub struct AuditReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The audit files of `path`, oldest first: its rotations that exist, then itself.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=MAX_ROTATIONS)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// The records of the audit trail at `path` that `query` selects.
pub fn read(path: &Path, query: &AuditQuery) -> Result<AuditRead, AuditReadError> {
    let files = files_of(path);
    if files.is_empty() {
        return Err(AuditReadError {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (is [audit] path set in the daemon's config, and has it served a request since?)",
            ),
        });
    }
    let mut selected = VecDeque::new();
    let mut unreadable = 0;
    for file in &files {
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            // Rotated away between listing and opening: its records are in the next one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(AuditReadError {
                    path: file.clone(),
                    source,
                })
            }
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| AuditReadError {
                path: file.clone(),
                source,
            })?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(&line) {
                Ok(r) if query.selects(&r) => {
                    selected.push_back(r);
                    if query.limit.is_some_and(|n| selected.len() > n) {
                        selected.pop_front();
                    }
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok(AuditRead {
        records: selected.into(),
        unreadable_lines: unreadable,
        files,
    })
}

impl AuditQuery {
    /// Whether `r` is one of the records asked for.
    pub fn selects(&self, r: &AuditRecord) -> bool {
        if let Some(repo) = &self.repository {
            if !names_repository(repo, r) {
                return false;
            }
        }
        if self.upstream.as_ref().is_some_and(|u| *u != r.upstream) {
            return false;
        }
        if self.tag.is_some() && self.tag != r.tag {
            return false;
        }
        if let Some(d) = &self.digest {
            let matches = r.digest.as_deref().is_some_and(|have| {
                have.starts_with(d.as_str())
                    || have
                        .split_once(':')
                        .is_some_and(|(_, hex)| hex.starts_with(d.as_str()))
            });
            if !matches {
                return false;
            }
        }
        if let Some(net) = &self.client {
            if !r.client.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = r.at() else { return false };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at > u) {
                return false;
            }
        }
        true
    }
}

/// Whether `asked` names the record's repository: `repo`, `upstream/repo`, or on Docker
/// Hub an official image's short name (`busybox` for `library/busybox`).
fn names_repository(asked: &str, r: &AuditRecord) -> bool {
    if asked == r.repository {
        return true;
    }
    if let Some(rest) = asked.strip_prefix(r.upstream.as_str()) {
        if rest.strip_prefix('/') == Some(r.repository.as_str()) {
            return true;
        }
    }
    r.upstream == crate::oci::DOCKER_HUB && r.repository.strip_prefix("library/") == Some(asked)
}
