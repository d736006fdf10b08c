//! The offline command queue (`"queue_if_offline": true`).
//!
//! A command for an offline device is stored as a `commands` row with status `queued`, a
//! per-device sequence number and an expiry, committed before the API answers 202. When the
//! device registers, the supervisor asks the [`OfflineQueue`] actor to deliver its queue (one
//! delivery per device at a time; asked again meanwhile, it looks again when done), which
//! hands the queued commands to the device one by one, in sequence order:
//!
//! - each is *claimed* in the database first (`queued` → `sent`, a conditional UPDATE), and
//!   only the claimer sends it, so a command goes out at most once however many connections
//!   or deliveries race for it;
//! - one whose device went away before it was written to the socket is put back (`sent` →
//!   `queued`) and delivery stops: the rest stay queued, in order, for the next registration;
//!   one that was written and then lost its connection ends `failed` (never sent twice);
//! - one past its expiry is marked `expired` instead, at delivery time and by the sweep every
//!   [`SWEEP_EVERY`] even if its device never comes back.
//!
//! Every end is recorded and raises `command.completed` through the same function as commands
//! sent at once ([`crate::command::record::complete`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::command::record;
use crate::command::request::parse_request;
use crate::command::{CommandError, CommandOutcome};
use crate::command::{KickQueue, RouteCommand, Routes};
use crate::events::bus::EventBus;
use crate::storage::db::{Db, QueuedCommand, StorageError};
use crate::storage::rows::CommandRow;
use crate::storage::Storage;

/// How often queued commands past their expiry are marked `expired`.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Expired commands one sweep step handles.
const SWEEP_BATCH: i64 = 500;

/// What delivering the queue needs.
pub struct QueueContext {
    pub db: Db,
    /// Where final command states go when the database cannot take them at once.
    pub storage: Addr<Storage>,
    /// Where `command.completed` is raised.
    pub events: Addr<EventBus>,
}

/// The supervisor to the offline queue: `id` is an online device that takes
/// commands; deliver what is queued for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverQueue {
    pub id: String,
}

/// Delivers the offline queues: one delivery per device at a time, so its commands go out in
/// order, and the expiry sweep.
pub struct OfflineQueue {
    ctx: Arc<QueueContext>,
    routes: Routes,
    /// Devices whose queue is being delivered, and whether to look again when that ends (the
    /// device registered again, or a command was queued, meanwhile).
    delivering: HashMap<String, bool>,
}

impl OfflineQueue {
    pub fn new(ctx: QueueContext, routes: Routes) -> OfflineQueue {
        OfflineQueue {
            ctx: Arc::new(ctx),
            routes,
            delivering: HashMap::new(),
        }
    }
}

impl Actor for OfflineQueue {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        actix_rt::spawn(sweep(self.ctx.clone(), self.routes.kick.clone()));
    }
}

impl Handler<DeliverQueue> for OfflineQueue {
    type Result = ();

    fn handle(&mut self, msg: DeliverQueue, ctx: &mut Context<Self>) {
        if let Some(again) = self.delivering.get_mut(&msg.id) {
            *again = true;
            return;
        }
        self.delivering.insert(msg.id.clone(), false);
        let (queue, route, me) = (self.ctx.clone(), self.routes.route.clone(), ctx.address());
        actix_rt::spawn(async move {
            deliver(queue, route, msg.id.clone()).await;
            me.do_send(DeliveryDone { id: msg.id });
        });
    }
}

/// A delivery of `id`'s offline queue has ended.
#[derive(Message)]
#[rtype(result = "()")]
struct DeliveryDone {
    id: String,
}

impl Handler<DeliveryDone> for OfflineQueue {
    type Result = ();

    fn handle(&mut self, msg: DeliveryDone, _: &mut Context<Self>) {
        if self.delivering.remove(&msg.id) == Some(true) {
            // Asked again while delivering: the supervisor checks it is still online.
            self.routes.kick.do_send(KickQueue { id: msg.id });
        }
    }
}

/// The record of a queued command, for its final state.
fn record_of(cmd: &QueuedCommand) -> CommandRow {
    CommandRow {
        id: cmd.id.clone(),
        device_id: cmd.device_id.clone(),
        request: cmd.request.clone(),
        status: "sent".into(),
        result: None,
        error: None,
        requested_by: cmd.requested_by.clone(),
        created_at: cmd.created_at,
        updated_at: Utc::now(),
    }
}

enum Step {
    Next,
    Stop,
}

/// Delivers the queued commands of `device` in order while it stays online; returns when none
/// is left, the device is gone, or the database fails (the rest then wait for the next
/// registration).
async fn deliver(ctx: Arc<QueueContext>, route: Recipient<RouteCommand>, device: String) {
    let mut delivered = 0usize;
    loop {
        match deliver_next(&ctx, &route, &device).await {
            Ok(Step::Next) => delivered += 1,
            Ok(Step::Stop) => break,
            Err(e) => {
                log::warn!("device {device}: offline queue: {e}; the rest stays queued");
                break;
            }
        }
    }
    if delivered > 0 {
        log::info!("device {device}: offline queue: {delivered} command(s) handled");
    }
}

