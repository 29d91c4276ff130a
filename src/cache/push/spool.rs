//! A push session's spool thread: hashes every byte the client sends (sha256) and keeps
//! it for the write-through, in a store fill when the digest is known up front (the fill's
//! own sha256 is the session's: each byte is hashed once), else in an unlinked temp file
//! under the store's `tmp/`.
//!
//! Must not: talk to the upstream or decide anything about the session (`super` does).

use crate::oci::{Digest, Sha256Verifier};
use crate::store::{BlobFill, Store};
use bytes::Bytes;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// Frames in flight between a request body and the spool thread.
const SPOOL_QUEUE: usize = 64;

/// Messages to a session's spool thread.
pub(super) enum SpoolMsg {
    Data(Bytes),
    /// Replies once every earlier frame is hashed and written.
    Sync(oneshot::Sender<()>),
    /// The digest of everything received, and the spool file (`None` if writing failed).
    Finish(oneshot::Sender<Spooled>),
}

pub(super) struct Spooled {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) kept: Kept,
}

/// Where a session's bytes are kept for the write-through.
pub(super) enum Kept {
    /// A store fill, committed (and, for a session's chunks, named) after the upstream's
    /// 201; dropping it unfinished aborts it.
    Fill(Box<BlobFill>),
    /// An unlinked spool file, read into a store fill after the upstream's 201.
    File(std::fs::File),
    /// Writing failed: no write-through for this upload.
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
    File(std::io::BufWriter<std::fs::File>),
    Nothing,
}

impl Sink {
    fn open(dir: &std::path::Path, fill: FillFor) -> Sink {
        let begun = match fill {
            FillFor::Known(store, d, len) => store.begin_fill(d, len),
            FillFor::Unknown(store) => store.begin_unnamed_fill(),
        };
        match begun {
            Ok(fill) => return Sink::Fill(Box::new(fill)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot fill the store while the push arrives; spooling to a file")
            }
        }
        match unlinked_file(dir) {
            Ok(f) => Sink::File(std::io::BufWriter::with_capacity(1 << 20, f)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create a push spool file; this upload will not be written through to the cache");
                Sink::Nothing
            }
        }
    }

    /// Keeps `b` and hashes it: a store fill hashes what it takes, so `own` (the spool's
    /// own sha256) is used only for the other sinks, and from the point a fill fails.
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
            Sink::File(f) => {
                own.get_or_insert_with(Sha256Verifier::new).update(b);
                f.write_all(b).err().map(|e| e.to_string())
            }
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
            Sink::File(f) => match f.into_inner() {
                Ok(f) => Kept::File(f),
                Err(e) => {
                    tracing::warn!(error = %e.error(), "cannot flush the push spool file");
                    Kept::Nothing
                }
            },
            Sink::Nothing => Kept::Nothing,
        }
    }
}

/// Hashes frames and keeps them, on a thread of its own: in the store fill `fill` names,
/// or in an unlinked temp file in `dir` when that fill cannot begin (no room).
pub(super) fn spawn_spool(dir: PathBuf, fill: FillFor) -> mpsc::Sender<SpoolMsg> {
    let (tx, mut rx) = mpsc::channel::<SpoolMsg>(SPOOL_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("push-spool".into())
        .spawn(move || {
            let mut sink = Sink::open(&dir, fill);
            let mut own: Option<Sha256Verifier> = None;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    SpoolMsg::Data(b) => sink.write(&b, &mut own),
                    SpoolMsg::Sync(reply) => {
                        let _ = reply.send(());
                    }
                    SpoolMsg::Finish(reply) => {
                        let hasher = sink.hashed(&own);
                        let size = hasher.len();
                        let digest = hasher.finish();
                        let kept = std::mem::replace(&mut sink, Sink::Nothing).keep();
                        let _ = reply.send(Spooled { digest, size, kept });
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

/// A new file in `dir`, already unlinked: it lives as long as the handle (and never
/// outlives a crash).
fn unlinked_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path = dir.join(format!("push-{}", super::uuid_v4()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}
