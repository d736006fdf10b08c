//! Telemetry through the real write path on SQLite: rows `do_send` to the Storage actor (the
//! shipped `[storage]` settings and connection settings), written by its DbWriter thread;
//! then the database file's bytes per point and the time of the history query of one point
//! over a day.
//!
//! ```text
//! cargo bench --bench storage
//! DTU_BENCH_DEVICES=1000 DTU_BENCH_POINTS=10 DTU_BENCH_SAMPLES=120 cargo bench --bench storage
//! ```
//!
//! Two databases, each a fresh file in a temporary directory (`TMPDIR`):
//! 1. **fleet**: `DTU_BENCH_DEVICES` devices × `DTU_BENCH_POINTS` points, one poll per device and
//!    second, `DTU_BENCH_SAMPLES` seconds of them, offered poll by poll (one `StoreMany` per
//!    poll, as device actors do) as fast as the writer takes them: the producer holds back
//!    while more than half of `max_buffer` rows are waiting, so nothing is spooled. Points/s is
//!    rows written from the first send to the end of the `FlushAll`; bytes/point is the file
//!    size after `PRAGMA wal_checkpoint(TRUNCATE)` over the rows stored.
//! 2. **day**: one device with `DTU_BENCH_POINTS` points polled every second for a day
//!    (86,400 samples per point), the same way; then the history query of the API for one
//!    point over that day (`GET /api/devices/{id}/telemetry?point=&from=&to=&limit=10000`,
//!    the largest limit the API honours), and the export's pages of that device's day
//!    (`telemetry_page`, as `GET /api/export?device=&from=&to=` reads them). Median of
//!    `DTU_BENCH_QUERY_RUNS` runs each.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::env_or;
use diesel::connection::SimpleConnection;
use dtu_supervisor::settings::ServerSettings;
use dtu_supervisor::storage::db::{Db, ExportCursor, TelemetryQuery};
use dtu_supervisor::storage::rows::{Row, TelemetryRow};
use dtu_supervisor::storage::{FlushAll, GetStats, Storage, StoreMany};

/// The history query's limit: the API's largest (`web::history::MAX_LIMIT`).
const HISTORY_LIMIT: i64 = 10_000;
const EXPORT_PAGE: i64 = 5_000;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let devices: usize = env_or("DTU_BENCH_DEVICES", 1_000);
    let points: usize = env_or("DTU_BENCH_POINTS", 10);
    let samples: usize = env_or("DTU_BENCH_SAMPLES", 120);
    let runs: usize = env_or("DTU_BENCH_QUERY_RUNS", 11);
    let day_samples: usize = env_or("DTU_BENCH_DAY_SAMPLES", 86_400);
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Utc
        .with_ymd_and_hms(2026, 11, 30, 0, 0, 0)
        .single()
        .expect("date");

    let fleet = dir.path().join("fleet.db");
    let written = insert(&fleet, devices, points, samples, start);
    println!(
        "fleet: {devices} devices x {points} points x {samples} s: {} points in {:.2} s = {:.0} points/s; \
         {} bytes = {:.1} bytes/point",
        written.points,
        written.seconds,
        written.points as f64 / written.seconds,
        written.bytes,
        written.bytes as f64 / written.points as f64
    );

    let day = dir.path().join("day.db");
    let written = insert(&day, 1, points, day_samples, start);
    println!(
        "day: 1 device x {points} points x {day_samples} s: {} points in {:.2} s = {:.0} points/s; \
         {} bytes = {:.1} bytes/point",
        written.points,
        written.seconds,
        written.points as f64 / written.seconds,
        written.bytes,
        written.bytes as f64 / written.points as f64
    );
    let db = Db::connect(&url(&day), 1).expect("database");
    let end = start + chrono::Duration::days(1);
    let query = TelemetryQuery {
        device_id: device_id(0),
        point: Some(point_name(points / 2)),
        from: Some(start),
        to: Some(end),
        limit: HISTORY_LIMIT,
    };
    let (ms, n) = median_ms(runs, || db.telemetry(&query).expect("history").len());
    println!(
        "history of one point over a day (limit {HISTORY_LIMIT}): {n} rows, median {ms:.2} ms of {runs}"
    );
    let (ms, n) = median_ms(runs.min(5), || export_day(&db, start, end));
    println!(
        "export of the device's day (pages of {EXPORT_PAGE}): {n} rows, median {ms:.0} ms = {:.0} rows/s",
        n as f64 / (ms / 1_000.0)
    );
}

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn device_id(d: usize) -> String {
    format!("{}", 100_000 + d)
}

