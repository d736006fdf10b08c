//! One storage suite, run against SQLite (a temporary file, always), PostgreSQL and, with
//! `--features mysql`, MariaDB/MySQL.
//!
//! Each PostgreSQL/MariaDB test creates and drops a database of its own, so the tests run in
//! parallel. Servers: `DTU_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`) and
//! `DTU_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`), without a database path. A server
//! that cannot be reached skips its tests with a message, except under `CI=true`, where it fails
//! them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use diesel::prelude::*;
use dtu_supervisor::storage::db::{
    Backend, Db, ExportCursor, PrunableTable, QueuedCommand, StorageError, TelemetryQuery,
    TelemetryRecord, TokenRecord, WebhookRecord,
};
use dtu_supervisor::storage::rows::{
    CommandRow, ConnEvent, ConnEventRow, DeliveryRow, DeviceRow, Direction, PacketKind, PacketRow,
    Row, TelemetryRow,
};

diesel::table! {
    __diesel_schema_migrations (version) {
        version -> Text,
        run_on -> Timestamp,
    }
}

// ---------------------------------------------------------------------------------------------
// Databases to test against

/// A database for one test; dropping it removes the server-side database.
struct TestDb {
    url: String,
    drop_sql: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, sql)) = &self.drop_sql {
            if let Err(e) = admin_execute(admin, sql) {
                eprintln!("could not drop the test database ({sql}): {e}");
            }
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn unreachable(what: &str, url: &str, err: &str) -> Option<TestDb> {
    if in_ci() {
        panic!("{what} not reachable at {url} (CI=true, so this fails): {err}");
    }
    eprintln!("skipped: {what} not reachable at {url}: {err}");
    None
}

fn unique_name(case: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let case: String = case.chars().take(28).collect();
    format!(
        "dtu_t_{case}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn admin_execute(admin_url: &str, sql: &str) -> Result<(), String> {
    if admin_url.starts_with("postgres") {
        let mut c = PgConnection::establish(admin_url).map_err(|e| e.to_string())?;
        diesel::sql_query(sql)
            .execute(&mut c)
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    #[cfg(feature = "mysql")]
    {
        let mut c = MysqlConnection::establish(admin_url).map_err(|e| e.to_string())?;
        diesel::sql_query(sql)
            .execute(&mut c)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    #[cfg(not(feature = "mysql"))]
    Err(format!("no client for {admin_url}"))
}

fn sqlite_db(_case: &str) -> Option<TestDb> {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory that does not exist yet: connect creates it.
    let url = format!("sqlite://{}/data/dtu.db", dir.path().display());
    Some(TestDb {
        url,
        drop_sql: None,
        _dir: Some(dir),
    })
}

fn postgres_db(case: &str) -> Option<TestDb> {
    let server = std::env::var("DTU_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = format!("{server}/postgres?connect_timeout=3");
    let name = unique_name(case);
    if let Err(e) = admin_execute(&admin, &format!("CREATE DATABASE {name}")) {
        return unreachable("PostgreSQL", &server, &e);
    }
    Some(TestDb {
        url: format!("{server}/{name}"),
        drop_sql: Some((
            admin,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )),
        _dir: None,
    })
}

#[cfg(feature = "mysql")]
fn mariadb_db(case: &str) -> Option<TestDb> {
    let server =
        std::env::var("DTU_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    // Fail fast rather than wait on the client library's own connect timeout.
    let hostport = server.rsplit('@').next().unwrap_or("127.0.0.1:3306");
    if let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()
        .and_then(|mut a| a.next())
    {
        if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            return unreachable("MariaDB", &server, &e.to_string());
        }
    }
    let admin = server.clone();
    let name = unique_name(case);
    if let Err(e) = admin_execute(&admin, &format!("CREATE DATABASE {name}")) {
        return unreachable("MariaDB", &server, &e);
    }
    // Half the tests use the mariadb:// spelling.
    let scheme = if name.len() % 2 == 0 {
        "mariadb"
    } else {
        "mysql"
    };
    let rest = server.split_once("://").map(|(_, r)| r).unwrap_or("");
    Some(TestDb {
        url: format!("{scheme}://{rest}/{name}"),
        drop_sql: Some((admin, format!("DROP DATABASE IF EXISTS {name}"))),
        _dir: None,
    })
}

/// Runs each case against every backend, as `sqlite::case`, `postgres::case`, `mariadb::case`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() {
                if let Some(t) = super::sqlite_db(stringify!($case)) {
                    super::$case(&t.url, dtu_supervisor::storage::db::Backend::Sqlite);
                }
            } )*
        }
        mod postgres {
            $( #[test] fn $case() {
                if let Some(t) = super::postgres_db(stringify!($case)) {
                    super::$case(&t.url, dtu_supervisor::storage::db::Backend::Postgres);
                }
            } )*
        }
        #[cfg(feature = "mysql")]
        mod mariadb {
            $( #[test] fn $case() {
                if let Some(t) = super::mariadb_db(stringify!($case)) {
                    super::$case(&t.url, dtu_supervisor::storage::db::Backend::Mysql);
                }
            } )*
        }
    };
}

