//! `dtu-sim`: simulated dial-in DTUs (the device side of the wire protocols).
//!
//! A [`SimDevice`] dials the server, registers, heartbeats and answers Modbus RTU requests
//! for its slave address, exactly like a 4G serial-to-TCP modem with a meter behind it:
//!
//! * **framed** — sends its 4-byte big-endian device number, waits for `01`, heartbeats
//!   `02 00`, answers `04 LL <RTU request>` with `04 LL <RTU response>` and can send
//!   `03 LL <data>` packets ([`SimConfig::data_every`]).
//! * **transparent** (USR-IOT style) — sends an ASCII registration id (15 digits, IMEI-like,
//!   see [`SimDevice::registration_id`]), heartbeats with [`SimConfig::heartbeat_payload`]
//!   (`www.usr.cn`) and answers raw Modbus RTU. Whatever the server sends that is not a
//!   request (registration/heartbeat replies, junk) is ignored, like on an RS-485 bus.
//!
//! The "meter" answers FC 1/2/3/4/5/6/15/16. Every address exists. Holding and input
//! registers are one table (FC3 and FC4 read the same values), coils and discrete inputs are
//! one table (FC1 and FC2). An address that was never written reads a slowly drifting
//! [`signal`] of (device number, address, wall time); writes (FC5/6/15/16 or
//! [`SimHandle::set_register`] and friends) are kept in a small sparse map and read back.
//! Requests for another slave or with a bad CRC get no answer; slave 0 (broadcast) writes are
//! applied without an answer. A well-framed request the meter must refuse gets the exception
//! `Request::decode` names: 1 unknown function, 3 bad quantity or coil value, 2 a range past
//! 65535; a length that does not fit the function gets no answer.
//!
//! Each device is one tokio task: no threads, no busy loops, a few hundred bytes per device.
//! [`spawn_fleet`] starts many devices whose connection attempts (first connects and
//! reconnects alike) share one rate limit, so a thousand DTUs do not SYN-flood the server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dtu_supervisor::sim::SimError> {
//! use dtu_supervisor::sim::{SimConfig, SimDevice, SimProtocol};
//! let config = SimConfig {
//!     server: "127.0.0.1:22334".parse().unwrap(),
//!     protocol: SimProtocol::Framed,
//!     ..SimConfig::default()
//! };
//! let (device, handle) = SimDevice::new(1001, config);
//! handle.set_register(2000, 235);
//! let task = tokio::spawn(device.run());
//! // ... later
//! handle.stop();
//! task.await.unwrap()?;
//! # Ok(()) }
//! ```

pub mod ttms;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use log::{debug, info, warn};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::protocol::modbus::rtu::MAX_ADU;
use crate::protocol::modbus::{self, ModbusError, Request, Response};
use crate::protocol::points::{self, PointType, WordOrder};

/// Base of the default transparent registration id: device `n` registers as
/// `860000000000000 + n` (15 ASCII digits, IMEI-like).
pub const IMEI_BASE: u64 = 860_000_000_000_000;

/// Default transparent heartbeat, as sent by USR-IOT DTUs.
pub const USR_HEARTBEAT: &[u8] = b"www.usr.cn";

/// A write that takes longer than this (server not reading) ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which wire protocol the simulated DTU speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimProtocol {
    /// Length-prefixed: `00 00 03 E9` registration, `02 00` heartbeat, `04 LL` polls.
    Framed,
    /// USR-IOT style pass-through: ASCII id, `www.usr.cn` heartbeat, raw Modbus RTU.
    Transparent,
}

impl FromStr for SimProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "framed" => Ok(SimProtocol::Framed),
            "transparent" => Ok(SimProtocol::Transparent),
            other => Err(format!(
                "unknown protocol {other:?} (expected framed or transparent)"
            )),
        }
    }
}

impl fmt::Display for SimProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SimProtocol::Framed => "framed",
            SimProtocol::Transparent => "transparent",
        })
    }
}

/// How a simulated DTU behaves. `SimConfig::default()` is a framed DTU for
/// `127.0.0.1:22334`, slave 1, 30 s heartbeat, no reconnect.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Server address to dial.
    pub server: SocketAddr,
    /// Wire protocol.
    pub protocol: SimProtocol,
    /// Modbus slave address the simulated meter answers to (1..=247).
    pub slave: u8,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Reconnect (with exponential backoff and jitter) when the connection fails or closes;
    /// without it [`SimDevice::run`] returns at the first disconnect.
    pub reconnect: bool,
    /// Send the first heartbeat in the same write as the registration packet.
    pub glue_registration: bool,
    /// Transparent heartbeat bytes (default `www.usr.cn`).
    pub heartbeat_payload: Vec<u8>,
    /// Framed only: send a `03 LL <data>` packet this often (ASCII `id=<n> seq=<k>`).
    pub data_every: Option<Duration>,
    /// Framed only: close and retry if the server has not answered `01` by then.
    pub register_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max` (±20 % jitter),
    /// back to `backoff_min` after a successful registration.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Transparent only: received bytes that do not complete a request within this
    /// silence are dropped (the TCP stand-in for the RTU inter-frame gap).
    pub frame_gap: Duration,
    /// Values fixed on every device when it is created (CLI `--set`).
    pub initial_values: Vec<FixedValue>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 22334)),
            protocol: SimProtocol::Framed,
            slave: 1,
            heartbeat: Duration::from_secs(30),
            reconnect: false,
            glue_registration: false,
            heartbeat_payload: USR_HEARTBEAT.to_vec(),
            data_every: None,
            register_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            frame_gap: Duration::from_millis(500),
            initial_values: Vec::new(),
        }
    }
}

/// Why a device stopped running.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Connect, read or write failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connect did not finish within `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The server closed the connection (and `reconnect` is off).
    #[error("server closed the connection")]
    Closed,
    /// Framed: no `01` within `register_timeout`.
    #[error("registration not acknowledged in time")]
    RegistrationTimeout,
    /// A write did not complete within 10 s.
    #[error("write timed out")]
    WriteTimeout,
    /// The device number does not fit the protocol (framed ids are u32).
    #[error("device number {0} does not fit a framed registration (u32)")]
    IdOutOfRange(u64),
}

// ---------------------------------------------------------------------------------------
// statistics

