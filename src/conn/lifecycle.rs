//! The life every device connection shares, written once: one actor per accepted socket,
//! generic over its [`Driver`], the trait each kind of connection implements.
//!
//! `Unregistered` until the driver recognises a registration (or the register timeout closes
//! it), then `Online`: silence longer than `heartbeat_interval × max_missed` closes it
//! (`heartbeat_timeout`); a newer connection with the same id closes it (`replaced`); the peer
//! closing, a write failing or a fatal protocol error ends it (`closed`). Whatever the driver,
//! the supervisor and storage learn the same facts through [`Link`].
//!
//! Writes go out in order through an [`Outbox`]: straight to the socket while the kernel takes
//! them, else through a writer task; a write can report whether it reached the socket, so a
//! relayed frame counts as delivered only once it did.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{BytesCodec, FramedRead};

use crate::conn::limits::Permit;
use crate::conn::link::Link;
use crate::conn::next_conn_id;
use crate::metrics::METRICS;
use crate::protocol::link::CodecError;
use crate::protocol::Protocol;
use crate::settings::LivenessSettings;
use crate::storage::packet_log::PacketLog;
use crate::storage::rows::{ConnEvent, Direction, PacketKind, DEVICE_ID_MAX};
use crate::storage::Storage;
use crate::supervisor::messages::{Close, ConnHandle, ConnId, OfflineReason, Registered, Service};
use crate::supervisor::Supervisor;

/// What a kind of connection adds to the lifecycle: how its bytes decode, what it does with
/// each item, what the supervisor may ask of it, and what it ends with. A driver is needed per
/// kind of *behaviour*, not per wire protocol: every request/response link protocol is driven
/// by [`crate::conn::device`] through its `LinkCodec`; `$TTMS` relaying is
/// [`crate::conn::relay`].
pub trait Driver: Sized + Unpin + 'static {
    /// What the driver's codec yields.
    type Item;

    /// How log lines name a connection of this kind before it has registered.
    const UNREGISTERED: &'static str;

    /// The next item at the start of `buf`, consuming its bytes; `Ok(None)` until one is
    /// complete; `Err` closes the connection.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError>;

    /// Whether `item` shows the device is alive. Bytes alone do not: a connection trickling
    /// bytes that never make a frame, or only frames the codec refused, goes silent.
    fn sign_of_life(item: &Self::Item) -> bool;

    /// One item arrived. Registration is the driver's to recognise: it calls
    /// [`Connection::register`].
    fn on_item(conn: &mut Connection<Self>, item: Self::Item, ctx: &mut Context<Connection<Self>>);

    /// The connection has registered and the supervisor has been told; start what runs while
    /// it is online.
    fn on_registered(conn: &mut Connection<Self>, ctx: &mut Context<Connection<Self>>);

    /// What the supervisor can ask of this connection besides closing it.
    fn service(ctx: &mut Context<Connection<Self>>) -> Service;

    /// The connection has stopped: end or hand back whatever is still pending.
    fn on_stopped(conn: &mut Connection<Self>);

    /// How many messages may wait in the connection's mailbox.
    fn mailbox_capacity() -> usize;
}

/// What every connection of one listener shares, whatever its driver.
#[derive(Clone)]
pub struct ListenerShared {
    pub name: String,
    pub protocol: Protocol,
    /// The profile its devices are polled with (none for relay terminals).
    pub profile: Option<String>,
    pub liveness: LivenessSettings,
    pub supervisor: Addr<Supervisor>,
    pub storage: Addr<Storage>,
    pub packets: PacketLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Unregistered,
    Online,
    Closing,
}

/// One connection: the lifecycle's state in `life`, the driver's in `driver`.
pub struct Connection<D: Driver> {
    pub life: Life,
    pub driver: D,
    buf: BytesMut,
}

/// The lifecycle's state of one connection.
pub struct Life {
    pub conn: ConnId,
    pub peer: SocketAddr,
    pub listener: Arc<ListenerShared>,
    /// The device id, once registered.
    pub id: Option<String>,
    pub state: State,
    close_reason: OfflineReason,
    last_rx: Instant,
    last_seen_report: Instant,
    register_timer: Option<SpawnHandle>,
    connected_at: DateTime<Utc>,
    outbox: Outbox,
    unregistered: &'static str,
    /// Its place within `[limits]`, given back when the connection ends.
    permit: Permit,
}

