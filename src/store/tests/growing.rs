//! Growing blobs: what readers see while a fill is under way and after it ends.

use super::*;
use crate::store::{BlobRead, GrowingBlob, GrowthFailure, Keeping};

/// Reads `[pos, end)` as far as the blob allows now; returns the bytes and what stopped it.
fn drain(blob: &GrowingBlob, mut pos: u64, end: u64) -> (Vec<u8>, BlobRead) {
    let mut out = Vec::new();
    loop {
        if pos >= end {
            return (out, BlobRead::End);
        }
        match blob.read_at(pos, (end - pos).min(1 << 20) as usize) {
            BlobRead::Data(b) => {
                assert!(!b.is_empty(), "empty frame at {pos}");
                pos += b.len() as u64;
                out.extend_from_slice(&b);
            }
            other => return (out, other),
        }
    }
}

fn frames(bytes: &[u8], n: usize) -> Vec<bytes::Bytes> {
    bytes.chunks(n).map(bytes::Bytes::copy_from_slice).collect()
}

#[test]
fn readers_follow_at_their_own_pace_and_the_last_byte_waits_for_the_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(1, 10 * CHUNK + 123);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    assert_eq!(blob.keeping(), Keeping::Storing);
    let all = frames(&bytes, 20_000);
    let half = all.len() / 2;
    for f in &all[..half] {
        input.push(f.clone()).expect("push");
        writer.write(f);
    }
    // A fast reader gets everything so far; a slow one has read nothing yet.
    let (got, stop) = drain(&blob, 0, bytes.len() as u64);
    assert_eq!(got, &bytes[..got.len()]);
    assert_eq!(got.len(), half * 20_000);
    assert!(matches!(stop, BlobRead::Wait));
    for f in &all[half..] {
        input.push(f.clone()).expect("push");
        writer.write(f);
    }
    let (got, stop) = drain(&blob, 0, bytes.len() as u64);
    assert_eq!(
        got.len(),
        bytes.len() - 1,
        "all but the last byte before the digest check"
    );
    assert!(matches!(stop, BlobRead::Wait));
    input.finish().expect("digest matches");
    // The slow reader starts only now, from the middle: chunk files serve it.
    let (got, _) = drain(&blob, 5 * CHUNK as u64 + 7, bytes.len() as u64);
    assert_eq!(got, &bytes[5 * CHUNK + 7..]);
    assert!(matches!(
        blob.read_at(bytes.len() as u64, 10),
        BlobRead::End
    ));
    assert!(
        store.blob(&d).expect("lookup").is_none(),
        "not visible before the commit"
    );
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
    assert_eq!(read_range(&store, &d, 0, bytes.len() as u64), bytes);
    assert_eq!(store.inner.budget.totals().reserved_bytes, 0);
}

#[test]
fn a_late_reader_reads_from_files_after_the_window_moved_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, 1 << 20);
    let bytes = random_bytes(2, 9 << 20);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    for f in frames(&bytes, 64 << 10) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
    }
    input.finish().expect("verified");
    let (got, stop) = drain(&blob, 0, bytes.len() as u64);
    assert!(matches!(stop, BlobRead::End));
    assert!(got == bytes, "late reader gets every byte");
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
}

#[test]
fn a_blob_over_the_budget_is_spooled_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let bytes = random_bytes(3, 3 << 20);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    assert_eq!(blob.keeping(), Keeping::Spooled);
    for f in frames(&bytes, 100_000) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
    }
    input.finish().expect("verified");
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Spooled);
    assert!(blob.all_on_file());
    let (got, _) = drain(&blob, 0, bytes.len() as u64);
    assert!(got == bytes, "spooled bytes read back");
    assert!(store.blob(&d).expect("lookup").is_none(), "not stored");
    assert!(
        files_under(&dir.path().join("tmp")).is_empty(),
        "spool file unlinked"
    );
    assert!(files_under(&dir.path().join("chunks")).is_empty());
}

