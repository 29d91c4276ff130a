//! The ordered endpoints of one upstream (`url`, then `urls`) and their health.
//!
//! Owns: which endpoints a request tries and in what order (those in use, in configured
//! order; a blob resume tries first the endpoint that sent the blob; when every endpoint
//! is down, all of them in order), marking an endpoint down after a failure and up again
//! after a success or a background probe, the per-endpoint metrics
//! (`upstream_endpoint_requests_total`, `upstream_endpoint_up`) and the log lines when an
//! endpoint goes down or comes back.
//!
//! Must not: send requests (the caller does, and the prober in `mod.rs` pings), or know
//! about auth or registry paths.

use crate::metrics::Metrics;
use crate::oci::Digest;
use prometheus::{IntCounter, IntGauge};
use reqwest::Url;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Blobs whose answering endpoint is remembered for resumes (oldest forgotten first).
const PINNED_BLOBS: usize = 4096;

pub(crate) struct Endpoint {
    /// The API root, ending in `/`.
    pub url: Url,
    down: AtomicBool,
    up_gauge: IntGauge,
    ok: IntCounter,
    failed: IntCounter,
}

pub(crate) struct Endpoints {
    upstream: String,
    list: Vec<Endpoint>,
    /// digest → index of the endpoint that answered its last blob GET.
    pinned: Mutex<HashMap<Digest, usize>>,
}

impl Endpoints {
    pub(crate) fn new(upstream: &str, urls: Vec<Url>, metrics: &Metrics) -> Self {
        let list = urls
            .into_iter()
            .map(|url| {
                let label = url.as_str().trim_end_matches('/').to_string();
                let up_gauge = metrics
                    .upstream_endpoint_up
                    .with_label_values(&[upstream, &label]);
                up_gauge.set(1);
                let requests = &metrics.upstream_endpoint_requests;
                Endpoint {
                    ok: requests.with_label_values(&[upstream, &label, "ok"]),
                    failed: requests.with_label_values(&[upstream, &label, "failed"]),
                    url,
                    down: AtomicBool::new(false),
                    up_gauge,
                }
            })
            .collect();
        Endpoints {
            upstream: upstream.to_string(),
            list,
            pinned: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn get(&self, i: usize) -> &Endpoint {
        &self.list[i]
    }

    pub(crate) fn is_down(&self, i: usize) -> bool {
        self.list[i].down.load(Ordering::Relaxed)
    }

    /// Indexes to try, in order: `prefer` first (when in use), then the others in use;
    /// when none is in use, every endpoint in configured order.
    pub(crate) fn order(&self, prefer: Option<usize>) -> Vec<usize> {
        let mut up: Vec<usize> = (0..self.list.len()).filter(|&i| !self.is_down(i)).collect();
        if up.is_empty() {
            return (0..self.list.len()).collect();
        }
        if let Some(p) = prefer.filter(|p| up.contains(p)) {
            up.retain(|&i| i != p);
            up.insert(0, p);
        }
        up
    }

    /// A usable answer from endpoint `i`.
    pub(crate) fn succeeded(&self, i: usize) {
        let e = &self.list[i];
        e.ok.inc();
        self.mark_up(i, "it answered");
    }

    /// A failure at endpoint `i` (`why` is a plain sentence): it is skipped from now on
    /// until it answers a probe (only when there are others to use).
    pub(crate) fn failed(&self, i: usize, why: &str) {
        let e = &self.list[i];
        e.failed.inc();
        if self.list.len() > 1 && !e.down.swap(true, Ordering::Relaxed) {
            e.up_gauge.set(0);
            tracing::warn!(
                upstream = %self.upstream,
                endpoint = %e.url,
                "upstream endpoint is down ({why}); using the next ones and probing it in the background"
            );
        }
    }

    /// Endpoint `i` is usable again.
    pub(crate) fn mark_up(&self, i: usize, why: &str) {
        let e = &self.list[i];
        if e.down.swap(false, Ordering::Relaxed) {
            e.up_gauge.set(1);
            tracing::info!(upstream = %self.upstream, endpoint = %e.url, "upstream endpoint is back ({why})");
        }
    }

    /// The endpoints skipped now, as URLs.
    pub(crate) fn down(&self) -> Vec<String> {
        (0..self.list.len())
            .filter(|&i| self.is_down(i))
            .map(|i| self.list[i].url.as_str().trim_end_matches('/').to_string())
            .collect()
    }

    /// Remembers that endpoint `i` sent blob `digest` (for resumes).
    pub(crate) fn pin(&self, digest: &Digest, i: usize) {
        if self.list.len() < 2 {
            return;
        }
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if pinned.len() >= PINNED_BLOBS && !pinned.contains_key(digest) {
            pinned.clear();
        }
        pinned.insert(*digest, i);
    }

    /// The endpoint that sent blob `digest` last, if remembered.
    pub(crate) fn pinned(&self, digest: &Digest) -> Option<usize> {
        if self.list.len() < 2 {
            return None;
        }
        let pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        pinned.get(digest).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Endpoints {
        let urls = (0..n)
            .map(|i| Url::parse(&format!("http://e{i}.test/")).expect("url"))
            .collect();
        Endpoints::new("up.test", urls, &Metrics::new())
    }

    #[test]
    fn order_skips_down_endpoints_and_prefers_the_pinned_one() {
        let e = endpoints(3);
        assert_eq!(e.order(None), vec![0, 1, 2]);
        e.failed(0, "refused");
        assert_eq!(e.order(None), vec![1, 2]);
        assert_eq!(e.down(), vec!["http://e0.test".to_string()]);
        assert_eq!(e.order(Some(2)), vec![2, 1]);
        assert_eq!(
            e.order(Some(0)),
            vec![1, 2],
            "a down endpoint is not preferred"
        );
        e.failed(1, "refused");
        e.failed(2, "refused");
        assert_eq!(e.order(None), vec![0, 1, 2], "all down: try all");
        e.succeeded(1);
        assert_eq!(e.order(None), vec![1]);
        let d: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
            .parse()
            .expect("digest");
        assert_eq!(e.pinned(&d), None);
        e.pin(&d, 2);
        assert_eq!(e.pinned(&d), Some(2));
    }

    #[test]
    fn one_endpoint_is_never_skipped() {
        let e = endpoints(1);
        e.failed(0, "refused");
        assert!(!e.is_down(0));
        assert_eq!(e.order(None), vec![0]);
    }
}
