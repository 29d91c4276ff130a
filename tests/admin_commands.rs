//! The commands an admin runs beside the daemon, through the real binary: `import` of a
//! hand-made (umoci-style) bundle, `cache purge`/`verify`, store ownership when run as
//! root, `client-config --write` backups and Docker auths, `tls self-signed --force`,
//! `prefetch`/`export --ca` against an HTTPS edge in front of a real registry:2, the
//! environment overrides, `check-config --quiet` and journald priorities.

mod common;
use common::images::*;
use common::registry2::*;
use common::*;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// An OCI image layout tar as umoci writes one: the manifest has no top-level
/// `mediaType`. Returns the bundle path and the layer's digest.
fn umoci_bundle(dir: &Path, name: &str, reference: &str, with_layer: bool) -> (PathBuf, String) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = pseudo_random(91, 50_000);
    let (config_d, layer_d) = (sha256_digest(config), sha256_digest(&layer));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": { "mediaType": OCI_CONFIG, "digest": config_d, "size": config.len() },
        "layers": [ { "mediaType": OCI_LAYER, "digest": layer_d, "size": layer.len() } ],
    })
    .to_string();
    let manifest_d = sha256_digest(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [ {
            "mediaType": OCI_MANIFEST, "digest": manifest_d, "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference },
        } ],
    })
    .to_string();
    let path = dir.join(name);
    let mut tar = tar::Builder::new(std::fs::File::create(&path).expect("bundle"));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).expect("append");
    };
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", index.as_bytes());
    add(&blob(&manifest_d), manifest.as_bytes());
    add(&blob(&config_d), config);
    if with_layer {
        add(&blob(&layer_d), &layer);
    }
    tar.finish().expect("finish");
    (path, layer_d)
}

/// A config file in `dir` for a store at `dir/store`, with an upstream that is never up.
fn store_config(dir: &Path) -> String {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{}\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\nconnect_timeout = \"1s\"\n",
            dir.join("store").display()
        ),
    )
    .expect("config");
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umoci_style_bundle_imports_and_serves_offline() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let (bundle, _) = umoci_bundle(d.path(), "b.tar", "docker.io/library/multi:v1", true);
    let (code, out, err) = run_cli(
        &["import", "--config", &cfg, bundle.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("manifests imported   1"), "{out}");
    assert!(out.contains("docker.io/library/multi:v1"), "{out}");
    // Pulled by tag with the upstream down: the manifest comes from the store.
    let edge = Edge::start(&std::fs::read_to_string(&cfg).expect("cfg"));
    let r = reqwest::Client::new()
        .get(edge.url("/v2/library/multi/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ct"),
        OCI_MANIFEST
    );
    // Counters of rare events are there at zero on a fresh daemon.
    let metrics = edge.metrics_text().await;
    for series in [
        "stale_served_total",
        "auth_denials_total",
        "tls_reloads_total",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// The store release 0.1.0 left behind (made by its `import`; see
/// `src/store/tests/schema.rs`), served by this release's daemon after an upgrade: the
/// index is migrated, every blob comes back byte for byte and the tag still answers, with
/// the upstream down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_made_by_release_0_1_is_served_after_the_upgrade() {
    let d = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-0.1.0"),
        &d.path().join("store"),
    );
    let cfg = store_config(d.path());
    let text = std::fs::read_to_string(&cfg).expect("cfg") + "[cache]\ntag_ttl = \"0\"\n";
    let text = text.replace("[storage]\n", "[storage]\nchunk_size = \"64KiB\"\n");
    let edge = Edge::start(&text);
    assert!(
        edge.log_text()
            .contains("store index migrated to the current schema"),
        "{}",
        edge.log_text()
    );
    let client = reqwest::Client::new();
    for (digest, size) in [
        (
            "sha256:032bdfd8527584b9757195671c5defdcb97a409562d99ad015553f8b22f435b7",
            204_923,
        ),
        (
            "sha256:3381de4ca9f3a477f25989dfc8b744e7916046b7aa369f61a9a2f7dc0963ec9e",
            196_608,
        ),
    ] {
        let r = client
            .get(edge.url(&format!("/v2/library/fixture/blobs/{digest}")))
            .send()
            .await
            .expect("get blob");
        assert_eq!(r.status(), 200, "{digest}");
        let body = r.bytes().await.expect("body");
        assert_eq!(body.len(), size);
        assert_eq!(sha256_digest(&body), digest);
    }
    let r = client
        .get(edge.url("/v2/library/fixture/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get manifest");
    assert_eq!(r.status(), 200);
    assert_eq!(
        sha256_digest(&r.bytes().await.expect("manifest")),
        "sha256:77e40d31ca6af0e41f9ba3906d39a644ac771e3764a84d4586a12223685fca0b"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture").flatten() {
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

#[test]
fn import_fails_loudly_on_what_it_cannot_import() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let (bundle, layer) = umoci_bundle(d.path(), "b.tar", "docker.io/library/multi:v1", false);
    let (code, out, err) = run_cli(
        &["import", "--config", &cfg, bundle.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("blob {layer} is neither in the bundle")),
        "{out}"
    );
    // An index entry whose manifest is not in the bundle is named, and its tag not kept.
    let text = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2,"annotations":{"org.opencontainers.image.ref.name":"docker.io/library/ghost:v1"}}]}"#;
    let path = d.path().join("ghost.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&path).expect("bundle"));
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "index.json", text.as_bytes())
        .expect("append");
    tar.finish().expect("finish");
    drop(tar);
    let (code, out, _) = run_cli(
        &["import", "--config", &cfg, path.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("docker.io/library/ghost:v1: its manifest"),
        "{out}"
    );
    assert!(out.contains("tags                 0"), "{out}");
}

