//! Webhook delivery (contract section 5): one [`WebhookSender`] actor per subscriber, each with
//! its own bounded queue on the [`EventBus`], POSTing the JSON envelope signed with
//! HMAC-SHA256, retrying with jittered exponential backoff, pausing a subscriber that keeps
//! failing, and recording every attempt (`webhook_deliveries`, through the storage actor).
//!
//! Subscribers come from `server.toml` (`[[webhooks]]`, ids `settings-1`, `settings-2`, … in
//! file order; not deletable through the API) and from the API (`webhooks` table, ids
//! `w<16 hex>`). [`Webhooks`] is the registry both the server and the API handlers use.
//!
//! The senders run on one arbiter of their own, so a slow receiver never takes time from the
//! device arbiters or the HTTP workers, and the bus never waits for a sender: a full queue
//! drops the event and counts it; the sender reports such overflows (log, metric, a delivery
//! row with outcome `overflow`, `dropped` in `GET /api/webhooks`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::events::bus::{Event, EventBus, EventFilter, EventKind, Subscribe, Unsubscribe};
use crate::metrics::METRICS;
use crate::storage::db::WebhookRecord;
use crate::storage::rows::{DeliveryRow, Row};
use crate::storage::{Storage, Store};

/// How webhooks are delivered (`[webhook_delivery]`), for every subscriber alike.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDeliverySettings {
    /// Longest one POST may take, connecting included.
    pub timeout: Duration,
    /// Attempts per delivery (the first one included); at least 1.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one, up to `backoff_max`,
    /// and jittered (a random 50–100 % of it).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A subscriber whose deliveries failed (all attempts) this many times in a row is paused.
    pub pause_after: u32,
    /// How long a paused subscriber rests before the next delivery is tried.
    pub pause_for: Duration,
    /// Events held per subscriber; when full, further events are dropped and counted (overflow).
    pub queue: usize,
    /// Most telemetry envelopes one batched POST carries.
    pub batch_max: usize,
}

/// A webhook subscriber configured in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// http:// or https://.
    pub url: String,
    /// Event names (`crate::events::bus::EventKind`), or "*" for all; never empty.
    pub events: Vec<String>,
    /// HMAC-SHA256 key; an empty string in the file counts as none.
    pub secret: Option<String>,
    /// Device ids and `prefix*` patterns; None for every device.
    pub devices: Option<Vec<String>>,
}

/// Whether `url` is an http:// or https:// URL with a host; the reason otherwise. Shared by the
/// settings check and the API's `POST /api/webhooks`.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let bad = || Err(format!("{url:?} is not an http:// or https:// URL"));
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad();
    }
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return bad();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return bad(),
        },
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return bad();
    }
    // Let the HTTP client judge the rest, as it will when delivering.
    match url.parse::<actix_web::http::Uri>() {
        Ok(_) => Ok(()),
        Err(_) => bad(),
    }
}

/// Largest answer body a receiver may send that is read (and thrown away).
const ANSWER_LIMIT: usize = 64 * 1024;
/// How often an idle sender looks for overflow to report.
const OVERFLOW_CHECK: Duration = Duration::from_secs(1);

/// Where a subscriber was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Settings,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Settings => "settings",
            Source::Api => "api",
        }
    }
}

/// One webhook subscriber.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: String,
    pub url: String,
    /// As given: names or `["*"]`.
    pub events: Vec<String>,
    pub devices: Option<Vec<String>>,
    pub secret: Option<String>,
    pub source: Source,
    pub created_at: Option<DateTime<Utc>>,
    pub filter: EventFilter,
}

impl Subscriber {
    /// The subscriber of `[[webhooks]]` entry `index` (0-based); the settings were validated.
    pub fn from_settings(index: usize, s: &WebhookSettings) -> Result<Subscriber, String> {
        Ok(Subscriber {
            id: format!("settings-{}", index + 1),
            url: s.url.clone(),
            events: s.events.clone(),
            devices: s.devices.clone(),
            secret: s.secret.clone(),
            source: Source::Settings,
            created_at: None,
            filter: EventFilter::parse(&s.events, s.devices.clone())?,
        })
    }