#[test]
fn readers_behind_the_window_share_one_mapping_of_each_written_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Over the budget: one spool file that grows as the bytes arrive.
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let block = crate::store::READ_FRAME;
    let bytes = random_bytes(9, 3 * block + 100_000);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    assert_eq!(blob.keeping(), Keeping::Spooled);
    let all = frames(&bytes, 256 << 10);
    let first = (2 * block + block / 2) / (256 << 10);
    for f in &all[..first] {
        input.push(f.clone()).expect("push");
        writer.write(f);
    }
    let frame = |pos: usize| match blob.read_at(pos as u64, 1 << 20) {
        BlobRead::Data(b) => b,
        _ => panic!("no data at {pos}"),
    };
    // Two readers in the first block: slices of one mapping, cut at the block's end.
    let a = frame(0);
    let b = frame(4096);
    assert_eq!(&a[..], &bytes[..1 << 20]);
    assert_eq!(&b[..], &bytes[4096..4096 + (1 << 20)]);
    assert_eq!(
        a.as_ptr() as usize + 4096,
        b.as_ptr() as usize,
        "one mapping"
    );
    let tail = frame(block - 10);
    assert_eq!(
        &tail[..],
        &bytes[block - 10..block],
        "a read ends at its block's end"
    );
    // The block still being written is read correctly too (a mapping of the read alone).
    let growing = frame(2 * block + 1000);
    assert_eq!(
        &growing[..],
        &bytes[2 * block + 1000..2 * block + 1000 + growing.len()]
    );
    for f in &all[first..] {
        input.push(f.clone()).expect("push");
        writer.write(f);
    }
    input.finish().expect("verified");
    let (got, stop) = drain(&blob, 0, bytes.len() as u64);
    assert!(matches!(stop, BlobRead::End));
    assert!(got == bytes, "every byte, in order");
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Spooled);
}

#[test]
fn a_store_failure_mid_blob_degrades_to_memory_and_behind_readers_get_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(4, 48 << 20);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    let all = frames(&bytes, 256 << 10);
    let mut pushed = 0usize;
    for (i, f) in all.iter().enumerate() {
        if i == 8 {
            // The disk goes away: no new chunk or spool file can be created.
            fs::remove_dir_all(dir.path().join("tmp")).expect("remove tmp");
        }
        input.push(f.clone()).expect("push");
        writer.write(f);
        pushed += f.len();
    }
    assert_eq!(pushed, bytes.len());
    assert_eq!(blob.keeping(), Keeping::MemoryOnly);
    input
        .finish()
        .expect("still verified: the input hashed every byte");
    // The first 2 MiB were on file and are still readable.
    let (head, _) = drain(&blob, 0, 2 << 20);
    assert!(head == bytes[..2 << 20], "file-backed head");
    // A reader at 5 MiB fell behind the window: it gets the hash state before it.
    match blob.read_at(5 << 20, 1024) {
        BlobRead::Behind(cp) => {
            assert!(cp.offset <= 5 << 20);
            let mut h = cp.hasher;
            h.update(&bytes[cp.offset as usize..]);
            assert_eq!(h.finish(), d, "checkpoint + the rest = the digest");
        }
        other => panic!("expected Behind, got {other:?}"),
    }
    // The window's end is still in memory.
    let tail_at = bytes.len() as u64 - (1 << 20);
    let (tail, _) = drain(&blob, tail_at, bytes.len() as u64);
    assert!(tail == bytes[tail_at as usize..]);
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::MemoryOnly);
    assert!(store.blob(&d).expect("lookup").is_none());
    assert_eq!(store.inner.budget.totals().reserved_bytes, 0);
}

#[test]
fn a_digest_mismatch_fails_every_reader_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(5, 5 * CHUNK);
    let wrong = Digest::of(b"something else");
    let (blob, mut input, mut writer) = store.begin_growing(wrong, Some(bytes.len() as u64));
    for f in frames(&bytes, 30_000) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
    }
    assert!(matches!(input.finish(), Err(GrowthFailure::Mismatch(_))));
    assert!(matches!(blob.read_at(0, 10), BlobRead::Failed(_)));
    assert!(matches!(
        blob.read_at(bytes.len() as u64 - 1, 1),
        BlobRead::Failed(_)
    ));
    assert_ne!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
    assert!(store.blob(&wrong).expect("lookup").is_none());
    assert!(
        files_under(&dir.path().join("chunks")).is_empty(),
        "chunks removed"
    );
}

