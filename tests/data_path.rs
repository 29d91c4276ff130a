//! The blob data path end to end, against the daemon binary: a blob larger than the whole
//! store budget, a store on a full disk, a cold Range on an upstream that corrupts the
//! start of a blob, SIGKILL between a fill's last byte and its commit, and a slow reader
//! beside fast ones. Upstreams are Debian's `docker-registry` (registry:2) and the
//! hand-written fault upstream; clients are reqwest, `curl --limit-rate` and `skopeo`.
//! Every test prints its key numbers (times, upstream GETs and bytes).

mod common;
use common::edge_config::{edge_for, EdgeConfig, Upstream};
use common::fake_upstream::{corrupted, FakeUpstream, Faults};
use common::images::*;
use common::registry2::*;
use common::*;
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// One whole-blob download may take this long at most (the throttled ones take ~20 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// An edge config whose only (and default) upstream is `upstream_url`; no `chunk_size`, so
/// the default is used.
fn edge_config(upstream_url: &str, storage_path: &str, max_size: &str) -> String {
    EdgeConfig::new(storage_path)
        .max_size(max_size)
        .tag_ttl("1h")
        .upstream(
            Upstream::new("registry.test", upstream_url)
                .default()
                .connect_timeout("2s")
                .read_timeout("10s"),
        )
        .to_toml()
}