async fn deliver_next(
    ctx: &QueueContext,
    route: &Recipient<RouteCommand>,
    device: &str,
) -> Result<Step, StorageError> {
    let key = device.to_string();
    let Some(cmd) = ctx.db.call(move |db| db.next_queued(&key)).await? else {
        return Ok(Step::Stop);
    };
    let now = Utc::now();
    if cmd.expires_at <= now {
        expire(ctx, &cmd, now).await?;
        return Ok(Step::Next);
    }
    let cid = cmd.id.clone();
    if !ctx.db.call(move |db| db.claim_command(&cid, now)).await? {
        // It expired or someone else claimed it meanwhile: look at the queue again.
        return Ok(Step::Next);
    }
    let (command, wait) = match parse_request(&cmd.request) {
        Ok(parsed) => parsed,
        Err(e) => {
            log::warn!(
                "device {device}: queued command {} cannot be read back: {e}",
                cmd.id
            );
            finish(ctx, &cmd, Err(CommandError::Invalid(e.to_string()))).await;
            return Ok(Step::Next);
        }
    };
    let (reply, answer) = oneshot::channel();
    let routed = route
        .send(RouteCommand {
            id: device.to_string(),
            command,
            reply,
            token: cmd.token_id.clone(),
        })
        .await;
    let result = match routed {
        Err(_) => return unclaim(ctx, &cmd, "the server is stopping").await,
        Ok(Err(CommandError::Offline(_))) => {
            return unclaim(ctx, &cmd, "the device went offline").await
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => match tokio::time::timeout(wait, answer).await {
            Err(_) => Err(CommandError::Timeout(wait.as_millis() as u64)),
            Ok(Err(_)) => Err(CommandError::Disconnected),
            // Still waiting behind polls when the connection ended: never written.
            Ok(Ok(Err(CommandError::Offline(_)))) => {
                return unclaim(ctx, &cmd, "the device went offline").await
            }
            Ok(Ok(result)) => result,
        },
    };
    finish(ctx, &cmd, result).await;
    Ok(Step::Next)
}

/// Records the end of a delivered command and raises `command.completed`.
async fn finish(
    ctx: &QueueContext,
    cmd: &QueuedCommand,
    result: Result<CommandOutcome, CommandError>,
) {
    let record = record::finish(
        record_of(cmd),
        &result,
        false,
        &ctx.db,
        &ctx.storage,
        &ctx.events,
    )
    .await;
    log::info!(
        "device {}: queued command {} (#{}, by {}) {}",
        cmd.device_id,
        cmd.id,
        cmd.seq,
        cmd.requested_by.as_deref().unwrap_or("-"),
        match &record.error {
            Some(e) => format!("{}: {e}", record.status),
            None => record.status.clone(),
        }
    );
}

/// Gives a claimed command back to the queue: it was not written to the device.
async fn unclaim(ctx: &QueueContext, cmd: &QueuedCommand, why: &str) -> Result<Step, StorageError> {
    let cid = cmd.id.clone();
    ctx.db.call(move |db| db.unclaim_command(&cid)).await?;
    log::info!(
        "device {}: queued command {} stays queued: {why}",
        cmd.device_id,
        cmd.id
    );
    Ok(Step::Stop)
}

/// Marks a queued command expired (if nobody else did) and raises `command.completed`.
async fn expire(
    ctx: &QueueContext,
    cmd: &QueuedCommand,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let cid = cmd.id.clone();
    if ctx.db.call(move |db| db.expire_command(&cid, now)).await? {
        let mut record = record_of(cmd);
        record.status = "expired".into();
        record.error = Some("expired before the device came online".into());
        record.updated_at = now;
        record::publish_completed(&ctx.events, &record, None);
        log::info!(
            "device {}: queued command {} (by {}) expired at {}",
            cmd.device_id,
            cmd.id,
            cmd.requested_by.as_deref().unwrap_or("-"),
            cmd.expires_at
        );
    }
    Ok(())
}

/// Devices with queued commands the sweep reminds the supervisor of, at most.
const KICK_BATCH: i64 = 10_000;

/// Every [`SWEEP_EVERY`]: marks queued commands past their expiry `expired`, whether or not
/// their devices come back, then reminds the supervisor of every device with commands still
/// queued, so that a delivery stopped by a database error resumes while the device stays
/// online (the supervisor ignores offline devices and ones being delivered). Runs for the
/// life of the server.
async fn sweep(ctx: Arc<QueueContext>, kick: Recipient<KickQueue>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_once(&ctx).await {
            log::warn!("offline queue: expiry sweep failed: {e}");
            continue;
        }
        match ctx.db.call(|db| db.queued_devices(KICK_BATCH)).await {
            Ok(devices) => {
                for id in devices {
                    kick.do_send(KickQueue { id });
                }
            }
            Err(e) => log::warn!("offline queue: cannot list waiting devices: {e}"),
        }
    }
}

/// One sweep: returns how many commands it expired.
pub async fn sweep_once(ctx: &QueueContext) -> Result<usize, StorageError> {
    let mut total = 0;
    loop {
        let now = Utc::now();
        let due = ctx
            .db
            .call(move |db| db.expired_queued(now, SWEEP_BATCH))
            .await?;
        let full = due.len() as i64 >= SWEEP_BATCH;
        for cmd in &due {
            expire(ctx, cmd, now).await?;
            total += 1;
        }
        if !full {
            return Ok(total);
        }
    }
}
