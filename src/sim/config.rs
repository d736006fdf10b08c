//! How a simulated DTU behaves ([`SimConfig`]), the values it starts with ([`FixedValue`],
//! the CLI's `--set`) and why it stops ([`SimError`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::link::{DeviceLink, DeviceOptions, RegistrationMode, Role};
use crate::protocol::points::{PointType, WordOrder};
use crate::protocol::serial::Framing;
use crate::protocol::transparent::USR_HEARTBEAT;
use crate::protocol::{framed, Protocol};

use super::{RoundTrips, SimHandle};

/// How a simulated DTU behaves. `SimConfig::default()` is a framed DTU for
/// `127.0.0.1:22334`, slave 1, 30 s heartbeat, no reconnect.
///
/// Every protocol whose devices are polled ([`Role::Polled`]) can be simulated; what goes on
/// the wire comes from its [`DeviceLink`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Server address to dial.
    pub server: SocketAddr,
    /// Wire protocol: an entry of [`crate::protocol::PROTOCOLS`] whose devices are polled.
    pub protocol: Protocol,
    /// Modbus slave address the simulated meter answers to (1..=247).
    pub slave: u8,
    /// What the simulated meter speaks (CLI `--meter`): Modbus RTU, Modbus TCP (the MBAP
    /// header, no CRC) or DL/T 645-2007.
    pub meter: Framing,
    /// Several slaves on the DTU's RS-485 bus instead of `slave`, each with values of its own
    /// (CLI `--units 1,7`); empty: just `slave`.
    pub units: Vec<u8>,
    /// Slaves of `units` that never answer (CLI `--silent 7`); a handle can change it live.
    pub silent: Vec<u8>,
    /// The DTU queries its meter itself this often and sends the answer up unasked, as DTUs
    /// with a "serial heartbeat" or auto-query do (CLI `--passive-every 5s`,
    /// `--passive-read 3:2000:10`); the server stores it through a `trigger = "passive"` poll.
    pub passive: Option<PassiveQuery>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Reconnect (with exponential backoff and jitter) when the connection fails or closes;
    /// without it [`SimDevice::run`](super::SimDevice::run) returns at the first disconnect.
    pub reconnect: bool,
    /// Send the first heartbeat in the same write as the registration packet.
    pub glue_registration: bool,
    /// Heartbeat bytes, where the protocol leaves them to the DTU's configuration
    /// (transparent; default `www.usr.cn`).
    pub heartbeat_payload: Vec<u8>,
    /// When the registration is sent, where the protocol leaves that to the DTU's
    /// configuration (transparent: `connect`, or before every packet in `prefix` and `both`
    /// mode).
    pub registration_mode: RegistrationMode,
    /// Send a data packet (ASCII `id=<n> seq=<k>`) this often, where the protocol has them
    /// (framed: `03 LL <data>`).
    pub data_every: Option<Duration>,
    /// Where the protocol acknowledges registrations (framed: `01`): close and retry if the
    /// server has not by then.
    pub register_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max` (±20 % jitter),
    /// back to `backoff_min` after a successful registration.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// On a link without framing of its own (transparent): received bytes that do not
    /// complete a request within this silence are dropped (the TCP stand-in for the RTU
    /// inter-frame gap).
    pub frame_gap: Duration,
    /// Values fixed on every device when it is created (CLI `--set`).
    pub initial_values: Vec<FixedValue>,
    /// Bind device `n`'s socket to 127.0.0.(1 + n % 250) before connecting
    /// ([`SimConfig::source_address`]), so that tens of thousands of devices in one process
    /// are not limited by the ephemeral ports of one source address (about 28,000, fewer while
    /// earlier connections sit in TIME_WAIT). Only for a server on the loopback network.
    pub spread_sources: bool,
    /// Measure poll round trips as a DTU sees them: each heartbeat, when due, waits for the next
    /// request and leaves in the same write as its answer; the time from that request's arrival
    /// to the heartbeat's acknowledgement is recorded here. The server handles a connection's
    /// bytes in order, so the acknowledgement means it has taken the answer and could answer
    /// again. Only where the protocol acknowledges heartbeats (framed); `None`: heartbeats on
    /// their own timer, nothing recorded.
    pub round_trips: Option<Arc<RoundTrips>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 22334)),
            protocol: Protocol::of(&framed::PROTOCOL),
            slave: 1,
            meter: Framing::Rtu,
            units: Vec::new(),
            silent: Vec::new(),
            passive: None,
            heartbeat: Duration::from_secs(30),
            reconnect: false,
            glue_registration: false,
            heartbeat_payload: USR_HEARTBEAT.to_vec(),
            registration_mode: RegistrationMode::Connect,
            data_every: None,
            register_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            frame_gap: Duration::from_millis(500),
            initial_values: Vec::new(),
            spread_sources: false,
            round_trips: None,
        }
    }
}

/// A read the simulated DTU makes of its meter on its own, every `every`.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveQuery {
    pub every: Duration,
    pub request: crate::protocol::modbus::Request,
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
    /// The registration was not acknowledged within `register_timeout`.
    #[error("registration not acknowledged in time")]
    RegistrationTimeout,
    /// A write did not complete within 10 s.
    #[error("write timed out")]
    WriteTimeout,
    /// The device number does not fit the protocol's registration (framed ids are u32):
    /// the protocol's reason.
    #[error("{0}")]
    IdOutOfRange(String),
    /// The protocol's devices are not polled (`$TTMS` terminals: see [`super::ttms`]).
    #[error("{0} devices are not polled: the simulator has no device side for them")]
    NotPolled(Protocol),
}

/// Source addresses [`SimConfig::spread_sources`] spreads over: 127.0.0.1 ..= 127.0.0.250.
const SPREAD_ADDRESSES: u64 = 250;

impl SimConfig {
    /// The slaves the simulated bus answers for: the units, or the one slave.
    pub fn slaves(&self) -> Vec<u8> {
        if self.units.is_empty() {
            vec![self.slave]
        } else {
            self.units.clone()
        }
    }

    /// The address device `number`'s socket is bound to before it connects: with
    /// `spread_sources`, 127.0.0.(1 + number % 250) and a port the kernel picks; `None` without.
    pub fn source_address(&self, number: u64) -> Option<SocketAddr> {
        // Below 250 by the modulo: the cast cannot truncate.
        let host = 1 + (number % SPREAD_ADDRESSES) as u8;
        self.spread_sources
            .then(|| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0).into())
    }

    /// The device side of the configured protocol, or why it has none.
    pub fn device_link(&self) -> Result<Arc<dyn DeviceLink>, SimError> {
        match self.protocol.role() {
            Role::Polled { device, .. } => Ok(Arc::from(device(&DeviceOptions {
                heartbeat: self.heartbeat_payload.clone(),
                registration_mode: self.registration_mode,
                framing: self.meter,
            }))),
            Role::Relay => Err(SimError::NotPolled(self.protocol)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::meter::{signal, unix_now};
    use crate::sim::SimDevice;

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
    fn every_polled_protocol_has_a_device_side() {
        for entry in crate::protocol::PROTOCOLS {
            let protocol = Protocol::of(entry);
            let config = SimConfig {
                protocol,
                ..SimConfig::default()
            };
            match config.device_link() {
                Ok(_) => assert!(protocol.needs_profile(), "{protocol}"),
                Err(e) => {
                    assert!(protocol.is_relay(), "{protocol}: {e}");
                    assert!(matches!(e, SimError::NotPolled(p) if p == protocol));
                }
            }
        }
    }
}
