//! The batched write of [`Row`]s: one transaction, rows sorted by table and checked, then
//! multi-row INSERTs per table chunked under the backend's bind-parameter limit, devices and
//! commands upserted by id, and telemetry as points under their series (`series.rs`).
//!
//! Telemetry points are sorted by (series, time) and upserted: of two values of one series in
//! the same millisecond the later one wins, in a batch as across batches (a device polling a
//! point twice within a millisecond, or a batch written twice after an ambiguous commit).
//! PostgreSQL takes them through binary COPY into a temporary table and one
//! `INSERT … SELECT … ON CONFLICT DO UPDATE`; SQLite and MySQL through multi-row upserts.
//!
//! PostgreSQL and SQLite share one diesel statement per table; MySQL's, which bind times as
//! DATETIME, are in `mysql.rs`.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::upsert::excluded;

use super::db::{on_inner, write_transaction, AnyConnection, Backend, Db, StorageError};
use super::insert::{NewCommand, NewDelivery, NewDevice, NewEvent, NewPacket, NewPoint};
#[cfg(feature = "mysql")]
use super::mysql;
use super::rows::{
    CommandRow, ConnEventRow, DeliveryRow, DeviceRow, PacketRow, Row, TelemetryRow, DEVICE_ID_MAX,
};
use super::schema::{connection_events, raw_packets, webhook_deliveries};
use super::series::SeriesCache;
use super::time::{millis, naive};

/// Bind parameters one statement may carry, per backend (SQLite's default
/// SQLITE_MAX_VARIABLE_NUMBER is 32766; PostgreSQL's and MySQL's wire limit is 65535).
fn max_binds(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 32_000,
        Backend::Postgres | Backend::Mysql => 65_000,
    }
}

/// Rows per multi-row INSERT, whatever the bind limit allows.
const MAX_ROWS_PER_INSERT: usize = 5_000;

/// Width of the name-like columns of the migrations (points, profiles, remote addresses). A
/// longer value would fail the whole batch on PostgreSQL and MySQL, so such a row is dropped
/// with a warning instead (likewise for the other widths checked below).
const NAME_MAX: usize = 128;
/// Width of `series.unit`.
const UNIT_MAX: usize = 32;

fn rows_per_insert(max_binds: usize, columns: usize) -> usize {
    (max_binds / columns).clamp(1, MAX_ROWS_PER_INSERT)
}

/// One write, sorted by table and checked.
#[derive(Default)]
struct Batch<'a> {
    devices: Vec<NewDevice<'a>>,
    commands: Vec<NewCommand<'a>>,
    deliveries: Vec<NewDelivery<'a>>,
    events: Vec<NewEvent<'a>>,
    packets: Vec<NewPacket<'a>>,
    telemetry: Vec<TelemetryIn<'a>>,
    dropped: usize,
}

/// A telemetry row before its series is known.
struct TelemetryIn<'a> {
    device_id: &'a str,
    point: &'a str,
    unit: &'a str,
    at: i64,
    value: f64,
    raw: f64,
}

fn too_long(what: &str, value: &str, max: usize) -> bool {
    let long = value.chars().count() > max;
    if long {
        log::warn!(
            "storage: dropping a row whose {what} is longer than {max} characters: {:?}…",
            value.chars().take(max).collect::<String>()
        );
    }
    long
}

/// The last version of each id, in the order of those last versions, and how many earlier
/// versions were left out. One upsert statement may not touch a key twice (PostgreSQL
/// refuses): the last version wins, as it would have row by row.
fn latest_by_id<'a, T>(rows: Vec<T>, id: impl Fn(&T) -> &'a str) -> (Vec<T>, usize) {
    let mut seen = HashSet::new();
    let mut latest = Vec::with_capacity(rows.len());
    let mut left_out = 0;
    for row in rows.into_iter().rev() {
        if seen.insert(id(&row)) {
            latest.push(row);
        } else {
            left_out += 1;
        }
    }
    latest.reverse();
    (latest, left_out)
}

/// `INSERT INTO points … ON CONFLICT (series_id, at) DO UPDATE` of value and raw.
macro_rules! upsert_points {
    ($values:expr) => {{
        use super::schema::points::dsl::*;
        diesel::insert_into(points)
            .values($values)
            .on_conflict((series_id, at))
            .do_update()
            .set((value.eq(excluded(value)), raw.eq(excluded(raw))))
    }};
}

