//! What MariaDB/MySQL needs differently: its inserts bind times as DATETIME.
//!
//! diesel binds a `Timestamp` to MySQL as `MYSQL_TYPE_TIMESTAMP`, which the server converts
//! through the session time zone and the TIMESTAMP range (1970–2038) before storing it in a
//! DATETIME column: a time outside that range becomes NULL. The tables below are those of
//! `schema.rs` with `Datetime` times, so that the inserts here bind `MYSQL_TYPE_DATETIME` and
//! store the value as given. Reads go through `AnyConnection` and `schema.rs`; comparisons
//! cast their parameter (`time::bound`). Compiled with the `mysql` feature only.

use diesel::prelude::*;
use diesel::MysqlConnection;

use super::insert::{
    NewCommand, NewDelivery, NewDevice, NewEvent, NewPacket, NewPoint, NewQueued, NewRelay,
    NewSeries, NewToken, NewWebhook,
};

/// `schema.rs` as MySQL inserts must bind it: `Datetime` wherever a time is stored.
mod datetime_tables {
    diesel::table! {
        devices (id) {
            id -> Text,
            protocol -> Text,
            profile -> Nullable<Text>,
            remote_addr -> Text,
            online -> SmallInt,
            connected_at -> Datetime,
            last_seen -> Datetime,
            parent -> Nullable<Text>,
            unit -> Nullable<SmallInt>,
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

/// `INSERT INTO table (columns…) VALUES (…), …` of `$rows` (a slice), each column bound from
/// the row's field of the same name; not executed, so that an upsert can add its clause.
macro_rules! insert {
    ($rows:expr => $table:ident($($col:ident),+ $(,)?)) => {{
        use datetime_tables::$table::dsl as t;
        let values: Vec<_> = $rows.iter().map(|r| ($(t::$col.eq(&r.$col),)+)).collect();
        diesel::insert_into(t::$table).values(values)
    }};
}

/// The `SET` of `INSERT … ON DUPLICATE KEY UPDATE`: each listed column takes the value the
/// insert gave it.
macro_rules! inserted {
    ($table:ident => $($col:ident),+ $(,)?) => {{
        use datetime_tables::$table::dsl as t;
        ($(t::$col.eq(diesel::dsl::sql::<diesel::dsl::SqlTypeOf<t::$col>>(
            concat!("VALUES(`", stringify!($col), "`)"),
        )),)+)
    }};
}

/// Telemetry points: `INSERT … ON DUPLICATE KEY UPDATE` of value and raw (no time column to
/// bind as DATETIME: `at` is milliseconds).
pub(super) fn upsert_points(c: &mut MysqlConnection, rows: &[NewPoint]) -> QueryResult<usize> {
    use super::schema::points::dsl as t;
    diesel::insert_into(t::points)
        .values(rows)
        .on_conflict(diesel::dsl::DuplicatedKeys)
        .do_update()
        .set((
            t::value.eq(diesel::dsl::sql::<diesel::sql_types::Double>(
                "VALUES(`value`)",
            )),
            t::raw.eq(diesel::dsl::sql::<diesel::sql_types::Double>(
                "VALUES(`raw`)",
            )),
        ))
        .execute(c)
}

/// A series unless it exists (`INSERT IGNORE`).
pub(super) fn insert_series(c: &mut MysqlConnection, row: &NewSeries<'_>) -> QueryResult<usize> {
    diesel::insert_or_ignore_into(super::schema::series::table)
        .values(row)
        .execute(c)
}

pub(super) fn packets(c: &mut MysqlConnection, rows: &[NewPacket<'_>]) -> QueryResult<usize> {
    insert!(rows => raw_packets(device_id, direction, kind, hex, at)).execute(c)
}

pub(super) fn events(c: &mut MysqlConnection, rows: &[NewEvent<'_>]) -> QueryResult<usize> {
    insert!(rows => connection_events(device_id, event, remote_addr, detail, at)).execute(c)
}

pub(super) fn deliveries(c: &mut MysqlConnection, rows: &[NewDelivery<'_>]) -> QueryResult<usize> {
    insert!(rows => webhook_deliveries(
        webhook_id, delivery, event, events, attempt, outcome, status_code, error, latency_ms, at
    ))
    .execute(c)
}

/// Devices by id: `INSERT … ON DUPLICATE KEY UPDATE` of everything but the id.
pub(super) fn upsert_devices(
    c: &mut MysqlConnection,
    rows: &[NewDevice<'_>],
) -> QueryResult<usize> {
    insert!(rows => devices(id, protocol, profile, remote_addr, online, connected_at, last_seen, parent, unit))
        .on_conflict(diesel::dsl::DuplicatedKeys)
        .do_update()
        .set(inserted!(devices => protocol, profile, remote_addr, online, connected_at, last_seen, parent, unit))
        .execute(c)
}

/// Commands by id: `INSERT … ON DUPLICATE KEY UPDATE` of the state columns.
pub(super) fn upsert_commands(
    c: &mut MysqlConnection,
    rows: &[NewCommand<'_>],
) -> QueryResult<usize> {
    insert!(rows => commands(
        id, device_id, request, status, result, error, requested_by, created_at, updated_at
    ))
    .on_conflict(diesel::dsl::DuplicatedKeys)
    .do_update()
    .set(inserted!(commands => status, result, error, updated_at))
    .execute(c)
}

pub(super) fn insert_queued(c: &mut MysqlConnection, r: &NewQueued<'_>) -> QueryResult<usize> {
    insert!(std::slice::from_ref(r) => commands(
        id, device_id, request, status, requested_by, token_id, created_at, updated_at,
        expires_at, queue_seq
    ))
    .execute(c)
}

pub(super) fn insert_token(c: &mut MysqlConnection, r: &NewToken<'_>) -> QueryResult<usize> {
    insert!(std::slice::from_ref(r) => tokens(id, name, role, hash, devices, created_at, revoked))
        .execute(c)
}

pub(super) fn insert_webhook(c: &mut MysqlConnection, r: &NewWebhook<'_>) -> QueryResult<usize> {
    insert!(std::slice::from_ref(r) => webhooks(id, url, events, secret, devices, created_at))
        .execute(c)
}

pub(super) fn relay_insert(c: &mut MysqlConnection, r: &NewRelay<'_>) -> QueryResult<usize> {
    insert!(std::slice::from_ref(r) => relay_queue(target, sender, hex, queued_at)).execute(c)
}

/// Marks frames delivered: an update that binds a time, like the inserts.
pub(super) fn relay_delivered(
    c: &mut MysqlConnection,
    ids: &[i64],
    at: chrono::NaiveDateTime,
) -> QueryResult<usize> {
    use datetime_tables::relay_queue::dsl as t;
    diesel::update(t::relay_queue.filter(t::id.eq_any(ids)))
        .set(t::delivered_at.eq(Some(at)))
        .execute(c)
}
