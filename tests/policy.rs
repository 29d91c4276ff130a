//! `[[policy]]` cooldowns end to end, through the real binary and a registry:2 upstream
//! whose tags are repointed during the test: a tag's new digest waits behind the one
//! before it (open mode), a tag with nothing earlier is refused until it cools down
//! (closed mode), held-back digests are refused by digest, and `sparkcr-edge policy
//! release` on the running daemon lets them through; skopeo pulls what the cooldown serves.

mod common;
use common::edge_config::{EdgeConfig, PolicyBlock, Upstream};
use common::images::*;
use common::registry2::*;
use common::*;

const RELEASE: &str = "/admin/v1/policy/release";

/// `GET` of a manifest, taking an image index or manifest: (status, digest, JSON body).
async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = client
        .get(url)
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.bytes().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, digest, json)
}

fn message(json: &serde_json::Value) -> String {
    assert_eq!(json["errors"][0]["code"], "DENIED", "{json}");
    json["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldowns_hold_new_digests_back_and_policy_release_lets_them_through() {
    let reg = Registry2::start();
    let old = push_image(
        &reg,
        "team/app",
        Some("latest"),
        Format::Oci,
        81,
        "amd64",
        &[4096],
    )
    .await;
    let edge = EdgeConfig::new("{dir}/data")
        .chunk_size("1MiB")
        .tag_ttl("0")
        .admin_cidrs(&["127.0.0.1/32"])
        .upstream(Upstream::new("up.test", reg.url()).default())
        .policy(PolicyBlock::allow("quarantine", &["team/app"]).cooldown("1h", "open"))
        .policy(PolicyBlock::allow("strict", &["team/fresh"]).cooldown("1h", "closed"))
        .start();
    let e = edge.http[0];
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{e}{path}");
    let manifest = |repo: &str, reference: &str| url(&format!("/v2/{repo}/manifests/{reference}"));

    // Open mode, a tag the edge has never seen: its digest has nothing earlier to wait
    // behind, so it is served.
    let (status, digest, _) = get(&client, &url("/v2/team/app/manifests/latest")).await;
    assert_eq!(
        (status, digest.as_deref()),
        (200, Some(old.manifest_digest.as_str()))
    );

    // The tag moves upstream: the edge keeps serving the digest before it, to every form.
    let new = push_image(
        &reg,
        "team/app",
        Some("latest"),
        Format::Oci,
        82,
        "amd64",
        &[4096],
    )
    .await;
    assert_ne!(new.manifest_digest, old.manifest_digest);
    for path in [
        "/v2/team/app/manifests/latest",
        "/v2/up.test/team/app/manifests/latest",
        "/up.test/v2/team/app/manifests/latest",
    ] {
        let (status, digest, _) = get(&client, &url(path)).await;
        assert_eq!(
            (status, digest.as_deref()),
            (200, Some(old.manifest_digest.as_str())),
            "{path}"
        );
    }
    // By digest: the held-back one is refused with when it comes out; the one served is not.
    let (status, _, json) = get(&client, &manifest("team/app", &new.manifest_digest)).await;
    assert_eq!(status, 403);
    let m = message(&json);
    assert!(
        m.contains("held back") && m.contains("\"quarantine\"") && m.contains("allowed after"),
        "{m}"
    );
    let (status, _, _) = get(&client, &manifest("team/app", &old.manifest_digest)).await;
    assert_eq!(status, 200);
    // A real client gets the earlier image, layers and all.
    let dest = tempfile::tempdir().expect("dest");
    let (copied, output) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-no-creds",
        "--retry-times",
        "0",
        &format!("docker://{e}/team/app:latest"),
        &format!("dir:{}", dest.path().display()),
    ]);
    assert!(copied, "{output}");
    let copied_manifest = std::fs::read(dest.path().join("manifest.json")).expect("manifest.json");
    assert_eq!(
        copied_manifest, old.manifest,
        "skopeo got the earlier manifest"
    );
    assert!(
        edge.metric("sparkcr_edge_policy_cooldowns_total{decision=\"held_back\"}")
            .await
            >= 4.0
    );

    // Closed mode: a new tag is refused, saying when it will be allowed.
    let fresh = push_image(
        &reg,
        "team/fresh",
        Some("v1"),
        Format::Oci,
        83,
        "amd64",
        &[4096],
    )
    .await;
    let (status, _, json) = get(&client, &url("/v2/team/fresh/manifests/v1")).await;
    assert_eq!(status, 403);
    let m = message(&json);
    assert!(
        m.contains("\"strict\"") && m.contains("closed") && m.contains("allowed after"),
        "{m}"
    );
    let (status, _, _) = get(&client, &manifest("team/fresh", &fresh.manifest_digest)).await;
    assert_eq!(status, 403, "held back by digest too");
    // Counted by check, upstream and block, and listed on the status page.
    assert_eq!(
        edge.metric(
            "sparkcr_edge_policy_refusals_total{block=\"strict\",check=\"cooldown\",upstream=\"up.test\"}"
        )
        .await,
        2.0,
        "team/fresh by tag and by digest"
    );
    let status = edge.status_json().await;
    let denials = status["recent_denials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        denials.iter().any(|d| d["block"] == "strict"
            && d["check"] == "cooldown"
            && d["repository"] == "team/fresh"
            && d["reference"] == "v1"),
        "{denials:?}"
    );

    // `policy release` on the running daemon: by tag (its newest digest) and by digest.
    let edge_arg = format!("http://{e}");
    let release = |reason: &str, image: &str| {
        run_cli(
            &[
                "policy", "release", "--edge", &edge_arg, "--reason", reason, image,
            ],
            &[],
        )
    };
    let (code, out, err) = release("vetted by the app team", "up.test/team/app:latest");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&new.manifest_digest) && out.contains("latest"),
        "{out}"
    );
    let (code, out, err) = release(
        "base image rebuild",
        &format!("up.test/team/fresh@{}", fresh.manifest_digest),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (status, digest, _) = get(&client, &url("/v2/team/app/manifests/latest")).await;
    assert_eq!(
        (status, digest.as_deref()),
        (200, Some(new.manifest_digest.as_str()))
    );
    let (status, _, _) = get(&client, &manifest("team/app", &new.manifest_digest)).await;
    assert_eq!(status, 200);
    let (status, digest, _) = get(&client, &url("/v2/team/fresh/manifests/v1")).await;
    assert_eq!(
        (status, digest.as_deref()),
        (200, Some(fresh.manifest_digest.as_str()))
    );
    edge.wait_for_log("vetted by the app team").await;
    assert!(edge
        .log_text()
        .contains("released from cooldown by an admin"));
    assert_eq!(
        edge.metric("sparkcr_edge_policy_cooldowns_total{decision=\"released\"}")
            .await,
        2.0
    );

    // Nothing to release: a digest no tag pointed at, and an upstream that is not there.
    let other = "sha256:".to_string() + &"0".repeat(64);
    for (image, says) in [
        (
            format!("up.test/team/app@{other}"),
            "no tag the edge has seen",
        ),
        (
            "nowhere.test/team/app:latest".to_string(),
            "no upstream of this edge",
        ),
    ] {
        let (code, out, err) = release("x", &image);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(says), "{image}: {err}");
    }
    // A release without a reason is refused; the admin API is for auth.admin_cidrs only.
    let body =
        r#"{"upstream":"up.test","repository":"team/app","reference":"latest","reason":" "}"#;
    let post = |client: reqwest::Client| {
        let url = url(RELEASE);
        async move {
            let r = client.post(url).body(body).send().await.expect("post");
            r.status().as_u16()
        }
    };
    assert_eq!(post(client.clone()).await, 400);
    let outsider = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    assert_eq!(post(outsider).await, 401, "not from auth.admin_cidrs");
}

