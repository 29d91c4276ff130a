//! Test harness shared by the integration tests: a daemon started as a subprocess on
//! 127.0.0.1 (port 0, addresses read from its log), a throwaway CA made with rcgen, and
//! raw hyper clients over rustls so a test can choose the ALPN protocol and see which
//! certificate a connection got.
#![allow(dead_code)]

pub mod containerd;
pub mod edge_config;
pub mod fake_upstream;
pub mod images;
pub mod proxies;
pub mod pull;
pub mod registry2;
pub mod signing;
pub mod token;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sparkcr-edge");

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sparkcr-edge test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA cert"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf certificate for `names`, as (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    pub fn write_leaf(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let (c, k) = self.leaf(names);
        let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cp, c).expect("write cert");
        std::fs::write(&kp, k).expect("write key");
        (cp, kp)
    }
}

/// A running daemon; killed on drop.
pub struct Edge {
    pub child: Child,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Edge {
    /// Writes `config` (TOML) to a temp dir and starts `sparkcr-edge serve` on it. The
    /// text may use `{dir}` for the temp dir's path.
    pub fn start(config: &str) -> Edge {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config, env)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Edge {
        install_crypto();
        let text = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,sparkcr_edge=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[edge] {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut edge = Edge {
            child,
            http: vec![],
            https: vec![],
            log,
            dir,
        };
        edge.wait_ready();
        edge
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            let text = self.log_text();
            if text.contains("ready to serve") {
                for line in text.lines() {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let (scheme, addr) = rest.trim().split_once("://").expect("scheme");
                        let addr: SocketAddr = addr.trim().parse().expect("listen addr");
                        if scheme == "https" {
                            self.https.push(addr)
                        } else {
                            self.http.push(addr)
                        }
                    }
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in 30 s; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 5 s for the daemon to log `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        for _ in 0..250 {
            if self.log_text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("log never said {needle:?}:\n{}", self.log_text());
    }

    /// Waits up to `timeout` for at least `n` log lines containing `needle`; returns how
    /// many there were (fewer than `n` only on timeout).
    pub async fn wait_for_log_lines(&self, needle: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log_lines_with(needle);
            if seen >= n || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many log lines so far contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The log so far. The daemon writes a line up to a millisecond after logging it (lines
    /// are batched under load), and the line then crosses a pipe: give it a moment.
    pub fn log_text(&self) -> String {
        std::thread::sleep(Duration::from_millis(20));
        self.log.lock().expect("log lock").join("\n")
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits (at most 30 s) until no blob fill is running: a fill commits its blob after the
    /// clients got their last byte, so a test that kills the edge right after a pull must
    /// wait for this to find the blobs stored after a restart.
    pub async fn wait_fills_settled(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.metric("sparkcr_edge_fills_in_flight").await > 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "blob fills still running after 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The HTML status page (`/status`), asked on the first listener.
    pub async fn status_page(&self) -> String {
        reqwest::get(self.url("/status"))
            .await
            .expect("status page")
            .text()
            .await
            .expect("page")
    }

    /// `/status.json`, asked on the 127.0.0.1 listener (an admin address by default).
    pub async fn status_json(&self) -> serde_json::Value {
        let addr = self
            .http
            .iter()
            .find(|a| a.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            .expect("listener on 127.0.0.1");
        let r = reqwest::get(format!("http://{addr}/status.json"))
            .await
            .expect("status.json");
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.expect("status body")).expect("status json")
    }

    /// One series from `/metrics` (0 when absent); see [`metric`].
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics_text().await, series)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http[0], path)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Whether the daemon process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first line of Prometheus `text` that starts with `series` (a name, or
/// a name with its labels); 0 when there is none.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `sparkcr-edge token create`: (secret, the TOML block to paste).
pub fn create_token(name: &str, scopes: &str) -> (String, String) {
    let (code, out, err) = run_cli(
        &["token", "create", "--name", name, "--scopes", scopes],
        &[],
    );
    assert_eq!(code, 0, "token create: {err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("secret line")
        .trim()
        .to_string();
    assert!(secret.starts_with("spk_"), "{out}");
    let block = out
        .split_once("[[auth.token]]")
        .map(|(_, b)| format!("[[auth.token]]{b}"))
        .expect("block");
    assert!(
        !block.contains(&secret),
        "the config block never holds the secret"
    );
    assert!(block.contains("hash = \"sha256:"), "{block}");
    (secret, block)
}

/// Runs the binary with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit records `sparkcr-edge audit --json <source> <filters>` prints (`source`:
/// `--config <file>` or `--file <audit file>`), once there are at least `n` of them or
/// after 5 s (the daemon writes its records within a second).
pub fn wait_audit(source: &[&str], filters: &[&str], n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut args = vec!["audit", "--json"];
        args.extend_from_slice(source);
        args.extend_from_slice(filters);
        let (code, out, err) = run_cli(&args, &[]);
        assert_eq!(code, 0, "audit {filters:?}: {err}");
        let found: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS client connection with a chosen ALPN protocol; remembers the server's leaf cert.
pub struct TlsConn {
    pub sender: ConnSender,
    pub peer_cert: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
}

pub enum ConnSender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

pub async fn tls_connect(addr: SocketAddr, ca: &CertificateDer<'static>, alpn: &[u8]) -> TlsConn {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add CA");
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    let peer_cert = session.peer_certificates().expect("peer certs")[0].clone();
    let negotiated = session.alpn_protocol().map(|p| p.to_vec());
    let io = hyper_util::rt::TokioIo::new(tls);
    let sender = if alpn == b"h2" {
        let (s, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        ConnSender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        ConnSender::H1(s)
    };
    TlsConn {
        sender,
        peer_cert,
        alpn: negotiated,
    }
}

impl TlsConn {
    /// GET `path`; returns (status, HTTP version, body).
    pub async fn get(&mut self, path: &str) -> (u16, http::Version, Bytes) {
        let uri: http::Uri = format!("https://localhost{path}").parse().expect("uri");
        let req = |v: http::Version| {
            let mut b = http::Request::builder().uri(uri.clone()).version(v);
            if v == http::Version::HTTP_11 {
                b = b.header("host", "localhost");
            }
            b.body(Empty::<Bytes>::new()).expect("request")
        };
        let resp = match &mut self.sender {
            ConnSender::H1(s) => s
                .send_request(req(http::Version::HTTP_11))
                .await
                .expect("send"),
            ConnSender::H2(s) => s
                .send_request(req(http::Version::HTTP_2))
                .await
                .expect("send"),
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, version, body)
    }
}

/// Sends `request` bytes as-is over a new TCP connection and returns the whole answer
/// (the request should say `Connection: close`).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `skopeo` (Debian's package) and returns (success, stdout + stderr).
pub fn skopeo(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("skopeo");
    cmd.args(args);
    outcome(cmd, "skopeo (apt-get install skopeo)")
}

/// Runs `cmd` to its end: (success, stdout + stderr).
pub fn outcome(mut cmd: Command, what: &str) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
