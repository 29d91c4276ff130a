//! `sparkcr-edge doctor`, run on a client machine: why does this machine's container
//! runtime (still) not pull through the edge? It reads the Docker, containerd,
//! Podman and CRI-O configs in their standard places, the runtimes' start times and the
//! stored logins, then asks the edge itself (`/v2/`, and a manifest of a given image), and
//! prints one line per check: `ok`, `problem` with what to do, or `skip`.
//!
//! Owns: those checks and their wording. Reads only: it never writes a file, restarts a
//! service or changes anything; `--root` points every path at a fixture tree for tests.
//! Must not: use the daemon's layers (it is a client of the edge's public API).

mod edge_url;
mod files;
mod machine;
mod probe;

use crate::prefetch::image_ref::ImageRef;
use std::fmt;
use std::path::{Path, PathBuf};

pub use edge_url::EdgeUrl;

/// What `doctor` is asked to check.
pub struct DoctorOptions {
    /// The edge as clients should reach it (`https://edge.lan`, `http://10.0.0.5:5000`).
    pub edge: EdgeUrl,
    /// Where the client's file system starts (`/` on a real machine).
    pub root: PathBuf,
    /// An image whose manifest must resolve through the edge.
    pub image: Option<ImageRef>,
    /// Extra CA certificates to trust for the edge (besides the system store and the
    /// runtimes' own certs.d files).
    pub ca_files: Vec<PathBuf>,
    /// Skip the network checks (files only).
    pub offline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Problem,
    /// Not applicable here (runtime not installed, nothing to compare).
    Skip,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// `docker`, `containerd`, `podman`, `crio`, `edge`.
    pub subject: &'static str,
    /// What was found.
    pub message: String,
    /// What to do (problems only).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(subject: &'static str, message: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Ok,
            subject,
            message: message.into(),
            fix: None,
        }
    }

    pub fn problem(
        subject: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            verdict: Verdict::Problem,
            subject,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(subject: &'static str, message: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Skip,
            subject,
            message: message.into(),
            fix: None,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Problem => "problem",
            Verdict::Skip => "skip",
        };
        write!(f, "{v:<8} {:<11} {}", self.subject, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// `path` under `root` (`/etc/x` under `/tmp/r` is `/tmp/r/etc/x`).
pub(crate) fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Every check, files first, then the edge over the network.
pub async fn run(opts: &DoctorOptions) -> Vec<Check> {
    let mut found = files::check_all(opts);
    let mut checks = std::mem::take(&mut found.checks);
    if opts.offline {
        checks.push(Check::skip("edge", "network checks skipped (--offline)"));
    } else {
        checks.extend(probe::check_edge(opts, &found).await);
    }
    checks
}

/// Whether any check found a problem.
pub fn has_problem(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Problem)
}
