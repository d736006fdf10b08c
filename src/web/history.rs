//! Stored history: telemetry, raw packets, connection events, and exports as CSV (streamed
//! page by page, never the whole set in memory) or XLSX.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::storage::db::{Db, ExportCursor, StorageError, TelemetryQuery};

/// Largest `limit` a history query honours; more is capped, not refused.
pub const MAX_LIMIT: i64 = 10_000;
const DEFAULT_LIMIT: i64 = 100;
/// Rows read from the database per export page.
const EXPORT_PAGE: i64 = 5_000;
/// Excel's own row limit, less the header.
const XLSX_MAX_ROWS: usize = 1_048_575;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/devices/{id}/telemetry").route(web::get().to(telemetry)))
        .service(web::resource("/devices/{id}/packets").route(web::get().to(packets)))
        .service(web::resource("/events").route(web::get().to(events)))
        .service(web::resource("/export").route(web::get().to(export)));
}

/// A time bound: RFC 3339 (`2026-11-23T10:00:00Z`) or unix milliseconds.
pub fn parse_time(name: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| ApiError::bad_request(format!("{name}: {ms} is out of range")));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{name}: {s:?} is neither RFC 3339 nor unix milliseconds ({e})"
            ))
        })
}

fn opt_time(name: &str, s: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    s.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_time(name, s))
        .transpose()
}

fn limit(l: Option<LimitParam>) -> Result<i64, ApiError> {
    page_limit(l.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)
}

/// A list's `limit` parameter: `default` when absent, capped at `max` (not refused), 400
/// below 1. Every paginated route of the API uses it.
pub fn page_limit(l: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match l {
        None => Ok(default),
        Some(n) if n >= 1 => Ok(n.min(max)),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be at least 1, got {n}"
        ))),
    }
}

/// A `limit` given as text (a route that parses its own query): digits, however many — a
/// number past what fits is capped like any other over-large limit, not refused.
pub fn query_limit(text: &str, max: i64) -> Result<i64, ApiError> {
    let n = parse_limit(text).map_err(ApiError::bad_request)?;
    page_limit(Some(n), max, max)
}

fn parse_limit(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(text.parse::<i64>().unwrap_or(i64::MAX));
    }
    text.parse::<i64>()
        .map_err(|_| format!("limit must be a whole number, got {text:?}"))
}

/// A `limit` query parameter as given, for routes whose query serde reads: any run of digits,
/// however long (a number past what fits becomes the largest, then capped by [`page_limit`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct LimitParam(pub i64);

impl TryFrom<String> for LimitParam {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        parse_limit(&text).map(LimitParam)
    }
}

fn check_range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    match (from, to) {
        (Some(f), Some(t)) if f > t => Err(ApiError::bad_request("from is after to")),
        _ => Ok(()),
    }
}

/// 404 for a device the server has never seen (every device with stored history is known:
/// the supervisor starts with the stored device list).
async fn known_device(state: &AppState, id: &str) -> Result<(), ApiError> {
    state
        .supervisor
        .send(crate::supervisor::messages::IsKnown(id.to_string()))
        .await
        .map_err(super::mailbox_error)?
        .then_some(())
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryParams {
    point: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<LimitParam>,
}

async fn telemetry(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    q: web::Query<TelemetryParams>,
) -> Result<HttpResponse, ApiError> {
    caller.device(&id)?;
    known_device(&state, &id).await?;
    let (from, to) = (opt_time("from", &q.from)?, opt_time("to", &q.to)?);
    check_range(from, to)?;
    let query = TelemetryQuery {
        device_id: id.into_inner(),
        point: q.point.clone().filter(|p| !p.is_empty()),
        from,
        to,
        limit: limit(q.limit)?,
    };
    let rows = state.db.call(move |db| db.telemetry(&query)).await?;
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| serde_json::json!({"point": r.point, "value": r.value, "raw": r.raw, "at": r.at}))
        .collect();
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    limit: Option<LimitParam>,
}

async fn packets(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    q: web::Query<LimitParams>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.device(&id)?;
    known_device(&state, &id).await?;
    let limit = limit(q.limit)?;
    // The newest come from memory (every packet, whatever `[storage] packets` stores); the
    // database adds those older than the oldest one held there.
    let mut rows = state
        .packets
        .recent(&id, usize::try_from(limit).unwrap_or(usize::MAX));
    let rest = limit - rows.len() as i64;
    if rest > 0 {
        let before = rows.last().map(|p| p.at);
        let older = state
            .db
            .call(move |db| db.packets(&id, before, rest))
            .await?;
        rows.extend(older);
    }
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    device: Option<String>,
    limit: Option<LimitParam>,
}

