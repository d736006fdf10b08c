//! The Storage actor: buffers rows, writes them in batches through the [`DbWriter`], backs
//! off while the database is down and spools what memory cannot hold. See the documentation
//! of `storage` (mod.rs) for what it guarantees.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use log::{debug, error, info, warn};
use tokio::sync::oneshot;

use self::pressure::{megabytes, LagNotice, LagWarnings, Throughput, DROPS_REMEMBERED};
use super::rows::{PacketKind, Row};
use super::spool::{Dropped, Spool, SpoolPos};
use super::writer::{BatchWriter, DbWriter, WriteBatch};
use super::{FlushAll, FlushReport, GetStats, StorageError, StorageStats, Store, StoreMany};
use crate::storage::StorageSettings;

/// First retry delay after a failed write; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// While a [`FlushAll`] is running, retries come at least this often.
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// After the spool could not be read or written, leave it alone this long.
const SPOOL_RETRY: Duration = Duration::from_secs(5);
const STATS_EVERY: Duration = Duration::from_secs(60);
/// Rows dropped at a full spool are logged at most this often (the first at once).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often rates and the write lag are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A write from the buffer takes every row waiting, up to this many (or `batch_size` if that
/// is larger): under load the rows that arrived during one write go in the next, in one
/// transaction. Telemetry is stored by series, so a larger write puts more points of each
/// series into each page it touches (BENCHMARKS.md, "Telemetry layout").
const LARGEST_WRITE: usize = 50_000;

/// The storage actor. See the documentation of `storage` (mod.rs).
pub struct Storage {
    batch_size: usize,
    flush_interval: Duration,
    max_buffer: usize,
    max_spool: u64,
    warn_lag: Duration,
    store_heartbeats: bool,
    writer: Addr<DbWriter>,
    spool: Arc<Mutex<Spool>>,
    spool_path: PathBuf,
    /// Mirrors of the spool's counters, refreshed after each spool operation.
    spool_waiting: u64,
    spool_skipped: u64,
    spool_bytes: u64,
    /// The time of the oldest row in the spool, as far as known: the first row spilled into
    /// an empty spool, then the first row of each chunk read for replay.
    spool_front_at: Option<DateTime<Utc>>,
    /// While the spool is replayed, live rows from the buffer get every other write, so a
    /// long replay never starves them: true when the buffer's turn is next.
    live_turn: bool,
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
    /// A replayed chunk's write succeeded while another spool operation ran (a spill): its
    /// commit waits for that one to end, and nothing is replayed meanwhile (the chunk would
    /// be read again).
    commit_waiting: Option<SpoolPos>,
    drains: Vec<Drain>,
    next_drain_id: u64,
    written: u64,
    retried: u64,
    spooled: u64,
    failed_flushes: u64,
    /// Rows offered (accepted into the buffer) since start.
    offered: u64,
    /// Rows left out of a full spool since start, and when the last was.
    dropped: Dropped,
    last_drop: Option<Instant>,
    /// Drops not logged yet, and when drops were last logged.
    drops_unlogged: Dropped,
    drops_logged_at: Option<Instant>,
    last_error: String,
    throughput: Throughput,
    lag_warnings: LagWarnings,
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
        let mut spool = Spool::new(spool_path.clone());
        spool.set_max_bytes(settings.max_spool);
        Storage {
            batch_size: settings.batch_size.max(1),
            flush_interval: settings.flush_interval,
            max_buffer: settings.max_buffer.max(1),
            max_spool: settings.max_spool,
            warn_lag: settings.warn_lag,
            store_heartbeats: settings.store_heartbeats,
            writer,
            spool: Arc::new(Mutex::new(spool)),
            spool_path,
            spool_waiting: 0,
            spool_skipped: 0,
            spool_bytes: 0,
            spool_front_at: None,
            live_turn: false,
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
            commit_waiting: None,
            drains: Vec::new(),
            next_drain_id: 0,
            written: 0,
            retried: 0,
            spooled: 0,
            failed_flushes: 0,
            offered: 0,
            dropped: Dropped::default(),
            last_drop: None,
            drops_unlogged: Dropped::default(),
            drops_logged_at: None,
            last_error: String::new(),
            throughput: Throughput::default(),
            lag_warnings: LagWarnings::default(),
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
        let (offered_per_second, written_per_second) = self.throughput.rates();
        StorageStats {
            buffered: self.buffered(),
            written: self.written,
            retried: self.retried,
            spooled: self.spooled,
            spooled_now: self.spool_waiting,
            failed_flushes: self.failed_flushes,
            spool_corrupt: self.spool_skipped,
            database_up: self.failures == 0,
            spool_bytes: self.spool_bytes,
            write_lag_seconds: self.lag().as_secs_f64(),
            offered_per_second,
            written_per_second,
            dropped_packets: self.dropped.packets,
            dropped_telemetry: self.dropped.telemetry,
            degraded: self.degraded(),
        }
    }