impl<'a> Batch<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut b = Batch::default();
        for row in rows {
            match row {
                Row::Telemetry(t) => b.telemetry_row(t),
                Row::Packet(p) => b.packet_row(p),
                Row::Event(e) => b.event_row(e),
                Row::Device(d) => b.device_row(d),
                Row::Command(c) => b.command_row(c),
                Row::Delivery(d) => b.delivery_row(d),
            }
        }
        let (commands, left_out) = latest_by_id(std::mem::take(&mut b.commands), |c| c.id);
        b.commands = commands;
        b.dropped += left_out;
        let (devices, left_out) = latest_by_id(std::mem::take(&mut b.devices), |d| d.id);
        b.devices = devices;
        b.dropped += left_out;
        b
    }

    fn telemetry_row(&mut self, t: &'a TelemetryRow) {
        if too_long("device id", &t.device_id, DEVICE_ID_MAX)
            || too_long("point name", &t.point, NAME_MAX)
        {
            self.dropped += 1;
            return;
        }
        if !t.value.is_finite() || !t.raw.is_finite() {
            // SQLite stores NaN as NULL and MySQL refuses NaN and infinities.
            log::warn!(
                "storage: dropping a non-finite value of {}/{} at {} (value {}, raw {})",
                t.device_id,
                t.point,
                t.at,
                t.value,
                t.raw
            );
            self.dropped += 1;
            return;
        }
        self.telemetry.push(TelemetryIn {
            device_id: &t.device_id,
            point: &t.point,
            // Longer is no unit: the series keeps the one it has.
            unit: if t.unit.chars().count() > UNIT_MAX {
                ""
            } else {
                &t.unit
            },
            at: millis(t.at),
            value: t.value,
            raw: t.raw,
        });
    }

    fn packet_row(&mut self, p: &'a PacketRow) {
        if too_long("device id", &p.device_id, DEVICE_ID_MAX) {
            self.dropped += 1;
            return;
        }
        self.packets.push(NewPacket {
            device_id: &p.device_id,
            direction: p.direction.as_str(),
            kind: p.kind.as_str(),
            hex: hex::encode_upper(&p.bytes),
            at: naive(p.at),
        });
    }

    fn event_row(&mut self, e: &'a ConnEventRow) {
        if too_long("device id", &e.device_id, DEVICE_ID_MAX)
            || too_long("remote address", &e.remote_addr, NAME_MAX)
        {
            self.dropped += 1;
            return;
        }
        self.events.push(NewEvent {
            device_id: &e.device_id,
            event: e.event.as_str(),
            remote_addr: &e.remote_addr,
            detail: &e.detail,
            at: naive(e.at),
        });
    }

    fn device_row(&mut self, d: &'a DeviceRow) {
        if too_long("device id", &d.id, DEVICE_ID_MAX)
            || too_long("protocol", &d.protocol, 32)
            || too_long("profile", d.profile.as_deref().unwrap_or(""), NAME_MAX)
            || too_long("remote address", &d.remote_addr, NAME_MAX)
            || too_long(
                "parent device id",
                d.parent.as_deref().unwrap_or(""),
                DEVICE_ID_MAX,
            )
        {
            self.dropped += 1;
            return;
        }
        self.devices.push(NewDevice {
            id: &d.id,
            protocol: &d.protocol,
            profile: d.profile.as_deref(),
            remote_addr: &d.remote_addr,
            online: i16::from(d.online),
            connected_at: naive(d.connected_at),
            last_seen: naive(d.last_seen),
            parent: d.parent.as_deref(),
            unit: d.unit.map(i16::from),
        });
    }

    fn command_row(&mut self, c: &'a CommandRow) {
        if too_long("command id", &c.id, 40)
            || too_long("device id", &c.device_id, DEVICE_ID_MAX)
            || too_long("status", &c.status, 16)
            || too_long(
                "requested_by",
                c.requested_by.as_deref().unwrap_or(""),
                DEVICE_ID_MAX,
            )
        {
            self.dropped += 1;
            return;
        }
        self.commands.push(NewCommand {
            id: &c.id,
            device_id: &c.device_id,
            request: &c.request,
            status: &c.status,
            result: c.result.as_deref(),
            error: c.error.as_deref(),
            requested_by: c.requested_by.as_deref(),
            created_at: naive(c.created_at),
            updated_at: naive(c.updated_at),
        });
    }

    fn delivery_row(&mut self, d: &'a DeliveryRow) {
        if too_long("webhook id", &d.webhook_id, 40)
            || too_long("delivery id", &d.delivery, 64)
            || too_long("event", &d.event, 32)
            || too_long("outcome", &d.outcome, 16)
        {
            self.dropped += 1;
            return;
        }
        self.deliveries.push(NewDelivery {
            webhook_id: &d.webhook_id,
            delivery: &d.delivery,
            event: &d.event,
            events: i32::try_from(d.events).unwrap_or(i32::MAX),
            attempt: i32::try_from(d.attempt).unwrap_or(i32::MAX),
            outcome: &d.outcome,
            status_code: d.status_code.map(i32::from),
            error: d.error.as_deref(),
            latency_ms: i64::try_from(d.latency_ms).unwrap_or(i64::MAX),
            at: naive(d.at),
        });
    }

    /// Runs inside the caller's transaction.
    fn insert(
        &self,
        conn: &mut AnyConnection,
        backend: Backend,
        series: &SeriesCache,
    ) -> QueryResult<()> {
        let binds = max_binds(backend);
        for chunk in self.devices.chunks(rows_per_insert(binds, 9)) {
            on_inner!(conn, c => c.upsert(chunk),
                      mysql c => mysql::upsert_devices(c, chunk))?;
        }
        for chunk in self.commands.chunks(rows_per_insert(binds, 9)) {
            on_inner!(conn, c => c.upsert(chunk),
                      mysql c => mysql::upsert_commands(c, chunk))?;
        }
        for chunk in self.deliveries.chunks(rows_per_insert(binds, 10)) {
            on_inner!(conn, c => diesel::insert_into(webhook_deliveries::table)
                .values(chunk)
                .execute(c),
                mysql c => mysql::deliveries(c, chunk))?;
        }
        for chunk in self.events.chunks(rows_per_insert(binds, 5)) {
            on_inner!(conn, c => diesel::insert_into(connection_events::table)
                .values(chunk)
                .execute(c),
                mysql c => mysql::events(c, chunk))?;
        }
        for chunk in self.packets.chunks(rows_per_insert(binds, 5)) {
            on_inner!(conn, c => diesel::insert_into(raw_packets::table)
                .values(chunk)
                .execute(c),
                mysql c => mysql::packets(c, chunk))?;
        }
        self.insert_points(conn, series)
    }

    /// The telemetry, under its series: sorted, one value per series and millisecond, then
    /// upserted (see the module documentation).
    fn insert_points(&self, conn: &mut AnyConnection, series: &SeriesCache) -> QueryResult<()> {
        if self.telemetry.is_empty() {
            return Ok(());
        }
        let mut resolver = series.resolver();
        let mut points = Vec::with_capacity(self.telemetry.len());
        for t in &self.telemetry {
            points.push(NewPoint {
                series_id: resolver.id(conn, t.device_id, t.point, t.unit)?,
                at: t.at,
                value: t.value,
                raw: t.raw,
            });
        }
        let points = last_per_key(points);
        match conn {
            AnyConnection::Postgresql(c) => copy_points(c, points)?,
            AnyConnection::Sqlite(c) => {
                for chunk in points.chunks(rows_per_insert(max_binds(Backend::Sqlite), 4)) {
                    upsert_points!(chunk).execute(c)?;
                }
            }
            #[cfg(feature = "mysql")]
            AnyConnection::Mysql(c) => {
                for chunk in points.chunks(rows_per_insert(max_binds(Backend::Mysql), 4)) {
                    mysql::upsert_points(c, chunk)?;
                }
            }
        }
        resolver.commit();
        Ok(())
    }
}

