//! The driver of polled devices: a DTU in front of a Modbus slave, whatever link protocol
//! frames its bytes (a [`LinkCodec`] from the protocol list).
//!
//! Once registered, heartbeats are acknowledged and trigger the heartbeat polls, timer polls
//! run, and operator commands queue behind polls; a device that logs out is answered and its
//! connection closed. All outbound work goes through one queue
//! with exactly one request in flight; its answer is matched by slave, function, length and
//! CRC; a timeout retries per profile, then fails it and lets the next one go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::Utc;

use crate::command::{CommandError, CommandOutcome, CommandReply};
use crate::conn::lifecycle::{Connection, Driver, State};
use crate::conn::plan::{Answer, Mismatch, Plan, Wire};
use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::metrics::METRICS;
use crate::protocol::hex::to_hex;
use crate::protocol::link::{CodecError, Inbound, LinkCodec, Outbound};
use crate::protocol::modbus::Response;
use crate::protocol::points::{decode_block, decode_registers, BlockData, Decoded, Point};
use crate::settings::{PollTrigger, Profile, Require};
use crate::storage::rows::{Direction, PacketKind, Row, TelemetryRow};
use crate::storage::StoreMany;
use crate::supervisor::messages::{Execute, OfflineReason, Service, Telemetry};

/// Operator commands waiting on one device beyond this are refused rather than piling up.
const MAX_QUEUED_COMMANDS: usize = 64;

/// What every polled connection of one listener shares besides the lifecycle's facts.
pub struct PollContext {
    pub profile: Option<Arc<Profile>>,
    /// Where `poll.failed` events go.
    pub events: Addr<EventBus>,
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

/// The state of one polled connection.
pub struct PollDriver {
    ctx: Arc<PollContext>,
    codec: Box<dyn LinkCodec>,
    queue: VecDeque<Job>,
    in_flight: Option<InFlight>,
    /// Per poll of the profile: queued or in flight, so a slow device never piles up polls.
    poll_pending: Vec<bool>,
    /// When the poll in flight was first transmitted (its retries keep it), for the poll
    /// latency metric.
    poll_sent_at: Option<Instant>,
}

impl PollDriver {
    pub fn new(ctx: Arc<PollContext>, codec: Box<dyn LinkCodec>) -> PollDriver {
        let polls = ctx.profile.as_ref().map_or(0, |p| p.polls.len());
        PollDriver {
            ctx,
            codec,
            queue: VecDeque::new(),
            in_flight: None,
            poll_pending: vec![false; polls],
            poll_sent_at: None,
        }
    }

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
        let Some(profile) = self.driver.ctx.profile.clone() else {
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
        let Some(profile) = self.driver.ctx.profile.clone() else {
            return;
        };
        for (index, poll) in profile.polls.iter().enumerate() {
            if which(&poll.trigger) {
                self.queue_poll(index);
            }
        }
    }

    fn queue_poll(&mut self, index: usize) {
        let driver = &mut self.driver;
        match driver.poll_pending.get_mut(index) {
            Some(pending) if !*pending => {
                *pending = true;
                driver.queue.push_back(Job::Poll(index));
            }
            _ => {}
        }
    }

    /// Sends the next queued request when none is in flight.
    fn pump(&mut self, ctx: &mut Context<Conn>) {
        if self.life.state != State::Online || self.driver.in_flight.is_some() {
            return;
        }
        while let Some(job) = self.driver.queue.pop_front() {
            let wire = match &job {
                Job::Poll(index) => match self.poll_wire(*index) {
                    Some(w) => w,
                    None => continue,
                },
                Job::Command { reply, .. } if reply.is_closed() => continue,
                Job::Command { plan, .. } => plan.first().clone(),
            };
            let timeout = self
                .driver
                .profile()
                .map_or(Duration::from_secs(2), |p| p.response_timeout);
            self.transmit(job, wire, 0, timeout, ctx);
            return;
        }
    }

