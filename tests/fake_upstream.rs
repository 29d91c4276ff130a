//! The test fake registry (`tests/common/fake_upstream/`) itself, with reqwest on
//! 127.0.0.1: `Range` answers, each fault mode as its documentation says, redirects to a
//! CDN fake, rate limits and pull-limit headers, Bearer scopes per user, request and
//! connection records, TLS with h2. And the `EdgeConfig` builder's TOML, as the daemon
//! loads it.

mod common;

use common::edge_config::{EdgeConfig, Upstream};
use common::fake_upstream::auth::{basic_header, Bearer};
use common::fake_upstream::{
    corrupted, test_pki, Auth, FakeUpstream, Faults, LimitHeaders, Target,
};
use common::images::pseudo_random;
use std::time::{Duration, Instant};

/// A reqwest client builder (rustls with ring), no proxy.
fn builder() -> reqwest::ClientBuilder {
    common::install_crypto();
    reqwest::Client::builder().no_proxy()
}

fn client() -> reqwest::Client {
    builder().build().expect("client")
}

/// GETs `url` and reads the body chunk by chunk: (status, bytes received, whether the body
/// ended with an error). A body silent for `quiet` counts as an error.
async fn get(
    c: &reqwest::Client,
    url: &str,
    range: Option<&str>,
    quiet: Duration,
) -> (u16, Vec<u8>, bool) {
    let mut req = c.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let mut r = req.send().await.expect("headers");
    let status = r.status().as_u16();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(quiet, r.chunk()).await {
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) => return (status, got, false),
            Ok(Err(_)) | Err(_) => return (status, got, true),
        }
    }
}

fn blob_url(up: &FakeUpstream, digest: &str) -> String {
    format!("{}/v2/team/app/blobs/{digest}", up.url())
}

const QUIET: Duration = Duration::from_secs(5);

#[tokio::test]
async fn ranges_are_honoured_with_206_and_content_range() {
    let up = FakeUpstream::start().await;
    let bytes: Vec<u8> = (0..100u8).collect();
    let d = up.add_blob(bytes.clone());
    let c = client();
    let url = blob_url(&up, &d);
    let r = c.head(&url).send().await.expect("HEAD");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100");
    let r = c.get(&url).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.bytes().await.expect("body").as_ref(), &bytes[..]);
    for (range, status, content_range, want) in [
        ("bytes=10-19", 206, "bytes 10-19/100", &bytes[10..20]),
        ("bytes=90-", 206, "bytes 90-99/100", &bytes[90..]),
        ("bytes=95-200", 206, "bytes 95-99/100", &bytes[95..]),
        ("bytes=-5", 206, "bytes 95-99/100", &bytes[95..]),
        ("bytes=100-", 416, "bytes */100", &[][..]),
    ] {
        let r = c
            .get(&url)
            .header("range", range)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), status, "{range}");
        assert_eq!(r.headers()["content-range"], content_range, "{range}");
        if status == 206 {
            assert_eq!(r.bytes().await.expect("body").as_ref(), want, "{range}");
        }
    }
    let ranges: Vec<_> = up
        .requests_to(&format!("/v2/team/app/blobs/{d}"))
        .iter()
        .filter_map(|r| r.range().map(str::to_string))
        .collect();
    assert_eq!(ranges.len(), 5, "every Range recorded: {ranges:?}");
}

#[tokio::test]
async fn ignore_range_answers_the_whole_blob() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(1, 1000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().ignore_range());
    let r = client()
        .get(blob_url(&up, &d))
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-range").is_none());
    assert_eq!(r.bytes().await.expect("body").as_ref(), &bytes[..]);
}

