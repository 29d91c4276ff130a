//! Reaching upstreams from behind a firewall, with real parts: Debian's `squid` (HTTP
//! proxy) and `dante-server` (SOCKS5) on 127.0.0.1 in front of Debian's `docker-registry`
//! (registry:2). The upstream is addressed by a host name only squid resolves, or the
//! proxy's own access log shows the edge's requests went through it, or the proxy is
//! stopped and the pull must fail. Rate limits (429, 503 with `Retry-After`) come from the
//! fault-injecting fake upstream.

mod common;
use common::edge_config::edge_for;
use common::fake_upstream::{FakeUpstream, Faults, Target};
use common::images::*;
use common::proxies::*;
use common::pull::*;
use common::registry2::*;
use common::*;

fn edge_head() -> String {
    "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n\
     [storage]\npath = \"{dir}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n"
        .to_string()
}

fn upstream(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n{extra}\n"
    )
}

fn route(edge: &Edge, upstream: &str, repo: &str) -> Route {
    Route {
        name: "path prefix",
        template: format!("http://{}/v2/{upstream}/{repo}/{{rest}}", edge.http[0]),
        host: None,
    }
}

async fn seed_image(reg: &Registry2, repo: &str, seed: u64) -> PushedImage {
    push_image(reg, repo, Some("v1"), Format::Oci, seed, "amd64", &[40_000]).await
}

