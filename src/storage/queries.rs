//! What the server reads and writes: batched writes of `Row`s and the history queries.
//!
//! Reads go through `AnyConnection` (portable types only). Batch inserts and the device upsert
//! cannot: they run on the inner connection of each backend (`on_inner!`), the same diesel
//! statement for PostgreSQL and SQLite and a DATETIME-typed one for MySQL (module `mysql`).
//! All times are truncated to microseconds and stored as naive UTC.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Timestamp;
use diesel::upsert::excluded;
use serde::Serialize;

use super::db::{AnyConnection, Backend, Db, MultiBackend, StorageError};
use super::rows::{CommandRow, ConnEventRow, DeliveryRow, DeviceRow, PacketRow, Row, TelemetryRow};
use super::schema::{
    commands, connection_events, devices, raw_packets, relay_queue, telemetry, tokens,
    webhook_deliveries, webhooks,
};

/// Runs a statement on whichever inner connection `AnyConnection` holds (what
/// `MultiConnection` cannot do itself: batch inserts, upserts). MySQL has a body of its own,
/// because its inserts must bind times as DATETIME (see `mysql`).
macro_rules! on_inner {
    ($conn:expr, $c:ident => $body:expr, mysql $m:ident => $mysql:expr) => {
        match $conn {
            AnyConnection::Postgresql($c) => $body,
            AnyConnection::Sqlite($c) => $body,
            #[cfg(feature = "mysql")]
            AnyConnection::Mysql($m) => $mysql,
        }
    };
}

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

/// Rows one retention DELETE removes (more only when rows share the boundary timestamp).
const PRUNE_CHUNK: i64 = 5_000;

/// Column widths of the migrations; a longer value would fail the whole batch on PostgreSQL and
/// MySQL, so such a row is dropped with a warning instead.
const DEVICE_ID_MAX: usize = 64;
const NAME_MAX: usize = 128;

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacketRecord {
    /// "in" or "out".
    pub direction: String,
    pub kind: String,
    /// Uppercase hex bytes separated by spaces: "01 03 00 00 00 02 C4 0B".
    pub hex: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub device_id: String,
    pub event: String,
    pub at: DateTime<Utc>,
    pub detail: String,
    pub remote_addr: String,
}

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

#[derive(Insertable)]
#[diesel(table_name = relay_queue)]
struct NewRelay<'a> {
    target: &'a str,
    sender: &'a str,
    hex: String,
    queued_at: NaiveDateTime,
}

/// Keyset position of an export: the last `(at, id)` handed out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExportCursor {
    pub at: DateTime<Utc>,
    pub id: i64,
}

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

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.trunc_subsecs(6).naive_utc()
}

/// A time to compare a `Timestamp` column with.
///
/// diesel binds a timestamp to MySQL as `MYSQL_TYPE_TIMESTAMP`, and MariaDB's range optimizer
/// then treats it as a TIMESTAMP (1970–2038) when it meets an index on a DATETIME column:
/// `at >= '1960-…'` or `at < '2999-…'` silently matches nothing. Casting the parameter to
/// DATETIME(6) keeps the comparison exact and the index in use.
macro_rules! bound {
    ($backend:expr, $t:expr) => {{
        let (open, close) = match $backend {
            Backend::Mysql => ("CAST(", " AS DATETIME(6))"),
            Backend::Sqlite | Backend::Postgres => ("", ""),
        };
        sql::<Timestamp>(open).bind::<Timestamp, _>($t).sql(close)
    }};
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// "0103" → "01 03", whatever the case or spacing it was stored with.
fn spaced_hex(stored: &str) -> String {
    let mut out = String::with_capacity(stored.len() * 3 / 2);
    for (i, ch) in stored.chars().filter(|c| !c.is_whitespace()).enumerate() {
        if i > 0 && i % 2 == 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[derive(Insertable, Clone)]
#[diesel(table_name = telemetry)]
// No optional fields; this only makes the derive fit PostgreSQL's COPY.
#[diesel(treat_none_as_default_value = false)]
struct NewTelemetry<'a> {
    device_id: &'a str,
    point: &'a str,
    value: f64,
    raw: f64,
    at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = raw_packets)]
struct NewPacket<'a> {
    device_id: &'a str,
    direction: &'static str,
    kind: &'static str,
    hex: String,
    at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = connection_events)]
struct NewEvent<'a> {
    device_id: &'a str,
    event: &'static str,
    remote_addr: &'a str,
    detail: &'a str,
    at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = devices)]
struct NewDevice<'a> {
    id: &'a str,
    protocol: &'a str,
    profile: Option<&'a str>,
    remote_addr: &'a str,
    online: i16,
    connected_at: NaiveDateTime,
    last_seen: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = commands)]
