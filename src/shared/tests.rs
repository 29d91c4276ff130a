//! The shared tier over an in-memory object store: keys, the write-through rules (an
//! object only after verification; none for a failed fill), and the catch-up of writes
//! missed while the tier was down (uploaded from the local store once it answers again;
//! never from a local copy that does not match its digest).

use super::*;
use crate::store::{GrowthFailure, Store, StoreOptions};
use object_store::memory::InMemory;

#[test]
fn keys_are_content_addressed_under_the_prefix() {
    let metrics = Arc::new(Metrics::new());
    let d = Digest::of(b"x");
    let tier = SharedTier::with_store(Arc::new(InMemory::new()), "/site-a/", metrics.clone());
    assert_eq!(
        tier.blob_key(&d).to_string(),
        format!("site-a/blobs/sha256/{}", d.hex())
    );
    let bare = SharedTier::with_store(Arc::new(InMemory::new()), "", metrics);
    assert_eq!(
        bare.manifest_key(&d).to_string(),
        format!("manifests/sha256/{}", d.hex())
    );
}

/// 12 MiB of pseudo-random bytes (two multipart parts) and their digest.
fn blob_bytes() -> (Vec<u8>, Digest) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..(12 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let d = Digest::of(&bytes);
    (bytes, d)
}

async fn counted(metrics: &Metrics, outcome: &str, want: u64) {
    for _ in 0..200 {
        if metrics
            .tiers
            .shared_uploads
            .with_label_values(&[outcome])
            .get()
            >= want
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no upload ended {outcome}");
}

/// A 12 MiB blob being filled, written through to an in-memory store.
struct WritingThrough {
    _dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
    objects: Arc<InMemory>,
    tier: Arc<SharedTier>,
    bytes: Vec<u8>,
    digest: Digest,
    input: crate::store::BlobInput,
    _writer: crate::store::BlobWriter,
}

fn writing_through() -> WritingThrough {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let store =
        Store::open(StoreOptions::new(dir.path(), 1 << 30), metrics.clone()).expect("store");
    let objects = Arc::new(InMemory::new());
    let tier = SharedTier::with_store(objects.clone(), "p", metrics.clone());
    let (bytes, digest) = blob_bytes();
    let (blob, input, writer) = store.begin_growing(digest, Some(bytes.len() as u64));
    tier.spawn_write_through(blob, "up/repo".into());
    WritingThrough {
        _dir: dir,
        metrics,
        objects,
        tier,
        bytes,
        digest,
        input,
        _writer: writer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_appears_only_after_the_fill_verified_its_digest() {
    let w = writing_through();
    let (metrics, objects, tier, bytes, d, mut input) =
        (&w.metrics, &w.objects, &w.tier, &w.bytes, w.digest, w.input);
    for frame in bytes.chunks(1 << 20) {
        input.push(Bytes::copy_from_slice(frame)).expect("push");
    }
    // Every byte is there but the digest is not checked yet: no object.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        objects.head(&tier.blob_key(&d)).await.is_err(),
        "no object before verification"
    );
    input.hashed_all().await;
    input.finish().expect("digest matches");
    counted(metrics, "completed", 1).await;
    let got = objects
        .get(&tier.blob_key(&d))
        .await
        .expect("object")
        .bytes()
        .await
        .expect("bytes");
    assert!(got == bytes[..]);
    assert_eq!(
        metrics
            .tiers
            .shared_bytes
            .with_label_values(&["written"])
            .get(),
        bytes.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_aborts_the_upload_and_leaves_no_object() {
    let w = writing_through();
    let (metrics, objects, tier, bytes, d, mut input) =
        (&w.metrics, &w.objects, &w.tier, &w.bytes, w.digest, w.input);
    // More than one part's worth, then the source breaks beyond resume.
    for frame in bytes[..10 << 20].chunks(1 << 20) {
        input.push(Bytes::copy_from_slice(frame)).expect("push");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    input.fail(GrowthFailure::Source("upstream reset".into()));
    counted(metrics, "aborted", 1).await;
    assert!(
        objects.head(&tier.blob_key(&d)).await.is_err(),
        "no object for a failed fill"
    );
    assert_eq!(
        metrics
            .tiers
            .shared_uploads
            .with_label_values(&["completed"])
            .get(),
        0
    );
}

/// Waits up to 5 s for a catch-up outcome's count to reach `want`.
async fn caught_up(metrics: &Metrics, outcome: &str, want: u64) {
    for _ in 0..500 {
        if metrics
            .tiers
            .shared_catch_up
            .with_label_values(&[outcome])
            .get()
            >= want
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("catch-up never counted {want} {outcome}");
}

fn open_store(dir: &std::path::Path, metrics: &Arc<Metrics>) -> Store {
    Store::open(StoreOptions::new(dir, 1 << 30), metrics.clone()).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_missed_while_down_are_caught_up_from_the_local_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let store = open_store(dir.path(), &metrics);
    let objects = Arc::new(InMemory::new());
    let tier = SharedTier::with_store_catching_up(objects.clone(), "p", metrics.clone(), Some(100));
    let _catch_up = tier.spawn_catch_up(store.clone()).expect("catch-up task");
    tier.failed("get", "test: the tier is down");
    assert!(!tier.is_up());

    // A 12 MiB blob filled from the upstream while the tier is down: not written through,
    // remembered once the fill is verified and stored.
    let (bytes, d) = blob_bytes();
    let (blob, mut input, mut writer) = store.begin_growing(d, Some(bytes.len() as u64));
    tier.spawn_write_through(blob, "up/repo".into());
    for frame in bytes.chunks(1 << 20) {
        input.push(Bytes::copy_from_slice(frame)).expect("push");
        writer.write(frame);
    }
    input.hashed_all().await;
    input.finish().expect("digest matches");
    let keeping = tokio::task::spawn_blocking(move || writer.finish("up/repo", Duration::ZERO))
        .await
        .expect("writer");
    assert_eq!(keeping, crate::store::Keeping::Stored);
    // A manifest fetched meanwhile (stored locally first, as the cache does).
    let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let md = Digest::of(&manifest);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    store
        .put_manifest(&md, mt, &manifest, "up/repo")
        .expect("store manifest");
    tier.put_manifest(md, mt.into(), manifest.clone(), "up/repo".into());
    let pending = &metrics.tiers.shared_catch_up_pending;
    for _ in 0..500 {
        if pending.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending.get(), 2, "the blob and the manifest are remembered");
    assert!(objects.head(&tier.blob_key(&d)).await.is_err());

    // The tier answers again: both go up from the local store.
    tier.answered();
    caught_up(&metrics, "uploaded", 2).await;
    assert_eq!(pending.get(), 0);
    let got = objects.get(&tier.blob_key(&d)).await.expect("blob object");
    assert_eq!(
        got.attributes
            .get(&Attribute::Metadata(REPO_METADATA.into()))
            .map(|v| v.to_string())
            .as_deref(),
        Some("up/repo")
    );
    assert!(got.bytes().await.expect("bytes") == bytes[..]);
    let m = tier.manifest(&md).await.expect("manifest object");
    assert_eq!((m.media_type.as_str(), &m.bytes), (mt, &manifest));

    // Remembered again (say, by another failure): already there, skipped.
    tier.missed(catch_up::Kind::Blob, d, "up/repo".into());
    caught_up(&metrics, "skipped", 1).await;
    assert_eq!(
        metrics
            .tiers
            .shared_catch_up
            .with_label_values(&["uploaded"])
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_never_completes_an_upload_whose_local_bytes_do_not_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let store = open_store(dir.path(), &metrics);
    let objects = Arc::new(InMemory::new());
    let tier = SharedTier::with_store_catching_up(objects.clone(), "p", metrics.clone(), Some(2));
    let (bytes, d) = blob_bytes();
    let mut fill = store.begin_fill(d, Some(bytes.len() as u64)).expect("fill");
    fill.write(&bytes).expect("write");
    fill.finish("up/repo").expect("stored");
    // Behind the store's back: one byte of every chunk file flipped, sizes unchanged.
    let mut files = vec![dir.path().join("chunks")];
    let mut flipped = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                files.push(e.expect("entry").path());
            }
        } else {
            use std::io::{Read, Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .expect("chunk file");
            let mut b = [0u8; 1];
            f.seek(SeekFrom::Start(7)).expect("seek");
            f.read_exact(&mut b).expect("read");
            f.seek(SeekFrom::Start(7)).expect("seek");
            f.write_all(&[b[0] ^ 0xff]).expect("write");
            flipped += 1;
        }
    }
    assert!(flipped >= 1);

    // Three remembered with room for two: the oldest (an unknown digest) is forgotten.
    tier.missed(catch_up::Kind::Blob, Digest::of(b"gone"), "up/repo".into());
    tier.missed(
        catch_up::Kind::Blob,
        Digest::of(b"evicted"),
        "up/repo".into(),
    );
    tier.missed(catch_up::Kind::Blob, d, "up/repo".into());
    let count = |o: &str| metrics.tiers.shared_catch_up.with_label_values(&[o]).get();
    assert_eq!(count("dropped"), 1);
    assert_eq!(metrics.tiers.shared_catch_up_pending.get(), 2);
    tier.catch_up_pass(&store).await;
    assert_eq!(count("skipped"), 1, "no longer in the local store");
    assert_eq!(count("failed"), 1, "the local copy does not match");
    assert_eq!(count("uploaded"), 0);
    assert_eq!(metrics.tiers.shared_catch_up_pending.get(), 0);
    assert!(
        matches!(
            objects.head(&tier.blob_key(&d)).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "no object from bytes that do not match"
    );
    assert!(tier.is_up(), "a bad local copy is not the tier's failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_catch_up_nothing_is_remembered() {
    let metrics = Arc::new(Metrics::new());
    let tier = SharedTier::with_store(Arc::new(InMemory::new()), "p", metrics.clone());
    tier.failed("get", "test: the tier is down");
    let m = Bytes::from_static(b"{}");
    tier.put_manifest(Digest::of(&m), "m".into(), m, "up/repo".into());
    tier.missed(catch_up::Kind::Blob, Digest::of(b"x"), "up/repo".into());
    assert_eq!(metrics.tiers.shared_catch_up_pending.get(), 0);
    assert!(tier.catch_up.is_none());
}
