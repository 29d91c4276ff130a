//! The operator's status report behind `/status` (HTML, `status_page.rs`) and
//! `/status.json`: version and uptime, store use against the budget and disk free, hit
//! ratio and bytes over the last hour and day, WAN bytes saved, fills under way, upstream
//! health, top repositories and recent errors; and the sampler that snapshots the counters
//! every minute for the charts.
//!
//! Owns: gathering that report from the metrics, the cache's read-only views and the
//! store's totals. Must not: change anything it reads, or show a secret (no credentials,
//! no query strings, no URL user info).

use super::App;
use crate::cache::FillProgress;
use crate::metrics::activity::{CounterSample, RecentDenial, RecentError};
use crate::metrics::Metrics;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the sampler snapshots the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Repositories listed on the page.
const TOP_REPOS: usize = 10;
/// Days before the served certificate expires that the page and `/readyz` warn.
pub const CERT_WARN_DAYS: i64 = 30;

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub version: String,
    /// Unix seconds.
    pub now: u64,
    pub started_at: u64,
    pub uptime_seconds: u64,
    pub store: StoreStatus,
    pub last_hour: Window,
    pub last_day: Window,
    /// Blob bytes sent from the store since start: bytes that did not cross the WAN.
    pub wan_bytes_saved: u64,
    /// What the edge saved the WAN, kept in the store: today, 7 days, since the first
    /// saving, per upstream, and per day over 30 days.
    pub savings: crate::store::SavingsSummary,
    /// Per-minute bytes over the last hour, oldest first.
    pub chart_hour: Vec<ChartPoint>,
    /// Per-hour bytes over the last day, oldest first.
    pub chart_day: Vec<ChartPoint>,
    pub fills: Vec<FillProgress>,
    /// Ranged pieces of large blobs being fetched now, all fills together.
    pub fill_pieces_in_flight: i64,
    pub singleflight_joins: u64,
    pub upstreams: Vec<UpstreamStatus>,
    pub top_repositories: Vec<RepoBytes>,
    pub recent_errors: Vec<RecentError>,
    /// Pulls `[[policy]]` blocks refused, newest first.
    pub recent_denials: Vec<RecentDenial>,
    pub tls: Option<CertStatus>,
    /// Things an operator should act on, as sentences.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    pub used_bytes: u64,
    pub budget_bytes: u64,
    pub blobs: i64,
    pub manifests: i64,
    /// Bytes free on the file system that holds the store (`None` when it cannot be read).
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub evictions: u64,
    pub evicted_bytes: u64,
}

/// Counter deltas over a window ending now.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// How long the window really is (shorter than asked right after start).
    pub seconds: u64,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); `None` without requests.
    pub hit_ratio: Option<f64>,
    pub served_cache_bytes: u64,
    pub served_upstream_bytes: u64,
    pub upstream_bytes: u64,
}