struct NewCommand<'a> {
    id: &'a str,
    device_id: &'a str,
    request: &'a str,
    status: &'a str,
    result: Option<&'a str>,
    error: Option<&'a str>,
    requested_by: Option<&'a str>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = webhook_deliveries)]
#[diesel(treat_none_as_default_value = false)]
struct NewDelivery<'a> {
    webhook_id: &'a str,
    delivery: &'a str,
    event: &'a str,
    events: i32,
    attempt: i32,
    outcome: &'a str,
    status_code: Option<i32>,
    error: Option<&'a str>,
    latency_ms: i64,
    at: NaiveDateTime,
}

/// One write, sorted by table and checked.
#[derive(Default)]
struct Batch<'a> {
    devices: Vec<NewDevice<'a>>,
    commands: Vec<NewCommand<'a>>,
    deliveries: Vec<NewDelivery<'a>>,
    events: Vec<NewEvent<'a>>,
    packets: Vec<NewPacket<'a>>,
    telemetry: Vec<NewTelemetry<'a>>,
    dropped: usize,
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
        // Likewise for commands: the latest state of each wins.
        let mut seen_cmd = std::collections::HashSet::new();
        let mut latest_cmd = Vec::with_capacity(b.commands.len());
        for c in std::mem::take(&mut b.commands).into_iter().rev() {
            if seen_cmd.insert(c.id) {
                latest_cmd.push(c);
            } else {
                b.dropped += 1;
            }
        }
        latest_cmd.reverse();
        b.commands = latest_cmd;
        // One upsert statement may not touch a key twice (PostgreSQL refuses): the last
        // version of each device wins, as it would have row by row.
        let mut seen = std::collections::HashSet::new();
        let mut latest = Vec::with_capacity(b.devices.len());
        for d in std::mem::take(&mut b.devices).into_iter().rev() {
            if seen.insert(d.id) {
                latest.push(d);
            } else {
                b.dropped += 1;
            }
        }
        latest.reverse();
        b.devices = latest;
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
        self.telemetry.push(NewTelemetry {
            device_id: &t.device_id,
            point: &t.point,
            value: t.value,
            raw: t.raw,
            at: naive(t.at),
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
    fn insert(&self, conn: &mut AnyConnection, backend: Backend) -> QueryResult<()> {
        let binds = max_binds(backend);
        for chunk in self.devices.chunks(rows_per_insert(binds, 7)) {
            on_inner!(conn, c => upsert_devices(c, chunk),
                      mysql c => mysql::upsert_devices(c, chunk))?;
        }
        for chunk in self.commands.chunks(rows_per_insert(binds, 9)) {
            on_inner!(conn, c => upsert_commands(c, chunk),
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
        // Telemetry is the bulk of every batch: PostgreSQL takes it through binary COPY, the
        // others through multi-row INSERTs.
        if let AnyConnection::Postgresql(c) = conn {
            if !self.telemetry.is_empty() {
                diesel::copy_from(telemetry::table)
                    .from_insertable(self.telemetry.clone())
                    .execute(c)?;
            }
            return Ok(());
        }
        for chunk in self.telemetry.chunks(rows_per_insert(binds, 5)) {
            on_inner!(conn, c => diesel::insert_into(telemetry::table)
                .values(chunk)
                .execute(c),
                mysql c => mysql::telemetry(c, chunk))?;
        }
        Ok(())
    }
}

fn rows_per_insert(max_binds: usize, columns: usize) -> usize {
    (max_binds / columns).clamp(1, MAX_ROWS_PER_INSERT)
}

/// Insert-or-update by id, on PostgreSQL and SQLite (`ON CONFLICT (id) DO UPDATE`).
trait UpsertDevices {
    fn upsert(&mut self, chunk: &[NewDevice<'_>]) -> QueryResult<usize>;
}

macro_rules! upsert_statement {
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
            ))
    }};
}

impl UpsertDevices for diesel::PgConnection {
    fn upsert(&mut self, chunk: &[NewDevice<'_>]) -> QueryResult<usize> {
        upsert_statement!(chunk).execute(self)
    }
}

impl UpsertDevices for diesel::SqliteConnection {
    /// diesel has no multi-row upsert on SQLite: one statement per device (a batch holds few,
    /// and this runs inside the batch's transaction).
    fn upsert(&mut self, chunk: &[NewDevice<'_>]) -> QueryResult<usize> {
        let mut n = 0;
        for row in chunk {
            n += upsert_statement!(row).execute(self)?;
        }
        Ok(n)
    }
}

fn upsert_devices(c: &mut impl UpsertDevices, chunk: &[NewDevice<'_>]) -> QueryResult<usize> {
    c.upsert(chunk)
}

/// Insert-or-update of commands by id, on PostgreSQL and SQLite.
trait UpsertCommands {
    fn upsert(&mut self, chunk: &[NewCommand<'_>]) -> QueryResult<usize>;
}

macro_rules! upsert_commands_statement {
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

impl UpsertCommands for diesel::PgConnection {
    fn upsert(&mut self, chunk: &[NewCommand<'_>]) -> QueryResult<usize> {
        upsert_commands_statement!(chunk).execute(self)
    }
}

impl UpsertCommands for diesel::SqliteConnection {
    fn upsert(&mut self, chunk: &[NewCommand<'_>]) -> QueryResult<usize> {
        let mut n = 0;
        for row in chunk {
            n += upsert_commands_statement!(row).execute(self)?;
        }
        Ok(n)
    }
}

fn upsert_commands(c: &mut impl UpsertCommands, chunk: &[NewCommand<'_>]) -> QueryResult<usize> {
    c.upsert(chunk)
}

/// MariaDB/MySQL inserts.
///
/// diesel binds a `Timestamp` to MySQL as `MYSQL_TYPE_TIMESTAMP`, which the server converts
/// through the session time zone and the TIMESTAMP range (1970–2038) before storing it in a
/// DATETIME column: a time outside that range becomes NULL. These tables are the same as
/// `schema.rs` but with `Datetime` times, so inserts bind `MYSQL_TYPE_DATETIME` and store the
/// value as given. (Reads go through `AnyConnection`; comparisons use `bound!`.)
#[cfg(feature = "mysql")]
mod mysql {
    use diesel::dsl::sql;
    use diesel::prelude::*;
    use diesel::sql_types::{Datetime, Nullable, SmallInt, Text};
    use diesel::MysqlConnection;

    use super::{
        NewCommand, NewDelivery, NewDevice, NewEvent, NewPacket, NewQueued, NewRelay, NewTelemetry,
        NewToken, NewWebhook,
    };

    mod tables {
        diesel::table! {
            devices (id) {
                id -> Text,
                protocol -> Text,
                profile -> Nullable<Text>,
                remote_addr -> Text,
                online -> SmallInt,
                connected_at -> Datetime,
                last_seen -> Datetime,
            }
        }
        diesel::table! {
            connection_events (id) {
                id -> BigInt,
                device_id -> Text,
                event -> Text,
                remote_addr -> Text,
                detail -> Text,
                at -> Datetime,
            }
        }
        diesel::table! {
            raw_packets (id) {
                id -> BigInt,
                device_id -> Text,
                direction -> Text,
                kind -> Text,
                hex -> Text,
                at -> Datetime,
            }
        }
        diesel::table! {
            commands (id) {
                id -> Text,
                device_id -> Text,
                request -> Text,
                status -> Text,
                result -> Nullable<Text>,
                error -> Nullable<Text>,
                requested_by -> Nullable<Text>,
                created_at -> Datetime,
                updated_at -> Datetime,
                queue_seq -> Nullable<BigInt>,
                expires_at -> Nullable<Datetime>,
                token_id -> Nullable<Text>,
            }
        }
        diesel::table! {
            tokens (id) {
                id -> Text,
                name -> Text,
                role -> Text,
                hash -> Text,
                devices -> Nullable<Text>,
                created_at -> Datetime,
                revoked -> SmallInt,
            }
        }
        diesel::table! {
            webhooks (id) {
                id -> Text,
                url -> Text,
                events -> Text,
                secret -> Nullable<Text>,
                devices -> Nullable<Text>,
                created_at -> Datetime,
            }
        }
        diesel::table! {
            webhook_deliveries (id) {
                id -> BigInt,
                webhook_id -> Text,
                delivery -> Text,
                event -> Text,
                events -> Integer,
                attempt -> Integer,
                outcome -> Text,
                status_code -> Nullable<Integer>,
                error -> Nullable<Text>,
                latency_ms -> BigInt,
                at -> Datetime,
            }
        }
        diesel::table! {
            telemetry (id) {
                id -> BigInt,
                device_id -> Text,
                point -> Text,
                value -> Double,
                raw -> Double,
                at -> Datetime,
            }
        }
        diesel::table! {
            relay_queue (id) {
                id -> BigInt,
                target -> Text,
                sender -> Text,
                hex -> Text,
                queued_at -> Datetime,
                delivered_at -> Nullable<Datetime>,
            }
        }
    }

    pub(super) fn relay_insert(c: &mut MysqlConnection, r: &NewRelay<'_>) -> QueryResult<usize> {
        use tables::relay_queue::dsl as t;
        diesel::insert_into(t::relay_queue)
            .values((
                t::target.eq(r.target),
                t::sender.eq(r.sender),
                t::hex.eq(&r.hex),
                t::queued_at.eq(r.queued_at),
            ))
            .execute(c)
    }

    pub(super) fn relay_delivered(
        c: &mut MysqlConnection,
        ids: &[i64],
        at: chrono::NaiveDateTime,
    ) -> QueryResult<usize> {
        use tables::relay_queue::dsl as t;
        diesel::update(t::relay_queue.filter(t::id.eq_any(ids)))
            .set(t::delivered_at.eq(Some(at)))
            .execute(c)
    }

    pub(super) fn telemetry(
        c: &mut MysqlConnection,
        rows: &[NewTelemetry<'_>],
    ) -> QueryResult<usize> {
        use tables::telemetry::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::device_id.eq(r.device_id),
                    t::point.eq(r.point),
                    t::value.eq(r.value),
                    t::raw.eq(r.raw),
                    t::at.eq(r.at),
                )
            })
            .collect();
        diesel::insert_into(t::telemetry).values(&values).execute(c)
    }

    pub(super) fn packets(c: &mut MysqlConnection, rows: &[NewPacket<'_>]) -> QueryResult<usize> {
        use tables::raw_packets::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::device_id.eq(r.device_id),
                    t::direction.eq(r.direction),
                    t::kind.eq(r.kind),
                    t::hex.eq(&r.hex),
                    t::at.eq(r.at),
                )
            })
            .collect();
        diesel::insert_into(t::raw_packets)
            .values(&values)
            .execute(c)
    }

    pub(super) fn events(c: &mut MysqlConnection, rows: &[NewEvent<'_>]) -> QueryResult<usize> {
        use tables::connection_events::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::device_id.eq(r.device_id),
                    t::event.eq(r.event),
                    t::remote_addr.eq(r.remote_addr),
                    t::detail.eq(r.detail),
                    t::at.eq(r.at),
                )
            })
            .collect();
        diesel::insert_into(t::connection_events)
            .values(&values)
            .execute(c)
    }

    /// Commands by id: `INSERT … ON DUPLICATE KEY UPDATE` of the state columns.
    pub(super) fn upsert_commands(
        c: &mut MysqlConnection,
        rows: &[NewCommand<'_>],
    ) -> QueryResult<usize> {
        use tables::commands::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::id.eq(r.id),
                    t::device_id.eq(r.device_id),
                    t::request.eq(r.request),
                    t::status.eq(r.status),
                    t::result.eq(r.result),
                    t::error.eq(r.error),
                    t::requested_by.eq(r.requested_by),
                    t::created_at.eq(r.created_at),
                    t::updated_at.eq(r.updated_at),
                )
            })
            .collect();
        diesel::insert_into(t::commands)
            .values(&values)
            .on_conflict(diesel::dsl::DuplicatedKeys)
            .do_update()
            .set((
                t::status.eq(sql::<Text>("VALUES(`status`)")),
                t::result.eq(sql::<Nullable<Text>>("VALUES(`result`)")),
                t::error.eq(sql::<Nullable<Text>>("VALUES(`error`)")),
                t::updated_at.eq(sql::<Datetime>("VALUES(`updated_at`)")),
            ))
            .execute(c)
    }

    pub(super) fn insert_queued(c: &mut MysqlConnection, r: &NewQueued<'_>) -> QueryResult<usize> {
        use tables::commands::dsl as t;
        diesel::insert_into(t::commands)
            .values((
                t::id.eq(r.id),
                t::device_id.eq(r.device_id),
                t::request.eq(r.request),
                t::status.eq(r.status),
                t::requested_by.eq(r.requested_by),
                t::token_id.eq(r.token_id),
                t::created_at.eq(r.created_at),
                t::updated_at.eq(r.updated_at),
                t::expires_at.eq(Some(r.expires_at)),
                t::queue_seq.eq(Some(r.queue_seq)),
            ))
            .execute(c)
    }

    pub(super) fn insert_token(c: &mut MysqlConnection, r: &NewToken<'_>) -> QueryResult<usize> {
        use tables::tokens::dsl as t;
        diesel::insert_into(t::tokens)
            .values((
                t::id.eq(r.id),
                t::name.eq(r.name),
                t::role.eq(r.role),
                t::hash.eq(r.hash),
                t::devices.eq(r.devices),
                t::created_at.eq(r.created_at),
                t::revoked.eq(r.revoked),
            ))
            .execute(c)
    }

    pub(super) fn insert_webhook(
        c: &mut MysqlConnection,
        r: &NewWebhook<'_>,
    ) -> QueryResult<usize> {
        use tables::webhooks::dsl as t;
        diesel::insert_into(t::webhooks)
            .values((
                t::id.eq(r.id),
                t::url.eq(r.url),
                t::events.eq(r.events),
                t::secret.eq(r.secret),
                t::devices.eq(r.devices),
                t::created_at.eq(r.created_at),
            ))
            .execute(c)
    }

    pub(super) fn deliveries(
        c: &mut MysqlConnection,
        rows: &[NewDelivery<'_>],
    ) -> QueryResult<usize> {
        use tables::webhook_deliveries::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::webhook_id.eq(r.webhook_id),
                    t::delivery.eq(r.delivery),
                    t::event.eq(r.event),
                    t::events.eq(r.events),
                    t::attempt.eq(r.attempt),
                    t::outcome.eq(r.outcome),
                    t::status_code.eq(r.status_code),
                    t::error.eq(r.error),
                    t::latency_ms.eq(r.latency_ms),
                    t::at.eq(r.at),
                )
            })
            .collect();
        diesel::insert_into(t::webhook_deliveries)
            .values(&values)
            .execute(c)
    }

    /// `INSERT … ON DUPLICATE KEY UPDATE col = VALUES(col)`.
    pub(super) fn upsert_devices(
        c: &mut MysqlConnection,
        rows: &[NewDevice<'_>],
    ) -> QueryResult<usize> {
        use tables::devices::dsl as t;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    t::id.eq(r.id),
                    t::protocol.eq(r.protocol),
                    t::profile.eq(r.profile),
                    t::remote_addr.eq(r.remote_addr),
                    t::online.eq(r.online),
                    t::connected_at.eq(r.connected_at),
                    t::last_seen.eq(r.last_seen),
                )
            })
            .collect();
        diesel::insert_into(t::devices)
            .values(&values)
            .on_conflict(diesel::dsl::DuplicatedKeys)
            .do_update()
            .set((
                t::protocol.eq(sql::<Text>("VALUES(`protocol`)")),
                t::profile.eq(sql::<Nullable<Text>>("VALUES(`profile`)")),
                t::remote_addr.eq(sql::<Text>("VALUES(`remote_addr`)")),
                t::online.eq(sql::<SmallInt>("VALUES(`online`)")),
                t::connected_at.eq(sql::<Datetime>("VALUES(`connected_at`)")),
                t::last_seen.eq(sql::<Datetime>("VALUES(`last_seen`)")),
            ))
            .execute(c)
    }
}

