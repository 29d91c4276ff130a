//! The upstream client against fake registries on 127.0.0.1: Bearer token flow and token
//! cache, Basic auth, redirects to another host, Range, status and transport error
//! mapping, TLS trust settings; blob connections (one per download, at most
//! `max_connections`), `max_rate` caps and remembered redirect targets.

mod common;

use common::fake_upstream::auth::{basic_header, Bearer};
use common::fake_upstream::{closed_port, test_pki, Auth, FakeUpstream, Faults};
use common::images::OCI_MANIFEST;
use futures_util::StreamExt;
use sparkcr_edge::config::{ByteRate, HumanDuration, UpstreamConfig};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::{Digest, Reference, RepositoryName};
use sparkcr_edge::upstream::{BlobBody, RateLimit, Upstream, UpstreamError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

fn init() {
    // Another test may have installed it first; that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn config(url: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::builtin("fake", url, "fake");
    cfg.connect_timeout = HumanDuration(Duration::from_secs(3));
    cfg.read_timeout = HumanDuration(Duration::from_secs(5));
    cfg
}

fn make_upstream(cfg: &UpstreamConfig) -> (Upstream, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::from_config(cfg, &Default::default(), None, metrics.clone())
        .expect("valid upstream config");
    (upstream, metrics)
}

fn upstream_for(fake: &FakeUpstream) -> (Upstream, Arc<Metrics>) {
    make_upstream(&config(&fake.url()))
}

fn repo() -> RepositoryName {
    "team/app".parse().expect("valid name")
}

fn tag(t: &str) -> Reference {
    t.parse().expect("valid tag")
}

async fn collect(mut body: BlobBody) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A fake serving `MANIFEST` as `team/app:v1`.
async fn manifest_fake() -> FakeUpstream {
    let fake = FakeUpstream::start().await;
    fake.add_manifest("v1", MANIFEST.as_bytes());
    fake
}

#[tokio::test]
async fn bearer_token_is_fetched_once_per_scope_and_again_after_expiry() {
    init();
    let fake = manifest_fake().await;
    fake.set_auth(Auth::Bearer(
        Bearer::new()
            .lifetime(Duration::from_secs(4))
            .anonymous(&["repository:team/app:pull"]),
    ));
    let (upstream, metrics) = make_upstream(&config(&fake.url()));

    // Concurrent first requests: each is refused once, but they share one token fetch.
    let concurrent = (0..5).map(|_| {
        let upstream = upstream.clone();
        async move { upstream.manifest(&repo(), &tag("v1"), &[], false).await }
    });
    for result in futures_util::future::join_all(concurrent).await {
        let manifest = result.expect("manifest with token");
        assert_eq!(manifest.body.as_deref(), Some(MANIFEST.as_bytes()));
        assert_eq!(manifest.media_type, OCI_MANIFEST);
        assert_eq!(manifest.digest, Some(Digest::of(MANIFEST.as_bytes())));
        assert_eq!(manifest.size, Some(MANIFEST.len() as u64));
    }
    // Later requests send the cached token up front: no 401, no new token.
    for _ in 0..3 {
        let head = upstream
            .manifest(&repo(), &tag("v1"), &[], true)
            .await
            .expect("manifest HEAD");
        assert_eq!(head.body, None);
        assert_eq!(head.size, Some(MANIFEST.len() as u64));
        assert_eq!(head.media_type, OCI_MANIFEST);
    }
    assert_eq!(fake.requests_to("/token").len(), 1);
    let manifest_requests = fake.requests_to("/v2/team/app/manifests/v1");
    assert_eq!(manifest_requests.len(), 5 * 2 + 3);
    assert!(manifest_requests[10..]
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer tok-1")));
    // The Accept header lists every manifest type when the caller gives none.
    let accept = manifest_requests[0].header("accept").unwrap_or_default();
    assert!(
        accept.contains("application/vnd.oci.image.index.v1+json"),
        "{accept}"
    );
    assert!(accept.contains("application/vnd.docker.distribution.manifest.v2+json"));

    // A 4 s token is used for 2 s; after that a new one is fetched before sending.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("manifest after expiry");
    assert_eq!(fake.requests_to("/token").len(), 2);
    let last = fake.requests().pop().expect("a request");
    assert_eq!(last.header("authorization"), Some("Bearer tok-2"));

    let ok = metrics
        .upstream_token_fetches
        .with_label_values(&["fake", "ok"])
        .get();
    assert_eq!(ok, 2);
    let unauthorized = metrics
        .upstream_requests
        .with_label_values(&["fake", "manifest", "401"])
        .get();
    assert_eq!(unauthorized, 5);
    let tokens = metrics
        .upstream_requests
        .with_label_values(&["fake", "token", "200"])
        .get();
    assert_eq!(tokens, 2);
}

#[tokio::test]
async fn token_endpoint_gets_basic_credentials_and_default_scope() {
    init();
    let expected = basic_header("robot", "pa:ss");
    let fake = manifest_fake().await;
    fake.set_auth(Auth::Bearer(
        Bearer::new()
            // No scope in the challenge: the client must use repository:team/app:pull.
            .without_scope_in_challenge()
            .user("robot", "pa:ss", &["repository:team/app:pull"]),
    ));
    let mut cfg = config(&fake.url());
    cfg.username = Some("robot".into());
    cfg.password = Some("pa:ss".into());
    let (upstream, _) = make_upstream(&cfg);
    upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("manifest with token from authenticated endpoint");
    let token_requests = fake.requests_to("/token");
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].header("authorization"),
        Some(expected.as_str())
    );
    // The registry itself only ever sees the token, never the password.
    for request in fake.requests_to("/v2/team/app/manifests/v1") {
        let auth = request.header("authorization").unwrap_or("");
        assert!(!auth.starts_with("Basic"), "registry saw Basic credentials");
    }

    // Wrong password at the token endpoint → Unauthorized, counted as such.
    cfg.password = Some("wrong".into());
    let (upstream, metrics) = make_upstream(&cfg);
    let err = upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("token endpoint refuses");
    assert!(
        matches!(err, UpstreamError::Unauthorized { status: 401 }),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    let refused = metrics
        .upstream_token_fetches
        .with_label_values(&["fake", "unauthorized"])
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn credentials_go_only_to_the_upstreams_own_token_hosts() {
    init();
    let fake = manifest_fake().await;
    // The challenge names the same fake under another host name: "localhost" is neither
    // the endpoint's host (127.0.0.1) nor a token host, so it gets no credentials.
    let port = fake.url().rsplit(':').next().expect("port").to_string();
    fake.set_auth(Auth::Bearer(
        Bearer::new()
            .realm_at(&format!("http://localhost:{port}"))
            .user("robot", "pa:ss", &["repository:team/app:pull"])
            .anonymous(&["repository:team/app:pull"]),
    ));
    let mut cfg = config(&fake.url());
    cfg.username = Some("robot".into());
    cfg.password = Some("pa:ss".into());
    let (upstream, _) = make_upstream(&cfg);
    upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("public content: an anonymous token does");
    let token_requests = fake.requests_to("/token");
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].header("authorization"),
        None,
        "the credentials were sent to a foreign realm"
    );

    // Listed in token_hosts: the credentials go there.
    cfg.token_hosts = vec!["localhost".into()];
    let (upstream, _) = make_upstream(&cfg);
    upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("manifest");
    let token_requests = fake.requests_to("/token");
    assert_eq!(token_requests.len(), 2);
    assert_eq!(
        token_requests[1].header("authorization"),
        Some(basic_header("robot", "pa:ss").as_str())
    );
}