    fn poll_wire(&self, index: usize) -> Option<Wire> {
        let profile = self.driver.profile()?;
        let poll = profile.polls.get(index)?;
        match Wire::read(profile, poll.function, poll.start, poll.count) {
            Ok(wire) => Some(wire),
            Err(e) => {
                log::error!(
                    "{}: poll {} cannot be built: {e}",
                    self.life.who(),
                    poll.name
                );
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
        ctx: &mut Context<Conn>,
    ) {
        let adu = wire.adu();
        log::debug!(
            "{}: request (attempt {}) {}",
            self.life.who(),
            attempt + 1,
            to_hex(&adu)
        );
        if matches!(job, Job::Poll(_)) && attempt == 0 {
            METRICS.polls_sent.inc();
            self.driver.poll_sent_at = Some(Instant::now());
        }
        self.driver.codec.set_expect(Some(wire.expect()));
        self.life
            .link()
            .store_packet(Direction::Out, PacketKind::Modbus, &adu);
        self.send(Outbound::Request(Bytes::from(adu)));
        let timer = ctx.run_later(timeout, |act, ctx| act.on_timeout(ctx));
        self.driver.in_flight = Some(InFlight {
            job,
            wire,
            attempt,
            timeout,
            timer,
        });
    }

    fn on_timeout(&mut self, ctx: &mut Context<Conn>) {
        let Some(flight) = self.driver.in_flight.take() else {
            return;
        };
        let retries = self.driver.profile().map_or(0, |p| p.retries);
        if flight.attempt < retries {
            log::debug!(
                "{}: no answer within {} ms; retrying",
                self.life.who(),
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
        self.driver.codec.set_expect(None);
        let err = CommandError::Timeout(flight.timeout.as_millis() as u64);
        self.finish(flight.job, Err(err), ctx);
        // Bytes held back as the start of an answer that never completed are now something
        // else (unsolicited data, a heartbeat): decode them instead of waiting for more.
        self.drain(ctx);
    }

    fn on_answer(&mut self, adu: &[u8], ctx: &mut Context<Conn>) {
        let Some(flight) = self.driver.in_flight.as_ref() else {
            log::warn!(
                "{}: Modbus frame with no request in flight, dropped: {}",
                self.life.who(),
                to_hex(adu)
            );
            return;
        };
        let result = match flight.wire.match_answer(adu) {
            Ok(answer) => Ok(answer),
            Err(Mismatch::Exception(e)) => Err(e),
            Err(Mismatch::NotTheAnswer(e)) => {
                log::warn!(
                    "{}: answer does not match the request in flight ({e}): {}",
                    self.life.who(),
                    to_hex(adu)
                );
                return;
            }
        };
        let Some(flight) = self.driver.in_flight.take() else {
            return;
        };
        ctx.cancel_future(flight.timer);
        self.driver.codec.set_expect(None);
        match result {
            Ok(answer) => self.answered(flight.job, &flight.wire, answer, ctx),
            Err(e) => self.finish(flight.job, Err(e), ctx),
        }
    }

    /// A request was answered: a checked command goes on to its write, anything else ends.
    fn answered(&mut self, job: Job, wire: &Wire, answer: Answer, ctx: &mut Context<Conn>) {
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
                let values = self.decode_answer(wire, &response);
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

    /// The profile's points covered by a read answer.
    fn decode_answer(&self, wire: &Wire, response: &Response) -> Vec<Decoded> {
        let (Some(profile), Some(start)) = (self.driver.profile(), wire.read_start()) else {
            return Vec::new();
        };
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
        match job {
            Job::Poll(index) => self.poll_done(index, result),
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
    fn poll_done(&mut self, index: usize, result: Result<CommandOutcome, CommandError>) {
        if let Some(p) = self.driver.poll_pending.get_mut(index) {
            *p = false;
        }
        match &result {
            Ok(_) => {
                METRICS.polls_answered.inc();
                if let Some(sent) = self.driver.poll_sent_at.take() {
                    METRICS.poll_latency.observe(sent.elapsed());
                }
            }
            Err(CommandError::Timeout(_)) => METRICS.polls_timeout.inc(),
            Err(_) => METRICS.polls_failed.inc(),
        }
        self.driver.poll_sent_at = None;
        let name = self
            .driver
            .profile()
            .and_then(|p| p.polls.get(index))
            .map_or("?", |p| p.name.as_str())
            .to_string();
        let Some(id) = self.life.id.clone() else {
            return;
        };
        match result {
            Ok(CommandOutcome::Modbus { values, .. }) => {
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
        match Plan::of(msg.command, self.driver.profile()) {
            Ok(plan) => {
                self.driver.queue.push_back(Job::Command {
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
