//! Import's tag rules against a real store: tags the store has with another digest are
//! kept and listed unless replacing is asked for; a dry run writes nothing; a sparse entry
//! that declares a large size is refused before it makes room. Export's temp files are
//! created exclusively.

use super::*;
use crate::metrics::Metrics;
use crate::store::StoreOptions;
use sha2::Digest as _;
use std::sync::Arc;

const IMAGE: &str = "docker.io/team/app:v1";

fn digest_of(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
        .parse()
        .expect("a sha256 digest")
}

/// An image manifest whose config blob is `config`.
fn manifest_for(config: &[u8]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(config).to_string(),
            "size": config.len(),
        },
        "layers": [],
    })
    .to_string()
    .into_bytes()
}

/// A bundle holding one image, tagged [`IMAGE`], whose config is `config`; its manifest's
/// digest.
fn write_bundle(path: &Path, config: &[u8]) -> Digest {
    write_bundle_with(path, config, |_| {})
}

/// [`write_bundle`], with `extra` entries after the blobs.
fn write_bundle_with(
    path: &Path,
    config: &[u8],
    extra: impl FnOnce(&mut tar::Builder<std::fs::File>),
) -> Digest {
    let manifest = manifest_for(config);
    let md = digest_of(&manifest);
    let file = std::fs::File::create(path).expect("bundle file");
    let mut tar = tar::Builder::new(file);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(),
            "size": manifest.len(),
            "annotations": { REF_NAME: IMAGE },
        }],
    })
    .to_string();
    append_bytes(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        path,
    )
    .expect("oci-layout");
    append_bytes(&mut tar, &blob_path(&md), &manifest, path).expect("manifest");
    append_bytes(&mut tar, &blob_path(&digest_of(config)), config, path).expect("config");
    extra(&mut tar);
    append_bytes(&mut tar, "index.json", index.as_bytes(), path).expect("index");
    tar.into_inner().expect("finish the tar");
    md
}

fn key() -> TagKey {
    TagKey {
        upstream: "docker.io".into(),
        repo: "team/app".parse().expect("repository name"),
        tag: "v1".parse().expect("tag"),
    }
}

fn tagged(store: &Store) -> Option<Digest> {
    store.tag(&key()).expect("tag lookup").map(|r| r.digest)
}

#[test]
fn an_import_keeps_tags_that_differ_unless_told_to_replace_them() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(
        StoreOptions::new(dir.path().join("store"), 1 << 30),
        Arc::new(Metrics::new()),
    )
    .expect("store");
    let first = dir.path().join("first.tar");
    let second = dir.path().join("second.tar");
    let a = write_bundle(&first, b"{\"v\":1}");
    let b = write_bundle(&second, b"{\"v\":2}");

    let report = import(&store, &first, ImportOptions::default()).expect("first import");
    assert_eq!(report.tags, vec![IMAGE.to_string()], "{report}");
    assert_eq!(tagged(&store), Some(a));

    // Another digest for the same tag: kept, and said.
    let report = import(&store, &second, ImportOptions::default()).expect("second import");
    assert_eq!(
        report.tags_kept,
        vec![TagChange {
            image: IMAGE.into(),
            store: a,
            bundle: b
        }],
        "{report}"
    );
    assert!(report.tags.is_empty() && report.tags_replaced.is_empty());
    assert!(report.to_string().contains("--replace-tags"), "{report}");
    assert_eq!(tagged(&store), Some(a), "the tag still points where it did");
    assert!(
        report.manifests >= 1,
        "the content itself is imported: {report}"
    );

    // A dry run of the replacement: listed, nothing written.
    let third = dir.path().join("third.tar");
    let c = write_bundle(&third, b"{\"v\":3}");
    let dry = ImportOptions {
        replace_tags: true,
        dry_run: true,
    };
    let report = import(&store, &third, dry).expect("dry run");
    assert!(report.dry_run);
    assert_eq!(report.tags_replaced.len(), 1, "{report}");
    assert_eq!(report.tags_replaced[0].bundle, c);
    assert!(
        report.to_string().contains("nothing was written"),
        "{report}"
    );
    assert_eq!(tagged(&store), Some(a));
    assert!(
        store.manifest(&c).expect("manifest lookup").is_none(),
        "a dry run stores no manifest"
    );

    // Replacing for real.
    let replace = ImportOptions {
        replace_tags: true,
        dry_run: false,
    };
    let report = import(&store, &second, replace).expect("replacing import");
    assert_eq!(report.tags_replaced.len(), 1, "{report}");
    assert!(report.to_string().contains("tags repointed"), "{report}");
    assert_eq!(tagged(&store), Some(b));
}

