//! The supervisor: one actor that knows every device the server has seen, which connection
//! holds each id, and the latest decoded values. The web layer asks it; device actors report
//! to it; it routes operator commands to the connection that holds the id.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::command::queue::{self, QueueContext};
use crate::command::{CommandError, CommandReply, DeviceCommand};
use crate::conn::device::{Close, DeviceActor, Execute};
use crate::conn::relay::{Deliver, InFlightGuard, Kick, RelayActor};
use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::events::rules::RuleStates;
use crate::protocol::points::Decoded;
use crate::protocol::Protocol;
use crate::settings::Profile;
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
    /// Which of its profile's rules are triggered; kept across reconnections.
    rules: RuleStates,
    /// The connection that holds the id, while online.
    conn: Option<(ConnId, Holder)>,
}

impl DeviceEntry {
    fn holds(&self, conn: ConnId) -> bool {
        matches!(self.conn, Some((c, _)) if c == conn)
    }
}

/// Exclusive command rights on one device, held by one API token until `expires_at`. Kept in
/// memory only: a restart releases every lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlLock {
    pub device_id: String,
    /// The name of the token that holds it.
    pub holder: String,
    pub expires_at: DateTime<Utc>,
    /// The id of that token: what commands are checked against.
    #[serde(skip)]
    pub token_id: String,
}

impl ControlLock {
    fn refusal(&self) -> CommandError {
        CommandError::Locked {
            device: self.device_id.clone(),
            holder: self.holder.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// The live lock of `device`, forgetting it if it has expired.
fn live_lock<'a>(
    locks: &'a mut HashMap<String, ControlLock>,
    device: &str,
) -> Option<&'a ControlLock> {
    let expired = locks.get(device)?.expires_at <= Utc::now();
    if expired {
        if let Some(lock) = locks.remove(device) {
            log::info!("device {device}: control lock of {} expired", lock.holder);
        }
        return None;
    }
    locks.get(device)
}

pub struct Supervisor {
    devices: HashMap<String, DeviceEntry>,
    /// Where online, offline, telemetry and rule events go.
    events: Addr<EventBus>,
    /// data.toml's profiles by name, for their rules.
    profiles: BTreeMap<String, Arc<Profile>>,
    /// Control locks by device id.
    locks: HashMap<String, ControlLock>,
    /// What delivers the offline queue; None: no queue (tests of the supervisor alone).
    queue: Option<Arc<QueueContext>>,
    /// Devices whose queue is being delivered, and whether to look again when that ends (the
    /// device registered again, or a command was queued, meanwhile).
    delivering: HashMap<String, bool>,
}

impl Supervisor {
    /// A supervisor that already knows the devices stored by earlier runs, all offline: after
    /// a restart nobody is connected yet, whatever the database last said.
    pub fn with_known(
        devices: Vec<DeviceRow>,
        events: Addr<EventBus>,
        profiles: BTreeMap<String, Arc<Profile>>,
    ) -> Supervisor {
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
                    rules: RuleStates::default(),
                    conn: None,
                };
                (d.id, entry)
            })
            .collect();
        Supervisor {
            devices,
            events,
            profiles,
            locks: HashMap::new(),
            queue: None,
            delivering: HashMap::new(),
        }
    }

    /// Delivers the offline queue of each device when it registers.
    pub fn with_queue(mut self, queue: Arc<QueueContext>) -> Supervisor {
        self.queue = Some(queue);
        self
    }

    /// Starts delivering the queue of `id` if it is an online Modbus device, one delivery per
    /// device at a time (so its commands go out in order); if one runs, it looks again when done.
    fn start_delivery(&mut self, id: &str, ctx: &mut Context<Self>) {
        let Some(queue) = self.queue.clone() else {
            return;
        };
        let online = matches!(
            self.devices.get(id).map(|e| &e.conn),
            Some(Some((_, Holder::Device(_))))
        );
        if !online {
            return;
        }
        if let Some(again) = self.delivering.get_mut(id) {
            *again = true;
            return;
        }
        self.delivering.insert(id.to_string(), false);
        let me = ctx.address();
        let id = id.to_string();
        actix_rt::spawn(async move {
            queue::deliver(queue, me.clone(), id.clone()).await;
            me.do_send(DeliveryDone { id });
        });
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

    fn handle(&mut self, msg: Registered, ctx: &mut Self::Context) {
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
                        rules: RuleStates::default(),
                        conn: Some((msg.conn, msg.addr)),
                    },
                );
            }
        }
        publish(&self.events, EventKind::DeviceOnline, &id, online);
        self.start_delivery(&id, ctx);
    }
}

/// A delivery of `id`'s offline queue has ended.
#[derive(Message)]
#[rtype(result = "()")]
struct DeliveryDone {
    id: String,
}

