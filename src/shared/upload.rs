//! Uploads to the shared tier: [`ObjectUpload`], one object going up in parts and completed
//! only when its owner says the bytes were verified; and the write-through of one blob fill,
//! a task that reads the fill's [`GrowingBlob`] at its own pace, like a client does, and
//! uploads it. The catch-up (`super::catch_up`) uploads blobs from the local store with the
//! same [`ObjectUpload`].
//!
//! Rules: the object appears only once the bytes are verified (for a write-through, once the
//! fill verified the digest). A blob smaller than one part is uploaded with one `PUT` after
//! verification; a larger one goes up as a multipart upload whose parts are sent while the
//! bytes arrive and which is completed only after verification. A failed fill, a reader
//! that fell behind (memory-only fill), or any error aborts the upload, so no object is
//! left (S3 and RGW never show the parts of an upload that was not completed; a bucket
//! lifecycle rule `AbortIncompleteMultipartUpload` cleans up after a crash or a daemon
//! stop).
//!
//! Must not: hold the fill up (the fill never waits for this task), or upload bytes it did
//! not read from the growing blob (or, for the catch-up, from the local store).

use super::SharedTier;
use crate::oci::Digest;
use crate::store::{BlobRead, GrowingBlob};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attributes, MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};
use std::sync::Arc;
use std::time::Instant;

/// Size of one multipart part (S3's minimum is 5 MiB, except for the last part).
const PART: usize = 8 << 20;
/// Largest frame read at once.
const READ: usize = 1 << 20;

/// One object going up: bytes are gathered into parts; a multipart upload starts only once
/// more than one part's worth arrived. Nothing is visible until [`ObjectUpload::complete`];
/// whoever stops before that calls [`ObjectUpload::abort`].
pub(super) struct ObjectUpload {
    objects: Arc<dyn ObjectStore>,
    key: ObjectPath,
    attributes: Attributes,
    multipart: Option<Box<dyn MultipartUpload>>,
    part: Vec<Bytes>,
    part_len: usize,
    pushed: u64,
}

impl ObjectUpload {
    pub(super) fn new(tier: &SharedTier, key: ObjectPath, attributes: Attributes) -> Self {
        ObjectUpload {
            objects: Arc::clone(&tier.objects),
            key,
            attributes,
            multipart: None,
            part: Vec::new(),
            part_len: 0,
            pushed: 0,
        }
    }

    /// Adds the next bytes; sends a part once one is full.
    pub(super) async fn push(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.pushed += bytes.len() as u64;
        self.part_len += bytes.len();
        self.part.push(bytes);
        if self.part_len < PART {
            return Ok(());
        }
        if self.multipart.is_none() {
            let opts = PutMultipartOptions {
                attributes: self.attributes.clone(),
                ..Default::default()
            };
            self.multipart = Some(self.objects.put_multipart_opts(&self.key, opts).await?);
        }
        let payload: PutPayload = std::mem::take(&mut self.part).into_iter().collect();
        self.part_len = 0;
        match self.multipart.as_mut() {
            Some(u) => u.put_part(payload).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Makes the object visible (call only once the bytes pushed are verified): one `PUT`
    /// for a small object, else the last part and `CompleteMultipartUpload`. The bytes
    /// written.
    pub(super) async fn complete(&mut self) -> object_store::Result<u64> {
        let payload: PutPayload = std::mem::take(&mut self.part).into_iter().collect();
        match self.multipart.as_mut() {
            None => {
                let opts = PutOptions {
                    attributes: self.attributes.clone(),
                    ..Default::default()
                };
                self.objects.put_opts(&self.key, payload, opts).await?;
            }
            Some(u) => {
                if self.part_len > 0 {
                    u.put_part(payload).await?;
                }
                self.part_len = 0;
                u.complete().await?;
                // Completed: nothing left to abort.
                self.multipart = None;
            }
        }
        Ok(self.pushed)
    }

    /// Gives up: aborts the multipart upload, if one was started (its parts never show).
    pub(super) async fn abort(&mut self, digest: &Digest) {
        if let Some(mut u) = self.multipart.take() {
            if let Err(e) = u.abort().await {
                tracing::debug!(digest = %digest, error = %e, "aborting the multipart upload failed (a lifecycle rule cleans it up)");
            }
        }
    }
}

enum Stop {
    /// The fill failed, or this reader could not follow it: nothing is uploaded.
    Fill(String),
    /// The object store failed.
    Store(String),
}

impl SharedTier {
    /// Writes `blob` through once it is verified (in a task of its own). Skipped while
    /// write-through is off; while the tier is down it is only remembered for the catch-up
    /// (if `catch_up` is on), as is a write-through the tier fails.
    pub fn spawn_write_through(self: &Arc<Self>, blob: Arc<GrowingBlob>, repo: String) {
        if !self.write_through {
            return;
        }
        let tier = Arc::clone(self);
        if !self.is_up() {
            if self.catches_up() {
                tokio::spawn(async move { tier.missed_blob_once_stored(blob, repo).await });
            }
            return;
        }
        tokio::spawn(async move {
            let started = Instant::now();
            let digest = *blob.digest();
            let mut upload =
                ObjectUpload::new(&tier, tier.blob_key(&digest), super::repo_attributes(&repo));
            let outcome = tier.upload(&blob, &mut upload).await;
            let m = &tier.metrics.tiers;
            match outcome {
                Ok(bytes) => {
                    tier.answered();
                    m.shared_uploads.with_label_values(&["completed"]).inc();
                    m.shared_bytes.with_label_values(&["written"]).inc_by(bytes);
                    m.shared_upload_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(digest = %digest, bytes, "written through to the shared tier");
                }
                Err(stop) => {
                    upload.abort(&digest).await;
                    match stop {
                        Stop::Fill(why) => {
                            m.shared_uploads.with_label_values(&["aborted"]).inc();
                            tracing::debug!(digest = %digest, why, "write-through aborted; nothing left in the shared tier");
                        }
                        Stop::Store(why) => {
                            m.shared_uploads.with_label_values(&["failed"]).inc();
                            tier.failed("upload", &why);
                            if tier.catches_up() {
                                tier.missed_blob_once_stored(blob, repo).await;
                            }
                        }
                    }
                }
            }
        });
    }

    /// Reads the whole growing blob into `upload` and completes it once the fill verified
    /// the digest; the bytes written.
    async fn upload(&self, blob: &GrowingBlob, upload: &mut ObjectUpload) -> Result<u64, Stop> {
        let store_err = |e: object_store::Error| Stop::Store(super::one_line(&e.to_string()));
        let mut changed = blob.subscribe();
        let mut pos = 0u64;
        loop {
            changed.borrow_and_update();
            match blob.read_at(pos, READ) {
                BlobRead::Data(bytes) => {
                    pos += bytes.len() as u64;
                    upload.push(bytes).await.map_err(store_err)?;
                }
                BlobRead::Wait => {
                    if changed.changed().await.is_err() {
                        return Err(Stop::Fill("the fill went away".into()));
                    }
                }
                // Only a verified blob ends.
                BlobRead::End => break,
                BlobRead::Behind(_) => {
                    return Err(Stop::Fill(
                        "the fill kept its bytes only in memory and this upload fell behind".into(),
                    ))
                }
                BlobRead::Failed(f) => return Err(Stop::Fill(f.to_string())),
                BlobRead::ReadError(e) => return Err(Stop::Fill(e)),
            }
        }
        upload.complete().await.map_err(store_err)
    }
}
