//! The client machine's files: Docker's `daemon.json`, containerd's `config.toml` and
//! `certs.d/*/hosts.toml`, the `registries.conf` family Podman and CRI-O share, the
//! stored logins (`~/.docker/config.json`, `auth.json`), and whether each daemon started
//! after its file last changed (systemd's start time, else the process's in `/proc`).

use super::{under, Check, DoctorOptions};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The edge as the client should name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as written.
    pub authority: String,
}

impl EdgeUrl {
    pub fn parse(s: &str) -> Result<EdgeUrl, String> {
        let bad = || {
            format!("--edge {s:?}: expected the edge's base URL, such as https://edge.lan or http://10.0.0.5:5000")
        };
        let u = reqwest::Url::parse(s.trim()).map_err(|_| bad())?;
        let host = u.host_str().ok_or_else(bad)?.to_ascii_lowercase();
        if !matches!(u.scheme(), "http" | "https") || !u.path().trim_matches('/').is_empty() {
            return Err(bad());
        }
        let port = u.port_or_known_default().ok_or_else(bad)?;
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(EdgeUrl {
            scheme: u.scheme().to_string(),
            host,
            port,
            authority,
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    pub fn insecure(&self) -> bool {
        self.scheme == "http"
    }

    /// Whether `s` (`http://edge:5000`, `edge:5000/docker.io`, `https://edge/v2/x`) names
    /// this edge: same host and port (a missing port is the scheme's default, or
    /// `default_scheme`'s when `s` has none).
    pub fn is_named_by(&self, s: &str, default_scheme: &str) -> bool {
        let s = s.trim();
        let (scheme, rest) = match s.split_once("://") {
            Some((sc, rest)) => (sc.to_ascii_lowercase(), rest),
            None => (default_scheme.to_string(), s),
        };
        let authority = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                match p.parse::<u16>() {
                    Ok(p) => (h.to_string(), Some(p)),
                    Err(_) => (authority.clone(), None),
                }
            }
            _ => (authority.clone(), None),
        };
        let port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
        host == self.host && port == self.port
    }
}

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

fn mtime(p: &Path) -> Option<SystemTime> {
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
fn restarted_check(
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
fn expand(root: &Path, paths: &[&str]) -> Vec<PathBuf> {
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
    edge: &super::EdgeUrl,
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

pub(super) fn check_all(opts: &DoctorOptions) -> Found {
    let mut found = Found {
        checks: Vec::new(),
        ca_files: opts.ca_files.clone(),
        logins: Vec::new(),
        login_sources: Vec::new(),
    };
    docker(opts, &mut found);
    containerd(opts, &mut found);
    containers(opts, &mut found);
    found
}

const DOCKER_LOGINS: &[&str] = &["/root/.docker/config.json", "/home/*/.docker/config.json"];
const CONTAINERS_LOGINS: &[&str] = &[
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
    fn note_logins(&mut self, subject: &'static str, files: Vec<PathBuf>, how: &'static str) {
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

fn docker(opts: &DoctorOptions, found: &mut Found) {
    const S: &str = "docker";
    let (root, edge) = (&opts.root, &opts.edge);
    let path = under(root, "/etc/docker/daemon.json");
    let fix_write = format!(
        "sparkcr-edge client-config docker --edge {} --write",
        edge.url()
    );
    if !path.exists() {
        if under(root, "/usr/bin/dockerd").exists() {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{} does not exist: dockerd pulls from Docker Hub directly",
                    path.display()
                ),
                fix_write,
            ));
        } else {
            found.checks.push(Check::skip(
                S,
                "Docker is not installed (no /usr/bin/dockerd, no /etc/docker/daemon.json)",
            ));
        }
        return;
    }
    let json: serde_json::Value = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{} is not valid JSON ({e}): dockerd will refuse to start",
                    path.display()
                ),
                format!("fix the file, or move it away and run `{fix_write}`"),
            ));
            return;
        }
    };
    let list = |key: &str| -> Vec<String> {
        json.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mirrors = list("registry-mirrors");
    if mirrors.iter().any(|m| edge.is_named_by(m, "https")) {
        found.checks.push(Check::ok(
            S,
            format!(
                "{} lists {} in registry-mirrors (Docker mirrors docker.io only)",
                path.display(),
                edge.url()
            ),
        ));
    } else if mirrors.is_empty() {
        found.checks.push(Check::problem(
            S,
            format!(
                "{} has no registry-mirrors: dockerd pulls from Docker Hub directly",
                path.display()
            ),
            fix_write.clone(),
        ));
    } else {
        found.checks.push(Check::problem(
            S,
            format!(
                "{} mirrors docker.io at {}, not at {}",
                path.display(),
                mirrors.join(", "),
                edge.url()
            ),
            fix_write.clone(),
        ));
    }
    if edge.insecure() {
        let insecure = list("insecure-registries");
        if insecure.iter().any(|i| edge.is_named_by(i, "http")) {
            found.checks.push(Check::ok(
                S,
                format!(
                    "insecure-registries allows plain HTTP to {}",
                    edge.authority
                ),
            ));
        } else {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{} is plain HTTP but not in insecure-registries: dockerd will not use it",
                    edge.authority
                ),
                fix_write,
            ));
        }
    } else {
        let ca = under(
            root,
            &format!("/etc/docker/certs.d/{}/ca.crt", edge.authority),
        );
        if ca.is_file() {
            found.ca_files.push(ca.clone());
            found.checks.push(Check::ok(
                S,
                format!("trusts {} for the edge", ca.display()),
            ));
        }
    }
    found
        .checks
        .push(restarted_check(root, S, "docker", "dockerd", &path));
    let files = expand(root, DOCKER_LOGINS);
    found.note_logins(S, files, "docker login");
    if let Some(img) = &opts.image {
        if img.registry == "docker.io" {
            found.checks.push(Check::ok(
                S,
                format!("{img} is on docker.io, which registry-mirrors covers"),
            ));
        } else {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{img} is on {}; Docker's registry-mirrors covers docker.io only",
                    img.registry
                ),
                format!(
                    "pull {}/{}/{} instead",
                    edge.authority, img.registry, img.repo
                ),
            ));
        }
    }
}

