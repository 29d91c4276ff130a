//! Loading a [`Config`]: embedded defaults, then the file, then `SPARKCR_EDGE__*`
//! environment overrides; then the built-in upstreams and validation.

use super::error::one_line;
pub use super::error::{ConfigError, ConfigOrigin};
use super::{Config, UpstreamConfig, BUILTIN_UPSTREAMS};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sparkcr-edge/config.toml";
const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
const ENV_PREFIX: &str = "SPARKCR_EDGE";

#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub origin: ConfigOrigin,
}

/// The data directory used when the config names none: `$STATE_DIRECTORY` (set by
/// systemd's `StateDirectory=`) or `./sparkcr-edge-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(|v| {
            // systemd may pass several colon-separated directories; the first is ours.
            let s = v.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("./sparkcr-edge-data"))
}

/// Loads the config. `explicit` is `--config PATH`; without it the default path is used
/// if it exists, else the embedded default.
pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_checked(explicit, FileChecks::All)
}

/// Which files named by the config must be readable for it to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChecks {
    All,
    /// Everything but `server.tls_cert`/`tls_key`: for the command that creates them and
    /// the admin commands that never use them.
    AllButTlsPair,
}

/// [`load`], choosing which file checks apply.
pub fn load_checked(
    explicit: Option<&Path>,
    checks: FileChecks,
) -> Result<LoadedConfig, ConfigError> {
    let origin = match explicit {
        Some(p) => ConfigOrigin::File(p.to_path_buf()),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            ConfigOrigin::File(PathBuf::from(DEFAULT_CONFIG_PATH))
        }
        None => ConfigOrigin::Embedded,
    };
    let file_text = match &origin {
        ConfigOrigin::Embedded => None,
        ConfigOrigin::File(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            ConfigError::at(&origin, "", format!("cannot read the config file: {e}"))
        })?),
    };
    load_from_checked(origin, file_text.as_deref(), checks)
}

/// Loads from config text already in memory (`None`: the embedded default only).
pub fn load_from(
    origin: ConfigOrigin,
    file_text: Option<&str>,
) -> Result<LoadedConfig, ConfigError> {
    load_from_checked(origin, file_text, FileChecks::All)
}

fn load_from_checked(
    origin: ConfigOrigin,
    file_text: Option<&str>,
    checks: FileChecks,
) -> Result<LoadedConfig, ConfigError> {
    use config::{Environment, File, FileFormat};
    let data_dir = default_data_dir();
    let mut builder = config::Config::builder()
        .add_source(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml))
        .set_default("storage.path", data_dir.to_string_lossy().into_owned())
        .map_err(|e| ConfigError::at(&origin, "storage.path", e.to_string()))?;
    if let Some(text) = file_text {
        // Parse once ourselves first: toml's own errors carry line and column.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::at(
                &origin,
                "",
                format!("not valid TOML: {}", e.message().trim()),
            )
            .with_span(text, e.span()));
        }
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    let env = EnvOverrides::from_process()?;
    let mut plain = env.plain.clone();
    let mut environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
        // An empty value is an empty list (the crate would make it `[""]`).
        if let Some(v) = plain.remove(&env_var_for(key)) {
            if v.trim().is_empty() {
                builder = builder
                    .set_override(*key, Vec::<String>::new())
                    .map_err(|e| from_config_error(&origin, e))?;
            } else {
                plain.insert(env_var_for(key), v);
            }
        }
    }
    builder = builder.add_source(environment.source(Some(plain)));
    for fragment in &env.tables {
        builder = builder.add_source(File::from_str(fragment, FileFormat::Toml));
    }
    let raw = builder
        .build()
        .map_err(|e| blame_env(from_config_error(&origin, e)))?;
    let mut config: Config = raw
        .try_deserialize()
        .map_err(|e| blame_env(from_config_error(&origin, e)))?;
    fill_in_first_urls(&mut config);
    add_builtin_upstreams(&mut config);
    validate(&config, &origin, checks).map_err(blame_env)?;
    Ok(LoadedConfig { config, origin })
}

/// Keys whose environment value is a comma-separated list (empty: an empty list).
const LIST_KEYS: &[&str] = &[
    "server.listen",
    "server.tls_listen",
    "auth.allow_cidrs",
    "auth.admin_cidrs",
    "outbound.no_proxy",
];
/// Arrays of tables, whose environment value is a TOML inline array:
/// `SPARKCR_EDGE__UPSTREAM='[{name = "registry.lan", url = "https://registry.lan"}]'`.
const TABLE_ARRAYS: &[(&str, &str)] = &[
    ("upstream", "upstream = "),
    ("auth.token", "[auth]\ntoken = "),
];

/// The variable that overrides `key`: `server.tls_listen` -> `SPARKCR_EDGE__SERVER__TLS_LISTEN`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

