//! The daemon's configuration: typed sections, their defaults, and the rules a config must
//! follow before the daemon will start on it.
//!
//! Owns: the TOML schema (`[server]`, `[storage]`, `[cache]`, `[log]`, `[auth]` (see
//! [`auth`]), `[outbound]` (see [`outbound`]), `[[upstream]]`, `[storage.shared]` and
//! `[cluster]` (see [`tiers`]), `[[policy]]` (see [`policy`])), the
//! built-in upstream table, and loading (file, embedded default, `SPARKCR_EDGE__*`
//! environment overrides; see [`load()`]). Every mistake becomes one [`ConfigError`] line
//! naming the file, the key and what was expected.
//!
//! Must not: open sockets, touch the store, or import any other module of this crate.

pub mod auth;
mod error;
pub mod load;
pub mod outbound;
pub mod policy;
pub mod tiers;
pub mod units;

pub use auth::{AuthConfig, Cidr, RateConfig, Scope, TokenConfig, TokenHash};
pub use load::{
    load, load_checked, ConfigError, ConfigOrigin, FileChecks, LoadedConfig, DEFAULT_CONFIG_PATH,
};
pub use outbound::{OutboundConfig, ProxySetting, ProxyUrl};
pub use policy::{CooldownMode, CooldownRule, PolicyAction, PolicyConfig};
pub use tiers::{ClusterConfig, SharedKind, SharedStorageConfig};
pub use units::{ByteRate, ByteSize, HumanDuration};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Add the well-known upstreams (docker.io, ghcr.io, gcr.io, registry.k8s.io, quay.io,
    /// mcr.microsoft.com) unless an `[[upstream]]` of the same name replaces one.
    pub builtin_upstreams: bool,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// How upstreams are reached: daemon-wide proxy, rate-limit waits.
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// Peer edges sharing cold fills (see [`tiers`]).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Pushes through the edge to upstreams with `push = true`.
    #[serde(default)]
    pub push: PushConfig,
    /// The audit trail's file (see [`AuditConfig`]).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Which repositories may be pulled through the edge (see [`policy`]); reloaded on
    /// SIGHUP.
    #[serde(default)]
    pub policy: Vec<PolicyConfig>,
}

/// `[audit]`: the audit trail's JSON-lines file, one record per manifest or blob request
/// (the log stream carries the same fields whether or not a file is set).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file; none (the default) writes no file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The file is rotated before it passes this size.
    #[serde(default = "default_audit_max_size")]
    pub max_size: ByteSize,
    /// Rotated files kept (`<path>.1` the newest … `<path>.<keep>`).
    #[serde(default = "default_audit_keep")]
    pub keep: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_size: default_audit_max_size(),
            keep: default_audit_keep(),
        }
    }
}

fn default_audit_max_size() -> ByteSize {
    ByteSize(100 << 20)
}

fn default_audit_keep() -> u32 {
    5
}

/// `[push]`: limits of pushes through the edge (to upstreams with `push = true`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Largest blob one upload may carry (413 above it).
    #[serde(default = "default_max_upload_size")]
    pub max_upload_size: ByteSize,
    /// An upload session with no request for this long is cancelled, upstream too.
    #[serde(default = "default_session_timeout")]
    pub session_timeout: HumanDuration,
    /// Upload sessions one token may have open at once (429 above it).
    #[serde(default = "default_uploads_per_token")]
    pub max_uploads_per_token: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_upload_size: default_max_upload_size(),
            session_timeout: default_session_timeout(),
            max_uploads_per_token: default_uploads_per_token(),
        }
    }
}

fn default_max_upload_size() -> ByteSize {
    ByteSize(10 << 30)
}

fn default_session_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_uploads_per_token() -> usize {
    16
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (need `tls_cert` and `tls_key`).
    pub tls_listen: Vec<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The edge's own host name; alias hosts are `<alias>.<hostname>`.
    pub hostname: String,
    /// How long in-flight responses may run after SIGTERM/SIGINT.
    pub shutdown_grace: HumanDuration,
    /// Client connections open at once. At the cap, an idle connection of the address
    /// holding the most is closed for a newcomer from another address; with none, the
    /// newcomer is closed at once (plain HTTP gets a 503).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (slowloris guard).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Largest request head (request line and headers; h2: header list).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
    /// Answer only requests whose `Host` is the edge itself: `hostname`, an alias host
    /// `<alias>.<hostname>`, `localhost` or an IP address. Any other name is refused with
    /// `NAME_UNKNOWN` instead of being served by the default upstream. `false` serves every
    /// `Host` (for setups behind proxies that rewrite it).
    #[serde(default = "default_true")]
    pub strict_host: bool,
    /// This edge's name in `Cache-Status` response headers (RFC 9211), one entry per tier.
    /// Default: `hostname` plus the first 6 characters of the edge's id (made once and
    /// kept in the store), since every packaged box starts with the same host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_max_connections() -> usize {
    4096
}

fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}

fn default_max_header_size() -> ByteSize {
    ByteSize(64 << 10)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub path: PathBuf,
    /// Byte budget for stored blobs and manifests.
    pub max_size: ByteSize,
    /// Fixed chunk size of blob files.
    pub chunk_size: ByteSize,
    /// The shared tier behind the local store (see [`tiers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedStorageConfig>,
}

/// Deserializes a lowercase keyword enum with an error that lists the accepted words
/// (the `config` crate's own message for enums names no choices).
macro_rules! keyword_enum {
    ($ty:ident { $($word:literal => $variant:ident),+ $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                match s.as_str() {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(serde::de::Error::custom(format!(
                        concat!("expected one of ", $("\"", $word, "\" ",)+ "got {:?}"), s
                    ))),
                }
            }
        }
    };
}

keyword_enum!(TtlFrom { "access" => Access, "fetch" => Fetch });
keyword_enum!(LogFormat { "text" => Text, "json" => Json });

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TtlFrom {
    /// Content expires `ttl` after its last access (hits renew it).
    Access,
    /// Content expires `ttl` after it was first fetched (registry:2's behaviour).
    Fetch,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Expiry of cached content; `0` disables expiry.
    pub ttl: HumanDuration,
    pub ttl_from: TtlFrom,
    /// How long a cached tag answers without asking the upstream.
    pub tag_ttl: HumanDuration,
    /// A client following a blob fill that delivers no new bytes for this long takes it
    /// over with a new fill (never a deadline on a fill that is still delivering bytes).
    pub follower_stall: HumanDuration,
    /// The most ranged pieces of one large blob fetched at once when the upstream honours
    /// `Range` (see `cache::pieces`, `cache::piece_width`); `1` fetches every blob as one
    /// stream.
    pub fill_pieces: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `sparkcr_edge=debug,info`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host clients name (`docker.io`, `ghcr.io`, `registry.example:5000`).
    pub name: String,
    /// Where the registry's API lives (`https://registry-1.docker.io`): the first
    /// endpoint. May be left out when `urls` is given (it is then `urls[0]`).
    #[serde(default)]
    pub url: String,
    /// More endpoints serving the same content, tried in order after `url` when it fails
    /// (connect error, timeout, 5xx, 429): mirrors first, the origin last.
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Names usable as the first path segment instead of the upstream's name
    /// (`EDGE/lan/team/app` for `registry.lan:5000`): for upstreams whose name has a port,
    /// which Podman/CRI-O cannot put in an image reference's path.
    #[serde(default)]
    pub path_aliases: Vec<String>,
    /// Bare `/v2/<repo>` requests (Docker `registry-mirrors`) go to the default upstream.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, serialize_with = "redact")]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for this upstream, on top of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Longest wait for the next byte of an upstream response.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: HumanDuration,
    /// Served only to clients whose token has `pull:private`; its cached content is never
    /// served through another upstream's name.
    #[serde(default)]
    pub private: bool,
    /// Clients with a `push` token may push through the edge to this upstream (needs
    /// `private = true`); pushed content is written through to the cache.
    #[serde(default)]
    pub push: bool,
    /// Outbound proxy for this upstream (`"none"`: direct); wins over `[outbound] proxy`
    /// and the environment.
    #[serde(default)]
    pub proxy: Option<ProxySetting>,
    /// Hosts (`host` for any port, or `host:port`) of this upstream's token service, to
    /// which its credentials may be sent when a challenge names them as the Bearer `realm`
    /// (besides the endpoint's own host; the well-known registries' are built in).
    #[serde(default)]
    pub token_hosts: Vec<String>,
    /// Requests of the upstream's announced pull quota (Docker Hub's `ratelimit-remaining`)
    /// kept for real misses: at or below it, a cached tag whose digest moved upstream is
    /// served from the cache (stale) instead of being fetched again. 0: off.
    #[serde(default)]
    pub quota_reserve: u64,
    /// Endpoints tried after `url` and `urls`, each with settings of its own
    /// (`[[upstream.endpoint]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint: Vec<EndpointConfig>,
    /// Blob downloads from this upstream at once (all endpoints together), each on its own
    /// connection; more wait for a free one. Manifests, tags and tokens do not count.
    #[serde(default = "default_upstream_max_connections")]
    pub max_connections: usize,
    /// Cap on the bytes per second of this upstream's blob downloads (unset: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<ByteRate>,
}