fn point_name(p: usize) -> String {
    format!("point_{p}")
}

struct Written {
    points: u64,
    seconds: f64,
    bytes: u64,
}

/// Offers `devices × points × samples` rows through the Storage actor and waits until they
/// are written; the file's size after a checkpoint.
fn insert(
    path: &Path,
    devices: usize,
    points: usize,
    samples: usize,
    start: DateTime<Utc>,
) -> Written {
    let shipped = ServerSettings::default();
    let db = Db::connect(&url(path), shipped.database.pool_size).expect("database");
    let mut settings = shipped.storage.clone();
    settings.spool_path = path.with_extension("spool.jsonl");
    let spool = settings.spool_path.clone();
    let hold_above = settings.max_buffer / 2;
    let ids: Vec<String> = (0..devices).map(device_id).collect();
    let names: Vec<String> = (0..points).map(point_name).collect();
    let writer = db.clone();
    let system = actix::System::new();
    let (seconds, stats) = system.block_on(async move {
        let storage = Storage::start(writer, settings, spool);
        let t = Instant::now();
        for s in 0..samples {
            for (d, id) in ids.iter().enumerate() {
                // Devices' polls are spread over the second.
                let at = start
                    + chrono::Duration::seconds(s as i64)
                    + chrono::Duration::microseconds((d * 1_000_000 / devices.max(1)) as i64);
                let rows = names
                    .iter()
                    .enumerate()
                    .map(|(p, name)| {
                        let raw = ((s * 7 + d * 13 + p * 31) % 4_000) as f64;
                        Row::Telemetry(TelemetryRow {
                            device_id: id.clone(),
                            point: name.clone(),
                            value: raw * 0.1 - 20.0,
                            raw,
                            at,
                            unit: "V".into(),
                        })
                    })
                    .collect();
                storage.do_send(StoreMany(rows));
            }
            loop {
                let stats = storage.send(GetStats).await.expect("stats");
                if stats.buffered <= hold_above {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let report = storage
            .send(FlushAll {
                deadline: Duration::from_secs(600),
            })
            .await
            .expect("flush");
        let seconds = t.elapsed().as_secs_f64();
        assert_eq!(report.spooled, 0, "rows were spooled");
        let stats = storage.send(GetStats).await.expect("stats");
        (seconds, stats)
    });
    assert_eq!(stats.spooled, 0, "rows were spooled");
    let expected = (devices * points * samples) as u64;
    assert_eq!(stats.written, expected, "rows written");
    let mut conn = db.conn().expect("connection");
    conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let stored = db.count_telemetry(None).expect("count") as u64;
    assert_eq!(stored, expected, "rows stored");
    let bytes = std::fs::metadata(path).expect("database file").len();
    Written {
        points: stored,
        seconds,
        bytes,
    }
}

/// The export's reading of one device's day, page by page; the rows read.
fn export_day(db: &Db, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    let id = device_id(0);
    let mut after: Option<ExportCursor> = None;
    let mut n = 0;
    loop {
        let page = db
            .telemetry_page(Some(&id), Some(from), Some(to), after, EXPORT_PAGE)
            .expect("export page");
        n += page.len();
        match page.last() {
            Some((c, _)) if page.len() as i64 == EXPORT_PAGE => after = Some(*c),
            _ => return n,
        }
    }
}

/// Median wall time of `runs` calls of `f`, in ms, and what the last call answered.
fn median_ms(runs: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut n = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        n = f();
        times.push(t.elapsed().as_secs_f64() * 1_000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], n)
}
