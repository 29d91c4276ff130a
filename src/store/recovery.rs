//! Crash recovery, run by `Store::open` while it holds the store lock.
//!
//! Owns: making the index and the chunk files agree again after any crash: emptying
//! `tmp/`, dropping undecodable records, dropping blobs whose chunk files are missing or
//! have the wrong size, removing chunk files that no blob names, and recomputing the
//! derived data (chunk refcounts, the LRU order, the stored byte total) from the blob and
//! manifest records. Every step is idempotent, so a crash during recovery is harmless.
//! The file side (temp files, strays, orphans) is here; the record side is
//! `Index::rebuild`, which this drives.
//!
//! Must not: re-hash chunk contents (startup must stay fast with a large cache: sizes are
//! checked with `stat` only; `verify` does the hashing), or run while anything else uses
//! the store.

use super::chunks::ChunkFiles;
use super::error::StoreError;
use super::index::{Index, Rebuilt};
use std::fmt;

/// What recovery found and did, and the totals it recomputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Leftover temp files removed from `tmp/`.
    pub tmp_removed: usize,
    /// Chunk files no blob names (fills interrupted before their commit), removed.
    pub orphan_chunks_removed: usize,
    /// Files under `chunks/` not named like chunks, removed.
    pub stray_files_removed: usize,
    /// Blobs whose chunk files were missing or of the wrong size, dropped.
    pub blobs_dropped: usize,
    /// Undecodable records dropped.
    pub corrupt_records: usize,
    /// Chunk refcount and LRU entries rewritten to match the records.
    pub derived_entries_fixed: usize,
    pub blobs: u64,
    pub manifests: u64,
    pub chunks: u64,
    pub tags: u64,
    pub stored_bytes: u64,
}

impl RecoveryReport {
    /// Whether recovery had to change anything.
    pub fn repaired(&self) -> bool {
        self.tmp_removed
            + self.orphan_chunks_removed
            + self.stray_files_removed
            + self.blobs_dropped
            + self.corrupt_records
            + self.derived_entries_fixed
            > 0
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} temp files, {} orphan chunks and {} stray files removed; {} blobs with \
             missing or short chunks and {} corrupt records dropped; {} derived index \
             entries fixed",
            self.tmp_removed,
            self.orphan_chunks_removed,
            self.stray_files_removed,
            self.blobs_dropped,
            self.corrupt_records,
            self.derived_entries_fixed
        )
    }
}

/// Brings `index` and `chunks` back into agreement; see the module doc. Returns the report
/// and what the index holds now.
pub(crate) fn recover(
    index: &Index,
    chunks: &ChunkFiles,
) -> Result<(RecoveryReport, Rebuilt), StoreError> {
    let mut report = RecoveryReport {
        tmp_removed: chunks.clear_tmp()?,
        ..RecoveryReport::default()
    };
    let scan = chunks.scan()?;
    for stray in &scan.strays {
        tracing::warn!(path = %stray.display(), "removing stray file from the chunk directory");
        chunks.remove_stray(stray)?;
        report.stray_files_removed += 1;
    }
    // Blobs are kept when every chunk file exists with the right size; the derived trees
    // are rewritten from what is kept.
    let rebuilt = index.rebuild(|c| scan.files.get(&c.id) == Some(&u64::from(c.len)))?;
    // Chunk files nothing names.
    for id in scan.files.keys() {
        if !rebuilt.chunks.contains_key(id) {
            chunks.remove(id)?;
            report.orphan_chunks_removed += 1;
        }
    }
    report.blobs_dropped = rebuilt.blobs_dropped;
    report.corrupt_records = rebuilt.corrupt_records;
    report.derived_entries_fixed = rebuilt.derived_entries_fixed;
    report.blobs = rebuilt.blobs;
    report.manifests = rebuilt.manifests;
    report.chunks = rebuilt.chunks.len() as u64;
    report.tags = rebuilt.tags;
    report.stored_bytes = rebuilt.stored_bytes();
    Ok((report, rebuilt))
}
