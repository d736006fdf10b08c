//! The event bus: one actor that takes every event the server raises (contract section 5) and
//! hands it to whoever subscribed — webhook senders, WebSocket clients. Publishing never waits:
//! each subscriber has its own bounded queue, and a subscriber whose queue is full misses the
//! event (counted in its `dropped` counter) instead of slowing the device that raised it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tokio::sync::mpsc;

use crate::storage::rows::DEVICE_ID_MAX;

/// The kinds of event of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    DeviceOnline,
    DeviceOffline,
    Telemetry,
    RuleTriggered,
    RuleCleared,
    CommandCompleted,
    PollFailed,
}

impl EventKind {
    /// Its place in [`EventKind::ALL`].
    fn index(self) -> usize {
        EventKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }

    pub const ALL: [EventKind; 7] = [
        EventKind::DeviceOnline,
        EventKind::DeviceOffline,
        EventKind::Telemetry,
        EventKind::RuleTriggered,
        EventKind::RuleCleared,
        EventKind::CommandCompleted,
        EventKind::PollFailed,
    ];

    /// The name on the wire (`event` field, `X-DTU-Event` header, filters).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceOnline => "device.online",
            EventKind::DeviceOffline => "device.offline",
            EventKind::Telemetry => "telemetry",
            EventKind::RuleTriggered => "rule.triggered",
            EventKind::RuleCleared => "rule.cleared",
            EventKind::CommandCompleted => "command.completed",
            EventKind::PollFailed => "poll.failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event, serialised once into the JSON envelope every consumer sends as is:
/// `{"id","event","device_id","at","data"}`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: EventKind,
    pub device_id: String,
    pub at: DateTime<Utc>,
    /// The envelope, as sent in webhook bodies and WebSocket messages.
    pub body: Arc<str>,
}

impl Event {
    pub fn new(kind: EventKind, device_id: &str, data: serde_json::Value) -> Event {
        Event::at(kind, device_id, Utc::now(), data)
    }

    pub fn at(
        kind: EventKind,
        device_id: &str,
        at: DateTime<Utc>,
        data: serde_json::Value,
    ) -> Event {
        let id = new_event_id();
        let body = envelope(&id, kind.as_str(), device_id, at, data);
        Event {
            id,
            kind,
            device_id: device_id.to_string(),
            at,
            body: body.into(),
        }
    }
}