/// Live counters of one device (all atomics, readable while it runs).
#[derive(Debug, Default)]
pub struct SimStats {
    connected: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    registrations: AtomicU64,
    heartbeats_sent: AtomicU64,
    acks: AtomicU64,
    data_sent: AtomicU64,
    polls_answered: AtomicU64,
    exceptions: AtomicU64,
    ignored: AtomicU64,
    malformed: AtomicU64,
    protocol_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of [`SimStats`] at one moment (or a sum over a fleet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Devices connected right now.
    pub connected: u64,
    /// Successful TCP connects.
    pub connects: u64,
    /// Failed or timed-out TCP connects.
    pub connect_failures: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// Registrations acknowledged (framed) or sent (transparent).
    pub registrations: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Framed acknowledgements (`02`, `03`) received.
    pub acks: u64,
    /// Framed `03` data packets sent.
    pub data_sent: u64,
    /// Modbus requests answered with a normal response.
    pub polls_answered: u64,
    /// Modbus requests answered with an exception.
    pub exceptions: u64,
    /// Valid requests left unanswered: other slave or broadcast.
    pub ignored: u64,
    /// Requests dropped for a bad CRC or a length not fitting the function.
    pub malformed: u64,
    /// Framed packets from the server that made no sense.
    pub protocol_errors: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

impl SimStats {
    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connected: g(&self.connected),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            disconnects: g(&self.disconnects),
            registrations: g(&self.registrations),
            heartbeats_sent: g(&self.heartbeats_sent),
            acks: g(&self.acks),
            data_sent: g(&self.data_sent),
            polls_answered: g(&self.polls_answered),
            exceptions: g(&self.exceptions),
            ignored: g(&self.ignored),
            malformed: g(&self.malformed),
            protocol_errors: g(&self.protocol_errors),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn add(a: &AtomicU64, n: usize) {
    a.fetch_add(n as u64, Ordering::Relaxed);
}

impl std::ops::Add for StatsSnapshot {
    type Output = StatsSnapshot;
    fn add(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected + o.connected,
            connects: self.connects + o.connects,
            connect_failures: self.connect_failures + o.connect_failures,
            disconnects: self.disconnects + o.disconnects,
            registrations: self.registrations + o.registrations,
            heartbeats_sent: self.heartbeats_sent + o.heartbeats_sent,
            acks: self.acks + o.acks,
            data_sent: self.data_sent + o.data_sent,
            polls_answered: self.polls_answered + o.polls_answered,
            exceptions: self.exceptions + o.exceptions,
            ignored: self.ignored + o.ignored,
            malformed: self.malformed + o.malformed,
            protocol_errors: self.protocol_errors + o.protocol_errors,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connected={} connects={} connect_failures={} disconnects={} registrations={} \
             heartbeats={} acks={} data={} polls_answered={} exceptions={} ignored={} \
             malformed={} protocol_errors={} bytes_in={} bytes_out={}",
            self.connected,
            self.connects,
            self.connect_failures,
            self.disconnects,
            self.registrations,
            self.heartbeats_sent,
            self.acks,
            self.data_sent,
            self.polls_answered,
            self.exceptions,
            self.ignored,
            self.malformed,
            self.protocol_errors,
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// Decrements the `connected` gauge however a session ends.
struct ConnectedGuard<'a>(&'a SimStats);

impl<'a> ConnectedGuard<'a> {
    fn new(stats: &'a SimStats) -> Self {
        inc(&stats.connected);
        inc(&stats.connects);
        ConnectedGuard(stats)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
        inc(&self.0.disconnects);
    }
}

// ---------------------------------------------------------------------------------------
// the simulated meter

/// Default value of a register never written: a slow sine (period 5–9.5 min depending on
/// the address, phase from device and address) around `200 + device % 100 + address % 10`,
/// amplitude 50 — so an `i16` point with scale 0.1 reads like 15–35 °C and moves on a chart.
/// Deterministic: same inputs, same value.
pub fn signal(device: u64, address: u16, unix_secs: f64) -> u16 {
    let period = 300.0 + f64::from(address % 10) * 30.0;
    let phase = (device % 360) as f64 * 0.017_453_3 + f64::from(address) * 0.1;
    let wave = (std::f64::consts::TAU * unix_secs / period + phase).sin();
    let base = 200.0 + (device % 100) as f64 + f64::from(address % 10);
    (base + 50.0 * wave).round().clamp(0.0, 65535.0) as u16
}

/// Default value of a coil / discrete input never written: on while the address's
/// [`signal`] is above its mid-line, so bits flip every few minutes.
pub fn signal_bit(device: u64, address: u16, unix_secs: f64) -> bool {
    let base = 200 + (device % 100) as u16 + address % 10;
    signal(device, address, unix_secs) > base
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Written values; everything else comes from [`signal`]. Empty maps allocate nothing.
#[derive(Debug, Default)]
struct Memory {
    registers: HashMap<u16, u16>,
    coils: HashMap<u16, bool>,
}

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Normal response ADU.
    Reply(Vec<u8>),
    /// Exception response ADU.
    Exception(Vec<u8>),
    /// Another slave's request, or a broadcast: nothing to send.
    Ignored,
    /// Bad CRC, or a length that does not fit the function: nothing to send.
    Malformed,
}

/// State shared between a running device and its handles.
#[derive(Debug)]
struct Shared {
    id: u64,
    slave: u8,
    memory: Mutex<Memory>,
    stats: SimStats,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn memory(&self) -> MutexGuard<'_, Memory> {
        // A poisoned lock only means a panic elsewhere while holding it; the maps are
        // still consistent (every update is a single insert).
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_at(&self, mem: &Memory, address: u16, now: f64) -> u16 {
        mem.registers
            .get(&address)
            .copied()
            .unwrap_or_else(|| signal(self.id, address, now))
    }

    fn coil_at(&self, mem: &Memory, address: u16, now: f64) -> bool {
        mem.coils
            .get(&address)
            .copied()
            .unwrap_or_else(|| signal_bit(self.id, address, now))
    }

    /// Execute one RTU request ADU (CRC included) the way a meter on the bus would.
    fn execute(&self, adu: &[u8], now: f64) -> Outcome {
        if adu.len() < 4 || !modbus::rtu::check_crc(adu) {
            return Outcome::Malformed;
        }
        let (slave, function) = (adu[0], adu[1]);
        let broadcast = slave == 0;
        if !broadcast && slave != self.slave {
            return Outcome::Ignored;
        }
        let exception = |code: u8| {
            if broadcast {
                Outcome::Ignored
            } else {
                Outcome::Exception(modbus::rtu::exception_adu(slave, function, code))
            }
        };
        let request = match Request::decode(adu) {
            Ok((_, r)) => r,
            // Well framed but refused (unknown function, bad quantity, range past 65535).
            Err(ModbusError::Exception { code, .. }) => return exception(code),
            // Length not matching the function or byte count: a real slave stays silent.
            Err(e) => {
                debug!("device {}: malformed request ({e})", self.id);
                return Outcome::Malformed;
            }
        };
        let function = request.function();
        let is_read = matches!(
            request,
            Request::ReadCoils { .. }
                | Request::ReadDiscreteInputs { .. }
                | Request::ReadHoldingRegisters { .. }
                | Request::ReadInputRegisters { .. }
        );
        if broadcast && is_read {
            return Outcome::Ignored;
        }
        let response = {
            let mut mem = self.memory();
            match request {
                Request::ReadCoils { start, count }
                | Request::ReadDiscreteInputs { start, count } => Response::Bits(
                    (0..count)
                        .map(|i| self.coil_at(&mem, start.wrapping_add(i), now))
                        .collect(),
                ),
                Request::ReadHoldingRegisters { start, count }
                | Request::ReadInputRegisters { start, count } => Response::Registers(
                    (0..count)
                        .map(|i| self.register_at(&mem, start.wrapping_add(i), now))
                        .collect(),
                ),
                Request::WriteSingleCoil { address, value } => {
                    mem.coils.insert(address, value);
                    Response::WriteSingleCoil { address, value }
                }
                Request::WriteSingleRegister { address, value } => {
                    mem.registers.insert(address, value);
                    Response::WriteSingleRegister { address, value }
                }
                Request::WriteMultipleCoils { address, values } => {
                    for (i, v) in values.iter().enumerate() {
                        mem.coils.insert(address.wrapping_add(i as u16), *v);
                    }
                    Response::WriteMultiple {
                        address,
                        count: values.len() as u16,
                    }
                }
                Request::WriteMultipleRegisters { address, values } => {
                    for (i, v) in values.iter().enumerate() {
                        mem.registers.insert(address.wrapping_add(i as u16), *v);
                    }
                    Response::WriteMultiple {
                        address,
                        count: values.len() as u16,
                    }
                }
            }
        };
        if broadcast {
            return Outcome::Ignored;
        }
        Outcome::Reply(response.encode(slave, function))
    }

    /// Execute and count; returns the bytes to send (empty for no answer).
    fn answer(&self, adu: &[u8]) -> Vec<u8> {
        match self.execute(adu, unix_now()) {
            Outcome::Reply(r) => {
                inc(&self.stats.polls_answered);
                r
            }
            Outcome::Exception(r) => {
                inc(&self.stats.exceptions);
                r
            }
            Outcome::Ignored => {
                inc(&self.stats.ignored);
                debug!(
                    "device {}: not answering {}",
                    self.id,
                    crate::protocol::hex::to_hex(adu)
                );
                Vec::new()
            }
            Outcome::Malformed => {
                inc(&self.stats.malformed);
                debug!(
                    "device {}: bad CRC or length, dropped {}",
                    self.id,
                    crate::protocol::hex::to_hex(adu)
                );
                Vec::new()
            }
        }
    }
}

fn known_function(f: u8) -> bool {
    matches!(f, 1..=6 | 15 | 16)
}

// ---------------------------------------------------------------------------------------
// framing of incoming bytes

/// One thing the server sent on a framed connection.
#[derive(Debug, PartialEq, Eq)]
enum FramedIn {
    /// `01`, `02` or `03`.
    Ack(u8),
    /// `04 LL <adu>`: the ADU.
    Request(Vec<u8>),
}

/// Take the next complete framed packet off `buf`. `Ok(None)`: need more bytes.
/// `Err(hex)`: the buffer starts with garbage (the caller drops the buffer).
fn next_framed(buf: &mut BytesMut) -> Result<Option<FramedIn>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        1..=3 => {
            buf.advance(1);
            Ok(Some(FramedIn::Ack(kind)))
        }
        4 => {
            let Some(&len) = buf.get(1) else {
                return Ok(None);
            };
            let len = usize::from(len);
            if len == 0 {
                return Err(crate::protocol::hex::to_hex(&buf[..2]));
            }
            if buf.len() < 2 + len {
                return Ok(None);
            }
            let adu = buf[2..2 + len].to_vec();
            buf.advance(2 + len);
            Ok(Some(FramedIn::Request(adu)))
        }
        _ => Err(crate::protocol::hex::to_hex(&buf[..buf.len().min(MAX_ADU)])),
    }
}

/// Where a Modbus RTU request was found in a transparent-mode buffer.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// `buf[start..start + len]` is a request with a valid CRC; bytes before it are junk.
    Found { start: usize, len: usize },
    /// No complete request yet.
    NeedMore,
}

/// Length of a request of function `buf[1]` at the start of `buf`, if known from the bytes
/// present; `None` if more bytes are needed to know.
fn request_len(buf: &[u8]) -> Option<usize> {
    match buf.get(1)? {
        1..=6 => Some(8),
        15 | 16 => buf.get(6).map(|n| 9 + usize::from(*n)),
        _ => None,
    }
}

/// Find the first request with a valid CRC in `buf`, sliding over junk (server replies to
/// registration/heartbeat, corrupted frames). A frame of an unknown function counts when it
/// runs to the end of the buffer with a valid CRC (it gets exception 1).
fn scan_rtu(buf: &[u8]) -> Scan {
    for start in 0..buf.len() {
        let rest = &buf[start..];
        if rest.len() < 4 {
            break;
        }
        let function = rest[1];
        if known_function(function) {
            if let Some(len) = request_len(rest) {
                if len <= rest.len() && modbus::rtu::check_crc(&rest[..len]) {
                    return Scan::Found { start, len };
                }
            }
        } else if rest.len() <= MAX_ADU && modbus::rtu::check_crc(rest) {
            return Scan::Found {
                start,
                len: rest.len(),
            };
        }
    }
    Scan::NeedMore
}

// ---------------------------------------------------------------------------------------
// rate limit for connection attempts

/// Hands out connection slots `1/rate` apart (shared by a fleet).
#[derive(Debug)]
struct ConnectLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectLimiter {
    fn new(rate_per_sec: f64) -> Option<Arc<ConnectLimiter>> {
        (rate_per_sec.is_finite() && rate_per_sec > 0.0).then(|| {
            Arc::new(ConnectLimiter {
                interval: Duration::from_secs_f64(1.0 / rate_per_sec),
                next: Mutex::new(Instant::now()),
            })
        })
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        sleep_until(slot).await;
    }
}

// ---------------------------------------------------------------------------------------
// device and handle

/// Resolves when `stop` has been requested (never, if every sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One simulated DTU. Create with [`SimDevice::new`], drive with [`SimDevice::run`]
/// (or [`SimDevice::spawn`]); control it through the [`SimHandle`].
#[derive(Debug)]
pub struct SimDevice {
    config: Arc<SimConfig>,
    shared: Arc<Shared>,
    stop_rx: watch::Receiver<bool>,
    limiter: Option<Arc<ConnectLimiter>>,
    /// Set when the current session registered: the next reconnect starts from `backoff_min`.
    registered: bool,
}

/// Controls a [`SimDevice`], running or not: fixed register values, counters, stop.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

/// How one connection ended, when not with an error.
enum SessionEnd {
    Stopped,
    Closed,
}

impl SimDevice {
    /// A device with device number `id_number` (framed: the 4-byte id; transparent: see
    /// [`SimDevice::registration_id`]). Nothing happens until it is run.
    pub fn new(id_number: u64, config: SimConfig) -> (SimDevice, SimHandle) {
        Self::with_shared_config(id_number, Arc::new(config), None)
    }

