//! The supervisor: one actor that knows every device the server has seen, which connection
//! holds each id, and the latest decoded values. Connections report to it; the web layer and
//! the offline queue ask it; it routes operator commands and relay frames to the connection
//! that holds an id, through the `Recipient`s that connection registered with (it never names
//! a connection's actor type). Its messages are in [`messages`], control locks in [`locks`].

pub mod list;
pub mod locks;
pub mod messages;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use crate::command::queue::DeliverQueue;
use crate::command::{CommandError, KickQueue, RouteCommand};
use crate::events::bus::{Event, EventBus, EventKind, Interest, Publish};
use crate::events::rules::RuleStates;
use crate::protocol::Protocol;
use crate::settings::Profile;
use crate::storage::rows::DeviceRow;
use list::ListEntry;
use locks::Locks;
use messages::{
    Close, CloseAll, ConnHandle, ConnId, CountDevices, Deliver, DeviceCounts, DeviceView, Execute,
    GetDevice, IsKnown, Kick, KickRelay, ListDevices, Offline, OfflineReason, OnlineCount,
    PointValue, Registered, RouteRelay, Seen, Service, Telemetry, Values,
};

struct DeviceEntry {
    /// Its view, as the device list holds it.
    listed: ListEntry,
    values: Values,
    /// Which of its profile's rules are triggered; kept across reconnections.
    rules: RuleStates,
    /// The connection that holds the id, while online.
    conn: Option<(ConnId, ConnHandle)>,
}

impl DeviceEntry {
    fn holds(&self, conn: ConnId) -> bool {
        matches!(self.conn, Some((c, _)) if c == conn)
    }

    /// The connection's command mailbox, when a polled device holds the id.
    fn commands(&self) -> Option<&Recipient<Execute>> {
        match &self.conn {
            Some((
                _,
                ConnHandle {
                    service: Service::Commands(r),
                    ..
                },
            )) => Some(r),
            _ => None,
        }
    }

    /// The connection's relay mailboxes, when a `$TTMS` terminal holds the id.
    fn relay(&self) -> Option<(&Recipient<Deliver>, &Recipient<Kick>)> {
        match &self.conn {
            Some((
                _,
                ConnHandle {
                    service: Service::Relay { deliver, kick },
                    ..
                },
            )) => Some((deliver, kick)),
            _ => None,
        }
    }
}

pub struct Supervisor {
    /// In id order, so that a page of the device list is a walk from its first id.
    devices: BTreeMap<String, DeviceEntry>,
    /// How many of `devices` are online, kept as they come and go: the list's counts
    /// without a pass over the fleet.
    online: usize,
    /// Where online, offline, telemetry and rule events go.
    events: Addr<EventBus>,
    /// data.toml's profiles by name, for their rules.
    profiles: BTreeMap<String, Arc<Profile>>,
    locks: Locks,
    /// Who delivers the offline queue of a device that comes online; None: no queue (tests
    /// of the supervisor alone).
    queue: Option<Recipient<DeliverQueue>>,
    /// Who wants which events; None: raise every event (tests of the supervisor alone).
    interest: Option<Interest>,
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
                    parent: d.parent,
                    unit: d.unit,
                };
                let entry = DeviceEntry {
                    listed: ListEntry::new(view),
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
            locks: Locks::default(),
            online: 0,
            queue: None,
            interest: None,
        }
    }

    /// Raises telemetry events only while someone subscribes to them: every poll of every
    /// device passes here, and its JSON envelope is work for nobody otherwise.
    pub fn with_interest(mut self, interest: Interest) -> Supervisor {
        self.interest = Some(interest);
        self
    }

    /// Has `queue` deliver the offline queue of each device that takes commands when it
    /// registers (and when a command is queued for it while it is online).
    pub fn with_queue(mut self, queue: Recipient<DeliverQueue>) -> Supervisor {
        self.queue = Some(queue);
        self
    }

    fn knows(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    /// Asks for the offline queue of `id` to be delivered if it is an online device that
    /// takes commands.
    fn deliver_queue(&self, id: &str) {
        let takes_commands = self
            .devices
            .get(id)
            .and_then(DeviceEntry::commands)
            .is_some();
        if let (true, Some(queue)) = (takes_commands, &self.queue) {
            queue.do_send(DeliverQueue { id: id.to_string() });
        }
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

impl Handler<Registered> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _: &mut Self::Context) {
        let now = Utc::now();
        let mut online = serde_json::json!({
            "protocol": msg.protocol.as_str(),
            "profile": msg.profile,
            "remote_addr": msg.remote_addr.to_string(),
        });
        if let (Some((parent, unit)), Some(data)) = (&msg.unit, online.as_object_mut()) {
            data.insert("parent".into(), serde_json::json!(parent));
            data.insert("unit".into(), serde_json::json!(unit));
        }
        let view = DeviceView {
            id: msg.id.clone(),
            online: true,
            protocol: msg.protocol.as_str().to_string(),
            profile: msg.profile,
            remote_addr: msg.remote_addr.to_string(),
            connected_at: now,
            last_seen: now,
            parent: msg.unit.as_ref().map(|(parent, _)| parent.clone()),
            unit: msg.unit.as_ref().map(|(_, slave)| *slave),
        };
        let id = msg.id.clone();
        match self.devices.get_mut(&msg.id) {
            Some(entry) => {
                if !entry.listed.view.online {
                    self.online += 1;
                }
                if let Some((old_conn, old)) = entry.conn.take() {
                    if old_conn != msg.conn {
                        log::info!(
                            "device {}: new connection from {} replaces the one from {}",
                            msg.id,
                            msg.remote_addr,
                            entry.listed.view.remote_addr
                        );
                        old.close.do_send(Close {
                            reason: OfflineReason::Replaced,
                        });
                        // The old connection's own Offline report will find the id taken.
                        publish_offline(&self.events, &msg.id, OfflineReason::Replaced);
                    }
                }
                entry.listed = ListEntry::new(view);
                entry.conn = Some((msg.conn, msg.handle));
            }
            None => {
                self.online += 1;
                self.devices.insert(
                    msg.id,
                    DeviceEntry {
                        listed: ListEntry::new(view),
                        values: Values::new(),
                        rules: RuleStates::default(),
                        conn: Some((msg.conn, msg.handle)),
                    },
                );
            }
        }
        publish(&self.events, EventKind::DeviceOnline, &id, online);
        self.deliver_queue(&id);
    }
}

