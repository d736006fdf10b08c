//! `relay_queue`: `$TTMS` frames held for an offline target terminal until it connects.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::storage::db::{on_inner, AnyConnection, Db, MultiBackend, StorageError};
use crate::storage::insert::NewRelay;
#[cfg(feature = "mysql")]
use crate::storage::mysql;
use crate::storage::schema::relay_queue;
use crate::storage::time::{naive, utc};

/// A `$TTMS` frame waiting in `relay_queue` for its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayRecord {
    pub id: i64,
    /// The target terminal's id (ccid as 8 uppercase hex digits).
    pub target: String,
    pub sender: String,
    /// The frame as it will be written to the target (`$TTMX…`), uppercase hex, no spaces.
    pub hex: String,
    pub queued_at: DateTime<Utc>,
}

/// What `relay_enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored (committed); `depth` frames now wait for the target, this one included.
    Queued { depth: i64 },
    /// Not stored: the target already has `depth` frames waiting, the configured maximum.
    Full { depth: i64 },
}

impl Db {
    /// Stores one `$TTMS` frame for an offline target, unless `max_queue` frames already wait
    /// for it. Returns once the insert is committed: a `Queued` frame is durable. Blocking.
    pub fn relay_enqueue(
        &self,
        target: &str,
        sender: &str,
        frame: &[u8],
        max_queue: usize,
    ) -> Result<Enqueued, StorageError> {
        let row = NewRelay {
            target,
            sender,
            hex: hex::encode_upper(frame),
            queued_at: naive(Utc::now()),
        };
        let max = i64::try_from(max_queue).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        let result = conn.transaction(|c| {
            use relay_queue::dsl as t;
            let depth: i64 = t::relay_queue
                .filter(t::target.eq(target))
                .filter(t::delivered_at.is_null())
                .count()
                .get_result(c)?;
            if depth >= max {
                return Ok::<_, diesel::result::Error>(Enqueued::Full { depth });
            }
            on_inner!(c, c => diesel::insert_into(relay_queue::table).values(&row).execute(c),
                      mysql c => mysql::relay_insert(c, &row))?;
            Ok(Enqueued::Queued { depth: depth + 1 })
        })?;
        Ok(result)
    }

    /// Frames not yet delivered, of one target or all, oldest first (by id).
    pub fn relay_pending(
        &self,
        target: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RelayRecord>, StorageError> {
        use relay_queue::dsl as t;
        let mut query = t::relay_queue
            .filter(t::delivered_at.is_null())
            .into_boxed::<MultiBackend>();
        if let Some(target) = target {
            query = query.filter(t::target.eq(target));
        }
        let rows: Vec<(i64, String, String, String, NaiveDateTime)> = query
            .select((t::id, t::target, t::sender, t::hex, t::queued_at))
            .order(t::id.asc())
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(id, target, sender, hex, at)| RelayRecord {
                id,
                target,
                sender,
                hex,
                queued_at: utc(at),
            })
            .collect())
    }

    /// Marks frames delivered (they then no longer count as waiting). Blocking.
    pub fn relay_delivered(&self, ids: &[i64]) -> Result<usize, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = naive(Utc::now());
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        let n = on_inner!(conn, c => {
                use relay_queue::dsl as t;
                diesel::update(t::relay_queue.filter(t::id.eq_any(ids)))
                    .set(t::delivered_at.eq(Some(now)))
                    .execute(c)
            },
            mysql c => mysql::relay_delivered(c, ids, now))?;
        Ok(n)
    }
}
