//! The supervisor: one actor that knows every device the server has seen, which connection
//! holds each id, and the latest decoded values. The web layer asks it; device actors report
//! to it; it routes operator commands to the connection that holds the id.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::device::actor::{Close, DeviceActor, Execute};
use crate::device::command::{CommandError, CommandReply, DeviceCommand};
use crate::device::points::Decoded;
use crate::events::{Event, EventBus, EventKind, Publish};
use crate::relay::actor::{Deliver, Kick, RelayActor};
use crate::settings::Protocol;
use crate::storage::rows::DeviceRow;

/// Identifies one TCP connection, so that a late report from a replaced connection cannot
/// overwrite the state of the connection that now holds the id.
pub type ConnId = u64;

/// Why a device went offline (the `data.reason` of `device.offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    HeartbeatTimeout,
    Closed,
    Replaced,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::HeartbeatTimeout => "heartbeat_timeout",
            OfflineReason::Closed => "closed",
            OfflineReason::Replaced => "replaced",
        }
    }
}

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

/// The actor of the connection that holds an id: a Modbus DTU or a `$TTMS` terminal.
#[derive(Clone)]
pub enum Holder {
    Device(Addr<DeviceActor>),
    Relay(Addr<RelayActor>),
}

impl Holder {
    fn close(&self, reason: OfflineReason) {
        match self {
            Holder::Device(a) => a.do_send(Close { reason }),
            Holder::Relay(a) => a.do_send(Close { reason }),
        }
    }
}

struct DeviceEntry {
    view: DeviceView,
    values: Values,
    /// The connection that holds the id, while online.
    conn: Option<(ConnId, Holder)>,
}

impl DeviceEntry {
    fn holds(&self, conn: ConnId) -> bool {
        matches!(self.conn, Some((c, _)) if c == conn)
    }
}

pub struct Supervisor {
    devices: HashMap<String, DeviceEntry>,
    /// Where online, offline and telemetry events go.
    events: Addr<EventBus>,
}

impl Supervisor {
    /// A supervisor that already knows the devices stored by earlier runs, all offline: after
    /// a restart nobody is connected yet, whatever the database last said.
    pub fn with_known(devices: Vec<DeviceRow>, events: Addr<EventBus>) -> Supervisor {
        let devices = devices
            .into_iter()
            .map(|d| {
                let view = DeviceView {
                    id: d.id.clone(),
                    online: false,
                    protocol: d.protocol,
                    profile: d.profile,
                    remote_addr: d.remote_addr,
                    connected_at: d.connected_at,
                    last_seen: d.last_seen,
                };
                let entry = DeviceEntry {
                    view,
                    values: Values::new(),
                    conn: None,
                };
                (d.id, entry)
            })
            .collect();
        Supervisor { devices, events }
    }
}

fn publish(events: &Addr<EventBus>, kind: EventKind, id: &str, data: serde_json::Value) {
    events.do_send(Publish(Event::new(kind, id, data)));
}

fn publish_offline(events: &Addr<EventBus>, id: &str, reason: OfflineReason) {
    publish(
        events,
        EventKind::DeviceOffline,
        id,
        serde_json::json!({ "reason": reason.as_str() }),
    );
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Device reports are small and frequent; a roomy mailbox keeps thousands of DTUs
        // registering at once from waiting on each other.
        ctx.set_mailbox_capacity(65_536);
    }
}

/// A connection has registered `id`. An older connection holding the id is closed (`replaced`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Registered {
    pub id: String,
    pub conn: ConnId,
    pub addr: Holder,
    pub protocol: Protocol,
    pub profile: Option<String>,
    pub remote_addr: SocketAddr,
}

impl Handler<Registered> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _: &mut Self::Context) {
        let now = Utc::now();
        let online = serde_json::json!({
            "protocol": msg.protocol.as_str(),
            "profile": msg.profile,
            "remote_addr": msg.remote_addr.to_string(),
        });
        let view = DeviceView {
            id: msg.id.clone(),
            online: true,
            protocol: msg.protocol.as_str().to_string(),
            profile: msg.profile,
            remote_addr: msg.remote_addr.to_string(),
            connected_at: now,
            last_seen: now,
        };
        let id = msg.id.clone();
        match self.devices.get_mut(&msg.id) {
            Some(entry) => {
                if let Some((old_conn, old_addr)) = entry.conn.take() {
                    if old_conn != msg.conn {
                        log::info!(
                            "device {}: new connection from {} replaces the one from {}",
                            msg.id,
                            msg.remote_addr,
                            entry.view.remote_addr
                        );
                        old_addr.close(OfflineReason::Replaced);
                        // The old connection's own Offline report will find the id taken.
                        publish_offline(&self.events, &msg.id, OfflineReason::Replaced);
                    }
                }
                entry.view = view;
                entry.conn = Some((msg.conn, msg.addr));
            }
            None => {
                self.devices.insert(
                    msg.id,
                    DeviceEntry {
                        view,
                        values: Values::new(),
                        conn: Some((msg.conn, msg.addr)),
                    },
                );
            }
        }
        publish(&self.events, EventKind::DeviceOnline, &id, online);
    }
}

/// Traffic from a device (sent at most about once a second per device).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seen {
    pub id: String,
    pub conn: ConnId,
}

impl Handler<Seen> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Seen, _: &mut Self::Context) {
        if let Some(entry) = self.devices.get_mut(&msg.id) {
            if entry.holds(msg.conn) {
                entry.view.last_seen = Utc::now();
            }
        }
    }
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