    /// The age of the oldest row not in the database yet, by its own time: in the spool, in
    /// a batch being written or retried, or at the front of the buffer.
    fn lag(&self) -> Duration {
        let in_flight = self
            .in_flight
            .as_ref()
            .filter(|f| !matches!(f.source, Source::Abandoned))
            .and_then(|f| f.rows.first());
        let oldest = [
            self.spool_front_at.filter(|_| self.spool_waiting > 0),
            in_flight.map(Row::at),
            self.retry.as_ref().and_then(|r| r.first()).map(Row::at),
            self.buffer.front().map(Row::at),
        ]
        .into_iter()
        .flatten()
        .min();
        oldest
            .and_then(|at| (Utc::now() - at).to_std().ok())
            .unwrap_or_default()
    }

    /// Why storage is not keeping up, one sentence each (`/api/health`); empty when it is.
    fn degraded(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(since) = self.down_since {
            reasons.push(format!(
                "database unreachable for {}s ({} failed writes): {}",
                since.elapsed().as_secs(),
                self.failures,
                self.last_error
            ));
        }
        let lag = self.lag();
        if lag > self.warn_lag {
            let (offered, written) = self.throughput.rates();
            reasons.push(format!(
                "write lag {:.0}s over warn_lag {}s: {offered:.0} rows/s offered, {written:.0} rows/s written",
                lag.as_secs_f64(),
                self.warn_lag.as_secs()
            ));
        }
        if self.spool_waiting > 0 {
            reasons.push(format!(
                "{} rows ({}) spooled in {}, waiting for the database",
                self.spool_waiting,
                megabytes(self.spool_bytes),
                self.spool_path.display()
            ));
        }
        if let Some(at) = self.last_drop.filter(|t| t.elapsed() < DROPS_REMEMBERED) {
            reasons.push(format!(
                "spool full (max_spool {}): {} raw packets and {} telemetry rows dropped since start, the last {}s ago",
                megabytes(self.max_spool),
                self.dropped.packets,
                self.dropped.telemetry,
                at.elapsed().as_secs()
            ));
        }
        reasons
    }

    /// Once a second: rates, and a warning while the lag is over `warn_lag`.
    fn sample(&mut self) {
        self.log_drops(true);
        let now = Instant::now();
        self.throughput.sample(now, self.offered, self.written);
        let lag = self.lag();
        match self.lag_warnings.observe(now, lag, self.warn_lag) {
            LagNotice::Quiet => {}
            LagNotice::Behind => {
                let (offered, written) = self.throughput.rates();
                warn!(
                    "storage: falling behind the devices: write lag {:.1}s (warn_lag {}s), \
                     {offered:.0} rows/s offered, {written:.0} rows/s written, {} rows in memory, \
                     {} rows ({}) spooled",
                    lag.as_secs_f64(),
                    self.warn_lag.as_secs(),
                    self.buffered(),
                    self.spool_waiting,
                    megabytes(self.spool_bytes)
                );
            }
            LagNotice::CaughtUp => info!(
                "storage: caught up: write lag {:.1}s, {} rows in memory, {} spooled",
                lag.as_secs_f64(),
                self.buffered(),
                self.spool_waiting
            ),
        }
    }

    /// Counts rows a full spool left out, and logs them: never silently, but at most one
    /// line per [`DROP_LOG_EVERY`] (the rest is logged by [`Storage::sample`]).
    fn count_dropped(&mut self, dropped: Dropped) {
        if dropped.total() == 0 {
            return;
        }
        self.dropped.packets += dropped.packets;
        self.dropped.telemetry += dropped.telemetry;
        self.drops_unlogged.packets += dropped.packets;
        self.drops_unlogged.telemetry += dropped.telemetry;
        self.last_drop = Some(Instant::now());
        self.log_drops(false);
    }

    fn log_drops(&mut self, only_if_due: bool) {
        let pending = self.drops_unlogged;
        if pending.total() == 0 {
            return;
        }
        let due = self
            .drops_logged_at
            .map_or(true, |t| t.elapsed() >= DROP_LOG_EVERY);
        if !due && (only_if_due || self.drops_logged_at.is_some()) {
            return;
        }
        self.drops_logged_at = Some(Instant::now());
        self.drops_unlogged = Dropped::default();
        error!(
            "storage: spool {} has reached its share of max_spool ({}): dropped {} raw packets and {} telemetry rows \
             ({} and {} since start); packets stop at half of max_spool, telemetry when it is full; \
             connection events, device states and commands are always kept",
            self.spool_path.display(),
            megabytes(self.max_spool),
            pending.packets,
            pending.telemetry,
            self.dropped.packets,
            self.dropped.telemetry
        );
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
        self.offered += 1;
        self.buffer.push_back(row);
    }

