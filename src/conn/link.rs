//! What every device connection reports, whatever its protocol: rows for storage (packets,
//! connection events, device state), thinned `Seen` reports and the final `Offline`. Every
//! connection borrows its facts into a [`Link`] and reports through it, so the rows look the
//! same for every protocol.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::Addr;
use chrono::{DateTime, Utc};

use crate::protocol::Protocol;
use crate::storage::packet_log::PacketLog;
use crate::storage::rows::{
    ConnEvent, ConnEventRow, DeviceRow, Direction, PacketKind, PacketRow, Row,
};
use crate::storage::{Storage, Store, StoreMany};
use crate::supervisor::messages::{self, ConnId, OfflineReason};
use crate::supervisor::Supervisor;

/// `Seen` reports to the supervisor are thinned to one per this interval per connection.
const SEEN_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A connection's facts, borrowed from its actor for one report.
pub struct Link<'a> {
    pub conn: ConnId,
    pub peer: SocketAddr,
    /// The device id, once registered.
    pub id: Option<&'a str>,
    pub protocol: Protocol,
    pub profile: Option<&'a str>,
    /// For a unit on the DTU's bus: the DTU's id and the slave address.
    pub unit: Option<(&'a str, u8)>,
    pub connected_at: DateTime<Utc>,
    pub supervisor: &'a Addr<Supervisor>,
    pub storage: &'a Addr<Storage>,
    pub packets: &'a PacketLog,
}

impl Link<'_> {
    pub fn store(&self, row: Row) {
        self.storage.do_send(Store(row));
    }

    /// Records bytes that crossed the socket (only once the connection has an id): in the
    /// device's recent packets, and in the database as `[storage] packets` says.
    pub fn store_packet(&self, direction: Direction, kind: PacketKind, bytes: &[u8]) {
        if let Some(id) = self.id {
            let at = Utc::now();
            if self.packets.record(id, direction, kind, bytes, at) {
                self.store(Row::Packet(PacketRow {
                    device_id: id.to_string(),
                    direction,
                    kind,
                    bytes: bytes.to_vec(),
                    at,
                }));
            }
        }
    }

    /// A request is about to go out: what crosses the socket from here on is its exchange.
    pub fn exchange_started(&self) {
        if let Some(id) = self.id {
            self.packets.exchange_started(id);
        }
    }

    /// The exchange in progress ended; if it `failed` (no answer, an exception), its packets
    /// go to the database where `[storage] packets = "errors"` held them back.
    pub fn exchange_ended(&self, failed: bool) {
        if let Some(id) = self.id {
            let rows = self.packets.exchange_ended(id, failed);
            if !rows.is_empty() {
                self.storage
                    .do_send(StoreMany(rows.into_iter().map(Row::Packet).collect()));
            }
        }
    }

    /// A line of connection history; the device id is empty before registration.
    pub fn store_event(&self, event: ConnEvent, detail: String) {
        self.store(Row::Event(ConnEventRow {
            device_id: self.id.unwrap_or_default().to_string(),
            event,
            remote_addr: self.peer.to_string(),
            detail,
            at: Utc::now(),
        }));
    }

    /// Stores the device's state (online or not) as of now.
    pub fn store_device(&self, online: bool) {
        if let Some(id) = self.id {
            self.store(Row::Device(DeviceRow {
                id: id.to_string(),
                protocol: self.protocol.as_str().to_string(),
                profile: self.profile.map(str::to_string),
                remote_addr: self.peer.to_string(),
                online,
                connected_at: self.connected_at,
                last_seen: Utc::now(),
                parent: self.unit.map(|(parent, _)| parent.to_string()),
                unit: self.unit.map(|(_, slave)| slave),
            }));
        }
    }

    /// Traffic arrived at `now`: tells the supervisor, at most once per second.
    pub fn seen(&self, last_report: &mut Instant, now: Instant) {
        if let Some(id) = self.id {
            if now.duration_since(*last_report) >= SEEN_REPORT_EVERY {
                *last_report = now;
                self.supervisor.do_send(messages::Seen {
                    id: id.to_string(),
                    conn: self.conn,
                });
            }
        }
    }

    /// The connection ended: history, device state and the supervisor learn why.
    pub fn went_offline(&self, reason: OfflineReason) {
        let Some(id) = self.id else {
            return;
        };
        let event = match reason {
            OfflineReason::HeartbeatTimeout => ConnEvent::HeartbeatTimeout,
            OfflineReason::Replaced => ConnEvent::Replaced,
            OfflineReason::Closed => ConnEvent::Disconnect,
            OfflineReason::NoResponse => ConnEvent::NoResponse,
        };
        self.store_event(event, reason.as_str().to_string());
        self.store_device(false);
        self.supervisor.do_send(messages::Offline {
            id: id.to_string(),
            conn: self.conn,
            reason,
        });
    }
}
