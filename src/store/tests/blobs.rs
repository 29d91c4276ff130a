//! Blob fills and reads: round trips, digest and size checks, abort, budget, pins,
//! eviction of shared chunks, and racing threads.

use super::*;
use proptest::prelude::*;
use rand::SeedableRng;

#[test]
fn handles_cross_threads() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + 'static>() {}
    shareable::<Store>();
    sendable::<BlobFill>();
    sendable::<BlobReader>();
    sendable::<StoreError>();
    fn error_is_sync<T: Sync>() {}
    error_is_sync::<StoreError>();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random blobs, random chunk sizes, random write splits: every range reads back
    /// byte-exact, including ranges at chunk boundaries.
    #[test]
    fn blobs_round_trip_from_every_range(
        seed in any::<u64>(),
        len in prop_oneof![Just(0usize), 1usize..4096, 4096usize..(3 << 20)],
        chunk_size in (64 * KIB)..=(1 << 20),
        write_size in 1usize..(512 * KIB),
        known_size in any::<bool>(),
        ranges in prop::collection::vec((any::<u64>(), any::<u64>()), 4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), 64 << 20, chunk_size);
        let bytes = random_bytes(seed, len);
        let d = Digest::of(&bytes);
        let mut fill = store
            .begin_fill(d, known_size.then_some(len as u64))
            .expect("begin");
        for part in bytes.chunks(write_size) {
            fill.write(part).expect("write");
            // Chunks durable so far read back through read_chunk.
            let mut offset = 0usize;
            for c in fill.completed_chunks() {
                let got = store.read_chunk(&c.id, 0, c.len).expect("read_chunk");
                prop_assert_eq!(&got[..], &bytes[offset..offset + c.len as usize]);
                offset += c.len as usize;
            }
        }
        prop_assert_eq!(fill.written(), len as u64);
        let info = fill.finish("docker.io/library/test").expect("finish");
        prop_assert_eq!(info.size, len as u64);
        prop_assert_eq!(reserved(&store), 0);

        let n = len as u64;
        prop_assert_eq!(read_range(&store, &d, 0, n), bytes.clone());
        let mut cuts: Vec<(u64, u64)> = vec![(n, n), (0, 0)];
        let cs = chunk_size as u64;
        for k in 1..=(n / cs).min(3) {
            let b = k * cs;
            cuts.push((b.saturating_sub(1), (b + 1).min(n)));
            cuts.push((b, n));
        }
        for (a, b) in &ranges {
            if n > 0 {
                let (a, b) = (a % (n + 1), b % (n + 1));
                cuts.push((a.min(b), a.max(b)));
            }
        }
        for (start, end) in cuts {
            let got = read_range(&store, &d, start, end);
            prop_assert_eq!(&got[..], &bytes[start as usize..end as usize], "range {}..{}", start, end);
        }
        let out_of_range = matches!(
            store.read_blob(&d, 0, n + 1),
            Err(StoreError::RangeNotSatisfiable { .. })
        );
        prop_assert!(out_of_range, "a range past the end is refused");
        let expected_chunks = len.div_ceil(chunk_size) as u64;
        let distinct = store.blob_chunks(&d).expect("chunks").expect("blob").iter()
            .map(|c| c.id).collect::<std::collections::HashSet<_>>().len() as u64;
        prop_assert_eq!(store.stats().expect("stats").chunks, distinct);
        prop_assert!(distinct <= expected_chunks);
        prop_assert!(tmp_files(&store).is_empty());
    }
}

