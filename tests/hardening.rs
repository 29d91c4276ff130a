//! Hardening end to end, through the real binary: the connection cap
//! (`server.max_connections`), slow headers and idle connections (`header_read_timeout`,
//! `idle_timeout`, HTTP/1.1 and h2), oversized heads and request targets, paths that try to
//! escape or smuggle, and a bounded storm of malformed requests and truncated TLS
//! handshakes after which the edge must still answer and pull correctly, without a panic.
//! Loopback only; every loop is bounded in count and time.

mod common;
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn config(server_extra: &str, upstreams: &str) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n{server_extra}\n[storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n{upstreams}"
    )
}

fn upstream(reg: &Registry2) -> String {
    format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n",
        reg.url()
    )
}

/// Reads until EOF or `limit`; returns (bytes, whether the server closed).
fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true), // reset counts as closed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_the_cap_frees_up() {
    let edge = Edge::start(&config("max_connections = 4", ""));
    let addr = edge.http[0];
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(addr).expect("connect");
    let (answer, closed) = read_until_close(&mut fifth, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    assert!(closed, "closed at once");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = raw_request(
            addr,
            b"GET /v2/ HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n",
        );
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = edge.metrics_text().await;
    assert!(
        metric(
            &metrics,
            "sparkcr_edge_connections_rejected_total{reason=\"limit\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    let edge = Edge::start(&config(
        "header_read_timeout = \"1s\"\nidle_timeout = \"1s\"",
        "",
    ));
    let addr = edge.http[0];
    // Slowloris: headers never finish.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: edge.test\r\nX-Slow: ")
        .expect("write");
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(8));
    assert!(closed, "a request whose headers never end is cut off");
    assert!(started.elapsed() < Duration::from_secs(6));

    // A connection that never sends a byte: closed after header_read_timeout (1 s), not
    // kept until some longer timeout.
    let quiet = Edge::start(&config(
        "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"",
        "",
    ));
    let started = Instant::now();
    let mut s = TcpStream::connect(quiet.http[0]).expect("connect");
    let (answer, closed) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(
        closed && answer.is_empty(),
        "a silent connection is closed without an answer"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, expected header_read_timeout (1 s)"
    );
    assert!(quiet
        .metrics_text()
        .await
        .contains("sparkcr_edge_connections_rejected_total{reason=\"silent\"} 1"));

    // HTTP/1.1 keep-alive: one request, then silence.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        .expect("write");
    let started = Instant::now();
    let (answer, closed) = read_until_close(&mut s, Duration::from_secs(8));
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(closed, "an idle keep-alive connection is closed");
    assert!(started.elapsed() < Duration::from_secs(6));

    // h2: a connection with no stream open is closed (GOAWAY) after idle_timeout, even
    // though h2 keep-alive pings would otherwise keep it busy.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/v2/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("h2 request");
    assert_eq!(r.status(), 200);
    drop(r);
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(
        ended.is_ok(),
        "the idle h2 connection was closed by the edge"
    );
}

