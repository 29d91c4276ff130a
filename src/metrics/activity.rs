//! What the operator's status page shows that Prometheus cannot hold: each upstream's last
//! answer, error and latency; the most recent failed requests; bytes served per
//! repository; and per-minute snapshots of the main counters (the last day), so the page
//! can chart the last hour and day without a Prometheus server.
//!
//! Owns: these bounded in-memory records (nothing here survives a restart). Must not:
//! import any other module of this crate, or keep anything secret (paths only, never
//! query strings or headers).

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Failed requests kept for the status page.
pub const RECENT_ERRORS: usize = 50;
/// Repositories whose served bytes are counted; later ones are counted under `(other)`.
pub const MAX_REPOS: usize = 2048;
/// Per-minute snapshots kept: one day.
pub const MINUTES_KEPT: usize = 24 * 60;
/// The name under which repositories past [`MAX_REPOS`] are counted.
pub const OTHER_REPOS: &str = "(other)";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How an upstream answered lately.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct UpstreamHealth {
    pub requests: u64,
    /// Transport failures, 5xx and 429 answers.
    pub failures: u64,
    /// Status of the last answer, or `error` when none came.
    pub last_status: Option<String>,
    /// Unix seconds of the last request.
    pub last_request_at: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Milliseconds to the response head of the last request.
    pub last_latency_ms: Option<f64>,
    /// Exponentially weighted mean of the latency (weight 0.2 for each new request).
    pub avg_latency_ms: Option<f64>,
    /// The pull quota its last answer that carried one announced: requests left, the
    /// limit and the window (seconds), and when (unix seconds).
    pub quota_remaining: Option<u64>,
    pub quota_limit: Option<u64>,
    pub quota_window_seconds: Option<u64>,
    pub quota_at: Option<u64>,
}

impl UpstreamHealth {
    /// `unknown` (never asked), `up` (the last request got an answer that is not a
    /// failure), `limited` (429) or `down` (no answer, or 5xx).
    pub fn state(&self) -> &'static str {
        match self.last_status.as_deref() {
            None => "unknown",
            Some("429") => "limited",
            Some(s) if s == "error" || s.starts_with('5') => "down",
            Some(_) => "up",
        }
    }
}

/// A request answered with an error status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecentError {
    /// Unix seconds.
    pub at: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub route: String,
    pub client: String,
}

/// A pull a `[[policy]]` block refused: denied outright, held back by a cooldown, or not
/// signed by a trusted key.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecentDenial {
    /// Unix seconds.
    pub at: u64,
    pub client: String,
    pub upstream: String,
    pub repository: String,
    /// The tag or digest asked for (`None` for a blob or tag list by repository).
    pub reference: Option<String>,
    pub block: String,
    /// `deny`, `cooldown` or `signature`.
    pub check: String,
    pub message: String,
}

/// Policy denials kept for the status page.
pub const RECENT_DENIALS: usize = 50;

/// Cumulative counter values at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CounterSample {
    /// Unix seconds.
    pub at: u64,
    pub hits: u64,
    pub misses: u64,
    pub served_cache_bytes: u64,
    pub served_upstream_bytes: u64,
    pub upstream_bytes: u64,
}

impl CounterSample {
    /// `self - earlier`, field by field (saturating), stamped with `self.at`.
    pub fn since(&self, earlier: &CounterSample) -> CounterSample {
        CounterSample {
            at: self.at,
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            served_cache_bytes: self
                .served_cache_bytes
                .saturating_sub(earlier.served_cache_bytes),
            served_upstream_bytes: self
                .served_upstream_bytes
                .saturating_sub(earlier.served_upstream_bytes),
            upstream_bytes: self.upstream_bytes.saturating_sub(earlier.upstream_bytes),
        }
    }
}

#[derive(Default)]
struct Inner {
    upstreams: HashMap<String, UpstreamHealth>,
    errors: VecDeque<RecentError>,
    denials: VecDeque<RecentDenial>,
    repos: HashMap<String, u64>,
    samples: VecDeque<CounterSample>,
    /// Body bytes received per upstream at the last few snapshots (unix seconds, bytes by
    /// upstream), oldest first: the status page's received-per-second over a minute.
    received: VecDeque<(u64, HashMap<String, u64>)>,
}

/// Snapshots of the bytes received per upstream kept (a few minutes).
const RECEIVED_KEPT: usize = 5;