/// [`get`], with the message of a `DENIED` refusal ("" for anything else).
async fn pull(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let (status, digest, body) = get(client, url).await;
    let msg = if status == 403 {
        message(&body)
    } else {
        String::new()
    };
    (status, digest, msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_signature_admits_only_images_signed_by_a_trusted_key() {
    use common::signing::*;
    let reg = Registry2::start();
    let keys = tempfile::tempdir().expect("keys");
    let (team, team_ed, stranger) = (TestKey::p256(), TestKey::ed25519(), TestKey::p256());
    let image = |repo: &'static str, seed: u64| {
        let reg = &reg;
        async move { push_image(reg, repo, Some("v1"), Format::Oci, seed, "amd64", &[4096]).await }
    };
    // Signed as `cosign sign` does by default (the .sig tag), by the P-256 key.
    let signed = image("team/signed", 91).await;
    sign(&reg, "team/signed", &signed.manifest_digest, &team).await;
    // Signed as an OCI 1.1 referrer, by the Ed25519 key.
    let referred = image("team/referred", 92).await;
    let subject = (
        referred.manifest_digest.as_str(),
        referred.media_type.as_str(),
        referred.manifest.len(),
    );
    sign_as_referrer(&reg, "team/referred", subject, &team_ed).await;
    // Signed by a key nobody trusts; signed for another digest; not signed.
    let strange = image("team/strange", 93).await;
    sign(&reg, "team/strange", &strange.manifest_digest, &stranger).await;
    let misdirected = image("team/misdirected", 94).await;
    sign_with_tag(
        &reg,
        "team/misdirected",
        &misdirected.manifest_digest,
        &signed.manifest_digest,
        &team,
    )
    .await;
    let unsigned = image("team/unsigned", 95).await;
    // A signed index: its platform manifests pass by digest. And one signed by Python's
    // `cryptography`, with its own key.
    let (index, children) = push_multi_platform(&reg, "team/multi", "v1", Format::Oci, 96).await;
    sign(&reg, "team/multi", &index.manifest_digest, &team).await;
    let python_signed = image("team/python", 97).await;
    let python_key = sign_with_python(
        &reg,
        "team/python",
        &python_signed.manifest_digest,
        keys.path(),
    );

    let p256 = team.write_public(keys.path(), "team.pub");
    let ed = team_ed.write_public(keys.path(), "team-ed.pub");
    let config = EdgeConfig::new("{dir}/data")
        .chunk_size("1MiB")
        .tag_ttl("1h")
        // Rarely a connection outlives its socket at shutdown and holds the drain for the
        // whole grace (seen 2 in ~70 runs; the server logs accepted and closed connections
        // and the count open at shutdown at debug level): the restart does not wait on it.
        .shutdown_grace("3s")
        .upstream(Upstream::new("up.test", reg.url()).default())
        .policy(
            PolicyBlock::allow("signed-only", &["team/**"]).require_signature(&[
                &p256,
                &ed,
                &python_key,
            ]),
        );
    let edge = config.start();
    let e = edge.http[0];
    let client = reqwest::Client::new();
    let tag_url = |repo: &str| format!("http://{e}/v2/{repo}/manifests/v1");
    let digest_url = |repo: &str, d: &str| format!("http://{e}/v2/{repo}/manifests/{d}");

    for (repo, want) in [
        ("team/signed", &signed.manifest_digest),
        ("team/referred", &referred.manifest_digest),
        ("team/multi", &index.manifest_digest),
        ("team/python", &python_signed.manifest_digest),
    ] {
        let (status, digest, msg) = pull(&client, &tag_url(repo)).await;
        assert_eq!(
            (status, digest.as_ref()),
            (200, Some(want)),
            "{repo}: {msg}"
        );
    }
    for (repo, reason) in [
        ("team/strange", "bad signature"),
        ("team/misdirected", "wrong digest"),
        ("team/unsigned", "no signature"),
    ] {
        let (status, _, msg) = pull(&client, &tag_url(repo)).await;
        assert_eq!(status, 403, "{repo}");
        assert!(
            msg.contains(reason) && msg.contains("\"signed-only\"") && msg.contains("team.pub"),
            "{repo}: {msg}"
        );
    }
    // By digest: a signed manifest, an index's platform manifest; not an unsigned one.
    let (status, _, msg) = pull(&client, &digest_url("team/signed", &signed.manifest_digest)).await;
    assert_eq!(status, 200, "{msg}");
    let (status, _, msg) = pull(
        &client,
        &digest_url("team/multi", &children[1].manifest_digest),
    )
    .await;
    assert_eq!(status, 200, "a signed index admits what it lists: {msg}");
    let (status, _, msg) = pull(
        &client,
        &digest_url("team/unsigned", &unsigned.manifest_digest),
    )
    .await;
    assert_eq!(status, 403);
    assert!(msg.contains("no signature"), "{msg}");
    let page = edge.status_page().await;
    assert!(
        page.contains("Recent policy denials") && page.contains("team/misdirected:v1"),
        "the status page lists the last denials"
    );
    // Real clients: skopeo pulls the signed image and shows the refusal of the unsigned one.
    let dest = tempfile::tempdir().expect("dest");
    let copy = |image: String, to: &str| {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--src-no-creds",
            "--retry-times",
            "0",
            &format!("docker://{e}/{image}"),
            &format!("dir:{}", dest.path().join(to).display()),
        ])
    };
    let (ok, out) = copy("team/signed:v1".into(), "signed");
    assert!(ok, "{out}");
    let (ok, out) = copy("team/misdirected:v1".into(), "misdirected");
    assert!(
        !ok && out.contains("wrong digest") && out.contains("signed-only"),
        "{out}"
    );
    assert!(
        edge.metric("sparkcr_edge_policy_signature_checks_total{verdict=\"verified\"}")
            .await
            >= 4.0
    );
    assert!(
        edge.metric("sparkcr_edge_policy_signature_checks_total{verdict=\"unsigned\"}")
            .await
            >= 1.0
    );

    // Offline on a warmed edge: restarted (no verdicts in memory), the upstream gone, the
    // signed image still checks from what the store holds.
    let mut edge = edge;
    edge.signal(libc::SIGTERM);
    let exit = edge.wait_exit(std::time::Duration::from_secs(20));
    assert_eq!(exit, Some(0), "edge log:\n{}", edge.log_text());
    let dir = std::mem::replace(&mut edge.dir, tempfile::tempdir().expect("tempdir"));
    drop(reg);
    let edge = Edge::start_in(dir, &config.to_toml(), &[]);
    let e = edge.http[0];
    let (status, digest, msg) =
        pull(&client, &format!("http://{e}/v2/team/signed/manifests/v1")).await;
    assert_eq!(
        (status, digest.as_ref()),
        (200, Some(&signed.manifest_digest)),
        "{msg}"
    );
    let (status, _, msg) = pull(
        &client,
        &format!("http://{e}/v2/team/unsigned/manifests/v1"),
    )
    .await;
    assert_eq!(status, 403, "{msg}");
}