async fn events(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<EventParams>,
) -> Result<HttpResponse, ApiError> {
    let device = q.device.clone().filter(|d| !d.is_empty());
    if let Some(d) = &device {
        caller.device(d)?;
    }
    let limit = limit(q.limit)?;
    if let (None, Some(patterns)) = (&device, caller.devices.clone()) {
        // A token limited to some devices sees only their events. The query selects them;
        // the check again is for SQLite, whose LIKE ignores ASCII case.
        let mut rows = state
            .db
            .call(move |db| db.events_among(&patterns, limit))
            .await?;
        rows.retain(|r| caller.can_see(&r.device_id));
        return Ok(HttpResponse::Ok().json(rows));
    }
    let rows = state
        .db
        .call(move |db| db.events(device.as_deref(), limit))
        .await?;
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportParams {
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    /// The token, for download links (read by the auth middleware).
    #[allow(dead_code)]
    token: Option<String>,
}

async fn export(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ExportParams>,
) -> Result<HttpResponse, ApiError> {
    let (from, to) = (opt_time("from", &q.from)?, opt_time("to", &q.to)?);
    check_range(from, to)?;
    let device = q.device.clone().filter(|d| !d.is_empty());
    match &device {
        Some(d) => caller.device(d)?,
        None if caller.restricted() => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::FORBIDDEN,
                "this token reaches only some devices: name one with ?device=",
            ))
        }
        None => {}
    }
    let name = device.as_deref().unwrap_or("all").replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
        "_",
    );
    match q.format.as_deref().unwrap_or("csv") {
        "csv" => Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"telemetry-{name}.csv\""),
            ))
            .streaming(csv_stream(state.db.clone(), device, from, to))),
        "xlsx" => {
            let bytes = state.db.call(move |db| xlsx(db, device, from, to)).await?;
            Ok(HttpResponse::Ok()
                .content_type("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
                .insert_header((
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"telemetry-{name}.xlsx\""),
                ))
                .body(bytes))
        }
        other => Err(ApiError::bad_request(format!(
            "format must be csv or xlsx, got {other:?}"
        ))),
    }
}

/// Pages through the rows on a blocking thread, one CSV chunk per page, through a small
/// channel: a slow download holds back the reading, so memory stays at a few pages.
fn csv_stream(
    db: Db,
    device: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    // io::Error crosses threads; actix's error type does not.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut after: Option<ExportCursor> = None;
        let mut header = true;
        loop {
            let page = match db.telemetry_page(device.as_deref(), from, to, after, EXPORT_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    log::error!("export: reading telemetry failed: {e}");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            let mut w = csv::Writer::from_writer(Vec::with_capacity(64 * 1024));
            if header {
                header = false;
                let _ = w.write_record(["device_id", "point", "value", "raw", "at"]);
            }
            for (cursor, r) in &page {
                after = Some(*cursor);
                let _ = w.write_record([
                    r.device_id.as_str(),
                    r.point.as_str(),
                    &r.value.to_string(),
                    &r.raw.to_string(),
                    &r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ]);
            }
            let chunk = match w.into_inner() {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    log::error!("export: CSV writer failed: {e}");
                    return;
                }
            };
            if !chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err() {
                return; // the client went away
            }
            if (page.len() as i64) < EXPORT_PAGE {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (item.map_err(actix_web::error::ErrorInternalServerError), rx))
    })
}

/// Builds the workbook in constant-memory mode (rows go to a temp file as they are written).
fn xlsx(
    db: &Db,
    device: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<u8>, StorageError> {
    use rust_xlsxwriter::Workbook;
    let fail = |e: rust_xlsxwriter::XlsxError| StorageError::Query(format!("xlsx: {e}"));
    let mut book = Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory().map_err(fail)?;
    sheet.set_name("telemetry").map_err(fail)?;
    for (c, title) in ["device_id", "point", "value", "raw", "at"]
        .iter()
        .enumerate()
    {
        sheet.write_string(0, c as u16, *title).map_err(fail)?;
    }
    let mut row: u32 = 1;
    let mut after = None;
    'pages: loop {
        let page = db.telemetry_page(device.as_deref(), from, to, after, EXPORT_PAGE)?;
        for (cursor, r) in &page {
            if row as usize > XLSX_MAX_ROWS {
                log::warn!(
                    "export: XLSX stops at Excel's limit of {XLSX_MAX_ROWS} rows; use CSV for more"
                );
                break 'pages;
            }
            after = Some(*cursor);
            sheet.write_string(row, 0, &r.device_id).map_err(fail)?;
            sheet.write_string(row, 1, &r.point).map_err(fail)?;
            sheet.write_number(row, 2, r.value).map_err(fail)?;
            sheet.write_number(row, 3, r.raw).map_err(fail)?;
            sheet
                .write_string(
                    row,
                    4,
                    r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                )
                .map_err(fail)?;
            row += 1;
        }
        if (page.len() as i64) < EXPORT_PAGE {
            break;
        }
    }
    book.save_to_buffer().map_err(fail)
}