    /// Decides what to do next: retry, replay the spool, write a batch, wait, or answer a
    /// finished [`FlushAll`]. Called after every change.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || self.spool_busy || self.commit_waiting.is_some() {
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
            let live_due = self.buffer.len() >= self.batch_size
                || self.oldest.is_some_and(|t| t + self.flush_interval <= now);
            if self.live_turn && live_due {
                if let Some(rows) = self.take_live() {
                    self.live_turn = false;
                    self.send(Arc::new(rows), Source::Buffer, ctx);
                    return;
                }
            }
            self.live_turn = true;
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
            let n = self.buffer.len().min(self.batch_size.max(LARGEST_WRITE));
            let rows: Vec<Row> = self.buffer.drain(..n).collect();
            if self.buffer.is_empty() {
                self.oldest = None;
            }
            self.send(Arc::new(rows), Source::Buffer, ctx);
        } else {
            self.wake_at(due, ctx);
        }
    }

    /// A write of live rows while the spool is replayed: those that may overtake the older
    /// rows in the spool ([`Row::order_free`]), up to the usual size of a write. The others
    /// stay in the buffer, in order, until the spool is empty. None if there are none.
    fn take_live(&mut self) -> Option<Vec<Row>> {
        let max = self.batch_size.max(LARGEST_WRITE);
        let mut live = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(row) = self.buffer.pop_front() {
            if live.len() >= max {
                self.buffer.push_front(row);
                break;
            }
            if row.order_free() {
                live.push(row);
            } else {
                kept.push_back(row);
            }
        }
        kept.append(&mut self.buffer);
        self.buffer = kept;
        if self.buffer.is_empty() {
            self.oldest = None;
        } else {
            // Still waiting: they are written at the next turn or after the replay.
            self.oldest.get_or_insert_with(Instant::now);
        }
        (!live.is_empty()).then_some(live)
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
                self.last_error = e.to_string();
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
            (result, spool.waiting(), spool.skipped(), spool.bytes())
        });
        ctx.wait(job.into_actor(self).map(|joined, act, ctx| match joined {
            Ok((result, waiting, skipped, bytes)) => {
                act.spool_busy = false;
                act.spool_waiting = waiting;
                act.spool_skipped = skipped;
                act.spool_bytes = bytes;
                if waiting == 0 {
                    act.spilling = false;
                    act.spool_front_at = None;
                }
                then(act, result, ctx);
                if !act.spool_busy {
                    if let Some(pos) = act.commit_waiting.take() {
                        act.commit_spool(pos, ctx);
                    }
                }
            }
            Err(e) => {
                act.spool_busy = false;
                error!("storage: a spool operation failed: {e}");
                act.spool_blocked_until = Some(Instant::now() + SPOOL_RETRY);
                act.retry_at = Some(Instant::now() + SPOOL_RETRY);
                act.after_spool(ctx);
                if !act.spool_busy {
                    if let Some(pos) = act.commit_waiting.take() {
                        act.commit_spool(pos, ctx);
                    }
                }
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
                    if let Some(first) = chunk.rows.first() {
                        act.spool_front_at = Some(first.at());
                    }
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
        if self.spool_busy {
            // The write's answer came while a spill runs; committed when it ends.
            self.commit_waiting = Some(pos);
            return;
        }
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
        let first_at = rows.first().map(Row::at);
        self.spool_op(
            ctx,
            move |s| match s.append(&rows) {
                Ok(dropped) => Ok(dropped),
                Err(e) => Err((e, rows)),
            },
            move |act, result, ctx| {
                match result {
                    Ok(dropped) => {
                        act.count_dropped(dropped);
                        act.spooled += n as u64 - dropped.total();
                        if act.spool_front_at.is_none() {
                            act.spool_front_at = first_at;
                        }
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
        if self.spool_busy {
            // One spool operation at a time: this one right after the running one.
            ctx.run_later(Duration::from_millis(20), move |act, ctx| {
                act.drain_deadline(drain_id, ctx)
            });
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
                    Ok(dropped) => Ok(dropped),
                    Err(e) => Err((e, Vec::new(), back)),
                }
            },
            move |act, result, ctx| {
                match result {
                    Ok(dropped) => {
                        act.count_dropped(dropped);
                        act.spooled += total - dropped.total();
                    }
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
        ctx.run_interval(SAMPLE_EVERY, |act, _| act.sample());
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
            let spool = Arc::clone(&self.spool);
            let mut spool = lock(&spool);
            match spool.prepend(&front).and_then(|()| spool.append(&back)) {
                Ok(dropped) => {
                    self.spool_waiting = spool.waiting();
                    drop(spool);
                    self.count_dropped(dropped);
                    self.spooled += total as u64 - dropped.total();
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
        // Drops not logged yet are logged now, whenever the last line was.
        self.drops_logged_at = None;
        self.log_drops(false);
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

mod pressure;

#[cfg(test)]
mod tests;
