//! `telemetry`: a device's decoded values, read newest first or exported page by page.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::storage::db::{Backend, Db, MultiBackend, StorageError};
use crate::storage::schema::telemetry;
use crate::storage::time::{bound, naive, utc};

/// History of one device's values.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryQuery {
    pub device_id: String,
    /// Only this point, or all.
    pub point: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRecord {
    pub device_id: String,
    pub point: String,
    pub value: f64,
    pub raw: f64,
    pub at: DateTime<Utc>,
}

/// Keyset position of an export: the last `(at, id)` handed out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExportCursor {
    pub at: DateTime<Utc>,
    pub id: i64,
}

type TelemetryTuple = (i64, String, String, f64, f64, NaiveDateTime);

fn telemetry_record(row: TelemetryTuple) -> (ExportCursor, TelemetryRecord) {
    let (id, device_id, point, value, raw, at) = row;
    let at = utc(at);
    (
        ExportCursor { at, id },
        TelemetryRecord {
            device_id,
            point,
            value,
            raw,
            at,
        },
    )
}

/// Narrows a query to the rows in `[from, to)`.
fn within<'a>(
    query: telemetry::BoxedQuery<'a, MultiBackend>,
    backend: Backend,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> telemetry::BoxedQuery<'a, MultiBackend> {
    use crate::storage::schema::telemetry::dsl::at;
    let mut query = query;
    if let Some(from) = from {
        query = query.filter(at.ge(bound(backend, naive(from))));
    }
    if let Some(to) = to {
        query = query.filter(at.lt(bound(backend, naive(to))));
    }
    query
}

impl Db {
    /// A device's values, newest first, filtered by point and `[from, to)`.
    pub fn telemetry(&self, q: &TelemetryQuery) -> Result<Vec<TelemetryRecord>, StorageError> {
        use crate::storage::schema::telemetry::dsl::*;
        let mut query = telemetry
            .filter(device_id.eq(&q.device_id))
            .into_boxed::<MultiBackend>();
        if let Some(p) = &q.point {
            query = query.filter(point.eq(p));
        }
        let rows: Vec<TelemetryTuple> = within(query, self.backend, q.from, q.to)
            .select((id, device_id, point, value, raw, at))
            .order((at.desc(), id.desc()))
            .limit(q.limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(|r| telemetry_record(r).1).collect())
    }

    /// Export pages: rows of one device (or all) in `[from, to)`, ascending by `(at, id)`,
    /// strictly after the keyset `after`. Pass the cursor of the last row to get the next page.
    pub fn telemetry_page(
        &self,
        device: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        after: Option<ExportCursor>,
        page: i64,
    ) -> Result<Vec<(ExportCursor, TelemetryRecord)>, StorageError> {
        use crate::storage::schema::telemetry::dsl::*;
        let mut query = telemetry.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
        query = within(query, self.backend, from, to);
        if let Some(c) = after {
            // (at, id) > (a, i), written so that `at >= a` bounds an index range scan (an
            // OR at the top would make PostgreSQL sort the whole remainder for every page).
            let a = naive(c.at);
            query = query
                .filter(at.ge(bound(self.backend, a)))
                .filter(at.gt(bound(self.backend, a)).or(id.gt(c.id)));
        }
        let rows: Vec<TelemetryTuple> = query
            .select((id, device_id, point, value, raw, at))
            .order((at.asc(), id.asc()))
            .limit(page.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(telemetry_record).collect())
    }

    /// Rows of telemetry, of one device or all.
    pub fn count_telemetry(&self, device: Option<&str>) -> Result<i64, StorageError> {
        use crate::storage::schema::telemetry::dsl::*;
        let mut query = telemetry.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
        Ok(query.count().get_result(&mut *self.conn()?)?)
    }
}