/// Deletes the rows of `$table` older than `$before`, oldest first, in statements of about
/// `PRUNE_CHUNK` rows (each its own transaction, so no lock is held for long).
macro_rules! prune_table {
    ($conn:expr, $backend:expr, $table:ident, $before:expr) => {{
        use super::schema::$table::dsl as t;
        let before = || bound!($backend, $before);
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
                        .filter(t::at.le(bound!($backend, b))),
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

impl Db {
    /// Writes rows in one transaction: multi-row INSERTs per table (chunked under the backend's
    /// bind-parameter limit), devices upserted by id (the last of a batch wins). All or nothing.
    /// Returns the rows stored: a row that no backend could store the same way (a non-finite
    /// value, a device id over 64 characters) is dropped with a warning rather than failing the
    /// whole batch forever. Blocking.
    pub fn write(&self, rows: &[Row]) -> Result<usize, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = Batch::new(rows);
        let mut conn = self.conn()?;
        let backend = self.backend;
        conn.transaction(|c| batch.insert(c, backend))?;
        Ok(rows.len() - batch.dropped)
    }

    /// A device's values, newest first, filtered by point and `[from, to)`.
    pub fn telemetry(&self, q: &TelemetryQuery) -> Result<Vec<TelemetryRecord>, StorageError> {
        use super::schema::telemetry::dsl::*;
        let mut query = telemetry
            .filter(device_id.eq(&q.device_id))
            .into_boxed::<MultiBackend>();
        if let Some(p) = &q.point {
            query = query.filter(point.eq(p));
        }
        if let Some(from) = q.from {
            query = query.filter(at.ge(bound!(self.backend, naive(from))));
        }
        if let Some(to) = q.to {
            query = query.filter(at.lt(bound!(self.backend, naive(to))));
        }
        let rows: Vec<TelemetryTuple> = query
            .select((id, device_id, point, value, raw, at))
            .order((at.desc(), id.desc()))
            .limit(q.limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(|r| telemetry_record(r).1).collect())
    }

    /// A device's raw packets, newest first.
    pub fn packets(&self, device: &str, limit: i64) -> Result<Vec<PacketRecord>, StorageError> {
        use super::schema::raw_packets::dsl::*;
        let rows: Vec<(String, String, String, NaiveDateTime)> = raw_packets
            .filter(device_id.eq(device))
            .select((direction, kind, hex, at))
            .order((at.desc(), id.desc()))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(d, k, h, t)| PacketRecord {
                direction: d,
                kind: k,
                hex: spaced_hex(&h),
                at: utc(t),
            })
            .collect())
    }

    /// Connection history of one device (or of all, the unregistered included), newest first.
    pub fn events(
        &self,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StorageError> {
        use super::schema::connection_events::dsl::*;
        let mut query = connection_events.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
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

    /// Connection history of the devices matching any of `patterns` (device ids, or
    /// prefixes ending in `*`), newest first: what a device-restricted token may see.
    pub fn events_among(
        &self,
        patterns: &[String],
        limit: i64,
    ) -> Result<Vec<EventRecord>, StorageError> {
        use super::schema::connection_events::dsl::*;
        use diesel::sql_types::Bool;
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
        let rows: Vec<(String, String, NaiveDateTime, String, String)> = connection_events
            .filter(cond)
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

    /// Every device ever seen, by id.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StorageError> {
        use super::schema::devices::dsl::*;
        type DeviceTuple = (
            String,
            String,
            Option<String>,
            String,
            i16,
            NaiveDateTime,
            NaiveDateTime,
        );
        let rows: Vec<DeviceTuple> = devices
            .select((
                id,
                protocol,
                profile,
                remote_addr,
                online,
                connected_at,
                last_seen,
            ))
            .order(id.asc())
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, p, pr, addr, on, conn_at, seen)| DeviceRow {
                id: i,
                protocol: p,
                profile: pr,
                remote_addr: addr,
                online: on != 0,
                connected_at: utc(conn_at),
                last_seen: utc(seen),
            })
            .collect())
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
        use super::schema::telemetry::dsl::*;
        let mut query = telemetry.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
        if let Some(f) = from {
            query = query.filter(at.ge(bound!(self.backend, naive(f))));
        }
        if let Some(t) = to {
            query = query.filter(at.lt(bound!(self.backend, naive(t))));
        }
        if let Some(c) = after {
            // (at, id) > (a, i), written so that `at >= a` bounds an index range scan (an
            // OR at the top would make PostgreSQL sort the whole remainder for every page).
            let a = naive(c.at);
            query = query
                .filter(at.ge(bound!(self.backend, a)))
                .filter(at.gt(bound!(self.backend, a)).or(id.gt(c.id)));
        }
        let rows: Vec<TelemetryTuple> = query
            .select((id, device_id, point, value, raw, at))
            .order((at.asc(), id.asc()))
            .limit(page.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(telemetry_record).collect())
    }

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
            PrunableTable::Telemetry => prune_table!(conn, self.backend, telemetry, before),
            PrunableTable::RawPackets => prune_table!(conn, self.backend, raw_packets, before),
            PrunableTable::WebhookDeliveries => {
                prune_table!(conn, self.backend, webhook_deliveries, before)
            }
            PrunableTable::DeliveredRelay => {
                use super::schema::relay_queue::dsl as t;
                diesel::delete(
                    t::relay_queue.filter(
                        t::delivered_at
                            .is_not_null()
                            .and(t::delivered_at.lt(bound!(self.backend, before).nullable())),
                    ),
                )
                .execute(conn)?
            }
        };
        Ok(deleted)
    }

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
            use super::schema::relay_queue::dsl as t;
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
        use super::schema::relay_queue::dsl as t;
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
                use super::schema::relay_queue::dsl as t;
                diesel::update(t::relay_queue.filter(t::id.eq_any(ids)))
                    .set(t::delivered_at.eq(Some(now)))
                    .execute(c)
            },
            mysql c => mysql::relay_delivered(c, ids, now))?;
        Ok(n)
    }

    /// Rows of telemetry, of one device or all.
    pub fn count_telemetry(&self, device: Option<&str>) -> Result<i64, StorageError> {
        use super::schema::telemetry::dsl::*;
        let mut query = telemetry.into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(device_id.eq(d));
        }
        Ok(query.count().get_result(&mut *self.conn()?)?)
    }
}