impl Life {
    /// How log lines name this connection: the device id once known.
    pub fn who(&self) -> String {
        match &self.id {
            Some(id) => format!("device {id}"),
            None => format!("{} from {}", self.unregistered, self.peer),
        }
    }

    /// This connection's facts, for reporting.
    pub fn link(&self) -> Link<'_> {
        Link {
            conn: self.conn,
            peer: self.peer,
            id: self.id.as_deref(),
            protocol: self.listener.protocol,
            profile: self.listener.profile.as_deref(),
            unit: None,
            connected_at: self.connected_at,
            supervisor: &self.listener.supervisor,
            storage: &self.listener.storage,
            packets: &self.listener.packets,
        }
    }

    /// Why the connection ended (or will end, once closing).
    pub fn close_reason(&self) -> OfflineReason {
        self.close_reason
    }

    /// The connection's write path.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Ends the connection: what is queued is still written, then the socket is shut down.
    pub fn close<A>(&mut self, reason: OfflineReason, ctx: &mut A::Context)
    where
        A: Actor,
        A::Context: ActorContext,
    {
        if self.state == State::Closing {
            return;
        }
        self.state = State::Closing;
        self.close_reason = reason;
        self.outbox.close();
        ctx.stop();
    }
}

/// Initial read buffer of a connection (it grows as a burst needs).
const READ_BUFFER: usize = 512;

impl<D: Driver> Connection<D> {
    /// Starts the actor for an accepted connection on the current arbiter.
    pub fn start(
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        listener: Arc<ListenerShared>,
        driver: D,
    ) {
        let (read, write) = stream.into_split();
        Connection::create(move |ctx| {
            // A DTU's packets are tens of bytes: a small read buffer that grows when a
            // burst needs it, not the 8 KiB default held by each of 19,000 idle sockets.
            Connection::add_stream(
                FramedRead::with_capacity(read, BytesCodec::new(), READ_BUFFER),
                ctx,
            );
            let now = Instant::now();
            Connection {
                life: Life {
                    conn: next_conn_id(),
                    peer,
                    listener,
                    id: None,
                    state: State::Unregistered,
                    close_reason: OfflineReason::Closed,
                    last_rx: now,
                    last_seen_report: now,
                    register_timer: None,
                    connected_at: Utc::now(),
                    outbox: Outbox::new(write, ctx.address().recipient()),
                    unregistered: D::UNREGISTERED,
                    permit,
                },
                driver,
                buf: BytesMut::with_capacity(512),
            }
        });
    }

    /// The device registered as `id`: history, device state and the supervisor learn it, and
    /// the liveness check starts. `raw` is the registration as it arrived, where it is worth
    /// keeping. An id that cannot be one (empty, too long, control characters) is refused and
    /// the connection closed: answers false.
    pub fn register(
        &mut self,
        id: String,
        raw: Option<&[u8]>,
        ctx: &mut Context<Connection<D>>,
    ) -> bool {
        if id.is_empty() || id.len() > DEVICE_ID_MAX || id.chars().any(|c| c.is_control()) {
            log::warn!(
                "{}: rejected registration with invalid id {id:?}; closing",
                self.life.who()
            );
            self.life
                .link()
                .store_event(ConnEvent::Rejected, format!("invalid id {id:?}"));
            self.close(OfflineReason::Closed, ctx);
            return false;
        }
        if let Some(t) = self.life.register_timer.take() {
            ctx.cancel_future(t);
        }
        self.life.id = Some(id.clone());
        self.life.state = State::Online;
        self.life.permit.registered();
        self.life.connected_at = Utc::now();
        let link = self.life.link();
        if let Some(raw) = raw {
            link.store_packet(Direction::In, PacketKind::Register, raw);
        }
        link.store_event(
            ConnEvent::Connect,
            format!("listener {}", self.life.listener.name),
        );
        link.store_device(true);
        log::info!(
            "device {id}: registered from {} on listener {}",
            self.life.peer,
            self.life.listener.name
        );
        let listener = &self.life.listener;
        listener.supervisor.do_send(Registered {
            id,
            conn: self.life.conn,
            handle: ConnHandle {
                close: ctx.address().recipient(),
                service: D::service(ctx),
            },
            protocol: listener.protocol,
            profile: listener.profile.clone(),
            remote_addr: self.life.peer,
            unit: None,
        });
        self.start_liveness(ctx);
        D::on_registered(self, ctx);
        true
    }

