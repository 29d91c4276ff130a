//! The seams between the cache and where content comes from: [`BlobSource`] (an upstream,
//! the shared tier, the cluster's peers, a test's fake) and [`ManifestSource`] (an
//! upstream's manifests, tag lists and referrers), so the cache can be driven in-process
//! without sockets.
//!
//! Owns: the two traits, [`Origin`] (what the cache asks for one configured upstream), and
//! the adapters of the real implementations (`Upstream`, `SharedTier`, `Cluster`) to them.
//! Must not: decide anything (hit or miss, retries, which source first: that is the
//! cache's), or add behaviour to the real implementations it adapts.

use crate::oci::{BlobSpan, Digest, Reference, RepoTarget, RepositoryName};
use crate::shared::peers::Cluster;
use crate::shared::SharedTier;
use crate::upstream::UpstreamError;
use crate::upstream::{BlobResponse, ManifestResponse, ReferrersResponse, TagsPage, Upstream};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a source's request returns: object-safe, so sources can be held as `dyn`.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, UpstreamError>> + Send + 'a>>;

/// A blob from a source.
pub struct SourcedBlob {
    pub response: BlobResponse,
    /// The repository (`upstream/repo`) the source vouches has the blob: the requested one
    /// for a source asked by repository (an upstream, a peer edge), the one it was first
    /// fetched for (the shared tier; `None` when not recorded). For any other, the cache
    /// asks the upstream first.
    pub vouched_for: Option<String>,
}

impl SourcedBlob {
    /// A blob from a source asked by repository: it vouches for the requested one.
    pub fn for_repo(response: BlobResponse, target: &RepoTarget) -> SourcedBlob {
        SourcedBlob {
            response,
            vouched_for: Some(target.key().to_string()),
        }
    }
}

/// Where a blob's bytes come from.
pub trait BlobSource: Send + Sync {
    /// `GET` the bytes `span` of blob `digest` of `target`'s repository (a `Range` request
    /// unless the span is the whole blob: check [`BlobResponse::partial`] and
    /// [`BlobResponse::start`], a source may ignore it). A source without the blob answers
    /// [`UpstreamError::NotFound`].
    fn blob<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
        span: BlobSpan,
    ) -> SourceFuture<'a, SourcedBlob>;

    /// `HEAD`: whether the source has the blob under `target`'s repository, with its size
    /// when it says. A source that cannot tell answers [`UpstreamError::NotFound`].
    fn blob_size<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
    ) -> SourceFuture<'a, Option<u64>>;

    /// Blob requests that may start now without waiting for a connection slot (`None`:
    /// the source has no such limit).
    fn spare_connections(&self) -> Option<usize> {
        None
    }
}

/// Where manifests, tag lists and referrers come from (an upstream).
pub trait ManifestSource: Send + Sync {
    /// `GET` (or `HEAD` when `head_only`) a manifest by tag or digest.
    fn manifest<'a>(
        &'a self,
        repo: &'a RepositoryName,
        reference: &'a Reference,
        accept: &'a [String],
        head_only: bool,
    ) -> SourceFuture<'a, ManifestResponse>;

    /// One page of the tag list (`query`: the next page's `n=..&last=..`).
    fn tags_page<'a>(
        &'a self,
        repo: &'a RepositoryName,
        query: Option<&'a str>,
    ) -> SourceFuture<'a, TagsPage>;

    /// The unfiltered referrers index of `subject` (404 when the API is missing).
    fn referrers<'a>(
        &'a self,
        repo: &'a RepositoryName,
        subject: &'a Digest,
    ) -> SourceFuture<'a, ReferrersResponse>;
}

/// What the cache asks for one configured upstream.
#[derive(Clone)]
pub struct Origin {
    pub blobs: Arc<dyn BlobSource>,
    pub manifests: Arc<dyn ManifestSource>,
}

impl Origin {
    /// The real upstream behind both seams.
    pub fn upstream(upstream: &Upstream) -> Origin {
        let shared = Arc::new(upstream.clone());
        Origin {
            blobs: shared.clone(),
            manifests: shared,
        }
    }
}

impl BlobSource for Upstream {
    fn blob<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
        span: BlobSpan,
    ) -> SourceFuture<'a, SourcedBlob> {
        Box::pin(async move {
            let response = Upstream::blob(self, &target.repo, digest, span.header_bounds()).await?;
            Ok(SourcedBlob::for_repo(response, target))
        })
    }

    fn blob_size<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
    ) -> SourceFuture<'a, Option<u64>> {
        Box::pin(self.blob_head(&target.repo, digest))
    }

    fn spare_connections(&self) -> Option<usize> {
        Some(self.blob_slots_free())
    }
}

impl ManifestSource for Upstream {
    fn manifest<'a>(
        &'a self,
        repo: &'a RepositoryName,
        reference: &'a Reference,
        accept: &'a [String],
        head_only: bool,
    ) -> SourceFuture<'a, ManifestResponse> {
        Box::pin(Upstream::manifest(self, repo, reference, accept, head_only))
    }

    fn tags_page<'a>(
        &'a self,
        repo: &'a RepositoryName,
        query: Option<&'a str>,
    ) -> SourceFuture<'a, TagsPage> {
        Box::pin(self.tags_list_page(repo, query))
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a RepositoryName,
        subject: &'a Digest,
    ) -> SourceFuture<'a, ReferrersResponse> {
        Box::pin(Upstream::referrers(self, repo, subject, None))
    }
}

/// A tier that cannot tell a miss from a failure: both are a miss.
fn tier_miss() -> UpstreamError {
    UpstreamError::NotFound
}

impl BlobSource for SharedTier {
    /// Whole blobs only: a resume goes to the upstream.
    fn blob<'a>(
        &'a self,
        _target: &'a RepoTarget,
        digest: &'a Digest,
        span: BlobSpan,
    ) -> SourceFuture<'a, SourcedBlob> {
        Box::pin(async move {
            if !span.is_whole() {
                return Err(tier_miss());
            }
            let found = self.open_blob(digest).await.ok_or_else(tier_miss)?;
            Ok(SourcedBlob {
                response: found.response,
                vouched_for: found.repo,
            })
        })
    }

    fn blob_size<'a>(
        &'a self,
        _target: &'a RepoTarget,
        digest: &'a Digest,
    ) -> SourceFuture<'a, Option<u64>> {
        Box::pin(async move {
            match SharedTier::blob_size(self, digest).await {
                Some(size) => Ok(Some(size)),
                None => Err(tier_miss()),
            }
        })
    }
}

impl BlobSource for Cluster {
    /// The owning peer's answer (it applies the same rules under `target`'s repository);
    /// whole blobs only.
    fn blob<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
        span: BlobSpan,
    ) -> SourceFuture<'a, SourcedBlob> {
        Box::pin(async move {
            if !span.is_whole() {
                return Err(tier_miss());
            }
            let response = self
                .fetch_blob(target, digest)
                .await
                .ok_or_else(tier_miss)?;
            Ok(SourcedBlob::for_repo(response, target))
        })
    }

    /// Peers are not asked for sizes.
    fn blob_size<'a>(
        &'a self,
        _target: &'a RepoTarget,
        _digest: &'a Digest,
    ) -> SourceFuture<'a, Option<u64>> {
        Box::pin(async { Err(tier_miss()) })
    }
}