/// The process's `SPARKCR_EDGE__*` variables, split into plain values and arrays of tables
/// (TOML fragments).
struct EnvOverrides {
    plain: config::Map<String, String>,
    tables: Vec<String>,
}

impl EnvOverrides {
    fn from_process() -> Result<Self, ConfigError> {
        let prefix = format!("{ENV_PREFIX}__");
        let mut plain = config::Map::new();
        let mut tables = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix)) else {
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError {
                origin: format!("environment variable {name}"),
                key: String::new(),
                message: "the value is not valid UTF-8".into(),
            })?;
            match TABLE_ARRAYS
                .iter()
                .find(|(key, _)| env_var_for(key) == name)
            {
                Some((key, head)) => {
                    let text = format!("{head}{value}\n");
                    if let Err(e) = text.parse::<toml::Table>() {
                        return Err(ConfigError {
                            origin: format!("environment variable {name}"),
                            key: (*key).to_string(),
                            message: format!(
                                "expected a TOML inline array of tables such as \
                                 [{{name = \"registry.lan\", url = \"https://registry.lan\"}}]: {}",
                                one_line(e.message())
                            ),
                        });
                    }
                    tables.push(text);
                }
                None => {
                    plain.insert(name.to_string(), value);
                }
            }
        }
        Ok(EnvOverrides { plain, tables })
    }
}

/// Names the variable that set the key an error is about (or a table above it), if one did.
fn blame_env(mut e: ConfigError) -> ConfigError {
    let key = e.key.split('[').next().unwrap_or_default();
    let mut parts: Vec<&str> = key.split('.').filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let var = env_var_for(&parts.join("."));
        if std::env::var_os(&var).is_some() {
            e.origin = format!("environment variable {var}");
            return e;
        }
        parts.pop();
    }
    e
}

/// Loads config text that is known to be valid (tests of other modules).
#[doc(hidden)]
pub fn load_from_text_for_tests(origin: ConfigOrigin, text: &str) -> super::Config {
    match load_from(origin, Some(text)) {
        Ok(l) => l.config,
        Err(e) => panic!("test config is invalid: {e}"),
    }
}

impl ConfigError {
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            self.origin = format!("{}:{line}", self.origin);
        }
        self
    }
}

/// Turns the `config` crate's error into our one line, pulling out the key it names.
fn from_config_error(origin: &ConfigOrigin, e: config::ConfigError) -> ConfigError {
    let text = one_line(&e.to_string());
    let where_from = match &e {
        config::ConfigError::Type {
            origin: Some(o), ..
        }
        | config::ConfigError::At {
            origin: Some(o), ..
        } if o.contains("environment") => "the environment (SPARKCR_EDGE__*)".to_string(),
        _ => origin.to_string(),
    };
    let key = match &e {
        config::ConfigError::Type { key: Some(k), .. }
        | config::ConfigError::At { key: Some(k), .. } => dotted_key(k),
        _ => String::new(),
    };
    // Drop the crate's own " for key `x` in <origin>" tail: we say both up front.
    let message = text
        .split(" for key `")
        .next()
        .unwrap_or(&text)
        .trim_end_matches('.')
        .to_string();
    // serde says "unknown field `x`, expected one of ..." at the parent; name the full key.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            let full = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            return ConfigError {
                origin: where_from,
                key: full,
                message: format!(
                    "unknown key{}",
                    tail.replacen(", expected", "; expected", 1)
                ),
            };
        }
    }
    ConfigError {
        origin: where_from,
        key,
        message,
    }
}

/// The `config` crate writes a field of an array element as `auth.token[0]hash`; we say
/// `auth.token[0].hash`.
fn dotted_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 4);
    let mut after_bracket = false;
    for c in k.chars() {
        if after_bracket && c != '.' && c != '[' {
            out.push('.');
        }
        after_bracket = c == ']';
        out.push(c);
    }
    out
}

/// `urls` without `url`: the first of them is `url`.
fn fill_in_first_urls(config: &mut Config) {
    for u in &mut config.upstream {
        if u.url.is_empty() {
            if let Some(first) = u.urls.first() {
                u.url = first.clone();
            }
        }
    }
}

