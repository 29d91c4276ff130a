//! End to end with real parts: Debian's `docker-registry` (registry:2) as the upstream on
//! 127.0.0.1, holding test images this test builds (OCI image, OCI index, Docker schema2,
//! Docker manifest list); the edge in front; pulls in every routing form real clients use,
//! by Rust and by `skopeo`, with every blob's sha256 and every manifest digest checked.

mod common;
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use std::time::Duration;

const LAN: &str = "registry.test";

fn edge_config(reg: &Registry2, extra_upstream: &str, tag_ttl: &str) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n[storage]\npath = \"{{dir}}/data\"\nmax_size = \"2GiB\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"{tag_ttl}\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\naliases = [\"docker\"]\ndefault = true\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n\
         [[upstream]]\nname = \"{LAN}\"\nurl = \"{url}\"\naliases = [\"lan\"]\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n{extra_upstream}",
        url = reg.url()
    )
}

fn routes(edge: &Edge) -> Vec<Route> {
    let e = format!("http://{}", edge.http[0]);
    vec![
        Route {
            name: "docker registry-mirrors (bare, library/ added)",
            template: format!("{e}/v2/busybox/{{rest}}"),
            host: None,
        },
        Route {
            name: "person: EDGE/docker.io/busybox",
            template: format!("{e}/v2/docker.io/busybox/{{rest}}"),
            host: None,
        },
        Route {
            name: "alias host docker.edge.test",
            template: format!("{e}/v2/library/busybox/{{rest}}"),
            host: Some("docker.edge.test".into()),
        },
        Route {
            name: "containerd ns=",
            template: format!("{e}/v2/team/app/{{rest}}?ns={LAN}"),
            host: None,
        },
        Route {
            name: "containerd /<host>/v2",
            template: format!("{e}/{LAN}/v2/team/app/{{rest}}?ns={LAN}"),
            host: None,
        },
        Route {
            name: "containerd override_path /v2/<host>",
            template: format!("{e}/v2/{LAN}/team/app/{{rest}}?ns={LAN}"),
            host: None,
        },
        Route {
            name: "podman location EDGE/<host>",
            template: format!("{e}/v2/{LAN}/team/app/{{rest}}"),
            host: None,
        },
        Route {
            name: "alias host lan.edge.test",
            template: format!("{e}/v2/team/app/{{rest}}"),
            host: Some("lan.edge.test:443".into()),
        },
    ]
}

/// Pushes the four kinds of image into both repositories; returns the tags and what was pushed.
async fn seed(reg: &Registry2) -> Vec<(&'static str, PushedImage, Vec<PushedImage>)> {
    let mut out = Vec::new();
    for repo in ["library/busybox", "team/app"] {
        let oci = push_image(
            reg,
            repo,
            Some("oci"),
            Format::Oci,
            1,
            "amd64",
            &[3000, 70_000],
        )
        .await;
        let docker = push_image(
            reg,
            repo,
            Some("docker"),
            Format::Docker,
            2,
            "amd64",
            &[5000],
        )
        .await;
        let (index, idx_children) = push_multi_platform(reg, repo, "index", Format::Oci, 10).await;
        let (list, list_children) =
            push_multi_platform(reg, repo, "list", Format::Docker, 20).await;
        if repo == "team/app" {
            out = vec![
                ("oci", oci, vec![]),
                ("docker", docker, vec![]),
                ("index", index, idx_children),
                ("list", list, list_children),
            ];
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_every_format_byte_exact() {
    let reg = Registry2::start();
    let images = seed(&reg).await;
    let edge = Edge::start(&edge_config(&reg, "", "1h"));
    let client = reqwest::Client::new();
    for route in routes(&edge) {
        for (tag, pushed, children) in &images {
            let pulled = pull(&client, &route, tag).await;
            let top = pulled.last().expect("pulled");
            assert_eq!(
                top.manifest_digest, pushed.manifest_digest,
                "{}: {tag}",
                route.name
            );
            assert_eq!(
                top.manifest, pushed.manifest,
                "{}: {tag} byte-exact",
                route.name
            );
            assert_eq!(
                top.media_type, pushed.media_type,
                "{}: {tag} media type kept",
                route.name
            );
            if !children.is_empty() {
                assert_eq!(pulled.len(), 3, "{}: index children pulled", route.name);
                for (p, c) in pulled.iter().zip(children) {
                    assert_eq!(p.manifest_digest, c.manifest_digest);
                    assert_eq!(p.blob_digests.len(), c.blobs.len());
                }
            } else {
                let want: Vec<&String> = pushed.blobs.iter().map(|(d, _)| d).collect();
                assert_eq!(top.blob_digests.iter().collect::<Vec<_>>(), want);
            }
        }
    }
    // The second and later routes were served from the cache: one blob GET each upstream.
    for (_, pushed, _) in &images {
        for (d, _) in &pushed.blobs {
            // Both repositories hold the same blobs: content addressing fetches each once.
            assert_eq!(
                reg.count_requests("GET", &format!("/blobs/{d}")),
                1,
                "blob {d} fetched once"
            );
        }
    }
    // HEAD answers carry the headers without a body.
    let r = client
        .head(format!(
            "http://{}/v2/team/app/manifests/oci?ns={LAN}",
            edge.http[0]
        ))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        images[0].1.manifest_digest.as_str()
    );
    assert_eq!(
        r.headers()["content-length"],
        images[0].1.manifest.len().to_string().as_str()
    );
    // Range on a cached blob.
    let (d, bytes) = &images[0].1.blobs[2];
    let r = client
        .get(format!(
            "http://{}/v2/team/app/blobs/{d}?ns={LAN}",
            edge.http[0]
        ))
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[100..200]);
    // The catalog lists what was cached.
    let cat: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!("http://{}/v2/_catalog", edge.http[0]))
            .send()
            .await
            .expect("catalog")
            .bytes()
            .await
            .expect("body"),
    )
    .expect("json");
    let repos: Vec<&str> = cat["repositories"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        repos.contains(&"docker.io/library/busybox") && repos.contains(&"registry.test/team/app"),
        "{cat}"
    );
    // tags/list is proxied.
    let tags: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!(
                "http://{}/v2/team/app/tags/list?ns={LAN}",
                edge.http[0]
            ))
            .send()
            .await
            .expect("tags")
            .bytes()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(tags["tags"].as_array().map(|a| a.len()), Some(4), "{tags}");
}

