//! `dtu-sim` — N simulated DTUs that dial the server, register, heartbeat and answer
//! Modbus polls with changing register values. The logic lives in `dtu_supervisor::sim`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use dtu_supervisor::protocol::link::{DeviceOptions, RegistrationMode, Role};
use dtu_supervisor::protocol::modbus::Request;
use dtu_supervisor::protocol::serial::Framing;
use dtu_supervisor::protocol::{Protocol, PROTOCOLS};
use dtu_supervisor::settings::parse_duration;
use dtu_supervisor::sim::ttms::{self as sim_ttms, TtmsSimConfig};
use dtu_supervisor::sim::{self, FixedValue, PassiveQuery, SimConfig};

/// `FUNCTION:START:COUNT` of a read (functions 1..=4), e.g. `3:2000:10`.
fn passive_read(s: &str) -> Result<Request, String> {
    let usage = || format!("{s:?} is not FUNCTION:START:COUNT of a read, e.g. 3:2000:10");
    let parts: Vec<&str> = s.split(':').collect();
    let [function, start, count] = parts.as_slice() else {
        return Err(usage());
    };
    let (Ok(function), Ok(start), Ok(count)) = (
        function.trim().parse::<u8>(),
        start.trim().parse::<u16>(),
        count.trim().parse::<u16>(),
    ) else {
        return Err(usage());
    };
    Request::read(function, start, count).map_err(|e| format!("{}: {e}", usage()))
}

/// `--protocol`: any protocol a listener speaks, in any case.
fn protocol(s: &str) -> Result<Protocol, String> {
    s.to_ascii_lowercase().parse()
}

/// `--first-id`: what the number becomes, by an example per protocol, from the list.
fn first_id_help() -> String {
    let examples: Vec<String> = PROTOCOLS
        .iter()
        .map(|entry| match entry.role {
            Role::Polled { device, .. } => {
                let id = device(&DeviceOptions::default()).registration_id(1001);
                format!(
                    "{}: 1001 registers as {}",
                    entry.name,
                    id.unwrap_or_default()
                )
            }
            Role::Relay => format!("{}: the first 4-byte ccid", entry.name),
        })
        .collect();
    format!("Number of the first device ({})", examples.join("; "))
}

/// `--meter`, in any case.
fn meter(s: &str) -> Result<Framing, String> {
    s.to_ascii_lowercase().parse()
}

/// `--registration-mode`, in any case.
fn registration_mode(s: &str) -> Result<RegistrationMode, String> {
    s.to_ascii_lowercase().parse()
}

fn protocol_help() -> String {
    format!("Wire protocol: {}", Protocol::names())
}

