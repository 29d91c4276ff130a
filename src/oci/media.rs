//! Manifest media types. The cache never converts a manifest; these lists only decide
//! what to ask an upstream for (every tag is asked for with [`tag_accept`], whatever the
//! client sent), [`manifest_media_type`] reads the type a manifest declares in its own
//! JSON, and [`default_platform_manifest`] picks the `linux/amd64` entry of an index for a
//! client that does not take indexes (as registry:2 and Docker Hub do).

use super::Digest;

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

/// The two index types (an OCI image index, a Docker manifest list).
pub const INDEX_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What the edge sends upstream for a tag: every current manifest type (not schema 1), so
/// the answer is the tag's own (an index for a multi-arch tag), the one every client can
/// be served from. A client's narrower `Accept` must never decide what a tag is for
/// everyone.
pub fn tag_accept() -> Vec<String> {
    MANIFEST_MEDIA_TYPES
        .iter()
        .filter(|m| !m.starts_with("application/vnd.docker.distribution.manifest.v1"))
        .map(|m| m.to_string())
        .collect()
}

/// An entry of an index: a manifest by digest, of a declared type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub digest: Digest,
    pub media_type: String,
}

/// The `linux/amd64` manifest an index lists (the first such entry; one without a variant
/// first), for a client that takes no index. `None` for anything that is not an index
/// with such an entry (untrusted bytes: malformed JSON gives `None`).
pub fn default_platform_manifest(index: &[u8]) -> Option<IndexEntry> {
    let json: serde_json::Value = serde_json::from_slice(index).ok()?;
    let entries = json.get("manifests")?.as_array()?;
    let amd64 = |e: &&serde_json::Value| {
        let p = &e["platform"];
        p["os"] == "linux" && p["architecture"] == "amd64"
    };
    let pick = entries
        .iter()
        .filter(amd64)
        .find(|e| e["platform"].get("variant").is_none())
        .or_else(|| entries.iter().find(amd64))?;
    Some(IndexEntry {
        digest: pick.get("digest")?.as_str()?.parse().ok()?,
        media_type: pick.get("mediaType")?.as_str()?.to_string(),
    })
}

/// The digests of the manifests an index lists (empty for anything that is not an index;
/// untrusted bytes: entries that do not parse are left out).
pub fn index_manifests(index: &[u8]) -> Vec<Digest> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(index) else {
        return Vec::new();
    };
    let Some(entries) = json.get("manifests").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| e.get("digest")?.as_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_accept_list_is_every_current_type() {
        let list = tag_accept();
        assert_eq!(list.len(), 4);
        for t in INDEX_MEDIA_TYPES {
            assert!(list.iter().any(|l| l == t));
        }
        assert!(list
            .iter()
            .all(|t| is_manifest_media_type(t) && !t.contains("distribution.manifest.v1")));
    }

    #[test]
    fn an_index_gives_its_linux_amd64_manifest() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('a'),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('b'),
                 "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('c'),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('e'),
                 "platform": {"os": "windows", "architecture": "amd64"}},
            ]
        })
        .to_string();
        let got = default_platform_manifest(index.as_bytes()).expect("an amd64 entry");
        assert_eq!(
            got.digest.to_string(),
            d('c'),
            "the one without a variant first"
        );
        assert_eq!(
            got.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );

        let arm_only = serde_json::json!({"manifests": [
            {"mediaType": "x", "digest": d('a'), "platform": {"os": "linux", "architecture": "arm64"}}
        ]})
        .to_string();
        assert_eq!(default_platform_manifest(arm_only.as_bytes()), None);
        assert_eq!(default_platform_manifest(b"not json"), None);
        assert_eq!(default_platform_manifest(b"{\"manifests\": 3}"), None);
        let bad_digest = serde_json::json!({"manifests": [
            {"mediaType": "x", "digest": "sha256:nope", "platform": {"os": "linux", "architecture": "amd64"}}
        ]})
        .to_string();
        assert_eq!(default_platform_manifest(bad_digest.as_bytes()), None);
    }
}
