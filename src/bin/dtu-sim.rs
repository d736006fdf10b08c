//! `dtu-sim` — N simulated DTUs that dial the server, register, heartbeat and answer
//! Modbus polls with changing register values. The logic lives in `dtu_supervisor::sim`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use dtu_supervisor::sim::ttms::{self as sim_ttms, TtmsSimConfig};
use dtu_supervisor::sim::{self, FixedValue, SimConfig, SimProtocol};

/// What `--protocol` accepts: the two Modbus DTU protocols and `$TTMS` relay terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CliProtocol {
    Dtu(SimProtocol),
    Ttms,
}

impl std::str::FromStr for CliProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("ttms") {
            return Ok(CliProtocol::Ttms);
        }
        s.parse()
            .map(CliProtocol::Dtu)
            .map_err(|_| format!("unknown protocol {s:?} (expected framed, transparent or ttms)"))
    }
}

/// Simulate dial-in DTUs (framed or transparent) or `$TTMS` relay terminals (ttms: each sends
/// `--data-every` a frame to the next terminal of the ring) for demos, tests and load.
#[derive(Debug, Parser)]
#[command(name = "dtu-sim", version)]
struct Args {
    /// Server address to dial (host:port).
    #[arg(long, env = "DTU_SIM_SERVER", default_value = "127.0.0.1:22334")]
    server: String,
    /// Wire protocol: framed, transparent or ttms.
    #[arg(long, default_value = "framed")]
    protocol: CliProtocol,
    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Number of the first device (framed: the 4-byte id; transparent: registers as
    /// 860000000000000 + n, or n itself when it has 15 digits; ttms: the first 4-byte ccid).
    #[arg(long, default_value_t = 1001)]
    first_id: u64,
    /// Heartbeat interval (500ms, 30s, 5m, ...).
    #[arg(long, default_value = "30s", value_parser = sim::parse_duration)]
    heartbeat: Duration,
    /// Modbus slave address the simulated meters answer to.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    slave: u8,
    /// New connections per second over the whole fleet, reconnects included (0: no limit).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Reconnect with backoff when the server closes the connection or is not up.
    #[arg(long)]
    reconnect: bool,
    /// Send the first heartbeat in the same TCP write as the registration.
    #[arg(long)]
    glue: bool,
    /// Transparent heartbeat text.
    #[arg(long, default_value = "www.usr.cn")]
    heartbeat_ascii: String,
    /// Framed: send a `03 LL data` packet this often; ttms: a data frame to the next terminal.
    #[arg(long, value_parser = sim::parse_duration)]
    data_every: Option<Duration>,
    // Plain `help` rather than a doc comment: rustdoc would read the brackets as links.
    #[arg(
        long = "set",
        value_name = "ADDR=VALUE[:TYPE[:ORDER]]",
        help = "Fix a value on every device, e.g. 2100=1 or 2010=45.5:f32 (repeatable; TYPE u16 i16 u32 i32 f32 u64 i64 f64 bool, ORDER abcd cdab badc dcba)"
    )]
    set: Vec<FixedValue>,
    /// Print counters this often at info level (0s: never).
    #[arg(long, default_value = "10s", value_parser = sim::parse_duration)]
    stats_every: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dtu-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Prefer IPv4: "localhost" often resolves to ::1 first while servers bind 0.0.0.0.
    let addresses: Vec<_> = tokio::net::lookup_host(&args.server)
        .await
        .with_context(|| format!("cannot resolve {}", args.server))?
        .collect();
    let server = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .with_context(|| format!("{} resolves to no address", args.server))?;
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let last_id = args
        .first_id
        .checked_add(args.count as u64 - 1)
        .context("--first-id + --count overflows")?;
    let protocol = match args.protocol {
        CliProtocol::Dtu(p) => p,
        CliProtocol::Ttms => SimProtocol::Framed,
    };
    if args.protocol != CliProtocol::Dtu(SimProtocol::Transparent) && last_id > u64::from(u32::MAX)
    {
        bail!("framed device numbers and ttms ccids are 4 bytes: {last_id} is too large");
    }
    if args.heartbeat.is_zero() {
        bail!("--heartbeat must be more than 0");
    }
    if protocol == SimProtocol::Transparent && args.heartbeat_ascii.is_empty() {
        bail!("--heartbeat-ascii must not be empty");
    }
    if args.data_every.is_some_and(|d| d.is_zero()) {
        bail!("--data-every must be more than 0");
    }

    if args.protocol == CliProtocol::Ttms {
        let config = TtmsSimConfig {
            server,
            heartbeat: args.heartbeat,
            data_every: args.data_every,
            reconnect: args.reconnect,
        };
        // Both fit in 4 bytes: checked against last_id above.
        let (count, first) = (args.count as u32, args.first_id as u32);
        let total = sim_ttms::run_terminals(config, count, first, args.stats_every).await;
        if total.connects == 0 {
            bail!("no terminal could connect to {server}");
        }
        return Ok(());
    }
    let config = SimConfig {
        server,
        protocol,
        slave: args.slave,
        heartbeat: args.heartbeat,
        reconnect: args.reconnect,
        glue_registration: args.glue,
        heartbeat_payload: args.heartbeat_ascii.into_bytes(),
        data_every: args.data_every,
        initial_values: args.set,
        ..SimConfig::default()
    };

    let total = sim::run_fleet(
        config,
        args.count,
        args.first_id,
        args.rate,
        args.stats_every,
    )
    .await;
    if total.connects == 0 && total.connect_failures > 0 {
        bail!("no device could connect to {server}");
    }
    Ok(())
}
