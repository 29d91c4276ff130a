//! Request routing: which upstream and repository a client means, and which API endpoint.
//!
//! Owns the mapping from every URL form real clients use (README.md, "Pointing clients at
//! the edge") to an [`ApiRoute`], and the table of configured upstreams it resolves names
//! against. It parses raw path segments into typed names, references and digests; anything
//! that does not parse becomes an [`OciError`] here. Precedence when several hints are present:
//!
//! 1. `/<host>/v2/...` (containerd `hosts.toml` server with a path),
//! 2. a host-like first repository segment `/v2/<host>/<repo>/...` (Podman/CRI-O mirror
//!    `location`, containerd `override_path`, `docker pull EDGE/ghcr.io/org/img`),
//! 3. a configured path alias as the first segment `/v2/<path alias>/<repo>/...` (for
//!    upstreams whose name has a port, which Podman/CRI-O cannot use in a path),
//! 4. the `OCI-Namespace` request header (snapshotters; distribution-spec's namespace),
//! 5. `?ns=<host>` (containerd),
//! 6. the `Host` header `<alias>.<server.hostname>`,
//! 7. the default upstream (Docker `registry-mirrors`).
//!
//! `OCI-Namespace` and `ns` are closed-world: when one of them is what selects the
//! upstream and it names none that is configured, the request is refused
//! (`NAME_UNKNOWN`) before anything is dialed. Every response to a routed request echoes
//! the upstream it went to in an `OCI-Namespace` header (`api.rs`).
//!
//! With `server.strict_host` (the default), a `Host` that does not name this edge
//! (hostname, alias host, `localhost`, an IP address) is `NAME_UNKNOWN`.
//!
//! A host that names no configured upstream is `NAME_UNKNOWN`: the edge is never an open
//! proxy. Docker Hub one-component names get `library/`.
//!
//! Must not: do I/O, or know anything about caching.

use super::error::OciError;
use crate::config::Config;
use crate::oci::{
    canonical_registry, repository_on, Digest, Reference, RepoTarget, RepositoryName, Tag,
};
use http::Method;

/// The endpoint of the OCI read API a request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    /// `/v2/`: API version check.
    Ping,
    /// `/v2/_catalog`: the repositories this edge has cached.
    Catalog,
    Manifest {
        target: RepoTarget,
        reference: Reference,
    },
    Blob {
        target: RepoTarget,
        digest: Digest,
    },
    TagsList {
        target: RepoTarget,
        /// `<name>` exactly as the client wrote it in the path (the spec's `name` field).
        client_name: String,
    },
    /// `/v2/<name>/referrers/<digest>[?artifactType=]` (distribution-spec 1.1).
    Referrers {
        target: RepoTarget,
        subject: Digest,
        artifact_type: Option<String>,
    },
    /// `/v2/<name>/blobs/uploads/[<session>]`: blob uploads (the push side).
    Upload {
        target: RepoTarget,
        /// `None` for `POST .../uploads/` (a new session).
        session: Option<String>,
        /// The path up to `.../blobs/uploads` as the client wrote it (session URLs the
        /// edge hands out keep the client's routing form).
        client_path: String,
    },
}

impl ApiRoute {
    /// The repository the request is about, if any.
    pub fn target(&self) -> Option<&RepoTarget> {
        match self {
            ApiRoute::Ping | ApiRoute::Catalog => None,
            ApiRoute::Manifest { target, .. }
            | ApiRoute::Blob { target, .. }
            | ApiRoute::TagsList { target, .. }
            | ApiRoute::Referrers { target, .. }
            | ApiRoute::Upload { target, .. } => Some(target),
        }
    }

    /// Whether `method` on this route is part of the push API (uploads, manifest `PUT`,
    /// `DELETE`), as opposed to a pull.
    pub fn is_push(&self, method: &Method) -> bool {
        match self {
            ApiRoute::Upload { .. } => true,
            ApiRoute::Manifest { .. } | ApiRoute::Blob { .. } => {
                !matches!(*method, Method::GET | Method::HEAD)
            }
            _ => false,
        }
    }
}

/// Methods of the push API; any other besides `GET` and `HEAD` is refused in routing.
fn is_push_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    )
}

/// An upload session id as this edge makes them (a UUID); anything else names no session.
fn is_session_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[derive(Clone, Debug)]
struct UpstreamEntry {
    name: String,
    /// Host (and port) of its URL, also accepted as a name (`registry-1.docker.io`).
    url_host: String,
    aliases: Vec<String>,
    /// First path segments that stand for this upstream (`lan` for `registry.lan:5000`).
    path_aliases: Vec<String>,
}

