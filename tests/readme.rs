//! The README, checked against the binary so a line cannot go stale unnoticed: every
//! `sparkcr-edge …` command it shows names a real subcommand and real flags (complete ones
//! are run for real), and its table of defaults matches the built-in defaults and the
//! packaged config, which differ in exactly the keys the table lists.

mod common;
use common::*;
use std::collections::BTreeMap;

const README: &str = include_str!("../README.md");
const PACKAGED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sparkcr-edge/config.toml");

/// Every command line the README shows: code-block lines and inline code spans that start
/// with `sparkcr-edge` (after an optional `sudo` / `sudo -u USER`).
fn readme_commands() -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let candidates: Vec<String> = if in_block {
            vec![line
                .split(" #")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()]
        } else {
            line.split('`')
                .skip(1)
                .step_by(2)
                .map(|s| s.trim().to_string())
                .collect()
        };
        for c in candidates {
            let c = c.trim_start_matches("$ ");
            let c = c.strip_prefix("sudo -u sparkcr-edge ").unwrap_or(c);
            let c = c.strip_prefix("sudo ").unwrap_or(c);
            if let Some(rest) = c.strip_prefix("sparkcr-edge ") {
                out.push(rest.replace("\\|", "|"));
            }
        }
    }
    out
}

fn help(path: &[&str]) -> Option<String> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let (code, out, _) = run_cli(&args, &[]);
    (code == 0).then_some(out)
}

#[test]
fn every_readme_command_names_real_subcommands_and_flags() {
    let commands = readme_commands();
    assert!(commands.len() > 20, "found only {commands:?}");
    // The packaged config stands in for /etc/sparkcr-edge/config.toml, with a TLS pair.
    let tls = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run_cli(
        &[
            "tls",
            "self-signed",
            "--config",
            "/dev/null",
            "--out",
            tls.path().to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let cert = tls.path().join("cert.pem").display().to_string();
    let key = tls.path().join("key.pem").display().to_string();
    let env = [
        ("SPARKCR_EDGE__SERVER__TLS_CERT", cert.as_str()),
        ("SPARKCR_EDGE__SERVER__TLS_KEY", key.as_str()),
    ];
    let mut ran = 0;
    for cmd in &commands {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if words.first().is_none_or(|w| w.contains('…')) {
            continue; // `sparkcr-edge …`: any command
        }
        if words.first() == Some(&"--version") {
            let (code, out, _) = run_cli(&["--version"], &[]);
            assert_eq!(code, 0);
            assert!(out.starts_with("sparkcr-edge "));
            continue;
        }
        // The subcommand path: leading words that are subcommands (`cache purge`, `tls
        // self-signed`, `client-config`); `docker|containerd|...` is an argument.
        let mut path: Vec<&str> = Vec::new();
        let mut text = None;
        for w in &words {
            if w.starts_with('-') || w.contains(['|', '<', '[', '(', '/', '.']) {
                break;
            }
            let mut candidate = path.clone();
            candidate.push(w);
            match help(&candidate) {
                Some(t) => {
                    path = candidate;
                    text = Some(t);
                }
                None => break,
            }
        }
        let text = text.unwrap_or_else(|| panic!("README command {cmd:?}: no such subcommand"));
        // Flags, also inside `[--flag X]`, `(--a \| --b)` and `--force|--new-ca`.
        let flags: Vec<String> = words
            .iter()
            .flat_map(|w| w.split('|'))
            .filter_map(|w| w.find("--").map(|at| &w[at..]))
            .map(|f| {
                f.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect()
            })
            .filter(|f: &String| f.len() > 2)
            .collect();
        for flag in flags {
            assert!(
                text.contains(&format!("{flag} "))
                    || text.contains(&format!("{flag}\n"))
                    || text.contains(&format!("{flag}="))
                    || text.contains(&format!("{flag} <")),
                "README command {cmd:?}: `sparkcr-edge {}` has no {flag}",
                path.join(" ")
            );
        }
        // Complete commands (no placeholders) that only print are run for real.
        let complete = !cmd.contains(['|', '<', '[', '…', '(']) && !cmd.contains("...");
        let prints = matches!(
            path.as_slice(),
            ["client-config", ..] | ["check-config"] | ["token", "create"]
        );
        if complete && prints && words.len() > 1 {
            let mut args: Vec<&str> = words
                .iter()
                .map(|w| {
                    if *w == "/etc/sparkcr-edge/config.toml" {
                        PACKAGED
                    } else {
                        *w
                    }
                })
                .collect();
            if text.contains("--config") && !args.contains(&"--config") {
                args.extend(["--config", "/dev/null"]);
            }
            let (code, out, err) = run_cli(&args, &env);
            assert_eq!(code, 0, "README command {cmd:?} fails: {out}{err}");
            ran += 1;
        }
    }
    assert!(ran >= 5, "ran only {ran} README commands for real");
}

/// `key = value` lines of `check-config` output, by dotted key (arrays of tables skipped).
fn effective(args: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, toml::Value> {
    let (code, out, err) = run_cli(args, env);
    assert_eq!(code, 0, "{args:?}: {err}");
    let table: toml::Table = out.parse().expect("check-config prints TOML");
    let mut flat = BTreeMap::new();
    for (section, v) in table {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    flat.insert(format!("{section}.{k}"), v);
                }
            }
            toml::Value::Array(_) => {}
            other => {
                flat.insert(section, other);
            }
        }
    }
    flat
}

