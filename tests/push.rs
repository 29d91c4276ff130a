//! Pushes through the edge to a private upstream (issue 11), with real parts: Debian's
//! registry:2 with htpasswd as the private upstream (`push = true`), skopeo pushing a
//! multi-layer image and an OCI index with a `push` token, the upstream's content checked
//! byte for byte, then a fresh client pulling through the edge while the upstream's access
//! log shows no blob GET (write-through). Refusals: no token, a pull-only token, a public
//! route, a wrong digest, a blob over `push.max_upload_size`, too many uploads for one
//! token; a client killed mid-upload and an abandoned session leave nothing visible and
//! the upstream session is cancelled within `push.session_timeout`.

mod common;
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const UP: &str = "lan.test:5000";

struct Setup {
    edge: Edge,
    up: Registry2,
    push_secret: String,
    pull_secret: String,
    /// A second token with `push`.
    other_push_secret: String,
}

/// An edge with the private upstream `lan.test:5000` (path alias `lan`, `push = true`)
/// in front of registry:2 with htpasswd, a public `docker.io` route, and two tokens.
fn setup(push_section: &str) -> Setup {
    let up = Registry2::start_with(Some(("pusher", "s3cret")));
    let (push_secret, push_block) = create_token("ci", "push");
    let (pull_secret, pull_block) = create_token("lan", "pull:private");
    let (other_push_secret, other_block) = create_token("dev", "push");
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"1h\"\n\
         [auth]\nanonymous = false\n{push_block}\n{pull_block}\n{other_block}\n{push_section}\n\
         [[upstream]]\nname = \"{UP}\"\nurl = \"{}\"\npath_aliases = [\"lan\"]\naliases = [\"lan\"]\nusername = \"pusher\"\npassword = \"s3cret\"\nprivate = true\npush = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
        up.url()
    );
    let edge = Edge::start(&config);
    Setup {
        edge,
        up,
        push_secret,
        pull_secret,
        other_push_secret,
    }
}

fn client(secret: &str) -> reqwest::Client {
    use base64::Engine as _;
    let mut headers = reqwest::header::HeaderMap::new();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("someone:{secret}"));
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {basic}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// GET from the upstream directly (with its htpasswd credentials).
async fn upstream_get(up: &Registry2, path: &str, accept: Option<&str>) -> (u16, Vec<u8>) {
    let mut rb = reqwest::Client::new()
        .get(format!("{}{path}", up.url()))
        .basic_auth("pusher", Some("s3cret"));
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let r = rb.send().await.expect("upstream GET");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

/// registry:2's upload sessions in progress for `repo`: directories under `_uploads` with
/// their `startedat` file (registry:2 removes it on cancel, and may write a last hash state
/// into the emptied directory while it closes the request; its purge removes that later).
fn upstream_sessions(up: &Registry2, repo: &str) -> usize {
    let dir: PathBuf = up
        .root
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_uploads");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("startedat").exists())
                .count()
        })
        .unwrap_or(0)
}