#[tokio::test]
async fn cut_at_closes_full_and_ranged_responses_at_the_byte() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(2, 300_000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().cut_at(200_000));
    let (c, url) = (client(), blob_url(&up, &d));
    let (status, got, failed) = get(&c, &url, None, QUIET).await;
    assert_eq!((status, failed), (200, true));
    assert_eq!(
        got,
        &bytes[..200_000],
        "everything before the cut, nothing after"
    );
    let (status, got, failed) = get(&c, &url, Some("bytes=150000-"), QUIET).await;
    assert_eq!((status, failed), (206, true));
    assert_eq!(got, &bytes[150_000..200_000]);
    let (status, got, failed) = get(&c, &url, Some("bytes=200000-"), QUIET).await;
    assert_eq!((status, got.len(), failed), (206, 0, true), "headers only");
    // A range ending before the cut is whole.
    let (status, got, failed) = get(&c, &url, Some("bytes=0-99"), QUIET).await;
    assert_eq!((status, failed), (206, false));
    assert_eq!(got, &bytes[..100]);
}

#[tokio::test]
async fn cut_first_cuts_only_the_first_responses() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(3, 100_000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().cut_first(1000, 2));
    let (c, url) = (client(), blob_url(&up, &d));
    let (_, got, failed) = get(&c, &url, None, QUIET).await;
    assert_eq!((got.len(), failed), (1000, true));
    let (_, got, failed) = get(&c, &url, Some("bytes=500-"), QUIET).await;
    assert_eq!((got.len(), failed), (500, true));
    let (_, got, failed) = get(&c, &url, Some("bytes=500-"), QUIET).await;
    assert!(!failed);
    assert_eq!(got, &bytes[500..]);
    let (_, got, failed) = get(&c, &url, None, QUIET).await;
    assert!(!failed);
    assert_eq!(got, bytes);
    // Each cut closed its connection: 2 cut + at least 1 for the rest.
    assert!(up.connections() >= 3, "{}", up.connections());
}

#[tokio::test]
async fn corrupt_flips_the_range_in_full_and_ranged_answers() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(4, 10_000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().corrupt(100..200));
    let (c, url) = (client(), blob_url(&up, &d));
    let bad = corrupted(&bytes, 100..200);
    assert_ne!(bad, bytes);
    assert_eq!(bad.len(), bytes.len());
    let (status, got, failed) = get(&c, &url, None, QUIET).await;
    assert_eq!((status, failed), (200, false));
    assert_eq!(got, bad);
    let (_, got, _) = get(&c, &url, Some("bytes=150-299"), QUIET).await;
    assert_eq!(got, &bad[150..300]);
    let (_, got, _) = get(&c, &url, Some("bytes=300-"), QUIET).await;
    assert_eq!(got, &bytes[300..], "outside the range: the right bytes");
}

#[tokio::test]
async fn stall_at_sends_headers_and_the_bytes_before_then_nothing() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(5, 5000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().stall_at(1024));
    let (c, url) = (client(), blob_url(&up, &d));
    let t = Instant::now();
    let (status, got, silent) = get(&c, &url, None, Duration::from_millis(500)).await;
    assert_eq!((status, silent), (200, true));
    assert_eq!(got, &bytes[..1024]);
    assert!(t.elapsed() >= Duration::from_millis(500));
    let (status, got, silent) =
        get(&c, &url, Some("bytes=2000-"), Duration::from_millis(300)).await;
    assert_eq!((status, got.len(), silent), (206, 0, true));
}

#[tokio::test]
async fn rate_caps_each_response() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(6, 20_000);
    let d = up.add_blob_with(bytes.clone(), Faults::none().rate(10_000));
    let t = Instant::now();
    let (_, got, failed) = get(&client(), &blob_url(&up, &d), None, QUIET).await;
    assert!(!failed);
    assert_eq!(got, bytes);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "20 kB at 10 kB/s took {took:?}"
    );
}

#[tokio::test]
async fn refuse_answers_429_with_retry_after_for_the_next_n() {
    let up = FakeUpstream::start().await;
    let d = up.add_blob_with(b"x".to_vec(), Faults::none().refuse_next(503, "7", 2));
    let (c, url) = (client(), blob_url(&up, &d));
    for _ in 0..2 {
        let r = c.get(&url).send().await.expect("GET");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "7");
    }
    assert_eq!(c.get(&url).send().await.expect("GET").status(), 200);

    let always = up.add_blob_with(b"y".to_vec(), Faults::none().refuse(429, "3600"));
    for _ in 0..3 {
        let r = c.get(blob_url(&up, &always)).send().await.expect("GET");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3600");
    }
}

