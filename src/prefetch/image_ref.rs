//! Image references as people write them (`nginx`, `ghcr.io/org/img:1.2`,
//! `registry.lan:5000/team/app@sha256:...`), normalised the way Docker does: no registry
//! means docker.io, a one-word Docker Hub name gets `library/`, no tag means `latest`.

use crate::oci::{repository_on, split_registry, Reference, RepositoryName, Tag, DOCKER_HUB};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host as clients name it (`docker.io`, `ghcr.io`, `registry.lan:5000`).
    pub registry: String,
    pub repo: RepositoryName,
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ImageRefError {
    pub input: String,
    pub reason: String,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ImageRefError> {
        let err = |reason: String| ImageRefError {
            input: input.chars().take(200).collect(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(err(
                "expected a reference such as nginx:1.27 or ghcr.io/org/img@sha256:...".into(),
            ));
        }
        let (name, reference) = if let Some((n, d)) = s.split_once('@') {
            (
                n,
                Reference::Digest(
                    d.parse()
                        .map_err(|e: crate::oci::DigestError| err(e.to_string()))?,
                ),
            )
        } else {
            // A ':' after the last '/' separates the tag (a ':' before it is a port).
            let last_slash = s.rfind('/').map_or(0, |i| i + 1);
            match s[last_slash..].rfind(':') {
                Some(i) => {
                    let tag: Tag = s[last_slash + i + 1..]
                        .parse()
                        .map_err(|e: crate::oci::NameError| err(e.to_string()))?;
                    (&s[..last_slash + i], Reference::Tag(tag))
                }
                None => (
                    s,
                    Reference::Tag(
                        "latest"
                            .parse()
                            .map_err(|e: crate::oci::NameError| err(e.to_string()))?,
                    ),
                ),
            }
        };
        let (registry, path) = split_registry(name);
        let registry = registry.unwrap_or_else(|| DOCKER_HUB.to_string());
        let repo = path
            .parse::<RepositoryName>()
            .and_then(|repo| repository_on(&registry, repo))
            .map_err(|e| err(e.to_string()))?;
        Ok(ImageRef {
            registry,
            repo,
            reference,
        })
    }

    /// The path-prefix route on the edge: `/v2/<registry>/<repo>`.
    pub fn edge_path(&self) -> String {
        format!("/v2/{}/{}", self.registry, self.repo)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repo),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repo),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = |s: &str| ImageRef::parse(s).map(|r| r.to_string());
        assert_eq!(r("nginx").as_deref(), Ok("docker.io/library/nginx:latest"));
        assert_eq!(
            r("nginx:1.27").as_deref(),
            Ok("docker.io/library/nginx:1.27")
        );
        assert_eq!(
            r("bitnami/redis:7").as_deref(),
            Ok("docker.io/bitnami/redis:7")
        );
        assert_eq!(r("ghcr.io/org/img:v1").as_deref(), Ok("ghcr.io/org/img:v1"));
        assert_eq!(
            r("registry.lan:5000/team/app").as_deref(),
            Ok("registry.lan:5000/team/app:latest")
        );
        assert_eq!(r("localhost/app:1").as_deref(), Ok("localhost/app:1"));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            r(&format!("registry.k8s.io/pause@{d}")),
            Ok(format!("registry.k8s.io/pause@{d}"))
        );
        for bad in [
            "",
            "Bad Ref",
            "nginx:",
            "ghcr.io/Org/img",
            "nginx@sha256:12",
            "a//b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