#[test]
fn digest_mismatch_leaves_nothing_visible_and_no_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let bytes = random_bytes(1, 5 * CHUNK + 123);
    let wrong = Digest::of(b"something else");
    let mut fill = store
        .begin_fill(wrong, Some(bytes.len() as u64))
        .expect("begin");
    fill.write(&bytes).expect("write");
    assert!(!chunk_files(&store).is_empty(), "chunks were written");
    match fill.finish("r/x") {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::of(&bytes));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(store.blob(&wrong).expect("lookup").is_none());
    assert!(store.blob(&Digest::of(&bytes)).expect("lookup").is_none());
    assert!(chunk_files(&store).is_empty(), "{:?}", chunk_files(&store));
    assert!(tmp_files(&store).is_empty());
    assert_eq!(store.stored_bytes(), 0);
    assert_eq!(reserved(&store), 0);

    // Size mismatches too: more than announced fails at write, fewer at finish.
    let mut fill = store
        .begin_fill(Digest::of(&bytes), Some(10))
        .expect("begin");
    assert!(matches!(
        fill.write(&bytes),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert!(matches!(fill.write(b"x"), Err(StoreError::FillBroken)));
    drop(fill);
    let mut fill = store
        .begin_fill(Digest::of(&bytes), Some(bytes.len() as u64 + 1))
        .expect("begin");
    fill.write(&bytes).expect("write");
    assert!(matches!(
        fill.finish(""),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert!(chunk_files(&store).is_empty());
    assert_eq!(reserved(&store), 0);
}

#[test]
fn abort_on_drop_leaves_no_orphan_and_spares_committed_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let kept = random_bytes(2, 2 * CHUNK);
    put_blob(&store, &kept, "r/kept");
    let files_before = chunk_files(&store);
    assert_eq!(files_before.len(), 2);

    // A fill sharing the first chunk of `kept`, plus new chunks, then dropped.
    let mut other = kept[..CHUNK].to_vec();
    other.extend(random_bytes(3, 3 * CHUNK + 7));
    let mut fill = store.begin_fill(Digest::of(&other), None).expect("begin");
    fill.write(&other).expect("write");
    assert_eq!(fill.completed_chunks().len(), 4);
    assert!(chunk_files(&store).len() > 2);
    drop(fill);

    let mut after = chunk_files(&store);
    after.sort();
    let mut before = files_before;
    before.sort();
    assert_eq!(after, before, "exactly the committed chunks remain");
    assert!(tmp_files(&store).is_empty());
    assert_eq!(reserved(&store), 0);
    assert_eq!(
        read_range(&store, &Digest::of(&kept), 0, kept.len() as u64),
        kept
    );
}

#[test]
fn shared_chunks_survive_eviction_of_one_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 10 * CHUNK as u64;
    let store = open_store(dir.path(), budget, CHUNK);
    let x = random_bytes(10, CHUNK);
    let a: Vec<u8> = [x.clone(), random_bytes(11, CHUNK)].concat();
    let b: Vec<u8> = [x.clone(), random_bytes(12, CHUNK)].concat();
    let c = random_bytes(13, 6 * CHUNK);
    put_blob(&store, &a, "r/a");
    put_blob(&store, &b, "r/b");
    assert_eq!(store.stored_bytes(), 3 * CHUNK as u64, "x is stored once");
    put_blob(&store, &c, "r/c");
    // b becomes the most recently used.
    assert!(store.blob(&Digest::of(&b)).expect("lookup").is_some());
    let d = random_bytes(14, 2 * CHUNK);
    put_blob(&store, &d, "r/d");

    assert!(store.stored_bytes() <= budget);
    assert!(
        store.blob(&Digest::of(&a)).expect("lookup").is_none(),
        "a evicted"
    );
    assert!(
        store.blob(&Digest::of(&c)).expect("lookup").is_none(),
        "c evicted"
    );
    assert_eq!(read_range(&store, &Digest::of(&b), 0, b.len() as u64), b);
    assert_eq!(read_range(&store, &Digest::of(&d), 0, d.len() as u64), d);
    assert_eq!(chunk_files(&store).len(), 4, "x, b's own chunk, d's two");
    assert_eq!(store.inner.metrics.store_evictions.get(), 2);
}

#[test]
fn a_fill_keeps_a_chunk_alive_when_the_blob_sharing_it_is_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 9 * CHUNK as u64;
    let store = open_store(dir.path(), budget, CHUNK);
    let x = random_bytes(20, CHUNK);
    put_blob(&store, &x, "r/x");
    // A fill in progress reuses x's chunk file...
    let content: Vec<u8> = [x.clone(), random_bytes(21, CHUNK / 2)].concat();
    let mut fill = store
        .begin_fill(Digest::of(&content), Some(content.len() as u64))
        .expect("begin");
    fill.write(&content).expect("write");
    // ...while a big fill evicts x (the fill holds one chunk's reservation: the chunk it
    // named; its half chunk is reserved when it is named).
    let big = random_bytes(22, 7 * CHUNK + CHUNK / 2);
    put_blob(&store, &big, "r/big");
    assert!(store.blob(&Digest::of(&x)).expect("lookup").is_none());
    let info = fill.finish("r/c").expect("finish");
    assert_eq!(
        read_range(&store, &info.digest, 0, info.size),
        content,
        "the shared chunk file was not unlinked under the fill"
    );
    assert!(store.blob(&Digest::of(&big)).expect("lookup").is_some());
    assert!(store.stored_bytes() <= budget);
    assert_eq!(reserved(&store), 0);
}

