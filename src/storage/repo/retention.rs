//! Retention: deleting rows by age, in chunks, from the tables that grow without bound.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use crate::storage::db::{AnyConnection, Db, StorageError};
use crate::storage::schema::{points, series};
use crate::storage::time::{bound, millis, naive};

/// Rows one retention DELETE removes (more only when rows share the boundary timestamp;
/// telemetry points never do).
const PRUNE_CHUNK: i64 = 5_000;

/// Tables that retention prunes by age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrunableTable {
    Telemetry,
    RawPackets,
    /// `$TTMS` frames delivered before the time (frames still waiting are never pruned).
    DeliveredRelay,
    /// Webhook delivery attempts.
    WebhookDeliveries,
}

/// Deletes the rows of `$table` older than `$before`, oldest first, in statements of about
/// `PRUNE_CHUNK` rows (each its own transaction, so no lock is held for long). A macro
/// because each table's `at` column is a type of its own.
macro_rules! prune_table {
    ($conn:expr, $backend:expr, $table:ident, $before:expr) => {{
        use crate::storage::schema::$table::dsl as t;
        let before = || bound($backend, $before);
        let mut total = 0usize;
        loop {
            // The timestamp of the PRUNE_CHUNK-th oldest old row, if there are that many.
            let boundary: Option<NaiveDateTime> = t::$table
                .select(t::at)
                .filter(t::at.lt(before()))
                .order(t::at.asc())
                .offset(PRUNE_CHUNK - 1)
                .limit(1)
                .first(&mut *$conn)
                .optional()?;
            let deleted = match boundary {
                Some(b) => diesel::delete(
                    t::$table
                        .filter(t::at.lt(before()))
                        .filter(t::at.le(bound($backend, b))),
                )
                .execute(&mut *$conn)?,
                None => {
                    diesel::delete(t::$table.filter(t::at.lt(before()))).execute(&mut *$conn)?
                }
            };
            total += deleted;
            if boundary.is_none() || deleted == 0 {
                break;
            }
        }
        total
    }};
}

/// Deletes the telemetry points stored before `before` (milliseconds), series by series
/// through the primary key, in statements of at most `PRUNE_CHUNK` rows. A row stored in the
/// cutoff's millisecond stays. Series stay, points or not (see `series.rs`).
fn prune_points(conn: &mut AnyConnection, before: i64) -> QueryResult<usize> {
    let ids: Vec<i32> = series::table
        .select(series::id)
        .order(series::id)
        .load(conn)?;
    let mut total = 0;
    for id in ids {
        let old = || {
            points::table
                .filter(points::series_id.eq(id))
                .filter(points::at.lt(before))
        };
        loop {
            // The time of the PRUNE_CHUNK-th oldest old point of the series, if there are that
            // many (times are unique within a series).
            let boundary: Option<i64> = old()
                .select(points::at)
                .order(points::at.asc())
                .offset(PRUNE_CHUNK - 1)
                .limit(1)
                .first(conn)
                .optional()?;
            let deleted = match boundary {
                Some(b) => diesel::delete(old().filter(points::at.le(b))).execute(conn)?,
                None => diesel::delete(old()).execute(conn)?,
            };
            total += deleted;
            if boundary.is_none() || deleted == 0 {
                break;
            }
        }
    }
    Ok(total)
}

impl Db {
    /// Retention: deletes the rows older than `before`, in bounded chunks; returns how many.
    pub fn prune(
        &self,
        table: PrunableTable,
        before: DateTime<Utc>,
    ) -> Result<usize, StorageError> {
        let before = naive(before);
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        let deleted = match table {
            PrunableTable::Telemetry => prune_points(conn, millis(before.and_utc()))?,
            PrunableTable::RawPackets => prune_table!(conn, self.backend, raw_packets, before),
            PrunableTable::WebhookDeliveries => {
                prune_table!(conn, self.backend, webhook_deliveries, before)
            }
            PrunableTable::DeliveredRelay => {
                use crate::storage::schema::relay_queue::dsl as t;
                diesel::delete(
                    t::relay_queue.filter(
                        t::delivered_at
                            .is_not_null()
                            .and(t::delivered_at.lt(bound(self.backend, before).nullable())),
                    ),
                )
                .execute(conn)?
            }
        };
        Ok(deleted)
    }
}
