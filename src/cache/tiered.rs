//! Where a cold blob's bytes come from, behind the local store: the shared tier first, then
//! the peer edge that owns the digest (cluster single flight), then the upstream; and what
//! happens once the fill started: a blob from the upstream is written through to the
//! shared tier, a shared-tier copy whose digest did not match is deleted.
//!
//! Every source feeds the same fill (`fill::run`): its bytes stream to every waiting client
//! as they arrive, and the fill's input verifies the sha256, whatever the source. A blob
//! fetched only through a private upstream never touches the shared tier or the peers.
//!
//! The tiers are read through the [`BlobSource`] seam (a tier that fails is a miss).
//!
//! Must not: fail a pull because a tier failed, or know how the tiers are reached (that is
//! `shared`).

use super::fill::{self, FillJob};
use super::fill_registry::FillLead;
use super::flight::Landing;
use super::sources::BlobSource;
use crate::oci::BlobSpan;
use crate::shared::peers::Cluster;
use crate::shared::SharedTier;
use crate::store::GrowthFailure;
use std::sync::Arc;

pub use crate::shared::peers::PEER_HEADER;

/// The tiers between the local store and the upstreams.
#[derive(Clone, Default)]
pub struct Tiers {
    pub shared: Option<Arc<SharedTier>>,
    pub cluster: Option<Arc<Cluster>>,
}

/// Who asked for a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    Client,
    /// Another edge of the cluster, filling from this one (never forwarded again).
    Peer,
}

/// Where a fill's bytes came from.
enum Source {
    Shared,
    Peer,
    Upstream,
}

/// The leader's task with the tiers: picks the source, runs the fill, then writes through
/// or cleans up.
pub(super) async fn run(
    tiers: Tiers,
    job: FillJob,
    lead: FillLead,
    requester: Requester,
    private: bool,
) {
    if private {
        return fill::run(job, lead).await;
    }
    let landing = lead.follower();
    let (digest, target) = (job.digest, job.target.clone());
    let mut source = Source::Upstream;
    let mut first = None;
    if let Some(shared) = &tiers.shared {
        if let Ok(found) =
            BlobSource::blob(shared.as_ref(), &target, &digest, BlobSpan::WHOLE).await
        {
            let key = target.key();
            let same_repo = found
                .vouched_for
                .as_deref()
                .is_some_and(|r| key.as_str() == r);
            // Content fetched for another repository: only once the upstream says this one
            // has it too (as for the local store), so the tier never reveals a repository's
            // blobs under another's name.
            if same_repo || job.source.blob_size(&target, &digest).await.is_ok() {
                first = Some(found.response);
                source = Source::Shared;
            }
        }
    }
    if first.is_none() && requester == Requester::Client {
        if let Some(cluster) = &tiers.cluster {
            if let Ok(found) =
                BlobSource::blob(cluster.as_ref(), &target, &digest, BlobSpan::WHOLE).await
            {
                first = Some(found.response);
                source = Source::Peer;
            }
        }
    }
    let repo_key = job.repo_key.clone();
    let after = async move {
        let Some(landing) = landing else { return };
        let Landing::Started(blob) = landing.landing().await else {
            return;
        };
        let Some(shared) = tiers.shared else { return };
        match source {
            Source::Shared => {
                if let Err(GrowthFailure::Mismatch(_)) = blob.verified().await {
                    shared.delete_corrupt_blob(&digest).await;
                }
            }
            Source::Upstream => shared.spawn_write_through(blob, repo_key),
            // The owner writes it through.
            Source::Peer => {}
        }
    };
    tokio::join!(fill::run_from(job, lead, first), after);
}
