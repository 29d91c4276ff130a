//! Prometheus metrics for every layer, defined in one place so names stay consistent.
//!
//! Owns: the metric registry and every metric's name, help text and labels; rendering the
//! text exposition format for `/metrics`. Each [`Metrics`] has its own registry (no global
//! state), so tests can run several daemons in one process.
//!
//! Must not: import any other module of this crate; layers record into these handles.
//! [`activity`] keeps what the status page needs beyond counters.

pub mod activity;
pub mod tiers;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use std::collections::BTreeMap;

pub struct Metrics {
    registry: Registry,
    // server / registry
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_response_bytes: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_total: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub tls_reloads: IntCounterVec,
    pub tls_cert_expiry: IntGauge,
    pub connections_rejected: IntCounterVec,
    // access
    pub auth_denials: IntCounterVec,
    pub private_content_refusals: IntCounter,
    // store
    pub store_bytes: IntGauge,
    pub store_budget_bytes: IntGauge,
    pub store_blobs: IntGauge,
    pub store_manifests: IntGauge,
    pub store_chunks: IntGauge,
    pub store_tags: IntGauge,
    pub store_evictions: IntCounter,
    pub store_evicted_bytes: IntCounter,
    pub store_expired: IntCounterVec,
    pub store_expired_bytes: IntCounter,
    pub store_errors: IntCounterVec,
    pub store_chunk_write_seconds: Histogram,
    // cache
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub served_bytes: IntCounterVec,
    pub singleflight_joins: IntCounter,
    pub stale_served: IntCounterVec,
    pub repo_confirmations: IntCounterVec,
    pub digest_mismatches: IntCounter,
    pub fills_in_flight: IntGauge,
    pub fill_resumes: IntCounter,
    pub fill_pieces_in_flight: IntGauge,
    pub fill_pieces: IntCounterVec,
    pub fill_pieces_spooled_bytes: IntCounter,
    pub fill_pieces_widened: IntCounter,
    pub policy_denials: IntCounter,
    pub policy_cooldowns: IntCounterVec,
    pub policy_signatures: IntCounterVec,
    pub policy_refusals: IntCounterVec,
    pub fill_pieces_wanted: IntCounter,
    pub fill_takeovers: IntCounter,
    pub fills_ended: IntCounterVec,
    pub reader_refetches: IntCounter,
    // upstream
    pub upstream_requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub upstream_token_fetches: IntCounterVec,
    pub upstream_rate_limit_waits: IntCounterVec,
    pub upstream_endpoint_requests: IntCounterVec,
    pub upstream_endpoint_up: IntGaugeVec,
    pub upstream_duration: HistogramVec,
    pub upstream_blob_connections_in_use: IntGaugeVec,
    pub upstream_quota_remaining: IntGaugeVec,
    pub upstream_quota_limit: IntGaugeVec,
    pub upstream_quota_window_seconds: IntGaugeVec,
    pub upstream_blob_slot_waits: IntCounterVec,
    pub upstream_rate_limited_seconds: CounterVec,
    pub build_info: IntGaugeVec,
    // push (issue 11)
    pub push_bytes: IntCounterVec,
    pub uploads_in_progress: IntGauge,
    pub push_failures: IntCounterVec,
    pub pushes_completed: IntCounterVec,
    /// Bytes sent to clients that did not cross the WAN for them, by upstream.
    pub saved_bytes: IntCounterVec,
    /// Upstream requests a hit or a joined fill avoided, by upstream.
    pub saved_requests: IntCounterVec,
    /// Clients served by another request's fill, by upstream.
    pub collapsed_clients: IntCounterVec,
    /// Audit records by `outcome`: `written` to the audit file, or `dropped` (queue full,
    /// write failed).
    pub audit_records: IntCounterVec,
    /// Upstream health, recent errors, bytes per repository, per-minute snapshots.
    pub activity: activity::Activity,
    /// The shared tier and cluster single flight.
    pub tiers: tiers::TierMetrics,
}

/// What the edge saved the WAN: bytes sent that did not cross it, upstream requests
/// avoided, and clients collapsed onto another client's fill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Savings {
    pub bytes: u64,
    pub requests: u64,
    pub collapsed: u64,
}

impl Savings {
    pub fn add(&mut self, other: &Savings) {
        self.bytes += other.bytes;
        self.requests += other.requests;
        self.collapsed += other.collapsed;
    }

