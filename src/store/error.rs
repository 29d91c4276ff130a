//! The store's error type.
//!
//! Owns: [`StoreError`] and the wording of every store failure (each message says what to
//! do about it), the small helpers that attach an operation and a path to an I/O error,
//! and [`count`], the one way a failed store operation is counted and logged.
//!
//! Must not: decide policy (whether an error is fatal, retried or served around is the
//! caller's business).

use crate::metrics::Metrics;
use crate::oci::Digest;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (normally the daemon) holds the store's `LOCK` file.
    #[error(
        "store {} is in use by a running sparkcr-edge (lock held on {}); stop the daemon \
         first (systemctl stop sparkcr-edge), then run this again",
        path.display(),
        path.join("LOCK").display()
    )]
    Locked { path: PathBuf },

    /// A file-system operation failed.
    #[error("store: cannot {op} {}: {source} (check that the path exists, is writable by the daemon and the disk is healthy)", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The sled index failed.
    #[error("store index (sled) error: {0}; if it persists, stop the daemon and move the store's index/ directory away (the cache will refill)")]
    Index(#[from] sled::Error),

    /// The index was written by a release this binary cannot read or migrate.
    #[error("store {} cannot be opened by this sparkcr-edge: {detail}; run the release that wrote it, or move the store directory away to start with an empty cache (it refills from the upstreams)", path.display())]
    IndexSchema { path: PathBuf, detail: String },

    /// A record or file does not have the shape the store wrote.
    #[error("store data is corrupt: {0}; the entry is dropped and will be fetched again (run `verify` to check the whole store)")]
    Corrupt(String),

    /// The bytes written do not hash to the digest they were announced as.
    #[error(
        "content does not match its digest: expected {expected}, got {actual}; nothing was stored"
    )]
    DigestMismatch { expected: Digest, actual: Digest },

    /// The bytes written are not as many as announced.
    #[error("blob {digest} was announced as {expected} bytes but {actual} were written; nothing was stored")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    /// No room can be made under the byte budget (item too big, or everything pinned).
    #[error("no room in the store for {needed} more bytes under its budget of {budget} bytes (item larger than the budget, or all content is in use); serve it without storing, or raise storage.max_size")]
    NoSpace { needed: u64, budget: u64 },

    /// A read range outside the blob.
    #[error("range {start}..{end} is outside the blob's {size} bytes")]
    RangeNotSatisfiable { start: u64, end: u64, size: u64 },

    /// A fill that already failed was used again.
    #[error("this blob fill already failed; drop it and begin a new fill")]
    FillBroken,

    /// The options the store was opened with are unusable.
    #[error("invalid store options: {0}")]
    InvalidOptions(String),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is an I/O error of kind `kind` (e.g. a missing chunk file).
    pub fn is_io_kind(&self, kind: std::io::ErrorKind) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == kind)
    }

    /// Whether a write failed because the file system is mounted read-only (`EROFS`), in
    /// the store's own files or in its index.
    pub fn is_read_only_file_system(&self) -> bool {
        let erofs = |e: &std::io::Error| e.raw_os_error() == Some(libc::EROFS);
        match self {
            StoreError::Io { source, .. } => erofs(source),
            StoreError::Index(sled::Error::Io(source)) => erofs(source),
            _ => false,
        }
    }

    /// Whether the message already names the store and says what to do, so a caller adds
    /// no "cannot open the store at ..." context to it.
    pub fn names_the_store(&self) -> bool {
        matches!(
            self,
            StoreError::Locked { .. } | StoreError::IndexSchema { .. }
        )
    }
}

/// Attaches an operation name and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(op, path, e))
    }
}

/// Counts a failed store operation `op` in `store_errors_total`, and logs it unless it is
/// an expected outcome (no room, a digest that did not match).
pub(crate) fn count(metrics: &Metrics, op: &'static str, e: &StoreError) {
    metrics.store_errors.with_label_values(&[op]).inc();
    if !matches!(
        e,
        StoreError::NoSpace { .. } | StoreError::DigestMismatch { .. }
    ) {
        tracing::warn!(op, error = %e, "store operation failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(source: std::io::Error) -> StoreError {
        StoreError::io("create", Path::new("/srv/cache/index"), source)
    }

    #[test]
    fn a_read_only_file_system_is_recognised_in_files_and_in_the_index() {
        let erofs = || std::io::Error::from_raw_os_error(libc::EROFS);
        assert!(io(erofs()).is_read_only_file_system());
        assert!(StoreError::Index(sled::Error::Io(erofs())).is_read_only_file_system());
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!io(denied).is_read_only_file_system());
        assert!(!StoreError::FillBroken.is_read_only_file_system());
    }

    #[test]
    fn only_messages_that_name_the_store_stand_alone() {
        let path = PathBuf::from("/srv/cache");
        assert!(StoreError::Locked { path: path.clone() }.names_the_store());
        assert!(StoreError::IndexSchema {
            path,
            detail: "v9".into()
        }
        .names_the_store());
        assert!(!StoreError::Corrupt("x".into()).names_the_store());
    }
}
