//! What the rest of the server hands to storage: one enum of rows, each a plain value with
//! UTC times. Rows are serde-serialisable so that they can be spooled to a local file while the
//! database is unreachable and replayed later, unchanged.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Longest device id in characters: the width of the `devices.id` column (and of every
/// `device_id` column). Anything longer is not an id but garbage: a connection refuses to
/// register it (held to as many bytes, which is stricter) and storage drops a row carrying it
/// rather than failing its batch.
pub const DEVICE_ID_MAX: usize = 64;

/// A new random id for a stored record (`c…` commands, `t…` tokens, `w…` webhooks): random,
/// so ids stay unique across restarts and nodes.
pub fn new_id(prefix: char) -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// One decoded value of one point. Stored to the millisecond: of two values of a point in
/// the same millisecond, the one written last is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRow {
    pub device_id: String,
    pub point: String,
    pub value: f64,
    pub raw: f64,
    pub at: DateTime<Utc>,
    /// The point's unit (the profile's), kept with its series; empty when unknown (rows
    /// spooled by releases before it was stored).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketKind {
    Register,
    Heartbeat,
    Data,
    Modbus,
    Unsolicited,
    Relay,
    /// A device signing off (DDP `02`).
    Logout,
    /// Bytes the codec refused (a bad CRC, a broken frame).
    Malformed,
}

impl PacketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketKind::Register => "register",
            PacketKind::Heartbeat => "heartbeat",
            PacketKind::Data => "data",
            PacketKind::Modbus => "modbus",
            PacketKind::Unsolicited => "unsolicited",
            PacketKind::Relay => "relay",
            PacketKind::Logout => "logout",
            PacketKind::Malformed => "malformed",
        }
    }

    /// Whether a packet of this kind is an error by itself (`[storage] packets = "errors"`
    /// stores it as it comes); the packets of a failed exchange are errors only afterwards.
    pub fn is_error(self) -> bool {
        matches!(self, PacketKind::Malformed | PacketKind::Unsolicited)
    }
}

/// Bytes that crossed a device's socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacketRow {
    pub device_id: String,
    pub direction: Direction,
    pub kind: PacketKind,
    pub bytes: Vec<u8>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnEvent {
    Connect,
    Disconnect,
    HeartbeatTimeout,
    Replaced,
    Rejected,
    /// A unit left `max_failed` polls in a row unanswered.
    NoResponse,
}

impl ConnEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnEvent::Connect => "connect",
            ConnEvent::Disconnect => "disconnect",
            ConnEvent::HeartbeatTimeout => "heartbeat_timeout",
            ConnEvent::Replaced => "replaced",
            ConnEvent::Rejected => "rejected",
            ConnEvent::NoResponse => "no_response",
        }
    }
}

/// A line of a device's connection history. `device_id` is empty for a connection that never
/// registered (a `rejected` one); `remote_addr` says where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnEventRow {
    pub device_id: String,
    pub event: ConnEvent,
    pub remote_addr: String,
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// The latest facts about a device; written as an upsert by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub id: String,
    pub protocol: String,
    pub profile: Option<String>,
    pub remote_addr: String,
    pub online: bool,
    pub connected_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// For a unit (one slave on a DTU's bus): the DTU's id and the slave address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
}

/// One operator command and where it stands; written as an upsert by id, so each state
/// change (`sent` → `ok`/`failed`/`timeout`) replaces the previous one. Also what
/// `Db::command` reads back (`GET /api/commands/{cid}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRow {
    pub id: String,
    pub device_id: String,
    /// The JSON body as the caller sent it.
    pub request: String,
    pub status: String,
    /// JSON text of the result, when `ok`.
    pub result: Option<String>,
    pub error: Option<String>,
    /// The name of the token that sent it.
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One webhook delivery attempt (or an overflow report) of one subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub webhook_id: String,
    /// The `X-DTU-Delivery` id: the event's id, or a batch id for a batch of envelopes.
    pub delivery: String,
    /// The event name (`X-DTU-Event`); `overflow` rows name the subscriber's dropped events.
    pub event: String,
    /// Envelopes in the body (1 unless batched); for `overflow`, how many were dropped.
    pub events: u32,
    /// 1 for the first attempt; 0 for an overflow report.
    pub attempt: u32,
    /// `ok`, `http_error`, `connect_error`, `timeout` or `overflow`.
    pub outcome: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Row {
    Telemetry(TelemetryRow),
    Packet(PacketRow),
    Event(ConnEventRow),
    Device(DeviceRow),
    Command(CommandRow),
    Delivery(DeliveryRow),
}

impl Row {
    /// When what the row records happened (the server's clock): how far behind storage is.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Row::Telemetry(t) => t.at,
            Row::Packet(p) => p.at,
            Row::Event(e) => e.at,
            Row::Device(d) => d.last_seen,
            Row::Command(c) => c.updated_at,
            Row::Delivery(d) => d.at,
        }
    }

    /// Whether the row may be written before rows that arrived earlier: an insert of its own
    /// (a point, a packet, a connection event). Devices, commands and deliveries are upserts
    /// of a record's latest state, so an older state must never be written after a newer one.
    pub fn order_free(&self) -> bool {
        matches!(self, Row::Telemetry(_) | Row::Packet(_) | Row::Event(_))
    }
}
