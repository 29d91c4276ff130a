//! Two tiers: a child edge whose upstreams are a parent sparkcr-edge, which pulls from
//! Debian's `docker-registry` (registry:2). The child reaches the parent in both routing
//! forms (`url = "http://parent"` for the default upstream, `url =
//! "http://parent/<host>"` for others); skopeo and containerd's `ctr` pull through the
//! child; 32 clients on one cold blob, 16 on each edge, make exactly one GET at the origin.

mod common;
use common::containerd::*;
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use std::time::{Duration, Instant};

const LAN: &str = "registry.test";

fn parent_config(reg: &Registry2) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"parent.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"2GiB\"\nchunk_size = \"1MiB\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n\
         [[upstream]]\nname = \"{LAN}\"\nurl = \"{url}\"\n",
        url = reg.url()
    )
}

/// The child: docker.io through the parent's bare (registry-mirrors) form, the LAN
/// registry through the parent's `/<host>` path form.
fn child_config(parent: &Edge) -> String {
    let p = format!("http://{}", parent.http[0]);
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"child.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"2GiB\"\nchunk_size = \"1MiB\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{p}\"\ndefault = true\nread_timeout = \"30s\"\n\
         [[upstream]]\nname = \"{LAN}\"\nurl = \"{p}/{LAN}\"\nread_timeout = \"30s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_edge_through_parent_edge_every_form() {
    let reg = Registry2::start();
    let hub = push_image(
        &reg,
        "library/busybox",
        Some("v1"),
        Format::Oci,
        21,
        "amd64",
        &[50_000],
    )
    .await;
    let lan = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Docker,
        22,
        "amd64",
        &[60_000],
    )
    .await;
    let parent = Edge::start(&parent_config(&reg));
    let child = Edge::start(&child_config(&parent));
    let c = format!("http://{}", child.http[0]);
    let client = reqwest::Client::new();

    let bare = Route {
        name: "child: bare docker.io name",
        template: format!("{c}/v2/busybox/{{rest}}"),
        host: None,
    };
    let p = pull(&client, &bare, "v1").await;
    assert_eq!(p[0].manifest_digest, hub.manifest_digest);
    let path = Route {
        name: "child: /v2/<host>/repo",
        template: format!("{c}/v2/{LAN}/team/app/{{rest}}"),
        host: None,
    };
    let p = pull(&client, &path, "v1").await;
    assert_eq!(p[0].manifest_digest, lan.manifest_digest);
    // The parent filled from the origin; the child from the parent.
    for (d, _) in hub.blobs.iter().chain(&lan.blobs) {
        let n = reg.wait_requests("GET", &format!("/blobs/{d}"), 1).await;
        assert_eq!(n, 1, "{d}");
    }

    // skopeo through the child, in the registry-mirrors and path forms.
    let out = tempfile::tempdir().expect("tempdir");
    for (i, src) in [
        format!("docker://{}/library/busybox:v1", child.http[0]),
        format!("docker://{}/{LAN}/team/app:v1", child.http[0]),
    ]
    .iter()
    .enumerate()
    {
        let dest = format!("dir:{}", out.path().join(format!("s{i}")).display());
        let (ok, log) = skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--retry-times",
            "0",
            src,
            &dest,
        ]);
        assert!(ok, "skopeo copy {src}: {log}");
    }
    let m = std::fs::read(out.path().join("s0/manifest.json")).expect("skopeo manifest");
    assert_eq!(sha256_digest(&m), hub.manifest_digest);

    // containerd through the child, hosts.toml in the `/<host>` form. The real host does
    // not resolve: success proves the child (and through it the parent) served it.
    let Some(ctrd) = start_containerd() else {
        return;
    };
    let hosts = tempfile::tempdir().expect("hosts dir");
    std::fs::create_dir_all(hosts.path().join(LAN)).expect("mkdir");
    std::fs::write(
        hosts.path().join(LAN).join("hosts.toml"),
        format!(
            "server = \"https://{LAN}\"\n\n[host.\"http://{}/{LAN}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            child.http[0]
        ),
    )
    .expect("hosts.toml");
    let reference = format!("{LAN}/team/app:v1");
    let (ok, log) = ctr(
        &ctrd,
        &[
            "-n",
            "two-tier",
            "images",
            "pull",
            "--hosts-dir",
            hosts.path().to_str().expect("path"),
            "--snapshotter",
            "native",
            &reference,
        ],
    );
    assert!(ok, "ctr pull {reference} through the child: {log}");
    let (_, list) = ctr(&ctrd, &["-n", "two-tier", "images", "ls"]);
    assert!(list.contains(lan.manifest_digest.as_str()), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_over_two_tiers_the_origin_sends_the_blob_once() {
    let reg = Registry2::start();
    let blob = pseudo_random(78, 32 << 20);
    let digest = reg.push_blob("team/big", &blob).await;
    let parent = Edge::start(&parent_config(&reg));
    let child = Edge::start(&child_config(&parent));
    let urls = [
        format!("http://{}/v2/{LAN}/team/big/blobs/{digest}", child.http[0]),
        format!("http://{}/v2/{LAN}/team/big/blobs/{digest}", parent.http[0]),
    ];
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let url = urls[(i % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            if i % 4 == 3 {
                tokio::time::sleep(Duration::from_millis(10 * i)).await; // some join mid-fill
            }
            let r = client.get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200, "{url}");
            sha256_digest(&r.bytes().await.expect("body"))
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.expect("task"),
            digest,
            "every client gets the right bytes"
        );
    }
    // Each tier fetches the 32 MiB blob once, as ranged pieces (cache.fill_pieces): the
    // origin sends every byte once, the child asks the parent for pieces only (the
    // parent answers them from its own fill).
    let path = format!("/blobs/{digest}");
    reg.wait_requests("GET", &path, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reg.bytes_served("GET", &path) < blob.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reg.bytes_served("GET", &path),
        blob.len() as u64,
        "the origin sent the blob once:\n{}",
        reg.log_text()
    );
    let child_asked = |text: &str, status: &str| {
        metric(
            text,
            &format!("sparkcr_edge_upstream_requests_total{{kind=\"blob\",status=\"{status}\",upstream=\"registry.test\"}}"),
        )
    };
    let text = child.metrics_text().await;
    let child_fetches = child_asked(&text, "200") + child_asked(&text, "206");
    assert_eq!(
        child_asked(&text, "200"),
        0.0,
        "the child asked the parent for pieces"
    );
    assert!(child_fetches >= 2.0, "{child_fetches} pieces");
    // The child answers from its own cache now and says so in its own X-Cache; the
    // parent's hint on the fill response did not leak into the child's answers.
    let r = reqwest::get(&urls[0]).await.expect("hit through the child");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(sha256_digest(&r.bytes().await.expect("body")), digest);
    let text = child.metrics_text().await;
    assert_eq!(
        child_asked(&text, "200") + child_asked(&text, "206"),
        child_fetches,
        "a hit asks nobody"
    );
}

