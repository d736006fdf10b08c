//! `DeviceActor`: one per TCP connection. It owns the socket, the protocol codec, the
//! registration timeout, the liveness check, the poll timers and the single queue of outbound
//! Modbus work with exactly one request in flight.
//!
//! Life of a connection: `Unregistered` until the codec yields a registration (or the
//! register timeout closes it), then `Online`: heartbeats are acknowledged and trigger the
//! heartbeat polls, timer polls run, operator commands queue behind polls. Silence longer than
//! `heartbeat_interval × max_missed` closes it (`heartbeat_timeout`); a newer connection with
//! the same id closes it (`replaced`); the peer closing or a fatal protocol error ends it
//! (`closed`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{WriteHandler, Writer};
use actix::prelude::*;
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::{BytesCodec, FramedRead};

use crate::command::{CommandError, CommandOutcome, CommandReply, DeviceCommand};
use crate::conn::link::Link;
use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::metrics::METRICS;
use crate::protocol::link::{Expect, Inbound, LinkCodec, LinkOptions, Outbound, Role};
use crate::protocol::modbus::{self, ModbusError, Request, Response};
use crate::protocol::points::{decode_block, decode_registers, BlockData, Decoded, Point};
use crate::protocol::Protocol;
use crate::settings::{LivenessSettings, NamedCommand, PollTrigger, Profile, Require, WriteSpec};
use crate::storage::rows::{ConnEvent, Direction, PacketKind, Row, TelemetryRow};
use crate::storage::{Storage, StoreMany};
use crate::supervisor::{self, ConnId, OfflineReason, Supervisor};

/// Longest a device id may be; anything longer is not an id but garbage.
const MAX_ID_LEN: usize = 64;
/// Operator commands waiting on one device beyond this are refused rather than piling up.
const MAX_QUEUED_COMMANDS: usize = 64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    pub name: String,
    pub protocol: Protocol,
    pub profile: Option<Arc<Profile>>,
    pub liveness: LivenessSettings,
    pub supervisor: Addr<Supervisor>,
    pub storage: Addr<Storage>,
    /// Where `poll.failed` events go.
    pub events: Addr<EventBus>,
}