suite!(
    connects_and_migrates,
    second_connect_applies_nothing_and_keeps_rows,
    writes_and_reads_every_row_kind,
    device_upsert_updates,
    telemetry_filters_and_orders,
    packets_and_events_newest_first,
    export_pages_walk_everything_once,
    prune_deletes_exactly_the_old_rows,
    ten_thousand_rows_in_one_write,
    failed_write_leaves_nothing,
    unstorable_rows_are_dropped_not_fatal,
    concurrent_writers,
    times_far_from_now_compare_exactly,
    one_value_per_series_and_millisecond_the_last_wins,
    telemetry_is_also_the_contract_view,
    telemetry_of_the_previous_release_is_migrated,
    relay_queue_in_order_capped_and_marked,
    command_upsert_keeps_the_latest_state,
    tokens_insert_list_revoke,
    events_among_device_patterns,
    command_queue_in_order_claimed_once_and_expired,
    concurrent_enqueues_get_distinct_sequence_numbers,
    webhooks_and_their_delivery_log,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn base() -> DateTime<Utc> {
    // Microseconds that a lossy path would lose.
    Utc.with_ymd_and_hms(2024, 3, 5, 12, 34, 56).unwrap() + Duration::from_micros(123_456)
}

fn secs(s: i64) -> DateTime<Utc> {
    base() + chrono::Duration::seconds(s)
}

/// A time as telemetry stores it: to the millisecond.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

fn tel(device: &str, point: &str, value: f64, at: DateTime<Utc>) -> Row {
    Row::Telemetry(TelemetryRow {
        device_id: device.into(),
        point: point.into(),
        value,
        raw: value * 10.0,
        at,
        unit: String::new(),
    })
}

fn packet(device: &str, direction: Direction, bytes: &[u8], at: DateTime<Utc>) -> Row {
    Row::Packet(PacketRow {
        device_id: device.into(),
        direction,
        kind: PacketKind::Modbus,
        bytes: bytes.to_vec(),
        at,
    })
}

fn event(device: &str, ev: ConnEvent, detail: &str, at: DateTime<Utc>) -> Row {
    Row::Event(ConnEventRow {
        device_id: device.into(),
        event: ev,
        remote_addr: "127.0.0.1:40001".into(),
        detail: detail.into(),
        at,
    })
}

fn device(id: &str, online: bool, profile: Option<&str>, at: DateTime<Utc>) -> DeviceRow {
    DeviceRow {
        id: id.into(),
        protocol: "framed".into(),
        profile: profile.map(str::to_string),
        remote_addr: "10.1.2.3:5000".into(),
        online,
        connected_at: at,
        last_seen: at + chrono::Duration::milliseconds(1500),
        parent: None,
        unit: None,
    }
}

fn open(url: &str, backend: Backend) -> Db {
    let db = Db::connect(url, 4).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(db.backend, backend);
    db
}

fn query(device: &str) -> TelemetryQuery {
    TelemetryQuery {
        device_id: device.into(),
        point: None,
        from: None,
        to: None,
        limit: 1_000_000,
    }
}

fn migrations(db: &Db) -> Vec<(String, chrono::NaiveDateTime)> {
    let mut conn = db.conn().expect("conn");
    __diesel_schema_migrations::table
        .select((
            __diesel_schema_migrations::version,
            __diesel_schema_migrations::run_on,
        ))
        .order(__diesel_schema_migrations::version)
        .load(&mut *conn)
        .expect("migrations table")
}

// ---------------------------------------------------------------------------------------------
// The cases

fn connects_and_migrates(url: &str, backend: Backend) {
    let db = open(url, backend);
    db.ping().expect("ping");
    assert!(db.devices().expect("devices").is_empty());
    assert_eq!(db.count_telemetry(None).expect("count"), 0);
    assert!(db.events(None, 10).expect("events").is_empty());
    assert!(db.packets("x", None, 10).expect("packets").is_empty());
    let applied = migrations(&db);
    assert!(
        applied.iter().any(|(v, _)| v.ends_with("000000")),
        "{applied:?}"
    );
    assert_eq!(db.write(&[]).expect("empty write"), 0);
}

fn second_connect_applies_nothing_and_keeps_rows(url: &str, backend: Backend) {
    let db = open(url, backend);
    let before = migrations(&db);
    db.write(&[
        tel("d1", "t", 1.5, secs(0)),
        Row::Device(device("d1", true, Some("p"), secs(0))),
    ])
    .expect("write");
    drop(db);

    let db = open(url, backend);
    assert_eq!(
        migrations(&db),
        before,
        "a restart applied migrations again"
    );
    assert_eq!(db.count_telemetry(None).expect("count"), 1);
    assert_eq!(db.devices().expect("devices").len(), 1);
}

fn writes_and_reads_every_row_kind(url: &str, backend: Backend) {
    let db = open(url, backend);
    // Nanoseconds are cut to microseconds on every backend.
    let at = base() + Duration::from_nanos(789);
    let d = device("dev-1", true, Some("default"), secs(-60));
    let rows = vec![
        tel("dev-1", "temperature", 21.25, at),
        packet("dev-1", Direction::Out, &[0x01, 0x03, 0x00, 0x0a, 0xff], at),
        event("dev-1", ConnEvent::Connect, "registered as dev-1", at),
        event("", ConnEvent::Rejected, "bad registration: \"zz\"", secs(1)),
        Row::Device(d.clone()),
    ];
    assert_eq!(db.write(&rows).expect("write"), rows.len());

    let t = db.telemetry(&query("dev-1")).expect("telemetry");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].device_id, "dev-1");
    assert_eq!(t[0].point, "temperature");
    assert_eq!(t[0].value, 21.25);
    assert_eq!(t[0].raw, 212.5);
    assert_eq!(t[0].at, ms(base()), "telemetry keeps milliseconds");

    let p = db.packets("dev-1", None, 10).expect("packets");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].hex, "01 03 00 0A FF");
    assert_eq!(p[0].direction, "out");
    assert_eq!(p[0].kind, "modbus");
    assert_eq!(p[0].at, base());

    let e = db.events(Some("dev-1"), 10).expect("events");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].event, "connect");
    assert_eq!(e[0].detail, "registered as dev-1");
    assert_eq!(e[0].remote_addr, "127.0.0.1:40001");
    assert_eq!(e[0].at, base());
    let all = db.events(None, 10).expect("all events");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].device_id, "", "the rejected, newest, comes first");
    assert_eq!(all[0].event, "rejected");
    assert_eq!(all[0].detail, "bad registration: \"zz\"");

    assert_eq!(db.devices().expect("devices"), vec![d]);

    let json = serde_json::to_value(&t[0]).expect("json");
    assert_eq!(json["at"], "2024-03-05T12:34:56.123Z");
}

fn device_upsert_updates(url: &str, backend: Backend) {
    let db = open(url, backend);
    let a = device("a", true, Some("p1"), secs(0));
    let b = device("b", true, None, secs(0));
    db.write(&[Row::Device(b.clone()), Row::Device(a.clone())])
        .expect("first");
    let mut a2 = device("a", false, None, secs(30));
    a2.remote_addr = "[2001:db8::1]:6000".into();
    a2.protocol = "ttms".into();
    // The same device twice in one batch: the last wins.
    let mut a3 = a2.clone();
    a3.last_seen = secs(31);
    assert_eq!(
        db.write(&[Row::Device(a2), Row::Device(a3.clone())])
            .expect("upsert"),
        1,
        "the earlier duplicate is not counted"
    );
    assert_eq!(db.devices().expect("devices"), vec![a3.clone(), b.clone()]);
    // A unit keeps its DTU and slave address; an update may not lose them.
    let mut unit = device("a.7", true, Some("plc"), secs(40));
    unit.parent = Some("a".into());
    unit.unit = Some(7);
    db.write(&[Row::Device(unit.clone())]).expect("unit");
    unit.online = false;
    db.write(&[Row::Device(unit.clone())])
        .expect("unit offline");
    assert_eq!(db.devices().expect("devices"), vec![a3, unit, b]);
}

fn command(id: &str, status: &str, at: DateTime<Utc>) -> CommandRow {
    CommandRow {
        id: id.into(),
        device_id: "d1".into(),
        request: r#"{"type":"read"}"#.into(),
        status: status.into(),
        result: None,
        error: None,
        requested_by: Some("alice".into()),
        created_at: secs(0),
        updated_at: at,
    }
}

