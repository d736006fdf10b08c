//! End-to-end: a database made by the release before the series layout (its migrations, its
//! `telemetry` rows as its diesel wrote them) answers the history API and the CSV export with
//! the same bytes after the upgrade, which migrates it at start.
//!
//! The expected bodies are what that release (main at d9ef9de, where no migration runs and the
//! old table answers) gave for this same test. The rows are to the millisecond and no point
//! has two in one millisecond: what the new layout keeps exactly (README, "Telemetry layout").

mod common;

use common::{Options, TestServer};
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// The first migration of the series layout; the previous release has those before it.
const LAYOUT: &str = "2026-11-30-000100";

const DEVICES: &str = "INSERT INTO devices \
     (id, protocol, profile, remote_addr, online, connected_at, last_seen) VALUES \
     ('1001', 'framed', 'default', '10.0.0.1:5000', 0, '2026-11-30 09:00:00', '2026-11-30 10:00:03'), \
     ('1002', 'framed', 'default', '10.0.0.2:5000', 0, '2026-11-30 09:00:00', '2026-11-30 10:00:03')";

const TELEMETRY: &str = "INSERT INTO telemetry (device_id, point, value, raw, at) VALUES \
     ('1001', 'temperature', 21.5, 215.0, '2026-11-30 10:00:00'), \
     ('1001', 'humidity', 40.25, 4025.0, '2026-11-30 10:00:00'), \
     ('1002', 'temperature', 19.0, 190.0, '2026-11-30 10:00:00.500'), \
     ('1001', 'temperature', 21.75, 217.5, '2026-11-30 10:00:01.250'), \
     ('1001', 'humidity', 41.0, 4100.0, '2026-11-30 10:00:01.250'), \
     ('1001', 'temperature', -0.125, -1.0, '2026-11-30 10:00:02.001'), \
     ('1002', 'temperature', -3.5, -35.25, '1969-12-31 23:59:59.999'), \
     ('1001', 'pressure', 1013.2, 10132.0, '2026-11-30 10:00:02.001')";

fn previous_release_database(path: &std::path::Path) {
    let mut c = SqliteConnection::establish(&path.display().to_string()).expect("sqlite");
    for m in c.pending_migrations(MIGRATIONS).expect("migrations") {
        if m.name().to_string().as_str() < LAYOUT {
            c.run_migration(&*m).expect("migration");
        }
    }
    diesel::sql_query(DEVICES).execute(&mut c).expect("devices");
    diesel::sql_query(TELEMETRY)
        .execute(&mut c)
        .expect("telemetry");
}

fn body(server: &TestServer, path: &str) -> String {
    let answer = server.request("GET", path).call().expect(path);
    assert_eq!(answer.status(), 200, "{path}");
    answer.into_string().expect("body")
}

#[test]
fn history_and_exports_answer_the_same_bytes_after_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("previous.db");
    previous_release_database(&path);
    let server = TestServer::start_with(Options {
        database_url: Some(format!("sqlite://{}", path.display())),
        ..Options::default()
    });
    // (request, the previous release's answer)
    let cases: [(&str, &str); 6] = [
        (
            "/api/devices/1001/telemetry",
            concat!(
                r#"[{"at":"2026-11-30T10:00:02.001Z","point":"pressure","raw":10132.0,"value":1013.2},"#,
                r#"{"at":"2026-11-30T10:00:02.001Z","point":"temperature","raw":-1.0,"value":-0.125},"#,
                r#"{"at":"2026-11-30T10:00:01.250Z","point":"humidity","raw":4100.0,"value":41.0},"#,
                r#"{"at":"2026-11-30T10:00:01.250Z","point":"temperature","raw":217.5,"value":21.75},"#,
                r#"{"at":"2026-11-30T10:00:00Z","point":"humidity","raw":4025.0,"value":40.25},"#,
                r#"{"at":"2026-11-30T10:00:00Z","point":"temperature","raw":215.0,"value":21.5}]"#,
            ),
        ),
        (
            "/api/devices/1001/telemetry?point=temperature&from=2026-11-30T10:00:00Z&to=2026-11-30T10:00:02.001Z&limit=5",
            concat!(
                r#"[{"at":"2026-11-30T10:00:01.250Z","point":"temperature","raw":217.5,"value":21.75},"#,
                r#"{"at":"2026-11-30T10:00:00Z","point":"temperature","raw":215.0,"value":21.5}]"#,
            ),
        ),
        (
            "/api/devices/1002/telemetry?limit=1",
            r#"[{"at":"2026-11-30T10:00:00.500Z","point":"temperature","raw":190.0,"value":19.0}]"#,
        ),
        (
            "/api/export?device=1001&format=csv",
            "device_id,point,value,raw,at\n\
             1001,temperature,21.5,215,2026-11-30T10:00:00.000000Z\n\
             1001,humidity,40.25,4025,2026-11-30T10:00:00.000000Z\n\
             1001,temperature,21.75,217.5,2026-11-30T10:00:01.250000Z\n\
             1001,humidity,41,4100,2026-11-30T10:00:01.250000Z\n\
             1001,temperature,-0.125,-1,2026-11-30T10:00:02.001000Z\n\
             1001,pressure,1013.2,10132,2026-11-30T10:00:02.001000Z\n",
        ),
        (
            "/api/export?format=csv",
            "device_id,point,value,raw,at\n\
             1002,temperature,-3.5,-35.25,1969-12-31T23:59:59.999000Z\n\
             1001,temperature,21.5,215,2026-11-30T10:00:00.000000Z\n\
             1001,humidity,40.25,4025,2026-11-30T10:00:00.000000Z\n\
             1002,temperature,19,190,2026-11-30T10:00:00.500000Z\n\
             1001,temperature,21.75,217.5,2026-11-30T10:00:01.250000Z\n\
             1001,humidity,41,4100,2026-11-30T10:00:01.250000Z\n\
             1001,temperature,-0.125,-1,2026-11-30T10:00:02.001000Z\n\
             1001,pressure,1013.2,10132,2026-11-30T10:00:02.001000Z\n",
        ),
        (
            // Unix milliseconds: up to 10:00:00.500 inclusive.
            "/api/export?device=1002&from=1969-12-31T00:00:00Z&to=1796032800501&format=csv",
            "device_id,point,value,raw,at\n\
             1002,temperature,-3.5,-35.25,1969-12-31T23:59:59.999000Z\n\
             1002,temperature,19,190,2026-11-30T10:00:00.500000Z\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (path, expected) in cases {
        let got = body(&server, path);
        if got != expected {
            wrong.push(format!(
                "{path}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // They came from the new layout: the old table is gone, its rows are points.
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = SqliteConnection::establish(&path.display().to_string()).expect("sqlite");
    let points: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM points")
        .get_result(&mut c)
        .expect("points");
    assert_eq!(points.n, 8);
    let tables: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'telemetry' AND type = 'table'",
    )
    .get_result(&mut c)
    .expect("sqlite_master");
    assert_eq!(tables.n, 0, "telemetry is a view now");
}
