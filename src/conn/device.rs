//! The driver of polled devices: a DTU in front of a Modbus slave, or of several on an
//! RS-485 bus (units, [`crate::conn::target`]), whatever link protocol frames its bytes (a
//! [`LinkCodec`] from the protocol list).
//!
//! Once registered, heartbeats are acknowledged and trigger the heartbeat polls, timer polls
//! run, and operator commands queue behind polls; a device that logs out is answered and its
//! connection closed. All outbound work — every unit's — goes through one queue with exactly
//! one request in flight, as a bus carries one request at a time; its answer is matched by
//! the rules of the target's meter protocol ([`Wire`]: slave, function, length and CRC for
//! RTU, transaction and unit for Modbus TCP, address, control code and identifier for DL/T
//! 645); a timeout retries per profile, then fails it and lets the next one go. A DL/T 645
//! meter with `address = "auto"` has its address read (broadcast) before its first request.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::Utc;

use crate::command::{CommandError, CommandOutcome, CommandReply};
use crate::conn::lifecycle::{Connection, Driver, State};
use crate::conn::link::Link;
use crate::conn::plan::{Answer, Mismatch, Plan, Wire};
use crate::conn::target::{Change, Target};
use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::metrics::METRICS;
use crate::protocol::dlt645::formats;
use crate::protocol::dlt645::{Di, Dlt645Error};
use crate::protocol::hex::to_hex;
use crate::protocol::link::{CodecError, Expect, Inbound, LinkCodec, Outbound};
use crate::protocol::modbus::{self, Response};
use crate::protocol::points::{decode_block, decode_registers, BlockData, Decoded, Point};
use crate::settings::{Meter, PollRead, PollTrigger, Profile, Require};
use crate::storage::rows::{ConnEvent, Direction, PacketKind, Row, TelemetryRow};
use crate::storage::StoreMany;
use crate::supervisor::messages::{
    ConnHandle, Execute, OfflineReason, Registered, Service, Telemetry,
};

/// Operator commands waiting on one device beyond this are refused rather than piling up.
const MAX_QUEUED_COMMANDS: usize = 64;

/// What every polled connection of one listener shares besides the lifecycle's facts.
pub struct PollContext {
    pub profile: Option<Arc<Profile>>,
    /// Where `poll.failed` events go.
    pub events: Addr<EventBus>,
}

enum Job {
    /// Poll `poll` of target `target`.
    Poll { target: usize, poll: usize },
    // Boxed: polls are the common job and should stay small in the queue.
    Command {
        /// The target it goes to; None: the DTU itself, when its slaves are units.
        target: Option<usize>,
        plan: Box<Plan>,
        reply: CommandReply,
    },
}

impl Job {
    fn target(&self) -> Option<usize> {
        match self {
            Job::Poll { target, .. } => Some(*target),
            Job::Command { target, .. } => *target,
        }
    }
}

struct InFlight {
    job: Job,
    wire: Wire,
    attempt: u32,
    retries: u32,
    timeout: Duration,
    timer: SpawnHandle,
}

/// The state of one polled connection.
pub struct PollDriver {
    ctx: Arc<PollContext>,
    codec: Box<dyn LinkCodec>,
    /// What it polls: the DTU's slave, or its units.
    targets: Vec<Target>,
    queue: VecDeque<Job>,
    in_flight: Option<InFlight>,
    /// When the poll in flight was first transmitted (its retries keep it), for the poll
    /// latency metric.
    poll_sent_at: Option<Instant>,
    /// The Modbus TCP transaction id of the next request (each transmission its own).
    next_transaction: u16,
}

