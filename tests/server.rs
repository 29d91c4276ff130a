//! The daemon as a subprocess: `/v2/` over HTTP/1.1 and h2 (plain and TLS), certificate
//! reload on SIGHUP without dropping open connections, OCI error bodies, `/metrics`, and
//! graceful exit on SIGTERM.

mod common;
use common::*;
use std::time::Duration;

fn base_config() -> String {
    "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n[storage]\npath = \"{dir}/data\"\n".to_string()
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nhostname = \"edge.test\"\n[storage]\npath = \"{{dir}}/data\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_over_plain_http1_and_h2c() {
    let edge = Edge::start(&base_config());
    for client in [
        reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("client"),
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client"),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = client
                .request(method.clone(), edge.url("/v2/"))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["docker-distribution-api-version"],
                "registry/2.0"
            );
            let body = r.text().await.expect("body");
            assert_eq!(
                body,
                if method == reqwest::Method::GET {
                    "{}"
                } else {
                    ""
                }
            );
        }
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = h2.get(edge.url("/v2/")).send().await.expect("request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_h2_and_http11_with_alpn() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().expect("tempdir");
    let (c, k) = ca.write_leaf(certs.path(), &["localhost", "127.0.0.1"]);
    let edge = Edge::start(&tls_config(&c, &k));
    assert_eq!(edge.https.len(), 1, "one HTTPS listener");
    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let mut conn = tls_connect(edge.https[0], &ca.der(), alpn).await;
        assert_eq!(conn.alpn.as_deref(), Some(alpn));
        let (status, v, body) = conn.get("/v2/").await;
        assert_eq!((status, v, &body[..]), (200, version, &b"{}"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_cert_and_keeps_open_connections() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().expect("tempdir");
    let (c, k) = ca.write_leaf(certs.path(), &["localhost"]);
    let edge = Edge::start(&tls_config(&c, &k));
    let addr = edge.https[0];

    let mut old_h1 = tls_connect(addr, &ca.der(), b"http/1.1").await;
    let mut old_h2 = tls_connect(addr, &ca.der(), b"h2").await;
    assert_eq!(old_h1.get("/v2/").await.0, 200);
    let first_cert = old_h1.peer_cert.clone();

    ca.write_leaf(certs.path(), &["localhost"]);
    edge.signal(libc::SIGHUP);
    edge.wait_for_log("certificate and key reloaded").await;

    let fresh = tls_connect(addr, &ca.der(), b"http/1.1").await;
    assert_ne!(
        fresh.peer_cert, first_cert,
        "new connections get the new certificate"
    );
    // Connections opened before the reload keep working.
    assert_eq!(old_h1.get("/v2/").await.0, 200);
    assert_eq!(old_h2.get("/v2/").await.0, 200);

    // A broken certificate is refused and the previous one stays in service.
    std::fs::write(&c, "not a certificate").expect("write");
    edge.signal(libc::SIGHUP);
    edge.wait_for_log("new certificate refused").await;
    let after = tls_connect(addr, &ca.der(), b"h2").await;
    assert_eq!(after.peer_cert, fresh.peer_cert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_errors_have_the_right_code_and_status() {
    let edge = Edge::start(&base_config());
    let client = reqwest::Client::new();
    let digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(reqwest::Method, String, u16, &str)> = vec![
        (
            reqwest::Method::GET,
            "/v2/nothing/here".into(),
            404,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::GET,
            "/v2/Upper/Case/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/a%2Fb/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/library/nginx/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/library/nginx/manifests/md5:abc".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            "/v2/evil.example/x/manifests/latest".into(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            reqwest::Method::PUT,
            "/v2/library/nginx/manifests/latest".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::POST,
            "/v2/library/nginx/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::PATCH,
            "/v2/library/nginx/blobs/uploads/x".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/library/nginx/blobs/{digest}"),
            405,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in cases {
        let r = client
            .request(method.clone(), edge.url(&path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error JSON");
        assert_eq!(v["errors"][0]["code"], code, "{method} {path}: {v}");
        assert!(v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn dot_dot_paths_are_refused_as_sent() {
    let edge = Edge::start(&base_config());
    for path in [
        "/v2/a/../etc/manifests/latest",
        "/v2/../../etc/passwd/blobs/x",
        "/v2/a/./b/manifests/t",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = raw_request(edge.http[0], req.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"NAME_INVALID\""), "{path}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_requests() {
    let edge = Edge::start(&base_config());
    let client = reqwest::Client::new();
    for _ in 0..7 {
        assert_eq!(
            client
                .get(edge.url("/v2/"))
                .send()
                .await
                .expect("ping")
                .status(),
            200
        );
    }
    assert_eq!(
        client
            .get(edge.url("/v2/x/blobs/sha256:1"))
            .send()
            .await
            .expect("bad")
            .status(),
        400
    );
    assert_eq!(
        client
            .get(edge.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(edge.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let text = edge.metrics_text().await;
    let samples = parse_prometheus(&text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|(_, _, v)| *v)
    };
    let ping = [("route", "ping"), ("method", "GET"), ("status", "200")];
    assert_eq!(get("sparkcr_edge_http_requests_total", &ping), Some(7.0));
    assert_eq!(
        get(
            "sparkcr_edge_http_requests_total",
            &[("route", "error"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "sparkcr_edge_http_request_duration_seconds_count",
            &[("route", "ping")]
        ),
        Some(7.0)
    );
    assert_eq!(
        get(
            "sparkcr_edge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the Prometheus text format: every line is a comment (`# HELP`/`# TYPE`)
/// or `name{label="value",...} number`; anything else fails the test.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n, labels)
            }
            None => (series, vec![]),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        out.push((name.to_string(), labels, value));
    }
    assert!(!out.is_empty(), "no samples");
    out
}

#[test]
fn sigterm_exits_zero() {
    let mut edge = Edge::start(&base_config());
    edge.signal(libc::SIGTERM);
    assert_eq!(
        edge.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log:\n{}",
        edge.log_text()
    );
    // The listener is gone.
    assert!(std::net::TcpStream::connect(edge.http[0]).is_err());
}

/// The daemon speaks systemd's notify protocol (`Type=notify`): READY=1 once listeners and
/// the store are up, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a SIGHUP reload,
/// STOPPING=1 on SIGTERM. The test plays systemd's part on a datagram socket.
#[test]
fn systemd_notifications() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let ca = TestCa::new();
    let (c, k) = ca.write_leaf(dir.path(), &["localhost"]);
    let mut edge = Edge::start_with_env(
        &tls_config(&c, &k),
        &[("NOTIFY_SOCKET", sock_path.to_str().expect("path"))],
    );
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    assert!(ready.contains("READY=1"), "{ready}");
    edge.signal(libc::SIGHUP);
    let reloading = recv();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(recv().contains("READY=1"));
    edge.signal(libc::SIGTERM);
    assert!(recv().contains("STOPPING=1"));
    assert_eq!(edge.wait_exit(Duration::from_secs(10)), Some(0));
}
