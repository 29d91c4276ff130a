//! Routing targets: a repository on a configured upstream, and the `upstream/repo` key the
//! store records repositories under. The registry layer produces these from a request; the
//! cache layer consumes them. Both only ever meet the typed forms, never a joined string.

use super::RepositoryName;
use std::fmt;

/// A repository on a configured upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoTarget {
    /// The configured upstream's name (`docker.io`, `ghcr.io`, `registry.lan:5000`, ...).
    pub upstream: String,
    pub repo: RepositoryName,
}

impl RepoTarget {
    /// `upstream/repo`, the key the store records repositories under.
    pub fn key(&self) -> RepoKey {
        RepoKey(format!("{}/{}", self.upstream, self.repo))
    }
}

/// `upstream/repo` as the store records it. The upstream part never contains a `/`
/// (it is a registry host), so the first `/` separates the two.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoKey(String);

impl RepoKey {
    /// A key as read back from the store (no validation: stored keys were built by
    /// [`RepoTarget::key`]).
    pub fn from_stored(s: impl Into<String>) -> Self {
        RepoKey(s.into())
    }

    /// The upstream part (everything before the first `/`).
    pub fn upstream(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(u, _)| u)
    }

    /// The repository part (everything after the first `/`), empty if there is none.
    pub fn repo(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, r)| r)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<String> for RepoKey {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_the_store_form() {
        let t = RepoTarget {
            upstream: "registry.lan:5000".into(),
            repo: "team/app".parse().expect("name"),
        };
        let k = RepoKey::from_stored(t.key().to_string());
        assert_eq!(k.upstream(), "registry.lan:5000");
        assert_eq!(k.repo(), "team/app");
        assert_eq!(k, t.key());
    }
}
