//! Facts of the client machine every runtime check needs: when a daemon started (systemd's
//! start time, else the process's in `/proc`) against when its file changed, and the
//! stored logins (`~/.docker/config.json`, `auth.json`) against the edge's host.

use super::edge_url::EdgeUrl;
use super::{under, Check};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stored login: which file, for which registry key, and the credentials.
#[derive(Clone, Debug)]
pub struct Login {
    pub file: PathBuf,
    pub key: String,
    pub user_password: Option<(String, String)>,
}

/// What the file checks found, for the network checks too.
pub(super) struct Found {
    pub checks: Vec<Check>,
    /// CA files the runtimes trust for the edge.
    pub ca_files: Vec<PathBuf>,
    pub logins: Vec<Login>,
    /// Where each runtime keeps its logins.
    pub login_sources: Vec<LoginSource>,
}

/// The credential files of one runtime and the command that adds a login.
pub(super) struct LoginSource {
    pub subject: &'static str,
    pub files: Vec<PathBuf>,
    pub how: &'static str,
}

pub(super) fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// When `unit` (systemd) or else the newest process named `process` started.
fn started_at(root: &Path, unit: &str, process: &str) -> Option<(SystemTime, &'static str)> {
    if root == Path::new("/") {
        let out = std::process::Command::new("systemctl")
            .args([
                "show",
                "-p",
                "ActiveEnterTimestamp",
                "--value",
                "--timestamp=unix",
                unit,
            ])
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(secs) = out.and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .strip_prefix('@')
                .and_then(|s| s.parse::<u64>().ok())
        }) {
            return Some((UNIX_EPOCH + Duration::from_secs(secs), "systemd"));
        }
    }
    let proc = under(root, "/proc");
    let boot: u64 = std::fs::read_to_string(proc.join("stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf reads a constant.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as u64,
        _ => 100,
    };
    let mut newest: Option<SystemTime> = None;
    for entry in std::fs::read_dir(&proc).ok()?.flatten() {
        let dir = entry.path();
        let is_it = std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == process);
        if !is_it {
            continue;
        }
        // Field 22 of /proc/PID/stat, counted after the ")" that ends the command name.
        let Some(start) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(19)?
                    .parse::<u64>()
                    .ok()
            })
        else {
            continue;
        };
        let t =
            UNIX_EPOCH + Duration::from_secs(boot) + Duration::from_millis(start * 1000 / ticks);
        newest = Some(newest.map_or(t, |n| n.max(t)));
    }
    newest.map(|t| (t, "/proc"))
}

/// Whether the daemon started after `file` last changed.
pub(super) fn restarted_check(
    root: &Path,
    subject: &'static str,
    unit: &str,
    process: &str,
    file: &Path,
) -> Check {
    let Some(changed) = mtime(file) else {
        return Check::skip(
            subject,
            format!("cannot read the time {} changed", file.display()),
        );
    };
    match started_at(root, unit, process) {
        None => Check::skip(
            subject,
            format!("{process} is not running; it reads {} when it starts", file.display()),
        ),
        Some((started, how)) if started + Duration::from_secs(1) < changed => Check::problem(
            subject,
            format!(
                "{process} started at {} ({how}), before {} changed at {}: it still runs with the old settings",
                when(started),
                file.display(),
                when(changed)
            ),
            format!("sudo systemctl restart {unit}"),
        ),
        Some((started, how)) => Check::ok(
            subject,
            format!(
                "{process} started at {} ({how}), after {} changed",
                when(started),
                file.display()
            ),
        ),
    }
}

/// `auths` of a Docker `config.json` or containers `auth.json`.
fn read_logins(file: &Path) -> Vec<Login> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Vec::new();
    };
    auths
        .iter()
        .map(|(key, v)| {
            let user_password = v
                .get("auth")
                .and_then(|a| a.as_str())
                .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                });
            Login {
                file: file.to_path_buf(),
                key: key.clone(),
                user_password,
            }
        })
        .collect()
}

/// The files `pattern` names under `root`, where `*` is one directory level (home dirs).
pub(super) fn expand(root: &Path, paths: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        match p.split_once("/*/") {
            Some((dir, rest)) => {
                if let Ok(entries) = std::fs::read_dir(under(root, dir)) {
                    let mut found: Vec<PathBuf> =
                        entries.flatten().map(|e| e.path().join(rest)).collect();
                    found.sort();
                    out.extend(found.into_iter().filter(|f| f.is_file()));
                }
            }
            None => {
                let f = under(root, p);
                if f.is_file() {
                    out.push(f);
                }
            }
        }
    }
    out
}

/// Whether the logins in `files` hold credentials for the edge; `subject` names the runtime.
pub(super) fn login_check(
    subject: &'static str,
    edge: &EdgeUrl,
    files: &[PathBuf],
    logins: &[Login],
    how: &str,
) -> Check {
    let mine: Vec<&Login> = logins.iter().filter(|l| files.contains(&l.file)).collect();
    if let Some(l) = mine.iter().find(|l| edge.is_named_by(&l.key, &edge.scheme)) {
        return Check::ok(
            subject,
            format!("a login for {} is stored in {}", l.key, l.file.display()),
        );
    }
    let near: Vec<String> = mine
        .iter()
        .filter(|l| {
            let k = l.key.split("://").last().unwrap_or(&l.key);
            k.split(['/', ':']).next() == Some(edge.host.as_str())
        })
        .map(|l| format!("{} ({})", l.key, l.file.display()))
        .collect();
    if !near.is_empty() {
        return Check::problem(
            subject,
            format!(
                "the stored login is for {}, but images name the edge as {}: the host (and port) must match exactly",
                near.join(", "),
                edge.authority
            ),
            format!("{how} {}", edge.authority),
        );
    }
    Check::problem(
        subject,
        format!(
            "no login for {} in {}",
            edge.authority,
            if files.is_empty() {
                "any credentials file".to_string()
            } else {
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!(
            "{how} {} (any user name; an edge token as password)",
            edge.authority
        ),
    )
}

pub(super) const DOCKER_LOGINS: &[&str] =
    &["/root/.docker/config.json", "/home/*/.docker/config.json"];
pub(super) const CONTAINERS_LOGINS: &[&str] = &[
    "/run/containers/0/auth.json",
    "/root/.config/containers/auth.json",
    "/run/user/*/containers/auth.json",
    "/home/*/.config/containers/auth.json",
    "/root/.docker/config.json",
    "/home/*/.docker/config.json",
];

impl Found {
    /// Reads the logins in `files` for `subject`; whether the edge needs one is for the
    /// network check to say.
    pub(super) fn note_logins(
        &mut self,
        subject: &'static str,
        files: Vec<PathBuf>,
        how: &'static str,
    ) {
        for f in &files {
            if !self.logins.iter().any(|l| &l.file == f) {
                self.logins.extend(read_logins(f));
            }
        }
        self.login_sources.push(LoginSource {
            subject,
            files,
            how,
        });
    }
}