/// Polls `count` until it reaches `want` or 5 s pass (access logs arrive through pipes).
async fn wait_count(count: impl Fn() -> usize, want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = count();
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The edge's status for a manifest, without asserting success.
async fn manifest_status(client: &reqwest::Client, r: &Route) -> u16 {
    client
        .get(r.url("manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .map(|resp| resp.status().as_u16())
        .unwrap_or(0)
}

/// The environment form (`HTTP_PROXY` + `NO_PROXY`, as a systemd drop-in would set them):
/// an upstream only squid can resolve is pulled through squid; an upstream in `NO_PROXY`
/// goes direct and never shows up in squid's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxy_and_no_proxy() {
    let reg = Registry2::start();
    let squid = ProxyProcess::squid();
    let behind = seed_image(&reg, "team/behind", 1).await;
    let lan = seed_image(&reg, "team/lan", 2).await;
    let hidden_url = format!("http://{PROXY_ONLY_HOST}:{}", reg.port);
    let config = format!(
        "{}{}{}",
        edge_head(),
        upstream("behind.test", &hidden_url, ""),
        upstream("lan.test", &reg.url(), "")
    );
    let proxy = squid.url("http");
    let edge = Edge::start_with_env(
        &config,
        &[
            ("HTTP_PROXY", proxy.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    edge.wait_for_log("outbound: http:// requests via http://127.0.0.1")
        .await;
    let client = reqwest::Client::new();

    let pulled = pull(&client, &route(&edge, "behind.test", "team/behind"), "v1").await;
    assert_eq!(pulled[0].manifest_digest, behind.manifest_digest);
    let needle = format!("{PROXY_ONLY_HOST}:{}/v2/team/behind", reg.port);
    let through_squid = wait_count(|| squid.log_lines_with(&needle), 3).await;
    assert!(
        through_squid >= 3,
        "manifest, config and layer through squid; squid log:\n{}",
        squid.log_text()
    );
    assert!(
        squid.log_text().contains("TCP_MISS/200"),
        "{}",
        squid.log_text()
    );

    let pulled = pull(&client, &route(&edge, "lan.test", "team/lan"), "v1").await;
    assert_eq!(pulled[0].manifest_digest, lan.manifest_digest);
    assert_eq!(
        squid.log_lines_with("team/lan"),
        0,
        "NO_PROXY upstream went through squid:\n{}",
        squid.log_text()
    );
    let direct = wait_count(|| reg.count_requests("GET", "/v2/team/lan/blobs/"), 2).await;
    assert!(direct >= 2, "registry log:\n{}", reg.log_text());
}

/// The config form: `[outbound] proxy` (squid) for every upstream, one upstream with its
/// own `proxy = "socks5h://…"` (dante), one with `proxy = "none"`. With dante stopped the
/// SOCKS upstream fails (no silent direct fallback) while the others keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_proxies_http_socks_and_none() {
    let reg = Registry2::start();
    let squid = ProxyProcess::squid();
    let mut dante = ProxyProcess::dante();
    let behind = seed_image(&reg, "team/behind", 3).await;
    let socks = seed_image(&reg, "team/socks", 4).await;
    let direct = seed_image(&reg, "team/direct", 5).await;
    let late = seed_image(&reg, "team/late", 6).await;
    let config = format!(
        "{}[outbound]\nproxy = \"{}\"\n{}{}{}",
        edge_head(),
        squid.url("http"),
        upstream(
            "behind.test",
            &format!("http://{PROXY_ONLY_HOST}:{}", reg.port),
            ""
        ),
        upstream(
            "socks.test",
            &format!("http://localhost:{}", reg.port),
            &format!("proxy = \"{}\"", dante.url("socks5h"))
        ),
        upstream("direct.test", &reg.url(), "proxy = \"none\""),
    );
    // An environment proxy that would break everything: the config must win over it.
    let edge = Edge::start_with_env(&config, &[("HTTP_PROXY", "http://127.0.0.1:9")]);
    let client = reqwest::Client::new();

    let p = pull(&client, &route(&edge, "behind.test", "team/behind"), "v1").await;
    assert_eq!(p[0].manifest_digest, behind.manifest_digest);
    let through_squid = wait_count(|| squid.log_lines_with("/v2/team/behind/"), 3).await;
    assert!(through_squid >= 3, "{}", squid.log_text());

    let p = pull(&client, &route(&edge, "socks.test", "team/socks"), "v1").await;
    assert_eq!(p[0].manifest_digest, socks.manifest_digest);
    let needle = format!("127.0.0.1.{}", reg.port);
    let dante_connects = wait_count(|| dante.log_lines_with(&needle), 1).await;
    assert!(dante_connects >= 1, "dante log:\n{}", dante.log_text());
    assert_eq!(
        squid.log_lines_with("team/socks"),
        0,
        "{}",
        squid.log_text()
    );

    let p = pull(&client, &route(&edge, "direct.test", "team/direct"), "v1").await;
    assert_eq!(p[0].manifest_digest, direct.manifest_digest);
    assert_eq!(
        squid.log_lines_with("team/direct"),
        0,
        "{}",
        squid.log_text()
    );

    dante.stop();
    let status = manifest_status(&client, &route(&edge, "socks.test", "team/late")).await;
    assert_eq!(status, 503, "the SOCKS upstream with its proxy down");
    assert_eq!(reg.count_requests("GET", "/v2/team/late/"), 0);
    let p = pull(&client, &route(&edge, "direct.test", "team/late"), "v1").await;
    assert_eq!(p[0].manifest_digest, late.manifest_digest);
}

/// `check-config` shows proxy passwords redacted and refuses an unknown scheme with one
/// line naming the file and the key.
#[test]
fn check_config_redacts_and_rejects_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let path_text = path.display().to_string();
    let write = |text: &str| std::fs::write(&path, text).expect("write config");
    let base = format!(
        "[storage]\npath = \"{}\"\n",
        dir.path().join("data").display()
    );
    write(&format!(
        "{base}[outbound]\nproxy = \"http://alice:hunter2@proxy.corp:3128\"\nno_proxy = [\"registry.lan\"]\n\
         [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nproxy = \"socks5h://bob:swordfish@socks.corp:1080\"\n"
    ));
    let (code, out, err) = run_cli(&["check-config", "--config", &path_text], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("hunter2") && !out.contains("swordfish"),
        "{out}"
    );
    assert!(
        out.contains("http://alice:<redacted>@proxy.corp:3128"),
        "{out}"
    );
    assert!(
        out.contains("socks5h://bob:<redacted>@socks.corp:1080"),
        "{out}"
    );

    write(&format!(
        "{base}[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nproxy = \"socks4://u:secret@socks.corp:1080\"\n"
    ));
    let (code, out, err) = run_cli(&["check-config", "--config", &path_text], &[]);
    assert_ne!(code, 0, "{out}{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains(&path_text), "{line}");
    assert!(line.contains("upstream[0].proxy"), "{line}");
    assert!(line.contains("unknown scheme \"socks4\""), "{line}");
    assert!(!line.contains("secret"), "{line}");
}

/// A short `Retry-After` (seconds or HTTP-date) is waited out and the pull succeeds; a
/// long one reaches the client as 429 TOOMANYREQUESTS with the same `Retry-After`, for
/// manifests and blobs alike, with a plain-sentence detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_waited_out_or_passed_on() {
    use std::time::{Duration, Instant, SystemTime};
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    for tag in ["v1", "v2", "v3"] {
        up.add_manifest(tag, &manifest);
    }
    let limited_blob =
        up.add_blob_with(pseudo_random(9, 10_000), Faults::none().refuse(429, "3600"));
    let edge = edge_for(&up);
    let client = reqwest::Client::new();
    let get = |path: String| client.get(edge.url(&path)).send();
    let set_mode = |status: u16, retry_after: String, times: usize| {
        up.rate_limit(Target::Manifests, status, &retry_after, times);
    };

    // 429, Retry-After: 1 → waited out.
    set_mode(429, "1".into(), 1);
    let t = Instant::now();
    let r = get("/v2/team/app/manifests/v1".into()).await.expect("get");
    assert_eq!(r.status(), 200);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "waited {took:?}"
    );
    assert_eq!(
        up.requests_containing("/manifests/v1").len(),
        2,
        "one retry"
    );

    // 503 with an HTTP-date two seconds ahead → waited out too.
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    set_mode(503, when, 1);
    let t = Instant::now();
    let r = get("/v2/team/app/manifests/v2".into()).await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(up.requests_containing("/manifests/v2").len(), 2);

    // Retry-After: 3600 → the client gets 429 at once, with the upstream's delay.
    set_mode(429, "3600".into(), 100);
    let t = Instant::now();
    let r = get("/v2/team/app/manifests/v3".into()).await.expect("get");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "no wait: {:?}",
        t.elapsed()
    );
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3600");
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error JSON");
    let error = &body["errors"][0];
    assert_eq!(error["code"], "TOOMANYREQUESTS");
    let detail = error["detail"].to_string();
    assert!(detail.contains("asked us to wait 3600 seconds"), "{body}");
    assert!(
        !detail.contains("Some(") && !detail.contains("unreachable"),
        "{body}"
    );
    up.clear_rate_limit();

    // A blob fill that meets a long rate limit: 429 with Retry-After too.
    let r = get(format!("/v2/team/app/blobs/{limited_blob}"))
        .await
        .expect("get");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3600");

    let metrics = edge.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            "sparkcr_edge_upstream_rate_limit_waits_total{upstream=\"fault.test\"}"
        ),
        2.0,
        "{metrics}"
    );
}

