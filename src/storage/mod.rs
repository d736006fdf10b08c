//! Storage: the one actor between the device actors and the database.
//!
//! Device actors `do_send` [`Store`] / [`StoreMany`]; that never waits and never fails. Rows
//! are buffered and written in batches by a [`DbWriter`] on its own thread: when `batch_size`
//! rows are waiting, or `flush_interval` after the oldest of them arrived. One batch is in
//! flight at a time.
//!
//! Nothing is lost:
//! - A failed write keeps its rows at the front and is retried with exponential backoff
//!   (200 ms doubling to 30 s). The outage is logged once when it starts and once when it ends.
//! - Past `max_buffer` rows in memory, the oldest go to the [`Spool`] file. Rows are written in
//!   the order they arrived: whatever is in the spool is older than what is in memory, so the
//!   spool is replayed first (in batches of `batch_size`, back to back) and removed when done.
//! - A spool left by an earlier run (a crash, or a database down at shutdown) is replayed at
//!   start.
//! - [`FlushAll`] (shutdown) writes everything if the database answers; what cannot be written
//!   before its deadline goes to the spool. Rows still in memory when the actor stops anyway
//!   are spooled in `stopped()`.
//!
//! The guarantee is at least once: a write that times out at shutdown but still commits, or a
//! crash between a commit and the spool's position update, can write a batch twice.

mod batch;
pub mod db;
#[cfg(feature = "mysql")]
mod mysql;
mod repo;
pub mod rows;
pub mod schema;
pub mod spool;
mod time;
mod url;
mod writer;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{debug, error, info, warn};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::settings::StorageSettings;
pub use db::{Db, StorageError};
use rows::PacketKind;
pub use rows::Row;
pub use spool::Spool;
use spool::SpoolPos;
pub use writer::{BatchWriter, DbWriter, WriteBatch};

/// First retry delay after a failed write; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// While a [`FlushAll`] is running, retries come at least this often.
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// After the spool could not be read or written, leave it alone this long.
const SPOOL_RETRY: Duration = Duration::from_secs(5);
const STATS_EVERY: Duration = Duration::from_secs(60);

/// Writes a row at once, on a blocking thread, for records a client may read right after an
/// event about them (a command's state after `command.completed`): the batched path could
/// leave the old state visible for up to `flush_interval`. If the database cannot take it, the
/// row goes to the Storage actor instead, which retries and spools it: nothing is lost, it is
/// only later. True when the row was written now; after a false, later states of the same
/// record must go through the buffer too ([`Store`]), so that they cannot overtake this one.
pub async fn store_now(db: &Db, storage: &Addr<Storage>, row: Row) -> bool {
    let db = db.clone();
    let attempt = row.clone();
    match tokio::task::spawn_blocking(move || db.write(std::slice::from_ref(&attempt))).await {
        Ok(Ok(_)) => return true,
        Ok(Err(e)) => warn!("storage: direct write failed ({e}); the row goes through the buffer"),
        Err(e) => warn!("storage: direct write task failed ({e}); the row goes through the buffer"),
    }
    storage.do_send(Store(row));
    false
}

/// Stores one row. Never waits, never fails: `do_send` it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Store(pub Row);

/// Stores several rows, in order.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct StoreMany(pub Vec<Row>);

/// Writes everything buffered and spooled, for shutdown. Whatever is not written within
/// `deadline` is put in the spool (replayed at the next start). Answers when done.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "FlushReport")]
pub struct FlushAll {
    pub deadline: Duration,
}

impl FlushAll {
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
}

impl Default for FlushAll {
    fn default() -> Self {
        FlushAll {
            deadline: FlushAll::DEFAULT_DEADLINE,
        }
    }
}

/// What a [`FlushAll`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    /// Rows written to the database while it ran.
    pub written: u64,
    /// Rows in the spool when it answered, to be replayed later.
    pub spooled: u64,
    /// Rows neither written nor spooled (the spool file could not be written): still in
    /// memory, lost if the process exits now. Normally 0.
    pub unsaved: u64,
}

/// Asks for [`StorageStats`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "StorageStats")]
pub struct GetStats;

