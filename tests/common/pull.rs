//! A minimal puller (what skopeo does, in Rust) for checking routes byte by byte:
//! manifest by tag, children of an index by digest, then config and layers, each checked
//! against its digest.
#![allow(dead_code)]

use super::images::{DOCKER_LIST, OCI_INDEX};
use super::registry2::sha256_digest;

pub const ACCEPT_ALL: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
];

/// How a client addresses the edge: a URL for `/v2/<repo>/<rest>` and maybe a Host header.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: &'static str,
    /// `{rest}` is replaced by `manifests/<ref>` or `blobs/<digest>`.
    pub template: String,
    pub host: Option<String>,
}

impl Route {
    pub fn url(&self, rest: &str) -> String {
        let (path, query) = match self.template.split_once('?') {
            Some((p, q)) => (p.to_string(), format!("?{q}")),
            None => (self.template.clone(), String::new()),
        };
        format!("{}{query}", path.replace("{rest}", rest))
    }
}

pub struct Pulled {
    pub manifest_digest: String,
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub blob_digests: Vec<String>,
}

/// GETs a manifest with every Accept line skopeo sends; checks digest header and bytes.
pub async fn get_manifest(
    client: &reqwest::Client,
    route: &Route,
    reference: &str,
) -> (String, String, Vec<u8>) {
    let mut rb = client.get(route.url(&format!("manifests/{reference}")));
    for a in ACCEPT_ALL {
        rb = rb.header("accept", *a);
    }
    if let Some(h) = &route.host {
        rb = rb.header("host", h);
    }
    let r = rb.send().await.expect("manifest request");
    assert_eq!(
        r.status(),
        200,
        "{} manifest {reference}: {:?}",
        route.name,
        r.text().await
    );
    let media_type = r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    let header_digest = r.headers()["docker-content-digest"]
        .to_str()
        .expect("dcd")
        .to_string();
    let len: usize = r.headers()["content-length"]
        .to_str()
        .expect("cl")
        .parse()
        .expect("len");
    let body = r.bytes().await.expect("manifest body").to_vec();
    assert_eq!(len, body.len());
    assert_eq!(
        sha256_digest(&body),
        header_digest,
        "{}: Docker-Content-Digest matches the bytes",
        route.name
    );
    if reference.starts_with("sha256:") {
        assert_eq!(reference, header_digest);
    }
    (header_digest, media_type, body)
}

pub async fn get_blob(client: &reqwest::Client, route: &Route, digest: &str) -> Vec<u8> {
    let mut rb = client.get(route.url(&format!("blobs/{digest}")));
    if let Some(h) = &route.host {
        rb = rb.header("host", h);
    }
    let r = rb.send().await.expect("blob request");
    assert_eq!(r.status(), 200, "{} blob {digest}", route.name);
    let body = r.bytes().await.expect("blob body").to_vec();
    assert_eq!(
        sha256_digest(&body),
        digest,
        "{}: blob bytes hash to their digest",
        route.name
    );
    body
}

/// Pulls `reference` (and, for an index, every child) through `route`.
pub async fn pull(client: &reqwest::Client, route: &Route, reference: &str) -> Vec<Pulled> {
    let (d, mt, body) = get_manifest(client, route, reference).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("manifest json");
    let mut out = Vec::new();
    if mt == OCI_INDEX || mt == DOCKER_LIST {
        for m in v["manifests"].as_array().expect("manifests") {
            let child = m["digest"].as_str().expect("digest");
            out.extend(Box::pin(pull(client, route, child)).await);
        }
        out.push(Pulled {
            manifest_digest: d,
            media_type: mt,
            manifest: body,
            blob_digests: vec![],
        });
        return out;
    }
    let mut blobs = vec![v["config"]["digest"].as_str().expect("config").to_string()];
    for l in v["layers"].as_array().expect("layers") {
        blobs.push(l["digest"].as_str().expect("layer").to_string());
    }
    for b in &blobs {
        get_blob(client, route, b).await;
    }
    out.push(Pulled {
        manifest_digest: d,
        media_type: mt,
        manifest: body,
        blob_digests: blobs,
    });
    out
}