impl Handler<DeliveryDone> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: DeliveryDone, ctx: &mut Self::Context) {
        if self.delivering.remove(&msg.id) == Some(true) {
            self.start_delivery(&msg.id, ctx);
        }
    }
}

/// A command has just been queued for `id`: if the device is online after all (it registered
/// while the command was being stored), deliver it now rather than at its next registration.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KickQueue {
    pub id: String,
}

impl Handler<KickQueue> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: KickQueue, ctx: &mut Self::Context) {
        self.start_delivery(&msg.id, ctx);
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
        let rules = entry
            .view
            .profile
            .as_ref()
            .and_then(|name| self.profiles.get(name))
            .map(|p| p.rules.as_slice())
            .unwrap_or_default();
        for change in entry.rules.apply(rules, &msg.values) {
            let kind = if change.triggered {
                log::info!("device {}: rule triggered: {}", msg.id, change.data);
                EventKind::RuleTriggered
            } else {
                log::info!("device {}: rule cleared: {}", msg.id, change.data);
                EventKind::RuleCleared
            };
            self.events
                .do_send(Publish(Event::at(kind, &msg.id, msg.at, change.data)));
        }
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

/// Hands a command to the connection holding `id`; its end comes through `reply`. Refused
/// (`Locked`) while another token than `token` holds the device's control lock.
#[derive(Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct RouteCommand {
    pub id: String,
    pub command: DeviceCommand,
    pub reply: CommandReply,
    /// The id of the API token the command comes from.
    pub token: Option<String>,
}

