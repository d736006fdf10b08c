//! Whether the database keeps up: rows offered and written per second over a sliding window,
//! and when to say so in the log. Plain values and [`Instant`]s, so the arithmetic is tested
//! without an actor or a database.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rates are measured over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// While the lag stays over its limit, the warning is repeated this often.
pub const WARN_EVERY: Duration = Duration::from_secs(30);
/// Rows dropped at a full spool keep the server `degraded` this long after the last one.
pub const DROPS_REMEMBERED: Duration = Duration::from_secs(300);

/// Rows offered to storage and written by it, sampled once a second.
#[derive(Debug, Default)]
pub struct Throughput {
    /// (when, rows offered so far, rows written so far), oldest first, spanning at most
    /// [`RATE_WINDOW`] (and one sample before it).
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Throughput {
    pub fn sample(&mut self, now: Instant, offered: u64, written: u64) {
        self.samples.push_back((now, offered, written));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, ..)| now.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Rows per second (offered, written) over the window; zeros before two samples.
    pub fn rates(&self) -> (f64, f64) {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        (per_sec(first.1, last.1), per_sec(first.2, last.2))
    }
}

/// What the log should say about the write lag now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagNotice {
    Quiet,
    /// Over the limit: first time, or [`WARN_EVERY`] since the last warning.
    Behind,
    /// Back under the limit after a warning.
    CaughtUp,
}

/// Remembers when the lag was last reported, so a long lag warns every [`WARN_EVERY`] and
/// its end is logged once.
#[derive(Debug, Default)]
pub struct LagWarnings {
    last_warned: Option<Instant>,
}

impl LagWarnings {
    pub fn observe(&mut self, now: Instant, lag: Duration, limit: Duration) -> LagNotice {
        if lag > limit {
            let due = self
                .last_warned
                .map_or(true, |t| now.saturating_duration_since(t) >= WARN_EVERY);
            if due {
                self.last_warned = Some(now);
                return LagNotice::Behind;
            }
            return LagNotice::Quiet;
        }
        if self.last_warned.take().is_some() {
            return LagNotice::CaughtUp;
        }
        LagNotice::Quiet
    }
}

/// Bytes for a log line or a reason: "12.3 MB".
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_measured_over_the_last_ten_seconds() {
        let t0 = Instant::now();
        let mut tp = Throughput::default();
        assert_eq!(tp.rates(), (0.0, 0.0));
        // 2,000 rows/s offered, 1,000 written, for 30 s; then the database catches up.
        for s in 0..=30u64 {
            tp.sample(t0 + Duration::from_secs(s), 2000 * s, 1000 * s);
        }
        assert_eq!(tp.rates(), (2000.0, 1000.0));
        for s in 31..=40u64 {
            tp.sample(
                t0 + Duration::from_secs(s),
                2000 * s,
                30_000 + 3000 * (s - 30),
            );
        }
        assert_eq!(tp.rates(), (2000.0, 3000.0));
    }

    #[test]
    fn a_long_lag_warns_every_thirty_seconds_and_its_end_once() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        let mut w = LagWarnings::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            w.observe(at(0), Duration::from_secs(5), limit),
            LagNotice::Quiet
        );
        assert_eq!(
            w.observe(at(1), Duration::from_secs(31), limit),
            LagNotice::Behind
        );
        assert_eq!(
            w.observe(at(2), Duration::from_secs(40), limit),
            LagNotice::Quiet
        );
        assert_eq!(
            w.observe(at(31), Duration::from_secs(60), limit),
            LagNotice::Behind
        );
        assert_eq!(
            w.observe(at(32), Duration::from_secs(2), limit),
            LagNotice::CaughtUp
        );
        assert_eq!(
            w.observe(at(33), Duration::from_secs(2), limit),
            LagNotice::Quiet
        );
    }
}
