//! Test images built from scratch, in every manifest format a pull may meet: an OCI image,
//! an OCI index with two platforms, a Docker schema2 image and a Docker manifest list.
//! Layers are real gzipped tars (deterministic content from a seed) with matching
//! `diff_ids`, so real clients can unpack them.
#![allow(dead_code)]

use super::registry2::{sha256_digest, Registry2};
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Deterministic pseudo-random bytes (xorshift), so a seed names a layer.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzipped tar with one file of `size` pseudo-random bytes; returns (gzip, tar digest).
pub fn layer(seed: u64, size: usize) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let data = pseudo_random(seed, size);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, format!("data-{seed}.bin"), &data[..])
        .expect("tar");
    let tar_bytes = tar.into_inner().expect("tar finish");
    let diff_id = sha256_digest(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
    (gz.finish().expect("gzip finish"), diff_id)
}

/// One platform's image as pushed: the manifest and every blob it names.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub media_type: String,
    pub manifest: Vec<u8>,
    /// (digest, bytes) of config and layers.
    pub blobs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Oci,
    Docker,
}

/// Pushes a single-platform image (config + `layer_sizes.len()` layers) and tags it.
pub async fn push_image(
    reg: &Registry2,
    repo: &str,
    tag: Option<&str>,
    format: Format,
    seed: u64,
    arch: &str,
    layer_sizes: &[usize],
) -> PushedImage {
    let (manifest_type, config_type, layer_type) = match format {
        Format::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
        Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
    };
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let (gz, diff_id) = layer(seed * 100 + i as u64, *size);
        let d = reg.push_blob(repo, &gz).await;
        layers.push(json!({ "mediaType": layer_type, "digest": d, "size": gz.len() }));
        diff_ids.push(diff_id);
        blobs.push((d, gz));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": { "Env": [format!("SEED={seed}")] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config json");
    let config_digest = reg.push_blob(repo, &config).await;
    blobs.insert(0, (config_digest.clone(), config.clone()));
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
        "layers": layers,
    }))
    .expect("manifest json");
    let reference = tag
        .map(str::to_string)
        .unwrap_or_else(|| sha256_digest(&manifest));
    let manifest_digest = reg
        .push_manifest(repo, &reference, manifest_type, &manifest)
        .await;
    PushedImage {
        manifest_digest,
        media_type: manifest_type.to_string(),
        manifest,
        blobs,
    }
}

/// Pushes a two-platform index (OCI) or manifest list (Docker) and tags it.
pub async fn push_multi_platform(
    reg: &Registry2,
    repo: &str,
    tag: &str,
    format: Format,
    seed: u64,
) -> (PushedImage, Vec<PushedImage>) {
    let list_type = match format {
        Format::Oci => OCI_INDEX,
        Format::Docker => DOCKER_LIST,
    };
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let img = push_image(
            reg,
            repo,
            None,
            format,
            seed + i as u64,
            arch,
            &[2048 + i * 512, 4096],
        )
        .await;
        entries.push(json!({
            "mediaType": img.media_type, "digest": img.manifest_digest, "size": img.manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
        children.push(img);
    }
    let list = serde_json::to_vec_pretty(
        &json!({ "schemaVersion": 2, "mediaType": list_type, "manifests": entries }),
    )
    .expect("list json");
    let d = reg.push_manifest(repo, tag, list_type, &list).await;
    (
        PushedImage {
            manifest_digest: d,
            media_type: list_type.to_string(),
            manifest: list,
            blobs: vec![],
        },
        children,
    )
}
