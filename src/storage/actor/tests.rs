//! The Storage actor against a writer in memory that can fail, hang and panic on demand.

use super::*;
use crate::storage::rows::{DeviceRow, Direction, PacketRow, TelemetryRow};
use chrono::{TimeZone, Utc};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Records what it writes; fails while `down`; panics on the calls listed in `panic_on`.
#[derive(Clone, Default)]
struct MemWriter {
    rows: Arc<Mutex<Vec<Row>>>,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    panic_on_call: Option<usize>,
    /// The first call takes this long.
    slow_first_call: Option<Duration>,
    /// Every call takes this long (a slow database).
    slow_calls: Option<Duration>,
}

impl BatchWriter for MemWriter {
    fn write(&mut self, rows: &[Row]) -> Result<usize, StorageError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_call == Some(call) {
            panic!("boom on call {call}");
        }
        if let (0, Some(delay)) = (call, self.slow_first_call) {
            std::thread::sleep(delay);
        }
        if let Some(delay) = self.slow_calls {
            std::thread::sleep(delay);
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StorageError::Connect("down for the test".into()));
        }
        lock_rows(&self.rows).extend_from_slice(rows);
        Ok(rows.len())
    }
}

fn lock_rows(rows: &Mutex<Vec<Row>>) -> MutexGuard<'_, Vec<Row>> {
    rows.lock().unwrap_or_else(PoisonError::into_inner)
}

fn row(i: u32) -> Row {
    Row::Telemetry(TelemetryRow {
        device_id: format!("dev{}", i % 13),
        point: "p".into(),
        value: f64::from(i),
        raw: f64::from(i),
        at: Utc
            .timestamp_opt(1_700_000_000 + i64::from(i), 0)
            .single()
            .expect("valid time"),
        unit: String::new(),
    })
}