fn command_upsert_keeps_the_latest_state(url: &str, backend: Backend) {
    let db = open(url, backend);
    db.write(&[Row::Command(command("c1", "sent", secs(0)))])
        .expect("sent");
    assert_eq!(db.command("c1").expect("read").unwrap().status, "sent");
    let mut done = command("c1", "ok", secs(2));
    done.result = Some(r#"{"registers":[1]}"#.into());
    // Two states of one command and another command in one batch: the last state wins.
    let timeout = CommandRow {
        error: Some("no answer".into()),
        ..command("c2", "timeout", secs(3))
    };
    assert_eq!(
        db.write(&[
            Row::Command(command("c1", "sent", secs(1))),
            Row::Command(done.clone()),
            Row::Command(timeout.clone()),
        ])
        .expect("upsert"),
        2
    );
    let c1 = db.command("c1").expect("read").unwrap();
    assert_eq!(
        (c1.status.as_str(), c1.result.as_deref(), c1.updated_at),
        ("ok", done.result.as_deref(), secs(2))
    );
    assert_eq!(c1.created_at, secs(0));
    assert_eq!(c1.requested_by.as_deref(), Some("alice"));
    let c2 = db.command("c2").expect("read").unwrap();
    assert_eq!(
        (c2.status.as_str(), c2.error.as_deref()),
        ("timeout", Some("no answer"))
    );
    assert!(db.command("nope").expect("read").is_none());
}

fn events_among_device_patterns(url: &str, backend: Backend) {
    let db = open(url, backend);
    let rows: Vec<Row> = ["7201", "7202", "7301", "7_01", "72%x"]
        .iter()
        .enumerate()
        .map(|(i, d)| event(d, ConnEvent::Connect, "", secs(i as i64)))
        .collect();
    db.write(&rows).expect("write");
    let ids = |patterns: &[&str]| -> Vec<String> {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        db.events_among(&p, 100)
            .expect("events")
            .into_iter()
            .map(|e| e.device_id)
            .collect()
    };
    assert_eq!(ids(&["7201"]), vec!["7201"]);
    assert_eq!(ids(&["72*"]), vec!["72%x", "7202", "7201"]);
    assert_eq!(ids(&["7_*"]), vec!["7_01"], "_ is no wildcard");
    assert_eq!(ids(&["72%*"]), vec!["72%x"], "% is no wildcard");
    assert_eq!(ids(&["7301", "7202"]), vec!["7301", "7202"]);
    assert!(ids(&[]).is_empty());
}

fn tokens_insert_list_revoke(url: &str, backend: Backend) {
    let db = open(url, backend);
    let t = TokenRecord {
        id: "t1".into(),
        name: "ops".into(),
        role: "operator".into(),
        hash: "ab".repeat(32),
        devices: Some(r#"["10*"]"#.into()),
        created_at: secs(5),
        revoked: false,
    };
    db.insert_token(&t).expect("insert");
    assert_eq!(db.tokens().expect("list"), vec![t.clone()]);
    assert!(db.revoke_token("t1").expect("revoke"));
    assert!(!db.revoke_token("t1").expect("revoke twice"));
    assert!(db.tokens().expect("list")[0].revoked);
    assert!(db.insert_token(&t).is_err(), "ids are unique");
}

fn delivery(
    webhook: &str,
    delivery: &str,
    attempt: u32,
    status: Option<u16>,
    at: DateTime<Utc>,
) -> Row {
    Row::Delivery(DeliveryRow {
        webhook_id: webhook.into(),
        delivery: delivery.into(),
        event: "device.online".into(),
        events: 1,
        attempt,
        outcome: if status == Some(200) {
            "ok"
        } else {
            "connect_error"
        }
        .into(),
        status_code: status,
        error: status.is_none().then(|| "connection refused".to_string()),
        latency_ms: 12,
        at,
    })
}

fn webhooks_and_their_delivery_log(url: &str, backend: Backend) {
    let db = open(url, backend);
    let w = WebhookRecord {
        id: "w1".into(),
        url: "https://example.com/hook?x=1".into(),
        events: r#"["device.online","telemetry"]"#.into(),
        secret: Some("k".into()),
        devices: None,
        created_at: secs(3),
    };
    let w2 = WebhookRecord {
        id: "w2".into(),
        secret: None,
        devices: Some(r#"["10*"]"#.into()),
        created_at: secs(4),
        ..w.clone()
    };
    db.insert_webhook(&w).expect("insert");
    db.insert_webhook(&w2).expect("insert");
    assert!(db.insert_webhook(&w).is_err(), "ids are unique");
    assert_eq!(db.webhooks().expect("list"), vec![w.clone(), w2.clone()]);

    let rows = vec![
        delivery("w1", "e1", 1, None, secs(10)),
        delivery("w1", "e1", 2, Some(200), secs(11)),
        delivery("w2", "e1", 1, Some(200), secs(12)),
        Row::Delivery(DeliveryRow {
            webhook_id: "w1".into(),
            delivery: String::new(),
            event: "overflow".into(),
            events: 7,
            attempt: 0,
            outcome: "overflow".into(),
            status_code: None,
            error: Some("queue full".into()),
            latency_ms: 0,
            at: secs(13),
        }),
    ];
    assert_eq!(db.write(&rows).expect("write"), 4);
    let log = db.deliveries("w1", 10).expect("log");
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].outcome, "overflow", "newest first");
    assert_eq!((log[0].events, log[0].attempt), (7, 0));
    assert_eq!(
        (log[1].attempt, log[1].status_code, log[1].error.as_deref()),
        (2, Some(200), None)
    );
    assert_eq!(
        (log[2].attempt, log[2].status_code, log[2].error.as_deref()),
        (1, None, Some("connection refused"))
    );
    assert_eq!((log[2].latency_ms, log[2].at), (12, secs(10)));
    assert_eq!(db.deliveries("w1", 1).expect("log").len(), 1);
    assert_eq!(db.deliveries("w2", 10).expect("log").len(), 1);

    assert!(db.delete_webhook("w1").expect("delete"));
    assert!(!db.delete_webhook("w1").expect("delete twice"));
    assert_eq!(db.webhooks().expect("list"), vec![w2]);
    assert_eq!(db.deliveries("w1", 10).expect("log kept").len(), 3);

    // Retention: attempts before the cutoff go, whichever subscriber they belong to.
    assert_eq!(
        db.prune(PrunableTable::WebhookDeliveries, secs(12))
            .expect("prune"),
        2
    );
    let left = db.deliveries("w1", 10).expect("log");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].outcome, "overflow");
    assert_eq!(db.deliveries("w2", 10).expect("log").len(), 1);
}

