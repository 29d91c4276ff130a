//! A hand-written fake registry on 127.0.0.1 for faults a real registry will not produce:
//! connection resets mid-blob, wrong or corrupted bytes for a digest, stalls, and
//! manifests answered with chosen error statuses, rate limits (429 or 503 with a chosen
//! `Retry-After`, for a number of requests). Every request is recorded.
#![allow(dead_code)]

use super::registry2::sha256_digest;
use super::Edge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlobMode {
    Normal,
    /// The first full GET closes the connection after `n` bytes; Range GETs work.
    ResetAfter(usize),
    /// Sends other bytes of the same length.
    Wrong,
    /// Sends headers and 1 KiB, then nothing.
    Stall,
    /// The right length, but bytes 0..1024 flipped: in full GETs and in Range GETs alike.
    CorruptHead,
    /// Every GET answers 429 with `Retry-After: 3600`.
    TooManyRequests,
    /// Every full GET closes the connection after `n` bytes and every Range GET right
    /// after its headers: a fill that breaks beyond resume.
    BreakAfter(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ManifestMode {
    Ok,
    Status(u16),
    /// The next `times` manifest requests answer `status` with this `Retry-After` value;
    /// then manifests are served normally again.
    RateLimited {
        status: u16,
        retry_after: String,
        times: usize,
    },
}

pub struct FaultState {
    pub blobs: HashMap<String, (Vec<u8>, BlobMode)>,
    pub manifests: HashMap<String, Vec<u8>>, // tag -> bytes
    pub manifest_mode: ManifestMode,
    pub requests: Vec<String>,
    pub resets_done: usize,
    /// Referrers API: subject digest -> the full image index (unknown subjects get an empty
    /// index; `manifest_mode` statuses apply here too).
    pub referrers: HashMap<String, Vec<u8>>,
    /// Tags for `tags/list`, served two per page with `Link` headers.
    pub tags: Vec<String>,
}

#[derive(Clone)]
pub struct FaultUpstream {
    pub addr: std::net::SocketAddr,
    pub state: Arc<Mutex<FaultState>>,
}

impl FaultUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(FaultState {
            blobs: HashMap::new(),
            manifests: HashMap::new(),
            manifest_mode: ManifestMode::Ok,
            requests: Vec::new(),
            resets_done: 0,
            referrers: HashMap::new(),
            tags: Vec::new(),
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        FaultUpstream { addr, state }
    }

    pub fn add_blob(&self, bytes: Vec<u8>, mode: BlobMode) -> String {
        let d = sha256_digest(&bytes);
        self.state
            .lock()
            .expect("lock")
            .blobs
            .insert(d.clone(), (bytes, mode));
        d
    }

    /// Changes how an added blob is served from now on.
    pub fn set_blob_mode(&self, digest: &str, mode: BlobMode) {
        let mut s = self.state.lock().expect("lock");
        let blob = s.blobs.get_mut(digest).expect("blob was added");
        blob.1 = mode;
    }

    pub fn requests(&self, needle: &str) -> Vec<String> {
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
        } else if let Some(rest) = path.split("/referrers/").nth(1) {
            referrers(&mut sock, &state, rest, &method).await
        } else if path.contains("/tags/list") {
            tags_page(&mut sock, &state, &path, &method).await
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
    if mode == BlobMode::TooManyRequests {
        return respond(
            sock,
            429,
            &[("Retry-After", "3600".to_string())],
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            method,
        )
        .await;
    }
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
        if let BlobMode::BreakAfter(_) = mode {
            let head = format!(
                "HTTP/1.1 206 Partial\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\r\n",
                bytes.len() - start,
                bytes.len() - 1,
                bytes.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            return false;
        }
        let cr = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
        let head = format!(
            "HTTP/1.1 206 Partial\r\nContent-Length: {}\r\nContent-Range: {cr}\r\n\r\n",
            bytes.len() - start
        );
        let _ = sock.write_all(head.as_bytes()).await;
        let body = if mode == BlobMode::CorruptHead {
            corrupt_head(&bytes)
        } else {
            bytes
        };
        return sock.write_all(&body[start..]).await.is_ok();
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
        BlobMode::CorruptHead => sock.write_all(&corrupt_head(&bytes)).await.is_ok(),
        BlobMode::TooManyRequests => false, // answered above
        BlobMode::BreakAfter(n) => {
            let _ = sock.write_all(&bytes[..n]).await;
            let _ = sock.flush().await;
            false
        }
    }
}

/// The blob with its first (up to) 1024 bytes flipped.
pub fn corrupt_head(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().take(1024) {
        *b ^= 0xff;
    }
    out
}

async fn manifest(
    sock: &mut TcpStream,
    state: &Arc<Mutex<FaultState>>,
    tag: &str,
    method: &str,
) -> bool {
    let (mode, found) = {
        let mut s = state.lock().expect("lock");
        let mode = s.manifest_mode.clone();
        let used_up = match &mut s.manifest_mode {
            ManifestMode::RateLimited { times, .. } => {
                *times = times.saturating_sub(1);
                *times == 0
            }
            _ => false,
        };
        if used_up {
            s.manifest_mode = ManifestMode::Ok;
        }
        (mode, s.manifests.get(tag).cloned())
    };
    if let ManifestMode::RateLimited {
        status,
        retry_after,
        times,
    } = &mode
    {
        if *times > 0 {
            return respond(
                sock,
                *status,
                &[("Retry-After", retry_after.clone())],
                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                method,
            )
            .await;
        }
    }
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

async fn referrers(
    sock: &mut TcpStream,
    state: &Arc<Mutex<FaultState>>,
    rest: &str,
    method: &str,
) -> bool {
    let (digest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mode, index) = {
        let s = state.lock().expect("lock");
        (s.manifest_mode.clone(), s.referrers.get(digest).cloned())
    };
    if let ManifestMode::Status(status) = mode {
        return respond(sock, status, &[], b"{}", method).await;
    }
    let mut index: serde_json::Value = index
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| {
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        });
    let mut headers = vec![(
        "Content-Type",
        "application/vnd.oci.image.index.v1+json".to_string(),
    )];
    if let Some(t) = query.strip_prefix("artifactType=") {
        let t = t.replace("%2F", "/").replace("%2B", "+");
        if let Some(list) = index["manifests"].as_array_mut() {
            list.retain(|d| d["artifactType"].as_str() == Some(t.as_str()));
        }
        headers.push(("OCI-Filters-Applied", "artifactType".to_string()));
    }
    let body = index.to_string();
    respond(sock, 200, &headers, body.as_bytes(), method).await
}

async fn tags_page(
    sock: &mut TcpStream,
    state: &Arc<Mutex<FaultState>>,
    path: &str,
    method: &str,
) -> bool {
    let (mode, mut tags) = {
        let s = state.lock().expect("lock");
        (s.manifest_mode.clone(), s.tags.clone())
    };
    tags.sort();
    if let ManifestMode::Status(status) = mode {
        return respond(sock, status, &[], b"{}", method).await;
    }
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let last = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("last="))
        .map(str::to_string);
    let rest: Vec<&String> = tags
        .iter()
        .filter(|t| last.as_ref().is_none_or(|l| *t > l))
        .collect();
    let page: Vec<&String> = rest.iter().copied().take(2).collect();
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if rest.len() > 2 {
        if let Some(l) = page.last() {
            headers.push(("Link", format!("<{base}?n=2&last={l}>; rel=\"next\"")));
        }
    }
    let body = serde_json::json!({"name": "upstream/name", "tags": page}).to_string();
    respond(sock, 200, &headers, body.as_bytes(), method).await
}

/// An edge whose only (and default) upstream is `up`, with short upstream timeouts.
pub fn edge_for(up: &FaultUpstream) -> Edge {
    Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{{dir}}/data\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"0\"\n\
         [[upstream]]\nname = \"fault.test\"\nurl = \"http://{}\"\ndefault = true\nconnect_timeout = \"2s\"\nread_timeout = \"2s\"\n",
        up.addr
    ))
}