#[test]
fn oversized_heads_targets_and_bad_names_are_refused() {
    // A default upstream nobody listens on: nothing here may reach it.
    let edge = Edge::start(&config(
        "max_header_size = \"16KiB\"",
        "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
    ));
    let addr = edge.http[0];
    let send = |req: String| raw_request(addr, req.as_bytes());
    let big = "x".repeat(20 << 10);
    let a = send(format!(
        "GET /v2/ HTTP/1.1\r\nHost: edge.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 431"), "{a}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = send(format!(
        "GET /v2/ HTTP/1.1\r\nHost: edge.test\r\n{many}Connection: close\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 431"), "{a}");
    let long_path = format!("/v2/{}/manifests/t", "a/".repeat(5000));
    let a = send(format!(
        "GET {long_path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 414"), "{a}");
    let d = "ab".repeat(32);
    let cases: Vec<(String, &str, &str)> = vec![
        ("/v2/a/%2e%2e/b/manifests/t".into(), "400", "NAME_INVALID"),
        ("/v2/%2e%2e/etc/blobs/x".into(), "400", "NAME_INVALID"),
        ("/v2/a%2fb/manifests/t".into(), "400", "NAME_INVALID"),
        ("/v2/a%5cb/manifests/t".into(), "400", "NAME_INVALID"),
        ("/v2/a/b%00/manifests/t".into(), "400", "NAME_INVALID"),
        ("/v2/.hidden/manifests/t".into(), "400", "NAME_INVALID"),
        (
            format!("/v2/{}/manifests/t", "a".repeat(256)),
            "400",
            "NAME_INVALID",
        ),
        (
            format!("/v2/a/manifests/{}", "t".repeat(129)),
            "404",
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/a/manifests/..".into(), "400", "NAME_INVALID"),
        (format!("/v2/a/blobs/sha256:{d}0"), "400", "DIGEST_INVALID"),
        (
            format!("/v2/a/blobs/sha256:{}", d.to_uppercase()),
            "400",
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/a/blobs/sha256:../../{}", &d[6..]),
            "400",
            "NAME_INVALID",
        ),
        ("/v2/a/blobs/sha256:".into(), "400", "DIGEST_INVALID"),
    ];
    for (path, status, code) in cases {
        let a = send(format!(
            "GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n"
        ));
        assert!(a.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {a}");
        assert!(a.contains(&format!("\"{code}\"")), "{path}: {a}");
    }
    // The store directory holds only what the store made.
    assert!(!edge.dir.path().join("etc").exists());
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One malformed (or merely odd) request, as raw bytes.
fn malformed(rng: &mut Rng, digest: &str) -> Vec<u8> {
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW",
        "G\x00T", "", "GET GET", "get",
    ];
    let d = digest;
    let long = "a".repeat(300);
    let paths: Vec<String> = vec![
        "/v2/".into(),
        "/v2".into(),
        "/token?service=sparkcr-edge&scope=repository:x:pull".into(),
        "/v2/_catalog?n=-1&last=%00".into(),
        format!("/v2/busybox/blobs/{d}"),
        format!("/v2/busybox/manifests/{d}"),
        "/v2/busybox/manifests/v1".into(),
        "/v2/busybox/tags/list?n=999999999999999999999".into(),
        "/v2/../../../../etc/passwd".into(),
        "/v2/a/%2e%2e/%2e%2e/blobs/x".into(),
        "/v2/a%2F..%2Fb/manifests/t".into(),
        format!("/v2/{long}/manifests/t"),
        "/v2/a/blobs/sha256:zz".into(),
        "/v2/a/blobs/sha512:ab".into(),
        "/v2/a/manifests/".into(),
        "/v2/a//b/manifests/t".into(),
        "/v2/docker.io/docker.io/docker.io/x/manifests/t".into(),
        "/ghcr.io/v2/x/manifests/t".into(),
        "/evil.example:99999/v2/x/manifests/t".into(),
        "*".into(),
        "http://evil.example/v2/".into(),
        "//v2//".into(),
        "/v2/\u{202e}/manifests/t".into(),
        "/%ff%fe/v2/".into(),
        "".into(),
    ];
    let headers = [
        "Host: edge.test",
        "Host: ",
        "Host: docker.edge.test:99999999",
        "Host: a.b.c.d.e.f.g.h.edge.test",
        "Range: bytes=0-0",
        "Range: bytes=-0",
        "Range: bytes=99999999999999999999-",
        "Range: bytes=5-1, 0-",
        "Range: lines=1-2",
        "Accept: */*;q=nan",
        "Authorization: Basic !!!!",
        "Authorization: Basic Og==",
        "Authorization: Bearer v1.AAAA.BBBB",
        "Authorization: Bearer ",
        "Authorization: Digest x",
        "Content-Length: 5",
        "Content-Length: -1",
        "Content-Length: 99999999999999999999",
        "Content-Length: 3\r\nContent-Length: 4",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Expect: 100-continue",
        "Connection: upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        "X-\u{0}: y",
        ": empty-name",
        "No-Colon-Here",
        " Leading: space",
    ];
    let mut out = Vec::new();
    match rng.below(10) {
        // Pure noise.
        0 => {
            let n = 1 + rng.below(2000);
            return rng.bytes(n);
        }
        // An h2 preface followed by noise.
        1 => {
            out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            let n = rng.below(200);
            out.extend(rng.bytes(n));
            return out;
        }
        _ => {}
    }
    let method = rng.pick(&methods);
    let path = &paths[rng.below(paths.len())];
    let version = rng.pick(&[
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/9.9",
        "",
        "HTTP/1.1 extra",
    ]);
    out.extend_from_slice(format!("{method} {path} {version}\r\n").as_bytes());
    for _ in 0..rng.below(6) {
        out.extend_from_slice(rng.pick(&headers).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if rng.below(4) == 0 {
        let n = rng.below(64);
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n");
    if rng.below(8) != 0 {
        out.extend_from_slice(b"\r\n");
    }
    let body_len = rng.below(300);
    out.extend(rng.bytes(body_len));
    if rng.below(6) == 0 {
        // Truncated mid-request.
        let cut = rng.below(out.len().max(1));
        out.truncate(cut);
    }
    out
}

/// A TLS ClientHello, cut short or corrupted.
fn truncated_client_hello(rng: &mut Rng) -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let n = 32 + rng.below(300);
    hello.extend(rng.bytes(n));
    let cut = rng.below(hello.len()) + 1;
    hello.truncate(cut);
    if rng.below(3) == 0 {
        let i = rng.below(hello.len());
        hello[i] ^= 0xff;
    }
    hello
}

/// Sends `bytes`, half-closes, and reads whatever comes back for at most `limit`; returns
/// the status of the first response, if one came.
async fn fire(addr: SocketAddr, bytes: Vec<u8>, limit: Duration) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await
    else {
        return None;
    };
    let mut head = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 8192];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
            if head.len() < 16 {
                head.extend_from_slice(&sink[..n.min(16)]);
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_malformed_requests_leaves_the_edge_serving() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "library/busybox",
        Some("v1"),
        Format::Oci,
        5,
        "amd64",
        &[6000],
    )
    .await;
    let ca = TestCa::new();
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.write_leaf(certs.path(), &["localhost"]);
    let mut edge = Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nhostname = \"edge.test\"\nheader_read_timeout = \"2s\"\nidle_timeout = \"2s\"\n[storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n{}",
        cert.display(),
        key.display(),
        upstream(&reg)
    ));
    let (http, https) = (edge.http[0], edge.https[0]);
    let digest = image.blobs[0].0.clone();
    let started = Instant::now();
    const REQUESTS: usize = 6000;
    const WORKERS: usize = 16;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            for _ in 0..REQUESTS / WORKERS {
                let (addr, bytes) = if rng.below(8) == 0 {
                    (https, truncated_client_hello(&mut rng))
                } else if rng.below(20) == 0 {
                    // Plain HTTP to the TLS port.
                    (https, malformed(&mut rng, &digest))
                } else {
                    (http, malformed(&mut rng, &digest))
                };
                if let Some(status) = fire(addr, bytes, Duration::from_secs(3)).await {
                    *statuses.entry(status).or_default() += 1;
                }
            }
            statuses
        }));
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        for (status, n) in t.await.expect("storm worker") {
            *statuses.entry(status).or_default() += n;
        }
    }
    let answered: usize = statuses.values().sum();
    assert!(
        answered > REQUESTS / 2,
        "only {answered} answers: {statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| *s < 500 || *s == 503),
        "server errors in the storm: {statuses:?}"
    );
    let storm = started.elapsed();
    assert!(storm < Duration::from_secs(240), "storm took {storm:?}");

    // Still serving: /v2/ over plain and TLS, and a byte-exact pull.
    let client = reqwest::Client::new();
    let r = client.get(edge.url("/v2/")).send().await.expect("ping");
    assert_eq!(r.status(), 200);
    let mut tls = tls_connect(https, &ca.der(), b"h2").await;
    assert_eq!(tls.get("/v2/").await.0, 200);
    let route = Route {
        name: "after the storm",
        template: format!("http://{http}/v2/busybox/{{rest}}"),
        host: None,
    };
    let pulled = pull(&client, &route, "v1").await;
    assert_eq!(pulled[0].manifest_digest, image.manifest_digest);
    let log = edge.log_text();
    assert!(!log.contains("panicked"), "a panic in the edge's log");
    assert!(
        edge.child_alive(),
        "the edge is still running after {REQUESTS} malformed requests"
    );
    eprintln!("storm of {REQUESTS} malformed requests took {storm:?}; statuses {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let edge = Edge::start(&config("", ""));
    let addr = edge.http[0];
    for i in 0..40 {
        let request =
            format!("SPARK{i} /v2/ HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
        let answer = raw_request(addr, request.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 "),
            "no answer to SPARK{i}: {answer}"
        );
    }
    let answer = raw_request(
        addr,
        b"GET /v2/ HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = edge.metrics_text().await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sparkcr_edge_http_requests_total{"))
        .collect();
    assert!(
        !metrics.contains("SPARK"),
        "a made-up method became a label value: {series:?}"
    );
    let other: f64 = series
        .iter()
        .filter(|l| l.contains("method=\"other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 40.0, "{series:?}");
    assert!(
        series.len() <= 4,
        "one series per route, method and status: {series:?}"
    );
}

/// #25 item 4: one address holding every connection slot with idle keep-alives must not
/// starve the others. 127.0.0.2 opens `max_connections` (4096) keep-alive connections and
/// leaves them idle after one request each; 16 clients from 16 other loopback addresses
/// then each pull a blob, byte-exact, while the hog still holds nearly all its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_every_slot_does_not_starve_the_others() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SLOTS: usize = 4096;
    let reg = Registry2::start();
    let blob = pseudo_random(44, 300_000);
    let digest = reg.push_blob("team/app", &blob).await;
    let edge = Edge::start(&config(
        &format!(
            "max_connections = {SLOTS}\nidle_timeout = \"10m\"\nheader_read_timeout = \"60s\""
        ),
        &upstream(&reg),
    ));
    let addr = edge.http[0];
    // The hog: SLOTS connections from 127.0.0.2, each answered once, then idle.
    let hog_ip: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let mut hog = Vec::with_capacity(SLOTS);
    let request = b"GET /v2/ HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    for batch in 0..SLOTS / 256 {
        let opened: Vec<_> = (0..256)
            .map(|_| async move {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.bind((hog_ip, 0).into()).expect("bind 127.0.0.2");
                let mut s = socket.connect(addr).await.expect("connect");
                s.write_all(request).await.expect("request");
                let mut buf = [0u8; 1024];
                let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                    .await
                    .expect("an answer")
                    .expect("read");
                assert!(
                    buf[..n].starts_with(b"HTTP/1.1 200"),
                    "batch {batch}: {}",
                    String::from_utf8_lossy(&buf[..n])
                );
                s
            })
            .collect();
        hog.extend(futures_util::future::join_all(opened).await);
    }
    assert_eq!(hog.len(), SLOTS);
    // Full now: one more from the hog's own address is refused.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((hog_ip, 0).into()).expect("bind");
    let mut more = socket.connect(addr).await.expect("connect");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), more.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // 16 others, each from its own address, pull the blob. Each keeps its client (and so
    // its keep-alive connection) until all have pulled: a connection closed early would
    // free a slot and let a later newcomer in without taking one from the hog.
    let pulls: Vec<_> = (10..26u8)
        .map(|last| {
            let url = format!("http://{addr}/v2/team/app/blobs/{digest}");
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, last]))
                    .build()
                    .expect("client");
                let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                let body = r.bytes().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((status, body, client))
            })
        })
        .collect();
    let mut clients = Vec::new();
    for (i, p) in pulls.into_iter().enumerate() {
        let (status, body, client) = p
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(status, 200, "client {i}");
        assert!(body[..] == blob[..], "client {i}: byte-exact");
        clients.push(client);
    }
    // Each newcomer took one idle slot of the hog, no more.
    let metrics = edge.metrics_text().await;
    let room = metric(
        &metrics,
        "sparkcr_edge_connections_rejected_total{reason=\"room\"}",
    );
    assert!((16.0..=20.0).contains(&room), "{room}");
    let mut closed = 0;
    for s in &hog {
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await
        {
            closed += 1;
        }
    }
    assert!(closed <= 20, "{closed} of the hog's connections closed");
    drop(clients);
}