/// The configured upstreams, as routing sees them.
#[derive(Clone, Debug)]
pub struct UpstreamTable {
    entries: Vec<UpstreamEntry>,
    default: Option<String>,
    hostname: String,
    /// `server.strict_host`: refuse `Host` names that are not this edge.
    strict_host: bool,
}

impl UpstreamTable {
    pub fn from_config(c: &Config) -> Self {
        let entries = c
            .upstream
            .iter()
            .map(|u| UpstreamEntry {
                name: u.name.to_ascii_lowercase(),
                url_host: reqwest::Url::parse(&u.url)
                    .ok()
                    .and_then(|url| {
                        url.host_str().map(|h| match url.port() {
                            Some(p) => format!("{h}:{p}"),
                            None => h.to_string(),
                        })
                    })
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                aliases: u.aliases.clone(),
                path_aliases: u.path_aliases.clone(),
            })
            .collect();
        UpstreamTable {
            entries,
            default: c.default_upstream().map(|u| u.name.to_ascii_lowercase()),
            hostname: c.server.hostname.to_ascii_lowercase(),
            strict_host: c.server.strict_host,
        }
    }

    /// The upstream a path alias (`lan` in `/v2/lan/team/app`) stands for.
    fn by_path_alias(&self, segment: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.path_aliases.iter().any(|a| a == segment))
            .map(|e| e.name.as_str())
    }

    /// With `server.strict_host`, a `Host` must name this edge: its hostname, an alias
    /// host of a configured alias, `localhost`, or an IP address (port ignored).
    pub(super) fn check_host(&self, host_header: Option<&str>) -> Result<(), OciError> {
        let Some(raw) = host_header.filter(|_| self.strict_host) else {
            return Ok(());
        };
        let host = strip_port(raw).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if is_ip
            || host == "localhost"
            || host == self.hostname
            || self.by_alias_host(raw).is_some()
        {
            return Ok(());
        }
        Err(OciError::name_unknown(format!(
            "this edge does not answer for the host name {host}"
        ))
        .with_detail(format!(
            "use {} or <alias>.{} with a configured alias; set server.hostname to the name clients use, or server.strict_host = false to answer every name",
            self.hostname, self.hostname
        )))
    }

    /// The configured upstream a registry host names, if any.
    pub fn find(&self, host: &str) -> Option<&str> {
        let host = canonical_registry(host);
        self.entries
            .iter()
            .find(|e| e.name == host)
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|e| !e.url_host.is_empty() && e.url_host == host)
            })
            .map(|e| e.name.as_str())
    }

    /// The upstream an alias host (`docker.edge.lan`, port ignored) stands for.
    fn by_alias_host(&self, host_header: &str) -> Option<&str> {
        let host = strip_port(host_header).to_ascii_lowercase();
        let alias = host.strip_suffix(&self.hostname)?.strip_suffix('.')?;
        self.entries
            .iter()
            .find(|e| e.aliases.iter().any(|a| a == alias))
            .map(|e| e.name.as_str())
    }

    /// The edge's own host name (`server.hostname`).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A path segment that names a registry host (`ghcr.io`, `registry.lan:5000`,
/// `localhost`) rather than a repository component.
fn is_host_like(segment: &str) -> bool {
    let (host, port) = match segment.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (segment, None),
    };
    let labels_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && port_ok && (host.contains('.') || port.is_some() || host == "localhost")
}

/// What routing needs from a request.
pub struct RequestParts<'a> {
    pub method: &'a Method,
    /// The `Host` header, or the `:authority` of an h2 request.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The `OCI-Namespace` request header.
    pub namespace: Option<&'a str>,
}

fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// A query parameter, percent-decoded (`artifactType=application%2Fvnd.example`).
pub fn decoded_query_param(query: Option<&str>, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://q/?{}", query?)).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Routes one request. Only requests under `/v2` (or `/<host>/v2`) reach here.
pub fn route(parts: &RequestParts<'_>, table: &UpstreamTable) -> Result<ApiRoute, OciError> {
    let path = parts.path;
    if path.contains("%2f") || path.contains("%2F") || path.contains('\\') {
        return Err(OciError::name_invalid(
            "encoded slashes and backslashes are not allowed in paths",
        ));
    }
    // No name, tag, digest or host in a registry path is ever percent-encoded: refuse
    // encoded dots, NULs and the like before anything resolves a name.
    if path.contains('%') {
        return Err(OciError::name_invalid(
            "percent-encoded characters are not allowed in registry paths",
        ));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(OciError::name_invalid(
            "\".\" and \"..\" segments are not allowed in paths",
        ));
    }
    // `/<host>/v2/...` (containerd host with a path)
    let (explicit_host, api_path) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((first, rest))
            if first != "v2"
                && (rest == "v2" || rest.starts_with("v2/"))
                && is_host_like(first) =>
        {
            (Some(first), &path[first.len() + 1..])
        }
        _ => (None, path),
    };
    let Some(rest) = api_path.strip_prefix("/v2") else {
        return Err(OciError::not_found_route());
    };
    table.check_host(parts.host)?;
    let read = matches!(*parts.method, Method::GET | Method::HEAD);
    if !read && !is_push_method(parts.method) {
        return Err(OciError::unsupported_method(parts.method));
    }
    if rest.is_empty() || rest == "/" {
        return match read {
            true => Ok(ApiRoute::Ping),
            false => Err(OciError::unsupported_method(parts.method)),
        };
    }
    let rest = rest
        .strip_prefix('/')
        .ok_or_else(OciError::not_found_route)?;
    if rest == "_catalog" {
        return match read {
            true => Ok(ApiRoute::Catalog),
            false => Err(OciError::unsupported_method(parts.method)),
        };
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if n < 3 {
        return Err(OciError::not_found_route());
    }
    enum Kind<'s> {
        Manifest(&'s str),
        Blob(&'s str),
        Referrers(&'s str),
        Tags,
        Upload(Option<&'s str>),
    }
    // `<name>/blobs/uploads[/]` and `<name>/blobs/uploads/<session>`.
    let upload = if segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
        Some((n - 2, None))
    } else if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        Some((n - 3, Some(segments[n - 1]).filter(|s| !s.is_empty())))
    } else {
        None
    };
    let (name_segments, kind) = if let Some((end, session)) = upload {
        (&segments[..end], Kind::Upload(session))
    } else if segments[n - 2] == "tags" && segments[n - 1] == "list" {
        (&segments[..n - 2], Kind::Tags)
    } else if segments[n - 2] == "referrers" {
        (&segments[..n - 2], Kind::Referrers(segments[n - 1]))
    } else if segments[n - 2] == "manifests" {
        (&segments[..n - 2], Kind::Manifest(segments[n - 1]))
    } else if segments[n - 2] == "blobs" {
        (&segments[..n - 2], Kind::Blob(segments[n - 1]))
    } else {
        return Err(OciError::not_found_route());
    };
    let target = resolve_target(name_segments, explicit_host, parts, table)?;
    let read_only = matches!(kind, Kind::Tags | Kind::Referrers(_));
    if !read && read_only {
        return Err(OciError::unsupported_method(parts.method));
    }
    Ok(match kind {
        Kind::Upload(session) => {
            if let Some(id) = session.filter(|id| !is_session_id(id)) {
                return Err(OciError::new(
                    http::StatusCode::NOT_FOUND,
                    super::error::ErrorCode::BlobUploadUnknown,
                    format!("no upload session {id:?} on this edge"),
                ));
            }
            let uploads_at = path.rfind("/blobs/uploads").unwrap_or(path.len());
            ApiRoute::Upload {
                target,
                session: session.map(str::to_string),
                client_path: format!("{}/blobs/uploads", &path[..uploads_at]),
            }
        }
        Kind::Tags => ApiRoute::TagsList {
            target,
            client_name: name_segments.join("/"),
        },
        // Spec, "Listing Referrers": an invalid `<digest>` MUST be 400.
        Kind::Referrers(d) => ApiRoute::Referrers {
            target,
            subject: d
                .parse()
                .map_err(|e: crate::oci::DigestError| OciError::digest_invalid(e.to_string()))?,
            artifact_type: decoded_query_param(parts.query, "artifactType")
                .filter(|t| !t.is_empty()),
        },
        Kind::Manifest(r) => {
            // Spec, "Pulling manifests": `<tag-or-digest>` MUST be a digest or a tag, and a
            // manifest that is not found MUST be 404. A reference of neither form cannot name
            // any manifest: 404 MANIFEST_UNKNOWN, without asking the upstream.
            let reference = if r.contains(':') {
                r.parse::<Digest>()
                    .map(Reference::Digest)
                    .map_err(|e| OciError::manifest_unknown(r).with_detail(e.to_string()))?
            } else {
                r.parse::<Tag>()
                    .map(Reference::Tag)
                    .map_err(|e| OciError::manifest_unknown(r).with_detail(e.to_string()))?
            };
            ApiRoute::Manifest { target, reference }
        }
        Kind::Blob(d) => ApiRoute::Blob {
            target,
            digest: d
                .parse()
                .map_err(|e: crate::oci::DigestError| OciError::digest_invalid(e.to_string()))?,
        },
    })
}

fn resolve_target(
    name_segments: &[&str],
    explicit_host: Option<&str>,
    parts: &RequestParts<'_>,
    table: &UpstreamTable,
) -> Result<RepoTarget, OciError> {
    let unknown = |h: &str| {
        OciError::name_unknown(format!("upstream {h} is not configured on this edge")).with_detail(
            format!(
                "configured upstreams: {}",
                table.names().collect::<Vec<_>>().join(", ")
            ),
        )
    };
    let mut segments = name_segments;
    let upstream: &str = if let Some(h) = explicit_host {
        // containerd `/<host>/v2/` may still carry the host as the first segment with override_path.
        if segments.len() > 1 && segments[0].eq_ignore_ascii_case(h) {
            segments = &segments[1..];
        }
        table.find(h).ok_or_else(|| unknown(h))?
    } else if segments.len() > 1 && is_host_like(segments[0]) {
        let h = segments[0];
        segments = &segments[1..];
        table.find(h).ok_or_else(|| unknown(h))?
    } else if let Some(up) = (segments.len() > 1)
        .then(|| table.by_path_alias(segments[0]))
        .flatten()
    {
        segments = &segments[1..];
        up
    } else if let Some(ns) = parts.namespace.map(str::trim).filter(|v| !v.is_empty()) {
        table.find(ns).ok_or_else(|| unknown(ns))?
    } else if let Some(ns) = query_param(parts.query, "ns").filter(|v| !v.is_empty()) {
        let ns = ns.replace("%3A", ":").replace("%3a", ":");
        table.find(&ns).ok_or_else(|| unknown(&ns))?
    } else if let Some(up) = parts.host.and_then(|h| table.by_alias_host(h)) {
        up
    } else {
        table.default.as_deref().ok_or_else(|| {
            OciError::name_unknown("no default upstream is configured; name the registry, e.g. /v2/ghcr.io/org/img/...")
        })?
    };
    let joined = segments.join("/");
    let repo = joined
        .parse::<RepositoryName>()
        .and_then(|repo| repository_on(upstream, repo))
        .map_err(|e| OciError::name_invalid(e.to_string()))?;
    Ok(RepoTarget {
        upstream: upstream.to_string(),
        repo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load::load_from_text_for_tests, ConfigOrigin};
    use crate::registry::error::ErrorCode;

    fn table() -> UpstreamTable {
        let c = load_from_text_for_tests(
            ConfigOrigin::Embedded,
            "[server]\nhostname = \"edge.lan\"\n[[upstream]]\nname = \"registry.lan:5000\"\nurl = \"http://127.0.0.1:5001\"\naliases = [\"lan\"]\npath_aliases = [\"lan\"]\n",
        );
        UpstreamTable::from_config(&c)
    }

    #[test]
    fn path_aliases_and_strict_host() {
        let t = |u: &str, rp: &str| (u.to_string(), rp.to_string());
        // Podman/CRI-O: EDGE/lan/team/app for registry.lan:5000
        assert_eq!(
            manifest_target("/v2/lan/team/app/manifests/t", None),
            t("registry.lan:5000", "team/app")
        );
        // A one-segment name is a Docker Hub repository, not the alias.
        assert_eq!(
            manifest_target("/v2/lan/manifests/t", None),
            t("docker.io", "library/lan")
        );
        for ok in [
            "edge.lan",
            "EDGE.LAN:5000",
            "lan.edge.lan",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(r(Method::GET, Some(ok), "/v2/").is_ok(), "{ok}");
        }
        for bad in ["nosuch.edge.lan", "other.example", "edge.lan.evil.example"] {
            let e = r(Method::GET, Some(bad), "/v2/a/manifests/t").expect_err(bad);
            assert_eq!(e.code, ErrorCode::NameUnknown, "{bad}");
            assert_eq!(e.status, http::StatusCode::NOT_FOUND);
        }
        let lax = load_from_text_for_tests(
            ConfigOrigin::Embedded,
            "[server]\nhostname = \"edge.lan\"\nstrict_host = false\n",
        );
        let lax = UpstreamTable::from_config(&lax);
        let parts = RequestParts {
            method: &Method::GET,
            host: Some("nosuch.edge.lan"),
            path: "/v2/a/manifests/t",
            query: None,
            namespace: None,
        };
        assert!(
            route(&parts, &lax).is_ok(),
            "strict_host = false answers any name"
        );
    }

    fn r(method: Method, host: Option<&str>, path_and_query: &str) -> Result<ApiRoute, OciError> {
        r_ns(method, host, path_and_query, None)
    }

    /// [`r`] with an `OCI-Namespace` request header.
    fn r_ns(
        method: Method,
        host: Option<&str>,
        path_and_query: &str,
        namespace: Option<&str>,
    ) -> Result<ApiRoute, OciError> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        route(
            &RequestParts {
                method: &method,
                host,
                path,
                query,
                namespace,
            },
            &table(),
        )
    }

    #[test]
    fn the_oci_namespace_header_selects_the_upstream_after_a_host_in_the_path() {
        let up = |path: &str, ns: Option<&str>| match r_ns(Method::GET, None, path, ns) {
            Ok(ApiRoute::Manifest { target, .. }) => Ok((target.upstream, target.repo.to_string())),
            Ok(other) => panic!("{path}: {other:?}"),
            Err(e) => Err(e.code),
        };
        let t = |u: &str, rp: &str| Ok((u.to_string(), rp.to_string()));
        // The header alone.
        assert_eq!(
            up("/v2/team/app/manifests/t", Some("registry.lan:5000")),
            t("registry.lan:5000", "team/app")
        );
        // Over ?ns=.
        assert_eq!(
            up(
                "/v2/team/app/manifests/t?ns=docker.io",
                Some("registry.lan:5000")
            ),
            t("registry.lan:5000", "team/app")
        );
        // Under a host in the path.
        assert_eq!(
            up(
                "/v2/docker.io/library/nginx/manifests/t",
                Some("registry.lan:5000")
            ),
            t("docker.io", "library/nginx")
        );
        // Closed world: a namespace that names no configured upstream is refused.
        assert_eq!(
            up("/v2/team/app/manifests/t", Some("evil.example")),
            Err(ErrorCode::NameUnknown)
        );
        // An empty header is no header.
        assert_eq!(
            up("/v2/busybox/manifests/t", Some(" ")),
            t("docker.io", "library/busybox")
        );
    }

    fn manifest_target(path: &str, host: Option<&str>) -> (String, String) {
        match r(Method::GET, host, path) {
            Ok(ApiRoute::Manifest { target, .. }) => (target.upstream, target.repo.to_string()),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn every_client_form_from_clients_md() {
        let t = |u: &str, rp: &str| (u.to_string(), rp.to_string());
        // containerd host https://EDGE, ns
        assert_eq!(
            manifest_target("/v2/org/img/manifests/t?ns=ghcr.io", None),
            t("ghcr.io", "org/img")
        );
        // containerd host https://EDGE/ghcr.io
        assert_eq!(
            manifest_target("/ghcr.io/v2/org/img/manifests/t?ns=ghcr.io", None),
            t("ghcr.io", "org/img")
        );
        // containerd https://EDGE/v2/ghcr.io + override_path
        assert_eq!(
            manifest_target("/v2/ghcr.io/org/img/manifests/t?ns=ghcr.io", None),
            t("ghcr.io", "org/img")
        );
        // Podman/CRI-O location = EDGE/ghcr.io
        assert_eq!(
            manifest_target("/v2/ghcr.io/org/img/manifests/t", None),
            t("ghcr.io", "org/img")
        );
        // Docker registry-mirrors
        assert_eq!(
            manifest_target("/v2/library/nginx/manifests/t", None),
            t("docker.io", "library/nginx")
        );
        // alias host
        assert_eq!(
            manifest_target("/v2/library/nginx/manifests/t", Some("docker.edge.lan")),
            t("docker.io", "library/nginx")
        );
        assert_eq!(
            manifest_target("/v2/team/app/manifests/t", Some("lan.edge.lan:443")),
            t("registry.lan:5000", "team/app")
        );
        // a person: docker pull EDGE/docker.io/nginx
        assert_eq!(
            manifest_target("/v2/docker.io/nginx/manifests/t", None),
            t("docker.io", "library/nginx")
        );
        // containerd docker.io through the host-with-path form
        assert_eq!(
            manifest_target("/docker.io/v2/library/nginx/manifests/t?ns=docker.io", None),
            t("docker.io", "library/nginx")
        );
        // custom upstream with a port, path-prefix and ns forms
        assert_eq!(
            manifest_target("/v2/registry.lan:5000/team/app/manifests/t", None),
            t("registry.lan:5000", "team/app")
        );
        assert_eq!(
            manifest_target("/v2/team/app/manifests/t?ns=registry.lan%3A5000", None),
            t("registry.lan:5000", "team/app")
        );
        // Docker Hub synonyms
        assert_eq!(
            manifest_target("/v2/busybox/manifests/t?ns=index.docker.io", None),
            t("docker.io", "library/busybox")
        );
        // one-word names elsewhere stay as they are
        assert_eq!(
            manifest_target("/v2/pause/manifests/3.9?ns=registry.k8s.io", None),
            t("registry.k8s.io", "pause")
        );
    }

    #[test]
    fn never_an_open_proxy() {
        for p in [
            "/v2/evil.example/x/manifests/t",
            "/v2/x/manifests/t?ns=evil.example",
            "/evil.example/v2/x/manifests/t",
        ] {
            let e = r(Method::GET, None, p).expect_err(p);
            assert_eq!(e.code, ErrorCode::NameUnknown, "{p}");
        }
    }

    #[test]
    fn endpoints_and_errors() {
        assert_eq!(r(Method::GET, None, "/v2/"), Ok(ApiRoute::Ping));
        assert_eq!(r(Method::HEAD, None, "/v2"), Ok(ApiRoute::Ping));
        assert_eq!(r(Method::GET, None, "/v2/_catalog"), Ok(ApiRoute::Catalog));
        assert!(matches!(
            r(Method::GET, None, "/v2/a/b/tags/list"),
            Ok(ApiRoute::TagsList { .. })
        ));
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(matches!(
            r(Method::GET, None, &format!("/v2/a/blobs/{d}")),
            Ok(ApiRoute::Blob { .. })
        ));
        assert!(matches!(
            r(Method::GET, None, &format!("/v2/a/manifests/{d}")),
            Ok(ApiRoute::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
        let code = |m: Method, p: &str| r(m, None, p).expect_err(p).code;
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/sha256:xyz"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/manifests/sha256:xyz"),
            ErrorCode::ManifestUnknown
        );
        assert_eq!(
            code(Method::GET, "/v2/a/manifests/-bad"),
            ErrorCode::ManifestUnknown
        );
        assert_eq!(
            r(Method::GET, None, "/v2/a/manifests/.INVALID_MANIFEST_NAME")
                .expect_err("invalid")
                .status,
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(
            code(Method::GET, "/v2/Upper/manifests/t"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/../b/manifests/t"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a%2Fb/manifests/t"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/%2e%2e/b/manifests/t"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a//b/manifests/t"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, &format!("/v2/{}/manifests/t", "a".repeat(300))),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/nothing/here"),
            ErrorCode::Unsupported
        );
        assert_eq!(code(Method::GET, "/other"), ErrorCode::Unsupported);
        // The push API routes (whether an upstream takes pushes is the API's decision);
        // other methods and read-only endpoints are 405.
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for p in ["/v2/a/tags/list", "/v2/", "/v2/_catalog"] {
                let e = r(m.clone(), None, p).expect_err(p);
                assert_eq!(e.status, http::StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
            }
        }
        assert_eq!(
            code(Method::OPTIONS, "/v2/a/manifests/t"),
            ErrorCode::Unsupported
        );
        let upload = |p: &str| match r(Method::POST, None, p) {
            Ok(ApiRoute::Upload {
                target,
                session,
                client_path,
            }) => (target.key().to_string(), session, client_path),
            other => panic!("{p}: {other:?}"),
        };
        for p in ["/v2/a/blobs/uploads/", "/v2/a/blobs/uploads"] {
            assert_eq!(
                upload(p),
                (
                    "docker.io/library/a".into(),
                    None,
                    "/v2/a/blobs/uploads".into()
                )
            );
        }
        assert_eq!(
            upload("/v2/lan/team/app/blobs/uploads/0b1e-42"),
            (
                "registry.lan:5000/team/app".into(),
                Some("0b1e-42".into()),
                "/v2/lan/team/app/blobs/uploads".into()
            )
        );
        assert_eq!(
            code(Method::PATCH, "/v2/a/blobs/uploads/bad!id"),
            ErrorCode::BlobUploadUnknown
        );
    }
}