/// `urls = [a, b]`: everything from `a` while it is up; with `a` stopped, pulls keep
/// working through `b` at once; when `a` is back, the background probe puts it back in
/// use and pulls go to `a` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_endpoints_fail_over_and_come_back() {
    use std::time::{Duration, Instant};
    let mut a = Registry2::start();
    let b = Registry2::start();
    let mut pushed = Vec::new();
    for (seed, repo) in [(7, "team/one"), (8, "team/two"), (9, "team/three")] {
        let on_a = seed_image(&a, repo, seed).await;
        let on_b = seed_image(&b, repo, seed).await;
        assert_eq!(
            on_a.manifest_digest, on_b.manifest_digest,
            "same image on both"
        );
        pushed.push(on_a);
    }
    let config = format!(
        "{}[outbound]\nendpoint_backoff = \"300ms\"\n[[upstream]]\nname = \"mirrored.test\"\nurls = [\"{}\", \"{}\"]\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n",
        edge_head(),
        a.url(),
        b.url()
    );
    let edge = Edge::start(&config);
    let client = reqwest::Client::new();
    let up_metric = |reg: &Registry2| {
        format!(
            "sparkcr_edge_upstream_endpoint_up{{endpoint=\"{}\",upstream=\"mirrored.test\"}}",
            reg.url()
        )
    };

    let p = pull(&client, &route(&edge, "mirrored.test", "team/one"), "v1").await;
    assert_eq!(p[0].manifest_digest, pushed[0].manifest_digest);
    assert!(wait_count(|| a.count_requests("GET", "/v2/team/one/blobs/"), 2).await >= 2);
    assert_eq!(
        b.count_requests("GET", "/v2/team/one/"),
        0,
        "b unused while a is up"
    );

    a.stop();
    let t = Instant::now();
    let p = pull(&client, &route(&edge, "mirrored.test", "team/two"), "v1").await;
    assert_eq!(p[0].manifest_digest, pushed[1].manifest_digest);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "failed over within one request timeout: {:?}",
        t.elapsed()
    );
    assert!(wait_count(|| b.count_requests("GET", "/v2/team/two/blobs/"), 2).await >= 2);
    let metrics = edge.metrics_text().await;
    assert_eq!(metric(&metrics, &up_metric(&a)), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, &up_metric(&b)), 1.0, "{metrics}");
    assert!(
        edge.log_lines_with("upstream endpoint is down") >= 1,
        "the log says which endpoint is down"
    );
    let readyz = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(
        readyz.status(),
        200,
        "a down endpoint does not make the edge unready"
    );
    let readyz = readyz.text().await.expect("readyz text");
    assert!(
        readyz.contains(&format!(
            "upstream mirrored.test: endpoint {} is down",
            a.url()
        )),
        "{readyz}"
    );

    a.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&edge.metrics_text().await, &up_metric(&a)) != 1.0 {
        assert!(Instant::now() < deadline, "a was not probed back into use");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readyz = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(readyz.text().await.expect("readyz text"), "ready\n");
    let p = pull(&client, &route(&edge, "mirrored.test", "team/three"), "v1").await;
    assert_eq!(p[0].manifest_digest, pushed[2].manifest_digest);
    assert!(wait_count(|| a.count_requests("GET", "/v2/team/three/blobs/"), 2).await >= 2);
    assert_eq!(
        b.count_requests("GET", "/v2/team/three/"),
        0,
        "a is used again"
    );
}