    /// The subscriber of a `webhooks` row.
    pub fn from_record(r: &WebhookRecord) -> Result<Subscriber, String> {
        let events: Vec<String> = serde_json::from_str(&r.events)
            .map_err(|e| format!("webhook {}: events column: {e}", r.id))?;
        let devices: Option<Vec<String>> = r
            .devices
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| format!("webhook {}: devices column: {e}", r.id))?;
        Ok(Subscriber {
            id: r.id.clone(),
            url: r.url.clone(),
            filter: EventFilter::parse(&events, devices.clone())?,
            events,
            devices,
            secret: r.secret.clone(),
            source: Source::Api,
            created_at: Some(r.created_at),
        })
    }
}

/// What a sender shows of itself (`GET /api/webhooks`).
#[derive(Debug, Default)]
pub struct Status {
    /// Resting after `pause_after` failed deliveries in a row; cleared by the next success.
    pub paused: AtomicBool,
    /// Events the bus could not queue because this subscriber's queue was full.
    pub dropped: Arc<AtomicU64>,
    /// Deliveries (POSTs that got a 2xx) and deliveries given up after every attempt.
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// The `X-DTU-Signature` value: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Backoff before attempt `attempt + 1` (attempt counts from 1): `initial * 2^(attempt-1)`
/// capped at `max`, then a random 50–100 % of that.
pub fn backoff(cfg: &WebhookDeliverySettings, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let base = cfg
        .backoff_initial
        .saturating_mul(factor)
        .min(cfg.backoff_max);
    base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// One POST body with what identifies it.
pub struct Payload {
    /// `X-DTU-Delivery`: the event id, or a batch id.
    pub delivery: String,
    /// `X-DTU-Event`.
    pub event: &'static str,
    /// Envelopes in the body: 1, or the length of the JSON array of a batch.
    pub count: usize,
    pub body: Bytes,
}

impl Payload {
    /// One envelope as is, or several (telemetry) as a JSON array.
    pub fn of(events: &[Arc<Event>]) -> Option<Payload> {
        match events {
            [] => None,
            [one] => Some(Payload {
                delivery: one.id.clone(),
                event: one.kind.as_str(),
                count: 1,
                body: Bytes::copy_from_slice(one.body.as_bytes()),
            }),
            many => {
                let mut body = String::with_capacity(many.iter().map(|e| e.body.len() + 1).sum());
                body.push('[');
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&e.body);
                }
                body.push(']');
                Some(Payload {
                    delivery: format!("b{}", &many[0].id),
                    event: many[0].kind.as_str(),
                    count: many.len(),
                    body: Bytes::from(body),
                })
            }
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: &'static str,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency: Duration,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.outcome == "ok"
    }
}

/// The HTTP client of one sender: whole-request and connect timeouts, no redirects.
pub fn client(cfg: &WebhookDeliverySettings) -> awc::Client {
    awc::Client::builder()
        .timeout(cfg.timeout)
        .disable_redirects()
        .connector(awc::Connector::new().timeout(cfg.timeout))
        .finish()
}

/// One POST of `payload` to `sub`; counted in the metrics and stored as a delivery row.
pub async fn attempt(
    client: &awc::Client,
    sub: &Subscriber,
    payload: &Payload,
    number: u32,
    timeout: Duration,
    storage: &Addr<Storage>,
) -> Attempt {
    let done = post(client, sub, payload, timeout).await;
    METRICS
        .webhook_deliveries
        .inc(vec![("outcome", done.outcome.to_string())]);
    storage.do_send(Store(Row::Delivery(DeliveryRow {
        webhook_id: sub.id.clone(),
        delivery: payload.delivery.clone(),
        event: payload.event.to_string(),
        events: u32::try_from(payload.count).unwrap_or(u32::MAX),
        attempt: number,
        outcome: done.outcome.to_string(),
        status_code: done.status_code,
        error: done.error.clone(),
        latency_ms: u64::try_from(done.latency.as_millis()).unwrap_or(u64::MAX),
        at: Utc::now(),
    })));
    done
}

/// The POST itself, with the contract's headers.
pub async fn post(
    client: &awc::Client,
    sub: &Subscriber,
    payload: &Payload,
    timeout: Duration,
) -> Attempt {
    let start = Instant::now();
    let mut req = client
        .post(&sub.url)
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-DTU-Event", payload.event))
        .insert_header(("X-DTU-Delivery", payload.delivery.as_str()));
    if payload.count > 1 {
        req = req.insert_header(("X-DTU-Batch", payload.count.to_string()));
    }
    if let Some(secret) = &sub.secret {
        req = req.insert_header(("X-DTU-Signature", signature(secret, &payload.body)));
    }
    let (outcome, status_code, error) = match req.send_body(payload.body.clone()).await {
        Ok(mut resp) => {
            let status = resp.status();
            // Read (a bounded part of) the answer so that the connection can be reused.
            let _ = tokio::time::timeout(timeout, resp.body().limit(ANSWER_LIMIT)).await;
            if status.is_success() {
                ("ok", Some(status.as_u16()), None)
            } else {
                (
                    "http_error",
                    Some(status.as_u16()),
                    Some(format!("answered {status}")),
                )
            }
        }
        Err(awc::error::SendRequestError::Timeout)
        | Err(awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout)) => (
            "timeout",
            None,
            Some(format!("no answer within {timeout:?}")),
        ),
        Err(e) => ("connect_error", None, Some(e.to_string())),
    };
    Attempt {
        outcome,
        status_code,
        error,
        latency: start.elapsed(),
    }
}

