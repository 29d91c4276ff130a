//! Pushes through the edge to upstreams with `push = true`, written through to the store.
//!
//! Owns: the edge's upload sessions (one per client upload: the upstream session it
//! mirrors, the offset, the store fill its bytes go into and whose sha256 is the session's),
//! their limits (`push.max_upload_size`, `push.max_uploads_per_token`), their expiry
//! (`push.session_timeout`: an idle session is cancelled upstream and dropped), and the
//! write-through: a blob is committed to the store (through [`crate::store::BlobFill`],
//! which verifies it again) only after its digest matched *and* the upstream answered
//! 201; a manifest is stored and its tag recorded only after the upstream's 201.
//!
//! Bytes stream: each client chunk goes to the upstream as one streamed `PATCH` while it
//! arrives; a thread of the session's own writes it into a store fill that hashes it (named
//! up front for a monolithic upload, at the end for a session) and is committed (or
//! aborted: its chunks removed, also by recovery after a crash) at the end.
//! Nothing is held in memory beyond a few frames in flight. The upstream's session is
//! closed (`PUT ?digest=`, no body) only once the edge's own hash matched the digest, so a
//! wrong blob never lands upstream either; a mismatch cancels the upstream session.
//!
//! Every failure is classified as a [`PushFailure`] (`failure`): an upstream's error is
//! sorted by what it means for the client before it leaves this module, as the cache
//! sorts a pull's, so `registry` never looks into the upstream client's errors.
//!
//! Submodules: `failure` (that classification), `spool` (the session's hashing and keeping
//! thread), `stored` (what is written to the store after the upstream's 201: blobs,
//! manifests, tags).
//!
//! Must not: know about HTTP requests or responses (that is `registry`), or how the store
//! lays bytes out (that is `store`).

mod failure;
mod spool;
mod stored;

use super::blocking;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoTarget, RepositoryName};
use crate::store::Store;
use crate::upstream::{MountOutcome, PushError, Upstream, UpstreamUpload};
use bytes::Bytes;
pub use failure::PushFailure;
use futures_util::{Stream, StreamExt};
use spool::{spawn_spool, FillFor, SpoolMsg};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A request body as the registry hands it over.
pub type UploadBody = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Largest manifest accepted in a push (as for pulls).
pub const MAX_PUSHED_MANIFEST: usize = crate::upstream::MAX_MANIFEST_SIZE;

#[derive(Clone, Debug)]
pub struct PushSettings {
    pub max_upload_size: u64,
    pub session_timeout: Duration,
    pub max_uploads_per_token: usize,
}

/// Where an upload stands, for the client's `Range` and `Location`.
#[derive(Clone, Debug)]
pub struct UploadState {
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// Which upload session a request names, and the token asking: a session answers only
/// the token that opened it.
#[derive(Clone, Copy, Debug)]
pub struct UploadRef<'a> {
    pub id: &'a str,
    pub owner: &'a str,
}

/// A finished upload or mount.
#[derive(Clone, Debug)]
pub struct PushedBlob {
    pub digest: Digest,
    /// Also in the edge's store (write-through happened, or it was there already).
    pub stored: bool,
}

/// What a `POST` with `?mount=` came to.
pub enum MountResult {
    Mounted(PushedBlob),
    /// The upstream opened an upload session instead; the client uploads as usual.
    Upload(UploadState),
}

/// A stored manifest push.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub digest: Digest,
}

/// One upload session of the edge.
struct Session {
    id: String,
    target: RepoTarget,
    owner: String,
    last_used: Mutex<Instant>,
    state: tokio::sync::Mutex<SessionState>,
}

struct SessionState {
    /// `None` once closed or cancelled.
    upstream: Option<UpstreamUpload>,
    offset: u64,
    spool: mpsc::Sender<SpoolMsg>,
}

impl Session {
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .elapsed()
    }
}