    fn with_shared_config(
        id_number: u64,
        config: Arc<SimConfig>,
        limiter: Option<Arc<ConnectLimiter>>,
    ) -> (SimDevice, SimHandle) {
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            id: id_number,
            slave: config.slave,
            memory: Mutex::new(Memory::default()),
            stats: SimStats::default(),
            stop,
        });
        let handle = SimHandle {
            shared: shared.clone(),
        };
        for value in &config.initial_values {
            value.apply(&handle);
        }
        (
            SimDevice {
                config,
                shared,
                stop_rx,
                limiter,
                registered: false,
            },
            handle,
        )
    }

    /// The device number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The id the server will know this device by: framed, the decimal device number;
    /// transparent, `IMEI_BASE + n` (15 digits) — or `n` itself when it already has 15 or
    /// more digits.
    pub fn registration_id(&self) -> String {
        registration_id(self.config.protocol, self.shared.id)
    }

    /// Fix a register's value (see [`SimHandle::set_register`]).
    pub fn set_register(&self, address: u16, value: u16) {
        self.handle().set_register(address, value);
    }

    /// A handle to this device.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
        }
    }

    /// This device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Run on the current tokio runtime.
    pub fn spawn(self) -> JoinHandle<Result<(), SimError>> {
        tokio::spawn(self.run())
    }

    /// Dial, register, heartbeat and answer until stopped (`Ok`). Without `reconnect`, the
    /// first failure or disconnect ends it with the error ([`SimError::Closed`] when the
    /// server closed the connection); with it, every failure is retried after a backoff.
    pub async fn run(mut self) -> Result<(), SimError> {
        if self.config.protocol == SimProtocol::Framed && self.shared.id > u64::from(u32::MAX) {
            return Err(SimError::IdOutOfRange(self.shared.id));
        }
        let mut backoff = self.config.backoff_min;
        loop {
            if *self.stop_rx.borrow() {
                return Ok(());
            }
            if let Some(limiter) = self.limiter.clone() {
                tokio::select! {
                    _ = limiter.acquire() => {}
                    _ = stopped(&mut self.stop_rx) => return Ok(()),
                }
            }
            self.registered = false;
            let error = match self.session().await {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Closed) => {
                    debug!("device {}: server closed the connection", self.shared.id);
                    SimError::Closed
                }
                Err(e) => {
                    debug!("device {}: {e}", self.shared.id);
                    e
                }
            };
            if self.registered {
                backoff = self.config.backoff_min;
            }
            if !self.config.reconnect {
                return Err(error);
            }
            let delay = backoff.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
            backoff = (backoff * 2).min(self.config.backoff_max);
            tokio::select! {
                _ = sleep(delay) => {}
                _ = stopped(&mut self.stop_rx) => return Ok(()),
            }
        }
    }

    async fn connect(&mut self) -> Result<Option<TcpStream>, SimError> {
        let stats = &self.shared.stats;
        let connect = timeout(
            self.config.connect_timeout,
            TcpStream::connect(self.config.server),
        );
        let result = tokio::select! {
            r = connect => r,
            _ = stopped(&mut self.stop_rx) => return Ok(None),
        };
        match result {
            Ok(Ok(stream)) => {
                // Small packets should leave at once, like a modem's do.
                let _ = stream.set_nodelay(true);
                Ok(Some(stream))
            }
            Ok(Err(e)) => {
                inc(&stats.connect_failures);
                if e.raw_os_error() == Some(24) {
                    warn!("too many open files: raise the limit (ulimit -n) for this many devices");
                }
                Err(SimError::Io(e))
            }
            Err(_) => {
                inc(&stats.connect_failures);
                Err(SimError::ConnectTimeout)
            }
        }
    }

    /// One connection, from connect to close.
    async fn session(&mut self) -> Result<SessionEnd, SimError> {
        let Some(mut stream) = self.connect().await? else {
            return Ok(SessionEnd::Stopped);
        };
        let shared = self.shared.clone();
        let config = self.config.clone();
        let stats = &shared.stats;
        let _guard = ConnectedGuard::new(stats);
        let (mut rd, mut wr) = stream.split();
        let id = shared.id;
        let framed = config.protocol == SimProtocol::Framed;
        debug!("device {id}: connected to {}", config.server);

        let heartbeat = heartbeat_bytes(&config);
        let mut first = registration_bytes(config.protocol, id);
        let mut next_heartbeat = Instant::now() + config.heartbeat;
        if config.glue_registration {
            first.extend_from_slice(&heartbeat);
            inc(&stats.heartbeats_sent);
        }
        write(&mut wr, &first, stats).await?;
        // Transparent DTUs get no acknowledgement: registered as soon as it is sent.
        let mut registered = !framed;
        if registered {
            inc(&stats.registrations);
            self.registered = true;
        }
        let register_deadline = Instant::now() + config.register_timeout;
        let data_every = config.data_every.filter(|_| framed);
        let mut next_data = data_every.map(|d| Instant::now() + d);
        let mut data_seq: u64 = 0;
        let mut buf = BytesMut::with_capacity(64);
        let mut last_rx = Instant::now();
        let mut out: Vec<u8> = Vec::new();

        loop {
            tokio::select! {
                _ = stopped(&mut self.stop_rx) => return Ok(SessionEnd::Stopped),
                read = rd.read_buf(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(SessionEnd::Closed);
                    }
                    add(&stats.bytes_in, n);
                    last_rx = Instant::now();
                    if framed {
                        loop {
                            match next_framed(&mut buf) {
                                Ok(None) => break,
                                Ok(Some(FramedIn::Ack(1))) => {
                                    if !registered {
                                        registered = true;
                                        self.registered = true;
                                        inc(&stats.registrations);
                                        debug!("device {id}: registered");
                                        if !config.glue_registration {
                                            next_heartbeat = Instant::now() + config.heartbeat;
                                        }
                                    }
                                }
                                Ok(Some(FramedIn::Ack(_))) => inc(&stats.acks),
                                Ok(Some(FramedIn::Request(adu))) => {
                                    let answer = shared.answer(&adu);
                                    if !answer.is_empty() {
                                        out.push(4);
                                        out.push(answer.len() as u8);
                                        out.extend_from_slice(&answer);
                                    }
                                }
                                Err(hex) => {
                                    inc(&stats.protocol_errors);
                                    warn!("device {id}: protocol error from server, dropping {hex}");
                                    buf.clear();
                                    break;
                                }
                            }
                        }
                    } else {
                        while let Scan::Found { start, len } = scan_rtu(&buf) {
                            if start > 0 {
                                debug!("device {id}: skipping {}", crate::protocol::hex::to_hex(&buf[..start]));
                            }
                            let answer = shared.answer(&buf[start..start + len]);
                            out.extend_from_slice(&answer);
                            buf.advance(start + len);
                        }
                        if buf.len() > 2 * MAX_ADU {
                            let excess = buf.len() - MAX_ADU;
                            buf.advance(excess);
                        }
                    }
                    if !out.is_empty() {
                        write(&mut wr, &out, stats).await?;
                        out.clear();
                    }
                }
                _ = sleep_until(next_heartbeat), if registered => {
                    write(&mut wr, &heartbeat, stats).await?;
                    inc(&stats.heartbeats_sent);
                    next_heartbeat = Instant::now() + config.heartbeat;
                }
                _ = sleep_until(register_deadline), if !registered => {
                    debug!("device {id}: registration not acknowledged within {:?}", config.register_timeout);
                    return Err(SimError::RegistrationTimeout);
                }
                _ = sleep_until(next_data.unwrap_or(register_deadline)), if registered && next_data.is_some() => {
                    data_seq += 1;
                    let payload = format!("id={id} seq={data_seq}");
                    let mut packet = vec![3, payload.len() as u8];
                    packet.extend_from_slice(payload.as_bytes());
                    write(&mut wr, &packet, stats).await?;
                    inc(&stats.data_sent);
                    next_data = data_every.map(|d| Instant::now() + d);
                }
                _ = sleep_until(last_rx + config.frame_gap), if !framed && !buf.is_empty() => {
                    debug!("device {id}: dropping incomplete {}", crate::protocol::hex::to_hex(&buf));
                    buf.clear();
                }
            }
        }
    }
}

