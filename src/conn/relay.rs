//! The driver of `$TTMS` relay terminals (see CONTRACT §3 and the codec in
//! `protocol::ttms`).
//!
//! A terminal registers with its first heartbeat (`cmd 01`), whose addr is its ccid; its id is
//! then the ccid as 8 uppercase hex digits and it is a device like any other (supervisor
//! `Registered`/`Offline`, connection events, raw packets of kind `relay`). Every heartbeat is
//! answered with the server's unix time and starts delivery of the frames queued for it,
//! unless a delivery for that id is already running (on this or any other connection). Data
//! (`cmd AA`) is rewritten for its target (`$TTMX`, addr = sender) and routed, in the order
//! received, through the supervisor to the target's connection; when the target is offline
//! the frame is inserted into `relay_queue` (a committed insert on a blocking thread) before
//! the next frame of this sender is routed.
//!
//! A relayed or queued frame counts as delivered only once its write reached the socket
//! (`Outbox::write_acked`); a relayed frame whose write fails is queued instead.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use crate::conn::lifecycle::{Connection, Driver, Outbox, State};
use crate::protocol::hex::to_hex;
use crate::protocol::link::CodecError;
use crate::protocol::ttms::{ccid_id, TtmsCodec, TtmsFrame, TtmsItem, CMD_DATA, CMD_HEARTBEAT};
use crate::storage::db::{Db, Enqueued, RelayRecord};
use crate::storage::rows::{Direction, PacketKind, PacketRow, Row};
use crate::storage::{Storage, Store};
use crate::supervisor::messages::{
    Deliver, InFlight, InFlightGuard, Kick, KickRelay, RouteRelay, Service,
};
use crate::supervisor::Supervisor;

/// Queued frames loaded and written per delivery round.
const DELIVERY_BATCH: i64 = 500;
/// Live frames held back while a queued delivery runs; more are queued in the database.
const MAX_HELD: usize = 1_000;

/// What every connection of one ttms listener shares besides the lifecycle's facts.
pub struct RelayContext {
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

/// One data frame to route: already rewritten for its target.
struct Routed {
    target: String,
    sender: String,
    frame: Vec<u8>,
    _guard: InFlightGuard,
}

/// The state of one terminal's connection.
pub struct RelayDriver {
    ctx: Arc<RelayContext>,
    codec: TtmsCodec,
    route: Option<mpsc::UnboundedSender<Routed>>,
    ccid: u32,
    /// This connection is delivering queued frames (and holds the id in `ctx.delivering`).
    delivering: bool,
    /// A frame was queued for this terminal during a delivery: run another round after it.
    redeliver: bool,
    /// Live frames that arrived during a delivery; written after it, to keep the order.
    held: VecDeque<Deliver>,
}

impl RelayDriver {
    pub fn new(ctx: Arc<RelayContext>) -> RelayDriver {
        RelayDriver {
            ctx,
            codec: TtmsCodec::default(),
            route: None,
            ccid: 0,
            delivering: false,
            redeliver: false,
            held: VecDeque::new(),
        }
    }
}

type Conn = Connection<RelayDriver>;

impl Driver for RelayDriver {
    type Item = TtmsItem;

    const UNREGISTERED: &'static str = "unregistered ttms connection";

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<TtmsItem>, CodecError> {
        self.codec.decode(buf)
    }

    fn sign_of_life(item: &TtmsItem) -> bool {
        matches!(item, TtmsItem::Frame(_))
    }

    fn on_item(conn: &mut Conn, item: TtmsItem, ctx: &mut Context<Conn>) {
        let frame = match item {
            TtmsItem::Frame(f) => f,
            TtmsItem::BadChecksum { raw, expected } => {
                log::warn!(
                    "{}: dropped frame with bad checksum (expected {expected:02X}): {}",
                    conn.life.who(),
                    to_hex(&raw)
                );
                return;
            }
        };
        match (conn.life.state, frame.cmd) {
            (State::Closing, _) => {}
            (_, CMD_HEARTBEAT) => conn.on_heartbeat(frame, ctx),
            (State::Unregistered, cmd) => conn.refuse_unregistered(
                format!("cmd {cmd:02X} ({})", to_hex(&frame.to_bytes())),
                ctx,
            ),
            (State::Online, CMD_DATA) => conn.on_data(frame),
            (State::Online, cmd) => {
                conn.store_packet(Direction::In, &frame.to_bytes());
                log::warn!(
                    "{}: ignored frame with unknown cmd {cmd:02X}: {}",
                    conn.life.who(),
                    to_hex(&frame.to_bytes())
                );
            }
        }
    }

