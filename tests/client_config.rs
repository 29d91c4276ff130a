//! `sparkcr-edge client-config` output fed to real clients: skopeo (the containers/image
//! library Podman and CRI-O use) reads the generated `registries.conf.d` file and pulls
//! through the edge; the generated Docker `daemon.json` is merged into an existing one.

mod common;
use common::images::*;
use common::registry2::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_uses_generated_registries_conf() {
    let reg = Registry2::start();
    let img = push_image(
        &reg,
        "team/gen",
        Some("v1"),
        Format::Docker,
        42,
        "amd64",
        &[6000],
    )
    .await;
    let edge = Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"edge.test\"\n[storage]\npath = \"{{dir}}/data\"\n\
         [[upstream]]\nname = \"gen.test\"\nurl = \"{}\"\naliases = [\"gen\"]\n",
        reg.url()
    ));
    let config_path = edge.dir.path().join("config.toml");
    let root = tempfile::tempdir().expect("root");
    for client in ["podman", "crio"] {
        let (code, out, err) = run_cli(
            &[
                "client-config",
                client,
                "--config",
                config_path.to_str().expect("p"),
                "--edge",
                &format!("http://{}", edge.http[0]),
                "--mode",
                "path",
                "--write",
                "--root",
                root.path().to_str().expect("p"),
            ],
            &[],
        );
        assert_eq!(code, 0, "{client}: {out}{err}");
    }
    // The second write backed up the first.
    let conf = root
        .path()
        .join("etc/containers/registries.conf.d/sparkcr-edge.conf");
    let backups = std::fs::read_dir(conf.parent().expect("dir"))
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".bak."))
        .count();
    assert_eq!(backups, 1);
    let dest = root.path().join("out");
    let out = std::process::Command::new("skopeo")
        .args([
            "--registries-conf",
            conf.to_str().expect("p"),
            "copy",
            "--retry-times",
            "0",
            "docker://gen.test/team/gen:v1",
        ])
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = std::fs::read(dest.join("manifest.json")).expect("manifest");
    assert_eq!(sha256_digest(&m), img.manifest_digest);
    assert!(
        edge.log_text()
            .contains("path=/v2/gen.test/team/gen/manifests/v1"),
        "the mirror (the edge) served it"
    );
    // --mode host is refused for Podman with a reason.
    let (code, _, err) = run_cli(
        &[
            "client-config",
            "podman",
            "--config",
            config_path.to_str().expect("p"),
            "--mode",
            "host",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("use --mode path"), "{err}");
}

#[test]
fn docker_daemon_json_is_merged_with_a_backup() {
    let root = tempfile::tempdir().expect("root");
    let dj = root.path().join("etc/docker/daemon.json");
    std::fs::create_dir_all(dj.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &dj,
        "{\"log-driver\":\"journald\",\"registry-mirrors\":[\"https://old\"]}",
    )
    .expect("write");
    let (code, out, err) = run_cli(
        &[
            "client-config",
            "docker",
            "--edge",
            "https://edge.lan",
            "--write",
            "--root",
            root.path().to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dj).expect("read")).expect("json");
    assert_eq!(v["log-driver"], "journald");
    assert_eq!(
        v["registry-mirrors"],
        serde_json::json!(["https://edge.lan"])
    );
    assert!(out.contains("systemctl restart docker"), "{out}");
    // A broken existing file is left alone with a clear error.
    std::fs::write(&dj, "{not json").expect("write");
    let (code, _, err) = run_cli(
        &[
            "client-config",
            "docker",
            "--edge",
            "https://edge.lan",
            "--write",
            "--root",
            root.path().to_str().expect("p"),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(std::fs::read_to_string(&dj).expect("read"), "{not json");
}