/// What is under the upstream's repositories (for failure messages).
fn uploads_listing(up: &Registry2) -> String {
    let out = std::process::Command::new("find")
        .arg(up.root.join("docker/registry/v2/repositories"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains("_uploads"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn skopeo_push(src: &str, dest: &str, secret: &str, extra: &[&str]) {
    let creds = format!("ci:{secret}");
    let mut args = vec![
        "--command-timeout",
        "120s",
        "copy",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
    ];
    args.extend_from_slice(extra);
    args.push(src);
    args.push(dest);
    let (ok, log) = skopeo(&args);
    assert!(ok, "skopeo copy {src} {dest}: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_through_the_edge_and_the_first_pull_is_a_hit() {
    let src = Registry2::start();
    let img = push_image(
        &src,
        "team/app",
        Some("v1"),
        Format::Oci,
        41,
        "amd64",
        &[300_000, 2_500_000, 40_000],
    )
    .await;
    let (index, children) = push_multi_platform(&src, "team/multi", "v1", Format::Oci, 51).await;
    let s = setup("");
    let e = s.edge.http[0];

    // A multi-layer image, and an OCI index with its two children (`--all`).
    skopeo_push(
        &format!("docker://{}/team/app:v1", src.host()),
        &format!("docker://{e}/lan/team/app:v1"),
        &s.push_secret,
        &[],
    );
    skopeo_push(
        &format!("docker://{}/team/multi:v1", src.host()),
        &format!("docker://{e}/lan/team/multi:v1"),
        &s.push_secret,
        &["--all"],
    );

    // On the upstream, byte for byte.
    let (status, m) = upstream_get(&s.up, "/v2/team/app/manifests/v1", Some(OCI_MANIFEST)).await;
    assert_eq!(status, 200);
    assert_eq!(m, img.manifest, "the manifest arrived byte-exact");
    for (d, bytes) in &img.blobs {
        let (status, got) = upstream_get(&s.up, &format!("/v2/team/app/blobs/{d}"), None).await;
        assert_eq!(status, 200, "{d}");
        assert!(got == *bytes, "blob {d} arrived byte-exact");
    }
    let (status, m) = upstream_get(&s.up, "/v2/team/multi/manifests/v1", Some(OCI_INDEX)).await;
    assert_eq!(status, 200);
    assert_eq!(m, index.manifest, "the index arrived byte-exact");
    for child in &children {
        for (d, bytes) in &child.blobs {
            let (_, got) = upstream_get(&s.up, &format!("/v2/team/multi/blobs/{d}"), None).await;
            assert!(got == *bytes, "child blob {d} arrived byte-exact");
        }
    }
    // The checks above are blob GETs of our own: wait until registry:2 logged them all.
    let ours = img.blobs.len() + children.iter().map(|c| c.blobs.len()).sum::<usize>();
    let upstream_blob_gets = s.up.wait_requests("GET", "/blobs/", ours).await;
    assert_eq!(upstream_blob_gets, ours, "{}", s.up.log_text());

    // A fresh client with a pull token: everything from the edge's store.
    let puller = client(&s.pull_secret);
    for (repo, want) in [
        ("team/app", vec![img.manifest_digest.clone()]),
        (
            "team/multi",
            children
                .iter()
                .map(|c| c.manifest_digest.clone())
                .chain([index.manifest_digest.clone()])
                .collect(),
        ),
    ] {
        let route = Route {
            name: "push",
            template: format!("http://{e}/v2/lan/{repo}/{{rest}}"),
            host: None,
        };
        let pulled = pull(&puller, &route, "v1").await;
        let got: Vec<String> = pulled.iter().map(|p| p.manifest_digest.clone()).collect();
        assert_eq!(got, want, "{repo}");
        for p in &pulled {
            for b in &p.blob_digests {
                let r = puller
                    .head(route.url(&format!("blobs/{b}")))
                    .send()
                    .await
                    .expect("HEAD");
                assert_eq!(r.headers()["x-cache"], "HIT", "{repo} {b} written through");
            }
        }
    }
    // (registry:2 logs each request as it ends; give a late line time to arrive.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.up.count_requests("GET", "/blobs/"),
        upstream_blob_gets,
        "no blob GET reached the upstream: the first pull was a hit\n{}",
        s.up.log_text()
    );
    let pushed = s
        .edge
        .metric(&format!(
            "sparkcr_edge_push_bytes_total{{upstream=\"{UP}\"}}"
        ))
        .await;
    let expected: usize = img.blobs.iter().map(|(_, b)| b.len()).sum();
    assert!(
        pushed >= expected as f64,
        "pushed {pushed} bytes, want ≥ {expected}"
    );
    assert!(
        s.edge
            .metric("sparkcr_edge_pushes_completed_total{kind=\"manifest\"}")
            .await
            >= 4.0
    );
    assert_eq!(s.edge.metric("sparkcr_edge_uploads_in_progress").await, 0.0);

    // Again with the client's chunking changed: recompressed layers of unknown length
    // (chunked request bodies) into another repository.
    skopeo_push(
        &format!("docker://{}/team/app:v1", src.host()),
        &format!("docker://{e}/lan/team/app-zstd:v1"),
        &s.push_secret,
        &["--dest-compress-format", "zstd", "--dest-compress"],
    );
    let route = Route {
        name: "push",
        template: format!("http://{e}/v2/lan/team/app-zstd/{{rest}}"),
        host: None,
    };
    let before = s.up.count_requests("GET", "/blobs/");
    let pulled = pull(&puller, &route, "v1").await;
    assert_eq!(pulled[0].blob_digests.len(), img.blobs.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.up.count_requests("GET", "/blobs/"), before);
}

/// A raw request to the edge: status, headers, body.
async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut rb = c.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().await.expect("text"))
}

/// [`send`], asserting the status (the body is in the message): headers, body.
async fn send_expecting(
    status: u16,
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> (reqwest::header::HeaderMap, String) {
    let (got, h, text) = send(c, method.clone(), url, headers, body).await;
    assert_eq!(got, status, "{method} {url}: {text}");
    (h, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_refusals() {
    let s = setup(
        "[push]\nmax_upload_size = \"1MiB\"\nsession_timeout = \"2s\"\nmax_uploads_per_token = 2\n",
    );
    let e = s.edge.http[0];
    let base = format!("http://{e}/v2/lan/team/x");
    let pusher = client(&s.push_secret);
    let puller = client(&s.pull_secret);
    let post = reqwest::Method::POST;

    // No token: 401 with a push challenge; a pull-only token: 403; neither reaches the
    // upstream.
    let (status, h, _) = send(
        &reqwest::Client::new(),
        post.clone(),
        &format!("{base}/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let challenge = h["www-authenticate"].to_str().expect("challenge");
    assert!(
        challenge.contains("repository:lan.test:5000/team/x:pull,push"),
        "{challenge}"
    );
    let (_, body) = send_expecting(
        403,
        &puller,
        post.clone(),
        &format!("{base}/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    assert!(body.contains("DENIED") && body.contains("push"), "{body}");
    assert_eq!(s.up.count_requests("POST", "/blobs/uploads"), 0);

    // A public route: 405 UNSUPPORTED, as before.
    for url in [
        format!("http://{e}/v2/library/alpine/blobs/uploads/"),
        format!("http://{e}/v2/docker.io/library/alpine/blobs/uploads/"),
    ] {
        let (status, _, body) = send(&pusher, post.clone(), &url, &[], None).await;
        assert_eq!(status, 405, "{url}: {body}");
        assert!(body.contains("UNSUPPORTED"), "{body}");
    }
    let (status, _, _) = send(
        &pusher,
        reqwest::Method::PUT,
        &format!("http://{e}/v2/library/alpine/manifests/v1"),
        &[("content-type", OCI_MANIFEST.to_string())],
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 405);

    // Chunked: POST, two PATCHes with Content-Range, PUT with the last chunk.
    let blob = pseudo_random(7, 300_000);
    let digest = sha256_digest(&blob);
    let (h, _) = send_expecting(
        202,
        &pusher,
        post.clone(),
        &format!("{base}/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    assert!(loc.starts_with("/v2/lan/team/x/blobs/uploads/"), "{loc}");
    assert_eq!(h["range"], "0-0");
    let (h, _) = send_expecting(
        202,
        &pusher,
        reqwest::Method::PATCH,
        &format!("http://{e}{loc}"),
        &[
            ("content-range", "0-99999".into()),
            ("content-type", "application/octet-stream".into()),
        ],
        Some(blob[..100_000].to_vec()),
    )
    .await;
    assert_eq!(h["range"], "0-99999");
    let loc = h["location"].to_str().expect("location").to_string();
    // Another token, even one that may push, cannot touch this session.
    let (_, body) = send_expecting(
        404,
        &client(&s.other_push_secret),
        reqwest::Method::PATCH,
        &format!("http://{e}{loc}"),
        &[],
        Some(vec![1; 10]),
    )
    .await;
    assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}");
    // Out of order: 416, and the session goes on.
    send_expecting(
        416,
        &pusher,
        reqwest::Method::PATCH,
        &format!("http://{e}{loc}"),
        &[("content-range", "5-9".into())],
        Some(vec![0; 5]),
    )
    .await;
    let (h, _) = send_expecting(
        202,
        &pusher,
        reqwest::Method::PATCH,
        &format!("http://{e}{loc}"),
        &[("content-range", "100000-199999".into())],
        Some(blob[100_000..200_000].to_vec()),
    )
    .await;
    assert_eq!(h["range"], "0-199999");
    let (status, h, _) = send(
        &pusher,
        reqwest::Method::GET,
        &format!("http://{e}{loc}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(h["range"], "0-199999");
    let (h, _) = send_expecting(
        201,
        &pusher,
        reqwest::Method::PUT,
        &format!("http://{e}{loc}?digest={digest}"),
        &[],
        Some(blob[200_000..].to_vec()),
    )
    .await;
    assert_eq!(h["docker-content-digest"], digest.as_str());
    assert_eq!(
        h["location"].to_str().expect("location"),
        format!("/v2/lan/team/x/blobs/{digest}")
    );
    let (status, got) = upstream_get(&s.up, &format!("/v2/team/x/blobs/{digest}"), None).await;
    assert_eq!(status, 200);
    assert!(
        got == blob,
        "the chunked blob is on the upstream byte-exact"
    );
    let r = puller
        .get(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert!(r.bytes().await.expect("body") == blob);
    // The pusher's HEAD asks the upstream repository (not the edge's store).
    let r = pusher
        .head(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 200);
    let r = pusher
        .head(format!("http://{e}/v2/lan/team/other/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(
        r.status(),
        404,
        "another repository does not have it upstream"
    );
    // A mount whose `from` routes to another upstream (here `team/x` alone names the
    // default upstream, docker.io): no mount, a normal upload session (202).
    let (h, _) = send_expecting(
        202,
        &pusher,
        post.clone(),
        &format!("http://{e}/v2/lan/team/other/blobs/uploads/?mount={digest}&from=team/x"),
        &[],
        None,
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    send_expecting(
        204,
        &pusher,
        reqwest::Method::DELETE,
        &format!("http://{e}{loc}"),
        &[],
        None,
    )
    .await;
    // Mount into another repository, `from` named as the client names it (the path
    // alias, as docker and skopeo send it): the upstream links it (201).
    let (h, _) = send_expecting(
        201,
        &pusher,
        post.clone(),
        &format!("http://{e}/v2/lan/team/other/blobs/uploads/?mount={digest}&from=lan/team/x"),
        &[],
        None,
    )
    .await;
    assert_eq!(h["docker-content-digest"], digest.as_str());
    let (status, _) = upstream_get(&s.up, &format!("/v2/team/other/blobs/{digest}"), None).await;
    assert_eq!(status, 200);

    // A wrong digest, monolithic: 400 DIGEST_INVALID, nothing stored anywhere.
    let bytes = pseudo_random(8, 50_000);
    let wrong = sha256_digest(b"something else");
    let (_, body) = send_expecting(
        400,
        &pusher,
        post.clone(),
        &format!("{base}/blobs/uploads/?digest={wrong}"),
        &[],
        Some(bytes.clone()),
    )
    .await;
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    for d in [&wrong, &sha256_digest(&bytes)] {
        let (status, _) = upstream_get(&s.up, &format!("/v2/team/x/blobs/{d}"), None).await;
        assert_eq!(status, 404, "{d} is not on the upstream");
        let r = puller
            .head(format!("{base}/blobs/{d}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(r.status(), 404, "{d} is not in the edge");
    }
    assert!(
        wait_until(Duration::from_secs(5), || upstream_sessions(
            &s.up, "team/x"
        ) == 0)
        .await,
        "the upstream session of the refused blob was cancelled: {}",
        uploads_listing(&s.up)
    );
    // A right monolithic upload.
    let good = sha256_digest(&bytes);
    send_expecting(
        201,
        &pusher,
        post.clone(),
        &format!("{base}/blobs/uploads/?digest={good}"),
        &[],
        Some(bytes.clone()),
    )
    .await;
    let (_, got) = upstream_get(&s.up, &format!("/v2/team/x/blobs/{good}"), None).await;
    assert!(got == bytes);
    // Written through while it arrived (monolithic: straight into a store fill).
    let r = puller
        .get(format!("{base}/blobs/{good}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert!(r.bytes().await.expect("body") == bytes);

    // The other routing forms: `?ns=` (containerd) and the alias host; session URLs keep
    // the client's form.
    let blob = pseudo_random(10, 20_000);
    let d = sha256_digest(&blob);
    let (h, _) = send_expecting(
        202,
        &pusher,
        post.clone(),
        &format!("http://{e}/v2/team/ns/blobs/uploads/?ns={UP}"),
        &[],
        None,
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    assert!(loc.ends_with(&format!("?ns={UP}")), "{loc}");
    send_expecting(
        201,
        &pusher,
        reqwest::Method::PUT,
        &format!("http://{e}{loc}&digest={d}"),
        &[],
        Some(blob.clone()),
    )
    .await;
    let (h, _) = send_expecting(
        201,
        &pusher,
        post.clone(),
        &format!("http://{e}/v2/team/alias/blobs/uploads/?digest={d}"),
        &[("host", "lan.edge.test".into())],
        Some(blob.clone()),
    )
    .await;
    assert_eq!(
        h["location"].to_str().expect("location"),
        format!("/v2/team/alias/blobs/{d}")
    );
    for repo in ["team/ns", "team/alias"] {
        let (status, got) = upstream_get(&s.up, &format!("/v2/{repo}/blobs/{d}"), None).await;
        assert_eq!(status, 200, "{repo}");
        assert!(got == blob, "{repo}");
    }
    // The closing PUT carried the whole blob: written through while it arrived.
    let r = puller
        .get(format!("http://{e}/v2/team/ns/blobs/{d}?ns={UP}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert!(r.bytes().await.expect("body") == blob);

    // Over push.max_upload_size: 413 SIZE_INVALID, nothing on the upstream.
    let big = pseudo_random(9, 1_200_000);
    let (_, body) = send_expecting(
        413,
        &pusher,
        post.clone(),
        &format!("{base}/blobs/uploads/?digest={}", sha256_digest(&big)),
        &[],
        Some(big.clone()),
    )
    .await;
    assert!(body.contains("SIZE_INVALID"), "{body}");
    let (status, _) = upstream_get(
        &s.up,
        &format!("/v2/team/x/blobs/{}", sha256_digest(&big)),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // A manifest whose bytes are not its digest: 400.
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let (_, body) = send_expecting(
        400,
        &pusher,
        reqwest::Method::PUT,
        &format!("{base}/manifests/{wrong}"),
        &[("content-type", OCI_MANIFEST.to_string())],
        Some(manifest.to_vec()),
    )
    .await;
    assert!(body.contains("DIGEST_INVALID"), "{body}");

    // Two sessions per token at most; abandoned ones expire (2 s) and are cancelled
    // upstream.
    assert!(
        wait_until(Duration::from_secs(5), || upstream_sessions(
            &s.up, "team/x"
        ) == 0)
        .await
    );
    for _ in 0..2 {
        send_expecting(
            202,
            &pusher,
            post.clone(),
            &format!("{base}/blobs/uploads/"),
            &[],
            None,
        )
        .await;
    }
    let (h, _) = send_expecting(
        429,
        &pusher,
        post.clone(),
        &format!("{base}/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    assert!(h.contains_key("retry-after"));
    assert_eq!(upstream_sessions(&s.up, "team/x"), 2);
    assert!(
        wait_until(Duration::from_secs(6), || upstream_sessions(
            &s.up, "team/x"
        ) == 0)
        .await,
        "expired sessions are cancelled upstream"
    );
    assert!(
        s.edge
            .metric("sparkcr_edge_push_failures_total{reason=\"expired\"}")
            .await
            >= 2.0
    );
    assert_eq!(s.edge.metric("sparkcr_edge_uploads_in_progress").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_upload_leaves_nothing() {
    let s = setup("[push]\nsession_timeout = \"2s\"\n");
    let e = s.edge.http[0];
    let pusher = client(&s.push_secret);
    let (h, _) = send_expecting(
        202,
        &pusher,
        reqwest::Method::POST,
        &format!("http://{e}/v2/lan/team/killed/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    assert_eq!(upstream_sessions(&s.up, "team/killed"), 1);
    let blob = pseudo_random(3, 4_000_000);
    let digest = sha256_digest(&blob);
    // A PATCH that promises 4 MB, sends 1 MB and dies.
    {
        use base64::Engine as _;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x:{}", s.push_secret));
        let mut sock = std::net::TcpStream::connect(e).expect("connect");
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {e}\r\nAuthorization: Basic {basic}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            blob.len()
        );
        sock.write_all(head.as_bytes()).expect("head");
        sock.write_all(&blob[..1_000_000]).expect("part");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        wait_until(Duration::from_secs(5), || upstream_sessions(
            &s.up,
            "team/killed"
        ) == 0)
        .await,
        "the upstream session was cancelled"
    );
    let (status, _) = upstream_get(&s.up, &format!("/v2/team/killed/blobs/{digest}"), None).await;
    assert_eq!(status, 404);
    let puller = client(&s.pull_secret);
    let r = puller
        .head(format!("http://{e}/v2/lan/team/killed/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 404, "no partial blob is visible");
    let r = pusher
        .put(format!("http://{e}{loc}?digest={digest}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 404, "the session is gone");
    assert!(r
        .text()
        .await
        .expect("text")
        .contains("BLOB_UPLOAD_UNKNOWN"));
    assert!(
        s.edge
            .metric("sparkcr_edge_push_failures_total{reason=\"client\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_token_auth_upstream_ask_for_the_push_scope() {
    let tokens = common::token::TokenServer::start("pusher", "tok-pass").await;
    let up = Registry2::start_with_token(&tokens.realm(), &tokens.cert_pem_path);
    let (push_secret, push_block) = create_token("ci", "push,pull:private");
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"1h\"\n\
         [auth]\nanonymous = false\n{push_block}\n\
         [[upstream]]\nname = \"tokens.test\"\nurl = \"{}\"\nusername = \"pusher\"\npassword = \"tok-pass\"\nprivate = true\npush = true\n",
        up.url()
    );
    let edge = Edge::start(&config);
    let e = edge.http[0];
    let c = client(&push_secret);
    let base = format!("http://{e}/v2/tokens.test/team/sealed");
    let layer = pseudo_random(21, 70_000);
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for b in [&layer, &config_blob] {
        let d = sha256_digest(b);
        send_expecting(
            201,
            &c,
            reqwest::Method::POST,
            &format!("{base}/blobs/uploads/?digest={d}"),
            &[],
            Some(b.to_vec()),
        )
        .await;
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config_blob), "size": config_blob.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&layer), "size": layer.len() }],
    }))
    .expect("json");
    let (h, _) = send_expecting(
        201,
        &c,
        reqwest::Method::PUT,
        &format!("{base}/manifests/v1"),
        &[("content-type", OCI_MANIFEST.to_string())],
        Some(manifest.clone()),
    )
    .await;
    assert_eq!(
        h["docker-content-digest"],
        sha256_digest(&manifest).as_str()
    );
    let asked: Vec<String> = tokens
        .requests
        .lock()
        .expect("lock")
        .iter()
        .map(|(q, _)| q.clone())
        .collect();
    // The scope's actions come in the upstream's challenge order (registry:2 says
    // `push,pull` for some requests and `pull,push` for others).
    assert!(
        asked.iter().any(|q| {
            q.contains("scope=repository%3Ateam%2Fsealed%3Apull%2Cpush")
                || q.contains("scope=repository%3Ateam%2Fsealed%3Apush%2Cpull")
        }),
        "{asked:?}"
    );
    // The upstream refuses a manifest naming a blob it does not have, with its own code.
    let bad = String::from_utf8(manifest)
        .expect("utf8")
        .replace(&sha256_digest(&layer), &sha256_digest(b"never pushed"));
    let (_, body) = send_expecting(
        400,
        &c,
        reqwest::Method::PUT,
        &format!("{base}/manifests/v2"),
        &[("content-type", OCI_MANIFEST.to_string())],
        Some(bad.into_bytes()),
    )
    .await;
    assert!(body.contains("MANIFEST_BLOB_UNKNOWN"), "{body}");
    // The pushed tag is in the edge: a pull by tag needs no upstream manifest request.
    let before = up.count_requests("GET", "/manifests/");
    let r = c
        .get(format!("{base}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.count_requests("GET", "/manifests/"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_cache_cannot_hold_still_reaches_the_upstream() {
    // A store of 4 MiB and a 6 MB session upload: the store fill runs out of budget
    // mid-upload, the push goes on, the upstream gets every byte, nothing is stored.
    let up = Registry2::start_with(Some(("pusher", "s3cret")));
    let (secret, block) = create_token("ci", "push,pull:private");
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"4MiB\"\nchunk_size = \"1MiB\"\n\
         [auth]\nanonymous = false\n{block}\n\
         [[upstream]]\nname = \"{UP}\"\nurl = \"{}\"\nusername = \"pusher\"\npassword = \"s3cret\"\nprivate = true\npush = true\n",
        up.url()
    );
    let edge = Edge::start(&config);
    let e = edge.http[0];
    let c = client(&secret);
    let blob = pseudo_random(33, 6_000_000);
    let d = sha256_digest(&blob);
    let (h, _) = send_expecting(
        202,
        &c,
        reqwest::Method::POST,
        &format!("http://{e}/v2/{UP}/team/big/blobs/uploads/"),
        &[],
        None,
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    let (h, _) = send_expecting(
        202,
        &c,
        reqwest::Method::PATCH,
        &format!("http://{e}{loc}"),
        &[("content-type", "application/octet-stream".into())],
        Some(blob.clone()),
    )
    .await;
    let loc = h["location"].to_str().expect("location").to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    send_expecting(
        201,
        &c,
        reqwest::Method::PUT,
        &format!("http://{e}{loc}{sep}digest={d}"),
        &[],
        None,
    )
    .await;
    let (status, got) = upstream_get(&up, &format!("/v2/team/big/blobs/{d}"), None).await;
    assert_eq!(status, 200);
    assert!(got == blob, "the upstream has every byte");
    // Not in the cache: a HEAD by this pusher asks the upstream, so look at the store's
    // gauge instead, and at a pull, which is a miss served from the upstream.
    assert!(edge.metric("sparkcr_edge_store_bytes").await <= (4 << 20) as f64);
    let r = c
        .get(format!("http://{e}/v2/{UP}/team/big/blobs/{d}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["x-cache"], "HIT");
    assert!(r.bytes().await.expect("body") == blob);
    assert!(
        edge.log_text()
            .contains("will not be written through to the cache"),
        "the edge says why the push was not kept"
    );
    assert_eq!(
        edge.metric("sparkcr_edge_push_failures_total{reason=\"store\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_announces_a_huge_size_evicts_nothing() {
    // #25 item 1: a push token holder announced `Content-Length` near the store's budget,
    // sent 16 bytes and got 413; the store had already reserved the announced size and
    // evicted every blob. Now nothing is reserved for bytes that have not arrived.
    let up = Registry2::start_with(Some(("pusher", "s3cret")));
    let (secret, block) = create_token("ci", "push,pull:private");
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"4MiB\"\nchunk_size = \"256KiB\"\n\
         [auth]\nanonymous = false\n{block}\n[push]\nmax_upload_size = \"1MiB\"\n\
         [[upstream]]\nname = \"{UP}\"\nurl = \"{}\"\nusername = \"pusher\"\npassword = \"s3cret\"\nprivate = true\npush = true\n",
        up.url()
    );
    let edge = Edge::start(&config);
    let e = edge.http[0];
    let c = client(&secret);
    // Three blobs written through to the cache: 2.7 MB of the 4 MiB budget.
    let mut kept = Vec::new();
    for seed in 0..3 {
        let blob = pseudo_random(70 + seed, 900_000);
        let d = sha256_digest(&blob);
        send_expecting(
            201,
            &c,
            reqwest::Method::POST,
            &format!("http://{e}/v2/{UP}/team/keep/blobs/uploads/?digest={d}"),
            &[],
            Some(blob.clone()),
        )
        .await;
        kept.push((d, blob));
    }
    let stored = edge.metric("sparkcr_edge_store_bytes").await;
    assert!(
        stored >= 2_700_000.0,
        "the pushed blobs are in the cache: {stored}"
    );

    // 3.5 MiB announced (within the budget, over max_upload_size), 16 bytes sent.
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("someone:{secret}"));
    let liar = sha256_digest(b"sixteen bytes!!!");
    let mut sock = tokio::net::TcpStream::connect(e).await.expect("connect");
    let head = format!(
        "POST /v2/{UP}/team/x/blobs/uploads/?digest={liar} HTTP/1.1\r\nHost: {e}\r\n\
         Authorization: Basic {basic}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\nsixteen bytes!!!",
        7 << 19
    );
    sock.write_all(head.as_bytes()).await.expect("send");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer))
        .await
        .expect("an answer without the rest of the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(sock);

    assert_eq!(edge.metric("sparkcr_edge_store_evictions_total").await, 0.0);
    assert_eq!(edge.metric("sparkcr_edge_store_bytes").await, stored);
    for (d, blob) in &kept {
        let r = c
            .get(format!("http://{e}/v2/{UP}/team/keep/blobs/{d}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.headers()["x-cache"], "HIT", "{d} is still cached");
        assert!(r.bytes().await.expect("body") == *blob);
    }
}
