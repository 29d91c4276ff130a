//! Behaviour tests of the store through its public API (plus a peek at its state where a
//! guarantee is about internals, such as reservations returning to zero).

use super::*;
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use std::fs;

const KIB: usize = 1 << 10;
const CHUNK: usize = 64 * KIB;

fn open_store(dir: &Path, budget: u64, chunk_size: usize) -> Store {
    let mut opts = StoreOptions::new(dir, budget);
    opts.chunk_size = chunk_size;
    Store::open(opts, Arc::new(Metrics::new())).expect("open store")
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn put_blob(store: &Store, bytes: &[u8], repo: &str) -> BlobInfo {
    let mut fill = store
        .begin_fill(Digest::of(bytes), Some(bytes.len() as u64))
        .expect("begin fill");
    fill.write(bytes).expect("write");
    fill.finish(repo).expect("finish")
}

fn read_range(store: &Store, d: &Digest, start: u64, end: u64) -> Vec<u8> {
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
fn files_under(dir: &Path) -> Vec<PathBuf> {
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

fn chunk_files(store: &Store) -> Vec<PathBuf> {
    files_under(&store.path().join("chunks"))
}

fn tmp_files(store: &Store) -> Vec<PathBuf> {
    files_under(&store.path().join("tmp"))
}

fn reserved(store: &Store) -> u64 {
    store.inner.lock_state().reserved_bytes
}

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
    // ...while a big fill evicts x.
    let big = random_bytes(22, 7 * CHUNK);
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
    // Needs a's room, but a is being read.
    let b = random_bytes(31, 2 * CHUNK);
    match store.begin_fill(Digest::of(&b), Some(b.len() as u64)) {
        Err(StoreError::NoSpace {
            needed,
            budget: got,
        }) => {
            assert_eq!(needed, b.len() as u64);
            assert_eq!(got, budget);
        }
        Err(e) => panic!("expected NoSpace, got {e}"),
        Ok(_) => panic!("expected NoSpace, got a fill"),
    }
    // Unknown size: fails at the chunk that does not fit, and cleans up.
    let mut fill = store.begin_fill(Digest::of(&b), None).expect("begin");
    assert!(matches!(fill.write(&b), Err(StoreError::NoSpace { .. })));
    drop(fill);
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

#[test]
fn a_second_open_is_refused_while_the_store_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let second = Store::open(
        StoreOptions::new(dir.path(), 1 << 20),
        Arc::new(Metrics::new()),
    );
    match second {
        Err(e @ StoreError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("in use by a running sparkcr-edge"), "{msg}");
            assert!(msg.contains("LOCK"), "{msg}");
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got a second store"),
    }
    drop(store);
    open_store(dir.path(), 1 << 20, CHUNK);
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.chunk_size = 1000;
    assert!(matches!(
        Store::open(opts, Arc::new(Metrics::new())),
        Err(StoreError::InvalidOptions(_))
    ));
}

#[test]
fn manifests_are_checked_against_their_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let body = br#"{"schemaVersion":2}"#;
    let d = Digest::of(body);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert!(matches!(
        store.put_manifest(&Digest::of(b"other"), mt, body, "docker.io/library/a"),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store
        .manifest(&Digest::of(b"other"))
        .expect("get")
        .is_none());
    assert_eq!(store.stored_bytes(), 0);
    store
        .put_manifest(&d, mt, body, "docker.io/library/a")
        .expect("put");
    store.add_repo(&d, "docker.io/library/b").expect("add repo");
    store
        .add_repo(&d, "docker.io/library/b")
        .expect("idempotent");
    let m = store.manifest(&d).expect("get").expect("stored");
    assert_eq!(m.media_type, mt);
    assert_eq!(&m.bytes[..], body);
    assert_eq!(m.repos, vec!["docker.io/library/a", "docker.io/library/b"]);
    assert_eq!(store.stored_bytes(), body.len() as u64);
    // Storing it again adds nothing to the budget.
    store
        .put_manifest(&d, mt, body, "ghcr.io/x/y")
        .expect("again");
    assert_eq!(store.stored_bytes(), body.len() as u64);
}

fn tag_key(upstream: &str, repo: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: upstream.into(),
        repo: repo.parse().expect("repo"),
        tag: tag.parse().expect("tag"),
    }
}

#[test]
fn tags_tag_lists_and_repositories_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let k = tag_key("docker.io", "library/nginx", "latest");
    assert!(store.tag(&k).expect("tag").is_none());
    let now = SystemTime::now();
    let rec = TagRecord {
        digest: Digest::of(b"m1"),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        fetched_at: now,
        validated_at: now,
    };
    store.put_tag(&k, &rec).expect("put");
    let got = store.tag(&k).expect("tag").expect("present");
    assert_eq!(got.digest, rec.digest);
    assert_eq!(got.media_type, rec.media_type);
    let later = TagRecord {
        validated_at: now + Duration::from_secs(5),
        ..rec.clone()
    };
    store.put_tag(&k, &later).expect("update");
    assert_eq!(
        index::micros(store.tag(&k).expect("tag").expect("present").validated_at),
        index::micros(later.validated_at)
    );
    assert!(store
        .tag(&tag_key("docker.io", "library/nginx", "other"))
        .expect("tag")
        .is_none());
    assert!(store
        .tag(&tag_key("ghcr.io", "library/nginx", "latest"))
        .expect("tag")
        .is_none());

    let repo: RepositoryName = "library/nginx".parse().expect("repo");
    let json = br#"{"name":"library/nginx","tags":["latest"]}"#;
    assert!(store.tag_list("docker.io", &repo).expect("list").is_none());
    store
        .put_tag_list("docker.io", &repo, json)
        .expect("put list");
    assert_eq!(
        store.tag_list("docker.io", &repo).expect("list").as_deref(),
        Some(&json[..])
    );

    put_blob(&store, b"layer", "ghcr.io/org/img");
    let repos = store.repositories().expect("repositories");
    let names: Vec<String> = repos.iter().map(|(u, r)| format!("{u}/{r}")).collect();
    assert_eq!(names, vec!["docker.io/library/nginx", "ghcr.io/org/img"]);
    assert_eq!(store.stats().expect("stats").tags, 1);
}