#[test]
fn defaults_table_matches_built_in_and_packaged_configs() {
    let tls = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run_cli(
        &[
            "tls",
            "self-signed",
            "--config",
            "/dev/null",
            "--out",
            tls.path().to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let cert = tls.path().join("cert.pem").display().to_string();
    let key = tls.path().join("key.pem").display().to_string();
    let built_in = effective(&["check-config", "--config", "/dev/null"], &[]);
    let packaged = effective(
        &["check-config", "--config", PACKAGED],
        &[
            ("SPARKCR_EDGE__SERVER__TLS_CERT", &cert),
            ("SPARKCR_EDGE__SERVER__TLS_KEY", &key),
        ],
    );
    let table = README
        .split("<!-- defaults-table -->")
        .nth(1)
        .and_then(|t| t.split("<!-- /defaults-table -->").next())
        .expect("README has the defaults table");
    let mut listed = BTreeMap::new();
    for row in table.lines().skip(2).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
        listed.insert(
            cells[1].to_string(),
            (cells[2].to_string(), cells[3].to_string()),
        );
    }
    let cell_matches =
        |cell: &str, value: &toml::Value| match format!("v = {cell}").parse::<toml::Table>() {
            Ok(t) => t.get("v") == Some(value),
            // Free text (storage.path's "$STATE_DIRECTORY, else ./sparkcr-edge-data").
            Err(_) => value.as_str().is_some_and(|s| cell.contains(s)),
        };
    for (key, packaged_value) in &packaged {
        let built_in_value = built_in
            .get(key)
            .unwrap_or_else(|| panic!("{key} has no built-in value"));
        // The test points the packaged TLS pair at a temp dir; the file's own paths are the built-in ones.
        if key == "server.tls_cert" || key == "server.tls_key" {
            continue;
        }
        match listed.get(key) {
            None => assert_eq!(
                packaged_value, built_in_value,
                "{key} differs between the packaged config and the built-in default but is not in the README's table"
            ),
            Some((b, p)) => {
                assert!(cell_matches(b, built_in_value), "README says built-in {key} = {b}, it is {built_in_value}");
                assert!(cell_matches(p, packaged_value), "README says packaged {key} = {p}, it is {packaged_value}");
            }
        }
    }
    assert!(listed.len() >= 5, "{listed:?}");
}

/// `rust-version` in Cargo.toml is the highest `rust-version` of the locked crates (what
/// building really needs), and the README and `scripts/test` say the same.
#[test]
fn the_rust_version_is_what_the_locked_crates_need() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest: toml::Table = std::fs::read_to_string(format!("{root}/Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let declared = manifest["package"]["rust-version"]
        .as_str()
        .expect("package.rust-version is set")
        .to_string();
    // The crates built on this host (the README's Debian/Ubuntu box): a fresh machine has
    // downloaded only those, so `--offline` works for them and not for other platforms'.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let version = |v: &str| -> Vec<u32> {
        let mut parts: Vec<u32> = v
            .split('.')
            .map(|n| n.parse().expect("a numeric rust-version"))
            .collect();
        parts.resize(3, 0);
        parts
    };
    let (needed, by) = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] != "sparkcr-edge")
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            Some((version(v), format!("{} {}", p["name"], p["version"])))
        })
        .max()
        .expect("some locked crate declares a rust-version");
    assert_eq!(
        version(&declared),
        needed,
        "Cargo.toml says rust-version {declared}; the locked crates need {needed:?} ({by})"
    );
    assert!(
        README.contains(&format!("Rust toolchain, {declared} or newer")),
        "the README names another Rust version than {declared}"
    );
}

