//! A client of a running edge's registry API, for warming its cache and exporting from it:
//! resolves an image (index → chosen platforms → config and layers) and fetches manifests
//! and blobs through the edge's path-prefix route, so the daemon caches them as it serves.

use super::image_ref::ImageRef;
use crate::oci::{Digest, MANIFEST_MEDIA_TYPES};
use bytes::Bytes;
use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EdgeClientError {
    #[error("cannot reach the edge at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{what}: the edge answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    BadManifest(String),
    #[error("{what}: {reason}")]
    Body { what: String, reason: String },
}

/// Which platforms of a multi-platform image to take.
#[derive(Clone, Debug)]
pub enum PlatformChoice {
    All,
    /// (os, architecture, optional variant)
    Some(Vec<(String, String, Option<String>)>),
}

impl PlatformChoice {
    /// This machine's platform (`linux/amd64` on x86_64).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "s390x" => "s390x",
            "powerpc64" => "ppc64le",
            other => other,
        };
        PlatformChoice::Some(vec![("linux".into(), arch.into(), None)])
    }

    /// Parses `linux/amd64,linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parts: Vec<&str> = p.split('/').collect();
            match parts.as_slice() {
                [os, arch] => out.push((os.to_string(), arch.to_string(), None)),
                [os, arch, variant] => {
                    out.push((os.to_string(), arch.to_string(), Some(variant.to_string())))
                }
                _ => return Err(format!("platform {p:?} is not os/arch or os/arch/variant")),
            }
        }
        if out.is_empty() {
            return Err("--platform needs at least one os/arch".into());
        }
        Ok(PlatformChoice::Some(out))
    }

    fn matches(&self, platform: &serde_json::Value) -> bool {
        match self {
            PlatformChoice::All => true,
            PlatformChoice::Some(list) => list.iter().any(|(os, arch, variant)| {
                platform["os"] == os.as_str()
                    && platform["architecture"] == arch.as_str()
                    && variant
                        .as_ref()
                        .is_none_or(|v| platform["variant"] == v.as_str())
            }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub from_cache: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// Everything an image consists of, for the chosen platforms.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    /// The manifest the reference names, then the chosen children of an index.
    pub manifests: Vec<FetchedManifest>,
    /// Config and layer blobs, each once.
    pub blobs: Vec<BlobRef>,
}

#[derive(Clone)]
pub struct EdgeClient {
    base: String,
    http: reqwest::Client,
}

impl EdgeClient {
    /// A client of the edge at `base`. HTTPS certificates are checked against the system's
    /// trust store plus the PEM certificates in `ca` (the CA `tls self-signed` made).
    pub fn new(base: &str, ca: Option<&Path>) -> Result<Self, EdgeClientError> {
        let setup_error = |reason: String| EdgeClientError::Unreachable {
            url: base.into(),
            reason,
        };
        let tls = tls_config(ca).map_err(setup_error)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("sparkcr-edge-prefetch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| setup_error(e.to_string()))?;
        Ok(EdgeClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> EdgeClientError {
        let reason = match certificate_problem(&e) {
            Some(tls) => format!(
                "the edge's TLS certificate was refused ({tls}); if the edge uses the CA that \
                 `sparkcr-edge tls self-signed` made, pass --ca /etc/sparkcr-edge/tls/ca.pem \
                 (or trust that CA system-wide)"
            ),
            None => e.to_string(),
        };
        EdgeClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    async fn status_error(what: String, r: reqwest::Response) -> EdgeClientError {
        let status = r.status().as_u16();
        let body = r
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        EdgeClientError::Status { what, status, body }
    }

    /// POSTs an admin action's JSON to `path` and returns the JSON answer (an error answer
    /// carries the edge's message).
    pub async fn admin_post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, EdgeClientError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !r.status().is_success() {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            // The edge's OCI error JSON: its messages are what the admin needs.
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    let msgs: Vec<String> = v["errors"]
                        .as_array()?
                        .iter()
                        .filter_map(|e| e["message"].as_str().map(str::to_string))
                        .collect();
                    (!msgs.is_empty()).then(|| msgs.join("; "))
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(EdgeClientError::Status {
                what: format!("POST {path}"),
                status,
                body: message,
            });
        }
        let what = format!("POST {path}");
        let bytes = r.bytes().await.map_err(|e| EdgeClientError::Body {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| EdgeClientError::Body {
            what,
            reason: format!("the answer is not JSON: {e}"),
        })
    }

    /// GETs a manifest (every manifest type accepted) and checks its digest.
    pub async fn manifest(
        &self,
        img: &ImageRef,
        reference: &str,
    ) -> Result<FetchedManifest, EdgeClientError> {
        let url = format!("{}{}/manifests/{reference}", self.base, img.edge_path());
        let mut rb = self.http.get(&url);
        for m in MANIFEST_MEDIA_TYPES {
            rb = rb.header("accept", *m);
        }
        let r = rb.send().await.map_err(|e| self.unreachable(e))?;
        let what = format!("manifest {}/{}:{reference}", img.registry, img.repo);
        if !r.status().is_success() {
            return Err(Self::status_error(what, r).await);
        }
        let media_type = header(&r, "content-type").unwrap_or_default();
        let from_cache = header(&r, "x-cache").as_deref() == Some("HIT");
        let bytes = r.bytes().await.map_err(|e| EdgeClientError::Body {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let digest = Digest::of(&bytes);
        if reference.starts_with("sha256:") && reference != digest.to_string() {
            return Err(EdgeClientError::BadManifest(format!(
                "{what}: bytes hash to {digest}"
            )));
        }
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
            from_cache,
        })
    }

    /// The image's manifests and blobs for the chosen platforms.
    pub async fn plan(
        &self,
        img: &ImageRef,
        platforms: &PlatformChoice,
    ) -> Result<ImagePlan, EdgeClientError> {
        let top = self.manifest(img, &img.reference.to_string()).await?;
        let doc = parse_json(&top)?;
        let mut manifests = vec![top.clone()];
        let mut images = Vec::new();
        if let Some(children) = doc["manifests"].as_array() {
            for child in children {
                if !platforms.matches(&child["platform"]) {
                    continue;
                }
                let d = child["digest"].as_str().ok_or_else(|| {
                    EdgeClientError::BadManifest(format!("{img}: index entry without a digest"))
                })?;
                let m = self.manifest(img, d).await?;
                images.push(parse_json(&m)?);
                manifests.push(m);
            }
            if images.is_empty() {
                return Err(EdgeClientError::BadManifest(format!(
                    "{img}: no manifest for the chosen platform(s); try --all-platforms"
                )));
            }
        } else {
            images.push(doc);
        }
        let mut blobs: Vec<BlobRef> = Vec::new();
        for image in &images {
            let descriptors = std::iter::once(&image["config"])
                .chain(image["layers"].as_array().into_iter().flatten());
            for desc in descriptors {
                let (Some(d), Some(size)) = (desc["digest"].as_str(), desc["size"].as_u64()) else {
                    return Err(EdgeClientError::BadManifest(format!(
                        "{img}: descriptor without digest or size"
                    )));
                };
                let digest: Digest = d
                    .parse()
                    .map_err(|e| EdgeClientError::BadManifest(format!("{img}: {e}")))?;
                if !blobs.iter().any(|b| b.digest == digest) {
                    blobs.push(BlobRef { digest, size });
                }
            }
        }
        Ok(ImagePlan { manifests, blobs })
    }

    /// Whether the edge already has the blob (HEAD, `X-Cache: HIT`).
    pub async fn blob_is_cached(
        &self,
        img: &ImageRef,
        d: &Digest,
    ) -> Result<bool, EdgeClientError> {
        let url = format!("{}{}/blobs/{d}", self.base, img.edge_path());
        let r = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !r.status().is_success() {
            return Err(Self::status_error(format!("blob {d}"), r).await);
        }
        Ok(header(&r, "x-cache").as_deref() == Some("HIT"))
    }

    /// GETs a blob, passing each piece to `sink`; checks the sha256 of what arrived.
    pub async fn fetch_blob(
        &self,
        img: &ImageRef,
        d: &Digest,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, EdgeClientError> {
        let url = format!("{}{}/blobs/{d}", self.base, img.edge_path());
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let what = format!("blob {d}");
        if !r.status().is_success() {
            return Err(Self::status_error(what, r).await);
        }
        let mut v = crate::oci::Sha256Verifier::new();
        let mut body = r.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| EdgeClientError::Body {
                what: what.clone(),
                reason: e.to_string(),
            })?;
            v.update(&piece);
            sink(&piece).map_err(|e| EdgeClientError::Body {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        }
        let n = v.len();
        let actual = v.finish();
        if actual != *d {
            return Err(EdgeClientError::Body {
                what,
                reason: format!("bytes hash to {actual}"),
            });
        }
        Ok(n)
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

fn parse_json(m: &FetchedManifest) -> Result<serde_json::Value, EdgeClientError> {
    serde_json::from_slice(&m.bytes).map_err(|e| {
        EdgeClientError::BadManifest(format!("manifest {} is not JSON: {e}", m.digest))
    })
}

/// rustls with the platform verifier (the system's trust store) plus the roots in `ca`.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let extra_roots = match ca {
        None => Vec::new(),
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| format!("--ca {}: {e}", path.display());
            let roots = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if roots.is_empty() {
                return Err(bad(&"no PEM CERTIFICATE blocks found"));
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls error anywhere in `err`'s chain (hyper wraps it in an `io::Error`, whose
/// `source()` skips it, so look inside those too).
fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| certificate_problem(inner))
        {
            return Some(inner);
        }
        current = e.source();
    }
    None
}