impl Handler<KickQueue> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: KickQueue, _: &mut Self::Context) {
        self.deliver_queue(&msg.id);
    }
}

impl Handler<Seen> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Seen, _: &mut Self::Context) {
        if let Some(entry) = self.devices.get_mut(&msg.id) {
            if entry.holds(msg.conn) {
                entry.listed.view_mut().last_seen = Utc::now();
            }
        }
    }
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
        entry.listed.view_mut().last_seen = msg.at;
        let wanted = self
            .interest
            .as_ref()
            .map_or(true, |i| i.wants(EventKind::Telemetry));
        if wanted {
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
        }
        let rules = entry
            .listed
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

impl Handler<Offline> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Offline, _: &mut Self::Context) {
        if let Some(entry) = self.devices.get_mut(&msg.id) {
            // A replaced connection reports after its successor registered: leave that one be.
            if entry.holds(msg.conn) {
                entry.conn = None;
                if entry.listed.view.online {
                    self.online -= 1;
                }
                entry.listed.view_mut().online = false;
                log::info!("device {}: offline ({})", msg.id, msg.reason.as_str());
                publish_offline(&self.events, &msg.id, msg.reason);
            }
        }
    }
}

impl Handler<ListDevices> for Supervisor {
    type Result = MessageResult<ListDevices>;

    fn handle(&mut self, msg: ListDevices, _: &mut Self::Context) -> Self::Result {
        let query = msg.0;
        MessageResult(match query.fleet_counts(self.devices.len(), self.online) {
            Some(counts) => {
                let after = match query.after.as_deref() {
                    Some(after) => Bound::Excluded(after),
                    None => Bound::Unbounded,
                };
                let rest = self.devices.range::<str, _>((after, Bound::Unbounded));
                query.page_counted(rest.map(|(_, e)| &e.listed), counts)
            }
            None => query.page(self.devices.values().map(|e| &e.listed)),
        })
    }
}

impl Handler<GetDevice> for Supervisor {
    type Result = MessageResult<GetDevice>;

    fn handle(&mut self, msg: GetDevice, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.devices
                .get(&msg.id)
                .map(|e| (DeviceView::clone(&e.listed.view), e.values.clone())),
        )
    }
}

impl Handler<RouteCommand> for Supervisor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: RouteCommand, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .devices
            .get(&msg.id)
            .ok_or_else(|| CommandError::UnknownDevice(msg.id.clone()))?;
        self.locks.check(&msg.id, msg.token.as_deref())?;
        let not_for_terminals = || {
            CommandError::Invalid(format!(
                "{} is a $TTMS relay terminal; it takes no commands",
                msg.id
            ))
        };
        let commands = match (&entry.conn, entry.commands()) {
            (_, Some(commands)) => commands,
            (Some(_), None) => return Err(not_for_terminals()),
            // Known as a terminal, even while offline: nothing to queue for it either.
            (None, _)
                if Protocol::by_name(&entry.listed.view.protocol)
                    .is_some_and(Protocol::is_relay) =>
            {
                return Err(not_for_terminals())
            }
            (None, _) => return Err(CommandError::Offline(msg.id.clone())),
        };
        commands
            .try_send(Execute {
                command: msg.command,
                reply: msg.reply,
                unit: entry.listed.view.unit,
            })
            .map_err(|_| CommandError::Offline(msg.id))
    }
}

impl Handler<CloseAll> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Self::Context) -> usize {
        let mut n = 0;
        // Units are closed with their DTU's connection.
        let connections = self
            .devices
            .values()
            .filter(|e| e.listed.view.unit.is_none());
        for (_, handle) in connections.filter_map(|e| e.conn.as_ref()) {
            handle.close.do_send(Close {
                reason: OfflineReason::Closed,
            });
            n += 1;
        }
        n
    }
}

impl Handler<RouteRelay> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: RouteRelay, _: &mut Self::Context) -> bool {
        let Some((deliver, _)) = self.devices.get(&msg.target).and_then(DeviceEntry::relay) else {
            return false;
        };
        deliver
            .try_send(Deliver {
                sender: msg.sender,
                frame: msg.frame,
                guard: msg.guard,
            })
            .is_ok()
    }
}

impl Handler<KickRelay> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: KickRelay, _: &mut Self::Context) {
        if let Some((_, kick)) = self.devices.get(&msg.target).and_then(DeviceEntry::relay) {
            kick.do_send(Kick);
        }
    }
}

impl Handler<OnlineCount> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: OnlineCount, _: &mut Self::Context) -> usize {
        self.devices.values().filter(|e| e.conn.is_some()).count()
    }
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

impl Handler<IsKnown> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: IsKnown, _: &mut Self::Context) -> bool {
        self.knows(&msg.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::DeviceCommand;
    use locks::{AcquireLock, GetLock, ReleaseLock};
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
            parent: None,
            unit: None,
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
