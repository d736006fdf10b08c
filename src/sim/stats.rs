//! A simulated device's counters: live atomics ([`SimStats`]) and copies of them
//! ([`StatsSnapshot`]) that add up over a fleet; poll round trips a fleet measured
//! ([`RoundTrips`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Live counters of one device (all atomics, readable while it runs).
#[derive(Debug, Default)]
pub struct SimStats {
    pub(super) connected: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) registrations: AtomicU64,
    pub(super) heartbeats_sent: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) data_sent: AtomicU64,
    pub(super) passive_sent: AtomicU64,
    pub(super) polls_answered: AtomicU64,
    pub(super) exceptions: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
}

/// A copy of [`SimStats`] at one moment (or a sum over a fleet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Devices connected right now.
    pub connected: u64,
    /// Successful TCP connects.
    pub connects: u64,
    /// Failed or timed-out TCP connects.
    pub connect_failures: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// Registrations acknowledged, or sent where the protocol acknowledges none
    /// (transparent).
    pub registrations: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Acknowledgements of heartbeats and data packets received (framed `02`, `03`).
    pub acks: u64,
    /// Data packets sent (framed `03`).
    pub data_sent: u64,
    /// Answers to its own queries sent up unasked (`passive`).
    pub passive_sent: u64,
    /// Modbus requests answered with a normal response.
    pub polls_answered: u64,
    /// Modbus requests answered with an exception.
    pub exceptions: u64,
    /// Valid requests left unanswered: other slave or broadcast.
    pub ignored: u64,
    /// Requests dropped for a bad CRC or a length not fitting the function.
    pub malformed: u64,
    /// Bytes from the server that the protocol could not read (dropped).
    pub protocol_errors: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

impl SimStats {
    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connected: g(&self.connected),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            disconnects: g(&self.disconnects),
            registrations: g(&self.registrations),
            heartbeats_sent: g(&self.heartbeats_sent),
            acks: g(&self.acks),
            data_sent: g(&self.data_sent),
            passive_sent: g(&self.passive_sent),
            polls_answered: g(&self.polls_answered),
            exceptions: g(&self.exceptions),
            ignored: g(&self.ignored),
            malformed: g(&self.malformed),
            protocol_errors: g(&self.protocol_errors),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
        }
    }
}

pub(super) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn add(a: &AtomicU64, n: usize) {
    a.fetch_add(n as u64, Ordering::Relaxed);
}

impl std::ops::Add for StatsSnapshot {
    type Output = StatsSnapshot;
    fn add(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected + o.connected,
            connects: self.connects + o.connects,
            connect_failures: self.connect_failures + o.connect_failures,
            disconnects: self.disconnects + o.disconnects,
            registrations: self.registrations + o.registrations,
            heartbeats_sent: self.heartbeats_sent + o.heartbeats_sent,
            acks: self.acks + o.acks,
            data_sent: self.data_sent + o.data_sent,
            passive_sent: self.passive_sent + o.passive_sent,
            polls_answered: self.polls_answered + o.polls_answered,
            exceptions: self.exceptions + o.exceptions,
            ignored: self.ignored + o.ignored,
            malformed: self.malformed + o.malformed,
            protocol_errors: self.protocol_errors + o.protocol_errors,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connected={} connects={} connect_failures={} disconnects={} registrations={} \
             heartbeats={} acks={} data={} passive={} polls_answered={} exceptions={} ignored={} \
             malformed={} protocol_errors={} bytes_in={} bytes_out={}",
            self.connected,
            self.connects,
            self.connect_failures,
            self.disconnects,
            self.registrations,
            self.heartbeats_sent,
            self.acks,
            self.data_sent,
            self.passive_sent,
            self.polls_answered,
            self.exceptions,
            self.ignored,
            self.malformed,
            self.protocol_errors,
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// Decrements the `connected` gauge however a session ends.
pub(super) struct ConnectedGuard<'a>(&'a SimStats);

impl<'a> ConnectedGuard<'a> {
    pub(super) fn new(stats: &'a SimStats) -> Self {
        inc(&stats.connected);
        inc(&stats.connects);
        ConnectedGuard(stats)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
        inc(&self.0.disconnects);
    }
}

/// Poll round trips measured by the devices of a fleet
/// ([`SimConfig::round_trips`](super::SimConfig::round_trips)), kept as samples so that any
/// quantile can be read. A few hundred a second at most (one per device and heartbeat), so a
/// lock is cheap enough.
#[derive(Debug, Default)]
pub struct RoundTrips {
    micros: Mutex<Vec<u32>>,
}

impl RoundTrips {
    pub(super) fn record(&self, d: Duration) {
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        // A poisoned lock only means a panic elsewhere while pushing; the samples are intact.
        self.samples().push(micros);
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.micros.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget every sample (e.g. at the start of a measuring window).
    pub fn clear(&self) {
        self.samples().clear();
    }

    /// Samples recorded since the last [`RoundTrips::clear`].
    pub fn count(&self) -> usize {
        self.samples().len()
    }

    /// The `q` quantile (0.0..=1.0, nearest rank) of the samples; `None` without any.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.samples().clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        // Rounded to the nearest rank and clamped into the slice.
        let rank = ((q.clamp(0.0, 1.0) * last as f64).round() as usize).min(last);
        sorted
            .get(rank)
            .map(|&m| Duration::from_micros(u64::from(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_quantiles() {
        let rt = RoundTrips::default();
        for ms in 1..=100 {
            rt.record(Duration::from_millis(ms));
        }
        assert_eq!(rt.count(), 100);
        assert_eq!(rt.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(rt.quantile(0.5), Some(Duration::from_millis(51)));
        assert_eq!(rt.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(rt.quantile(1.0), Some(Duration::from_millis(100)));
    }
}