impl PollDriver {
    pub fn new(ctx: Arc<PollContext>, codec: Box<dyn LinkCodec>) -> PollDriver {
        let targets = ctx.profile.as_ref().map(Target::of).unwrap_or_default();
        let mut codec = codec;
        // Answers the DTU may send up unasked, for a link that must cut them out of its bytes.
        let passive: Vec<Expect> = targets
            .iter()
            .filter(|t| t.profile.meter == Meter::ModbusRtu)
            .flat_map(|t| {
                t.profile
                    .polls
                    .iter()
                    .filter(|p| p.trigger == PollTrigger::Passive)
                    .filter_map(|p| p.block())
                    .map(|b| Expect::Rtu {
                        slave: t.slave,
                        function: b.function,
                        len: modbus::Request::read(b.function, b.start, b.count)
                            .ok()
                            .map(|r| r.answer_pdu_len() + 3),
                    })
            })
            .collect();
        codec.set_passive(&passive);
        PollDriver {
            ctx,
            codec,
            targets,
            queue: VecDeque::new(),
            in_flight: None,
            poll_sent_at: None,
            next_transaction: 1,
        }
    }

    /// The DTU's profile: its timing, and its units if it has any.
    fn profile(&self) -> Option<&Profile> {
        self.ctx.profile.as_deref()
    }
}

type Conn = Connection<PollDriver>;

impl Driver for PollDriver {
    type Item = Inbound;

    const UNREGISTERED: &'static str = "unregistered connection";

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        self.codec.decode(buf)
    }

    fn sign_of_life(item: &Inbound) -> bool {
        !matches!(item, Inbound::Malformed { .. })
    }

    fn on_item(conn: &mut Conn, item: Inbound, ctx: &mut Context<Conn>) {
        match (conn.life.state, item) {
            (State::Closing, _) => {}
            (State::Unregistered, Inbound::Register { id, raw }) => {
                conn.register(id, Some(&raw), ctx);
            }
            (State::Unregistered, other) => conn.refuse_unregistered(format!("{other:?}"), ctx),
            (State::Online, Inbound::Heartbeat { raw }) => {
                log::debug!("{}: heartbeat", conn.life.who());
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Heartbeat, &raw);
                conn.send(Outbound::HeartbeatAck);
                conn.queue_polls(|t| matches!(t, PollTrigger::Heartbeat));
                conn.pump(ctx);
            }
            (State::Online, Inbound::Data(bytes)) => {
                log::debug!("{}: data {}", conn.life.who(), to_hex(&bytes));
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Data, &bytes);
                conn.send(Outbound::DataAck);
            }
            (State::Online, Inbound::Unsolicited(bytes)) => {
                log::debug!("{}: unsolicited {}", conn.life.who(), to_hex(&bytes));
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Unsolicited, &bytes);
            }
            (State::Online, Inbound::Answer(adu)) => {
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Modbus, &adu);
                conn.on_answer(&adu, ctx);
            }
            (State::Online, Inbound::Malformed { reason, bytes }) => {
                log::warn!(
                    "{}: dropped malformed frame ({reason}): {}",
                    conn.life.who(),
                    to_hex(&bytes)
                );
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Malformed, &bytes);
            }
            (State::Online, Inbound::Logout { raw }) => {
                // The device says it is leaving: answer, and let the connection end as any
                // closed one does (its commands end, the device goes offline as `closed`).
                log::info!("{}: logged out; closing", conn.life.who());
                conn.life
                    .link()
                    .store_packet(Direction::In, PacketKind::Logout, &raw);
                conn.send(Outbound::LogoutAck);
                conn.close(OfflineReason::Closed, ctx);
            }
            (State::Online, Inbound::Register { id, .. }) => {
                log::warn!(
                    "{}: ignored a second registration as {id:?}",
                    conn.life.who()
                );
            }
        }
    }

    fn on_registered(conn: &mut Conn, ctx: &mut Context<Conn>) {
        conn.send(Outbound::RegisterAck);
        let dtu = conn.life.id.clone().unwrap_or_default();
        for t in &mut conn.driver.targets {
            t.id = match t.unit {
                Some(_) => format!("{dtu}.{}", t.slave),
                None => dtu.clone(),
            };
        }
        conn.start_timer_polls(ctx);
    }

    fn service(ctx: &mut Context<Conn>) -> Service {
        Service::Commands(ctx.address().recipient())
    }

    fn on_stopped(conn: &mut Conn) {
        // Commands still waiting were never written to the device: they end as `Offline` (the
        // offline queue puts such a command back). The one in flight, if any, may have reached
        // the device: it ends as `Disconnected` when its reply sender drops here.
        let id = conn.life.id.clone().unwrap_or_default();
        for job in conn.driver.queue.drain(..) {
            if let Job::Command { reply, .. } = job {
                let _ = reply.send(Err(CommandError::Offline(id.clone())));
            }
        }
        // Its units end with it, for the same reason.
        let reason = conn.life.close_reason();
        for i in 0..conn.driver.targets.len() {
            if conn.driver.targets[i].is_online_unit() {
                conn.unit_link(i).went_offline(reason);
            }
        }
    }

    fn mailbox_capacity() -> usize {
        MAX_QUEUED_COMMANDS * 2
    }
}