/// Points sorted by (series, time), of several with one key the last: what one upsert
/// statement may hold (PostgreSQL refuses to touch a row twice in one statement), and the
/// order in which the primary key's pages are visited.
fn last_per_key(mut points: Vec<NewPoint>) -> Vec<NewPoint> {
    // Stable: equal keys stay in the order they were written.
    points.sort_by_key(|p| (p.series_id, p.at));
    let mut out: Vec<NewPoint> = Vec::with_capacity(points.len());
    for p in points {
        match out.last_mut() {
            Some(last) if (last.series_id, last.at) == (p.series_id, p.at) => *last = p,
            _ => out.push(p),
        }
    }
    out
}

/// PostgreSQL's staging table of the points of one batch: a temporary table of the
/// connection, emptied at every commit.
mod staging {
    diesel::table! {
        points_in (series_id, at) {
            series_id -> Integer,
            at -> BigInt,
            value -> Double,
            raw -> Double,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = staging::points_in)]
#[diesel(treat_none_as_default_value = false)]
struct StagedPoint {
    series_id: i32,
    at: i64,
    value: f64,
    raw: f64,
}

/// Binary COPY of the points into `points_in`, then one upsert from it into `points`: COPY
/// itself cannot skip or replace a row whose key exists. Runs inside the batch's transaction.
fn copy_points(c: &mut diesel::PgConnection, points: Vec<NewPoint>) -> QueryResult<()> {
    use diesel::connection::SimpleConnection;
    c.batch_execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS points_in (\
             series_id INTEGER NOT NULL, at BIGINT NOT NULL, \
             value DOUBLE PRECISION NOT NULL, raw DOUBLE PRECISION NOT NULL\
         ) ON COMMIT DELETE ROWS",
    )?;
    diesel::copy_from(staging::points_in::table)
        .from_insertable(
            points
                .into_iter()
                .map(|p| StagedPoint {
                    series_id: p.series_id,
                    at: p.at,
                    value: p.value,
                    raw: p.raw,
                })
                .collect::<Vec<_>>(),
        )
        .execute(c)?;
    diesel::sql_query(
        "INSERT INTO points (series_id, at, value, raw) \
         SELECT series_id, at, value, raw FROM points_in \
         ON CONFLICT (series_id, at) DO UPDATE SET value = EXCLUDED.value, raw = EXCLUDED.raw",
    )
    .execute(c)?;
    Ok(())
}