fn telemetry_filters_and_orders(url: &str, backend: Backend) {
    let db = open(url, backend);
    let mut rows = Vec::new();
    for i in 0..20 {
        rows.push(tel("d", "a", i as f64, secs(i)));
        rows.push(tel("d", "b", 100.0 + i as f64, secs(i)));
    }
    rows.push(tel("other", "a", -1.0, secs(5)));
    db.write(&rows).expect("write");

    let all = db.telemetry(&query("d")).expect("all");
    assert_eq!(all.len(), 40);
    assert!(all.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    assert_eq!(all[0].at, ms(secs(19)));

    let a = db
        .telemetry(&TelemetryQuery {
            point: Some("a".into()),
            ..query("d")
        })
        .expect("point a");
    assert_eq!(a.len(), 20);
    assert!(a.iter().all(|r| r.point == "a" && r.device_id == "d"));
    let values: Vec<f64> = a.iter().map(|r| r.value).collect();
    assert_eq!(values, (0..20).rev().map(f64::from).collect::<Vec<_>>());

    // [from, to): 5 in, 10 out.
    let window = db
        .telemetry(&TelemetryQuery {
            point: Some("b".into()),
            from: Some(secs(5)),
            to: Some(secs(10)),
            ..query("d")
        })
        .expect("window");
    let values: Vec<f64> = window.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![109.0, 108.0, 107.0, 106.0, 105.0]);

    // A bound between two rows, to the millisecond (telemetry's resolution).
    let from = secs(18) + chrono::Duration::milliseconds(1);
    let late = db
        .telemetry(&TelemetryQuery {
            from: Some(from),
            ..query("d")
        })
        .expect("late");
    assert_eq!(late.len(), 2, "only the rows at 19 s");

    let limited = db
        .telemetry(&TelemetryQuery {
            limit: 3,
            ..query("d")
        })
        .expect("limit");
    assert_eq!(limited.len(), 3);
    assert_eq!(limited[0].at, ms(secs(19)));
    assert_eq!(limited[2].at, ms(secs(18)));
    // Ties in time: the later series (b, created second) first.
    assert_eq!(
        (limited[0].point.as_str(), limited[1].point.as_str()),
        ("b", "a")
    );

    assert!(db
        .telemetry(&TelemetryQuery {
            limit: 0,
            ..query("d")
        })
        .expect("limit 0")
        .is_empty());
    assert!(db.telemetry(&query("nobody")).expect("nobody").is_empty());
}

fn packets_and_events_newest_first(url: &str, backend: Backend) {
    let db = open(url, backend);
    let mut rows = Vec::new();
    for i in 0..10u8 {
        rows.push(packet("p", Direction::In, &[i], secs(i64::from(i))));
        rows.push(event(
            "p",
            ConnEvent::Connect,
            &format!("#{i}"),
            secs(i64::from(i)),
        ));
    }
    rows.push(event("q", ConnEvent::Disconnect, "q", secs(100)));
    // Written out of time order: reads sort by time, not by insertion.
    rows.reverse();
    db.write(&rows).expect("write");

    let p = db.packets("p", None, 4).expect("packets");
    let hex: Vec<&str> = p.iter().map(|r| r.hex.as_str()).collect();
    assert_eq!(hex, vec!["09", "08", "07", "06"]);
    assert_eq!(p[0].at, secs(9));
    assert_eq!(db.packets("p", None, 100).expect("all").len(), 10);
    // Older than a time (what the API adds below the packets held in memory).
    let older = db.packets("p", Some(secs(6)), 2).expect("older");
    let hex: Vec<&str> = older.iter().map(|r| r.hex.as_str()).collect();
    assert_eq!(hex, vec!["05", "04"]);

    let e = db.events(Some("p"), 3).expect("events");
    let details: Vec<&str> = e.iter().map(|r| r.detail.as_str()).collect();
    assert_eq!(details, vec!["#9", "#8", "#7"]);
    let all = db.events(None, 2).expect("all");
    assert_eq!(all[0].device_id, "q");
    assert_eq!(all[1].detail, "#9");
    assert_eq!(db.events(None, 1000).expect("all").len(), 11);
}

fn export_pages_walk_everything_once(url: &str, backend: Backend) {
    let db = open(url, backend);
    // 2,500 rows over two devices, seven rows per timestamp, written in shuffled order.
    let mut rows: Vec<Row> = (0..2_500)
        .map(|i| {
            let dev = if i % 5 == 0 { "x" } else { "y" };
            tel(dev, &format!("p{}", i % 7), i as f64, secs(i / 7))
        })
        .collect();
    let n = rows.len();
    for i in 0..n {
        rows.swap(i, (i * 7919) % n);
    }
    db.write(&rows).expect("write");

    let mut seen = HashSet::new();
    let mut keys = HashSet::new();
    let mut last: Option<ExportCursor> = None;
    let mut pages = 0;
    loop {
        let page = db
            .telemetry_page(None, None, None, last, 1_000)
            .expect("page");
        if page.is_empty() {
            break;
        }
        pages += 1;
        for (cursor, rec) in &page {
            if let Some(prev) = last {
                assert!(
                    (cursor.at, cursor.series) > (prev.at, prev.series),
                    "ascending by (at, series)"
                );
            }
            assert_eq!(cursor.at, rec.at);
            assert!(keys.insert((cursor.at, cursor.series)), "{cursor:?} twice");
            assert!(seen.insert(rec.value as i64), "row {} twice", rec.value);
            last = Some(*cursor);
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2_500, "no gap");

    // One device in [from, to).
    let mut values = Vec::new();
    let mut last = None;
    loop {
        let page = db
            .telemetry_page(Some("x"), Some(secs(10)), Some(secs(20)), last, 7)
            .expect("page");
        let Some((c, _)) = page.last() else { break };
        last = Some(*c);
        values.extend(page.iter().map(|(_, r)| r.value as i64));
    }
    let expected: Vec<i64> = (70..140).filter(|i| i % 5 == 0).collect();
    let mut sorted = values.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(values.len(), expected.len());
}

fn prune_deletes_exactly_the_old_rows(url: &str, backend: Backend) {
    let db = open(url, backend);
    // 12,000 old rows (more than one chunk per series; the three series share timestamps)
    // and 300 new ones, the first in the cutoff's millisecond.
    let mut rows = Vec::new();
    for i in 0..12_000 {
        rows.push(tel("d", &format!("t{}", i % 3), i as f64, secs(i / 3)));
    }
    let cutoff = secs(4_000);
    for i in 0..300 {
        rows.push(tel(
            "d",
            "t0",
            -(i as f64),
            cutoff + chrono::Duration::milliseconds(i),
        ));
    }
    for i in 0..50 {
        rows.push(packet("d", Direction::In, &[1], secs(i)));
        rows.push(packet(
            "d",
            Direction::In,
            &[2],
            cutoff + chrono::Duration::seconds(i),
        ));
    }
    db.write(&rows).expect("write");

    assert_eq!(
        db.prune(PrunableTable::Telemetry, cutoff).expect("prune"),
        12_000
    );
    assert_eq!(db.count_telemetry(Some("d")).expect("count"), 300);
    let oldest = db
        .telemetry_page(None, None, None, None, 1)
        .expect("oldest");
    assert_eq!(
        oldest[0].1.at,
        ms(cutoff),
        "a row of the cutoff's millisecond stays"
    );

    assert_eq!(
        db.prune(PrunableTable::RawPackets, cutoff).expect("prune"),
        50
    );
    let left = db.packets("d", None, 1000).expect("packets");
    assert_eq!(left.len(), 50);
    assert!(left.iter().all(|p| p.hex == "02"));

    assert_eq!(
        db.prune(PrunableTable::Telemetry, cutoff).expect("again"),
        0
    );
    // Delivered relay frames go; frames still waiting for their target never do.
    for i in 0..3u8 {
        db.relay_enqueue("T1", "S1", &[i], 100).expect("enqueue");
    }
    let waiting = db.relay_pending(Some("T1"), 10).expect("pending");
    assert_eq!(waiting.len(), 3);
    let ids: Vec<i64> = waiting.iter().take(2).map(|r| r.id).collect();
    assert_eq!(db.relay_delivered(&ids).expect("delivered"), 2);
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        db.prune(PrunableTable::DeliveredRelay, past)
            .expect("prune"),
        0
    );
    assert_eq!(
        db.prune(PrunableTable::DeliveredRelay, future)
            .expect("prune"),
        2
    );
    let left = db.relay_pending(Some("T1"), 10).expect("pending");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, waiting[2].id);
}

