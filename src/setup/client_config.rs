//! `sparkcr-edge client-config`: the exact client-side configuration for this edge, in
//! the forms of the setups in the seeds (Docker `registry-mirrors`, containerd
//! `certs.d/<upstream>/hosts.toml`, Podman/CRI-O `registries.conf.d`), plus the restart and
//! verification commands; optionally written to their standard paths with backups.

use crate::config::Config;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    Docker,
    Containerd,
    Podman,
    Crio,
}

/// How clients address the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The edge's own host; the upstream travels in `?ns=` (containerd) or is the default.
    Host,
    /// Path prefix `EDGE/<upstream>` (Podman/CRI-O mirror location, containerd host path).
    Path,
    /// Alias host `<alias>.<hostname>` per upstream.
    Alias,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("--edge {0:?} is not an http:// or https:// URL such as https://edge.lan")]
    BadEdge(String),
    #[error("upstream {0:?} is not configured on this edge (configured: {1})")]
    UnknownUpstream(String, String),
    #[error("upstream {0} has no alias, so --mode alias cannot address it; give it `aliases` in the config or use --mode path")]
    NoAlias(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists but is not valid JSON ({reason}); fix or move it, then run again")]
    BadExisting { path: PathBuf, reason: String },
}

/// The edge as clients reach it.
#[derive(Clone, Debug)]
pub struct EdgeAddress {
    pub scheme: String,
    /// `host` or `host:port`.
    pub authority: String,
    pub host: String,
}

impl EdgeAddress {
    pub fn parse(url: &str) -> Result<Self, ClientConfigError> {
        let u = reqwest::Url::parse(url).map_err(|_| ClientConfigError::BadEdge(url.into()))?;
        let host = u
            .host_str()
            .ok_or_else(|| ClientConfigError::BadEdge(url.into()))?
            .to_string();
        if !matches!(u.scheme(), "http" | "https") || !u.path().trim_matches('/').is_empty() {
            return Err(ClientConfigError::BadEdge(url.into()));
        }
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(EdgeAddress {
            scheme: u.scheme().into(),
            authority,
            host,
        })
    }

    /// The default for this config: HTTPS on the hostname if there is a TLS listener,
    /// else HTTP on the hostname and the first listener's port.
    pub fn from_config(c: &Config) -> Self {
        let host = c.server.hostname.clone();
        if let Some(a) = c.server.tls_listen.first() {
            let authority = if a.port() == 443 {
                host.clone()
            } else {
                format!("{host}:{}", a.port())
            };
            return EdgeAddress {
                scheme: "https".into(),
                authority,
                host,
            };
        }
        let port = c.server.listen.first().map_or(5000, |a| a.port());
        let authority = if port == 80 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        EdgeAddress {
            scheme: "http".into(),
            authority,
            host,
        }
    }

    fn insecure(&self) -> bool {
        self.scheme == "http"
    }

    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// `<alias>.<edge host>` with the edge's port.
    fn alias_authority(&self, alias: &str) -> String {
        match self.authority.rsplit_once(':') {
            Some((_, port)) if self.authority != self.host => {
                format!("{alias}.{}:{port}", self.host)
            }
            _ => format!("{alias}.{}", self.host),
        }
    }
}

/// One upstream as the snippets need it.
#[derive(Clone, Debug)]
pub struct UpstreamRef {
    pub name: String,
    pub url: String,
    pub alias: Option<String>,
    /// The first `path_aliases` entry: used in place of a name with a port in the
    /// path-prefix form (`EDGE/lan/team/app`), which Podman, CRI-O and Docker cannot parse
    /// as `EDGE/registry.lan:5000/team/app`.
    pub path_alias: Option<String>,
}

impl UpstreamRef {
    /// The first path segment that names this upstream in the path-prefix form.
    fn path_segment(&self) -> &str {
        match &self.path_alias {
            Some(a) if self.name.contains(':') => a,
            _ => &self.name,
        }
    }
}

/// One file to write, with its content.
#[derive(Clone, Debug)]
pub struct Snippet {
    pub path: PathBuf,
    pub content: String,
}

#[derive(Clone, Debug)]
pub struct ClientSetup {
    pub files: Vec<Snippet>,
    /// Shell commands to apply and verify, one per line, with `#` comments.
    pub commands: String,
}

