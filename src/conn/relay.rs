//! `RelayActor`: one per `$TTMS` terminal connection (see CONTRACT §3 and the codec in
//! `device::codec::ttms`).
//!
//! Life of a connection: unregistered until its first heartbeat (`cmd 01`), whose addr is the
//! terminal's ccid; its id is then the ccid as 8 uppercase hex digits and it is a device like
//! any other (supervisor `Registered`/`Offline`, connection events, raw packets of kind
//! `relay`). Every heartbeat is answered with the server's unix time and starts delivery of the
//! frames queued for it, unless a delivery for that id is already running (on this or any
//! other connection). Data (`cmd AA`) is rewritten for its target (`$TTMX`, addr = sender) and
//! routed, in the order received, through the supervisor to the target's actor; when the target
//! is offline the frame is inserted into `relay_queue` (a committed insert on a blocking thread)
//! before the next frame of this sender is routed.
//!
//! Socket writes go through one writer task per connection, in order; each write can report
//! its outcome, so a relayed or queued frame counts as delivered only once `write_all` handed it
//! to the kernel without error. A relayed frame whose write fails is queued instead.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{BytesCodec, Decoder, FramedRead};

use crate::conn::device::Close;
use crate::conn::link::Link;
use crate::protocol::hex::to_hex;
use crate::protocol::ttms::{ccid_id, TtmsCodec, TtmsFrame, TtmsItem, CMD_DATA, CMD_HEARTBEAT};
use crate::protocol::Protocol;
use crate::settings::LivenessSettings;
use crate::storage::db::{Db, Enqueued, RelayRecord};
use crate::storage::rows::{ConnEvent, Direction, PacketKind, PacketRow, Row};
use crate::storage::{Storage, Store};
use crate::supervisor::{self, ConnId, Holder, KickRelay, OfflineReason, RouteRelay, Supervisor};

/// Queued frames loaded and written per delivery round.
const DELIVERY_BATCH: i64 = 500;
/// Live frames held back while a queued delivery runs; more are queued in the database.
const MAX_HELD: usize = 1_000;

static NEXT_CONN: AtomicU64 = AtomicU64::new(100_000_000_000);

/// What every connection of one ttms listener shares.
pub struct RelayContext {
    pub name: String,
    pub liveness: LivenessSettings,
    pub supervisor: Addr<Supervisor>,
    pub storage: Addr<Storage>,
    pub db: Db,
    /// `[relay] max_queue`: frames waiting per target.
    pub max_queue: usize,
    /// `[storage] store_heartbeats`: heartbeats and their answers go to `raw_packets`.
    pub store_heartbeats: bool,
    /// Targets whose queued frames are being delivered now, over all connections: a second
    /// heartbeat (or a new connection of the same terminal) never delivers them twice.
    pub delivering: Arc<Mutex<HashSet<String>>>,
    /// Frames read from senders and not yet written to a target or committed to the queue;
    /// shutdown waits for them.
    pub in_flight: InFlight,
}

/// Counts relay frames in flight (see [`RelayContext::in_flight`]).
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