impl ListenerContext {
    /// A fresh codec for one connection of this listener.
    fn codec(&self) -> Result<Box<dyn LinkCodec>, String> {
        let Role::Polled { server, .. } = self.protocol.role() else {
            return Err(format!(
                "listener {}: protocol {} is not served by DeviceActor",
                self.name, self.protocol
            ));
        };
        let options = LinkOptions {
            registration: self.profile.as_ref().and_then(|p| p.registration.clone()),
            heartbeat: self.profile.as_ref().and_then(|p| p.heartbeat.clone()),
        };
        server(&options).map_err(|e| format!("listener {}: {e}", self.name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unregistered,
    Online,
    Closing,
}

/// One request on the wire, as it must be matched with its answer.
#[derive(Debug, Clone)]
enum Wire {
    Modbus {
        slave: u8,
        request: Request,
    },
    Raw {
        slave: u8,
        function: u8,
        adu: Vec<u8>,
    },
}

impl Wire {
    fn adu(&self) -> Vec<u8> {
        match self {
            Wire::Modbus { slave, request } => request.encode(*slave),
            Wire::Raw { adu, .. } => adu.clone(),
        }
    }

    fn expect(&self) -> Expect {
        match self {
            Wire::Modbus { slave, request } => Expect {
                slave: *slave,
                function: request.function(),
            },
            Wire::Raw {
                slave, function, ..
            } => Expect {
                slave: *slave,
                function: *function,
            },
        }
    }
}

/// An operator command once resolved against the profile.
enum Plan {
    Single(Wire),
    /// Read `point` live; send `then` only if it equals `require.equals`.
    Checked {
        read: Wire,
        point: Point,
        require: Require,
        then: Wire,
    },
}

enum Job {
    Poll(usize),
    // Boxed: polls are the common job and should stay small in the queue.
    Command {
        plan: Box<Plan>,
        reply: CommandReply,
    },
}

struct InFlight {
    job: Job,
    wire: Wire,
    attempt: u32,
    timeout: Duration,
    timer: SpawnHandle,
}

pub struct DeviceActor {
    conn: ConnId,
    peer: SocketAddr,
    ctx: Arc<ListenerContext>,
    codec: Box<dyn LinkCodec>,
    buf: BytesMut,
    writer: Writer<OwnedWriteHalf, io::Error>,
    id: Option<String>,
    state: State,
    close_reason: OfflineReason,
    last_rx: Instant,
    last_seen_report: Instant,
    queue: VecDeque<Job>,
    in_flight: Option<InFlight>,
    /// Per poll of the profile: queued or in flight, so a slow device never piles up polls.
    poll_pending: Vec<bool>,
    register_timer: Option<SpawnHandle>,
    connected_at: DateTime<Utc>,
    /// When the poll in flight was first transmitted (its retries keep it), for the poll
    /// latency metric.
    poll_sent_at: Option<Instant>,
}

impl DeviceActor {
    /// Starts the actor for an accepted connection on the current arbiter.
    pub fn start(stream: TcpStream, peer: SocketAddr, ctx: Arc<ListenerContext>) {
        let codec = match ctx.codec() {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}; closing connection from {peer}");
                return;
            }
        };
        let polls = ctx.profile.as_ref().map_or(0, |p| p.polls.len());
        let (read, write) = stream.into_split();
        DeviceActor::create(move |actx| {
            DeviceActor::add_stream(FramedRead::new(read, BytesCodec::new()), actx);
            let now = Instant::now();
            DeviceActor {
                conn: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
                peer,
                ctx,
                codec,
                buf: BytesMut::with_capacity(512),
                writer: Writer::new(write, actx),
                id: None,
                state: State::Unregistered,
                close_reason: OfflineReason::Closed,
                last_rx: now,
                last_seen_report: now,
                queue: VecDeque::new(),
                in_flight: None,
                poll_pending: vec![false; polls],
                register_timer: None,
                connected_at: Utc::now(),
                poll_sent_at: None,
            }
        });
    }

    /// How log lines name this connection: the device id once known.
    fn who(&self) -> String {
        match &self.id {
            Some(id) => format!("device {id}"),
            None => format!("unregistered connection from {}", self.peer),
        }
    }

    /// This connection's facts, for reporting through the shared [`Link`].
    fn link(&self) -> Link<'_> {
        Link {
            conn: self.conn,
            peer: self.peer,
            id: self.id.as_deref(),
            protocol: self.ctx.protocol,
            profile: self.ctx.profile.as_ref().map(|p| p.name.as_str()),
            connected_at: self.connected_at,
            supervisor: &self.ctx.supervisor,
            storage: &self.ctx.storage,
        }
    }

    fn close(&mut self, reason: OfflineReason, ctx: &mut Context<Self>) {
        if self.state == State::Closing {
            return;
        }
        self.state = State::Closing;
        self.close_reason = reason;
        self.writer.close();
        ctx.stop();
    }

