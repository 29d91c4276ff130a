//! The operator's status page: `/status` in headless Chromium (Debian's chromium and
//! chromium-driver through python3-selenium) after pulls and during a running fill, its
//! numbers checked against `/status.json` and `/metrics`, a screenshot saved under
//! `target/`; and the page refused outside `auth.admin_cidrs` without an `admin` token.

mod common;

use common::edge_config::{fault_upstream, EdgeConfig, Upstream};
use common::fake_upstream::{FakeUpstream, Faults, LimitHeaders};
use common::images::pseudo_random;
use common::Edge;
use sha2::{Digest as _, Sha256};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ADMIN_SECRET: &str = "spk_status_admin_secret_for_tests_only";
const PULL_SECRET: &str = "spk_status_pull_secret_for_tests_only";

fn hash(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// An edge on 127.0.0.1 and 127.0.0.2 whose admin network is 127.0.0.1 only.
fn edge(up: &FakeUpstream) -> Edge {
    EdgeConfig::new("{dir}/data")
        .listen(&["127.0.0.1:0", "127.0.0.2:0"])
        .max_size("1GiB")
        .chunk_size("1MiB")
        .tag_ttl("0")
        .admin_cidrs(&["127.0.0.1/32"])
        .token("ops", &hash(ADMIN_SECRET), &["admin"])
        .token("ci", &hash(PULL_SECRET), &["pull:public"])
        .upstream(fault_upstream(up).read_timeout("120s"))
        .start()
}

async fn get_bytes(url: &str) -> Vec<u8> {
    let r = reqwest::get(url).await.expect("request");
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.expect("body").to_vec()
}

/// `path` on the edge's 127.0.0.1 listener (the admin network).
fn admin_url(edge: &Edge, path: &str) -> String {
    let addr = edge
        .http
        .iter()
        .find(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
        .expect("listener on 127.0.0.1");
    format!("http://{addr}{path}")
}

async fn metrics_text(edge: &Edge) -> String {
    reqwest::get(admin_url(edge, "/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_matches_json_and_metrics() {
    let up = FakeUpstream::start().await;
    let a = up.add_blob(pseudo_random(1, 300_000));
    let b = up.add_blob(pseudo_random(2, 200_000));
    let stalled = up.add_blob_with(pseudo_random(3, 4 << 20), Faults::none().stall_at(1024));
    let edge = edge(&up);

    // Pulls: misses of `a` and `b`; once both are stored, hits of `a` by two repositories;
    // and one 404.
    for d in [&a, &b] {
        get_bytes(&admin_url(&edge, &format!("/v2/team/app/blobs/{d}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.status_json().await["store"]["blobs"] != 2 {
        assert!(Instant::now() < deadline, "fills not committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get_bytes(&admin_url(&edge, &format!("/v2/team/app/blobs/{a}"))).await;
    get_bytes(&admin_url(&edge, &format!("/v2/team/tools/blobs/{a}"))).await;
    let missing = reqwest::get(admin_url(&edge, "/v2/team/app/manifests/nope"))
        .await
        .expect("manifest request");
    assert_eq!(missing.status(), 404);

    // A running fill with one request joined: the upstream sends 1 KiB, then stalls.
    let mut pending = Vec::new();
    for _ in 0..2 {
        let url = admin_url(&edge, &format!("/v2/team/app/blobs/{stalled}"));
        pending.push(tokio::spawn(async move {
            if let Ok(r) = reqwest::get(url).await {
                let _ = r.bytes().await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = edge.status_json().await;
        let fills = s["fills"].as_array().cloned().unwrap_or_default();
        if fills.len() == 1 && fills[0]["received"].as_u64() > Some(0) && fills[0]["joined"] == 1 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no running fill with a join shown: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // /status.json against /metrics and against what was pulled.
    let metrics = metrics_text(&edge).await;
    let m = |series: &str| common::metric(&metrics, series) as u64;
    assert_eq!(status["fills"][0]["digest"], stalled.as_str());
    assert_eq!(status["fills"][0]["size"], 4 << 20);
    assert_eq!(status["fills"][0]["repo"], "team/app");
    assert_eq!(
        status["wan_bytes_saved"].as_u64(),
        Some(m("sparkcr_edge_served_bytes_total{source=\"cache\"}"))
    );
    assert_eq!(
        status["wan_bytes_saved"],
        300_000 * 2,
        "a hit twice: once by route, once by another repo"
    );
    assert_eq!(status["last_hour"]["hits"], 2);
    assert_eq!(
        status["last_hour"]["misses"].as_u64(),
        Some(
            m("sparkcr_edge_cache_misses_total{kind=\"blob\"}")
                + m("sparkcr_edge_cache_misses_total{kind=\"manifest\"}")
        )
    );
    assert_eq!(
        status["store"]["used_bytes"].as_u64(),
        Some(m("sparkcr_edge_store_bytes"))
    );
    assert_eq!(status["store"]["budget_bytes"], 1u64 << 30);
    assert!(status["store"]["disk_free_bytes"].as_u64() > Some(0));
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["name"], "fault.test");
    assert_eq!(upstream["state"], "up");
    assert!(upstream["avg_latency_ms"].as_f64().is_some());
    // The stalled fill holds one blob connection of the default 16.
    assert_eq!(upstream["blob_connections"], 1, "{upstream}");
    assert_eq!(upstream["max_blob_connections"], 16, "{upstream}");
    assert_eq!(
        status["fill_pieces_in_flight"].as_i64(),
        Some(m("sparkcr_edge_fill_pieces_in_flight") as i64)
    );
    assert_eq!(
        status["top_repositories"][0]["repository"],
        "fault.test/team/app"
    );
    assert_eq!(
        status["top_repositories"][0]["bytes"],
        300_000 * 2 + 200_000
    );
    assert_eq!(
        status["top_repositories"][1]["repository"],
        "fault.test/team/tools"
    );
    let errors = status["recent_errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["status"], 404);
    assert_eq!(errors[0]["path"], "/v2/team/app/manifests/nope");
    let html = reqwest::get(admin_url(&edge, "/status"))
        .await
        .expect("status")
        .text()
        .await
        .expect("html");
    for external in ["<script", "stylesheet", " src=", "url(", "href=\"http"] {
        assert!(
            !html.contains(external),
            "the page must stand alone: {external}"
        );
    }
    assert!(!html.contains(ADMIN_SECRET) && !html.contains(&hash(ADMIN_SECRET)[7..]));

    // The page in a real browser.
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let shot = target.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.py"))
        .arg(admin_url(&edge, ""))
        .arg(&shot)
        .arg(&stalled)
        .output()
        .expect(
            "run tests/browser/status_page.py (needs chromium, chromium-driver, python3-selenium)",
        );
    assert!(
        out.status.success(),
        "browser checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    for p in pending {
        p.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_refused_outside_admin_cidrs_without_an_admin_token() {
    let up = FakeUpstream::start().await;
    let edge = edge(&up);
    let other = edge
        .http
        .iter()
        .find(|a| a.ip() == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .copied()
        .expect("listener on 127.0.0.2");
    let from_other = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .no_proxy()
        .build()
        .expect("client");
    for path in ["/status", "/status.json", "/metrics"] {
        let url = format!("http://{other}{path}");
        let r = from_other.get(&url).send().await.expect("request");
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert!(r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic")));
        let body = r.text().await.expect("body");
        assert!(body.contains("admin"), "{body}");
        assert!(!body.contains("store"), "no data leaks: {body}");
        let r = from_other
            .get(&url)
            .basic_auth("x", Some(PULL_SECRET))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 403, "{path} with a pull-only token");
        let r = from_other
            .get(&url)
            .basic_auth("x", Some(ADMIN_SECRET))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path} with the admin token");
    }
    // The registry API itself answers that network as it answers the admin one.
    let r = from_other
        .get(format!("http://{other}/v2/team/app/manifests/latest"))
        .send()
        .await
        .expect("manifest");
    let local = reqwest::get(admin_url(&edge, "/v2/team/app/manifests/latest"))
        .await
        .expect("manifest");
    assert_eq!(r.status(), local.status());
    assert_eq!(r.status(), 404);
    // And the admin network needs no token.
    let r = reqwest::get(admin_url(&edge, "/status"))
        .await
        .expect("status");
    assert_eq!(r.status(), 200);
    assert!(
        common::metric(
            &metrics_text(&edge).await,
            "sparkcr_edge_auth_denials_total{reason=\"no_credentials\"}"
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_30_days_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut params = rcgen::CertificateParams::new(vec!["edge.test".to_string()]).expect("params");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + (now - Duration::from_secs(86_400));
    params.not_after = epoch + now + Duration::from_secs(10 * 86_400 + 3600);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, cert.pem()).expect("cert");
    std::fs::write(&kp, key.serialize_pem()).expect("key");
    let edge = Edge::start_in(
        dir,
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]\npath = \"{{dir}}/data\"\n[auth]\nadmin_cidrs = [\"127.0.0.1/32\"]\n",
            cp.display(),
            kp.display()
        ),
        &[],
    );
    // The log, at start.
    edge.wait_for_log("certificate expires in 10 days").await;
    // /readyz stays 200 but says so.
    let r = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(text.starts_with("ready\n"), "{text}");
    assert!(
        text.contains("warning: the served TLS certificate expires in 10 days"),
        "{text}"
    );
    // Outside admin_cidrs: the same status, without the details.
    let other = edge
        .http
        .iter()
        .find(|a| a.ip() == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .copied()
        .expect("listener on 127.0.0.2");
    let from_other = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .no_proxy()
        .build()
        .expect("client");
    let r = from_other
        .get(format!("http://{other}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "ready\n");
    // The status page and its JSON.
    let s = edge.status_json().await;
    assert_eq!(s["tls"]["days_left"], 10);
    assert!(
        s["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("expires in 10 days")),
        "{s:#}"
    );
    let html = reqwest::get(edge.url("/status"))
        .await
        .expect("status")
        .text()
        .await
        .expect("html");
    assert!(html.contains("class=\"warn\">the served TLS certificate expires in 10 days"));
}

/// Each endpoint of an upstream with several is listed with its state: one that refuses
/// connections is `down` (and its row says so on the page), the one that answered is `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_listed_with_their_state() {
    let up = FakeUpstream::start().await;
    let blob = up.add_blob(pseudo_random(7, 100_000));
    // A port nothing listens on: connections to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let edge = EdgeConfig::new("{dir}/data")
        .max_size("1GiB")
        .upstream(
            Upstream::with_urls("fault.test", &[format!("http://{dead}"), up.url()])
                .default()
                .connect_timeout("2s"),
        )
        .start();
    get_bytes(&edge.url(&format!("/v2/team/app/blobs/{blob}"))).await;
    let status = edge.status_json().await;
    let endpoints = &status["upstreams"][0]["endpoints"];
    assert_eq!(endpoints[0]["url"], format!("http://{dead}"), "{status}");
    assert_eq!(endpoints[0]["state"], "down", "{status}");
    assert_eq!(endpoints[1]["url"], up.url(), "{status}");
    assert_eq!(endpoints[1]["state"], "up", "{status}");
    let page = String::from_utf8(get_bytes(&edge.url("/status")).await).expect("utf-8 page");
    assert!(
        page.contains(&format!("data-url=\"http://{dead}\" data-state=\"down\"")),
        "the page lists the dead endpoint as down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_answers_only_names_of_the_edge_and_tells_browsers_not_to_sniff() {
    let up = FakeUpstream::start().await;
    let edge = EdgeConfig::new("{dir}/data")
        .hostname("edge.test")
        .admin_cidrs(&["127.0.0.1/32"])
        .upstream(fault_upstream(&up))
        .start();
    let blob = up.add_blob(pseudo_random(9, 50_000));
    let addr = edge.http[0];
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve("rebound.attacker.example", addr)
        .resolve("edge.test", addr)
        .build()
        .expect("client");
    // DNS rebinding: a page on another site whose name now points at the edge.
    for path in ["/status", "/status.json"] {
        let r = client
            .get(format!(
                "http://rebound.attacker.example:{}{path}",
                addr.port()
            ))
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status(),
            404,
            "{path} under a name that is not the edge's"
        );
        let body = r.text().await.expect("body");
        assert!(!body.contains("uptime"), "no status leaks: {body}");
    }
    for host in ["edge.test".to_string(), addr.ip().to_string()] {
        let r = client
            .get(format!("http://{host}:{}/status", addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "/status as {host}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("x-content-type-options"), "nosniff");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script-src"),
            "no script may run on the page: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    // Blobs (whatever type the upstream gives them) and errors are never sniffed either.
    for path in [
        format!("/v2/team/app/blobs/{blob}"),
        "/v2/team/app/manifests/nothing-here".to_string(),
    ] {
        let r = client
            .get(format!("http://edge.test:{}{path}", addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{path}: HTTP {}",
            r.status()
        );
    }
}

/// The pull quota an upstream announces (Docker Hub's `ratelimit-*` headers) is in
/// `/metrics`, `/status.json` and on the page, per upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_pull_quota_is_shown() {
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    up.add_manifest("v1", manifest);
    up.pull_limit(LimitHeaders::Docker, 100, 50);
    let edge = edge(&up);
    let r = reqwest::Client::new()
        .get(admin_url(&edge, "/v2/team/app/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    let metrics = metrics_text(&edge).await;
    let upstream = "fault.test";
    let series = |name: &str| {
        common::metric(
            &metrics,
            &format!("sparkcr_edge_{name}{{upstream=\"{upstream}\"}}"),
        )
    };
    assert_eq!(series("upstream_quota_remaining"), 49.0, "{metrics}");
    assert_eq!(series("upstream_quota_limit"), 100.0);
    assert_eq!(series("upstream_quota_window_seconds"), 21600.0);
    let status = edge.status_json().await;
    let u = &status["upstreams"][0];
    assert_eq!(u["quota_remaining"], 49, "{status}");
    assert_eq!(u["quota_limit"], 100);
    assert_eq!(u["quota_window_seconds"], 21600);
    let page = String::from_utf8(get_bytes(&admin_url(&edge, "/status")).await).expect("utf-8");
    assert!(
        page.contains("class=\"quota\" data-value=\"49\">49 of 100 per 6h 0m"),
        "the page shows the quota: {}",
        page.split("id=\"upstreams\"")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take(800)
            .collect::<String>()
    );
}
