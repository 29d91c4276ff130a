//! Maintenance operations an operator runs: statistics, full verification and purges,
//! each with a report that prints as a human table.
//!
//! Owns: [`StoreStats`], [`VerifyReport`], [`PurgeReport`] and the operations that build
//! them.
//!
//! Must not: remove anything a reader pins (it is reported as skipped instead), hold the
//! budget lock while hashing (verification pins one blob at a time instead), or hold more
//! than one read frame of a blob in memory.

use super::budget::{Budget, Settled, Verdict};
use super::chunks::{ChunkFiles, ChunkId};
use super::codec::micros;
use super::error::StoreError;
use super::index::Index;
use super::reader::FRAME_BYTES;
use crate::metrics::Metrics;
use crate::oci::{
    repository_on, split_registry, Digest, NameError, RepoKey, RepoTarget, RepositoryName,
    Sha256Verifier, DOCKER_HUB,
};
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// `1.5 GiB`-style byte counts for reports.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A snapshot of what the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    pub path: std::path::PathBuf,
    pub blobs: u64,
    /// Sum of blob sizes (before chunk deduplication).
    pub blob_bytes: u64,
    pub manifests: u64,
    pub tags: u64,
    pub tag_lists: u64,
    /// Distinct chunk files.
    pub chunks: u64,
    /// Distinct chunk bytes + manifest bytes (what the budget counts).
    pub stored_bytes: u64,
    /// Bytes reserved by fills in progress.
    pub reserved_bytes: u64,
    pub budget: u64,
    /// The sled index on disk.
    pub index_bytes: u64,
}

impl fmt::Display for StoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = if self.budget == 0 {
            0.0
        } else {
            self.stored_bytes as f64 * 100.0 / self.budget as f64
        };
        writeln!(f, "store {}", self.path.display())?;
        writeln!(
            f,
            "  {:<14}{:>12}  ({} logical)",
            "blobs",
            self.blobs,
            human_bytes(self.blob_bytes)
        )?;
        writeln!(f, "  {:<14}{:>12}", "manifests", self.manifests)?;
        writeln!(f, "  {:<14}{:>12}", "tags", self.tags)?;
        writeln!(f, "  {:<14}{:>12}", "tag lists", self.tag_lists)?;
        writeln!(f, "  {:<14}{:>12}", "chunks", self.chunks)?;
        writeln!(
            f,
            "  {:<14}{:>12}  of {} budget ({pct:.1} %)",
            "stored",
            human_bytes(self.stored_bytes),
            human_bytes(self.budget)
        )?;
        writeln!(
            f,
            "  {:<14}{:>12}",
            "reserved",
            human_bytes(self.reserved_bytes)
        )?;
        writeln!(f, "  {:<14}{:>12}", "index", human_bytes(self.index_bytes))
    }
}

/// What `verify` checked and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Distinct chunks checked.
    pub chunks_checked: u64,
    /// Chunks whose content does not hash to their name (or that are missing or short).
    pub corrupt_chunks: Vec<ChunkId>,
    /// Blobs that failed (a bad chunk or a wrong sha256) and were dropped.
    pub corrupt_blobs: Vec<Digest>,
    /// Corrupt blobs kept because a reader holds them; run `verify` again later.
    pub corrupt_in_use: Vec<Digest>,
    pub manifests_checked: u64,
    pub corrupt_manifests: Vec<Digest>,
}

impl VerifyReport {
    /// Whether everything checked out.
    pub fn is_clean(&self) -> bool {
        self.corrupt_chunks.is_empty()
            && self.corrupt_blobs.is_empty()
            && self.corrupt_in_use.is_empty()
            && self.corrupt_manifests.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<18}{:>10}  ({})",
            "blobs checked",
            self.blobs_checked,
            human_bytes(self.bytes_checked)
        )?;
        writeln!(f, "  {:<18}{:>10}", "chunks checked", self.chunks_checked)?;
        writeln!(
            f,
            "  {:<18}{:>10}",
            "manifests checked", self.manifests_checked
        )?;
        writeln!(
            f,
            "  {:<18}{:>10}",
            "corrupt chunks",
            self.corrupt_chunks.len()
        )?;
        writeln!(
            f,
            "  {:<18}{:>10}",
            "blobs dropped",
            self.corrupt_blobs.len()
        )?;
        writeln!(
            f,
            "  {:<18}{:>10}",
            "manifests dropped",
            self.corrupt_manifests.len()
        )?;
        for d in &self.corrupt_blobs {
            writeln!(f, "    dropped blob {d}")?;
        }
        for d in &self.corrupt_manifests {
            writeln!(f, "    dropped manifest {d}")?;
        }
        for d in &self.corrupt_in_use {
            writeln!(
                f,
                "    corrupt but being read, kept for now (run verify again): {d}"
            )?;
        }
        if self.is_clean() {
            writeln!(f, "  everything checks out")?;
        }
        Ok(())
    }
}