impl Handler<RouteCommand> for Supervisor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: RouteCommand, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .devices
            .get(&msg.id)
            .ok_or_else(|| CommandError::UnknownDevice(msg.id.clone()))?;
        if let Some(lock) = live_lock(&mut self.locks, &msg.id) {
            if msg.token.as_deref() != Some(lock.token_id.as_str()) {
                return Err(lock.refusal());
            }
        }
        let not_for_terminals = || {
            CommandError::Invalid(format!(
                "{} is a $TTMS relay terminal; it takes no commands",
                msg.id
            ))
        };
        let addr = match &entry.conn {
            Some((_, Holder::Device(addr))) => addr,
            Some((_, Holder::Relay(_))) => return Err(not_for_terminals()),
            // Known as a terminal, even while offline: nothing to queue for it either.
            None if Protocol::by_name(&entry.view.protocol).is_some_and(Protocol::is_relay) => {
                return Err(not_for_terminals())
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
    /// Keeps the frame counted in flight until the target's actor has handled it.
    pub guard: InFlightGuard,
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
            guard: msg.guard,
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

/// Takes or extends the control lock of a known device for `ttl`: refused (`Locked`) while
/// another token holds it; the holder taking it again moves its expiry to now + `ttl`.
#[derive(Message)]
#[rtype(result = "Result<ControlLock, CommandError>")]
pub struct AcquireLock {
    pub device: String,
    pub token_id: String,
    pub holder: String,
    pub ttl: chrono::Duration,
}

impl Handler<AcquireLock> for Supervisor {
    type Result = Result<ControlLock, CommandError>;

    fn handle(&mut self, msg: AcquireLock, _: &mut Self::Context) -> Self::Result {
        if !self.devices.contains_key(&msg.device) {
            return Err(CommandError::UnknownDevice(msg.device));
        }
        if let Some(lock) = live_lock(&mut self.locks, &msg.device) {
            if lock.token_id != msg.token_id {
                return Err(lock.refusal());
            }
        }
        let lock = ControlLock {
            device_id: msg.device.clone(),
            holder: msg.holder,
            expires_at: Utc::now() + msg.ttl,
            token_id: msg.token_id,
        };
        let previous = self.locks.insert(msg.device.clone(), lock.clone());
        log::info!(
            "device {}: control lock {} by {} until {}",
            msg.device,
            if previous.is_some() {
                "extended"
            } else {
                "taken"
            },
            lock.holder,
            lock.expires_at
        );
        Ok(lock)
    }
}

/// Releases the control lock of a device: by its holder, or by anyone when `force` (an admin
/// breaking it). Answers the released lock, or None when the device was not locked.
#[derive(Message)]
#[rtype(result = "Result<Option<ControlLock>, CommandError>")]
pub struct ReleaseLock {
    pub device: String,
    pub token_id: String,
    /// The name of the caller, for the log.
    pub by: String,
    pub force: bool,
}

impl Handler<ReleaseLock> for Supervisor {
    type Result = Result<Option<ControlLock>, CommandError>;

    fn handle(&mut self, msg: ReleaseLock, _: &mut Self::Context) -> Self::Result {
        let Some(lock) = live_lock(&mut self.locks, &msg.device) else {
            return Ok(None);
        };
        if lock.token_id != msg.token_id {
            if !msg.force {
                return Err(lock.refusal());
            }
            log::warn!(
                "device {}: control lock of {} broken by admin {}",
                msg.device,
                lock.holder,
                msg.by
            );
        } else {
            log::info!("device {}: control lock released by {}", msg.device, msg.by);
        }
        Ok(self.locks.remove(&msg.device))
    }
}

/// The live control lock of a device, if any.
#[derive(Message)]
#[rtype(result = "Option<ControlLock>")]
pub struct GetLock {
    pub device: String,
}

impl Handler<GetLock> for Supervisor {
    type Result = Option<ControlLock>;

    fn handle(&mut self, msg: GetLock, _: &mut Self::Context) -> Option<ControlLock> {
        live_lock(&mut self.locks, &msg.device).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn known(id: &str) -> DeviceRow {
        DeviceRow {
            id: id.into(),
            protocol: "framed".into(),
            profile: Some("default".into()),
            remote_addr: "127.0.0.1:1".into(),
            online: false,
            connected_at: Utc::now(),
            last_seen: Utc::now(),
        }
    }

    async fn route(sup: &Addr<Supervisor>, token: &str) -> Result<(), CommandError> {
        let (reply, _answer) = oneshot::channel();
        sup.send(RouteCommand {
            id: "d1".into(),
            command: DeviceCommand::Named("x".into()),
            reply,
            token: Some(token.into()),
        })
        .await
        .expect("supervisor answers")
    }

    fn acquire(token: &str, secs: i64) -> AcquireLock {
        AcquireLock {
            device: "d1".into(),
            token_id: token.into(),
            holder: format!("name-{token}"),
            ttl: chrono::Duration::seconds(secs),
        }
    }

    fn release(token: &str, force: bool) -> ReleaseLock {
        ReleaseLock {
            device: "d1".into(),
            token_id: token.into(),
            by: token.into(),
            force,
        }
    }

    #[actix_rt::test]
    async fn offline_relay_terminals_are_not_offered_the_queue() {
        let bus = EventBus::default().start();
        let mut terminal = known("d1");
        terminal.protocol = "ttms".into();
        let sup = Supervisor::with_known(vec![terminal], bus, BTreeMap::new()).start();
        // Not `Offline` (which would queue the command), but refused outright.
        assert!(matches!(
            route(&sup, "t1").await,
            Err(CommandError::Invalid(m)) if m.contains("relay terminal")
        ));
    }

    #[actix_rt::test]
    async fn control_lock_rules() {
        let bus = EventBus::default().start();
        let sup = Supervisor::with_known(vec![known("d1")], bus, BTreeMap::new()).start();
        let unknown = AcquireLock {
            device: "nope".into(),
            ..acquire("t1", 60)
        };
        assert!(matches!(
            sup.send(unknown).await.expect("answers"),
            Err(CommandError::UnknownDevice(_))
        ));

        let lock = sup
            .send(acquire("t1", 60))
            .await
            .expect("answers")
            .expect("taken");
        assert_eq!(lock.holder, "name-t1");
        // Others are refused, with who holds it; the holder gets through to the (offline) device.
        match route(&sup, "t2").await {
            Err(CommandError::Locked {
                holder, expires_at, ..
            }) => assert_eq!((holder.as_str(), expires_at), ("name-t1", lock.expires_at)),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(matches!(
            route(&sup, "t1").await,
            Err(CommandError::Offline(_))
        ));
        assert!(matches!(
            sup.send(acquire("t2", 60)).await.expect("answers"),
            Err(CommandError::Locked { .. })
        ));
        // The holder extends it.
        let longer = sup
            .send(acquire("t1", 600))
            .await
            .expect("answers")
            .expect("extended");
        assert!(longer.expires_at > lock.expires_at);
        // Only the holder releases it, unless forced (an admin).
        assert!(matches!(
            sup.send(release("t2", false)).await.expect("answers"),
            Err(CommandError::Locked { .. })
        ));
        let broken = sup
            .send(release("t2", true))
            .await
            .expect("answers")
            .expect("ok");
        assert_eq!(broken.map(|l| l.holder), Some("name-t1".into()));
        assert_eq!(
            sup.send(release("t1", false)).await.expect("answers").ok(),
            Some(None)
        );
        assert!(matches!(
            route(&sup, "t2").await,
            Err(CommandError::Offline(_))
        ));

        // An expired lock is gone.
        sup.send(acquire("t1", 0))
            .await
            .expect("answers")
            .expect("taken");
        assert!(matches!(
            route(&sup, "t2").await,
            Err(CommandError::Offline(_))
        ));
        assert_eq!(
            sup.send(GetLock {
                device: "d1".into()
            })
            .await
            .expect("answers"),
            None
        );
        sup.send(acquire("t2", 60))
            .await
            .expect("answers")
            .expect("taken");
        assert_eq!(
            sup.send(GetLock {
                device: "d1".into()
            })
            .await
            .expect("answers")
            .map(|l| l.token_id),
            Some("t2".into())
        );
    }
}
