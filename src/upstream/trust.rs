//! Where an upstream's credentials may go. One rule for every credential the edge
//! forwards: to the endpoint the credentials are configured for, and to a Bearer token
//! `realm` only when that realm is reached over HTTPS (plain HTTP only when the endpoint
//! itself is plain HTTP, on purpose) and its host is the endpoint's own host or one of the
//! upstream's token hosts (`token_hosts`, plus the real ones of the well-known registries:
//! `auth.docker.io` for Docker Hub). A challenge naming any other realm gets no
//! credentials: the token is asked for anonymously (enough for public content) and the
//! refusal is logged.
//!
//! Owns: that decision. Must not: send anything, or log credentials.

use reqwest::Url;

/// The token hosts of the well-known registries, by upstream name.
const KNOWN_TOKEN_HOSTS: &[(&str, &[&str])] = &[
    ("docker.io", &["auth.docker.io"]),
    ("ghcr.io", &["ghcr.io"]),
    ("gcr.io", &["gcr.io"]),
    ("quay.io", &["quay.io"]),
    ("registry.k8s.io", &[]),
    ("mcr.microsoft.com", &[]),
];

/// The hosts an endpoint's credentials may be sent to, besides the endpoint itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct CredentialTrust {
    upstream: String,
    /// The endpoint the credentials are for: its scheme and host.
    endpoint_https: bool,
    endpoint_host: String,
    /// `host` (any port) or `host:port` entries.
    token_hosts: Vec<String>,
}

/// Why credentials were not sent to a realm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Untrusted {
    /// An `http://` realm for an HTTPS endpoint.
    PlainHttp,
    /// A host that is neither the endpoint's nor a token host.
    ForeignHost,
}

impl Untrusted {
    pub(crate) fn as_sentence(self) -> &'static str {
        match self {
            Untrusted::PlainHttp => {
                "the realm is plain http:// while the upstream is HTTPS, so the credentials would cross the network in clear"
            }
            Untrusted::ForeignHost => {
                "the realm's host is not the upstream's own and not in its token_hosts; add it to token_hosts if it is the upstream's real token service"
            }
        }
    }
}

impl CredentialTrust {
    /// The trust of an endpoint at `endpoint` of upstream `upstream_name`, with the
    /// configured `token_hosts`.
    pub(crate) fn new(upstream_name: &str, endpoint: &Url, token_hosts: &[String]) -> Self {
        let known = KNOWN_TOKEN_HOSTS
            .iter()
            .find(|(name, _)| *name == upstream_name)
            .map(|(_, hosts)| *hosts)
            .unwrap_or_default();
        CredentialTrust {
            upstream: upstream_name.to_string(),
            endpoint_https: endpoint.scheme() == "https",
            endpoint_host: endpoint.host_str().unwrap_or_default().to_ascii_lowercase(),
            token_hosts: token_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .chain(known.iter().map(|h| h.to_string()))
                .collect(),
        }
    }

    /// The upstream's name, for messages.
    pub(crate) fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Whether credentials may be sent to the token realm `realm`.
    pub(crate) fn allows_realm(&self, realm: &Url) -> Result<(), Untrusted> {
        match realm.scheme() {
            "https" => {}
            "http" if !self.endpoint_https => {}
            _ => return Err(Untrusted::PlainHttp),
        }
        let host = realm.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = realm.port_or_known_default();
        if host == self.endpoint_host {
            return Ok(());
        }
        let listed = self.token_hosts.iter().any(|entry| {
            match entry
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            {
                Some((h, p)) => h == host && Some(p) == port,
                None => *entry == host,
            }
        });
        if listed {
            Ok(())
        } else {
            Err(Untrusted::ForeignHost)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn docker_hub_credentials_go_to_its_real_token_service_only() {
        let t = CredentialTrust::new("docker.io", &url("https://registry-1.docker.io"), &[]);
        assert_eq!(t.allows_realm(&url("https://auth.docker.io/token")), Ok(()));
        assert_eq!(
            t.allows_realm(&url("https://evil.example/token")),
            Err(Untrusted::ForeignHost)
        );
        assert_eq!(
            t.allows_realm(&url("http://auth.docker.io/token")),
            Err(Untrusted::PlainHttp),
            "never in clear"
        );
    }

    #[test]
    fn the_endpoint_itself_and_listed_token_hosts_are_trusted() {
        let hosts = vec![
            "auth.corp.example".to_string(),
            "sso.corp.example:8443".to_string(),
        ];
        let t = CredentialTrust::new(
            "registry.corp.example",
            &url("https://registry.corp.example"),
            &hosts,
        );
        assert_eq!(
            t.allows_realm(&url("https://registry.corp.example/v2/token")),
            Ok(())
        );
        assert_eq!(
            t.allows_realm(&url("https://registry.corp.example:5001/token")),
            Ok(()),
            "its own host, any port"
        );
        assert_eq!(
            t.allows_realm(&url("https://auth.corp.example:9000/token")),
            Ok(()),
            "a host entry: any port"
        );
        assert_eq!(
            t.allows_realm(&url("https://sso.corp.example:8443/t")),
            Ok(())
        );
        assert_eq!(
            t.allows_realm(&url("https://sso.corp.example/t")),
            Err(Untrusted::ForeignHost),
            "a host:port entry is that port only"
        );
        assert_eq!(
            t.allows_realm(&url("https://corp.example.evil.test/t")),
            Err(Untrusted::ForeignHost)
        );
    }

    #[test]
    fn a_plain_http_upstream_may_use_a_plain_http_realm() {
        let t = CredentialTrust::new("registry.lan:5000", &url("http://registry.lan:5000"), &[]);
        assert_eq!(
            t.allows_realm(&url("http://registry.lan:5001/auth")),
            Ok(())
        );
        assert_eq!(
            t.allows_realm(&url("http://other.lan/auth")),
            Err(Untrusted::ForeignHost)
        );
    }
}