#[test]
fn ttl_from_access_renews_on_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.chunk_size = CHUNK;
    opts.ttl = Some(Duration::from_millis(800));
    opts.ttl_from = TtlFrom::Access;
    let store = Store::open(opts, Arc::new(Metrics::new())).expect("open");
    let hot = put_blob(&store, b"hot", "r/a").digest;
    let cold = put_blob(&store, b"cold", "r/a").digest;
    let body = b"{}";
    store
        .put_manifest(&Digest::of(body), "m", body, "r/a")
        .expect("manifest");
    let now = SystemTime::now();
    let tag = TagRecord {
        digest: Digest::of(body),
        media_type: "m".into(),
        fetched_at: now,
        validated_at: now,
    };
    store.put_tag(&tag_key("u", "a", "t"), &tag).expect("tag");
    assert_eq!(
        store.sweep_expired(SystemTime::now()).expect("sweep"),
        SweepReport::default()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(store.blob(&hot).expect("hit").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let report = store.sweep_expired(SystemTime::now()).expect("sweep");
    assert_eq!(
        (report.blobs, report.manifests, report.tags),
        (1, 1, 1),
        "{report}"
    );
    assert!(store.blob(&cold).expect("lookup").is_none());
    assert!(
        store.blob(&hot).expect("lookup").is_some(),
        "renewed by the hit"
    );
    assert_eq!(store.stored_bytes(), 3);
    // Far in the future everything has expired.
    let report = store
        .sweep_expired(SystemTime::now() + Duration::from_secs(3600))
        .expect("sweep");
    assert_eq!(report.blobs, 1);
    assert_eq!(store.stored_bytes(), 0);
    assert!(chunk_files(&store).is_empty());
    assert_eq!(
        store
            .inner
            .metrics
            .store_expired
            .with_label_values(&["blob"])
            .get(),
        2
    );
}

#[test]
fn ttl_from_fetch_is_not_renewed_and_none_never_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.ttl = Some(Duration::from_millis(800));
    opts.ttl_from = TtlFrom::Fetch;
    let store = Store::open(opts, Arc::new(Metrics::new())).expect("open");
    let hot = put_blob(&store, b"hot", "r/a").digest;
    std::thread::sleep(Duration::from_millis(500));
    assert!(store.blob(&hot).expect("hit").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let report = store.sweep_expired(SystemTime::now()).expect("sweep");
    assert_eq!(report.blobs, 1);
    assert!(store.blob(&hot).expect("lookup").is_none());
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let d = put_blob(&store, b"forever", "r/a").digest;
    let far = SystemTime::now() + Duration::from_secs(10 * 365 * 86400);
    assert_eq!(
        store.sweep_expired(far).expect("sweep"),
        SweepReport::default()
    );
    assert!(store.blob(&d).expect("lookup").is_some());
}

#[test]
fn purge_by_repo_and_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let only_a = put_blob(&store, b"only a", "docker.io/library/a").digest;
    let shared = put_blob(&store, b"shared", "docker.io/library/a").digest;
    store.add_repo(&shared, "ghcr.io/org/b").expect("add");
    let only_b = put_blob(&store, b"only b", "ghcr.io/org/b").digest;
    let now = SystemTime::now();
    let tag = TagRecord {
        digest: only_a,
        media_type: "m".into(),
        fetched_at: now,
        validated_at: now,
    };
    store
        .put_tag(&tag_key("docker.io", "library/a", "v1"), &tag)
        .expect("tag a");
    store
        .put_tag(&tag_key("ghcr.io", "org/b", "v1"), &tag)
        .expect("tag b");

    let report = store.purge(None, Some("library/a")).expect("purge");
    assert_eq!(
        (report.blobs, report.detached, report.tags),
        (1, 1, 1),
        "{report}"
    );
    assert!(store.blob(&only_a).expect("lookup").is_none());
    let kept = store.blob(&shared).expect("lookup").expect("shared kept");
    assert_eq!(kept.repos, vec!["ghcr.io/org/b"]);
    assert!(store.blob(&only_b).expect("lookup").is_some());
    assert!(store
        .tag(&tag_key("docker.io", "library/a", "v1"))
        .expect("tag")
        .is_none());

    // By age: nothing is an hour old; everything is older than 1 ms after a pause.
    let report = store
        .purge(Some(Duration::from_secs(3600)), None)
        .expect("purge");
    assert_eq!(report, PurgeReport::default());
    std::thread::sleep(Duration::from_millis(20));
    let report = store
        .purge(Some(Duration::from_millis(1)), None)
        .expect("purge");
    assert_eq!((report.blobs, report.tags), (2, 1), "{report}");
    assert_eq!(store.stored_bytes(), 0);
    assert!(chunk_files(&store).is_empty());
    assert!(report.to_string().contains("blobs removed"));
}