    fn on_registered(conn: &mut Conn, _: &mut Context<Conn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(route_loop(rx, conn.driver.ctx.clone()));
        conn.driver.route = Some(tx);
    }

    fn service(ctx: &mut Context<Conn>) -> Service {
        Service::Relay {
            deliver: ctx.address().recipient(),
            kick: ctx.address().recipient(),
        }
    }

    fn on_stopped(conn: &mut Conn) {
        // Live frames held behind a delivery go back to the queue.
        let ctx = conn.driver.ctx.clone();
        for msg in conn.driver.held.drain(..) {
            let r = Routed {
                target: conn.life.id.clone().unwrap_or_default(),
                sender: msg.sender,
                frame: msg.frame,
                _guard: msg.guard,
            };
            actix_rt::spawn(enqueue(ctx.clone(), r));
        }
    }

    fn mailbox_capacity() -> usize {
        MAX_HELD * 4
    }
}

impl Conn {
    /// Records a `$TTMS` frame that crossed the socket.
    fn store_packet(&self, direction: Direction, bytes: &[u8]) {
        self.life
            .link()
            .store_packet(direction, PacketKind::Relay, bytes);
    }

    fn on_heartbeat(&mut self, frame: TtmsFrame, ctx: &mut Context<Conn>) {
        if self.life.state == State::Unregistered {
            self.driver.ccid = frame.addr;
            if !self.register(ccid_id(frame.addr), None, ctx) {
                return;
            }
        } else if frame.addr != self.driver.ccid {
            log::warn!(
                "{}: heartbeat with another ccid {:08X} ignored",
                self.life.who(),
                frame.addr
            );
            return;
        }
        log::debug!("{}: heartbeat", self.life.who());
        let now = u32::try_from(Utc::now().timestamp()).unwrap_or(u32::MAX);
        let answer = frame.heartbeat_answer(now).to_bytes();
        if self.driver.ctx.store_heartbeats {
            self.store_packet(Direction::In, &frame.to_bytes());
            self.store_packet(Direction::Out, &answer);
        }
        self.life.outbox().write(Bytes::from(answer));
        self.start_delivery(ctx);
    }

    fn on_data(&mut self, frame: TtmsFrame) {
        let Some(sender) = self.life.id.clone() else {
            return;
        };
        self.store_packet(Direction::In, &frame.to_bytes());
        let target = ccid_id(frame.addr);
        let out = frame.forwarded(self.driver.ccid).to_bytes();
        log::debug!("device {sender}: data for {target}: {}", to_hex(&out));
        let routed = Routed {
            target,
            sender,
            frame: out,
            _guard: self.driver.ctx.in_flight.enter(),
        };
        if let Some(route) = &self.driver.route {
            if let Err(mpsc::error::SendError(r)) = route.send(routed) {
                // The route task is gone only if the runtime is stopping: still keep the frame.
                actix_rt::spawn(enqueue(self.driver.ctx.clone(), r));
            }
        }
    }

