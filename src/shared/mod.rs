//! The shared tier: an S3-compatible object store (AWS S3, Ceph RGW, MinIO …) that several
//! edges use behind their local stores, so a blob crosses the WAN once per site, not once
//! per edge, and an edge that lost its disk refills from the LAN.
//!
//! Owns: the object layout (content-addressed: `<prefix>/blobs/sha256/<hex>`,
//! `<prefix>/manifests/sha256/<hex>`, so edges share without coordinating), lookups that
//! hand a blob's bytes to a fill as they arrive, write-through of a verified fill (see
//! [`upload`]), deleting objects found corrupt, and the tier's health (down, slow or
//! failing: every operation here gives up quickly and says so in logs, metrics and
//! `/readyz`, and the caller goes on without the tier; while it is down it is not asked at
//! all, until the probe finds it answering again). With `catch_up = true`, the writes it
//! missed meanwhile are remembered and uploaded from the local store once it answers again
//! (see `catch_up`). [`peers`] is the cluster's single flight: which edge owns a digest's
//! fill, and fetching from it.
//!
//! Must not: verify the digests of bytes read from here (the fill's `BlobInput` does, exactly
//! as for an upstream's; the catch-up only hashes what it reads back from the local store
//! before completing an upload), decide hit or miss (that is `cache`), or write to the local
//! store (the catch-up only reads it, through `Store::blob`, `Store::read_blob` and
//! `Store::manifest`). A failure here never fails a pull.

mod catch_up;
pub mod peers;
mod upload;

use crate::config::SharedStorageConfig;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::upstream::{BlobBody, BlobResponse, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions,
    PutPayload, RetryConfig,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the shared tier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("storage.shared: {0}")]
    Config(String),
}

/// A blob found in the shared tier.
pub struct SharedBlob {
    /// Its bytes as they arrive, read like an upstream's answer.
    pub response: BlobResponse,
    /// The repository (`upstream/repo`) it was first fetched for, as recorded with it.
    pub repo: Option<String>,
}

/// The object metadata key naming the repository a blob was first fetched for.
const REPO_METADATA: &str = "repo";

fn repo_attributes(repo: &str) -> Attributes {
    let mut a = Attributes::new();
    a.insert(
        Attribute::Metadata(REPO_METADATA.into()),
        repo.to_string().into(),
    );
    a
}

/// A manifest found in the shared tier.
pub struct SharedManifest {
    pub media_type: String,
    pub bytes: Bytes,
    /// The repository (`upstream/repo`) it was first fetched for.
    pub repo: Option<String>,
}

/// Whether the tier answers; changes are logged once.
#[derive(Default)]
struct Health {
    /// Why it is down, and since when.
    down: Option<(String, Instant)>,
}

/// How often the tier is probed while down (and while up, to notice it going away without
/// traffic).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The shared tier of one daemon.
pub struct SharedTier {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    lookup_timeout: Duration,
    write_through: bool,
    metrics: Arc<Metrics>,
    health: Mutex<Health>,
    /// The writes missed while down, with `catch_up = true`.
    catch_up: Option<catch_up::CatchUp>,
    /// Shown in logs and `/readyz`: `s3 http://rgw.lan:8080 bucket edge-cache`.
    describe: String,
}

impl SharedTier {
    /// The tier `cfg` describes (nothing is contacted yet).
    pub fn from_config(
        cfg: &SharedStorageConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SharedTier>, SharedError> {
        let mut options = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(cfg.connect_timeout.get())
            // A blob's body may take long; a stalled one may not.
            .with_timeout_disabled()
            .with_read_timeout(cfg.lookup_timeout.get().max(Duration::from_secs(30)));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read_to_string(ca).map_err(|e| {
                SharedError::Config(format!("ca_file {}: cannot read it: {e}", ca.display()))
            })?;
            let cert = object_store::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                SharedError::Config(format!(
                    "ca_file {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            options = options.with_root_certificate(cert);
        }
        if cfg.insecure_skip_verify {
            options = options.with_allow_invalid_certificates(true);
        }
        if let Some(crate::config::ProxySetting::Via(proxy)) = &cfg.proxy {
            options = options.with_proxy_url(proxy.secret_url());
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_client_options(options)
            // A tier that does not answer at once is skipped: retrying for minutes (the
            // crate's default) would hold pulls up.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: cfg.lookup_timeout.get(),
            });
        if !cfg.endpoint.is_empty() {
            let endpoint = cfg.endpoint.trim_end_matches('/');
            if cfg.path_style {
                builder = builder.with_endpoint(endpoint);
            } else {
                // Virtual-hosted style: the bucket is part of the host name.
                let with_bucket = match endpoint.split_once("://") {
                    Some((scheme, host)) => format!("{scheme}://{}.{host}", cfg.bucket),
                    None => endpoint.to_string(),
                };
                builder = builder
                    .with_endpoint(with_bucket)
                    .with_virtual_hosted_style_request(true);
            }
        }
        let secret = cfg.secret_key().map_err(|e| {
            SharedError::Config(format!("storage.shared.secret_access_key_file: {e}"))
        })?;
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &secret) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let objects = builder
            .build()
            .map_err(|e| SharedError::Config(one_line(&e.to_string())))?;
        let endpoint = if cfg.endpoint.is_empty() {
            format!("AWS S3 ({})", cfg.region)
        } else {
            cfg.endpoint.clone()
        };
        metrics.tiers.shared_up.set(1);
        Ok(Arc::new(SharedTier {
            objects: Arc::new(objects),
            prefix: cfg.prefix.trim_matches('/').to_string(),
            lookup_timeout: cfg.lookup_timeout.get(),
            write_through: cfg.write_through,
            metrics,
            health: Mutex::new(Health::default()),
            catch_up: cfg
                .catch_up
                .then(|| catch_up::CatchUp::new(cfg.catch_up_max)),
            describe: format!("s3 {endpoint} bucket {}", cfg.bucket),
        }))
    }

