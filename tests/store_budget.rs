//! The LRU byte budget under churn: 200 MiB of blobs through a 64 MiB store while a few
//! hot blobs are read between inserts. The budget holds after every insert, the hot blobs
//! survive, and the disk really is freed (measured like `du`: allocated blocks).

use rand::{Rng, RngCore, SeedableRng};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::Digest;
use sparkcr_edge::store::{Store, StoreOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;
const TOTAL: u64 = 200 * MIB;

/// Allocated bytes of everything under `path` (what `du` reports).
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

fn put(store: &Store, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let mut fill = store
        .begin_fill(d, Some(bytes.len() as u64))
        .expect("begin fill");
    for part in bytes.chunks(300_000) {
        fill.write(part).expect("write");
    }
    fill.finish("docker.io/library/budget").expect("finish");
    d
}

fn read_all(store: &Store, d: &Digest) -> Vec<u8> {
    let info = store.blob(d).expect("lookup").expect("hot blob is visible");
    let reader = store
        .read_blob(d, 0, info.size)
        .expect("read")
        .expect("visible");
    let mut out = Vec::with_capacity(info.size as usize);
    for frame in reader {
        out.extend_from_slice(&frame.expect("frame"));
    }
    out
}

#[test]
fn budget_holds_hot_blobs_survive_and_disk_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let store =
        Store::open(StoreOptions::new(dir.path(), BUDGET), Arc::clone(&metrics)).expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random_blob = |len: u64| {
        let mut b = vec![0u8; len as usize];
        rng.fill_bytes(&mut b);
        b
    };

    let hot: Vec<Vec<u8>> = (0..3).map(|_| random_blob(2 * MIB)).collect();
    let hot_digests: Vec<Digest> = hot.iter().map(|b| put(&store, b)).collect();

    let mut sizes = rand::rngs::StdRng::seed_from_u64(8);
    let mut inserted = 6 * MIB;
    let mut inserts = 0;
    let mut max_data_disk = 0;
    while inserted < TOTAL {
        let len = sizes.random_range(MIB..=8 * MIB);
        let blob = random_blob(len);
        put(&store, &blob);
        inserted += len;
        inserts += 1;
        assert!(
            store.stored_bytes() <= BUDGET,
            "after insert {inserts}: {} stored > budget {BUDGET}",
            store.stored_bytes()
        );
        let index_disk = disk_usage(&dir.path().join("index"));
        let data_disk = disk_usage(dir.path()) - index_disk;
        max_data_disk = max_data_disk.max(data_disk);
        assert!(
            data_disk as f64 <= 1.10 * BUDGET as f64,
            "after insert {inserts}: {data_disk} bytes on disk outside the index (index {index_disk})"
        );
        // The hot set is read between inserts.
        for (d, bytes) in hot_digests.iter().zip(&hot) {
            assert_eq!(&read_all(&store, d), bytes, "hot blob {d} intact");
        }
    }
    assert!(metrics.store_evictions.get() > 0, "the churn evicted");
    assert!(metrics.store_evicted_bytes.get() >= TOTAL - BUDGET - 8 * MIB);
    for d in &hot_digests {
        assert!(
            store.blob(d).expect("lookup").is_some(),
            "hot blob {d} survived"
        );
    }
    let stats = store.stats().expect("stats");
    eprintln!(
        "{inserts} inserts, {} MiB logical; {} evictions; max data on disk {:.1} MiB; index {:.1} MiB\n{stats}",
        inserted / MIB,
        metrics.store_evictions.get(),
        max_data_disk as f64 / MIB as f64,
        disk_usage(&dir.path().join("index")) as f64 / MIB as f64
    );
}