/// `[[upstream.endpoint]]` settings of its own: the first endpoint (`url`) is a host only
/// squid resolves, through squid; the second is another registry:2 reached directly
/// (`proxy = "none"` beats a dead `[outbound] proxy`) with HTTP Basic credentials only it
/// gets. With the first stopped, pulls go to the second with its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_tables_have_their_own_proxy_and_credentials() {
    let mut a = Registry2::start();
    let b = Registry2::start_with(Some(("puller", "s3cret")));
    let squid = ProxyProcess::squid();
    for (seed, repo) in [(11, "team/one"), (12, "team/two")] {
        let on_a = seed_image(&a, repo, seed).await;
        let on_b = seed_image(&b, repo, seed).await;
        assert_eq!(on_a.manifest_digest, on_b.manifest_digest);
    }
    let config = format!(
        "{}[outbound]\nproxy = \"http://127.0.0.1:9\"\nendpoint_backoff = \"1h\"\n\
         [[upstream]]\nname = \"split.test\"\nurl = \"http://{PROXY_ONLY_HOST}:{}\"\nproxy = \"{}\"\nconnect_timeout = \"2s\"\n\
         [[upstream.endpoint]]\nurl = \"{}\"\nproxy = \"none\"\nusername = \"puller\"\npassword = \"s3cret\"\n",
        edge_head(),
        a.port,
        squid.url("http"),
        b.url()
    );
    let edge = Edge::start(&config);
    let client = reqwest::Client::new();
    pull(&client, &route(&edge, "split.test", "team/one"), "v1").await;
    assert!(
        wait_count(|| squid.log_lines_with("/v2/team/one/"), 3).await >= 3,
        "{}",
        squid.log_text()
    );
    assert_eq!(b.count_requests("GET", "/v2/team/one/"), 0);

    a.stop();
    pull(&client, &route(&edge, "split.test", "team/two"), "v1").await;
    let on_b = b.wait_requests("GET", "/v2/team/two/blobs/", 2).await;
    assert!(on_b >= 2, "{}", b.log_text());
    // b requires HTTP Basic: the pull working at all shows its own credentials were sent.
    let b_via_squid = format!("127.0.0.1:{}/", b.port);
    assert_eq!(
        squid.log_lines_with(&b_via_squid),
        0,
        "{}",
        squid.log_text()
    );
}