fn ten_thousand_rows_in_one_write(url: &str, backend: Backend) {
    let db = open(url, backend);
    let rows: Vec<Row> = (0..10_000)
        .map(|i| tel(&format!("dev{}", i % 10), "v", i as f64, secs(i)))
        .collect();
    assert_eq!(db.write(&rows).expect("write"), 10_000);
    assert_eq!(db.count_telemetry(None).expect("count"), 10_000);
    assert_eq!(db.count_telemetry(Some("dev3")).expect("count"), 1_000);
    assert_eq!(db.count_telemetry(Some("nobody")).expect("count"), 0);
    // Devices upserted in bulk too (more than one statement's worth on SQLite).
    let devices: Vec<Row> = (0..3_000)
        .map(|i| Row::Device(device(&format!("dev{i:05}"), true, None, secs(0))))
        .collect();
    assert_eq!(db.write(&devices).expect("devices"), 3_000);
    assert_eq!(db.devices().expect("devices").len(), 3_000);
}

fn failed_write_leaves_nothing(url: &str, backend: Backend) {
    let db = open(url, backend);
    db.write(&[tel("d", "t", 1.0, secs(0))]).expect("first");
    {
        // Break the packets table: the telemetry of the same batch must roll back.
        let mut conn = db.conn().expect("conn");
        diesel::sql_query("DROP TABLE raw_packets")
            .execute(&mut *conn)
            .expect("drop");
    }
    let err = db
        .write(&[
            tel("d", "t", 2.0, secs(1)),
            tel("d", "new", 3.0, secs(1)),
            packet("d", Direction::In, &[1], secs(1)),
        ])
        .expect_err("a write into a missing table fails");
    assert!(matches!(err, StorageError::Query(_)), "{err:?}");
    assert_eq!(
        db.count_telemetry(None).expect("count"),
        1,
        "all or nothing"
    );
    // The series created by the failed write was rolled back with it: a later write of the
    // same point creates it again, and its values can be read.
    db.write(&[tel("d", "new", 4.0, secs(2))])
        .expect("write after the failure");
    let new = db
        .telemetry(&TelemetryQuery {
            point: Some("new".into()),
            ..query("d")
        })
        .expect("read");
    assert_eq!(new.len(), 1);
    assert_eq!((new[0].value, new[0].at), (4.0, ms(secs(2))));
}

fn unstorable_rows_are_dropped_not_fatal(url: &str, backend: Backend) {
    let db = open(url, backend);
    let long = "x".repeat(65);
    let rows = vec![
        tel("d", "ok", 1.0, secs(0)),
        tel("d", "nan", f64::NAN, secs(0)),
        tel("d", "inf", f64::INFINITY, secs(0)),
        tel(&long, "t", 1.0, secs(0)),
        Row::Device(device(&long, true, None, secs(0))),
        tel(&"y".repeat(64), "t", 1.0, secs(0)),
    ];
    assert_eq!(db.write(&rows).expect("write"), 2);
    assert_eq!(db.count_telemetry(None).expect("count"), 2);
    assert!(db.devices().expect("devices").is_empty());
}

fn concurrent_writers(url: &str, backend: Backend) {
    let db = open(url, backend);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for b in 0..10 {
                    let rows: Vec<Row> = (0..100)
                        .map(|i| {
                            tel(
                                &format!("w{t}"),
                                "v",
                                f64::from(i),
                                secs(b * 100 + i64::from(i)),
                            )
                        })
                        .collect();
                    db.write(&rows).expect("concurrent write");
                    db.telemetry(&query(&format!("w{t}"))).expect("read");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    assert_eq!(db.count_telemetry(None).expect("count"), 4_000);
    assert_eq!(db.count_telemetry(Some("w2")).expect("count"), 1_000);
}

fn times_far_from_now_compare_exactly(url: &str, backend: Backend) {
    // Outside MySQL's TIMESTAMP range (1970–2038) on purpose: MariaDB's range optimizer used
    // to match nothing for such bounds on an indexed DATETIME column.
    let db = open(url, backend);
    let at = |y, mo, d, us| {
        Utc.with_ymd_and_hms(y, mo, d, 23, 59, 59).unwrap() + chrono::Duration::microseconds(us)
    };
    let times = [
        at(1965, 5, 5, 1_000),
        at(2024, 1, 1, 0),
        at(2045, 7, 8, 999_000),
        at(2999, 12, 30, 500_000),
    ];
    let rows: Vec<Row> = times
        .iter()
        .enumerate()
        .map(|(i, t)| tel("d", "t", i as f64, *t))
        .collect();
    db.write(&rows).expect("write");

    let between = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| {
        let mut got: Vec<DateTime<Utc>> = db
            .telemetry(&TelemetryQuery {
                from,
                to,
                ..query("d")
            })
            .expect("telemetry")
            .into_iter()
            .map(|r| r.at)
            .collect();
        got.reverse();
        got
    };
    let y = |y| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(between(Some(y(1900)), Some(y(3000))), times.to_vec());
    assert_eq!(between(Some(y(2040)), None), times[2..].to_vec());
    assert_eq!(between(None, Some(y(1970))), times[..1].to_vec());
    assert_eq!(
        between(Some(times[2]), Some(times[3])),
        times[2..3].to_vec()
    );

    let page = db
        .telemetry_page(Some("d"), Some(y(1950)), None, None, 10)
        .expect("page");
    assert_eq!(page.len(), 4);
    let after = db
        .telemetry_page(Some("d"), None, Some(y(3000)), Some(page[2].0), 10)
        .expect("after");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1.at, times[3]);

    assert_eq!(
        db.prune(PrunableTable::Telemetry, y(2040)).expect("prune"),
        2
    );
    assert_eq!(between(None, None), times[2..].to_vec());
}