#[test]
fn more_bytes_than_announced_fail_the_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(6, 1000);
    let (blob, mut input, _writer) = store.begin_growing(Digest::of(&bytes), Some(999));
    assert!(input.push(bytes::Bytes::from(bytes)).is_err());
    assert!(matches!(
        blob.read_at(0, 10),
        BlobRead::Failed(GrowthFailure::Mismatch(_))
    ));
}

#[tokio::test]
async fn an_abandoned_input_fails_waiting_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(7, 3 * CHUNK);
    let d = Digest::of(&bytes);
    let (blob, mut input, writer) = store.begin_growing(d, Some(bytes.len() as u64));
    input
        .push(bytes::Bytes::copy_from_slice(&bytes[..1000]))
        .expect("push");
    let waiter = {
        let blob = Arc::clone(&blob);
        tokio::spawn(async move { blob.verified().await })
    };
    drop(input);
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("waiter woke")
        .expect("task");
    assert_eq!(outcome, Err(GrowthFailure::Abandoned));
    drop(writer);
    assert!(store.blob(&d).expect("lookup").is_none());
    assert_eq!(store.inner.budget.totals().reserved_bytes, 0);
}

#[test]
fn unknown_size_holds_the_last_byte_until_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, CHUNK);
    let bytes = random_bytes(8, 2 * CHUNK + 5);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, None);
    for f in frames(&bytes, 50_000) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
    }
    assert_eq!(blob.size(), None);
    let (got, _) = drain(&blob, 0, u64::MAX);
    assert_eq!(got.len(), bytes.len() - 1);
    input.finish().expect("verified");
    assert_eq!(blob.size(), Some(bytes.len() as u64));
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
    assert_eq!(read_range(&store, &d, 0, bytes.len() as u64), bytes);
}

/// Past the first MiB the hash runs on a thread of its own: the bytes are readable (all but
/// the last) before they are hashed, checkpoints come from that thread, and the end is
/// still verified against every byte pushed.
#[tokio::test]
async fn a_large_blob_is_hashed_off_the_receiving_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, 1 << 20);
    let bytes = random_bytes(9, 20 << 20);
    let d = Digest::of(&bytes);
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    for f in frames(&bytes, 256 << 10) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
        input.writer_caught_up().await;
    }
    let (got, stop) = drain(&blob, 0, bytes.len() as u64);
    assert_eq!(
        got.len(),
        bytes.len() - 1,
        "readable before the hash is done"
    );
    assert!(matches!(stop, BlobRead::Wait));
    tokio::time::timeout(Duration::from_secs(30), input.hashed_all())
        .await
        .expect("the hash thread caught up");
    input.finish().expect("verified");
    assert_eq!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
    assert_eq!(read_range(&store, &d, 0, bytes.len() as u64), bytes);
    // The thread's checkpoints are true states of the blob's prefix.
    let cps = blob.checkpoints();
    assert!(
        cps.iter().any(|c| c.offset >= 16 << 20),
        "checkpoints from the thread: {cps:?}"
    );
    for c in cps {
        let mut h = c.hasher;
        h.update(&bytes[c.offset as usize..]);
        assert_eq!(
            h.finish(),
            d,
            "checkpoint at {} + the rest = the digest",
            c.offset
        );
    }
}

#[test]
fn a_large_blob_with_the_wrong_digest_fails_after_the_hash_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, 1 << 20);
    let mut bytes = random_bytes(10, 6 << 20);
    let d = Digest::of(&bytes);
    bytes[5 << 20] ^= 1; // corrupted well past the inline first MiB
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    for f in frames(&bytes, 100_000) {
        input.push(f.clone()).expect("push");
        writer.write(&f);
    }
    // No waiting for the thread first: finish waits for it.
    assert!(matches!(input.finish(), Err(GrowthFailure::Mismatch(_))));
    assert!(matches!(
        blob.read_at(bytes.len() as u64 - 1, 1),
        BlobRead::Failed(_)
    ));
    assert_ne!(writer.finish("r/a", Duration::ZERO), Keeping::Stored);
    assert!(store.blob(&d).expect("lookup").is_none());
}
