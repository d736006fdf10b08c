//! Token management (admin only): `GET/POST /api/tokens`, `DELETE /api/tokens/{tid}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::auth::{check_device_list, hash_hex, new_secret, parse_devices, Caller, Role};
use super::error::ApiError;
use super::AppState;
use crate::storage::db::TokenRecord;
use crate::storage::rows::new_id;

const NAME_MAX: usize = 64;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tokens")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(web::resource("/tokens/{tid}").route(web::delete().to(revoke)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
    devices: Option<Vec<String>>,
}

fn validate(body: &NewToken) -> Result<Role, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX {
        return Err(ApiError::bad_request(format!(
            "name must be 1..={NAME_MAX} characters"
        )));
    }
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role must be viewer, operator or admin, got {:?}",
            body.role
        ))
    })?;
    if let Some(devices) = &body.devices {
        check_device_list(devices)?;
    }
    Ok(role)
}

async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    let role = validate(&body)?;
    let secret = new_secret();
    let devices = body
        .devices
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = TokenRecord {
        id: new_id('t'),
        name: body.name.trim().to_string(),
        role: role.as_str().to_string(),
        hash: hash_hex(&secret),
        devices,
        created_at: Utc::now(),
        revoked: false,
    };
    let tokens = state.tokens.clone();
    let stored = record.clone();
    state
        .db
        .call(move |db| {
            db.insert_token(&stored)?;
            tokens.reload()
        })
        .await?;
    log::info!(
        "auth: token {} ({:?}, {}) created by {:?}",
        record.id,
        record.name,
        record.role,
        caller.name
    );
    Ok(HttpResponse::Created().json(json!({
        "id": record.id,
        "token": secret,
        "role": record.role,
        "name": record.name,
        "devices": body.devices,
    })))
}

async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    let rows = state.db.call(|db| db.tokens()).await?;
    let body: Vec<_> = rows
        .into_iter()
        .filter(|t| !t.revoked)
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "devices": parse_devices(t.devices.as_deref()),
                "created_at": t.created_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    tid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    let tid = tid.into_inner();
    if tid.chars().count() > 40 {
        return Err(ApiError::bad_request(
            "a token id has at most 40 characters",
        ));
    }
    let tokens = state.tokens.clone();
    let id = tid.clone();
    let revoked = state
        .db
        .call(move |db| {
            let revoked = db.revoke_token(&id)?;
            tokens.reload()?;
            Ok(revoked)
        })
        .await?;
    if !revoked {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no live token {tid}"),
        ));
    }
    log::info!("auth: token {tid} revoked by {:?}", caller.name);
    Ok(HttpResponse::Ok().json(json!({"id": tid, "revoked": true})))
}