/// What `purge` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub tag_lists: u64,
    /// Budget bytes released.
    pub bytes: u64,
    /// Items kept because other repositories use them; they only forgot the purged repo.
    pub detached: u64,
    /// Blobs kept because a reader holds them.
    pub skipped_in_use: u64,
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {:<22}{:>10}", "blobs removed", self.blobs)?;
        writeln!(f, "  {:<22}{:>10}", "manifests removed", self.manifests)?;
        writeln!(f, "  {:<22}{:>10}", "tags removed", self.tags)?;
        writeln!(f, "  {:<22}{:>10}", "tag lists removed", self.tag_lists)?;
        writeln!(f, "  {:<22}{:>10}", "bytes freed", human_bytes(self.bytes))?;
        writeln!(f, "  {:<22}{:>10}", "kept (used elsewhere)", self.detached)?;
        writeln!(
            f,
            "  {:<22}{:>10}",
            "kept (being read)", self.skipped_in_use
        )
    }
}

/// Which repositories a purge removes content of, as `cache purge --repo` names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeFilter {
    /// `<upstream>/<repo>` (e.g. `docker.io/library/nginx`): that repository on that
    /// upstream only.
    On(RepoTarget),
    /// `<repo>` (e.g. `library/nginx`): that repository on any upstream; a one-word name
    /// also matches Docker Hub's `library/<name>`.
    Anywhere(RepositoryName),
}

impl FromStr for PurgeFilter {
    type Err = NameError;

    /// Reads a name the way clients write one: a first component that is a registry host
    /// names the upstream (Docker Hub's synonyms are `docker.io`, its one-word names live
    /// under `library/`); otherwise the name is a repository on any upstream.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_matches('/');
        match split_registry(s) {
            (Some(upstream), path) => {
                let repo = repository_on(&upstream, path.parse()?)?;
                Ok(PurgeFilter::On(RepoTarget { upstream, repo }))
            }
            (None, path) => Ok(PurgeFilter::Anywhere(path.parse()?)),
        }
    }
}

impl PurgeFilter {
    /// Whether `entry`, a repository as the store records it (`upstream/repo`), matches.
    pub fn matches(&self, entry: &str) -> bool {
        let entry = RepoKey::from_stored(entry);
        match self {
            PurgeFilter::On(target) => entry == target.key(),
            PurgeFilter::Anywhere(repo) => {
                entry.repo() == repo.as_str()
                    || (entry.upstream() == DOCKER_HUB
                        && repo.components().count() == 1
                        && repository_on(DOCKER_HUB, repo.clone())
                            .is_ok_and(|hub| entry.repo() == hub.as_str()))
            }
        }
    }
}

/// What the filter matches, e.g. `nginx or docker.io/library/nginx`.
impl fmt::Display for PurgeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PurgeFilter::On(target) => write!(f, "{}", target.key()),
            PurgeFilter::Anywhere(repo) if repo.components().count() == 1 => {
                match repository_on(DOCKER_HUB, repo.clone()) {
                    Ok(hub) => write!(f, "{repo} or {DOCKER_HUB}/{hub}"),
                    Err(_) => write!(f, "{repo}"),
                }
            }
            PurgeFilter::Anywhere(repo) => write!(f, "{repo}"),
        }
    }
}

