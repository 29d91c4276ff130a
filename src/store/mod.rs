//! Content-addressed store: blobs, manifests, tags and tag lists on local disk, with an LRU
//! byte budget, TTL expiry and crash recovery.
//!
//! Layout of a store directory:
//!
//! ```text
//! <path>/LOCK                      exclusive fs2 lock for the Store's lifetime
//! <path>/index/                    sled: the index only (see index.rs)
//! <path>/chunks/ab/cd/<blake3>     blob bytes, one file per distinct fixed-size chunk
//! <path>/tmp/                      chunk files being written (emptied at open)
//! ```
//!
//! Guarantees:
//! - A blob is visible only once the sha256 of its whole byte stream equals its digest and
//!   its index entry is committed and flushed; every chunk it names was fsynced and renamed
//!   into place (directory fsynced) before that commit. Chunk files are written with
//!   buffered writes as bytes arrive and made durable once per blob, just before its
//!   commit: a crash before the commit leaves only orphan files, which recovery removes.
//! - A failed, mismatching or abandoned fill leaves no visible blob and no chunk file that
//!   nothing references.
//! - Stored chunk bytes + manifest bytes + bytes reserved by fills in progress never exceed
//!   the budget; room is made by evicting least-recently-accessed, unpinned content down to
//!   a 90 % low watermark. Content being read ([`BlobReader`]) or filled is never evicted.
//! - Reads stream in frames of at most [`FRAME_BYTES`], never the whole blob in memory.
//! - A blob being filled is readable while it grows ([`GrowingBlob`]), from any offset,
//!   whether or not it can be stored; its last byte only once its digest matched.
//!
//! The store is synchronous: index lookups and page-cached reads are cheap enough for async
//! workers; fills, commits and maintenance (fsync, scans) belong on blocking threads.
//!
//! This file owns the public types and the [`Store`] facade. Must not: import `server`,
//! `registry`, `cache` or `upstream`; only `config`, `metrics`, `oci` and `mapped` are read.

mod block_maps;
mod chunks;
mod error;
mod fill;
mod growing;
mod index;
mod maintenance;
mod policy;
mod reader;
mod records;
mod recovery;
mod tags;
#[cfg(test)]
mod tests;
mod upkeep;

pub use chunks::{ChunkId, ChunkRef};
pub use error::StoreError;
pub use fill::BlobFill;
pub use growing::{
    BlobInput, BlobRead, BlobWriter, Checkpoint, GrowingBlob, GrowthFailure, Keeping,
    MEMORY_WINDOW, READ_FRAME,
};
pub use maintenance::{PurgeReport, StoreStats, VerifyReport};
pub use policy::SweepReport;
pub use reader::{BlobReader, FRAME_BYTES};
pub use recovery::RecoveryReport;
pub use upkeep::Upkeep;

use crate::config::{Config, TtlFrom};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName, Tag};
use bytes::Bytes;
use chunks::ChunkFiles;
use error::IoContext;
use index::{Index, ItemKind};
use policy::StoreState;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: usize = 64 << 10;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: usize = 64 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// Byte budget for chunk bytes + manifest bytes + reservations of fills in progress.
    pub max_size: u64,
    /// Fixed chunk size of new blobs (64 KiB ..= 64 MiB).
    pub chunk_size: usize,
    /// Expiry of blobs, manifests and tags; `None` = never expire.
    pub ttl: Option<Duration>,
    pub ttl_from: TtlFrom,
}

impl StoreOptions {
    /// A store at `path` with budget `max_size`, 4 MiB chunks and no expiry.
    pub fn new(path: impl Into<PathBuf>, max_size: u64) -> StoreOptions {
        StoreOptions {
            path: path.into(),
            max_size,
            chunk_size: DEFAULT_CHUNK_SIZE,
            ttl: None,
            ttl_from: TtlFrom::Access,
        }
    }