/// `[plugins."io.containerd.grpc.v1.cri".registry] config_path` (containerd 1.x/2.x
/// config version 2) or `[plugins."io.containerd.cri.v1.images".registry]` (version 3).
fn containerd_config_path(config: &toml::Table) -> Option<String> {
    let plugins = config.get("plugins")?.as_table()?;
    ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"]
        .iter()
        .find_map(|p| {
            plugins
                .get(*p)?
                .get("registry")?
                .get("config_path")?
                .as_str()
                .map(String::from)
        })
        .filter(|s| !s.trim().is_empty())
}

fn containerd(opts: &DoctorOptions, found: &mut Found) {
    const S: &str = "containerd";
    let (root, edge) = (&opts.root, &opts.edge);
    let config = under(root, "/etc/containerd/config.toml");
    let standard = under(root, "/etc/containerd/certs.d");
    let fix_write = format!(
        "sparkcr-edge client-config containerd --edge {} --write",
        edge.url()
    );
    if !config.exists() && !standard.exists() {
        if under(root, "/usr/bin/containerd").exists() {
            found.checks.push(Check::problem(
                S,
                "neither /etc/containerd/config.toml nor /etc/containerd/certs.d exists: containerd pulls from the upstreams directly",
                fix_write,
            ));
        } else {
            found.checks.push(Check::skip(
                S,
                "containerd is not installed (no /usr/bin/containerd, no /etc/containerd)",
            ));
        }
        return;
    }
    let parsed = std::fs::read_to_string(&config)
        .map_err(|e| e.to_string())
        .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()));
    let config_path = match &parsed {
        Ok(t) => containerd_config_path(t),
        Err(_) if !config.exists() => None,
        Err(e) => {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{} is not valid TOML ({e}): containerd will refuse to start",
                    config.display()
                ),
                "fix the file (containerd config default shows the format)",
            ));
            return;
        }
    };
    let dirs: Vec<PathBuf> = match &config_path {
        Some(p) => {
            found.checks.push(Check::ok(
                S,
                format!(
                    "{} sets config_path = {p:?}: the CRI plugin reads hosts.toml there",
                    config.display()
                ),
            ));
            p.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| under(root, d))
                .collect()
        }
        None => {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{} does not set config_path, so the CRI plugin (kubelet, crictl) ignores certs.d/*/hosts.toml",
                    config.display()
                ),
                "add `config_path = \"/etc/containerd/certs.d\"` under [plugins.\"io.containerd.grpc.v1.cri\".registry] and restart containerd",
            ));
            vec![standard.clone()]
        }
    };
    if !dirs.contains(&standard) && standard.is_dir() {
        found.checks.push(Check::problem(
            S,
            format!(
                "hosts.toml files are in {} but config_path points elsewhere: containerd does not read them",
                standard.display()
            ),
            "set config_path = \"/etc/containerd/certs.d\" (or move the files) and restart containerd",
        ));
    }
    let mut covered = Vec::new();
    let mut any = false;
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for registry_dir in entries {
            let hosts = registry_dir.join("hosts.toml");
            let Ok(text) = std::fs::read_to_string(&hosts) else {
                continue;
            };
            any = true;
            let registry = registry_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let table = match text.parse::<toml::Table>() {
                Ok(t) => t,
                Err(e) => {
                    found.checks.push(Check::problem(
                        S,
                        format!(
                            "{} is not valid TOML ({e}); containerd skips it",
                            hosts.display()
                        ),
                        fix_write.clone(),
                    ));
                    continue;
                }
            };
            let host_tables: Vec<(String, toml::Value)> = table
                .get("host")
                .and_then(|h| h.as_table())
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            match host_tables
                .iter()
                .find(|(k, _)| edge.is_named_by(k, "https"))
            {
                Some((url, settings)) => {
                    covered.push(registry.clone());
                    if let Some(ca) = settings.get("ca").and_then(|c| c.as_str()) {
                        found.ca_files.push(under(root, ca));
                    }
                    found.checks.push(Check::ok(
                        S,
                        format!("{}: {registry} goes through {url}", hosts.display()),
                    ));
                }
                None => {
                    let others: Vec<&str> = host_tables.iter().map(|(k, _)| k.as_str()).collect();
                    found.checks.push(Check::problem(
                        S,
                        if others.is_empty() {
                            format!(
                                "{} has no [host] entry: {registry} is pulled directly",
                                hosts.display()
                            )
                        } else {
                            format!(
                                "{} sends {registry} to {}, not to {}",
                                hosts.display(),
                                others.join(", "),
                                edge.url()
                            )
                        },
                        fix_write.clone(),
                    ));
                }
            }
        }
    }
    if !any {
        found.checks.push(Check::problem(
            S,
            format!(
                "no hosts.toml in {}: containerd pulls from the upstreams directly",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix_write,
        ));
    }
    if config.exists() {
        found.checks.push(restarted_check(
            root,
            S,
            "containerd",
            "containerd",
            &config,
        ));
    }
    if let Some(img) = &opts.image {
        if covered
            .iter()
            .any(|r| r == &img.registry || r == "_default")
        {
            found.checks.push(Check::ok(
                S,
                format!("{img}: its registry {} goes through the edge", img.registry),
            ));
        } else if any {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{img}: no certs.d/{}/hosts.toml sends {} to the edge",
                    img.registry, img.registry
                ),
                format!(
                    "sparkcr-edge client-config containerd --edge {} --upstream {} --write",
                    edge.url(),
                    img.registry
                ),
            ));
        }
    }
}

/// One `[[registry]]` of a registries.conf file.
struct RegistryEntry {
    file: PathBuf,
    prefix: String,
    mirrors: Vec<(String, bool)>,
}

fn registry_entries(file: &Path, table: &toml::Table) -> Vec<RegistryEntry> {
    let Some(list) = table.get("registry").and_then(|r| r.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|r| r.as_table())
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(String::from);
            let prefix = s("prefix").or_else(|| s("location")).unwrap_or_default();
            let mirrors = r
                .get("mirror")
                .and_then(|m| m.as_array())
                .map(|ms| {
                    ms.iter()
                        .filter_map(|m| m.as_table())
                        .filter_map(|m| {
                            let loc = m.get("location")?.as_str()?.to_string();
                            let insecure =
                                m.get("insecure").and_then(|i| i.as_bool()).unwrap_or(false);
                            Some((loc, insecure))
                        })
                        .collect()
                })
                .unwrap_or_default();
            RegistryEntry {
                file: file.to_path_buf(),
                prefix,
                mirrors,
            }
        })
        .collect()
}

/// Podman and CRI-O (containers/image): `registries.conf` and `registries.conf.d/*.conf`.
fn containers(opts: &DoctorOptions, found: &mut Found) {
    const S: &str = "podman/crio";
    let (root, edge) = (&opts.root, &opts.edge);
    let main = under(root, "/etc/containers/registries.conf");
    let dropins = under(root, "/etc/containers/registries.conf.d");
    let fix_write = format!(
        "sparkcr-edge client-config podman --edge {} --write",
        edge.url()
    );
    let mut files = Vec::new();
    if main.is_file() {
        files.push(main.clone());
    }
    if let Ok(entries) = std::fs::read_dir(&dropins) {
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for f in entries {
            if f.extension().is_some_and(|e| e == "conf") {
                files.push(f);
            } else if f.is_file() {
                found.checks.push(Check::problem(
                    S,
                    format!(
                        "{} is ignored: only *.conf files in registries.conf.d are read",
                        f.display()
                    ),
                    format!("rename it to {}.conf", f.with_extension("").display()),
                ));
            }
        }
    }
    // A common slip: registries.d holds signature settings, not mirrors.
    if let Ok(entries) = std::fs::read_dir(under(root, "/etc/containers/registries.d")) {
        for f in entries.flatten().map(|e| e.path()) {
            if std::fs::read_to_string(&f).is_ok_and(|t| t.contains("[[registry")) {
                found.checks.push(Check::problem(
                    S,
                    format!("{} holds [[registry]] entries, but registries.d is only for signature lookaside: they are ignored", f.display()),
                    format!("move it to {}/", dropins.display()),
                ));
            }
        }
    }
    let installed = [
        "/usr/bin/podman",
        "/usr/bin/crio",
        "/usr/bin/skopeo",
        "/usr/bin/buildah",
    ]
    .iter()
    .any(|b| under(root, b).exists());
    if files.is_empty() {
        if installed {
            found.checks.push(Check::problem(
                S,
                "no /etc/containers/registries.conf or registries.conf.d/*.conf: images are pulled directly",
                fix_write,
            ));
        } else if found.checks.iter().all(|c| c.subject != S) {
            found.checks.push(Check::skip(
                S,
                "Podman/CRI-O are not installed (no /etc/containers/registries.conf)",
            ));
        }
        return;
    }
    let mut entries = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()))
        {
            Ok(t) => entries.extend(registry_entries(f, &t)),
            Err(e) => found.checks.push(Check::problem(
                S,
                format!(
                    "{} is not valid TOML ({e}): podman and crio refuse to run",
                    f.display()
                ),
                "fix the file",
            )),
        }
    }
    let mut covered = Vec::new();
    let mut elsewhere = Vec::new();
    for e in &entries {
        match e
            .mirrors
            .iter()
            .find(|(loc, _)| edge.is_named_by(loc, &edge.scheme))
        {
            Some((loc, insecure)) => {
                covered.push(e.prefix.clone());
                if edge.insecure() && !insecure {
                    found.checks.push(Check::problem(
                        S,
                        format!("{}: the mirror {loc} for {} is plain HTTP but lacks insecure = true: it is skipped", e.file.display(), e.prefix),
                        fix_write.clone(),
                    ));
                } else {
                    found.checks.push(Check::ok(
                        S,
                        format!("{}: {} is mirrored at {loc}", e.file.display(), e.prefix),
                    ));
                }
            }
            None if !e.mirrors.is_empty() => elsewhere.push(format!(
                "{} ({} -> {})",
                e.file.display(),
                e.prefix,
                e.mirrors
                    .iter()
                    .map(|m| m.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => {}
        }
    }
    if covered.is_empty() {
        found.checks.push(Check::problem(
            S,
            if elsewhere.is_empty() {
                format!("no [[registry.mirror]] points at {}", edge.url())
            } else {
                format!(
                    "the mirrors configured point elsewhere: {}",
                    elsewhere.join("; ")
                )
            },
            fix_write.clone(),
        ));
    }
    if let Some(newest) = files.iter().max_by_key(|f| mtime(f)) {
        if under(root, "/usr/bin/crio").exists() {
            found
                .checks
                .push(restarted_check(root, S, "crio", "crio", newest));
        }
    }
    let ca = under(
        root,
        &format!("/etc/containers/certs.d/{}/ca.crt", edge.authority),
    );
    if !edge.insecure() && ca.is_file() {
        found.ca_files.push(ca.clone());
        found.checks.push(Check::ok(
            S,
            format!("trusts {} for the edge", ca.display()),
        ));
    }
    found.note_logins(S, expand(root, CONTAINERS_LOGINS), "podman login");
    if let Some(img) = &opts.image {
        if covered.iter().any(|p| p == &img.registry) {
            found.checks.push(Check::ok(
                S,
                format!("{img}: {} is mirrored at the edge", img.registry),
            ));
        } else if !covered.is_empty() {
            found.checks.push(Check::problem(
                S,
                format!(
                    "{img}: no [[registry]] for {} has the edge as mirror",
                    img.registry
                ),
                format!(
                    "sparkcr-edge client-config podman --edge {} --upstream {} --write",
                    edge.url(),
                    img.registry
                ),
            ));
        }
    }
}
