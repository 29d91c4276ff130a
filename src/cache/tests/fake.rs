//! A fake upstream behind both source seams: blobs per repository, manifests, tags, a
//! switch that takes it down, a script of how each blob GET's body behaves (whole, broken,
//! stalled, paced, corrupt), and counts of every call, like registry:2's proxy tests count
//! remote calls.

use crate::cache::{BlobSource, ManifestSource, Origin, SourceFuture, SourcedBlob};
use crate::oci::{Digest, Reference, RepoTarget, RepositoryName};
use crate::upstream::{
    BlobBody, BlobResponse, ManifestResponse, ReferrersResponse, TagsPage, UpstreamError,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes per body frame.
pub const FRAME: usize = 16 << 10;

/// How one blob GET's body behaves.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    Whole,
    /// The connection breaks after this many bytes of the body.
    BreakAfter(usize),
    /// No more bytes after this many (the body neither ends nor breaks).
    StallAfter(usize),
    /// One frame every `every`.
    Paced {
        every: Duration,
    },
    /// Every byte flipped (the digest will not match), one frame every `every`.
    Corrupt {
        every: Duration,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `(repo, from)` of each blob GET.
    pub blob_gets: Vec<(String, Option<u64>)>,
    pub blob_heads: Vec<String>,
    pub manifest_gets: usize,
    pub manifest_heads: usize,
    pub tag_pages: usize,
}

#[derive(Default)]
struct Content {
    /// Blob bytes, and the repositories that have them.
    blobs: HashMap<Digest, (Bytes, HashSet<String>)>,
    manifests: HashMap<Digest, (String, Bytes)>,
    tags: HashMap<(String, String), Digest>,
    tag_lists: HashMap<String, Vec<String>>,
}

#[derive(Default)]
pub struct FakeUpstream {
    content: Mutex<Content>,
    script: Mutex<VecDeque<Body>>,
    down: AtomicBool,
    calls: Mutex<Calls>,
}

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeUpstream {
    pub fn origin(self: &Arc<Self>) -> Origin {
        Origin {
            blobs: self.clone(),
            manifests: self.clone(),
        }
    }

    /// A blob `repos` have.
    pub fn add_blob(&self, bytes: &[u8], repos: &[&str]) -> Digest {
        let d = Digest::of(bytes);
        lock(&self.content).blobs.insert(
            d,
            (
                Bytes::copy_from_slice(bytes),
                repos.iter().map(|r| r.to_string()).collect(),
            ),
        );
        d
    }

    /// `repo:tag` names a manifest of `body`; returns its digest.
    pub fn set_tag(&self, repo: &str, tag: &str, body: &str) -> Digest {
        let d = Digest::of(body.as_bytes());
        let mut c = lock(&self.content);
        c.manifests
            .insert(d, (MANIFEST_TYPE.into(), Bytes::from(body.to_string())));
        c.tags.insert((repo.into(), tag.into()), d);
        d
    }

    pub fn set_tag_list(&self, repo: &str, tags: &[&str]) {
        lock(&self.content)
            .tag_lists
            .insert(repo.into(), tags.iter().map(|t| t.to_string()).collect());
    }

    /// The next blob GETs' bodies, in order (then whole ones).
    pub fn script(&self, bodies: &[Body]) {
        lock(&self.script).extend(bodies.iter().copied());
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Calls {
        lock(&self.calls).clone()
    }

    fn up(&self) -> Result<(), UpstreamError> {
        if self.down.load(Ordering::SeqCst) {
            Err(UpstreamError::Connect("the fake upstream is down".into()))
        } else {
            Ok(())
        }
    }

    fn blob_in(&self, repo: &RepositoryName, d: &Digest) -> Result<Bytes, UpstreamError> {
        self.up()?;
        match lock(&self.content).blobs.get(d) {
            Some((bytes, repos)) if repos.contains(repo.as_str()) => Ok(bytes.clone()),
            _ => Err(UpstreamError::NotFound),
        }
    }
}

fn frames(bytes: Bytes) -> Vec<Result<Bytes, UpstreamError>> {
    (0..bytes.len())
        .step_by(FRAME)
        .map(|i| Ok(bytes.slice(i..(i + FRAME).min(bytes.len()))))
        .collect()
}

fn body_of(tail: Bytes, plan: Body) -> BlobBody {
    use futures_util::stream;
    match plan {
        Body::Whole => BlobBody::from_stream(stream::iter(frames(tail))),
        Body::BreakAfter(n) => {
            let head = tail.slice(..n.min(tail.len()));
            let broken = Err(UpstreamError::Body("connection reset by the fake".into()));
            BlobBody::from_stream(stream::iter(frames(head)).chain(stream::iter([broken])))
        }
        Body::StallAfter(n) => {
            let head = tail.slice(..n.min(tail.len()));
            BlobBody::from_stream(stream::iter(frames(head)).chain(stream::pending()))
        }
        Body::Paced { every } => paced(tail, every),
        Body::Corrupt { every } => paced(tail.iter().map(|b| !b).collect(), every),
    }
}

fn paced(bytes: Bytes, every: Duration) -> BlobBody {
    BlobBody::from_stream(
        futures_util::stream::iter(frames(bytes)).then(move |frame| async move {
            tokio::time::sleep(every).await;
            frame
        }),
    )
}

impl BlobSource for FakeUpstream {
    fn blob<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
        from: Option<u64>,
    ) -> SourceFuture<'a, SourcedBlob> {
        Box::pin(async move {
            lock(&self.calls)
                .blob_gets
                .push((target.repo.to_string(), from));
            let bytes = self.blob_in(&target.repo, digest)?;
            let start = from.unwrap_or(0).min(bytes.len() as u64);
            let plan = lock(&self.script).pop_front().unwrap_or(Body::Whole);
            let response = BlobResponse {
                size: Some(bytes.len() as u64),
                start,
                body: body_of(bytes.slice(start as usize..), plan),
            };
            Ok(SourcedBlob::for_repo(response, target))
        })
    }

    fn blob_size<'a>(
        &'a self,
        target: &'a RepoTarget,
        digest: &'a Digest,
    ) -> SourceFuture<'a, Option<u64>> {
        Box::pin(async move {
            lock(&self.calls).blob_heads.push(target.repo.to_string());
            Ok(Some(self.blob_in(&target.repo, digest)?.len() as u64))
        })
    }
}

