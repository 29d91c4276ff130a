//! Which outbound proxy an upstream's requests go through.
//!
//! Precedence, first match wins (docs/upstream-reach.md says the same for operators):
//! 1. the upstream's own `proxy` (`"none"` forces direct);
//! 2. `[outbound] proxy` (`"none"` forces direct), except for hosts in `[outbound] no_proxy`;
//! 3. the environment: `https_proxy`/`HTTPS_PROXY` for https:// requests,
//!    `http_proxy`/`HTTP_PROXY` for http:// ones, `all_proxy`/`ALL_PROXY` for either,
//!    except for hosts in `no_proxy`/`NO_PROXY` (lower case wins when both are set);
//! 4. direct.
//!
//! The rules apply per request, so a redirect to a blob CDN takes the same way out.
//!
//! Owns: [`ProxyEnv`] (the proxy variables read once at start), [`ProxyChoice`] and its
//! one-line description for logs (passwords hidden), and installing it on a reqwest client
//! builder (reqwest's own environment lookup is always switched off, so the precedence
//! above is the only one).
//!
//! Must not: send requests or log credentials.

use super::UpstreamError;
use crate::config::outbound::redacted_url;
use crate::config::{OutboundConfig, ProxySetting, UpstreamConfig};
use reqwest::{NoProxy, Proxy};

/// The proxy variables of an environment (empty values count as unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub https: Option<(&'static str, String)>,
    pub http: Option<(&'static str, String)>,
    pub all: Option<(&'static str, String)>,
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |lower: &'static str, upper: &'static str| {
            [lower, upper].into_iter().find_map(|name| {
                get(name)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
        };
        ProxyEnv {
            https: var("https_proxy", "HTTPS_PROXY"),
            http: var("http_proxy", "HTTP_PROXY"),
            all: var("all_proxy", "ALL_PROXY"),
            no_proxy: var("no_proxy", "NO_PROXY").map(|(_, v)| v),
        }
    }
}

/// Which requests a proxy rule catches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    All,
    Http,
    Https,
}

/// One proxy rule: requests to `targets` go through `url`, unless their host is in
/// `no_proxy`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyRule {
    pub targets: Targets,
    /// Where the URL came from (`[[upstream]] proxy`, `HTTPS_PROXY`, ...), for messages.
    pub source: &'static str,
    url: String,
    pub no_proxy: Option<String>,
}

