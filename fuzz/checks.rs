//! The checks every fuzz target runs, shared with `tests/fuzz_regressions.rs` (which
//! includes this file) so the saved corpus is replayed by `cargo test` through exactly the
//! same code. Each check feeds untrusted bytes to one parser of the edge and asserts what
//! must hold for any input: no panic, bounded output, and round trips for what parses.
//!
//! Must not: do I/O, or depend on anything but the `sparkcr_edge` library and its deps.
#![allow(dead_code)]

use sparkcr_edge::access::{Access, Identity};
use sparkcr_edge::config::load::load_from_text_for_tests;
use sparkcr_edge::config::ConfigOrigin;
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::ByteRangeSpec;
use sparkcr_edge::oci::{self, Digest, Reference, RepositoryName, Tag};
use sparkcr_edge::registry::route::{route as route_request, RequestParts, UpstreamTable};
use sparkcr_edge::upstream::challenge::parse_www_authenticate;
use std::sync::{Arc, OnceLock};

/// One check: untrusted bytes in, a panic if something that must hold does not.
pub type Check = fn(&[u8]);

/// Every fuzz target, by name: its directory under `tests/fuzz_corpus/` and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("reference", reference),
    ("digest", digest),
    ("range", range),
    ("www_authenticate", www_authenticate),
    ("route", route),
    ("manifest", manifest),
    ("authorization", authorization),
];

/// Repository names, tags and references: what parses prints back as it was written.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = s.parse::<RepositoryName>() {
        assert_eq!(name.to_string(), s);
        assert!(s.len() <= 255);
        assert!(name
            .components()
            .all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!s.contains('%') && !s.contains('\\'));
    }
    if let Ok(tag) = s.parse::<Tag>() {
        assert_eq!(tag.to_string(), s);
        assert!(s.len() <= 128 && !s.starts_with('.') && !s.contains('/'));
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
        assert_eq!(r.to_string().parse::<Reference>().ok(), Some(r));
    }
}

/// Digests: only `sha256:` and 64 lowercase hex digits parse, and they round-trip.
pub fn digest(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = s.parse::<Digest>() {
            assert_eq!(d.to_string(), s);
            assert_eq!(s.len(), 71);
        }
        // Error messages stay bounded whatever the input: at most 80 characters of it,
        // each escaped to at most 10 (`\u{10ffff}`).
        if let Err(e) = s.parse::<Digest>() {
            assert!(e.to_string().len() < 1024);
        }
    }
    let of = Digest::of(data);
    assert_eq!(of.to_string().parse::<Digest>().ok(), Some(of));
}

/// Range headers: a parsed range resolves to a non-empty span inside the blob, or 416.
pub fn range(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(spec) = ByteRangeSpec::parse(s) else {
        return;
    };
    let tail = data
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b.into()));
    for size in [0, 1, 2, 100, 4 << 20, u64::MAX - 1, u64::MAX, tail] {
        if let Ok((start, end)) = spec.resolve(size) {
            assert!(start < end, "{s:?} size {size}: {start}..{end}");
            assert!(end <= size, "{s:?} size {size}: {start}..{end}");
        }
    }
}

/// `WWW-Authenticate` from upstreams: any input gives a bounded list of challenges.
pub fn www_authenticate(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let challenges = parse_www_authenticate(&s);
    assert!(challenges.len() <= s.len() / 2 + 1);
    for c in &challenges {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for (k, v) in &c.params {
            assert_eq!(*k, k.to_ascii_lowercase());
            assert!(k.len() + v.len() <= s.len());
        }
    }
}

fn table() -> &'static UpstreamTable {
    static TABLE: OnceLock<UpstreamTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let c = load_from_text_for_tests(
            ConfigOrigin::Embedded,
            "[server]\nhostname = \"edge.lan\"\n[[upstream]]\nname = \"registry.lan:5000\"\nurl = \"http://127.0.0.1:5001\"\naliases = [\"lan\"]\nprivate = true\n",
        );
        UpstreamTable::from_config(&c)
    })
}

/// Routing: whatever the method, host, path and query, a request names a configured
/// upstream and a valid repository, or is refused; nothing that could climb out of a
/// directory survives.
pub fn route(data: &[u8]) {
    let methods = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::PATCH,
    ];
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &methods[usize::from(m) % methods.len()];
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().filter(|h| !h.is_empty());
    let path = parts.next().unwrap_or("/v2/");
    // A fourth line, if any, is the `OCI-Namespace` header.
    let tail = parts.next();
    let (query, namespace) = match tail.and_then(|q| q.split_once('\n')) {
        Some((q, ns)) => (Some(q), Some(ns)),
        None => (tail, None),
    };
    let req = RequestParts {
        method,
        host,
        path,
        query,
        namespace,
    };
    let Ok(routed) = route_request(&req, table()) else {
        return;
    };
    // Besides reads, routing lets through only the push API's requests (the API refuses them
    // with 405 on upstreams without `push = true`).
    assert!(
        matches!(*method, http::Method::GET | http::Method::HEAD) || routed.is_push(method),
        "{method} {path} routed as {routed:?}"
    );
    let Some(target) = routed.target().cloned() else {
        return;
    };
    assert!(table().names().any(|n| n == target.upstream), "{target:?}");
    let repo = target.repo.to_string();
    assert_eq!(
        repo.parse::<RepositoryName>().ok(),
        Some(target.repo.clone())
    );
    assert!(repo
        .split('/')
        .all(|c| c != ".." && c != "." && !c.is_empty()));
    assert!(!path.contains('%') && !path.contains('\\'));
}

/// Manifest JSON from upstreams: the declared media type, and the OCI manifest and index
/// shapes with every descriptor's digest.
pub fn manifest(data: &[u8]) {
    if let Some(t) = oci::manifest_media_type(data) {
        assert!(!t.is_empty());
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        #[allow(dead_code)]
        media_type: Option<String>,
        digest: String,
        #[allow(dead_code)]
        size: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[allow(dead_code)]
        schema_version: Option<u32>,
        #[allow(dead_code)]
        media_type: Option<String>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    if let Ok(shape) = serde_json::from_slice::<Shape>(data) {
        for d in shape
            .config
            .iter()
            .chain(&shape.layers)
            .chain(&shape.manifests)
        {
            if let Ok(parsed) = d.digest.parse::<Digest>() {
                assert_eq!(parsed.to_string(), d.digest);
            }
        }
    }
}

fn access() -> &'static Access {
    static ACCESS: OnceLock<Access> = OnceLock::new();
    ACCESS.get_or_init(|| {
        let hash = sparkcr_edge::access::token::hash_secret("spk_fuzz");
        let c = load_from_text_for_tests(
            ConfigOrigin::Embedded,
            &format!(
                "[[auth.token]]\nname = \"fuzz\"\nhash = \"{hash}\"\nscopes = [\"pull:public\"]\n"
            ),
        );
        match Access::from_config(&c, Arc::new(Metrics::new())) {
            Ok(a) => a,
            Err(e) => panic!("fuzz access policy: {e}"),
        }
    })
}

/// `Authorization` headers from clients: only the configured secret or a token this
/// process signed gets an identity with scopes.
pub fn authorization(data: &[u8]) {
    let a = access();
    if let Ok(Identity::Token { name, .. }) = a.authenticate(Some(data)) {
        assert_eq!(&*name, "fuzz");
        let text = String::from_utf8_lossy(data).to_ascii_lowercase();
        // The fuzzer cannot know a signed token; it can only find the secret in Basic.
        assert!(text.trim_start().starts_with("basic"), "{text}");
    }
}