fn add_builtin_upstreams(config: &mut Config) {
    if config.builtin_upstreams {
        for &(name, url, alias) in BUILTIN_UPSTREAMS {
            if !config.upstream.iter().any(|u| u.name == name) {
                let mut up = UpstreamConfig::builtin(name, url, alias);
                // An alias the user gave to one of their own upstreams wins.
                if config
                    .upstream
                    .iter()
                    .any(|u| u.aliases.iter().any(|a| a == alias))
                {
                    up.aliases.clear();
                }
                config.upstream.push(up);
            }
        }
    }
    if !config.upstream.iter().any(|u| u.default) {
        if let Some(docker) = config.upstream.iter_mut().find(|u| u.name == "docker.io") {
            docker.default = true;
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `host` or `host:port`, as clients write a registry.
fn is_registry_host(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => is_host_name(host) && port.parse::<u16>().is_ok(),
        None => is_host_name(s),
    }
}

fn readable(origin: &ConfigOrigin, key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path).map(|_| ()).map_err(|e| {
        let fix = if key.starts_with("server.tls_") {
            " — run \"sparkcr-edge tls self-signed\" or put your own cert.pem/key.pem there"
        } else {
            ""
        };
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => format!("{} does not exist{fix}", path.display()),
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot read {}: permission denied — the daemon's user (sparkcr-edge) must be able to read it; check it as root (sudo sparkcr-edge check-config)",
                path.display()
            ),
            _ => format!("cannot read {}: {e}", path.display()),
        };
        ConfigError::at(origin, key, what)
    })
}

/// Most ranged pieces of one blob fetched at once (`cache.fill_pieces`): more only opens
/// more upstream connections for the same bytes.
pub const MAX_FILL_PIECES: u32 = 16;

