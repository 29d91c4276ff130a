//! Access control end to end, through the real binary: tokens made with
//! `sparkcr-edge token create`, anonymous access off (401 and a usable challenge), HTTP
//! Basic with the secret as password and the bearer flow through the edge's `/token`, by
//! reqwest and by `skopeo`; private upstreams (no pull by tag, by digest, or by naming a
//! private blob under a public upstream); `allow_cidrs`; the anonymous per-address quota.

mod common;
use common::images::*;
use common::pull::*;
use common::registry2::*;
use common::*;
use std::time::Duration;

const SECRET_UP: &str = "secret.test";

fn base_config(auth: &str, upstreams: &str) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n[storage]\npath = \"{{dir}}/data\"\nmax_size = \"1GiB\"\nchunk_size = \"1MiB\"\n[cache]\ntag_ttl = \"1h\"\n{auth}\n{upstreams}"
    )
}

fn upstream(name: &str, reg: &Registry2, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\nconnect_timeout = \"2s\"\nread_timeout = \"10s\"\n{extra}\n",
        reg.url()
    )
}

fn client_with(auth: Option<String>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = auth {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            a.parse().expect("header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

fn basic(secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("someone:{secret}"))
    )
}

fn challenges(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect()
}

async fn oci_code(r: reqwest::Response) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error JSON");
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn skopeo_copy(src: &str, creds: Option<&str>, dest: &std::path::Path) -> (bool, String) {
    let dest = format!("dir:{}", dest.display());
    let mut args = vec!["copy", "--src-tls-verify=false", "--retry-times", "0"];
    let creds_arg;
    if let Some(c) = creds {
        creds_arg = c.to_string();
        args.extend(["--src-creds", creds_arg.as_str()]);
    } else {
        args.push("--src-no-creds");
    }
    args.extend([src, dest.as_str()]);
    skopeo(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_off_basic_and_bearer_flow() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "library/busybox",
        Some("v1"),
        Format::Oci,
        1,
        "amd64",
        &[4000],
    )
    .await;
    let (secret, block) = create_token("ci", "pull:public");
    let edge = Edge::start(&base_config(
        &format!("[auth]\nanonymous = false\n{block}"),
        &upstream("docker.io", &reg, "default = true"),
    ));
    let e = edge.http[0];
    let anon = client_with(None);

    // No credentials: 401 with one challenge, Bearer naming this edge's /token (as Docker
    // Hub does; a Basic challenge beside it breaks anonymous `docker pull`).
    let r = anon.get(edge.url("/v2/")).send().await.expect("ping");
    assert_eq!(r.status(), 401);
    let ch = challenges(&r);
    assert_eq!(
        ch.first().map(String::as_str),
        Some(format!("Bearer realm=\"http://{e}/token\",service=\"sparkcr-edge\"").as_str()),
        "{ch:?}"
    );
    assert_eq!(ch.len(), 1, "Bearer only: {ch:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error");
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("log in"), "says to log in: {message}");
    let r = anon
        .get(edge.url("/v2/busybox/manifests/v1"))
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), 401);
    assert!(challenges(&r)[0].contains("scope=\"repository:docker.io/library/busybox:pull\""));
    assert_eq!(
        anon.get(edge.url("/v2/_catalog"))
            .send()
            .await
            .expect("catalog")
            .status(),
        401
    );
    assert_eq!(
        anon.get(edge.url("/token"))
            .send()
            .await
            .expect("token")
            .status(),
        401
    );

    // Wrong secret: 401 everywhere, the token endpoint included.
    let wrong = client_with(Some(basic("spk_not-the-secret")));
    assert_eq!(
        wrong
            .get(edge.url("/v2/"))
            .send()
            .await
            .expect("ping")
            .status(),
        401
    );
    assert_eq!(
        wrong
            .get(edge.url("/token?service=sparkcr-edge"))
            .send()
            .await
            .expect("token")
            .status(),
        401
    );

    // Basic on every request (what `docker login` leads to).
    let basic_client = client_with(Some(basic(&secret)));
    assert_eq!(
        basic_client
            .get(edge.url("/v2/"))
            .send()
            .await
            .expect("ping")
            .status(),
        200
    );
    let route = Route {
        name: "basic",
        template: format!("http://{e}/v2/busybox/{{rest}}"),
        host: None,
    };
    let pulled = pull(&basic_client, &route, "v1").await;
    assert_eq!(pulled[0].manifest_digest, image.manifest_digest);

    // The bearer flow: the realm with Basic gives a short-lived token; Bearer then works.
    let r = basic_client
        .get(
            edge.url("/token?service=sparkcr-edge&scope=repository:docker.io/library/busybox:pull"),
        )
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("token json");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["token"], t["access_token"]);
    assert!(
        t["issued_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{t}"
    );
    let token = t["token"].as_str().expect("token").to_string();
    let bearer = client_with(Some(format!("Bearer {token}")));
    let route = Route {
        name: "bearer",
        template: format!("http://{e}/v2/docker.io/library/busybox/{{rest}}"),
        host: None,
    };
    pull(&bearer, &route, &image.manifest_digest).await;
    // A tampered token is refused.
    let forged = client_with(Some(format!("Bearer {}x", token)));
    assert_eq!(
        forged
            .get(edge.url("/v2/"))
            .send()
            .await
            .expect("ping")
            .status(),
        401
    );

    // A real client: skopeo logs in with any user name and the secret, through the bearer
    // challenge it is offered first (so through /token).
    let token_requests = || edge.log_text().matches("path=/token ").count();
    let before = token_requests();
    let out = tempfile::tempdir().expect("tempdir");
    let (ok, log) = skopeo_copy(
        &format!("docker://{e}/busybox:v1"),
        Some(&format!("anyone:{secret}")),
        &out.path().join("ok"),
    );
    assert!(ok, "skopeo with the secret: {log}");
    assert!(out.path().join("ok/manifest.json").exists());
    assert!(token_requests() > before, "skopeo used the bearer flow");
    let (ok, log) = skopeo_copy(
        &format!("docker://{e}/busybox:v1"),
        Some("anyone:spk_wrong"),
        &out.path().join("bad"),
    );
    assert!(!ok, "skopeo with a wrong secret must fail: {log}");
    let (ok, _) = skopeo_copy(
        &format!("docker://{e}/busybox:v1"),
        None,
        &out.path().join("none"),
    );
    assert!(!ok, "skopeo without credentials must fail");

    let metrics = anon
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(
            &metrics,
            "sparkcr_edge_auth_denials_total{reason=\"no_credentials\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "sparkcr_edge_auth_denials_total{reason=\"bad_credentials\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        !edge.log_text().contains(&secret),
        "the secret is never logged"
    );
    assert!(!edge.log_text().contains(&token), "tokens are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstream_content_stays_private() {
    let public_reg = Registry2::start();
    let private_reg = Registry2::start();
    let public_image = push_image(
        &public_reg,
        "library/busybox",
        Some("v1"),
        Format::Oci,
        1,
        "amd64",
        &[3000],
    )
    .await;
    let secret_image = push_image(
        &private_reg,
        "team/secret",
        Some("v1"),
        Format::Oci,
        42,
        "amd64",
        &[5000, 9000],
    )
    .await;
    let (pub_secret, pub_block) = create_token("pub", "pull:public");
    let (priv_secret, priv_block) = create_token("priv", "pull:public,pull:private");
    let edge = Edge::start(&base_config(
        &format!("[auth]\nanonymous = true\n{pub_block}\n{priv_block}"),
        &format!(
            "{}{}",
            upstream("docker.io", &public_reg, "default = true"),
            upstream(SECRET_UP, &private_reg, "private = true")
        ),
    ));
    let e = edge.http[0];
    let anon = client_with(None);
    let pub_c = client_with(Some(basic(&pub_secret)));
    let priv_c = client_with(Some(basic(&priv_secret)));
    let private_route = Route {
        name: "private",
        template: format!("http://{e}/v2/{SECRET_UP}/team/secret/{{rest}}"),
        host: None,
    };

    // The private token pulls (and so caches) the private image.
    let pulled = pull(&priv_c, &private_route, "v1").await;
    assert_eq!(pulled[0].manifest_digest, secret_image.manifest_digest);
    let (layer, layer_bytes) = secret_image.blobs[1].clone();
    let private_gets = |d: &str| private_reg.count_requests("GET", &format!("/blobs/{d}"));
    assert_eq!(private_gets(&layer), 1);

    // Anonymous: 401 with a challenge. pull:public: 403 DENIED. By tag, digest and blob.
    for rest in [
        "manifests/v1".to_string(),
        format!("manifests/{}", secret_image.manifest_digest),
        format!("blobs/{layer}"),
        "tags/list".to_string(),
    ] {
        let url = format!("http://{e}/v2/{SECRET_UP}/team/secret/{rest}");
        let r = anon.get(&url).send().await.expect("anonymous");
        assert_eq!(r.status(), 401, "anonymous {rest}");
        assert!(challenges(&r)[0].starts_with("Bearer realm="), "{rest}");
        let r = pub_c.get(&url).send().await.expect("pull:public");
        assert_eq!(r.status(), 403, "pull:public {rest}");
        assert_eq!(oci_code(r).await, "DENIED");
        let r = pub_c.head(&url).send().await.expect("pull:public HEAD");
        assert_eq!(r.status(), 403, "pull:public HEAD {rest}");
        // Other URL forms of the same upstream.
        let ns = format!("http://{e}/v2/team/secret/{rest}?ns={SECRET_UP}");
        assert_eq!(
            pub_c.get(&ns).send().await.expect("ns").status(),
            403,
            "ns= {rest}"
        );
        let hostpath = format!("http://{e}/{SECRET_UP}/v2/team/secret/{rest}");
        assert_eq!(
            pub_c
                .get(&hostpath)
                .send()
                .await
                .expect("host path")
                .status(),
            403
        );
    }

    // Naming the private blob or manifest under a public upstream gets nothing: the public
    // upstream is asked (a miss for that route) and does not have it.
    for (who, c) in [
        ("anonymous", &anon),
        ("pull:public", &pub_c),
        ("pull:private", &priv_c),
    ] {
        for url in [
            format!("http://{e}/v2/library/busybox/blobs/{layer}"),
            format!("http://{e}/v2/docker.io/library/busybox/blobs/{layer}"),
            format!("http://{e}/v2/docker.io/any/repo/blobs/{layer}"),
            format!(
                "http://{e}/v2/busybox/manifests/{}",
                secret_image.manifest_digest
            ),
        ] {
            let r = c.get(&url).send().await.expect("get");
            assert_eq!(r.status(), 404, "{who}: {url}");
            let r = c
                .get(&url)
                .header("range", "bytes=0-9")
                .send()
                .await
                .expect("range");
            assert_eq!(r.status(), 404, "{who} with Range: {url}");
            let r = c.head(&url).send().await.expect("head");
            assert_eq!(r.status(), 404, "{who} HEAD: {url}");
        }
    }
    assert!(
        public_reg.count_requests("GET", &format!("/blobs/{layer}")) >= 1,
        "the public upstream was asked"
    );

    // The catalog lists private repositories only to pull:private.
    let catalog = |c: &reqwest::Client| {
        let c = c.clone();
        let url = edge.url("/v2/_catalog");
        async move {
            let v = c
                .get(url)
                .send()
                .await
                .expect("catalog")
                .bytes()
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&v).expect("json");
            v["repositories"].to_string()
        }
    };
    assert!(catalog(&priv_c).await.contains("secret.test/team/secret"));
    assert!(!catalog(&pub_c).await.contains("secret"));

    // The private token still pulls from cache; a public image is public for everyone.
    pull(&priv_c, &private_route, "v1").await;
    assert_eq!(private_gets(&layer), 1, "served from the cache");
    let public_route = Route {
        name: "public",
        template: format!("http://{e}/v2/busybox/{{rest}}"),
        host: None,
    };
    pull(&pub_c, &public_route, "v1").await;
    let _ = &public_image;

    // When the public upstream does have the same bytes, it serves its own copy.
    public_reg.push_blob("library/busybox", &layer_bytes).await;
    let r = pub_c
        .get(format!("http://{e}/v2/library/busybox/blobs/{layer}"))
        .send()
        .await
        .expect("now public");
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_digest(&r.bytes().await.expect("body")), layer);

    // skopeo: the public token cannot pull through the private upstream; the private can.
    let out = tempfile::tempdir().expect("tempdir");
    let src = format!("docker://{e}/{SECRET_UP}/team/secret:v1");
    let (ok, log) = skopeo_copy(
        &src,
        Some(&format!("u:{pub_secret}")),
        &out.path().join("p"),
    );
    assert!(!ok, "pull:public through a private upstream: {log}");
    let (ok, log) = skopeo_copy(
        &src,
        Some(&format!("u:{priv_secret}")),
        &out.path().join("q"),
    );
    assert!(ok, "pull:private: {log}");
    let metrics = anon
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metric(
            &metrics,
            "sparkcr_edge_auth_denials_total{reason=\"scope\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("sparkcr_edge_private_content_refusals_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_outside_allow_cidrs_are_refused() {
    let reg = Registry2::start();
    let edge = Edge::start(&base_config(
        "[auth]\nallow_cidrs = [\"10.0.0.0/8\"]",
        &upstream("docker.io", &reg, "default = true"),
    ));
    let c = client_with(None);
    for path in [
        "/v2/",
        "/v2/busybox/manifests/v1",
        "/token",
        "/healthz",
        "/metrics",
        "/nothing",
    ] {
        let r = c.get(edge.url(path)).send().await.expect("request");
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(oci_code(r).await, "DENIED", "{path}");
    }
    drop(edge);
    // HTTPS: closed before any TLS handshake.
    let ca = TestCa::new();
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.write_leaf(certs.path(), &["localhost"]);
    let tls_edge = Edge::start(&base_config(
        "[auth]\nallow_cidrs = [\"10.0.0.0/8\"]",
        &upstream("docker.io", &reg, "default = true"),
    ).replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    ));
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(tls_edge.https[0]).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection from a refused network was kept open")
            }
            Err(_) => {} // reset
            Ok(n) => panic!("a TLS answer of {n} bytes to a refused network"),
        }
    }
    drop(tls_edge);
    let edge = Edge::start(&base_config(
        "[auth]\nallow_cidrs = [\"10.0.0.0/8\", \"127.0.0.0/8\"]",
        &upstream("docker.io", &reg, "default = true"),
    ));
    assert_eq!(
        c.get(edge.url("/v2/")).send().await.expect("ping").status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_quota_429_then_recovers_tokens_unlimited() {
    let reg = Registry2::start();
    let (secret, block) = create_token("ci", "pull:public");
    let edge = Edge::start(&base_config(
        &format!("[auth]\nanonymous_rate = {{ per_minute = 60, burst = 3 }}\n{block}"),
        &upstream("docker.io", &reg, "default = true"),
    ));
    let anon = client_with(None);
    for i in 0..3 {
        let r = anon
            .get(edge.url("/v2/_catalog"))
            .send()
            .await
            .expect("catalog");
        assert_eq!(r.status(), 200, "request {i} within the burst");
    }
    let r = anon
        .get(edge.url("/v2/_catalog"))
        .send()
        .await
        .expect("catalog");
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(oci_code(r).await, "TOOMANYREQUESTS");
    // A token holder is not limited, from the same address.
    let tok = client_with(Some(basic(&secret)));
    for _ in 0..20 {
        assert_eq!(
            tok.get(edge.url("/v2/_catalog"))
                .send()
                .await
                .expect("token")
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 200)).await;
    let r = anon
        .get(edge.url("/v2/_catalog"))
        .send()
        .await
        .expect("after the window");
    assert_eq!(r.status(), 200, "recovered after Retry-After");
    let metrics = tok
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metrics.contains("sparkcr_edge_auth_denials_total{reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
}

#[test]
fn config_mistakes_in_auth_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[auth.token]]\nname = \"ci\"\nhash = \"spk_pasted-the-secret\"\nscopes = [\"pull:public\"]\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("c.toml") && err.contains("hash") && err.contains("sha256:"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run_cli(&["token", "create", "--name", "x", "--scopes", "pull"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("push"), "the error lists every scope: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_requests_never_join_a_private_fill() {
    let public_reg = Registry2::start();
    let private_reg = Registry2::start();
    let big = pseudo_random(91, 48 << 20);
    let digest = private_reg.push_blob("team/big", &big).await;
    let (secret, block) = create_token("priv", "pull:public,pull:private");
    let edge = Edge::start(&base_config(
        &format!("[auth]\n{block}"),
        &format!(
            "{}{}",
            upstream("docker.io", &public_reg, "default = true"),
            upstream(SECRET_UP, &private_reg, "private = true")
        ),
    ));
    let e = edge.http[0];
    let priv_c = client_with(Some(basic(&secret)));
    // The private fill starts; as soon as its answer begins, public routes ask for the digest.
    let r = priv_c
        .get(format!("http://{e}/v2/{SECRET_UP}/team/big/blobs/{digest}"))
        .send()
        .await
        .expect("private blob");
    assert_eq!(r.status(), 200);
    let public = client_with(None);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 {
            format!("http://{e}/v2/library/busybox/blobs/{digest}")
        } else {
            format!("http://{e}/v2/docker.io/x/y/blobs/{digest}")
        };
        statuses.push(
            public
                .get(url)
                .send()
                .await
                .expect("public")
                .status()
                .as_u16(),
        );
    }
    let body = r.bytes().await.expect("private body");
    assert_eq!(sha256_digest(&body), digest);
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    // One private fill (the 48 MiB blob as ranged pieces): every byte fetched once.
    assert_eq!(
        private_reg.bytes_served("GET", &format!("/blobs/{digest}")),
        big.len() as u64,
        "one private fill"
    );
}