    /// Sent something before registering: refused, recorded and closed.
    pub fn refuse_unregistered(&mut self, what: String, ctx: &mut Context<Connection<D>>) {
        log::warn!(
            "{}: sent {what} before registering; closing",
            self.life.who()
        );
        self.life
            .link()
            .store_event(ConnEvent::Rejected, format!("{what} before registering"));
        self.close(OfflineReason::Closed, ctx);
    }

    pub fn close(&mut self, reason: OfflineReason, ctx: &mut Context<Connection<D>>) {
        self.life.close::<Self>(reason, ctx);
    }

    /// Decodes and handles every complete item in the buffer.
    pub fn drain(&mut self, ctx: &mut Context<Connection<D>>) {
        while self.life.state != State::Closing {
            match self.driver.decode(&mut self.buf) {
                Ok(Some(item)) => {
                    if D::sign_of_life(&item) {
                        let now = Instant::now();
                        self.life.last_rx = now;
                        let mut last = self.life.last_seen_report;
                        self.life.link().seen(&mut last, now);
                        self.life.last_seen_report = last;
                    }
                    D::on_item(self, item, ctx)
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{}: protocol error, closing: {e}", self.life.who());
                    if self.life.id.is_none() {
                        self.life
                            .link()
                            .store_event(ConnEvent::Rejected, format!("protocol error: {e}"));
                    }
                    self.close(OfflineReason::Closed, ctx);
                    break;
                }
            }
        }
    }

    fn start_liveness(&mut self, ctx: &mut Context<Connection<D>>) {
        let live = &self.life.listener.liveness;
        let limit = live.heartbeat_interval * live.max_missed.max(1);
        // Checking a few times per interval keeps the offline moment close to the limit.
        let every =
            (live.heartbeat_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(every, move |act, ctx| {
            let silent = act.life.last_rx.elapsed();
            if silent > limit {
                log::info!(
                    "{}: silent for {} ms (limit {} ms); closing",
                    act.life.who(),
                    silent.as_millis(),
                    limit.as_millis()
                );
                act.close(OfflineReason::HeartbeatTimeout, ctx);
            }
        });
    }
}

impl<D: Driver> Actor for Connection<D> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(D::mailbox_capacity());
        METRICS.connections.inc();
        log::debug!(
            "{} from {} on listener {}",
            D::UNREGISTERED,
            self.life.peer,
            self.life.listener.name
        );
        let timeout = self.life.listener.liveness.register_timeout;
        self.life.register_timer = Some(ctx.run_later(timeout, move |act, ctx| {
            if act.life.state == State::Unregistered {
                log::warn!(
                    "{}: no registration within {} ms; closing",
                    act.life.who(),
                    timeout.as_millis()
                );
                act.life.link().store_event(
                    ConnEvent::Rejected,
                    format!("no registration within {} ms", timeout.as_millis()),
                );
                act.close(OfflineReason::Closed, ctx);
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        METRICS.connections.dec();
        D::on_stopped(self);
        self.life.link().went_offline(self.life.close_reason);
    }
}

impl<D: Driver> StreamHandler<Result<BytesMut, io::Error>> for Connection<D> {
    fn handle(&mut self, item: Result<BytesMut, io::Error>, ctx: &mut Self::Context) {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                log::info!("{}: read error: {e}; closing", self.life.who());
                self.close(OfflineReason::Closed, ctx);
                return;
            }
        };
        self.buf.extend_from_slice(&chunk);
        self.drain(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        log::info!("{}: connection closed by peer", self.life.who());
        self.close(OfflineReason::Closed, ctx);
    }
}

impl<D: Driver> Handler<Close> for Connection<D> {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        log::info!("{}: closing ({})", self.life.who(), msg.reason.as_str());
        self.close(msg.reason, ctx);
    }
}

/// The writer task failed to write to the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteFailed(String);

impl<D: Driver> Handler<WriteFailed> for Connection<D> {
    type Result = ();