/// A manifest pull from the edge on `port` that must fail with 502/503 within 5 s (not
/// after requests went round a loop); the error body.
async fn pull_fails_at_once(port: u16) -> String {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v2/library/busybox/manifests/latest"
        ))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not after going round"
    );
    assert!(status == 503 || status == 502, "{status}: {body}");
    body
}

/// An edge whose upstream points back at itself: its own request comes back with its id in
/// `Via` and is refused with `508 Loop Detected` at once, so the client gets a clear error
/// instead of requests going round until something times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_is_its_own_upstream_refuses_the_loop() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"loop.test\"\n\
         [storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:{port}\"\ndefault = true\nread_timeout = \"10s\"\n"
    ));
    let body = pull_fails_at_once(port).await;
    assert!(
        body.contains("request loop"),
        "the client is told why: {body}"
    );
    assert!(
        edge.log_text().contains("request loop"),
        "the edge logs the loop for its admin"
    );
    // A request that carries the id of another edge in Via is served as usual.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .header("via", "1.1 sparkcr-edge-0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(r.status(), 200);
}

/// `Cache-Status` through two tiers: a manifest fetched cold through the child shows the
/// parent's entry, then the child's, in one header; asked again, the child's hit alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_shows_both_hops() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "library/busybox",
        Some("v2"),
        Format::Oci,
        23,
        "amd64",
        &[40_000],
    )
    .await;
    let parent = Edge::start(&parent_config(&reg).replacen(
        "hostname = \"parent.test\"",
        "hostname = \"parent.test\"\nname = \"parent\"",
        1,
    ));
    let child = Edge::start(&child_config(&parent).replacen(
        "hostname = \"child.test\"",
        "hostname = \"child.test\"\nname = \"child\"",
        1,
    ));
    let url = format!("http://{}/v2/busybox/manifests/v2", child.http[0]);
    let get = || async {
        let r = reqwest::Client::new()
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-content-digest"],
            image.manifest_digest.as_str()
        );
        r.headers()
            .get("cache-status")
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    assert_eq!(
        get().await.as_deref(),
        Some("parent; fwd=uri-miss, child; fwd=uri-miss"),
        "both hops, the parent's first"
    );
    assert_eq!(get().await.as_deref(), Some("child; hit"));

    // Blobs too: a cold layer shows both hops, then the child's hit; a blob the parent
    // already has shows the parent's hit before the child's miss.
    let blob_status = |url: String| async move {
        let r = reqwest::Client::new()
            .get(&url)
            .send()
            .await
            .expect("GET blob");
        assert_eq!(r.status(), 200);
        let status = r
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().expect("ascii").to_string());
        r.bytes().await.expect("blob body");
        status
    };
    let (layer, config) = (&image.blobs[1].0, &image.blobs[0].0);
    let through_child = |d: &str| format!("http://{}/v2/busybox/blobs/{d}", child.http[0]);
    assert_eq!(
        blob_status(through_child(layer)).await.as_deref(),
        Some("parent; fwd=uri-miss, child; fwd=uri-miss"),
        "a cold blob: both hops, the parent's first"
    );
    child.wait_fills_settled().await;
    assert_eq!(
        blob_status(through_child(layer)).await.as_deref(),
        Some("child; hit")
    );
    let at_parent = format!(
        "http://{}/v2/library/busybox/blobs/{config}",
        parent.http[0]
    );
    assert_eq!(
        blob_status(at_parent).await.as_deref(),
        Some("parent; fwd=uri-miss")
    );
    parent.wait_fills_settled().await;
    assert_eq!(
        blob_status(through_child(config)).await.as_deref(),
        Some("parent; hit, child; fwd=uri-miss"),
        "the parent's hit, then the child's miss"
    );
}

/// Two edges configured as each other's upstream (A → B → A): the request A sends on
/// carries the chain (`Via: …, A`), B adds itself, and A refuses it when it comes back
/// (508), so the client's pull fails at once with an error instead of going round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_that_are_each_others_upstream_end_the_loop() {
    let (pa, pb) = (free_port(), free_port());
    let config = |port: u16, host: &str, upstream: u16| {
        format!(
            "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"{host}\"\n\
             [storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:{upstream}\"\ndefault = true\nread_timeout = \"10s\"\n"
        )
    };
    let a = Edge::start(&config(pa, "a.test", pb));
    let b = Edge::start(&config(pb, "b.test", pa));
    pull_fails_at_once(pa).await;
    assert!(
        a.log_text().contains("request loop"),
        "A saw its own id come back: {}",
        b.log_text()
    );
}
