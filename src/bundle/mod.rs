//! Air-gapped transfer: `export` writes cached images as an OCI image layout tar
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), fetched through a running edge's API;
//! `import` loads such a tar into a (stopped) edge's store, verifying every digest, and
//! records the tags so that pulls by tag work with no upstream.
//!
//! `index.json` names each image with the annotation `org.opencontainers.image.ref.name`
//! set to the full reference (`docker.io/library/nginx:1.27`); that is how tags come back.
//!
//! Owns: the bundle format. Export talks to the daemon over HTTP only; import writes through
//! the store's public API only (its fills verify sha256, its manifest puts verify digests).

use crate::oci::{is_manifest_media_type, Digest, Reference};
use crate::prefetch::edge_client::{EdgeClient, PlatformChoice};
use crate::prefetch::RequestedImage;
use crate::store::{Store, StoreError, TagKey, TagRecord};
use std::collections::{HashMap, HashSet};
use std::io::Read;
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
    let tmp_path = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&tmp_path).map_err(io_err(&tmp_path))?;
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
    let scratch = tempfile_in(out)?;
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
                let mut f = std::fs::File::create(&scratch).map_err(io_err(&scratch))?;
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
    let _ = std::fs::remove_file(&scratch);
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

fn tempfile_in(out: &Path) -> Result<PathBuf, BundleError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.join(format!(".sparkcr-export-{}.blob", std::process::id())))
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

#[derive(Debug, Default)]
pub struct ImportReport {
    pub manifests: usize,
    pub blobs: usize,
    pub already_present: usize,
    pub bytes: u64,
    pub tags: Vec<String>,
    /// Entries that failed verification or could not be stored.
    pub failures: Vec<String>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  manifests imported   {}", self.manifests)?;
        writeln!(
            f,
            "  blobs imported       {} ({})",
            self.blobs,
            crate::prefetch::human(self.bytes)
        )?;
        writeln!(f, "  already present      {}", self.already_present)?;
        writeln!(f, "  tags                 {}", self.tags.len())?;
        for t in &self.tags {
            writeln!(f, "    {t}")?;
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

/// Loads a bundle into `store`.
pub fn import(store: &Store, bundle: &Path) -> Result<ImportReport, BundleError> {
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
    for (image, digest, media_type) in tags {
        if !stored.contains(&digest) {
            continue; // its manifest failed, and says so above
        }
        if let Reference::Tag(tag) = &image.reference {
            let key = TagKey {
                upstream: image.registry.clone(),
                repo: image.repo.clone(),
                tag: tag.clone(),
            };
            let rec = TagRecord {
                digest,
                media_type,
                fetched_at: now,
                validated_at: now,
            };
            match store.put_tag(&key, &rec) {
                Ok(()) => report.tags.push(image.to_string()),
                Err(e) => report.failures.push(format!("tag {image}: {e}")),
            }
        }
    }
    store.flush_access()?;
    Ok(report)
}