/// The contract's JSON envelope `{"id","event","device_id","at","data"}`, as webhook bodies
/// and stream messages carry it (also for the `webhook.test` event, which is no `EventKind`).
pub fn envelope(
    id: &str,
    event: &str,
    device_id: &str,
    at: DateTime<Utc>,
    data: serde_json::Value,
) -> String {
    json!({
        "id": id,
        "event": event,
        "device_id": device_id,
        "at": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

/// Unique across restarts: a random per-process prefix and a counter.
pub fn new_event_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("e{prefix}{:010x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether a device id is among `patterns`: exact ids, or `prefix*` for every id starting with
/// `prefix`. Used by token restrictions and by event filters alike.
pub fn device_matches(patterns: &[String], device: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => device.starts_with(prefix),
        None => p == device,
    })
}

/// Checks one entry of a device list (a token's reach, a webhook's filter): an id, or a
/// prefix ending in `*`; the message says what is wrong.
pub fn check_device_pattern(p: &str) -> Result<(), String> {
    let id = p.strip_suffix('*').unwrap_or(p);
    if p.is_empty() || id.contains('*') || id.chars().count() > DEVICE_ID_MAX {
        return Err(format!(
            "{p:?} is neither a device id nor a prefix ending in *"
        ));
    }
    Ok(())
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// None for every kind (`"*"`).
    pub kinds: Option<HashSet<EventKind>>,
    /// None for every device; else ids and `prefix*` patterns.
    pub devices: Option<Vec<String>>,
}

impl EventFilter {
    /// A filter from the contract's lists: `events` of names or `"*"`, optional devices.
    /// Unknown event names are an error, so a typo does not silently subscribe to nothing.
    pub fn parse(events: &[String], devices: Option<Vec<String>>) -> Result<EventFilter, String> {
        // Every name is checked, "*" or not: `["*", "bogus"]` is as much a typo as
        // `["telemetry", "bogus"]`.
        let mut set = HashSet::new();
        for e in events.iter().filter(|e| *e != "*") {
            let kind = EventKind::parse(e).ok_or_else(|| {
                format!(
                    "unknown event {e:?}; expected \"*\" or some of {}",
                    EventKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })?;
            set.insert(kind);
        }
        let every = events.is_empty() || events.iter().any(|e| e == "*");
        let kinds = (!every).then_some(set);
        Ok(EventFilter { kinds, devices })
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.kinds
            .as_ref()
            .map_or(true, |k| k.contains(&event.kind))
            && self
                .devices
                .as_ref()
                .map_or(true, |d| device_matches(d, &event.device_id))
    }
}

/// How many subscribers want each kind of event, kept by the bus and read by publishers
/// without a message: building an event (its JSON envelope) for nobody is work a busy
/// publisher — the supervisor, for every poll of every device — can skip. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Interest(Arc<[AtomicU64; EventKind::ALL.len()]>);

impl Interest {
    /// Whether anyone subscribes to `kind` now. A subscriber that comes later misses events
    /// raised before it subscribed, as it would anyway.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.0[kind.index()].load(Ordering::Relaxed) > 0
    }

    fn change(&self, filter: &EventFilter, up: bool) {
        for kind in EventKind::ALL {
            if filter.kinds.as_ref().map_or(true, |k| k.contains(&kind)) {
                let count = &self.0[kind.index()];
                if up {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

pub type SubscriptionId = u64;

/// What a subscriber holds: its queue, and how many events it missed because that was full.
pub struct Subscription {
    pub id: SubscriptionId,
    pub events: mpsc::Receiver<Arc<Event>>,
    pub dropped: Arc<AtomicU64>,
}

struct Subscriber {
    filter: EventFilter,
    queue: mpsc::Sender<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

/// The bus actor.
#[derive(Default)]
pub struct EventBus {
    subscribers: HashMap<SubscriptionId, Subscriber>,
    next_id: SubscriptionId,
    published: u64,
    interest: Interest,
}

impl EventBus {
    /// What publishers read to know whether an event has any taker (before the bus starts).
    pub fn interest(&self) -> Interest {
        self.interest.clone()
    }

    fn remove(&mut self, id: SubscriptionId) {
        if let Some(s) = self.subscribers.remove(&id) {
            self.interest.change(&s.filter, false);
        }
    }
}

impl Actor for EventBus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every telemetry poll of every device passes through here.
        ctx.set_mailbox_capacity(65_536);
    }
}

/// Raise an event. Send with `do_send`: the publisher never waits for subscribers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Event);

impl Handler<Publish> for EventBus {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        self.published += 1;
        crate::metrics::METRICS.events_published.inc();
        if self.subscribers.is_empty() {
            return;
        }
        let event = Arc::new(msg.0);
        let mut gone = Vec::new();
        for (id, s) in &self.subscribers {
            if !s.filter.matches(&event) {
                continue;
            }
            match s.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The subscriber is gone (a closed WebSocket, a deleted webhook).
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in gone {
            self.remove(id);
        }
    }
}

/// Subscribe with a filter and a queue of `capacity` events. Dropping the receiver ends the
/// subscription (noticed at the next matching event); `Unsubscribe` ends it at once.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub filter: EventFilter,
    pub capacity: usize,
}

impl Handler<Subscribe> for EventBus {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.next_id += 1;
        let id = self.next_id;
        let (queue, events) = mpsc::channel(msg.capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.interest.change(&msg.filter, true);
        self.subscribers.insert(
            id,
            Subscriber {
                filter: msg.filter,
                queue,
                dropped: dropped.clone(),
            },
        );
        MessageResult(Subscription {
            id,
            events,
            dropped,
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SubscriptionId);

impl Handler<Unsubscribe> for EventBus {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.remove(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> serde_json::Value {
        serde_json::from_str(body).expect("envelope is JSON")
    }

    #[test]
    fn envelope_has_the_contract_fields() {
        let e = Event::new(
            EventKind::DeviceOffline,
            "1001",
            json!({"reason": "closed"}),
        );
        let v = parsed(&e.body);
        assert_eq!(v["event"], "device.offline");
        assert_eq!(v["device_id"], "1001");
        assert_eq!(v["data"]["reason"], "closed");
        assert_eq!(v["id"], e.id.as_str());
        let at = v["at"].as_str().expect("at is a string");
        assert!(DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    }

    #[test]
    fn ids_are_unique() {
        let a = Event::new(EventKind::Telemetry, "x", json!({}));
        let b = Event::new(EventKind::Telemetry, "x", json!({}));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn filters_by_kind_and_device() {
        let f = EventFilter::parse(
            &["device.online".into(), "telemetry".into()],
            Some(vec!["10*".into(), "abc".into()]),
        )
        .expect("valid filter");
        let ev = |k, d| Event::new(k, d, json!({}));
        assert!(f.matches(&ev(EventKind::DeviceOnline, "1001")));
        assert!(f.matches(&ev(EventKind::Telemetry, "abc")));
        assert!(!f.matches(&ev(EventKind::Telemetry, "abcd")));
        assert!(!f.matches(&ev(EventKind::DeviceOffline, "1001")));
        assert!(!f.matches(&ev(EventKind::DeviceOnline, "2001")));
        let all = EventFilter::parse(&["*".into()], None).expect("star");
        assert!(
            EventFilter::parse(&["*".into(), "bogus.event".into()], None)
                .is_err_and(|e| e.contains("bogus.event")),
            "a star does not let a bad name through"
        );
        assert!(all.matches(&ev(EventKind::PollFailed, "z")));
        let err = EventFilter::parse(&["device.onlin".into()], None).expect_err("typo");
        assert!(err.contains("device.onlin"), "{err}");
    }

    #[actix_rt::test]
    async fn full_queue_drops_and_counts_without_blocking() {
        let bus = EventBus::default().start();
        let mut sub = bus
            .send(Subscribe {
                filter: EventFilter::default(),
                capacity: 2,
            })
            .await
            .expect("bus answers");
        for i in 0..5 {
            bus.do_send(Publish(Event::new(
                EventKind::Telemetry,
                "1",
                json!({ "i": i }),
            )));
        }
        // A request/response round trip: every Publish before it has been handled.
        let other = bus
            .send(Subscribe {
                filter: EventFilter::default(),
                capacity: 1,
            })
            .await
            .expect("bus answers");
        assert_eq!(sub.dropped.load(Ordering::Relaxed), 3);
        let first = sub.events.recv().await.expect("first event");
        assert_eq!(parsed(&first.body)["data"]["i"], 0);
        drop(other);
    }

    #[actix_rt::test]
    async fn interest_follows_the_subscribers_of_each_kind() {
        let bus = EventBus::default();
        let interest = bus.interest();
        let bus = bus.start();
        assert!(EventKind::ALL.iter().all(|k| !interest.wants(*k)));
        let subscribe = |events: &[&str]| {
            bus.send(Subscribe {
                filter: EventFilter::parse(
                    &events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    None,
                )
                .expect("filter"),
                capacity: 4,
            })
        };
        let online = subscribe(&["device.online"]).await.expect("bus answers");
        assert!(interest.wants(EventKind::DeviceOnline));
        assert!(!interest.wants(EventKind::Telemetry));
        let all = subscribe(&["*"]).await.expect("bus answers");
        assert!(EventKind::ALL.iter().all(|k| interest.wants(*k)));
        bus.send(Unsubscribe(all.id)).await.expect("bus answers");
        assert!(!interest.wants(EventKind::Telemetry));
        assert!(interest.wants(EventKind::DeviceOnline));
        // A subscriber that went away is forgotten at its next event, and its interest too.
        drop(online);
        bus.do_send(Publish(Event::new(EventKind::DeviceOnline, "1", json!({}))));
        assert_eq!(bus.send(SubscriberCount).await.expect("bus answers"), 0);
        assert!(!interest.wants(EventKind::DeviceOnline));
    }

    #[actix_rt::test]
    async fn closed_subscribers_are_forgotten() {
        let bus = EventBus::default().start();
        let sub = bus
            .send(Subscribe {
                filter: EventFilter::default(),
                capacity: 4,
            })
            .await
            .expect("bus answers");
        drop(sub);
        bus.do_send(Publish(Event::new(EventKind::Telemetry, "1", json!({}))));
        let count = bus.send(SubscriberCount).await.expect("bus answers");
        assert_eq!(count, 0);
    }
}

/// How many subscribers the bus holds (for `/metrics` and tests).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SubscriberCount;

impl Handler<SubscriberCount> for EventBus {
    type Result = usize;

    fn handle(&mut self, _: SubscriberCount, _: &mut Self::Context) -> usize {
        self.subscribers.len()
    }
}