/// The bounded records; one per daemon, inside [`super::Metrics`].
pub struct Activity {
    started: SystemTime,
    inner: Mutex<Inner>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: SystemTime::now(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl Activity {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When this daemon started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// One request to `upstream`: its status (or `Err(what went wrong)`) and the time to
    /// the response head.
    /// What an upstream's last answer said about its pull quota.
    pub fn upstream_quota(
        &self,
        upstream: &str,
        remaining: u64,
        limit: Option<u64>,
        window_seconds: Option<u64>,
    ) {
        let now = unix_now();
        let mut inner = self.lock();
        let h = inner.upstreams.entry(upstream.to_string()).or_default();
        h.quota_remaining = Some(remaining);
        h.quota_limit = limit.or(h.quota_limit);
        h.quota_window_seconds = window_seconds.or(h.quota_window_seconds);
        h.quota_at = Some(now);
    }

    pub fn upstream_result(&self, upstream: &str, result: Result<u16, &str>, latency: Duration) {
        let now = unix_now();
        let ms = latency.as_secs_f64() * 1000.0;
        let mut inner = self.lock();
        if !inner.upstreams.contains_key(upstream) {
            inner
                .upstreams
                .insert(upstream.to_string(), UpstreamHealth::default());
        }
        let Some(h) = inner.upstreams.get_mut(upstream) else {
            return;
        };
        h.requests += 1;
        h.last_request_at = Some(now);
        h.last_latency_ms = Some(ms);
        h.avg_latency_ms = Some(h.avg_latency_ms.map_or(ms, |avg| avg * 0.8 + ms * 0.2));
        let failure = match result {
            Ok(status) => {
                h.last_status = Some(status.to_string());
                (status >= 500 || status == 429).then(|| format!("answered HTTP {status}"))
            }
            Err(what) => {
                h.last_status = Some("error".into());
                Some(without_queries(what))
            }
        };
        if let Some(e) = failure {
            h.failures += 1;
            h.last_error = Some(e);
            h.last_error_at = Some(now);
        }
    }

    /// Every upstream asked so far, by name.
    /// The pull quota `upstream` last announced as left, if it ever did.
    pub fn quota_remaining(&self, upstream: &str) -> Option<u64> {
        self.lock().upstreams.get(upstream)?.quota_remaining
    }

    pub fn upstreams(&self) -> HashMap<String, UpstreamHealth> {
        self.lock().upstreams.clone()
    }

    /// A request answered with `status` >= 400 (the 401 that starts every token flow is
    /// not an error and is not kept).
    pub fn request_failed(&self, e: RecentError) {
        if e.status < 400 || e.status == 401 {
            return;
        }
        let mut inner = self.lock();
        if inner.errors.len() == RECENT_ERRORS {
            inner.errors.pop_front();
        }
        inner.errors.push_back(e);
    }

    /// A pull a policy block refused.
    pub fn policy_denied(&self, d: RecentDenial) {
        let mut inner = self.lock();
        if inner.denials.len() == RECENT_DENIALS {
            inner.denials.pop_front();
        }
        inner.denials.push_back(d);
    }

    /// The kept policy denials, newest first.
    pub fn recent_denials(&self) -> Vec<RecentDenial> {
        self.lock().denials.iter().rev().cloned().collect()
    }

    /// The kept failed requests, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.lock().errors.iter().rev().cloned().collect()
    }

    /// `bytes` of a manifest or blob of `repo` sent to a client.
    pub fn served(&self, repo: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut inner = self.lock();
        // No allocation for a repository already counted (the common case on a hit).
        if let Some(n) = inner.repos.get_mut(repo) {
            *n += bytes;
            return;
        }
        let key = if inner.repos.len() < MAX_REPOS {
            repo
        } else {
            OTHER_REPOS
        };
        *inner.repos.entry(key.to_string()).or_default() += bytes;
    }

    /// The `n` repositories with the most bytes served, most first.
    pub fn top_repos(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .lock()
            .repos
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Keeps `s` as the newest snapshot (the oldest goes after a day).
    pub fn record_sample(&self, s: CounterSample) {
        let mut inner = self.lock();
        if inner.samples.len() == MINUTES_KEPT + 1 {
            inner.samples.pop_front();
        }
        inner.samples.push_back(s);
    }

    /// Keeps the body bytes received per upstream at `at` (unix seconds).
    pub fn record_received(&self, at: u64, by_upstream: HashMap<String, u64>) {
        let mut inner = self.lock();
        if inner.received.len() == RECEIVED_KEPT {
            inner.received.pop_front();
        }
        inner.received.push_back((at, by_upstream));
    }

    /// What `upstream` received since the newest snapshot at least `secs` before `now`
    /// (else the oldest), given `current` bytes now: `(bytes, seconds)`.
    pub fn received_since(&self, upstream: &str, current: u64, now: u64, secs: u64) -> (u64, u64) {
        let inner = self.lock();
        let cutoff = now.saturating_sub(secs);
        let base = inner
            .received
            .iter()
            .rev()
            .find(|(at, _)| *at <= cutoff)
            .or_else(|| inner.received.front());
        match base {
            Some((at, by)) => (
                current.saturating_sub(by.get(upstream).copied().unwrap_or(0)),
                now.saturating_sub(*at),
            ),
            None => (0, 0),
        }
    }

    /// The snapshots kept, oldest first.
    pub fn samples(&self) -> Vec<CounterSample> {
        self.lock().samples.iter().copied().collect()
    }
}

/// `text` with every URL query string cut (signed CDN URLs carry credentials there).
fn without_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_query = false;
    for c in text.chars() {
        if in_query {
            if c.is_whitespace() || c == ')' {
                in_query = false;
                out.push(c);
            }
        } else if c == '?' {
            in_query = true;
            out.push_str("?…");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_never_reach_the_page() {
        assert_eq!(
            without_queries(
                "error sending request for url (https://cdn/x?X-Amz-Signature=s3cr3t): reset"
            ),
            "error sending request for url (https://cdn/x?…): reset"
        );
    }

    #[test]
    fn upstream_state_follows_the_last_answer() {
        let a = Activity::default();
        assert!(a.upstreams().is_empty());
        a.upstream_result("u", Ok(200), Duration::from_millis(10));
        assert_eq!(a.upstreams()["u"].state(), "up");
        a.upstream_result("u", Err("connection refused"), Duration::from_millis(30));
        let h = &a.upstreams()["u"];
        assert_eq!(h.state(), "down");
        assert_eq!(h.failures, 1);
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
        assert_eq!(h.avg_latency_ms, Some(14.0));
        a.upstream_result("u", Ok(404), Duration::from_millis(10));
        assert_eq!(a.upstreams()["u"].state(), "up", "404 is an answer");
        a.upstream_result("u", Ok(429), Duration::from_millis(10));
        assert_eq!(a.upstreams()["u"].state(), "limited");
    }

    #[test]
    fn errors_ring_and_repos_are_bounded() {
        let a = Activity::default();
        for i in 0..(RECENT_ERRORS as u16 + 5) {
            a.request_failed(RecentError {
                at: 0,
                method: "GET".into(),
                path: format!("/v2/x/{i}"),
                status: 404,
                route: "manifest".into(),
                client: "127.0.0.1:1".into(),
            });
        }
        let errs = a.recent_errors();
        assert_eq!(errs.len(), RECENT_ERRORS);
        assert_eq!(errs[0].path, format!("/v2/x/{}", RECENT_ERRORS + 4));
        for i in 0..MAX_REPOS + 3 {
            a.served(&format!("r{i}"), 1);
        }
        a.served("r0", 10);
        let top = a.top_repos(2);
        assert_eq!(top[0], ("r0".to_string(), 11));
        assert_eq!(top[1], (OTHER_REPOS.to_string(), 3));
    }

    #[test]
    fn received_per_upstream_over_the_last_minute_from_snapshots() {
        let a = Activity::default();
        assert_eq!(
            a.received_since("hub", 5, 1000, 60),
            (0, 0),
            "no snapshot yet"
        );
        let snap = |pairs: &[(&str, u64)]| -> HashMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        a.record_received(1000, snap(&[]));
        a.record_received(1060, snap(&[("hub", 100)]));
        a.record_received(1120, snap(&[("hub", 700), ("ghcr", 5)]));
        // At 1150: the newest snapshot at least a minute old is 1060's.
        assert_eq!(a.received_since("hub", 1000, 1150, 60), (900, 90));
        assert_eq!(a.received_since("ghcr", 20, 1150, 60), (20, 90));
        // Right after start: since the first snapshot.
        assert_eq!(a.received_since("hub", 50, 1010, 60), (50, 10));
        for t in 0..10 {
            a.record_received(2000 + t, snap(&[]));
        }
        assert_eq!(a.lock().received.len(), RECEIVED_KEPT, "bounded");
    }
}
