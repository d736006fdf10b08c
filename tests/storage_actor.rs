//! The storage actor against the real database layer on SQLite temp files: batching by size and
//! by time, many concurrent senders, an outage with spooling, a restart that replays the spool,
//! and a damaged spool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{TimeZone, Utc};
use dtu_supervisor::storage::rows::{ConnEvent, ConnEventRow, Row, TelemetryRow};
use dtu_supervisor::storage::StorageSettings;
use dtu_supervisor::storage::{
    BatchWriter, Db, FlushAll, FlushReport, GetStats, Storage, StorageError, StorageStats, Store,
    StoreMany,
};

// ---- log capture -------------------------------------------------------------------------

struct Captured {
    thread: ThreadId,
    level: log::Level,
    text: String,
}

static LOGS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LOGS.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Captured {
                    thread: std::thread::current().id(),
                    level: r.level(),
                    text: r.args().to_string(),
                });
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if log::set_logger(&Capture).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// Captured lines that satisfy `keep`.
fn logs(keep: impl Fn(&Captured) -> bool) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|c| keep(c))
        .map(|c| format!("{} {}", c.level, c.text))
        .collect()
}

// ---- helpers -----------------------------------------------------------------------------

fn sqlite(dir: &Path) -> Db {
    let url = format!("sqlite://{}", dir.join("test.db").display());
    Db::connect(&url, 2).expect("connect to a SQLite temp file")
}

fn telemetry(device: u32, i: u32) -> Row {
    Row::Telemetry(TelemetryRow {
        device_id: format!("{}", 1000 + device),
        point: "temperature".into(),
        value: f64::from(i) * 0.1,
        raw: f64::from(i),
        at: Utc
            .timestamp_opt(1_700_000_000 + i64::from(i), 0)
            .single()
            .expect("valid time"),
        unit: "°C".into(),
    })
}

fn event(device: u32) -> Row {
    Row::Event(ConnEventRow {
        device_id: format!("{}", 1000 + device),
        event: ConnEvent::Connect,
        remote_addr: "10.1.2.3:40000".into(),
        detail: String::new(),
        at: Utc::now(),
    })
}

fn settings(batch_size: usize, flush_interval: Duration, max_buffer: usize) -> StorageSettings {
    StorageSettings {
        batch_size,
        flush_interval,
        max_buffer,
        store_heartbeats: true,
        spool_path: PathBuf::from("unused.jsonl"), // Storage::start takes the path
        max_spool: u64::MAX,
        warn_lag: Duration::from_secs(30),
        retention_telemetry: None,
        retention_packets: None,
        retention_deliveries: None,
        packets: Default::default(),
        recent_packets: 0,
    }
}

fn count(db: &Db) -> i64 {
    db.count_telemetry(None).expect("count telemetry")
}

async fn stats(addr: &Addr<Storage>) -> StorageStats {
    addr.send(GetStats).await.expect("storage answers")
}

/// Waits (generously) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn stats_until(
    addr: &Addr<Storage>,
    what: &str,
    done: impl Fn(&StorageStats) -> bool,
) -> StorageStats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(addr).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real database that fails while `down` is set, as if it were unreachable.
#[derive(Clone)]
struct Flaky {
    db: Db,
    down: Arc<AtomicBool>,
}

impl BatchWriter for Flaky {
    fn write(&mut self, rows: &[Row]) -> Result<usize, StorageError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StorageError::Connect(
                "connection refused (test outage)".into(),
            ));
        }
        self.db.write(rows)
    }
}

fn spool_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

// ---- tests -------------------------------------------------------------------------------

