//! Fairness on a bus: one DTU with `DTU_BENCH_UNITS` units (8), each polled every second,
//! measured for `DTU_BENCH_SECONDS` (30) with every unit answering, then with the last one
//! silent. Reports the answered polls per second of the answering units in both phases and
//! their ratio (the silent unit must not take the bus from the others). The release server on
//! SQLite, the DTU from dtu-sim's library (framed).
//!
//! ```sh
//! cargo bench --bench units
//! ```

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_or, free_port, storage_toml, Server};
use dtu_supervisor::protocol::{framed, Protocol};
use dtu_supervisor::sim::{SimConfig, SimDevice};

fn main() {
    let units: u8 = env_or("DTU_BENCH_UNITS", 8).clamp(2, 247);
    let seconds: u64 = env_or("DTU_BENCH_SECONDS", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let (web, port) = (free_port(), free_port());
    let mut data = String::from(
        r#"
[profiles.meter]
[[profiles.meter.polls]]
name = "block"
function = 3
start = 0
count = 10
every = "1s"
[[profiles.meter.points]]
name = "value"
address = 0
type = "u16"

[profiles.bus]
response_timeout = "1s"
retries = 1
max_failed = 3
"#,
    );
    for slave in 1..=units {
        data += &format!("[[profiles.bus.units]]\nslave = {slave}\nprofile = \"meter\"\n");
    }
    std::fs::write(dir.path().join("data.toml"), data).expect("data.toml");
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            r#"
[web]
bind = "127.0.0.1:{web}"
[[listeners]]
name = "bus"
bind = "127.0.0.1:{port}"
protocol = "framed"
profile = "bus"
[database]
url = "sqlite://{db}"
{storage}
"#,
            db = dir.path().join("bench.db").display(),
            storage = storage_toml(dir.path()),
        ),
    )
    .expect("server.toml");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_dtu-supervisor"))
            .arg("--settings")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let started = Instant::now();
    while ureq::get(&format!("http://127.0.0.1:{web}/api/health"))
        .call()
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (healthy, with_silent) = rt.block_on(async {
        let config = SimConfig {
            server: format!("127.0.0.1:{port}").parse().expect("addr"),
            protocol: Protocol::of(&framed::PROTOCOL),
            units: (1..=units).collect(),
            heartbeat: Duration::from_secs(10),
            ..SimConfig::default()
        };
        let (device, handle) = SimDevice::new(5001, config);
        let running = device.spawn();
        // Every unit answered once: the bus is up.
        let t0 = Instant::now();
        while handle.stats().polls_answered < u64::from(units) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the DTU was not polled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rate = |answered: u64, window: Duration, answering: u8| {
            answered as f64 / window.as_secs_f64() / f64::from(answering)
        };
        let window = Duration::from_secs(seconds);
        let a0 = handle.stats().polls_answered;
        tokio::time::sleep(window).await;
        let healthy = rate(handle.stats().polls_answered - a0, window, units);
        handle.set_silent(units, true);
        let a1 = handle.stats().polls_answered;
        tokio::time::sleep(window).await;
        let with_silent = rate(handle.stats().polls_answered - a1, window, units - 1);
        handle.stop();
        let _ = running.await;
        (healthy, with_silent)
    });
    println!("units on the bus: {units}, each polled every 1 s (response_timeout 1 s, retries 1, max_failed 3)");
    println!("answered polls per unit and second, all answering: {healthy:.3}");
    println!(
        "answered polls per answering unit and second, unit {units} silent: {with_silent:.3} ({:.0} % of all answering)",
        100.0 * with_silent / healthy
    );
}
