//! `connection_events`: each device's connection history (connects, disconnects, timeouts,
//! replaced and rejected connections).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use serde::Serialize;

use crate::storage::db::{Db, MultiBackend, StorageError};
use crate::storage::schema::connection_events;
use crate::storage::time::utc;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub device_id: String,
    pub event: String,
    pub at: DateTime<Utc>,
    pub detail: String,
    pub remote_addr: String,
}

type EventQuery<'a> = connection_events::BoxedQuery<'a, MultiBackend>;

impl Db {
    /// Connection history of one device (or of all, the unregistered included), newest first.
    pub fn events(
        &self,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StorageError> {
        use crate::storage::schema::connection_events::dsl::*;
        let mut query = connection_events.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
        self.newest_events(query, limit)
    }

    /// Connection history of the devices matching any of `patterns` (device ids, or
    /// prefixes ending in `*`), newest first: what a device-restricted token may see.
    pub fn events_among(
        &self,
        patterns: &[String],
        limit: i64,
    ) -> Result<Vec<EventRecord>, StorageError> {
        use crate::storage::schema::connection_events::dsl::*;
        type Cond = Box<dyn BoxableExpression<connection_events, MultiBackend, SqlType = Bool>>;
        let mut cond: Cond = Box::new(sql::<Bool>("1 = 0"));
        for p in patterns {
            cond = match p.strip_suffix('*') {
                Some(prefix) => {
                    // '!' escapes LIKE's wildcards (a backslash would need escaping on MySQL).
                    let escaped = prefix
                        .replace('!', "!!")
                        .replace('%', "!%")
                        .replace('_', "!_");
                    Box::new(cond.or(device_id.like(format!("{escaped}%")).escape('!')))
                }
                None => Box::new(cond.or(device_id.eq(p.clone()))),
            };
        }
        self.newest_events(connection_events.into_boxed().filter(cond), limit)
    }

    /// The first `limit` rows of `query`, newest first.
    fn newest_events(
        &self,
        query: EventQuery<'_>,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StorageError> {
        use crate::storage::schema::connection_events::dsl::*;
        let rows: Vec<(String, String, NaiveDateTime, String, String)> = query
            .select((device_id, event, at, detail, remote_addr))
            .order((at.desc(), id.desc()))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(d, e, t, det, addr)| EventRecord {
                device_id: d,
                event: e,
                at: utc(t),
                detail: det,
                remote_addr: addr,
            })
            .collect())
    }
}