#[actix_rt::test]
async fn fifty_thousand_rows_from_many_senders_all_land() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(dir.path());
    let addr = Storage::start(
        db.clone(),
        settings(1000, Duration::from_secs(1), 200_000),
        dir.path().join("spool.jsonl"),
    );
    const TASKS: u32 = 8;
    const PER_TASK: u32 = 6250;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let addr = addr.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut i = 0;
            while i < PER_TASK {
                if t % 2 == 0 {
                    addr.do_send(Store(telemetry(t, i)));
                    i += 1;
                } else {
                    let n = 125.min(PER_TASK - i);
                    addr.do_send(StoreMany((i..i + n).map(|j| telemetry(t, j)).collect()));
                    i += n;
                }
                if i % 1000 == 0 {
                    actix_rt::task::yield_now().await;
                }
            }
            addr.do_send(Store(event(t)));
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
    let report = addr.send(FlushAll::default()).await.expect("flush answers");
    let total = i64::from(TASKS * PER_TASK);
    assert_eq!((report.spooled, report.unsaved), (0, 0), "{report:?}");
    assert!(report.written > 0, "{report:?}");
    let s = stats(&addr).await;
    assert_eq!(s.written, u64::from(TASKS * PER_TASK + TASKS), "{s:?}");
    assert_eq!(count(&db), total);
    assert_eq!(
        db.count_telemetry(Some("1003")).expect("count"),
        i64::from(PER_TASK)
    );
    assert_eq!(
        (s.buffered, s.spooled, s.failed_flushes),
        (0, 0, 0),
        "{s:?}"
    );
}

#[actix_rt::test]
async fn flushes_when_a_batch_is_full() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(dir.path());
    let addr = Storage::start(
        db.clone(),
        settings(100, Duration::from_secs(3600), 10_000),
        dir.path().join("spool.jsonl"),
    );
    // 250 rows: a write starts at 100 waiting; those that arrive meanwhile (150, more than a
    // batch) go in the next write, which takes all that wait.
    for i in 0..250 {
        addr.do_send(Store(telemetry(1, i)));
    }
    eventually("full batches", || count(&db) == 250).await;
    stats_until(&addr, "full batches", |s| {
        s.written == 250 && s.buffered == 0
    })
    .await;
    // Fewer than a batch wait for the interval.
    for i in 250..300 {
        addr.do_send(Store(telemetry(1, i)));
    }
    let s = stats_until(&addr, "50 waiting", |s| s.buffered == 50).await;
    assert_eq!(s.written, 250, "{s:?}");
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db), 250, "no partial batch before the interval");
    let report = addr.send(FlushAll::default()).await.expect("flush answers");
    assert_eq!(report.written, 50);
    assert_eq!(count(&db), 300);
}

#[actix_rt::test]
async fn flushes_when_the_interval_passes() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(dir.path());
    let addr = Storage::start(
        db.clone(),
        settings(1_000_000, Duration::from_millis(200), 10_000_000),
        dir.path().join("spool.jsonl"),
    );
    for i in 0..30 {
        addr.do_send(Store(telemetry(2, i)));
    }
    eventually("rows written by time", || count(&db) == 30).await;
    // And again, once the buffer had been empty.
    addr.do_send(StoreMany((30..40).map(|i| telemetry(2, i)).collect()));
    eventually("more rows written by time", || count(&db) == 40).await;
    let s = stats(&addr).await;
    assert_eq!((s.written, s.buffered), (40, 0), "{s:?}");
}