/// Insert-or-update by id (`ON CONFLICT (id) DO UPDATE`), on PostgreSQL and SQLite.
trait Upsert<R> {
    fn upsert(&mut self, chunk: &[R]) -> QueryResult<usize>;
}

/// Implements [`Upsert`] of the rows `$row` with the statement macro `$statement`: one
/// multi-row statement on PostgreSQL; one statement per row on SQLite, where diesel has no
/// multi-row upsert (a batch holds few, and this runs inside the batch's transaction).
macro_rules! upsert_by_id {
    ($row:ident, $statement:ident) => {
        impl Upsert<$row<'_>> for diesel::PgConnection {
            fn upsert(&mut self, chunk: &[$row<'_>]) -> QueryResult<usize> {
                $statement!(chunk).execute(self)
            }
        }

        impl Upsert<$row<'_>> for diesel::SqliteConnection {
            fn upsert(&mut self, chunk: &[$row<'_>]) -> QueryResult<usize> {
                chunk.iter().map(|row| $statement!(row).execute(self)).sum()
            }
        }
    };
}

/// A device's facts replace the stored ones.
macro_rules! upsert_devices {
    ($values:expr) => {{
        use super::schema::devices::dsl::*;
        diesel::insert_into(devices)
            .values($values)
            .on_conflict(id)
            .do_update()
            .set((
                protocol.eq(excluded(protocol)),
                profile.eq(excluded(profile)),
                remote_addr.eq(excluded(remote_addr)),
                online.eq(excluded(online)),
                connected_at.eq(excluded(connected_at)),
                last_seen.eq(excluded(last_seen)),
                parent.eq(excluded(parent)),
                unit.eq(excluded(unit)),
            ))
    }};
}

/// A command's state replaces the stored one; what was asked, by whom and when stay.
macro_rules! upsert_commands {
    ($values:expr) => {{
        use super::schema::commands::dsl::*;
        diesel::insert_into(commands)
            .values($values)
            .on_conflict(id)
            .do_update()
            .set((
                status.eq(excluded(status)),
                result.eq(excluded(result)),
                error.eq(excluded(error)),
                updated_at.eq(excluded(updated_at)),
            ))
    }};
}

upsert_by_id!(NewDevice, upsert_devices);
upsert_by_id!(NewCommand, upsert_commands);

impl Db {
    /// Writes rows in one transaction: multi-row INSERTs per table (chunked under the backend's
    /// bind-parameter limit), devices and commands upserted by id (the last of a batch wins).
    /// All or nothing. Returns the rows stored: a row that no backend could store the same way
    /// (a non-finite value, a device id over 64 characters) is dropped with a warning rather
    /// than failing the whole batch forever. Blocking.
    pub fn write(&self, rows: &[Row]) -> Result<usize, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = Batch::new(rows);
        let mut conn = self.conn()?;
        let backend = self.backend;
        write_transaction(&mut conn, |c| batch.insert(c, backend, &self.series))?;
        Ok(rows.len() - batch.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_under_the_bind_limits() {
        assert!(rows_per_insert(max_binds(Backend::Sqlite), 7) * 7 <= 32_766);
        assert!(rows_per_insert(max_binds(Backend::Postgres), 5) * 5 <= 65_535);
        assert_eq!(rows_per_insert(10, 20), 1);
    }

    #[test]
    fn the_last_version_of_each_id_wins_in_order() {
        let rows = vec![("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2)];
        let (latest, left_out) = latest_by_id(rows, |r| r.0);
        assert_eq!(latest, vec![("a", 2), ("c", 1), ("b", 2)]);
        assert_eq!(left_out, 2);
    }
}