async fn write(
    wr: &mut tokio::net::tcp::WriteHalf<'_>,
    bytes: &[u8],
    stats: &SimStats,
) -> Result<(), SimError> {
    match timeout(WRITE_TIMEOUT, wr.write_all(bytes)).await {
        Ok(Ok(())) => {
            add(&stats.bytes_out, bytes.len());
            Ok(())
        }
        Ok(Err(e)) => Err(SimError::Io(e)),
        Err(_) => Err(SimError::WriteTimeout),
    }
}

fn registration_id(protocol: SimProtocol, id: u64) -> String {
    match protocol {
        SimProtocol::Framed => id.to_string(),
        SimProtocol::Transparent if id >= 100_000_000_000_000 => id.to_string(),
        SimProtocol::Transparent => (IMEI_BASE + id).to_string(),
    }
}

/// The registration packet device `id` sends (framed ids must fit u32; checked by `run`).
fn registration_bytes(protocol: SimProtocol, id: u64) -> Vec<u8> {
    match protocol {
        SimProtocol::Framed => (id as u32).to_be_bytes().to_vec(),
        SimProtocol::Transparent => registration_id(protocol, id).into_bytes(),
    }
}

fn heartbeat_bytes(config: &SimConfig) -> Vec<u8> {
    match config.protocol {
        SimProtocol::Framed => vec![2, 0],
        SimProtocol::Transparent => config.heartbeat_payload.clone(),
    }
}

impl SimHandle {
    /// The device number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Fix a register (holding and input) to `value`, as if written by FC6.
    pub fn set_register(&self, address: u16, value: u16) {
        self.shared.memory().registers.insert(address, value);
    }

    /// Fix consecutive registers from `address` on (wrapping past 65535).
    pub fn set_registers(&self, address: u16, values: &[u16]) {
        let mut mem = self.shared.memory();
        for (i, v) in values.iter().enumerate() {
            mem.registers.insert(address.wrapping_add(i as u16), *v);
        }
    }

    /// Fix a typed value (`raw`, before any scale) at `address`, encoded like the server's
    /// points decode it (`points::encode_registers`).
    pub fn set_value(&self, address: u16, ty: PointType, order: WordOrder, raw: f64) {
        self.set_registers(address, &points::encode_registers(ty, order, raw));
    }

    /// Fix a coil (and discrete input).
    pub fn set_coil(&self, address: u16, value: bool) {
        self.shared.memory().coils.insert(address, value);
    }

    /// Forget every fixed or written value: all addresses follow the signal again.
    pub fn clear(&self) {
        let mut mem = self.shared.memory();
        mem.registers = HashMap::new();
        mem.coils = HashMap::new();
    }

    /// What FC3 would read at `address` now.
    pub fn register(&self, address: u16) -> u16 {
        let mem = self.shared.memory();
        self.shared.register_at(&mem, address, unix_now())
    }

    /// What FC1 would read at `address` now.
    pub fn coil(&self, address: u16) -> bool {
        let mem = self.shared.memory();
        self.shared.coil_at(&mem, address, unix_now())
    }

    /// This device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Ask the device to close its connection and end `run` with `Ok`.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------
// fleets

/// Many devices with consecutive numbers, each its own task, sharing one connect rate.
#[derive(Debug)]
pub struct Fleet {
    handles: Vec<SimHandle>,
    tasks: Vec<JoinHandle<Result<(), SimError>>>,
    running: Arc<AtomicU64>,
    all_ended: Arc<Notify>,
}

/// Start `count` devices numbered `first_id..` on the current tokio runtime. Connection
/// attempts, first ones and reconnects alike, are spaced to at most `rate` per second
/// (`rate <= 0`: no limit). A device that ends with an error (no `reconnect`) logs it at
/// debug level, except the first one in the fleet, at warn.
pub fn spawn_fleet(config: SimConfig, count: usize, first_id: u64, rate: f64) -> Fleet {
    let config = Arc::new(config);
    let limiter = ConnectLimiter::new(rate);
    let running = Arc::new(AtomicU64::new(count as u64));
    let all_ended = Arc::new(Notify::new());
    let first_error = Arc::new(AtomicBool::new(true));
    let mut handles = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let (device, handle) =
            SimDevice::with_shared_config(first_id + i, config.clone(), limiter.clone());
        let (running, all_ended, first_error) =
            (running.clone(), all_ended.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let id = device.id();
            let result = device.run().await;
            if let Err(e) = &result {
                if first_error.swap(false, Ordering::Relaxed) {
                    warn!("device {id} stopped: {e} (other devices' errors at debug level)");
                } else {
                    debug!("device {id} stopped: {e}");
                }
            }
            if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                all_ended.notify_one();
            }
            result
        }));
        handles.push(handle);
    }
    Fleet {
        handles,
        tasks,
        running,
        all_ended,
    }
}