    /// A tier over any object store (tests use `object_store::memory::InMemory`).
    pub fn with_store(
        objects: Arc<dyn ObjectStore>,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Arc<SharedTier> {
        Self::with_store_catching_up(objects, prefix, metrics, None)
    }

    /// [`SharedTier::with_store`] that remembers up to `catch_up_max` missed writes, as
    /// `catch_up = true` does.
    pub fn with_store_catching_up(
        objects: Arc<dyn ObjectStore>,
        prefix: &str,
        metrics: Arc<Metrics>,
        catch_up_max: Option<usize>,
    ) -> Arc<SharedTier> {
        metrics.tiers.shared_up.set(1);
        Arc::new(SharedTier {
            objects,
            prefix: prefix.trim_matches('/').to_string(),
            lookup_timeout: Duration::from_secs(5),
            write_through: true,
            metrics,
            health: Mutex::new(Health::default()),
            catch_up: catch_up_max.map(catch_up::CatchUp::new),
            describe: "object store".into(),
        })
    }

    fn key(&self, kind: &str, digest: &Digest) -> ObjectPath {
        let hex = digest.hex();
        let path = if self.prefix.is_empty() {
            format!("{kind}/sha256/{hex}")
        } else {
            format!("{}/{kind}/sha256/{hex}", self.prefix)
        };
        ObjectPath::from(path)
    }

    pub(crate) fn blob_key(&self, digest: &Digest) -> ObjectPath {
        self.key("blobs", digest)
    }

    fn manifest_key(&self, digest: &Digest) -> ObjectPath {
        self.key("manifests", digest)
    }

    /// Whether fills from upstreams are written through.
    pub fn writes_through(&self) -> bool {
        self.write_through && self.is_up()
    }

    pub fn is_up(&self) -> bool {
        self.lock_health().down.is_none()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For `/readyz` and the log: why the tier is down, if it is.
    pub fn warning(&self) -> Option<String> {
        self.lock_health().down.as_ref().map(|(why, since)| {
            format!(
                "shared tier {} is down for {}s (pulls use the local store and upstreams): {why}",
                self.describe,
                since.elapsed().as_secs()
            )
        })
    }

    fn answered(&self) {
        let mut h = self.lock_health();
        if let Some((_, since)) = h.down.take() {
            tracing::info!(tier = %self.describe, down_for_s = since.elapsed().as_secs(), "shared tier answers again");
            self.metrics.tiers.shared_up.set(1);
            if let Some(c) = &self.catch_up {
                c.wake();
            }
        }
    }

    fn failed(&self, op: &str, why: &str) {
        self.metrics
            .tiers
            .shared_errors
            .with_label_values(&[op])
            .inc();
        let mut h = self.lock_health();
        if h.down.is_none() {
            tracing::warn!(tier = %self.describe, op, error = %why, "shared tier failed; going on without it until it answers again");
            self.metrics.tiers.shared_up.set(0);
            h.down = Some((why.to_string(), Instant::now()));
        } else {
            tracing::debug!(tier = %self.describe, op, error = %why, "shared tier still failing");
        }
    }

    /// Runs `f` with the lookup timeout; `Ok(None)` when the object does not exist.
    async fn bounded<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Option<Option<T>> {
        match tokio::time::timeout(self.lookup_timeout, f).await {
            Ok(Ok(v)) => {
                self.answered();
                Some(Some(v))
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                self.answered();
                Some(None)
            }
            Ok(Err(e)) => {
                self.failed(op, &one_line(&e.to_string()));
                None
            }
            Err(_) => {
                self.failed(
                    op,
                    &format!("no answer within {}s", self.lookup_timeout.as_secs_f32()),
                );
                None
            }
        }
    }

    fn count_lookup(&self, kind: &str, hit: bool) {
        self.metrics
            .tiers
            .shared_lookups
            .with_label_values(&[kind, if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// The blob's bytes as they arrive, or `None` (missing, or the tier failed: a miss either
    /// way). Whoever reads them must verify the digest.
    pub async fn open_blob(&self, digest: &Digest) -> Option<SharedBlob> {
        if !self.is_up() {
            return None;
        }
        let key = self.blob_key(digest);
        let got = self.bounded("get", self.objects.get(&key)).await;
        let Some(Some(result)) = got else {
            self.count_lookup("blob", false);
            return None;
        };
        self.count_lookup("blob", true);
        let size = result.meta.size;
        let repo = result
            .attributes
            .get(&Attribute::Metadata(REPO_METADATA.into()))
            .map(|v| v.to_string());
        let metrics = self.metrics.clone();
        let stream = result.into_stream().map(move |frame| match frame {
            Ok(bytes) => {
                metrics
                    .tiers
                    .shared_bytes
                    .with_label_values(&["read"])
                    .inc_by(bytes.len() as u64);
                Ok(bytes)
            }
            Err(e) => Err(UpstreamError::Body(format!(
                "shared tier: {}",
                one_line(&e.to_string())
            ))),
        });
        Some(SharedBlob {
            response: BlobResponse {
                cache_status: None,
                size: Some(size),
                start: 0,
                partial: false,
                body: BlobBody::from_stream(stream),
            },
            repo,
        })
    }

    /// The blob's size, if the tier has it.
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if !self.is_up() {
            return None;
        }
        let key = self.blob_key(digest);
        match self.bounded("head", self.objects.head(&key)).await {
            Some(Some(meta)) => {
                self.count_lookup("blob", true);
                Some(meta.size)
            }
            _ => {
                self.count_lookup("blob", false);
                None
            }
        }
    }

    /// Removes a blob whose bytes did not match its digest.
    pub async fn delete_corrupt_blob(&self, digest: &Digest) {
        self.metrics.tiers.shared_corrupt.inc();
        let key = self.blob_key(digest);
        tracing::error!(digest = %digest, key = %key, "the shared tier's copy does not match its digest; deleting it (the blob is fetched again)");
        if self
            .bounded("delete", self.objects.delete(&key))
            .await
            .is_none()
        {
            tracing::warn!(digest = %digest, "could not delete the corrupt shared-tier object; it is checked again on every read");
        }
    }

    /// A manifest by digest, or `None` (missing, failing tier, or its bytes do not match).
    pub async fn manifest(&self, digest: &Digest) -> Option<SharedManifest> {
        if !self.is_up() {
            return None;
        }
        let key = self.manifest_key(digest);
        let got = self
            .bounded("get", async {
                let r = self.objects.get(&key).await?;
                let media_type = r
                    .attributes
                    .get(&Attribute::ContentType)
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let repo = r
                    .attributes
                    .get(&Attribute::Metadata(REPO_METADATA.into()))
                    .map(|v| v.to_string());
                Ok((media_type, repo, r.bytes().await?))
            })
            .await;
        match got {
            Some(Some((media_type, repo, bytes))) if !media_type.is_empty() => {
                self.count_lookup("manifest", true);
                self.metrics
                    .tiers
                    .shared_bytes
                    .with_label_values(&["read"])
                    .inc_by(bytes.len() as u64);
                Some(SharedManifest {
                    media_type,
                    bytes,
                    repo,
                })
            }
            _ => {
                self.count_lookup("manifest", false);
                None
            }
        }
    }

    /// Writes a verified manifest through (in the background; failures are only counted,
    /// and remembered for the catch-up with `catch_up` on, as is a write missed while the
    /// tier is down).
    pub fn put_manifest(
        self: &Arc<Self>,
        digest: Digest,
        media_type: String,
        bytes: Bytes,
        repo: String,
    ) {
        if !self.write_through {
            return;
        }
        if !self.is_up() {
            self.missed(catch_up::Kind::Manifest, digest, repo);
            return;
        }
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            if tier
                .write_manifest(&digest, media_type, bytes, &repo)
                .await
                .is_none()
            {
                tier.missed(catch_up::Kind::Manifest, digest, repo);
            }
        });
    }

    /// One `PUT` of a verified manifest (its media type as `Content-Type`, `repo` as
    /// metadata); its length, or `None` when the tier failed (then marked down).
    async fn write_manifest(
        &self,
        digest: &Digest,
        media_type: String,
        bytes: Bytes,
        repo: &str,
    ) -> Option<u64> {
        let key = self.manifest_key(digest);
        let mut attributes = repo_attributes(repo);
        attributes.insert(Attribute::ContentType, media_type.into());
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        let len = bytes.len() as u64;
        self.bounded(
            "put",
            self.objects.put_opts(&key, PutPayload::from(bytes), opts),
        )
        .await?;
        self.metrics
            .tiers
            .shared_bytes
            .with_label_values(&["written"])
            .inc_by(len);
        Some(len)
    }

    /// Probes the tier every few seconds (a `HEAD` of a key that need not exist), so its
    /// state is known without traffic and it comes back on its own. Ends with the daemon's
    /// runtime.
    pub fn spawn_probe(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tier = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(tier) = tier.upgrade() else { return };
                let key = tier.key("probe", &Digest::of(b"sparkcr-edge probe"));
                let _ = tier.bounded("probe", tier.objects.head(&key)).await;
            }
        })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