/// One write for the writer task; `done` learns whether it reached the socket.
struct WriteJob {
    bytes: Vec<u8>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// One data frame to route: already rewritten for its target.
struct Routed {
    target: String,
    sender: String,
    frame: Vec<u8>,
    _guard: InFlightGuard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unregistered,
    Online,
    Closing,
}

pub struct RelayActor {
    conn: ConnId,
    peer: SocketAddr,
    ctx: Arc<RelayContext>,
    codec: TtmsCodec,
    buf: BytesMut,
    out: Option<mpsc::UnboundedSender<WriteJob>>,
    route: Option<mpsc::UnboundedSender<Routed>>,
    id: Option<String>,
    ccid: u32,
    state: State,
    close_reason: OfflineReason,
    last_rx: Instant,
    last_seen_report: Instant,
    register_timer: Option<SpawnHandle>,
    connected_at: DateTime<Utc>,
    /// This connection is delivering queued frames (and holds the id in `ctx.delivering`).
    delivering: bool,
    /// A frame was queued for this terminal during a delivery: run another round after it.
    redeliver: bool,
    /// Live frames that arrived during a delivery; written after it, to keep the order.
    held: VecDeque<Deliver>,
}

impl RelayActor {
    /// Starts the actor for an accepted connection on the current arbiter.
    pub fn start(stream: TcpStream, peer: SocketAddr, ctx: Arc<RelayContext>) {
        let (read, write) = stream.into_split();
        RelayActor::create(move |actx| {
            RelayActor::add_stream(FramedRead::new(read, BytesCodec::new()), actx);
            let (out_tx, out_rx) = mpsc::unbounded_channel();
            actix_rt::spawn(write_loop(write, out_rx, actx.address()));
            let now = Instant::now();
            RelayActor {
                conn: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
                peer,
                ctx,
                codec: TtmsCodec::default(),
                buf: BytesMut::with_capacity(512),
                out: Some(out_tx),
                route: None,
                id: None,
                ccid: 0,
                state: State::Unregistered,
                close_reason: OfflineReason::Closed,
                last_rx: now,
                last_seen_report: now,
                register_timer: None,
                connected_at: Utc::now(),
                delivering: false,
                redeliver: false,
                held: VecDeque::new(),
            }
        });
    }

    fn who(&self) -> String {
        match &self.id {
            Some(id) => format!("device {id}"),
            None => format!("unregistered ttms connection from {}", self.peer),
        }
    }

    /// This connection's facts, for reporting through the shared [`Link`].
    fn link(&self) -> Link<'_> {
        Link {
            conn: self.conn,
            peer: self.peer,
            id: self.id.as_deref(),
            protocol: Protocol::of(&crate::protocol::ttms::PROTOCOL),
            profile: None,
            connected_at: self.connected_at,
            supervisor: &self.ctx.supervisor,
            storage: &self.ctx.storage,
        }
    }

    /// Records a `$TTMS` frame that crossed the socket.
    fn store_packet(&self, direction: Direction, bytes: &[u8]) {
        self.link()
            .store_packet(direction, PacketKind::Relay, bytes);
    }

    fn close(&mut self, reason: OfflineReason, ctx: &mut Context<Self>) {
        if self.state == State::Closing {
            return;
        }
        self.state = State::Closing;
        self.close_reason = reason;
        // The writer task flushes what is already queued, then shuts the socket down.
        self.out = None;
        ctx.stop();
    }

    /// Queues bytes for the socket; with `ack`, the receiver learns whether the write made it.
    /// `None` when the connection is closing (nothing was queued).
    fn write(&self, bytes: Vec<u8>, ack: bool) -> Option<oneshot::Receiver<Result<(), String>>> {
        let out = self.out.as_ref()?;
        let (done, rx) = if ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        out.send(WriteJob { bytes, done }).ok()?;
        match rx {
            Some(rx) => Some(rx),
            // Without an ack the caller only needs to know it was queued.
            None => Some(oneshot::channel().1),
        }
    }

    fn on_item(&mut self, item: TtmsItem, ctx: &mut Context<Self>) {
        let frame = match item {
            TtmsItem::Frame(f) => f,
            TtmsItem::BadChecksum { raw, expected } => {
                log::warn!(
                    "{}: dropped frame with bad checksum (expected {expected:02X}): {}",
                    self.who(),
                    to_hex(&raw)
                );
                return;
            }
        };
        match (self.state, frame.cmd) {
            (State::Closing, _) => {}
            (_, CMD_HEARTBEAT) => self.on_heartbeat(frame, ctx),
            (State::Unregistered, cmd) => {
                log::warn!(
                    "{}: sent cmd {cmd:02X} before a heartbeat registered it; closing: {}",
                    self.who(),
                    to_hex(&frame.to_bytes())
                );
                self.link().store_event(
                    ConnEvent::Rejected,
                    format!("cmd {cmd:02X} before registering"),
                );
                self.close(OfflineReason::Closed, ctx);
            }
            (State::Online, CMD_DATA) => self.on_data(frame),
            (State::Online, cmd) => {
                self.store_packet(Direction::In, &frame.to_bytes());
                log::warn!(
                    "{}: ignored frame with unknown cmd {cmd:02X}: {}",
                    self.who(),
                    to_hex(&frame.to_bytes())
                );
            }
        }
    }