#[actix_rt::test]
async fn an_outage_spools_and_everything_lands_afterwards() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = sqlite(dir.path());
    let down = Arc::new(AtomicBool::new(true));
    let max_buffer = 1000;
    let addr = Storage::start(
        Flaky {
            db: db.clone(),
            down: Arc::clone(&down),
        },
        settings(100, Duration::from_millis(50), max_buffer),
        spool.clone(),
    );
    let mut sent = 0u32;
    let mut last_spooled = 0;
    for round in 0..40 {
        addr.do_send(StoreMany(
            (sent..sent + 200)
                .map(|i| telemetry(round % 5, i))
                .collect(),
        ));
        sent += 200;
        actix_rt::time::sleep(Duration::from_millis(10)).await;
        let s = stats(&addr).await;
        assert!(s.buffered <= max_buffer, "memory above max_buffer: {s:?}");
        assert!(
            s.spooled_now >= last_spooled,
            "the spool only grows while down"
        );
        last_spooled = s.spooled_now;
    }
    let s = stats(&addr).await;
    assert!(!s.database_up && s.failed_flushes > 0, "{s:?}");
    assert!(
        s.spooled_now >= u64::from(sent) - max_buffer as u64,
        "{s:?}"
    );
    assert_eq!(spool_lines(&spool) as u64, s.spooled_now);
    assert_eq!(count(&db), 0);
    // The JSON the /metrics endpoint will serve.
    let json = serde_json::to_value(&s).expect("stats serialise");
    for key in [
        "buffered",
        "written",
        "retried",
        "spooled",
        "spooled_now",
        "failed_flushes",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }

    down.store(false, Ordering::SeqCst);
    let s = stats_until(&addr, "recovery", |s| {
        s.written == u64::from(sent) && s.buffered == 0 && s.spooled_now == 0
    })
    .await;
    assert!(s.database_up, "{s:?}");
    assert_eq!(count(&db), i64::from(sent));
    assert!(!spool.exists(), "spool removed once replayed");

    // One line when the outage started, one when it ended; not one per retry.
    let me = std::thread::current().id();
    let ours = |c: &Captured| c.thread == me;
    let failed = logs(|c| ours(c) && c.text.contains("database write failed"));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("WARN") && failed[0].contains("test outage"));
    let resumed = logs(|c| ours(c) && c.text.contains("database writes resumed after"));
    assert_eq!(resumed.len(), 1, "{resumed:?}");
}

#[test]
fn flush_all_while_down_spools_and_the_next_start_replays() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool: PathBuf = dir.path().join("spool").join("rows.jsonl");
    let db = sqlite(dir.path());

    // First run: the database is down for good; shutdown flushes into the spool.
    let (db1, spool1) = (db.clone(), spool.clone());
    let report = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let down = Arc::new(AtomicBool::new(true));
            let addr = Storage::start(
                Flaky { db: db1, down },
                settings(100, Duration::from_millis(50), 400),
                spool1,
            );
            for i in 0..3000 {
                addr.do_send(Store(telemetry(i % 3, i)));
            }
            addr.send(FlushAll {
                deadline: Duration::from_millis(800),
            })
            .await
            .expect("flush answers")
        })
    })
    .join()
    .expect("first run");
    assert_eq!(
        report,
        FlushReport {
            written: 0,
            spooled: 3000,
            unsaved: 0
        }
    );
    assert_eq!(spool_lines(&spool), 3000);
    assert_eq!(count(&db), 0);

    // Second run: the database is up; the spool is replayed without being asked.
    let (db2, spool2) = (db.clone(), spool.clone());
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let addr = Storage::start(
                db2.clone(),
                settings(100, Duration::from_millis(50), 400),
                spool2.clone(),
            );
            eventually("the spool replayed", || count(&db2) == 3000).await;
            let s = stats_until(&addr, "spool gone", |s| s.spooled_now == 0).await;
            assert_eq!((s.written, s.spooled), (3000, 0), "{s:?}");
            assert!(!spool2.exists());
        })
    })
    .join()
    .expect("second run");
    assert_eq!(count(&db), 3000);
}

#[actix_rt::test]
async fn a_corrupt_spool_line_is_logged_and_skipped() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("left-over.jsonl");
    let db = sqlite(dir.path());
    let mut text = String::new();
    for i in 0..100 {
        if i == 50 {
            text.push_str("{\"t\":\"telemetry\",\"device_id\":\"1\",\"po\u{fffd}\n");
        }
        text.push_str(&serde_json::to_string(&telemetry(7, i)).expect("serialise"));
        text.push('\n');
    }
    std::fs::write(&spool, text).expect("write spool");

    let addr = Storage::start(
        db.clone(),
        settings(30, Duration::from_millis(50), 1000),
        spool.clone(),
    );
    eventually("the good lines replayed", || count(&db) == 100).await;
    let s = stats_until(&addr, "spool gone", |s| s.spooled_now == 0).await;
    assert_eq!((s.written, s.spool_corrupt), (100, 1), "{s:?}");
    assert!(!spool.exists());
    let path = spool.display().to_string();
    let warned = logs(|c| c.text.contains(&path) && c.text.contains("line 51"));
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].starts_with("WARN"));
}
