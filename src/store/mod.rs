//! Content-addressed store: blobs, manifests, tags and tag lists on local disk, with an LRU
//! byte budget, TTL expiry and crash recovery.
//!
//! Layout of a store directory:
//!
//! ```text
//! <path>/LOCK                      exclusive fs2 lock for the Store's lifetime
//! <path>/index/                    sled: the index only (see index/)
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
//!   A fill reserves its bytes chunk by chunk as they arrive, never a size it was only
//!   told: nothing is evicted for bytes that may never come.
//! - Reads stream in frames of at most [`FRAME_BYTES`], never the whole blob in memory.
//! - A blob being filled is readable while it grows ([`GrowingBlob`]), from any offset,
//!   whether or not it can be stored; its last byte only once its digest matched.
//!
//! - The index records its schema version ([`SCHEMA_VERSION`]). Opening a store written by
//!   an older release migrates its index in place (an index from before versions were
//!   recorded is schema 1); one written by a newer release is refused with
//!   [`StoreError::IndexSchema`], never read wrongly. An upgrade keeps the cache.
//!
//! - It also keeps what the edge saved the WAN (per upstream and hour for 30 days, and in
//!   total): with every recency flush it adds what the metrics' saving counters gained
//!   (`Store::flush_access`, `index/savings.rs`). A new index tree, no schema change: an
//!   older release opens the store and ignores it.
//!
//! The store is synchronous: index lookups and page-cached reads are cheap enough for async
//! workers; fills, commits and maintenance (fsync, scans) belong on blocking threads.
//!
//! The picture (each part keeps its state private; imports run only downwards):
//!
//! ```text
//! mod.rs (Store facade: opens, delegates, counts errors)
//!  ├─ fill.rs, growing.rs ─┐        blobs being written (FillParts: budget + chunk files)
//!  ├─ reader.rs ───────────┤        blobs being read (pinned through the budget)
//!  ├─ maintenance.rs, expiry.rs ─┤  stats, verify, purge, TTL sweep
//!  ├─ recovery.rs ─────────┤        crash recovery at open
//!  │                       ▼
//!  ├─ budget.rs   the one lock: totals, pins, reserve/evict, commit, remove
//!  ├─ index/      sled trees and schema; every tree operation, cross-tree rules once
//!  ├─ chunks.rs   chunk files, temp and spool files       (block_maps.rs: shared mappings)
//!  └─ codec.rs, values.rs, options.rs, error.rs           leaves: encodings, values, errors
//! ```
//!
//! This file owns the [`Store`] facade. Must not: import `server`, `registry`, `cache` or
//! `upstream`; only `config`, `metrics`, `oci` and `mapped` are read. No file below imports
//! from this one.

mod ahead;
mod block_maps;
mod budget;
mod chunks;
mod codec;
mod error;
mod expiry;
mod fill;
mod growing;
mod index;
mod maintenance;
mod options;
mod reader;
mod recovery;
#[cfg(test)]
mod tests;
mod upkeep;
mod values;

pub use ahead::{BytesAhead, Want};
pub use chunks::{ChunkId, ChunkRef};
pub use error::StoreError;
pub use expiry::SweepReport;
pub use fill::BlobFill;
pub use growing::{
    BlobInput, BlobRead, BlobWriter, Checkpoint, GrowingBlob, GrowthFailure, Keeping,
    MEMORY_WINDOW, READ_FRAME,
};
pub use index::{
    SavingsHistory, SavingsSummary, SchemaOpen, UpstreamSavings, HISTORY_HOURS, SCHEMA_VERSION,
};
pub use maintenance::{PurgeFilter, PurgeReport, StoreStats, VerifyReport};
pub use options::{StoreOptions, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use reader::{BlobReader, FRAME_BYTES};
pub use recovery::RecoveryReport;
pub use upkeep::Upkeep;
pub use values::{BlobInfo, SeenDigest, StoredManifest, TagKey, TagRecord, TAG_HISTORY};

use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName, Tag};
use budget::{Budget, Totals};
use bytes::Bytes;
use chunks::ChunkFiles;
use codec::{ItemKind, TagListRecord};
use error::IoContext;
use expiry::Expiry;
use fill::FillParts;
use index::Index;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

