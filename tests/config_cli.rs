//! `check-config` and the config rules, through the real binary: exit codes, one-line
//! errors that name the file and the key, environment overrides, redaction.

mod common;
use common::{create_token, run_cli};

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("config.toml");
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn env_override_wins_over_file() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = write(
        &d,
        "[cache]\ntag_ttl = \"5m\"\n[server]\nlisten = [\"127.0.0.1:5000\"]\n",
    );
    let env = [
        ("SPARKCR_EDGE__CACHE__TAG_TTL", "90s"),
        (
            "SPARKCR_EDGE__SERVER__LISTEN",
            "127.0.0.1:6000,127.0.0.1:6001",
        ),
        ("SPARKCR_EDGE__STORAGE__MAX_SIZE", "3GiB"),
    ];
    let (code, out, err) = run_cli(&["check-config", "--config", &p], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tag_ttl = \"1m 30s\""), "{out}");
    assert!(
        out.contains("\"127.0.0.1:6000\"") && out.contains("\"127.0.0.1:6001\""),
        "{out}"
    );
    assert!(!out.contains("127.0.0.1:5000"), "{out}");
    assert!(out.contains("max_size = \"3GiB\""), "{out}");
}

#[test]
fn mistakes_exit_2_naming_file_and_key() {
    let d = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[server]\nlisten_on = [\"127.0.0.1:1\"]\n",
            "server.listen_on",
        ),
        ("[cache]\nttl = \"a week\"\n", "cache.ttl"),
        ("[cache]\ntag_ttl = 5\n", "cache.tag_ttl"),
        (
            "[server]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"/nonexistent/cert.pem\"\n",
            "server.tls_cert",
        ),
        ("[storage]\nmax_size = \"lots\"\n", "storage.max_size"),
        (
            "[[upstream]]\nname = \"x.io\"\nurl = \"x.io\"\n",
            "upstream[0].url",
        ),
    ];
    for (text, key) in cases {
        let p = write(&d, text);
        let (code, _out, err) = run_cli(&["check-config", "--config", &p], &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(&p), "names the file: {err}");
        assert!(err.contains(key), "names {key}: {err}");
    }
    // An override from the environment that is wrong says so.
    let p = write(&d, "");
    let (code, _o, err) = run_cli(
        &["check-config", "--config", &p],
        &[("SPARKCR_EDGE__CACHE__TTL", "soon")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("cache.ttl"), "{err}");
}

