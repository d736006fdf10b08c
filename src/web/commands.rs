//! `POST /api/devices/{id}/commands` sends an operator command (its life is in
//! [`crate::command`]); `GET /api/commands/{cid}` reads its record back.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::AppState;
use crate::command::outcome_json;
use crate::command::request::CommandBody;
use crate::command::send::{Requester, Sent};

/// Longest command id accepted in a path (the column width).
const COMMAND_ID_MAX: usize = 40;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/devices/{id}/commands").route(web::post().to(send)))
        .service(web::resource("/commands/{cid}").route(web::get().to(get)));
}

async fn send(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<CommandBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.require(Role::Operator)?;
    caller.device(&id)?;
    let by = Requester {
        token_id: caller.token_id.clone(),
        name: caller.name.clone(),
    };
    match state.commands.send(&id, &body, &by).await? {
        Sent::Answered { id, outcome } => Ok(HttpResponse::Ok().json(json!({
            "id": id,
            "status": "ok",
            "result": outcome_json(&outcome),
        }))),
        Sent::Queued { id, expires_at } => Ok(HttpResponse::Accepted().json(json!({
            "id": id,
            "status": "queued",
            "expires_at": expires_at,
        }))),
    }
}

/// `GET /api/commands/{cid}`: the stored record, for any role that reaches the device.
async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    cid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let cid = cid.into_inner();
    if cid.is_empty() || cid.chars().count() > COMMAND_ID_MAX {
        return Err(ApiError::bad_request(format!(
            "a command id has 1..={COMMAND_ID_MAX} characters"
        )));
    }
    let key = cid.clone();
    let record = state
        .db
        .call(move |db| db.command(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown command {cid}")))?;
    caller.device(&record.device_id)?;
    let parse = |text: Option<String>| {
        text.map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t)))
    };
    Ok(HttpResponse::Ok().json(json!({
        "id": record.id,
        "device_id": record.device_id,
        "status": record.status,
        "request": parse(Some(record.request)),
        "result": parse(record.result),
        "error": record.error,
        "requested_by": record.requested_by,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    })))
}