#[test]
fn the_readme_env_example_for_ipv4_and_ipv6_listeners_starts_a_daemon() {
    // The README's `SPARKCR_EDGE__SERVER__LISTEN=…` example (both wildcards on one port),
    // on a free port instead of 5000; then a request on each family over loopback.
    let example = README
        .split('`')
        .find(|s| s.starts_with("SPARKCR_EDGE__SERVER__LISTEN="))
        .expect("the README shows a SPARKCR_EDGE__SERVER__LISTEN example");
    let value = example.trim_start_matches("SPARKCR_EDGE__SERVER__LISTEN=");
    assert!(
        value.contains("0.0.0.0:5000") && value.contains("[::]:5000"),
        "the example lists both wildcards on one port: {value}"
    );
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 on this machine: skipped");
        return;
    }
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let value = value.replace(":5000", &format!(":{port}"));
    let edge = Edge::start_with_env(
        "[storage]\npath = \"{dir}/data\"\n",
        &[("SPARKCR_EDGE__SERVER__LISTEN", value.as_str())],
    );
    assert_eq!(edge.http.len(), 2, "two listeners: {:?}", edge.http);
    for host in ["127.0.0.1", "[::1]"] {
        let status = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{host}:{port}/v2/"))
            .output()
            .expect("curl runs");
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            "200",
            "GET /v2/ over {host}"
        );
    }
}

#[test]
fn the_readme_gives_the_self_signed_lifetimes_the_code_uses() {
    use sparkcr_edge::setup::self_signed::{CA_VALID_DAYS, LEAF_VALID_DAYS};
    let flat = README.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!("valid for {LEAF_VALID_DAYS} days")),
        "the README's certificate lifetime is {LEAF_VALID_DAYS} days"
    );
    assert!(
        flat.contains(&format!("its CA for {} years", CA_VALID_DAYS / 365)),
        "the README's CA lifetime is {} years",
        CA_VALID_DAYS / 365
    );
}

/// Every dotted key of a TOML table, tables nested to any depth (arrays of tables by their
/// table name, `upstream` for `[[upstream]]`).
fn dotted_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(t) => dotted_keys(t, &format!("{key}."), out),
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                out.push(key.clone());
                for t in a.iter().filter_map(toml::Value::as_table) {
                    dotted_keys(t, &format!("{key}."), out);
                }
            }
            _ => out.push(key),
        }
    }
}

/// The keys the packaged config shows, set or commented out (`# key = …` under a
/// `[section]` or `# [section]` header), as dotted keys; `[[name]]` headers count as `name`.
fn packaged_keys() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(PACKAGED).expect("packaged config");
    let mut section = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in text.lines() {
        let l = line.trim_start_matches(['#', ' ']).trim_end();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            keys.insert(name.to_string());
            section = name.to_string();
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            section = name.to_string();
        } else if let Some((key, _)) = l.split_once(" = ") {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    keys
}

#[test]
fn the_packaged_config_shows_every_key() {
    // The README says the packaged config shows every key: each key `check-config` knows is
    // in it, set or as a commented-out line.
    // The built-in config, plus one with the optional tables set (which the built-in one
    // leaves out): [storage.shared], [cluster], an [[upstream]] with an endpoint.
    let dir = tempfile::tempdir().expect("dir");
    let optional = dir.path().join("optional.toml");
    std::fs::write(
        &optional,
        "[storage.shared]\nkind = \"s3\"\nbucket = \"b\"\n\
         [cluster]\npeers = [\"http://a.lan:5000\", \"http://b.lan:5000\"]\nself_url = \"http://a.lan:5000\"\n\
         [[upstream]]\nname = \"registry.lan:5000\"\nurl = \"https://registry.lan:5000\"\n\
         [[upstream.endpoint]]\nurl = \"https://mirror.lan\"\n\
         [audit]\npath = \"/tmp/sparkcr-edge-audit.jsonl\"\n\
         [[policy]]\nname = \"n\"\nupstream = \"*\"\nmatch = [\"a/*\"]\naction = \"deny\"\n",
    )
    .expect("write config");
    let mut all = Vec::new();
    for config in ["/dev/null", optional.to_str().expect("utf-8 path")] {
        let (code, out, err) = run_cli(&["check-config", "--config", config], &[]);
        assert_eq!(code, 0, "{config}: {err}");
        let table: toml::Table = out.parse().expect("check-config prints TOML");
        dotted_keys(&table, "", &mut all);
    }
    for must in [
        "storage.shared.bucket",
        "cluster.peers",
        "upstream.endpoint.url",
        "push.max_upload_size",
        "audit.path",
        "policy.action",
    ] {
        assert!(
            all.iter().any(|k| k == must),
            "check-config printed no {must}: {all:?}"
        );
    }
    let shown = packaged_keys();
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !shown.contains(*k) && !shown.iter().any(|s| k.starts_with(&format!("{s}."))))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the packaged config does not show: {missing:?}"
    );
    assert!(
        README.contains("shows every key"),
        "the claim this test checks"
    );
}

#[test]
fn the_readme_links_every_doc() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let name = entry.expect("docs entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            assert!(
                README.contains(&format!("](docs/{name})")),
                "the README does not link docs/{name}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked} docs");
    for section in [
        "## Troubleshooting",
        "## Kubernetes nodes",
        "## Backing up the CA",
        "## Security model",
    ] {
        assert!(README.contains(section), "the README lacks {section}");
    }
}