/// A device's state: the same few devices over and over, so order matters.
fn device_state(i: u32) -> Row {
    let at = Utc
        .timestamp_opt(1_700_000_000 + i64::from(i), 0)
        .single()
        .expect("valid time");
    Row::Device(DeviceRow {
        id: format!("dev{}", i % 3),
        protocol: "framed".into(),
        profile: None,
        remote_addr: format!("10.0.0.1:{i}"),
        online: i % 20 == 0,
        connected_at: at,
        last_seen: at,
        parent: None,
        unit: None,
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

async fn stats(addr: &Addr<Storage>) -> StorageStats {
    addr.send(GetStats).await.expect("storage answers")
}

/// Polls the stats until `done` holds; panics after a generous deadline.
async fn wait_for(addr: &Addr<Storage>, what: &str, done: impl Fn(&StorageStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(addr).await;
        if done(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff(1), Duration::from_millis(200));
    assert_eq!(backoff(2), Duration::from_millis(400));
    assert_eq!(backoff(5), Duration::from_millis(3200));
    assert_eq!(backoff(9), BACKOFF_MAX);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
}

#[actix_rt::test]
async fn nothing_is_lost_through_an_outage_and_states_keep_their_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let writer = MemWriter::default();
    writer.down.store(true, Ordering::SeqCst);
    let addr = Storage::start(
        writer.clone(),
        settings(50, Duration::from_millis(20), 300),
        spool.clone(),
    );
    // Every tenth row a device's state (an upsert): those must reach the database in the
    // order they arrived; points may overtake older spooled ones.
    let sent: Vec<Row> = (0..3000)
        .map(|i| if i % 10 == 0 { device_state(i) } else { row(i) })
        .collect();
    for (i, chunk) in sent.chunks(100).enumerate() {
        if i % 2 == 0 {
            addr.do_send(StoreMany(chunk.to_vec()));
        } else {
            for r in chunk {
                addr.do_send(Store(r.clone()));
            }
        }
        let s = stats(&addr).await;
        assert!(s.buffered <= 300, "memory over max_buffer: {s:?}");
        if i == 15 {
            // Mid-way the database comes back for a moment, then fails again.
            writer.down.store(false, Ordering::SeqCst);
            wait_for(&addr, "a write", |s| s.written > 0).await;
            writer.down.store(true, Ordering::SeqCst);
        }
    }
    let s = stats(&addr).await;
    assert!(
        s.spooled > 0 && s.spooled_now > 0 && !s.database_up,
        "{s:?}"
    );
    assert!(spool.exists());
    writer.down.store(false, Ordering::SeqCst);
    wait_for(&addr, "everything written", |s| s.written == 3000).await;
    let s = stats(&addr).await;
    assert_eq!((s.buffered, s.spooled_now), (0, 0), "{s:?}");
    assert!(s.database_up && s.failed_flushes > 0 && s.retried > 0);
    let written = lock_rows(&writer.rows).clone();
    let states =
        |rows: &[Row]| -> Vec<Row> { rows.iter().filter(|r| !r.order_free()).cloned().collect() };
    assert_eq!(states(&written), states(&sent), "states written in order");
    let key = |r: &Row| serde_json::to_string(r).expect("json");
    let mut a: Vec<String> = written.iter().map(key).collect();
    let mut b: Vec<String> = sent.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "every row written once");
    assert!(!spool.exists());
}

#[actix_rt::test]
async fn flush_all_when_down_spools_everything_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_path = dir.path().join("spool.jsonl");
    let writer = MemWriter::default();
    writer.down.store(true, Ordering::SeqCst);
    let addr = Storage::start(
        writer.clone(),
        settings(40, Duration::from_millis(10), 150),
        spool_path.clone(),
    );
    let sent: Vec<Row> = (0..500).map(row).collect();
    for chunk in sent.chunks(25) {
        addr.do_send(StoreMany(chunk.to_vec()));
    }
    wait_for(&addr, "a failed write", |s| s.failed_flushes > 0).await;
    let report = addr
        .send(FlushAll {
            deadline: Duration::from_millis(500),
        })
        .await
        .expect("answer");
    assert_eq!(
        report,
        FlushReport {
            written: 0,
            spooled: 500,
            unsaved: 0
        }
    );
    let s = stats(&addr).await;
    assert_eq!((s.buffered, s.spooled_now), (0, 500), "{s:?}");
    let mut spool = Spool::open(&spool_path).expect("open spool");
    let mut back = Vec::new();
    while !spool.is_empty() {
        let chunk = spool.read_chunk(64).expect("read");
        back.extend(chunk.rows);
        spool.commit(chunk.pos).expect("commit");
    }
    assert_eq!(back, sent);
}

#[actix_rt::test]
async fn flush_all_when_up_writes_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = MemWriter::default();
    let addr = Storage::start(
        writer.clone(),
        settings(1000, Duration::from_secs(3600), 100_000),
        dir.path().join("spool.jsonl"),
    );
    for i in 0..2500 {
        addr.do_send(Store(row(i)));
    }
    let report = addr.send(FlushAll::default()).await.expect("answer");
    assert_eq!(report.written, 2500);
    assert_eq!((report.spooled, report.unsaved), (0, 0));
    assert_eq!(lock_rows(&writer.rows).len(), 2500);
    // Nothing to do: answers at once.
    let report = addr.send(FlushAll::default()).await.expect("answer");
    assert_eq!(report, FlushReport::default());
}

#[actix_rt::test]
async fn a_write_hanging_past_the_deadline_is_spooled_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let writer = MemWriter {
        slow_first_call: Some(Duration::from_millis(1500)),
        ..MemWriter::default()
    };
    let addr = Storage::start(
        writer.clone(),
        settings(10, Duration::from_secs(3600), 1000),
        spool.clone(),
    );
    addr.do_send(StoreMany((0..15).map(row).collect()));
    let report = addr
        .send(FlushAll {
            deadline: Duration::from_millis(300),
        })
        .await
        .expect("answer");
    assert_eq!(
        report,
        FlushReport {
            written: 0,
            spooled: 15,
            unsaved: 0
        }
    );
    assert_eq!(stats(&addr).await.buffered, 0);
    // The slow write (all 15 rows waiting: a write takes every row waiting) commits after
    // all, then the spool is replayed: at least once, here twice for the batch in flight.
    wait_for(&addr, "spool replayed", |s| {
        s.spooled_now == 0 && s.written == 30
    })
    .await;
    let written = lock_rows(&writer.rows).clone();
    let expected: Vec<Row> = (0..15).chain(0..15).map(row).collect();
    assert_eq!(written, expected);
    assert!(!spool.exists());
}

