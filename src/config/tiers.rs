//! `[storage.shared]` (the shared tier: an S3-compatible object store several edges share)
//! and `[cluster]` (the peer edges that share fills of cold blobs), with their checks.
//!
//! Must not: open sockets, or import any other module of this crate.

use super::error::{ConfigError, ConfigOrigin};
use super::{HumanDuration, ProxySetting};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[storage.shared]`: blobs and manifests by digest in an S3-compatible bucket, under
/// `<prefix>/blobs/sha256/<hex>` and `<prefix>/manifests/sha256/<hex>`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStorageConfig {
    /// Only `"s3"` (AWS S3, Ceph RGW, MinIO, and other S3-compatible stores).
    pub kind: SharedKind,
    /// The S3 endpoint (`http://rgw.lan:8080`); empty for AWS S3 itself.
    #[serde(default)]
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key` (Ceph RGW and
    /// MinIO usually want this).
    #[serde(default)]
    pub path_style: bool,
    /// Key prefix inside the bucket (several sites or environments can share one bucket).
    #[serde(default)]
    pub prefix: String,
    /// Credentials; when left out, the standard `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` environment is used.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default, serialize_with = "super::redact")]
    pub secret_access_key: Option<String>,
    /// `secret_access_key` from a file (keep it 0640 root:sparkcr-edge) instead of inline.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for an `https://` endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Outbound proxy for the object store (`"none"`: direct, the default).
    #[serde(default)]
    pub proxy: Option<ProxySetting>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Longest wait for an answer to a lookup (a slow store is skipped, never waited on).
    #[serde(default = "default_lookup_timeout")]
    pub lookup_timeout: HumanDuration,
    /// Write blobs and manifests fetched from an upstream through to the shared tier.
    #[serde(default = "default_true")]
    pub write_through: bool,
    /// Remember the writes through the tier missed while it was down or failing, and upload
    /// them from the local store once it answers again (off: they are never made up for).
    #[serde(default)]
    pub catch_up: bool,
    /// Most missed writes remembered for `catch_up`; beyond it the oldest are forgotten.
    #[serde(default = "default_catch_up_max")]
    pub catch_up_max: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SharedKind {
    S3,
}

impl<'de> Deserialize<'de> for SharedKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "s3" => Ok(SharedKind::S3),
            _ => Err(serde::de::Error::custom(format!(
                "expected \"s3\" (the only kind), got {s:?}"
            ))),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_catch_up_max() -> usize {
    10_000
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}

fn default_lookup_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// `[cluster]`: edges that share cold fills. Each digest has one owner among `peers`
/// (rendezvous hashing); the others fetch it from the owner instead of the upstream.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every edge of the cluster, as a base URL (`http://edge-a.lan:5000`), this one included.
    #[serde(default)]
    pub peers: Vec<String>,
    /// This edge's own entry in `peers`.
    #[serde(default)]
    pub self_url: String,
    /// How long a non-owner waits for the owner's answer before it fills from the upstream
    /// itself.
    #[serde(default = "default_peer_timeout")]
    pub peer_timeout: HumanDuration,
    /// The secret of an `[auth]` token every edge of the cluster accepts (with
    /// `pull:public`), sent to the owner as HTTP Basic; not needed when peers may pull
    /// anonymously.
    #[serde(
        default,
        serialize_with = "super::redact",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
    /// `token` from a file (keep it 0640 root:sparkcr-edge) instead of inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// A secret given inline or in a file (its content, trimmed); `Err` says why the file
/// cannot be read.
fn secret_from(inline: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("cannot read {}: {e}", f.display())),
        (None, None) => Ok(None),
    }
}

impl SharedStorageConfig {
    /// The S3 secret key: `secret_access_key`, or read from `secret_access_key_file`.
    pub fn secret_key(&self) -> Result<Option<String>, String> {
        secret_from(&self.secret_access_key, &self.secret_access_key_file)
    }
}

fn default_peer_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl ClusterConfig {
    /// The peer token: `token`, or read from `token_file`.
    pub fn token_secret(&self) -> Result<Option<String>, String> {
        secret_from(&self.token, &self.token_file)
    }

    pub fn enabled(&self) -> bool {
        self.peers.len() > 1
    }
}