#[tokio::test]
async fn basic_auth_is_learnt_and_wrong_password_is_unauthorized() {
    init();
    let fake = manifest_fake().await;
    fake.set_tags(&["v1"]);
    fake.set_auth(Auth::basic("bob", "secret"));
    let mut cfg = config(&fake.url());
    cfg.username = Some("bob".into());
    cfg.password = Some("secret".into());
    let (good, _) = make_upstream(&cfg);
    for _ in 0..3 {
        good.manifest(&repo(), &tag("v1"), &[], false)
            .await
            .expect("manifest with Basic");
    }
    let tags = good
        .tags_list(&repo(), Some("n=10&last=v0"))
        .await
        .expect("tags with Basic");
    assert!(String::from_utf8_lossy(&tags).contains(r#""tags":["v1"]"#));
    let tag_requests = fake.requests_to("/v2/team/app/tags/list");
    assert_eq!(tag_requests[0].query.as_deref(), Some("n=10&last=v0"));
    // One 401 to learn the scheme, then Basic up front.
    let unauthenticated = fake
        .requests()
        .iter()
        .filter(|r| r.header("authorization").is_none())
        .count();
    assert_eq!(unauthenticated, 1);
    assert_eq!(fake.requests().len(), 5);

    cfg.password = Some("wrong".into());
    let (bad, _) = make_upstream(&cfg);
    let err = bad
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("wrong password");
    assert!(
        matches!(err, UpstreamError::Unauthorized { status: 401 }),
        "{err:?}"
    );
    assert!(err.is_unavailable());

    cfg.username = None;
    cfg.password = None;
    let (anonymous, _) = make_upstream(&cfg);
    let err = anonymous
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("no credentials");
    assert!(matches!(err, UpstreamError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn password_file_is_used_for_basic() {
    init();
    let fake = manifest_fake().await;
    fake.set_auth(Auth::basic("bob", "from-file"));
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), "from-file\n").expect("write password file");
    let mut cfg = config(&fake.url());
    cfg.username = Some("bob".into());
    cfg.password_file = Some(file.path().to_path_buf());
    let (upstream, _) = make_upstream(&cfg);
    upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("password from file");

    cfg.password_file = Some("/nonexistent/sparkcr-password".into());
    let err = Upstream::from_config(&cfg, &Default::default(), None, Arc::new(Metrics::new()))
        .expect_err("unreadable");
    assert!(
        err.to_string().contains("/nonexistent/sparkcr-password"),
        "{err}"
    );
}

#[tokio::test]
async fn redirect_to_another_host_drops_authorization() {
    init();
    let blob = b"layer bytes from the CDN".to_vec();
    let cdn = FakeUpstream::start().await;
    // Reached as `localhost`, a different host name than the registry's 127.0.0.1.
    let registry = FakeUpstream::start().await;
    let digest: Digest = registry.add_blob(blob.clone()).parse().expect("digest");
    registry.set_auth(Auth::basic("bob", "secret"));
    registry.redirect_blobs_to(&cdn, Duration::from_secs(60));
    let mut cfg = config(&registry.url());
    cfg.username = Some("bob".into());
    cfg.password = Some("secret".into());
    let (upstream, metrics) = make_upstream(&cfg);
    let response = upstream
        .blob(&repo(), &digest, None)
        .await
        .expect("redirected blob");
    assert_eq!(response.start, 0);
    assert_eq!(response.size, Some(blob.len() as u64));
    assert_eq!(collect(response.body).await.expect("blob body"), blob);

    let registry_requests = registry.requests();
    assert_eq!(registry_requests.len(), 2);
    assert_eq!(
        registry_requests[1].header("authorization"),
        Some(basic_header("bob", "secret").as_str())
    );
    assert_eq!(registry.redirects(&digest.to_string()), 1);
    let cdn_requests = cdn.requests_to(&format!("/cdn/blobs/{digest}"));
    assert_eq!(cdn_requests.len(), 1);
    assert_eq!(cdn_requests[0].header("authorization"), None);
    assert_eq!(
        metrics.upstream_bytes.with_label_values(&["fake"]).get(),
        blob.len() as u64
    );
}

#[tokio::test]
async fn range_requests_report_start_and_full_size() {
    init();
    let blob: Vec<u8> = (0..100u8).collect();
    let fake = FakeUpstream::start().await;
    let digest: Digest = fake.add_blob(blob.clone()).parse().expect("digest");
    let (upstream, _) = make_upstream(&config(&fake.url()));

    let partial = upstream
        .blob(&repo(), &digest, Some((10, Some(19))))
        .await
        .expect("206");
    assert_eq!((partial.start, partial.size), (10, Some(100)));
    assert_eq!(
        collect(partial.body).await.expect("body"),
        (10..20u8).collect::<Vec<_>>()
    );
    assert_eq!(fake.requests()[0].header("range"), Some("bytes=10-19"));

    let open_ended = upstream
        .blob(&repo(), &digest, Some((90, None)))
        .await
        .expect("206 open-ended");
    assert_eq!((open_ended.start, open_ended.size), (90, Some(100)));
    assert_eq!(collect(open_ended.body).await.expect("body").len(), 10);
    assert_eq!(fake.requests()[1].header("range"), Some("bytes=90-"));

    assert_eq!(
        upstream.blob_head(&repo(), &digest).await.expect("HEAD"),
        Some(100)
    );

    // An upstream that ignores Range: the whole blob from 0.
    let ignoring = FakeUpstream::start().await;
    ignoring.add_blob_with(blob, Faults::none().ignore_range());
    let (upstream, _) = upstream_for(&ignoring);
    let whole = upstream
        .blob(&repo(), &digest, Some((10, Some(19))))
        .await
        .expect("200");
    assert_eq!((whole.start, whole.size), (0, Some(100)));
    assert_eq!(collect(whole.body).await.expect("body").len(), 100);
}

#[tokio::test]
async fn statuses_map_to_errors_the_cache_can_act_on() {
    init();
    let fake = FakeUpstream::start().await;
    let m = "/v2/team/app/manifests/";
    fake.canned(
        &format!("{m}limited"),
        429,
        &[("retry-after", "7")],
        "slow down",
    );
    fake.canned(
        &format!("{m}down"),
        503,
        &[],
        r#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#,
    );
    fake.canned(
        &format!("{m}huge"),
        200,
        &[("content-type", OCI_MANIFEST)],
        vec![b' '; 5 * 1024 * 1024],
    );
    fake.canned(&format!("{m}denied"), 403, &[], "");
    fake.canned(&format!("{m}bad"), 400, &[], "no");
    let (upstream, metrics) = upstream_for(&fake);
    let get = |t: &'static str| {
        let upstream = upstream.clone();
        async move { upstream.manifest(&repo(), &tag(t), &[], false).await }
    };

    let err = get("limited").await.expect_err("429");
    assert!(
        matches!(err, UpstreamError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{err:?}"
    );
    assert!(err.is_unavailable() && !err.is_not_found());

    let err = get("down").await.expect_err("503");
    match &err {
        UpstreamError::Status { status, message } => {
            assert_eq!(*status, 503);
            assert_eq!(message, "UNAVAILABLE: maintenance");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(err.is_unavailable());

    let err = get("missing").await.expect_err("404");
    assert!(matches!(err, UpstreamError::NotFound), "{err:?}");
    assert!(err.is_not_found() && !err.is_unavailable());

    let err = get("huge").await.expect_err("too large");
    assert!(matches!(err, UpstreamError::TooLarge), "{err:?}");

    let err = get("denied").await.expect_err("403");
    assert!(
        matches!(err, UpstreamError::Unauthorized { status: 403 }),
        "{err:?}"
    );

    let err = get("bad").await.expect_err("400");
    assert!(
        matches!(err, UpstreamError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.is_unavailable());

    let err = upstream
        .blob(&repo(), &Digest::of(b"x"), None)
        .await
        .expect_err("blob 404");
    assert!(err.is_not_found());
    let err = upstream
        .tags_list(&repo(), None)
        .await
        .expect_err("tags 404");
    assert!(err.is_not_found());

    for (kind, status, count) in [
        ("manifest", "429", 1),
        ("manifest", "503", 1),
        ("manifest", "404", 1),
        ("blob", "404", 1),
        ("tags", "404", 1),
    ] {
        let seen = metrics
            .upstream_requests
            .with_label_values(&["fake", kind, status])
            .get();
        assert_eq!(
            seen, count,
            "upstream_requests{{kind={kind},status={status}}}"
        );
    }
}

#[tokio::test]
async fn connection_refused_is_connect_and_unavailable() {
    init();
    let addr = closed_port().await;
    let (upstream, metrics) = make_upstream(&config(&format!("http://{addr}")));
    let err = upstream
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("nothing listening");
    assert!(matches!(err, UpstreamError::Connect(_)), "{err:?}");
    assert!(err.is_unavailable());
    let errors = metrics
        .upstream_requests
        .with_label_values(&["fake", "manifest", "error"])
        .get();
    assert_eq!(errors, 1);
    assert!(upstream.ping().await.is_err());
}

#[tokio::test]
async fn stalled_upstream_times_out() {
    init();
    let fake = FakeUpstream::start().await;
    fake.hang(true);
    let mut cfg = config(&fake.url());
    cfg.read_timeout = HumanDuration(Duration::from_millis(300));
    let (upstream, _) = make_upstream(&cfg);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        upstream.manifest(&repo(), &tag("v1"), &[], false),
    )
    .await
    .expect("the client gives up by itself")
    .expect_err("no answer");
    assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
    assert!(err.is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn blob_body_stalling_mid_way_ends_with_timeout() {
    init();
    let fake = FakeUpstream::start().await;
    let mut bytes = b"first ten!".to_vec();
    bytes.resize(100, b'.');
    let digest: Digest = fake
        .add_blob_with(bytes, Faults::none().stall_at(10))
        .parse()
        .expect("digest");
    let mut cfg = config(&fake.url());
    cfg.read_timeout = HumanDuration(Duration::from_millis(300));
    let (upstream, metrics) = make_upstream(&cfg);
    let response = upstream
        .blob(&repo(), &digest, None)
        .await
        .expect("headers arrive");
    assert_eq!(response.size, Some(100));
    let mut body = response.body;
    let mut received = Vec::new();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.next().await {
                Some(Ok(chunk)) => received.extend_from_slice(&chunk),
                Some(Err(err)) => return err,
                None => panic!("body ended without an error"),
            }
        }
    })
    .await
    .expect("the body read gives up by itself");
    assert_eq!(received, b"first ten!");
    assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
    assert!(err.is_unavailable());
    assert_eq!(
        metrics.upstream_bytes.with_label_values(&["fake"]).get(),
        10
    );
}

#[tokio::test]
async fn https_upstream_trust_settings() {
    init();
    let pki = test_pki();
    let fake = FakeUpstream::start_tls(pki.server_config.clone()).await;
    fake.add_manifest("v1", MANIFEST.as_bytes());
    let url = format!("https://localhost:{}", fake.addr.port());

    // The system roots do not include the test CA.
    let (untrusting, _) = make_upstream(&config(&url));
    let err = untrusting
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("unknown CA");
    assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");
    assert!(err.is_unavailable());

    let ca_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(ca_file.path(), &pki.ca_pem).expect("write CA file");
    let mut cfg = config(&url);
    cfg.ca_file = Some(ca_file.path().to_path_buf());
    let (trusting, _) = make_upstream(&cfg);
    let manifest = trusting
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("CA from ca_file");
    assert_eq!(manifest.body.as_deref(), Some(MANIFEST.as_bytes()));
    // ALPN picked HTTP/2.
    assert_eq!(fake.requests()[0].version, hyper::Version::HTTP_2);
    assert!(fake.requests()[0]
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("sparkcr-edge/")));

    // A name the certificate does not cover fails even with the CA trusted.
    let mut wrong_name = cfg.clone();
    wrong_name.url = format!("https://127.0.0.1:{}", fake.addr.port());
    let (misnamed, _) = make_upstream(&wrong_name);
    let err = misnamed
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect_err("name mismatch");
    assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");

    let mut insecure = config(&url);
    insecure.insecure_skip_verify = true;
    let (skipping, _) = make_upstream(&insecure);
    skipping
        .manifest(&repo(), &tag("v1"), &[], false)
        .await
        .expect("insecure_skip_verify accepts the unknown CA");
}

// Blob connections, slots and rate caps (issue #28): blob GETs run on HTTP/1.1
// connections of their own, at most `max_connections` per upstream, their bytes paced by
// `max_rate`; manifests do not queue behind them. Timed assertions are lower bounds only.

fn rate(bytes_per_second: u64) -> ByteRate {
    ByteRate::per_second(bytes_per_second).expect("above 0")
}

/// `len` bytes that differ from blob to blob (`seed`).
fn blob_bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed * 7) as u8)
        .collect()
}

