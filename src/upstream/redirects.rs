//! Where blobs were redirected to: the final URL (a CDN's, usually signed and short-lived)
//! of a recent blob GET that the registry redirected, per repository and digest, so that
//! more ranged GETs of the same blob (pieces of one fill, a resume) go straight there
//! instead of asking the registry again (an auth check and a redirect each).
//!
//! Owns: the bounded table ([`MAX_REMEMBERED`] entries, each used for [`REMEMBERED_FOR`]
//! after it was obtained) and the rule that an entry is forgotten when it fails once.
//!
//! Must not: send requests (`mod.rs` does, without `Authorization`, through the blob
//! client and slot of the endpoint that was redirected), or be given a URL that was not a
//! redirect's target on another origin (`mod.rs` checks: only there did the target answer
//! without our `Authorization`).

use crate::oci::{Digest, RepositoryName};
use reqwest::Url;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a redirect target is used after it was obtained. CDN URLs are signed for
/// minutes (Docker Hub's Cloudflare URLs for about 20, S3's presigned often 15 to 60); a
/// minute covers the pieces of one fill and keeps clear of most expiries. A URL that
/// expired sooner is refused (403), forgotten, and the registry is asked again.
pub(crate) const REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// Most redirect targets remembered per upstream (the oldest goes first).
pub(crate) const MAX_REMEMBERED: usize = 1024;

struct Target {
    url: Url,
    /// The endpoint whose client followed the redirect (its proxy and trust apply).
    endpoint: usize,
    obtained: Instant,
}

/// Redirect targets of one upstream's blob GETs.
pub(crate) struct Redirects {
    targets: Mutex<HashMap<(RepositoryName, Digest), Target>>,
    /// How long a target is used: [`REMEMBERED_FOR`] (shorter in tests).
    lifetime: Duration,
}

impl Default for Redirects {
    fn default() -> Self {
        Redirects::for_lifetime(REMEMBERED_FOR)
    }
}

impl Redirects {
    fn for_lifetime(lifetime: Duration) -> Self {
        Redirects {
            targets: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// Remembers that a GET of `digest` in `repo` at `endpoint` ended at `url`.
    pub(crate) fn remember(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        url: Url,
        endpoint: usize,
    ) {
        let now = Instant::now();
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (repo.clone(), *digest);
        if targets.len() >= MAX_REMEMBERED && !targets.contains_key(&key) {
            let lifetime = self.lifetime;
            targets.retain(|_, t| now.duration_since(t.obtained) < lifetime);
            if targets.len() >= MAX_REMEMBERED {
                let oldest = targets
                    .iter()
                    .min_by_key(|(_, t)| t.obtained)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    targets.remove(&oldest);
                }
            }
        }
        targets.insert(
            key,
            Target {
                url,
                endpoint,
                obtained: now,
            },
        );
    }

    /// The target of `digest` in `repo` and its endpoint, if obtained less than
    /// [`REMEMBERED_FOR`] ago (an older one is forgotten).
    pub(crate) fn target(&self, repo: &RepositoryName, digest: &Digest) -> Option<(Url, usize)> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (repo.clone(), *digest);
        let target = targets.get(&key)?;
        if target.obtained.elapsed() >= self.lifetime {
            targets.remove(&key);
            return None;
        }
        Some((target.url.clone(), target.endpoint))
    }

    /// Forgets the target of `digest` in `repo` (it failed).
    pub(crate) fn forget(&self, repo: &RepositoryName, digest: &Digest) {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.remove(&(repo.clone(), *digest));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.targets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u32) -> Digest {
        format!("sha256:{n:064x}").parse().expect("digest")
    }

    fn url(n: u32) -> Url {
        Url::parse(&format!("https://cdn.example/{n}?sig=x")).expect("url")
    }

    #[test]
    fn targets_are_per_repository_and_digest_and_forgotten_on_request() {
        let redirects = Redirects::default();
        let (a, b): (RepositoryName, RepositoryName) = (
            "team/a".parse().expect("name"),
            "team/b".parse().expect("name"),
        );
        redirects.remember(&a, &digest(1), url(1), 2);
        assert_eq!(redirects.target(&a, &digest(1)), Some((url(1), 2)));
        assert_eq!(redirects.target(&b, &digest(1)), None, "another repository");
        assert_eq!(redirects.target(&a, &digest(2)), None);
        redirects.forget(&a, &digest(1));
        assert_eq!(redirects.target(&a, &digest(1)), None);
    }

    #[test]
    fn a_target_is_used_for_its_lifetime_only() {
        let redirects = Redirects::for_lifetime(Duration::from_millis(100));
        let repo: RepositoryName = "team/a".parse().expect("name");
        redirects.remember(&repo, &digest(1), url(1), 0);
        assert_eq!(redirects.target(&repo, &digest(1)), Some((url(1), 0)));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(redirects.target(&repo, &digest(1)), None, "expired");
        assert_eq!(redirects.len(), 0, "and forgotten");
        // Obtained again (the registry redirected anew): used again.
        redirects.remember(&repo, &digest(1), url(2), 0);
        assert_eq!(redirects.target(&repo, &digest(1)), Some((url(2), 0)));
        assert_eq!(Redirects::default().lifetime, REMEMBERED_FOR);
    }

    #[test]
    fn the_table_is_bounded() {
        let redirects = Redirects::default();
        let repo: RepositoryName = "team/a".parse().expect("name");
        for n in 0..(MAX_REMEMBERED as u32 + 10) {
            redirects.remember(&repo, &digest(n), url(n), 0);
        }
        assert_eq!(redirects.len(), MAX_REMEMBERED);
        let newest = MAX_REMEMBERED as u32 + 9;
        assert_eq!(
            redirects.target(&repo, &digest(newest)),
            Some((url(newest), 0))
        );
    }
}