impl Handler<Telemetry> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Telemetry, _: &mut Self::Context) {
        let Some(entry) = self.devices.get_mut(&msg.id) else {
            return;
        };
        if !entry.holds(msg.conn) {
            return;
        }
        entry.view.last_seen = msg.at;
        let values: serde_json::Map<String, serde_json::Value> = msg
            .values
            .iter()
            .map(|d| (d.name.clone(), serde_json::json!(d.value)))
            .collect();
        self.events.do_send(Publish(Event::at(
            EventKind::Telemetry,
            &msg.id,
            msg.at,
            serde_json::json!({ "values": values }),
        )));
        for d in msg.values {
            entry.values.insert(
                d.name,
                PointValue {
                    value: d.value,
                    raw: d.raw,
                    unit: d.unit,
                    at: msg.at,
                },
            );
        }
    }
}

/// A connection that held `id` has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Offline {
    pub id: String,
    pub conn: ConnId,
    pub reason: OfflineReason,
}

impl Handler<Offline> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Offline, _: &mut Self::Context) {
        if let Some(entry) = self.devices.get_mut(&msg.id) {
            // A replaced connection reports after its successor registered: leave that one be.
            if entry.holds(msg.conn) {
                entry.conn = None;
                entry.view.online = false;
                log::info!("device {}: offline ({})", msg.id, msg.reason.as_str());
                publish_offline(&self.events, &msg.id, msg.reason);
            }
        }
    }
}

/// Every known device, sorted by id.
#[derive(Message)]
#[rtype(result = "Vec<DeviceView>")]
pub struct ListDevices;

impl Handler<ListDevices> for Supervisor {
    type Result = MessageResult<ListDevices>;

    fn handle(&mut self, _: ListDevices, _: &mut Self::Context) -> Self::Result {
        let mut list: Vec<DeviceView> = self.devices.values().map(|e| e.view.clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        MessageResult(list)
    }
}

/// One device with its latest values.
#[derive(Message)]
#[rtype(result = "Option<(DeviceView, Values)>")]
pub struct GetDevice {
    pub id: String,
}

impl Handler<GetDevice> for Supervisor {
    type Result = MessageResult<GetDevice>;

    fn handle(&mut self, msg: GetDevice, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.devices
                .get(&msg.id)
                .map(|e| (e.view.clone(), e.values.clone())),
        )
    }
}

/// Hands a command to the connection holding `id`; its end comes through `reply`.
#[derive(Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct RouteCommand {
    pub id: String,
    pub command: DeviceCommand,
    pub reply: CommandReply,
}

impl Handler<RouteCommand> for Supervisor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: RouteCommand, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .devices
            .get(&msg.id)
            .ok_or_else(|| CommandError::UnknownDevice(msg.id.clone()))?;
        let addr = match &entry.conn {
            Some((_, Holder::Device(addr))) => addr,
            Some((_, Holder::Relay(_))) => {
                return Err(CommandError::Invalid(format!(
                    "{} is a $TTMS relay terminal; it takes no commands",
                    msg.id
                )))
            }
            None => return Err(CommandError::Offline(msg.id.clone())),
        };
        addr.try_send(Execute {
            command: msg.command,
            reply: msg.reply,
        })
        .map_err(|_| CommandError::Offline(msg.id))
    }
}

/// Closes every device connection (server shutdown); answers how many were open.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

impl Handler<CloseAll> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Self::Context) -> usize {
        let mut n = 0;
        for entry in self.devices.values() {
            if let Some((_, addr)) = &entry.conn {
                addr.close(OfflineReason::Closed);
                n += 1;
            }
        }
        n
    }
}

/// Hands a `$TTMS` frame (already rewritten for its target) to the connection holding
/// `target`. Answers `true` when the target's actor took it (it then writes it, or queues it
/// if the write fails), `false` when the target is offline: the caller queues it.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RouteRelay {
    pub target: String,
    pub sender: String,
    pub frame: Vec<u8>,
}

impl Handler<RouteRelay> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: RouteRelay, _: &mut Self::Context) -> bool {
        let Some(Some((_, Holder::Relay(addr)))) = self.devices.get(&msg.target).map(|e| &e.conn)
        else {
            return false;
        };
        addr.try_send(Deliver {
            sender: msg.sender,
            frame: msg.frame,
        })
        .is_ok()
    }
}

/// A frame for `target` has just been queued: if the target is online (it registered while
/// the frame was being stored), its actor delivers the queue now rather than at its next
/// heartbeat, ahead of live frames routed after this message.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KickRelay {
    pub target: String,
}

impl Handler<KickRelay> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: KickRelay, _: &mut Self::Context) {
        if let Some(Some((_, Holder::Relay(addr)))) = self.devices.get(&msg.target).map(|e| &e.conn)
        {
            addr.do_send(Kick);
        }
    }
}

/// How many devices are online now.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct OnlineCount;

impl Handler<OnlineCount> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: OnlineCount, _: &mut Self::Context) -> usize {
        self.devices.values().filter(|e| e.conn.is_some()).count()
    }
}

/// How many devices are registered (online) now and how many the server knows, for `/metrics`.
#[derive(Message)]
#[rtype(result = "DeviceCounts")]
pub struct CountDevices;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub registered: usize,
    pub known: usize,
}

impl Handler<CountDevices> for Supervisor {
    type Result = MessageResult<CountDevices>;

    fn handle(&mut self, _: CountDevices, _: &mut Self::Context) -> Self::Result {
        MessageResult(DeviceCounts {
            registered: self.devices.values().filter(|e| e.conn.is_some()).count(),
            known: self.devices.len(),
        })
    }
}

/// Whether the server knows a device id (online now, seen earlier, or stored).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsKnown(pub String);

impl Handler<IsKnown> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: IsKnown, _: &mut Self::Context) -> bool {
        self.devices.contains_key(&msg.0)
    }
}
