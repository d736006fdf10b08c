//! Every table's row as diesel inserts it: what the batched writes (`batch.rs`), the
//! per-table queries (`repo/`) and the MySQL inserts (`mysql.rs`) bind. Times are naive UTC
//! truncated to microseconds (`time.rs`); telemetry's are integer milliseconds.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{
    commands, connection_events, devices, points, raw_packets, relay_queue, series, tokens,
    webhook_deliveries, webhooks,
};

/// A telemetry value under its series (`series.rs`); `at` in milliseconds since 1970 UTC.
#[derive(Insertable, Clone, Copy, Debug, PartialEq)]
#[diesel(table_name = points)]
// No optional fields; this only makes the derive fit PostgreSQL's COPY.
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewPoint {
    pub(crate) series_id: i32,
    pub(crate) at: i64,
    pub(crate) value: f64,
    pub(crate) raw: f64,
}

#[derive(Insertable)]
#[diesel(table_name = series)]
pub(crate) struct NewSeries<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) point: &'a str,
    pub(crate) unit: &'a str,
}

#[derive(Insertable)]
#[diesel(table_name = raw_packets)]
pub(crate) struct NewPacket<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) direction: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) hex: String,
    pub(crate) at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = connection_events)]
pub(crate) struct NewEvent<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) event: &'static str,
    pub(crate) remote_addr: &'a str,
    pub(crate) detail: &'a str,
    pub(crate) at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = devices)]
pub(crate) struct NewDevice<'a> {
    pub(crate) id: &'a str,
    pub(crate) protocol: &'a str,
    pub(crate) profile: Option<&'a str>,
    pub(crate) remote_addr: &'a str,
    pub(crate) online: i16,
    pub(crate) connected_at: NaiveDateTime,
    pub(crate) last_seen: NaiveDateTime,
    pub(crate) parent: Option<&'a str>,
    pub(crate) unit: Option<i16>,
}

#[derive(Insertable)]
#[diesel(table_name = commands)]
pub(crate) struct NewCommand<'a> {
    pub(crate) id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) request: &'a str,
    pub(crate) status: &'a str,
    pub(crate) result: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) requested_by: Option<&'a str>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = webhook_deliveries)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewDelivery<'a> {
    pub(crate) webhook_id: &'a str,
    pub(crate) delivery: &'a str,
    pub(crate) event: &'a str,
    pub(crate) events: i32,
    pub(crate) attempt: i32,
    pub(crate) outcome: &'a str,
    pub(crate) status_code: Option<i32>,
    pub(crate) error: Option<&'a str>,
    pub(crate) latency_ms: i64,
    pub(crate) at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = commands)]
pub(crate) struct NewQueued<'a> {
    pub(crate) id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) request: &'a str,
    pub(crate) status: &'static str,
    pub(crate) requested_by: Option<&'a str>,
    pub(crate) token_id: Option<&'a str>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) expires_at: NaiveDateTime,
    pub(crate) queue_seq: i64,
}

#[derive(Insertable)]
#[diesel(table_name = relay_queue)]
pub(crate) struct NewRelay<'a> {
    pub(crate) target: &'a str,
    pub(crate) sender: &'a str,
    pub(crate) hex: String,
    pub(crate) queued_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = tokens)]
pub(crate) struct NewToken<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) role: &'a str,
    pub(crate) hash: &'a str,
    pub(crate) devices: Option<&'a str>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) revoked: i16,
}

#[derive(Insertable)]
#[diesel(table_name = webhooks)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewWebhook<'a> {
    pub(crate) id: &'a str,
    pub(crate) url: &'a str,
    pub(crate) events: &'a str,
    pub(crate) secret: Option<&'a str>,
    pub(crate) devices: Option<&'a str>,
    pub(crate) created_at: NaiveDateTime,
}
