//! A fake upstream behind both source seams: blobs per repository, manifests, tags, a
//! switch that takes it down, a switch that makes it ignore `Range` (answer 200 with the
//! whole blob), a script of how each blob GET's body behaves (whole, broken, stalled,
//! paced, corrupt: in order, or for the GET of a given range start), and counts of every
//! call and of the body bytes it sent, like registry:2's proxy tests count remote calls.
//! A range starting at or past the blob's end is answered `416`; a range GET can be made
//! to answer wrongly (from another byte, or with another total: [`Misanswer`]). A latency
//! delays every blob GET's answer (a long path's round trip).

use crate::cache::{BlobSource, ManifestSource, Origin, SourceFuture, SourcedBlob};
use crate::oci::{BlobSpan, Digest, Reference, RepoTarget, RepositoryName};
use crate::upstream::{
    BlobBody, BlobResponse, ManifestResponse, ReferrersResponse, TagsPage, UpstreamError,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A wrong answer to a range GET (what a broken upstream or proxy might send).
#[derive(Clone, Copy, Debug)]
pub enum Misanswer {
    /// A `206` of the blob's bytes from this byte, not the one asked for.
    FromByte(u64),
    /// A `206` of the bytes asked for, saying the blob has this many bytes.
    Total(u64),
    /// A `200` with the whole blob (the range ignored for this one request).
    Whole,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `(repo, span)` of each blob GET.
    pub blob_gets: Vec<(String, BlobSpan)>,
    pub blob_heads: Vec<String>,
    pub manifest_gets: usize,
    pub manifest_heads: usize,
    /// The `Accept` list of each manifest request, in order.
    pub manifest_accepts: Vec<Vec<String>>,
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
    /// Bodies for the first GET of a range starting at the key (before `script`).
    script_at: Mutex<HashMap<u64, Body>>,
    /// Wrong answers for the first range GET starting at the key.
    misanswer_at: Mutex<HashMap<u64, Misanswer>>,
    down: AtomicBool,
    ignore_range: AtomicBool,
    /// Before every blob GET's answer.
    latency: Mutex<Duration>,
    calls: Mutex<Calls>,
    /// Body bytes sent, by every blob GET.
    served: Arc<AtomicU64>,
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

    /// A manifest of `media_type` (no tag names it); its digest.
    pub fn add_manifest(&self, media_type: &str, body: &str) -> Digest {
        let d = Digest::of(body.as_bytes());
        lock(&self.content)
            .manifests
            .insert(d, (media_type.into(), Bytes::from(body.to_string())));
        d
    }

    /// `repo:tag` names the manifest `d` (added with [`add_manifest`](Self::add_manifest)).
    pub fn point_tag(&self, repo: &str, tag: &str, d: Digest) {
        lock(&self.content)
            .tags
            .insert((repo.into(), tag.into()), d);
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

    /// The body of the first blob GET whose range starts at byte `start`.
    pub fn script_at(&self, start: u64, body: Body) {
        lock(&self.script_at).insert(start, body);
    }

    /// Answer the first range GET starting at byte `start` wrongly.
    pub fn misanswer_at(&self, start: u64, wrong: Misanswer) {
        lock(&self.misanswer_at).insert(start, wrong);
    }

    /// Answer every blob GET with 200 and the whole blob, whatever its `Range`.
    pub fn ignore_range(&self, ignore: bool) {
        self.ignore_range.store(ignore, Ordering::SeqCst);
    }

    /// Body bytes sent so far by every blob GET.
    /// Every later blob GET answers after `latency`.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
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
        span: BlobSpan,
    ) -> SourceFuture<'a, SourcedBlob> {
        Box::pin(async move {
            lock(&self.calls)
                .blob_gets
                .push((target.repo.to_string(), span));
            let latency = *lock(&self.latency);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let bytes = self.blob_in(&target.repo, digest)?;
            let len = bytes.len() as u64;
            let whole = span.is_whole() || self.ignore_range.load(Ordering::SeqCst);
            if !whole && span.start() >= len {
                // As registry:2 (Go's ServeContent) answers a range of an empty blob.
                return Err(UpstreamError::Status {
                    status: 416,
                    message: "range not satisfiable".into(),
                });
            }
            let wrong = (!whole)
                .then(|| lock(&self.misanswer_at).remove(&span.start()))
                .flatten();
            let whole = whole || matches!(wrong, Some(Misanswer::Whole));
            let (mut start, mut end) = if whole {
                (0, len)
            } else {
                let start = span.start().min(len);
                (start, span.end().unwrap_or(len).clamp(start, len))
            };
            let mut total = len;
            match wrong {
                Some(Misanswer::FromByte(b)) => {
                    let n = end - start;
                    start = b.min(len);
                    end = (start + n).min(len);
                }
                Some(Misanswer::Total(t)) => total = t,
                Some(Misanswer::Whole) | None => {}
            }
            let plan = lock(&self.script_at)
                .remove(&span.start())
                .or_else(|| lock(&self.script).pop_front())
                .unwrap_or(Body::Whole);
            let served = Arc::clone(&self.served);
            let body =
                body_of(bytes.slice(start as usize..end as usize), plan).inspect(move |frame| {
                    if let Ok(b) = frame {
                        served.fetch_add(b.len() as u64, Ordering::SeqCst);
                    }
                });
            let response = BlobResponse {
                cache_status: None,
                size: Some(total),
                start,
                partial: !whole,
                body: BlobBody::from_stream(body),
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
        accept: &'a [String],
        head_only: bool,
    ) -> SourceFuture<'a, ManifestResponse> {
        Box::pin(async move {
            {
                let mut calls = lock(&self.calls);
                calls.manifest_accepts.push(accept.to_vec());
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
            let entry = c.manifests.get(&digest).ok_or(UpstreamError::NotFound)?;
            let (mut media_type, mut body) = (&entry.0, &entry.1);
            let mut digest = digest;
            // As registry:2: an index for a client that takes none is its linux/amd64 entry.
            if !accept.is_empty() && !accept.contains(media_type) {
                if let Some(child) = crate::oci::default_platform_manifest(body) {
                    digest = child.digest;
                    let e = c.manifests.get(&digest).ok_or(UpstreamError::NotFound)?;
                    (media_type, body) = (&e.0, &e.1);
                }
            }
            Ok(ManifestResponse {
                cache_status: None,
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