/// What one client got, hashed as it streamed in (nothing big is kept in memory).
struct Got {
    who: String,
    /// 0 when the request itself failed.
    status: u16,
    content_length: Option<u64>,
    content_range: Option<String>,
    x_cache: Option<String>,
    len: u64,
    digest: String,
    /// The first 64 KiB of the body (error answers are read from here).
    head: Vec<u8>,
    /// The request or the body ended with an error (an aborted transfer).
    error: Option<String>,
    /// Until the response's headers arrived.
    headers: Duration,
    elapsed: Duration,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Error answers only: a blob's bytes say nothing here.
        let head = if self.status >= 300 {
            String::from_utf8_lossy(&self.head[..self.head.len().min(300)]).into_owned()
        } else {
            format!("({} bytes kept)", self.head.len())
        };
        f.debug_struct("Got")
            .field("who", &self.who)
            .field("status", &self.status)
            .field("content_length", &self.content_length)
            .field("content_range", &self.content_range)
            .field("x_cache", &self.x_cache)
            .field("len", &self.len)
            .field("digest", &self.digest)
            .field("error", &self.error)
            .field("elapsed", &self.elapsed)
            .field("head", &head)
            .finish()
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// GETs `url` (with `range`, if any) on a connection of its own.
async fn fetch(who: &str, url: &str, range: Option<&str>) -> Got {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    let mut req = client.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let mut got = Got {
        who: who.to_string(),
        status: 0,
        content_length: None,
        content_range: None,
        x_cache: None,
        len: 0,
        digest: String::new(),
        head: Vec::new(),
        error: None,
        headers: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let mut hasher = Sha256::new();
    match req.send().await {
        Err(e) => got.error = Some(format!("request: {e}")),
        Ok(mut r) => {
            got.headers = started.elapsed();
            got.status = r.status().as_u16();
            got.content_length = header(&r, "content-length").and_then(|v| v.parse().ok());
            got.content_range = header(&r, "content-range");
            got.x_cache = header(&r, "x-cache");
            loop {
                match r.chunk().await {
                    Ok(Some(bytes)) => {
                        got.len += bytes.len() as u64;
                        hasher.update(&bytes);
                        let room = (64usize << 10).saturating_sub(got.head.len());
                        got.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        got.error = Some(format!("body after {} bytes: {e}", got.len));
                        break;
                    }
                }
            }
        }
    }
    got.digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    got.elapsed = started.elapsed();
    got
}

/// A whole-blob answer: 200, Content-Length and body length equal to the blob's size, the
/// body hashing to its digest, and a clean end.
fn assert_whole(got: &Got, digest: &str, size: usize) {
    assert!(got.error.is_none(), "{}: aborted: {got:?}", got.who);
    assert_eq!(got.status, 200, "{}: {got:?}", got.who);
    assert_eq!(
        got.content_length,
        Some(size as u64),
        "{}: Content-Length: {got:?}",
        got.who
    );
    assert_eq!(
        got.len, size as u64,
        "{}: short or long body: {got:?}",
        got.who
    );
    assert_eq!(got.digest, digest, "{}: wrong bytes: {got:?}", got.who);
}

/// A clean 206 carrying exactly `blob[start..=end]`, with the matching Content-Range.
fn assert_range(got: &Got, start: usize, end: usize, blob: &[u8]) {
    assert!(got.error.is_none(), "{}: aborted: {got:?}", got.who);
    assert_eq!(got.status, 206, "{}: {got:?}", got.who);
    assert_eq!(
        got.content_range.as_deref(),
        Some(format!("bytes {start}-{end}/{}", blob.len()).as_str()),
        "{}: {got:?}",
        got.who
    );
    assert_eq!(got.len as usize, end + 1 - start, "{}: {got:?}", got.who);
    assert_eq!(
        got.digest,
        sha256_digest(&blob[start..=end]),
        "{}: wrong bytes: {got:?}",
        got.who
    );
}

/// What a throttled `curl` got.
#[derive(Debug)]
struct Curled {
    rc: i32,
    http_code: String,
    len: u64,
    digest: String,
    elapsed: Duration,
    stderr: String,
}

/// `curl --limit-rate RATE -o OUT URL` in a blocking thread; hashes the file it wrote.
async fn curl_limited(url: &str, rate: &str, out: &Path) -> Curled {
    let (url, rate, out) = (url.to_string(), rate.to_string(), out.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let o = std::process::Command::new("curl")
            .args(["-sS", "--limit-rate", &rate, "--max-time"])
            .arg(CLIENT_TIMEOUT.as_secs().to_string())
            .args(["-w", "%{http_code}", "-o"])
            .arg(&out)
            .arg(&url)
            .output()
            .expect("run curl");
        let elapsed = started.elapsed();
        let (len, digest) = file_digest(&out);
        Curled {
            rc: o.status.code().unwrap_or(-1),
            http_code: String::from_utf8_lossy(&o.stdout).into_owned(),
            len,
            digest,
            elapsed,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    })
    .await
    .expect("curl thread")
}

/// (length, sha256 digest) of a file; (0, digest of nothing) when it is missing.
fn file_digest(path: &Path) -> (u64, String) {
    let mut hasher = Sha256::new();
    let len = match std::fs::File::open(path) {
        Ok(mut f) => std::io::copy(&mut f, &mut hasher).expect("read curl's output"),
        Err(_) => 0,
    };
    (len, format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn assert_curl_whole(c: &Curled, digest: &str, size: usize) {
    assert_eq!(c.rc, 0, "curl rc: {c:?}");
    assert_eq!(c.http_code, "200", "curl status: {c:?}");
    assert_eq!(c.len, size as u64, "curl body length: {c:?}");
    assert_eq!(c.digest, digest, "curl bytes: {c:?}");
}

/// Polls HEAD on `url` until the edge says `X-Cache: HIT` (at most `timeout`).
async fn wait_until_hit(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(r) = client.head(url).send().await {
            if header(&r, "x-cache").as_deref() == Some("HIT") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `/metrics` until `series` satisfies `ok` (at most `timeout`); returns the last value.
async fn wait_metric(
    edge: &Edge,
    series: &str,
    ok: impl Fn(f64) -> bool,
    timeout: Duration,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = edge.metric(series).await;
        if ok(v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the eight clients of [`eight_clients`] got.
struct Eight {
    gots: Vec<Got>,
    slow: Curled,
}

impl Eight {
    /// Each must be byte-exact and end cleanly.
    fn assert_all_whole(&self, digest: &str, size: usize) {
        for g in &self.gots {
            assert_whole(g, digest, size);
        }
        assert_curl_whole(&self.slow, digest, size);
    }
}

/// Eight concurrent whole-blob GETs of `url`: six fast ones, one `curl --limit-rate 5M`
/// and one fast one joining 2 s after the others. Prints what each got.
async fn eight_clients(url: &str, scratch: &Path) -> Eight {
    let started = Instant::now();
    let mut fast = Vec::new();
    for i in 0..6 {
        let url = url.to_string();
        fast.push(tokio::spawn(async move {
            fetch(&format!("fast{i}"), &url, None).await
        }));
    }
    let late = {
        let url = url.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            fetch("late (+2 s)", &url, None).await
        })
    };
    let out = scratch.join("curl.out");
    let slow = curl_limited(url, "5M", &out).await;
    let mut gots = Vec::new();
    for t in fast {
        gots.push(t.await.expect("client task"));
    }
    gots.push(late.await.expect("late client task"));
    println!(
        "eight clients: {}; curl --limit-rate 5M {:.1} s rc {} status {} {}; all done after {:.1} s",
        gots.iter()
            .map(|g| format!(
                "{} {} {:.1} s {} bytes{}",
                g.who,
                g.status,
                g.elapsed.as_secs_f64(),
                g.len,
                g.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        slow.elapsed.as_secs_f64(),
        slow.rc,
        slow.http_code,
        slow.stderr.trim(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&out);
    Eight { gots, slow }
}

/// (GETs, body bytes) registry:2 served for `digest`, printed with the edge's own count of
/// upstream bytes and what the store holds.
async fn upstream_use(
    what: &str,
    reg: &Registry2,
    edge: &Edge,
    digest: &str,
    size: usize,
) -> (usize, u64) {
    let gets = reg.count_requests("GET", &format!("/blobs/{digest}"));
    let bytes = reg.bytes_served("GET", &format!("/blobs/{digest}"));
    let text = edge.metrics_text().await;
    println!(
        "{what}: blob {size} bytes; upstream GETs of the blob {gets}, {bytes} bytes ({:.2}x); edge upstream_bytes_total {}; store_bytes {}, store_blobs {}",
        bytes as f64 / size as f64,
        metric(&text, "sparkcr_edge_upstream_bytes_total"),
        metric(&text, "sparkcr_edge_store_bytes "),
        metric(&text, "sparkcr_edge_store_blobs "),
    );
    (gets, bytes)
}

/// Every file skopeo wrote to a `dir:` destination hashes to its name; returns their sizes.
fn skopeo_dir_blobs(dir: &Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for e in std::fs::read_dir(dir).expect("read skopeo dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let (len, d) = file_digest(&e.path());
            assert_eq!(d, format!("sha256:{name}"), "skopeo's copy of {name}");
            sizes.push(len);
        }
    }
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_blob_eight_clients_and_skopeo() {
    let reg = Registry2::start();
    // One layer of 100 MiB: 2.5 times the 40 MiB budget.
    let img = push_image(
        &reg,
        "team/big",
        Some("v1"),
        Format::Oci,
        41,
        "amd64",
        &[100 * MIB],
    )
    .await;
    let (digest, size) = {
        let (d, bytes) = &img.blobs[1];
        (d.clone(), bytes.len())
    };
    drop(img);
    let edge = Edge::start(&edge_config(&reg.url(), "{dir}/data", "40MiB"));
    let url = edge.url(&format!("/v2/team/big/blobs/{digest}"));
    let scratch = tempfile::tempdir().expect("scratch dir");

    // skopeo pulls the image (the big layer included) alongside the eight clients.
    let dest = scratch.path().join("skopeo");
    let src = format!("docker://{}/team/big:v1", edge.http[0]);
    let dest_ref = format!("dir:{}", dest.display());
    let skopeo_started = Instant::now();
    let pull = tokio::task::spawn_blocking(move || {
        skopeo(&[
            "--command-timeout",
            "90s",
            "copy",
            "--src-tls-verify=false",
            "--retry-times",
            "0",
            &src,
            &dest_ref,
        ])
    });
    let eight = eight_clients(&url, scratch.path()).await;
    let (ok, log) = pull.await.expect("skopeo thread");
    println!(
        "skopeo copy took {:.1} s, ok {ok}{}",
        skopeo_started.elapsed().as_secs_f64(),
        if ok {
            String::new()
        } else {
            format!(": {}", log.trim().lines().last().unwrap_or_default())
        }
    );
    let (gets, bytes) = upstream_use("over budget (40 MiB)", &reg, &edge, &digest, size).await;
    let stored = edge.metric("sparkcr_edge_store_bytes ").await;
    eight.assert_all_whole(&digest, size);
    assert!(ok, "skopeo copy through the edge: {log}");
    let sizes = skopeo_dir_blobs(&dest);
    assert!(
        sizes.contains(&(size as u64)),
        "skopeo got the big layer: {sizes:?}"
    );
    assert!(
        stored <= (40 * MIB) as f64,
        "the store stays within its budget: {stored}"
    );
    // The fill fetches the 100 MiB blob as ranged pieces (cache.fill_pieces): several GETs,
    // each byte once.
    assert!(
        gets >= 2 && bytes <= 3 * size as u64,
        "the upstream served {bytes} bytes of the {size}-byte blob in {gets} GETs (expected the blob once: the edge spools it)"
    );
    // A layer the budget cannot keep is a problem an admin must see at `-p warning`.
    assert!(
        edge.log_text()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains("not storing this blob")),
        "the log warns that the blob is not stored"
    );
}

/// A tmpfs mounted on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes an unprivileged writer can still allocate.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        // SAFETY: statvfs(3) writes into a zeroed struct we own; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path().display());
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_small_disk_eight_clients_all_byte_exact() {
    let fs = match Tmpfs::mount("48m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED full_small_disk_eight_clients_all_byte_exact: {why}");
            return;
        }
    };
    let store = fs.path().join("store");
    std::fs::create_dir(&store).expect("create the store dir");
    let reg = Registry2::start();
    let size = 60 * MIB;
    let blob = pseudo_random(42, size);
    let digest = reg.push_blob("team/full", &blob).await;
    drop(blob);
    // The budget is no limit here; the disk is.
    let edge = Edge::start(&edge_config(
        &reg.url(),
        &store.display().to_string(),
        "1GiB",
    ));
    // Fill the disk, leaving about 1 MiB.
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let mut left = fs.free().saturating_sub(MIB as u64);
        let zeros = vec![0u8; MIB];
        while left > 0 {
            let n = left.min(MIB as u64) as usize;
            f.write_all(&zeros[..n]).expect("write filler");
            left -= n as u64;
        }
        f.sync_all().expect("sync filler");
    }
    let free = fs.free();
    println!("full disk: tmpfs 48 MiB, {free} bytes free before the fill");
    assert!(
        free <= 2 * MIB as u64,
        "the disk is full: {free} bytes free"
    );

    let url = edge.url(&format!("/v2/team/full/blobs/{digest}"));
    let scratch = tempfile::tempdir().expect("scratch dir");
    let eight = eight_clients(&url, scratch.path()).await;

    let (_, bytes) = upstream_use("full disk", &reg, &edge, &digest, size).await;
    eight.assert_all_whole(&digest, size);
    assert!(
        bytes <= 8 * size as u64,
        "upstream served {bytes} bytes for a {size}-byte blob and eight clients"
    );
    let health = reqwest::get(edge.url("/healthz"))
        .await
        .expect("healthz after the full-disk fill");
    assert_eq!(health.status(), 200, "the daemon stays healthy");
    let blobs = edge.metric("sparkcr_edge_store_blobs ").await;
    assert_eq!(blobs, 0.0, "nothing stored on the full disk");
    drop(edge); // before the tmpfs is unmounted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_range_never_serves_unverified_bytes() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(43, 4 * MIB);
    let bad = up.add_blob_with(bytes.clone(), Faults::none().corrupt(0..1024));
    let good_bytes = pseudo_random(44, 8 * MIB);
    let good = up.add_blob(good_bytes.clone());
    let edge = edge_for(&up);
    let bad_url = edge.url(&format!("/v2/team/app/blobs/{bad}"));

    // The upstream's bytes 0..1024 are wrong: they must not come back as a success.
    let got = fetch(
        "cold range 0-1023 (corrupting upstream)",
        &bad_url,
        Some("bytes=0-1023"),
    )
    .await;
    println!(
        "corrupting upstream: status {} error {:?} len {} in {:.2} s",
        got.status,
        got.error,
        got.len,
        got.elapsed.as_secs_f64()
    );
    if (200..300).contains(&got.status) {
        assert!(
            got.error.is_some(),
            "a {} with {} bytes ending cleanly (corrupted bytes: {}) for a blob whose upstream bytes do not match its digest",
            got.status,
            got.len,
            got.digest == sha256_digest(&corrupted(&bytes, 0..1024)[..1024])
        );
    } else if got.status != 0 {
        assert!(
            got.status == 502 || got.status == 503,
            "expected 502 or 503, got {got:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&got.head).unwrap_or_else(|e| {
            panic!(
                "{}: not OCI error JSON ({e}): {}",
                got.status,
                String::from_utf8_lossy(&got.head)
            )
        });
        assert!(
            v["errors"][0]["code"].is_string(),
            "{}: OCI error JSON: {v}",
            got.status
        );
    }
    let in_flight = wait_metric(
        &edge,
        "sparkcr_edge_fills_in_flight",
        |v| v == 0.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(in_flight, 0.0, "the corrupt fill ended");

    // Once the upstream serves the right bytes, the same Range is answered exactly.
    up.set_faults(&bad, Faults::none());
    let got = fetch(
        "range 0-1023 (upstream fixed)",
        &bad_url,
        Some("bytes=0-1023"),
    )
    .await;
    assert_range(&got, 0, 1023, &bytes);

    // A cold Range in the middle of a correct blob.
    let good_url = edge.url(&format!("/v2/team/app/blobs/{good}"));
    let (start, end) = (5_000_000usize, 5_000_999usize);
    let got = fetch(
        "cold range in the middle",
        &good_url,
        Some(&format!("bytes={start}-{end}")),
    )
    .await;
    assert_range(&got, start, end, &good_bytes);
    let hit = wait_until_hit(&good_url, Duration::from_secs(20)).await;
    let whole = fetch("GET after the cold range", &good_url, None).await;
    println!(
        "cold ranges: upstream requests for the good blob: {:?}; later GET X-Cache {:?}",
        up.requests_containing(&format!("/blobs/{good}")),
        whole.x_cache
    );
    assert!(hit, "the blob became a hit after the cold Range");
    assert_whole(&whole, &good, good_bytes.len());
    assert_eq!(whole.x_cache.as_deref(), Some("HIT"), "{whole:?}");
}

/// containerd 2.1+ fetches a layer as parallel `Range` requests, and from 2.3 drops one
/// whose headers take more than 30 s: on a cold blob over a slow upstream every part gets
/// its headers while the fill is far from done, and byte-exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_client_gets_headers_at_once_on_a_cold_blob() {
    const CONTAINERD_HEADER_DEADLINE: Duration = Duration::from_secs(30);
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(45, 8 * MIB);
    // About 8 s for the whole blob.
    let digest = up.add_blob_with(bytes.clone(), Faults::none().rate(MIB as u64));
    let edge = edge_for(&up);
    let url = edge.url(&format!("/v2/team/app/blobs/{digest}"));
    let part = bytes.len() / 4;
    let started = Instant::now();
    let mut parts = Vec::new();
    for i in 0..4 {
        let (start, end) = (i * part, (i + 1) * part - 1);
        // Open-ended as containerd sends them, and bounded as lazy pullers do.
        for range in [format!("bytes={start}-"), format!("bytes={start}-{end}")] {
            let url = url.clone();
            let who = format!("part {range}");
            parts.push(tokio::spawn(async move {
                let got = fetch(&who, &url, Some(&range)).await;
                (
                    start,
                    if range.ends_with('-') {
                        None
                    } else {
                        Some(end)
                    },
                    got,
                )
            }));
        }
    }
    let mut latest_headers = Duration::ZERO;
    for p in parts {
        let (start, end, got) = p.await.expect("client task");
        println!(
            "{}: headers after {:.2} s, done after {:.2} s",
            got.who,
            got.headers.as_secs_f64(),
            got.elapsed.as_secs_f64()
        );
        assert_range(&got, start, end.unwrap_or(bytes.len() - 1), &bytes);
        latest_headers = latest_headers.max(got.headers);
    }
    let fill = started.elapsed();
    assert!(
        latest_headers < CONTAINERD_HEADER_DEADLINE,
        "headers after {latest_headers:?}: containerd 2.3 would have given up"
    );
    assert!(
        latest_headers * 2 < fill,
        "headers after {latest_headers:?} of a {fill:?} fill: they waited for the blob"
    );
    // The fill's own requests (its first piece, then the rest), not one per client range:
    // together they ask for each byte once.
    let gets = up.requests_containing(&format!("/blobs/{digest}"));
    let asked: u64 = gets
        .iter()
        .map(|g| {
            let range = g
                .headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .unwrap_or("0-");
            let (a, b) = range.split_once('-').expect("a byte range");
            let a: u64 = a.parse().expect("a start");
            let b: u64 = b.parse().unwrap_or(bytes.len() as u64 - 1);
            b + 1 - a
        })
        .sum();
    assert!(
        gets.len() <= 2,
        "at most two upstream GETs for eight ranges: {gets:?}"
    );
    assert_eq!(
        asked,
        bytes.len() as u64,
        "each byte asked for once: {gets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_holding_commits_leaves_nothing_partial() {
    let reg = Registry2::start();
    let mut blobs = Vec::new();
    for i in 0..8 {
        let bytes = pseudo_random(60 + i as u64, (8 + 2 * i) * MIB);
        let d = reg.push_blob("team/held", &bytes).await;
        blobs.push((d, bytes.len()));
    }
    // The store outlives the first daemon.
    let data = tempfile::tempdir().expect("data dir");
    let config = edge_config(&reg.url(), &data.path().display().to_string(), "2GiB");
    let mut edge = Edge::start_with_env(&config, &[("SPARKCR_EDGE_TEST_HOLD_COMMIT_MS", "30000")]);
    let url = |edge: &Edge, d: &str| edge.url(&format!("/v2/team/held/blobs/{d}"));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (d, _)) in blobs.iter().enumerate() {
        let u = url(&edge, d);
        tasks.push(tokio::spawn(async move {
            fetch(&format!("blob{i}"), &u, None).await
        }));
    }
    for (t, (d, size)) in tasks.into_iter().zip(&blobs) {
        assert_whole(&t.await.expect("client task"), d, *size);
    }
    let bodies_done = started.elapsed();
    let holding = edge
        .wait_for_log_lines("holding the commit", 8, Duration::from_secs(15))
        .await;
    let visible = edge.metric("sparkcr_edge_store_blobs ").await;
    println!(
        "hold commit: 8 bodies complete after {:.1} s; {holding} 'holding the commit' lines; store_blobs {visible} before the kill",
        bodies_done.as_secs_f64()
    );
    assert_eq!(
        holding, 8,
        "the log said 'holding the commit' {holding} times, expected one per blob"
    );
    assert_eq!(
        visible, 0.0,
        "nothing is committed while the commits are held"
    );
    edge.child.kill().expect("SIGKILL the daemon");
    edge.child.wait().expect("reap the daemon");
    assert!(
        !edge.log_text().contains("panicked"),
        "no panic before the kill:\n{}",
        edge.log_text()
    );
    drop(edge);

    let edge = Edge::start(&config);
    let opened = edge
        .log_text()
        .lines()
        .find(|l| l.contains("store opened"))
        .map(str::to_string)
        .unwrap_or_default();
    let visible = edge.metric("sparkcr_edge_store_blobs ").await;
    println!("after the kill: {opened:?}; store_blobs {visible}");
    assert_eq!(visible, 0.0, "no partial blob visible after the kill");
    let mut tasks = Vec::new();
    for (i, (d, _)) in blobs.iter().enumerate() {
        let u = url(&edge, d);
        tasks.push(tokio::spawn(async move {
            fetch(&format!("re-pull{i}"), &u, None).await
        }));
    }
    for (t, (d, size)) in tasks.into_iter().zip(&blobs) {
        let got = t.await.expect("re-pull task");
        assert_whole(&got, d, *size);
        assert_ne!(
            got.x_cache.as_deref(),
            Some("HIT"),
            "{d} was not stored: {got:?}"
        );
    }
    for (d, size) in &blobs {
        let u = url(&edge, d);
        assert!(
            wait_until_hit(&u, Duration::from_secs(20)).await,
            "{d} stored after the re-pull"
        );
        let got = fetch("hit", &u, None).await;
        assert_whole(&got, d, *size);
        assert_eq!(got.x_cache.as_deref(), Some("HIT"), "{got:?}");
    }
    let gets: Vec<usize> = blobs
        .iter()
        .map(|(d, _)| reg.count_requests("GET", &format!("/blobs/{d}")))
        .collect();
    println!("upstream GETs per blob over both runs: {gets:?}");
    assert!(
        !edge.log_text().contains("panicked"),
        "no panic after the restart:\n{}",
        edge.log_text()
    );
}

/// A stop (SIGTERM) between the clients' last byte and the commit keeps the blobs: the
/// daemon lets running fills commit (within `shutdown_grace`) before it exits, so the next
/// start serves them as hits without asking the upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_holding_commits_keeps_every_verified_blob() {
    let mut reg = Registry2::start();
    let mut blobs = Vec::new();
    for i in 0..4 {
        let bytes = pseudo_random(80 + i as u64, (6 + i) * MIB);
        let d = reg.push_blob("team/kept", &bytes).await;
        blobs.push((d, bytes.len()));
    }
    let data = tempfile::tempdir().expect("data dir");
    let config = edge_config(&reg.url(), &data.path().display().to_string(), "2GiB");
    let mut edge = Edge::start_with_env(&config, &[("SPARKCR_EDGE_TEST_HOLD_COMMIT_MS", "1500")]);
    let url = |edge: &Edge, d: &str| edge.url(&format!("/v2/team/kept/blobs/{d}"));
    let mut tasks = Vec::new();
    for (i, (d, _)) in blobs.iter().enumerate() {
        let u = url(&edge, d);
        tasks.push(tokio::spawn(async move {
            fetch(&format!("blob{i}"), &u, None).await
        }));
    }
    for (t, (d, size)) in tasks.into_iter().zip(&blobs) {
        assert_whole(&t.await.expect("client task"), d, *size);
    }
    let holding = edge
        .wait_for_log_lines("holding the commit", 4, Duration::from_secs(15))
        .await;
    assert_eq!(holding, 4, "every fill is holding its commit");
    assert_eq!(edge.metric("sparkcr_edge_store_blobs ").await, 0.0);
    let pid = edge.child.id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
    let status = edge.child.wait().expect("reap the daemon");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        edge.log_text()
    );
    assert!(
        edge.log_text().contains("waiting for blob fills to finish"),
        "the stop waited for the fills:\n{}",
        edge.log_text()
    );
    drop(edge);

    // The upstream is gone: only the store can answer now.
    reg.stop();
    let edge = Edge::start(&config);
    assert_eq!(
        edge.metric("sparkcr_edge_store_blobs ").await,
        4.0,
        "all four kept"
    );
    for (d, size) in &blobs {
        let got = fetch("hit after restart", &url(&edge, d), None).await;
        assert_whole(&got, d, *size);
        assert_eq!(got.x_cache.as_deref(), Some("HIT"), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_beside_fast_ones_on_a_cached_blob() {
    let reg = Registry2::start();
    let size = 32 * MIB;
    let blob = pseudo_random(45, size);
    let digest = reg.push_blob("team/slow", &blob).await;
    drop(blob);
    let edge = Edge::start(&edge_config(&reg.url(), "{dir}/data", "2GiB"));
    let url = edge.url(&format!("/v2/team/slow/blobs/{digest}"));
    let scratch = tempfile::tempdir().expect("scratch dir");
    let out = scratch.path().join("slow.out");
    let mut fast = Vec::new();
    for i in 0..3 {
        let url = url.clone();
        fast.push(tokio::spawn(async move {
            fetch(&format!("fast{i}"), &url, None).await
        }));
    }
    let slow = curl_limited(&url, "2M", &out).await;
    let mut gots = Vec::new();
    for t in fast {
        gots.push(t.await.expect("client task"));
    }
    let (gets, bytes) = upstream_use("slow beside fast", &reg, &edge, &digest, size).await;
    println!(
        "slow beside fast: curl 2M {:.1} s; fast {:?} s; upstream GETs {gets}",
        slow.elapsed.as_secs_f64(),
        gots.iter()
            .map(|g| (g.elapsed.as_secs_f64() * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    assert_curl_whole(&slow, &digest, size);
    for g in &gots {
        assert_whole(g, &digest, size);
        assert!(
            g.elapsed < slow.elapsed / 2,
            "{}: {:.1} s is not well before the slow reader's {:.1} s",
            g.who,
            g.elapsed.as_secs_f64(),
            slow.elapsed.as_secs_f64()
        );
    }
    // One fill, as ranged pieces: every byte fetched once.
    assert_eq!(
        bytes,
        size as u64,
        "the blob fetched once ({gets} GETs):\n{}",
        reg.log_text()
    );
    assert!(
        wait_until_hit(&url, Duration::from_secs(20)).await,
        "the blob is cached"
    );
}

/// The audit file on a full disk: records are dropped and counted, the log says so once,
/// and every pull still succeeds; once there is room again, records are written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_drops_records_and_every_pull_goes_on() {
    let fs = match Tmpfs::mount("64k") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_full_audit_disk_drops_records_and_every_pull_goes_on: {why}");
            return;
        }
    };
    let reg = Registry2::start();
    let blob = pseudo_random(43, 100_000);
    let digest = reg.push_blob("team/audited", &blob).await;
    let data = tempfile::tempdir().expect("data dir");
    let audit = fs.path().join("audit.jsonl");
    let edge = Edge::start(&format!(
        "{}\n[audit]\npath = \"{}\"\nmax_size = \"1MiB\"\nkeep = 0\n",
        edge_config(&reg.url(), &data.path().display().to_string(), "1GiB"),
        audit.display()
    ));
    let http = reqwest::Client::new();
    let url = edge.url(&format!("/v2/team/audited/blobs/{digest}"));
    let head_many = |n: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            for _ in 0..n {
                let r = http.head(&url).send().await.expect("HEAD");
                assert_eq!(r.status(), 200, "pulls go on whatever the audit disk");
            }
        }
    };
    let r = http.get(&url).send().await.expect("GET");
    assert_eq!(r.bytes().await.expect("body").len(), blob.len());
    // About 400 bytes a record: 300 records do not fit in 64 KiB.
    head_many(300).await;
    let series =
        |outcome: &str| format!("sparkcr_edge_audit_records_total{{outcome=\"{outcome}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric(&series("dropped")).await == 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (written, dropped) = (
        edge.metric(&series("written")).await,
        edge.metric(&series("dropped")).await,
    );
    assert!(
        written > 0.0 && dropped > 0.0,
        "written {written}, dropped {dropped}"
    );
    edge.wait_for_log("audit records were dropped").await;
    // Room again (an admin truncates the file): records are written again.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&audit)
        .and_then(|f| f.set_len(0))
        .expect("truncate the audit file");
    head_many(20).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric(&series("written")).await < written + 20.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        edge.metric(&series("written")).await >= written + 20.0,
        "records reach the file again once there is room"
    );
    let text = std::fs::read_to_string(&audit).expect("audit file");
    assert!(
        text.lines().filter(|l| l.contains(&digest)).count() >= 20,
        "{text}"
    );
}