    /// Decodes every complete frame in the buffer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while self.state != State::Closing {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => self.on_frame(frame, ctx),
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{}: protocol error, closing: {e}", self.who());
                    self.close(OfflineReason::Closed, ctx);
                    break;
                }
            }
        }
    }

    fn send(&mut self, out: Outbound) {
        let mut bytes = BytesMut::new();
        match self.codec.encode(out, &mut bytes) {
            Ok(()) if !bytes.is_empty() => self.writer.write(&bytes),
            Ok(()) => {}
            Err(e) => log::error!("{}: cannot encode frame: {e}", self.who()),
        }
    }

    fn on_frame(&mut self, frame: Inbound, ctx: &mut Context<Self>) {
        match (self.state, frame) {
            (State::Unregistered, Inbound::Register { id, raw }) => self.on_register(id, &raw, ctx),
            (State::Unregistered, other) => {
                log::warn!("{}: sent {other:?} before registering; closing", self.who());
                self.close(OfflineReason::Closed, ctx);
            }
            (State::Online, Inbound::Heartbeat { raw }) => {
                log::debug!("{}: heartbeat", self.who());
                self.link()
                    .store_packet(Direction::In, PacketKind::Heartbeat, &raw);
                self.send(Outbound::HeartbeatAck);
                self.queue_polls(|t| matches!(t, PollTrigger::Heartbeat));
                self.pump(ctx);
            }
            (State::Online, Inbound::Data(bytes)) => {
                log::debug!(
                    "{}: data {}",
                    self.who(),
                    crate::protocol::hex::to_hex(&bytes)
                );
                self.link()
                    .store_packet(Direction::In, PacketKind::Data, &bytes);
                self.send(Outbound::DataAck);
            }
            (State::Online, Inbound::Unsolicited(bytes)) => {
                log::debug!(
                    "{}: unsolicited {}",
                    self.who(),
                    crate::protocol::hex::to_hex(&bytes)
                );
                self.link()
                    .store_packet(Direction::In, PacketKind::Unsolicited, &bytes);
            }
            (State::Online, Inbound::Answer(adu)) => {
                self.link()
                    .store_packet(Direction::In, PacketKind::Modbus, &adu);
                self.on_modbus(&adu, ctx);
            }
            (State::Online, Inbound::Malformed { reason, bytes }) => {
                log::warn!(
                    "{}: dropped malformed frame ({reason}): {}",
                    self.who(),
                    crate::protocol::hex::to_hex(&bytes)
                );
            }
            (State::Online, Inbound::Register { id, .. }) => {
                log::warn!("{}: ignored a second registration as {id:?}", self.who());
            }
            (State::Closing, _) => {}
        }
    }

    fn on_register(&mut self, id: String, raw: &[u8], ctx: &mut Context<Self>) {
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control()) {
            log::warn!(
                "{}: rejected registration with invalid id {id:?}; closing",
                self.who()
            );
            self.link()
                .store_event(ConnEvent::Rejected, format!("invalid id {id:?}"));
            self.close(OfflineReason::Closed, ctx);
            return;
        }
        if let Some(t) = self.register_timer.take() {
            ctx.cancel_future(t);
        }
        self.id = Some(id.clone());
        self.state = State::Online;
        self.connected_at = Utc::now();
        self.link()
            .store_packet(Direction::In, PacketKind::Register, raw);
        self.link()
            .store_event(ConnEvent::Connect, format!("listener {}", self.ctx.name));
        self.link().store_device(true);
        log::info!(
            "device {id}: registered from {} on listener {}",
            self.peer,
            self.ctx.name
        );
        self.send(Outbound::RegisterAck);
        self.ctx.supervisor.do_send(supervisor::Registered {
            id,
            conn: self.conn,
            addr: supervisor::Holder::Device(ctx.address()),
            protocol: self.ctx.protocol,
            profile: self.ctx.profile.as_ref().map(|p| p.name.clone()),
            remote_addr: self.peer,
        });
        self.start_liveness(ctx);
        self.start_timer_polls(ctx);
    }

    fn start_liveness(&mut self, ctx: &mut Context<Self>) {
        let live = &self.ctx.liveness;
        let limit = live.heartbeat_interval * live.max_missed.max(1);
        // Checking a few times per interval keeps the offline moment close to the limit.
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

    fn start_timer_polls(&mut self, ctx: &mut Context<Self>) {
        let Some(profile) = self.ctx.profile.clone() else {
            return;
        };
        for (index, poll) in profile.polls.iter().enumerate() {
            if let PollTrigger::Every(every) = poll.trigger {
                // First poll at once: an operator expects values right after a DTU comes online.
                self.queue_poll(index);
                ctx.run_interval(every, move |act, ctx| {
                    act.queue_poll(index);
                    act.pump(ctx);
                });
            }
        }
        self.pump(ctx);
    }

    fn queue_polls(&mut self, which: impl Fn(&PollTrigger) -> bool) {
        let Some(profile) = self.ctx.profile.clone() else {
            return;
        };
        for (index, poll) in profile.polls.iter().enumerate() {
            if which(&poll.trigger) {
                self.queue_poll(index);
            }
        }
    }

    fn queue_poll(&mut self, index: usize) {
        match self.poll_pending.get_mut(index) {
            Some(pending) if !*pending => {
                *pending = true;
                self.queue.push_back(Job::Poll(index));
            }
            _ => {}
        }
    }

    /// Sends the next queued request when none is in flight.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.state != State::Online || self.in_flight.is_some() {
            return;
        }
        while let Some(job) = self.queue.pop_front() {
            let wire = match &job {
                Job::Poll(index) => match self.poll_wire(*index) {
                    Some(w) => w,
                    None => continue,
                },
                Job::Command { reply, .. } if reply.is_closed() => continue,
                Job::Command { plan, .. } => match plan.as_ref() {
                    Plan::Single(w) | Plan::Checked { read: w, .. } => w.clone(),
                },
            };
            let timeout = self
                .ctx
                .profile
                .as_ref()
                .map_or(Duration::from_secs(2), |p| p.response_timeout);
            self.transmit(job, wire, 0, timeout, ctx);
            return;
        }
    }

    fn poll_wire(&self, index: usize) -> Option<Wire> {
        let profile = self.ctx.profile.as_ref()?;
        let poll = profile.polls.get(index)?;
        match Request::read(poll.function, poll.start, poll.count) {
            Ok(request) => Some(Wire::Modbus {
                slave: profile.slave,
                request,
            }),
            Err(e) => {
                log::error!("{}: poll {} cannot be built: {e}", self.who(), poll.name);
                None
            }
        }
    }

    fn transmit(
        &mut self,
        job: Job,
        wire: Wire,
        attempt: u32,
        timeout: Duration,
        ctx: &mut Context<Self>,
    ) {
        let adu = wire.adu();
        log::debug!(
            "{}: request (attempt {}) {}",
            self.who(),
            attempt + 1,
            crate::protocol::hex::to_hex(&adu)
        );
        if matches!(job, Job::Poll(_)) && attempt == 0 {
            METRICS.polls_sent.inc();
            self.poll_sent_at = Some(Instant::now());
        }
        self.codec.set_expect(Some(wire.expect()));
        self.link()
            .store_packet(Direction::Out, PacketKind::Modbus, &adu);
        self.send(Outbound::Request(adu.into()));
        let timer = ctx.run_later(timeout, |act, ctx| act.on_timeout(ctx));
        self.in_flight = Some(InFlight {
            job,
            wire,
            attempt,
            timeout,
            timer,
        });
    }

    fn on_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        let retries = self.ctx.profile.as_ref().map_or(0, |p| p.retries);
        if flight.attempt < retries {
            log::debug!(
                "{}: no answer within {} ms; retrying",
                self.who(),
                flight.timeout.as_millis()
            );
            self.transmit(
                flight.job,
                flight.wire,
                flight.attempt + 1,
                flight.timeout,
                ctx,
            );
            return;
        }
        self.codec.set_expect(None);
        let err = CommandError::Timeout(flight.timeout.as_millis() as u64);
        self.finish(flight.job, Err(err), ctx);
        // Bytes held back as the start of an answer that never completed are now something
        // else (unsolicited data, a heartbeat): decode them instead of waiting for more.
        self.drain(ctx);
    }

    fn on_modbus(&mut self, adu: &[u8], ctx: &mut Context<Self>) {
        let Some(flight) = self.in_flight.as_ref() else {
            log::warn!(
                "{}: Modbus frame with no request in flight, dropped: {}",
                self.who(),
                crate::protocol::hex::to_hex(adu)
            );
            return;
        };
        let parsed = match &flight.wire {
            Wire::Modbus { slave, request } => {
                modbus::rtu::parse_response(*slave, request, adu).map(Answer::Modbus)
            }
            Wire::Raw {
                slave, function, ..
            } => modbus::rtu::parse_raw_response(*slave, *function, adu).map(Answer::Raw),
        };
        let result = match parsed {
            Ok(answer) => Ok(answer),
            Err(e @ ModbusError::Exception { .. }) => Err(CommandError::Modbus(e)),
            Err(e) => {
                // Not the answer to what is in flight (a late answer to an earlier request, or
                // line noise): keep waiting; the timeout retries.
                log::warn!(
                    "{}: answer does not match the request in flight ({e}): {}",
                    self.who(),
                    crate::protocol::hex::to_hex(adu)
                );
                return;
            }
        };
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        ctx.cancel_future(flight.timer);
        self.codec.set_expect(None);
        match result {
            Ok(answer) => self.answered(flight.job, answer, ctx),
            Err(e) => self.finish(flight.job, Err(e), ctx),
        }
    }

    /// A request was answered: a checked command goes on to its write, anything else ends.
    fn answered(&mut self, job: Job, answer: Answer, ctx: &mut Context<Self>) {
        match (job, answer) {
            (Job::Command { plan, reply }, Answer::Modbus(response))
                if matches!(*plan, Plan::Checked { .. }) =>
            {
                if let Plan::Checked {
                    point,
                    require,
                    then,
                    ..
                } = *plan
                {
                    self.check_precondition(&point, require, then, reply, &response, ctx);
                }
            }
            (job, Answer::Modbus(response)) => {
                let values = self.decode(&job, &response);
                let outcome = CommandOutcome::Modbus { response, values };
                self.finish(job, Ok(outcome), ctx);
            }
            (job, Answer::Raw(adu)) => self.finish(job, Ok(CommandOutcome::Raw(adu)), ctx),
        }
    }

    /// The live read of a named command's `require` point came back: write, or refuse.
    fn check_precondition(
        &mut self,
        point: &Point,
        require: Require,
        then: Wire,
        reply: CommandReply,
        response: &Response,
        ctx: &mut Context<Self>,
    ) {
        let actual = match response {
            Response::Registers(regs) => decode_registers(point.ty, point.order, point.bit, regs),
            Response::Bits(bits) => bits.first().map(|b| f64::from(u8::from(*b))),
            _ => None,
        }
        .map(|raw| raw * point.scale + point.offset);
        match actual {
            Some(v) if (v - require.equals).abs() < 1e-9 => {
                // Ahead of everything else, so no poll slips between check and write.
                self.queue.push_front(Job::Command {
                    plan: Box::new(Plan::Single(then)),
                    reply,
                });
            }
            other => {
                log::info!(
                    "{}: command refused: {} is {:?}, needs {} ({})",
                    self.who(),
                    point.name,
                    other,
                    require.equals,
                    require.message
                );
                let _ = reply.send(Err(CommandError::Precondition(require.message)));
            }
        }
        self.pump(ctx);
    }

    /// The profile's points covered by a read answer.
    fn decode(&self, job: &Job, response: &Response) -> Vec<Decoded> {
        let (Some(profile), Some(flight_start)) =
            (self.ctx.profile.as_ref(), read_start(job, self))
        else {
            return Vec::new();
        };
        match response {
            Response::Registers(regs) => {
                decode_block(&profile.points, flight_start, &BlockData::Registers(regs))
            }
            Response::Bits(bits) => {
                decode_block(&profile.points, flight_start, &BlockData::Bits(bits))
            }
            _ => Vec::new(),
        }
    }

    fn finish(
        &mut self,
        job: Job,
        result: Result<CommandOutcome, CommandError>,
        ctx: &mut Context<Self>,
    ) {
        match job {
            Job::Poll(index) => {
                if let Some(p) = self.poll_pending.get_mut(index) {
                    *p = false;
                }
                match &result {
                    Ok(_) => {
                        METRICS.polls_answered.inc();
                        if let Some(sent) = self.poll_sent_at.take() {
                            METRICS.poll_latency.observe(sent.elapsed());
                        }
                    }
                    Err(CommandError::Timeout(_)) => METRICS.polls_timeout.inc(),
                    Err(_) => METRICS.polls_failed.inc(),
                }
                self.poll_sent_at = None;
                let name = self
                    .ctx
                    .profile
                    .as_ref()
                    .and_then(|p| p.polls.get(index))
                    .map_or("?", |p| p.name.as_str())
                    .to_string();
                match result {
                    Ok(CommandOutcome::Modbus { values, .. }) => {
                        if let Some(id) = &self.id {
                            log::debug!("device {id}: poll {name}: {} values", values.len());
                            let at = Utc::now();
                            let rows = values
                                .iter()
                                .map(|d| {
                                    Row::Telemetry(TelemetryRow {
                                        device_id: id.clone(),
                                        point: d.name.clone(),
                                        value: d.value,
                                        raw: d.raw,
                                        at,
                                    })
                                })
                                .collect::<Vec<_>>();
                            if !rows.is_empty() {
                                self.ctx.storage.do_send(StoreMany(rows));
                            }
                            self.ctx.supervisor.do_send(supervisor::Telemetry {
                                id: id.clone(),
                                conn: self.conn,
                                values,
                                at,
                            });
                        }
                    }
                    Ok(CommandOutcome::Raw(_)) => {}
                    Err(e) => {
                        log::warn!("{}: poll {name} failed: {e}", self.who());
                        if let Some(id) = &self.id {
                            self.ctx.events.do_send(Publish(Event::new(
                                EventKind::PollFailed,
                                id,
                                serde_json::json!({ "poll": name, "error": e.to_string() }),
                            )));
                        }
                    }
                }
            }
            Job::Command { reply, .. } => {
                if let Err(e) = &result {
                    log::info!("{}: command failed: {e}", self.who());
                }
                // The caller may have given up waiting; that is not an error here.
                let _ = reply.send(result);
            }
        }
        self.pump(ctx);
    }

    /// Resolves an operator command against this device's profile.
    fn plan(&self, command: DeviceCommand) -> Result<Plan, CommandError> {
        let profile = self.ctx.profile.as_ref();
        match command {
            DeviceCommand::Modbus(request) => {
                let profile = profile.ok_or_else(|| {
                    CommandError::Invalid("this device has no Modbus profile".into())
                })?;
                request
                    .validate()
                    .map_err(|e| CommandError::Invalid(e.to_string()))?;
                Ok(Plan::Single(Wire::Modbus {
                    slave: profile.slave,
                    request,
                }))
            }
            DeviceCommand::Raw(adu) => match (adu.first(), adu.get(1)) {
                (Some(&slave), Some(&function))
                    if adu.len() >= 4 && adu.len() <= modbus::rtu::MAX_ADU =>
                {
                    if !modbus::rtu::check_crc(&adu) {
                        return Err(CommandError::Invalid("raw frame has a bad CRC".into()));
                    }
                    Ok(Plan::Single(Wire::Raw {
                        slave,
                        function,
                        adu,
                    }))
                }
                _ => Err(CommandError::Invalid(format!(
                    "raw frame must be 4..={} bytes with CRC",
                    modbus::rtu::MAX_ADU
                ))),
            },
            DeviceCommand::Named(name) => {
                let profile = profile.ok_or_else(|| {
                    CommandError::Invalid("this device has no Modbus profile".into())
                })?;
                let command = profile.command(&name).ok_or_else(|| {
                    CommandError::Invalid(format!(
                        "profile {} has no command {name:?}",
                        profile.name
                    ))
                })?;
                named_plan(profile, command)
            }
        }
    }
}