/// Counters since start, for /metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// Rows in memory now: waiting, in flight or waiting for a retry. At most `max_buffer`
    /// unless the spool cannot be written.
    pub buffered: usize,
    /// Rows written to the database.
    pub written: u64,
    /// Rows whose write failed and that were kept for another attempt (counted per attempt).
    pub retried: u64,
    /// Rows put into the spool file.
    pub spooled: u64,
    /// Rows in the spool file now, waiting to be replayed (an earlier run's included).
    pub spooled_now: u64,
    /// Failed write attempts.
    pub failed_flushes: u64,
    /// Corrupt spool lines skipped during replays.
    pub spool_corrupt: u64,
    /// Whether the last write attempt succeeded (true before the first one).
    pub database_up: bool,
}

/// The storage actor. See the module documentation.
pub struct Storage {
    batch_size: usize,
    flush_interval: Duration,
    max_buffer: usize,
    store_heartbeats: bool,
    writer: Addr<DbWriter>,
    spool: Arc<Mutex<Spool>>,
    spool_path: PathBuf,
    /// Mirrors of the spool's counters, refreshed after each spool operation.
    spool_waiting: u64,
    spool_skipped: u64,
    /// Newest at the back.
    buffer: VecDeque<Row>,
    /// When the oldest row in `buffer` arrived (or earlier: never later).
    oldest: Option<Instant>,
    /// A batch taken from `buffer` whose write failed; older than everything else, so it goes
    /// first.
    retry: Option<Arc<Vec<Row>>>,
    in_flight: Option<InFlight>,
    next_batch_id: u64,
    /// Failed write attempts since the last success.
    failures: u32,
    down_since: Option<Instant>,
    /// No write before this (backoff).
    retry_at: Option<Instant>,
    /// The pending wake-up timer and when it fires.
    wake: Option<(Instant, SpawnHandle)>,
    /// No spilling to the spool before this (it failed).
    spool_blocked_until: Option<Instant>,
    /// Spilling in progress since the spool was last empty (for logging once).
    spilling: bool,
    /// Reading the spool failed; logged once until it works again.
    spool_read_failing: bool,
    /// A spool operation is running; nothing else may touch the spool until it is done.
    spool_busy: bool,
    drains: Vec<Drain>,
    next_drain_id: u64,
    written: u64,
    retried: u64,
    spooled: u64,
    failed_flushes: u64,
}

struct InFlight {
    id: u64,
    rows: Arc<Vec<Row>>,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Buffer,
    /// A chunk of the spool, committed once written.
    Spool(SpoolPos),
    /// Taken from the buffer, but spooled at a [`FlushAll`] deadline while its write was still
    /// running: whatever the answer, nothing is left to do with its rows.
    Abandoned,
}

/// A [`FlushAll`] waiting for its answer.
struct Drain {
    id: u64,
    written_at_start: u64,
    tx: oneshot::Sender<FlushReport>,
}

impl Storage {
    /// Starts the writer thread and the storage actor. `spool_path` is the spool file (its
    /// directory is created when needed); a spool found there is replayed first. Needs a
    /// running actix `System`; the actor lives until the system stops.
    pub fn start(
        writer: impl BatchWriter,
        settings: StorageSettings,
        spool_path: PathBuf,
    ) -> Addr<Storage> {
        let writer = DbWriter::start(writer);
        <Storage as Actor>::start(Storage::new(writer, settings, spool_path))
    }

    fn new(writer: Addr<DbWriter>, settings: StorageSettings, spool_path: PathBuf) -> Storage {
        Storage {
            batch_size: settings.batch_size.max(1),
            flush_interval: settings.flush_interval,
            max_buffer: settings.max_buffer.max(1),
            store_heartbeats: settings.store_heartbeats,
            writer,
            spool: Arc::new(Mutex::new(Spool::new(spool_path.clone()))),
            spool_path,
            spool_waiting: 0,
            spool_skipped: 0,
            buffer: VecDeque::new(),
            oldest: None,
            retry: None,
            in_flight: None,
            next_batch_id: 0,
            failures: 0,
            down_since: None,
            retry_at: None,
            wake: None,
            spool_blocked_until: None,
            spilling: false,
            spool_read_failing: false,
            spool_busy: false,
            drains: Vec::new(),
            next_drain_id: 0,
            written: 0,
            retried: 0,
            spooled: 0,
            failed_flushes: 0,
        }
    }

    /// Rows taken from the buffer and not written yet: the batch in flight or to retry.
    fn held(&self) -> usize {
        let in_flight = match &self.in_flight {
            Some(f) if matches!(f.source, Source::Buffer) => f.rows.len(),
            _ => 0,
        };
        in_flight + self.retry.as_ref().map_or(0, |r| r.len())
    }

