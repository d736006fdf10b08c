//! End-to-end: what devices send is stored — every value, across a SIGTERM and a restart —
//! and comes back through the history API and exports.

mod common;

use common::device::FakeDevice;
use common::{wait_for, Options, TestServer};
use dtu_supervisor::storage::db::Db;
use serde_json::Value;

/// Points the test profile decodes from one answer to each poll.
const BLOCK_POINTS: usize = 4; // temperature, humidity, energy, status
const HEARTBEAT_POINTS: usize = 1; // pressure

fn events_of(server: &TestServer, device: &str) -> Vec<String> {
    let (status, body) = server.get(&format!("/api/events?device={device}&limit=100"));
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn every_value_is_stored_across_sigterm_and_restart() {
    let mut server = TestServer::start();
    let mut devices: Vec<FakeDevice> = (0..3)
        .map(|i| FakeDevice::framed_with(server.framed, 8100 + i, &[(2000, &[215])]))
        .collect();
    for d in devices.iter_mut() {
        d.heartbeat();
    }
    // Several timer polls each.
    wait_for("three answered timer polls per device", || {
        devices
            .iter()
            .all(|d| d.answered_at(2000) >= 3)
            .then_some(())
    });
    // Close the devices; once each reader thread has ended, its answer counts are final.
    let mut expected = 0;
    for d in devices.drain(..) {
        let state = d.state.clone();
        d.close();
        let answered = state.answered.lock().unwrap();
        expected += answered.get(&2000).copied().unwrap_or(0) * BLOCK_POINTS
            + answered.get(&2300).copied().unwrap_or(0) * HEARTBEAT_POINTS;
    }
    wait_for("devices offline", || {
        (0..3)
            .all(|i| !server.online(&(8100 + i).to_string()))
            .then_some(())
    });
    // SIGTERM at once: whatever is still buffered must be flushed before exit.
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert!(expected >= 3 * (3 * BLOCK_POINTS + HEARTBEAT_POINTS));

    let db = Db::connect(&server.sqlite_url(), 1).expect("open the test database");
    let stored = db.count_telemetry(None).expect("count") as usize;
    assert_eq!(
        stored, expected,
        "every value the devices answered is stored"
    );

    server.restart();
    let (status, rows) = server.get("/api/devices/8100/telemetry?point=temperature&limit=1000");
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r["point"] == "temperature" && r["value"].as_f64() == Some(21.5)),
        "{rows:?}"
    );
    // Known devices come back offline after a restart.
    let device = server.device("8100").expect("device known after restart");
    assert_eq!(device["online"], Value::Bool(false));
    let events = events_of(&server, "8100");
    assert_eq!(
        events.first().map(String::as_str),
        Some("disconnect"),
        "{events:?}"
    );
    assert!(events.contains(&"connect".to_string()));
}