#[tokio::test]
async fn default_faults_apply_to_every_blob() {
    let up = FakeUpstream::start().await;
    let before = up.add_blob(pseudo_random(8, 2000));
    up.set_default_faults(Faults::none().cut_at(500));
    let after = up.add_blob(pseudo_random(9, 2000));
    let c = client();
    for d in [&before, &after] {
        let (_, got, failed) = get(&c, &blob_url(&up, d), None, QUIET).await;
        assert_eq!((got.len(), failed), (500, true), "{d}");
    }
    up.set_default_faults(Faults::none());
    let (_, got, failed) = get(&c, &blob_url(&up, &after), None, QUIET).await;
    assert_eq!((got.len(), failed), (2000, false));
}

#[tokio::test]
async fn registry_rate_limits_manifest_statuses_and_pull_limit_headers() {
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let digest = up.add_manifest("v1", manifest);
    let d = up.add_blob(b"blob".to_vec());
    let c = client();
    let m = format!("{}/v2/team/app/manifests/v1", up.url());
    let by_digest = format!("{}/v2/team/app/manifests/{digest}", up.url());
    assert_eq!(c.get(&by_digest).send().await.expect("GET").status(), 200);

    up.rate_limit(Target::Manifests, 429, "1", 2);
    for _ in 0..2 {
        let r = c.get(&m).send().await.expect("GET");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        // Blobs are not the target.
        let b = c.get(blob_url(&up, &d)).send().await.expect("GET");
        assert_eq!(b.status(), 200);
    }
    assert_eq!(c.get(&m).send().await.expect("GET").status(), 200);

    up.set_manifest_status(Some(502));
    let r = c.get(&m).send().await.expect("GET");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["retry-after"], "30");
    up.set_manifest_status(None);

    up.pull_limit(LimitHeaders::Docker, 100, 2);
    let r = c.head(&m).send().await.expect("HEAD");
    assert_eq!(
        r.headers()["ratelimit-remaining"],
        "2;w=21600",
        "HEAD is free"
    );
    for left in ["1;w=21600", "0;w=21600"] {
        let r = c.get(&m).send().await.expect("GET");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "100;w=21600");
        assert_eq!(r.headers()["ratelimit-remaining"], left);
    }
    let r = c.get(&m).send().await.expect("GET");
    assert_eq!(r.status(), 429, "pull limit reached");
    up.pull_limit(LimitHeaders::Ietf, 10, 5);
    let r = c.get(&m).send().await.expect("GET");
    assert_eq!(r.headers()["ratelimit-limit"], "10");
    assert_eq!(r.headers()["ratelimit-remaining"], "4");
}

#[tokio::test]
async fn redirects_go_to_the_cdn_until_the_url_expires() {
    let up = FakeUpstream::start().await;
    let cdn = FakeUpstream::start().await;
    let bytes = pseudo_random(7, 50_000);
    let d = up.add_blob(bytes.clone());
    up.redirect_blobs_to(&cdn, Duration::from_secs(60));
    let no_follow = builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_follow.get(blob_url(&up, &d)).send().await.expect("GET");
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with(&format!(
            "http://localhost:{}/cdn/blobs/{d}?expires=",
            cdn.addr.port()
        )),
        "{location}"
    );
    let r = client().get(blob_url(&up, &d)).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &bytes[..]);
    assert_eq!(up.redirects(&d), 2);
    assert_eq!(cdn.requests_to(&format!("/cdn/blobs/{d}")).len(), 1);
    // HEAD is answered by the registry itself.
    let r = no_follow
        .head(blob_url(&up, &d))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 200);

    // A URL used after its time: 403 from the CDN.
    up.redirect_blobs_to(&cdn, Duration::ZERO);
    let r = no_follow.get(blob_url(&up, &d)).send().await.expect("GET");
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = no_follow.get(&location).send().await.expect("GET");
    assert_eq!(r.status(), 403);
    assert_eq!(up.redirects(&d), 3);
}

