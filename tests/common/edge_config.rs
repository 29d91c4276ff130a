//! A typed builder of the daemon's TOML config for tests, rendered with the `toml` crate's
//! serializer: `EdgeConfig::new("{dir}/data").upstream(Upstream::new("fake", url)
//! .default())...start()`. It covers the keys the tests use (see `src/config/` for the
//! schema); a key left unset is left out, so the daemon's defaults apply.
//!
//! What it must not do: validate (the daemon's loader does, and tests of bad configs write
//! their TOML by hand); hold defaults of its own beyond `builtin_upstreams = false` and a
//! listener on 127.0.0.1:0.

use super::fake_upstream::FakeUpstream;
use super::Edge;
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct EdgeConfig {
    builtin_upstreams: bool,
    server: Server,
    storage: Storage,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<Cache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthSection>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstream: Vec<Upstream>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<PolicyBlock>,
}

/// One `[[policy]]` block.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyBlock {
    name: String,
    upstream: String,
    #[serde(rename = "match")]
    matches: Vec<String>,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    require_signature: Vec<String>,
}

impl PolicyBlock {
    /// `action = "allow"` for `matches` of every upstream.
    pub fn allow(name: &str, matches: &[&str]) -> Self {
        PolicyBlock {
            name: name.into(),
            upstream: "*".into(),
            matches: matches.iter().map(|m| m.to_string()).collect(),
            action: "allow".into(),
            cooldown: None,
            mode: None,
            require_signature: Vec::new(),
        }
    }

    /// `require_signature`: the public key files.
    pub fn require_signature(mut self, keys: &[&Path]) -> Self {
        self.require_signature = keys.iter().map(|k| k.display().to_string()).collect();
        self
    }

    /// `cooldown` and `mode` ("open" or "closed").
    pub fn cooldown(mut self, period: &str, mode: &str) -> Self {
        self.cooldown = Some(period.into());
        self.mode = Some(mode.into());
        self
    }
}

#[derive(Clone, Debug, Serialize)]
struct Server {
    listen: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tls_listen: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Storage {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_size: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Cache {
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_ttl: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct AuthSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    token: Vec<Token>,
}

#[derive(Clone, Debug, Serialize)]
struct Token {
    name: String,
    hash: String,
    scopes: Vec<String>,
}

/// One `[[upstream]]`.
#[derive(Clone, Debug, Serialize)]
pub struct Upstream {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    path_aliases: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    default: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    private: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    push: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_timeout: Option<String>,
}

impl Upstream {
    pub fn new(name: &str, url: impl Into<String>) -> Self {
        Upstream {
            name: name.to_string(),
            url: Some(url.into()),
            urls: Vec::new(),
            aliases: Vec::new(),
            path_aliases: Vec::new(),
            default: false,
            private: false,
            push: false,
            username: None,
            password: None,
            connect_timeout: None,
            read_timeout: None,
        }
    }

    /// An upstream with several endpoints (`urls = [...]`) instead of one `url`.
    pub fn with_urls(name: &str, urls: &[String]) -> Self {
        Upstream {
            url: None,
            urls: urls.to_vec(),
            ..Upstream::new(name, "")
        }
    }

    /// Other names clients may use for it (`aliases`), and in the path form
    /// (`path_aliases`).
    pub fn aliases(mut self, aliases: &[&str], path_aliases: &[&str]) -> Self {
        self.aliases = aliases.iter().map(|a| a.to_string()).collect();
        self.path_aliases = path_aliases.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn default(mut self) -> Self {
        self.default = true;
        self
    }

    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    pub fn push(mut self) -> Self {
        self.push = true;
        self
    }

    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.to_string());
        self.password = Some(password.to_string());
        self
    }

    pub fn connect_timeout(mut self, t: &str) -> Self {
        self.connect_timeout = Some(t.to_string());
        self
    }

    pub fn read_timeout(mut self, t: &str) -> Self {
        self.read_timeout = Some(t.to_string());
        self
    }
}

impl EdgeConfig {
    /// Data under `data_dir` (which may use [`Edge::start`]'s `{dir}`), no builtin
    /// upstreams, one listener on 127.0.0.1:0.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        EdgeConfig {
            builtin_upstreams: false,
            server: Server {
                listen: vec!["127.0.0.1:0".to_string()],
                hostname: None,
                tls_listen: Vec::new(),
                tls_cert: None,
                tls_key: None,
                shutdown_grace: None,
            },
            storage: Storage {
                path: data_dir.as_ref().display().to_string(),
                max_size: None,
                chunk_size: None,
            },
            cache: None,
            auth: None,
            upstream: Vec::new(),
            policy: Vec::new(),
        }
    }

    pub fn builtin_upstreams(mut self, on: bool) -> Self {
        self.builtin_upstreams = on;
        self
    }

    /// Replaces the plain listeners.
    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.server.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// `server.shutdown_grace`.
    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.server.shutdown_grace = Some(grace.into());
        self
    }

    pub fn hostname(mut self, name: &str) -> Self {
        self.server.hostname = Some(name.to_string());
        self
    }

    pub fn tls(mut self, addrs: &[&str], cert: &Path, key: &Path) -> Self {
        self.server.tls_listen = addrs.iter().map(|a| a.to_string()).collect();
        self.server.tls_cert = Some(cert.display().to_string());
        self.server.tls_key = Some(key.display().to_string());
        self
    }

    pub fn max_size(mut self, size: &str) -> Self {
        self.storage.max_size = Some(size.to_string());
        self
    }

    pub fn chunk_size(mut self, size: &str) -> Self {
        self.storage.chunk_size = Some(size.to_string());
        self
    }

    pub fn tag_ttl(mut self, ttl: &str) -> Self {
        self.cache.get_or_insert_with(Cache::default).tag_ttl = Some(ttl.to_string());
        self
    }

    pub fn anonymous(mut self, allowed: bool) -> Self {
        self.auth.get_or_insert_with(AuthSection::default).anonymous = Some(allowed);
        self
    }

    pub fn admin_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.auth
            .get_or_insert_with(AuthSection::default)
            .admin_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
        self
    }

    /// An `[[auth.token]]` (`hash` is `sha256:<hex>` of the secret).
    pub fn token(mut self, name: &str, hash: &str, scopes: &[&str]) -> Self {
        self.auth
            .get_or_insert_with(AuthSection::default)
            .token
            .push(Token {
                name: name.to_string(),
                hash: hash.to_string(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            });
        self
    }

    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream.push(upstream);
        self
    }

    pub fn policy(mut self, block: PolicyBlock) -> Self {
        self.policy.push(block);
        self
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the test config serializes")
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_toml()).expect("write config");
    }

    /// [`Edge::start`] on this config.
    pub fn start(&self) -> Edge {
        Edge::start(&self.to_toml())
    }
}

/// `up` as the default upstream `fault.test`, with 2 s upstream timeouts.
pub fn fault_upstream(up: &FakeUpstream) -> Upstream {
    Upstream::new("fault.test", up.url())
        .default()
        .connect_timeout("2s")
        .read_timeout("2s")
}

/// The config of [`edge_for`]: [`fault_upstream`] as the only upstream; 1 MiB chunks;
/// tags revalidated on every request.
pub fn config_for(up: &FakeUpstream) -> EdgeConfig {
    EdgeConfig::new("{dir}/data")
        .chunk_size("1MiB")
        .tag_ttl("0")
        .upstream(fault_upstream(up))
}

/// An edge whose only (and default) upstream is `up`, with short upstream timeouts.
pub fn edge_for(up: &FakeUpstream) -> Edge {
    config_for(up).start()
}