impl Window {
    fn from_delta(d: &CounterSample, seconds: u64) -> Window {
        let total = d.hits + d.misses;
        Window {
            seconds,
            hits: d.hits,
            misses: d.misses,
            hit_ratio: (total > 0).then(|| d.hits as f64 / total as f64),
            served_cache_bytes: d.served_cache_bytes,
            served_upstream_bytes: d.served_upstream_bytes,
            upstream_bytes: d.upstream_bytes,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct ChartPoint {
    /// Unix seconds at the end of the interval.
    pub at: u64,
    pub served_cache_bytes: u64,
    pub served_upstream_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub url: String,
    /// `unknown`, `up`, `limited` or `down`.
    pub state: &'static str,
    pub requests: u64,
    pub failures: u64,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub last_latency_ms: Option<f64>,
    pub avg_latency_ms: Option<f64>,
    /// The upstream's endpoints in the order they are tried (one for a plain `url`).
    pub endpoints: Vec<EndpointStatus>,
    /// Blob downloads (one connection each) open now, and the upstream's cap on them.
    pub blob_connections: usize,
    pub max_blob_connections: usize,
    /// The pull quota the upstream last announced (Docker Hub's `ratelimit-*` headers):
    /// requests left, the limit, the window in seconds, when it said so (unix seconds).
    pub quota_remaining: Option<u64>,
    pub quota_limit: Option<u64>,
    pub quota_window_seconds: Option<u64>,
    pub quota_at: Option<u64>,
    /// Body bytes received from this upstream over the last minute (or since start, when
    /// that is shorter: see `received_seconds`).
    pub received_bytes: u64,
    pub received_seconds: u64,
    /// `received_bytes / received_seconds`; `None` over a window under a second.
    pub received_bytes_per_second: Option<f64>,
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    pub url: String,
    /// `up` (in use) or `down` (skipped after a failure until a background probe answers).
    pub state: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoBytes {
    pub repository: String,
    pub bytes: u64,
}

/// The served certificate's validity.
#[derive(Clone, Debug, Serialize)]
pub struct CertStatus {
    /// Unix seconds.
    pub not_after: i64,
    pub days_left: i64,
}

/// Snapshots the counters now and then every [`SAMPLE_EVERY`] until aborted; warns in
/// the log once a day while the served certificate is about to expire.
pub fn spawn_sampler(app: Arc<App>) -> Sampler {
    let metrics: Arc<Metrics> = app.metrics.clone();
    metrics.activity.record_sample(metrics.counter_sample());
    metrics.activity.record_received(
        crate::metrics::activity::unix_now(),
        metrics.upstream_bytes_by(),
    );
    Sampler(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut minutes = 0u64;
        loop {
            tick.tick().await;
            metrics.activity.record_sample(metrics.counter_sample());
            metrics.activity.record_received(
                crate::metrics::activity::unix_now(),
                metrics.upstream_bytes_by(),
            );
            minutes += 1;
            if minutes.is_multiple_of(24 * 60) {
                super::warn_if_expiring(&app);
            }
        }
    }))
}

/// The sampler task; stopped when dropped.
pub struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `url` without user info (`https://user:pass@host` -> `https://host`) or query.
fn public_url(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Free and total bytes of the file system holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed local struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| {
        let frsize = st.f_frsize as u64;
        (st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize)
    })
}

/// The counters `window` seconds ago (or the oldest snapshot), and the window's length.
fn window(samples: &[CounterSample], now: &CounterSample, secs: u64) -> Window {
    let cutoff = now.at.saturating_sub(secs);
    let base = samples
        .iter()
        .rev()
        .find(|s| s.at <= cutoff)
        .or_else(|| samples.first())
        .copied()
        .unwrap_or(CounterSample {
            at: now.at,
            ..Default::default()
        });
    Window::from_delta(&now.since(&base), now.at.saturating_sub(base.at))
}

/// Bytes between consecutive snapshots over the last `secs`, summed into `bucket`-second
/// bins (oldest first); the last bin ends now.
fn chart(
    samples: &[CounterSample],
    now: &CounterSample,
    secs: u64,
    bucket: u64,
) -> Vec<ChartPoint> {
    let bins = (secs / bucket) as usize;
    let mut out: Vec<ChartPoint> = (0..bins)
        .map(|i| ChartPoint {
            at: now.at.saturating_sub((bins - 1 - i) as u64 * bucket),
            served_cache_bytes: 0,
            served_upstream_bytes: 0,
        })
        .collect();
    let points = samples.iter().chain(std::iter::once(now));
    for (a, b) in samples.iter().zip(points.skip(1)) {
        // The bin of the interval's end: the interval under way is the last one.
        let back = now.at.saturating_sub(b.at).div_ceil(bucket) as usize;
        if back >= bins {
            continue;
        }
        let bin = bins - 1 - back;
        let d = b.since(a);
        out[bin].served_cache_bytes += d.served_cache_bytes;
        out[bin].served_upstream_bytes += d.served_upstream_bytes;
    }
    out
}

impl App {
    /// Everything `/status` and `/status.json` show, now.
    pub fn status_report(&self) -> StatusReport {
        let m = &self.metrics;
        let now = m.counter_sample();
        let samples = m.activity.samples();
        let started_at = m
            .activity
            .started()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cache = self.api.cache();
        let store = cache.store();
        let disk = disk_space(store.path());
        let health = m.activity.upstreams();
        let received_now = m.upstream_bytes_by();
        let upstreams = cache
            .upstream_urls()
            .into_iter()
            .map(|u| {
                let (name, url) = (u.name, u.base_url);
                let h = health.get(&name).cloned().unwrap_or_default();
                let (received_bytes, received_seconds) = m.activity.received_since(
                    &name,
                    received_now.get(&name).copied().unwrap_or(0),
                    now.at,
                    60,
                );
                let endpoints = u
                    .endpoints
                    .into_iter()
                    .map(|(url, up)| EndpointStatus {
                        url: public_url(&url),
                        state: if up { "up" } else { "down" },
                    })
                    .collect();
                UpstreamStatus {
                    received_bytes,
                    received_seconds,
                    received_bytes_per_second: (received_seconds > 0)
                        .then(|| received_bytes as f64 / received_seconds as f64),
                    blob_connections: u.blob_connections.0,
                    max_blob_connections: u.blob_connections.1,
                    endpoints,
                    state: h.state(),
                    url: public_url(&url),
                    name,
                    requests: h.requests,
                    failures: h.failures,
                    last_status: h.last_status,
                    last_error: h.last_error,
                    last_error_at: h.last_error_at,
                    last_latency_ms: h.last_latency_ms,
                    avg_latency_ms: h.avg_latency_ms,
                    quota_remaining: h.quota_remaining,
                    quota_limit: h.quota_limit,
                    quota_window_seconds: h.quota_window_seconds,
                    quota_at: h.quota_at,
                }
            })
            .collect();
        let tls = self.cert_status();
        let mut warnings = Vec::new();
        if let Some(w) = tls.as_ref().and_then(CertStatus::warning) {
            warnings.push(w);
        }
        if let Some(w) = self.api.shared_tier_warning() {
            warnings.push(w);
        }
        let budget = store.budget();
        if budget > 0 && store.stored_bytes() > budget / 100 * 95 {
            warnings.push("the store is over 95% of storage.max_size: the least recently used content is being evicted".into());
        }
        if let Some((free, _)) = disk {
            if free < budget.saturating_sub(store.stored_bytes()) {
                warnings.push("the disk has less free space than the store's budget still allows: lower storage.max_size or free the disk".into());
            }
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            now: now.at,
            started_at,
            uptime_seconds: now.at.saturating_sub(started_at),
            store: StoreStatus {
                used_bytes: store.stored_bytes(),
                budget_bytes: budget,
                blobs: m.store_blobs.get(),
                manifests: m.store_manifests.get(),
                disk_free_bytes: disk.map(|d| d.0),
                disk_total_bytes: disk.map(|d| d.1),
                evictions: m.store_evictions.get(),
                evicted_bytes: m.store_evicted_bytes.get(),
            },
            last_hour: window(&samples, &now, 3600),
            last_day: window(&samples, &now, 86400),
            wan_bytes_saved: now.served_cache_bytes,
            savings: store
                .savings()
                .map(|h| h.summary(now.at))
                .unwrap_or_default(),
            chart_hour: chart(&samples, &now, 3600, 60),
            chart_day: chart(&samples, &now, 86400, 3600),
            fills: cache.fills_in_progress(),
            singleflight_joins: m.singleflight_joins.get(),
            fill_pieces_in_flight: m.fill_pieces_in_flight.get(),
            upstreams,
            top_repositories: m
                .activity
                .top_repos(TOP_REPOS)
                .into_iter()
                .map(|(repository, bytes)| RepoBytes { repository, bytes })
                .collect(),
            recent_errors: m.activity.recent_errors(),
            recent_denials: m.activity.recent_denials(),
            tls,
            warnings,
        }
    }
}

impl CertStatus {
    /// A sentence when the certificate expires within [`CERT_WARN_DAYS`] (or has).
    pub fn warning(&self) -> Option<String> {
        if self.days_left < 0 {
            Some("the served TLS certificate has expired: renew it (or run \"sparkcr-edge tls self-signed\") and send SIGHUP".into())
        } else if self.days_left <= CERT_WARN_DAYS {
            Some(format!(
                "the served TLS certificate expires in {} days: renew it and send SIGHUP (systemctl reload sparkcr-edge)",
                self.days_left
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, cache: u64, up: u64) -> CounterSample {
        CounterSample {
            at,
            hits: cache / 10,
            misses: up / 10,
            served_cache_bytes: cache,
            served_upstream_bytes: up,
            upstream_bytes: up,
        }
    }

    #[test]
    fn windows_and_charts_from_minute_samples() {
        let t0 = 1_000_000;
        let samples: Vec<_> = (0..=120)
            .map(|i| sample(t0 + i * 60, i * 100, i * 10))
            .collect();
        let now = sample(t0 + 120 * 60 + 30, 12_050, 1_205);
        let hour = window(&samples, &now, 3600);
        assert_eq!(
            hour.seconds, 3630,
            "from the newest snapshot at least an hour old"
        );
        assert_eq!(hour.served_cache_bytes, 12_050 - 6_000);
        let day = window(&samples, &now, 86400);
        assert_eq!(
            day.seconds,
            120 * 60 + 30,
            "shorter than a day: since start"
        );
        assert_eq!(day.served_cache_bytes, 12_050);
        assert_eq!(day.hit_ratio, Some(1205.0 / (1205.0 + 120.0)));
        let c = chart(&samples, &now, 3600, 60);
        assert_eq!(c.len(), 60);
        assert_eq!(c[59].served_cache_bytes, 50, "the minute under way");
        assert_eq!(c[58].served_cache_bytes, 100);
        let total: u64 = c.iter().map(|p| p.served_cache_bytes).sum();
        assert_eq!(total, 59 * 100 + 50);
        let d = chart(&samples, &now, 86400, 3600);
        assert_eq!(d.len(), 24);
        assert_eq!(d.iter().map(|p| p.served_cache_bytes).sum::<u64>(), 12_050);
    }

    #[test]
    fn urls_lose_user_info_and_queries() {
        assert_eq!(
            public_url("https://u:p@reg.lan:5000/v2?x=1"),
            "https://reg.lan:5000/v2"
        );
        assert_eq!(public_url("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
    }
}
