//! Webhook subscribers (admin only): `GET/POST /api/webhooks`, `DELETE /api/webhooks/{wid}`,
//! `POST /api/webhooks/{wid}/test`, `GET /api/webhooks/{wid}/deliveries`.
//!
//! Subscribers of `server.toml` are listed with ids `settings-N` and `"source":"settings"`;
//! DELETE answers 409 for them (remove them from the file). API ones live in the `webhooks`
//! table and are started again at every start.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::auth::{check_device_list, Caller, Role};
use super::error::ApiError;
use super::history::{page_limit, LimitParam};
use super::{mailbox_error, AppState};
use crate::events::bus::{envelope, new_event_id, EventFilter};
use crate::events::webhooks::check_webhook_url;
use crate::events::webhooks::{self, Payload, Source, Subscriber};
use crate::storage::db::WebhookRecord;
use crate::storage::rows::new_id;

const URL_MAX: usize = 2048;
const SECRET_MAX: usize = 256;
const DELIVERIES_DEFAULT: i64 = 100;
const DELIVERIES_MAX: i64 = 1_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(web::resource("/webhooks/{wid}").route(web::delete().to(remove)))
    .service(web::resource("/webhooks/{wid}/test").route(web::post().to(test)))
    .service(web::resource("/webhooks/{wid}/deliveries").route(web::get().to(deliveries)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    events: Vec<String>,
    secret: Option<String>,
    devices: Option<Vec<String>>,
}

fn validate(body: &NewWebhook) -> Result<EventFilter, ApiError> {
    if body.url.len() > URL_MAX {
        return Err(ApiError::bad_request(format!(
            "url is longer than {URL_MAX} bytes"
        )));
    }
    check_webhook_url(&body.url).map_err(|e| ApiError::bad_request(format!("url: {e}")))?;
    if body.events.is_empty() {
        return Err(ApiError::bad_request(
            "events must not be empty (use [\"*\"] for all events)",
        ));
    }
    if let Some(secret) = &body.secret {
        if secret.is_empty() || secret.len() > SECRET_MAX {
            return Err(ApiError::bad_request(format!(
                "secret must be 1..={SECRET_MAX} bytes (leave it out for unsigned deliveries)"
            )));
        }
    }
    if let Some(devices) = &body.devices {
        check_device_list(devices)?;
    }
    EventFilter::parse(&body.events, body.devices.clone())
        .map_err(|e| ApiError::bad_request(format!("events: {e}")))
}

async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<NewWebhook>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    let filter = validate(&body)?;
    let body = body.into_inner();
    let record = WebhookRecord {
        id: new_id('w'),
        url: body.url.clone(),
        events: serde_json::to_string(&body.events)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        secret: body.secret.clone(),
        devices: body
            .devices
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        created_at: Utc::now(),
    };
    let stored = record.clone();
    state.db.call(move |db| db.insert_webhook(&stored)).await?;
    let sub = Subscriber {
        id: record.id.clone(),
        url: body.url,
        events: body.events,
        devices: body.devices,
        secret: body.secret,
        source: Source::Api,
        created_at: Some(record.created_at),
        filter,
    };
    state.webhooks.add(sub).await.map_err(mailbox_error)?;
    log::info!(
        "webhook {} ({}) added by {:?}",
        record.id,
        record.url,
        caller.name
    );
    let shown = state
        .webhooks
        .describe(&record.id)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "webhook removed meanwhile"))?;
    Ok(HttpResponse::Created().json(shown))
}

async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    Ok(HttpResponse::Ok().json(state.webhooks.list()))
}

/// The subscriber `wid` names, for an admin: 400 for an id longer than any, 404 for one
/// that is not there.
fn subscriber(state: &AppState, caller: &Caller, wid: &str) -> Result<Arc<Subscriber>, ApiError> {
    caller.require(Role::Admin)?;
    if wid.chars().count() > 40 {
        return Err(ApiError::bad_request(
            "a webhook id has at most 40 characters",
        ));
    }
    state.webhooks.get(wid).ok_or_else(|| unknown(wid))
}

fn unknown(wid: &str) -> ApiError {
    ApiError::not_found(format!("no webhook {wid}"))
}

async fn remove(
    state: web::Data<AppState>,
    caller: Caller,
    wid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let wid = wid.into_inner();
    let sub = subscriber(&state, &caller, &wid)?;
    if sub.source == Source::Settings {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("webhook {wid} is defined in server.toml; remove it there"),
        ));
    }
    let id = wid.clone();
    state.db.call(move |db| db.delete_webhook(&id)).await?;
    if !state.webhooks.remove(&wid) {
        return Err(unknown(&wid));
    }
    log::info!("webhook {wid} deleted by {:?}", caller.name);
    Ok(HttpResponse::Ok().json(json!({"id": wid, "deleted": true})))
}

/// Sends one `webhook.test` envelope now (one attempt, recorded like any other) and answers
/// what came of it; 200 either way, `"ok"` says whether the receiver took it.
async fn test(
    state: web::Data<AppState>,
    caller: Caller,
    wid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let wid = wid.into_inner();
    let sub = subscriber(&state, &caller, &wid)?;
    let id = new_event_id();
    let body = envelope(
        &id,
        "webhook.test",
        "",
        Utc::now(),
        json!({"webhook": wid, "requested_by": caller.name}),
    );
    let payload = Payload {
        delivery: id,
        event: "webhook.test",
        count: 1,
        body: body.into(),
    };
    let cfg = &state.webhooks.cfg;
    let client = webhooks::client(cfg);
    let done = webhooks::attempt(
        &client,
        &sub,
        &payload,
        1,
        cfg.timeout,
        state.webhooks.storage(),
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({
        "delivery": payload.delivery,
        "ok": done.ok(),
        "outcome": done.outcome,
        "status_code": done.status_code,
        "error": done.error,
        "latency_ms": done.latency.as_millis() as u64,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryParams {
    limit: Option<LimitParam>,
}

async fn deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    wid: web::Path<String>,
    params: web::Query<DeliveryParams>,
) -> Result<HttpResponse, ApiError> {
    let wid = wid.into_inner();
    subscriber(&state, &caller, &wid)?;
    let limit = page_limit(
        params.limit.map(|l| l.0),
        DELIVERIES_DEFAULT,
        DELIVERIES_MAX,
    )?;
    let rows = state.db.call(move |db| db.deliveries(&wid, limit)).await?;
    Ok(HttpResponse::Ok().json(rows))
}