#[test]
fn missing_file_and_bad_usage_exit_2() {
    let (code, _, err) = run_cli(
        &["check-config", "--config", "/nonexistent/sparkcr.toml"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/sparkcr.toml"), "{err}");
    let (code, _, _) = run_cli(&["frobnicate"], &[]);
    assert_eq!(code, 2);
    let (code, out, _) = run_cli(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("sparkcr-edge "), "{out}");
    for sub in ["serve", "check-config"] {
        let (code, out, _) = run_cli(&[sub, "--help"], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("--config"), "{sub}: {out}");
    }
}

#[test]
fn secrets_are_redacted() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = write(
        &d,
        "[[upstream]]\nname = \"registry.lan:5000\"\nurl = \"https://registry.lan:5000\"\nusername = \"bot\"\npassword = \"hunter2\"\n",
    );
    let (code, out, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    // The effective config includes the built-in upstreams.
    assert!(out.contains("registry.k8s.io"), "{out}");
}

#[test]
fn inline_secrets_in_a_config_every_user_can_read_are_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::tempdir().expect("tempdir");
    let p = write(
        &d,
        "[[upstream]]\nname = \"registry.lan:5000\"\nurl = \"https://registry.lan:5000\"\nusername = \"bot\"\npassword = \"hunter2\"\n\
         [outbound]\nproxy = \"http://ghp_t0ken@proxy.lan:3128\"\n",
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    assert!(
        err.contains("upstream[0].password (registry.lan:5000)"),
        "{err}"
    );
    assert!(
        err.contains("outbound.proxy") && err.contains("password_file"),
        "{err}"
    );
    for secret in ["hunter2", "ghp_t0ken"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret}: {out}{err}"
        );
    }
    // 0640: no warning.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (code, _, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("readable by every user"), "{err}");
    // Secrets in files: no warning either, and a file that cannot be read is an error
    // naming the key.
    let secret = d.path().join("peer.token");
    std::fs::write(&secret, "spk_x\n").expect("write");
    let p = write(
        &d,
        &format!(
            "[cluster]\ntoken_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("readable by every user"), "{err}");
    let p = write(&d, "[cluster]\ntoken_file = \"/nonexistent/peer.token\"\n");
    let (code, _, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cluster.token_file") && err.contains("/nonexistent/peer.token"),
        "{err}"
    );
}

#[test]
fn shipped_config_is_valid() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/sparkcr-edge/config.toml"
    ))
    .expect("shipped config");
    let d = tempfile::tempdir().expect("tempdir");
    // The package makes the certificate on install; here the CLI makes one the same way.
    let tls = d.path().join("tls");
    let text = shipped.replace("/etc/sparkcr-edge/tls", &tls.display().to_string());
    let p = write(&d, &text);
    let (code, out, err) = run_cli(
        &[
            "tls",
            "self-signed",
            "--config",
            &p,
            "--out",
            tls.to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("docker.edge.lan") && out.contains("/etc/docker/certs.d/edge.lan/ca.crt"),
        "{out}"
    );
    let (code, out, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostname = \"edge.lan\""), "{out}");
    assert!(out.contains("0.0.0.0:443"), "{out}");
    // Without the certificate the shipped config is refused, naming the key.
    std::fs::remove_dir_all(&tls).expect("rm");
    let (code, _, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("server.tls_cert"), "{err}");
}

#[test]
fn the_printed_token_block_appended_to_a_config_loads_as_that_token() {
    let (_, block) = create_token("ci-runners", "push,pull:private");
    let d = tempfile::tempdir().expect("tempdir");
    let p = write(&d, &format!("[auth]\nanonymous = false\n\n{block}"));
    let (code, out, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(code, 0, "{block}{err}");
    let hash = block
        .lines()
        .find_map(|l| l.strip_prefix("hash = "))
        .expect("a hash line");
    assert!(out.contains("name = \"ci-runners\""), "{out}");
    assert!(out.contains(hash), "{out}");
    assert!(
        out.contains("\"pull:private\"") && out.contains("\"push\""),
        "{out}"
    );
}

/// `policy check` says which `[[policy]]` block decides each image, as the daemon would
/// (Docker Hub short names resolved), and exits 1 when any is denied; a bad reference is a
/// usage mistake (exit 2).
#[test]
fn policy_check_names_the_deciding_block() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[policy]]\nname = \"hub-official-only\"\nupstream = \"docker.io\"\nmatch = [\"library/*\"]\naction = \"allow\"\n\
         [[policy]]\nname = \"no-other-hub-images\"\nupstream = \"docker.io\"\naction = \"deny\"\n",
    );
    let (code, out, err) = run_cli(
        &[
            "policy",
            "check",
            "-c",
            &path,
            "nginx:1.27",
            "ghcr.io/org/app:v1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("docker.io/library/nginx: allowed by block \"hub-official-only\""),
        "{out}"
    );
    assert!(
        out.contains("ghcr.io/org/app: allowed (no block fits)"),
        "{out}"
    );
    let (code, out, err) = run_cli(&["policy", "check", "-c", &path, "bitnami/redis"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("docker.io/bitnami/redis: denied by block \"no-other-hub-images\""),
        "{out}"
    );
    assert!(err.contains("1 of 1 images are denied"), "{err}");
    let (code, _, err) = run_cli(&["policy", "check", "-c", &path, "bad ref"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid image reference"), "{err}");
}
