//! Air-gapped transfer: `export` writes cached images as an OCI image layout tar
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), fetched through a running edge's API;
//! `import` loads such a tar into a (stopped) edge's store, verifying every digest, and
//! records the tags so that pulls by tag work with no upstream. A tag the store already
//! has with another digest is kept unless the import is told to replace tags, and every
//! such tag is reported (a dry run reports only that and writes nothing). Export writes
//! through temp files it creates exclusively (never an existing file or a symlink's target).
//!
//! `index.json` names each image with the annotation `org.opencontainers.image.ref.name`
//! set to the full reference (`docker.io/library/nginx:1.27`); that is how tags come back.
//!
//! Owns: the bundle format. Export talks to the daemon over HTTP only; import writes through
//! the store's public API only (its fills verify sha256, its manifest puts verify digests).

use crate::oci::{is_manifest_media_type, Digest, Reference};
use crate::prefetch::edge_client::{EdgeClient, PlatformChoice};
use crate::prefetch::RequestedImage;
use crate::store::{SeenDigest, Store, StoreError, TagKey, TagRecord};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests are small; anything larger in a bundle is a layer.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Edge(#[from] crate::prefetch::edge_client::EdgeClientError),
    #[error("{path} is not an OCI image layout bundle: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.into(),
        source,
    }
}

#[derive(Debug, Default)]
pub struct ExportReport {
    pub images: Vec<(String, Option<String>)>,
    pub blobs: usize,
    pub bytes: u64,
}

impl ExportReport {
    pub fn failures(&self) -> usize {
        self.images.iter().filter(|(_, e)| e.is_some()).count()
    }
}

/// Writes every requested image (chosen platforms) into `out` as an OCI layout tar.
pub async fn export(
    requested: Vec<RequestedImage>,
    edge: &str,
    platforms: &PlatformChoice,
    ca: Option<&Path>,
    out: &Path,
) -> Result<ExportReport, BundleError> {
    let client = EdgeClient::new(edge, ca)?;
    // Both temp files sit beside `out` (so the last step is a rename) and are removed on
    // every way out; `out` itself is replaced, never written through.
    let (tmp_path, file) = exclusive_temp(out, "partial")?;
    let _tmp_guard = RemoveOnDrop(tmp_path.clone());
    let (scratch, scratch_file) = exclusive_temp(out, "blob")?;
    drop(scratch_file);
    let _scratch_guard = RemoveOnDrop(scratch.clone());
    let mut tar = tar::Builder::new(file);
    let mut written: HashSet<Digest> = HashSet::new();
    let mut index = Vec::new();
    let mut report = ExportReport::default();
    append_bytes(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        &tmp_path,
    )?;
    for req in requested {
        let image = match req.image {
            Ok(i) => i,
            Err(e) => {
                report
                    .images
                    .push((req.source.clone(), Some(format!("{}: {e}", req.source))));
                continue;
            }
        };
        let result: Result<(), BundleError> = async {
            let plan = client.plan(&image, platforms).await?;
            for m in &plan.manifests {
                if written.insert(m.digest) {
                    append_bytes(&mut tar, &blob_path(&m.digest), &m.bytes, &tmp_path)?;
                    report.blobs += 1;
                    report.bytes += m.bytes.len() as u64;
                }
            }
            for b in &plan.blobs {
                if written.contains(&b.digest) {
                    continue;
                }
                // Truncates the file this export created exclusively (a symlink put in its
                // place meanwhile is not followed).
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&scratch)
                    .map_err(io_err(&scratch))?;
                let n = client.fetch_blob(&image, &b.digest, |piece| std::io::Write::write_all(&mut f, piece)).await?;
                drop(f);
                let mut f = std::fs::File::open(&scratch).map_err(io_err(&scratch))?;
                let mut h = tar::Header::new_gnu();
                h.set_size(n);
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, blob_path(&b.digest), &mut f).map_err(io_err(&tmp_path))?;
                written.insert(b.digest);
                report.blobs += 1;
                report.bytes += n;
            }
            let top = &plan.manifests[0];
            let mut desc = serde_json::json!({ "mediaType": top.media_type, "digest": top.digest.to_string(), "size": top.bytes.len() });
            desc["annotations"] = serde_json::json!({ REF_NAME: image.to_string() });
            index.push(desc);
            Ok(())
        }
        .await;
        report
            .images
            .push((image.to_string(), result.err().map(|e| e.to_string())));
    }
    let index_json = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index });
    append_bytes(
        &mut tar,
        "index.json",
        index_json.to_string().as_bytes(),
        &tmp_path,
    )?;
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp_path))?;
    std::fs::rename(&tmp_path, out).map_err(io_err(out))?;
    Ok(report)
}