/// The number at the end of the report line starting with `label`.
fn count(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
}

#[test]
fn purge_needs_a_filter_or_all_and_normalises_docker_hub_names() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let (bundle, _) = umoci_bundle(d.path(), "b.tar", "docker.io/library/multi:v1", true);
    let (code, out, err) = run_cli(
        &["import", "--config", &cfg, bundle.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cli(&["cache", "purge", "--config", &cfg], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--all"), "{err}");
    let (_, stats, _) = run_cli(&["cache", "stats", "--config", &cfg], &[]);
    // The one-word Docker Hub name finds docker.io/library/multi.
    let (code, out, err) = run_cli(
        &["cache", "purge", "--config", &cfg, "--repo", "multi"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count(&out, "manifests removed"), 1, "{out}");
    assert_eq!(count(&out, "tags removed"), 1, "{out}");
    let (_, after, _) = run_cli(&["cache", "stats", "--config", &cfg], &[]);
    assert_ne!(stats, after);
    let (code, out, _) = run_cli(&["cache", "purge", "--config", &cfg, "--all"], &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn verify_exits_non_zero_and_names_what_it_dropped() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let (bundle, layer) = umoci_bundle(d.path(), "b.tar", "docker.io/library/multi:v1", true);
    let (code, out, err) = run_cli(
        &["import", "--config", &cfg, bundle.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run_cli(&["cache", "verify", "--config", &cfg], &[]);
    assert_eq!(code, 0, "clean store: {out}");
    // Flip a byte in the largest chunk file (the layer's).
    let mut files = Vec::new();
    let mut stack = vec![d.path().join("store")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.components().any(|c| c.as_os_str() == "index") {
                files.push((std::fs::metadata(&p).expect("meta").len(), p));
            }
        }
    }
    files.sort();
    let (_, chunk) = files.last().expect("a chunk file");
    let mut bytes = std::fs::read(chunk).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(chunk, bytes).expect("write");
    let (code, out, err) = run_cli(&["cache", "verify", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("dropped blob {layer}")), "{out}");
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn root_on_the_service_users_store_is_sent_to_that_user() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (it chowns the store to nobody)");
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let cfg = store_config(d.path());
    let store = d.path().join("store");
    std::fs::create_dir(&store).expect("store dir");
    std::os::unix::fs::chown(&store, Some(65534), Some(65534)).expect("chown");
    let (bundle, _) = umoci_bundle(d.path(), "b.tar", "docker.io/library/multi:v1", true);
    let b = bundle.to_str().expect("p");
    let (code, out, err) = run_cli(&["import", "--config", &cfg, b], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!(
            "sudo -u nobody sparkcr-edge import --config {cfg} {b}"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&store).expect("dir").count(),
        0,
        "root wrote nothing"
    );
    // As the store's owner it works, and every file it made is that user's.
    let as_nobody = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = as_nobody(&["import", "--config", &cfg, b]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = as_nobody(&["cache", "verify", "--config", &cfg]);
    assert_eq!(code, Some(0), "{out}");
    let mut stack = vec![store];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let m = e.metadata().expect("meta");
            assert_eq!(m.uid(), 65534, "{} is not nobody's", e.path().display());
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn client_config_write_keeps_every_backup_and_docker_gets_auths() {
    use base64::Engine as _;
    let root = tempfile::tempdir().expect("root");
    let r = root.path().to_str().expect("p");
    let daemon_json = root.path().join("etc/docker/daemon.json");
    std::fs::create_dir_all(daemon_json.parent().expect("parent")).expect("mkdir");
    std::fs::write(&daemon_json, "{\"log-level\": \"warn\"}\n").expect("original");
    let docker_cfg = root.path().join("home/admin/.docker/config.json");
    std::fs::create_dir_all(docker_cfg.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &docker_cfg,
        r#"{"auths":{"ghcr.io":{"auth":"b3RoZXI6bG9naW4="}}}"#,
    )
    .expect("existing");
    let cfg_dir = tempfile::tempdir().expect("cfg");
    let cfg = store_config(cfg_dir.path());
    let args = [
        "client-config",
        "docker",
        "--config",
        &cfg,
        "--edge",
        "http://edge.lan:5000",
        "--write",
        "--root",
        r,
        "--token",
        "s3cret",
    ];
    for _ in 0..2 {
        let (code, out, err) = run_cli(&args, &[("HOME", "/home/admin")]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let backups: Vec<String> = std::fs::read_dir(daemon_json.parent().expect("p"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("daemon.json.bak."))
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
    let originals = backups
        .iter()
        .filter(|b| {
            std::fs::read_to_string(daemon_json.with_file_name(b))
                .expect("backup")
                .contains("log-level")
                && !std::fs::read_to_string(daemon_json.with_file_name(b))
                    .expect("backup")
                    .contains("registry-mirrors")
        })
        .count();
    assert_eq!(
        originals, 1,
        "the original survives in one backup: {backups:?}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&docker_cfg).expect("config.json"))
            .expect("json");
    let want = base64::engine::general_purpose::STANDARD.encode("sparkcr-edge:s3cret");
    assert_eq!(
        written["auths"]["https://index.docker.io/v1/"]["auth"],
        want.as_str()
    );
    assert_eq!(written["auths"]["edge.lan:5000"]["auth"], want.as_str());
    assert_eq!(
        written["auths"]["ghcr.io"]["auth"], "b3RoZXI6bG9naW4=",
        "other logins kept"
    );
    assert_eq!(
        std::fs::metadata(&docker_cfg).expect("meta").mode() & 0o777,
        0o600
    );
    // Without --write the entry is printed.
    let print = [
        "client-config",
        "docker",
        "--config",
        &cfg,
        "--edge",
        "http://edge.lan:5000",
    ];
    let (code, out, _) = run_cli(
        &print,
        &[("HOME", "/home/admin"), ("SPARKCR_EDGE_TOKEN", "s3cret")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("https://index.docker.io/v1/") && out.contains(&want),
        "{out}"
    );
}

#[test]
fn tls_force_keeps_the_ca_and_new_ca_replaces_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let out_dir = d.path().join("tls");
    let o = out_dir.to_str().expect("p");
    let base = [
        "tls",
        "self-signed",
        "--config",
        &cfg,
        "--hostname",
        "edge.lan",
        "--out",
        o,
    ];
    let (code, out, err) = run_cli(&base, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let ca = std::fs::read(out_dir.join("ca.pem")).expect("ca");
    let cert = std::fs::read(out_dir.join("cert.pem")).expect("cert");
    let (code, _, err) = run_cli(&base, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--force") && err.contains("--new-ca"), "{err}");
    let mut force = base.to_vec();
    force.push("--force");
    let (code, out, err) = run_cli(&force, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("need no change"), "{out}");
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).expect("ca"), ca);
    assert_ne!(std::fs::read(out_dir.join("cert.pem")).expect("cert"), cert);
    let mut new_ca = base.to_vec();
    new_ca.push("--new-ca");
    let (code, out, err) = run_cli(&new_ca, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(std::fs::read(out_dir.join("ca.pem")).expect("ca"), ca);
    assert!(out.contains("trust it"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_and_export_through_an_https_edge_with_ca() {
    let reg = Registry2::start();
    push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Oci,
        71,
        "amd64",
        &[20_000],
    )
    .await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost", "127.0.0.1"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("ca");
    let edge = Edge::start(&format!(
        "builtin_upstreams = false\n[server]\nlisten = []\ntls_listen = [\"127.0.0.1:0\"]\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]\npath = \"{{dir}}/data\"\n\
         [[upstream]]\nname = \"admin.test\"\nurl = \"{}\"\n",
        cert.display(),
        key.display(),
        reg.url()
    ));
    let url = format!("https://127.0.0.1:{}", edge.https[0].port());
    let image = "admin.test/team/app:v1";
    let (code, out, err) = run_cli(&["prefetch", "--edge", &url, image], &[]);
    assert_ne!(code, 0, "an unknown CA is refused: {out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("certificate") && all.contains("--ca"), "{all}");
    let c = ca_file.to_str().expect("p");
    let (code, out, err) = run_cli(&["prefetch", "--edge", &url, "--ca", c, image], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let bundle = dir.path().join("b.tar");
    let (code, out, err) = run_cli(
        &[
            "export",
            "--edge",
            &url,
            "--ca",
            c,
            "--out",
            bundle.to_str().expect("p"),
            image,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("platforms: linux/"), "{out}");
    assert!(out.contains("--all-platforms"), "{out}");
    assert!(bundle.exists());
}

#[test]
fn env_overrides_express_lists_and_tables_and_name_the_variable() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("config.toml");
    std::fs::write(
        &p,
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:5000\"]\ntls_listen = [\"127.0.0.1:5443\"]\n\
         tls_cert = \"/nonexistent/cert.pem\"\n",
    )
    .expect("write");
    let p = p.to_str().expect("p");
    let ups = r#"[{name = "registry.lan:5000", url = "https://registry.lan:5000"}]"#;
    let (code, out, err) = run_cli(
        &["check-config", "--config", p],
        &[
            ("SPARKCR_EDGE__SERVER__TLS_LISTEN", ""),
            ("SPARKCR_EDGE__UPSTREAM", ups),
        ],
    );
    assert_eq!(code, 0, "an empty list drops the TLS listener: {err}");
    assert!(out.contains("tls_listen = []"), "{out}");
    assert!(out.contains("registry.lan:5000"), "{out}");
    for (var, value) in [
        ("SPARKCR_EDGE__CACHE__TTL", "soon"),
        ("SPARKCR_EDGE__AUTH__ALLOW_CIDRS", "10.0.0.0/33"),
        ("SPARKCR_EDGE__UPSTREAM", "registry.lan"),
        ("SPARKCR_EDGE__SERVER__LISTEN", ""),
        (
            "SPARKCR_EDGE__UPSTREAM",
            r#"[{name = "x.lan", url = "x.lan"}]"#,
        ),
    ] {
        let (code, _, err) = run_cli(
            &["check-config", "--config", p],
            &[("SPARKCR_EDGE__SERVER__TLS_LISTEN", ""), (var, value)],
        );
        assert_eq!(code, 2, "{var}={value}: {err}");
        assert!(
            err.contains(&format!("environment variable {var}")),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn check_config_quiet_and_journal_priorities() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = store_config(d.path());
    let (code, out, err) = run_cli(&["check-config", "--quiet", "--config", &cfg], &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    // With stderr a journal stream ($JOURNAL_STREAM names its device and inode), an error
    // carries the `<3>` prefix journald turns into priority err; elsewhere it does not.
    let log = d.path().join("stderr");
    let file = std::fs::File::create(&log).expect("log");
    let m = file.metadata().expect("meta");
    let status = std::process::Command::new(BIN)
        .args(["check-config", "--quiet", "--config", "/nonexistent.toml"])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(file)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&log).expect("read");
    assert!(text.starts_with("<3>sparkcr-edge: "), "{text}");
    let (_, _, plain) = run_cli(
        &["check-config", "--config", "/nonexistent.toml"],
        &[("JOURNAL_STREAM", "1:2")],
    );
    assert!(plain.starts_with("sparkcr-edge: "), "{plain}");
}

#[test]
fn admin_commands_do_not_need_the_servers_private_key() {
    // On a packaged box key.pem is 0640 root:sparkcr-edge, so an admin in neither cannot
    // read it; here it is simply absent. Commands that never use it still run; the ones
    // that serve or check it say which key and what to do.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             hostname = \"edge.lan\"\ntls_cert = \"{d}/tls/cert.pem\"\ntls_key = \"{d}/tls/key.pem\"\n\
             [storage]\npath = \"{d}/store\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n",
            d = dir.path().display()
        ),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let (code, out, err) = run_cli(&["client-config", "containerd", "--config", &cfg], &[]);
    assert_eq!(code, 0, "client-config without the key: {out}{err}");
    assert!(out.contains("hosts.toml"), "{out}");
    let (code, out, err) = run_cli(&["cache", "stats", "--config", &cfg], &[]);
    assert_eq!(code, 0, "cache stats without the key: {out}{err}");
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, 2, "check-config does need the pair: {err}");
    assert!(
        err.contains("server.tls_cert") && err.contains("tls self-signed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_names_tag_and_digest_and_is_searchable_after_a_restart_and_a_rotation() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Docker,
        81,
        "amd64",
        &[40_000],
    )
    .await;
    let layer = image.blobs[1].0.clone();
    let (secret, token_block) = create_token("ci", "pull:public");
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n\
         [storage]\npath = \"{{dir}}/data\"\n\
         [audit]\npath = \"{{dir}}/audit.jsonl\"\nmax_size = \"64KiB\"\nkeep = 2\n\
         [auth]\nanonymous = true\n{token_block}\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\n\
         [[upstream]]\nname = \"lan.test\"\nurl = \"{url}\"\nprivate = true\n",
        url = reg.url()
    );
    let mut edge = Edge::start(&config);
    let config_path = edge.dir.path().join("config.toml");
    let by_config = ["--config", config_path.to_str().expect("path")];
    let http = reqwest::Client::new();
    let base = format!("http://{}", edge.http[0]);
    let manifest = |path: &str| {
        http.get(format!("{base}/v2/{path}"))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .header("user-agent", "containerd/v2.1.1")
    };
    // By tag with a token, twice (a miss, then a hit); a layer's first 100 bytes; a private
    // upstream the token may not read.
    for _ in 0..2 {
        let r = manifest("registry.test/team/app/manifests/v1")
            .basic_auth("ci", Some(&secret))
            .send()
            .await
            .expect("manifest");
        assert_eq!(r.status(), 200);
    }
    let r = http
        .get(format!("{base}/v2/registry.test/team/app/blobs/{layer}"))
        .header("range", "bytes=0-99")
        .send()
        .await
        .expect("blob");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").len(), 100);
    let r = manifest("lan.test/team/app/manifests/v1")
        .basic_auth("ci", Some(&secret))
        .send()
        .await
        .expect("private");
    assert_eq!(r.status(), 403);

    let by_tag = wait_audit(
        &by_config,
        &["--repo", "registry.test/team/app", "--tag", "v1"],
        2,
    );
    assert_eq!(by_tag.len(), 2, "{by_tag:?}");
    for (r, cache) in by_tag.iter().zip(["miss", "hit"]) {
        assert_eq!(
            r["digest"],
            image.manifest_digest.as_str(),
            "the digest the tag resolved to"
        );
        assert_eq!(r["who"], "ci");
        assert_eq!(r["cache"], cache, "{r}");
        assert_eq!(r["user_agent"], "containerd/v2.1.1");
        assert_eq!(
            r["media_type"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(r["bytes"], image.manifest.len() as u64);
        assert_eq!(
            (r["status"].as_u64(), r["result"].as_str()),
            (Some(200), Some("complete"))
        );
        assert!(!r.to_string().contains(&secret), "never a secret: {r}");
    }
    let ranged = wait_audit(&by_config, &["--digest", &layer[7..19]], 1);
    assert_eq!(ranged.len(), 1, "{ranged:?}");
    assert_eq!(ranged[0]["kind"], "blob");
    assert_eq!(ranged[0]["range"], "bytes=0-99");
    assert_eq!(
        (ranged[0]["status"].as_u64(), ranged[0]["bytes"].as_u64()),
        (Some(206), Some(100))
    );
    assert_eq!(ranged[0]["who"], "-", "anonymous");
    let denied = wait_audit(&by_config, &["--upstream", "lan.test"], 1);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0]["status"].as_u64(), denied[0]["cache"].as_str()),
        (Some(403), Some("denied"))
    );
    let decision = denied[0]["decision"].as_str().unwrap_or_default();
    assert!(decision.starts_with("DENIED: "), "{decision}");
    // A wrong password is audited too, naming what it was for and never the password.
    let r = manifest("registry.test/team/app/manifests/v2")
        .basic_auth("ci", Some("not-the-secret"))
        .send()
        .await
        .expect("bad password");
    assert_eq!(r.status(), 401);
    let bad = wait_audit(&by_config, &["--tag", "v2"], 1);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["who"], "(bad credentials)");
    assert_eq!(
        (bad[0]["status"].as_u64(), bad[0]["cache"].as_str()),
        (Some(401), Some("denied"))
    );
    assert!(!bad[0].to_string().contains("not-the-secret"));
    assert!(
        bad[0]["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("UNAUTHORIZED")),
        "{}",
        bad[0]
    );
    // The log stream carries the same record.
    edge.wait_for_log(&format!("digest={}", image.manifest_digest))
        .await;
    assert!(edge.log_text().contains("tag=v1"), "{}", edge.log_text());

    // Enough hits to pass 64 KiB: the file is rotated, the oldest records move to `.1`.
    for _ in 0..300 {
        let r = http
            .head(format!(
                "{base}/v2/registry.test/team/app/manifests/{}",
                image.manifest_digest
            ))
            .send()
            .await
            .expect("head");
        assert_eq!(r.status(), 200);
    }
    let audit_file = edge.dir.path().join("audit.jsonl");
    let all = wait_audit(&by_config, &["--repo", "registry.test/team/app"], 304);
    assert_eq!(
        all.len(),
        304,
        "every record kept (two files fit within keep = 2)"
    );
    assert!(
        Path::new(&format!("{}.1", audit_file.display())).exists(),
        "rotated past max_size"
    );
    let mode = std::fs::metadata(&audit_file).expect("audit file").mode();
    assert_eq!(
        mode & 0o777,
        0o640,
        "records name clients: not world-readable"
    );

    // After a restart the same file is appended to, and the search spans every file.
    edge.signal(libc::SIGTERM);
    assert_eq!(edge.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    let dir = std::mem::replace(&mut edge.dir, tempfile::tempdir().expect("tempdir"));
    let edge = Edge::start_in(dir, &config, &[]);
    let r = http
        .get(format!(
            "http://{}/v2/registry.test/team/app/manifests/v1",
            edge.http[0]
        ))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .basic_auth("ci", Some(&secret))
        .send()
        .await
        .expect("after restart");
    assert_eq!(r.status(), 200);
    let by_tag = wait_audit(
        &by_config,
        &["--repo", "registry.test/team/app", "--tag", "v1"],
        3,
    );
    assert_eq!(
        by_tag.len(),
        3,
        "before and after the restart, across the rotation"
    );
    assert_eq!(
        by_tag[2]["cache"], "hit",
        "a hit from the store kept over the restart"
    );
    // The repository alone names it on every upstream (the refused lan.test request too).
    let everywhere = wait_audit(&by_config, &["--repo", "team/app", "--tag", "v1"], 4);
    assert_eq!(everywhere.len(), 4, "{everywhere:?}");

    // The table: one line per record, the image as upstream/repo:tag@short-digest.
    let (code, out, err) = run_cli(
        &[
            "audit",
            "--config",
            config_path.to_str().expect("p"),
            "--tag",
            "v1",
            "--limit",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("CACHE"),
        "{out}"
    );
    let short = &image.manifest_digest[..19];
    assert!(
        lines[1].contains(&format!("registry.test/team/app:v1@{short}")),
        "{out}"
    );
    assert!(lines[1].contains("ci") && lines[1].contains("hit"), "{out}");
    // Nothing matches: an empty table and a sentence on stderr; a bad filter: exit 2.
    let (code, _, err) = run_cli(
        &[
            "audit",
            "--config",
            config_path.to_str().expect("p"),
            "--tag",
            "nope",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(err.contains("no audit record matches"), "{err}");
    let (code, _, err) = run_cli(
        &[
            "audit",
            "--config",
            config_path.to_str().expect("p"),
            "--since",
            "yesterday-ish",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2h"), "the error shows the forms: {err}");
    drop(edge);
}

#[test]
fn audit_without_a_file_says_which_key_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[storage]\npath = \"{}/data\"\n", dir.path().display()),
    )
    .expect("config");
    let (code, _, err) = run_cli(&["audit", "--config", config.to_str().expect("p")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("audit.path") && err.contains("--file"),
        "{err}"
    );
    // A directory that does not exist is a config mistake named at check time.
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{d}/data\"\n[audit]\npath = \"{d}/missing/audit.jsonl\"\n",
            d = dir.path().display()
        ),
    )
    .expect("config");
    let (code, _, err) = run_cli(
        &["check-config", "--config", config.to_str().expect("p")],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("audit.path") && err.contains("missing"),
        "{err}"
    );
}

/// Pulls `image` (manifest by tag, then every blob) from the edge at `base`; the bytes of
/// the answers and the number of requests.
async fn pull_all(base: &str, repo: &str, image: &PushedImage) -> (u64, u64) {
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/v2/{repo}/manifests/v1"))
        .header("accept", image.media_type.as_str())
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), 200);
    let mut bytes = r.bytes().await.expect("manifest body").len() as u64;
    for (d, blob) in &image.blobs {
        let r = http
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("blob body");
        assert_eq!(body.len(), blob.len());
        bytes += body.len() as u64;
    }
    (bytes, 1 + image.blobs.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_edge_saved_is_counted_kept_across_a_restart_and_shown() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Docker,
        83,
        "amd64",
        &[60_000, 25_000],
    )
    .await;
    let config = format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n\
         [storage]\npath = \"{{dir}}/data\"\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\n",
        reg.url()
    );
    let mut edge = Edge::start(&config);
    let base = format!("http://{}", edge.http[0]);
    let repo = "registry.test/team/app";
    let (first, _) = pull_all(&base, repo, &image).await;
    edge.wait_fills_settled().await;
    let (second, requests) = pull_all(&base, repo, &image).await;
    assert_eq!(first, second);
    let series = |name: &str| format!("sparkcr_edge_{name}{{upstream=\"registry.test\"}}");
    // The first pull crossed the WAN; the second, all hits, saved every byte and request.
    assert_eq!(
        edge.metric(&series("saved_bytes_total")).await as u64,
        second
    );
    assert_eq!(
        edge.metric(&series("saved_requests_total")).await as u64,
        requests
    );
    let s = edge.status_json().await;
    assert_eq!(s["savings"]["total"]["bytes"], second, "{}", s["savings"]);
    assert_eq!(s["savings"]["today"]["requests"], requests);
    assert_eq!(s["savings"]["upstreams"][0]["upstream"], "registry.test");
    assert_eq!(s["savings"]["daily"].as_array().map(Vec::len), Some(30));

    // Kept in the store: after a restart the history holds it, and adds to it.
    edge.signal(libc::SIGTERM);
    assert_eq!(edge.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    let config_path = edge.dir.path().join("config.toml");
    let (code, out, err) = run_cli(
        &[
            "cache",
            "stats",
            "--config",
            config_path.to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let human = bytesize::ByteSize(second).to_string();
    assert!(out.contains("WAN saved"), "{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("registry.test"))
        .unwrap_or_else(|| panic!("a line for the upstream: {out}"));
    assert!(line.contains(&human), "{human} in {line}");
    let dir = std::mem::replace(&mut edge.dir, tempfile::tempdir().expect("tempdir"));
    let edge = Edge::start_in(dir, &config, &[]);
    let base = format!("http://{}", edge.http[0]);
    let s = edge.status_json().await;
    assert_eq!(
        s["savings"]["total"]["bytes"], second,
        "kept over the restart"
    );
    pull_all(&base, repo, &image).await;
    let s = edge.status_json().await;
    assert_eq!(s["savings"]["total"]["bytes"], 2 * second);
    assert_eq!(s["savings"]["last_7_days"]["requests"], 2 * requests);
    // The page shows it, with the exact figure in a data attribute.
    let page = edge.status_page().await;
    assert!(
        page.contains(&format!(
            "data-upstream=\"all\" data-today=\"{}\"",
            2 * second
        )),
        "the WAN saved table"
    );
    assert!(page.contains("id=\"chart-saved\""));
}
