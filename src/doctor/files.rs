//! The runtimes' own files: Docker's `daemon.json`, containerd's `config.toml` and
//! `certs.d/*/hosts.toml`, and the `registries.conf` family Podman and CRI-O share —
//! where each runtime reads them, whether they name the edge, and whether the daemon
//! started after they changed.

use super::machine::{expand, mtime, restarted_check, Found, CONTAINERS_LOGINS, DOCKER_LOGINS};
use super::{under, Check, DoctorOptions};
use std::path::{Path, PathBuf};

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
