//! The same load against the yardstick (`yardstick.rs`: the least program doing the same
//! work) and against the release `dtu-supervisor`, in one run, with their figures side by side.
//!
//! ```sh
//! cargo bench --bench compare
//! ```
//!
//! Two phases, each run against both servers one after the other (fresh settings and
//! database in a temporary directory each time; the server is a separate process, the DTUs
//! are `dtu-sim`'s library in this process, their sockets bound to 127.0.0.1–250):
//!
//! - **poll**: `DTU_BENCH_DEVICES` framed DTUs (2,000), each polled for one block of 10
//!   registers (`DTU_BENCH_POINTS` points decoded, 1 to 3, default 1) every
//!   `DTU_BENCH_POLL_MS` (100), heartbeating every 10 s; measured over `DTU_BENCH_SECONDS`
//!   (30) after they registered and `DTU_BENCH_WARMUP` s (3) of warm-up: polls answered,
//!   server CPU per 1,000 polls, peak RSS and RSS every 5 s (/proc: flat, or not), for
//!   dtu-supervisor the largest write lag and the rows spooled (its /metrics), telemetry
//!   points stored, the poll round
//!   trip as the DTUs see it (below) and, for dtu-supervisor, its own poll latency histogram.
//! - **storm**: `DTU_BENCH_STORM` DTUs (19,000) dial within `DTU_BENCH_STORM_MS` (1,000 ms)
//!   with `register_timeout = 2s`, redialling with backoff when closed; reported: how many
//!   registered at their first dial, how many connections the server closed with "no
//!   registration" (its log), the time until all are online (given up after
//!   `DTU_BENCH_STORM_WAIT` s, 60). Then, the fleet idle (one poll each, at once; the next in an
//!   hour), the RSS per connection: the growth over the server's RSS before the storm, divided
//!   by the connections.
//!
//! **Poll round trip, from the DTU side.** A DTU cannot see when the server meant to poll it,
//! only when a request arrives and what comes back afterwards. Each DTU holds its heartbeat,
//! when due, until the next request and sends it in the same write as its answer; the round
//! trip is from that request's arrival to the heartbeat's acknowledgement. A server reads a
//! connection's bytes in order, so the acknowledgement means it has read the answer, checked
//! and decoded it and handed it on, and was free to answer again: the part of a poll's latency
//! the server adds, plus the loopback both ways. One sample per DTU and heartbeat interval.
//!
//! The server's `[storage]` is as shipped (raw packets: `errors` only); `DTU_BENCH_PACKETS=all`
//! stores every packet as before that setting existed. Other knobs: `DTU_BENCH_TARGETS` (`yardstick,dtu-supervisor`), `DTU_BENCH_PHASES`
//! (`poll,storm`), `DTU_BENCH_WRAP` (a command the servers run under, e.g.
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`). The soft limit of open files
//! is raised to the hard one first; the servers inherit it. Exits 1 if a poll phase answered
//! no poll or stored no point, or a storm registered no DTU; asserts no timing.

#[path = "../common/mod.rs"]
mod common;
mod yardstick;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_profile, env_or, free_port, storage_toml, usage, Server};
use dtu_supervisor::sim::{spawn_fleet, RoundTrips, SimConfig};

/// Device numbers of the simulated DTUs start here.
const FIRST_ID: u64 = 100_000;
/// The points of the profile, in a block of 10 registers from 2000; `DTU_BENCH_POINTS` of them
/// (1 to 3, default 1) are decoded from each answered poll. One, as in the issue's figures: at three
/// (60,000 points/s) even the yardstick's inserts fall behind on a 2-core machine.
const POINTS: [&str; 3] = [
    "name = \"temperature\"\naddress = 2000\ntype = \"i16\"\nscale = 0.1",
    "name = \"humidity\"\naddress = 2002\ntype = \"f32\"",
    "name = \"energy\"\naddress = 2004\ntype = \"u32\"\norder = \"CDAB\"",
];
/// RSS is sampled this often in a poll window.
const RSS_EVERY: Duration = Duration::from_secs(5);
/// After a storm: time for the first polls to be answered and stored before RSS is read.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a server may take to stop (flushing what it holds).
const STOP_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Yardstick,
    Ours,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Yardstick => "yardstick",
            Target::Ours => "dtu-supervisor",
        }
    }
}

struct Knobs {
    devices: usize,
    poll_ms: u64,
    seconds: u64,
    warm_up: Duration,
    points: usize,
    storm: usize,
    storm_ms: u64,
    storm_wait: u64,
    targets: Vec<Target>,
    poll: bool,
    storm_phase: bool,
    wrap: Vec<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let list = |key: &str, default: &str| -> Vec<String> {
            std::env::var(key)
                .unwrap_or_else(|_| default.to_string())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let targets = list("DTU_BENCH_TARGETS", "yardstick,dtu-supervisor");
        let phases = list("DTU_BENCH_PHASES", "poll,storm");
        Knobs {
            devices: env_or("DTU_BENCH_DEVICES", 2000usize).max(1),
            poll_ms: env_or("DTU_BENCH_POLL_MS", 100u64).max(10),
            seconds: env_or("DTU_BENCH_SECONDS", 30u64).max(1),
            warm_up: Duration::from_secs(env_or("DTU_BENCH_WARMUP", 3u64)),
            points: env_or("DTU_BENCH_POINTS", 1usize).clamp(1, POINTS.len()),
            storm: env_or("DTU_BENCH_STORM", 19_000usize).max(1),
            storm_ms: env_or("DTU_BENCH_STORM_MS", 1000u64).max(1),
            storm_wait: env_or("DTU_BENCH_STORM_WAIT", 60u64).max(1),
            targets: [Target::Yardstick, Target::Ours]
                .into_iter()
                .filter(|t| targets.iter().any(|n| n == t.name()))
                .collect(),
            poll: phases.iter().any(|p| p == "poll"),
            storm_phase: phases.iter().any(|p| p == "storm"),
            wrap: std::env::var("DTU_BENCH_WRAP")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The settings a phase writes for both servers.
struct Setup {
    register_timeout: &'static str,
    heartbeat: &'static str,
    poll_every: String,
}

fn server_toml(dir: &Path, web: u16, port: u16, setup: &Setup) -> String {
    format!(
        r#"[web]
bind = "127.0.0.1:{web}"
[[listeners]]
name = "framed"
bind = "127.0.0.1:{port}"
protocol = "framed"
profile = "bench"
[liveness]
heartbeat_interval = "{heartbeat}"
max_missed = 3
register_timeout = "{register_timeout}"
[database]
url = "sqlite://{db}"
{storage}
"#,
        heartbeat = setup.heartbeat,
        register_timeout = setup.register_timeout,
        db = dir.join("bench.db").display(),
        storage = storage_toml(dir),
    )
}

/// One block of 10 registers, `points` points in it.
fn data_toml(setup: &Setup, points: usize) -> String {
    let mut data = bench_profile(10, &setup.poll_every);
    for point in POINTS.iter().take(points) {
        data += &format!("[[profiles.bench.points]]\n{point}\n");
    }
    data
}

/// A server of either kind, running on its own settings and database.
struct Running {
    server: Server,
    dir: tempfile::TempDir,
    port: u16,
    web: u16,
}

impl Running {
    fn db(&self) -> PathBuf {
        self.dir.path().join("bench.db")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

fn start(target: Target, setup: &Setup, k: &Knobs) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let (web, port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("server.toml"),
        server_toml(dir.path(), web, port, setup),
    )
    .expect("server.toml");
    std::fs::write(dir.path().join("data.toml"), data_toml(setup, k.points)).expect("data.toml");
    let (exe, args): (PathBuf, Vec<String>) = match target {
        Target::Yardstick => (
            std::env::current_exe().expect("this bench's path"),
            vec!["--yardstick".into(), dir.path().display().to_string()],
        ),
        Target::Ours => (
            PathBuf::from(env!("CARGO_BIN_EXE_dtu-supervisor")),
            vec!["--settings".into(), dir.path().display().to_string()],
        ),
    };
    let mut command = match k.wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = command.spawn().expect("start the server");
    let stdout = child.stdout.take();
    let server = Server(child);
    let running = Running {
        server,
        dir,
        port,
        web,
    };
    let started = Instant::now();
    match target {
        // It says so on stdout once it accepts; EOF means it has stopped.
        Target::Yardstick => {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            assert!(
                line.starts_with("listening on"),
                "the yardstick did not start: {}",
                std::fs::read_to_string(running.log()).unwrap_or_default()
            );
        }
        Target::Ours => {
            while ureq::get(&format!("http://127.0.0.1:{web}/api/health"))
                .call()
                .is_err()
            {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "dtu-supervisor did not start: {}",
                    std::fs::read_to_string(running.log()).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    running
}

/// Rows in `table` so far: its largest id (every table here has an integer id that only
/// grows), which is cheap while a server writes.
fn rows(db: &Path, table: &str) -> u64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    // Points have no row id (WITHOUT ROWID, keyed by series and time): counted. Other
    // tables count up their id, which is cheaper to read than a count.
    let query = match table {
        "points" => "SELECT count(*) FROM points".to_string(),
        _ => format!("SELECT coalesce(max(id), 0) FROM {table}"),
    };
    conn.query_row(&query, [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .unwrap_or(0)
}

/// Lines and bytes of the server's spool file (rows it could not write in time).
fn spool(dir: &Path) -> (u64, u64) {
    let path = dir.join("spool.jsonl");
    let Ok(file) = std::fs::File::open(&path) else {
        return (0, 0);
    };
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let lines = BufReader::new(file).split(b'\n').count() as u64;
    (lines, bytes)
}

/// One sample of dtu-supervisor's `/metrics` (0 if it cannot be read).
fn gauge(web: u16, name: &str) -> f64 {
    ureq::get(&format!("http://127.0.0.1:{web}/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .and_then(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .find_map(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// dtu-supervisor's poll latency histogram: (upper bound in seconds, cumulative count).
fn latency_buckets(web: u16) -> Vec<(f64, u64)> {
    let Some(text) = ureq::get(&format!("http://127.0.0.1:{web}/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
    else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("dtu_poll_latency_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (bound, rest) = l.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which a `q` share of the observations between two scrapes fall.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, m)| *m);
            (bound, n.saturating_sub(earlier))
        })
        .collect();
    let total = diff.last()?.1;
    let wanted = (q * total as f64).ceil() as u64;
    (total > 0)
        .then(|| diff.iter().find(|(_, n)| *n >= wanted).map(|(b, _)| *b))
        .flatten()
}

/// Figures of one server; `None` where a phase did not run or a figure does not apply.
#[derive(Debug, Default)]
struct Figures {
    registered_in: Option<f64>,
    offered: Option<f64>,
    polls_per_s: Option<f64>,
    cpu_per_1000: Option<f64>,
    cpu_share: Option<f64>,
    peak_mib: Option<f64>,
    rss_open_mib: Option<f64>,
    rss_close_mib: Option<f64>,
    rss_spread_pct: Option<f64>,
    max_lag_s: Option<f64>,
    spooled_in_window: Option<f64>,
    points_per_s: Option<f64>,
    points_after_stop: Option<f64>,
    packets_per_s: Option<f64>,
    spooled_lines: Option<f64>,
    spooled_mib: Option<f64>,
    rtt_p50_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
    rtt_samples: Option<f64>,
    server_p50_ms: Option<f64>,
    server_p99_ms: Option<f64>,
    metrics_s: Option<f64>,
    stop_s: Option<f64>,
    storm_first_dial: Option<f64>,
    storm_closed: Option<f64>,
    storm_unregistered_sessions: Option<f64>,
    storm_connect_failures: Option<f64>,
    storm_all_online_s: Option<f64>,
    storm_online: Option<f64>,
    storm_regs_per_s: Option<f64>,
    storm_peak_mib: Option<f64>,
    idle_kib_per_conn: Option<f64>,
    storm_log: Vec<String>,
    polled_nothing: bool,
    stored_nothing: bool,
    registered_nothing: bool,
}

fn poll_phase(target: Target, k: &Knobs, rt: &tokio::runtime::Runtime, f: &mut Figures) {
    let setup = Setup {
        register_timeout: "10s",
        heartbeat: "10s",
        poll_every: format!("{}ms", k.poll_ms),
    };
    let mut running = start(target, &setup, k);
    let pid = running.server.pid();
    let round_trips = Arc::new(RoundTrips::default());
    let config = SimConfig {
        server: ([127, 0, 0, 1], running.port).into(),
        heartbeat: Duration::from_secs(10),
        spread_sources: true,
        round_trips: Some(round_trips.clone()),
        ..SimConfig::default()
    };
    let db = running.db();
    let window = Duration::from_secs(k.seconds);
    eprintln!(
        "== poll: {} DTUs x {} ms against {} for {} s",
        k.devices,
        k.poll_ms,
        target.name(),
        k.seconds
    );
    rt.block_on(async {
        let fleet = spawn_fleet(config, k.devices, FIRST_ID, 1000.0);
        let t0 = Instant::now();
        while fleet.stats().registrations < k.devices as u64 {
            if t0.elapsed() > Duration::from_secs(120) {
                eprintln!("   not every DTU registered in 120 s: measuring those that did");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        f.registered_in = Some(t0.elapsed().as_secs_f64());
        tokio::time::sleep(k.warm_up).await;
        let (u0, polls0, rows0, packets0) = (
            usage(pid),
            fleet.stats().polls_answered,
            rows(&db, "points"),
            rows(&db, "raw_packets"),
        );
        let hist0 = (target == Target::Ours).then(|| latency_buckets(running.web));
        round_trips.clear();
        let w0 = Instant::now();
        eprintln!("   window opens (server pid {pid})");
        // RSS (and, for dtu-supervisor, the write lag) every few seconds: flat after the
        // warm-up, or not.
        let mut rss_kib: Vec<u64> = Vec::new();
        let mut max_lag: f64 = 0.0;
        while w0.elapsed() < window {
            rss_kib.push(usage(pid).rss_kib);
            if target == Target::Ours {
                max_lag = max_lag.max(gauge(running.web, "dtu_storage_write_lag_seconds"));
            }
            let left = window.saturating_sub(w0.elapsed());
            tokio::time::sleep(left.min(RSS_EVERY)).await;
        }
        rss_kib.push(usage(pid).rss_kib);
        let secs = w0.elapsed().as_secs_f64();
        eprintln!("   window closes");
        let (u1, polls1, rows1, packets1) = (
            usage(pid),
            fleet.stats().polls_answered,
            rows(&db, "points"),
            rows(&db, "raw_packets"),
        );
        f.rtt_samples = Some(round_trips.count() as f64);
        f.rtt_p50_ms = round_trips.quantile(0.5).map(|d| d.as_secs_f64() * 1e3);
        f.rtt_p99_ms = round_trips.quantile(0.99).map(|d| d.as_secs_f64() * 1e3);
        if let Some(hist0) = hist0 {
            let asked = Instant::now();
            let hist1 = latency_buckets(running.web);
            f.metrics_s = Some(asked.elapsed().as_secs_f64());
            f.server_p50_ms = bucket_quantile(&hist0, &hist1, 0.5).map(|s| s * 1e3);
            f.server_p99_ms = bucket_quantile(&hist0, &hist1, 0.99).map(|s| s * 1e3);
        }
        let polls = polls1.saturating_sub(polls0) as f64;
        f.polled_nothing = polls == 0.0;
        f.offered = Some(k.devices as f64 * 1000.0 / k.poll_ms as f64);
        f.polls_per_s = Some(polls / secs);
        let cpu = u1.cpu - u0.cpu;
        f.cpu_share = Some(100.0 * cpu / secs);
        f.cpu_per_1000 = (polls > 0.0).then(|| 1e6 * cpu / polls);
        f.peak_mib = Some(u1.peak_kib as f64 / 1024.0);
        let mib = |k: u64| k as f64 / 1024.0;
        f.rss_open_mib = rss_kib.first().map(|k| mib(*k));
        f.rss_close_mib = rss_kib.last().map(|k| mib(*k));
        if let (Some(lo), Some(hi)) = (rss_kib.iter().min(), rss_kib.iter().max()) {
            f.rss_spread_pct = (*lo > 0).then(|| 100.0 * (hi - lo) as f64 / *lo as f64);
        }
        if target == Target::Ours {
            f.max_lag_s = Some(max_lag);
            f.spooled_in_window = Some(gauge(running.web, "dtu_storage_rows_spooled_total"));
        }
        f.points_per_s = Some(rows1.saturating_sub(rows0) as f64 / secs);
        if target == Target::Ours {
            f.packets_per_s = Some(packets1.saturating_sub(packets0) as f64 / secs);
        }
        fleet.stop().await;
    });
    let stopping = Instant::now();
    if !running.server.stop(STOP_GRACE) {
        eprintln!(
            "   {} did not stop within {STOP_GRACE:?}: killed",
            target.name()
        );
    }
    f.stop_s = Some(stopping.elapsed().as_secs_f64());
    let stored = rows(&db, "points");
    f.stored_nothing = stored == 0;
    f.points_after_stop = Some(stored as f64);
    if target == Target::Ours {
        let (lines, bytes) = spool(running.dir.path());
        f.spooled_lines = Some(lines as f64);
        f.spooled_mib = Some(bytes as f64 / (1 << 20) as f64);
    }
    tail_log(&running);
}

fn storm_phase(target: Target, k: &Knobs, rt: &tokio::runtime::Runtime, f: &mut Figures) {
    let setup = Setup {
        register_timeout: "2s",
        heartbeat: "30s",
        poll_every: "1h".into(),
    };
    let mut running = start(target, &setup, k);
    let pid = running.server.pid();
    std::thread::sleep(Duration::from_secs(1));
    let base = usage(pid);
    let config = SimConfig {
        server: ([127, 0, 0, 1], running.port).into(),
        heartbeat: Duration::from_secs(30),
        reconnect: true,
        spread_sources: true,
        ..SimConfig::default()
    };
    let n = k.storm as u64;
    let rate = k.storm as f64 * 1000.0 / k.storm_ms as f64;
    eprintln!(
        "== storm: {} DTUs dialling within {} ms against {}",
        k.storm,
        k.storm_ms,
        target.name()
    );
    rt.block_on(async {
        let fleet = spawn_fleet(config, k.storm, FIRST_ID, rate);
        let t0 = Instant::now();
        let give_up = Duration::from_secs(k.storm_wait);
        let mut last_report = Instant::now();
        loop {
            let s = fleet.stats();
            if s.registrations >= n {
                f.storm_all_online_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if t0.elapsed() > give_up {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "   {:.0} s: {} registered, {} connected",
                    t0.elapsed().as_secs_f64(),
                    s.registrations,
                    s.connected
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = fleet.stats();
        f.storm_online = Some(s.registrations.min(n) as f64);
        f.registered_nothing = s.registrations == 0;
        f.storm_regs_per_s = f
            .storm_all_online_s
            .map(|t| n as f64 / t.max(f64::MIN_POSITIVE));
        f.storm_first_dial = Some(
            fleet
                .handles()
                .iter()
                .map(|h| h.stats())
                .filter(|d| {
                    d.connects == 1
                        && d.registrations == 1
                        && d.disconnects == 0
                        && d.connect_failures == 0
                })
                .count() as f64,
        );
        // Sessions that ended: in a storm only unregistered ones end (closed by the server,
        // or given up by the DTU after waiting `register_timeout`, 10 s, for the ack).
        f.storm_unregistered_sessions = Some(s.disconnects as f64);
        f.storm_connect_failures = Some(s.connect_failures as f64);
        tokio::time::sleep(SETTLE).await;
        let now = usage(pid);
        let connected = fleet.stats().connected.max(1);
        f.idle_kib_per_conn =
            Some(now.rss_kib.saturating_sub(base.rss_kib) as f64 / connected as f64);
        f.storm_peak_mib = Some(now.peak_kib as f64 / 1024.0);
        fleet.stop().await;
    });
    running.server.stop(STOP_GRACE);
    let log = std::fs::read_to_string(running.log()).unwrap_or_default();
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no registration within"))
        .collect();
    f.storm_closed = Some(closed.len() as f64);
    f.storm_log = closed.iter().take(3).map(|l| l.to_string()).collect();
}

/// The last lines a server logged, if it logged anything but the expected.
fn tail_log(running: &Running) {
    let log = std::fs::read_to_string(running.log()).unwrap_or_default();
    // The server logs the admin token it made for the throwaway database: not worth showing.
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("admin token")).collect();
    for l in lines.iter().rev().take(5).rev() {
        eprintln!("   log: {l}");
    }
}

/// Raise the soft limit of open files to the hard one; the servers started later inherit it.
fn raise_open_files() -> (u64, u64) {
    let Ok((before, hard)) = rlimit::Resource::NOFILE.get() else {
        return (0, 0);
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => (before, now),
        Err(_) => (before, before),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({cpu}), load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, ..] = args.as_slice() {
        if flag == "--yardstick" {
            return match yardstick::run(Path::new(dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("yardstick: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let k = Knobs::from_env();
    let (soft, hard) = raise_open_files();
    eprintln!("open files: soft limit {soft} raised to {hard} (the servers inherit it)");
    if (k.storm + 100) as u64 > hard && k.storm_phase {
        eprintln!(
            "   a storm of {} needs more open files than {hard}",
            k.storm
        );
    }
    let started = Instant::now();
    let before = machine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut figures: Vec<(Target, Figures)> =
        k.targets.iter().map(|&t| (t, Figures::default())).collect();
    if k.poll {
        for (t, f) in &mut figures {
            poll_phase(*t, &k, &rt, f);
        }
    }
    if k.storm_phase {
        for (t, f) in &mut figures {
            storm_phase(*t, &k, &rt, f);
        }
    }
    println!("{}", report(&k, &figures, &before, started.elapsed()));
    let failed = figures.iter().any(|(_, f)| {
        (k.poll && (f.polled_nothing || f.stored_nothing))
            || (k.storm_phase && f.registered_nothing)
    });
    if failed {
        eprintln!("FAILED: a server answered no poll, stored no point or registered no DTU");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn report(k: &Knobs, figures: &[(Target, Figures)], before: &str, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nmachine: {before} at start; {} at end; run took {:.0} s",
        machine()
            .rsplit_once("load average ")
            .map_or("", |(_, l)| l),
        took.as_secs_f64()
    );
    let _ = write!(out, "\n| measure |");
    for (t, _) in figures {
        let _ = write!(out, " {} |", t.name());
    }
    let ratio = figures.len() == 2;
    let _ = writeln!(out, "{}", if ratio { " ratio |" } else { "" });
    let _ = writeln!(
        out,
        "|---|{}{}",
        "---|".repeat(figures.len()),
        if ratio { "---|" } else { "" }
    );
    let mut row = |label: &str, get: &dyn Fn(&Figures) -> Option<f64>, digits: usize| {
        let values: Vec<Option<f64>> = figures.iter().map(|(_, f)| get(f)).collect();
        if values.iter().all(Option::is_none) {
            return;
        }
        let _ = write!(out, "| {label} |");
        for v in &values {
            match v {
                Some(v) => {
                    let _ = write!(out, " {v:.digits$} |");
                }
                None => {
                    let _ = write!(out, " — |");
                }
            }
        }
        if ratio {
            match (values[0], values[1]) {
                (Some(y), Some(o)) if y != 0.0 => {
                    let _ = write!(out, " {:.2}× |", o / y);
                }
                _ => {
                    let _ = write!(out, " — |");
                }
            }
        }
        let _ = writeln!(out);
    };
    let load = format!("{} DTUs × {} ms", k.devices, k.poll_ms);
    let storm = format!("storm of {} in {} ms", k.storm, k.storm_ms);
    let points = k.points as f64;
    // (label, the figure, decimals); a row no server has a figure for is left out.
    type Get<'a> = Box<dyn Fn(&Figures) -> Option<f64> + 'a>;
    let rows: Vec<(String, Get, usize)> = vec![
        (
            format!("{load}: all registered in, s"),
            Box::new(|f| f.registered_in),
            2,
        ),
        (
            format!("{load}: polls answered /s"),
            Box::new(|f| f.polls_per_s),
            0,
        ),
        ("polls offered /s".into(), Box::new(|f| f.offered), 0),
        (
            "server CPU ms per 1,000 polls".into(),
            Box::new(|f| f.cpu_per_1000),
            1,
        ),
        (
            "server CPU, % of one core".into(),
            Box::new(|f| f.cpu_share),
            1,
        ),
        (
            "peak RSS under load, MiB".into(),
            Box::new(|f| f.peak_mib),
            1,
        ),
        (
            "RSS when the window opens / closes, MiB".into(),
            Box::new(|f| f.rss_open_mib),
            1,
        ),
        ("  closes".into(), Box::new(|f| f.rss_close_mib), 1),
        (
            format!(
                "  (max − min) / min over the window, sampled every {} s, %",
                RSS_EVERY.as_secs()
            ),
            Box::new(|f| f.rss_spread_pct),
            1,
        ),
        (
            "write lag, the most seen in the window, s (/metrics)".into(),
            Box::new(|f| f.max_lag_s),
            1,
        ),
        (
            "rows spooled by the end of the window (/metrics)".into(),
            Box::new(|f| f.spooled_in_window),
            0,
        ),
        (
            "telemetry points stored /s (in the window)".into(),
            Box::new(|f| f.points_per_s),
            0,
        ),
        (
            format!(
                "telemetry points offered /s (polls answered × {})",
                k.points
            ),
            Box::new(move |f| f.polls_per_s.map(|p| p * points)),
            0,
        ),
        (
            "telemetry points in the database after stop".into(),
            Box::new(|f| f.points_after_stop),
            0,
        ),
        (
            "raw packet rows stored /s".into(),
            Box::new(|f| f.packets_per_s),
            0,
        ),
        (
            "rows left in the spool after stop".into(),
            Box::new(|f| f.spooled_lines),
            0,
        ),
        (
            "spool file after stop, MiB".into(),
            Box::new(|f| f.spooled_mib),
            1,
        ),
        (
            "poll round trip at the DTU p50, ms".into(),
            Box::new(|f| f.rtt_p50_ms),
            2,
        ),
        (
            "poll round trip at the DTU p99, ms".into(),
            Box::new(|f| f.rtt_p99_ms),
            2,
        ),
        ("  (samples)".into(), Box::new(|f| f.rtt_samples), 0),
        (
            "server's poll latency p50, ms ≤ (/metrics bucket)".into(),
            Box::new(|f| f.server_p50_ms),
            0,
        ),
        (
            "server's poll latency p99, ms ≤ (/metrics bucket)".into(),
            Box::new(|f| f.server_p99_ms),
            0,
        ),
        (
            "  /metrics answered in, s".into(),
            Box::new(|f| f.metrics_s),
            2,
        ),
        (
            "stop (SIGTERM to exit, flushing), s".into(),
            Box::new(|f| f.stop_s),
            1,
        ),
        (
            format!("{storm}: registered at first dial"),
            Box::new(|f| f.storm_first_dial),
            0,
        ),
        (
            format!("{storm}: closed \"no registration\" (log lines)"),
            Box::new(|f| f.storm_closed),
            0,
        ),
        (
            "  sessions ended before the ack (DTU side: closed, or ack awaited 10 s)".into(),
            Box::new(|f| f.storm_unregistered_sessions),
            0,
        ),
        (
            "  connect failures (DTU side)".into(),
            Box::new(|f| f.storm_connect_failures),
            0,
        ),
        (
            format!("  online at the end (of {})", k.storm),
            Box::new(|f| f.storm_online),
            0,
        ),
        (
            "  all online after, s".into(),
            Box::new(|f| f.storm_all_online_s),
            2,
        ),
        (
            "  registrations /s (all / time until all online)".into(),
            Box::new(|f| f.storm_regs_per_s),
            0,
        ),
        ("  peak RSS, MiB".into(), Box::new(|f| f.storm_peak_mib), 1),
        (
            "idle fleet: RSS per connection, KiB".into(),
            Box::new(|f| f.idle_kib_per_conn),
            2,
        ),
    ];
    for (label, get, digits) in &rows {
        row(label, get.as_ref(), *digits);
    }
    for (t, f) in figures {
        for l in &f.storm_log {
            let _ = writeln!(out, "{} log: {l}", t.name());
        }
    }
    out
}