#[test]
fn verify_drops_a_blob_whose_chunk_was_corrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let good = random_bytes(40, 3 * CHUNK);
    let bad = random_bytes(41, 2 * CHUNK + 5);
    put_blob(&store, &good, "r/good");
    let bad_d = put_blob(&store, &bad, "r/bad").digest;
    let clean = store.verify().expect("verify");
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(clean.blobs_checked, 2);

    let victim = store.blob_chunks(&bad_d).expect("chunks").expect("blob")[1];
    let path = store.inner.chunks.path(&victim.id);
    let mut content = fs::read(&path).expect("read chunk");
    content[17] ^= 0x40;
    fs::write(&path, &content).expect("write chunk");

    let report = store.verify().expect("verify");
    assert_eq!(report.corrupt_blobs, vec![bad_d], "{report}");
    assert_eq!(report.corrupt_chunks, vec![victim.id]);
    assert!(store.blob(&bad_d).expect("lookup").is_none());
    assert!(!path.exists(), "the corrupt chunk file was removed");
    assert_eq!(
        read_range(&store, &Digest::of(&good), 0, good.len() as u64),
        good
    );
    assert_eq!(store.stored_bytes(), 3 * CHUNK as u64);
    assert!(store.verify().expect("verify").is_clean());
}

#[test]
fn recovery_removes_orphans_and_drops_blobs_with_missing_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intact, broken);
    {
        let store = open_store(dir.path(), 16 << 20, CHUNK);
        intact = put_blob(&store, &random_bytes(50, 2 * CHUNK), "r/a");
        broken = put_blob(&store, &random_bytes(51, 2 * CHUNK), "r/b");
        let victim = store.blob_chunks(&broken.digest).expect("c").expect("b")[0];
        fs::remove_file(store.inner.chunks.path(&victim.id)).expect("remove chunk");
        // An orphan chunk (a fill that crashed before its commit) and a temp file.
        let orphan = random_bytes(52, 1000);
        store
            .inner
            .chunks
            .write(&ChunkId::of(&orphan), &orphan)
            .expect("orphan");
        fs::write(store.path().join("tmp").join("half.tmp"), b"partial").expect("tmp");
    }
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let report = store.recovery_report();
    assert_eq!(
        (
            report.tmp_removed,
            report.orphan_chunks_removed,
            report.blobs_dropped
        ),
        (1, 2, 1),
        "{report}"
    );
    assert!(store.blob(&intact.digest).expect("lookup").is_some());
    assert!(store.blob(&broken.digest).expect("lookup").is_none());
    assert_eq!(
        chunk_files(&store).len(),
        2,
        "only the intact blob's chunks"
    );
    assert!(tmp_files(&store).is_empty());
    assert_eq!(store.stored_bytes(), 2 * CHUNK as u64);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.blobs, stats.chunks), (1, 2));
    assert!(stats.to_string().contains("blobs"), "{stats}");
}

