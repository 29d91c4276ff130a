//! How many pieces of one blob run at once (`pieces`): a width that starts small and grows
//! while growing raises the blob's rate.
//!
//! The rule. A flow on a long path carries at most its window per round trip (or a
//! lossy path's per-flow rate), so pieces add rate until the link, the upstream or the
//! edge is the bottleneck; past that they only add connections. The width starts at
//! [`START`] (the fill's first request and three more pieces), or [`START_LONG`] when the
//! first request's answer took [`LONG_PATH`] or more (at 150 ms one flow carries under
//! 30 MB/s, and a 64 MiB layer is over before three samples could say so), and is
//! sampled over [`SAMPLE_RTTS`] round trips (the first request's time to headers is the
//! round trip's estimate; at least [`MIN_SAMPLE`], at most [`MAX_SAMPLE`]) after a
//! warm-up of [`WARM_UP_RTTS`] round trips (a new piece's request, and its connection
//! when it opens one). After each sample the width grows by half (at least one piece) if
//! this sample's rate is at least [`MIN_GAIN`] over the sample before the last growth —
//! the pieces added last paid for themselves — and otherwise goes back to the width
//! before that growth and stays there (on a busy box or a full link, more pieces cost
//! CPU, spool writes and connections for nothing). It
//! never exceeds the configured most (`cache.fill_pieces`), and a growth never takes the
//! upstream's last [`KEEP_FREE`] free blob connections (another blob's first request,
//! which carries its client's headers, must not wait behind this blob's extra pieces):
//! with no room it waits for the next sample. Running pieces are never cancelled: a
//! narrower width only means no new piece starts until fewer run.
//!
//! Owns: the width and its samples. Must not: start pieces, read bytes or know about the
//! upstream beyond the free connections it is told.

use std::time::{Duration, Instant};

/// Pieces of one blob at once at the start (the first piece included).
pub const START: usize = 4;
/// The start on a long path (a round trip of [`LONG_PATH`] or more).
const START_LONG: usize = 8;
/// A round trip this long makes every flow window-bound below 30 MB/s (4 MiB a trip).
const LONG_PATH: Duration = Duration::from_millis(100);
/// Round trips in one sample of the blob's rate.
const SAMPLE_RTTS: u32 = 3;
/// Round trips after a growth before the sample starts.
const WARM_UP_RTTS: u32 = 2;
/// Shortest sample (a short path's round trip says little about its rate).
const MIN_SAMPLE: Duration = Duration::from_millis(100);
/// Longest sample (and warm-up).
const MAX_SAMPLE: Duration = Duration::from_secs(1);
/// The rate gain over the last sample that keeps the width growing.
const MIN_GAIN: f64 = 0.15;
/// Free blob connections of the upstream a growth leaves to other fills.
const KEEP_FREE: usize = 2;

/// Whether a path whose round trip is about `rtt` is long ([`LONG_PATH`] or more).
pub fn is_long(rtt: Duration) -> bool {
    rtt >= LONG_PATH
}

/// The width to start with for `start` configured ([`START`] in production) on a path
/// whose round trip is about `rtt`: twice that on a long path, where waiting three round
/// trips to learn that more pieces pay costs a medium blob most of its time.
pub fn start_for(start: usize, rtt: Duration) -> usize {
    if is_long(rtt) {
        start.max(START_LONG)
    } else {
        start
    }
}

/// The width of one pieced blob and its rate samples.
#[derive(Debug)]
pub(super) struct PieceWidth {
    width: usize,
    most: usize,
    sample: Duration,
    warm_up: Duration,
    /// Counting from here (bytes before it are a warm-up's).
    since: Instant,
    bytes: u64,
    /// The rate of the last sample before the last growth, and the width it had.
    before: Option<(f64, usize)>,
    growing: bool,
}

impl PieceWidth {
    /// A width of `start` (at most `most`) pieces, for a path whose round trip is about
    /// `rtt`; the first sample starts now.
    pub fn new(start: usize, most: usize, rtt: Duration, now: Instant) -> PieceWidth {
        let most = most.max(1);
        let sample = (rtt * SAMPLE_RTTS).clamp(MIN_SAMPLE, MAX_SAMPLE);
        PieceWidth {
            width: start.clamp(1, most),
            most,
            sample,
            warm_up: (rtt * WARM_UP_RTTS).min(MAX_SAMPLE),
            since: now,
            bytes: 0,
            before: None,
            growing: start < most,
        }
    }

