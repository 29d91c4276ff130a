//! Cluster single flight: every edge of `[cluster] peers` agrees, without talking, which
//! one owns the fill of a digest (rendezvous hashing: the peer with the highest
//! `blake3(peer URL, digest)` wins, so adding or removing an edge moves only its share).
//! A cold miss on a non-owner is filled from the owner over the registry API, so N edges
//! missing the same blob at once cost one upstream fetch; the owner's own single flight
//! joins them all.
//!
//! Peer requests carry [`PEER_HEADER`]: the owner never forwards them again (no loops, even
//! while peers' lists disagree) and does not count them as client pulls. A non-owner whose
//! owner does not answer within `peer_timeout` (down, slow, refusing) fills from the
//! upstream itself.
//!
//! Must not: verify bytes (the fill does, as for any source), or know the cache's tables.

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoTarget};
use crate::upstream::{BlobBody, BlobResponse, UpstreamError};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Marks a request one edge sends another for a fill.
pub const PEER_HEADER: &str = "x-sparkcr-edge-peer";

pub struct Cluster {
    peers: Vec<String>,
    self_url: String,
    timeout: Duration,
    client: reqwest::Client,
    /// Sent as the HTTP Basic password, when the edges require a token.
    token: Option<String>,
    metrics: Arc<Metrics>,
}

/// Rendezvous score of `peer` for `digest`.
fn score(peer: &str, digest: &Digest) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(peer.as_bytes());
    h.update(b"\0");
    h.update(digest.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The peer owning `digest`'s fill.
pub fn owner<'p>(peers: &'p [String], digest: &Digest) -> Option<&'p str> {
    peers
        .iter()
        .max_by_key(|p| (score(p, digest), p.as_str()))
        .map(String::as_str)
}

impl Cluster {
    /// `None` when no cluster is configured (fewer than two peers).
    pub fn from_config(
        cfg: &ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Cluster>>, String> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .user_agent(crate::upstream::USER_AGENT)
            .connect_timeout(cfg.peer_timeout.get())
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cluster: cannot build the peers' HTTP client: {e}"))?;
        Ok(Some(Arc::new(Cluster {
            peers: cfg
                .peers
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            self_url: cfg.self_url.trim_end_matches('/').to_string(),
            timeout: cfg.peer_timeout.get(),
            client,
            token: cfg
                .token_secret()
                .map_err(|e| format!("cluster.token_file: {e}"))?,
            metrics,
        })))
    }

    /// The peer that owns `digest`, unless it is this edge.
    pub fn remote_owner(&self, digest: &Digest) -> Option<&str> {
        owner(&self.peers, digest).filter(|o| *o != self.self_url)
    }

    /// The blob from its owner, or `None` (the caller then asks its upstream).
    pub async fn fetch_blob(&self, target: &RepoTarget, digest: &Digest) -> Option<BlobResponse> {
        let owner = self.remote_owner(digest)?;
        let url = format!(
            "{owner}/v2/{}/{}/blobs/{digest}",
            target.upstream, target.repo
        );
        let mut request = self.client.get(&url).header(PEER_HEADER, "1");
        if let Some(token) = &self.token {
            request = request.basic_auth("sparkcr-edge-peer", Some(token));
        }
        let sent = request.send();
        let fallback = |why: String| {
            self.metrics
                .tiers
                .peer_fills
                .with_label_values(&["fallback"])
                .inc();
            tracing::warn!(digest = %digest, owner, why, "the owning peer did not serve the blob; filling from the upstream");
            None
        };
        let response = match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::OK => r,
            Ok(Ok(r)) => return fallback(format!("it answered HTTP {}", r.status().as_u16())),
            Ok(Err(e)) => return fallback(format!("cannot reach it: {e}")),
            Err(_) => return fallback(format!("no answer within {}s", self.timeout.as_secs_f32())),
        };
        self.metrics
            .tiers
            .peer_fills
            .with_label_values(&["filled"])
            .inc();
        tracing::debug!(digest = %digest, owner, "filling from the owning peer");
        let size = response.content_length();
        let body = response.bytes_stream().map(|frame| {
            frame.map_err(|e| UpstreamError::Body(format!("from the owning peer: {e}")))
        });
        Some(BlobResponse {
            cache_status: None,
            size,
            start: 0,
            partial: false,
            body: BlobBody::from_stream(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_move_only_with_their_peer() {
        let three: Vec<String> = ["http://a:5000", "http://b:5000", "http://c:5000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let two = three[..2].to_vec();
        let mut per_peer = std::collections::HashMap::new();
        let mut moved = 0;
        for i in 0..600u32 {
            let d = Digest::of(&i.to_be_bytes());
            let o3 = owner(&three, &d).expect("an owner");
            *per_peer.entry(o3).or_insert(0) += 1;
            let o2 = owner(&two, &d).expect("an owner");
            if o3 != o2 {
                // Only digests owned by the removed peer move.
                assert_eq!(o3, "http://c:5000");
                moved += 1;
            }
        }
        for (p, n) in &per_peer {
            assert!((120..=280).contains(n), "{p} owns {n} of 600");
        }
        assert_eq!(moved, per_peer["http://c:5000"]);
    }
}
