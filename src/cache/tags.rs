//! Tag lists (`/v2/<name>/tags/list`): always asked of the upstream (all pages, following
//! its `Link` headers), kept as the last complete answer, and served from there — marked
//! stale — when the upstream is down. Pagination for the client (`n`, `last`) is applied
//! by the registry layer on the complete, sorted list, so every page the edge hands out is
//! consistent with one upstream answer.

use super::sources::ManifestSource;
use super::{blocking, Cache, CacheError};
use crate::oci::RepoTarget;
use crate::upstream::UpstreamError;

/// Upstream pages followed for one list at most (a runaway `Link` chain stops here).
const MAX_UPSTREAM_PAGES: usize = 200;

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
        let upstream = self.manifest_source(target)?;
        match fetch_all_tags(upstream, target).await {
            Ok(mut tags) => {
                tags.sort();
                tags.dedup();
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
