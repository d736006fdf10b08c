//! What the benches share: knobs from the environment, free ports, a child server that is
//! stopped however the bench ends, and a process's CPU and memory from /proc.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// An environment knob, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `[storage]` section of a bench server: the shipped storage settings (raw packets:
/// errors only), its spool in `dir`; `DTU_BENCH_PACKETS=all|errors|none` picks the packets.
pub fn storage_toml(dir: &std::path::Path) -> String {
    let packets: String = env_or("DTU_BENCH_PACKETS", "errors".to_string());
    format!(
        "[storage]\nspool_path = \"{}\"\npackets = \"{packets}\"\n",
        dir.join("spool.jsonl").display()
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The start of data.toml for the benches: profile `bench` (slave 1) and its timer poll
/// `block`, `count` holding registers from 2000 every `every`. Points and other polls follow.
pub fn bench_profile(count: u16, every: &str) -> String {
    format!(
        r#"[profiles.bench]
slave = 1
response_timeout = "2s"
[[profiles.bench.polls]]
name = "block"
function = 3
start = 2000
count = {count}
every = "{every}"
"#
    )
}

/// A server process of the bench: SIGTERM and a wait when dropped, so that a failing bench
/// leaves nothing running.
pub struct Server(pub Child);

impl Server {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then wait up to `grace` for a clean exit (a server flushing its buffers to the
    /// database takes a while), SIGKILL after that. Whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop(Duration::from_secs(30));
        }
    }
}

/// What /proc says about a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds since it started.
    pub cpu: f64,
    /// Resident set now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Largest resident set so far, KiB (`VmHWM`).
    pub peak_kib: u64,
}

/// CPU and memory of process `pid` (zeros for what cannot be read).
pub fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command name: utime is the 12th, stime the 13th (0-based 11, 12), in
    // clock ticks of 1/100 s (USER_HZ, 100 on Linux everywhere).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu,
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    }
}