/// Simulate dial-in DTUs of any polled protocol (framed, transparent, ...) or `$TTMS` relay
/// terminals (ttms: each sends `--data-every` a frame to the next terminal of the ring) for
/// demos, tests and load.
#[derive(Debug, Parser)]
#[command(name = "dtu-sim", version)]
struct Args {
    /// Server address to dial (host:port).
    #[arg(long, env = "DTU_SIM_SERVER", default_value = "127.0.0.1:22334")]
    server: String,
    // The names come from the list of protocols, so a new one shows up here by itself.
    #[arg(long, default_value = "framed", value_parser = protocol, help = protocol_help())]
    protocol: Protocol,
    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    count: usize,
    // The help says what each protocol of the list makes of the number.
    #[arg(long, default_value_t = 1001, help = first_id_help())]
    first_id: u64,
    /// Heartbeat interval, with its unit: 500ms, 30s, 5m, ...
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Modbus slave address the simulated meters answer to.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    slave: u8,
    /// What the meter behind each DTU speaks: modbus-rtu; modbus-tcp (the MBAP header, no
    /// CRC; the server's profile says modbus = "tcp"); dlt645 (DL/T 645-2007 meters, each
    /// slave a meter at address <last 6 digits of the device number><slave, 6 digits>, e.g.
    /// 001001000001, answering the table's identifiers with values that change over time).
    #[arg(long, default_value = "modbus-rtu", value_parser = meter)]
    meter: Framing,
    /// Several slaves on each DTU's RS-485 bus instead of --slave, e.g. 1,7 (each answers with
    /// values of its own).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=247))]
    units: Vec<u8>,
    /// Query the meter this often on the DTU's own and send the answer up unasked (a DTU's
    /// "serial heartbeat" or auto-query; the server's `trigger = "passive"` polls store it).
    #[arg(long, value_parser = parse_duration)]
    passive_every: Option<Duration>,
    /// The read the DTU makes on its own with --passive-every: FUNCTION:START:COUNT.
    #[arg(long, default_value = "3:2000:10", value_parser = passive_read)]
    passive_read: Request,
    /// Slaves of --units that never answer, e.g. 7 (a unit switched off).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=247))]
    silent: Vec<u8>,
    /// New connections per second over the whole fleet, reconnects included (0: no limit).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Reconnect with backoff when the server closes the connection or is not up.
    #[arg(long)]
    reconnect: bool,
    /// Send the first heartbeat in the same TCP write as the registration.
    #[arg(long)]
    glue: bool,
    /// Heartbeat text, where the protocol leaves the heartbeat to the DTU (transparent).
    #[arg(long, default_value = "www.usr.cn")]
    heartbeat_ascii: String,
    /// When the registration is sent, where the protocol leaves that to the DTU
    /// (transparent): connect (once, on connecting), prefix (before every packet; the first
    /// packet is a heartbeat) or both.
    #[arg(long, default_value = "connect", value_parser = registration_mode)]
    registration_mode: RegistrationMode,
    /// Send a data packet this often where the protocol has them (framed: `03 LL data`);
    /// ttms: a data frame to the next terminal.
    #[arg(long, value_parser = parse_duration)]
    data_every: Option<Duration>,
    // Plain `help` rather than a doc comment: rustdoc would read the brackets as links.
    #[arg(
        long = "set",
        value_name = "ADDR=VALUE[:TYPE[:ORDER]]",
        help = "Fix a value on every device, e.g. 2100=1 or 2010=45.5:f32 (repeatable; TYPE u16 i16 u32 i32 f32 u64 i64 f64 bool, ORDER abcd cdab badc dcba)"
    )]
    set: Vec<FixedValue>,
    /// Print counters this often at info level (0s: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stats_every: Duration,
    /// Bind device n's socket to 127.0.0.(1 + n % 250) before connecting, so that one process
    /// can hold more connections than one source address has ephemeral ports (the server must
    /// be on 127.0.0.x; raise `ulimit -n` to the count and some).
    #[arg(long)]
    spread_sources: bool,
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

/// What to run, checked.
#[derive(Debug)]
enum Plan {
    /// `$TTMS` relay terminals, ccids `first..first + count`.
    Terminals {
        config: TtmsSimConfig,
        count: u32,
        first: u32,
    },
    /// Polled DTUs numbered `first..first + count`.
    Devices {
        // Boxed: a simulator configuration is large beside the terminals'.
        config: Box<SimConfig>,
        count: usize,
        first: u64,
    },
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
    let (rate, stats_every) = (args.rate, args.stats_every);
    match plan(args, server)? {
        Plan::Terminals {
            config,
            count,
            first,
        } => {
            let total = sim_ttms::run_terminals(config, count, first, stats_every).await;
            if total.connects == 0 {
                bail!("no terminal could connect to {server}");
            }
        }
        Plan::Devices {
            config,
            count,
            first,
        } => {
            let total = sim::run_fleet(*config, count, first, rate, stats_every).await;
            if total.connects == 0 && total.connect_failures > 0 {
                bail!("no device could connect to {server}");
            }
        }
    }
    Ok(())
}