fn http_url(s: &str) -> bool {
    match reqwest::Url::parse(s) {
        Ok(u) => {
            (u.scheme() == "http" || u.scheme() == "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.username().is_empty()
                && u.password().is_none()
        }
        Err(_) => false,
    }
}

pub(super) fn validate(
    shared: Option<&SharedStorageConfig>,
    cluster: &ClusterConfig,
    origin: &ConfigOrigin,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| Err(ConfigError::at(origin, key, msg));
    if let Some(s) = shared {
        if s.bucket.is_empty() {
            return err(
                "storage.shared.bucket",
                "expected the bucket's name, such as \"edge-cache\"".into(),
            );
        }
        if !s.endpoint.is_empty() && !http_url(&s.endpoint) {
            return err(
                "storage.shared.endpoint",
                format!("expected an http:// or https:// URL without user info or query, such as \"http://rgw.lan:8080\", got {:?}", super::outbound::redacted_url(&s.endpoint)),
            );
        }
        if s.secret_access_key.is_some() && s.secret_access_key_file.is_some() {
            return err(
                "storage.shared.secret_access_key_file",
                "give secret_access_key or secret_access_key_file, not both".into(),
            );
        }
        if let Err(why) = s.secret_key() {
            return err("storage.shared.secret_access_key_file", why);
        }
        let has_secret = s.secret_access_key.is_some() || s.secret_access_key_file.is_some();
        if s.access_key_id.is_some() != has_secret {
            return err(
                "storage.shared.secret_access_key",
                "give access_key_id and secret_access_key (or secret_access_key_file) together, or neither (then the AWS_* environment is used)".into(),
            );
        }
        if s.prefix.starts_with('/') || s.prefix.contains("//") || s.prefix.contains("..") {
            return err(
                "storage.shared.prefix",
                format!("expected a key prefix such as \"site-a\" (no leading slash, no empty or \"..\" segments), got {:?}", s.prefix),
            );
        }
        if s.lookup_timeout.is_zero() {
            return err(
                "storage.shared.lookup_timeout",
                "expected a duration above 0 such as \"5s\"".into(),
            );
        }
        if s.catch_up && s.catch_up_max == 0 {
            return err(
                "storage.shared.catch_up_max",
                "expected a number above 0 such as 10000 (how many missed writes catch_up remembers)".into(),
            );
        }
        if s.catch_up && !s.write_through {
            return err(
                "storage.shared.catch_up",
                "catch_up = true needs write_through = true (it makes up for writes through the tier missed)".into(),
            );
        }
        if let Some(p) = &s.ca_file {
            if std::fs::metadata(p).is_err() {
                return err(
                    "storage.shared.ca_file",
                    format!("{} does not exist or cannot be read", p.display()),
                );
            }
        }
    }
    if !cluster.peers.is_empty() {
        for (i, p) in cluster.peers.iter().enumerate() {
            if !http_url(p) {
                return err(
                    &format!("cluster.peers[{i}]"),
                    format!(
                        "expected an edge's base URL such as \"http://edge-a.lan:5000\", got {p:?}"
                    ),
                );
            }
            if cluster.peers[..i].contains(p) {
                return err(
                    &format!("cluster.peers[{i}]"),
                    format!("{p:?} is given twice; give each edge once"),
                );
            }
        }
        if !cluster.peers.contains(&cluster.self_url) {
            return err(
                "cluster.self_url",
                format!(
                    "expected this edge's own entry of cluster.peers (one of {:?}), got {:?}",
                    cluster.peers, cluster.self_url
                ),
            );
        }
        if cluster.peer_timeout.is_zero() {
            return err(
                "cluster.peer_timeout",
                "expected a duration above 0 such as \"5s\"".into(),
            );
        }
    }
    if cluster.token.is_some() && cluster.token_file.is_some() {
        return err(
            "cluster.token_file",
            "give token or token_file, not both".into(),
        );
    }
    if let Err(why) = cluster.token_secret() {
        return err("cluster.token_file", why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::error::ConfigOrigin;
    use super::super::load::load_from;
    use std::path::PathBuf;

    fn from_text(t: &str) -> Result<super::super::Config, String> {
        load_from(ConfigOrigin::File(PathBuf::from("/t/config.toml")), Some(t))
            .map(|l| l.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_cluster_token_is_redacted() {
        let c = from_text("[cluster]\npeers = [\"http://a:5000\", \"http://b:5000\"]\nself_url = \"http://b:5000\"\ntoken = \"spk_peersecret\"\n")
            .expect("loads");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("spk_peersecret") && shown.contains("token = \"<redacted>\""),
            "{shown}"
        );
    }

    const SHARED: &str = "[storage.shared]\nkind = \"s3\"\nendpoint = \"http://rgw.lan:8080\"\nbucket = \"edge-cache\"\npath_style = true\naccess_key_id = \"AKIA1\"\nsecret_access_key = \"hunter2secret\"\n";

    #[test]
    fn shared_tier_loads_and_check_config_hides_the_secret() {
        let c = from_text(SHARED).expect("loads");
        let s = c.storage.shared.as_ref().expect("shared tier");
        assert_eq!(s.bucket, "edge-cache");
        assert_eq!(s.region, "us-east-1");
        assert!(s.write_through);
        assert!(!s.catch_up, "catch-up is opt-in");
        assert_eq!(s.catch_up_max, 10_000);
        let c = from_text(&format!("{SHARED}catch_up = true\ncatch_up_max = 50\n")).expect("loads");
        let s = c.storage.shared.as_ref().expect("shared tier");
        assert!(s.catch_up);
        assert_eq!(s.catch_up_max, 50);
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(
            shown.contains("secret_access_key = \"<redacted>\""),
            "{shown}"
        );
        assert!(shown.contains("AKIA1"), "{shown}");
    }

    #[test]
    fn mistakes_are_one_line_naming_the_key_and_file() {
        for (text, key) in [
            (SHARED.replace("\"s3\"", "\"gcs\""), "storage.shared"),
            (SHARED.replace("bucket = \"edge-cache\"", "bucket = \"\""), "storage.shared.bucket"),
            (SHARED.replace("http://rgw.lan:8080", "rgw.lan"), "storage.shared.endpoint"),
            // The key pasted into the endpoint: the error must not repeat it.
            (
                SHARED.replace("http://rgw.lan:8080", "http://AKIA1:hunter2secret@rgw.lan:8080"),
                "storage.shared.endpoint",
            ),
            (
                SHARED.replace("http://rgw.lan:8080", "http://rgw.lan:8080/?X-Amz-Credential=hunter2secret"),
                "storage.shared.endpoint",
            ),
            (SHARED.replace("access_key_id = \"AKIA1\"\n", ""), "storage.shared.secret_access_key"),
            (format!("{SHARED}catch_up = true\ncatch_up_max = 0\n"), "storage.shared.catch_up_max"),
            (format!("{SHARED}catch_up = true\nwrite_through = false\n"), "storage.shared.catch_up"),
            (
                "[cluster]\npeers = [\"http://a:5000\", \"http://b:5000\"]\nself_url = \"http://c:5000\"\n".into(),
                "cluster.self_url",
            ),
            (
                "[cluster]\npeers = [\"http://a:5000\", \"a:5000\"]\nself_url = \"http://a:5000\"\n".into(),
                "cluster.peers[1]",
            ),
        ] {
            let e = from_text(&text).expect_err(&text);
            assert!(e.contains(key) && e.contains("/t/config.toml"), "{e}");
            assert!(!e.contains('\n') && !e.contains("hunter2secret"), "{e}");
        }
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("s3-secret");
        let token = dir.path().join("peer-token");
        std::fs::write(&key, "hunter2secret\n").expect("write");
        std::fs::write(&token, "spk_peer\n").expect("write");
        let text = SHARED.replace(
            "secret_access_key = \"hunter2secret\"",
            &format!("secret_access_key_file = {:?}", key.display().to_string()),
        ) + &format!(
            "[cluster]\ntoken_file = {:?}\n",
            token.display().to_string()
        );
        let c = from_text(&text).expect("loads");
        let shared = c.storage.shared.as_ref().expect("shared");
        assert_eq!(shared.secret_key(), Ok(Some("hunter2secret".to_string())));
        assert_eq!(c.cluster.token_secret(), Ok(Some("spk_peer".to_string())));
        assert!(!c.to_redacted_toml().contains("hunter2secret"));
        // Both, or a file that cannot be read: one line naming the key.
        let both = SHARED.replace(
            "secret_access_key = \"hunter2secret\"",
            &format!(
                "secret_access_key = \"x\"\nsecret_access_key_file = {:?}",
                key.display().to_string()
            ),
        );
        let e = from_text(&both).expect_err("both");
        assert!(e.contains("storage.shared.secret_access_key_file"), "{e}");
        let e = from_text("[cluster]\ntoken_file = \"/nonexistent/token\"\n").expect_err("missing");
        assert!(
            e.contains("cluster.token_file") && e.contains("/nonexistent/token"),
            "{e}"
        );
    }

    #[test]
    fn a_cluster_needs_two_peers() {
        let c = from_text("[cluster]\npeers = [\"http://a:5000\", \"http://b:5000\"]\nself_url = \"http://b:5000\"\n")
            .expect("loads");
        assert!(c.cluster.enabled());
        assert!(!from_text("").expect("loads").cluster.enabled());
    }
}
