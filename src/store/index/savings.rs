//! What the edge saved the WAN, kept in the index's `savings` tree: per upstream and hour
//! (the last [`HISTORY_HOURS`] hours), per upstream since the store was made, and when the
//! first saving was recorded.
//!
//! Keys: `h` ++ hour since the epoch (BE u64) ++ upstream → [`Savings`];
//! `t` ++ upstream → [`Savings`] (the running total); `since` → unix seconds (BE u64).
//! A value is three BE u64: bytes, requests, collapsed. A value that cannot be read is
//! replaced, never a panic.

use super::Index;
use crate::metrics::Savings;
use crate::store::error::StoreError;
use std::collections::BTreeMap;

/// Hours of history kept: 30 days.
pub const HISTORY_HOURS: u64 = 30 * 24;

const HOURLY: u8 = b'h';
const TOTAL: u8 = b't';
const SINCE: &[u8] = b"since";

/// What the index holds about savings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavingsHistory {
    /// `(hour since the epoch, upstream)` → what was saved in that hour.
    pub hourly: BTreeMap<(u64, String), Savings>,
    /// Upstream → saved since the store was made (or since the first saving).
    pub totals: BTreeMap<String, Savings>,
    /// Unix seconds of the first saving recorded.
    pub since: Option<u64>,
}

fn encode(s: &Savings) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&s.bytes.to_be_bytes());
    v[8..16].copy_from_slice(&s.requests.to_be_bytes());
    v[16..].copy_from_slice(&s.collapsed.to_be_bytes());
    v
}

fn decode(v: &[u8]) -> Option<Savings> {
    let n = |r: std::ops::Range<usize>| v.get(r)?.try_into().ok().map(u64::from_be_bytes);
    (v.len() == 24).then_some(())?;
    Some(Savings {
        bytes: n(0..8)?,
        requests: n(8..16)?,
        collapsed: n(16..24)?,
    })
}

fn hourly_key(hour: u64, upstream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + upstream.len());
    k.push(HOURLY);
    k.extend_from_slice(&hour.to_be_bytes());
    k.extend_from_slice(upstream.as_bytes());
    k
}

fn total_key(upstream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + upstream.len());
    k.push(TOTAL);
    k.extend_from_slice(upstream.as_bytes());
    k
}

impl Index {
    /// Adds `saved` (per upstream) to hour `hour` and to the totals, and drops hours older
    /// than [`HISTORY_HOURS`] before it. `now` (unix seconds) marks the first saving.
    pub fn add_savings(
        &self,
        now: u64,
        hour: u64,
        saved: &[(String, Savings)],
    ) -> Result<(), StoreError> {
        let tree = &self.savings;
        for (upstream, s) in saved.iter().filter(|(_, s)| !s.is_empty()) {
            for key in [hourly_key(hour, upstream), total_key(upstream)] {
                tree.fetch_and_update(&key, |old| {
                    let mut sum = old.and_then(decode).unwrap_or_default();
                    sum.add(s);
                    Some(encode(&sum).to_vec())
                })?;
            }
            let _ =
                tree.compare_and_swap(SINCE, None as Option<&[u8]>, Some(&now.to_be_bytes()[..]))?;
        }
        let oldest = hour.saturating_sub(HISTORY_HOURS - 1);
        let old: Vec<sled::IVec> = tree
            .range(vec![HOURLY]..hourly_key(oldest, ""))
            .keys()
            .collect::<Result<_, _>>()?;
        for key in old {
            tree.remove(key)?;
        }
        Ok(())
    }

    /// Everything the `savings` tree holds.
    pub fn savings_history(&self) -> Result<SavingsHistory, StoreError> {
        let mut out = SavingsHistory::default();
        for item in self.savings.iter() {
            let (key, value) = item?;
            let Some(s) = decode(&value) else { continue };
            match key.split_first() {
                Some((&HOURLY, rest)) if rest.len() >= 8 => {
                    let (hour, name) = rest.split_at(8);
                    let hour = u64::from_be_bytes(hour.try_into().unwrap_or_default());
                    let name = String::from_utf8_lossy(name).into_owned();
                    out.hourly.insert((hour, name), s);
                }
                Some((&TOTAL, name)) => {
                    out.totals
                        .insert(String::from_utf8_lossy(name).into_owned(), s);
                }
                _ => {}
            }
        }
        out.since = self
            .savings
            .get(SINCE)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes));
        Ok(out)
    }
}

/// What the edge saved over the windows an operator asks about, overall and per upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SavingsSummary {
    /// Since 00:00 UTC.
    pub today: Savings,
    /// The last 7 × 24 hours (this hour included).
    pub last_7_days: Savings,
    /// Since the first saving was kept.
    pub total: Savings,
    /// Unix seconds of the first saving kept.
    pub since: Option<u64>,
    pub upstreams: Vec<UpstreamSavings>,
    /// The last 30 UTC days, oldest first: (unix seconds at the day's start, saved).
    pub daily: Vec<(u64, Savings)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamSavings {
    pub upstream: String,
    pub today: Savings,
    pub last_7_days: Savings,
    pub total: Savings,
}

impl SavingsHistory {
    /// The windows ending at `now` (unix seconds).
    pub fn summary(&self, now: u64) -> SavingsSummary {
        let hour = now / 3600;
        let today_start = now / 86_400 * 24;
        let week_start = hour.saturating_sub(7 * 24 - 1);
        let first_day = (now / 86_400).saturating_sub(29);
        let mut out = SavingsSummary {
            since: self.since,
            daily: (first_day..=now / 86_400)
                .map(|d| (d * 86_400, Savings::default()))
                .collect(),
            ..SavingsSummary::default()
        };
        let row_of = |name: &String| UpstreamSavings {
            upstream: name.clone(),
            ..UpstreamSavings::default()
        };
        let mut rows: BTreeMap<String, UpstreamSavings> = BTreeMap::new();
        for ((h, name), s) in &self.hourly {
            let row = rows.entry(name.clone()).or_insert_with(|| row_of(name));
            if *h >= today_start {
                row.today.add(s);
                out.today.add(s);
            }
            if *h >= week_start {
                row.last_7_days.add(s);
                out.last_7_days.add(s);
            }
            if let Some((_, day)) = (h / 24)
                .checked_sub(first_day)
                .and_then(|i| out.daily.get_mut(i as usize))
            {
                day.add(s);
            }
        }
        for (name, s) in &self.totals {
            let row = rows.entry(name.clone()).or_insert_with(|| row_of(name));
            row.total = *s;
            out.total.add(s);
        }
        out.upstreams = rows.into_values().collect();
        out
    }
}
