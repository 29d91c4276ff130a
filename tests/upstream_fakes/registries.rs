//! Fake registries with behaviour (Bearer, Basic, Range) and the client-side helpers the
//! tests share.

use super::{challenge, response, with_header, FakeServer, Handler};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use sparkcr_edge::config::{HumanDuration, UpstreamConfig};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::{Digest, Reference, RepositoryName};
use sparkcr_edge::upstream::{BlobBody, Upstream, UpstreamError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn init() {
    // Another test may have installed it first; that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn config(url: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::builtin("fake", url, "fake");
    cfg.connect_timeout = HumanDuration(Duration::from_secs(3));
    cfg.read_timeout = HumanDuration(Duration::from_secs(5));
    cfg
}

pub fn make_upstream(cfg: &UpstreamConfig) -> (Upstream, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::from_config(cfg, &Default::default(), metrics.clone())
        .expect("valid upstream config");
    (upstream, metrics)
}

pub fn repo() -> RepositoryName {
    "team/app".parse().expect("valid name")
}

pub fn tag(t: &str) -> Reference {
    t.parse().expect("valid tag")
}

pub fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

pub fn manifest_response() -> hyper::Response<http_body_util::Full<Bytes>> {
    let digest = Digest::of(MANIFEST.as_bytes()).to_string();
    with_header(
        with_header(response(200, MANIFEST), "content-type", OCI_MANIFEST),
        "docker-content-digest",
        &digest,
    )
}

pub async fn collect(mut body: BlobBody) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A registry whose token endpoint is `/token` on itself. Tokens are `tok-<n>` and live
/// `token_lifetime_secs`; the endpoint checks service, scope and (when `token_basic` is
/// set) Basic credentials. `/v2/*` wants any token issued so far.
pub fn bearer_registry(
    issued: Arc<AtomicUsize>,
    token_lifetime_secs: u64,
    challenge_scope: bool,
    token_basic: Option<String>,
) -> impl FnOnce(std::net::SocketAddr) -> Handler {
    move |addr| {
        Arc::new(move |req| {
            if req.path == "/token" {
                if req.query_param("service").as_deref() != Some("fake-registry")
                    || req.query_param("scope").as_deref() != Some("repository:team/app:pull")
                {
                    return response(400, "bad service or scope");
                }
                if let Some(expected) = &token_basic {
                    if req.header("authorization") != Some(expected.as_str()) {
                        return response(401, "bad credentials");
                    }
                }
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                return response(
                    200,
                    format!(r#"{{"token":"tok-{n}","expires_in":{token_lifetime_secs}}}"#),
                );
            }
            let issued_now = issued.load(Ordering::SeqCst);
            let valid = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer tok-"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 1 && n <= issued_now);
            if !valid {
                let scope = if challenge_scope {
                    r#","scope="repository:team/app:pull""#
                } else {
                    ""
                };
                return challenge(&format!(
                    r#"Bearer realm="http://{addr}/token",service="fake-registry"{scope}"#
                ));
            }
            manifest_response()
        })
    }
}

pub fn basic_registry(expected: String) -> impl FnOnce(std::net::SocketAddr) -> Handler {
    move |_| {
        Arc::new(move |req| {
            if req.header("authorization") != Some(expected.as_str()) {
                return challenge(r#"Basic realm="fake registry""#);
            }
            if req.path.ends_with("/tags/list") {
                let body = format!(
                    r#"{{"name":"team/app","tags":["v1"],"q":"{}"}}"#,
                    req.query.clone().unwrap_or_default()
                );
                return with_header(response(200, body), "content-type", "application/json");
            }
            manifest_response()
        })
    }
}

pub fn range_registry(honour_range: bool) -> impl FnOnce(std::net::SocketAddr) -> Handler {
    move |_| {
        let blob: Vec<u8> = (0..100u8).collect();
        Arc::new(move |req| {
            if req.method == "HEAD" {
                return with_header(response(200, ""), "content-length", "100");
            }
            let range = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(s, e)| Some((s.parse::<usize>().ok()?, e.parse::<usize>().ok())));
            match range {
                Some((start, end)) if honour_range => {
                    let end = end.unwrap_or(99).min(99);
                    with_header(
                        response(206, blob[start..=end].to_vec()),
                        "content-range",
                        &format!("bytes {start}-{end}/100"),
                    )
                }
                _ => response(200, blob.clone()),
            }
        })
    }
}

pub fn upstream_for(fake: &FakeServer) -> (Upstream, Arc<Metrics>) {
    make_upstream(&config(&fake.url()))
}