impl ManifestSource for FakeUpstream {
    fn manifest<'a>(
        &'a self,
        repo: &'a RepositoryName,
        reference: &'a Reference,
        _accept: &'a [String],
        head_only: bool,
    ) -> SourceFuture<'a, ManifestResponse> {
        Box::pin(async move {
            {
                let mut calls = lock(&self.calls);
                if head_only {
                    calls.manifest_heads += 1;
                } else {
                    calls.manifest_gets += 1;
                }
            }
            self.up()?;
            let c = lock(&self.content);
            let digest = match reference {
                Reference::Digest(d) => *d,
                Reference::Tag(t) => *c
                    .tags
                    .get(&(repo.to_string(), t.to_string()))
                    .ok_or(UpstreamError::NotFound)?,
            };
            let (media_type, body) = c.manifests.get(&digest).ok_or(UpstreamError::NotFound)?;
            Ok(ManifestResponse {
                digest: Some(digest),
                media_type: media_type.clone(),
                size: Some(body.len() as u64),
                body: (!head_only).then(|| body.clone()),
            })
        })
    }

    fn tags_page<'a>(
        &'a self,
        repo: &'a RepositoryName,
        _query: Option<&'a str>,
    ) -> SourceFuture<'a, TagsPage> {
        Box::pin(async move {
            lock(&self.calls).tag_pages += 1;
            self.up()?;
            let tags = lock(&self.content)
                .tag_lists
                .get(repo.as_str())
                .cloned()
                .ok_or(UpstreamError::NotFound)?;
            let body = serde_json::json!({ "name": repo.as_str(), "tags": tags }).to_string();
            Ok(TagsPage {
                body: Bytes::from(body),
                next_query: None,
            })
        })
    }

    fn referrers<'a>(
        &'a self,
        _repo: &'a RepositoryName,
        _subject: &'a Digest,
    ) -> SourceFuture<'a, ReferrersResponse> {
        Box::pin(async move {
            self.up()?;
            Err(UpstreamError::NotFound)
        })
    }
}
