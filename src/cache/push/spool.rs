//! A push session's spool thread: keeps every byte the client sends for the write-through,
//! in a store fill (named up front for a monolithic upload, at the end for a session), and
//! hashes it (sha256: the fill's own, so each byte is hashed once). When the store cannot
//! take the blob (no room in the budget, a disk error), the bytes are only hashed: the push
//! goes on without a write-through.
//!
//! Must not: talk to the upstream or decide anything about the session (`super` does).

use crate::oci::{Digest, Sha256Verifier};
use crate::store::{BlobFill, Store};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Frames in flight between a request body and the spool thread.
const SPOOL_QUEUE: usize = 64;

/// Messages to a session's spool thread.
pub(super) enum SpoolMsg {
    Data(Bytes),
    /// Replies once every earlier frame is hashed and written.
    Sync(oneshot::Sender<()>),
    /// The digest of everything received, and where the bytes are kept.
    Finish(oneshot::Sender<Spooled>),
}

pub(super) struct Spooled {
    pub(super) digest: Digest,
    pub(super) kept: Kept,
}

/// Where a session's bytes are kept for the write-through.
pub(super) enum Kept {
    /// A store fill, committed (and, for a session's chunks, named) after the upstream's
    /// 201; dropping it unfinished aborts it.
    Fill(Box<BlobFill>),
    /// The store could not take them: no write-through for this upload.
    Nothing,
}

/// The store fill a session's bytes go into while they arrive.
pub(super) enum FillFor {
    /// A blob of known digest (and maybe length): a monolithic upload.
    Known(Store, Digest, Option<u64>),
    /// A session's chunks, whose digest the closing `PUT` gives.
    Unknown(Store),
}

/// What the spool thread writes into while the bytes arrive.
enum Sink {
    Fill(Box<BlobFill>),
    Nothing,
}

impl Sink {
    fn open(fill: FillFor) -> Sink {
        let begun = match fill {
            FillFor::Known(store, d, len) => store.begin_fill(d, len),
            FillFor::Unknown(store) => store.begin_unnamed_fill(),
        };
        match begun {
            Ok(fill) => Sink::Fill(Box::new(fill)),
            Err(e) => {
                tracing::warn!(error = %e, "the store cannot take this push; it goes on without a write-through to the cache");
                Sink::Nothing
            }
        }
    }

    /// Keeps `b` and hashes it: a store fill hashes what it takes, so `own` (the spool's
    /// own sha256) is used only without a fill, and from the point a fill failed.
    fn write(&mut self, b: &[u8], own: &mut Option<Sha256Verifier>) {
        let failed = match self {
            Sink::Fill(f) => match f.write(b) {
                Ok(()) => None,
                Err(e) => {
                    let mut h = f.hashed().clone();
                    h.update(b);
                    *own = Some(h);
                    Some(e.to_string())
                }
            },
            Sink::Nothing => {
                own.get_or_insert_with(Sha256Verifier::new).update(b);
                None
            }
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "cannot keep the pushed bytes; this upload will not be written through to the cache");
            *self = Sink::Nothing;
        }
    }

    /// The sha256 state of everything written.
    fn hashed(&self, own: &Option<Sha256Verifier>) -> Sha256Verifier {
        match (own, self) {
            (Some(h), _) => h.clone(),
            (None, Sink::Fill(f)) => f.hashed().clone(),
            (None, _) => Sha256Verifier::new(),
        }
    }

    fn keep(self) -> Kept {
        match self {
            Sink::Fill(f) => Kept::Fill(f),
            Sink::Nothing => Kept::Nothing,
        }
    }
}

/// Hashes frames and keeps them in the store fill `fill` names, on a thread of its own.
pub(super) fn spawn_spool(fill: FillFor) -> mpsc::Sender<SpoolMsg> {
    let (tx, mut rx) = mpsc::channel::<SpoolMsg>(SPOOL_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("push-spool".into())
        .spawn(move || {
            let mut sink = Sink::open(fill);
            let mut own: Option<Sha256Verifier> = None;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    SpoolMsg::Data(b) => sink.write(&b, &mut own),
                    SpoolMsg::Sync(reply) => {
                        let _ = reply.send(());
                    }
                    SpoolMsg::Finish(reply) => {
                        let hasher = sink.hashed(&own);
                        let digest = hasher.finish();
                        let kept = std::mem::replace(&mut sink, Sink::Nothing).keep();
                        let _ = reply.send(Spooled { digest, kept });
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a push spool thread");
    }
    tx
}
