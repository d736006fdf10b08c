//! Fleet benchmark: the release server with N simulated framed DTUs (dtu-sim's library, same
//! process as this bench, separate from the server process), each polled for 100 registers every
//! second and heartbeating every 10 s with a heartbeat poll. Reports answered polls per second
//! against the offered rate, and the server's CPU and memory.
//!
//! `cargo bench --bench fleet` (env: DTU_BENCH_DEVICES=1000, DTU_BENCH_SECONDS=20,
//! DTU_BENCH_PACKETS=errors as shipped, or all/none: which raw packets are stored).
//!
//! Webhooks: `DTU_BENCH_WEBHOOK=1` subscribes a receiver in this process (std TcpListener,
//! answers 200 at once) to every event and reports envelopes and POSTs received per second;
//! `DTU_BENCH_DEAD_WEBHOOK=1` also subscribes a URL where nothing listens, to show that a dead
//! subscriber does not lower the poll rate.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu_supervisor::protocol::{framed, Protocol};
use dtu_supervisor::sim::{spawn_fleet, SimConfig};
use dtu_supervisor::storage::db::Db;

mod common;
use common::{bench_profile, env_or, free_port, storage_toml, usage, Server};

/// Envelopes and POSTs a webhook receiver took.
#[derive(Default)]
struct Received {
    envelopes: AtomicU64,
    posts: AtomicU64,
}

/// A keep-alive HTTP/1.1 receiver answering 200 at once, on a thread per connection.
fn start_receiver() -> (u16, Arc<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let counts = Arc::new(Received::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(serde_json::Value::Array(a)) => a.len() as u64,
                        Ok(_) => 1,
                        Err(_) => 0,
                    };
                    c.envelopes.fetch_add(n, Ordering::Relaxed);
                    c.posts.fetch_add(1, Ordering::Relaxed);
                    if out
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, counts)
}

fn main() {
    let devices: usize = env_or("DTU_BENCH_DEVICES", 1000);
    let seconds: u64 = env_or("DTU_BENCH_SECONDS", 20);
    let webhook = env_or("DTU_BENCH_WEBHOOK", 0u8) == 1;
    let dead_webhook = env_or("DTU_BENCH_DEAD_WEBHOOK", 0u8) == 1;
    let receiver = webhook.then(start_receiver);
    let mut hooks = String::new();
    if let Some((port, _)) = &receiver {
        hooks += &format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"*\"]\nsecret = \"bench\"\n"
        );
    }
    if dead_webhook {
        hooks += &format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{}/hook\"\nevents = [\"*\"]\nsecret = \"bench\"\n",
            free_port()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (web, framed) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            r#"
[web]
bind = "127.0.0.1:{web}"
[[listeners]]
name = "framed"
bind = "127.0.0.1:{framed}"
protocol = "framed"
profile = "bench"
[liveness]
heartbeat_interval = "10s"
[database]
url = "sqlite://{db}"
{storage}
{hooks}
"#,
            db = dir.path().join("bench.db").display(),
            storage = storage_toml(dir.path()),
        ),
    )
    .expect("server.toml");
    std::fs::write(
        dir.path().join("data.toml"),
        bench_profile(100, "1s")
            + r#"
[[profiles.bench.polls]]
name = "hb"
function = 3
start = 2300
count = 10
trigger = "heartbeat"
[[profiles.bench.points]]
name = "temperature"
address = 2000
type = "i16"
scale = 0.1
[[profiles.bench.points]]
name = "humidity"
address = 2010
type = "f32"
[[profiles.bench.points]]
name = "energy"
address = 2020
type = "u32"
order = "CDAB"
[[profiles.bench.points]]
name = "pressure"
address = 2300
type = "u16"
"#,
    )
    .expect("data.toml");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_dtu-supervisor"))
            .arg("--settings")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let pid = server.pid();
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

    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
        1,
    )
    .expect("open the bench database");
    let stored = || db.count_telemetry(None).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = SimConfig {
            server: format!("127.0.0.1:{framed}").parse().expect("addr"),
            protocol: Protocol::of(&framed::PROTOCOL),
            heartbeat: Duration::from_secs(10),
            ..SimConfig::default()
        };
        let fleet = spawn_fleet(config, devices, 100_000, 1000.0);
        let t0 = Instant::now();
        while fleet.stats().registrations < devices as u64 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "fleet did not register"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let registered_in = t0.elapsed();
        // Let the first-poll burst pass, then measure a steady window.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = usage(pid).cpu;
        let polls0 = fleet.stats().polls_answered;
        let rows0 = stored();
        let hook0 = receiver.as_ref().map(|(_, c)| {
            (
                c.envelopes.load(Ordering::Relaxed),
                c.posts.load(Ordering::Relaxed),
            )
        });
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let window = w0.elapsed().as_secs_f64();
        let polls = fleet.stats().polls_answered - polls0;
        let now = usage(pid);
        let (cpu1, rss) = (now.cpu, now.rss_kib);
        let rows = stored() - rows0;
        let hooks = receiver.as_ref().zip(hook0).map(|((_, c), (e0, p0))| {
            (
                c.envelopes.load(Ordering::Relaxed) - e0,
                c.posts.load(Ordering::Relaxed) - p0,
            )
        });
        let offered = devices as f64 * (1.0 + 0.1); // 1 timer poll/s + 1 heartbeat poll per 10 s
        println!(
            "devices: {devices}, registered in {:.2} s",
            registered_in.as_secs_f64()
        );
        println!(
            "polls answered: {:.0}/s (offered {:.0}/s, {:.1}%)",
            polls as f64 / window,
            offered,
            100.0 * polls as f64 / window / offered
        );
        println!(
            "telemetry rows stored: {:.0}/s (SQLite; raw packet rows come on top, 2 per poll)",
            rows as f64 / window
        );
        println!(
            "server CPU: {:.1}% of one core, RSS {:.1} MiB",
            100.0 * (cpu1 - cpu0) / window,
            rss as f64 / 1024.0
        );
        if let Some((envelopes, posts)) = hooks {
            println!(
                "webhook events delivered: {:.0}/s in {:.0} POSTs/s (every event subscribed{})",
                envelopes as f64 / window,
                posts as f64 / window,
                if dead_webhook {
                    "; a dead subscriber as well"
                } else {
                    ""
                }
            );
        } else if dead_webhook {
            println!("webhooks: one dead subscriber (nothing listening) to every event");
        }
        fleet.stop().await;
    });
    drop(server);
}
