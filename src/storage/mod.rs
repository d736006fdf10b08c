//! Storage: the one actor between the device actors and the database.
//!
//! Device actors `do_send` [`Store`] / [`StoreMany`]; that never waits and never fails. Rows
//! are buffered and written in batches by a [`DbWriter`] on its own thread: when `batch_size`
//! rows are waiting, or `flush_interval` after the oldest of them arrived. One batch is in
//! flight at a time; the next takes every row that waits (up to 50,000, or `batch_size` if
//! larger), so a write that falls behind catches up in larger transactions.
//!
//! Nothing is lost:
//! - A failed write keeps its rows at the front and is retried with exponential backoff
//!   (200 ms doubling to 30 s). The outage is logged once when it starts and once when it ends.
//! - Past `max_buffer` rows in memory, the oldest go to the [`Spool`] file, within its disk
//!   budget `max_spool` (raw packets stop at half of it, telemetry when it is full; every row
//!   left out is counted and logged). What is in the spool is older than what is in memory;
//!   it is replayed in batches of `batch_size`, and every other write takes live rows from
//!   memory instead, so a long replay never starves them. Only rows that are records of their
//!   own ([`Row::order_free`]) may overtake spooled ones: a record's states (devices,
//!   commands, deliveries) are written in the order they arrived.
//! - Not keeping up is reported: past `warn_lag` of write lag a warning with the rates, and
//!   the reasons in [`StorageStats::degraded`] (`/api/health`, `/metrics`).
//! - A spool left by an earlier run (a crash, or a database down at shutdown) is replayed at
//!   start.
//! - [`FlushAll`] (shutdown) writes everything if the database answers; what cannot be written
//!   before its deadline goes to the spool. Rows still in memory when the actor stops anyway
//!   are spooled in `stopped()`.
//!
//! The guarantee is at least once: a write that times out at shutdown but still commits, or a
//! crash between a commit and the spool's position update, can write a batch twice.
//!
//! Where things are: this file is the actor's public face (its messages); `actor.rs` the actor
//! (buffer, backoff, spool replay); `writer.rs` the thread that writes; `spool.rs` the file.
//! The database itself: `db.rs` (connection, pool, `Db::call`), `schema.rs` (the tables),
//! `batch.rs` (the batched write of [`Row`]s), `series.rs` (telemetry's series ids and their
//! cache), `repo/<table>.rs` (each table's queries),
//! `mysql.rs` (what MariaDB/MySQL needs differently), `time.rs`, `url.rs`.

mod actor;
mod batch;
pub mod db;
mod error;
mod insert;
#[cfg(feature = "mysql")]
mod mysql;
pub mod packet_log;
mod repo;
pub mod rows;
pub mod schema;
mod series;
pub mod spool;
mod time;
mod url;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use log::warn;
use serde::Serialize;

pub use actor::Storage;
pub use db::{Db, StorageError};
pub use rows::Row;
pub use spool::Spool;
pub use writer::{BatchWriter, DbWriter, WriteBatch};

/// `[storage]`: how rows are batched, where they wait while the database is away, and how
/// long history is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSettings {
    /// Rows waiting that start a write (a write takes all that wait, up to 50,000 or this if
    /// larger); at least 1.
    pub batch_size: usize,
    /// Longest a row waits in memory.
    pub flush_interval: Duration,
    /// Rows held while the database is unreachable; at least 1.
    pub max_buffer: usize,
    pub store_heartbeats: bool,
    /// Where rows go while the database is unreachable and the buffer is full.
    pub spool_path: PathBuf,
    /// The most disk the spool may take, in bytes; beyond it raw packets are dropped first,
    /// then telemetry (counted and logged).
    pub max_spool: u64,
    /// A write lag (the oldest row waiting) above this is logged as a warning and makes
    /// `/api/health` answer `degraded`.
    pub warn_lag: Duration,
    /// Telemetry older than this is deleted; None keeps it for good ("forever").
    pub retention_telemetry: Option<Duration>,
    /// Raw packets older than this are deleted; None keeps them for good.
    pub retention_packets: Option<Duration>,
    /// Webhook delivery attempts older than this are deleted; None keeps them for good.
    pub retention_deliveries: Option<Duration>,
    /// Which raw packets go to the database.
    pub packets: packet_log::PacketMode,
    /// Packets kept in memory per device for the API, whatever is stored; 0 keeps none.
    pub recent_packets: usize,
}

/// Writes a row at once, off the async threads, for records a client may read right after an
/// event about them (a command's state after `command.completed`): the batched path could
/// leave the old state visible for up to `flush_interval`. If the database cannot take it, the
/// row goes to the Storage actor instead, which retries and spools it: nothing is lost, it is
/// only later. True when the row was written now; after a false, later states of the same
/// record must go through the buffer too ([`Store`]), so that they cannot overtake this one.
pub async fn store_now(db: &Db, storage: &Addr<Storage>, row: Row) -> bool {
    let attempt = row.clone();
    match db
        .call(move |db| db.write(std::slice::from_ref(&attempt)))
        .await
    {
        Ok(_) => return true,
        Err(e) => warn!("storage: direct write failed ({e}); the row goes through the buffer"),
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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// Bytes of rows in the spool file now.
    pub spool_bytes: u64,
    /// Age of the oldest row not yet in the database (by its own time), in seconds; 0 when
    /// nothing waits.
    pub write_lag_seconds: f64,
    /// Rows offered to storage per second, over the last 10 s.
    pub offered_per_second: f64,
    /// Rows written per second, over the last 10 s.
    pub written_per_second: f64,
    /// Raw packets left out of a full spool (`max_spool`).
    pub dropped_packets: u64,
    /// Telemetry rows left out of a full spool.
    pub dropped_telemetry: u64,
    /// Why storage is not keeping up, one sentence each; empty when it is.
    pub degraded: Vec<String>,
}
