//! TTL expiry: the sweep that removes blobs, manifests and tags whose time is up.
//!
//! Owns: [`SweepReport`] and the expiry rule. With `ttl_from = access` an item expires
//! `ttl` after its last access (a tag: after the upstream last confirmed it); with `fetch`,
//! `ttl` after it was stored (a tag: after it was first fetched).
//!
//! Must not: remove anything a reader holds (counted as skipped and swept next time), or
//! change the budget other than through [`Budget`].

use super::budget::{Budget, Settled, Verdict};
use super::codec::ItemKind;
use super::error::StoreError;
use super::index::Index;
use crate::config::TtlFrom;
use crate::metrics::Metrics;
use crate::oci::Digest;
use std::fmt;
use std::time::{Duration, SystemTime};

/// What a TTL sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Budget bytes released (distinct chunk bytes + manifest bytes).
    pub bytes: u64,
    /// Expired blobs kept because a reader holds them (swept next time).
    pub skipped_in_use: u64,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expired {} blobs, {} manifests, {} tags ({} bytes freed); {} in use kept",
            self.blobs, self.manifests, self.tags, self.bytes, self.skipped_in_use
        )
    }
}

/// The expiry rule of a store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry {
    pub ttl: Option<Duration>,
    pub from: TtlFrom,
}

impl Expiry {
    /// Removes what expired at `now`.
    pub fn sweep(
        &self,
        index: &Index,
        budget: &Budget,
        metrics: &Metrics,
        now: SystemTime,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let Some(ttl) = self.ttl else {
            return Ok(report);
        };
        let Some(cutoff) = now.checked_sub(ttl) else {
            return Ok(report);
        };
        let by_access = self.from == TtlFrom::Access;
        budget.apply_accesses()?;
        let candidates: Vec<(ItemKind, Digest)> = if by_access {
            index.accessed_before(cutoff)?
        } else {
            let blobs = index.all_blobs()?.into_iter();
            let manifests = index.all_manifests()?.into_iter();
            blobs
                .filter(|(_, rec)| rec.created < cutoff)
                .map(|(d, _)| (ItemKind::Blob, d))
                .chain(
                    manifests
                        .filter(|(_, rec)| rec.created < cutoff)
                        .map(|(d, _)| (ItemKind::Manifest, d)),
                )
                .collect()
        };
        let stamp = |last_access: SystemTime, created: SystemTime| {
            if by_access {
                last_access
            } else {
                created
            }
        };
        let expired = |at: SystemTime| {
            if at < cutoff {
                Verdict::Remove
            } else {
                Verdict::Keep
            }
        };
        for (kind, d) in candidates {
            let settled = match kind {
                ItemKind::Blob => {
                    budget.settle_blob(&d, |rec| expired(stamp(rec.last_access, rec.created)))?
                }
                // Backing a cooldown: kept until the hold ends.
                ItemKind::Manifest if budget.manifest_held(&d) => Settled::InUse,
                ItemKind::Manifest => budget
                    .settle_manifest(&d, |rec| expired(stamp(rec.last_access, rec.created)))?,
            };
            match settled {
                Settled::Removed { freed } => {
                    match kind {
                        ItemKind::Blob => report.blobs += 1,
                        ItemKind::Manifest => report.manifests += 1,
                    }
                    report.bytes += freed;
                    metrics
                        .store_expired
                        .with_label_values(&[kind.label()])
                        .inc();
                    metrics.store_expired_bytes.inc_by(freed);
                }
                Settled::InUse => report.skipped_in_use += 1,
                Settled::Gone | Settled::Kept | Settled::Detached => {}
            }
        }
        report.tags = index.remove_tags_where(|_, rec| match rec {
            Some(rec) if by_access => rec.validated_at < cutoff,
            Some(rec) => rec.fetched_at < cutoff,
            None => true,
        })?;
        metrics
            .store_expired
            .with_label_values(&["tag"])
            .inc_by(report.tags);
        index.flush()?;
        if report != SweepReport::default() {
            tracing::info!("store TTL sweep: {report}");
        }
        Ok(report)
    }
}
