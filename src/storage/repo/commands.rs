//! `commands`: every operator command and where it stands (written as upserts through the
//! Storage actor by `batch.rs`), and the offline queue, whose commands are `commands` rows
//! with status `queued`: enqueue, claim, unclaim, expire.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use crate::storage::db::{AnyConnection, Db, MultiBackend, StorageError};
use crate::storage::insert::NewQueued;
#[cfg(feature = "mysql")]
use crate::storage::mysql;
use crate::storage::rows::{CommandRow, DEVICE_ID_MAX};
use crate::storage::schema::commands;
use crate::storage::time::{bound, naive, utc};

/// A command waiting in the offline queue (a `commands` row with status `queued`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCommand {
    pub id: String,
    pub device_id: String,
    /// The JSON body as the caller sent it.
    pub request: String,
    /// The name of the token that queued it.
    pub requested_by: Option<String>,
    /// The id of that token (the control lock is checked against it at delivery).
    pub token_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Delivery order within the device, from 1; assigned by `enqueue_command`.
    pub seq: i64,
}

/// How often `enqueue_command` tries again when a concurrent enqueue took the same sequence
/// number (or the database reported a deadlock between them).
const ENQUEUE_ATTEMPTS: usize = 10;

/// Inside the caller's transaction: takes the device's next sequence number as `$seq`, runs
/// `$insert` (the backend's insert of the row with it) and answers the number.
macro_rules! insert_next {
    ($c:expr, $device:expr, |$seq:ident| $insert:expr) => {{
        use crate::storage::schema::commands::dsl as t;
        let max: Option<i64> = t::commands
            .filter(t::device_id.eq($device))
            .select(diesel::dsl::max(t::queue_seq))
            .first(&mut *$c)?;
        let $seq = max.unwrap_or(0) + 1;
        $insert?;
        Ok::<_, diesel::result::Error>($seq)
    }};
}

type CommandTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    NaiveDateTime,
    NaiveDateTime,
);

type QueuedTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<i64>,
);

impl Db {
    /// One recorded command, as `GET /api/commands/{cid}` shows it.
    pub fn command(&self, command_id: &str) -> Result<Option<CommandRow>, StorageError> {
        use crate::storage::schema::commands::dsl::*;
        let row: Option<CommandTuple> = commands
            .filter(id.eq(command_id))
            .select((
                id,
                device_id,
                request,
                status,
                result,
                error,
                requested_by,
                created_at,
                updated_at,
            ))
            .first(&mut *self.conn()?)
            .optional()?;
        Ok(row.map(|(i, d, rq, st, res, err, by, c, u)| CommandRow {
            id: i,
            device_id: d,
            request: rq,
            status: st,
            result: res,
            error: err,
            requested_by: by,
            created_at: utc(c),
            updated_at: utc(u),
        }))
    }