/// A stored API token (never the secret: `hash` is the hex SHA-256 of it).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub hash: String,
    /// JSON list of device ids and `prefix*` patterns; None for every device.
    pub devices: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked: bool,
}

/// A recorded command, as `GET /api/commands/{cid}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub id: String,
    pub device_id: String,
    pub request: String,
    pub status: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = tokens)]
struct NewToken<'a> {
    id: &'a str,
    name: &'a str,
    role: &'a str,
    hash: &'a str,
    devices: Option<&'a str>,
    created_at: NaiveDateTime,
    revoked: i16,
}

type TokenTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    NaiveDateTime,
    i16,
);

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

impl Db {
    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        use super::schema::tokens::dsl::*;
        let rows: Vec<TokenTuple> = tokens
            .select((id, name, role, hash, devices, created_at, revoked))
            .order((created_at.asc(), id.asc()))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, n, r, h, d, c, rv)| TokenRecord {
                id: i,
                name: n,
                role: r,
                hash: h,
                devices: d,
                created_at: utc(c),
                revoked: rv != 0,
            })
            .collect())
    }

    /// Stores a new token.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<(), StorageError> {
        if t.name.chars().count() > 64 || t.id.chars().count() > 40 {
            return Err(StorageError::Query(
                "token name longer than 64 characters".into(),
            ));
        }
        let row = NewToken {
            id: &t.id,
            name: &t.name,
            role: &t.role,
            hash: &t.hash,
            devices: t.devices.as_deref(),
            created_at: naive(t.created_at),
            revoked: i16::from(t.revoked),
        };
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        on_inner!(conn, c => diesel::insert_into(tokens::table).values(&row).execute(c),
                  mysql c => mysql::insert_token(c, &row))?;
        Ok(())
    }

    /// Revokes a token; false when there is no such live token.
    pub fn revoke_token(&self, token_id: &str) -> Result<bool, StorageError> {
        use super::schema::tokens::dsl::*;
        let n = diesel::update(tokens.filter(id.eq(token_id)).filter(revoked.eq(0i16)))
            .set(revoked.eq(1i16))
            .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// One recorded command.
    pub fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StorageError> {
        use super::schema::commands::dsl::*;
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
        Ok(row.map(|(i, d, rq, st, res, err, by, c, u)| CommandRecord {
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
}

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

#[derive(Insertable)]
#[diesel(table_name = commands)]
struct NewQueued<'a> {
    id: &'a str,
    device_id: &'a str,
    request: &'a str,
    status: &'static str,
    requested_by: Option<&'a str>,
    token_id: Option<&'a str>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    queue_seq: i64,
}

/// How often `enqueue_command` tries again when a concurrent enqueue took the same sequence
/// number (or the database reported a deadlock between them).
const ENQUEUE_ATTEMPTS: usize = 10;

/// The next sequence number of a device's queue, inside the caller's transaction.
macro_rules! next_queue_seq {
    ($c:expr, $device:expr) => {{
        use super::schema::commands::dsl as t;
        let max: Option<i64> = t::commands
            .filter(t::device_id.eq($device))
            .select(diesel::dsl::max(t::queue_seq))
            .first(&mut *$c)?;
        max.unwrap_or(0) + 1
    }};
}

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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let row = |queue_seq| NewQueued {
                id: &cmd.id,
                device_id: &cmd.device_id,
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
                    let seq = next_queue_seq!(c, &cmd.device_id);
                    diesel::insert_into(commands::table)
                        .values(&row(seq))
                        .execute(c)?;
                    Ok::<_, diesel::result::Error>(seq)
                }),
                AnyConnection::Sqlite(c) => c.immediate_transaction(|c| {
                    let seq = next_queue_seq!(c, &cmd.device_id);
                    diesel::insert_into(commands::table)
                        .values(&row(seq))
                        .execute(c)?;
                    Ok::<_, diesel::result::Error>(seq)
                }),
                #[cfg(feature = "mysql")]
                AnyConnection::Mysql(c) => c.transaction(|c| {
                    let seq = next_queue_seq!(c, &cmd.device_id);
                    mysql::insert_queued(c, &row(seq))?;
                    Ok::<_, diesel::result::Error>(seq)
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
        use super::schema::commands::dsl as t;
        let mut query = t::commands
            .filter(t::status.eq("queued"))
            .into_boxed::<MultiBackend>();
        if let Some(d) = device {
            query = query.filter(t::device_id.eq(d));
        }
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
            .order((t::device_id.asc(), t::queue_seq.asc()))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(queued_command).collect())
    }

    /// The devices that have commands queued (at most `limit`).
    pub fn queued_devices(&self, limit: i64) -> Result<Vec<String>, StorageError> {
        use super::schema::commands::dsl as t;
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
        use super::schema::commands::dsl as t;
        let now = naive(now);
        let n = diesel::update(
            t::commands
                .filter(t::id.eq(command_id))
                .filter(t::status.eq("queued"))
                .filter(t::expires_at.gt(bound!(self.backend, now).nullable())),
        )
        .set((t::status.eq("sent"), t::updated_at.eq(now)))
        .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// Puts a claimed command back in the queue (`sent` → `queued`): for a claim whose device
    /// went away before the command was handed to its connection, so nothing was sent.
    pub fn unclaim_command(&self, command_id: &str) -> Result<bool, StorageError> {
        use super::schema::commands::dsl as t;
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
        use super::schema::commands::dsl as t;
        let now = naive(now);
        let n = diesel::update(
            t::commands
                .filter(t::id.eq(command_id))
                .filter(t::status.eq("queued"))
                .filter(t::expires_at.le(bound!(self.backend, now).nullable())),
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
        use super::schema::commands::dsl as t;
        let rows: Vec<QueuedTuple> = t::commands
            .filter(t::status.eq("queued"))
            .filter(t::expires_at.le(bound!(self.backend, naive(now)).nullable()))
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
            .order((t::expires_at.asc(), t::id.asc()))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows.into_iter().map(queued_command).collect())
    }

    /// At start: queued commands that were claimed (`sent`) when the server stopped without
    /// their answer become `failed` — whether the device got them is unknown, and they are
    /// never sent twice. Returns how many.
    pub fn fail_interrupted(&self, now: DateTime<Utc>) -> Result<usize, StorageError> {
        use super::schema::commands::dsl as t;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_spaced_and_uppercase() {
        assert_eq!(spaced_hex("0103000a"), "01 03 00 0A");
        assert_eq!(spaced_hex(""), "");
        assert_eq!(spaced_hex("01 03"), "01 03");
    }

    #[test]
    fn chunks_stay_under_the_bind_limits() {
        assert!(rows_per_insert(max_binds(Backend::Sqlite), 7) * 7 <= 32_766);
        assert!(rows_per_insert(max_binds(Backend::Postgres), 5) * 5 <= 65_535);
        assert_eq!(rows_per_insert(10, 20), 1);
    }
}

/// A webhook subscriber added through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// JSON list of event names, or `["*"]`.
    pub events: String,
    pub secret: Option<String>,
    /// JSON list of device ids and `prefix*` patterns; None for every device.
    pub devices: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One stored delivery attempt, as `GET /api/webhooks/{wid}/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub delivery: String,
    pub event: String,
    pub events: i32,
    pub attempt: i32,
    pub outcome: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = webhooks)]
#[diesel(treat_none_as_default_value = false)]
struct NewWebhook<'a> {
    id: &'a str,
    url: &'a str,
    events: &'a str,
    secret: Option<&'a str>,
    devices: Option<&'a str>,
    created_at: NaiveDateTime,
}

type WebhookTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    NaiveDateTime,
);

type DeliveryTuple = (
    i64,
    String,
    String,
    i32,
    i32,
    String,
    Option<i32>,
    Option<String>,
    i64,
    NaiveDateTime,
);

impl Db {
    /// The API-created webhook subscribers, oldest first.
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StorageError> {
        use super::schema::webhooks::dsl::*;
        let rows: Vec<WebhookTuple> = webhooks
            .select((id, url, events, secret, devices, created_at))
            .order((created_at.asc(), id.asc()))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, u, e, s, d, c)| WebhookRecord {
                id: i,
                url: u,
                events: e,
                secret: s,
                devices: d,
                created_at: utc(c),
            })
            .collect())
    }

    /// Stores a new webhook subscriber.
    pub fn insert_webhook(&self, w: &WebhookRecord) -> Result<(), StorageError> {
        if w.id.chars().count() > 40 {
            return Err(StorageError::Query(
                "webhook id longer than 40 characters".into(),
            ));
        }
        let row = NewWebhook {
            id: &w.id,
            url: &w.url,
            events: &w.events,
            secret: w.secret.as_deref(),
            devices: w.devices.as_deref(),
            created_at: naive(w.created_at),
        };
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        on_inner!(conn, c => diesel::insert_into(webhooks::table).values(&row).execute(c),
                  mysql c => mysql::insert_webhook(c, &row))?;
        Ok(())
    }

    /// Deletes a webhook subscriber (its delivery log stays); false when there was none.
    pub fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StorageError> {
        use super::schema::webhooks::dsl::*;
        let n = diesel::delete(webhooks.filter(id.eq(webhook_id))).execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// The latest `limit` delivery attempts of a subscriber, newest first.
    pub fn deliveries(
        &self,
        webhook: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, StorageError> {
        use super::schema::webhook_deliveries::dsl::*;
        let rows: Vec<DeliveryTuple> = webhook_deliveries
            .filter(webhook_id.eq(webhook))
            .select((
                id,
                delivery,
                event,
                events,
                attempt,
                outcome,
                status_code,
                error,
                latency_ms,
                at,
            ))
            .order(id.desc())
            .limit(limit)
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, dl, ev, n, a, o, sc, er, l, t)| DeliveryRecord {
                id: i,
                delivery: dl,
                event: ev,
                events: n,
                attempt: a,
                outcome: o,
                status_code: sc,
                error: er,
                latency_ms: l,
                at: utc(t),
            })
            .collect())
    }
}
