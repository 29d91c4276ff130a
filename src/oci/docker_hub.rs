//! Docker Hub's naming rules, the one copy every layer uses: the host names that mean
//! Docker Hub, its `library/` namespace for one-word names, and Docker's rule for when the
//! first component of a name is a registry host rather than part of the repository.
//!
//! Owns: [`DOCKER_HUB`], [`canonical_registry`], [`repository_on`] and [`split_registry`].
//!
//! Must not: know which upstreams are configured (routing does), or do I/O.

use super::{NameError, RepositoryName};

/// The name Docker Hub goes by on this edge (upstream name and store keys).
pub const DOCKER_HUB: &str = "docker.io";

/// Other host names clients use for Docker Hub.
const DOCKER_HUB_SYNONYMS: &[&str] = &[
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// The registry a host name stands for, lowercased: any of Docker Hub's names is
/// [`DOCKER_HUB`].
pub fn canonical_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_SYNONYMS.contains(&host.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

/// The repository `repo` names on `registry` (a canonical name, see
/// [`canonical_registry`]): on Docker Hub a one-word name lives under `library/`.
pub fn repository_on(registry: &str, repo: RepositoryName) -> Result<RepositoryName, NameError> {
    if registry == DOCKER_HUB && repo.components().count() == 1 {
        repo.prefixed("library")
    } else {
        Ok(repo)
    }
}

/// Splits a name as Docker reads it: a first component with a `.` or a `:`, or
/// `localhost`, is a registry host (returned canonical), the rest the repository path.
/// A name without one has no registry: `(None, name)`.
pub fn split_registry(name: &str) -> (Option<String>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(canonical_registry(first)), rest)
        }
        _ => (None, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_synonyms_are_docker_io() {
        for h in [
            "docker.io",
            "index.docker.io",
            "Registry-1.Docker.io",
            "registry.hub.docker.com",
        ] {
            assert_eq!(canonical_registry(h), DOCKER_HUB, "{h}");
        }
        assert_eq!(canonical_registry("GHCR.io"), "ghcr.io");
    }

    #[test]
    fn one_word_docker_hub_names_live_under_library() {
        let name = |s: &str| s.parse::<RepositoryName>().expect("name");
        let on = |r: &str, n: &str| repository_on(r, name(n)).expect("name").to_string();
        assert_eq!(on("docker.io", "nginx"), "library/nginx");
        assert_eq!(on("docker.io", "bitnami/redis"), "bitnami/redis");
        assert_eq!(on("ghcr.io", "img"), "img");
    }

    #[test]
    fn a_registry_host_is_a_first_component_with_a_dot_a_colon_or_localhost() {
        assert_eq!(
            split_registry("index.docker.io/x/y"),
            (Some("docker.io".into()), "x/y")
        );
        assert_eq!(
            split_registry("registry.lan:5000/team/app"),
            (Some("registry.lan:5000".into()), "team/app")
        );
        assert_eq!(
            split_registry("localhost/app"),
            (Some("localhost".into()), "app")
        );
        assert_eq!(split_registry("library/nginx"), (None, "library/nginx"));
        assert_eq!(split_registry("ghcr.io"), (None, "ghcr.io"));
    }
}