    /// Pieces that may run at once now.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `bytes` of the blob arrived at `now`; `spare` is the upstream's free blob
    /// connections (`None`: not limited). Returns whether the width grew.
    pub fn arrived(
        &mut self,
        bytes: u64,
        now: Instant,
        spare: impl FnOnce() -> Option<usize>,
    ) -> bool {
        if !self.growing || now < self.since {
            return false;
        }
        self.bytes += bytes;
        let elapsed = now - self.since;
        if elapsed < self.sample {
            return false;
        }
        let rate = self.bytes as f64 / elapsed.as_secs_f64();
        self.bytes = 0;
        self.since = now;
        if let Some((before, narrower)) = self.before {
            if rate < before * (1.0 + MIN_GAIN) {
                // The last growth did not pay: back to the width before it (running
                // pieces end; no new one starts until fewer run).
                self.width = narrower;
                self.growing = false;
                return false;
            }
        }
        let room = spare().map_or(usize::MAX, |s| s.saturating_sub(KEEP_FREE));
        let add = (self.width / 2)
            .max(1)
            .min(self.most - self.width)
            .min(room);
        if add == 0 {
            // No free connection: sample again at this width.
            return false;
        }
        self.before = Some((rate, self.width));
        self.width += add;
        self.growing = self.width < self.most;
        self.since = now + self.warm_up;
        true
    }

    /// Stops growing (every piece has started).
    pub fn settle(&mut self) {
        self.growing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(150);

    /// Feeds `rate` bytes/s in 10 ms steps for `secs` seconds from `*now`.
    fn feed(w: &mut PieceWidth, now: &mut Instant, rate: f64, secs: f64, spare: Option<usize>) {
        let step = Duration::from_millis(10);
        for _ in 0..(secs * 100.0).round() as usize {
            *now += step;
            w.arrived((rate * 0.01) as u64, *now, || spare);
        }
    }

    #[test]
    fn the_width_grows_while_each_flow_adds_its_rate() {
        // Flows of 25 MB/s each up to a 200 MB/s link.
        let mut now = Instant::now();
        let mut w = PieceWidth::new(START, 16, RTT, now);
        let mut widths = vec![w.width()];
        for _ in 0..40 {
            let rate = (w.width() as f64 * 25e6).min(200e6);
            feed(&mut w, &mut now, rate, 0.1, None);
            if widths.last() != Some(&w.width()) {
                widths.push(w.width());
            }
        }
        assert_eq!(
            widths,
            vec![4, 6, 9, 13, 9],
            "it grew while the rate rose, then undid the growth that did not pay"
        );
        assert!(!w.growing);
    }

    #[test]
    fn a_saturated_link_stops_the_growth_at_once() {
        let mut now = Instant::now();
        let mut w = PieceWidth::new(START, 16, RTT, now);
        feed(&mut w, &mut now, 100e6, 3.0, None);
        assert_eq!(w.width(), START, "one growth, which did not pay, undone");
        assert!(!w.growing);
    }

    #[test]
    fn the_most_and_the_free_connections_bound_it() {
        let mut now = Instant::now();
        let mut w = PieceWidth::new(START, 5, RTT, now);
        feed(&mut w, &mut now, 1e6, 0.5, None);
        assert_eq!(w.width(), 5);
        assert!(!w.growing, "at the most");
        feed(&mut w, &mut now, 1e6, 2.0, None);
        assert_eq!(w.width(), 5, "no more samples once it stopped");

        let mut w = PieceWidth::new(START, 16, RTT, now);
        feed(&mut w, &mut now, 1e6, 2.0, Some(KEEP_FREE));
        assert_eq!(w.width(), START, "no free connection to spare");
        assert!(w.growing, "it tries again when one frees");
        feed(&mut w, &mut now, 1e6, 0.5, Some(KEEP_FREE + 1));
        assert_eq!(w.width(), START + 1, "one spare connection: one more piece");

        let w = PieceWidth::new(1, 1, RTT, now);
        assert!(!w.growing && w.width() == 1);
    }

    #[test]
    fn a_long_path_starts_wider() {
        assert_eq!(start_for(START, Duration::from_millis(20)), START);
        assert_eq!(start_for(START, LONG_PATH), START_LONG);
        assert_eq!(
            start_for(12, LONG_PATH),
            12,
            "never narrower than configured"
        );
    }

    #[test]
    fn bytes_during_the_warm_up_are_not_counted() {
        let mut now = Instant::now();
        let mut w = PieceWidth::new(START, 16, RTT, now);
        feed(&mut w, &mut now, 10e6, 0.5, None);
        assert_eq!(w.width(), 6);
        // The new pieces' first round trips carry nothing; then the rate is 15 MB/s.
        feed(&mut w, &mut now, 0.0, 0.25, None);
        feed(&mut w, &mut now, 15e6, 0.5, None);
        assert_eq!(
            w.width(),
            9,
            "the warm-up's silence did not count against it"
        );
    }
}
