//! How the edge reaches its upstreams: the `[outbound]` section (daemon-wide proxy,
//! `no_proxy` list, longest rate-limit wait, endpoint back-off, edge-wide download rate
//! cap) and the typed `proxy` value that both it and
//! `[[upstream]]` accept.
//!
//! Owns: [`ProxySetting`] (`"none"` or a proxy URL with an http, https, socks5 or socks5h
//! scheme; parsed at load time so a wrong scheme is a config error naming the key), its
//! redacted rendering, and [`OutboundConfig`] with its defaults.
//!
//! Must not: read the process environment or build clients; `upstream` decides which proxy
//! applies (see `upstream::proxy` for the precedence).

use super::{ByteRate, HumanDuration};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Schemes a proxy URL may have. `socks5h` resolves host names at the proxy, `socks5`
/// locally.
pub const PROXY_SCHEMES: &[&str] = &["http", "https", "socks5", "socks5h"];

/// The `[outbound]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Proxy for every upstream that has no `proxy` of its own. Unset: the environment's
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` apply.
    pub proxy: Option<ProxySetting>,
    /// Hosts reached directly although `proxy` is set: names (a name also matches its
    /// subdomains), IP addresses, CIDR networks, or `*`.
    pub no_proxy: Vec<String>,
    /// An upstream 429 (or 503) whose `Retry-After` is at most this long is waited out and
    /// retried once; a longer one goes to the client as 429 with the same `Retry-After`.
    /// `0` never waits.
    pub max_rate_limit_wait: HumanDuration,
    /// An endpoint of an upstream with several `urls` that fails is skipped this long,
    /// then probed in the background until it answers again.
    pub endpoint_backoff: HumanDuration,
    /// Cap on the bytes per second of blob downloads from all upstreams together (unset:
    /// no cap); each upstream's own `max_rate` applies too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<ByteRate>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            proxy: None,
            no_proxy: Vec::new(),
            max_rate_limit_wait: HumanDuration(Duration::from_secs(5)),
            endpoint_backoff: HumanDuration(Duration::from_secs(30)),
            max_rate: None,
        }
    }
}

/// A `proxy` value: direct, or through one proxy.
#[derive(Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `"none"`: connect directly, whatever the environment or `[outbound]` says.
    Direct,
    Via(ProxyUrl),
}

impl ProxySetting {
    /// Whether this is a proxy URL that carries a user or a password.
    pub fn has_credentials(&self) -> bool {
        matches!(self, ProxySetting::Via(url) if url.has_credentials())
    }
}

/// A proxy URL whose scheme is one of [`PROXY_SCHEMES`] and which names a host. May carry
/// credentials (`http://user:pass@proxy:3128`); [`fmt::Display`] hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(reqwest::Url);

impl ProxyUrl {
    /// Whether the URL carries a user or a password (a secret, for `check-config`).
    pub fn has_credentials(&self) -> bool {
        !self.0.username().is_empty() || self.0.password().is_some()
    }

    /// The URL with its credentials, for the HTTP client only.
    pub fn secret_url(&self) -> &str {
        self.0.as_str()
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(self.0.as_str()))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl fmt::Display for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Direct => f.write_str("none"),
            ProxySetting::Via(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxySetting({self})")
    }
}

impl std::str::FromStr for ProxySetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(ProxySetting::Direct);
        }
        let expected = |why: &str| {
            format!(
                "expected \"none\" or a proxy URL such as \"http://proxy.lan:3128\" or \
                 \"socks5h://proxy.lan:1080\" (schemes: http, https, socks5, socks5h), got {:?}{why}",
                redacted_url(t)
            )
        };
        let url = reqwest::Url::parse(t).map_err(|e| expected(&format!(" ({e})")))?;
        if !PROXY_SCHEMES.contains(&url.scheme()) {
            return Err(expected(&format!(" (unknown scheme \"{}\")", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(expected(" (no host)"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(expected(" (a proxy URL has no path or query)"));
        }
        Ok(ProxySetting::Via(ProxyUrl(url)))
    }
}

impl Serialize for ProxySetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProxySetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `scheme://user:<redacted>@host:port`: a URL (or URL-ish text) with its password hidden.
pub fn redacted_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // A query can carry a token or a signature: never shown.
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?<redacted>"),
        None => tail.to_string(),
    };
    match authority.rsplit_once('@') {
        // `user:password@`: the user is a name, the password is not shown.
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{host}{tail}")
        }
        // `token@` alone (how some proxies and registries take a token): not shown.
        Some((_, host)) => format!("{scheme}://<redacted>@{host}{tail}"),
        None => format!("{scheme}://{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_parse() {
        assert_eq!("none".parse::<ProxySetting>(), Ok(ProxySetting::Direct));
        for ok in [
            "http://proxy.lan:3128",
            "https://proxy.lan",
            "socks5://127.0.0.1:1080",
            "socks5h://u:p@proxy.lan:1080/",
        ] {
            assert!(
                matches!(ok.parse::<ProxySetting>(), Ok(ProxySetting::Via(_))),
                "{ok}"
            );
        }
        for bad in [
            "ftp://proxy.lan",
            "socks4://proxy.lan:1080",
            "proxy.lan:3128",
            "http://proxy.lan/some/path",
            "",
        ] {
            let e = bad.parse::<ProxySetting>().expect_err(bad);
            assert!(e.contains("schemes: http, https, socks5, socks5h"), "{e}");
        }
        let e = "ftp://user:hunter2@proxy.lan"
            .parse::<ProxySetting>()
            .expect_err("ftp");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        let p: ProxySetting = "http://alice:hunter2@proxy.lan:3128"
            .parse()
            .expect("valid");
        assert_eq!(p.to_string(), "http://alice:<redacted>@proxy.lan:3128/");
        let ProxySetting::Via(url) = &p else {
            panic!("a proxy URL")
        };
        assert!(url.secret_url().contains("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
        // A user part alone is how a token is often given: it is a secret too.
        assert_eq!(
            redacted_url("socks5h://ghp_t0ken@proxy:1080"),
            "socks5h://<redacted>@proxy:1080"
        );
        assert_eq!(redacted_url("proxy:3128"), "proxy:3128");
        assert_eq!(
            redacted_url("http://a:b:c@h/x?y"),
            "http://a:<redacted>@h/x?<redacted>"
        );
        assert_eq!(
            redacted_url("https://s3.lan/b?X-Amz-Signature=abc"),
            "https://s3.lan/b?<redacted>"
        );
        assert_eq!(redacted_url("https://ghcr.io/v2/"), "https://ghcr.io/v2/");
    }
}