    /// Stores a command in the offline queue of its device, behind the ones already there, and
    /// returns its sequence number. Returns once the row is committed: a queued command is
    /// durable. `cmd.seq` is ignored. Blocking.
    pub fn enqueue_command(&self, cmd: &QueuedCommand) -> Result<i64, StorageError> {
        if cmd.id.chars().count() > 40
            || cmd.device_id.chars().count() > DEVICE_ID_MAX
            || cmd.requested_by.as_deref().unwrap_or("").chars().count() > DEVICE_ID_MAX
            || cmd.token_id.as_deref().unwrap_or("").chars().count() > 40
        {
            return Err(StorageError::Query(
                "command id, device id or token name too long to store".into(),
            ));
        }
        // A poisoned lock only means another enqueue panicked; the guard protects no data.
        let _serial = self
            .enqueue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        let device = cmd.device_id.as_str();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let row = |queue_seq| NewQueued {
                id: &cmd.id,
                device_id: device,
                request: &cmd.request,
                status: "queued",
                requested_by: cmd.requested_by.as_deref(),
                token_id: cmd.token_id.as_deref(),
                created_at: naive(cmd.created_at),
                updated_at: naive(cmd.created_at),
                expires_at: naive(cmd.expires_at),
                queue_seq,
            };
            // SQLite: an IMMEDIATE transaction takes the write lock before reading the maximum,
            // so two enqueues cannot both read it and then fail to upgrade their locks.
            let result = match &mut *conn {
                AnyConnection::Postgresql(c) => c.transaction(|c| {
                    insert_next!(c, device, |seq| diesel::insert_into(commands::table)
                        .values(&row(seq))
                        .execute(c))
                }),
                AnyConnection::Sqlite(c) => c.immediate_transaction(|c| {
                    insert_next!(c, device, |seq| diesel::insert_into(commands::table)
                        .values(&row(seq))
                        .execute(c))
                }),
                #[cfg(feature = "mysql")]
                AnyConnection::Mysql(c) => c.transaction(|c| {
                    insert_next!(c, device, |seq| mysql::insert_queued(c, &row(seq)))
                }),
            };
            match result {
                Ok(seq) => return Ok(seq),
                // A concurrent enqueue for the same device took this sequence number (unique
                // index) or deadlocked with this one: read the maximum again.
                Err(diesel::result::Error::DatabaseError(kind, info))
                    if attempt < ENQUEUE_ATTEMPTS =>
                {
                    log::debug!(
                        "device {}: enqueue attempt {attempt} failed ({kind:?}: {}); retrying",
                        cmd.device_id,
                        info.message()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The first command still queued for a device (lowest sequence number), if any.
    pub fn next_queued(&self, device: &str) -> Result<Option<QueuedCommand>, StorageError> {
        Ok(self.queued(Some(device), 1)?.into_iter().next())
    }

    /// Commands still queued, of one device or all, in delivery order (per device).
    pub fn queued(
        &self,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<QueuedCommand>, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let mut query = t::commands
            .filter(t::status.eq("queued"))
            .into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(t::device_id.eq(d));
        }
        query = query.order((t::device_id.asc(), t::queue_seq.asc()));
        self.load_queued(query, limit)
    }

    /// The devices that have commands queued (at most `limit`).
    pub fn queued_devices(&self, limit: i64) -> Result<Vec<String>, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        Ok(t::commands
            .filter(t::status.eq("queued"))
            .select(t::device_id)
            .distinct()
            .order(t::device_id.asc())
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?)
    }

    /// Claims a queued command for delivery: `queued` → `sent`, unless it has expired by `now`
    /// or someone else claimed it first. Only the caller that gets `true` may send it.
    pub fn claim_command(
        &self,
        command_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let now = naive(now);
        let n = diesel::update(
            t::commands
                .filter(t::id.eq(command_id))
                .filter(t::status.eq("queued"))
                .filter(t::expires_at.gt(bound(self.backend, now).nullable())),
        )
        .set((t::status.eq("sent"), t::updated_at.eq(now)))
        .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// Puts a claimed command back in the queue (`sent` → `queued`): for a claim whose device
    /// went away before the command was handed to its connection, so nothing was sent.
    pub fn unclaim_command(&self, command_id: &str) -> Result<bool, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let n = diesel::update(
            t::commands
                .filter(t::id.eq(command_id))
                .filter(t::status.eq("sent"))
                .filter(t::queue_seq.is_not_null()),
        )
        .set(t::status.eq("queued"))
        .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// Marks a queued command `expired` if its ttl has passed by `now`; `true` when this call
    /// did it (so that exactly one caller reports it).
    pub fn expire_command(
        &self,
        command_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let now = naive(now);
        let n = diesel::update(
            t::commands
                .filter(t::id.eq(command_id))
                .filter(t::status.eq("queued"))
                .filter(t::expires_at.le(bound(self.backend, now).nullable())),
        )
        .set((
            t::status.eq("expired"),
            t::error.eq(Some("expired before the device came online")),
            t::updated_at.eq(now),
        ))
        .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// Queued commands whose ttl has passed by `now`, oldest expiry first (for the sweep).
    pub fn expired_queued(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<QueuedCommand>, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let query = t::commands
            .filter(t::status.eq("queued"))
            .filter(t::expires_at.le(bound(self.backend, naive(now)).nullable()))
            .order((t::expires_at.asc(), t::id.asc()))
            .into_boxed::<MultiBackend>();
        self.load_queued(query, limit)
    }

    /// At start: queued commands that were claimed (`sent`) when the server stopped without
    /// their answer become `failed` — whether the device got them is unknown, and they are
    /// never sent twice. Returns how many.
    pub fn fail_interrupted(&self, now: DateTime<Utc>) -> Result<usize, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let n = diesel::update(
            t::commands
                .filter(t::status.eq("sent"))
                .filter(t::queue_seq.is_not_null()),
        )
        .set((
            t::status.eq("failed"),
            t::error.eq(Some(
                "the server stopped before the device answered; not sent again",
            )),
            t::updated_at.eq(naive(now)),
        ))
        .execute(&mut *self.conn()?)?;
        Ok(n)
    }

    /// The first `limit` queued commands of `query` (filtered and ordered by the caller).
    fn load_queued(
        &self,
        query: commands::BoxedQuery<'_, MultiBackend>,
        limit: i64,
    ) -> Result<Vec<QueuedCommand>, StorageError> {
        use crate::storage::schema::commands::dsl as t;
        let rows: Vec<QueuedTuple> = query
            .select((
                t::id,
                t::device_id,
                t::request,
                t::requested_by,
                t::token_id,
                t::created_at,
                t::expires_at,
                t::queue_seq,
            ))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(queued_command).collect())
    }
}

fn queued_command(row: QueuedTuple) -> QueuedCommand {
    let (id, device_id, request, requested_by, token_id, created, expires, seq) = row;
    QueuedCommand {
        id,
        device_id,
        request,
        requested_by,
        token_id,
        created_at: utc(created),
        // Every queued row has both; a row without an expiry never expires by itself.
        expires_at: expires.map_or(DateTime::<Utc>::MAX_UTC, utc),
        seq: seq.unwrap_or(0),
    }
}