#[test]
fn history_filters_packets_events_and_exports() {
    let server = TestServer::start_with(Options {
        register_timeout: "1s",
        ..Options::default()
    });
    let mut dev = FakeDevice::framed_with(server.framed, 8200, &[(2000, &[100])]);
    wait_for("first poll stored", || {
        let (_, rows) = server.get("/api/devices/8200/telemetry?point=temperature");
        rows.as_array().filter(|r| !r.is_empty()).map(|_| ())
    });
    let t_mid = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    dev.set_registers(2000, &[200]);
    wait_for("a poll after the change stored", || {
        let (_, rows) = server.get("/api/devices/8200/telemetry?point=temperature&limit=1");
        (rows[0]["value"].as_f64() == Some(20.0)).then_some(())
    });
    dev.heartbeat();
    wait_for("pressure stored", || {
        let (_, rows) = server.get("/api/devices/8200/telemetry?point=pressure");
        rows.as_array().filter(|r| !r.is_empty()).map(|_| ())
    });

    // Filters: point, time bounds as RFC 3339 and unix ms, limit; newest first.
    let mid = t_mid.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (_, before) = server.get(&format!(
        "/api/devices/8200/telemetry?point=temperature&to={mid}&limit=1000"
    ));
    let (_, after) = server.get(&format!(
        "/api/devices/8200/telemetry?point=temperature&from={}&limit=1000",
        t_mid.timestamp_millis()
    ));
    let before = before.as_array().unwrap();
    let after = after.as_array().unwrap();
    assert!(!before.is_empty() && !after.is_empty());
    assert!(before.iter().all(|r| r["value"].as_f64() == Some(10.0)));
    assert!(after.iter().all(|r| r["value"].as_f64() == Some(20.0)));
    let (_, one) = server.get("/api/devices/8200/telemetry?limit=1");
    assert_eq!(one.as_array().unwrap().len(), 1);
    let (_, all) = server.get("/api/devices/8200/telemetry?limit=1000");
    let times: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    for bad in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "limit=0",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "nonsense=1",
    ] {
        let (status, body) = server.get(&format!("/api/devices/8200/telemetry?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }

    // Raw packets: requests out, answers in, the heartbeat, in hex, newest first.
    let (status, packets) = server.get("/api/devices/8200/packets?limit=500");
    assert_eq!(status, 200);
    let packets = packets.as_array().unwrap();
    let has = |dir: &str, kind: &str| {
        packets
            .iter()
            .any(|p| p["direction"] == dir && p["kind"] == kind)
    };
    assert!(
        has("out", "modbus")
            && has("in", "modbus")
            && has("in", "heartbeat")
            && has("in", "register")
    );
    assert!(
        packets
            .iter()
            .any(|p| p["hex"] == "01 03 07 D0 00 28 45 59"),
        "the block poll request in hex"
    );
    assert!(packets.iter().any(|p| p["hex"] == "02 00"), "the heartbeat");

    // Connection history: replaced, heartbeat timeout is covered elsewhere; rejected here.
    let second = FakeDevice::framed(server.framed, 8200);
    dev.wait_closed("replaced");
    let silent = FakeDevice::connect(server.framed, common::device::Proto::Framed);
    silent.wait_closed("silent connection rejected");
    wait_for("events stored", || {
        let events = events_of(&server, "8200");
        (events.iter().filter(|e| *e == "connect").count() == 2
            && events.contains(&"replaced".to_string()))
        .then_some(())
    });
    wait_for("rejected stored", || {
        let (_, all) = server.get("/api/events?limit=1000");
        all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "rejected")
            .then_some(())
    });
    drop(second);

    // Exports: CSV parses back to what the API shows; XLSX is a workbook with the same rows.
    let csv_text = server
        .request("GET", "/api/export?device=8200&format=csv")
        .call()
        .expect("csv export")
        .into_string()
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["device_id", "point", "value", "raw", "at"]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert!(records.iter().all(|r| &r[0] == "8200"));
    let db = Db::connect(&server.sqlite_url(), 1).unwrap();
    let stored = db.count_telemetry(Some("8200")).unwrap() as usize;
    assert!(
        records.len() <= stored && records.len() + 10 >= stored,
        "csv {} vs stored {stored}",
        records.len()
    );

    let mut xlsx = Vec::new();
    // Download links carry the token as a query parameter (the console's export buttons).
    ureq::get(&server.url(&format!(
        "/api/export?device=8200&format=xlsx&to={mid}&token={}",
        common::ADMIN_TOKEN
    )))
    .call()
    .expect("xlsx export")
    .into_reader()
    .read_to_end(&mut xlsx)
    .unwrap();
    use calamine::Reader as _;
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(xlsx)).expect("a valid workbook");
    let sheet = book.worksheet_range("telemetry").expect("telemetry sheet");
    let rows: Vec<_> = sheet.rows().collect();
    assert_eq!(rows[0][0].to_string(), "device_id");
    assert!(rows.len() > 1);
    let (status, _) = server.get("/api/export?format=pdf");
    assert_eq!(status, 400);
}

use std::io::Read as _;

#[test]
fn retention_deletes_old_telemetry_at_start() {
    let mut server = TestServer::start_with(Options {
        extra_server_toml: "retention_telemetry = \"2s\"\nretention_packets = \"2s\"\n".into(),
        ..Options::default()
    });
    let dev = FakeDevice::framed_with(server.framed, 8300, &[(2000, &[1])]);
    wait_for("two answered polls", || {
        (dev.answered_at(2000) >= 2).then_some(())
    });
    dev.close();
    wait_for("device offline", || (!server.online("8300")).then_some(()));
    let stopped_at = std::time::Instant::now();
    assert_eq!(server.terminate().code(), Some(0));
    let db = Db::connect(&server.sqlite_url(), 1).unwrap();
    assert!(db.count_telemetry(Some("8300")).unwrap() >= 8);
    // Every row is now older than the retention once 2 s have passed since the last one.
    while stopped_at.elapsed() < std::time::Duration::from_millis(2500) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.restart();
    wait_for("the retention job to run at start", || {
        server
            .log_text()
            .contains("retention: deleted")
            .then_some(())
    });
    wait_for("old telemetry gone", || {
        (db.count_telemetry(Some("8300")).ok()? == 0).then_some(())
    });
    let (_, packets) = server.get("/api/devices/8300/packets");
    assert_eq!(packets.as_array().map(|p| p.len()), Some(0), "{packets}");
    // Connection history is kept.
    let (_, events) = server.get("/api/events?device=8300");
    assert!(!events.as_array().unwrap().is_empty());
}