/// `[[policy]]`: the first block that fits decides; a repository it denies gets `403
/// DENIED` naming the block on every routing form, by tag, by digest and for a blob, while
/// the rest pulls; the refusal is counted and in the audit trail; SIGHUP puts an edited
/// policy in force, and a broken edit leaves the one in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_blocks_decide_what_may_be_pulled_and_reload_on_sighup() {
    let reg = Registry2::start();
    let ok = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Oci,
        71,
        "amd64",
        &[4096],
    )
    .await;
    let bad = push_image(
        &reg,
        "team/blocked-x",
        Some("v1"),
        Format::Oci,
        72,
        "amd64",
        &[4096],
    )
    .await;
    let up = upstream("up.test", &reg, "default = true");
    let head = base_config("", &up) + "[audit]\npath = \"{dir}/audit.jsonl\"\n";
    let policy = |deny: &str| {
        format!(
            "[[policy]]\nname = \"hub-ok\"\nupstream = \"up.test\"\nmatch = [\"team/keep\"]\naction = \"allow\"\n\
             [[policy]]\nname = \"no-{deny}\"\nupstream = \"*\"\nmatch = [\"team/{deny}*\"]\naction = \"deny\"\n"
        )
    };
    let edge = Edge::start(&(head.clone() + &policy("blocked-")));
    let e = edge.http[0];
    let client = reqwest::Client::new();
    let bad_layer = &bad.blobs[1].0;
    // Denied: every routing form, by tag and digest, manifests, blobs and the tag list.
    for rest in [
        "manifests/v1".to_string(),
        format!("manifests/{}", bad.manifest_digest),
        format!("blobs/{bad_layer}"),
        "tags/list".to_string(),
    ] {
        for url in [
            format!("http://{e}/v2/team/blocked-x/{rest}"),
            format!("http://{e}/v2/up.test/team/blocked-x/{rest}"),
            format!("http://{e}/v2/team/blocked-x/{rest}?ns=up.test"),
            format!("http://{e}/up.test/v2/team/blocked-x/{rest}"),
        ] {
            let r = client.get(&url).send().await.expect("get");
            assert_eq!(r.status(), 403, "{url}");
            let body: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).expect("OCI error JSON");
            assert_eq!(body["errors"][0]["code"], "DENIED", "{url}");
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains("\"no-blocked-\""), "{url}: {message}");
            let r = client.head(&url).send().await.expect("head");
            assert_eq!(r.status(), 403, "HEAD {url}");
        }
    }
    assert_eq!(edge.metric("sparkcr_edge_policy_denials_total").await, 32.0);
    // A real client: skopeo's pull fails and shows the refusal, block and all.
    let dest = tempfile::tempdir().expect("dest");
    let (copied, output) = skopeo_copy(
        &format!("docker://{e}/team/blocked-x:v1"),
        None,
        &dest.path().join("img"),
    );
    assert!(!copied, "{output}");
    assert!(
        output.contains("denied") && output.contains("no-blocked-"),
        "{output}"
    );
    // Allowed: no block fits team/app.
    let r = client
        .get(edge.url(&format!("/v2/team/app/blobs/{}", ok.blobs[1].0)))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body")[..], ok.blobs[1].1[..]);
    let audit_file = edge.dir.path().join("audit.jsonl");
    let audit_file = audit_file.to_str().expect("utf-8 path");
    let denied = wait_audit(
        &["--file", audit_file],
        &["--repo", "up.test/team/blocked-x"],
        1,
    );
    assert!(
        denied.iter().all(|r| r["status"] == 403
            && r["decision"]
                .as_str()
                .unwrap_or_default()
                .contains("no-blocked-")),
        "{denied:?}"
    );

    // SIGHUP with an edited policy: now team/app is denied and team/blocked-x pulls.
    let config_path = edge.dir.path().join("config.toml");
    let dir = edge.dir.path().display().to_string();
    std::fs::write(
        &config_path,
        (head.clone() + &policy("app")).replace("{dir}", &dir),
    )
    .expect("edit config");
    edge.signal(libc::SIGHUP);
    edge.wait_for_log("SIGHUP: [[policy]] reloaded").await;
    let get = |path: String| {
        let client = client.clone();
        let url = edge.url(&path);
        async move { client.get(url).send().await.expect("get").status() }
    };
    assert_eq!(get("/v2/team/app/manifests/v1".into()).await, 403);
    assert_eq!(
        get(format!("/v2/team/blocked-x/blobs/{bad_layer}")).await,
        200
    );
    // A broken edit (no such upstream) leaves the policy in force.
    let broken = head.clone() + "[[policy]]\nupstream = \"nowhere.test\"\naction = \"deny\"\n";
    std::fs::write(&config_path, broken.replace("{dir}", &dir)).expect("edit config");
    edge.signal(libc::SIGHUP);
    edge.wait_for_log("config not reloaded; the policy in force stays")
        .await;
    assert!(
        edge.log_text().contains("policy[0].upstream"),
        "the error names the key"
    );
    assert_eq!(
        get("/v2/team/app/manifests/v1".into()).await,
        403,
        "still in force"
    );
}
