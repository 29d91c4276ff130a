//! Manifest media types. The cache never converts a manifest; these lists only decide
//! what to ask an upstream for when a client sends no usable `Accept`, and
//! [`manifest_media_type`] reads the type a manifest declares in its own JSON.

/// Every manifest type a puller may receive, in the order we prefer them.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

pub fn is_manifest_media_type(media_type: &str) -> bool {
    MANIFEST_MEDIA_TYPES.contains(&media_type)
}

/// The `mediaType` field of a JSON manifest, if any (untrusted bytes from an upstream:
/// anything that is not a JSON object with a non-empty string there gives `None`).
pub fn manifest_media_type(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get("mediaType")?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}