impl Fleet {
    /// Handles of the devices, in number order.
    pub fn handles(&self) -> &[SimHandle] {
        &self.handles
    }

    /// Counters summed over every device.
    pub fn stats(&self) -> StatsSnapshot {
        self.handles
            .iter()
            .fold(StatsSnapshot::default(), |acc, h| acc + h.stats())
    }

    /// Devices whose task has not ended.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire) as usize
    }

    /// Resolves once every device has ended by itself (only without `reconnect`, or after
    /// each was stopped through its handle).
    pub async fn ended(&self) {
        while self.running() > 0 {
            self.all_ended.notified().await;
        }
    }

    /// Stop every device, wait for their tasks and return the final counters.
    pub async fn stop(self) -> StatsSnapshot {
        for h in &self.handles {
            h.stop();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.handles
            .iter()
            .fold(StatsSnapshot::default(), |acc, h| acc + h.stats())
    }
}

/// Run a fleet until Ctrl-C / SIGTERM (or until every device has ended, e.g. without
/// `reconnect`), logging the counters every `report_every` at info level
/// (`Duration::ZERO`: never). Returns the final counters.
pub async fn run_fleet(
    config: SimConfig,
    count: usize,
    first_id: u64,
    rate: f64,
    report_every: Duration,
) -> StatsSnapshot {
    info!(
        "starting {count} {} DTUs {first_id}..={} -> {} at {rate}/s",
        config.protocol,
        first_id + (count as u64).saturating_sub(1),
        config.server
    );
    let fleet = spawn_fleet(config, count, first_id, rate);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let reporting = !report_every.is_zero();
    // The ticker is never polled when not reporting; any period will do.
    let report = if reporting {
        report_every
    } else {
        Duration::from_secs(3600)
    };
    let mut last = StatsSnapshot::default();
    let mut ticker = tokio::time::interval_at(Instant::now() + report, report);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("stopping");
                break;
            }
            _ = fleet.ended() => {
                info!("every device has stopped");
                break;
            }
            _ = ticker.tick(), if reporting => {
                let now = fleet.stats();
                info!(
                    "{now} (last {report:?}: +{} polls, +{} heartbeats, +{} connects)",
                    now.polls_answered - last.polls_answered,
                    now.heartbeats_sent - last.heartbeats_sent,
                    now.connects - last.connects
                );
                last = now;
            }
        }
    }
    let total = fleet.stop().await;
    info!("final: {total}");
    total
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---------------------------------------------------------------------------------------
// small parsers for the CLI

/// Parse a duration like `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"` (a bare number is
/// seconds; fractions allowed: `"1.5s"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?} (examples: 500ms, 30s, 5m)"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {s:?} (ms, s, m, h, d)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * factor).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// A fixed value for `--set`: `ADDR=VALUE[:TYPE[:ORDER]]`, e.g. `2100=1`, `2000=235:i16`,
/// `2010=45.5:f32:cdab`. TYPE is one of u16 i16 u32 i32 f32 u64 i64 f64 bool (default u16),
/// ORDER one of abcd cdab badc dcba (default abcd).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedValue {
    /// Register address.
    pub address: u16,
    /// Point type.
    pub ty: PointType,
    /// Word order for 32/64-bit types.
    pub order: WordOrder,
    /// Raw value.
    pub raw: f64,
}

impl FixedValue {
    /// Apply to a device.
    pub fn apply(&self, handle: &SimHandle) {
        handle.set_value(self.address, self.ty, self.order, self.raw);
    }
}