#[test]
fn export_temp_files_are_new_private_and_unpredictable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("bundle.tar");
    let (p1, _f1) = exclusive_temp(&out, "partial").expect("first temp");
    let (p2, _f2) = exclusive_temp(&out, "partial").expect("second temp");
    assert_ne!(p1, p2);
    assert_eq!(p1.parent(), Some(dir.path()), "beside the bundle");
    let mode = std::fs::metadata(&p1).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The old fixed name, planted as a symlink, is not what the export writes to.
    assert!(!p1.ends_with("bundle.tar.partial"));
    {
        let _gone = RemoveOnDrop(p1.clone());
    }
    assert!(!p1.exists(), "removed on drop");
}

#[test]
fn a_sparse_entry_that_declares_a_large_blob_is_refused_before_it_makes_room() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(
        StoreOptions::new(dir.path().join("store"), 64 << 20),
        metrics.clone(),
    )
    .expect("store");
    // 40 MiB already cached.
    let cached: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    let cd = digest_of(&cached);
    let mut fill = store
        .begin_fill(cd, Some(cached.len() as u64))
        .expect("fill");
    fill.write(&cached).expect("write");
    fill.finish("docker.io/team/cached").expect("stored");
    let before = store.stored_bytes();

    // 512 bytes in the bundle that a GNU sparse header expands to 60 MiB.
    let bundle = dir.path().join("sparse.tar");
    let fake = digest_of(b"declared, never sent");
    write_bundle_with(&bundle, b"{\"v\":9}", |tar| {
        let mut h = tar::Header::new_gnu();
        h.set_path(blob_path(&fake)).expect("path");
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(512);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.set_real_size(60 << 20);
        gnu.sparse[0].set_offset((60 << 20) - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        tar.append(&h, &[7u8; 512][..]).expect("sparse entry");
    });
    let report = import(&store, &bundle, ImportOptions::default()).expect("import");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains(&fake.to_string()) && f.contains("not a plain file")),
        "{report}"
    );
    assert!(store.blob(&fake).expect("lookup").is_none());
    assert!(
        store.blob(&cd).expect("lookup").is_some(),
        "the cached blob stays"
    );
    assert_eq!(metrics.store_evictions.get(), 0, "nothing evicted");
    assert!(store.stored_bytes() >= before);
}

#[test]
fn an_import_leaves_out_what_the_policy_denies() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(
        StoreOptions::new(dir.path().join("store"), 1 << 30),
        Arc::new(Metrics::new()),
    )
    .expect("store");
    let bundle = dir.path().join("b.tar");
    write_bundle(&bundle, b"{\"v\":1}");
    let deny = crate::policy::Policy::from_config(&[crate::config::PolicyConfig {
        name: Some("no-team".into()),
        upstream: "docker.io".into(),
        matches: vec!["team/*".into()],
        action: crate::config::PolicyAction::Deny,
        cooldown: None,
        mode: None,
        require_signature: Vec::new(),
    }])
    .expect("policy");
    let report =
        import_with_policy(&store, &bundle, ImportOptions::default(), &deny).expect("import");
    assert!(report.tags.is_empty(), "{report}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains(IMAGE) && f.contains("\"no-team\"")),
        "{report}"
    );
    assert_eq!(
        tagged(&store),
        None,
        "the denied image's tag was not written"
    );
}