/// Delivers to one subscriber. Its work runs as a future in the actor's context, so stopping
/// the actor (a deleted subscriber, the server stopping) ends it, and dropping its queue ends
/// the bus subscription.
pub struct WebhookSender {
    sub: Arc<Subscriber>,
    status: Arc<Status>,
    cfg: WebhookDeliverySettings,
    storage: Addr<Storage>,
    queue: Option<mpsc::Receiver<Arc<Event>>>,
}

impl Actor for WebhookSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(queue) = self.queue.take() else {
            return;
        };
        let run = deliver_loop(
            self.sub.clone(),
            self.status.clone(),
            self.cfg.clone(),
            self.storage.clone(),
            queue,
        );
        ctx.spawn(run.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

/// Stops a sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSender;

impl Handler<StopSender> for WebhookSender {
    type Result = ();

    fn handle(&mut self, _: StopSender, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Takes events off the queue, batching telemetry that is already waiting, and delivers them.
async fn deliver_loop(
    sub: Arc<Subscriber>,
    status: Arc<Status>,
    cfg: WebhookDeliverySettings,
    storage: Addr<Storage>,
    mut queue: mpsc::Receiver<Arc<Event>>,
) {
    let client = client(&cfg);
    let mut overflow = Overflow::default();
    let mut held: Option<Arc<Event>> = None;
    let mut failures_in_row = 0u32;
    loop {
        let first = match held.take() {
            Some(e) => e,
            None => {
                tokio::select! {
                    e = queue.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                    _ = tokio::time::sleep(OVERFLOW_CHECK) => {
                        overflow.report(&sub, &status, &storage);
                        continue;
                    }
                }
            }
        };
        overflow.report(&sub, &status, &storage);
        let mut batch = vec![first];
        if batch[0].kind == EventKind::Telemetry {
            while batch.len() < cfg.batch_max {
                match queue.try_recv() {
                    Ok(e) if e.kind == EventKind::Telemetry => batch.push(e),
                    Ok(e) => {
                        held = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let Some(payload) = Payload::of(&batch) else {
            continue;
        };
        drop(batch);
        let mut delivered = false;
        for n in 1..=cfg.max_attempts {
            let a = attempt(&client, &sub, &payload, n, cfg.timeout, &storage).await;
            if a.ok() {
                delivered = true;
                break;
            }
            log::debug!(
                "webhook {}: delivery {} attempt {n}/{} failed: {}",
                sub.id,
                payload.delivery,
                cfg.max_attempts,
                a.error.as_deref().unwrap_or(a.outcome)
            );
            if n < cfg.max_attempts {
                overflow
                    .rest(backoff(&cfg, n), &sub, &status, &storage)
                    .await;
            }
        }
        if delivered {
            status.delivered.fetch_add(1, Ordering::Relaxed);
            failures_in_row = 0;
            if status.paused.swap(false, Ordering::Relaxed) {
                log::info!("webhook {}: {} answers again; resumed", sub.id, sub.url);
            }
            continue;
        }
        status.failed.fetch_add(1, Ordering::Relaxed);
        failures_in_row = failures_in_row.saturating_add(1);
        log::warn!(
            "webhook {}: gave up on delivery {} ({} {}) to {} after {} attempts",
            sub.id,
            payload.delivery,
            payload.count,
            payload.event,
            sub.url,
            cfg.max_attempts
        );
        if failures_in_row >= cfg.pause_after {
            if !status.paused.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "webhook {}: {failures_in_row} deliveries in a row failed; paused for {:?} \
                     (events beyond its queue of {} are dropped meanwhile)",
                    sub.id,
                    cfg.pause_for,
                    cfg.queue
                );
            }
            overflow.rest(cfg.pause_for, &sub, &status, &storage).await;
        }
    }
}

/// Reports events the bus dropped for a subscriber since the last report.
#[derive(Default)]
struct Overflow {
    reported: u64,
}

impl Overflow {
    /// Sleeps for `d`, reporting overflow every second meanwhile.
    async fn rest(
        &mut self,
        d: Duration,
        sub: &Subscriber,
        status: &Status,
        storage: &Addr<Storage>,
    ) {
        let end = tokio::time::Instant::now() + d;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep((end - now).min(OVERFLOW_CHECK)).await;
            self.report(sub, status, storage);
        }
    }

    fn report(&mut self, sub: &Subscriber, status: &Status, storage: &Addr<Storage>) {
        let dropped = status.dropped.load(Ordering::Relaxed);
        if dropped <= self.reported {
            return;
        }
        let n = dropped - self.reported;
        self.reported = dropped;
        log::warn!(
            "webhook {}: queue full, {n} event(s) dropped ({dropped} in all)",
            sub.id
        );
        METRICS
            .webhook_deliveries
            .add(vec![("outcome", "overflow".to_string())], n);
        storage.do_send(Store(Row::Delivery(DeliveryRow {
            webhook_id: sub.id.clone(),
            delivery: String::new(),
            event: "overflow".into(),
            events: u32::try_from(n).unwrap_or(u32::MAX),
            attempt: 0,
            outcome: "overflow".into(),
            status_code: None,
            error: Some(format!("queue full: {n} event(s) dropped")),
            latency_ms: 0,
            at: Utc::now(),
        })));
    }
}

struct Entry {
    sub: Arc<Subscriber>,
    status: Arc<Status>,
    sender: Addr<WebhookSender>,
    subscription: u64,
}

/// The live subscribers: what the API lists, adds and removes. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    entries: Arc<Mutex<Vec<Entry>>>,
    bus: Addr<EventBus>,
    storage: Addr<Storage>,
    pub cfg: WebhookDeliverySettings,
    arbiter: ArbiterHandle,
}

impl Webhooks {
    /// An empty registry whose senders will run on `arbiter`.
    pub fn new(
        bus: Addr<EventBus>,
        storage: Addr<Storage>,
        cfg: WebhookDeliverySettings,
        arbiter: ArbiterHandle,
    ) -> Webhooks {
        Webhooks {
            entries: Arc::default(),
            bus,
            storage,
            cfg,
            arbiter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes `sub` to the bus and starts its sender.
    pub async fn add(&self, sub: Subscriber) -> Result<(), MailboxError> {
        let subscription = self
            .bus
            .send(Subscribe {
                filter: sub.filter.clone(),
                capacity: self.cfg.queue,
            })
            .await?;
        let sub = Arc::new(sub);
        let status = Arc::new(Status {
            dropped: subscription.dropped.clone(),
            ..Status::default()
        });
        let (s, st, cfg, storage) = (
            sub.clone(),
            status.clone(),
            self.cfg.clone(),
            self.storage.clone(),
        );
        let queue = subscription.events;
        let sender = WebhookSender::start_in_arbiter(&self.arbiter, move |_| WebhookSender {
            sub: s,
            status: st,
            cfg,
            storage,
            queue: Some(queue),
        });
        log::info!(
            "webhook {}: delivering {} to {} ({})",
            sub.id,
            sub.events.join(","),
            sub.url,
            sub.source.as_str()
        );
        self.lock().push(Entry {
            sub,
            status,
            sender,
            subscription: subscription.id,
        });
        Ok(())
    }

    /// Stops and forgets a subscriber; false when there is none by that id.
    pub fn remove(&self, id: &str) -> bool {
        let entry = {
            let mut entries = self.lock();
            match entries.iter().position(|e| e.sub.id == id) {
                Some(i) => entries.remove(i),
                None => return false,
            }
        };
        self.bus.do_send(Unsubscribe(entry.subscription));
        entry.sender.do_send(StopSender);
        true
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscriber>> {
        self.lock()
            .iter()
            .find(|e| e.sub.id == id)
            .map(|e| e.sub.clone())
    }

    /// Every subscriber as the API shows it (never the secret).
    pub fn list(&self) -> Vec<Value> {
        self.lock()
            .iter()
            .map(|e| describe(&e.sub, Some(&e.status)))
            .collect()
    }

    pub fn describe(&self, id: &str) -> Option<Value> {
        self.lock()
            .iter()
            .find(|e| e.sub.id == id)
            .map(|e| describe(&e.sub, Some(&e.status)))
    }

    pub fn storage(&self) -> &Addr<Storage> {
        &self.storage
    }
}

/// The API's view of a subscriber.
pub fn describe(sub: &Subscriber, status: Option<&Status>) -> Value {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "id": sub.id,
        "url": sub.url,
        "events": sub.events,
        "devices": sub.devices,
        "source": sub.source.as_str(),
        "has_secret": sub.secret.is_some(),
        "created_at": sub.created_at,
        "paused": status.is_some_and(|s| s.paused.load(Ordering::Relaxed)),
        "dropped": status.map_or(0, |s| load(&s.dropped)),
        "delivered": status.map_or(0, |s| load(&s.delivered)),
        "failed": status.map_or(0, |s| load(&s.failed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WebhookDeliverySettings {
        WebhookDeliverySettings {
            timeout: Duration::from_secs(1),
            max_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            pause_after: 3,
            pause_for: Duration::from_secs(1),
            queue: 10,
            batch_max: 10,
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let c = cfg();
        for _ in 0..50 {
            let b1 = backoff(&c, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b2 = backoff(&c, 2);
            assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
            let b9 = backoff(&c, 9);
            assert!(b9 >= Duration::from_millis(175) && b9 <= Duration::from_millis(350));
            assert!(backoff(&c, u32::MAX) <= Duration::from_millis(350));
        }
    }

    fn subscriber(url: String) -> Subscriber {
        Subscriber {
            id: "w1".into(),
            url,
            events: vec!["*".into()],
            devices: None,
            secret: Some("k".into()),
            source: Source::Api,
            created_at: None,
            filter: EventFilter::default(),
        }
    }

    /// HTTPS is compiled in: against a server that does not speak TLS, the handshake itself
    /// fails (not "SSL is not supported", which awc answers without a TLS feature).
    #[actix_rt::test]
    async fn https_urls_attempt_a_tls_handshake() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            use std::io::Write;
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let payload = Payload::of(&[Arc::new(Event::new(EventKind::Telemetry, "1", json!({})))])
            .expect("payload");
        let sub = subscriber(format!("https://127.0.0.1:{port}/hook"));
        let a = post(&client(&cfg()), &sub, &payload, Duration::from_secs(5)).await;
        assert_eq!(a.outcome, "connect_error", "{a:?}");
        let error = a.error.unwrap_or_default();
        assert!(!error.contains("SSL is not supported"), "{error}");
    }

    #[test]
    fn batches_are_json_arrays_of_envelopes() {
        let evs: Vec<Arc<Event>> = (0..3)
            .map(|i| {
                Arc::new(Event::new(
                    EventKind::Telemetry,
                    "1",
                    json!({"values": {"t": i}}),
                ))
            })
            .collect();
        let one = Payload::of(&evs[..1]).expect("one");
        assert_eq!(one.delivery, evs[0].id);
        assert_eq!(one.count, 1);
        assert_eq!(&one.body[..], evs[0].body.as_bytes());
        let many = Payload::of(&evs).expect("many");
        assert_eq!(many.count, 3);
        assert_eq!(many.event, "telemetry");
        let v: Value = serde_json::from_slice(&many.body).expect("JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(v[2]["data"]["values"]["t"], 2);
        assert!(Payload::of(&[]).is_none());
    }
}