/// A new file beside `out` with an unpredictable name, created with `O_CREAT|O_EXCL`
/// (so an existing file or symlink of that name is never opened) and mode 0600.
fn exclusive_temp(out: &Path, what: &str) -> Result<(PathBuf, std::fs::File), BundleError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    for _ in 0..16 {
        let path = dir.join(format!(".{base}.{:016x}.{what}", rand::random::<u64>()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(io_err(dir)(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free name for a temp file after 16 tries",
    )))
}

/// Removes a temp file when dropped (after a successful rename there is nothing to remove).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn append_bytes(
    tar: &mut tar::Builder<std::fs::File>,
    name: &str,
    bytes: &[u8],
    path: &Path,
) -> Result<(), BundleError> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes).map_err(io_err(path))
}

/// What an import may do beyond adding content.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Repoint tags the store has with another digest to the bundle's (else they are kept).
    pub replace_tags: bool,
    /// Report the tags the import would create or change, and write nothing.
    pub dry_run: bool,
}

/// A tag the store has with another digest than the bundle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagChange {
    pub image: String,
    pub store: Digest,
    pub bundle: Digest,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub dry_run: bool,
    pub manifests: usize,
    pub blobs: usize,
    pub already_present: usize,
    pub bytes: u64,
    /// Tags created, or left as they were because the store already had the same digest.
    pub tags: Vec<String>,
    /// Tags repointed to the bundle's digest (`--replace-tags`; in a dry run: would be).
    pub tags_replaced: Vec<TagChange>,
    /// Tags the store has with another digest, kept because tags were not to be replaced.
    pub tags_kept: Vec<TagChange>,
    /// Entries that failed verification or could not be stored.
    pub failures: Vec<String>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tags, replaced, kept) = if self.dry_run {
            writeln!(f, "  dry run: nothing was written")?;
            (
                "new or unchanged tags",
                "tags that would be repointed",
                "tags that differ and would be kept",
            )
        } else {
            writeln!(f, "  manifests imported   {}", self.manifests)?;
            writeln!(
                f,
                "  blobs imported       {} ({})",
                self.blobs,
                crate::prefetch::human(self.bytes)
            )?;
            writeln!(f, "  already present      {}", self.already_present)?;
            (
                "tags                ",
                "tags repointed      ",
                "tags kept           ",
            )
        };
        writeln!(f, "  {tags} {}", self.tags.len())?;
        for t in &self.tags {
            writeln!(f, "    {t}")?;
        }
        if self.dry_run || !self.tags_replaced.is_empty() {
            writeln!(f, "  {replaced} {}", self.tags_replaced.len())?;
            for c in &self.tags_replaced {
                writeln!(f, "    {}: {} -> {}", c.image, c.store, c.bundle)?;
            }
        }
        if self.dry_run || !self.tags_kept.is_empty() {
            writeln!(
                f,
                "  {kept} {} (the store's digest differs from the bundle's; --replace-tags repoints them)",
                self.tags_kept.len()
            )?;
            for c in &self.tags_kept {
                writeln!(f, "    {}: store {}, bundle {}", c.image, c.store, c.bundle)?;
            }
        }
        for e in &self.failures {
            writeln!(f, "  FAILED {e}")?;
        }
        Ok(())
    }
}

struct BundleManifest {
    media_type: String,
    bytes: Vec<u8>,
}

/// The media type of a JSON document that is a manifest: its `mediaType`, or, when that is
/// absent (valid OCI; umoci writes such manifests), inferred as clients do: `manifests`
/// makes an OCI index, `config` plus `layers` an OCI image manifest. `None`: not a manifest
/// (an image config, say).
fn manifest_type_of(doc: &serde_json::Value) -> Option<String> {
    if let Some(mt) = doc["mediaType"].as_str().filter(|t| !t.is_empty()) {
        return Some(mt.to_string());
    }
    if doc["schemaVersion"].as_u64() != Some(2) {
        return None;
    }
    if doc["manifests"].is_array() {
        Some("application/vnd.oci.image.index.v1+json".into())
    } else if doc["config"].is_object() && doc["layers"].is_array() {
        Some("application/vnd.oci.image.manifest.v1+json".into())
    } else {
        None
    }
}

fn entry_digest(path: &str) -> Option<Digest> {
    path.trim_start_matches("./")
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| format!("sha256:{hex}").parse().ok())
}