#[test]
fn readers_pin_blobs_and_budget_refuses_what_cannot_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 4 * CHUNK as u64;
    let store = open_store(dir.path(), budget, CHUNK);
    let a = random_bytes(30, 3 * CHUNK);
    put_blob(&store, &a, "r/a");
    let reader = store
        .read_blob(&Digest::of(&a), 0, a.len() as u64)
        .expect("read")
        .expect("visible");
    // Needs a's room, but a is being read: with or without an announced size, it fails at
    // the chunk that does not fit (nothing is reserved ahead of the bytes), and cleans up.
    let b = random_bytes(31, 2 * CHUNK);
    for size in [Some(b.len() as u64), None] {
        let mut fill = store.begin_fill(Digest::of(&b), size).expect("begin");
        match fill.write(&b) {
            Err(StoreError::NoSpace {
                needed,
                budget: got,
            }) => {
                assert_eq!(needed, CHUNK as u64, "one chunk at a time");
                assert_eq!(got, budget);
            }
            Err(e) => panic!("expected NoSpace, got {e}"),
            Ok(()) => panic!("expected NoSpace, the write went through"),
        }
        drop(fill);
        assert_eq!(reserved(&store), 0);
    }
    let got: Vec<u8> = reader
        .map(|f| f.expect("frame").to_vec())
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(got, a, "the pinned blob stayed readable");
    assert_eq!(chunk_files(&store).len(), 3);
    // Unpinned now: b fits by evicting a.
    put_blob(&store, &b, "r/b");
    assert!(store.blob(&Digest::of(&a)).expect("lookup").is_none());
    // Larger than the whole budget: refused up front.
    assert!(matches!(
        store.begin_fill(Digest::of(b"x"), Some(budget + 1)),
        Err(StoreError::NoSpace { .. })
    ));
    assert_eq!(reserved(&store), 0);
}

