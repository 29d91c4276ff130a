//! Tag lists (`/v2/<name>/tags/list`): asked of the upstream (all pages, following its
//! `Link` headers, at most [`MAX_UPSTREAM_PAGES`]), kept as the last complete answer, and
//! served from there — marked stale — when the upstream is down. One request per
//! repository asks at a time; those that came meanwhile get its answer. A public
//! upstream's list is answered from memory for `cache.tag_ttl` (at most
//! [`MAX_FRESH_LISTS`] lists): a client walking pages, or many clients listing one
//! repository, do not each walk the upstream's pages against its quota. A private
//! upstream's list is asked every time (pushes through the edge change it).
//! Pagination for the client (`n`, `last`) is applied by the registry layer on the
//! complete, sorted list, so every page the edge hands out is consistent with one upstream
//! answer.

use super::sources::ManifestSource;
use super::{blocking, Cache, CacheError};
use crate::oci::RepoTarget;
use crate::upstream::UpstreamError;
use std::time::Instant;

/// Upstream pages followed for one list at most (a runaway `Link` chain stops here; at
/// Docker Hub's 100 tags per page, 5,000 tags).
const MAX_UPSTREAM_PAGES: usize = 50;
/// Public tag lists kept in memory within `tag_ttl`, at most.
const MAX_FRESH_LISTS: usize = 1024;

/// A repository's tags, sorted (ASCII order, as the spec allows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagList {
    pub tags: Vec<String>,
    /// Served from the last answer because the upstream could not be asked.
    pub stale: bool,
}

#[derive(serde::Deserialize)]
struct TagsJson {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

fn parse_tags(body: &[u8]) -> Result<Vec<String>, String> {
    serde_json::from_slice::<TagsJson>(body)
        .map(|t| t.tags.unwrap_or_default())
        .map_err(|e| format!("the tag list is not valid JSON: {e}"))
}

impl Cache {
    /// Every tag of `target`'s repository.
    pub async fn tags_list(&self, target: &RepoTarget) -> Result<TagList, CacheError> {
        let name = format!("tags {}/{}", target.upstream, target.repo);
        let asked = Instant::now();
        let cacheable = !self.is_private(&target.upstream);
        if let Some(tags) = self.fresh_list(&name, None).filter(|_| cacheable) {
            return Ok(TagList { tags, stale: false });
        }
        let lock = self.named_lock(&name);
        let guard = lock.lock().await;
        // A request that waited gets the list the one before it fetched.
        let waited = self.fresh_list(&name, Some(asked));
        let result = match waited {
            Some(tags) => Ok(TagList { tags, stale: false }),
            None => self.fetch_tag_list(target, &name).await,
        };
        drop(guard);
        self.release_named_lock(&name, lock);
        result
    }

    /// The list kept for `name` if it is within `tag_ttl` (or, with `after`, if it was
    /// fetched after then: a request that waited on the fetch).
    fn fresh_list(&self, name: &str, after: Option<Instant>) -> Option<Vec<String>> {
        let lists = self.tag_lists.lock().unwrap_or_else(|p| p.into_inner());
        let (at, tags) = lists.get(name)?;
        let fresh = match after {
            Some(asked) => *at >= asked,
            None => at.elapsed() < self.settings.tag_ttl,
        };
        fresh.then(|| tags.clone())
    }

    async fn fetch_tag_list(&self, target: &RepoTarget, name: &str) -> Result<TagList, CacheError> {
        let upstream = self.manifest_source(target)?;
        match fetch_all_tags(upstream, target).await {
            Ok(mut tags) => {
                tags.sort();
                tags.dedup();
                {
                    let mut lists = self.tag_lists.lock().unwrap_or_else(|p| p.into_inner());
                    if lists.len() >= MAX_FRESH_LISTS {
                        let ttl = self.settings.tag_ttl;
                        lists.retain(|_, (at, _)| at.elapsed() < ttl);
                        if lists.len() >= MAX_FRESH_LISTS {
                            lists.clear();
                        }
                    }
                    // Kept for the requests that waited on this fetch even when not
                    // cacheable (those later ask again: `tags_list` skips it for them).
                    lists.insert(name.to_string(), (Instant::now(), tags.clone()));
                }
                let body = serde_json::json!({ "tags": tags }).to_string();
                let (store, up, repo) = (
                    self.store.clone(),
                    target.upstream.clone(),
                    target.repo.clone(),
                );
                if let Err(e) =
                    blocking(move || store.put_tag_list(&up, &repo, body.as_bytes())).await
                {
                    tracing::warn!(error = %e, "cannot keep the tag list");
                }
                Ok(TagList { tags, stale: false })
            }
            Err(e) if e.is_unavailable() => {
                let (store, up, repo) = (
                    self.store.clone(),
                    target.upstream.clone(),
                    target.repo.clone(),
                );
                let cached = blocking(move || store.tag_list(&up, &repo)).await?;
                let Some(mut tags) = cached.and_then(|b| parse_tags(&b).ok()) else {
                    return Err(self.fetch_failure(target, e, unknown_repo(target)));
                };
                tags.sort();
                self.metrics.stale_served.with_label_values(&["tags"]).inc();
                tracing::warn!(upstream = %target.upstream, repo = %target.repo, error = %e, "upstream down; serving the cached tag list");
                Ok(TagList { tags, stale: true })
            }
            Err(e) => Err(self.fetch_failure(target, e, unknown_repo(target))),
        }
    }
}

async fn fetch_all_tags(
    upstream: &dyn ManifestSource,
    target: &RepoTarget,
) -> Result<Vec<String>, UpstreamError> {
    let mut tags = Vec::new();
    let mut query: Option<String> = None;
    for _ in 0..MAX_UPSTREAM_PAGES {
        let page = upstream.tags_page(&target.repo, query.as_deref()).await?;
        tags.extend(parse_tags(&page.body).map_err(UpstreamError::BadResponse)?);
        match page.next_query {
            Some(next) if Some(&next) != query.as_ref() => query = Some(next),
            _ => return Ok(tags),
        }
    }
    tracing::warn!(upstream = %target.upstream, repo = %target.repo, "tag list longer than {MAX_UPSTREAM_PAGES} upstream pages; answering with what was read");
    Ok(tags)
}

fn unknown_repo(target: &RepoTarget) -> CacheError {
    CacheError::NameUnknown(format!(
        "repository {} is unknown to {}",
        target.repo, target.upstream
    ))
}