#[tokio::test]
async fn bearer_tokens_carry_the_scopes_each_user_has() {
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    up.add_manifest("v1", manifest);
    up.set_auth(Auth::Bearer(
        Bearer::new()
            .user("alice", "a-pass", &["repository:team/app:pull"])
            .user("bob", "b-pass", &["repository:*:pull"]),
    ));
    let c = client();
    let url = |repo: &str| format!("{}/v2/{repo}/manifests/v1", up.url());
    let r = c.get(url("team/app")).send().await.expect("GET");
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().expect("challenge");
    assert_eq!(
        challenge,
        format!(
            r#"Bearer realm="{}/token",service="fake-registry",scope="repository:team/app:pull""#,
            up.url()
        )
    );
    let token = |user: &str, password: &str, repo: &str| {
        let c = c.clone();
        let url = format!(
            "{}/token?service=fake-registry&scope=repository:{repo}:pull",
            up.url()
        );
        let auth = basic_header(user, password);
        async move {
            let r = c
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .expect("token");
            let status = r.status().as_u16();
            let body = r.bytes().await.expect("token body");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (status, v["token"].as_str().unwrap_or_default().to_string())
        }
    };
    let with = |token: String, repo: &str| {
        c.get(url(repo))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let (status, alice) = token("alice", "a-pass", "team/app").await;
    assert_eq!(status, 200);
    assert_eq!(with(alice, "team/app").await.expect("GET").status(), 200);
    // Alice asks for another repository: a token without it, refused with 403.
    let (status, alice_other) = token("alice", "a-pass", "team/other").await;
    assert_eq!(status, 200);
    assert_eq!(
        with(alice_other, "team/other").await.expect("GET").status(),
        403
    );
    let (_, bob) = token("bob", "b-pass", "team/other").await;
    assert_eq!(
        with(bob, "team/other").await.expect("GET").status(),
        200,
        "bob's wildcard scope covers it (manifests are served in any repository)"
    );
    let (status, _) = token("alice", "wrong", "team/app").await;
    assert_eq!(status, 401);
    let anonymous = c
        .get(format!(
            "{}/token?service=fake-registry&scope=repository:team/app:pull",
            up.url()
        ))
        .send()
        .await
        .expect("token");
    assert_eq!(anonymous.status(), 401, "no anonymous access configured");
    assert_eq!(
        with("tok-999".into(), "team/app")
            .await
            .expect("GET")
            .status(),
        401
    );
    assert_eq!(up.tokens_issued(), 3, "refused requests get no token");
}

#[tokio::test]
async fn basic_auth_and_canned_answers_and_hang() {
    let up = FakeUpstream::start().await;
    up.set_auth(Auth::basic("bob", "secret"));
    let c = client();
    let r = c
        .get(format!("{}/v2/", up.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .starts_with("Basic "));
    let r = c
        .get(format!("{}/v2/", up.url()))
        .basic_auth("bob", Some("secret"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    up.canned("/v2/x/manifests/y", 418, &[("x-fake", "yes")], "teapot");
    let r = c
        .get(format!("{}/v2/x/manifests/y", up.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-fake"], "yes");
    up.hang(true);
    let t = c.get(format!("{}/v2/", up.url())).send();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), t)
            .await
            .is_err(),
        "no answer while hanging"
    );
    assert_eq!(up.requests().len(), 4, "the hung request is recorded too");
}

#[tokio::test]
async fn requests_record_headers_query_and_connection() {
    let up = FakeUpstream::start().await;
    up.set_tags(&["c", "a", "b"]);
    let c = client();
    let url = format!("{}/v2/team/app/tags/list?n=10", up.url());
    let r = c
        .get(&url)
        .header("x-probe", "1")
        .send()
        .await
        .expect("GET");
    let link = r.headers()["link"].to_str().expect("link").to_string();
    assert_eq!(link, "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"");
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    c.get(&url).send().await.expect("GET");
    client().get(&url).send().await.expect("GET");
    let seen = up.requests_to("/v2/team/app/tags/list");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].header("x-probe"), Some("1"));
    assert_eq!(seen[0].query_param("n").as_deref(), Some("10"));
    assert_eq!(
        seen[0].conn, seen[1].conn,
        "one client, one kept-alive connection"
    );
    assert_ne!(seen[1].conn, seen[2].conn);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn tls_and_h2_are_served() {
    common::install_crypto();
    let pki = test_pki();
    let up = FakeUpstream::start_tls(pki.server_config.clone()).await;
    let d = up.add_blob(b"over TLS".to_vec());
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA"))
        .expect("root");
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let c = builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("client");
    assert!(up.url().starts_with("https://localhost:"));
    let r = c.get(blob_url(&up, &d)).send().await.expect("GET over TLS");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"over TLS");
    assert_eq!(up.requests()[0].version, hyper::Version::HTTP_2);

    // Plain h2 with prior knowledge, too.
    let plain = FakeUpstream::start().await;
    let d = plain.add_blob(b"h2c".to_vec());
    let c = builder().http2_prior_knowledge().build().expect("client");
    let r = c.get(blob_url(&plain, &d)).send().await.expect("GET h2c");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"h2c");
    assert_eq!(plain.requests()[0].version, hyper::Version::HTTP_2);
}

#[test]
fn edge_config_renders_what_the_daemon_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = common::TestCa::new().write_leaf(dir.path(), &["localhost"]);
    let path = dir.path().join("config.toml");
    let hash = format!("sha256:{}", "a".repeat(64));
    EdgeConfig::new(dir.path().join("data"))
        .listen(&["127.0.0.1:0", "127.0.0.2:0"])
        .hostname("edge.test")
        .tls(&["127.0.0.1:0"], &cert, &key)
        .max_size("1GiB")
        .chunk_size("1MiB")
        .tag_ttl("0")
        .anonymous(false)
        .admin_cidrs(&["127.0.0.1/32"])
        .token("ci", &hash, &["pull:public"])
        .upstream(
            Upstream::new("docker.io", "http://127.0.0.1:1")
                .default()
                .private()
                .push()
                .credentials("bob", "secret")
                .aliases(&["hub"], &["dockerhub"])
                .connect_timeout("2s")
                .read_timeout("7s"),
        )
        .upstream(Upstream::with_urls(
            "lan",
            &[
                "http://127.0.0.1:2".to_string(),
                "http://127.0.0.1:3".to_string(),
            ],
        ))
        .write(&path);
    let text = std::fs::read_to_string(&path).expect("read config");
    let c = sparkcr_edge::config::load(Some(&path))
        .unwrap_or_else(|e| panic!("{e}:\n{text}"))
        .config;
    assert!(!c.builtin_upstreams);
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.server.tls_listen.len(), 1);
    assert_eq!(c.server.hostname, "edge.test");
    assert_eq!(c.storage.path, dir.path().join("data"));
    assert_eq!(c.storage.max_size.0, 1 << 30);
    assert_eq!(c.storage.chunk_size.0, 1 << 20);
    assert_eq!(c.cache.tag_ttl.0, Duration::ZERO);
    assert!(!c.auth.anonymous);
    assert_eq!(c.auth.admin_cidrs.len(), 1);
    assert_eq!(c.auth.token[0].name, "ci");
    assert_eq!(c.upstream.len(), 2, "{text}");
    let hub = &c.upstream[0];
    assert!(hub.default && hub.private && hub.push);
    assert_eq!(hub.username.as_deref(), Some("bob"));
    assert_eq!(hub.password.as_deref(), Some("secret"));
    assert_eq!(hub.aliases, ["hub"]);
    assert_eq!(hub.path_aliases, ["dockerhub"]);
    assert_eq!(hub.read_timeout.0, Duration::from_secs(7));
    assert_eq!(c.upstream[1].urls.len(), 2);
    assert!(!c.upstream[1].default);
}