pub fn upstreams_for(c: &Config, names: &[String]) -> Result<Vec<UpstreamRef>, ClientConfigError> {
    let all: Vec<UpstreamRef> = c
        .upstream
        .iter()
        .map(|u| UpstreamRef {
            name: u.name.clone(),
            url: u.url.clone(),
            alias: u.aliases.first().cloned(),
            path_alias: u.path_aliases.first().cloned(),
        })
        .collect();
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            all.iter().find(|u| &u.name == n).cloned().ok_or_else(|| {
                ClientConfigError::UnknownUpstream(
                    n.clone(),
                    all.iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })
        })
        .collect()
}

/// Builds the setup for `client`, rooted at `root` (`/` for the real paths).
pub fn generate(
    client: Client,
    edge: &EdgeAddress,
    ups: &[UpstreamRef],
    mode: Mode,
    root: &Path,
) -> Result<ClientSetup, ClientConfigError> {
    match client {
        Client::Docker => docker(edge, ups, mode, root),
        Client::Containerd => containerd(edge, ups, mode, root),
        Client::Podman | Client::Crio => registries_conf(client, edge, ups, mode, root),
    }
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn docker(
    edge: &EdgeAddress,
    ups: &[UpstreamRef],
    mode: Mode,
    root: &Path,
) -> Result<ClientSetup, ClientConfigError> {
    if !ups.iter().any(|u| u.name == "docker.io") {
        return Err(ClientConfigError::Unsupported(
            "Docker's registry-mirrors only mirrors docker.io; other upstreams are pulled as EDGE/<upstream>/<repo> (no client config needed)".into(),
        ));
    }
    let mirror_authority = match mode {
        Mode::Alias => {
            let alias = ups
                .iter()
                .find(|u| u.name == "docker.io")
                .and_then(|u| u.alias.clone())
                .ok_or_else(|| ClientConfigError::NoAlias("docker.io".into()))?;
            edge.alias_authority(&alias)
        }
        Mode::Host | Mode::Path => edge.authority.clone(),
    };
    let mirror = format!("{}://{mirror_authority}", edge.scheme);
    let mut json = serde_json::json!({ "registry-mirrors": [mirror] });
    if edge.insecure() {
        json["insecure-registries"] = serde_json::json!([mirror_authority]);
    }
    let content = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
    let commands = format!(
        "# /etc/docker/daemon.json: merge these keys into an existing file (client-config --write does)\n\
         sudo systemctl restart docker\n\
         # verify: the pull must go through the edge (dockerd silently falls back to Docker Hub on mirror errors)\n\
         curl -fsS {edge_url}/v2/ && docker pull hello-world:latest\n\
         # other upstreams through the edge, no daemon config needed:\n\
         docker pull {a}/ghcr.io/<org>/<image>:<tag>\n{others}{trust}",
        edge_url = edge.url(),
        a = edge.authority,
        others = ups
            .iter()
            .filter(|u| u.name.contains(':') && u.path_alias.is_some())
            .map(|u| format!("docker pull {}/{}/<repo>:<tag>   # {}\n", edge.authority, u.path_segment(), u.name))
            .collect::<String>(),
        trust = if edge.scheme == "https" {
            format!(
                "# with a self-signed edge certificate (Docker looks in certs.d/<host>:<port>/ when the port is not 443):\n\
                 sudo mkdir -p /etc/docker/certs.d/{a} && sudo cp ca.pem /etc/docker/certs.d/{a}/ca.crt\n",
                a = mirror_authority
            )
        } else {
            String::new()
        }
    );
    Ok(ClientSetup {
        files: vec![Snippet {
            path: under(root, "/etc/docker/daemon.json"),
            content,
        }],
        commands,
    })
}

fn containerd(
    edge: &EdgeAddress,
    ups: &[UpstreamRef],
    mode: Mode,
    root: &Path,
) -> Result<ClientSetup, ClientConfigError> {
    let mut files = Vec::new();
    for u in ups {
        let host = match mode {
            Mode::Host => edge.url(),
            Mode::Path => format!("{}/{}", edge.url(), u.name),
            Mode::Alias => {
                let alias = u
                    .alias
                    .clone()
                    .ok_or_else(|| ClientConfigError::NoAlias(u.name.clone()))?;
                format!("{}://{}", edge.scheme, edge.alias_authority(&alias))
            }
        };
        let server = if u.name == "docker.io" {
            "https://docker.io".to_string()
        } else {
            u.url.clone()
        };
        let mut content = format!("server = \"{server}\"\n\n[host.\"{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        if edge.scheme == "https" {
            let _ = writeln!(content, "  # with a self-signed edge certificate: ca = \"/etc/containerd/certs.d/{}/ca.crt\"", u.name);
        }
        files.push(Snippet {
            path: under(
                root,
                &format!("/etc/containerd/certs.d/{}/hosts.toml", u.name),
            ),
            content,
        });
    }
    let first = ups.first().map_or("docker.io", |u| u.name.as_str());
    let image = if first == "docker.io" {
        "docker.io/library/hello-world:latest".to_string()
    } else {
        format!("{first}/<repo>:<tag>")
    };
    let commands = format!(
        "# containerd must read certs.d: in /etc/containerd/config.toml (config version 2)\n\
         #   [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
         #     config_path = \"/etc/containerd/certs.d\"\n\
         # (containerd 2.x, config version 3: [plugins.\"io.containerd.cri.v1.images\".registry])\n\
         sudo systemctl restart containerd\n\
         # verify (ctr needs --hosts-dir; kubelet/crictl use config_path):\n\
         sudo ctr images pull --hosts-dir /etc/containerd/certs.d {image}\n"
    );
    Ok(ClientSetup { files, commands })
}

fn registries_conf(
    client: Client,
    edge: &EdgeAddress,
    ups: &[UpstreamRef],
    mode: Mode,
    root: &Path,
) -> Result<ClientSetup, ClientConfigError> {
    let mut content =
        String::from("# sparkcr-edge mirrors (generated by `sparkcr-edge client-config`)\n");
    // The hosts the mirrors name: containers/image looks for a mirror's CA under
    // certs.d/<its host[:port]>, so an alias mirror needs its own directory.
    let mut mirror_hosts: Vec<String> = Vec::new();
    for u in ups {
        let location = match mode {
            Mode::Path => {
                if u.name.contains(':') && u.path_alias.is_none() {
                    return Err(ClientConfigError::Unsupported(format!(
                        "upstream {} has a port in its name, which Podman and CRI-O cannot use in a mirror path; give it path_aliases = [\"<name>\"] in the config, or use --mode alias",
                        u.name
                    )));
                }
                format!("{}/{}", edge.authority, u.path_segment())
            }
            Mode::Alias => edge.alias_authority(&u.alias.clone().ok_or_else(|| ClientConfigError::NoAlias(u.name.clone()))?),
            Mode::Host => {
                return Err(ClientConfigError::Unsupported(
                    "Podman and CRI-O cannot name the upstream in a query (?ns=); use --mode path or --mode alias".into(),
                ))
            }
        };
        let host = location.split('/').next().unwrap_or_default().to_string();
        if !mirror_hosts.contains(&host) {
            mirror_hosts.push(host);
        }
        let _ = write!(
            content,
            "\n[[registry]]\nprefix = \"{n}\"\nlocation = \"{n}\"\n\n[[registry.mirror]]\nlocation = \"{location}\"\ninsecure = {insecure}\n",
            n = u.name,
            insecure = edge.insecure()
        );
    }
    let mut commands = match client {
        Client::Crio => "sudo systemctl restart crio\n# verify:\nsudo crictl pull docker.io/library/hello-world:latest\n".to_string(),
        _ => "# Podman reads registries.conf.d on every run; no restart needed.\n# verify (--log-level debug shows the mirror being used):\npodman pull docker.io/library/hello-world:latest\n".to_string(),
    };
    if edge.scheme == "https" {
        let _ = writeln!(
            commands,
            "# with a self-signed edge certificate, one directory per mirror host (certs.d/<host>:<port>/ when the port is not 443):"
        );
        for a in &mirror_hosts {
            let _ = writeln!(
                commands,
                "sudo mkdir -p /etc/containers/certs.d/{a} && sudo cp ca.pem /etc/containers/certs.d/{a}/ca.crt"
            );
        }
    }
    Ok(ClientSetup {
        files: vec![Snippet {
            path: under(root, "/etc/containers/registries.conf.d/sparkcr-edge.conf"),
            content,
        }],
        commands,
    })
}

/// The path of Docker's per-user client config (`~/.docker/config.json`) under `root`.
pub fn docker_client_config_path(root: &Path, home: &Path) -> PathBuf {
    root.join(home.strip_prefix("/").unwrap_or(home))
        .join(".docker/config.json")
}

/// The `~/.docker/config.json` entries that make Docker send the edge token: under
/// `https://index.docker.io/v1/` (Docker sends those credentials to its `registry-mirrors`
/// and nothing else) and under the edge's own host (for `EDGE/<upstream>/...` pulls).
pub fn docker_auth(
    edge: &EdgeAddress,
    user: &str,
    secret: &str,
    root: &Path,
    home: &Path,
) -> Snippet {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    let json = serde_json::json!({ "auths": {
        "https://index.docker.io/v1/": { "auth": auth },
        edge.authority.clone(): { "auth": auth },
    }});
    Snippet {
        path: docker_client_config_path(root, home),
        content: serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
    }
}

/// A backup path that does not exist yet: `<file>.bak.<unix time>`, then `.1`, `.2`, ...
/// (created empty here, so two runs in one second never share one).
fn fresh_backup(path: &Path, stamp: u64) -> std::io::Result<PathBuf> {
    let base = format!("{}.bak.{stamp}", path.display());
    for n in 0..1000u32 {
        let candidate = if n == 0 {
            PathBuf::from(&base)
        } else {
            PathBuf::from(format!("{base}.{n}"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(_) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("1000 backups in one second"))
}

/// Writes each file, backing up an existing one to a new `<file>.bak.<unix time>[.N]`
/// (never over an earlier backup). JSON files (Docker's daemon.json and config.json) are
/// merged: existing keys are kept, ours set, one level deep (other `auths` entries stay).
/// `~/.docker/config.json` holds credentials and is written mode 0600.
pub fn write(setup: &ClientSetup) -> Result<Vec<String>, ClientConfigError> {
    let mut done = Vec::new();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for s in &setup.files {
        let werr = |source| ClientConfigError::Write {
            path: s.path.clone(),
            source,
        };
        let mut content = s.content.clone();
        let is_json = s.path.extension().is_some_and(|e| e == "json");
        if s.path.exists() {
            let backup = fresh_backup(&s.path, stamp).map_err(werr)?;
            std::fs::copy(&s.path, &backup).map_err(werr)?;
            if is_json {
                content = merge_json(&s.path, &s.content)?;
            }
            done.push(format!(
                "backed up {} to {}",
                s.path.display(),
                backup.display()
            ));
        }
        if let Some(dir) = s.path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let secret = s.path.ends_with(".docker/config.json");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            use std::os::unix::fs::PermissionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(if secret { 0o600 } else { 0o644 })
                .open(&s.path)
                .map_err(werr)?;
            if secret {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(werr)?;
            }
            std::io::Write::write_all(&mut f, content.as_bytes()).map_err(werr)?;
        }
        done.push(format!("wrote {}", s.path.display()));
    }
    Ok(done)
}

fn merge_json(path: &Path, ours: &str) -> Result<String, ClientConfigError> {
    let bad = |reason: String| ClientConfigError::BadExisting {
        path: path.into(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut existing: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    };
    let ours: serde_json::Value = serde_json::from_str(ours).map_err(|e| bad(e.to_string()))?;
    let (Some(obj), Some(new)) = (existing.as_object_mut(), ours.as_object()) else {
        return Err(bad("the top level is not an object".into()));
    };
    for (k, v) in new {
        match (
            obj.get_mut(k).and_then(|e| e.as_object_mut()),
            v.as_object(),
        ) {
            (Some(existing_inner), Some(inner)) => {
                for (ik, iv) in inner {
                    existing_inner.insert(ik.clone(), iv.clone());
                }
            }
            _ => {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(serde_json::to_string_pretty(&existing).unwrap_or_default() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<UpstreamRef> {
        vec![
            UpstreamRef {
                name: "docker.io".into(),
                url: "https://registry-1.docker.io".into(),
                alias: Some("docker".into()),
                path_alias: None,
            },
            UpstreamRef {
                name: "registry.k8s.io".into(),
                url: "https://registry.k8s.io".into(),
                alias: Some("k8s".into()),
                path_alias: None,
            },
        ]
    }

    #[test]
    fn path_aliases_and_certs_d_with_port() {
        let edge = EdgeAddress::parse("https://edge.lan:8443").expect("edge");
        let mut ups = ups();
        ups.push(UpstreamRef {
            name: "registry.lan:5000".into(),
            url: "http://10.0.0.5:5000".into(),
            alias: None,
            path_alias: Some("lan".into()),
        });
        let s = generate(Client::Podman, &edge, &ups, Mode::Path, Path::new("/")).expect("podman");
        let conf = &s.files[0].content;
        assert!(conf.contains("location = \"edge.lan:8443/lan\""), "{conf}");
        assert!(!conf.contains("edge.lan:8443/registry.lan:5000"), "{conf}");
        assert!(
            s.commands
                .contains("/etc/containers/certs.d/edge.lan:8443/ca.crt"),
            "{}",
            s.commands
        );
        let d = generate(Client::Docker, &edge, &ups, Mode::Host, Path::new("/")).expect("docker");
        assert!(
            d.commands
                .contains("/etc/docker/certs.d/edge.lan:8443/ca.crt"),
            "{}",
            d.commands
        );
        assert!(
            d.commands.contains("docker pull edge.lan:8443/lan/<repo>"),
            "{}",
            d.commands
        );
        ups[2].path_alias = None;
        let e =
            generate(Client::Podman, &edge, &ups, Mode::Path, Path::new("/")).expect_err("port");
        assert!(e.to_string().contains("path_aliases"), "{e}");
    }

    #[test]
    fn crio_alias_mode_names_a_ca_directory_per_alias_host() {
        // containers/image looks for a mirror's CA under certs.d/<the mirror's host>: in
        // alias mode that is docker.edge.lan, not edge.lan.
        let edge = EdgeAddress::parse("https://edge.lan").expect("edge");
        let s = generate(Client::Crio, &edge, &ups(), Mode::Alias, Path::new("/")).expect("crio");
        assert!(
            s.files[0]
                .content
                .contains("location = \"docker.edge.lan\""),
            "{}",
            s.files[0].content
        );
        for host in ["docker.edge.lan", "k8s.edge.lan"] {
            assert!(
                s.commands
                    .contains(&format!("/etc/containers/certs.d/{host}/ca.crt")),
                "{}",
                s.commands
            );
        }
        assert!(
            !s.commands.contains("certs.d/edge.lan/"),
            "no directory for a host no mirror names: {}",
            s.commands
        );
    }

    #[test]
    fn containerd_path_mode_matches_the_seed() {
        let edge = EdgeAddress::parse("https://sparkcr.cn").expect("edge");
        let s = generate(
            Client::Containerd,
            &edge,
            &ups(),
            Mode::Path,
            Path::new("/"),
        )
        .expect("setup");
        assert_eq!(
            s.files[0].path,
            PathBuf::from("/etc/containerd/certs.d/docker.io/hosts.toml")
        );
        assert!(s.files[0].content.starts_with("server = \"https://docker.io\"\n\n[host.\"https://sparkcr.cn/docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), "{}", s.files[0].content);
        assert!(s.files[1]
            .content
            .contains("[host.\"https://sparkcr.cn/registry.k8s.io\"]"));
    }

    #[test]
    fn podman_alias_and_docker_insecure() {
        let edge = EdgeAddress::parse("http://edge.lan:5000").expect("edge");
        let s =
            generate(Client::Podman, &edge, &ups(), Mode::Alias, Path::new("/")).expect("setup");
        assert!(
            s.files[0]
                .content
                .contains("location = \"docker.edge.lan:5000\"\ninsecure = true"),
            "{}",
            s.files[0].content
        );
        assert!(generate(Client::Podman, &edge, &ups(), Mode::Host, Path::new("/")).is_err());
        let d =
            generate(Client::Docker, &edge, &ups(), Mode::Host, Path::new("/")).expect("docker");
        let v: serde_json::Value = serde_json::from_str(&d.files[0].content).expect("json");
        assert_eq!(v["registry-mirrors"][0], "http://edge.lan:5000");
        assert_eq!(v["insecure-registries"][0], "edge.lan:5000");
    }

    #[test]
    fn write_backs_up_and_merges_daemon_json() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("etc/docker/daemon.json");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, "{\"log-driver\": \"journald\"}").expect("write");
        let edge = EdgeAddress::parse("https://edge.lan").expect("edge");
        let s = generate(Client::Docker, &edge, &ups(), Mode::Host, root.path()).expect("setup");
        let log = write(&s).expect("write");
        assert!(log.iter().any(|l| l.starts_with("backed up")), "{log:?}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["registry-mirrors"][0], "https://edge.lan");
    }
}