    fn handle(&mut self, msg: WriteFailed, ctx: &mut Self::Context) {
        log::info!("{}: write error: {}; closing", self.life.who(), msg.0);
        self.close(OfflineReason::Closed, ctx);
    }
}

/// One write for the writer task; `done` learns whether it reached the socket.
struct WriteJob {
    bytes: Bytes,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The write path of one connection, shared by its actor and the tasks it starts (a relay
/// delivery writes from a task of its own). While nothing waits, bytes go to the socket at
/// once (`try_write`, no task switch: the common case of a small request to a DTU); what the
/// kernel does not take at once, and everything after it, goes through a writer task in
/// order. Once closed, nothing more is written; the last holder of the write half dropping it
/// shuts the socket's write side down.
#[derive(Clone)]
pub struct Outbox(Rc<RefCell<OutboxState>>);

struct OutboxState {
    half: Option<Arc<OwnedWriteHalf>>,
    jobs: Option<mpsc::UnboundedSender<WriteJob>>,
    /// Jobs handed to the task and not yet written: while any are, writes must queue too.
    pending: Arc<AtomicUsize>,
    failed: Recipient<WriteFailed>,
}

impl Outbox {
    fn new(half: OwnedWriteHalf, failed: Recipient<WriteFailed>) -> Outbox {
        Outbox(Rc::new(RefCell::new(OutboxState {
            half: Some(Arc::new(half)),
            jobs: None,
            pending: Arc::new(AtomicUsize::new(0)),
            failed,
        })))
    }

    /// Queues `bytes`; false when the connection is closing (nothing was queued).
    pub fn write(&self, bytes: Bytes) -> bool {
        self.0.borrow_mut().write(bytes, None)
    }

    /// Queues `bytes`; the receiver learns whether they reached the socket. `None` when the
    /// connection is closing (nothing was queued).
    pub fn write_acked(&self, bytes: Bytes) -> Option<oneshot::Receiver<Result<(), String>>> {
        let (tx, rx) = oneshot::channel();
        self.0.borrow_mut().write(bytes, Some(tx)).then_some(rx)
    }

    /// No more writes: the task writes what is queued, then the socket is shut down.
    fn close(&self) {
        let mut state = self.0.borrow_mut();
        state.half = None;
        state.jobs = None;
    }
}

impl OutboxState {
    fn write(
        &mut self,
        mut bytes: Bytes,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) -> bool {
        let Some(half) = self.half.clone() else {
            return false;
        };
        if self.pending.load(Ordering::SeqCst) == 0 {
            match half.try_write(&bytes) {
                Ok(n) if n == bytes.len() => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    return true;
                }
                Ok(n) => {
                    let _ = bytes.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    let message = e.to_string();
                    if let Some(done) = done {
                        let _ = done.send(Err(message.clone()));
                    }
                    self.failed.do_send(WriteFailed(message));
                    self.half = None;
                    self.jobs = None;
                    return true;
                }
            }
        }
        let jobs = self.jobs.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            actix_rt::spawn(write_loop(
                half,
                rx,
                self.pending.clone(),
                self.failed.clone(),
            ));
            tx
        });
        self.pending.fetch_add(1, Ordering::SeqCst);
        if jobs.send(WriteJob { bytes, done }).is_err() {
            // The task ended on a failed write; the actor is closing.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        true
    }
}

/// Writes jobs in order; reports each outcome; the first failure ends the connection (jobs
/// still queued are dropped: their acks report failure).
async fn write_loop(
    half: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    pending: Arc<AtomicUsize>,
    failed: Recipient<WriteFailed>,
) {
    while let Some(job) = rx.recv().await {
        let result = write_all(&half, &job.bytes).await;
        pending.fetch_sub(1, Ordering::SeqCst);
        let error = result.as_ref().err().map(|e| e.to_string());
        if let Some(done) = job.done {
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
        if let Some(e) = error {
            failed.do_send(WriteFailed(e));
            return;
        }
    }
}

async fn write_all(half: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        half.writable().await?;
        match half.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