impl Conn {
    fn send(&mut self, out: Outbound) {
        let mut bytes = BytesMut::new();
        match self.driver.codec.encode(out, &mut bytes) {
            Ok(()) if !bytes.is_empty() => {
                self.life.outbox().write(bytes.freeze());
            }
            Ok(()) => {}
            Err(e) => log::error!("{}: cannot encode frame: {e}", self.life.who()),
        }
    }

    fn start_timer_polls(&mut self, ctx: &mut Context<Conn>) {
        for target in 0..self.driver.targets.len() {
            let profile = self.driver.targets[target].profile.clone();
            for (poll, p) in profile.polls.iter().enumerate() {
                if let PollTrigger::Every(every) = p.trigger {
                    // First poll at once: an operator expects values right after a DTU comes
                    // online.
                    self.queue_poll(target, poll);
                    ctx.run_interval(every, move |act, ctx| {
                        act.queue_poll(target, poll);
                        act.pump(ctx);
                    });
                }
            }
        }
        self.pump(ctx);
    }

    fn queue_polls(&mut self, which: impl Fn(&PollTrigger) -> bool) {
        for target in 0..self.driver.targets.len() {
            let profile = self.driver.targets[target].profile.clone();
            for (poll, p) in profile.polls.iter().enumerate() {
                if which(&p.trigger) {
                    self.queue_poll(target, poll);
                }
            }
        }
    }

    fn queue_poll(&mut self, target: usize, poll: usize) {
        let driver = &mut self.driver;
        let pending = driver
            .targets
            .get_mut(target)
            .and_then(|t| t.poll_pending.get_mut(poll));
        if let Some(pending) = pending.filter(|p| !**p) {
            *pending = true;
            driver.queue.push_back(Job::Poll { target, poll });
        }
    }

    fn poll_ended(&mut self, target: usize, poll: usize) {
        let pending = self
            .driver
            .targets
            .get_mut(target)
            .and_then(|t| t.poll_pending.get_mut(poll));
        if let Some(p) = pending {
            *p = false;
        }
    }

    /// Sends the next queued request when none is in flight.
    fn pump(&mut self, ctx: &mut Context<Conn>) {
        if self.life.state != State::Online || self.driver.in_flight.is_some() {
            return;
        }
        let now = Instant::now();
        while let Some(job) = self.driver.queue.pop_front() {
            let wire = match &job {
                Job::Poll { target, poll } => {
                    let (target, poll) = (*target, *poll);
                    let wire = self.poll_wire(target, poll, now);
                    match wire {
                        Some(w) => w,
                        None => {
                            self.poll_ended(target, poll);
                            continue;
                        }
                    }
                }
                Job::Command { reply, .. } if reply.is_closed() => continue,
                Job::Command { plan, .. } => plan.first().clone(),
            };
            // A DL/T 645 meter whose address is still unknown is asked for it first.
            let known = job
                .target()
                .and_then(|t| self.driver.targets.get(t))
                .and_then(|t| t.meter_address);
            let wire = wire.addressed(known);
            let (timeout, configured) = self
                .driver
                .profile()
                .map_or((Duration::from_secs(2), 0), |p| {
                    (p.response_timeout, p.retries)
                });
            let retries = match job.target().and_then(|t| self.driver.targets.get(t)) {
                Some(t) => t.retries(configured),
                None => configured,
            };
            self.transmit(job, wire, 0, retries, timeout, ctx);
            return;
        }
    }