#[test]
fn recency_survives_a_reopen_through_flush_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Evicting one 5-chunk blob makes room for 12 chunks under the 90 % watermark.
    let budget = 20 * CHUNK as u64;
    let (old, newer);
    {
        let store = open_store(dir.path(), budget, CHUNK);
        old = put_blob(&store, &random_bytes(60, 5 * CHUNK), "r/a").digest;
        newer = put_blob(&store, &random_bytes(61, 5 * CHUNK), "r/a").digest;
        assert!(store.blob(&old).expect("hit").is_some());
        store.flush_access().expect("flush access");
    }
    let store = open_store(dir.path(), budget, CHUNK);
    put_blob(&store, &random_bytes(62, 12 * CHUNK), "r/a");
    assert!(store.blob(&old).expect("lookup").is_some(), "recently read");
    assert!(
        store.blob(&newer).expect("lookup").is_none(),
        "least recent"
    );
}

#[test]
fn corrupt_records_are_dropped_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let d = put_blob(&store, b"abc", "r/a").digest;
    store
        .inner
        .index
        .blobs
        .insert(d.as_bytes(), &[RECORD_VERSION_FOR_TESTS, 1, 2][..])
        .expect("corrupt it");
    assert!(store.blob(&d).expect("lookup is not an error").is_none());
    assert!(store.read_blob(&d, 0, 0).expect("no error").is_none());
    assert_eq!(
        store
            .inner
            .metrics
            .store_errors
            .with_label_values(&["corrupt_record"])
            .get(),
        1
    );
}

const RECORD_VERSION_FOR_TESTS: u8 = index::RECORD_VERSION;

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
    assert!(store.inner.lock_state().chunk_pins.is_empty());
    assert!(store.inner.lock_state().blob_pins.is_empty());
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