fn one_value_per_series_and_millisecond_the_last_wins(url: &str, backend: Backend) {
    let db = open(url, backend);
    let t = secs(0);
    let us = chrono::Duration::microseconds;
    // A device polling a point twice within one millisecond, in one batch: the later is kept.
    let rows = [
        tel("d", "p", 1.0, t),
        tel("d", "q", 5.0, t),
        tel("d", "p", 2.0, t + us(300)),
    ];
    assert_eq!(db.write(&rows).expect("write"), 3);
    // And across batches (a batch written again after an ambiguous commit, a late poll).
    db.write(&[tel("d", "p", 3.0, t + us(500))]).expect("again");
    db.write(&[tel("d", "p", 4.0, t + us(1_000))])
        .expect("next");
    let p = db
        .telemetry(&TelemetryQuery {
            point: Some("p".into()),
            ..query("d")
        })
        .expect("read");
    let got: Vec<(f64, DateTime<Utc>)> = p.iter().map(|r| (r.value, r.at)).collect();
    assert_eq!(
        got,
        vec![
            (4.0, ms(t) + chrono::Duration::milliseconds(1)),
            (3.0, ms(t))
        ]
    );
    assert_eq!(p[1].raw, 30.0, "raw goes with its value");
    assert_eq!(db.count_telemetry(Some("d")).expect("count"), 3);
}

/// The contract's `telemetry` (device_id, point, value, raw, at) as a view.
#[derive(QueryableByName, Debug, PartialEq)]
struct ViewRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    device_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    point: String,
    #[diesel(sql_type = diesel::sql_types::Double)]
    value: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    raw: f64,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    at: chrono::NaiveDateTime,
}

fn view_rows(db: &Db) -> Vec<ViewRow> {
    let mut conn = db.conn().expect("conn");
    diesel::sql_query(
        "SELECT device_id, point, value, raw, at FROM telemetry ORDER BY at, device_id, point",
    )
    .load(&mut *conn)
    .expect("the telemetry view")
}

fn telemetry_is_also_the_contract_view(url: &str, backend: Backend) {
    let db = open(url, backend);
    let old = Utc.with_ymd_and_hms(1969, 7, 20, 20, 17, 40).unwrap();
    db.write(&[
        tel("d", "b", 2.5, secs(1)),
        tel("d", "a", 1.5, secs(1)),
        tel("e", "a", -7.0, old),
    ])
    .expect("write");
    let view = view_rows(&db);
    let row = |d: &str, p: &str, value: f64, at: DateTime<Utc>| ViewRow {
        device_id: d.into(),
        point: p.into(),
        value,
        raw: value * 10.0,
        at: ms(at).naive_utc(),
    };
    assert_eq!(
        view,
        vec![
            row("e", "a", -7.0, old),
            row("d", "a", 1.5, secs(1)),
            row("d", "b", 2.5, secs(1)),
        ]
    );
}

/// The telemetry rows a database of the release before the series layout holds, as that
/// release's diesel wrote them (times as `%F %T%.f`), in the order written.
const LEGACY_ROWS: [(&str, &str, f64, f64, &str); 7] = [
    ("1001", "temperature", 21.5, 215.0, "2026-11-30 10:00:00"),
    ("1001", "humidity", 40.25, 4025.0, "2026-11-30 10:00:00"),
    (
        "1002",
        "temperature",
        19.0,
        190.0,
        "2026-11-30 10:00:00.500",
    ),
    (
        "1001",
        "temperature",
        21.75,
        217.5,
        "2026-11-30 10:00:01.250",
    ),
    // The same millisecond again: the later row is the one kept.
    (
        "1001",
        "temperature",
        22.0,
        220.0,
        "2026-11-30 10:00:01.250400",
    ),
    ("1001", "humidity", 41.0, 4100.0, "2026-11-30 10:00:01.250"),
    (
        "1002",
        "temperature",
        -3.5,
        -35.25,
        "1969-12-31 23:59:59.999",
    ),
];

/// Runs the migrations before the series layout on `url`, as the previous release did, and
/// writes [`LEGACY_ROWS`] into its `telemetry` table.
fn previous_release_database(url: &str, backend: Backend) {
    use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
    const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
    const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
    #[cfg(feature = "mysql")]
    const MYSQL: EmbeddedMigrations = embed_migrations!("migrations/mysql");
    const LAYOUT: &str = "2026-11-30-000100";
    let values: Vec<String> = LEGACY_ROWS
        .iter()
        .map(|(d, p, v, r, at)| format!("('{d}', '{p}', {v:?}, {r:?}, '{at}')"))
        .collect();
    let insert = format!(
        "INSERT INTO telemetry (device_id, point, value, raw, at) VALUES {}",
        values.join(", ")
    );
    fn up_to<C: MigrationHarness<B>, B: diesel::backend::Backend>(
        c: &mut C,
        source: EmbeddedMigrations,
    ) {
        let pending = c.pending_migrations(source).expect("migrations");
        for m in pending {
            if m.name().to_string().as_str() < LAYOUT {
                c.run_migration(&*m).expect("migration");
            }
        }
    }
    match backend {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://");
            if let Some(dir) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(dir).expect("directory");
            }
            let mut c = SqliteConnection::establish(path).expect("sqlite");
            up_to(&mut c, SQLITE);
            diesel::sql_query(&insert).execute(&mut c).expect("rows");
        }
        Backend::Postgres => {
            let mut c = PgConnection::establish(url).expect("postgres");
            up_to(&mut c, POSTGRES);
            diesel::sql_query(&insert).execute(&mut c).expect("rows");
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            // The client library knows only the mysql:// spelling.
            let url = url.replacen("mariadb://", "mysql://", 1);
            let mut c = MysqlConnection::establish(&url).expect("mysql");
            up_to(&mut c, MYSQL);
            diesel::sql_query(&insert).execute(&mut c).expect("rows");
        }
        #[cfg(not(feature = "mysql"))]
        Backend::Mysql => unreachable!("MySQL tests need the mysql feature"),
    }
}

fn telemetry_of_the_previous_release_is_migrated(url: &str, backend: Backend) {
    previous_release_database(url, backend);
    let db = open(url, backend);
    assert!(
        migrations(&db)
            .iter()
            .any(|(v, _)| v.as_str() == "20261130000100"),
        "the layout migration ran"
    );
    let at = |s: &str| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .unwrap()
            .and_utc()
    };
    let rec = |d: &str, p: &str, value: f64, raw: f64, t: &str| TelemetryRecord {
        device_id: d.into(),
        point: p.into(),
        value,
        raw,
        at: at(t),
    };
    // A device's history, newest first; in one millisecond the later series first.
    assert_eq!(
        db.telemetry(&query("1001")).expect("1001"),
        vec![
            rec("1001", "humidity", 41.0, 4100.0, "2026-11-30 10:00:01.250"),
            rec(
                "1001",
                "temperature",
                22.0,
                220.0,
                "2026-11-30 10:00:01.250"
            ),
            rec("1001", "humidity", 40.25, 4025.0, "2026-11-30 10:00:00"),
            rec("1001", "temperature", 21.5, 215.0, "2026-11-30 10:00:00"),
        ]
    );
    // The export of everything, oldest first; series numbered in order of appearance.
    let page = db
        .telemetry_page(None, None, None, None, 100)
        .expect("export");
    let export: Vec<TelemetryRecord> = page.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        export,
        vec![
            rec(
                "1002",
                "temperature",
                -3.5,
                -35.25,
                "1969-12-31 23:59:59.999"
            ),
            rec("1001", "temperature", 21.5, 215.0, "2026-11-30 10:00:00"),
            rec("1001", "humidity", 40.25, 4025.0, "2026-11-30 10:00:00"),
            rec(
                "1002",
                "temperature",
                19.0,
                190.0,
                "2026-11-30 10:00:00.500"
            ),
            rec(
                "1001",
                "temperature",
                22.0,
                220.0,
                "2026-11-30 10:00:01.250"
            ),
            rec("1001", "humidity", 41.0, 4100.0, "2026-11-30 10:00:01.250"),
        ]
    );
    assert_eq!(view_rows(&db).len(), 6);
    // New values join the migrated series.
    db.write(&[tel("1002", "temperature", 20.0, at("2026-11-30 10:00:02"))])
        .expect("write");
    let t = db
        .telemetry(&TelemetryQuery {
            point: Some("temperature".into()),
            ..query("1002")
        })
        .expect("1002");
    let values: Vec<f64> = t.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![20.0, 19.0, -3.5]);
}

