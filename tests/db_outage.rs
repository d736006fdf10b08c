//! End-to-end: the database goes away under load and comes back; no value is lost and memory
//! stays bounded (rows past `max_buffer` go to the spool file and are replayed).
//!
//! Uses a private PostgreSQL instance (initdb into a temp dir, its own port) so stopping it
//! disturbs no other test. Needs root (to run PostgreSQL as the `postgres` user) and the
//! PostgreSQL server binaries; without them the test says why and passes only outside CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::device::FakeDevice;
use common::{free_port, wait_for, Options, TestServer, DATA_TOML};
use dtu_supervisor::storage::db::Db;

const BLOCK_POINTS: usize = 4;

struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// A fresh cluster on a free port, or why there cannot be one here.
    fn start() -> Result<PrivatePostgres, String> {
        let bin =
            pg_bin().ok_or("PostgreSQL server binaries not found under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("pgdata");
        let log = dir.path().join("pg.log");
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err("cannot hand a directory to the postgres user (not root?)".into());
        }
        let data_s = data.display().to_string();
        if !as_postgres(
            &bin,
            "initdb",
            &["-D", &data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        ) {
            return Err("initdb failed".into());
        }
        let pg = PrivatePostgres {
            bin,
            data,
            log,
            port: free_port(),
            _dir: dir,
        };
        if !pg.up() {
            return Err(format!("pg_ctl start failed; see {}", pg.log.display()));
        }
        Ok(pg)
    }

    fn up(&self) -> bool {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.display()
        );
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &self.log.display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )
    }

    fn down(&self) -> bool {
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}

fn spooled_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn database_outage_under_load_loses_nothing() {
    let pg = match PrivatePostgres::start() {
        Ok(pg) => pg,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: no private PostgreSQL here: {why}");
            return;
        }
        Err(why) => panic!("CI must run the outage test: {why}"),
    };
    // Fast polls and a small buffer: an outage of a few seconds must spill to the spool.
    let mut server = TestServer::start_with(Options {
        data_toml: DATA_TOML.replace("every = \"1s\"", "every = \"100ms\""),
        database_url: Some(pg.url()),
        extra_server_toml: "batch_size = 50\nmax_buffer = 100\nstore_heartbeats = true\n".into(),
        ..Options::default()
    });
    let spool = server.dir.path().join("spool.jsonl");
    let devices: Vec<FakeDevice> = (0..5)
        .map(|i| FakeDevice::framed_with(server.framed, 9100 + i, &[(2000, &[300 + i as u16])]))
        .collect();
    let db = Db::connect(&pg.url(), 1).expect("the private database answers");
    wait_for("rows stored before the outage", || {
        (db.count_telemetry(None).ok()? > 0).then_some(())
    });

    assert!(pg.down(), "stopping PostgreSQL");
    // Down long enough for writes to fail (not just wait for a connection) and to spill.
    wait_for("a failed write logged once", || {
        server
            .log_text()
            .contains("storage: database write failed")
            .then_some(())
    });
    wait_for("rows spooled while the database is down", || {
        (spooled_lines(&spool) > 200).then_some(())
    });
    let answered_during_outage: usize = devices.iter().map(|d| d.answered_at(2000)).sum();
    wait_for("devices keep being polled during the outage", || {
        (devices.iter().map(|d| d.answered_at(2000)).sum::<usize>() > answered_during_outage + 20)
            .then_some(())
    });
    assert!(pg.up(), "starting PostgreSQL again");
    wait_for("the spool replayed and removed", || {
        (!spool.exists()).then_some(())
    });

    let mut expected = 0;
    for d in devices {
        let state = d.state.clone();
        d.close();
        expected += state
            .answered
            .lock()
            .unwrap()
            .get(&2000)
            .copied()
            .unwrap_or(0)
            * BLOCK_POINTS;
    }
    wait_for("devices offline", || {
        (0..5)
            .all(|i| !server.online(&(9100 + i).to_string()))
            .then_some(())
    });
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log_text());

    let stored = db.count_telemetry(None).expect("count after the outage") as usize;
    assert_eq!(
        stored, expected,
        "every answered value stored once the database is back"
    );
    let log = server.log_text();
    assert!(
        log.contains("database writes resumed"),
        "the recovery is logged: {log}"
    );
    assert_eq!(
        log.matches("storage: database write failed").count(),
        1,
        "one warning per outage"
    );
}