#[actix_rt::test]
async fn rows_stay_in_memory_when_the_spool_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").expect("write");
    let writer = MemWriter::default();
    writer.down.store(true, Ordering::SeqCst);
    let addr = Storage::start(
        writer.clone(),
        settings(20, Duration::from_millis(10), 50),
        not_a_dir.join("spool.jsonl"),
    );
    let sent: Vec<Row> = (0..200).map(row).collect();
    addr.do_send(StoreMany(sent.clone()));
    let s = stats(&addr).await;
    assert_eq!((s.buffered, s.spooled, s.spooled_now), (200, 0, 0), "{s:?}");
    writer.down.store(false, Ordering::SeqCst);
    wait_for(&addr, "all written", |s| s.written == 200).await;
    assert_eq!(*lock_rows(&writer.rows), sent);
}

#[actix_rt::test]
async fn a_panicking_writer_is_a_failed_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = MemWriter {
        panic_on_call: Some(0),
        ..MemWriter::default()
    };
    let addr = Storage::start(
        writer.clone(),
        settings(10, Duration::from_millis(10), 1000),
        dir.path().join("spool.jsonl"),
    );
    addr.do_send(StoreMany((0..25).map(row).collect()));
    wait_for(&addr, "all written", |s| s.written == 25).await;
    let s = stats(&addr).await;
    assert_eq!(s.failed_flushes, 1);
    assert_eq!(
        *lock_rows(&writer.rows),
        (0..25).map(row).collect::<Vec<_>>()
    );
}

#[actix_rt::test]
async fn heartbeats_are_dropped_unless_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = MemWriter::default();
    let mut s = settings(100, Duration::from_millis(10), 1000);
    s.store_heartbeats = false;
    let addr = Storage::start(writer.clone(), s, dir.path().join("spool.jsonl"));
    let packet = |kind| {
        Row::Packet(PacketRow {
            device_id: "1".into(),
            direction: Direction::In,
            kind,
            bytes: vec![2, 0],
            at: Utc::now(),
        })
    };
    addr.do_send(Store(packet(PacketKind::Heartbeat)));
    addr.do_send(Store(packet(PacketKind::Data)));
    let report = addr.send(FlushAll::default()).await.expect("answer");
    assert_eq!(report.written, 1);
    let written = lock_rows(&writer.rows).clone();
    assert!(
        matches!(written.as_slice(), [Row::Packet(p)] if p.kind == PacketKind::Data),
        "{written:?}"
    );
}

#[actix_rt::test]
async fn a_long_replay_leaves_every_other_write_to_live_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.jsonl");
    // An earlier run left 3,000 rows; replayed 100 at a time, 5 ms a write.
    let old: Vec<Row> = (0..3000).map(row).collect();
    Spool::open(&path)
        .and_then(|mut s| s.append(&old))
        .expect("spool");
    let writer = MemWriter {
        slow_calls: Some(Duration::from_millis(5)),
        ..MemWriter::default()
    };
    let addr = Storage::start(
        writer.clone(),
        settings(100, Duration::from_millis(10), 100_000),
        path.clone(),
    );
    wait_for(&addr, "the replay under way", |s| s.written >= 200).await;
    let live: Vec<Row> = (10_000..10_050).map(row).collect();
    addr.do_send(StoreMany(live.clone()));
    wait_for(&addr, "all written", |s| s.written == 3050).await;
    let written = lock_rows(&writer.rows).clone();
    let position = |r: &Row| written.iter().position(|w| w == r).expect("written");
    let last_live = live.iter().map(position).max().expect("live rows");
    let last_old = old.iter().map(position).max().expect("old rows");
    assert!(
        last_live < last_old,
        "live rows waited for the whole replay: last live at {last_live}, last old at {last_old}"
    );
    assert!(!path.exists());
}

