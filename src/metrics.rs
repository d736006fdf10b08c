//! Process-wide counters for `/metrics` (Prometheus text format). Hot paths (every poll, every
//! event) only touch atomics; labelled counters whose label sets are small and open-ended
//! (HTTP route × status, webhook outcome) sit behind a mutex that is taken once per request or
//! delivery, never per device frame.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that goes up and down (open connections).
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        // Never below zero, even if a decrement races ahead of its increment.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Poll latency buckets, in seconds: DTUs over 4G answer in tens to hundreds of milliseconds.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Buckets are stored non-cumulative and summed when rendered.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counters keyed by a label set, rendered sorted.
#[derive(Default)]
pub struct Labelled(Mutex<BTreeMap<Vec<(&'static str, String)>, u64>>);

impl Labelled {
    pub fn inc(&self, labels: Vec<(&'static str, String)>) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: Vec<(&'static str, String)>, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(labels).or_default() += n;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, n) in map.iter() {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(out, "{name}{{{labels}}} {n}");
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything `/metrics` shows that is counted where it happens.
#[derive(Default)]
pub struct Metrics {
    /// Device TCP connections open now (every protocol, registered or not).
    pub connections: Gauge,
    pub connections_total: Counter,
    pub polls_sent: Counter,
    pub polls_answered: Counter,
    /// Answered with a Modbus exception or an answer that does not fit the request.
    pub polls_failed: Counter,
    pub polls_timeout: Counter,
    /// From a poll's first transmission to its decoded answer.
    pub poll_latency: Histogram,
    pub events_published: Counter,
    /// `/api/stream` clients disconnected because they read too slowly.
    pub streams_dropped: Counter,
    /// Webhook delivery attempts by `outcome` (`ok`, `http_error`, `connect_error`,
    /// `timeout`, `overflow`).
    pub webhook_deliveries: Labelled,
    /// HTTP requests by `route` pattern and `status`.
    pub http_requests: Labelled,
    /// Device connections refused at accept by `[limits]`, by `reason`.
    pub connections_refused: Labelled,
    /// HTTP connections ended by a client's fault (`logging.rs`): a request that could not be
    /// parsed, one that never completed, an I/O error.
    pub http_parse_errors: Counter,
    pub http_timeouts: Counter,
    pub http_io_errors: Counter,
}

/// One metric without labels, with its help and type lines.
fn one(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Numbers that are read from their owners when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub devices_registered: u64,
    pub devices_known: u64,
    pub rows_buffered: u64,
    pub rows_written: u64,
    pub rows_spooled: u64,
    pub spool_rows: u64,
    pub spool_bytes: u64,
    pub write_lag_seconds: f64,
    pub rows_offered_per_second: f64,
    pub rows_written_per_second: f64,
    pub dropped_packets: u64,
    pub dropped_telemetry: u64,
    /// 1 when `/api/health` answers `degraded`.
    pub degraded: u64,
    pub event_subscribers: u64,
}

impl Metrics {
    /// The Prometheus text exposition of the counters and of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        one(
            &mut out,
            "dtu_connections",
            "gauge",
            "Device TCP connections open now.",
            self.connections.get(),
        );
        one(
            &mut out,
            "dtu_connections_total",
            "counter",
            "Device TCP connections accepted.",
            self.connections_total.get(),
        );
        one(
            &mut out,
            "dtu_devices_registered",
            "gauge",
            "Devices registered (online) now.",
            snapshot.devices_registered,
        );
        one(
            &mut out,
            "dtu_devices_known",
            "gauge",
            "Devices the server has ever seen.",
            snapshot.devices_known,
        );
        one(
            &mut out,
            "dtu_polls_sent_total",
            "counter",
            "Modbus polls sent.",
            self.polls_sent.get(),
        );
        one(
            &mut out,
            "dtu_polls_answered_total",
            "counter",
            "Modbus polls answered and decoded.",
            self.polls_answered.get(),
        );
        one(
            &mut out,
            "dtu_polls_failed_total",
            "counter",
            "Modbus polls answered with an exception or a bad answer.",
            self.polls_failed.get(),
        );
        one(
            &mut out,
            "dtu_polls_timeout_total",
            "counter",
            "Modbus polls not answered in time.",
            self.polls_timeout.get(),
        );
        one(
            &mut out,
            "dtu_storage_rows_buffered",
            "gauge",
            "Rows held in memory waiting for the database.",
            snapshot.rows_buffered,
        );
        one(
            &mut out,
            "dtu_storage_rows_written_total",
            "counter",
            "Rows written to the database.",
            snapshot.rows_written,
        );
        one(
            &mut out,
            "dtu_storage_rows_spooled_total",
            "counter",
            "Rows spooled to disk while the database was unreachable.",
            snapshot.rows_spooled,
        );
        one(
            &mut out,
            "dtu_storage_spool_rows",
            "gauge",
            "Rows in the spool file now, waiting to be replayed.",
            snapshot.spool_rows,
        );
        one(
            &mut out,
            "dtu_storage_spool_bytes",
            "gauge",
            "Bytes of rows in the spool file now (bounded by max_spool).",
            snapshot.spool_bytes,
        );
        one(
            &mut out,
            "dtu_storage_degraded",
            "gauge",
            "1 while storage does not keep up (database down, lag over warn_lag, rows spooled or dropped).",
            snapshot.degraded,
        );
        let _ = writeln!(
            &mut out,
            "# HELP dtu_storage_rows_dropped_total Rows left out of a full spool (max_spool), by kind.\n\
             # TYPE dtu_storage_rows_dropped_total counter\n\
             dtu_storage_rows_dropped_total{{kind=\"packet\"}} {}\n\
             dtu_storage_rows_dropped_total{{kind=\"telemetry\"}} {}",
            snapshot.dropped_packets, snapshot.dropped_telemetry
        );
        for (name, help, v) in [
            (
                "dtu_storage_write_lag_seconds",
                "Age of the oldest row not yet in the database.",
                snapshot.write_lag_seconds,
            ),
            (
                "dtu_storage_rows_offered_per_second",
                "Rows offered to storage per second, over the last 10 s.",
                snapshot.rows_offered_per_second,
            ),
            (
                "dtu_storage_rows_written_per_second",
                "Rows written to the database per second, over the last 10 s.",
                snapshot.rows_written_per_second,
            ),
        ] {
            one(&mut out, name, "gauge", help, format!("{v:.3}"));
        }
        let _ = writeln!(
            &mut out,
            "# HELP dtu_http_client_errors_total HTTP connections ended by a client's fault: \
             a request that could not be parsed, one that never completed, an I/O error.\n\
             # TYPE dtu_http_client_errors_total counter\n\
             dtu_http_client_errors_total{{kind=\"parse\"}} {}\n\
             dtu_http_client_errors_total{{kind=\"timeout\"}} {}\n\
             dtu_http_client_errors_total{{kind=\"io\"}} {}",
            self.http_parse_errors.get(),
            self.http_timeouts.get(),
            self.http_io_errors.get()
        );
        one(
            &mut out,
            "dtu_events_published_total",
            "counter",
            "Events raised (online, offline, telemetry, rules, commands, poll failures).",
            self.events_published.get(),
        );
        one(
            &mut out,
            "dtu_stream_clients_dropped_total",
            "counter",
            "WebSocket stream clients disconnected for reading too slowly.",
            self.streams_dropped.get(),
        );
        one(
            &mut out,
            "dtu_event_subscribers",
            "gauge",
            "Webhook senders and WebSocket clients subscribed to events.",
            snapshot.event_subscribers,
        );
        self.poll_latency.render(
            &mut out,
            "dtu_poll_latency_seconds",
            "Time from sending a poll to its decoded answer.",
        );
        self.webhook_deliveries.render(
            &mut out,
            "dtu_webhook_deliveries_total",
            "Webhook delivery attempts by outcome.",
        );
        self.http_requests.render(
            &mut out,
            "dtu_http_requests_total",
            "HTTP requests by route and status.",
        );
        self.connections_refused.render(
            &mut out,
            "dtu_connections_refused_total",
            "Device connections refused at accept by [limits]: connections, per_address, unregistered.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_labels() {
        let m = Metrics::default();
        m.polls_sent.add(3);
        m.connections.inc();
        m.connections.inc();
        m.connections.dec();
        m.poll_latency.observe(Duration::from_millis(30));
        m.poll_latency.observe(Duration::from_secs(60));
        m.http_requests.inc(vec![
            ("route", "/api/devices/{id}".into()),
            ("status", "200".into()),
        ]);
        let text = m.render(&Snapshot {
            rows_written: 7,
            ..Snapshot::default()
        });
        assert!(text.contains("\ndtu_polls_sent_total 3\n"), "{text}");
        assert!(text.contains("\ndtu_connections 1\n"), "{text}");
        assert!(
            text.contains("\ndtu_storage_rows_written_total 7\n"),
            "{text}"
        );
        assert!(text.contains("dtu_poll_latency_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("dtu_poll_latency_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("dtu_poll_latency_seconds_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("dtu_poll_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("dtu_poll_latency_seconds_count 2\n"));
        assert!(
            text.contains("dtu_http_requests_total{route=\"/api/devices/{id}\",status=\"200\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn gauge_never_goes_below_zero() {
        let g = Gauge::default();
        g.dec();
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
