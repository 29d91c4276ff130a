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
