//! Store throughput: filling and reading 64 MiB blobs in 4 MiB chunks, and insert+evict
//! churn through a small budget (also printing disk bytes / logical bytes).
//!
//! `cargo bench --bench store` (add `-- --quick` for a short run). The store lives in a
//! temp directory on the same file system as `$TMPDIR`; fills include every fsync.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, RngCore, SeedableRng};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::Digest;
use sparkcr_edge::store::{Store, StoreOptions};
use std::hint::black_box;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BLOB: u64 = 64 * MIB;
const WRITE_SIZE: usize = 256 << 10;

fn random_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len as usize];
    rng.fill_bytes(&mut out);
    out
}

fn open(dir: &Path, budget: u64) -> Store {
    Store::open(StoreOptions::new(dir, budget), Arc::new(Metrics::new())).expect("open store")
}

fn fill(store: &Store, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let mut f = store
        .begin_fill(d, Some(bytes.len() as u64))
        .expect("begin fill");
    for part in bytes.chunks(WRITE_SIZE) {
        f.write(part).expect("write");
    }
    f.finish("bench/repo").expect("finish");
    d
}

/// Allocated bytes under `path`, like `du`.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

fn fill_and_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 30);
    let bytes = random_bytes(1, BLOB);
    let mut group = c.benchmark_group("store_64MiB_blob_4MiB_chunks");
    group.throughput(Throughput::Bytes(BLOB));
    group.bench_function("fill", |b| {
        b.iter_batched(
            // Empty the store so every iteration writes (and fsyncs) all 16 chunks.
            || store.purge(None, None).expect("purge"),
            |_| black_box(fill(&store, &bytes)),
            BatchSize::PerIteration,
        )
    });
    let d = fill(&store, &bytes);
    group.bench_function("read", |b| {
        b.iter(|| {
            let reader = store
                .read_blob(&d, 0, BLOB)
                .expect("read")
                .expect("visible");
            let mut n = 0usize;
            for frame in reader {
                n += black_box(frame.expect("frame")).len();
            }
            assert_eq!(n as u64, BLOB);
        })
    });
    group.finish();
}

fn churn(c: &mut Criterion) {
    let budget = 64 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), budget);
    let mut sizes = rand::rngs::StdRng::seed_from_u64(2);
    let pool: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(100 + i, 8 * MIB)).collect();
    let mut seq = 0u64;
    let mut logical = 0u64;
    let mut elapsed = Duration::ZERO;
    let mut group = c.benchmark_group("store_churn_64MiB_budget");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_1_to_8MiB_evicting", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                // Distinct content each time: a fresh first chunk over pooled bytes.
                seq += 1;
                let len = sizes.random_range(MIB..=8 * MIB) as usize;
                let mut blob = pool[(seq % 8) as usize][..len].to_vec();
                blob[..8].copy_from_slice(&seq.to_be_bytes());
                fill(&store, &blob);
                logical += len as u64;
            }
            let took = started.elapsed();
            elapsed += took;
            took
        })
    });
    group.finish();
    let stored = store.stored_bytes();
    let index_disk = disk_usage(&dir.path().join("index"));
    let data_disk = disk_usage(dir.path()) - index_disk;
    println!(
        "churn: {} inserts, {:.0} MiB through a {} MiB budget at {:.0} MiB/s (fill + evict); \
         stored (budget-counted) {:.1} MiB; data on disk (du, without index) {:.1} MiB; \
         disk/logical = {:.3}; index {:.2} MiB",
        seq,
        logical as f64 / MIB as f64,
        budget / MIB,
        logical as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9),
        stored as f64 / MIB as f64,
        data_disk as f64 / MIB as f64,
        data_disk as f64 / stored.max(1) as f64,
        index_disk as f64 / MIB as f64,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = fill_and_read, churn
}
criterion_main!(benches);