fn validate(c: &Config, origin: &ConfigOrigin, checks: FileChecks) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| Err(ConfigError::at(origin, key, msg));
    let s = &c.server;
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        return err(
            "server.listen",
            "no listener: give at least one address in server.listen or server.tls_listen".into(),
        );
    }
    if !s.tls_listen.is_empty() && checks == FileChecks::All {
        readable(origin, "server.tls_cert", &s.tls_cert)?;
        readable(origin, "server.tls_key", &s.tls_key)?;
    }
    if let Some(n) = &s.name {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c));
        if !ok {
            return Err(ConfigError::at(
                origin,
                "server.name",
                format!("expected a name such as \"edge-a\" (a letter, then letters, digits, '-', '.', '_' or ':', at most 64), got {n:?}"),
            ));
        }
    }
    if !is_host_name(&s.hostname) {
        return err(
            "server.hostname",
            format!(
                "expected a DNS name such as \"edge.lan\", got {:?}",
                s.hostname
            ),
        );
    }
    let chunk = c.storage.chunk_size.get();
    if !(64 << 10..=64 << 20).contains(&chunk) {
        return err(
            "storage.chunk_size",
            format!(
                "expected between 64KiB and 64MiB, got {}",
                c.storage.chunk_size
            ),
        );
    }
    if c.storage.max_size.get() < 4 * chunk {
        return err(
            "storage.max_size",
            format!(
                "expected at least 4 × storage.chunk_size ({}), got {}",
                super::ByteSize(4 * chunk),
                c.storage.max_size
            ),
        );
    }
    if c.storage.path.as_os_str().is_empty() {
        return err(
            "storage.path",
            "expected a directory path, got an empty string".into(),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return err(
            "log.level",
            format!("expected a log filter such as \"info\" or \"sparkcr_edge=debug\": {e}"),
        );
    }
    let pieces = c.cache.fill_pieces;
    if !(1..=MAX_FILL_PIECES).contains(&pieces) {
        return err(
            "cache.fill_pieces",
            format!("expected between 1 (one stream per blob) and {MAX_FILL_PIECES} pieces of one blob fetched at once, got {pieces}"),
        );
    }
    if s.max_connections == 0 {
        return err(
            "server.max_connections",
            "expected at least 1 connection".into(),
        );
    }
    if s.header_read_timeout.is_zero() {
        return err(
            "server.header_read_timeout",
            "expected a duration above 0 such as \"30s\"".into(),
        );
    }
    if s.idle_timeout.is_zero() {
        return err(
            "server.idle_timeout",
            "expected a duration above 0 such as \"2m\"".into(),
        );
    }
    if !(8 << 10..=1 << 20).contains(&s.max_header_size.get()) {
        return err(
            "server.max_header_size",
            format!("expected between 8KiB and 1MiB, got {}", s.max_header_size),
        );
    }
    validate_auth(c, origin)?;
    super::tiers::validate(c.storage.shared.as_ref(), &c.cluster, origin)?;
    validate_push(c, origin)?;
    validate_audit(c, origin, checks)?;
    super::policy::validate_policy(c, origin)?;
    for (i, host) in c.outbound.no_proxy.iter().enumerate() {
        if host.is_empty() || host.contains(|c: char| c == ',' || c.is_whitespace()) {
            return err(
                &format!("outbound.no_proxy[{i}]"),
                format!("expected one host name, IP address, CIDR network or \"*\" per entry, got {host:?}"),
            );
        }
    }
    let mut defaults = 0;
    for (i, u) in c.upstream.iter().enumerate() {
        let key = |field: &str| format!("upstream[{i}].{field} ({})", u.name);
        if !is_registry_host(&u.name) {
            return err(&key("name"), format!("expected a registry host such as \"ghcr.io\" or \"registry.lan:5000\", got {:?}", u.name));
        }
        if c.upstream[..i].iter().any(|o| o.name == u.name) {
            return err(
                &key("name"),
                format!("upstream {:?} is defined twice", u.name),
            );
        }
        if u.url.is_empty() {
            return err(
                &key("url"),
                "expected url = \"https://…\" or urls = [\"https://mirror…\", \"https://origin…\"]"
                    .into(),
            );
        }
        let tables = u.endpoint.iter().map(|e| &e.url);
        for (j, endpoint) in std::iter::once(&u.url)
            .chain(&u.urls)
            .chain(tables)
            .enumerate()
        {
            // `url` may have been filled in from `urls[0]`: name the key the user wrote.
            let which = match (j, u.urls.first() == Some(&u.url)) {
                (0, false) => key("url"),
                (0, true) => key("urls[0]"),
                _ if j <= u.urls.len() => key(&format!("urls[{}]", j - 1)),
                _ => key(&format!("endpoint[{}].url", j - 1 - u.urls.len())),
            };
            let earlier_tables =
                &u.endpoint[..j.saturating_sub(1 + u.urls.len()).min(u.endpoint.len())];
            if j > u.urls.len()
                && (endpoint == &u.url
                    || u.urls.contains(endpoint)
                    || earlier_tables.iter().any(|e| &e.url == endpoint))
            {
                return err(
                    &which,
                    format!("{endpoint:?} is given twice; give each endpoint once"),
                );
            }
            match reqwest::Url::parse(endpoint) {
                Ok(url)
                    if (url.scheme() == "http" || url.scheme() == "https")
                        && url.host().is_some()
                        && url.query().is_none()
                        && url.username().is_empty()
                        && url.password().is_none() => {}
                _ => {
                    return err(
                        &which,
                        format!(
                            "expected an http:// or https:// URL without user info or query, such as \"https://ghcr.io\", got {:?}",
                            crate::config::outbound::redacted_url(endpoint)
                        ),
                    )
                }
            }
        }
        for a in &u.aliases {
            if !is_dns_label(a) {
                return err(
                    &key("aliases"),
                    format!("expected a DNS label such as \"docker\", got {a:?}"),
                );
            }
            let dup = c
                .upstream
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.aliases.contains(a));
            if dup {
                return err(
                    &key("aliases"),
                    format!("alias {a:?} is used by two upstreams"),
                );
            }
        }
        for a in &u.path_aliases {
            let component_ok = !a.is_empty()
                && a.len() <= 63
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !a.starts_with('-')
                && !a.ends_with('-');
            if !component_ok || a == "library" || a == "v2" {
                return err(
                    &key("path_aliases"),
                    format!("expected a lowercase path segment such as \"lan\" (not \"library\" or \"v2\"), got \"{a}\""),
                );
            }
            let dup = c
                .upstream
                .iter()
                .enumerate()
                .any(|(j, o)| (j != i && o.path_aliases.contains(a)) || o.name == *a);
            if dup {
                return err(
                    &key("path_aliases"),
                    format!("path alias \"{a}\" is used twice (or is an upstream's name); give each upstream its own"),
                );
            }
        }
        for h in &u.token_hosts {
            if !is_registry_host(&h.to_ascii_lowercase()) {
                return err(
                    &key("token_hosts"),
                    format!("expected a host name such as \"auth.corp.example\" or \"auth.corp.example:8443\" (no scheme, no path), got {h:?}"),
                );
            }
        }
        if u.max_connections == 0 {
            return err(
                &key("max_connections"),
                "expected at least 1 (blob downloads from this upstream at once)".into(),
            );
        }
        if u.push && !u.private {
            return err(
                &key("push"),
                "push = true needs private = true on the same upstream (pushes go only to private upstreams)".into(),
            );
        }
        if u.default {
            defaults += 1;
            if defaults > 1 {
                return err(
                    &key("default"),
                    "only one upstream may be the default".into(),
                );
            }
        }
        // The upstream's own settings, then each [[upstream.endpoint]]'s.
        let configs = u.endpoint_configs();
        let first_table = configs.len() - u.endpoint.len();
        for (j, e) in configs.iter().enumerate() {
            if j > 0 && j < first_table {
                continue; // urls entries: the same settings as url, checked at j = 0
            }
            let key = |field: &str| match j.checked_sub(first_table) {
                Some(k) => key(&format!("endpoint[{k}].{field}")),
                None => key(field),
            };
            if e.password.is_some() && e.password_file.is_some() {
                return err(
                    &key("password_file"),
                    "give password or password_file, not both".into(),
                );
            }
            if (e.password.is_some() || e.password_file.is_some()) && e.username.is_none() {
                return err(&key("username"), "a password needs a username".into());
            }
            if let Some(p) = &e.password_file {
                readable(origin, &key("password_file"), p)?;
            }
            if let Some(p) = &e.ca_file {
                readable(origin, &key("ca_file"), p)?;
            }
        }
    }
    Ok(())
}

