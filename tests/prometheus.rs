//! The shipped Grafana dashboard against a real Prometheus (Debian's `prometheus`, its
//! own config, port and data directory on loopback, scraping every second): after
//! traffic that exercises every panel (misses, hits, a joined fill, an upstream 503 and
//! the stale answer it causes, a certificate reload, a refused credential), every query
//! in `grafana/sparkcr-edge.json` returns data through Prometheus's HTTP API; the shipped
//! alert rules (`prometheus/sparkcr-edge-alerts.yml`) load, evaluate without errors, and
//! one of them fires on a corrupt upstream blob.

mod common;

use common::edge_config::{fault_upstream, EdgeConfig};
use common::fake_upstream::FakeUpstream;
use common::images::pseudo_random;
use common::registry2::{free_port, sha256_digest};
use common::{Edge, TestCa};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: sparkcr-edge\n    static_configs:\n      - targets: ['{target}']\n",
                rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("prometheus/sparkcr-edge-alerts.yml")
                    .display()
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<what>` as JSON.
    async fn api(&self, client: &reqwest::Client, what: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{what}", self.port);
        let r = client.get(url).send().await.expect("prometheus API");
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("prometheus JSON")
    }

    async fn query(&self, client: &reqwest::Client, q: &str) -> serde_json::Value {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={encoded}",
            self.port
        );
        let r = client.get(url).send().await.expect("prometheus query");
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("prometheus JSON")
    }
}

/// Every `expr` in the dashboard, with Grafana's variables filled in as Grafana would.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/sparkcr-edge.json"),
    )
    .expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$instance", ".*");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), q));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    common::install_crypto();
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    up.add_manifest("v1", &manifest);
    let small = up.add_blob(pseudo_random(1, 200_000));
    let corrupt = up.add_blob_with(
        pseudo_random(3, 300_000),
        common::fake_upstream::Faults::none().corrupt(1000..1010),
    );
    let big = up.add_blob(pseudo_random(2, 8 << 20));
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.write_leaf(dir.path(), &["edge.test", "127.0.0.1"]);
    let edge = Edge::start_in(
        dir,
        &EdgeConfig::new("{dir}/data")
            .tls(&["127.0.0.1:0"], &cert, &key)
            .chunk_size("1MiB")
            .tag_ttl("0")
            .upstream(fault_upstream(&up).read_timeout("5s"))
            .to_toml(),
        &[("SPARKCR_EDGE_TEST_HOLD_COMMIT_MS", "300")],
    );
    let prom = Prometheus::start(&edge.http[0].to_string());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // Traffic, twice with a pause, so rate() has two scrapes to compare.
    for round in 0..2 {
        let get = |path: String| client.get(edge.url(&path)).send();
        // Two clients of one fill: one leads, one joins.
        let (a, b) = tokio::join!(
            get(format!("/v2/team/app/blobs/{big}")),
            get(format!("/v2/team/app/blobs/{big}"))
        );
        for r in [a, b] {
            let r = r.expect("blob");
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.expect("body").len(), 8 << 20);
        }
        for _ in 0..2 {
            let r = get(format!("/v2/team/app/blobs/{small}"))
                .await
                .expect("blob");
            assert_eq!(r.bytes().await.expect("body").len(), 200_000);
        }
        up.set_manifest_status(None);
        let r = get("/v2/team/app/manifests/v1".into())
            .await
            .expect("manifest");
        assert_eq!(r.status(), 200);
        // The upstream fails: an upstream error, and the cached manifest served stale.
        up.set_manifest_status(Some(503));
        let r = get("/v2/team/app/manifests/v1".into())
            .await
            .expect("manifest");
        assert_eq!(r.status(), 200, "stale");
        assert_eq!(
            r.headers()["docker-content-digest"],
            sha256_digest(&manifest).as_str()
        );
        let r = client
            .get(edge.url("/v2/"))
            .basic_auth("x", Some("not-a-token"))
            .send()
            .await
            .expect("bad credentials");
        assert_eq!(r.status(), 401);
        edge.signal(libc::SIGHUP);
        if round == 0 {
            edge.wait_for_log("certificate and key reloaded").await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    // Every query answers with at least one series once Prometheus has scraped it all.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (title, q) in &queries {
            let v = prom.query(&client, q).await;
            let ok = v["status"] == "success"
                && v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
            if !ok {
                empty.push(format!("{title}: {q} -> {v}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 30 s:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The numbers are the edge's: the store size Prometheus has is the edge's gauge.
    let v = prom.query(&client, "sparkcr_edge_store_bytes").await;
    let scraped: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a value");
    assert_eq!(scraped, edge.metric("sparkcr_edge_store_bytes").await);
    assert!(scraped >= (8 << 20) as f64);
    let expiry = edge
        .metric("sparkcr_edge_tls_cert_expiry_timestamp_seconds")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    assert!(expiry > now, "the served certificate's expiry: {expiry}");

    // The shipped alert rules: all loaded, none failing to evaluate.
    let rules = prom.api(&client, "rules").await;
    let rules: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert!(rules.len() >= 10, "{rules:?}");
    // A corrupt blob from the upstream: the digest-mismatch alert fires.
    let r = client
        .get(edge.url(&format!("/v2/team/app/blobs/{corrupt}")))
        .send()
        .await
        .expect("corrupt blob");
    let _ = r.bytes().await; // cut off or refused: never the corrupt bytes as complete
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prom.api(&client, "alerts").await;
        let firing = alerts["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["labels"]["alertname"] == "SparkcrEdgeDigestMismatch" && a["state"] == "firing"
            })
        });
        if firing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SparkcrEdgeDigestMismatch did not fire in 30 s: {alerts}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rules = prom.api(&client, "rules").await;
    for g in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in g["rules"].as_array().expect("rules") {
            assert_eq!(
                rule["health"], "ok",
                "rule {} fails to evaluate: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
}