    /// Writes a live frame from another terminal; if the write fails it is queued.
    fn write_relayed(&mut self, msg: Deliver) {
        let routed = Routed {
            target: self.life.id.clone().unwrap_or_default(),
            sender: msg.sender,
            frame: msg.frame,
            _guard: msg.guard,
        };
        self.store_packet(Direction::Out, &routed.frame);
        let rx = self
            .life
            .outbox()
            .write_acked(Bytes::copy_from_slice(&routed.frame));
        let ctx = self.driver.ctx.clone();
        // A task of its own: it must outlive this connection when the write fails and it stops.
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
    fn start_delivery(&mut self, ctx: &mut Context<Conn>) {
        let Some(id) = self.life.id.clone() else {
            return;
        };
        if self.life.state != State::Online {
            return;
        }
        if self.driver.delivering {
            log::debug!("device {id}: queued delivery already running");
            return;
        }
        {
            let Ok(mut set) = self.driver.ctx.delivering.lock() else {
                log::error!("device {id}: delivery registry poisoned; not delivering");
                return;
            };
            if !set.insert(id.clone()) {
                log::debug!("device {id}: another connection is delivering its queue");
                return;
            }
        }
        self.driver.delivering = true;
        // A task of its own, not tied to this connection: if the socket fails mid-way the
        // connection stops, and marking what did reach the socket (and leaving the registry)
        // must still happen.
        let task = actix_rt::spawn(deliver_queue(
            self.driver.ctx.clone(),
            id,
            self.life.outbox().clone(),
        ));
        ctx.spawn(
            task.into_actor(self)
                .map(|_, act, ctx| act.end_delivery(ctx)),
        );
    }

    fn end_delivery(&mut self, ctx: &mut Context<Conn>) {
        self.driver.delivering = false;
        if std::mem::take(&mut self.driver.redeliver) && self.life.state == State::Online {
            // Frames queued during the round go out before the live frames held behind it.
            self.start_delivery(ctx);
            if self.driver.delivering {
                return;
            }
        }
        while let Some(msg) = self.driver.held.pop_front() {
            self.write_relayed(msg);
        }
    }
}

/// Delivers the frames queued for `id`, oldest first, in rounds of `DELIVERY_BATCH`: write
/// each through the connection's writer, wait for every write's outcome, mark delivered those
/// that reached the socket (a prefix: after a failure the rest stay queued). Always leaves the
/// delivery registry at the end.
async fn deliver_queue(ctx: Arc<RelayContext>, id: String, out: Outbox) {
    let mut total = 0usize;
    loop {
        let target = id.clone();
        let loaded = ctx
            .db
            .call(move |db| db.relay_pending(Some(&target), DELIVERY_BATCH))
            .await;
        let rows = match loaded {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("device {id}: cannot load queued frames: {e}");
                break;
            }
        };
        if rows.is_empty() {
            break;
        }
        let full_batch = rows.len() as i64 >= DELIVERY_BATCH;
        let (written, failed) = write_rows(&ctx, &id, rows, &out).await;
        let n = written.len();
        match ctx.db.call(move |db| db.relay_delivered(&written)).await {
            Ok(_) => total += n,
            Err(e) => {
                log::error!(
                    "device {id}: {n} queued frame(s) were written but not marked delivered \
                     (they will be sent again): {e}"
                );
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
    out: &Outbox,
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
        let Some(rx) = out.write_acked(Bytes::from(bytes)) else {
            closed = true;
            break;
        };
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
    let max = ctx.max_queue;
    let (target, sender, frame) = (r.target.clone(), r.sender.clone(), r.frame.clone());
    let result = ctx
        .db
        .call(move |db| db.relay_enqueue(&target, &sender, &frame, max))
        .await;
    match result {
        Ok(Enqueued::Queued { depth }) => {
            log::info!(
                "device {}: offline; frame from {} queued ({depth} waiting)",
                r.target,
                r.sender
            );
            return true;
        }
        Ok(Enqueued::Full { depth }) => log::warn!(
            "device {}: relay queue full ({depth} frames waiting, [relay] max_queue = {max}); \
             dropped frame from {}: {}",
            r.target,
            r.sender,
            to_hex(&r.frame)
        ),
        Err(e) => log::error!(
            "device {}: cannot queue frame from {} ({e}); dropped: {}",
            r.target,
            r.sender,
            to_hex(&r.frame)
        ),
    }
    false
}

impl Handler<Kick> for Conn {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Self::Context) {
        if self.life.state != State::Online {
            return;
        }
        if self.driver.delivering {
            self.driver.redeliver = true;
        } else {
            self.start_delivery(ctx);
        }
    }
}

impl Handler<Deliver> for Conn {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        if self.driver.delivering && self.driver.held.len() < MAX_HELD {
            self.driver.held.push_back(msg);
            return;
        }
        if self.driver.delivering {
            // Too many held: queue this one behind the others in the database.
            self.driver.redeliver = true;
            let r = Routed {
                target: self.life.id.clone().unwrap_or_default(),
                sender: msg.sender,
                frame: msg.frame,
                _guard: msg.guard,
            };
            actix_rt::spawn(enqueue(self.driver.ctx.clone(), r));
            return;
        }
        self.write_relayed(msg);
    }
}
