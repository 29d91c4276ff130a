//! Behaviour tests of the store through its public API (plus a peek at its state where a
//! guarantee is about internals, such as reservations returning to zero).
//!
//! `blobs.rs`: fills, reads, budget, pins, eviction, concurrency. `metadata.rs`: locking,
//! manifests, tags, TTL, purge, verify, recovery, corrupt records. `growing.rs`: blobs read
//! while they are filled (slow and late readers, spooling, failures, the held last byte).

mod blobs;
mod growing;
mod metadata;
mod schema;

use super::*;
use crate::config::TtlFrom;
use rand::{RngCore, SeedableRng};
use std::fs;
use std::path::PathBuf;

pub(super) const KIB: usize = 1 << 10;
pub(super) const CHUNK: usize = 64 * KIB;

pub(super) fn open_store(dir: &Path, budget: u64, chunk_size: usize) -> Store {
    let mut opts = StoreOptions::new(dir, budget);
    opts.chunk_size = chunk_size;
    Store::open(opts, Arc::new(Metrics::new())).expect("open store")
}

pub(super) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

pub(super) fn put_blob(store: &Store, bytes: &[u8], repo: &str) -> BlobInfo {
    let mut fill = store
        .begin_fill(Digest::of(bytes), Some(bytes.len() as u64))
        .expect("begin fill");
    fill.write(bytes).expect("write");
    fill.finish(repo).expect("finish")
}

pub(super) fn read_range(store: &Store, d: &Digest, start: u64, end: u64) -> Vec<u8> {
    let reader = store
        .read_blob(d, start, end)
        .expect("read_blob")
        .expect("blob is visible");
    let mut out = Vec::new();
    for frame in reader {
        let frame = frame.expect("frame");
        assert!(frame.len() <= FRAME_BYTES, "frame of {} bytes", frame.len());
        assert!(!frame.is_empty(), "empty frame");
        out.extend_from_slice(&frame);
    }
    out
}

/// Every regular file under `dir`, recursively.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

pub(super) fn chunk_files(store: &Store) -> Vec<PathBuf> {
    files_under(&store.path().join("chunks"))
}

pub(super) fn tmp_files(store: &Store) -> Vec<PathBuf> {
    files_under(&store.path().join("tmp"))
}

pub(super) fn reserved(store: &Store) -> u64 {
    store.inner.budget.totals().reserved_bytes
}