    /// The request of a poll, unless its target is a silent unit not due for a probe.
    fn poll_wire(&mut self, target: usize, poll: usize, now: Instant) -> Option<Wire> {
        let t = self.driver.targets.get_mut(target)?;
        if !t.may_poll(now) {
            return None;
        }
        let p = t.profile.polls.get(poll)?;
        match Wire::poll(t.profile.meter, t.slave, t.meter_address, p) {
            Ok(wire) => Some(wire),
            Err(e) => {
                log::error!("device {}: poll {} cannot be built: {e}", t.id, p.name);
                None
            }
        }
    }

    fn transmit(
        &mut self,
        job: Job,
        mut wire: Wire,
        attempt: u32,
        retries: u32,
        timeout: Duration,
        ctx: &mut Context<Conn>,
    ) {
        wire.stamp(self.driver.next_transaction);
        self.driver.next_transaction = self.driver.next_transaction.wrapping_add(1);
        let adu = wire.adu();
        log::debug!(
            "{}: request (attempt {}) {}",
            self.life.who(),
            attempt + 1,
            to_hex(&adu)
        );
        if matches!(job, Job::Poll { .. }) && attempt == 0 {
            METRICS.polls_sent.inc();
            self.driver.poll_sent_at = Some(Instant::now());
        }
        self.driver.codec.set_expect(Some(wire.expect()));
        let link = self.life.link();
        if attempt == 0 {
            link.exchange_started();
        }
        link.store_packet(Direction::Out, PacketKind::Modbus, &adu);
        self.send(Outbound::Request(Bytes::from(adu)));
        let timer = ctx.run_later(timeout, |act, ctx| act.on_timeout(ctx));
        self.driver.in_flight = Some(InFlight {
            job,
            wire,
            attempt,
            retries,
            timeout,
            timer,
        });
    }

    fn on_timeout(&mut self, ctx: &mut Context<Conn>) {
        let Some(flight) = self.driver.in_flight.take() else {
            return;
        };
        if flight.attempt < flight.retries {
            log::debug!(
                "{}: no answer within {} ms; retrying",
                self.life.who(),
                flight.timeout.as_millis()
            );
            self.transmit(
                flight.job,
                flight.wire,
                flight.attempt + 1,
                flight.retries,
                flight.timeout,
                ctx,
            );
            return;
        }
        self.driver.codec.set_expect(None);
        let err = CommandError::Timeout(flight.timeout.as_millis() as u64);
        self.finish(flight.job, Err(err), ctx);
        // Bytes held back as the start of an answer that never completed are now something
        // else (unsolicited data, a heartbeat): decode them instead of waiting for more.
        self.drain(ctx);
    }

    fn on_answer(&mut self, adu: &[u8], ctx: &mut Context<Conn>) {
        let Some(flight) = self.driver.in_flight.as_ref() else {
            if !self.on_unasked(adu, ctx) {
                log::warn!(
                    "{}: Modbus frame with no request in flight, dropped: {}",
                    self.life.who(),
                    to_hex(adu)
                );
            }
            return;
        };
        let result = match flight.wire.match_answer(adu) {
            Ok(answer) => Ok(answer),
            Err(Mismatch::Exception(e)) => Err(e),
            Err(Mismatch::NotTheAnswer(e)) => {
                // The DTU's own query may answer while ours waits for its turn.
                if !self.on_unasked(adu, ctx) {
                    log::warn!(
                        "{}: answer does not match the request in flight ({e}): {}",
                        self.life.who(),
                        to_hex(adu)
                    );
                }
                return;
            }
        };
        let Some(flight) = self.driver.in_flight.take() else {
            return;
        };
        ctx.cancel_future(flight.timer);
        self.driver.codec.set_expect(None);
        // Data or a device exception: either way the slave is there.
        if let Some(target) = flight.job.target() {
            self.target_answered(target, ctx);
        }
        match result {
            Ok(answer) => self.answered(flight.job, &flight.wire, answer, ctx),
            Err(e) => self.finish(flight.job, Err(e), ctx),
        }
    }