    fn on_heartbeat(&mut self, frame: TtmsFrame, ctx: &mut Context<Self>) {
        if self.state == State::Unregistered {
            self.register(frame.addr, ctx);
        } else if frame.addr != self.ccid {
            log::warn!(
                "{}: heartbeat with another ccid {:08X} ignored",
                self.who(),
                frame.addr
            );
            return;
        }
        log::debug!("{}: heartbeat", self.who());
        let now = u32::try_from(Utc::now().timestamp()).unwrap_or(u32::MAX);
        let answer = frame.heartbeat_answer(now).to_bytes();
        if self.ctx.store_heartbeats {
            self.store_packet(Direction::In, &frame.to_bytes());
            self.store_packet(Direction::Out, &answer);
        }
        self.write(answer, false);
        self.start_delivery(ctx);
    }

    fn register(&mut self, ccid: u32, ctx: &mut Context<Self>) {
        if let Some(t) = self.register_timer.take() {
            ctx.cancel_future(t);
        }
        let id = ccid_id(ccid);
        self.id = Some(id.clone());
        self.ccid = ccid;
        self.state = State::Online;
        self.connected_at = Utc::now();
        self.link()
            .store_event(ConnEvent::Connect, format!("listener {}", self.ctx.name));
        self.link().store_device(true);
        log::info!(
            "device {id}: registered from {} on listener {}",
            self.peer,
            self.ctx.name
        );
        self.ctx.supervisor.do_send(supervisor::Registered {
            id,
            conn: self.conn,
            addr: Holder::Relay(ctx.address()),
            protocol: Protocol::of(&crate::protocol::ttms::PROTOCOL),
            profile: None,
            remote_addr: self.peer,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(route_loop(rx, self.ctx.clone()));
        self.route = Some(tx);
        self.start_liveness(ctx);
    }

    fn start_liveness(&mut self, ctx: &mut Context<Self>) {
        let live = &self.ctx.liveness;
        let limit = live.heartbeat_interval * live.max_missed.max(1);
        let every =
            (live.heartbeat_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(every, move |act, ctx| {
            let silent = act.last_rx.elapsed();
            if silent > limit {
                log::info!(
                    "{}: silent for {} ms (limit {} ms); closing",
                    act.who(),
                    silent.as_millis(),
                    limit.as_millis()
                );
                act.close(OfflineReason::HeartbeatTimeout, ctx);
            }
        });
    }

    fn on_data(&mut self, frame: TtmsFrame) {
        let Some(sender) = self.id.clone() else {
            return;
        };
        self.store_packet(Direction::In, &frame.to_bytes());
        let target = ccid_id(frame.addr);
        let out = frame.forwarded(self.ccid).to_bytes();
        log::debug!("device {sender}: data for {target}: {}", to_hex(&out));
        let routed = Routed {
            target,
            sender,
            frame: out,
            _guard: self.ctx.in_flight.enter(),
        };
        if let Some(route) = &self.route {
            if let Err(mpsc::error::SendError(r)) = route.send(routed) {
                // The route task is gone only if the runtime is stopping: still keep the frame.
                actix_rt::spawn(enqueue(self.ctx.clone(), r));
            }
        }
    }

    /// Writes a live frame from another terminal; if the write fails it is queued.
    fn write_relayed(&mut self, msg: Deliver) {
        let id = self.id.clone().unwrap_or_default();
        let routed = Routed {
            target: id,
            sender: msg.sender,
            frame: msg.frame,
            _guard: msg.guard,
        };
        self.store_packet(Direction::Out, &routed.frame);
        let rx = self.write(routed.frame.clone(), true);
        let ctx = self.ctx.clone();
        // A task of its own: it must outlive this actor when the write fails and it stops.
        actix_rt::spawn(async move {
            let written = match rx {
                Some(rx) => matches!(rx.await, Ok(Ok(()))),
                None => false,
            };
            if !written {
                log::info!(
                    "device {}: relayed frame from {} not written; queueing it",
                    routed.target,
                    routed.sender
                );
                enqueue(ctx, routed).await;
            }
        });
    }

    /// Starts delivering this terminal's queued frames unless a delivery for its id runs.
    fn start_delivery(&mut self, ctx: &mut Context<Self>) {
        let (Some(id), Some(out)) = (self.id.clone(), self.out.clone()) else {
            return;
        };
        if self.delivering {
            log::debug!("device {id}: queued delivery already running");
            return;
        }
        {
            let Ok(mut set) = self.ctx.delivering.lock() else {
                log::error!("device {id}: delivery registry poisoned; not delivering");
                return;
            };
            if !set.insert(id.clone()) {
                log::debug!("device {id}: another connection is delivering its queue");
                return;
            }
        }
        self.delivering = true;
        // A task of its own, not tied to this actor: if the socket fails mid-way the actor
        // stops, and marking what did reach the socket (and leaving the registry) must still
        // happen.
        let task = actix_rt::spawn(deliver_queue(self.ctx.clone(), id, out));
        ctx.spawn(
            task.into_actor(self)
                .map(|_, act, ctx| act.end_delivery(ctx)),
        );
    }

    fn end_delivery(&mut self, ctx: &mut Context<Self>) {
        self.delivering = false;
        if std::mem::take(&mut self.redeliver) && self.state == State::Online {
            // Frames queued during the round go out before the live frames held behind it.
            self.start_delivery(ctx);
            if self.delivering {
                return;
            }
        }
        while let Some(msg) = self.held.pop_front() {
            self.write_relayed(msg);
        }
    }
}

/// Delivers the frames queued for `id`, oldest first, in rounds of `DELIVERY_BATCH`: write
/// each through the connection's writer, wait for every write's outcome, mark delivered those
/// that reached the socket (a prefix: after a failure the rest stay queued). Always leaves the
/// delivery registry at the end.
async fn deliver_queue(ctx: Arc<RelayContext>, id: String, out: mpsc::UnboundedSender<WriteJob>) {
    let mut total = 0usize;
    loop {
        let db = ctx.db.clone();
        let target = id.clone();
        let loaded =
            tokio::task::spawn_blocking(move || db.relay_pending(Some(&target), DELIVERY_BATCH))
                .await;
        let rows = match loaded {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                log::warn!("device {id}: cannot load queued frames: {e}");
                break;
            }
            Err(e) => {
                log::warn!("device {id}: loading queued frames failed: {e}");
                break;
            }
        };
        if rows.is_empty() {
            break;
        }
        let full_batch = rows.len() as i64 >= DELIVERY_BATCH;
        let (written, failed) = write_rows(&ctx, &id, rows, &out).await;
        let n = written.len();
        let db = ctx.db.clone();
        match tokio::task::spawn_blocking(move || db.relay_delivered(&written)).await {
            Ok(Ok(_)) => total += n,
            Ok(Err(e)) => {
                log::error!(
                    "device {id}: {n} queued frame(s) were written but not marked delivered \
                     (they will be sent again): {e}"
                );
                break;
            }
            Err(e) => {
                log::error!("device {id}: marking {n} frame(s) delivered failed: {e}");
                break;
            }
        }
        if failed {
            log::info!("device {id}: a queued frame could not be written; the rest stay queued");
            break;
        }
        if !full_batch {
            break;
        }
    }
    if total > 0 {
        log::info!("device {id}: delivered {total} queued frame(s)");
    }
    if let Ok(mut set) = ctx.delivering.lock() {
        set.remove(&id);
    }
}

/// Writes queued rows in order; answers the ids that reached the socket and whether a write
/// failed (the rows after it were not counted).
async fn write_rows(
    ctx: &RelayContext,
    id: &str,
    rows: Vec<RelayRecord>,
    out: &mpsc::UnboundedSender<WriteJob>,
) -> (Vec<i64>, bool) {
    let mut acks = Vec::with_capacity(rows.len());
    let mut closed = false;
    for row in rows {
        let Ok(bytes) = hex::decode(&row.hex) else {
            log::error!(
                "device {id}: queued frame {} is not hex; marking it delivered to skip it",
                row.id
            );
            acks.push((row.id, None));
            continue;
        };
        ctx.storage.do_send(Store(Row::Packet(PacketRow {
            device_id: id.to_string(),
            direction: Direction::Out,
            kind: PacketKind::Relay,
            bytes: bytes.clone(),
            at: Utc::now(),
        })));
        let (tx, rx) = oneshot::channel();
        if out
            .send(WriteJob {
                bytes,
                done: Some(tx),
            })
            .is_err()
        {
            closed = true;
            break;
        }
        acks.push((row.id, Some(rx)));
    }
    let mut written = Vec::with_capacity(acks.len());
    for (row, rx) in acks {
        let ok = match rx {
            None => true,
            Some(rx) => matches!(rx.await, Ok(Ok(()))),
        };
        if !ok {
            return (written, true);
        }
        written.push(row);
    }
    (written, closed)
}

/// Writes jobs in order; reports each outcome; the first failure closes the connection.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    actor: Addr<RelayActor>,
) {
    while let Some(job) = rx.recv().await {
        let result = w.write_all(&job.bytes).await;
        let failed = result.as_ref().err().map(|e| e.to_string());
        if let Some(done) = job.done {
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
        if let Some(e) = failed {
            actor.do_send(WriteFailed(e));
            // Jobs still queued are dropped: their acks report failure and they stay queued.
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Routes one sender's data frames in order: to the target's actor, or into `relay_queue`
/// (committed) before the next frame.
async fn route_loop(mut rx: mpsc::UnboundedReceiver<Routed>, ctx: Arc<RelayContext>) {
    while let Some(r) = rx.recv().await {
        let taken = ctx
            .supervisor
            .send(RouteRelay {
                target: r.target.clone(),
                sender: r.sender.clone(),
                frame: r.frame.clone(),
                guard: r._guard.clone(),
            })
            .await
            .unwrap_or(false);
        if taken {
            log::debug!("device {}: frame handed to {}", r.sender, r.target);
        } else {
            let target = r.target.clone();
            if enqueue(ctx.clone(), r).await {
                // The target may have registered while the frame was stored; before routing
                // this sender's next frame, so that order is kept.
                ctx.supervisor.do_send(KickRelay { target });
            }
        }
    }
}

/// Inserts a frame into `relay_queue` on a blocking thread; logs the outcome. True when the
/// frame was stored.
async fn enqueue(ctx: Arc<RelayContext>, r: Routed) -> bool {
    let db = ctx.db.clone();
    let max = ctx.max_queue;
    let (target, sender, frame) = (r.target.clone(), r.sender.clone(), r.frame.clone());
    let result =
        tokio::task::spawn_blocking(move || db.relay_enqueue(&target, &sender, &frame, max)).await;
    match result {
        Ok(Ok(Enqueued::Queued { depth })) => {
            log::info!(
                "device {}: offline; frame from {} queued ({depth} waiting)",
                r.target,
                r.sender
            );
            return true;
        }
        Ok(Ok(Enqueued::Full { depth })) => log::warn!(
            "device {}: relay queue full ({depth} frames waiting, [relay] max_queue = {max}); \
             dropped frame from {}: {}",
            r.target,
            r.sender,
            to_hex(&r.frame)
        ),
        Ok(Err(e)) => log::error!(
            "device {}: cannot queue frame from {} ({e}); dropped: {}",
            r.target,
            r.sender,
            to_hex(&r.frame)
        ),
        Err(e) => log::error!(
            "device {}: queueing task failed ({e}); dropped frame from {}",
            r.target,
            r.sender
        ),
    }
    false
}

impl Actor for RelayActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAX_HELD * 4);
        crate::metrics::METRICS.connections.inc();
        log::debug!(
            "ttms connection from {} on listener {}",
            self.peer,
            self.ctx.name
        );
        let timeout = self.ctx.liveness.register_timeout;
        self.register_timer = Some(ctx.run_later(timeout, move |act, ctx| {
            if act.state == State::Unregistered {
                log::warn!(
                    "{}: no heartbeat within {} ms; closing",
                    act.who(),
                    timeout.as_millis()
                );
                act.link().store_event(
                    ConnEvent::Rejected,
                    format!("no registration within {} ms", timeout.as_millis()),
                );
                act.close(OfflineReason::Closed, ctx);
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        crate::metrics::METRICS.connections.dec();
        // Live frames held behind a delivery go back to the queue.
        let ctx = self.ctx.clone();
        for msg in self.held.drain(..) {
            let r = Routed {
                target: self.id.clone().unwrap_or_default(),
                sender: msg.sender,
                frame: msg.frame,
                _guard: msg.guard,
            };
            actix_rt::spawn(enqueue(ctx.clone(), r));
        }
        self.link().went_offline(self.close_reason);
    }
}

impl StreamHandler<Result<BytesMut, io::Error>> for RelayActor {
    fn handle(&mut self, item: Result<BytesMut, io::Error>, ctx: &mut Self::Context) {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                log::info!("{}: read error: {e}; closing", self.who());
                self.close(OfflineReason::Closed, ctx);
                return;
            }
        };
        self.last_rx = Instant::now();
        let (now, mut last) = (self.last_rx, self.last_seen_report);
        self.link().seen(&mut last, now);
        self.last_seen_report = last;
        self.buf.extend_from_slice(&chunk);
        while self.state != State::Closing {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(item)) => self.on_item(item, ctx),
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{}: protocol error, closing: {e}", self.who());
                    if self.id.is_none() {
                        self.link()
                            .store_event(ConnEvent::Rejected, format!("protocol error: {e}"));
                    }
                    self.close(OfflineReason::Closed, ctx);
                    break;
                }
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        log::info!("{}: connection closed by peer", self.who());
        self.close(OfflineReason::Closed, ctx);
    }
}

/// The writer task failed to write to the socket.
#[derive(Message)]
#[rtype(result = "()")]
struct WriteFailed(String);

impl Handler<WriteFailed> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: WriteFailed, ctx: &mut Self::Context) {
        log::info!("{}: write error: {}; closing", self.who(), msg.0);
        self.close(OfflineReason::Closed, ctx);
    }
}

/// Frames were queued for this terminal while it was online: deliver them now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

impl Handler<Kick> for RelayActor {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Self::Context) {
        if self.state != State::Online {
            return;
        }
        if self.delivering {
            self.redeliver = true;
        } else {
            self.start_delivery(ctx);
        }
    }
}