/// The start address of the read a job made, for decoding its answer.
fn read_start(job: &Job, act: &DeviceActor) -> Option<u16> {
    let request = match job {
        Job::Poll(index) => {
            let poll = act.ctx.profile.as_ref()?.polls.get(*index)?;
            return Some(poll.start);
        }
        Job::Command { plan, .. } => match plan.as_ref() {
            Plan::Single(Wire::Modbus { request, .. }) => request,
            _ => return None,
        },
    };
    match request {
        Request::ReadCoils { start, .. }
        | Request::ReadDiscreteInputs { start, .. }
        | Request::ReadHoldingRegisters { start, .. }
        | Request::ReadInputRegisters { start, .. } => Some(*start),
        _ => None,
    }
}

fn named_plan(profile: &Profile, command: &NamedCommand) -> Result<Plan, CommandError> {
    let request = match &command.write {
        WriteSpec::Register { address, value } => Request::WriteSingleRegister {
            address: *address,
            value: *value,
        },
        WriteSpec::Registers { address, values } => Request::WriteMultipleRegisters {
            address: *address,
            values: values.clone(),
        },
        WriteSpec::Coil { address, value } => Request::WriteSingleCoil {
            address: *address,
            value: *value,
        },
    };
    let then = Wire::Modbus {
        slave: profile.slave,
        request,
    };
    let Some(require) = &command.require else {
        return Ok(Plan::Single(then));
    };
    let point = profile.point(&require.point).ok_or_else(|| {
        CommandError::Invalid(format!(
            "command {} requires unknown point {}",
            command.name, require.point
        ))
    })?;
    // Read the point through the function of a poll that covers it, as polls do.
    let width = point.ty.registers();
    let function = profile
        .polls
        .iter()
        .find(|p| {
            let end = u32::from(p.start) + u32::from(p.count);
            p.start <= point.address && u32::from(point.address) + u32::from(width) <= end
        })
        .map_or(3, |p| p.function);
    let read = Request::read(function, point.address, width)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    Ok(Plan::Checked {
        read: Wire::Modbus {
            slave: profile.slave,
            request: read,
        },
        point: point.clone(),
        require: require.clone(),
        then,
    })
}