/// The store's parts. Each keeps its own state private: the index its trees, the budget
/// its lock, the chunk files their directories; the facade below only calls them.
struct StoreInner {
    opts: StoreOptions,
    metrics: Arc<Metrics>,
    index: Arc<Index>,
    chunks: Arc<ChunkFiles>,
    budget: Arc<Budget>,
    /// What a fill writes through (the budget, the chunk files, the chunk size).
    fill_parts: FillParts,
    expiry: Expiry,
    /// What recovery did when this store was opened, and what the index's schema was.
    recovery: RecoveryReport,
    schema: SchemaOpen,
    /// What of this process's saving counters (`Metrics::savings_by_upstream`) the index
    /// already holds.
    savings_kept: std::sync::Mutex<std::collections::BTreeMap<String, crate::metrics::Savings>>,
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
        let (index, schema) = Index::open(&opts.path.join("index"), Arc::clone(&metrics))?;
        if let SchemaOpen::Migrated { from } = schema {
            tracing::info!(path = %opts.path.display(), from, to = SCHEMA_VERSION, "store index migrated to the current schema");
        }
        let index = Arc::new(index);
        let chunks = Arc::new(ChunkFiles::open(&opts.path)?);
        let (report, _) = recovery::recover(&index, &chunks)?;
        let budget = Arc::new(Budget::new(
            opts.max_size,
            Arc::clone(&index),
            Arc::clone(&chunks),
            Arc::clone(&metrics),
            Totals {
                stored_bytes: report.stored_bytes,
                reserved_bytes: 0,
                blobs: report.blobs,
                manifests: report.manifests,
                chunks: report.chunks,
            },
        ));
        let inner = StoreInner {
            fill_parts: FillParts::new(
                Arc::clone(&budget),
                Arc::clone(&chunks),
                Arc::clone(&metrics),
                opts.chunk_size,
            ),
            expiry: Expiry {
                ttl: opts.ttl,
                from: opts.ttl_from,
            },
            opts,
            metrics,
            index,
            chunks,
            budget,
            recovery: report.clone(),
            schema,
            savings_kept: std::sync::Mutex::default(),
            _lock_file: lock_file,
        };
        inner.publish_tag_gauge();
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
            budget = inner.opts.max_size,
            "store opened"
        );
        inner.budget.enforce()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    fn counted<T>(&self, op: &'static str, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            error::count(&self.inner.metrics, op, e);
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

    /// What opening found of the index's schema (created, current, or migrated).
    pub fn schema_on_open(&self) -> SchemaOpen {
        self.inner.schema
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Chunk bytes + manifest bytes currently stored (reservations not included).
    /// This edge's id, made the first time it is asked for and kept in the index (so it
    /// survives restarts and upgrades, and differs between boxes made from one image).
    pub fn edge_id(&self) -> Result<String, StoreError> {
        self.inner.index.edge_id()
    }

    /// Adds what the edge saved the WAN since the last call (per upstream) to the hour of
    /// `at` and to the totals, and forgets hours older than [`HISTORY_HOURS`].
    pub fn add_savings(
        &self,
        at: std::time::SystemTime,
        saved: &[(String, crate::metrics::Savings)],
    ) -> Result<(), StoreError> {
        let now = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let r = self.inner.index.add_savings(now, now / 3600, saved);
        self.counted("savings", r)
    }

    /// The savings history kept in the index, with what this process saved up to now (its
    /// counters are kept first).
    pub fn savings(&self) -> Result<SavingsHistory, StoreError> {
        let r = self
            .keep_savings(SystemTime::now())
            .and_then(|()| self.inner.index.savings_history());
        self.counted("savings", r)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.inner.budget.totals().stored_bytes
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.inner.opts.max_size
    }

    // ---- blobs -------------------------------------------------------------------------

    /// The blob `d` if it is visible; counts as an access.
    pub fn blob(&self, d: &Digest) -> Result<Option<BlobInfo>, StoreError> {
        let r = self.inner.index.blob(d).map(|rec| {
            rec.map(|rec| {
                self.inner.budget.note_access(ItemKind::Blob, d);
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
        let r = self.inner.index.all_blobs().map(|all| {
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
        let r = self
            .inner
            .index
            .blob(d)
            .map(|rec| rec.map(|rec| rec.chunks));
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
        let i = &self.inner;
        let r = reader::open(&i.budget, &i.index, &i.chunks, d, start, end);
        self.counted("read", r)
    }

    /// Starts storing blob `d`. Each chunk is reserved in the budget (evicting if needed) as
    /// it is written, never the announced size ahead of its bytes: a request that announces
    /// a huge body and sends 16 bytes evicts nothing. Fails with [`StoreError::NoSpace`] at
    /// once when `expected_size` exceeds the whole budget, else at the chunk for which no
    /// room can be made.
    pub fn begin_fill(
        &self,
        d: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobFill, StoreError> {
        let r = BlobFill::begin(&self.inner.fill_parts, d, expected_size);
        self.counted("fill", r)
    }

    /// Starts storing a blob whose digest is known only once its last byte is in (a push
    /// session's chunks): finish it with [`BlobFill::finish_as`]. Each chunk is reserved in
    /// the budget as it is written.
    pub fn begin_unnamed_fill(&self) -> Result<BlobFill, StoreError> {
        let r = BlobFill::begin_unnamed(&self.inner.fill_parts);
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
        growing::begin(&self.inner.fill_parts, d, expected_size)
    }

    /// An unlinked file under the store's `tmp/` for bytes held only while a fill runs (a
    /// crash leaves nothing behind).
    pub fn create_spool(&self) -> Result<std::fs::File, StoreError> {
        self.inner.fill_parts.create_spool()
    }

    /// Bytes `offset..offset+len` of a chunk (for maintenance and tests).
    pub fn read_chunk(&self, id: &ChunkId, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let r = self.inner.chunks.read_range(id, offset, len);
        self.counted("read", r)
    }

    /// Records that blob or manifest `d` was also requested through `repo`
    /// (`upstream/repo`). Unknown digests are ignored.
    pub fn add_repo(&self, d: &Digest, repo: &str) -> Result<(), StoreError> {
        let r = self.inner.budget.add_repo(d, repo);
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
        let actual = Digest::of(bytes);
        let r = if actual == *d {
            self.inner.budget.put_manifest(d, media_type, bytes, repo)
        } else {
            Err(StoreError::DigestMismatch {
                expected: *d,
                actual,
            })
        };
        self.counted("put_manifest", r)
    }

    /// Manifest `d` if stored; counts as an access.
    pub fn manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, StoreError> {
        let r = self.inner.index.manifest(d).map(|rec| {
            rec.map(|rec| {
                self.inner.budget.note_access(ItemKind::Manifest, d);
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
        let index = &self.inner.index;
        let result = index.put_tag(k, r).and_then(|()| index.flush());
        self.inner.publish_tag_gauge();
        self.counted("put_tag", result)
    }

    pub fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let result = self.inner.index.tag(k);
        self.counted("tag", result)
    }

    /// Every tag of `upstream`/`repo` the index holds, with its record.
    pub fn repo_tags(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Vec<(Tag, TagRecord)>, StoreError> {
        let result = self.inner.index.repo_tags(upstream, repo);
        self.counted("repo_tags", result)
    }

    /// Releases `digest` from cooldowns in every tag of `upstream`/`repo` that pointed at
    /// it (`policy release`); returns those tags.
    pub fn release_digest(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<Tag>, StoreError> {
        let index = &self.inner.index;
        let result = index
            .release_digest(upstream, repo, digest)
            .and_then(|tags| index.flush().map(|()| tags));
        self.counted("release_digest", result)
    }

    /// Keeps manifest `d` from eviction and TTL expiry until `until`: a cooldown serves it
    /// in place of a tag's newest digest. Held in memory (a restart forgets it: the cache
    /// holds it again at the next pull, and fetches it by digest if it went).
    pub fn hold_manifest(&self, d: &Digest, until: SystemTime) {
        self.inner.budget.hold_manifest(d, until);
    }

    /// Keeps the raw JSON of the last `tags/list` answer of `upstream`/`repo` (served
    /// when the upstream is down).
    pub fn put_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        json: &[u8],
    ) -> Result<(), StoreError> {
        let rec = TagListRecord {
            fetched_at: SystemTime::now(),
            json: Bytes::copy_from_slice(json),
        };
        let index = &self.inner.index;
        let result = index
            .put_tag_list(upstream, repo, &rec)
            .and_then(|()| index.flush());
        self.counted("put_tag_list", result)
    }

    pub fn tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.index.tag_list(upstream, repo);
        self.counted("tag_list", result)
    }

    /// Every `(upstream, repo)` with a cached tag, tag list, blob or manifest, sorted
    /// (for `/v2/_catalog`).
    pub fn repositories(&self) -> Result<Vec<(String, RepositoryName)>, StoreError> {
        let index = &self.inner.index;
        let result = (|| {
            let blobs = index.all_blobs()?;
            let manifests = index.all_manifests()?;
            let origins = blobs
                .iter()
                .flat_map(|(_, rec)| &rec.repos)
                .chain(manifests.iter().flat_map(|(_, rec)| &rec.repos))
                .map(String::as_str);
            index.repositories(origins)
        })();
        self.counted("repositories", result)
    }

    // ---- policy and maintenance --------------------------------------------------------

    /// Writes batched last-access times to the index (call every few seconds and at
    /// shutdown).
    pub fn flush_access(&self) -> Result<(), StoreError> {
        let i = &self.inner;
        let result = i
            .budget
            .apply_accesses()
            .and_then(|()| self.keep_savings(SystemTime::now()))
            .and_then(|()| i.index.flush());
        self.counted("flush_access", result)
    }

    /// Adds what the saving counters gained since the last call to the index's history
    /// (run with every recency flush, so at most 10 s of savings are lost to a crash).
    fn keep_savings(&self, now: SystemTime) -> Result<(), StoreError> {
        let i = &self.inner;
        let current = i.metrics.savings_by_upstream();
        let mut kept = i.savings_kept.lock().unwrap_or_else(|p| p.into_inner());
        let gained: Vec<(String, crate::metrics::Savings)> = current
            .iter()
            .map(|(u, s)| {
                (
                    u.clone(),
                    s.since(&kept.get(u).copied().unwrap_or_default()),
                )
            })
            .filter(|(_, d)| !d.is_empty())
            .collect();
        if gained.is_empty() {
            return Ok(());
        }
        self.add_savings(now, &gained)?;
        kept.extend(current);
        Ok(())
    }

    /// Removes blobs, manifests and tags whose TTL passed at `now`.
    pub fn sweep_expired(&self, now: SystemTime) -> Result<SweepReport, StoreError> {
        let i = &self.inner;
        let r = i.expiry.sweep(&i.index, &i.budget, &i.metrics, now);
        i.publish_tag_gauge();
        self.counted("sweep", r)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let i = &self.inner;
        let r = maintenance::stats(&i.index, &i.budget, &i.opts.path);
        self.counted("stats", r)
    }

    /// Re-hashes every chunk (blake3) and blob (sha256) and every manifest; drops what is
    /// corrupt (unless it is being read right now).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let i = &self.inner;
        let r = maintenance::verify(&i.index, &i.budget, &i.chunks, &i.metrics);
        self.counted("verify", r)
    }

    /// Removes content not accessed for `older_than` and/or fetched through a repository
    /// `repo` matches (see [`PurgeFilter`]). Content also used by
    /// other repositories is kept and only forgets `repo`. Tags and tag lists of matching
    /// repositories go too. With neither filter, everything goes.
    pub fn purge(
        &self,
        older_than: Option<Duration>,
        repo: Option<&PurgeFilter>,
    ) -> Result<PurgeReport, StoreError> {
        let i = &self.inner;
        let r = maintenance::purge(&i.index, &i.budget, older_than, repo);
        i.publish_tag_gauge();
        self.counted("purge", r)
    }
}

impl Store {
    /// Starts the store's upkeep task (recency flushed every 10 s, expired content swept
    /// every minute) on the current tokio runtime; it stops when the handle is dropped.
    pub fn spawn_upkeep(&self) -> Upkeep {
        let store = self.clone();
        Upkeep::spawn(Arc::new(move |sweep| {
            store.flush_access()?;
            if sweep {
                let report = store.sweep_expired(SystemTime::now())?;
                tracing::debug!(?report, "TTL sweep");
            }
            Ok(())
        }))
    }
}

impl StoreInner {
    fn publish_tag_gauge(&self) {
        let n = i64::try_from(self.index.tag_count()).unwrap_or(i64::MAX);
        self.metrics.store_tags.set(n);
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Best effort: keep recency of the last seconds across a clean shutdown.
        if let Err(e) = self
            .budget
            .apply_accesses()
            .and_then(|()| self.index.flush())
        {
            tracing::warn!(error = %e, "store: could not persist last accesses at close");
        }
    }
}