/// A fill announced with a size reserves and evicts nothing until its bytes come: a client
/// that announces 7 chunks and sends a few bytes empties nobody's cache (#25: a push or an
/// import that declared a huge size evicted everything before it was refused).
#[test]
fn an_announced_size_evicts_nothing_before_its_bytes_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 8 * CHUNK as u64;
    let store = open_store(dir.path(), budget, CHUNK);
    let kept: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(60 + i, 2 * CHUNK)).collect();
    for (i, k) in kept.iter().enumerate() {
        put_blob(&store, k, &format!("r/k{i}"));
        std::thread::sleep(std::time::Duration::from_millis(5)); // distinct access times
    }
    let before = store.stored_bytes();
    let liar = random_bytes(70, 16);
    let mut fill = store
        .begin_fill(Digest::of(&liar), Some(7 * CHUNK as u64))
        .expect("begin");
    assert_eq!(
        reserved(&store),
        0,
        "nothing reserved for bytes not yet sent"
    );
    fill.write(&liar).expect("a few bytes");
    drop(fill); // the request is refused or broken off
    assert_eq!(store.stored_bytes(), before);
    for k in &kept {
        assert!(
            store.blob(&Digest::of(k)).expect("lookup").is_some(),
            "nothing evicted"
        );
    }
    assert_eq!(reserved(&store), 0);
    // A blob that really comes makes its room as it arrives, oldest first.
    let big = random_bytes(71, 5 * CHUNK);
    put_blob(&store, &big, "r/big");
    assert!(store.blob(&Digest::of(&big)).expect("lookup").is_some());
    assert!(store.stored_bytes() <= budget);
    assert!(
        store.blob(&Digest::of(&kept[0])).expect("lookup").is_none(),
        "the oldest made room"
    );
    assert!(
        store.blob(&Digest::of(&kept[2])).expect("lookup").is_some(),
        "no more than needed"
    );
}

/// Fills, reads and evictions racing on shared chunks: no reader ever sees wrong bytes,
/// the budget holds, and afterwards chunk files and index agree exactly.
#[test]
fn concurrent_fills_reads_and_evictions_stay_consistent() {
    use rand::Rng;
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 5 * CHUNK as u64;
    let store = open_store(dir.path(), budget, CHUNK);
    let pieces: Arc<Vec<Vec<u8>>> =
        Arc::new((0..6).map(|i| random_bytes(900 + i, CHUNK)).collect());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let pieces = Arc::clone(&pieces);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut mine: Vec<(Digest, Vec<u8>)> = Vec::new();
                for _ in 0..60 {
                    let n = rng.random_range(1..=4);
                    let mut blob: Vec<u8> = (0..n)
                        .flat_map(|_| pieces[rng.random_range(0..pieces.len())].clone())
                        .collect();
                    blob.extend(random_bytes(rng.random(), rng.random_range(0..100)));
                    let d = Digest::of(&blob);
                    let size = rng.random_bool(0.5).then_some(blob.len() as u64);
                    match store.begin_fill(d, size) {
                        Ok(mut fill) => {
                            let written = blob
                                .chunks(rng.random_range(1000..3 * CHUNK))
                                .try_for_each(|part| fill.write(part));
                            match written {
                                Ok(()) if rng.random_bool(0.9) => match fill.finish("r/t") {
                                    Ok(_) => mine.push((d, blob)),
                                    Err(StoreError::NoSpace { .. }) => {}
                                    Err(e) => panic!("finish: {e}"),
                                },
                                Ok(()) => drop(fill), // abort
                                Err(StoreError::NoSpace { .. }) => {}
                                Err(e) => panic!("write: {e}"),
                            }
                        }
                        Err(StoreError::NoSpace { .. }) => {}
                        Err(e) => panic!("begin: {e}"),
                    }
                    // Re-read one of ours if it is still there.
                    if !mine.is_empty() {
                        let (d, bytes) = &mine[rng.random_range(0..mine.len())];
                        if let Some(reader) =
                            store.read_blob(d, 0, bytes.len() as u64).expect("read")
                        {
                            let got: Vec<u8> = reader
                                .map(|f| f.expect("frame").to_vec())
                                .collect::<Vec<_>>()
                                .concat();
                            assert_eq!(&got, bytes, "blob {d} read back");
                        }
                    }
                    assert!(store.stored_bytes() <= budget);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread");
    }
    assert_eq!(reserved(&store), 0);
    assert!(
        store.inner.metrics.store_evictions.get() > 0,
        "evictions raced"
    );
    assert_eq!(
        store.inner.budget.pins(),
        (0, 0),
        "no chunk or blob pin is left"
    );
    let stats = store.stats().expect("stats");
    assert_eq!(stats.chunks as usize, chunk_files(&store).len());
    let referenced: std::collections::HashSet<ChunkId> = store
        .list_blobs()
        .expect("list")
        .iter()
        .flat_map(|b| store.blob_chunks(&b.digest).expect("chunks").expect("blob"))
        .map(|c| c.id)
        .collect();
    assert_eq!(referenced.len(), chunk_files(&store).len());
    assert!(store.verify().expect("verify").is_clean());
    let stored = store.stored_bytes();
    drop(store);
    let reopened = open_store(dir.path(), budget, CHUNK);
    assert_eq!(
        reopened.stored_bytes(),
        stored,
        "recovery recounts the same total"
    );
}

