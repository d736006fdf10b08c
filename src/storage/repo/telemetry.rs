//! `telemetry`: a device's decoded values, read newest first or exported page by page, from
//! `points` under their `series` (times in milliseconds).
//!
//! The primary key (series, time) answers "one series in a time range" directly. What spans
//! several series is assembled from it:
//! - a device's history (all its points, newest first, a limit) reads each series newest
//!   first, up to the limit, and merges; once `limit` rows are in hand, later series read only
//!   what is newer than the oldest of them;
//! - an export page (ascending by time, then series) reads a time window of the selected
//!   series, joined, sorted and cut at the page. The window starts at the cursor and its
//!   length adapts: it widens (×4) while it holds less than a page, and the next page starts
//!   with the length the previous page took, so a page reads about a page of rows whatever
//!   the density of the data. The first page finds the oldest and newest times of the
//!   selected series (one index probe each); an export ends at that newest time, so values
//!   stored while it runs with later times are not in it.
//!
//! Among rows of the same millisecond, the lower series (the one created first, for a device
//! the point its first poll decoded first) comes first in exports and last in histories.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use serde::Serialize;

use crate::storage::db::{Backend, Db, MultiBackend, PooledConn, StorageError};
use crate::storage::schema::{points, series};
use crate::storage::series::device_series;
use crate::storage::time::{from_millis, millis};

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

/// Keyset position of an export: the last `(at, series)` handed out, how long a window of
/// time the next page starts reading, and where the export ends (the newest time stored when
/// its first page was read: later pages need not look for it again).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExportCursor {
    pub at: DateTime<Utc>,
    pub series: i32,
    span: i64,
    end: i64,
}

/// The stored range `[lo, hi)` in milliseconds for the bounds `[from, to)`.
fn ms_range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> (i64, i64) {
    (from.map_or(i64::MIN, millis), to.map_or(i64::MAX, millis))
}

/// `(series, at, value, raw)` of one series, newest first.
type PointTuple = (i64, f64, f64);
/// One row of an export window.
type JoinedTuple = (i32, i64, f64, f64, String, String);

/// Windows an export page starts with when it has no hint: this fraction of the data's span.
const FIRST_WINDOWS: i64 = 64;

#[derive(QueryableByName)]
struct Extent {
    #[diesel(sql_type = Nullable<BigInt>)]
    first: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last: Option<i64>,
}

/// The first and last time stored for the device's series (or all series), one index probe
/// per series.
fn extent(
    conn: &mut PooledConn,
    backend: Backend,
    device: Option<&str>,
) -> QueryResult<Option<(i64, i64)>> {
    const PER_SERIES: &str = "SELECT \
         MIN((SELECT MIN(p.at) FROM points p WHERE p.series_id = s.id)) AS first, \
         MAX((SELECT MAX(p.at) FROM points p WHERE p.series_id = s.id)) AS last \
         FROM series s";
    let extent: Extent = match device {
        Some(d) => {
            let placeholder = match backend {
                Backend::Postgres => "$1",
                Backend::Sqlite | Backend::Mysql => "?",
            };
            diesel::sql_query(format!("{PER_SERIES} WHERE s.device_id = {placeholder}"))
                .bind::<Text, _>(d)
                .get_result::<Extent>(&mut **conn)?
        }
        None => diesel::sql_query(PER_SERIES).get_result::<Extent>(&mut **conn)?,
    };
    Ok(extent.first.zip(extent.last))
}