/// Checks the arguments and says what to run against `server`; the protocol's role decides
/// whether its devices are simulated DTUs or relay terminals.
fn plan(args: Args, server: SocketAddr) -> anyhow::Result<Plan> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let last_id = args
        .first_id
        .checked_add(args.count as u64 - 1)
        .context("--first-id + --count overflows")?;
    if args.heartbeat.is_zero() {
        bail!("--heartbeat must be more than 0");
    }
    if args.data_every.is_some_and(|d| d.is_zero()) {
        bail!("--data-every must be more than 0");
    }
    if args.spread_sources && !(server.is_ipv4() && server.ip().is_loopback()) {
        bail!("--spread-sources binds to 127.0.0.x: the server must be on 127.0.0.x, not {server}");
    }
    if let Role::Relay = args.protocol.role() {
        if args.spread_sources {
            bail!(
                "--spread-sources is for polled DTUs, not {} terminals",
                args.protocol
            );
        }
        let (Ok(count), Ok(first), true) = (
            u32::try_from(args.count),
            u32::try_from(args.first_id),
            last_id <= u64::from(u32::MAX),
        ) else {
            bail!(
                "{} ccids are 4 bytes: {last_id} is too large",
                args.protocol
            );
        };
        let config = TtmsSimConfig {
            server,
            heartbeat: args.heartbeat,
            data_every: args.data_every,
            reconnect: args.reconnect,
        };
        return Ok(Plan::Terminals {
            config,
            count,
            first,
        });
    }
    if args.passive_every.is_some() && args.meter != Framing::Rtu {
        bail!("--passive-every sends RTU answers up: it needs --meter modbus-rtu");
    }
    let config = SimConfig {
        server,
        protocol: args.protocol,
        slave: args.slave,
        meter: args.meter,
        units: args.units,
        silent: args.silent,
        passive: args.passive_every.map(|every| PassiveQuery {
            every,
            request: args.passive_read,
        }),
        heartbeat: args.heartbeat,
        reconnect: args.reconnect,
        glue_registration: args.glue,
        heartbeat_payload: args.heartbeat_ascii.into_bytes(),
        registration_mode: args.registration_mode,
        data_every: args.data_every,
        initial_values: args.set,
        spread_sources: args.spread_sources,
        ..SimConfig::default()
    };
    if let Some(s) = config.silent.iter().find(|s| !config.units.contains(s)) {
        bail!("--silent {s} is not one of --units");
    }
    let link = config.device_link()?;
    for number in [args.first_id, last_id] {
        link.registration_id(number).map_err(anyhow::Error::msg)?;
    }
    if link.heartbeat(args.first_id).is_empty() {
        bail!("--heartbeat-ascii must not be empty");
    }
    Ok(Plan::Devices {
        config: Box::new(config),
        count: args.count,
        first: args.first_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("dtu-sim").chain(args.iter().copied()))
    }

    fn planned(args: &[&str]) -> anyhow::Result<Plan> {
        plan(parse(args)?, SocketAddr::from(([127, 0, 0, 1], 22334)))
    }

    #[test]
    fn every_protocol_is_accepted_in_any_case() {
        for entry in PROTOCOLS {
            for name in [entry.name.to_string(), entry.name.to_ascii_uppercase()] {
                let args = ["--protocol", name.as_str()];
                let protocol = parse(&args).unwrap().protocol;
                assert_eq!(protocol.as_str(), entry.name);
                match planned(&args).unwrap() {
                    Plan::Terminals { .. } => assert!(protocol.is_relay(), "{name}"),
                    Plan::Devices { config, .. } => {
                        assert!(!protocol.is_relay(), "{name}");
                        assert_eq!(config.protocol, protocol);
                    }
                }
            }
        }
    }

    #[test]
    fn units_and_silent_units() {
        let Plan::Devices { config, .. } = planned(&["--units", "1,7", "--silent", "7"]).unwrap()
        else {
            panic!("devices");
        };
        assert_eq!((config.units, config.silent), (vec![1, 7], vec![7]));
        assert!(planned(&["--units", "1,7", "--silent", "3"]).is_err());
        assert!(parse(&["--units", "0"]).is_err());
        assert!(parse(&["--units", "1,248"]).is_err());
    }

    #[test]
    fn the_first_id_help_covers_every_protocol() {
        let help = first_id_help();
        for entry in PROTOCOLS {
            assert!(help.contains(&format!("{}: ", entry.name)), "{help}");
        }
        assert!(help.contains("framed: 1001 registers as 1001"), "{help}");
        assert!(
            help.contains("transparent: 1001 registers as 860000000001001"),
            "{help}"
        );
    }

    #[test]
    fn passive_queries() {
        let Plan::Devices { config, .. } =
            planned(&["--passive-every", "5s", "--passive-read", "4:100:2"]).unwrap()
        else {
            panic!("devices");
        };
        let passive = config.passive.expect("passive");
        assert_eq!(passive.every, Duration::from_secs(5));
        assert_eq!(passive.request, Request::read(4, 100, 2).unwrap());
        let Plan::Devices { config, .. } = planned(&[]).unwrap() else {
            panic!("devices");
        };
        assert!(config.passive.is_none());
        for bad in ["5:0:1", "3:0", "3:x:1", "3:0:126"] {
            assert!(parse(&["--passive-read", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn meters() {
        let meter = |args: &[&str]| match planned(args) {
            Ok(Plan::Devices { config, .. }) => Ok(config.meter),
            Ok(Plan::Terminals { .. }) => panic!("{args:?} are DTUs"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(meter(&[]), Ok(Framing::Rtu));
        assert_eq!(meter(&["--meter", "modbus-tcp"]), Ok(Framing::ModbusTcp));
        assert_eq!(meter(&["--meter", "DLT645"]), Ok(Framing::Dlt645));
        assert!(parse(&["--meter", "iec"]).is_err());
        let err = meter(&["--meter", "dlt645", "--passive-every", "5s"]).unwrap_err();
        assert!(err.contains("--meter modbus-rtu"), "{err}");
        // The transparent device side it makes finds the meter's requests.
        let Plan::Devices { config, .. } =
            planned(&["--protocol", "transparent", "--meter", "modbus-tcp"]).unwrap()
        else {
            panic!("DTUs");
        };
        let link = config.device_link().unwrap();
        let request = dtu_supervisor::protocol::modbus::tcp::encode_request(
            1,
            1,
            &Request::read(3, 0, 1).unwrap(),
        );
        let mut buf = bytes::BytesMut::from(&request[..]);
        assert_eq!(
            link.decode(&mut buf).unwrap(),
            Some(dtu_supervisor::protocol::link::FromServer::Request(
                bytes::Bytes::from(request)
            ))
        );
    }

    #[test]
    fn an_unknown_protocol_lists_every_name() {
        let err = parse(&["--protocol", "modbus"]).unwrap_err().to_string();
        assert!(err.contains(&Protocol::names()), "{err}");
    }

    #[test]
    fn durations_need_a_unit() {
        let args = parse(&["--heartbeat", "500ms", "--stats-every", "0s"]).unwrap();
        assert_eq!(args.heartbeat, Duration::from_millis(500));
        assert_eq!(args.stats_every, Duration::ZERO);
        assert_eq!(
            parse(&["--data-every", "5m"]).unwrap().data_every,
            Some(Duration::from_secs(300))
        );
        for bad in ["30", "1x", ""] {
            assert!(parse(&["--heartbeat", bad]).is_err(), "{bad:?}");
        }
        assert!(planned(&["--heartbeat", "0s"]).is_err());
        assert!(planned(&["--data-every", "0s"]).is_err());
    }

    #[test]
    fn device_numbers_must_fit_the_protocol() {
        let top = u64::from(u32::MAX).to_string();
        assert!(planned(&["--first-id", &top]).is_ok());
        let err = planned(&["--first-id", &top, "--count", "2"]).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(planned(&[
            "--protocol",
            "transparent",
            "--first-id",
            &top,
            "--count",
            "2"
        ])
        .is_ok());
        let err = planned(&["--protocol", "ttms", "--first-id", &top, "--count", "2"]).unwrap_err();
        assert!(err.to_string().contains("4 bytes"), "{err}");
        assert!(planned(&["--count", "0"]).is_err());
        assert!(planned(&["--first-id", &u64::MAX.to_string(), "--count", "2"]).is_err());
    }

    #[test]
    fn spread_sources_needs_a_loopback_server() {
        match planned(&["--spread-sources", "--count", "300"]).unwrap() {
            Plan::Devices { config, .. } => assert!(config.spread_sources),
            other => panic!("{other:?}"),
        }
        let away = SocketAddr::from(([192, 0, 2, 1], 22334));
        let err = plan(parse(&["--spread-sources"]).unwrap(), away).unwrap_err();
        assert!(err.to_string().contains("127.0.0.x"), "{err}");
        let err = planned(&["--spread-sources", "--protocol", "ttms"]).unwrap_err();
        assert!(err.to_string().contains("polled"), "{err}");
    }

    #[test]
    fn registration_modes() {
        let mode = |args: &[&str]| match planned(args).unwrap() {
            Plan::Devices { config, .. } => config.registration_mode,
            Plan::Terminals { .. } => panic!("{args:?} are DTUs"),
        };
        assert_eq!(
            mode(&["--protocol", "transparent"]),
            RegistrationMode::Connect
        );
        for (flag, want) in [
            ("prefix", RegistrationMode::Prefix),
            ("Both", RegistrationMode::Both),
            ("connect", RegistrationMode::Connect),
        ] {
            let args = ["--protocol", "transparent", "--registration-mode", flag];
            assert_eq!(mode(&args), want, "{flag}");
        }
        let err = parse(&["--registration-mode", "sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected connect, prefix or both"), "{err}");
        // The device side it makes sends the registration before every packet.
        let Plan::Devices { config, .. } = planned(&[
            "--protocol",
            "transparent",
            "--registration-mode",
            "prefix",
            "--heartbeat-ascii",
            "hb",
        ])
        .unwrap() else {
            panic!("DTUs");
        };
        let link = config.device_link().unwrap();
        assert_eq!(link.registration(7).unwrap(), b"860000000000007hb");
        assert_eq!(link.heartbeat(7), b"860000000000007hb");
    }

    #[test]
    fn a_configured_heartbeat_must_not_be_empty() {
        let err = planned(&["--protocol", "transparent", "--heartbeat-ascii", ""]).unwrap_err();
        assert!(err.to_string().contains("--heartbeat-ascii"), "{err}");
        // The framed heartbeat is the protocol's own.
        assert!(planned(&["--heartbeat-ascii", ""]).is_ok());
    }
}