// ---------------------------------------------------------------------------------------------
// URLs and failures, no server needed

#[test]
fn unknown_scheme_is_a_url_error_without_the_password() {
    for url in [
        "mongodb://admin:hunter2@db/x",
        "hunter2",
        "",
        "file:/tmp/x.db",
    ] {
        let started = Instant::now();
        let err = Db::connect(url, 1).expect_err(url);
        assert!(matches!(err, StorageError::Url(_)), "{url}: {err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn unreachable_postgres_fails_fast_without_the_password() {
    let started = Instant::now();
    let err = Db::connect("postgresql://dtu:s3cr%21t@127.0.0.1:1/dtu", 2).expect_err("port 1");
    assert!(matches!(err, StorageError::Connect(_)), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("s3cr"), "{msg}");
    assert!(msg.contains("***"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_url_without_the_feature_says_how_to_get_it() {
    for url in ["mysql://root:pw@127.0.0.1/x", "mariadb://root@127.0.0.1/x"] {
        let err = Db::connect(url, 1).expect_err(url);
        let msg = err.to_string();
        assert!(matches!(err, StorageError::Url(_)), "{err:?}");
        assert!(msg.contains("--features mysql"), "{msg}");
        assert!(msg.contains("default-libmysqlclient-dev"), "{msg}");
        assert!(!msg.contains(":pw@"), "{msg}");
    }
}

#[cfg(feature = "mysql")]
#[test]
fn unreachable_mariadb_fails_fast_without_the_password() {
    for url in [
        "mysql://dtu:s3cret@127.0.0.1:1/dtu",
        "mariadb://dtu:s3cret@127.0.0.1:1/dtu",
    ] {
        let started = Instant::now();
        let err = Db::connect(url, 2).expect_err(url);
        assert!(matches!(err, StorageError::Connect(_)), "{err:?}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[cfg(feature = "mysql")]
#[test]
fn wrong_mariadb_password_is_not_echoed() {
    let Some(_probe) = mariadb_db("wrongpw") else {
        return;
    };
    let err =
        Db::connect("mysql://nosuchuser:W0rdPass@127.0.0.1:3306/test", 1).expect_err("bad user");
    assert!(matches!(err, StorageError::Connect(_)), "{err:?}");
    assert!(!err.to_string().contains("W0rdPass"), "{err}");
}

#[cfg(feature = "mysql")]
#[test]
fn mariadb_sessions_are_utc() {
    let Some(t) = mariadb_db("utc") else {
        return;
    };
    let db = Db::connect(&t.url, 2).expect("connect");
    #[derive(QueryableByName)]
    struct Tz {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tz: String,
    }
    let mut conn = db.conn().expect("conn");
    let tz: Tz = diesel::sql_query("SELECT @@session.time_zone AS tz")
        .get_result(&mut *conn)
        .expect("tz");
    assert_eq!(tz.tz, "+00:00");
}

#[test]
fn sqlite_url_spellings_and_parent_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("a/b/c.db");
    let db = Db::connect(&format!("sqlite:{}", nested.display()), 2).expect("sqlite:PATH");
    assert_eq!(db.backend, Backend::Sqlite);
    db.write(&[tel("d", "t", 1.0, secs(0))]).expect("write");
    assert!(nested.exists());
    drop(db);
    let db = Db::connect(&format!("sqlite://{}", nested.display()), 2).expect("sqlite://PATH");
    assert_eq!(db.count_telemetry(None).expect("count"), 1);
}

#[test]
fn sqlite_in_memory_keeps_its_rows_for_the_life_of_the_db() {
    let db = Db::connect("sqlite::memory:", 4).expect("memory");
    db.write(&[tel("d", "t", 1.0, secs(0))]).expect("write");
    let other = Db::connect("sqlite::memory:", 4).expect("another memory db");
    assert_eq!(
        other.count_telemetry(None).expect("count"),
        0,
        "each is its own"
    );
    std::thread::sleep(Duration::from_millis(50));
    let clone = db.clone();
    std::thread::spawn(move || {
        assert_eq!(clone.count_telemetry(None).expect("count"), 1);
    })
    .join()
    .expect("thread");
    assert_eq!(db.count_telemetry(None).expect("count"), 1);
}

#[test]
fn sqlite_connections_get_the_pragmas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::connect(&format!("sqlite://{}/p.db", dir.path().display()), 2).expect("db");
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    #[derive(QueryableByName)]
    struct Sync {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    #[derive(QueryableByName)]
    struct Fk {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        foreign_keys: i32,
    }
    #[derive(QueryableByName)]
    struct Busy {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        timeout: i32,
    }
    let mut conn = db.conn().expect("conn");
    let dtu_supervisor::storage::db::AnyConnection::Sqlite(c) = &mut *conn else {
        panic!("not sqlite");
    };
    let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
        .get_result(c)
        .expect("mode");
    assert_eq!(mode.journal_mode, "wal");
    let sync: Sync = diesel::sql_query("PRAGMA synchronous")
        .get_result(c)
        .expect("sync");
    assert_eq!(sync.synchronous, 1, "NORMAL");
    let fk: Fk = diesel::sql_query("PRAGMA foreign_keys")
        .get_result(c)
        .expect("fk");
    assert_eq!(fk.foreign_keys, 1);
    let busy: Busy = diesel::sql_query("PRAGMA busy_timeout")
        .get_result(c)
        .expect("busy");
    assert!(busy.timeout >= 1000);
    #[derive(QueryableByName)]
    struct Checkpoint {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        wal_autocheckpoint: i32,
    }
    let checkpoint: Checkpoint = diesel::sql_query("PRAGMA wal_autocheckpoint")
        .get_result(c)
        .expect("wal_autocheckpoint");
    assert_eq!(checkpoint.wal_autocheckpoint, 10_000);
}

fn relay_queue_in_order_capped_and_marked(url: &str, backend: Backend) {
    use dtu_supervisor::storage::db::Enqueued;
    let db = open(url, backend);
    let before = Utc::now() - chrono::Duration::seconds(5);
    for i in 0..3u8 {
        let r = db
            .relay_enqueue("0000000B", "0000000A", &[0x24, i], 3)
            .expect("enqueue");
        assert_eq!(
            r,
            Enqueued::Queued {
                depth: i64::from(i) + 1
            }
        );
    }
    assert_eq!(
        db.relay_enqueue("0000000B", "0000000A", &[9], 3)
            .expect("enqueue"),
        Enqueued::Full { depth: 3 }
    );
    // Another target has its own cap.
    db.relay_enqueue("0000000C", "0000000A", &[7], 3)
        .expect("enqueue");
    let waiting = db.relay_pending(Some("0000000B"), 100).expect("pending");
    let hex: Vec<&str> = waiting.iter().map(|r| r.hex.as_str()).collect();
    assert_eq!(hex, ["2400", "2401", "2402"]);
    assert!(waiting.windows(2).all(|w| w[0].id < w[1].id));
    assert!(waiting
        .iter()
        .all(|r| r.sender == "0000000A" && r.queued_at >= before));
    assert_eq!(db.relay_pending(None, 100).expect("all").len(), 4);
    assert_eq!(db.relay_pending(None, 2).expect("limit").len(), 2);
    let first_two: Vec<i64> = waiting.iter().take(2).map(|r| r.id).collect();
    assert_eq!(db.relay_delivered(&first_two).expect("mark"), 2);
    let rest = db.relay_pending(Some("0000000B"), 100).expect("pending");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].hex, "2402");
    // Delivered frames no longer count against the cap.
    assert_eq!(
        db.relay_enqueue("0000000B", "0000000A", &[3], 3)
            .expect("enqueue"),
        Enqueued::Queued { depth: 2 }
    );
}

fn queued(id: &str, device: &str, expires_at: DateTime<Utc>) -> QueuedCommand {
    QueuedCommand {
        id: id.into(),
        device_id: device.into(),
        request: format!(r#"{{"type":"write_register","address":1,"value":1,"id":"{id}"}}"#),
        requested_by: Some("ops".into()),
        token_id: Some("t0123".into()),
        created_at: base(),
        expires_at,
        seq: 0,
    }
}

fn command_queue_in_order_claimed_once_and_expired(url: &str, backend: Backend) {
    let db = open(url, backend);
    let now = Utc::now();
    let later = now + chrono::Duration::hours(1);
    let past = now - chrono::Duration::seconds(1);
    for (i, id) in ["c1", "c2", "c3"].iter().enumerate() {
        assert_eq!(
            db.enqueue_command(&queued(id, "q1", later))
                .expect("enqueue"),
            i as i64 + 1
        );
    }
    assert_eq!(
        db.enqueue_command(&queued("x1", "q2", past))
            .expect("enqueue"),
        1
    );
    // A command sent at once (no queue columns) is not part of any queue.
    db.write(&[Row::Command(command("api1", "sent", base()))])
        .expect("write");

    assert_eq!(
        db.queued_devices(100).expect("devices"),
        ["q1".to_string(), "q2".to_string()]
    );
    let first = db.next_queued("q1").expect("next").expect("one queued");
    assert_eq!(first.id, "c1");
    assert_eq!(first.seq, 1);
    assert_eq!(first.requested_by.as_deref(), Some("ops"));
    assert_eq!(first.token_id.as_deref(), Some("t0123"));
    assert_eq!(first.created_at, base());
    assert_eq!(
        first.expires_at,
        later.trunc_subsecs(6),
        "expiry kept to the microsecond"
    );
    assert!(first.request.contains("\"c1\""));

    // Claimed exactly once.
    assert!(db.claim_command("c1", now).expect("claim"));
    assert!(!db.claim_command("c1", now).expect("claim again"));
    assert_eq!(db.command("c1").expect("get").expect("row").status, "sent");
    assert_eq!(db.next_queued("q1").expect("next").expect("c2").id, "c2");
    // Given back (its device went away before it was handed over): first in line again.
    assert!(db.unclaim_command("c1").expect("unclaim"));
    assert!(!db.unclaim_command("c1").expect("unclaim again"));
    assert_eq!(db.next_queued("q1").expect("next").expect("c1").id, "c1");
    assert!(db.claim_command("c1", now).expect("claim"));
    // API commands are never un-claimed.
    assert!(!db.unclaim_command("api1").expect("unclaim api"));

    // Expiry: an expired command cannot be claimed; the sweep finds it; one caller expires it.
    assert!(!db.claim_command("x1", now).expect("claim expired"));
    let expired = db.expired_queued(now, 100).expect("expired");
    assert_eq!(
        expired.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["x1"]
    );
    assert!(!db.expire_command("c2", now).expect("not yet due"));
    assert!(db.expire_command("x1", now).expect("expire"));
    assert!(!db.expire_command("x1", now).expect("expire again"));
    let x1 = db.command("x1").expect("get").expect("row");
    assert_eq!(x1.status, "expired");
    assert!(x1.error.is_some());
    assert!(db.next_queued("q2").expect("next").is_none());

    // Interrupted deliveries fail at start; API commands in flight are left alone.
    assert_eq!(db.fail_interrupted(now).expect("fail"), 1);
    assert_eq!(
        db.command("c1").expect("get").expect("row").status,
        "failed"
    );
    assert_eq!(
        db.command("api1").expect("get").expect("row").status,
        "sent"
    );

    assert_eq!(db.queued_devices(100).expect("devices"), ["q1".to_string()]);
    let rest = db.queued(None, 100).expect("queued");
    assert_eq!(
        rest.iter()
            .map(|c| (c.id.as_str(), c.seq))
            .collect::<Vec<_>>(),
        [("c2", 2), ("c3", 3)]
    );
    // The final state of a queued command comes through the batched upsert like any other.
    let mut done = command("c2", "ok", base());
    done.device_id = "q1".into();
    db.write(&[Row::Command(done)]).expect("write");
    assert_eq!(db.command("c2").expect("get").expect("row").status, "ok");
    assert_eq!(db.next_queued("q1").expect("next").expect("c3").seq, 3);
}

fn concurrent_enqueues_get_distinct_sequence_numbers(url: &str, backend: Backend) {
    let db = open(url, backend);
    let later = Utc::now() + chrono::Duration::hours(1);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|i| {
                        db.enqueue_command(&queued(&format!("k{t}_{i}"), "qc", later))
                            .expect("enqueue")
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut seqs: Vec<i64> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    // Each thread's own commands stay in the order it queued them.
    let order = db.queued(Some("qc"), 100).expect("queued");
    for t in 0..4 {
        let mine: Vec<String> = order
            .iter()
            .filter(|c| c.id.starts_with(&format!("k{t}_")))
            .map(|c| c.id.clone())
            .collect();
        let want: Vec<String> = (0..5).map(|i| format!("k{t}_{i}")).collect();
        assert_eq!(mine, want);
    }
}
