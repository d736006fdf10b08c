//! Insert throughput of the storage layer: 100,000 telemetry rows written in `Db::write` calls
//! of 1,000 (one transaction each), then read back through export pages of 1,000.
//!
//! ```text
//! cargo run --release --example storage_bench [--features mysql] -- [URL ...]
//! ```
//! Without a URL it uses a SQLite file in a temporary directory. The database must exist; its
//! telemetry table is emptied first (pruned), so use a scratch database.

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use dtu_supervisor::storage::db::{Db, ExportCursor, PrunableTable};
use dtu_supervisor::storage::rows::{Row, TelemetryRow};

const ROWS: usize = 100_000;
const BATCH: usize = 1_000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls.push(format!("sqlite://{}/bench.db", dir.path().display()));
    }
    for url in urls {
        if let Err(e) = bench(&url) {
            eprintln!("{url}: {e}");
        }
    }
}

fn bench(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let db = Db::connect(url, 4)?;
    let far_future = Utc
        .with_ymd_and_hms(2999, 1, 1, 0, 0, 0)
        .single()
        .ok_or("date")?;
    db.prune(PrunableTable::Telemetry, far_future)?;
    let start = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .ok_or("date")?;
    let rows: Vec<Row> = (0..ROWS)
        .map(|i| {
            Row::Telemetry(TelemetryRow {
                device_id: format!("dtu-{:04}", i % 50),
                point: format!("point_{}", i % 8),
                value: i as f64 * 0.1,
                raw: i as f64,
                at: start + Duration::milliseconds(i as i64 * 10),
                unit: String::new(),
            })
        })
        .collect();

    let t = Instant::now();
    for batch in rows.chunks(BATCH) {
        db.write(batch)?;
    }
    let write = t.elapsed().as_secs_f64();
    assert_eq!(db.count_telemetry(None)?, ROWS as i64);

    let t = Instant::now();
    let mut after: Option<ExportCursor> = None;
    let mut read = 0;
    loop {
        let page = db.telemetry_page(None, None, None, after, 1_000)?;
        let Some((c, _)) = page.last() else { break };
        after = Some(*c);
        read += page.len();
    }
    let export = t.elapsed().as_secs_f64();
    assert_eq!(read, ROWS);

    let t = Instant::now();
    let pruned = db.prune(PrunableTable::Telemetry, far_future)?;
    let prune = t.elapsed().as_secs_f64();
    assert_eq!(pruned, ROWS);

    println!(
        "{:<8} insert {:>8.0} rows/s ({:.2} s, batches of {BATCH}) | export {:>8.0} rows/s | prune {:>8.0} rows/s",
        db.backend.as_str(),
        ROWS as f64 / write,
        write,
        ROWS as f64 / export,
        ROWS as f64 / prune,
    );
    Ok(())
}