#[actix_rt::test]
async fn a_full_spool_drops_packets_then_telemetry_counted_and_degraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.jsonl");
    let writer = MemWriter::default();
    writer.down.store(true, Ordering::SeqCst);
    let mut s = settings(10, Duration::from_millis(10), 20);
    // Room for about 60 rows of either kind.
    s.max_spool = 60 * 130;
    let addr = Storage::start(writer.clone(), s, path.clone());
    let packet = |i: u32| {
        Row::Packet(PacketRow {
            device_id: format!("dev{}", i % 13),
            direction: Direction::In,
            kind: PacketKind::Modbus,
            bytes: vec![1, 3, 2, 0, 1, 0x79, 0x84],
            at: Utc::now(),
        })
    };
    let sent: Vec<Row> = (0..400)
        .map(|i| if i % 2 == 0 { packet(i) } else { row(i) })
        .collect();
    for chunk in sent.chunks(20) {
        addr.do_send(StoreMany(chunk.to_vec()));
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(&addr, "drops of both kinds", |s| {
        s.dropped_packets > 0 && s.dropped_telemetry > 0
    })
    .await;
    let s = stats(&addr).await;
    assert!(s.spool_bytes <= 60 * 130, "{s:?}");
    // Packets go first: of what was dropped, more packets than telemetry.
    assert!(s.dropped_packets > s.dropped_telemetry, "{s:?}");
    let reasons = s.degraded.join(" | ");
    assert!(reasons.contains("database unreachable"), "{reasons}");
    assert!(reasons.contains("spool full"), "{reasons}");
    assert!(reasons.contains("spooled"), "{reasons}");
    // Back up: whatever was kept is written; nothing is counted twice.
    writer.down.store(false, Ordering::SeqCst);
    let dropped = s.dropped_packets + s.dropped_telemetry;
    wait_for(&addr, "the rest written", |s| {
        s.written + s.dropped_packets + s.dropped_telemetry == 400 && s.spooled_now == 0
    })
    .await;
    let s = stats(&addr).await;
    assert_eq!(s.dropped_packets + s.dropped_telemetry, dropped, "{s:?}");
    assert!(
        !s.degraded.iter().any(|r| r.contains("unreachable")),
        "{:?}",
        s.degraded
    );
}

#[actix_rt::test]
async fn spills_while_a_replayed_chunk_is_written_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.jsonl");
    let old: Vec<Row> = (0..2000).map(row).collect();
    Spool::open(&path)
        .and_then(|mut s| s.append(&old))
        .expect("spool");
    // Slow writes and a small memory: live rows spill to the spool while replayed chunks
    // are being written, so a chunk's commit meets a spill (it used to overlap it).
    let writer = MemWriter {
        slow_calls: Some(Duration::from_millis(3)),
        ..MemWriter::default()
    };
    let addr = Storage::start(
        writer.clone(),
        settings(50, Duration::from_millis(5), 60),
        path.clone(),
    );
    let live: Vec<Row> = (10_000..14_000).map(row).collect();
    for chunk in live.chunks(40) {
        addr.do_send(StoreMany(chunk.to_vec()));
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    wait_for(&addr, "all written", |s| {
        s.written >= 6000 && s.spooled_now == 0 && s.buffered == 0
    })
    .await;
    let key = |r: &Row| serde_json::to_string(r).expect("json");
    let mut written: Vec<String> = lock_rows(&writer.rows).iter().map(key).collect();
    let mut sent: Vec<String> = old.iter().chain(&live).map(key).collect();
    written.sort();
    sent.sort();
    assert_eq!(written, sent, "every row once");
    assert!(!path.exists());
}