    fn buffered(&self) -> usize {
        self.buffer.len() + self.held()
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            buffered: self.buffered(),
            written: self.written,
            retried: self.retried,
            spooled: self.spooled,
            spooled_now: self.spool_waiting,
            failed_flushes: self.failed_flushes,
            spool_corrupt: self.spool_skipped,
            database_up: self.failures == 0,
        }
    }

    fn log_stats(&self) {
        let mut line = format!(
            "storage: buffered {}, written {}, retried {}, spooled {}",
            self.buffered(),
            self.written,
            self.retried,
            self.spooled
        );
        if self.spool_waiting > 0 {
            line.push_str(&format!(
                "; {} rows waiting in {}",
                self.spool_waiting,
                self.spool_path.display()
            ));
        }
        if let Some(since) = self.down_since {
            line.push_str(&format!(
                "; database unreachable for {}s ({} failed attempts)",
                since.elapsed().as_secs(),
                self.failures
            ));
        }
        info!("{line}");
    }

    fn accept(&mut self, row: Row) {
        if !self.store_heartbeats {
            if let Row::Packet(p) = &row {
                if p.kind == PacketKind::Heartbeat {
                    return;
                }
            }
        }
        if self.buffer.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.buffer.push_back(row);
    }

    /// Decides what to do next: retry, replay the spool, write a batch, wait, or answer a
    /// finished [`FlushAll`]. Called after every change.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || self.spool_busy {
            return;
        }
        let now = Instant::now();
        if let Some(at) = self.retry_at {
            if now < at {
                self.wake_at(at, ctx);
                return;
            }
        }
        if let Some(rows) = self.retry.take() {
            self.send(rows, Source::Buffer, ctx);
            return;
        }
        if self.spool_waiting > 0 {
            self.replay_next(ctx);
            return;
        }
        if self.buffer.is_empty() {
            self.oldest = None;
            // Give back what an outage made the buffer grow to.
            if self.buffer.capacity() > 4 * self.batch_size {
                self.buffer.shrink_to(self.batch_size);
            }
            self.finish_drains();
            return;
        }
        let due = self.oldest.map_or(now, |t| t + self.flush_interval);
        if self.buffer.len() >= self.batch_size || due <= now || !self.drains.is_empty() {
            let n = self.batch_size.min(self.buffer.len());
            let rows: Vec<Row> = self.buffer.drain(..n).collect();
            if self.buffer.is_empty() {
                self.oldest = None;
            }
            self.send(Arc::new(rows), Source::Buffer, ctx);
        } else {
            self.wake_at(due, ctx);
        }
    }

    /// Makes sure `pump` runs at `at` (or earlier).
    fn wake_at(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some((t, handle)) = self.wake {
            if t <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some((at, handle));
    }

    fn send(&mut self, rows: Arc<Vec<Row>>, source: Source, ctx: &mut Context<Self>) {
        self.next_batch_id += 1;
        let id = self.next_batch_id;
        let request = self.writer.send(WriteBatch(Arc::clone(&rows)));
        self.in_flight = Some(InFlight { id, rows, source });
        ctx.spawn(
            request
                .into_actor(self)
                .map(move |result, act, ctx| act.written(id, result, ctx)),
        );
    }

    /// The writer's answer for batch `id`.
    fn written(
        &mut self,
        id: u64,
        result: Result<Result<usize, StorageError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(batch) = self.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        let result = result.unwrap_or_else(|e| {
            Err(StorageError::Query(format!(
                "database writer unavailable: {e}"
            )))
        });
        let n = batch.rows.len();
        match result {
            Ok(_) => {
                self.written += n as u64;
                self.retry_at = None;
                if let Source::Abandoned = batch.source {
                    warn!(
                        "storage: a write of {n} rows given up at the flush deadline succeeded after all; \
                         the same rows are in the spool and will be written again"
                    );
                }
                if self.failures > 0 {
                    let down = self.down_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    info!(
                        "storage: database writes resumed after {} failed attempts ({down:.1}s), {} rows waiting",
                        self.failures,
                        self.buffered() as u64 + self.spool_waiting
                    );
                    self.failures = 0;
                    self.down_since = None;
                }
                match batch.source {
                    Source::Spool(pos) => self.commit_spool(pos, ctx),
                    Source::Buffer | Source::Abandoned => self.pump(ctx),
                }
            }
            Err(e) => {
                self.failed_flushes += 1;
                self.retried += n as u64;
                self.failures = self.failures.saturating_add(1);
                if self.failures == 1 {
                    self.down_since = Some(Instant::now());
                    warn!(
                        "storage: database write failed; retrying with backoff (up to {}s), \
                         rows wait in memory up to max_buffer ({}), beyond that in {}: {e}",
                        BACKOFF_MAX.as_secs(),
                        self.max_buffer,
                        self.spool_path.display()
                    );
                } else {
                    debug!("storage: write attempt {} failed: {e}", self.failures);
                }
                let mut delay = backoff(self.failures);
                if !self.drains.is_empty() {
                    delay = delay.min(DRAIN_BACKOFF_MAX);
                }
                self.retry_at = Some(Instant::now() + delay);
                if let Source::Buffer = batch.source {
                    self.retry = Some(batch.rows);
                }
                // A spool chunk stays in the spool and is read again; abandoned rows are in it.
                self.pump(ctx);
            }
        }
    }

    /// Runs `op` on the spool on the blocking pool, and `then` with its result on the actor.
    /// The actor handles nothing else meanwhile, so spool operations happen in order and
    /// never overlap.
    fn spool_op<R, F, T>(&mut self, ctx: &mut Context<Self>, op: F, then: T)
    where
        R: Send + 'static,
        F: FnOnce(&mut Spool) -> R + Send + 'static,
        T: FnOnce(&mut Self, R, &mut Context<Self>) + 'static,
    {
        debug_assert!(!self.spool_busy, "one spool operation at a time");
        self.spool_busy = true;
        let spool = Arc::clone(&self.spool);
        let job = actix_rt::task::spawn_blocking(move || {
            let mut spool = lock(&spool);
            let result = op(&mut spool);
            (result, spool.waiting(), spool.skipped())
        });
        ctx.wait(job.into_actor(self).map(|joined, act, ctx| match joined {
            Ok((result, waiting, skipped)) => {
                act.spool_busy = false;
                act.spool_waiting = waiting;
                act.spool_skipped = skipped;
                if waiting == 0 {
                    act.spilling = false;
                }
                then(act, result, ctx);
            }
            Err(e) => {
                act.spool_busy = false;
                error!("storage: a spool operation failed: {e}");
                act.spool_blocked_until = Some(Instant::now() + SPOOL_RETRY);
                act.retry_at = Some(Instant::now() + SPOOL_RETRY);
                act.after_spool(ctx);
            }
        }));
    }

    /// What every spool operation ends with: spill if memory is over the limit again, then
    /// carry on.
    fn after_spool(&mut self, ctx: &mut Context<Self>) {
        self.limit_memory(ctx);
        self.pump(ctx);
    }

    fn replay_next(&mut self, ctx: &mut Context<Self>) {
        let max = self.batch_size;
        self.spool_op(
            ctx,
            move |s| s.read_chunk(max),
            |act, result, ctx| match result {
                Ok(chunk) => {
                    act.spool_read_failing = false;
                    if chunk.rows.is_empty() {
                        act.commit_spool(chunk.pos, ctx);
                    } else {
                        act.send(Arc::new(chunk.rows), Source::Spool(chunk.pos), ctx);
                    }
                }
                Err(e) => {
                    if !act.spool_read_failing {
                        error!(
                            "storage: cannot read the spool {} (retrying every {}s; newer rows wait behind it): {e}",
                            act.spool_path.display(),
                            SPOOL_RETRY.as_secs()
                        );
                        act.spool_read_failing = true;
                    }
                    act.retry_at = Some(Instant::now() + SPOOL_RETRY);
                    act.after_spool(ctx);
                }
            },
        );
    }

    fn commit_spool(&mut self, pos: SpoolPos, ctx: &mut Context<Self>) {
        let had_rows = self.spool_waiting > 0;
        self.spool_op(
            ctx,
            move |s| s.commit(pos),
            move |act, result, ctx| {
                if let Err(e) = result {
                    warn!(
                        "storage: cannot record the replay position of {} ({e}); \
                         some rows may be written twice after a restart",
                        act.spool_path.display()
                    );
                }
                if had_rows && act.spool_waiting == 0 {
                    info!(
                        "storage: spool {} replayed and removed",
                        act.spool_path.display()
                    );
                }
                act.after_spool(ctx);
            },
        );
    }

    /// Keeps the rows in memory at most `max_buffer`: the oldest buffered rows go to the spool,
    /// a little more than needed so that spool writes come in chunks.
    fn limit_memory(&mut self, ctx: &mut Context<Self>) {
        let held = self.held();
        if self.spool_busy || self.buffer.len() + held <= self.max_buffer {
            return;
        }
        let now = Instant::now();
        if self.spool_blocked_until.is_some_and(|t| now < t) {
            return;
        }
        let slack = self.batch_size.min(self.max_buffer / 2);
        let keep = self.max_buffer.saturating_sub(held).saturating_sub(slack);
        let n = self.buffer.len().saturating_sub(keep);
        if n == 0 {
            return;
        }
        let rows: Vec<Row> = self.buffer.drain(..n).collect();
        if self.buffer.is_empty() {
            self.oldest = None;
        }
        self.spool_op(
            ctx,
            move |s| match s.append(&rows) {
                Ok(()) => Ok(()),
                Err(e) => Err((e, rows)),
            },
            move |act, result, ctx| {
                match result {
                    Ok(()) => {
                        act.spooled += n as u64;
                        act.spool_blocked_until = None;
                        if !act.spilling {
                            act.spilling = true;
                            info!(
                                "storage: more than {} rows waiting for the database; spooling the oldest to {}",
                                act.max_buffer,
                                act.spool_path.display()
                            );
                        }
                    }
                    Err((e, rows)) => {
                        error!(
                            "storage: cannot write {n} rows to the spool {}: {e}; keeping them in memory \
                             (above max_buffer) and trying again in {}s",
                            act.spool_path.display(),
                            SPOOL_RETRY.as_secs()
                        );
                        for row in rows.into_iter().rev() {
                            act.buffer.push_front(row);
                        }
                        act.oldest.get_or_insert_with(Instant::now);
                        act.spool_blocked_until = Some(Instant::now() + SPOOL_RETRY);
                    }
                }
                act.after_spool(ctx);
            },
        );
    }

    /// A [`FlushAll`] deadline: everything still in memory goes to the spool, behind nothing
    /// (the batch in flight or to retry is older than the spool, so it goes in front).
    fn drain_deadline(&mut self, drain_id: u64, ctx: &mut Context<Self>) {
        if !self.drains.iter().any(|d| d.id == drain_id) {
            return;
        }
        let mut front: Vec<Row> = Vec::new();
        // A write still running stays in flight (nothing else is sent until it answers, so it
        // cannot be sent twice at once). A replayed chunk is still in the spool and is
        // committed if the write succeeds after all; rows from the buffer are spooled too.
        if let Some(batch) = self.in_flight.as_mut() {
            if let Source::Buffer = batch.source {
                warn!(
                    "storage: a write of {} rows is still running at the flush deadline; \
                     spooling them too (they may be written twice)",
                    batch.rows.len()
                );
                front = batch.rows.as_ref().clone();
                batch.source = Source::Abandoned;
            }
        }
        if let Some(rows) = self.retry.take() {
            front.extend(unshare(rows));
        }
        let back: Vec<Row> = self.buffer.drain(..).collect();
        self.oldest = None;
        let total = (front.len() + back.len()) as u64;
        if total == 0 {
            self.finish_drains();
            return;
        }
        info!(
            "storage: flush deadline reached; spooling {total} rows to {}",
            self.spool_path.display()
        );
        self.spool_op(
            ctx,
            move |s| {
                if let Err(e) = s.prepend(&front) {
                    return Err((e, front, back));
                }
                match s.append(&back) {
                    Ok(()) => Ok(()),
                    Err(e) => Err((e, Vec::new(), back)),
                }
            },
            move |act, result, ctx| {
                match result {
                    Ok(()) => act.spooled += total,
                    Err((e, front, back)) => {
                        let unsaved = front.len() + back.len();
                        act.spooled += total - unsaved as u64;
                        error!(
                            "storage: cannot spool {unsaved} rows to {}: {e}; they stay in memory",
                            act.spool_path.display()
                        );
                        if !front.is_empty() {
                            act.retry = Some(Arc::new(front));
                        }
                        for row in back.into_iter().rev() {
                            act.buffer.push_front(row);
                        }
                        if !act.buffer.is_empty() {
                            act.oldest.get_or_insert_with(Instant::now);
                        }
                    }
                }
                act.finish_drains();
                act.after_spool(ctx);
            },
        );
    }

    /// Answers every waiting [`FlushAll`].
    fn finish_drains(&mut self) {
        if self.drains.is_empty() {
            return;
        }
        self.log_stats();
        for drain in std::mem::take(&mut self.drains) {
            let _ = drain.tx.send(FlushReport {
                written: self.written - drain.written_at_start,
                spooled: self.spool_waiting,
                unsaved: self.buffered() as u64,
            });
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

fn unshare(rows: Arc<Vec<Row>>) -> Vec<Row> {
    Arc::try_unwrap(rows).unwrap_or_else(|shared| shared.as_ref().clone())
}

fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Actor for Storage {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(STATS_EVERY, |act, _| act.log_stats());
        self.spool_op(
            ctx,
            |s| s.recover(),
            |act, result, ctx| {
                match result {
                    Ok(()) if act.spool_waiting > 0 => info!(
                        "storage: replaying {} rows spooled earlier in {}",
                        act.spool_waiting,
                        act.spool_path.display()
                    ),
                    Ok(()) => {}
                    Err(e) => error!(
                        "storage: cannot open the spool {}: {e}; rows are kept in memory if the database is down",
                        act.spool_path.display()
                    ),
                }
                act.after_spool(ctx);
            },
        );
    }

    /// Last resort when the system stops without (or after) a [`FlushAll`]: whatever is still
    /// in memory goes to the spool, so that the next start replays it.
    fn stopped(&mut self, _: &mut Context<Self>) {
        let mut front: Vec<Row> = Vec::new();
        if let Some(batch) = self.in_flight.take() {
            if let Source::Buffer = batch.source {
                // It may still commit: spooled all the same, at worst written twice.
                front = unshare(batch.rows);
            }
        }
        if let Some(rows) = self.retry.take() {
            front.extend(unshare(rows));
        }
        let back: Vec<Row> = self.buffer.drain(..).collect();
        let total = front.len() + back.len();
        if total > 0 {
            let mut spool = lock(&self.spool);
            match spool.prepend(&front).and_then(|()| spool.append(&back)) {
                Ok(()) => {
                    self.spooled += total as u64;
                    self.spool_waiting = spool.waiting();
                    warn!(
                        "storage: stopping with {total} rows not written; spooled to {} for the next start",
                        self.spool_path.display()
                    );
                }
                Err(e) => error!(
                    "storage: stopping with {total} rows that could neither be written nor spooled to {}: {e}",
                    self.spool_path.display()
                ),
            }
        }
        self.finish_drains();
        self.log_stats();
    }
}

impl Handler<Store> for Storage {
    type Result = ();

    fn handle(&mut self, msg: Store, ctx: &mut Context<Self>) {
        self.accept(msg.0);
        self.limit_memory(ctx);
        self.pump(ctx);
    }
}

impl Handler<StoreMany> for Storage {
    type Result = ();

    fn handle(&mut self, msg: StoreMany, ctx: &mut Context<Self>) {
        for row in msg.0 {
            self.accept(row);
        }
        self.limit_memory(ctx);
        self.pump(ctx);
    }
}

impl Handler<FlushAll> for Storage {
    type Result = ResponseFuture<FlushReport>;

    fn handle(&mut self, msg: FlushAll, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.next_drain_id += 1;
        let id = self.next_drain_id;
        self.drains.push(Drain {
            id,
            written_at_start: self.written,
            tx,
        });
        // Try now, even in the middle of a backoff.
        self.retry_at = None;
        ctx.run_later(msg.deadline, move |act, ctx| act.drain_deadline(id, ctx));
        self.pump(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<GetStats> for Storage {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rows::{PacketRow, TelemetryRow};
    use chrono::{TimeZone, Utc};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Records what it writes; fails while `down`; panics on the calls listed in `panic_on`.
    #[derive(Clone, Default)]
    struct MemWriter {
        rows: Arc<Mutex<Vec<Row>>>,
        down: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
        panic_on_call: Option<usize>,
        /// The first call takes this long.
        slow_first_call: Option<Duration>,
    }

    impl BatchWriter for MemWriter {
        fn write(&mut self, rows: &[Row]) -> Result<usize, StorageError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.panic_on_call == Some(call) {
                panic!("boom on call {call}");
            }
            if let (0, Some(delay)) = (call, self.slow_first_call) {
                std::thread::sleep(delay);
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(StorageError::Connect("down for the test".into()));
            }
            lock_rows(&self.rows).extend_from_slice(rows);
            Ok(rows.len())
        }
    }

    fn lock_rows(rows: &Mutex<Vec<Row>>) -> MutexGuard<'_, Vec<Row>> {
        rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn row(i: u32) -> Row {
        Row::Telemetry(TelemetryRow {
            device_id: format!("dev{}", i % 13),
            point: "p".into(),
            value: f64::from(i),
            raw: f64::from(i),
            at: Utc
                .timestamp_opt(1_700_000_000 + i64::from(i), 0)
                .single()
                .expect("valid time"),
        })
    }

    fn settings(batch_size: usize, flush_interval: Duration, max_buffer: usize) -> StorageSettings {
        StorageSettings {
            batch_size,
            flush_interval,
            max_buffer,
            store_heartbeats: true,
            spool_path: PathBuf::from("unused.jsonl"), // Storage::start takes the path
            retention_telemetry: None,
            retention_packets: None,
            retention_deliveries: None,
        }
    }

    async fn stats(addr: &Addr<Storage>) -> StorageStats {
        addr.send(GetStats).await.expect("storage answers")
    }

    /// Polls the stats until `done` holds; panics after a generous deadline.
    async fn wait_for(addr: &Addr<Storage>, what: &str, done: impl Fn(&StorageStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = stats(addr).await;
            if done(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(9), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[actix_rt::test]
    async fn order_is_kept_through_an_outage_and_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool.jsonl");
        let writer = MemWriter::default();
        writer.down.store(true, Ordering::SeqCst);
        let addr = Storage::start(
            writer.clone(),
            settings(50, Duration::from_millis(20), 300),
            spool.clone(),
        );
        let sent: Vec<Row> = (0..3000).map(row).collect();
        for (i, chunk) in sent.chunks(100).enumerate() {
            if i % 2 == 0 {
                addr.do_send(StoreMany(chunk.to_vec()));
            } else {
                for r in chunk {
                    addr.do_send(Store(r.clone()));
                }
            }
            let s = stats(&addr).await;
            assert!(s.buffered <= 300, "memory over max_buffer: {s:?}");
            if i == 15 {
                // Mid-way the database comes back for a moment, then fails again.
                writer.down.store(false, Ordering::SeqCst);
                wait_for(&addr, "a write", |s| s.written > 0).await;
                writer.down.store(true, Ordering::SeqCst);
            }
        }
        let s = stats(&addr).await;
        assert!(
            s.spooled > 0 && s.spooled_now > 0 && !s.database_up,
            "{s:?}"
        );
        assert!(spool.exists());
        writer.down.store(false, Ordering::SeqCst);
        wait_for(&addr, "everything written", |s| s.written == 3000).await;
        let s = stats(&addr).await;
        assert_eq!((s.buffered, s.spooled_now), (0, 0), "{s:?}");
        assert!(s.database_up && s.failed_flushes > 0 && s.retried > 0);
        assert_eq!(
            *lock_rows(&writer.rows),
            sent,
            "rows written once each, in order"
        );
        assert!(!spool.exists());
    }

    #[actix_rt::test]
    async fn flush_all_when_down_spools_everything_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool_path = dir.path().join("spool.jsonl");
        let writer = MemWriter::default();
        writer.down.store(true, Ordering::SeqCst);
        let addr = Storage::start(
            writer.clone(),
            settings(40, Duration::from_millis(10), 150),
            spool_path.clone(),
        );
        let sent: Vec<Row> = (0..500).map(row).collect();
        for chunk in sent.chunks(25) {
            addr.do_send(StoreMany(chunk.to_vec()));
        }
        wait_for(&addr, "a failed write", |s| s.failed_flushes > 0).await;
        let report = addr
            .send(FlushAll {
                deadline: Duration::from_millis(500),
            })
            .await
            .expect("answer");
        assert_eq!(
            report,
            FlushReport {
                written: 0,
                spooled: 500,
                unsaved: 0
            }
        );
        let s = stats(&addr).await;
        assert_eq!((s.buffered, s.spooled_now), (0, 500), "{s:?}");
        let mut spool = Spool::open(&spool_path).expect("open spool");
        let mut back = Vec::new();
        while !spool.is_empty() {
            let chunk = spool.read_chunk(64).expect("read");
            back.extend(chunk.rows);
            spool.commit(chunk.pos).expect("commit");
        }
        assert_eq!(back, sent);
    }

    #[actix_rt::test]
    async fn flush_all_when_up_writes_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = MemWriter::default();
        let addr = Storage::start(
            writer.clone(),
            settings(1000, Duration::from_secs(3600), 100_000),
            dir.path().join("spool.jsonl"),
        );
        for i in 0..2500 {
            addr.do_send(Store(row(i)));
        }
        let report = addr.send(FlushAll::default()).await.expect("answer");
        assert_eq!(report.written, 2500);
        assert_eq!((report.spooled, report.unsaved), (0, 0));
        assert_eq!(lock_rows(&writer.rows).len(), 2500);
        // Nothing to do: answers at once.
        let report = addr.send(FlushAll::default()).await.expect("answer");
        assert_eq!(report, FlushReport::default());
    }

    #[actix_rt::test]
    async fn a_write_hanging_past_the_deadline_is_spooled_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool.jsonl");
        let writer = MemWriter {
            slow_first_call: Some(Duration::from_millis(1500)),
            ..MemWriter::default()
        };
        let addr = Storage::start(
            writer.clone(),
            settings(10, Duration::from_secs(3600), 1000),
            spool.clone(),
        );
        addr.do_send(StoreMany((0..15).map(row).collect()));
        let report = addr
            .send(FlushAll {
                deadline: Duration::from_millis(300),
            })
            .await
            .expect("answer");
        assert_eq!(
            report,
            FlushReport {
                written: 0,
                spooled: 15,
                unsaved: 0
            }
        );
        assert_eq!(stats(&addr).await.buffered, 0);
        // The slow write commits after all, then the spool is replayed: at least once, here
        // twice for the batch that was in flight.
        wait_for(&addr, "spool replayed", |s| {
            s.spooled_now == 0 && s.written == 25
        })
        .await;
        let written = lock_rows(&writer.rows).clone();
        let expected: Vec<Row> = (0..10).chain(0..15).map(row).collect();
        assert_eq!(written, expected);
        assert!(!spool.exists());
    }

    #[actix_rt::test]
    async fn rows_stay_in_memory_when_the_spool_cannot_be_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").expect("write");
        let writer = MemWriter::default();
        writer.down.store(true, Ordering::SeqCst);
        let addr = Storage::start(
            writer.clone(),
            settings(20, Duration::from_millis(10), 50),
            not_a_dir.join("spool.jsonl"),
        );
        let sent: Vec<Row> = (0..200).map(row).collect();
        addr.do_send(StoreMany(sent.clone()));
        let s = stats(&addr).await;
        assert_eq!((s.buffered, s.spooled, s.spooled_now), (200, 0, 0), "{s:?}");
        writer.down.store(false, Ordering::SeqCst);
        wait_for(&addr, "all written", |s| s.written == 200).await;
        assert_eq!(*lock_rows(&writer.rows), sent);
    }

    #[actix_rt::test]
    async fn a_panicking_writer_is_a_failed_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = MemWriter {
            panic_on_call: Some(0),
            ..MemWriter::default()
        };
        let addr = Storage::start(
            writer.clone(),
            settings(10, Duration::from_millis(10), 1000),
            dir.path().join("spool.jsonl"),
        );
        addr.do_send(StoreMany((0..25).map(row).collect()));
        wait_for(&addr, "all written", |s| s.written == 25).await;
        let s = stats(&addr).await;
        assert_eq!(s.failed_flushes, 1);
        assert_eq!(
            *lock_rows(&writer.rows),
            (0..25).map(row).collect::<Vec<_>>()
        );
    }

    #[actix_rt::test]
    async fn heartbeats_are_dropped_unless_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = MemWriter::default();
        let mut s = settings(100, Duration::from_millis(10), 1000);
        s.store_heartbeats = false;
        let addr = Storage::start(writer.clone(), s, dir.path().join("spool.jsonl"));
        let packet = |kind| {
            Row::Packet(PacketRow {
                device_id: "1".into(),
                direction: rows::Direction::In,
                kind,
                bytes: vec![2, 0],
                at: Utc::now(),
            })
        };
        addr.do_send(Store(packet(PacketKind::Heartbeat)));
        addr.do_send(Store(packet(PacketKind::Data)));
        let report = addr.send(FlushAll::default()).await.expect("answer");
        assert_eq!(report.written, 1);
        let written = lock_rows(&writer.rows).clone();
        assert!(
            matches!(written.as_slice(), [Row::Packet(p)] if p.kind == PacketKind::Data),
            "{written:?}"
        );
    }
}