    /// An answer nobody here asked for: a passive poll's, if one fits it (slave, function,
    /// byte count); its values are stored like any poll's. False when none fits.
    fn on_unasked(&mut self, adu: &[u8], ctx: &mut Context<Conn>) -> bool {
        let mut fit = None;
        'find: for (ti, t) in self.driver.targets.iter().enumerate() {
            // Passive polls are RTU answers (settings allow them nowhere else).
            if t.profile.meter != Meter::ModbusRtu {
                continue;
            }
            for (pi, p) in t.profile.polls.iter().enumerate() {
                if p.trigger != PollTrigger::Passive {
                    continue;
                }
                let Ok(wire) = Wire::poll(t.profile.meter, t.slave, None, p) else {
                    continue;
                };
                if let Ok(Answer::Modbus(response)) = wire.match_answer(adu) {
                    fit = Some((ti, pi, wire, response));
                    break 'find;
                }
            }
        }
        let Some((target, poll, wire, response)) = fit else {
            return false;
        };
        self.target_answered(target, ctx);
        let values = self.decode_answer(Some(target), &wire, &response);
        self.store_values(target, poll, values);
        true
    }

    /// A request was answered: a checked command goes on to its write, anything else ends.
    fn answered(&mut self, job: Job, wire: &Wire, answer: Answer, ctx: &mut Context<Conn>) {
        match (job, answer) {
            (
                Job::Command {
                    target,
                    plan,
                    reply,
                },
                Answer::Modbus(response),
            ) if matches!(*plan, Plan::Checked { .. }) => {
                if let Plan::Checked {
                    point,
                    require,
                    then,
                    ..
                } = *plan
                {
                    let checked = (target, then, reply);
                    self.check_precondition(&point, require, checked, &response, ctx);
                }
            }
            (job, Answer::Modbus(response)) => {
                let values = self.decode_answer(job.target(), wire, &response);
                let outcome = CommandOutcome::Modbus { response, values };
                self.finish(job, Ok(outcome), ctx);
            }
            (job, Answer::Raw(adu)) => self.finish(job, Ok(CommandOutcome::Raw(adu)), ctx),
            (job, Answer::Address(address)) => {
                // The read of an `auto` address, made before the job's own request: that
                // goes now, ahead of everything else.
                if let Some(t) = job.target().and_then(|t| self.driver.targets.get_mut(t)) {
                    log::info!("device {}: DL/T 645 meter address is {address}", t.id);
                    t.meter_address = Some(address);
                }
                self.driver.queue.push_front(job);
                self.pump(ctx);
            }
            (job, Answer::Dlt645 { di, data }) => {
                let outcome = self.decode_dlt645(&job, di, data);
                self.finish(job, outcome, ctx);
            }
        }
    }

    /// A DL/T 645 read's data as its value: a poll's with its point's format, a command's
    /// with the format of the profile's point for that identifier, else the table's (else it
    /// has no value, only its data). A poll whose data does not fit its format fails.
    fn decode_dlt645(
        &self,
        job: &Job,
        di: Di,
        data: Vec<u8>,
    ) -> Result<CommandOutcome, CommandError> {
        let target = job.target().and_then(|t| self.driver.targets.get(t));
        let profile = target.map(|t| t.profile.as_ref());
        let point = match job {
            Job::Poll { poll, .. } => profile.and_then(|p| p.polls.get(*poll)),
            Job::Command { .. } => profile.and_then(|p| {
                p.polls
                    .iter()
                    .find(|poll| matches!(poll.read, PollRead::Dlt645 { di: d, .. } if d == di))
            }),
        };
        let format = match point.map(|p| (&p.name, &p.read)) {
            Some((name, PollRead::Dlt645 { format, unit, .. })) => {
                Some((name.clone(), *format, unit.clone()))
            }
            _ => formats::known(di).map(|k| (di.to_string(), k.format, k.unit.to_string())),
        };
        let Some((name, format, unit)) = format else {
            return Ok(CommandOutcome::Dlt645 {
                di,
                data,
                values: Vec::new(),
                text: None,
            });
        };
        let reading = format
            .decode(&data)
            .map_err(|reason| CommandError::Meter(Dlt645Error::BadValue { di, reason }))?;
        Ok(CommandOutcome::Dlt645 {
            di,
            data,
            values: vec![Decoded {
                name,
                raw: reading.value,
                value: reading.value,
                unit,
            }],
            text: reading.text,
        })
    }

    /// The live read of a named command's `require` point came back: write, or refuse.
    fn check_precondition(
        &mut self,
        point: &Point,
        require: Require,
        (target, then, reply): (Option<usize>, Wire, CommandReply),
        response: &Response,
        ctx: &mut Context<Conn>,
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
                self.driver.queue.push_front(Job::Command {
                    target,
                    plan: Box::new(Plan::Single(then)),
                    reply,
                });
            }
            other => {
                log::info!(
                    "{}: command refused: {} is {:?}, needs {} ({})",
                    self.life.who(),
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

    /// The points of the target's profile covered by a read answer.
    fn decode_answer(
        &self,
        target: Option<usize>,
        wire: &Wire,
        response: &Response,
    ) -> Vec<Decoded> {
        let target = target.and_then(|t| self.driver.targets.get(t));
        let (Some(t), Some(start)) = (target, wire.read_start()) else {
            return Vec::new();
        };
        let profile = &t.profile;
        match response {
            Response::Registers(regs) => {
                decode_block(&profile.points, start, &BlockData::Registers(regs))
            }
            Response::Bits(bits) => decode_block(&profile.points, start, &BlockData::Bits(bits)),
            _ => Vec::new(),
        }
    }

    fn finish(
        &mut self,
        job: Job,
        result: Result<CommandOutcome, CommandError>,
        ctx: &mut Context<Conn>,
    ) {
        self.life.link().exchange_ended(result.is_err());
        match job {
            Job::Poll { target, poll } => self.poll_done(target, poll, result, ctx),
            Job::Command { reply, .. } => {
                if let Err(e) = &result {
                    log::info!("{}: command failed: {e}", self.life.who());
                }
                // The caller may have given up waiting; that is not an error here.
                let _ = reply.send(result);
            }
        }
        self.pump(ctx);
    }

    /// A poll ended: its values go to storage and the supervisor, its failure to the events.
    fn poll_done(
        &mut self,
        target: usize,
        poll: usize,
        result: Result<CommandOutcome, CommandError>,
        ctx: &mut Context<Conn>,
    ) {
        self.poll_ended(target, poll);
        match &result {
            Ok(_) => {
                METRICS.polls_answered.inc();
                if let Some(sent) = self.driver.poll_sent_at.take() {
                    METRICS.poll_latency.observe(sent.elapsed());
                }
            }
            Err(CommandError::Timeout(_)) => {
                METRICS.polls_timeout.inc();
                self.target_unanswered(target, ctx);
            }
            Err(_) => METRICS.polls_failed.inc(),
        }
        self.driver.poll_sent_at = None;
        let Some(t) = self.driver.targets.get(target) else {
            return;
        };
        let name = t.profile.polls.get(poll).map_or("?", |p| p.name.as_str());
        let id = t.id.clone();
        match result {
            Ok(CommandOutcome::Modbus { values, .. } | CommandOutcome::Dlt645 { values, .. }) => {
                self.store_values(target, poll, values)
            }
            Ok(CommandOutcome::Raw(_)) => {}
            Err(e) => {
                log::warn!("device {id}: poll {name} failed: {e}");
                self.driver.ctx.events.do_send(Publish(Event::new(
                    EventKind::PollFailed,
                    &id,
                    serde_json::json!({ "poll": name, "error": e.to_string() }),
                )));
            }
        }
    }

    /// The values a poll decoded go to storage and to the supervisor.
    fn store_values(&mut self, target: usize, poll: usize, values: Vec<Decoded>) {
        let Some(t) = self.driver.targets.get(target) else {
            return;
        };
        let name = t.profile.polls.get(poll).map_or("?", |p| p.name.as_str());
        let id = t.id.clone();
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
                    unit: d.unit.clone(),
                })
            })
            .collect::<Vec<_>>();
        let listener = &self.life.listener;
        if !rows.is_empty() {
            listener.storage.do_send(StoreMany(rows));
        }
        listener.supervisor.do_send(Telemetry {
            id,
            conn: self.life.conn,
            values,
            at,
        });
    }

    /// A target answered: a unit that was not online is now.
    fn target_answered(&mut self, target: usize, ctx: &mut Context<Conn>) {
        let change = self
            .driver
            .targets
            .get_mut(target)
            .and_then(Target::answered);
        if change == Some(Change::CameOnline) {
            self.unit_online(target, ctx);
        }
    }

    /// A poll to a target went unanswered: `max_failed` in a row take a unit offline.
    fn target_unanswered(&mut self, target: usize, ctx: &mut Context<Conn>) {
        let max_failed = self.driver.profile().map_or(3, |p| p.max_failed);
        let change = self
            .driver
            .targets
            .get_mut(target)
            .and_then(|t| t.unanswered(max_failed, Instant::now()));
        if change == Some(Change::WentSilent) {
            let Some(t) = self.driver.targets.get(target) else {
                return;
            };
            log::info!(
                "device {}: no answer to {max_failed} polls in a row; offline",
                t.id
            );
            self.unit_link(target)
                .went_offline(OfflineReason::NoResponse);
        }
        let _ = ctx;
    }

    /// A unit answered for the first time on this connection, or again after `no_response`:
    /// it is a device online through this connection.
    fn unit_online(&mut self, target: usize, ctx: &mut Context<Conn>) {
        let Some(t) = self.driver.targets.get(target) else {
            return;
        };
        let (id, slave, profile) = (t.id.clone(), t.slave, t.profile.name.clone());
        let dtu = self.life.id.clone().unwrap_or_default();
        let link = self.unit_link(target);
        link.store_event(ConnEvent::Connect, format!("unit {slave} of {dtu}"));
        link.store_device(true);
        log::info!("device {id}: unit {slave} of {dtu} answers; online");
        let listener = &self.life.listener;
        listener.supervisor.do_send(Registered {
            id,
            conn: self.life.conn,
            handle: ConnHandle {
                close: ctx.address().recipient(),
                service: Service::Commands(ctx.address().recipient()),
            },
            protocol: listener.protocol,
            profile: Some(profile),
            remote_addr: self.life.peer,
            unit: Some((dtu, slave)),
        });
    }

    /// A unit's facts, for reporting it as the device it is.
    fn unit_link(&self, target: usize) -> Link<'_> {
        let mut link = self.life.link();
        if let Some(t) = self.driver.targets.get(target) {
            link.id = Some(&t.id);
            link.profile = Some(&t.profile.name);
            if let (Some(dtu), Some(u)) = (self.life.id.as_deref(), &t.unit) {
                link.unit = Some((dtu, t.slave));
                link.connected_at = u.since;
            }
        }
        link
    }
}

impl Handler<Execute> for Conn {
    type Result = ();

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        let waiting = self
            .driver
            .queue
            .iter()
            .filter(|j| matches!(j, Job::Command { .. }))
            .count();
        if waiting >= MAX_QUEUED_COMMANDS {
            let _ = msg.reply.send(Err(CommandError::Invalid(format!(
                "{waiting} commands already wait on this device"
            ))));
            return;
        }
        let target = match msg.unit {
            Some(slave) => {
                let unit = self
                    .driver
                    .targets
                    .iter()
                    .position(|t| t.unit.is_some() && t.slave == slave);
                match unit {
                    Some(i) => Some(i),
                    None => {
                        let _ = msg.reply.send(Err(CommandError::Invalid(format!(
                            "no unit with slave {slave} on this DTU"
                        ))));
                        return;
                    }
                }
            }
            // The DTU itself: its one slave, or nothing when its slaves are units.
            None => self.driver.targets.iter().position(|t| t.unit.is_none()),
        };
        let resolved = target
            .and_then(|i| self.driver.targets.get(i))
            .map(|t| (t.profile.as_ref(), t.slave));
        match Plan::of(msg.command, resolved) {
            Ok(plan) => {
                self.driver.queue.push_back(Job::Command {
                    target,
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