    /// The options the daemon's configuration asks for (`cache.ttl = 0` = no expiry).
    pub fn from_config(config: &Config) -> StoreOptions {
        let ttl = config.cache.ttl;
        StoreOptions {
            path: config.storage.path.clone(),
            max_size: config.storage.max_size.get(),
            chunk_size: usize::try_from(config.storage.chunk_size.get()).unwrap_or(usize::MAX),
            ttl: (!ttl.is_zero()).then(|| ttl.get()),
            ttl_from: config.cache.ttl_from,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(StoreError::InvalidOptions(format!(
                "chunk_size {} is outside 64KiB..=64MiB",
                self.chunk_size
            )));
        }
        if self.max_size == 0 {
            return Err(StoreError::InvalidOptions(
                "max_size is 0; give the store a byte budget".into(),
            ));
        }
        Ok(())
    }
}

/// A visible blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// `upstream/repo` names it was fetched or requested through.
    pub repos: Vec<String>,
}

/// A stored manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
    pub repos: Vec<String>,
}

/// Which tag of which repository of which upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
    pub repo: RepositoryName,
    pub tag: Tag,
}

/// What a tag pointed at, and when the upstream said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub fetched_at: SystemTime,
    /// The last time the upstream confirmed the tag (equals `fetched_at` at first).
    pub validated_at: SystemTime,
}

/// The store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

/// Everything the store's parts share.
pub(crate) struct StoreInner {
    pub opts: StoreOptions,
    pub metrics: Arc<Metrics>,
    pub index: Index,
    pub chunks: ChunkFiles,
    /// Budget, counts and pins; the one lock under which chunks are referenced, pinned
    /// and unlinked. Lock order: `state` before `access`.
    pub state: Mutex<StoreState>,
    /// Last accesses not yet written to the index (see [`Store::flush_access`]).
    pub access: Mutex<HashMap<(ItemKind, Digest), SystemTime>>,
    pub tag_count: AtomicU64,
    /// What recovery did when this store was opened.
    pub recovery: RecoveryReport,
    /// Held (flock) for the store's lifetime; released when dropped.
    _lock_file: File,
}

