//! Everything said to and by the supervisor: what connections report, what the supervisor asks
//! of a connection (through `Recipient`s, never a connection's concrete actor type), what the
//! web layer and the offline queue ask, and the views they get back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::command::{CommandReply, DeviceCommand};
use crate::protocol::points::Decoded;
use crate::protocol::Protocol;

pub use super::list::{DevicePage, DeviceQuery};

/// Identifies one TCP connection, so that a late report from a replaced connection cannot
/// overwrite the state of the connection that now holds the id. Handed out by
/// `conn::next_conn_id`, the one source.
pub type ConnId = u64;

/// Why a device went offline (the `data.reason` of `device.offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    HeartbeatTimeout,
    Closed,
    Replaced,
    /// A unit on a DTU's bus left `max_failed` polls in a row unanswered.
    NoResponse,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::HeartbeatTimeout => "heartbeat_timeout",
            OfflineReason::Closed => "closed",
            OfflineReason::Replaced => "replaced",
            OfflineReason::NoResponse => "no_response",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The supervisor to a connection

/// Closes the connection; the supervisor sends it when a newer connection takes the id, and
/// to every connection at shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: OfflineReason,
}

/// Runs an operator command in turn with the polls of a polled device.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: DeviceCommand,
    pub reply: CommandReply,
    /// For a unit on the DTU's bus: its slave address; None: the DTU itself.
    pub unit: Option<u8>,
}

/// A `$TTMS` frame from another terminal, already rewritten for the one it is handed to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub sender: String,
    pub frame: Vec<u8>,
    pub guard: InFlightGuard,
}

/// Frames were queued for a terminal while it was online: deliver them now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

/// How the supervisor reaches the connection that holds an id.
#[derive(Clone)]
pub struct ConnHandle {
    pub close: Recipient<Close>,
    pub service: Service,
}

/// What a connection does besides closing, by what its protocol's devices are.
#[derive(Clone)]
pub enum Service {
    /// A polled device: it takes operator commands.
    Commands(Recipient<Execute>),
    /// A `$TTMS` terminal: frames for it are delivered live, or queued and kicked.
    Relay {
        deliver: Recipient<Deliver>,
        kick: Recipient<Kick>,
    },
}

/// Counts relay frames in flight: read from a sender and not yet written to a target or
/// committed to the queue. Shutdown waits for the count to reach zero.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one frame until the guard (and every clone of it) is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Held by whatever carries a frame on its way: a routed frame, a `Deliver` message, a write
/// whose outcome is awaited.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Clone for InFlightGuard {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// A connection to the supervisor

/// A connection has registered `id`. An older connection holding the id is closed (`replaced`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Registered {
    pub id: String,
    pub conn: ConnId,
    pub handle: ConnHandle,
    pub protocol: Protocol,
    pub profile: Option<String>,
    pub remote_addr: SocketAddr,
    /// For a unit on the DTU's bus: the DTU's id and the slave address. It is reached through
    /// its DTU's connection.
    pub unit: Option<(String, u8)>,
}

/// Traffic from a device (sent at most about once a second per device).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seen {
    pub id: String,
    pub conn: ConnId,
}

/// Values decoded from one poll.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Telemetry {
    pub id: String,
    pub conn: ConnId,
    pub values: Vec<Decoded>,
    pub at: DateTime<Utc>,
}

/// A connection that held `id` has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Offline {
    pub id: String,
    pub conn: ConnId,
    pub reason: OfflineReason,
}

/// Hands a `$TTMS` frame (already rewritten for its target) to the connection holding
/// `target`. Answers `true` when the target's connection took it (it then writes it, or
/// queues it if the write fails), `false` when the target is offline: the caller queues it.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RouteRelay {
    pub target: String,
    pub sender: String,
    pub frame: Vec<u8>,
    /// Keeps the frame counted in flight until the target's connection has handled it.
    pub guard: InFlightGuard,
}

/// A frame for `target` has just been queued: if the target is online (it registered while
/// the frame was being stored), its connection delivers the queue now rather than at its next
/// heartbeat, ahead of live frames routed after this message.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KickRelay {
    pub target: String,
}

// ---------------------------------------------------------------------------------------
// Queries

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub online: bool,
    pub protocol: String,
    pub profile: Option<String>,
    pub remote_addr: String,
    pub connected_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// For a unit (one slave on a DTU's bus): the DTU's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a unit: its slave address on the bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
}

/// The latest decoded value of one point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointValue {
    pub value: f64,
    pub raw: f64,
    pub unit: String,
    pub at: DateTime<Utc>,
}

pub type Values = BTreeMap<String, PointValue>;

/// A page of the known devices, in id order.
#[derive(Message)]
#[rtype(result = "DevicePage")]
pub struct ListDevices(pub DeviceQuery);

/// One device with its latest values.
#[derive(Message)]
#[rtype(result = "Option<(DeviceView, Values)>")]
pub struct GetDevice {
    pub id: String,
}

/// Whether the server knows a device id (online now, seen earlier, or stored).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsKnown(pub String);

/// How many devices are online now.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct OnlineCount;

/// How many devices are registered (online) now and how many the server knows, for `/metrics`.
#[derive(Message)]
#[rtype(result = "DeviceCounts")]
pub struct CountDevices;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub registered: usize,
    pub known: usize,
}

/// Closes every device connection (server shutdown); answers how many were open.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_every_holder_until_the_last_drops() {
        let in_flight = InFlight::default();
        let routed = in_flight.enter();
        // Handed to the supervisor and on to the target's connection: a second holder.
        let deliver = routed.clone();
        assert_eq!(in_flight.count(), 2);
        drop(routed);
        assert_eq!(in_flight.count(), 1);
        drop(deliver);
        assert_eq!(in_flight.count(), 0);
    }
}