enum Answer {
    Modbus(Response),
    Raw(Vec<u8>),
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAX_QUEUED_COMMANDS * 2);
        METRICS.connections.inc();
        log::debug!(
            "connection from {} on listener {}",
            self.peer,
            self.ctx.name
        );
        let timeout = self.ctx.liveness.register_timeout;
        self.register_timer = Some(ctx.run_later(timeout, move |act, ctx| {
            if act.state == State::Unregistered {
                log::warn!(
                    "{}: no registration within {} ms; closing",
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
        METRICS.connections.dec();
        self.link().went_offline(self.close_reason);
        // Commands still waiting were never written to the device: they end as `Offline` (the
        // offline queue puts such a command back). The one in flight, if any, may have reached
        // the device: it ends as `Disconnected` when its reply sender drops here.
        let id = self.id.clone().unwrap_or_default();
        for job in self.queue.drain(..) {
            if let Job::Command { reply, .. } = job {
                let _ = reply.send(Err(CommandError::Offline(id.clone())));
            }
        }
    }
}

impl StreamHandler<Result<BytesMut, io::Error>> for DeviceActor {
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
        self.drain(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        log::info!("{}: connection closed by peer", self.who());
        self.close(OfflineReason::Closed, ctx);
    }
}

impl WriteHandler<io::Error> for DeviceActor {
    fn error(&mut self, err: io::Error, ctx: &mut Self::Context) -> Running {
        log::info!("{}: write error: {err}; closing", self.who());
        self.close(OfflineReason::Closed, ctx);
        Running::Stop
    }
}

/// Closes the connection; the supervisor sends it when a newer connection takes the id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: OfflineReason,
}

impl Handler<Close> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        log::info!("{}: closing ({})", self.who(), msg.reason.as_str());
        self.close(msg.reason, ctx);
    }
}

/// Runs an operator command in turn with the polls.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: DeviceCommand,
    pub reply: CommandReply,
}

impl Handler<Execute> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        let waiting = self
            .queue
            .iter()
            .filter(|j| matches!(j, Job::Command { .. }))
            .count();
        if waiting >= MAX_QUEUED_COMMANDS {
            let _ = msg.reply.send(Err(CommandError::Invalid(format!(
                "{} commands already wait on this device",
                waiting
            ))));
            return;
        }
        match self.plan(msg.command) {
            Ok(plan) => {
                self.queue.push_back(Job::Command {
                    plan: Box::new(plan),
                    reply: msg.reply,
                });
                self.pump(ctx);
            }
            Err(e) => {
                let _ = msg.reply.send(Err(e));
            }
        }
    }
}
