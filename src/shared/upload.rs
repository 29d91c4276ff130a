//! Write-through of one blob fill to the shared tier: a task that reads the fill's
//! [`GrowingBlob`] at its own pace, like a client does, and uploads it.
//!
//! Rules: the object appears only once the fill verified the digest. A blob smaller than
//! one part is uploaded with one `PUT` after verification; a larger one goes up as a
//! multipart upload whose parts are sent while the fill runs and which is completed only
//! after verification. A failed fill, a reader that fell behind (memory-only fill), a
//! daemon stop or any error aborts the upload, so no object is left (S3 and RGW never
//! show the parts of an upload that was not completed; a bucket lifecycle rule
//! `AbortIncompleteMultipartUpload` cleans up after a crash).
//!
//! Must not: hold the fill up (the fill never waits for this task), or upload bytes it did
//! not read from the growing blob.

use super::SharedTier;
use crate::store::{BlobRead, GrowingBlob};
use bytes::Bytes;
use object_store::{MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Instant;

/// Size of one multipart part (S3's minimum is 5 MiB, except for the last part).
const PART: usize = 8 << 20;
/// Largest frame read at once.
const READ: usize = 1 << 20;

enum Stop {
    /// The fill failed, or this reader could not follow it: nothing is uploaded.
    Fill(String),
    /// The object store failed.
    Store(String),
}

impl SharedTier {
    /// Writes `blob` through once it is verified (in a task of its own). Skipped while the
    /// tier is down or write-through is off.
    pub fn spawn_write_through(self: &Arc<Self>, blob: Arc<GrowingBlob>, repo: String) {
        if !self.writes_through() {
            return;
        }
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            let started = Instant::now();
            let digest = *blob.digest();
            let mut upload = None;
            let outcome = tier.upload(&blob, &repo, &mut upload).await;
            let m = &tier.metrics.tiers;
            match outcome {
                Ok(bytes) => {
                    m.shared_uploads.with_label_values(&["completed"]).inc();
                    m.shared_bytes.with_label_values(&["written"]).inc_by(bytes);
                    m.shared_upload_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(digest = %digest, bytes, "written through to the shared tier");
                }
                Err(stop) => {
                    if let Some(mut u) = upload {
                        if let Err(e) = u.abort().await {
                            tracing::debug!(digest = %digest, error = %e, "aborting the multipart upload failed (a lifecycle rule cleans it up)");
                        }
                    }
                    match stop {
                        Stop::Fill(why) => {
                            m.shared_uploads.with_label_values(&["aborted"]).inc();
                            tracing::debug!(digest = %digest, why, "write-through aborted; nothing left in the shared tier");
                        }
                        Stop::Store(why) => {
                            m.shared_uploads.with_label_values(&["failed"]).inc();
                            tier.failed("upload", &why);
                        }
                    }
                }
            }
        });
    }

    /// Reads the whole blob and uploads it; the bytes written.
    async fn upload(
        &self,
        blob: &GrowingBlob,
        repo: &str,
        upload: &mut Option<Box<dyn MultipartUpload>>,
    ) -> Result<u64, Stop> {
        let key = self.blob_key(blob.digest());
        let store_err = |e: object_store::Error| Stop::Store(super::one_line(&e.to_string()));
        let mut changed = blob.subscribe();
        let mut pos = 0u64;
        let mut part: Vec<Bytes> = Vec::new();
        let mut part_len = 0usize;
        loop {
            changed.borrow_and_update();
            match blob.read_at(pos, READ) {
                BlobRead::Data(bytes) => {
                    pos += bytes.len() as u64;
                    part_len += bytes.len();
                    part.push(bytes);
                    if part_len >= PART {
                        if upload.is_none() {
                            let opts = PutMultipartOptions {
                                attributes: super::repo_attributes(repo),
                                ..Default::default()
                            };
                            *upload = Some(
                                self.objects
                                    .put_multipart_opts(&key, opts)
                                    .await
                                    .map_err(store_err)?,
                            );
                        }
                        let payload: PutPayload = std::mem::take(&mut part).into_iter().collect();
                        part_len = 0;
                        if let Some(u) = upload.as_mut() {
                            u.put_part(payload).await.map_err(store_err)?;
                        }
                    }
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
        let payload: PutPayload = part.into_iter().collect();
        match upload.as_mut() {
            None => {
                let opts = PutOptions {
                    attributes: super::repo_attributes(repo),
                    ..Default::default()
                };
                self.objects
                    .put_opts(&key, payload, opts)
                    .await
                    .map_err(store_err)?;
            }
            Some(u) => {
                if part_len > 0 {
                    u.put_part(payload).await.map_err(store_err)?;
                }
                u.complete().await.map_err(store_err)?;
            }
        }
        self.answered();
        Ok(pos)
    }
}
