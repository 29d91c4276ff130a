//! Faults a real registry will not produce, from a hand-written upstream on 127.0.0.1:
//! a connection reset mid-blob (the edge resumes with Range), wrong bytes for a digest
//! (the client's response is aborted and nothing is stored), 429 and 5xx (cached content
//! is served stale, uncached gets 503), and a stalled body (times out; other clients are
//! not held up).

mod common;
use common::images::pseudo_random;
use common::registry2::sha256_digest;
use common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
enum BlobMode {
    Normal,
    /// The first full GET closes the connection after `n` bytes; Range GETs work.
    ResetAfter(usize),
    /// Sends other bytes of the same length.
    Wrong,
    /// Sends headers and 1 KiB, then nothing.
    Stall,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ManifestMode {
    Ok,
    Status(u16),
}

struct FaultState {
    blobs: HashMap<String, (Vec<u8>, BlobMode)>,
    manifests: HashMap<String, Vec<u8>>, // tag -> bytes
    manifest_mode: ManifestMode,
    requests: Vec<String>,
    resets_done: usize,
}

#[derive(Clone)]
struct FaultUpstream {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<FaultState>>,
}

impl FaultUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(FaultState {
            blobs: HashMap::new(),
            manifests: HashMap::new(),
            manifest_mode: ManifestMode::Ok,
            requests: Vec::new(),
            resets_done: 0,
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        FaultUpstream { addr, state }
    }

    fn add_blob(&self, bytes: Vec<u8>, mode: BlobMode) -> String {
        let d = sha256_digest(&bytes);
        self.state
            .lock()
            .expect("lock")
            .blobs
            .insert(d.clone(), (bytes, mode));
        d
    }

    fn requests(&self, needle: &str) -> Vec<String> {
        self.state
            .lock()
            .expect("lock")
            .requests
            .iter()
            .filter(|r| r.contains(needle))
            .cloned()
            .collect()
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<FaultState>>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.lines();
        let request_line = lines.next().unwrap_or_default().to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        let mut parts = request_line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        state
            .lock()
            .expect("lock")
            .requests
            .push(format!("{method} {path} range={range:?}"));
        let keep = if let Some(d) = path.split("/blobs/").nth(1) {
            blob(&mut sock, &state, d, &method, range.as_deref()).await
        } else if let Some(tag) = path.split("/manifests/").nth(1) {
            manifest(&mut sock, &state, tag, &method).await
        } else {
            respond(
                &mut sock,
                200,
                &[("Content-Type", "application/json".into())],
                b"{}",
                &method,
            )
            .await
        };
        if !keep {
            return;
        }
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    method: &str,
) -> bool {
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if method != "HEAD" {
        bytes.extend_from_slice(body);
    }
    sock.write_all(&bytes).await.is_ok()
}

async fn blob(
    sock: &mut TcpStream,
    state: &Arc<Mutex<FaultState>>,
    digest: &str,
    method: &str,
    range: Option<&str>,
) -> bool {
    let found = state.lock().expect("lock").blobs.get(digest).cloned();
    let Some((bytes, mode)) = found else {
        return respond(
            sock,
            404,
            &[],
            br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#,
            method,
        )
        .await;
    };
    if method == "HEAD" {
        return respond(sock, 200, &[], &bytes, "HEAD").await;
    }
    if let Some(start) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok())
    {
        if mode == BlobMode::Stall {
            tokio::time::sleep(Duration::from_secs(120)).await;
            return false;
        }
        let cr = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
        let head = format!(
            "HTTP/1.1 206 Partial\r\nContent-Length: {}\r\nContent-Range: {cr}\r\n\r\n",
            bytes.len() - start
        );
        let _ = sock.write_all(head.as_bytes()).await;
        return sock.write_all(&bytes[start..]).await.is_ok();
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        bytes.len()
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    match mode {
        BlobMode::Normal => sock.write_all(&bytes).await.is_ok(),
        BlobMode::ResetAfter(n) => {
            let first = {
                let mut s = state.lock().expect("lock");
                s.resets_done += 1;
                s.resets_done == 1
            };
            if first {
                let _ = sock.write_all(&bytes[..n]).await;
                let _ = sock.flush().await;
                false // connection dropped mid-body
            } else {
                sock.write_all(&bytes).await.is_ok()
            }
        }
        BlobMode::Wrong => {
            let mut wrong = bytes.clone();
            let mid = wrong.len() / 2;
            wrong[mid] ^= 0xff;
            sock.write_all(&wrong).await.is_ok()
        }
        BlobMode::Stall => {
            let _ = sock.write_all(&bytes[..1024]).await;
            tokio::time::sleep(Duration::from_secs(120)).await;
            false
        }
    }
}

async fn manifest(
    sock: &mut TcpStream,
    state: &Arc<Mutex<FaultState>>,
    tag: &str,
    method: &str,
) -> bool {
    let (mode, found) = {
        let s = state.lock().expect("lock");
        (s.manifest_mode, s.manifests.get(tag).cloned())
    };
    if let ManifestMode::Status(code) = mode {
        let headers = [("Retry-After", "30".to_string())];
        return respond(
            sock,
            code,
            &headers,
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            method,
        )
        .await;
    }
    match found {
        Some(m) => {
            let headers = [
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".to_string(),
                ),
                ("Docker-Content-Digest", sha256_digest(&m)),
            ];
            respond(sock, 200, &headers, &m, method).await
        }
        None => {
            respond(
                sock,
                404,
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#,
                method,
            )
            .await
        }
    }
}

fn edge_for(up: &FaultUpstream) -> Edge {
    Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{{dir}}/data\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"0\"\n\
         [[upstream]]\nname = \"fault.test\"\nurl = \"http://{}\"\ndefault = true\nconnect_timeout = \"2s\"\nread_timeout = \"2s\"\n",
        up.addr
    ))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_blob_is_resumed_with_range() {
    let up = FaultUpstream::start().await;
    let bytes = pseudo_random(1, 8 << 20);
    let d = up.add_blob(bytes.clone(), BlobMode::ResetAfter(3 << 20));
    let edge = edge_for(&up);
    let body = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("whole body");
    assert_eq!(sha256_digest(&body), d);
    let ranged = up.requests("range=Some(\"bytes=");
    assert_eq!(
        ranged.len(),
        1,
        "one Range request resumed the fill: {:?}",
        up.requests("")
    );
    assert!(
        ranged[0].contains(&format!("bytes={}-", 3 << 20)),
        "{ranged:?}"
    );
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_fill_resumes_total"
        ) >= 1.0
    );
    // Stored: the next GET does not touch the upstream.
    let before = up.requests("/blobs/").len();
    let again = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&again), d);
    assert_eq!(up.requests("/blobs/").len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_abort_the_client_and_store_nothing() {
    let up = FaultUpstream::start().await;
    let d = up.add_blob(pseudo_random(2, 3 << 20), BlobMode::Wrong);
    let edge = edge_for(&up);
    for _ in 0..2 {
        let r = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
            .await
            .expect("get");
        assert_eq!(
            r.status(),
            200,
            "headers went out before the bytes were known to be wrong"
        );
        assert!(
            r.bytes().await.is_err(),
            "the response must not end cleanly on wrong bytes"
        );
    }
    assert_eq!(
        up.requests("/blobs/").len(),
        2,
        "nothing was stored, so the second GET asked again"
    );
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_digest_mismatches_total"
        ) >= 2.0
    );
    let chunks = edge.dir.path().join("data/chunks");
    let files = walk(&chunks);
    assert!(files.is_empty(), "no chunk files left behind: {files:?}");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_5xx_serve_stale() {
    let up = FaultUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    let digest = sha256_digest(&manifest);
    up.state
        .lock()
        .expect("lock")
        .manifests
        .insert("v1".into(), manifest.clone());
    let edge = edge_for(&up);
    let client = reqwest::Client::new();
    let get = |tag: &str| {
        client
            .get(edge.url(&format!("/v2/team/app/manifests/{tag}")))
            .send()
    };
    let r = get("v1").await.expect("get");
    assert_eq!(r.status(), 200);
    for code in [429u16, 500, 502, 503] {
        up.state.lock().expect("lock").manifest_mode = ManifestMode::Status(code);
        let r = get("v1").await.expect("get");
        assert_eq!(r.status(), 200, "stale on {code}");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(&r.bytes().await.expect("body")[..], &manifest[..]);
        let r = get("never-cached").await.expect("get");
        assert_eq!(r.status(), 503, "uncached on {code}");
    }
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_stale_served_total{kind=\"manifest\"}"
        ) >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_times_out_without_holding_up_others() {
    let up = FaultUpstream::start().await;
    let stalled = up.add_blob(pseudo_random(3, 2 << 20), BlobMode::Stall);
    let fine = up.add_blob(pseudo_random(4, 2 << 20), BlobMode::Normal);
    let edge = edge_for(&up);
    let url = edge.url(&format!("/v2/team/app/blobs/{stalled}"));
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        match reqwest::get(&url).await {
            Ok(r) => r.bytes().await.is_err(),
            Err(_) => true,
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let body = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{fine}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&body), fine);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "another blob is not held up by the stall"
    );
    assert!(
        slow.await.expect("task"),
        "the stalled blob's client gets an error, not a clean end"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "gave up in bounded time"
    );
    edge.wait_for_log("blob fill failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_cold_miss() {
    let up = FaultUpstream::start().await;
    let bytes = pseudo_random(5, 40 << 20);
    let d = up.add_blob(bytes.clone(), BlobMode::Normal);
    let edge = edge_for(&up);
    let client = reqwest::Client::new();
    let url = edge.url(&format!("/v2/team/app/blobs/{d}"));
    // Far beyond the fill: answered by its own ranged request, without waiting for the fill.
    let far = 36 << 20;
    let r = client
        .get(&url)
        .header("range", format!("bytes={far}-"))
        .send()
        .await
        .expect("far range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {far}-{}/{}", bytes.len() - 1, bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[far..]);
    // Near the start: served from the fill as it arrives.
    let r = client
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("near range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[100..200]);
    // An impossible range is 416 with the size.
    let r = client
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len() + 5))
        .send()
        .await
        .expect("bad range");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    // The single fill completed and cached the blob whole.
    let whole = client
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&whole), d);
    assert_eq!(
        up.requests("range=None")
            .iter()
            .filter(|r| r.contains("/blobs/"))
            .count(),
        1,
        "one full fetch: {:?}",
        up.requests("")
    );
}