impl std::fmt::Debug for ProxyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRule")
            .field("targets", &self.targets)
            .field("source", &self.source)
            .field("url", &redacted_url(&self.url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// How one upstream's requests leave the box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyChoice {
    /// No proxy: `forced_by` names the `proxy = "none"` that decided it; `None` when no
    /// proxy is configured or in the environment.
    Direct {
        forced_by: Option<&'static str>,
    },
    Proxied(Vec<ProxyRule>),
}

impl ProxyChoice {
    /// Applies the precedence in this module's docs.
    pub fn choose(up: &UpstreamConfig, outbound: &OutboundConfig, env: &ProxyEnv) -> Self {
        let configured = [
            (&up.proxy, "the upstream's proxy", None),
            (
                &outbound.proxy,
                "[outbound] proxy",
                (!outbound.no_proxy.is_empty()).then(|| outbound.no_proxy.join(",")),
            ),
        ];
        for (setting, source, no_proxy) in configured {
            match setting {
                Some(ProxySetting::Direct) => {
                    return ProxyChoice::Direct {
                        forced_by: Some(source),
                    }
                }
                Some(ProxySetting::Via(url)) => {
                    return ProxyChoice::Proxied(vec![ProxyRule {
                        targets: Targets::All,
                        source,
                        url: url.secret_url().to_string(),
                        no_proxy,
                    }])
                }
                None => {}
            }
        }
        let rules: Vec<ProxyRule> = [
            (Targets::Https, &env.https),
            (Targets::Http, &env.http),
            (Targets::All, &env.all),
        ]
        .into_iter()
        .filter_map(|(targets, var)| {
            var.as_ref().map(|(name, url)| ProxyRule {
                targets,
                source: name,
                url: url.clone(),
                no_proxy: env.no_proxy.clone(),
            })
        })
        .collect();
        if rules.is_empty() {
            ProxyChoice::Direct { forced_by: None }
        } else {
            ProxyChoice::Proxied(rules)
        }
    }

    /// One line for the log: `direct (…)` or `https via http://u:<redacted>@p:3128 (from
    /// HTTPS_PROXY), except no_proxy=…`.
    pub fn describe(&self) -> String {
        match self {
            ProxyChoice::Direct {
                forced_by: Some(source),
            } => format!("direct (proxy = \"none\" in {source})"),
            ProxyChoice::Direct { forced_by: None } => {
                "direct (no proxy configured or in the environment)".to_string()
            }
            ProxyChoice::Proxied(rules) => rules
                .iter()
                .map(|r| {
                    let which = match r.targets {
                        Targets::All => "all requests",
                        Targets::Http => "http:// requests",
                        Targets::Https => "https:// requests",
                    };
                    let except = r
                        .no_proxy
                        .as_ref()
                        .map(|n| format!(", except hosts in no_proxy {n:?}"))
                        .unwrap_or_default();
                    format!(
                        "{which} via {} (from {}){except}",
                        redacted_url(&r.url),
                        r.source
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Installs the choice on `builder`, replacing reqwest's own environment lookup.
    pub(crate) fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        upstream: &str,
    ) -> Result<reqwest::ClientBuilder, UpstreamError> {
        let mut builder = builder.no_proxy();
        let ProxyChoice::Proxied(rules) = self else {
            return Ok(builder);
        };
        for rule in rules {
            let url = rule.url.as_str();
            let proxy = match rule.targets {
                Targets::All => Proxy::all(url),
                Targets::Http => Proxy::http(url),
                Targets::Https => Proxy::https(url),
            }
            .map_err(|e| {
                UpstreamError::Config(format!(
                    "upstream {upstream:?}: proxy {} (from {}) cannot be used: {e}",
                    redacted_url(url),
                    rule.source
                ))
            })?;
            let no_proxy = rule.no_proxy.as_deref().and_then(NoProxy::from_string);
            builder = builder.proxy(proxy.no_proxy(no_proxy));
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(|k| map.get(k).cloned())
    }

    fn upstream(proxy: Option<&str>) -> UpstreamConfig {
        let mut u = UpstreamConfig::builtin("ghcr.io", "https://ghcr.io", "ghcr");
        u.proxy = proxy.map(|p| p.parse().expect("valid proxy"));
        u
    }

    fn outbound(proxy: Option<&str>, no_proxy: &[&str]) -> OutboundConfig {
        OutboundConfig {
            proxy: proxy.map(|p| p.parse().expect("valid proxy")),
            no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
            ..OutboundConfig::default()
        }
    }

    #[test]
    fn environment_variables() {
        let e = env(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", " "),
            ("ALL_PROXY", "socks5h://all:1080"),
            ("NO_PROXY", "registry.lan,10.0.0.0/8"),
        ]);
        assert_eq!(
            e.https,
            Some(("https_proxy", "http://lower:3128".to_string()))
        );
        assert_eq!(e.http, None);
        assert_eq!(e.all.as_ref().map(|v| v.0), Some("ALL_PROXY"));
        assert_eq!(e.no_proxy.as_deref(), Some("registry.lan,10.0.0.0/8"));
    }

    #[test]
    fn precedence() {
        let e = env(&[("HTTPS_PROXY", "http://env:3128"), ("NO_PROXY", "lan")]);
        let from_env = ProxyChoice::choose(&upstream(None), &OutboundConfig::default(), &e);
        let ProxyChoice::Proxied(rules) = &from_env else {
            panic!("environment proxy expected: {from_env:?}")
        };
        assert_eq!(rules.len(), 1);
        assert_eq!(
            (rules[0].targets, rules[0].source),
            (Targets::Https, "HTTPS_PROXY")
        );
        assert_eq!(rules[0].no_proxy.as_deref(), Some("lan"));

        let daemon_wide = outbound(Some("socks5h://wide:1080"), &["lan", "10.0.0.0/8"]);
        let c = ProxyChoice::choose(&upstream(None), &daemon_wide, &e);
        assert!(
            c.describe()
                .starts_with("all requests via socks5h://wide:1080"),
            "{}",
            c.describe()
        );
        assert!(c.describe().contains("lan,10.0.0.0/8"), "{}", c.describe());

        let own = ProxyChoice::choose(&upstream(Some("http://me:pw@own:3128")), &daemon_wide, &e);
        assert!(own.describe().contains("own:3128"), "{}", own.describe());
        assert!(!own.describe().contains("pw@"), "{}", own.describe());

        let none = ProxyChoice::choose(&upstream(Some("none")), &daemon_wide, &e);
        assert!(matches!(none, ProxyChoice::Direct { .. }));
        let none = ProxyChoice::choose(&upstream(None), &outbound(Some("none"), &[]), &e);
        assert!(matches!(none, ProxyChoice::Direct { .. }));
        let none = ProxyChoice::choose(&upstream(None), &OutboundConfig::default(), &env(&[]));
        assert!(matches!(none, ProxyChoice::Direct { .. }));
    }

    #[test]
    fn bad_environment_proxy_is_a_config_error() {
        let c = ProxyChoice::choose(
            &upstream(None),
            &OutboundConfig::default(),
            &env(&[("HTTPS_PROXY", "http://u:secret@[bad")]),
        );
        let e = c
            .apply(reqwest::Client::builder(), "ghcr.io")
            .expect_err("an unusable proxy URL");
        let text = e.to_string();
        assert!(
            text.contains("HTTPS_PROXY") && text.contains("ghcr.io"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }
}