fn validate_audit(
    c: &Config,
    origin: &ConfigOrigin,
    checks: FileChecks,
) -> Result<(), ConfigError> {
    let a = &c.audit;
    if a.max_size.get() < 64 << 10 {
        return Err(ConfigError::at(
            origin,
            "audit.max_size",
            format!("expected at least 64KiB, got {}", a.max_size),
        ));
    }
    if a.keep > 1000 {
        return Err(ConfigError::at(
            origin,
            "audit.keep",
            format!("expected at most 1000 rotated files, got {}", a.keep),
        ));
    }
    let Some(path) = &a.path else { return Ok(()) };
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(ConfigError::at(
            origin,
            "audit.path",
            format!(
                "expected a file path such as \"/var/log/sparkcr-edge/audit.jsonl\", got {path:?}"
            ),
        ));
    }
    if checks == FileChecks::All {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(ConfigError::at(
                origin,
                "audit.path",
                format!(
                    "the directory {} does not exist: create it (writable by the service user) or change audit.path",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_push(c: &Config, origin: &ConfigOrigin) -> Result<(), ConfigError> {
    let p = &c.push;
    if p.session_timeout.is_zero() {
        return Err(ConfigError::at(
            origin,
            "push.session_timeout",
            "expected a duration above zero, such as \"10m\"",
        ));
    }
    if p.max_uploads_per_token == 0 {
        return Err(ConfigError::at(
            origin,
            "push.max_uploads_per_token",
            "expected at least 1",
        ));
    }
    if p.max_upload_size.get() == 0 {
        return Err(ConfigError::at(
            origin,
            "push.max_upload_size",
            "expected a size above zero, such as \"10GiB\"",
        ));
    }
    Ok(())
}

fn validate_auth(c: &Config, origin: &ConfigOrigin) -> Result<(), ConfigError> {
    let err = |key: String, msg: String| Err(ConfigError::at(origin, key, msg));
    let a = &c.auth;
    if let Some(rate) = &a.anonymous_rate {
        if rate.per_minute == 0 {
            return err(
                "auth.anonymous_rate.per_minute".into(),
                "expected at least 1 (leave auth.anonymous_rate out for no limit)".into(),
            );
        }
        if rate.burst == 0 {
            return err(
                "auth.anonymous_rate.burst".into(),
                "expected at least 1".into(),
            );
        }
        if !(16..=128).contains(&rate.ipv6_prefix) {
            return err(
                "auth.anonymous_rate.ipv6_prefix".into(),
                format!(
                    "expected a prefix length between 16 and 128 (128: each address; 64: each /64 subnet), got {}",
                    rate.ipv6_prefix
                ),
            );
        }
    }
    for (i, t) in a.token.iter().enumerate() {
        let key = |field: &str| format!("auth.token[{i}].{field}");
        if !super::auth::is_token_name(&t.name) {
            return err(
                key("name"),
                format!(
                    "expected 1 to 64 letters, digits, '.', '_', '-' or '@', got {:?}",
                    t.name
                ),
            );
        }
        if a.token[..i].iter().any(|o| o.name == t.name) {
            return err(key("name"), format!("token {:?} is defined twice", t.name));
        }
        if a.token[..i].iter().any(|o| o.hash == t.hash) {
            return err(
                key("hash"),
                format!("token {:?} has the same hash as another token", t.name),
            );
        }
        if t.scopes.is_empty() {
            return err(
                key("scopes"),
                "expected at least one of \"pull:public\" \"pull:private\" \"push\" \"admin\""
                    .into(),
            );
        }
    }
    if !a.anonymous && a.token.is_empty() {
        return err(
            "auth.anonymous".into(),
            "anonymous = false needs at least one [[auth.token]] (make one with `sparkcr-edge token create`), or nobody could pull".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(t: &str) -> Result<Config, ConfigError> {
        load_from(ConfigOrigin::File(PathBuf::from("/t/config.toml")), Some(t)).map(|l| l.config)
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = load_from(ConfigOrigin::Embedded, None).expect("embedded default loads");
        assert_eq!(
            c.config.server.listen,
            vec!["127.0.0.1:5000".parse().expect("addr")]
        );
        assert_eq!(c.config.upstream.len(), BUILTIN_UPSTREAMS.len());
        assert_eq!(
            c.config.default_upstream().map(|u| u.name.as_str()),
            Some("docker.io")
        );
        assert_eq!(c.config.cache.fill_pieces, 16);
    }

    #[test]
    fn user_upstream_replaces_builtin_and_can_be_default() {
        let c = from_text(
            "[[upstream]]\nname = \"registry.lan:5000\"\nurl = \"http://127.0.0.1:5001\"\naliases = [\"lan\"]\ndefault = true\n",
        )
        .expect("valid");
        assert_eq!(
            c.default_upstream().map(|u| u.name.as_str()),
            Some("registry.lan:5000")
        );
        assert!(
            !c.upstream
                .iter()
                .find(|u| u.name == "docker.io")
                .expect("builtin")
                .default
        );
    }

    #[test]
    fn mistakes_name_file_and_key() {
        let e = from_text("[cache]\nttl = \"5 parsecs\"\n").expect_err("bad duration");
        let s = e.to_string();
        assert!(s.starts_with("/t/config.toml"), "{s}");
        assert!(s.contains("cache.ttl"), "{s}");
        assert!(!s.contains('\n'));

        let e = from_text("[server]\nlisten_on = []\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("server.listen_on: unknown key"), "{e}");

        let e = from_text("[cache]\nttl_from = \"never\"\n")
            .expect_err("bad keyword")
            .to_string();
        assert!(
            e.contains("cache.ttl_from: expected one of \"access\" \"fetch\""),
            "{e}"
        );

        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"ftp://a\"\n")
            .expect_err("bad url")
            .to_string();
        assert!(e.contains("upstream[0].url"), "{e}");

        let e = from_text("[storage]\nmax_size = 12\n")
            .expect_err("tiny budget")
            .to_string();
        assert!(e.contains("storage.max_size"), "{e}");

        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\npush = true\n")
            .expect_err("push without private")
            .to_string();
        assert!(
            e.contains("upstream[0].push") && e.contains("private = true"),
            "{e}"
        );
        let e = from_text("[push]\nsession_timeout = \"0s\"\n")
            .expect_err("zero timeout")
            .to_string();
        assert!(e.contains("push.session_timeout"), "{e}");
        let e = from_text("[push]\nmax_uploads_per_token = 0\n")
            .expect_err("no uploads")
            .to_string();
        assert!(e.contains("push.max_uploads_per_token"), "{e}");

        for bad in ["0", "17", "-1"] {
            let e = from_text(&format!("[cache]\nfill_pieces = {bad}\n"))
                .expect_err("pieces out of range")
                .to_string();
            assert!(e.contains("cache.fill_pieces"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for good in [1, 4, MAX_FILL_PIECES] {
            let c = from_text(&format!("[cache]\nfill_pieces = {good}\n")).expect("valid");
            assert_eq!(c.cache.fill_pieces, good);
        }

        let e = from_text("[server\n").expect_err("bad toml").to_string();
        assert!(e.contains("/t/config.toml:1"), "{e}");
    }

    #[test]
    fn proxies() {
        let c = from_text(
            "[outbound]\nproxy = \"http://alice:hunter2@proxy.lan:3128\"\nno_proxy = [\"registry.lan\", \"10.0.0.0/8\"]\n[[upstream]]\nname = \"registry.lan\"\nurl = \"http://registry.lan\"\nproxy = \"none\"\n",
        )
        .expect("valid proxies");
        assert_eq!(c.outbound.no_proxy.len(), 2);
        assert_eq!(
            c.upstream[0].proxy,
            Some(crate::config::ProxySetting::Direct)
        );
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("http://alice:<redacted>@proxy.lan:3128"),
            "{shown}"
        );
        assert_eq!(
            c.outbound.max_rate_limit_wait.get(),
            std::time::Duration::from_secs(5)
        );

        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nproxy = \"ftp://u:secret@p:21\"\n")
            .expect_err("unknown scheme")
            .to_string();
        assert!(e.starts_with("/t/config.toml"), "{e}");
        assert!(e.contains("upstream[0].proxy"), "{e}");
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        assert!(!e.contains("secret") && !e.contains('\n'), "{e}");

        let e = from_text("[outbound]\nproxy = \"gopher://p\"\n")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("outbound.proxy"), "{e}");
        let e = from_text("[outbound]\nno_proxy = [\"a b\"]\n")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("outbound.no_proxy[0]"), "{e}");
    }

    #[test]
    fn ordered_endpoints() {
        let c = from_text(
            "[[upstream]]\nname = \"a.io\"\nurls = [\"http://mirror.lan\", \"https://a.io\"]\n",
        )
        .expect("urls without url");
        assert_eq!(
            c.upstream[0].endpoints(),
            vec!["http://mirror.lan", "https://a.io"]
        );
        let again = from_text(&c.to_redacted_toml()).expect("check-config output loads again");
        assert_eq!(again.upstream[0].endpoints(), c.upstream[0].endpoints());
        let c = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"http://mirror.lan\"\nurls = [\"https://a.io\"]\n")
            .expect("url and urls");
        assert_eq!(
            c.upstream[0].endpoints(),
            vec!["http://mirror.lan", "https://a.io"]
        );
        let e =
            from_text("[[upstream]]\nname = \"a.io\"\nurls = [\"https://a.io\", \"ftp://b\"]\n")
                .expect_err("bad second url")
                .to_string();
        assert!(e.contains("upstream[0].urls[1]"), "{e}");
        let c = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"http://mirror.lan\"\nproxy = \"none\"\n\
             [[upstream.endpoint]]\nurl = \"https://a.io\"\nproxy = \"http://proxy.lan:3128\"\nusername = \"bot\"\npassword = \"hunter2\"\n")
            .expect("endpoint tables");
        let configs = c.upstream[0].endpoint_configs();
        assert_eq!(configs.len(), 2);
        assert_eq!(
            (configs[0].url.as_str(), configs[0].username.as_deref()),
            ("http://mirror.lan", None)
        );
        assert_eq!(configs[0].proxy, Some(crate::config::ProxySetting::Direct));
        assert_eq!(
            (configs[1].url.as_str(), configs[1].username.as_deref()),
            ("https://a.io", Some("bot"))
        );
        assert_eq!(
            configs[1].proxy.as_ref().map(|p| p.to_string()),
            Some("http://proxy.lan:3128/".to_string())
        );
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && shown.contains("[[upstream.endpoint]]"),
            "{shown}"
        );
        let again =
            from_text(&shown.replace("<redacted>", "x")).expect("check-config output loads again");
        assert_eq!(again.upstream[0].endpoints(), c.upstream[0].endpoints());
        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n[[upstream.endpoint]]\nurl = \"https://b.io\"\npassword = \"x\"\n")
            .expect_err("password without username")
            .to_string();
        assert!(e.contains("upstream[0].endpoint[0].username (a.io)"), "{e}");
        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n[[upstream.endpoint]]\nurl = \"https://a.io\"\n")
            .expect_err("twice")
            .to_string();
        assert!(e.contains("upstream[0].endpoint[0].url"), "{e}");
        let e = from_text("[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n[[upstream.endpoint]]\nurl = \"https://b.io\"\n[[upstream.endpoint]]\nurl = \"https://b.io\"\n")
            .expect_err("twice")
            .to_string();
        assert!(e.contains("upstream[0].endpoint[1].url"), "{e}");
        let e = from_text("[[upstream]]\nname = \"a.io\"\n")
            .expect_err("no url")
            .to_string();
        assert!(
            e.contains("upstream[0].url") && e.contains("urls = ["),
            "{e}"
        );
    }

    #[test]
    fn connection_and_rate_limits() {
        let c = from_text("").expect("defaults");
        assert!(c.upstream.iter().all(|u| u.max_connections
            == crate::config::DEFAULT_UPSTREAM_MAX_CONNECTIONS
            && u.max_rate.is_none()));
        assert_eq!(c.outbound.max_rate, None);
        let c = from_text(
            "[outbound]\nmax_rate = \"100MB/s\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nmax_connections = 4\nmax_rate = 2000000\n",
        )
        .expect("valid limits");
        assert_eq!(c.outbound.max_rate.map(|r| r.get()), Some(100_000_000));
        assert_eq!(c.upstream[0].max_connections, 4);
        assert_eq!(c.upstream[0].max_rate.map(|r| r.get()), Some(2_000_000));
        let again = from_text(&c.to_redacted_toml()).expect("check-config output loads again");
        assert_eq!(again.upstream[0].max_rate, c.upstream[0].max_rate);
        assert_eq!(again.outbound.max_rate, c.outbound.max_rate);

        let cases = [
            (
                "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nmax_connections = 0\n",
                "upstream[0].max_connections (a.io)",
                "at least 1",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nmax_rate = \"fast\"\n",
                "upstream[0].max_rate",
                "\"5MB/s\"",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nmax_rate = 0\n",
                "upstream[0].max_rate",
                "above 0",
            ),
            (
                "[outbound]\nmax_rate = \"5MB/h\"\n",
                "outbound.max_rate",
                "\"5MB/s\"",
            ),
        ];
        for (text, key, want) in cases {
            let e = from_text(text).expect_err(text).to_string();
            assert!(e.starts_with("/t/config.toml"), "{e}");
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn auth_section() {
        let c = from_text("").expect("no [auth] section");
        assert!(c.auth.anonymous);
        assert!(c.auth.allow_cidrs.is_empty() && c.auth.token.is_empty());
        let c = from_text(&format!(
            "[auth]\nanonymous = false\nallow_cidrs = [\"10.0.0.0/8\", \"::1\"]\nanonymous_rate = {{ per_minute = 60, burst = 5 }}\n[[auth.token]]\nname = \"ci\"\nhash = \"{HASH}\"\nscopes = [\"pull:public\", \"pull:private\"]\n[[upstream]]\nname = \"lan.example\"\nurl = \"https://lan.example\"\nprivate = true\n"
        ))
        .expect("valid auth");
        assert!(!c.auth.anonymous);
        assert_eq!(c.auth.allow_cidrs.len(), 2);
        assert_eq!(c.auth.token[0].scopes.len(), 2);
        assert!(c.is_private_upstream("lan.example"));
        assert!(!c.is_private_upstream("docker.io"));
        assert!(c.to_redacted_toml().contains(HASH));
    }

    #[test]
    fn auth_mistakes_name_file_and_key() {
        let cases = [
            ("[auth]\nallow_cidrs = [\"10.0.0.0/33\"]\n", "auth.allow_cidrs", "expected a network"),
            ("[auth]\nanonymous = false\n", "auth.anonymous", "[[auth.token]]"),
            ("[auth]\nanonymous_rate = { per_minute = 0, burst = 1 }\n", "auth.anonymous_rate.per_minute", "at least 1"),
            ("[auth]\nanonymous_rate = { per_minute = 1, burst = 1, ipv6_prefix = 8 }\n", "auth.anonymous_rate.ipv6_prefix", "between 16 and 128"),
            ("[[upstream]]\nname = \"r.lan\"\nurl = \"https://r.lan\"\ntoken_hosts = [\"https://auth.lan/token\"]\n", "token_hosts", "no scheme"),
            ("[auth]\nanonymus = true\n", "auth.anonymus", "unknown key"),
            ("[[auth.token]]\nname = \"ci\"\nhash = \"spk_plaintext\"\nscopes = [\"pull:public\"]\n", "auth.token[0].hash", "sha256:"),
            (&format!("[[auth.token]]\nname = \"ci\"\nhash = \"{HASH}\"\nscopes = [\"pull\"]\n"), "auth.token[0].scopes", "pull:public"),
            (&format!("[[auth.token]]\nname = \"ci\"\nhash = \"{HASH}\"\nscopes = []\n"), "auth.token[0].scopes", "at least one"),
            (&format!("[[auth.token]]\nname = \"a b\"\nhash = \"{HASH}\"\nscopes = [\"pull:public\"]\n"), "auth.token[0].name", "letters"),
            (&format!("[[auth.token]]\nname = \"a\"\nhash = \"{HASH}\"\nscopes = [\"pull:public\"]\n[[auth.token]]\nname = \"b\"\nhash = \"{HASH}\"\nscopes = [\"pull:public\"]\n"), "auth.token[1].hash", "same hash"),
            ("[server]\nmax_connections = 0\n", "server.max_connections", "at least 1"),
            ("[server]\nname = \"edge a\"\n", "server.name", "edge-a"),
            ("[server]\nname = \"1edge\"\n", "server.name", "a letter"),
            ("[server]\nidle_timeout = \"0\"\n", "server.idle_timeout", "above 0"),
            ("[server]\nmax_header_size = \"10MiB\"\n", "server.max_header_size", "1MiB"),
            ("[server]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"/nonexistent/cert.pem\"\n", "server.tls_cert", "/nonexistent/cert.pem does not exist — run \"sparkcr-edge tls self-signed\" or put your own cert.pem/key.pem there"),
            ("[auth]\nadmin_cidrs = [\"localhost\"]\n", "auth.admin_cidrs", "expected a network"),
            ("[[policy]]\nupstream = \"nowhere.io\"\naction = \"deny\"\n", "policy[0].upstream", "no upstream is named"),
            ("[[policy]]\nupstream = \"*\"\nmatch = []\naction = \"deny\"\n", "policy[0].match", "at least one glob"),
            ("[[policy]]\nupstream = \"*\"\nmatch = [\"a/{b\"]\naction = \"deny\"\n", "policy[0].match", "is not a glob"),
            ("[[policy]]\nupstream = \"*\"\naction = \"maybe\"\n", "policy", "allow"),
            ("[[policy]]\nname = \"x\"\nupstream = \"*\"\naction = \"deny\"\n[[policy]]\nname = \"x\"\nupstream = \"docker.io\"\naction = \"allow\"\n", "policy[1].name", "already named"),
            ("[[policy]]\nupstream = \"*\"\naction = \"deny\"\ncooldown = \"1h\"\n", "policy[0].cooldown", "action = \"allow\""),
            ("[[policy]]\nupstream = \"*\"\naction = \"allow\"\nmode = \"closed\"\n", "policy[0].mode", "set cooldown too"),
            ("[[policy]]\nupstream = \"*\"\naction = \"allow\"\ncooldown = \"0s\"\n", "policy[0].cooldown", "longer than zero"),
            ("[[policy]]\nupstream = \"*\"\naction = \"allow\"\ncooldown = \"1h\"\nmode = \"shut\"\n", "policy", "\"closed\""),
        ];
        for (text, key, want) in cases {
            let e = from_text(text).expect_err(text).to_string();
            assert!(e.starts_with("/t/config.toml"), "{e}");
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
