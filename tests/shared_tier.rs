//! Several edges sharing one S3 bucket on a real Ceph cluster (one mon, one memstore OSD,
//! radosgw with the beast frontend on 127.0.0.1, started by `scripts/ceph-rgw` from
//! Debian's packages), with Debian's registry:2 (or the fault-injecting fake) as the
//! upstream: an image filled by one edge is served by another with no upstream blob GET;
//! an edge that lost its data directory refills from the bucket; cold clients on two
//! edges cost one origin GET (cluster single flight); the tier down, writes missed
//! meanwhile caught up (only with `catch_up = true`), a corrupt object, and a fill that
//! breaks beyond resume.
//!
//! One Ceph cluster serves the file (each test has its own bucket); the tests that stop
//! radosgw start clusters of their own. Clusters stop when the test process exits (the
//! script's watchdog) or when their guard drops.

mod common;
use common::fake_upstream::{FakeUpstream, Faults};
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ceph-rgw");

struct Ceph {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    endpoint: String,
    access: String,
    secret: String,
}

/// A port outside the OSD's 6800-7300.
fn rgw_port() -> u16 {
    loop {
        let p = free_port();
        if !(6800..=7300).contains(&p) {
            return p;
        }
    }
}

impl Ceph {
    /// Starts a cluster, or says why it could not.
    fn try_start() -> Result<Ceph, String> {
        install_crypto();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ceph");
        let out = Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            .arg(rgw_port().to_string())
            .arg(free_port().to_string())
            .arg(std::process::id().to_string())
            .output()
            .expect("run scripts/ceph-rgw");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "scripts/ceph-rgw start failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in: {text}"))
                .to_string()
        };
        Ok(Ceph {
            endpoint: field("CEPH_RGW_ENDPOINT"),
            access: field("CEPH_RGW_ACCESS_KEY"),
            secret: field("CEPH_RGW_SECRET_KEY"),
            dir,
            _tmp: tmp,
        })
    }

    fn start() -> Ceph {
        Ceph::try_start().unwrap_or_else(|why| panic!("{why}"))
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new(SCRIPT)
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .expect("run scripts/ceph-rgw");
        assert!(
            out.status.success(),
            "scripts/ceph-rgw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn bucket(&self, name: &str) -> AmazonS3 {
        self.script(&["mkbucket", name]);
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(name)
            .with_region("us-east-1")
            .with_access_key_id(&self.access)
            .with_secret_access_key(&self.secret)
            .build()
            .expect("S3 client")
    }

    fn shared_section(&self, bucket: &str) -> String {
        format!(
            "[storage.shared]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\npath_style = true\nprefix = \"site\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nlookup_timeout = \"3s\"\nconnect_timeout = \"1s\"\n",
            self.endpoint, self.access, self.secret
        )
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).status();
    }
}

/// The file's cluster, started by the first test that needs it.
/// A cluster that failed to start is tried once: every test then fails at once with its reason.
fn ceph() -> &'static Ceph {
    static CEPH: OnceLock<Result<Ceph, String>> = OnceLock::new();
    match CEPH.get_or_init(Ceph::try_start) {
        Ok(ceph) => ceph,
        Err(why) => panic!("{why}"),
    }
}

fn key(digest: &str) -> ObjectPath {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    ObjectPath::from(format!("site/blobs/sha256/{hex}"))
}

/// Waits until every digest has an object in the bucket (write-through runs after the
/// clients' last byte).
async fn wait_objects(bucket: &AmazonS3, digests: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in digests {
        loop {
            if bucket.head(&key(d)).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "{d} never reached the bucket");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits up to 10 s for a metric to reach `want` (it is counted just after the effect the
/// test saw), then asserts it equals `want`.
async fn wait_metric(edge: &Edge, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.metric(series).await < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(edge.metric(series).await, want, "{series}");
}

/// A bucket of its own on the file's cluster, its `[storage.shared]` section, and a
/// registry:2 holding `team/app:v1` with layers of these sizes.
struct Setup {
    bucket: AmazonS3,
    shared: String,
    reg: Registry2,
    image: PushedImage,
}

async fn setup(bucket: &str, seed: u64, layer_sizes: &[usize]) -> Setup {
    let ceph = ceph();
    let s3 = ceph.bucket(bucket);
    let shared = ceph.shared_section(bucket);
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Oci,
        seed,
        "amd64",
        layer_sizes,
    )
    .await;
    Setup {
        bucket: s3,
        shared,
        reg,
        image,
    }
}

/// GET `path` on the edge: (status, body).
async fn get_text(client: &reqwest::Client, edge: &Edge, path: &str) -> (u16, String) {
    let r = client.get(edge.url(path)).send().await.expect(path);
    let status = r.status().as_u16();
    (status, r.text().await.expect(path))
}

fn config(reg_url: &str, listen: &str, data: &str, extra: &str) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"{listen}\"]\nhostname = \"edge.test\"\n[storage]\npath = \"{data}\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"0\"\n\
         [[upstream]]\nname = \"registry.test:5000\"\nurl = \"{reg_url}\"\ndefault = true\nconnect_timeout = \"2s\"\nread_timeout = \"2s\"\n{extra}"
    )
}

