//! `GET /metrics` (Prometheus text format) and the middleware that counts HTTP requests.
//!
//! `/metrics` needs no token by default: Prometheus scrapers usually send none, and the page
//! names no device, only totals. `[web] metrics_token = true` makes it ask for a bearer token
//! of any role, like the API.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::auth::{bearer, unauthorized};
use super::error::ApiError;
use super::{mailbox_error, AppState};
use crate::events::bus::SubscriberCount;
use crate::metrics::{Snapshot, METRICS};
use crate::storage::GetStats;
use crate::supervisor::messages::CountDevices;

/// The `route` label of a request that matched no route, so that scanners probing random
/// paths cannot grow the label set.
pub const UNMATCHED: &str = "unmatched";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").route(web::get().to(metrics)));
}

async fn metrics(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.settings.server.web.metrics_token {
        let caller = bearer(req.headers()).and_then(|t| state.tokens.authenticate(&t));
        if caller.is_none() {
            return Err(unauthorized());
        }
    }
    let devices = state
        .supervisor
        .send(CountDevices)
        .await
        .map_err(mailbox_error)?;
    let storage = state.storage.send(GetStats).await.map_err(mailbox_error)?;
    let subscribers = state
        .events
        .send(SubscriberCount)
        .await
        .map_err(mailbox_error)?;
    let snapshot = Snapshot {
        devices_registered: devices.registered as u64,
        devices_known: devices.known as u64,
        rows_buffered: storage.buffered as u64,
        rows_written: storage.written,
        rows_spooled: storage.spooled,
        spool_rows: storage.spooled_now,
        spool_bytes: storage.spool_bytes,
        write_lag_seconds: storage.write_lag_seconds,
        rows_offered_per_second: storage.offered_per_second,
        rows_written_per_second: storage.written_per_second,
        dropped_packets: storage.dropped_packets,
        dropped_telemetry: storage.dropped_telemetry,
        degraded: u64::from(!storage.degraded.is_empty()),
        event_subscribers: subscribers as u64,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(METRICS.render(&snapshot)))
}

/// Counts every HTTP request by its route pattern (`/api/devices/{id}`, never the concrete
/// path) and answer status. Wraps the whole app, so rejections by inner middleware (401)
/// are counted too.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = req.match_pattern().unwrap_or_else(|| UNMATCHED.to_string());
    let res = match next.call(req).await {
        Ok(res) => res,
        Err(e) => {
            // An inner middleware refused the request; its error becomes the answer.
            let status = e.as_response_error().status_code();
            METRICS.http_requests.inc(vec![
                ("route", route),
                ("status", status.as_u16().to_string()),
            ]);
            return Err(e);
        }
    };
    METRICS.http_requests.inc(vec![
        ("route", route),
        ("status", res.status().as_u16().to_string()),
    ]);
    Ok(res)
}