/// Loads a bundle into `store` (or, with `dry_run`, only reports what it would do to tags).
pub fn import(
    store: &Store,
    bundle: &Path,
    options: ImportOptions,
) -> Result<ImportReport, BundleError> {
    import_with_policy(store, bundle, options, &crate::policy::Policy::default())
}

/// [`import`], leaving out (as failures that say so) the images `policy` denies: an
/// air-gapped site's `[[policy]]` holds for what comes in on a bundle too.
pub fn import_with_policy(
    store: &Store,
    bundle: &Path,
    options: ImportOptions,
    policy: &crate::policy::Policy,
) -> Result<ImportReport, BundleError> {
    let format_err = |reason: String| BundleError::Format {
        path: bundle.into(),
        reason,
    };
    // Pass 1: index.json and the manifests (small JSON documents).
    let mut index: Option<serde_json::Value> = None;
    let mut manifests: HashMap<Digest, BundleManifest> = HashMap::new();
    let file = std::fs::File::open(bundle).map_err(io_err(bundle))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(io_err(bundle))? {
        let mut entry = entry.map_err(io_err(bundle))?;
        let path = entry
            .path()
            .map_err(io_err(bundle))?
            .to_string_lossy()
            .into_owned();
        if path.trim_start_matches("./") == "index.json" {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(io_err(bundle))?;
            index = Some(
                serde_json::from_slice(&text)
                    .map_err(|e| format_err(format!("index.json: {e}")))?,
            );
        } else if let Some(d) = entry_digest(&path) {
            if entry.size() <= MAX_MANIFEST {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(io_err(bundle))?;
                if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    let mt = manifest_type_of(&doc).unwrap_or_default();
                    if is_manifest_media_type(&mt) {
                        manifests.insert(
                            d,
                            BundleManifest {
                                media_type: mt,
                                bytes,
                            },
                        );
                    }
                }
            }
        }
    }
    let index = index.ok_or_else(|| format_err("no index.json".into()))?;
    // Which repository each manifest and blob belongs to, from the index's references.
    let mut repo_of: HashMap<Digest, String> = HashMap::new();
    let mut tags: Vec<(crate::prefetch::image_ref::ImageRef, Digest, String)> = Vec::new();
    let mut report = ImportReport::default();
    for (i, desc) in index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(d) = desc["digest"]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            report
                .failures
                .push(format!("index.json manifests[{i}]: no valid digest"));
            continue;
        };
        let Some(name) = desc["annotations"][REF_NAME].as_str() else {
            report.failures.push(format!(
                "index.json manifests[{i}] ({d}): no {REF_NAME} annotation, so no image name to file it under"
            ));
            continue;
        };
        let Ok(image) = crate::prefetch::image_ref::ImageRef::parse(name) else {
            report.failures.push(format!(
                "index.json manifests[{i}] ({d}): {name:?} is not an image reference"
            ));
            continue;
        };
        if let crate::policy::Verdict::DeniedBy(block) =
            policy.decide(&image.registry, image.repo.as_str())
        {
            report.failures.push(format!(
                "{name}: denied by this edge's policy (block \"{block}\" of [[policy]]); not imported"
            ));
            continue;
        }
        if !manifests.contains_key(&d) {
            report.failures.push(format!(
                "{name}: its manifest {d} is not in the bundle (or is not a manifest); not imported"
            ));
            continue;
        }
        let repo_key = format!("{}/{}", image.registry, image.repo);
        let mut stack = vec![d];
        while let Some(m) = stack.pop() {
            repo_of.entry(m).or_insert_with(|| repo_key.clone());
            if let Some(doc) = manifests
                .get(&m)
                .and_then(|bm| serde_json::from_slice::<serde_json::Value>(&bm.bytes).ok())
            {
                let children = doc["manifests"].as_array().into_iter().flatten();
                let blobs = std::iter::once(&doc["config"])
                    .chain(doc["layers"].as_array().into_iter().flatten());
                for c in children.chain(blobs) {
                    if let Some(cd) = c["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
                        if manifests.contains_key(&cd) {
                            stack.push(cd);
                        } else {
                            repo_of.entry(cd).or_insert_with(|| repo_key.clone());
                        }
                    }
                }
            }
        }
        let media_type = manifests
            .get(&d)
            .map(|m| m.media_type.clone())
            .unwrap_or_else(|| desc["mediaType"].as_str().unwrap_or_default().to_string());
        tags.push((image, d, media_type));
    }
    // What the tags would do to the store's: decided before anything is written.
    let mut tag_writes = Vec::new();
    for (image, digest, media_type) in tags {
        let Reference::Tag(tag) = &image.reference else {
            continue;
        };
        let key = TagKey {
            upstream: image.registry.clone(),
            repo: image.repo.clone(),
            tag: tag.clone(),
        };
        match store.tag(&key)? {
            Some(old) if old.digest != digest => {
                let change = TagChange {
                    image: image.to_string(),
                    store: old.digest,
                    bundle: digest,
                };
                if options.replace_tags {
                    report.tags_replaced.push(change);
                    tag_writes.push((image, key, digest, media_type));
                } else {
                    report.tags_kept.push(change);
                }
            }
            _ => {
                report.tags.push(image.to_string());
                tag_writes.push((image, key, digest, media_type));
            }
        }
    }
    if options.dry_run {
        report.dry_run = true;
        return Ok(report);
    }
    let mut stored: HashSet<Digest> = HashSet::new();
    for (d, m) in &manifests {
        let repo = repo_of.get(d).cloned().unwrap_or_default();
        match store.put_manifest(d, &m.media_type, &m.bytes, &repo) {
            Ok(()) => {
                report.manifests += 1;
                stored.insert(*d);
            }
            Err(e) => report.failures.push(format!("manifest {d}: {e}")),
        }
    }
    // Pass 2: the blobs, streamed through store fills (which verify sha256).
    let file = std::fs::File::open(bundle).map_err(io_err(bundle))?;
    let mut archive = tar::Archive::new(file);
    let mut buf = vec![0u8; 1 << 20];
    for entry in archive.entries().map_err(io_err(bundle))? {
        let mut entry = entry.map_err(io_err(bundle))?;
        let path = entry
            .path()
            .map_err(io_err(bundle))?
            .to_string_lossy()
            .into_owned();
        let Some(d) = entry_digest(&path) else {
            continue;
        };
        if manifests.contains_key(&d) {
            continue;
        }
        if store.blob(&d)?.is_some() {
            report.already_present += 1;
            continue;
        }
        // Only a regular entry's size is bytes in the bundle: a sparse entry (GNU) expands
        // a few bytes into any size it declares, which would be stored (and make room)
        // before its digest could fail. An export never writes one.
        let kind = entry.header().entry_type();
        if !kind.is_file() || entry.size() != entry.header().entry_size().unwrap_or(0) {
            report.failures.push(format!(
                "blob {d}: not a plain file in the bundle (a {kind:?} entry): skipped"
            ));
            continue;
        }
        let size = entry.size();
        let mut fill = match store.begin_fill(d, Some(size)) {
            Ok(f) => f,
            Err(e) => {
                report.failures.push(format!("blob {d}: {e}"));
                continue;
            }
        };
        let copied: Result<(), String> = loop {
            match entry.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = fill.write(&buf[..n]) {
                        break Err(e.to_string());
                    }
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        let repo = repo_of.get(&d).cloned().unwrap_or_default();
        match copied.and_then(|()| fill.finish(&repo).map_err(|e| e.to_string())) {
            Ok(_) => {
                report.blobs += 1;
                report.bytes += size;
            }
            Err(e) => report.failures.push(format!("blob {d}: {e}")),
        }
    }
    // Every image manifest imported must have its config and layers, from the bundle or
    // already in the store (an index's children for platforms not exported may be absent).
    for (d, m) in &manifests {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
            continue;
        };
        let blobs =
            std::iter::once(&doc["config"]).chain(doc["layers"].as_array().into_iter().flatten());
        for b in blobs {
            if let Some(bd) = b["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
                if store.blob(&bd)?.is_none() {
                    report.failures.push(format!(
                        "manifest {d}: blob {bd} is neither in the bundle nor in the store"
                    ));
                }
            }
        }
    }
    let now = std::time::SystemTime::now();
    for (image, key, digest, media_type) in tag_writes {
        if !stored.contains(&digest) {
            // Its manifest failed, and says so above: the tag is not written.
            let name = image.to_string();
            report.tags.retain(|t| *t != name);
            report.tags_replaced.retain(|c| c.image != name);
            continue;
        }
        let rec = TagRecord {
            digest,
            media_type,
            fetched_at: now,
            validated_at: now,
            // An admin chose what the bundle holds: no cooldown holds it back.
            seen: vec![SeenDigest {
                digest,
                first_seen: now,
                released: true,
            }],
        };
        if let Err(e) = store.put_tag(&key, &rec) {
            let name = image.to_string();
            report.tags.retain(|t| *t != name);
            report.tags_replaced.retain(|c| c.image != name);
            report.failures.push(format!("tag {image}: {e}"));
        }
    }
    store.flush_access()?;
    Ok(report)
}

#[cfg(test)]
mod tests;
