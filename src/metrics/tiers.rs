//! Metrics of the shared tier (an S3-compatible object store several edges share) and of
//! cluster single flight (fills served by the peer edge that owns a digest).
//!
//! Owns: these metrics' names, help texts and labels. Must not: import any other module
//! of this crate.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct TierMetrics {
    /// Lookups in the shared tier, by kind (`blob`, `manifest`) and outcome (`hit`, `miss`).
    pub shared_lookups: IntCounterVec,
    /// Bytes moved, by direction (`read`, `written`).
    pub shared_bytes: IntCounterVec,
    /// Failed operations, by operation (`get`, `head`, `put`, `upload`, `delete`, `probe`;
    /// catch-up's count as `head`, `put`, `upload`).
    pub shared_errors: IntCounterVec,
    /// Objects whose bytes did not match their digest (deleted, fetched again).
    pub shared_corrupt: IntCounter,
    /// Write-through uploads ended, by outcome (`completed`, `aborted`, `failed`).
    pub shared_uploads: IntCounterVec,
    /// Time from the blob's verification to the completed upload.
    pub shared_upload_seconds: Histogram,
    /// 1 while the shared tier answers, 0 while it is down.
    pub shared_up: IntGauge,
    /// Writes the shared tier missed, remembered for catch-up (`catch_up = true`).
    pub shared_catch_up_pending: IntGauge,
    /// Missed writes made up for or given up, by outcome (`uploaded`; `skipped`: already in
    /// the tier, or no longer in the local store; `dropped`: forgotten over `catch_up_max`;
    /// `failed`: the local copy did not match its digest or could not be read, or the tier
    /// failed on it three times).
    pub shared_catch_up: IntCounterVec,
    /// Blob fills this edge took from the peer that owns the digest, by outcome (`filled`,
    /// `fallback`: the owner did not answer in time, so this edge asked the upstream).
    pub peer_fills: IntCounterVec,
    /// Blob requests this edge answered for a peer edge (not counted as client pulls).
    pub peer_requests_served: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl TierMetrics {
    pub fn new(r: &Registry) -> Self {
        let shared_upload_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "shared_upload_seconds",
                "Write-through to the shared tier: time from the start of the fill to the completed upload.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0]),
        )
        .expect("valid histogram");
        r.register(Box::new(shared_upload_seconds.clone()))
            .expect("unique");
        let shared_corrupt = IntCounter::new(
            "shared_corrupt_total",
            "Shared-tier objects whose sha256 did not match their digest (deleted and fetched again).",
        )
        .expect("valid counter");
        r.register(Box::new(shared_corrupt.clone()))
            .expect("unique");
        let shared_up = IntGauge::new(
            "shared_up",
            "1 while the shared tier answers, 0 while it is down (pulls then use local + upstream).",
        )
        .expect("valid gauge");
        r.register(Box::new(shared_up.clone())).expect("unique");
        let shared_catch_up_pending = IntGauge::new(
            "shared_catch_up_pending",
            "Writes the shared tier missed while down or failing, remembered for catch-up (storage.shared.catch_up).",
        )
        .expect("valid gauge");
        r.register(Box::new(shared_catch_up_pending.clone()))
            .expect("unique");
        let peer_requests_served = IntCounter::new(
            "peer_requests_served_total",
            "Blob requests answered for a peer edge of the cluster.",
        )
        .expect("valid counter");
        r.register(Box::new(peer_requests_served.clone()))
            .expect("unique");
        let m = TierMetrics {
            shared_lookups: counter_vec(
                r,
                "shared_lookups_total",
                "Lookups in the shared tier after a local miss, by kind and outcome (hit, miss).",
                &["kind", "outcome"],
            ),
            shared_bytes: counter_vec(
                r,
                "shared_bytes_total",
                "Bytes read from and written to the shared tier, by direction.",
                &["direction"],
            ),
            shared_errors: counter_vec(
                r,
                "shared_errors_total",
                "Shared-tier operations that failed (the pull went on without the shared tier), by operation.",
                &["op"],
            ),
            shared_corrupt,
            shared_uploads: counter_vec(
                r,
                "shared_uploads_total",
                "Write-through uploads to the shared tier, by outcome.",
                &["outcome"],
            ),
            shared_upload_seconds,
            shared_up,
            shared_catch_up_pending,
            shared_catch_up: counter_vec(
                r,
                "shared_catch_up_total",
                "Writes the shared tier missed, made up for from the local store or given up, by outcome (uploaded, skipped, dropped, failed).",
                &["outcome"],
            ),
            peer_fills: counter_vec(
                r,
                "peer_fills_total",
                "Blob fills taken from the peer edge owning the digest, by outcome (filled, fallback).",
                &["outcome"],
            ),
            peer_requests_served,
        };
        for (kind, outcome) in [
            ("blob", "hit"),
            ("blob", "miss"),
            ("manifest", "hit"),
            ("manifest", "miss"),
        ] {
            m.shared_lookups.with_label_values(&[kind, outcome]);
        }
        for d in ["read", "written"] {
            m.shared_bytes.with_label_values(&[d]);
        }
        for op in ["get", "head", "put", "upload", "delete", "probe"] {
            m.shared_errors.with_label_values(&[op]);
        }
        for o in ["completed", "aborted", "failed"] {
            m.shared_uploads.with_label_values(&[o]);
        }
        for o in ["uploaded", "skipped", "dropped", "failed"] {
            m.shared_catch_up.with_label_values(&[o]);
        }
        for o in ["filled", "fallback"] {
            m.peer_fills.with_label_values(&[o]);
        }
        m
    }
}
