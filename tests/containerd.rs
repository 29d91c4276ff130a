//! A real containerd (`ctr`, Debian's package) pulling through the edge with the
//! `hosts.toml` forms from the seeds: `[host."http://EDGE"]` (→ `?ns=`),
//! `[host."http://EDGE/<upstream>"]` (→ `/<upstream>/v2/...`) and
//! `[host."http://EDGE/v2/<upstream>"]` with `override_path` (→ `/v2/<upstream>/...`).
//! containerd runs privately (own root, state and socket under a temp dir); it needs root.

mod common;
use common::containerd::{ctr, ctr_pull, start_containerd};
use common::images::*;
use common::registry2::*;
use common::*;

const LAN: &str = "registry.test:5000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_through_every_hosts_toml_form() {
    let Some(ctrd) = start_containerd() else {
        return;
    };
    let reg = Registry2::start();
    let img = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Docker,
        7,
        "amd64",
        &[6000, 9000],
    )
    .await;
    let (index, _) = push_multi_platform(&reg, "team/app", "multi", Format::Oci, 30).await;
    let edge = Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{{dir}}/data\"\n\
         [audit]\npath = \"{{dir}}/audit.jsonl\"\n\
         [[upstream]]\nname = \"{LAN}\"\nurl = \"{}\"\n",
        reg.url()
    ));
    let e = edge.http[0];
    let forms = [
        ("ns", format!("[host.\"http://{e}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), "path=/v2/team/app/manifests/".to_string()),
        ("host-path", format!("[host.\"http://{e}/{LAN}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), format!("path=/{LAN}/v2/team/app/manifests/")),
        (
            "override-path",
            format!("[host.\"http://{e}/v2/{LAN}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"),
            format!("path=/v2/{LAN}/team/app/manifests/"),
        ),
    ];
    for (i, (name, host_block, logged)) in forms.iter().enumerate() {
        let hosts = tempfile::tempdir().expect("hosts dir");
        let hdir = hosts.path().join(LAN);
        std::fs::create_dir_all(&hdir).expect("mkdir");
        // The real server does not resolve: success proves the edge served it.
        std::fs::write(
            hdir.join("hosts.toml"),
            format!("server = \"https://{LAN}\"\n\n{host_block}"),
        )
        .expect("hosts.toml");
        let ns = format!("t{i}");
        for (tag, digest) in [
            ("v1", &img.manifest_digest),
            ("multi", &index.manifest_digest),
        ] {
            let reference = format!("{LAN}/team/app:{tag}");
            let (ok, out) = ctr_pull(&ctrd, &ns, hosts.path(), &reference);
            assert!(
                ok,
                "{name}: ctr pull {reference}: {out}\nedge log:\n{}",
                edge.log_text()
            );
            let (_, list) = ctr(&ctrd, &["-n", &ns, "images", "ls"]);
            assert!(
                list.contains(digest.as_str()),
                "{name}: image digest {digest} in:\n{list}"
            );
        }
        assert!(
            edge.log_text().contains(logged.as_str()),
            "{name}: the edge saw {logged}\n{}",
            edge.log_text()
        );
    }
    // A pull by digest: its audit records carry the digest as asked, no tag, and ctr's
    // user agent; each layer GET is a record of its own.
    let hosts = tempfile::tempdir().expect("hosts dir");
    let hdir = hosts.path().join(LAN);
    std::fs::create_dir_all(&hdir).expect("mkdir");
    std::fs::write(
        hdir.join("hosts.toml"),
        format!("server = \"https://{LAN}\"\n\n{}", forms[0].1),
    )
    .expect("hosts.toml");
    let audit = edge.dir.path().join("audit.jsonl");
    let source = ["--file", audit.to_str().expect("path")];
    let filters = ["--digest", &img.manifest_digest, "--client", "127.0.0.1"];
    // The pulls by tag above resolved to this digest too: count their records once they
    // are all on disk (the daemon writes within a second), and look only past them.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = wait_audit(&source, &filters, 0).len();
    assert!(
        before > 0,
        "the pulls by tag left records with the digest they resolved to"
    );
    let reference = format!("{LAN}/team/app@{}", img.manifest_digest);
    let (ok, out) = ctr_pull(&ctrd, "by-digest", hosts.path(), &reference);
    assert!(ok, "ctr pull {reference}: {out}");
    let by_digest = wait_audit(&source, &filters, before + 1);
    let by_digest = &by_digest[before..];
    let manifest = by_digest
        .iter()
        .find(|r| r["kind"] == "manifest" && r["status"] == 200)
        .unwrap_or_else(|| panic!("a record of the manifest by digest: {by_digest:?}"));
    assert!(manifest["tag"].is_null(), "{manifest}");
    assert_eq!(manifest["upstream"], LAN);
    assert_eq!(manifest["repository"], "team/app");
    assert!(
        manifest["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.contains("containerd")),
        "{manifest}"
    );
    for (layer, _) in &img.blobs {
        let got = wait_audit(&source, &["--digest", layer], 1);
        assert!(got.iter().any(|r| r["kind"] == "blob"), "{layer}: {got:?}");
    }
}

/// `client-config containerd --write` output, fed to a real `ctr --hosts-dir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_uses_generated_hosts_toml() {
    let Some(ctrd) = start_containerd() else {
        return;
    };
    let reg = Registry2::start();
    let img = push_image(
        &reg,
        "team/gen",
        Some("v1"),
        Format::Oci,
        41,
        "amd64",
        &[7000],
    )
    .await;
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{{dir}}/data\"\n\
         [[upstream]]\nname = \"{LAN}\"\nurl = \"{}\"\naliases = [\"lan\"]\n",
        reg.url()
    );
    let edge = Edge::start(&config);
    let config_path = edge.dir.path().join("config.toml");
    for (i, mode) in ["host", "path"].iter().enumerate() {
        let root = tempfile::tempdir().expect("root");
        let (code, out, err) = run_cli(
            &[
                "client-config",
                "containerd",
                "--config",
                config_path.to_str().expect("p"),
                "--edge",
                &format!("http://{}", edge.http[0]),
                "--upstream",
                LAN,
                "--mode",
                mode,
                "--write",
                "--root",
                root.path().to_str().expect("p"),
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        let hosts_dir = root.path().join("etc/containerd/certs.d");
        let toml = std::fs::read_to_string(hosts_dir.join(LAN).join("hosts.toml"))
            .expect("hosts.toml written");
        assert!(
            toml.contains(&format!("[host.\"http://{}", edge.http[0])),
            "{toml}"
        );
        let ns = format!("gen{i}");
        let reference = format!("{LAN}/team/gen:v1");
        let (ok, out) = ctr_pull(&ctrd, &ns, &hosts_dir, &reference);
        assert!(ok, "{mode}: {out}");
        let (_, list) = ctr(&ctrd, &["-n", &ns, "images", "ls"]);
        assert!(list.contains(&img.manifest_digest), "{mode}: {list}");
    }
    assert!(
        edge.log_text().contains("path=/v2/team/gen/manifests/v1"),
        "host mode went through the edge"
    );
    assert!(
        edge.log_text()
            .contains(&format!("path=/{LAN}/v2/team/gen/manifests/v1")),
        "path mode went through the edge"
    );
}

/// `[[policy]] require_signature` for containerd: the signed image pulls; the unsigned
/// one fails, and the audit trail says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pull_of_an_unsigned_image_fails_and_the_audit_record_names_why() {
    use common::edge_config::{EdgeConfig, PolicyBlock, Upstream};
    use common::signing::{sign, TestKey};
    let Some(ctrd) = start_containerd() else {
        return;
    };
    let reg = Registry2::start();
    let key = TestKey::p256();
    let signed = push_image(
        &reg,
        "team/signed",
        Some("v1"),
        Format::Oci,
        41,
        "amd64",
        &[5000],
    )
    .await;
    sign(&reg, "team/signed", &signed.manifest_digest, &key).await;
    push_image(
        &reg,
        "team/unsigned",
        Some("v1"),
        Format::Oci,
        42,
        "amd64",
        &[5000],
    )
    .await;
    let keys = tempfile::tempdir().expect("keys");
    let public = key.write_public(keys.path(), "team.pub");
    let config = EdgeConfig::new("{dir}/data")
        .upstream(Upstream::new(LAN, reg.url()))
        .policy(PolicyBlock::allow("signed-only", &["**"]).require_signature(&[&public]))
        .to_toml()
        + "[audit]\npath = \"{dir}/audit.jsonl\"\n";
    let edge = Edge::start(&config);
    let e = edge.http[0];
    let hosts = tempfile::tempdir().expect("hosts dir");
    let hdir = hosts.path().join(LAN);
    std::fs::create_dir_all(&hdir).expect("mkdir");
    std::fs::write(
        hdir.join("hosts.toml"),
        format!("server = \"https://{LAN}\"\n\n[host.\"http://{e}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .expect("hosts.toml");
    let (ok, out) = ctr_pull(
        &ctrd,
        "signed",
        hosts.path(),
        &format!("{LAN}/team/signed:v1"),
    );
    assert!(ok, "{out}");
    let (ok, out) = ctr_pull(
        &ctrd,
        "unsigned",
        hosts.path(),
        &format!("{LAN}/team/unsigned:v1"),
    );
    assert!(!ok, "{out}");
    let audit = edge.dir.path().join("audit.jsonl");
    let source = ["--file", audit.to_str().expect("path")];
    let refused = wait_audit(&source, &["--repo", &format!("{LAN}/team/unsigned")], 1);
    let record = refused
        .iter()
        .find(|r| r["kind"] == "manifest" && r["status"] == 403)
        .unwrap_or_else(|| panic!("a refused manifest record: {refused:?}"));
    let decision = record["decision"].as_str().unwrap_or_default();
    assert!(
        decision.contains("no signature") && decision.contains("signed-only"),
        "{record}"
    );
    let served = wait_audit(&source, &["--repo", &format!("{LAN}/team/signed")], 1);
    assert!(
        served.iter().any(|r| r["kind"] == "manifest"
            && r["status"] == 200
            && r["decision"]
                .as_str()
                .is_some_and(|d| d.contains("signature verified"))),
        "{served:?}"
    );
}