impl FromStr for FixedValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            || format!("bad value {s:?}: expected ADDR=VALUE[:TYPE[:ORDER]], e.g. 2010=45.5:f32");
        let (address, rest) = s.split_once('=').ok_or_else(usage)?;
        let address: u16 = address.trim().parse().map_err(|_| usage())?;
        let mut parts = rest.split(':');
        let raw: f64 = parts
            .next()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(usage)?;
        let ty = match parts.next() {
            None => PointType::U16,
            Some(t) => t
                .trim()
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| format!("{}: {e}", usage()))?,
        };
        let order = match parts.next() {
            None => WordOrder::Abcd,
            Some(o) => o
                .trim()
                .to_ascii_uppercase()
                .parse()
                .map_err(|e| format!("{}: {e}", usage()))?,
        };
        if parts.next().is_some() {
            return Err(usage());
        }
        Ok(FixedValue {
            address,
            ty,
            order,
            raw,
        })
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::net::TcpListener;

    /// Generous deadline for anything the device should do "soon".
    const DEADLINE: Duration = Duration::from_secs(10);

    fn adu(slave: u8, request: &Request) -> Vec<u8> {
        request.encode(slave)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    fn config(server: SocketAddr, protocol: SimProtocol) -> SimConfig {
        SimConfig {
            server,
            protocol,
            heartbeat: Duration::from_secs(3600),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            // Long enough that a slow test machine never splits a request in two.
            frame_gap: Duration::from_secs(5),
            ..SimConfig::default()
        }
    }

    async fn accept(l: &TcpListener) -> TcpStream {
        timeout(DEADLINE, l.accept())
            .await
            .expect("device did not connect")
            .expect("accept")
            .0
    }

    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        timeout(DEADLINE, s.read_exact(&mut buf))
            .await
            .expect("timed out reading")
            .expect("read");
        buf
    }

    /// Start a device, accept it and complete registration; returns the server side.
    async fn connected(
        protocol: SimProtocol,
        id: u64,
    ) -> (TcpStream, SimHandle, JoinHandle<Result<(), SimError>>) {
        let (l, addr) = listener().await;
        let (device, handle) = SimDevice::new(id, config(addr, protocol));
        let task = device.spawn();
        let mut s = accept(&l).await;
        match protocol {
            SimProtocol::Framed => {
                assert_eq!(read_n(&mut s, 4).await, (id as u32).to_be_bytes());
                s.write_all(&[1]).await.expect("ack");
            }
            SimProtocol::Transparent => {
                let reg = registration_id(protocol, id);
                assert_eq!(read_n(&mut s, reg.len()).await, reg.as_bytes());
            }
        }
        (s, handle, task)
    }

    /// Send a request the protocol's way and read the answer ADU.
    async fn poll(s: &mut TcpStream, protocol: SimProtocol, request: &[u8]) -> Vec<u8> {
        send(s, protocol, request).await;
        recv(s, protocol).await
    }

    async fn send(s: &mut TcpStream, protocol: SimProtocol, request: &[u8]) {
        let mut packet = Vec::new();
        if protocol == SimProtocol::Framed {
            packet.push(4);
            packet.push(request.len() as u8);
        }
        packet.extend_from_slice(request);
        s.write_all(&packet).await.expect("send");
    }

    async fn recv(s: &mut TcpStream, protocol: SimProtocol) -> Vec<u8> {
        match protocol {
            SimProtocol::Framed => {
                let head = read_n(s, 2).await;
                assert_eq!(head[0], 4, "framed response type");
                read_n(s, head[1] as usize).await
            }
            SimProtocol::Transparent => {
                let head = read_n(s, 3).await;
                let rest = if head[1] & 0x80 != 0 {
                    2
                } else {
                    match head[1] {
                        1..=4 => head[2] as usize + 2,
                        _ => 5,
                    }
                };
                let mut all = head;
                all.extend(read_n(s, rest).await);
                all
            }
        }
    }

    const BOTH: [SimProtocol; 2] = [SimProtocol::Framed, SimProtocol::Transparent];

    #[tokio::test]
    async fn framed_registration_bytes() {
        let (l, addr) = listener().await;
        let (device, handle) = SimDevice::new(1001, config(addr, SimProtocol::Framed));
        assert_eq!(device.registration_id(), "1001");
        let task = device.spawn();
        let mut s = accept(&l).await;
        assert_eq!(read_n(&mut s, 4).await, [0x00, 0x00, 0x03, 0xE9]);
        s.write_all(&[1]).await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        while handle.stats().registrations == 0 {
            assert!(Instant::now() < deadline, "registration ack not seen");
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handle.stats().connected, 1);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        assert_eq!(handle.stats().connected, 0);
    }

    #[tokio::test]
    async fn transparent_registration_bytes() {
        let (l, addr) = listener().await;
        let (device, handle) = SimDevice::new(1001, config(addr, SimProtocol::Transparent));
        assert_eq!(device.registration_id(), "860000000001001");
        let task = device.spawn();
        let mut s = accept(&l).await;
        assert_eq!(read_n(&mut s, 15).await, b"860000000001001");
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[test]
    fn transparent_ids() {
        assert_eq!(
            registration_id(SimProtocol::Transparent, 0),
            "860000000000000"
        );
        assert_eq!(
            registration_id(SimProtocol::Transparent, 861234567890123),
            "861234567890123"
        );
        assert_eq!(registration_id(SimProtocol::Framed, 7), "7");
    }

    #[tokio::test]
    async fn framed_heartbeat_cadence() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.heartbeat = Duration::from_millis(50);
        let (device, handle) = SimDevice::new(1001, cfg);
        let task = device.spawn();
        let mut s = accept(&l).await;
        read_n(&mut s, 4).await;
        s.write_all(&[1]).await.unwrap();
        for _ in 0..4 {
            assert_eq!(read_n(&mut s, 2).await, [2, 0]);
            s.write_all(&[2]).await.unwrap();
        }
        assert!(handle.stats().heartbeats_sent >= 4);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn framed_no_heartbeat_before_registration_ack() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.heartbeat = Duration::from_millis(20);
        let (device, handle) = SimDevice::new(1001, cfg);
        let task = device.spawn();
        let mut s = accept(&l).await;
        read_n(&mut s, 4).await;
        sleep(Duration::from_millis(200)).await;
        assert_eq!(handle.stats().heartbeats_sent, 0);
        s.write_all(&[1]).await.unwrap();
        assert_eq!(read_n(&mut s, 2).await, [2, 0]);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn transparent_heartbeat_cadence() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Transparent);
        cfg.heartbeat = Duration::from_millis(50);
        let (device, handle) = SimDevice::new(5, cfg);
        let task = device.spawn();
        let mut s = accept(&l).await;
        assert_eq!(read_n(&mut s, 15).await, b"860000000000005");
        for _ in 0..4 {
            assert_eq!(read_n(&mut s, 10).await, b"www.usr.cn");
        }
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn glued_registration() {
        for protocol in BOTH {
            let (l, addr) = listener().await;
            let mut cfg = config(addr, protocol);
            cfg.glue_registration = true;
            let (device, handle) = SimDevice::new(1001, cfg);
            let task = device.spawn();
            let mut s = accept(&l).await;
            let expected: &[u8] = match protocol {
                SimProtocol::Framed => &[0, 0, 3, 0xE9, 2, 0],
                SimProtocol::Transparent => b"860000000001001www.usr.cn",
            };
            assert_eq!(read_n(&mut s, expected.len()).await, expected);
            assert_eq!(handle.stats().heartbeats_sent, 1);
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn fc3_reads_set_value() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            handle.set_register(2000, 235);
            handle.set_value(2010, PointType::F32, WordOrder::Abcd, 45.5);
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadHoldingRegisters {
                        start: 2000,
                        count: 12,
                    },
                ),
            )
            .await;
            assert!(modbus::rtu::check_crc(&answer));
            assert_eq!(&answer[..3], &[1, 3, 24]);
            assert_eq!(&answer[3..5], &235u16.to_be_bytes());
            assert_eq!(&answer[23..27], &45.5f32.to_be_bytes());
            // FC4 reads the same table.
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadInputRegisters {
                        start: 2000,
                        count: 1,
                    },
                ),
            )
            .await;
            assert_eq!(answer, Response::Registers(vec![235]).encode(1, 4));
            assert_eq!(handle.stats().polls_answered, 2);
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn fc6_write_then_read_back() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            let write = adu(
                1,
                &Request::WriteSingleRegister {
                    address: 2100,
                    value: 1,
                },
            );
            // FC6 echoes the request.
            assert_eq!(poll(&mut s, protocol, &write).await, write);
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadHoldingRegisters {
                        start: 2100,
                        count: 1,
                    },
                ),
            )
            .await;
            assert_eq!(answer, Response::Registers(vec![1]).encode(1, 3));
            assert_eq!(handle.register(2100), 1);
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn fc16_write_then_read_back() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            let values = vec![1, 2, 3, 0xFFFF];
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::WriteMultipleRegisters {
                        address: 2100,
                        values: values.clone(),
                    },
                ),
            )
            .await;
            assert_eq!(
                answer,
                Response::WriteMultiple {
                    address: 2100,
                    count: 4
                }
                .encode(1, 16)
            );
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadHoldingRegisters {
                        start: 2100,
                        count: 4,
                    },
                ),
            )
            .await;
            assert_eq!(answer, Response::Registers(values).encode(1, 3));
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn fc15_fc5_write_then_fc1_fc2_read_back() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            let bits = vec![
                true, false, true, true, false, false, true, false, true, true,
            ];
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::WriteMultipleCoils {
                        address: 10,
                        values: bits.clone(),
                    },
                ),
            )
            .await;
            assert_eq!(
                answer,
                Response::WriteMultiple {
                    address: 10,
                    count: 10
                }
                .encode(1, 15)
            );
            let write = adu(
                1,
                &Request::WriteSingleCoil {
                    address: 11,
                    value: true,
                },
            );
            assert_eq!(poll(&mut s, protocol, &write).await, write);
            let mut expected = bits.clone();
            expected[1] = true;
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadCoils {
                        start: 10,
                        count: 10,
                    },
                ),
            )
            .await;
            assert_eq!(answer, Response::Bits(expected.clone()).encode(1, 1));
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadDiscreteInputs {
                        start: 10,
                        count: 10,
                    },
                ),
            )
            .await;
            assert_eq!(answer, Response::Bits(expected).encode(1, 2));
            assert!(handle.coil(11));
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn wrong_slave_gets_no_answer() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            handle.set_register(1, 11);
            handle.set_register(2, 22);
            // The first request is for slave 2; the first answer must be for the second one.
            send(
                &mut s,
                protocol,
                &adu(2, &Request::ReadHoldingRegisters { start: 1, count: 1 }),
            )
            .await;
            let answer = poll(
                &mut s,
                protocol,
                &adu(1, &Request::ReadHoldingRegisters { start: 2, count: 1 }),
            )
            .await;
            assert_eq!(answer, Response::Registers(vec![22]).encode(1, 3));
            assert_eq!(handle.stats().ignored, 1);
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn bad_crc_gets_no_answer() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            handle.set_register(1, 11);
            handle.set_register(2, 22);
            let mut bad = adu(1, &Request::ReadHoldingRegisters { start: 1, count: 1 });
            let last = bad.len() - 1;
            bad[last] ^= 0x55;
            send(&mut s, protocol, &bad).await;
            // Let the bad frame arrive on its own before the good one.
            sleep(Duration::from_millis(50)).await;
            let answer = poll(
                &mut s,
                protocol,
                &adu(1, &Request::ReadHoldingRegisters { start: 2, count: 1 }),
            )
            .await;
            assert_eq!(answer, Response::Registers(vec![22]).encode(1, 3));
            assert_eq!(
                handle.stats().malformed,
                u64::from(protocol == SimProtocol::Framed)
            );
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn transparent_request_split_across_writes_and_junk_before() {
        let protocol = SimProtocol::Transparent;
        let (mut s, handle, task) = connected(protocol, 1001).await;
        handle.set_register(7, 77);
        let request = adu(1, &Request::ReadHoldingRegisters { start: 7, count: 1 });
        // A registration reply glued in front, then the request in two pieces.
        s.write_all(b"OK").await.unwrap();
        s.write_all(&request[..3]).await.unwrap();
        sleep(Duration::from_millis(30)).await;
        s.write_all(&request[3..]).await.unwrap();
        assert_eq!(
            recv(&mut s, protocol).await,
            Response::Registers(vec![77]).encode(1, 3)
        );
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn exceptions() {
        for protocol in BOTH {
            let (mut s, handle, task) = connected(protocol, 1001).await;
            // count 0 -> illegal data value
            let answer = poll(
                &mut s,
                protocol,
                &adu(1, &Request::ReadHoldingRegisters { start: 0, count: 0 }),
            )
            .await;
            assert_eq!(answer, modbus::rtu::exception_adu(1, 3, 3));
            // past the end of the address space -> illegal data address
            let answer = poll(
                &mut s,
                protocol,
                &adu(
                    1,
                    &Request::ReadHoldingRegisters {
                        start: 65535,
                        count: 2,
                    },
                ),
            )
            .await;
            assert_eq!(answer, modbus::rtu::exception_adu(1, 3, 2));
            // unknown function with a valid CRC -> illegal function
            let mut unknown = vec![1, 0x11];
            modbus::rtu::append_crc(&mut unknown);
            assert_eq!(
                poll(&mut s, protocol, &unknown).await,
                modbus::rtu::exception_adu(1, 0x11, 1)
            );
            assert_eq!(handle.stats().exceptions, 3);
            handle.stop();
            timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn framed_data_packets_and_acks() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.data_every = Some(Duration::from_millis(30));
        let (device, handle) = SimDevice::new(1001, cfg);
        let task = device.spawn();
        let mut s = accept(&l).await;
        read_n(&mut s, 4).await;
        s.write_all(&[1]).await.unwrap();
        for seq in 1..=2 {
            let head = read_n(&mut s, 2).await;
            assert_eq!(head[0], 3);
            let body = read_n(&mut s, head[1] as usize).await;
            assert_eq!(body, format!("id=1001 seq={seq}").as_bytes());
            s.write_all(&[3]).await.unwrap();
        }
        let deadline = Instant::now() + DEADLINE;
        while handle.stats().acks < 2 {
            assert!(Instant::now() < deadline, "acks not counted");
            sleep(Duration::from_millis(10)).await;
        }
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn framed_garbage_from_server_is_survived() {
        let (mut s, handle, task) = connected(SimProtocol::Framed, 1001).await;
        handle.set_register(0, 5);
        s.write_all(&[0x99, 0x01, 0x02]).await.unwrap();
        sleep(Duration::from_millis(50)).await;
        let answer = poll(
            &mut s,
            SimProtocol::Framed,
            &adu(1, &Request::ReadHoldingRegisters { start: 0, count: 1 }),
        )
        .await;
        assert_eq!(answer, Response::Registers(vec![5]).encode(1, 3));
        assert_eq!(handle.stats().protocol_errors, 1);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn without_reconnect_run_ends_when_server_closes() {
        let (s, _handle, task) = connected(SimProtocol::Framed, 1001).await;
        drop(s);
        let result = timeout(DEADLINE, task).await.unwrap().unwrap();
        assert!(matches!(result, Err(SimError::Closed)), "{result:?}");
    }

    #[tokio::test]
    async fn framed_registration_timeout() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.register_timeout = Duration::from_millis(100);
        let (device, _handle) = SimDevice::new(1001, cfg);
        let task = device.spawn();
        let _s = accept(&l).await;
        let result = timeout(DEADLINE, task).await.unwrap().unwrap();
        assert!(
            matches!(result, Err(SimError::RegistrationTimeout)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn reconnects_after_close_and_before_server_is_up() {
        // Reserve a port, then close it so the first attempts are refused.
        let (l, addr) = listener().await;
        drop(l);
        let mut cfg = config(addr, SimProtocol::Transparent);
        cfg.reconnect = true;
        let (device, handle) = SimDevice::new(1, cfg);
        let task = device.spawn();
        sleep(Duration::from_millis(150)).await;
        let l = TcpListener::bind(addr).await.expect("rebind");
        let mut s = accept(&l).await;
        assert_eq!(read_n(&mut s, 15).await, b"860000000000001");
        drop(s);
        let mut s = accept(&l).await;
        assert_eq!(read_n(&mut s, 15).await, b"860000000000001");
        let stats = handle.stats();
        assert!(stats.connect_failures >= 1, "{stats}");
        assert!(stats.connects >= 2, "{stats}");
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn framed_id_must_fit_u32() {
        let (device, _) = SimDevice::new(u64::from(u32::MAX) + 1, SimConfig::default());
        assert!(matches!(device.run().await, Err(SimError::IdOutOfRange(_))));
    }

    #[tokio::test]
    async fn stop_while_connecting_or_backing_off() {
        let (l, addr) = listener().await;
        drop(l);
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.reconnect = true;
        cfg.backoff_min = Duration::from_secs(3600);
        let (device, handle) = SimDevice::new(1, cfg);
        let task = device.spawn();
        sleep(Duration::from_millis(100)).await;
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_registers_every_device() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, SimProtocol::Framed);
        cfg.heartbeat = Duration::from_millis(100);
        let fleet = spawn_fleet(cfg, 20, 1001, 500.0);
        let mut ids = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..20 {
            let mut s = accept(&l).await;
            let reg = read_n(&mut s, 4).await;
            ids.push(u32::from_be_bytes([reg[0], reg[1], reg[2], reg[3]]));
            s.write_all(&[1]).await.unwrap();
            sockets.push(s);
        }
        ids.sort_unstable();
        assert_eq!(ids, (1001..1021).collect::<Vec<u32>>());
        // Every device answers its own poll.
        for (i, h) in fleet.handles().iter().enumerate() {
            h.set_register(0, i as u16);
        }
        for s in &mut sockets {
            let request = adu(1, &Request::ReadHoldingRegisters { start: 0, count: 1 });
            send(s, SimProtocol::Framed, &request).await;
            // Skip heartbeats until the response.
            loop {
                let t = read_n(s, 1).await[0];
                if t == 2 {
                    assert_eq!(read_n(s, 1).await, [0]);
                    continue;
                }
                assert_eq!(t, 4);
                let len = read_n(s, 1).await[0] as usize;
                let answer = read_n(s, len).await;
                assert!(modbus::rtu::check_crc(&answer));
                break;
            }
        }
        let stats = fleet.stats();
        assert_eq!(stats.connected, 20, "{stats}");
        assert_eq!(stats.registrations, 20, "{stats}");
        assert_eq!(stats.polls_answered, 20, "{stats}");
        assert_eq!(fleet.running(), 20);
        let total = fleet.stop().await;
        assert_eq!(total.connected, 0, "{total}");
    }

    #[tokio::test]
    async fn run_fleet_returns_when_every_device_has_ended() {
        // Nothing listens: without reconnect every device fails once and ends.
        let (l, addr) = listener().await;
        drop(l);
        let total = timeout(
            DEADLINE,
            run_fleet(config(addr, SimProtocol::Framed), 5, 1, 0.0, Duration::ZERO),
        )
        .await
        .expect("run_fleet did not return");
        assert_eq!(total.connect_failures, 5, "{total}");
        assert_eq!(total.connected, 0, "{total}");
    }

    #[tokio::test]
    async fn fleet_applies_initial_values() {
        // Nothing listens there: the devices never reach a server.
        let (l, addr) = listener().await;
        drop(l);
        let cfg = SimConfig {
            initial_values: vec!["2010=45.5:f32".parse().unwrap(), "2100=1".parse().unwrap()],
            ..config(addr, SimProtocol::Framed)
        };
        let fleet = spawn_fleet(cfg, 2, 1, 0.0);
        for h in fleet.handles() {
            h.stop();
        }
        fleet.ended().await;
        for h in fleet.handles() {
            let hi = h.register(2010);
            let lo = h.register(2011);
            assert_eq!(f32::from_bits((u32::from(hi) << 16) | u32::from(lo)), 45.5);
            assert_eq!(h.register(2100), 1);
        }
        assert_eq!(fleet.running(), 0);
        fleet.stop().await;
    }

    #[tokio::test]
    async fn limiter_spaces_slots() {
        let limiter = ConnectLimiter::new(50.0).expect("limiter");
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first slot is immediate, the next four 20 ms apart (lower bound only).
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(79), "{elapsed:?}");
        assert!(ConnectLimiter::new(0.0).is_none());
        assert!(ConnectLimiter::new(f64::NAN).is_none());
    }

    // --- pure parts -------------------------------------------------------------------

    fn shared(id: u64, slave: u8) -> Shared {
        Shared {
            id,
            slave,
            memory: Mutex::new(Memory::default()),
            stats: SimStats::default(),
            stop: watch::channel(false).0,
        }
    }

    #[test]
    fn signal_is_deterministic_and_moves() {
        assert_eq!(signal(1001, 2000, 1e9), signal(1001, 2000, 1e9));
        let values: Vec<u16> = (0..10)
            .map(|i| signal(1001, 2000, 1e9 + 30.0 * f64::from(i)))
            .collect();
        assert!(values.windows(2).any(|w| w[0] != w[1]), "{values:?}");
        for t in 0..1000 {
            let v = signal(1001, 2000, f64::from(t) * 7.0);
            assert!((150..=350).contains(&v), "{v}");
        }
        // Different devices differ.
        assert_ne!(signal(1001, 2000, 1e9), signal(1002, 2000, 1e9));
    }

    #[test]
    fn broadcast_write_is_applied_silently() {
        let dev = shared(1, 1);
        let write = adu(
            0,
            &Request::WriteSingleRegister {
                address: 3,
                value: 9,
            },
        );
        assert_eq!(dev.execute(&write, 0.0), Outcome::Ignored);
        let read = adu(1, &Request::ReadHoldingRegisters { start: 3, count: 1 });
        assert_eq!(
            dev.execute(&read, 0.0),
            Outcome::Reply(Response::Registers(vec![9]).encode(1, 3))
        );
        let broadcast_read = adu(0, &Request::ReadHoldingRegisters { start: 3, count: 1 });
        assert_eq!(dev.execute(&broadcast_read, 0.0), Outcome::Ignored);
    }

    #[test]
    fn unwritten_registers_follow_the_signal() {
        let dev = shared(42, 1);
        let read = adu(
            1,
            &Request::ReadHoldingRegisters {
                start: 100,
                count: 2,
            },
        );
        let expected = vec![signal(42, 100, 5.0), signal(42, 101, 5.0)];
        assert_eq!(
            dev.execute(&read, 5.0),
            Outcome::Reply(Response::Registers(expected).encode(1, 3))
        );
    }

    #[test]
    fn refused_and_malformed_requests() {
        let dev = shared(1, 1);
        // FC5 with a value other than FF00/0000: exception 3.
        let mut bad_coil = vec![1, 5, 0, 1, 0x12, 0x34];
        modbus::rtu::append_crc(&mut bad_coil);
        assert_eq!(
            dev.execute(&bad_coil, 0.0),
            Outcome::Exception(modbus::rtu::exception_adu(1, 5, 3))
        );
        // FC16 whose byte count does not match its data: silence.
        let mut short = vec![1, 16, 0, 1, 0, 2, 4, 0, 1];
        modbus::rtu::append_crc(&mut short);
        assert_eq!(dev.execute(&short, 0.0), Outcome::Malformed);
        // FC3 of the wrong length: silence.
        let mut long = vec![1, 3, 0, 1, 0, 1, 0];
        modbus::rtu::append_crc(&mut long);
        assert_eq!(dev.execute(&long, 0.0), Outcome::Malformed);
        assert_eq!(dev.execute(&[1, 3], 0.0), Outcome::Malformed);
    }

    #[test]
    fn largest_reads_fit_an_adu() {
        let dev = shared(1, 1);
        for (request, function) in [
            (
                Request::ReadHoldingRegisters {
                    start: 0,
                    count: 125,
                },
                3,
            ),
            (
                Request::ReadCoils {
                    start: 0,
                    count: 2000,
                },
                1,
            ),
        ] {
            match dev.execute(&adu(1, &request), 0.0) {
                Outcome::Reply(r) => {
                    assert!(r.len() <= MAX_ADU);
                    assert_eq!(r[1], function);
                }
                other => panic!("{other:?}"),
            }
        }
        let too_many = adu(
            1,
            &Request::ReadHoldingRegisters {
                start: 0,
                count: 126,
            },
        );
        assert_eq!(
            dev.execute(&too_many, 0.0),
            Outcome::Exception(modbus::rtu::exception_adu(1, 3, 3))
        );
    }

    #[test]
    fn framed_parser() {
        let mut buf = BytesMut::from(&[1u8, 2, 4, 3, 0xAA, 0xBB, 0xCC, 4, 5][..]);
        assert_eq!(next_framed(&mut buf), Ok(Some(FramedIn::Ack(1))));
        assert_eq!(next_framed(&mut buf), Ok(Some(FramedIn::Ack(2))));
        assert_eq!(
            next_framed(&mut buf),
            Ok(Some(FramedIn::Request(vec![0xAA, 0xBB, 0xCC])))
        );
        assert_eq!(next_framed(&mut buf), Ok(None));
        assert_eq!(buf.len(), 2);
        let mut bad = BytesMut::from(&[0x99u8, 1][..]);
        assert!(next_framed(&mut bad).is_err());
        let mut empty_request = BytesMut::from(&[4u8, 0][..]);
        assert!(next_framed(&mut empty_request).is_err());
    }

    #[test]
    fn rtu_scanner() {
        let request = adu(1, &Request::ReadHoldingRegisters { start: 7, count: 1 });
        assert_eq!(scan_rtu(&request), Scan::Found { start: 0, len: 8 });
        assert_eq!(scan_rtu(&request[..5]), Scan::NeedMore);
        let mut junk = b"www".to_vec();
        junk.extend_from_slice(&request);
        assert_eq!(scan_rtu(&junk), Scan::Found { start: 3, len: 8 });
        let multi = adu(
            1,
            &Request::WriteMultipleRegisters {
                address: 1,
                values: vec![1, 2, 3],
            },
        );
        assert_eq!(scan_rtu(&multi), Scan::Found { start: 0, len: 15 });
        assert_eq!(scan_rtu(&multi[..10]), Scan::NeedMore);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn fixed_values() {
        let v: FixedValue = "2010=45.5:f32:cdab".parse().unwrap();
        assert_eq!(
            v,
            FixedValue {
                address: 2010,
                ty: PointType::F32,
                order: WordOrder::Cdab,
                raw: 45.5
            }
        );
        let v: FixedValue = "2100=1".parse().unwrap();
        assert_eq!(
            (v.address, v.ty, v.order, v.raw),
            (2100, PointType::U16, WordOrder::Abcd, 1.0)
        );
        for bad in [
            "",
            "x=1",
            "1=",
            "1=2:q",
            "1=2:u16:zz",
            "1=2:u16:abcd:x",
            "70000=1",
        ] {
            assert!(bad.parse::<FixedValue>().is_err(), "{bad}");
        }
        let (_, handle) = SimDevice::new(1, SimConfig::default());
        "5=-2:i16".parse::<FixedValue>().unwrap().apply(&handle);
        assert_eq!(handle.register(5), 0xFFFE);
        handle.clear();
        assert_eq!(handle.register(5), signal(1, 5, unix_now()));
    }

    #[test]
    fn protocol_names() {
        assert_eq!("framed".parse(), Ok(SimProtocol::Framed));
        assert_eq!("Transparent".parse(), Ok(SimProtocol::Transparent));
        assert!("ttms".parse::<SimProtocol>().is_err());
        assert_eq!(SimProtocol::Transparent.to_string(), "transparent");
    }

    proptest! {
        #[test]
        fn framed_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dev = shared(1, 1);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                match next_framed(&mut buf) {
                    Ok(Some(FramedIn::Request(adu))) => { let _ = dev.answer(&adu); }
                    Ok(Some(FramedIn::Ack(_))) => {}
                    Ok(None) => break,
                    Err(_) => { buf.clear(); break; }
                }
            }
        }

        #[test]
        fn rtu_scanner_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dev = shared(1, 1);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Scan::Found { start, len } = scan_rtu(&buf) {
                prop_assert!(start + len <= buf.len());
                let _ = dev.answer(&buf[start..start + len]);
                buf.advance(start + len);
            }
        }

        #[test]
        fn written_registers_read_back(address in 0u16..65000, values in proptest::collection::vec(any::<u16>(), 1..=123)) {
            let dev = shared(7, 3);
            let write = adu(3, &Request::WriteMultipleRegisters { address, values: values.clone() });
            prop_assert_eq!(
                dev.execute(&write, 0.0),
                Outcome::Reply(Response::WriteMultiple { address, count: values.len() as u16 }.encode(3, 16))
            );
            let read = adu(3, &Request::ReadHoldingRegisters { start: address, count: values.len() as u16 });
            if usize::from(address) + values.len() <= 0x1_0000 {
                prop_assert_eq!(dev.execute(&read, 0.0), Outcome::Reply(Response::Registers(values).encode(3, 3)));
            }
        }
    }
}