/// Hashes one chunk file (blake3) while feeding it to `blob_hash`; whether it is intact.
fn check_chunk(
    chunks: &ChunkFiles,
    id: &ChunkId,
    len: u32,
    blob_hash: &mut Sha256Verifier,
    frame: &mut [u8],
) -> bool {
    let Ok(mut file) = chunks.open_chunk(id) else {
        return false;
    };
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        match file.read(frame) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&frame[..n]);
                blob_hash.update(&frame[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    total == u64::from(len) && hasher.finalize().as_bytes() == id.as_bytes()
}

/// What the store holds now.
pub(crate) fn stats(index: &Index, budget: &Budget, path: &Path) -> Result<StoreStats, StoreError> {
    let blob_bytes = index.all_blobs()?.iter().map(|(_, r)| r.size).sum();
    let t = budget.totals();
    Ok(StoreStats {
        path: path.to_path_buf(),
        blobs: t.blobs,
        blob_bytes,
        manifests: t.manifests,
        tags: index.tag_count(),
        tag_lists: index.tag_list_count(),
        chunks: t.chunks,
        stored_bytes: t.stored_bytes,
        reserved_bytes: t.reserved_bytes,
        budget: budget.max_size(),
        index_bytes: index.size_on_disk()?,
    })
}

/// Re-hashes every blob (one at a time, pinned while it is checked) and manifest, and
/// drops what is corrupt unless a reader holds it.
pub(crate) fn verify(
    index: &Index,
    budget: &Budget,
    chunks: &ChunkFiles,
    metrics: &Metrics,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut chunk_ok: HashMap<ChunkId, bool> = HashMap::new();
    let mut frame = vec![0u8; FRAME_BYTES];
    for (d, _) in index.all_blobs()? {
        // Pin, then re-read: the record checked is the one that stays until unpinned.
        budget.pin_blob(&d);
        let checked = index.blob(&d).map(|rec| {
            rec.map(|rec| {
                let mut blob_hash = Sha256Verifier::new();
                let mut intact = true;
                for c in &rec.chunks {
                    let ok = check_chunk(chunks, &c.id, c.len, &mut blob_hash, &mut frame);
                    if chunk_ok.insert(c.id, ok).is_none() {
                        report.chunks_checked += 1;
                        if !ok {
                            report.corrupt_chunks.push(c.id);
                        }
                    }
                    if !ok {
                        intact = false;
                        break;
                    }
                }
                report.blobs_checked += 1;
                report.bytes_checked += blob_hash.len();
                intact && blob_hash.finish() == d
            })
        });
        budget.unpin_blob(&d);
        let Some(intact) = checked? else {
            continue;
        };
        if intact {
            continue;
        }
        match budget.settle_blob(&d, |_| Verdict::Remove)? {
            Settled::InUse => report.corrupt_in_use.push(d),
            Settled::Removed { .. } => {
                tracing::warn!(digest = %d, "verify: dropped corrupt blob");
                report.corrupt_blobs.push(d);
                metrics
                    .store_errors
                    .with_label_values(&["verify_corrupt"])
                    .inc();
            }
            Settled::Gone | Settled::Kept | Settled::Detached => {}
        }
    }
    for (d, rec) in index.all_manifests()? {
        report.manifests_checked += 1;
        if Digest::of(&rec.bytes) == d {
            continue;
        }
        let settled = budget.settle_manifest(&d, |rec| {
            if Digest::of(&rec.bytes) == d {
                Verdict::Keep
            } else {
                Verdict::Remove
            }
        })?;
        if let Settled::Removed { .. } = settled {
            tracing::warn!(digest = %d, "verify: dropped corrupt manifest");
            report.corrupt_manifests.push(d);
        }
    }
    index.flush()?;
    Ok(report)
}

/// Removes content not accessed for `older_than` and/or fetched through `repo`; see
/// `Store::purge`.
pub(crate) fn purge(
    index: &Index,
    budget: &Budget,
    older_than: Option<Duration>,
    repo: Option<&PurgeFilter>,
) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    let now = SystemTime::now();
    let cutoff = older_than.map(|age| now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
    let old_enough = |t: SystemTime| cutoff.is_none_or(|c| micros(t) < micros(c));
    // Keep when it does not match; when it does, remove it, or detach it from `repo` when
    // other repositories use it too.
    let verdict = |last_access: SystemTime, repos: &[String]| -> Verdict {
        if !old_enough(last_access) {
            return Verdict::Keep;
        }
        match repo {
            None => Verdict::Remove,
            Some(filter) => {
                if !repos.iter().any(|r| filter.matches(r)) {
                    return Verdict::Keep;
                }
                let remaining: Vec<String> = repos
                    .iter()
                    .filter(|r| !filter.matches(r))
                    .cloned()
                    .collect();
                if remaining.is_empty() {
                    Verdict::Remove
                } else {
                    Verdict::Detach(remaining)
                }
            }
        }
    };
    budget.apply_accesses()?;
    for (d, _) in index.all_blobs()? {
        match budget.settle_blob(&d, |rec| verdict(rec.last_access, &rec.repos))? {
            Settled::Removed { freed } => {
                report.bytes += freed;
                report.blobs += 1;
            }
            Settled::Detached => report.detached += 1,
            Settled::InUse => report.skipped_in_use += 1,
            Settled::Gone | Settled::Kept => {}
        }
    }
    for (d, _) in index.all_manifests()? {
        match budget.settle_manifest(&d, |rec| verdict(rec.last_access, &rec.repos))? {
            Settled::Removed { freed } => {
                report.bytes += freed;
                report.manifests += 1;
            }
            Settled::Detached => report.detached += 1,
            Settled::InUse | Settled::Gone | Settled::Kept => {}
        }
    }
    let key_matches = |name: &str, stamp: Option<SystemTime>| -> bool {
        // An unreadable record is purged.
        let stamp = stamp.unwrap_or(SystemTime::UNIX_EPOCH);
        old_enough(stamp) && repo.is_none_or(|f| f.matches(name))
    };
    report.tags =
        index.remove_tags_where(|name, rec| key_matches(name, rec.map(|t| t.validated_at)))?;
    report.tag_lists =
        index.remove_tag_lists_where(|name, rec| key_matches(name, rec.map(|t| t.fetched_at)))?;
    index.flush()?;
    tracing::info!(
        blobs = report.blobs,
        manifests = report.manifests,
        tags = report.tags,
        bytes = report.bytes,
        "store purged"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::codec::ItemKind;
    use super::*;

    fn filter(s: &str) -> PurgeFilter {
        s.parse().expect("a valid filter")
    }

    #[test]
    fn purge_filters_parse_docker_hub_names_the_way_clients_write_them() {
        for (input, shown) in [
            ("nginx", "nginx or docker.io/library/nginx"),
            ("library/nginx", "library/nginx"),
            ("org/img", "org/img"),
            ("docker.io/nginx", "docker.io/library/nginx"),
            ("index.docker.io/library/nginx", "docker.io/library/nginx"),
            ("registry-1.docker.io/x/y", "docker.io/x/y"),
            ("registry.hub.docker.com/nginx", "docker.io/library/nginx"),
            ("ghcr.io/org/img", "ghcr.io/org/img"),
            ("GHCR.io/org/img", "ghcr.io/org/img"),
            ("registry.lan:5000/team/app", "registry.lan:5000/team/app"),
            ("localhost/app", "localhost/app"),
            (" /ghcr.io/img/ ", "ghcr.io/img"),
        ] {
            assert_eq!(filter(input).to_string(), shown, "{input}");
        }
        for bad in ["", "Nginx", "a//b", "registry.lan:5000", "ghcr.io/Org/img"] {
            assert!(bad.parse::<PurgeFilter>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn purge_filters_match_store_entries() {
        let hub = "docker.io/library/nginx";
        assert!(filter("library/nginx").matches(hub));
        assert!(filter("docker.io/library/nginx").matches(hub));
        assert!(filter("docker.io/nginx").matches(hub));
        assert!(filter("nginx").matches(hub));
        assert!(filter("nginx").matches("registry.lan:5000/nginx"));
        assert!(!filter("nginx").matches("ghcr.io/library/nginx"));
        assert!(!filter("library/nginx").matches("docker.io/library/nginx-extra"));
        assert!(filter("org/img").matches("ghcr.io/org/img"));
        assert!(!filter("org/img").matches("ghcr.io/other/org/img"));
        assert!(!filter("docker.io/org/img").matches("ghcr.io/org/img"));
        assert!(!filter("ghcr.io/org/img").matches("quay.io/org/img"));
        assert!(!filter("ghcr.io/org/img").matches("org/img"));
    }

    #[test]
    fn byte_counts_read_as_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn item_kind_labels() {
        assert_eq!(ItemKind::Blob.label(), "blob");
        assert_eq!(ItemKind::Manifest.label(), "manifest");
    }
}