fn lock_store_dir(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .ctx("open lock file", &lock_path)?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == fs2::lock_contended_error().raw_os_error() =>
        {
            Err(StoreError::Locked {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(StoreError::io("lock", &lock_path, e)),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `opts.path`: takes the lock, recovers from
    /// any crash (see [`RecoveryReport`]) and enforces the budget.
    pub fn open(opts: StoreOptions, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let result = Self::open_inner(opts, Arc::clone(&metrics));
        if result.is_err() {
            metrics.store_errors.with_label_values(&["open"]).inc();
        }
        result
    }

    fn open_inner(opts: StoreOptions, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        opts.validate()?;
        std::fs::create_dir_all(&opts.path).ctx("create store directory", &opts.path)?;
        let lock_file = lock_store_dir(&opts.path)?;
        let index = Index::open(&opts.path.join("index"))?;
        let chunks = ChunkFiles::open(&opts.path)?;
        let report = recovery::recover(&index, &chunks)?;
        let state = StoreState {
            stored_bytes: report.stored_bytes,
            blobs: report.blobs,
            manifests: report.manifests,
            chunks: report.chunks,
            ..StoreState::default()
        };
        let inner = Arc::new(StoreInner {
            tag_count: AtomicU64::new(report.tags),
            opts,
            metrics,
            index,
            chunks,
            state: Mutex::new(state),
            access: Mutex::new(HashMap::new()),
            recovery: report.clone(),
            _lock_file: lock_file,
        });
        let budget = inner.opts.max_size;
        inner
            .metrics
            .store_budget_bytes
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        if report.repaired() {
            tracing::warn!(path = %inner.opts.path.display(), "store recovery repaired: {report}");
        }
        tracing::info!(
            path = %inner.opts.path.display(),
            blobs = report.blobs,
            manifests = report.manifests,
            chunks = report.chunks,
            tags = report.tags,
            stored_bytes = report.stored_bytes,
            budget,
            "store opened"
        );
        inner.enforce_budget()?;
        {
            let st = inner.lock_state();
            inner.publish_gauges(&st);
        }
        Ok(Store { inner })
    }

    fn counted<T>(&self, op: &'static str, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.inner.count_error(op, e);
        }
        r
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }

    /// What crash recovery found and repaired when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Chunk bytes + manifest bytes currently stored (reservations not included).
    pub fn stored_bytes(&self) -> u64 {
        self.inner.lock_state().stored_bytes
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.inner.opts.max_size
    }

    // ---- blobs -------------------------------------------------------------------------

    /// The blob `d` if it is visible; counts as an access.
    pub fn blob(&self, d: &Digest) -> Result<Option<BlobInfo>, StoreError> {
        let r = self.inner.load_blob(d).map(|rec| {
            rec.map(|rec| {
                self.inner.record_access(ItemKind::Blob, d);
                BlobInfo {
                    digest: *d,
                    size: rec.size,
                    repos: rec.repos,
                }
            })
        });
        self.counted("blob", r)
    }

    /// Every visible blob (for maintenance and tests; not an access).
    pub fn list_blobs(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let r = self.inner.scan_blobs().map(|all| {
            all.into_iter()
                .map(|(digest, rec)| BlobInfo {
                    digest,
                    size: rec.size,
                    repos: rec.repos,
                })
                .collect()
        });
        self.counted("list", r)
    }

    /// The chunks of blob `d`, in order (not an access).
    pub fn blob_chunks(&self, d: &Digest) -> Result<Option<Vec<ChunkRef>>, StoreError> {
        let r = self.inner.load_blob(d).map(|rec| rec.map(|rec| rec.chunks));
        self.counted("blob", r)
    }

    /// Streams bytes `start..end` of blob `d`; `None` if the blob is not visible. The blob
    /// cannot be evicted or purged while the reader lives. Counts as an access.
    pub fn read_blob(
        &self,
        d: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Option<BlobReader>, StoreError> {
        let r = reader::open(&self.inner, d, start, end);
        self.counted("read", r)
    }

    /// Starts storing blob `d`. With `expected_size`, that many bytes are reserved in the
    /// budget now (evicting if needed); without, each chunk is reserved as it is written.
    /// Fails with [`StoreError::NoSpace`] when no room can be made.
    pub fn begin_fill(
        &self,
        d: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobFill, StoreError> {
        let r = BlobFill::begin(Arc::clone(&self.inner), d, expected_size);
        self.counted("fill", r)
    }

    /// Starts storing a blob whose digest is known only once its last byte is in (a push
    /// session's chunks): finish it with [`BlobFill::finish_as`]. Each chunk is reserved in
    /// the budget as it is written.
    pub fn begin_unnamed_fill(&self) -> Result<BlobFill, StoreError> {
        let r = BlobFill::begin_unnamed(Arc::clone(&self.inner));
        self.counted("fill", r)
    }

    /// Starts a blob fill that readers follow while it grows (see [`GrowingBlob`]): the
    /// input side pushes and verifies the bytes, the writer side (for a blocking thread)
    /// puts them on disk and commits the blob. Never fails: a blob that cannot be stored is
    /// spooled, or kept in memory only.
    pub fn begin_growing(
        &self,
        d: Digest,
        expected_size: Option<u64>,
    ) -> (Arc<GrowingBlob>, BlobInput, BlobWriter) {
        growing::begin(&self.inner, d, expected_size)
    }

    /// Bytes `offset..offset+len` of a chunk (for maintenance and tests).
    pub fn read_chunk(&self, id: &ChunkId, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let r = self.inner.chunks.read_range(id, offset, len);
        self.counted("read", r)
    }

    /// Records that blob or manifest `d` was also requested through `repo`
    /// (`upstream/repo`). Unknown digests are ignored.
    pub fn add_repo(&self, d: &Digest, repo: &str) -> Result<(), StoreError> {
        let r = self.inner.add_repo(d, repo);
        self.counted("add_repo", r)
    }

    // ---- manifests ---------------------------------------------------------------------

    /// Stores manifest `d`; refuses bytes that do not hash to `d`.
    pub fn put_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
        repo: &str,
    ) -> Result<(), StoreError> {
        let r = self.inner.put_manifest(d, media_type, bytes, repo);
        self.counted("put_manifest", r)
    }

    /// Manifest `d` if stored; counts as an access.
    pub fn manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, StoreError> {
        let r = self.inner.load_manifest(d).map(|rec| {
            rec.map(|rec| {
                self.inner.record_access(ItemKind::Manifest, d);
                StoredManifest {
                    media_type: rec.media_type,
                    bytes: rec.bytes,
                    repos: rec.repos,
                }
            })
        });
        self.counted("manifest", r)
    }

    // ---- tags and tag lists ------------------------------------------------------------

    pub fn put_tag(&self, k: &TagKey, r: &TagRecord) -> Result<(), StoreError> {
        let result = self.inner.put_tag(k, r);
        self.counted("put_tag", result)
    }

    pub fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let result = self.inner.tag(k);
        self.counted("tag", result)
    }

    /// Keeps the raw JSON of the last `tags/list` answer of `upstream`/`repo` (served
    /// when the upstream is down).
    pub fn put_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        json: &[u8],
    ) -> Result<(), StoreError> {
        let result = self.inner.put_tag_list(upstream, repo, json);
        self.counted("put_tag_list", result)
    }

    pub fn tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.tag_list(upstream, repo);
        self.counted("tag_list", result)
    }

    /// Every `(upstream, repo)` with a cached tag, tag list, blob or manifest, sorted
    /// (for `/v2/_catalog`).
    pub fn repositories(&self) -> Result<Vec<(String, RepositoryName)>, StoreError> {
        let result = self.inner.repositories();
        self.counted("repositories", result)
    }

    // ---- policy and maintenance --------------------------------------------------------

    /// Writes batched last-access times to the index (call every few seconds and at
    /// shutdown).
    pub fn flush_access(&self) -> Result<(), StoreError> {
        let result = (|| {
            {
                let mut st = self.inner.lock_state();
                self.inner.apply_access_locked(&mut st)?;
            }
            self.inner.index.flush()
        })();
        self.counted("flush_access", result)
    }

    /// Removes blobs, manifests and tags whose TTL passed at `now`.
    pub fn sweep_expired(&self, now: SystemTime) -> Result<SweepReport, StoreError> {
        let r = self.inner.sweep_expired(now);
        self.counted("sweep", r)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let r = self.inner.stats();
        self.counted("stats", r)
    }

    /// Re-hashes every chunk (blake3) and blob (sha256) and every manifest; drops what is
    /// corrupt (unless it is being read right now).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let r = self.inner.verify();
        self.counted("verify", r)
    }

    /// Removes content not accessed for `older_than` and/or fetched through `repo`
    /// (`upstream/repo`, or a bare repo name matching any upstream). Content also used by
    /// other repositories is kept and only forgets `repo`. Tags and tag lists of matching
    /// repositories go too. With neither filter, everything goes.
    pub fn purge(
        &self,
        older_than: Option<Duration>,
        repo: Option<&str>,
    ) -> Result<PurgeReport, StoreError> {
        let r = self.inner.purge(older_than, repo);
        self.counted("purge", r)
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Best effort: keep recency of the last seconds across a clean shutdown.
        let state = std::mem::take(self.state.get_mut().unwrap_or_else(|p| p.into_inner()));
        let mut st = state;
        if let Err(e) = self
            .apply_access_locked(&mut st)
            .and_then(|()| self.index.flush())
        {
            tracing::warn!(error = %e, "store: could not persist last accesses at close");
        }
    }
}
