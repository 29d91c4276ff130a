//! Debian's `docker-registry` (registry:2) as a real upstream on 127.0.0.1, with its own
//! config (storage in a temp dir, optional htpasswd), an access log the tests can count
//! requests in, and a push client that uploads blobs and manifests through its HTTP API.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Registry2 {
    child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    pub basic: Option<(String, String)>,
    /// Token auth: (realm, rootcertbundle path); pushes then need `push_token`.
    pub token_auth: Option<(String, PathBuf)>,
    pub push_token: Option<String>,
    /// While stopped, the port stays taken (connections are dropped at once), so that no
    /// daemon started later by a test binds it and answers as if it were the upstream.
    port_holder: Option<PortHolder>,
}

struct PortHolder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Registry2 {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `basic = Some((user, password))` the registry requires HTTP Basic (htpasswd).
    /// With token auth: registry:2's `auth.token` pointing at `realm`, trusting `cert`.
    pub fn start_with_token(realm: &str, cert: &Path) -> Self {
        Self::start_inner(None, Some((realm.to_string(), cert.to_path_buf())))
    }

    pub fn start_with(basic: Option<(&str, &str)>) -> Self {
        Self::start_inner(basic, None)
    }

    fn start_inner(basic: Option<(&str, &str)>, token_auth: Option<(String, PathBuf)>) -> Self {
        super::install_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("storage");
        let mut r = Registry2 {
            child: None,
            port: free_port(),
            root,
            dir,
            log: Arc::new(Mutex::new(Vec::new())),
            basic: basic.map(|(u, p)| (u.to_string(), p.to_string())),
            token_auth,
            push_token: None,
            port_holder: None,
        };
        // Another process may take the free port before the registry binds it: a new one.
        for _ in 0..5 {
            if r.spawn() {
                return r;
            }
            r.log.lock().expect("log lock").clear();
            r.port = free_port();
        }
        panic!(
            "docker-registry found its port taken five times:\n{}",
            r.log_text()
        );
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// Starts the registry on `self.port`; false if another process holds that port.
    fn spawn(&mut self) -> bool {
        self.release_port();
        let mut auth = String::new();
        if let Some((user, pass)) = &self.basic {
            let hash = bcrypt::hash(pass, 4).expect("bcrypt");
            let file = self.dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            );
        }
        if let Some((realm, cert)) = &self.token_auth {
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                super::token::SERVICE,
                super::token::ISSUER,
                cert.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
            self.root.display(),
            self.port
        );
        std::fs::write(self.config_path(), config).expect("registry config");
        let listened_before = self
            .log_text()
            .matches(&format!("listening on 127.0.0.1:{}", self.port))
            .count();
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.config_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().expect("log lock").push(line);
                }
            });
        }
        self.child = Some(child);
        // Ready when its own log says it listens: a connect alone could reach another
        // process that took the port between `free_port` and the registry's bind.
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // (one line more than before this start: a restart keeps the earlier log)
            if self.log_text().matches(&listening).count() > listened_before
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited {
                // Give its last lines a moment to reach the log.
                std::thread::sleep(Duration::from_millis(50));
                assert!(
                    self.log_text().contains("address already in use"),
                    "docker-registry exited:\n{}",
                    self.log_text()
                );
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.hold_port();
        }
    }

    fn hold_port(&mut self) {
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", self.port)) else {
            return;
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
        });
        self.port_holder = Some(PortHolder { stop, thread });
    }

    fn release_port(&mut self) {
        if let Some(h) = self.port_holder.take() {
            h.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
            let _ = h.thread.join();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "docker-registry could not take its port back:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Requests in the access log (Apache combined format) with this method whose URI
    /// contains `needle`.
    pub fn count_requests(&self, method: &str, needle: &str) -> usize {
        let prefix = format!("\"{method} ");
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(&prefix) && l.contains(needle) && l.contains(" HTTP/"))
            .count()
    }

    /// [`Registry2::count_requests`] once it reaches `want`, or after 5 s: the access log
    /// arrives through a pipe, a moment after the response.
    pub async fn wait_requests(&self, method: &str, needle: &str, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.count_requests(method, needle);
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Response body bytes the access log records for those requests (the `%b` field after
    /// the status; `-` counts as 0).
    pub fn bytes_served(&self, method: &str, needle: &str) -> u64 {
        let prefix = format!("\"{method} ");
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(&prefix) && l.contains(needle))
            .filter_map(|l| {
                let after = l.split_once(&prefix)?.1;
                let rest = after.split_once("\" ")?.1;
                rest.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().build().expect("client")
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.basic, &self.push_token) {
            (_, Some(t)) => rb.bearer_auth(t),
            (Some((u, p)), None) => rb.basic_auth(u, Some(p)),
            (None, None) => rb,
        }
    }

    /// Uploads a blob (monolithic POST + PUT); returns its digest string.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let c = self.client();
        let r = self
            .auth(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(r.status(), 202, "start upload: {:?}", r.text().await);
        let loc = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.url())
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .auth(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(r.status(), 201, "finish upload: {:?}", r.text().await);
        digest
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = self
            .auth(
                self.client()
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.url())),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        assert_eq!(
            r.status(),
            201,
            "push manifest {repo}:{reference}: {:?}",
            r.text().await
        );
        sha256_digest(bytes)
    }
}

impl Drop for Registry2 {
    fn drop(&mut self) {
        self.stop();
        self.release_port();
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
