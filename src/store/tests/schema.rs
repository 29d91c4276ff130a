//! The index's schema version: a new store is stamped, a store written before versions
//! were recorded (release 0.1.0, kept as a fixture made by that release's binary) is
//! migrated and serves everything it held, and a store from a newer release is refused
//! with a message that says what to do, its files untouched.

use super::*;
use crate::oci::Sha256Verifier;
use std::fs;

/// A store made by `sparkcr-edge import` of release 0.1.0 (commit 74319d4), before the
/// index recorded a schema version: 64 KiB chunks; one image `docker.io/library/fixture:v1`
/// whose layers are 204,923 random bytes and 196,608 zero bytes (three identical chunks).
const FIXTURE_0_1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-0.1.0");
const FIXTURE_MANIFEST: &str =
    "sha256:77e40d31ca6af0e41f9ba3906d39a644ac771e3764a84d4586a12223685fca0b";
const FIXTURE_BLOBS: [(&str, u64); 3] = [
    (
        "sha256:519bbf4427ce65cd05f107f39ad9b781e44ef756339f8343303f898f41e110d0",
        86,
    ),
    (
        "sha256:032bdfd8527584b9757195671c5defdcb97a409562d99ad015553f8b22f435b7",
        204_923,
    ),
    (
        "sha256:3381de4ca9f3a477f25989dfc8b744e7916046b7aa369f61a9a2f7dc0963ec9e",
        196_608,
    ),
];

/// Copies a directory tree (the fixture is never opened in place: opening writes to it).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy");
    for entry in fs::read_dir(from).expect("read fixture dir").flatten() {
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).expect("copy fixture file");
        }
    }
}

fn digest(s: &str) -> Digest {
    s.parse().expect("digest")
}

#[test]
fn a_new_store_is_stamped_with_the_current_schema_and_reopens_as_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_store(dir.path(), 1 << 20, CHUNK);
        assert_eq!(store.schema_on_open(), SchemaOpen::Created);
        assert_eq!(
            store.inner.index.schema_version().expect("read version"),
            Some(SCHEMA_VERSION)
        );
        put_blob(&store, b"kept", "docker.io/r/a");
    }
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    assert_eq!(store.schema_on_open(), SchemaOpen::Current);
    assert_eq!(store.list_blobs().expect("list").len(), 1);
}

#[test]
fn a_store_without_a_schema_stamp_is_migrated_and_keeps_its_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = random_bytes(7, 3 * CHUNK + 5);
    let d = {
        let store = open_store(dir.path(), 1 << 22, CHUNK);
        let d = put_blob(&store, &bytes, "docker.io/r/a").digest;
        store
            .inner
            .index
            .remove_meta(b"schema_version")
            .expect("unstamp");
        d
    };
    let store = open_store(dir.path(), 1 << 22, CHUNK);
    assert_eq!(store.schema_on_open(), SchemaOpen::Migrated { from: 1 });
    assert_eq!(read_range(&store, &d, 0, bytes.len() as u64), bytes);
    drop(store);
    let store = open_store(dir.path(), 1 << 22, CHUNK);
    assert_eq!(store.schema_on_open(), SchemaOpen::Current);
}

#[test]
fn a_store_from_a_newer_release_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = random_bytes(8, 2 * CHUNK);
    {
        let store = open_store(dir.path(), 1 << 22, CHUNK);
        put_blob(&store, &bytes, "docker.io/r/a");
        store
            .inner
            .index
            .write_raw(
                "meta",
                b"schema_version",
                &(SCHEMA_VERSION + 1).to_be_bytes(),
            )
            .expect("stamp a future version");
    }
    let chunks_before = chunk_files_under(dir.path());
    let opened = Store::open(
        StoreOptions::new(dir.path(), 1 << 22),
        Arc::new(Metrics::new()),
    );
    let Err(e @ StoreError::IndexSchema { .. }) = opened else {
        panic!("a newer schema must be refused");
    };
    let msg = e.to_string();
    assert!(msg.contains("newer sparkcr-edge"), "{msg}");
    assert!(
        msg.contains(&format!("schema {}", SCHEMA_VERSION + 1)),
        "{msg}"
    );
    assert!(msg.contains("move the store directory away"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert_eq!(
        chunk_files_under(dir.path()),
        chunks_before,
        "nothing removed"
    );
    assert!(
        !files_under(&dir.path().join("index")).is_empty(),
        "the index is still there"
    );
}

fn chunk_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = files_under(&dir.join("chunks"));
    files.sort();
    files
}

#[test]
fn a_store_made_by_release_0_1_opens_migrated_and_serves_what_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(Path::new(FIXTURE_0_1), dir.path());
    let store = open_store(dir.path(), 100 << 20, CHUNK);
    assert_eq!(store.schema_on_open(), SchemaOpen::Migrated { from: 1 });
    assert!(
        !store.recovery_report().repaired(),
        "the fixture is consistent: {}",
        store.recovery_report()
    );
    for (d, size) in FIXTURE_BLOBS {
        let d = digest(d);
        let info = store.blob(&d).expect("lookup").expect("blob kept");
        assert_eq!(info.size, size);
        assert_eq!(info.repos, vec!["docker.io/library/fixture".to_string()]);
        let bytes = read_range(&store, &d, 0, size);
        let mut hash = Sha256Verifier::new();
        hash.update(&bytes);
        assert_eq!(hash.finish(), d, "bytes of {d} match their digest");
    }
    let m = store
        .manifest(&digest(FIXTURE_MANIFEST))
        .expect("lookup")
        .expect("manifest kept");
    assert_eq!(Digest::of(&m.bytes), digest(FIXTURE_MANIFEST));
    let tag = store
        .tag(&TagKey {
            upstream: "docker.io".into(),
            repo: "library/fixture".parse().expect("repo"),
            tag: "v1".parse().expect("tag"),
        })
        .expect("lookup")
        .expect("tag kept");
    assert_eq!(tag.digest, digest(FIXTURE_MANIFEST));
    // Three distinct random chunks + one zero chunk (three slots) + the config's chunk,
    // and the manifest's bytes.
    let stats = store.stats().expect("stats");
    assert_eq!((stats.blobs, stats.manifests, stats.tags), (3, 1, 1));
    assert!(store.verify().expect("verify").is_clean());
    // Still a working store: it takes new content and reopens as current.
    put_blob(&store, b"after the upgrade", "docker.io/library/other");
    drop(store);
    let store = open_store(dir.path(), 100 << 20, CHUNK);
    assert_eq!(store.schema_on_open(), SchemaOpen::Current);
    assert_eq!(store.list_blobs().expect("list").len(), 4);
}