pub struct Pushes {
    store: Store,
    upstreams: HashMap<String, Upstream>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Pushes {
    /// `upstreams`: those with `push = true`. Spawns the expiry sweep (inside a runtime).
    pub fn new(
        store: Store,
        upstreams: Vec<Upstream>,
        settings: PushSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Pushes> {
        let pushes = Arc::new(Pushes {
            store,
            upstreams: upstreams
                .into_iter()
                .map(|u| (u.name().to_string(), u))
                .collect(),
            settings,
            metrics,
            sessions: Mutex::new(HashMap::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pushes)));
        }
        pushes
    }

    pub fn settings(&self) -> &PushSettings {
        &self.settings
    }

    fn upstream(&self, target: &RepoTarget) -> Result<&Upstream, PushFailure> {
        self.upstreams
            .get(&target.upstream)
            .ok_or_else(|| PushFailure::NotEnabled(target.upstream.clone()))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed<T>(&self, f: PushFailure) -> Result<T, PushFailure> {
        self.metrics
            .push_failures
            .with_label_values(&[f.reason()])
            .inc();
        Err(f)
    }

    fn upstream_failure(&self, target: &RepoTarget, source: PushError) -> PushFailure {
        PushFailure::from_upstream(&target.upstream, source)
    }

    /// Opens a session: the upstream's first, then the edge's around it.
    pub async fn start(
        &self,
        target: &RepoTarget,
        owner: &str,
    ) -> Result<UploadState, PushFailure> {
        self.start_with(target, owner, None).await
    }

    /// [`Pushes::start`]; with `known` (the digest and length of a monolithic upload) the
    /// store fill is named up front.
    async fn start_with(
        &self,
        target: &RepoTarget,
        owner: &str,
        known: Option<(Digest, Option<u64>)>,
    ) -> Result<UploadState, PushFailure> {
        let upstream = self.upstream(target)?;
        self.check_quota(owner)?;
        let up = match upstream.start_upload(&target.repo).await {
            Ok(up) => up,
            Err(e) => return self.failed(self.upstream_failure(target, e)),
        };
        Ok(self.open(target, owner, up, known))
    }

    fn check_quota(&self, owner: &str) -> Result<(), PushFailure> {
        let limit = self.settings.max_uploads_per_token;
        let open = self
            .sessions()
            .values()
            .filter(|s| s.owner == owner)
            .count();
        if open >= limit {
            return self.failed(PushFailure::TooManyUploads { limit });
        }
        Ok(())
    }

    fn open(
        &self,
        target: &RepoTarget,
        owner: &str,
        up: UpstreamUpload,
        known: Option<(Digest, Option<u64>)>,
    ) -> UploadState {
        let id = uuid_v4();
        let session = Arc::new(Session {
            id: id.clone(),
            target: target.clone(),
            owner: owner.to_string(),
            last_used: Mutex::new(Instant::now()),
            state: tokio::sync::Mutex::new(SessionState {
                upstream: Some(up),
                offset: 0,
                spool: spawn_spool(match known {
                    Some((d, len)) => FillFor::Known(self.store.clone(), d, len),
                    None => FillFor::Unknown(self.store.clone()),
                }),
            }),
        });
        self.sessions().insert(id.clone(), session);
        self.metrics.uploads_in_progress.inc();
        tracing::debug!(upload = %id, repo = %target.key(), "upload session opened");
        UploadState { id, offset: 0 }
    }

    /// The session `at` names, if it is of `target`'s repository and the same token's.
    fn session(&self, target: &RepoTarget, at: UploadRef<'_>) -> Result<Arc<Session>, PushFailure> {
        match self.sessions().get(at.id) {
            Some(s) if s.target == *target && s.owner == at.owner => Ok(s.clone()),
            _ => Err(PushFailure::UploadUnknown(at.id.to_string())),
        }
    }

    /// Takes the session out of the table (it ends here).
    fn remove(&self, id: &str) {
        if self.sessions().remove(id).is_some() {
            self.metrics.uploads_in_progress.dec();
        }
    }

    /// Cancels the session upstream and drops it (its store fill is aborted with it).
    async fn abandon(&self, session: &Session, state: &mut SessionState, why: &str) {
        self.remove(&session.id);
        if let Some(up) = state.upstream.take() {
            tracing::info!(upload = %session.id, repo = %session.target.key(), "{why}; cancelling the upload upstream");
            if let Ok(upstream) = self.upstream(&session.target) {
                upstream.cancel_upload(&up).await;
            }
        }
    }

    /// Where session `id` stands (`GET` on the upload URL).
    pub async fn status(
        &self,
        target: &RepoTarget,
        at: UploadRef<'_>,
    ) -> Result<UploadState, PushFailure> {
        let id = at.id;
        let session = self.session(target, at)?;
        let state = session.state.lock().await;
        session.touch();
        Ok(UploadState {
            id: id.to_string(),
            offset: state.offset,
        })
    }

    /// A chunk (`PATCH`, or the body of the closing `PUT`): streamed to the upstream as
    /// it arrives, hashed and spooled on the way. `start` is the client's `Content-Range`
    /// start, if it sent one; `len` its `Content-Length`.
    pub async fn chunk(
        &self,
        target: &RepoTarget,
        at: UploadRef<'_>,
        body: UploadBody,
        start: Option<u64>,
        len: Option<u64>,
    ) -> Result<UploadState, PushFailure> {
        let id = at.id;
        let session = self.session(target, at)?;
        let mut state = session.state.lock().await;
        session.touch();
        let result = self
            .chunk_locked(&session, &mut state, body, start, len)
            .await;
        session.touch();
        match result {
            Ok(()) => Ok(UploadState {
                id: id.to_string(),
                offset: state.offset,
            }),
            Err(f @ PushFailure::OutOfOrder { .. }) => self.failed(f),
            Err(f) => {
                self.abandon(&session, &mut state, &f.to_string()).await;
                self.failed(f)
            }
        }
    }

    async fn chunk_locked(
        &self,
        session: &Session,
        state: &mut SessionState,
        body: UploadBody,
        start: Option<u64>,
        len: Option<u64>,
    ) -> Result<(), PushFailure> {
        let Some(up) = state.upstream.clone() else {
            return Err(PushFailure::UploadUnknown(session.id.clone()));
        };
        if let Some(start) = start.filter(|&s| s != state.offset) {
            return Err(PushFailure::OutOfOrder {
                start,
                offset: state.offset,
            });
        }
        let limit = self.settings.max_upload_size;
        if len.is_some_and(|l| state.offset + l > limit) {
            return Err(PushFailure::TooLarge { limit });
        }
        let upstream = self.upstream(&session.target)?;
        // What the stream saw, for after the upstream answered.
        let ended: Arc<Mutex<Option<PushFailure>>> = Arc::new(Mutex::new(None));
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let spool = state.spool.clone();
        let base = state.offset;
        let bytes_metric = self
            .metrics
            .push_bytes
            .with_label_values(&[session.target.upstream.as_str()]);
        let stream = {
            let (ended, counted) = (ended.clone(), counted.clone());
            body.then(move |frame| {
                let (ended, counted, spool, bytes_metric) = (
                    ended.clone(),
                    counted.clone(),
                    spool.clone(),
                    bytes_metric.clone(),
                );
                async move {
                    let fail = |f: PushFailure| {
                        let msg = f.to_string();
                        *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                        Err(std::io::Error::other(msg))
                    };
                    match frame {
                        Ok(b) => {
                            let n = counted
                                .fetch_add(b.len() as u64, std::sync::atomic::Ordering::SeqCst)
                                + b.len() as u64;
                            if base + n > limit {
                                return fail(PushFailure::TooLarge { limit });
                            }
                            if spool.send(SpoolMsg::Data(b.clone())).await.is_err() {
                                return fail(PushFailure::Internal(
                                    "the spool thread stopped".into(),
                                ));
                            }
                            bytes_metric.inc_by(b.len() as u64);
                            Ok(b)
                        }
                        Err(e) => fail(PushFailure::ClientBody(e.to_string())),
                    }
                }
            })
            // A failure ends the upstream's body cleanly (it is never passed on): the
            // upstream then answers with its session's true offset, so the session can
            // still be cancelled (registry:2 refuses any request on a session whose bytes
            // broke off mid-request, and keeps it until its week-long purge).
            .take_while(|frame| std::future::ready(frame.is_ok()))
        };
        // Sent without a length (chunked) for the same reason.
        let sent = upstream
            .upload_chunk(&up, reqwest::Body::wrap_stream(stream), base, None)
            .await;
        if let Ok(next) = &sent {
            state.upstream = Some(next.clone());
        }
        if let Some(f) = ended.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(f);
        }
        let next = sent.map_err(|e| self.upstream_failure(&session.target, e))?;
        let received = counted.load(std::sync::atomic::Ordering::SeqCst);
        if len.is_some_and(|l| l != received) {
            return Err(PushFailure::ClientBody(format!(
                "Content-Length said {} bytes, {received} arrived",
                len.unwrap_or_default()
            )));
        }
        state.offset += received;
        state.upstream = Some(next);
        Ok(())
    }

    /// Closes session `id` (`PUT ?digest=`), after its last chunk if the `PUT` carried one:
    /// checks the digest, closes the upstream session, then writes the blob through.
    pub async fn finish(
        &self,
        target: &RepoTarget,
        at: UploadRef<'_>,
        digest: &Digest,
        body: Option<(UploadBody, Option<u64>)>,
    ) -> Result<PushedBlob, PushFailure> {
        let id = at.id;
        if let Some((body, len)) = body {
            self.fill_directly_if_empty(target, at, digest, len).await?;
            self.chunk(target, at, body, None, len).await?;
        }
        let session = self.session(target, at)?;
        let mut state = session.state.lock().await;
        let Some(up) = state.upstream.clone() else {
            return Err(PushFailure::UploadUnknown(id.to_string()));
        };
        // Every frame hashed and on file.
        let (tx, rx) = oneshot::channel();
        let _ = state.spool.send(SpoolMsg::Sync(tx)).await;
        let _ = rx.await;
        let (tx, rx) = oneshot::channel();
        let spooled = match state.spool.send(SpoolMsg::Finish(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let Some(spooled) = spooled else {
            let f = PushFailure::Internal("the spool thread stopped".into());
            self.abandon(&session, &mut state, "the spool thread stopped")
                .await;
            return self.failed(f);
        };
        if spooled.digest != *digest {
            let f = PushFailure::DigestMismatch {
                expected: *digest,
                actual: spooled.digest,
            };
            self.abandon(&session, &mut state, "the digest did not match")
                .await;
            return self.failed(f);
        }
        let upstream = self.upstream(target)?;
        if let Err(e) = upstream.finish_upload(&up, digest).await {
            let f = self.upstream_failure(target, e);
            self.abandon(
                &session,
                &mut state,
                "the upstream refused to close the upload",
            )
            .await;
            return self.failed(f);
        }
        state.upstream = None;
        self.remove(id);
        drop(state);
        let stored = self.write_through(target, digest, spooled).await;
        self.metrics
            .pushes_completed
            .with_label_values(&["blob"])
            .inc();
        tracing::info!(repo = %target.key(), %digest, stored, "blob pushed through the edge");
        Ok(PushedBlob {
            digest: *digest,
            stored,
        })
    }

    /// A closing `PUT` that carries the whole blob (nothing received before; what
    /// containerd and plain HTTP clients send): its digest is known now, so the session's
    /// fill is begun again, named up front (with the length, reserved at once).
    async fn fill_directly_if_empty(
        &self,
        target: &RepoTarget,
        at: UploadRef<'_>,
        digest: &Digest,
        len: Option<u64>,
    ) -> Result<(), PushFailure> {
        let session = self.session(target, at)?;
        let mut state = session.state.lock().await;
        if state.offset == 0 {
            state.spool = spawn_spool(FillFor::Known(self.store.clone(), *digest, len));
        }
        Ok(())
    }

    /// Cancels session `id` (`DELETE` on the upload URL).
    pub async fn cancel(&self, target: &RepoTarget, at: UploadRef<'_>) -> Result<(), PushFailure> {
        let session = self.session(target, at)?;
        let mut state = session.state.lock().await;
        self.abandon(&session, &mut state, "the client cancelled the upload")
            .await;
        Ok(())
    }

    /// A monolithic upload (`POST ?digest=` with the blob as body).
    pub async fn monolithic(
        &self,
        target: &RepoTarget,
        owner: &str,
        digest: &Digest,
        body: UploadBody,
        len: Option<u64>,
    ) -> Result<PushedBlob, PushFailure> {
        let state = self.start_with(target, owner, Some((*digest, len))).await?;
        let at = UploadRef {
            id: &state.id,
            owner,
        };
        self.finish(target, at, digest, Some((body, len))).await
    }

    /// `POST ?mount=<digest>&from=<repo>`: the upstream mounts it (201), or opens a
    /// session the client then uploads into.
    pub async fn mount(
        &self,
        target: &RepoTarget,
        owner: &str,
        digest: &Digest,
        from: &RepositoryName,
    ) -> Result<MountResult, PushFailure> {
        let upstream = self.upstream(target)?;
        self.check_quota(owner)?;
        match upstream.mount_blob(&target.repo, digest, from).await {
            Ok(MountOutcome::Mounted) => {
                let (store, d, repo) = (self.store.clone(), *digest, target.key().to_string());
                let stored = blocking(move || {
                    let held = store.blob(&d)?.is_some();
                    if held {
                        store.add_repo(&d, &repo)?;
                    }
                    Ok(held)
                })
                .await
                .unwrap_or(false);
                self.metrics
                    .pushes_completed
                    .with_label_values(&["mount"])
                    .inc();
                Ok(MountResult::Mounted(PushedBlob {
                    digest: *digest,
                    stored,
                }))
            }
            Ok(MountOutcome::Upload(up)) => {
                Ok(MountResult::Upload(self.open(target, owner, up, None)))
            }
            Err(e) => self.failed(self.upstream_failure(target, e)),
        }
    }

    /// Whether the upstream repository has blob `digest` (`HEAD` by a push client that
    /// skips blobs already there); its size if so.
    pub async fn blob_size(
        &self,
        target: &RepoTarget,
        digest: &Digest,
    ) -> Result<Option<u64>, PushFailure> {
        let upstream = self.upstream(target)?;
        upstream
            .pushed_blob_size(&target.repo, digest)
            .await
            .map_err(|e| self.upstream_failure(target, e))
    }

    /// `DELETE` of a manifest or blob, passed to the upstream (which decides whether it
    /// allows deletes). `what` is the path after the repository.
    pub async fn delete(&self, target: &RepoTarget, what: &str) -> Result<(), PushFailure> {
        let upstream = self.upstream(target)?;
        upstream
            .delete(&target.repo, what)
            .await
            .map_err(|e| self.upstream_failure(target, e))
    }

    /// Cancels sessions idle for longer than `push.session_timeout` (not those with a
    /// request under way).
    async fn expire_idle(&self) {
        let timeout = self.settings.session_timeout;
        let idle: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| s.idle_for() >= timeout)
            .cloned()
            .collect();
        for session in idle {
            let Ok(mut state) = session.state.try_lock() else {
                continue;
            };
            self.metrics
                .push_failures
                .with_label_values(&["expired"])
                .inc();
            self.abandon(&session, &mut state, "the upload session expired")
                .await;
        }
    }
}

async fn sweep(pushes: Weak<Pushes>) {
    loop {
        let every = match pushes.upgrade() {
            Some(p) => (p.settings.session_timeout / 4).max(Duration::from_millis(200)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(p) = pushes.upgrade() else { return };
        p.expire_idle().await;
    }
}

/// A random version-4 UUID (the form registries use for upload session ids).
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_uuid_v4() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, uuid_v4());
    }
}
