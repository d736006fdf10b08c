//! `dtu-sim`: simulated dial-in DTUs (the device side of the wire protocols).
//!
//! A [`SimDevice`] dials the server, registers, heartbeats and answers Modbus RTU requests
//! for its slave address, exactly like a 4G serial-to-TCP modem with a meter behind it. It
//! speaks any protocol of [`crate::protocol::PROTOCOLS`] whose devices are polled, through
//! that protocol's [`DeviceLink`](crate::protocol::link::DeviceLink):
//!
//! * **framed** — sends its 4-byte big-endian device number, waits for `01`, heartbeats
//!   `02 00`, answers `04 LL <RTU request>` with `04 LL <RTU response>` and can send
//!   `03 LL <data>` packets ([`SimConfig::data_every`]).
//! * **transparent** (USR-IOT style) — sends an ASCII registration id (15 digits, IMEI-like,
//!   see [`SimDevice::registration_id`]), heartbeats with [`SimConfig::heartbeat_payload`]
//!   (`www.usr.cn`) and answers raw Modbus RTU. Whatever the server sends that is not a
//!   request (registration/heartbeat replies, junk) is ignored, like on an RS-485 bus. With
//!   [`SimConfig::registration_mode`] `prefix` or `both`, every heartbeat and answer carries
//!   the registration before it.
//!
//! `$TTMS` relay terminals are not polled; [`ttms`] simulates them.
//!
//! What the meter speaks is [`SimConfig::meter`] (`--meter`): Modbus RTU, Modbus TCP (the same
//! slave, requests and answers in MBAP headers) or DL/T 645-2007 (`meter_dlt645.rs`: each slave
//! a meter with an address of its own, answering the identifiers of the standard's table).
//!
//! The "meter" behind each device answers FC 1/2/3/4/5/6/15/16. Every address exists. Holding and
//! input registers are one table (FC3 and FC4 read the same values), coils and discrete
//! inputs are one table (FC1 and FC2). An address that was never written reads a slowly
//! drifting [`signal`] of (device number, address, wall time); writes (FC5/6/15/16 or
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
//! use dtu_supervisor::protocol::{framed, Protocol};
//! use dtu_supervisor::sim::{SimConfig, SimDevice};
//! let config = SimConfig {
//!     server: "127.0.0.1:22334".parse().unwrap(),
//!     protocol: Protocol::of(&framed::PROTOCOL),
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

mod config;
mod device;
mod fleet;
mod meter;
mod stats;
pub mod ttms;

#[cfg(test)]
mod test_util;

pub use config::{FixedValue, PassiveQuery, SimConfig, SimError};
pub use device::SimDevice;
pub use fleet::{run_fleet, spawn_fleet, Fleet};
pub use meter::{signal, signal_bit, SimHandle};
pub use stats::{RoundTrips, SimStats, StatsSnapshot};
