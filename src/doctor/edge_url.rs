//! The edge's URL as the client should name it, and whether a URL, mirror location or
//! login key written in a runtime's file names the same host and port.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_by_host_and_port() {
        let e = EdgeUrl::parse("http://edge.lan:5000").expect("url");
        for yes in [
            "http://edge.lan:5000",
            "edge.lan:5000/docker.io",
            "http://EDGE.lan:5000/v2/x",
            "edge.lan:5000",
        ] {
            assert!(e.is_named_by(yes, "http"), "{yes}");
        }
        for no in [
            "http://edge.lan",
            "edge.lan",
            "https://edge.lan:5001",
            "other.lan:5000",
        ] {
            assert!(!e.is_named_by(no, "http"), "{no}");
        }
        let s = EdgeUrl::parse("https://edge.lan").expect("url");
        assert!(
            s.is_named_by("edge.lan", "https")
                && s.is_named_by("https://edge.lan:443/ghcr.io", "https")
        );
        assert!(
            !s.is_named_by("http://edge.lan", "https"),
            "port 80 is not 443"
        );
        for bad in ["edge.lan", "ftp://edge.lan", "https://edge.lan/path"] {
            assert!(EdgeUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
