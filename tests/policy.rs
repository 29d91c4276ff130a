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

async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = client
        .get(url)
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