    /// What was added since `earlier` (never below zero).
    pub fn since(&self, earlier: &Savings) -> Savings {
        Savings {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            requests: self.requests.saturating_sub(earlier.requests),
            collapsed: self.collapsed.saturating_sub(earlier.collapsed),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Savings::default()
    }
}

/// Each series of a counter labelled by `upstream`, as (upstream, value).
fn by_upstream(c: &IntCounterVec) -> impl Iterator<Item = (String, u64)> {
    use prometheus::core::Collector;
    c.collect()
        .into_iter()
        .flat_map(|mf| mf.get_metric().to_vec())
        .filter_map(|m| {
            let upstream = m.get_label().iter().find(|l| l.name() == "upstream")?;
            Some((
                upstream.value().to_string(),
                m.get_counter().get_value() as u64,
            ))
        })
}

/// The sum of a counter over all its label values.
fn sum_of(c: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric definition is valid");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("sparkcr_edge".into()), None).expect("valid prefix");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request head to response end, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 120.0,
            ]),
            &["route"],
        )
        .expect("valid histogram");
        r.register(Box::new(http_duration.clone())).expect("unique");
        let store_chunk_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "store_chunk_write_seconds",
                "Time to write, fsync and rename one chunk file.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("valid histogram");
        r.register(Box::new(store_chunk_write_seconds.clone()))
            .expect("unique");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid gauge");
        r.register(Box::new(build_info.clone())).expect("unique");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_request_duration_seconds",
                "Time from sending a request to an upstream to its response head, by upstream.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream"],
        )
        .expect("valid histogram");
        r.register(Box::new(upstream_duration.clone()))
            .expect("unique");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let tiers = tiers::TierMetrics::new(&r);
        let m = Metrics {
            tiers,
            push_bytes: counter_vec(
                &r,
                "push_bytes_total",
                "Blob bytes pushed through the edge to an upstream, by upstream.",
                &["upstream"],
            ),
            uploads_in_progress: gauge(
                &r,
                "uploads_in_progress",
                "Blob upload sessions open on the edge.",
            ),
            push_failures: counter_vec(
                &r,
                "push_failures_total",
                "Pushes that failed, by reason (digest, too_large, upstream, client, expired, store, limit).",
                &["reason"],
            ),
            pushes_completed: counter_vec(
                &r,
                "pushes_completed_total",
                "Blobs and manifests pushed through the edge, by kind (blob, mount, manifest).",
                &["kind"],
            ),
            saved_bytes: counter_vec(
                &r,
                "saved_bytes_total",
                "Bytes sent to clients from the cache or from another client's fill: bytes that did not cross the WAN for them, by upstream.",
                &["upstream"],
            ),
            saved_requests: counter_vec(
                &r,
                "saved_requests_total",
                "Upstream requests avoided: manifest and blob answers from the cache or from another client's fill, by upstream.",
                &["upstream"],
            ),
            collapsed_clients: counter_vec(
                &r,
                "collapsed_clients_total",
                "Clients served by another client's blob fill instead of a fetch of their own, by upstream.",
                &["upstream"],
            ),
            audit_records: counter_vec(
                &r,
                "audit_records_total",
                "Audit trail records by outcome: written to the audit file, or dropped (queue full or a failed write)",
                &["outcome"],
            ),
            http_requests: counter_vec(
                &r,
                "http_requests_total",
                "HTTP requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration,
            http_response_bytes: counter_vec(
                &r,
                "http_response_bytes_total",
                "Response body bytes sent, by route.",
                &["route"],
            ),
            connections_open: gauge(&r, "connections_open", "Client connections currently open."),
            connections_total: counter_vec(
                &r,
                "connections_total",
                "Client connections accepted, by listener kind.",
                &["kind"],
            ),
            tls_handshake_failures: counter(
                &r,
                "tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            ),
            tls_reloads: counter_vec(
                &r,
                "tls_reloads_total",
                "Certificate reloads on SIGHUP, by result.",
                &["result"],
            ),
            tls_cert_expiry: gauge(
                &r,
                "tls_cert_expiry_timestamp_seconds",
                "When the served certificate expires, in seconds since 1970 (0 without HTTPS).",
            ),
            connections_rejected: counter_vec(
                &r,
                "connections_rejected_total",
                "Client connections closed early, by reason (limit: refused at server.max_connections; room: an idle connection of the address holding the most, closed at the cap to give another address a slot; silent: nothing received within server.header_read_timeout).",
                &["reason"],
            ),
            auth_denials: counter_vec(
                &r,
                "auth_denials_total",
                "Requests refused by access control, by reason (network, no_credentials, bad_credentials, scope, rate_limited).",
                &["reason"],
            ),
            private_content_refusals: counter(
                &r,
                "private_content_refusals_total",
                "Cache hits refused because the content was only fetched through other, private upstreams.",
            ),
            store_bytes: gauge(
                &r,
                "store_bytes",
                "Bytes of blob chunks and manifests in the store.",
            ),
            store_budget_bytes: gauge(
                &r,
                "store_budget_bytes",
                "The store's byte budget (storage.max_size).",
            ),
            store_blobs: gauge(&r, "store_blobs", "Visible blobs in the store."),
            store_manifests: gauge(&r, "store_manifests", "Manifests in the store."),
            store_chunks: gauge(&r, "store_chunks", "Chunk files in the store."),
            store_tags: gauge(&r, "store_tags", "Cached tags."),
            store_evictions: counter(
                &r,
                "store_evictions_total",
                "Items evicted to stay under the byte budget.",
            ),
            store_evicted_bytes: counter(
                &r,
                "store_evicted_bytes_total",
                "Bytes evicted to stay under the byte budget.",
            ),
            store_expired: counter_vec(
                &r,
                "store_expired_total",
                "Items removed by the TTL sweep, by kind.",
                &["kind"],
            ),
            store_expired_bytes: counter(
                &r,
                "store_expired_bytes_total",
                "Bytes removed by the TTL sweep.",
            ),
            store_errors: counter_vec(
                &r,
                "store_errors_total",
                "Store operations that failed, by operation.",
                &["op"],
            ),
            store_chunk_write_seconds,
            cache_hits: counter_vec(
                &r,
                "cache_hits_total",
                "Requests answered from the store, by kind.",
                &["kind"],
            ),
            cache_misses: counter_vec(
                &r,
                "cache_misses_total",
                "Requests that needed the upstream, by kind.",
                &["kind"],
            ),
            served_bytes: counter_vec(
                &r,
                "served_bytes_total",
                "Blob bytes sent to clients, by source (cache, upstream).",
                &["source"],
            ),
            singleflight_joins: counter(
                &r,
                "singleflight_joins_total",
                "Requests that joined a blob fill already under way.",
            ),
            stale_served: counter_vec(
                &r,
                "stale_served_total",
                "Answers served from cache because the upstream failed, by kind.",
                &["kind"],
            ),
            repo_confirmations: counter_vec(
                &r,
                "repo_confirmations_total",
                "Stored content requested under a repository it was never seen under, checked with the upstream first, by kind.",
                &["kind"],
            ),
            digest_mismatches: counter(
                &r,
                "digest_mismatches_total",
                "Upstream content whose sha256 did not match its digest.",
            ),
            fills_in_flight: gauge(
                &r,
                "fills_in_flight",
                "Blob fills from upstreams under way.",
            ),
            fill_resumes: counter(
                &r,
                "fill_resumes_total",
                "Blob fills resumed with a Range request after a broken upstream connection.",
            ),
            fill_pieces_in_flight: gauge(
                &r,
                "fill_pieces_in_flight",
                "Ranged pieces of large blobs being fetched from upstreams now.",
            ),
            fill_pieces: counter_vec(
                &r,
                "fill_pieces_total",
                "Ranged pieces of large blobs fetched, by result (ok; retried: resumed after a break; failed).",
                &["result"],
            ),
            fill_pieces_widened: counter(
                &r,
                "fill_pieces_widened_total",
                "Times a pieced fill added pieces in flight because the ones added before raised the blob's rate.",
            ),
            policy_denials: counter(
                &r,
                "policy_denials_total",
                "Pulls refused with 403 because a [[policy]] block denies the repository.",
            ),
            policy_cooldowns: counter_vec(
                &r,
                "policy_cooldowns_total",
                "Cooldown decisions of [[policy]] blocks, by decision (held_back: a tag served its earlier digest; refused: closed mode or a held-back digest asked by digest; released: an admin released a digest early).",
                &["decision"],
            ),
            policy_signatures: counter_vec(
                &r,
                "policy_signature_checks_total",
                "Signature checks of [[policy]] require_signature (cached verdicts not counted), by verdict (verified, unsigned, bad_signature, wrong_digest, lookup_failed).",
                &["verdict"],
            ),
            policy_refusals: counter_vec(
                &r,
                "policy_refusals_total",
                "Pulls refused with 403 by a [[policy]] block, by check (deny, cooldown, signature), upstream and block (both from the config).",
                &["check", "upstream", "block"],
            ),
            fill_pieces_wanted: counter(
                &r,
                "fill_pieces_wanted_total",
                "Pieces started out of order because a client waited at an offset inside them.",
            ),
            fill_pieces_spooled_bytes: counter(
                &r,
                "fill_pieces_spooled_bytes_total",
                "Bytes of ranged pieces that arrived ahead of the blob's prefix and waited on a spool file (beyond the 8 MiB held in memory per fill).",
            ),
            fill_takeovers: counter(
                &r,
                "fill_takeovers_total",
                "Blob fills taken over by a waiting client because they delivered no new bytes for cache.follower_stall.",
            ),
            fills_ended: counter_vec(
                &r,
                "fills_ended_total",
                "Blob fills that ended, by where the bytes were kept (stored, spooled, memory), failed, or abandoned (a blob not being stored that nobody read any more).",
                &["kept"],
            ),
            reader_refetches: counter(
                &r,
                "reader_refetches_total",
                "Clients of a blob that could not be kept on disk that fell behind its in-memory window and fetched (and verified) the rest on their own.",
            ),
            upstream_requests: counter_vec(
                &r,
                "upstream_requests_total",
                "Requests sent to upstreams, by upstream, kind and status.",
                &["upstream", "kind", "status"],
            ),
            upstream_bytes: counter_vec(
                &r,
                "upstream_bytes_total",
                "Body bytes received from upstreams.",
                &["upstream"],
            ),
            upstream_token_fetches: counter_vec(
                &r,
                "upstream_token_fetches_total",
                "Bearer tokens fetched from upstream auth servers, by result.",
                &["upstream", "result"],
            ),
            upstream_rate_limit_waits: counter_vec(
                &r,
                "upstream_rate_limit_waits_total",
                "Upstream 429s (and 503s with Retry-After) waited out and retried, by upstream.",
                &["upstream"],
            ),
            upstream_endpoint_requests: counter_vec(
                &r,
                "upstream_endpoint_requests_total",
                "Requests sent to each endpoint of an upstream, by result: ok, or failed (connect error, timeout, TLS, 5xx, 429; the next endpoint was tried when there was one).",
                &["upstream", "endpoint", "result"],
            ),
            upstream_endpoint_up: gauge_vec(
                &r,
                "upstream_endpoint_up",
                "1 while an upstream endpoint is in use, 0 while it is skipped after a failure (probed in the background).",
                &["upstream", "endpoint"],
            ),
            upstream_duration,
            upstream_blob_connections_in_use: gauge_vec(
                &r,
                "upstream_blob_connections_in_use",
                "Blob downloads under way from an upstream, each holding one of its max_connections slots (and one connection), by upstream.",
                &["upstream"],
            ),
            upstream_quota_remaining: gauge_vec(
                &r,
                "upstream_quota_remaining",
                "Requests left in the upstream's pull quota, as its last answer said (RateLimit-Remaining; Docker Hub's ratelimit-remaining), by upstream.",
                &["upstream"],
            ),
            upstream_quota_limit: gauge_vec(
                &r,
                "upstream_quota_limit",
                "Requests the upstream's pull quota allows per window, as its last answer said (RateLimit-Limit), by upstream.",
                &["upstream"],
            ),
            upstream_quota_window_seconds: gauge_vec(
                &r,
                "upstream_quota_window_seconds",
                "The length of the upstream's quota window in seconds (the w= of Docker Hub's headers), by upstream.",
                &["upstream"],
            ),
            upstream_blob_slot_waits: counter_vec(
                &r,
                "upstream_blob_slot_waits_total",
                "Blob downloads that waited for a free max_connections slot of their upstream, by upstream.",
                &["upstream"],
            ),
            upstream_rate_limited_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "upstream_rate_limited_seconds_total",
                        "Time blob downloads from an upstream spent held back by max_rate (its own or [outbound]'s), summed over downloads, by upstream.",
                    ),
                    &["upstream"],
                )
                .expect("metric definition is valid");
                r.register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
            build_info,
            activity: activity::Activity::default(),
            registry: r,
        };
        m.register_known_labels();
        m
    }

    /// Every label value the code is known to use, created at zero, so that a fresh
    /// daemon's `/metrics` lists each series (dashboards, alerts and `grep` find them
    /// before the first event). Keep in step with the callers' label values.
    fn register_known_labels(&self) {
        let zero = |v: &IntCounterVec, values: &[&str]| {
            for value in values {
                v.with_label_values(&[value]).inc_by(0);
            }
        };
        zero(&self.connections_total, &["http", "https"]);
        zero(&self.tls_reloads, &["ok", "error"]);
        zero(&self.connections_rejected, &["limit", "room"]);
        zero(
            &self.auth_denials,
            &[
                "network",
                "no_credentials",
                "bad_credentials",
                "scope",
                "rate_limited",
            ],
        );
        zero(&self.store_expired, &["blob", "manifest", "tag"]);
        zero(
            &self.store_errors,
            &[
                "open",
                "read",
                "put_manifest",
                "put_tag",
                "corrupt_record",
                "verify_corrupt",
            ],
        );
        zero(&self.cache_hits, &["blob", "manifest"]);
        zero(&self.cache_misses, &["blob", "manifest"]);
        zero(&self.served_bytes, &["cache", "upstream"]);
        zero(&self.stale_served, &["manifest", "tags"]);
        zero(
            &self.fills_ended,
            &["stored", "spooled", "memory", "failed", "abandoned"],
        );
        zero(&self.fill_pieces, &["ok", "retried", "failed"]);
    }

    /// Body bytes received from each upstream since start (`upstream_bytes_total`).
    pub fn upstream_bytes_by(&self) -> std::collections::HashMap<String, u64> {
        by_upstream(&self.upstream_bytes).collect()
    }

    /// The counters the status page charts, summed over their labels, now.
    pub fn counter_sample(&self) -> activity::CounterSample {
        activity::CounterSample {
            at: activity::unix_now(),
            hits: sum_of(&self.cache_hits),
            misses: sum_of(&self.cache_misses),
            served_cache_bytes: self.served_bytes.with_label_values(&["cache"]).get(),
            served_upstream_bytes: self.served_bytes.with_label_values(&["upstream"]).get(),
            upstream_bytes: sum_of(&self.upstream_bytes),
        }
    }

    /// The text exposition format of every metric.
    /// A manifest or blob answer for `upstream` and what the cache did for it (`hit`,
    /// `stale`, `quota-reserve`, `collapsed`, …), `bytes` sent: an answer the cache gave or
    /// another client's fill carried counts as saved.
    pub fn count_saving(&self, upstream: &str, cache: &str, bytes: u64) {
        let collapsed = cache == "collapsed";
        if !(collapsed || matches!(cache, "hit" | "stale" | "quota-reserve")) {
            return;
        }
        self.saved_bytes
            .with_label_values(&[upstream])
            .inc_by(bytes);
        self.saved_requests.with_label_values(&[upstream]).inc();
        if collapsed {
            self.collapsed_clients.with_label_values(&[upstream]).inc();
        }
    }

    /// What the saving counters hold now (since start), per upstream.
    pub fn savings_by_upstream(&self) -> Vec<(String, Savings)> {
        let mut by: BTreeMap<String, Savings> = BTreeMap::new();
        type Field = fn(&mut Savings) -> &mut u64;
        let fields: [(&IntCounterVec, Field); 3] = [
            (&self.saved_bytes, |s| &mut s.bytes),
            (&self.saved_requests, |s| &mut s.requests),
            (&self.collapsed_clients, |s| &mut s.collapsed),
        ];
        for (vec, field) in fields {
            for (upstream, n) in by_upstream(vec) {
                *field(by.entry(upstream).or_default()) = n;
            }
        }
        by.into_iter().collect()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Every metric family name exported (with the `sparkcr_edge_` prefix), including
    /// labelled families that have no series yet.
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: Vec<&dyn Collector> = vec![
            &self.http_requests,
            &self.http_duration,
            &self.http_response_bytes,
            &self.connections_open,
            &self.connections_total,
            &self.tls_handshake_failures,
            &self.tls_reloads,
            &self.tls_cert_expiry,
            &self.connections_rejected,
            &self.auth_denials,
            &self.private_content_refusals,
            &self.store_bytes,
            &self.store_budget_bytes,
            &self.store_blobs,
            &self.store_manifests,
            &self.store_chunks,
            &self.store_tags,
            &self.store_evictions,
            &self.store_evicted_bytes,
            &self.store_expired,
            &self.store_expired_bytes,
            &self.store_errors,
            &self.store_chunk_write_seconds,
            &self.cache_hits,
            &self.cache_misses,
            &self.served_bytes,
            &self.singleflight_joins,
            &self.stale_served,
            &self.digest_mismatches,
            &self.fills_in_flight,
            &self.fill_resumes,
            &self.fill_pieces_in_flight,
            &self.fill_pieces,
            &self.fill_pieces_spooled_bytes,
            &self.fill_pieces_widened,
            &self.policy_denials,
            &self.policy_cooldowns,
            &self.policy_signatures,
            &self.policy_refusals,
            &self.fill_pieces_wanted,
            &self.fill_takeovers,
            &self.fills_ended,
            &self.reader_refetches,
            &self.upstream_requests,
            &self.upstream_bytes,
            &self.upstream_token_fetches,
            &self.upstream_duration,
            &self.upstream_blob_connections_in_use,
            &self.upstream_quota_remaining,
            &self.upstream_quota_limit,
            &self.upstream_quota_window_seconds,
            &self.upstream_blob_slot_waits,
            &self.upstream_rate_limited_seconds,
            &self.build_info,
            &self.push_bytes,
            &self.uploads_in_progress,
            &self.push_failures,
            &self.audit_records,
            &self.saved_bytes,
            &self.saved_requests,
            &self.collapsed_clients,
            &self.pushes_completed,
            &self.tiers.shared_lookups,
            &self.tiers.shared_bytes,
            &self.tiers.shared_errors,
            &self.tiers.shared_uploads,
            &self.tiers.shared_catch_up,
            &self.tiers.peer_fills,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| format!("sparkcr_edge_{}", d.fq_name))
            .chain(
                self.registry
                    .gather()
                    .iter()
                    .map(|mf| mf.name().to_string()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    /// Every `expr` in the shipped Grafana dashboard.
    fn dashboard_queries() -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../grafana/sparkcr-edge.json"))
                .expect("the dashboard is JSON");
        let mut out = Vec::new();
        walk(&dash, &mut out);
        out
    }

    #[test]
    fn every_metric_in_the_dashboard_is_exported() {
        let names = super::Metrics::new().family_names();
        let queries = dashboard_queries();
        assert!(queries.len() >= 15, "{queries:?}");
        let mut used = 0;
        for q in &queries {
            let mut rest = q.as_str();
            while let Some(i) = rest.find("sparkcr_edge_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| names.iter().any(|n| n == base))
                    .unwrap_or(name);
                assert!(
                    names.iter().any(|n| n == family),
                    "the dashboard query {q:?} uses {name}, which the daemon does not export"
                );
                used += 1;
                rest = &tail[end..];
            }
        }
        assert!(used >= queries.len());
    }
    #[test]
    fn renders_with_prefix_and_build_info() {
        let m = super::Metrics::new();
        m.http_requests
            .with_label_values(&["ping", "GET", "200"])
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "sparkcr_edge_http_requests_total{method=\"GET\",route=\"ping\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("sparkcr_edge_build_info{version="));
    }

    #[test]
    fn counters_of_rare_events_exist_at_zero() {
        let text = super::Metrics::new().render();
        for series in [
            "sparkcr_edge_stale_served_total{kind=\"manifest\"} 0",
            "sparkcr_edge_auth_denials_total{reason=\"bad_credentials\"} 0",
            "sparkcr_edge_connections_rejected_total{reason=\"limit\"} 0",
            "sparkcr_edge_tls_reloads_total{result=\"error\"} 0",
            "sparkcr_edge_fills_ended_total{kept=\"failed\"} 0",
            "sparkcr_edge_fill_pieces_total{result=\"failed\"} 0",
            "sparkcr_edge_fill_pieces_spooled_bytes_total 0",
            "sparkcr_edge_fill_pieces_widened_total 0",
            "sparkcr_edge_policy_denials_total 0",
            "sparkcr_edge_fill_pieces_wanted_total 0",
            "sparkcr_edge_private_content_refusals_total 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