impl Handler<Close> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        log::info!("{}: closing ({})", self.who(), msg.reason.as_str());
        self.close(msg.reason, ctx);
    }
}

/// A frame from another terminal, already rewritten for this one (`$TTMX`, sender's ccid).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub sender: String,
    pub frame: Vec<u8>,
    pub guard: InFlightGuard,
}

impl Handler<Deliver> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        if self.delivering && self.held.len() < MAX_HELD {
            self.held.push_back(msg);
            return;
        }
        if self.delivering {
            // Too many held: queue this one behind the others in the database.
            self.redeliver = true;
            let r = Routed {
                target: self.id.clone().unwrap_or_default(),
                sender: msg.sender,
                frame: msg.frame,
                _guard: msg.guard,
            };
            actix_rt::spawn(enqueue(self.ctx.clone(), r));
            return;
        }
        self.write_relayed(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_every_holder_until_the_last_drops() {
        let in_flight = InFlight::default();
        let routed = in_flight.enter();
        // Handed to the supervisor and on to the target's actor: a second holder.
        let deliver = routed.clone();
        assert_eq!(in_flight.count(), 2);
        drop(routed);
        assert_eq!(in_flight.count(), 1);
        drop(deliver);
        assert_eq!(in_flight.count(), 0);
    }
}