/// Every file skopeo wrote to a `dir:` destination hashes to its name.
fn check_dir(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = std::fs::read(e.path()).expect("read blob");
            assert_eq!(
                sha256_digest(&bytes),
                format!("sha256:{name}"),
                "skopeo's copy of {name}"
            );
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_edge() {
    let reg = Registry2::start();
    let images = seed(&reg).await;
    let edge = Edge::start(&edge_config(&reg, "", "1h"));
    let e = edge.http[0].to_string();
    let out = tempfile::tempdir().expect("tempdir");
    let cases = [
        // Docker-mirror form: bare name, default upstream, library/ added.
        (format!("docker://{e}/busybox:index"), true),
        (format!("docker://{e}/library/busybox:docker"), false),
        // Path-prefix form /v2/<host>/...
        (format!("docker://{e}/{LAN}/team/app:list"), true),
        (format!("docker://{e}/{LAN}/team/app:oci"), false),
    ];
    for (i, (src, all)) in cases.iter().enumerate() {
        let dest = out.path().join(format!("c{i}"));
        let dest_ref = format!("dir:{}", dest.display());
        let mut args = vec!["copy", "--src-tls-verify=false", "--retry-times", "0"];
        if *all {
            args.push("--all");
        }
        args.extend([src.as_str(), dest_ref.as_str()]);
        let (ok, log) = skopeo(&args);
        assert!(ok, "skopeo copy {src}: {log}");
        let blobs = check_dir(&dest);
        assert!(blobs >= 2, "{src}: {blobs} blobs in {}", dest.display());
    }
    // The manifest skopeo stored for the single-arch OCI image is the pushed one, byte for byte.
    let m = std::fs::read(out.path().join("c3/manifest.json")).expect("manifest");
    assert_eq!(sha256_digest(&m), images[0].1.manifest_digest);

    // Podman/CRI-O style: a registries.conf mirror pointing at EDGE/<host>. The real host
    // does not resolve, so success proves the mirror served it.
    let conf = out.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nprefix = \"{LAN}\"\nlocation = \"{LAN}\"\n\n[[registry.mirror]]\nlocation = \"{e}/{LAN}\"\ninsecure = true\n"),
    )
    .expect("registries.conf");
    let dest = out.path().join("mirror");
    let (ok, log) = skopeo(&[
        "--registries-conf",
        conf.to_str().expect("path"),
        "copy",
        "--retry-times",
        "0",
        &format!("docker://{LAN}/team/app:docker"),
        &format!("dir:{}", dest.display()),
    ]);
    assert!(ok, "skopeo through registries.conf mirror: {log}");
    assert_eq!(check_dir(&dest), 2);
    assert!(
        edge.log_text()
            .contains(&format!("path=/v2/{LAN}/team/app/manifests/docker")),
        "the mirror was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_32_clients_one_upstream_fetch() {
    let reg = Registry2::start();
    let blob = pseudo_random(77, 64 << 20);
    let digest = reg.push_blob("team/big", &blob).await;
    let edge = Edge::start(&edge_config(&reg, "", "1h"));
    let url = format!("http://{}/v2/{LAN}/team/big/blobs/{digest}", edge.http[0]);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Each client on its own connection, like 32 hosts on a LAN.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            if i % 4 == 3 {
                tokio::time::sleep(Duration::from_millis(20 * i)).await; // some join mid-fill
            }
            let r = client.get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.expect("body");
            sha256_digest(&body)
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.expect("task"),
            digest,
            "every client gets the right bytes"
        );
    }
    // One fill: the 64 MiB blob as ranged pieces (cache.fill_pieces), every byte once.
    let path = format!("/blobs/{digest}");
    assert_eq!(
        reg.bytes_served("GET", &path),
        blob.len() as u64,
        "the blob fetched once, in {} GETs:\n{}",
        reg.count_requests("GET", &path),
        reg.log_text()
    );
    // And now it is a hit.
    let gets = reg.count_requests("GET", &path);
    let body = reqwest::get(&url)
        .await
        .expect("hit")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&body), digest);
    assert_eq!(reg.count_requests("GET", &path), gets, "a hit asks nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_stale_when_upstream_is_down_and_after_restart() {
    let mut reg = Registry2::start();
    let images = seed(&reg).await;
    let uncached = push_image(
        &reg,
        "team/other",
        Some("v1"),
        Format::Oci,
        99,
        "amd64",
        &[1000],
    )
    .await;
    // tag_ttl 0: every pull by tag revalidates, so the outage is really met.
    // The store lives outside the edge's own temp dir so it survives the edge.
    let data = tempfile::tempdir().expect("data dir");
    let config =
        edge_config(&reg, "", "0").replace("{dir}/data", &data.path().display().to_string());
    let edge = Edge::start(&config);
    let client = reqwest::Client::new();
    let route = routes(&edge)[3].clone();
    pull(&client, &route, "index").await;
    pull(&client, &route, "oci").await;
    reg.stop();

    for tag in ["index", "oci"] {
        let pulled = pull(&client, &route, tag).await;
        let want = &images.iter().find(|(t, _, _)| *t == tag).expect("image").1;
        assert_eq!(
            pulled.last().expect("pulled").manifest_digest,
            want.manifest_digest,
            "stale {tag}"
        );
    }
    let r = client
        .get(format!(
            "http://{}/v2/team/other/manifests/v1?ns={LAN}",
            edge.http[0]
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503, "uncached content with the upstream down");
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error");
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{v}");
    let r = client
        .get(format!(
            "http://{}/v2/team/other/blobs/{}?ns={LAN}",
            edge.http[0], uncached.blobs[1].0
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    // Those 503s are problems an admin must see with `journalctl -p warning`.
    edge.wait_for_log("status=503").await;
    let log = edge.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sparkcr_edge::access") && l.contains("status=503"))
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains(" WARN ")),
        "a 503 is logged as a warning: {lines:?}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("sparkcr_edge::access") && l.contains("status=200"))
            .all(|l| l.contains(" INFO ")),
        "a 200 stays at info"
    );
    let metrics = edge.metrics_text().await;
    assert!(
        metric(
            &metrics,
            "sparkcr_edge_stale_served_total{kind=\"manifest\"}"
        ) >= 1.0,
        "stale answers counted"
    );

    // Restart the edge with the upstream still down: the cache still serves. (Killed, so
    // first wait until the last fill committed its blob.)
    edge.wait_fills_settled().await;
    drop(edge);
    let edge = Edge::start(&config);
    assert!(
        edge.log_text().contains("blobs=") && !edge.log_text().contains("blobs=0 "),
        "the restarted edge opened the filled store"
    );
    let route = routes(&edge)[3].clone();
    pull(&client, &route, "index").await;
    pull(&client, &route, "oci").await;

    // The upstream comes back: the next pull by tag revalidates against it.
    reg.restart();
    pull(&client, &route, "oci").await;
    assert!(
        reg.count_requests("HEAD", "team/app/manifests/oci") >= 1,
        "revalidated with a HEAD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream() {
    let reg = Registry2::start_with(Some(("puller", "s3cret")));
    let img = push_image(
        &reg,
        "team/private",
        Some("v1"),
        Format::Docker,
        5,
        "amd64",
        &[4000],
    )
    .await;
    let pwfile = tempfile::NamedTempFile::new().expect("pw file");
    std::fs::write(pwfile.path(), "s3cret\n").expect("write");
    let extra = format!(
        "[[upstream]]\nname = \"auth.test:5000\"\nurl = \"{}\"\nusername = \"puller\"\npassword_file = \"{}\"\n\
         [[upstream]]\nname = \"wrong.test:5000\"\nurl = \"{}\"\nusername = \"puller\"\npassword = \"nope\"\n",
        reg.url(),
        pwfile.path().display(),
        reg.url()
    );
    let edge = Edge::start(&edge_config(&reg, &extra, "1h"));
    let client = reqwest::Client::new();
    let e = edge.http[0];
    let route = Route {
        name: "basic",
        template: format!("http://{e}/v2/auth.test:5000/team/private/{{rest}}"),
        host: None,
    };
    let pulled = pull(&client, &route, "v1").await;
    assert_eq!(pulled[0].manifest_digest, img.manifest_digest);
    let r = client
        .get(format!(
            "http://{e}/v2/wrong.test:5000/team/private/manifests/v1"
        ))
        .send()
        .await
        .expect("req");
    assert_eq!(
        r.status(),
        503,
        "refused credentials upstream and nothing cached"
    );
    assert!(!edge.log_text().contains("s3cret"), "password never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_upstream() {
    let tokens = common::token::TokenServer::start("puller", "tok-pass").await;
    let mut reg = Registry2::start_with_token(&tokens.realm(), &tokens.cert_pem_path);
    reg.push_token = Some(
        tokens
            .token("puller", "tok-pass", "repository:team/sealed:pull,push")
            .await,
    );
    let img = push_image(
        &reg,
        "team/sealed",
        Some("v1"),
        Format::Oci,
        8,
        "amd64",
        &[3000, 5000],
    )
    .await;
    let pushes = tokens.requests.lock().expect("lock").len();
    let extra = format!(
        "[[upstream]]\nname = \"tokens.test\"\nurl = \"{}\"\nusername = \"puller\"\npassword = \"tok-pass\"\n",
        reg.url()
    );
    let edge = Edge::start(&edge_config(&reg, &extra, "0"));
    let client = reqwest::Client::new();
    let route = Route {
        name: "bearer",
        template: format!(
            "http://{}/v2/tokens.test/team/sealed/{{rest}}",
            edge.http[0]
        ),
        host: None,
    };
    for _ in 0..3 {
        let pulled = pull(&client, &route, "v1").await;
        assert_eq!(pulled[0].manifest_digest, img.manifest_digest);
    }
    let asked: Vec<(String, Option<String>)> =
        tokens.requests.lock().expect("lock")[pushes..].to_vec();
    assert!(!asked.is_empty(), "the edge asked the token server");
    for (query, auth) in &asked {
        assert!(
            query.contains("scope=repository%3Ateam%2Fsealed%3Apull")
                || query.contains("scope=repository:team/sealed:pull"),
            "{query}"
        );
        assert!(query.contains("service=test-registry"), "{query}");
        assert!(
            auth.as_deref().is_some_and(|a| a.starts_with("Basic ")),
            "the upstream's credentials went to the token server"
        );
    }
    assert_eq!(
        asked.len(),
        1,
        "one token for three pulls (cached per scope): {asked:?}"
    );
    // Without credentials the token server refuses, registry:2 answers 401, nothing cached: 503.
    let anon = format!(
        "[[upstream]]\nname = \"anon.test\"\nurl = \"{}\"\n",
        reg.url()
    );
    let edge2 = Edge::start(&edge_config(&reg, &anon, "0"));
    let r = client
        .get(format!(
            "http://{}/v2/anon.test/team/sealed/manifests/v1",
            edge2.http[0]
        ))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_downloads_finish() {
    let reg = Registry2::start();
    let blob = pseudo_random(123, 24 << 20);
    let digest = reg.push_blob("team/big", &blob).await;
    let mut edge = Edge::start(
        &edge_config(&reg, "", "1h").replace("[server]\n", "[server]\nshutdown_grace = \"20s\"\n"),
    );
    let url = format!("http://{}/v2/{LAN}/team/big/blobs/{digest}", edge.http[0]);
    // Warm the cache, then download slowly.
    let warm = reqwest::get(&url)
        .await
        .expect("warm")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&warm), digest);
    let mut r = reqwest::get(&url).await.expect("get");
    let mut got = Vec::new();
    got.extend_from_slice(&r.chunk().await.expect("chunk").expect("first bytes"));
    edge.signal(libc::SIGTERM);
    edge.wait_for_log("shutting down").await;
    // New connections are refused while the old one drains.
    assert!(
        reqwest::get(edge.url("/v2/")).await.is_err(),
        "no new connections after SIGTERM"
    );
    while let Some(c) = r.chunk().await.expect("the in-flight body completes") {
        got.extend_from_slice(&c);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(sha256_digest(&got), digest);
    assert_eq!(
        edge.wait_exit(Duration::from_secs(25)),
        Some(0),
        "exit 0 after draining"
    );
}