fn route(edge: &Edge) -> Route {
    Route {
        name: "edge",
        template: format!(
            "http://{}/v2/registry.test:5000/team/app/{{rest}}",
            edge.http[0]
        ),
        host: None,
    }
}

fn blob_gets(reg: &Registry2) -> usize {
    reg.count_requests("GET", "/blobs/sha256:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_filled_by_one_edge_is_served_by_another_and_after_a_lost_disk() {
    let Setup {
        bucket,
        shared,
        mut reg,
        image,
    } = setup("two-edges", 7, &[3 << 20, 12 << 20]).await;
    let digests: Vec<String> = image.blobs.iter().map(|(d, _)| d.clone()).collect();
    let client = reqwest::Client::new();

    let a = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    pull(&client, &route(&a), "v1").await;
    // The config and the 3 MiB layer in one GET each, the 12 MiB layer as its 4 MiB first
    // piece and the rest (in one request, or two 8 MiB-sized pieces when the first answer
    // took 10 ms or more on a busy box): every byte once.
    let after_a = reg.wait_requests("GET", "/blobs/sha256:", 4).await;
    assert!(
        (4..=5).contains(&after_a),
        "edge A fetched config and two layers once each: {after_a} blob GETs"
    );
    assert_eq!(
        reg.bytes_served("GET", "/blobs/sha256:"),
        image.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
        "edge A fetched every byte once"
    );
    wait_objects(&bucket, &digests).await;
    // The 12 MiB layer went up as a multipart upload, the others with one PUT; all complete.
    for (d, bytes) in &image.blobs {
        let meta = bucket.head(&key(d)).await.expect("object");
        assert_eq!(meta.size, bytes.len() as u64, "{d}");
    }
    wait_metric(
        &a,
        "sparkcr_edge_shared_uploads_total{outcome=\"completed\"}",
        3.0,
    )
    .await;

    // Edge B, empty local store: every blob from the bucket, none from the upstream.
    let b = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    pull(&client, &route(&b), "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blob_gets(&reg), after_a, "edge B sent no blob GET upstream");
    assert_eq!(
        b.metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await,
        3.0
    );
    assert!(
        b.metric("sparkcr_edge_shared_bytes_total{direction=\"read\"}")
            .await
            >= (15 << 20) as f64
    );
    // B does not upload what it read from the tier.
    b.wait_fills_settled().await;
    assert_eq!(
        b.metric("sparkcr_edge_shared_uploads_total{outcome=\"completed\"}")
            .await,
        0.0
    );
    // A second pull through B is a local hit.
    pull(&client, &route(&b), "v1").await;
    assert_eq!(
        b.metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await,
        3.0
    );

    // Edge A loses its data directory and restarts: served again from the bucket.
    let a_dir = a.dir.path().to_path_buf();
    let a_config = std::fs::read_to_string(a_dir.join("config.toml")).expect("A's config");
    drop(a);
    let a2 = Edge::start(&a_config);
    pull(&client, &route(&a2), "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        blob_gets(&reg),
        after_a,
        "restarted edge A sent no blob GET upstream"
    );
    assert_eq!(
        a2.metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await,
        3.0
    );

    // No upstream at all: a fresh edge still serves the image by digest from the bucket
    // (manifest and blobs).
    reg.stop();
    let c = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    let pulled = pull(&client, &route(&c), &image.manifest_digest).await;
    assert_eq!(pulled[0].blob_digests, digests);
    assert_eq!(
        c.metric("sparkcr_edge_shared_lookups_total{kind=\"manifest\",outcome=\"hit\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_clients_on_two_edges_cost_one_origin_get() {
    let Setup {
        bucket: _bucket,
        shared,
        reg,
        image,
    } = setup("one-flight", 8, &[24 << 20]).await;
    let (layer, bytes) = image.blobs[1].clone();
    let (pa, pb) = (free_port(), free_port());
    let peers = format!("\"http://127.0.0.1:{pa}\", \"http://127.0.0.1:{pb}\"");
    // Both edges require a token; the peers send theirs ([cluster] token).
    let (secret, token_block) = create_token("cluster", "pull:public");
    let cluster = |me: u16| {
        format!("{shared}[cluster]\npeers = [{peers}]\nself_url = \"http://127.0.0.1:{me}\"\npeer_timeout = \"5s\"\ntoken = \"{secret}\"\n[auth]\nanonymous = false\n{token_block}\n")
    };
    let a = Edge::start(&config(
        &reg.url(),
        &format!("127.0.0.1:{pa}"),
        "{dir}/data",
        &cluster(pa),
    ));
    let b = Edge::start(&config(
        &reg.url(),
        &format!("127.0.0.1:{pb}"),
        "{dir}/data",
        &cluster(pb),
    ));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = route(if i % 2 == 0 { &a } else { &b }).url(&format!("blobs/{layer}"));
        let (client, secret) = (client.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .get(&url)
                .basic_auth("client", Some(&secret))
                .send()
                .await
                .expect("blob request");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("blob body")
        }));
    }
    for t in tasks {
        let body = t.await.expect("client task");
        assert!(body == bytes[..], "every client got the blob's bytes");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reg.bytes_served("GET", &format!("/blobs/{layer}")),
        bytes.len() as u64,
        "16 cold clients over two edges: the origin sent the layer once (as ranged pieces)"
    );
    let peer_fills = a
        .metric("sparkcr_edge_peer_fills_total{outcome=\"filled\"}")
        .await
        + b.metric("sparkcr_edge_peer_fills_total{outcome=\"filled\"}")
            .await
        + a.metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await
        + b.metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await;
    assert!(
        peer_fills >= 1.0,
        "the non-owner filled from the owner (or the bucket)"
    );
    assert_eq!(
        a.metric("sparkcr_edge_peer_fills_total{outcome=\"fallback\"}")
            .await
            + b.metric("sparkcr_edge_peer_fills_total{outcome=\"fallback\"}")
                .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_object_is_never_served_and_is_fetched_again() {
    let Setup {
        bucket,
        shared,
        reg,
        image,
    } = setup("corrupt", 9, &[2 << 20]).await;
    let (layer, bytes) = image.blobs[1].clone();
    let client = reqwest::Client::new();
    let a = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    get_blob(&client, &route(&a), &layer).await;
    wait_objects(&bucket, std::slice::from_ref(&layer)).await;
    // Behind the edges' back: same length, one byte flipped.
    let mut wrong = bytes.clone();
    wrong[bytes.len() / 2] ^= 0xff;
    bucket
        .put(&key(&layer), PutPayload::from(wrong))
        .await
        .expect("overwrite the object");
    let gets_before = reg.count_requests("GET", &format!("/blobs/{layer}"));

    let b = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    let url = route(&b).url(&format!("blobs/{layer}"));
    let first = match client.get(&url).send().await {
        Ok(r) => r.bytes().await.map(|b| b.to_vec()),
        Err(e) => Err(e),
    };
    if let Ok(body) = &first {
        assert!(
            *body == bytes,
            "a body that completes is the right one, never the corrupt copy"
        );
    }
    // The corrupt object is deleted, then written through again from the upstream.
    b.wait_for_log("does not match its digest").await;
    assert_eq!(b.metric("sparkcr_edge_shared_corrupt_total").await, 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(bucket.head(&key(&layer)).await, Ok(meta) if meta.size == bytes.len() as u64) {
        // Deleted right after the log line (and not written back before a new fill).
        assert!(
            Instant::now() < deadline,
            "the corrupt object was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = client
        .get(&url)
        .send()
        .await
        .expect("second request")
        .bytes()
        .await
        .expect("second body");
    assert!(body == bytes[..], "fetched again from the upstream");
    assert!(reg.count_requests("GET", &format!("/blobs/{layer}")) > gets_before);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(got) = bucket.get(&key(&layer)).await {
            if let Ok(b) = got.bytes().await {
                if b == bytes[..] {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bucket never got the right bytes back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_broken_beyond_resume_leaves_no_object() {
    let ceph = ceph();
    let bucket = ceph.bucket("aborted");
    let shared = ceph.shared_section("aborted");
    let up = FakeUpstream::start().await;
    // 20 MiB, broken after 18 MiB: two parts were uploaded before the fill gave up.
    let bytes = pseudo_random(42, 20 << 20);
    let digest = up.add_blob_with(bytes, Faults::none().cut_at(18 << 20));
    let edge = Edge::start(&config(&up.url(), "127.0.0.1:0", "{dir}/data", &shared));
    let url = format!(
        "http://{}/v2/registry.test:5000/team/app/blobs/{digest}",
        edge.http[0]
    );
    let client = reqwest::Client::new();
    let got = match client.get(&url).send().await {
        Ok(r) => r.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    assert!(got.is_err(), "the client's response was aborted: {got:?}");
    edge.wait_for_log("blob fill failed").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge
        .metric("sparkcr_edge_shared_uploads_total{outcome=\"aborted\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "the upload was never aborted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(
            bucket.head(&key(&digest)).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "no object for a fill that failed"
    );
    assert_eq!(
        edge.metric("sparkcr_edge_shared_uploads_total{outcome=\"completed\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_keep_working_with_radosgw_stopped_and_readyz_says_so() {
    // A cluster of its own: this test stops radosgw.
    let ceph = Ceph::start();
    let bucket = ceph.bucket("down");
    let shared = ceph.shared_section("down");
    let reg = Registry2::start();
    let one = push_image(
        &reg,
        "team/app",
        Some("one"),
        Format::Oci,
        10,
        "amd64",
        &[1 << 20],
    )
    .await;
    let two = push_image(
        &reg,
        "team/app",
        Some("two"),
        Format::Oci,
        11,
        "amd64",
        &[1 << 20],
    )
    .await;
    let client = reqwest::Client::new();
    let edge = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    pull(&client, &route(&edge), "one").await;
    let digests: Vec<String> = one.blobs.iter().map(|(d, _)| d.clone()).collect();
    wait_objects(&bucket, &digests).await;
    let (_, readyz) = get_text(&client, &edge, "/readyz").await;
    assert!(!readyz.contains("shared tier"), "{readyz}");

    ceph.script(&["stop-rgw"]);
    let started = Instant::now();
    pull(&client, &route(&edge), "two").await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the pull did not wait long on the tier: {:?}",
        started.elapsed()
    );
    let (code, readyz) = get_text(&client, &edge, "/readyz").await;
    assert_eq!(code, 200, "still ready: pulls work");
    assert!(
        readyz.contains("shared tier") && readyz.contains("down"),
        "{readyz}"
    );
    assert_eq!(edge.metric("sparkcr_edge_shared_up").await, 0.0);
    let (_, status) = get_text(&client, &edge, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert!(
        status["warnings"].to_string().contains("shared tier"),
        "{status}"
    );
    // Found by the first lookup (or by the probe, if it ran first).
    let errors = edge
        .metric("sparkcr_edge_shared_errors_total{op=\"get\"}")
        .await
        + edge
            .metric("sparkcr_edge_shared_errors_total{op=\"probe\"}")
            .await;
    assert!(errors >= 1.0, "{errors}");
    assert!(edge.log_text().contains("shared tier failed"));
    for (d, _) in &two.blobs {
        assert!(
            reg.count_requests("GET", &format!("/blobs/{d}")) == 1,
            "{d} came from the upstream"
        );
    }

    // Back: the probe notices within seconds.
    ceph.script(&["start-rgw"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.metric("sparkcr_edge_shared_up").await != 1.0 {
        assert!(Instant::now() < deadline, "the tier never came back up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, readyz) = get_text(&client, &edge, "/readyz").await;
    assert!(!readyz.contains("shared tier"), "{readyz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_does_not_answer_costs_a_fallback_not_a_failure() {
    let Setup {
        bucket: _bucket,
        shared,
        reg,
        image,
    } = setup("dead-owner", 12, &[1 << 20]).await;
    let layer = image.blobs[1].0.clone();
    let digest: sparkcr_edge::oci::Digest = layer.parse().expect("digest");
    // Nothing listens on the other peer's port; pick ports so that it owns the layer.
    let (me, dead) = loop {
        let (me, dead) = (free_port(), free_port());
        let peers = vec![
            format!("http://127.0.0.1:{me}"),
            format!("http://127.0.0.1:{dead}"),
        ];
        if sparkcr_edge::shared::peers::owner(&peers, &digest) == Some(peers[1].as_str()) {
            break (me, dead);
        }
    };
    let cluster = format!(
        "{shared}[cluster]\npeers = [\"http://127.0.0.1:{me}\", \"http://127.0.0.1:{dead}\"]\nself_url = \"http://127.0.0.1:{me}\"\npeer_timeout = \"2s\"\n"
    );
    let edge = Edge::start(&config(
        &reg.url(),
        &format!("127.0.0.1:{me}"),
        "{dir}/data",
        &cluster,
    ));
    let client = reqwest::Client::new();
    let started = Instant::now();
    get_blob(&client, &route(&edge), &layer).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        edge.metric("sparkcr_edge_peer_fills_total{outcome=\"fallback\"}")
            .await,
        1.0
    );
    assert_eq!(reg.count_requests("GET", &format!("/blobs/{layer}")), 1);
    assert!(edge
        .log_text()
        .contains("the owning peer did not serve the blob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_missed_while_radosgw_was_stopped_are_caught_up_only_if_configured() {
    // A cluster of its own: this test stops radosgw.
    let ceph = Ceph::start();
    let bucket = ceph.bucket("catch-up");
    let shared = ceph.shared_section("catch-up");
    let reg = Registry2::start();
    // `one` (a 12 MiB layer: a multipart upload) through an edge with catch_up = true,
    // `two` through one with the default.
    let one = push_image(
        &reg,
        "team/app",
        Some("one"),
        Format::Oci,
        13,
        "amd64",
        &[12 << 20],
    )
    .await;
    let two = push_image(
        &reg,
        "team/app",
        Some("two"),
        Format::Oci,
        14,
        "amd64",
        &[1 << 20],
    )
    .await;
    let client = reqwest::Client::new();
    let catching_up = Edge::start(&config(
        &reg.url(),
        "127.0.0.1:0",
        "{dir}/data",
        &format!("{shared}catch_up = true\n"),
    ));
    let default = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));

    ceph.script(&["stop-rgw"]);
    pull(&client, &route(&catching_up), "one").await;
    pull(&client, &route(&default), "two").await;
    // Config, layer and manifest remembered (blobs once stored locally); nothing by the
    // default edge.
    wait_metric(&catching_up, "sparkcr_edge_shared_catch_up_pending", 3.0).await;
    assert_eq!(
        default.metric("sparkcr_edge_shared_catch_up_pending").await,
        0.0
    );
    assert_eq!(catching_up.metric("sparkcr_edge_shared_up").await, 0.0);

    ceph.script(&["start-rgw"]);
    // The probe (every 5 s) finds the tier again; the pass uploads from the local store.
    let deadline = Instant::now() + Duration::from_secs(20);
    while catching_up
        .metric("sparkcr_edge_shared_catch_up_total{outcome=\"uploaded\"}")
        .await
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "the missed writes were never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        catching_up
            .metric("sparkcr_edge_shared_catch_up_pending")
            .await,
        0.0
    );
    for outcome in ["skipped", "dropped", "failed"] {
        assert_eq!(
            catching_up
                .metric(&format!(
                    "sparkcr_edge_shared_catch_up_total{{outcome=\"{outcome}\"}}"
                ))
                .await,
            0.0,
            "{outcome}"
        );
    }
    catching_up
        .wait_for_log("shared tier: catch-up pass ended")
        .await;
    // The exact bytes, under the keys any edge looks up.
    for (d, bytes) in &one.blobs {
        let got = bucket
            .get(&key(d))
            .await
            .expect("caught-up object")
            .bytes()
            .await
            .expect("object bytes");
        assert_eq!(got.len(), bytes.len(), "{d}");
        assert_eq!(sparkcr_edge::oci::Digest::of(&got).to_string(), *d);
    }
    let manifest_hex = one
        .manifest_digest
        .strip_prefix("sha256:")
        .expect("sha256 digest");
    let got = bucket
        .get(&ObjectPath::from(format!(
            "site/manifests/sha256/{manifest_hex}"
        )))
        .await
        .expect("caught-up manifest")
        .bytes()
        .await
        .expect("manifest bytes");
    assert!(got == one.manifest[..]);
    // The default edge's missed writes stay missed (its tier is up again too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while default.metric("sparkcr_edge_shared_up").await != 1.0 {
        assert!(Instant::now() < deadline, "the tier never came back up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (d, _) in &two.blobs {
        assert!(
            matches!(
                bucket.head(&key(d)).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "{d} was not caught up without catch_up"
        );
    }

    // A fresh edge serves `one` by digest from the bucket: no upstream blob GET.
    let gets = blob_gets(&reg);
    let fresh = Edge::start(&config(&reg.url(), "127.0.0.1:0", "{dir}/data", &shared));
    let pulled = pull(&client, &route(&fresh), &one.manifest_digest).await;
    let digests: Vec<String> = one.blobs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(pulled[0].blob_digests, digests);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        blob_gets(&reg),
        gets,
        "the fresh edge sent no blob GET upstream"
    );
    assert_eq!(
        fresh
            .metric("sparkcr_edge_shared_lookups_total{kind=\"blob\",outcome=\"hit\"}")
            .await,
        2.0
    );
    assert_eq!(
        fresh
            .metric("sparkcr_edge_shared_lookups_total{kind=\"manifest\",outcome=\"hit\"}")
            .await,
        1.0
    );
}