impl Db {
    /// A device's values, newest first, filtered by point and `[from, to)`.
    pub fn telemetry(&self, q: &TelemetryQuery) -> Result<Vec<TelemetryRecord>, StorageError> {
        let limit = q.limit.max(0);
        let (lo, hi) = ms_range(q.from, q.to);
        if limit == 0 || lo >= hi {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let series = device_series(&mut conn, &q.device_id, q.point.as_deref())?;
        let keep = usize::try_from(limit).unwrap_or(usize::MAX);
        // (at, index into `series`, value, raw), newest first once sorted.
        let mut rows: Vec<(i64, usize, f64, f64)> = Vec::new();
        let mut floor = lo;
        for (i, (id, _)) in series.iter().enumerate() {
            let got: Vec<PointTuple> = points::table
                .filter(points::series_id.eq(id))
                .filter(points::at.ge(floor))
                .filter(points::at.lt(hi))
                .order(points::at.desc())
                .limit(limit)
                .select((points::at, points::value, points::raw))
                .load(&mut *conn)?;
            rows.extend(got.into_iter().map(|(at, v, r)| (at, i, v, r)));
            if rows.len() >= keep {
                newest_first(&mut rows, keep);
                // Rows at this time of a later (higher) series still rank above it.
                floor = rows.last().map_or(floor, |r| r.0);
            }
        }
        newest_first(&mut rows, keep);
        Ok(rows
            .into_iter()
            .map(|(at, i, value, raw)| TelemetryRecord {
                device_id: q.device_id.clone(),
                point: series[i].1.clone(),
                value,
                raw,
                at: from_millis(at),
            })
            .collect())
    }

    /// Export pages: rows of one device (or all) in `[from, to)`, ascending by `(at, series)`,
    /// strictly after the keyset `after`. Pass the cursor of the last row to get the next page.
    pub fn telemetry_page(
        &self,
        device: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        after: Option<ExportCursor>,
        page: i64,
    ) -> Result<Vec<(ExportCursor, TelemetryRecord)>, StorageError> {
        let page = page.max(0);
        let (mut lo, hi) = ms_range(from, to);
        if page == 0 || lo >= hi {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let mut key = None;
        let hi = match after {
            Some(c) => {
                let at = millis(c.at);
                if at >= lo {
                    lo = at;
                    key = Some((at, c.series));
                }
                hi.min(c.end)
            }
            None => {
                let Some((first, last)) = extent(&mut conn, self.backend, device)? else {
                    return Ok(Vec::new());
                };
                lo = lo.max(first);
                hi.min(last.saturating_add(1))
            }
        };
        let start = lo;
        let mut span = after.map_or(hi.saturating_sub(lo) / FIRST_WINDOWS, |c| c.span);
        span = span.max(1);
        let mut out: Vec<JoinedTuple> = Vec::new();
        while lo < hi && (out.len() as i64) < page {
            let end = lo.saturating_add(span).min(hi);
            let need = page - out.len() as i64;
            let rows = window(&mut conn, self.backend, device, lo, end, key.take(), need)?;
            let full = rows.len() as i64 == need;
            out.extend(rows);
            if full {
                break;
            }
            lo = end;
            span = span.saturating_mul(4);
        }
        if (out.len() as i64) == page {
            // The next page takes about as long a window as this one did.
            span = out
                .last()
                .map_or(span, |r| r.1.saturating_sub(start).max(1));
        }
        Ok(out
            .into_iter()
            .map(|(series, at, value, raw, device_id, point)| {
                let at = from_millis(at);
                (
                    ExportCursor {
                        at,
                        series,
                        span,
                        end: hi,
                    },
                    TelemetryRecord {
                        device_id,
                        point,
                        value,
                        raw,
                        at,
                    },
                )
            })
            .collect())
    }

    /// Rows of telemetry, of one device or all.
    pub fn count_telemetry(&self, device: Option<&str>) -> Result<i64, StorageError> {
        let mut conn = self.conn()?;
        let n = match device {
            Some(d) => points::table
                .inner_join(series::table)
                .filter(series::device_id.eq(d))
                .count()
                .get_result(&mut *conn)?,
            None => points::table.count().get_result(&mut *conn)?,
        };
        Ok(n)
    }
}

/// Sorts newest first (ties: the higher series first) and keeps `keep`.
fn newest_first(rows: &mut Vec<(i64, usize, f64, f64)>, keep: usize) {
    rows.sort_unstable_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    rows.truncate(keep);
}

/// One row of an export window.
#[derive(QueryableByName)]
struct WindowRow {
    #[diesel(sql_type = Integer)]
    series_id: i32,
    #[diesel(sql_type = BigInt)]
    at: i64,
    #[diesel(sql_type = Double)]
    value: f64,
    #[diesel(sql_type = Double)]
    raw: f64,
    #[diesel(sql_type = Text)]
    device_id: String,
    #[diesel(sql_type = Text)]
    point: String,
}

/// The rows of `[lo, end)` of the device (or all), after the keyset `key` if given, ascending
/// by `(at, series)`, at most `limit`.
///
/// SQL of its own for one reason: `series CROSS JOIN points` is how SQLite is told to loop
/// over the series and seek each one's time range along the key; given a plain join without a
/// device it scans all of `points` instead. PostgreSQL and MySQL plan it as any join.
fn window(
    conn: &mut PooledConn,
    backend: Backend,
    device: Option<&str>,
    lo: i64,
    end: i64,
    key: Option<(i64, i32)>,
    limit: i64,
) -> QueryResult<Vec<JoinedTuple>> {
    let mut n = 0;
    let mut param = || {
        n += 1;
        match backend {
            Backend::Postgres => format!("${n}"),
            Backend::Sqlite | Backend::Mysql => "?".to_string(),
        }
    };
    let mut sql = format!(
        "SELECT p.series_id AS series_id, p.at AS at, p.value AS value, p.raw AS raw, \
         s.device_id AS device_id, s.point AS point \
         FROM series s CROSS JOIN points p \
         WHERE p.series_id = s.id AND p.at >= {} AND p.at < {}",
        param(),
        param()
    );
    if device.is_some() {
        sql.push_str(&format!(" AND s.device_id = {}", param()));
    }
    if key.is_some() {
        sql.push_str(&format!(
            " AND (p.at > {} OR p.series_id > {})",
            param(),
            param()
        ));
    }
    sql.push_str(&format!(" ORDER BY p.at, p.series_id LIMIT {}", param()));
    let mut query = diesel::sql_query(sql)
        .into_boxed::<MultiBackend>()
        .bind::<BigInt, _>(lo)
        .bind::<BigInt, _>(end);
    if let Some(d) = device {
        query = query.bind::<Text, _>(d.to_string());
    }
    if let Some((at, id)) = key {
        query = query.bind::<BigInt, _>(at).bind::<Integer, _>(id);
    }
    let rows: Vec<WindowRow> = query.bind::<BigInt, _>(limit).load(&mut **conn)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.series_id, r.at, r.value, r.raw, r.device_id, r.point))
        .collect())
}