/// Fetches the whole of each blob at once; bodies in the order of `digests`.
async fn fetch_all(upstream: &Upstream, digests: &[Digest]) -> Vec<Vec<u8>> {
    let fetches = digests.iter().map(|digest| async move {
        let response = upstream.blob(&repo(), digest, None).await.expect("blob");
        collect(response.body).await.expect("blob body")
    });
    futures_util::future::join_all(fetches).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_32_concurrent_blob_gets() {
    init();
    let fake = FakeUpstream::start().await;
    // Slow enough (~150 ms a blob, sent as 200 kB then 100 kB) that the GETs overlap.
    fake.set_default_faults(Faults::none().rate(2_000_000));
    let blobs: Vec<Vec<u8>> = (0..32).map(|n| blob_bytes(n, 300_000)).collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| fake.add_blob(b.clone()).parse().expect("digest"))
        .collect();
    let mut cfg = config(&fake.url());
    cfg.max_connections = 4;
    let (upstream, metrics) = make_upstream(&cfg);

    let bodies = fetch_all(&upstream, &digests).await;
    assert!(bodies == blobs, "every blob arrives byte-exact");
    assert_eq!(
        fake.max_blob_bodies_in_flight(),
        4,
        "never more than max_connections blob bodies at once (and the cap is used)"
    );
    let blob_gets: Vec<_> = fake
        .requests_containing("/blobs/")
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(blob_gets.len(), 32);
    assert!(blob_gets
        .iter()
        .all(|r| r.version == hyper::Version::HTTP_11));
    // The 32 start together: 4 take a slot, the others wait for one (28 of them, unless
    // a first body ended before the last GET started).
    let waits = metrics
        .upstream_blob_slot_waits
        .with_label_values(&["fake"]);
    assert!((20..=28).contains(&waits.get()), "{}", waits.get());
    let in_use = metrics
        .upstream_blob_connections_in_use
        .with_label_values(&["fake"]);
    assert_eq!(in_use.get(), 0, "every slot was given back");
    assert_eq!(upstream.blob_slots_free(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blobs_get_connections_of_their_own_and_manifests_never_wait_for_a_slot() {
    init();
    // Over TLS, where the fake offers h2 by ALPN: one h2 connection would carry them all.
    let fake = FakeUpstream::start_tls(test_pki().server_config).await;
    fake.add_manifest("v1", MANIFEST.as_bytes());
    fake.set_default_faults(Faults::none().rate(1_000_000));
    let blobs: Vec<Vec<u8>> = (0..4).map(|n| blob_bytes(n, 200_000)).collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| fake.add_blob(b.clone()).parse().expect("digest"))
        .collect();
    let mut cfg = config(&fake.url());
    cfg.insecure_skip_verify = true;
    cfg.max_connections = 4;
    let (upstream, metrics) = make_upstream(&cfg);
    let in_use = metrics
        .upstream_blob_connections_in_use
        .with_label_values(&["fake"]);
    assert!(fetch_all(&upstream, &digests).await == blobs);
    let blob_gets = fake.requests_containing("/blobs/");
    assert!(blob_gets
        .iter()
        .all(|r| r.version == hyper::Version::HTTP_11));
    let conns: std::collections::HashSet<u64> = blob_gets.iter().map(|r| r.conn).collect();
    assert_eq!(conns.len(), 4, "4 concurrent blobs, 4 connections");

    // Every slot taken by a body that stalls: a manifest GET is answered all the same.
    let stalled = fake.add_blob_with(blob_bytes(9, 1000), Faults::none().stall_at(10));
    let stalled: Digest = stalled.parse().expect("digest");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            upstream
                .blob(&repo(), &stalled, None)
                .await
                .expect("headers"),
        );
    }
    assert_eq!((upstream.blob_slots_free(), in_use.get()), (0, 4));
    let manifest = tokio::time::timeout(
        Duration::from_secs(3),
        upstream.manifest(&repo(), &tag("v1"), &[], false),
    )
    .await
    .expect("a manifest does not wait for a blob slot")
    .expect("manifest");
    assert_eq!(manifest.body.as_deref(), Some(MANIFEST.as_bytes()));
    let manifest_get = &fake.requests_to("/v2/team/app/manifests/v1")[0];
    assert_eq!(manifest_get.version, hyper::Version::HTTP_2);
    assert!(
        !conns.contains(&manifest_get.conn),
        "not on a blob connection"
    );

    // A fifth blob waits for a slot; dropping a body mid-way (its client went away)
    // gives its slot back.
    let mut dropped = held.pop().expect("4 held");
    let first = dropped
        .body
        .next()
        .await
        .expect("a first chunk")
        .expect("bytes");
    assert!(!first.is_empty() && first.len() <= 10, "{}", first.len());
    let fifth = tokio::spawn({
        let upstream = upstream.clone();
        let digest = digests[0];
        async move {
            let response = upstream.blob(&repo(), &digest, None).await.expect("blob");
            collect(response.body).await.expect("blob body")
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fifth.is_finished(),
        "the fifth blob waits while 4 are held"
    );
    drop(dropped);
    let fifth = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("a dropped body gives its slot back")
        .expect("task");
    assert!(fifth == blobs[0]);
    drop(held);
    assert_eq!((upstream.blob_slots_free(), in_use.get()), (4, 0));
}

#[tokio::test]
async fn a_body_that_breaks_gives_its_slot_back_before_it_is_dropped() {
    init();
    let fake = FakeUpstream::start().await;
    let blob = blob_bytes(3, 200_000);
    let digest: Digest = fake
        .add_blob_with(blob.clone(), Faults::none().cut_first(50_000, 1))
        .parse()
        .expect("digest");
    let mut cfg = config(&fake.url());
    cfg.max_connections = 1;
    let (upstream, _) = make_upstream(&cfg);
    let mut broken = upstream
        .blob(&repo(), &digest, None)
        .await
        .expect("headers");
    assert_eq!(upstream.blob_slots_free(), 0);
    let mut got = 0;
    let err = loop {
        match broken.body.next().await {
            Some(Ok(bytes)) => got += bytes.len(),
            Some(Err(e)) => break e,
            None => panic!("the cut body ended cleanly after {got} bytes"),
        }
    };
    assert!(got <= 50_000, "{got}: {err}");
    assert_eq!(
        upstream.blob_slots_free(),
        1,
        "the failed body holds no slot"
    );
    // The only slot is free while `broken` is still alive: a resume gets it at once.
    let rest = tokio::time::timeout(
        Duration::from_secs(5),
        upstream.blob(&repo(), &digest, Some((got as u64, None))),
    )
    .await
    .expect("the resume does not wait for a slot")
    .expect("resume");
    assert_eq!(rest.start, got as u64);
    assert_eq!(collect(rest.body).await.expect("the rest"), blob[got..]);
    drop(broken);
    assert_eq!(upstream.blob_slots_free(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_caps_an_upstreams_blob_bytes() {
    init();
    let fake = FakeUpstream::start().await;
    let blobs: Vec<Vec<u8>> = (0..2).map(|n| blob_bytes(n, 300_000)).collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| fake.add_blob(b.clone()).parse().expect("digest"))
        .collect();
    let mut cfg = config(&fake.url());
    cfg.max_rate = Some(rate(1_000_000));
    let (upstream, metrics) = make_upstream(&cfg);
    let started = Instant::now();
    assert!(fetch_all(&upstream, &digests).await == blobs);
    // 600 kB at 1 MB/s, less the bucket's 100 kB burst: at least 0.5 s, shared by both.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    let held_back = metrics
        .upstream_rate_limited_seconds
        .with_label_values(&["fake"])
        .get();
    assert!(held_back >= 0.4, "{held_back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_max_rate_is_shared_by_every_upstream() {
    init();
    let edge = RateLimit::new(rate(1_000_000));
    let metrics = Arc::new(Metrics::new());
    let mut fetches = Vec::new();
    let mut fakes = Vec::new();
    for (n, name) in ["a.fake", "b.fake"].into_iter().enumerate() {
        let fake = FakeUpstream::start().await;
        let blob = blob_bytes(n as u32, 300_000);
        let digest: Digest = fake.add_blob(blob.clone()).parse().expect("digest");
        let mut cfg = config(&fake.url());
        cfg.name = name.to_string();
        let upstream =
            Upstream::from_config(&cfg, &Default::default(), Some(&edge), metrics.clone())
                .expect("valid upstream config");
        fakes.push(fake);
        fetches.push(async move {
            let response = upstream.blob(&repo(), &digest, None).await.expect("blob");
            assert!(collect(response.body).await.expect("blob body") == blob);
        });
    }
    let started = Instant::now();
    futures_util::future::join_all(fetches).await;
    // 2 × 300 kB through one 1 MB/s bucket (100 kB burst): at least 0.5 s, not 0.2 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    let held_back: f64 = ["a.fake", "b.fake"]
        .iter()
        .map(|name| {
            metrics
                .upstream_rate_limited_seconds
                .with_label_values(&[name])
                .get()
        })
        .sum();
    assert!(held_back >= 0.4, "{held_back}");
}

#[tokio::test]
async fn ranged_gets_of_a_redirected_blob_go_to_the_redirect_target() {
    init();
    let blob = blob_bytes(1, 1000);
    let cdn = FakeUpstream::start().await;
    let registry = FakeUpstream::start().await;
    let digest: Digest = registry.add_blob(blob.clone()).parse().expect("digest");
    registry.set_auth(Auth::basic("bob", "secret"));
    registry.redirect_blobs_to(&cdn, Duration::from_secs(60));
    let mut cfg = config(&registry.url());
    cfg.username = Some("bob".into());
    cfg.password = Some("secret".into());
    let (upstream, _) = make_upstream(&cfg);
    let cdn_path = format!("/cdn/blobs/{digest}");

    for (start, end) in [(0u64, 399u64), (400, 799), (800, 999)] {
        let piece = upstream
            .blob(&repo(), &digest, Some((start, Some(end))))
            .await
            .expect("piece");
        assert_eq!((piece.start, piece.size), (start, Some(1000)));
        let bytes = collect(piece.body).await.expect("piece body");
        assert_eq!(bytes, blob[start as usize..=end as usize]);
    }
    assert_eq!(
        registry.redirects(&digest.to_string()),
        1,
        "one redirect for the blob, not one per piece"
    );
    let blob_gets = registry.requests_containing("/blobs/");
    assert_eq!(
        blob_gets.len(),
        2,
        "a 401, then the GET that was redirected"
    );
    let cdn_gets = cdn.requests_to(&cdn_path);
    let ranges: Vec<_> = cdn_gets.iter().map(|r| r.range()).collect();
    assert_eq!(
        ranges,
        [
            Some("bytes=0-399"),
            Some("bytes=400-799"),
            Some("bytes=800-999")
        ]
    );
    assert!(cdn_gets.iter().all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn a_refused_redirect_target_falls_back_to_the_registry() {
    init();
    let blob = blob_bytes(2, 1000);
    let cdn = FakeUpstream::start().await;
    let registry = FakeUpstream::start().await;
    let digest: Digest = registry.add_blob(blob.clone()).parse().expect("digest");
    // The CDN's URLs expire long before the edge would stop using them.
    registry.redirect_blobs_to(&cdn, Duration::from_secs(1));
    let (upstream, _) = make_upstream(&config(&registry.url()));
    let cdn_path = format!("/cdn/blobs/{digest}");

    let first = upstream
        .blob(&repo(), &digest, Some((0, Some(499))))
        .await
        .expect("first piece");
    assert_eq!(collect(first.body).await.expect("body"), blob[..500]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = upstream
        .blob(&repo(), &digest, Some((500, None)))
        .await
        .expect("second piece, through the registry again");
    assert_eq!((second.start, second.size), (500, Some(1000)));
    assert_eq!(collect(second.body).await.expect("body"), blob[500..]);
    assert_eq!(registry.redirects(&digest.to_string()), 2);
    let cdn_gets = cdn.requests_to(&cdn_path);
    assert_eq!(
        cdn_gets.len(),
        3,
        "first piece, the refused try, the new target"
    );
    // The target that was just given works: the next piece goes straight there again.
    let third = upstream
        .blob(&repo(), &digest, Some((900, Some(949))))
        .await
        .expect("third piece");
    assert_eq!(collect(third.body).await.expect("body"), blob[900..950]);
    assert_eq!(registry.redirects(&digest.to_string()), 2);
}
