//! The shared tier over an in-memory object store: keys, and the write-through rules (an
//! object only after verification; none for a failed fill).

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