/// One `[[upstream.endpoint]]`: an endpoint with its own settings. `proxy`, `ca_file` and
/// `insecure_skip_verify` fall back to the upstream's; credentials never do (a mirror must
/// not receive the origin's password, nor the other way round).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub url: String,
    #[serde(default)]
    pub proxy: Option<ProxySetting>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, serialize_with = "redact")]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[[upstream]] max_connections` when unset.
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 16;

fn default_upstream_max_connections() -> usize {
    DEFAULT_UPSTREAM_MAX_CONNECTIONS
}

pub(crate) fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

/// The upstreams every edge knows without configuration.
pub const BUILTIN_UPSTREAMS: &[(&str, &str, &str)] = &[
    // (name, url, alias)
    ("docker.io", "https://registry-1.docker.io", "docker"),
    ("ghcr.io", "https://ghcr.io", "ghcr"),
    ("gcr.io", "https://gcr.io", "gcr"),
    ("registry.k8s.io", "https://registry.k8s.io", "k8s"),
    ("quay.io", "https://quay.io", "quay"),
    ("mcr.microsoft.com", "https://mcr.microsoft.com", "mcr"),
];

impl UpstreamConfig {
    pub fn builtin(name: &str, url: &str, alias: &str) -> Self {
        UpstreamConfig {
            name: name.to_string(),
            url: url.to_string(),
            urls: Vec::new(),
            aliases: vec![alias.to_string()],
            path_aliases: Vec::new(),
            default: false,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            private: false,
            push: false,
            proxy: None,
            token_hosts: Vec::new(),
            quota_reserve: 0,
            endpoint: Vec::new(),
            max_connections: default_upstream_max_connections(),
            max_rate: None,
        }
    }
}

impl UpstreamConfig {
    /// Every endpoint in the order they are tried: `url`, those of `urls` that differ,
    /// then each `[[upstream.endpoint]]`.
    pub fn endpoints(&self) -> Vec<&str> {
        let mut out = self.shared_endpoints();
        out.extend(self.endpoint.iter().map(|e| e.url.as_str()));
        out
    }

    /// `url`, then those of `urls` that differ: the endpoints with this upstream's settings.
    fn shared_endpoints(&self) -> Vec<&str> {
        let mut out = vec![self.url.as_str()];
        for u in &self.urls {
            if !out.contains(&u.as_str()) {
                out.push(u);
            }
        }
        out
    }

    /// The settings each endpoint is reached with, in [`UpstreamConfig::endpoints`] order:
    /// this upstream's with `url` set to the endpoint's (and, for an
    /// `[[upstream.endpoint]]`, its own settings applied). `urls` and `endpoint` are empty.
    pub fn endpoint_configs(&self) -> Vec<UpstreamConfig> {
        let one = |url: &str| UpstreamConfig {
            url: url.to_string(),
            urls: Vec::new(),
            endpoint: Vec::new(),
            ..self.clone()
        };
        let shared = self.shared_endpoints().into_iter().map(one);
        let own = self.endpoint.iter().map(|e| {
            let mut c = one(&e.url);
            if e.proxy.is_some() {
                c.proxy = e.proxy.clone();
            }
            if e.ca_file.is_some() {
                c.ca_file = e.ca_file.clone();
            }
            if let Some(skip) = e.insecure_skip_verify {
                c.insecure_skip_verify = skip;
            }
            c.username = e.username.clone();
            c.password = e.password.clone();
            c.password_file = e.password_file.clone();
            c
        });
        shared.chain(own).collect()
    }
}

impl Config {
    /// The upstream that bare `/v2/<repo>` requests go to, if any.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstream.iter().find(|u| u.default)
    }

    /// Whether upstream `name` is marked `private = true`.
    pub fn is_private_upstream(&self, name: &str) -> bool {
        self.upstream.iter().any(|u| u.private && u.name == name)
    }

    /// The keys that hold a secret inline (not in a `*_file`), to warn about when the file
    /// is readable by every user.
    pub fn inline_secret_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, u) in self.upstream.iter().enumerate() {
            if u.password.is_some() {
                keys.push(format!("upstream[{i}].password ({})", u.name));
            }
            for (j, e) in u.endpoint.iter().enumerate() {
                if e.password.is_some() {
                    keys.push(format!("upstream[{i}].endpoint[{j}].password ({})", u.name));
                }
            }
            if u.proxy.as_ref().is_some_and(ProxySetting::has_credentials) {
                keys.push(format!("upstream[{i}].proxy ({})", u.name));
            }
        }
        if self
            .outbound
            .proxy
            .as_ref()
            .is_some_and(ProxySetting::has_credentials)
        {
            keys.push("outbound.proxy".into());
        }
        if self
            .storage
            .shared
            .as_ref()
            .is_some_and(|s| s.secret_access_key.is_some())
        {
            keys.push("storage.shared.secret_access_key".into());
        }
        if self.cluster.token.is_some() {
            keys.push("cluster.token".into());
        }
        keys
    }

    /// This config as TOML with secrets replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