#[test]
fn frames_are_mapped_file_ranges_from_any_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 64 << 20, 4 * FRAME_BYTES);
    let bytes = random_bytes(31, 3 * FRAME_BYTES + 12_345);
    let info = put_blob(&store, &bytes, "r/a");
    for start in [
        0,
        7,
        FRAME_BYTES as u64 - 3,
        3 * FRAME_BYTES as u64 + 12_000,
    ] {
        let reader = store
            .read_blob(&info.digest, start, info.size)
            .expect("read_blob")
            .expect("visible");
        let mut out = Vec::new();
        let mut mapped_frames = 0;
        for frame in reader {
            let frame = frame.expect("frame");
            assert!(frame.len() <= FRAME_BYTES);
            if crate::mapped::find(frame.as_ptr(), frame.len()).is_some() {
                mapped_frames += 1;
            }
            out.extend_from_slice(&frame);
        }
        assert_eq!(out, &bytes[start as usize..]);
        if start == 0 {
            assert!(mapped_frames >= 3, "large frames are mappings, not copies");
        }
    }
    let chunk = store
        .blob_chunks(&info.digest)
        .expect("lookup")
        .expect("stored")[0];
    let got = store.read_chunk(&chunk.id, 100, 50).expect("read_chunk");
    assert_eq!(got.as_ref(), &bytes[100..150]);
}

#[test]
fn an_unnamed_fill_is_stored_only_under_the_digest_of_its_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let bytes = random_bytes(7, 3 * CHUNK + 99);
    let right = Digest::of(&bytes);

    // Named with the wrong digest at the end: nothing visible, no files left.
    let mut fill = store.begin_unnamed_fill().expect("begin");
    fill.write(&bytes).expect("write");
    assert_eq!(fill.hashed().clone().finish(), right);
    let wrong = Digest::of(b"not these bytes");
    match fill.finish_as(wrong, "r/x") {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, right);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(store.blob(&wrong).expect("lookup").is_none());
    assert!(store.blob(&right).expect("lookup").is_none());
    assert!(chunk_files(&store).is_empty(), "{:?}", chunk_files(&store));
    assert_eq!(reserved(&store), 0);

    // A plain `finish` cannot commit a fill that was never named.
    let mut fill = store.begin_unnamed_fill().expect("begin");
    fill.write(&bytes).expect("write");
    assert!(fill.finish("r/x").is_err());
    assert!(store.blob(&right).expect("lookup").is_none());
    assert_eq!(reserved(&store), 0);

    // Named with its own digest: stored, readable, byte-exact.
    let mut fill = store.begin_unnamed_fill().expect("begin");
    fill.write(&bytes).expect("write");
    let info = fill.finish_as(right, "r/x").expect("finish");
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(read_range(&store, &right, 0, bytes.len() as u64), bytes);

    // A named fill keeps its name: finishing it as another digest stores nothing.
    let other = random_bytes(8, CHUNK + 1);
    let mut fill = store
        .begin_fill(Digest::of(&other), Some(other.len() as u64))
        .expect("begin");
    fill.write(&other).expect("write");
    assert!(matches!(
        fill.finish_as(right, "r/y"),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store.blob(&Digest::of(&other)).expect("lookup").is_none());
}
