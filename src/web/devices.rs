//! Device routes: the list, one device, its latest values.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::{mailbox_error, AppState};
use crate::supervisor::messages::{GetDevice, ListDevices};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/devices", web::get().to(list))
        .route("/devices/{id}", web::get().to(one))
        .route("/devices/{id}/values", web::get().to(values));
}

async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let mut devices = state
        .supervisor
        .send(ListDevices)
        .await
        .map_err(mailbox_error)?;
    devices.retain(|d| caller.can_see(&d.id));
    Ok(HttpResponse::Ok().json(devices))
}

async fn one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.device(&id)?;
    let (view, values) = state
        .supervisor
        .send(GetDevice { id: id.clone() })
        .await
        .map_err(mailbox_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id}")))?;
    let mut body = serde_json::to_value(view).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("values".into(), json!(values));
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn values(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.device(&id)?;
    let (_, values) = state
        .supervisor
        .send(GetDevice { id: id.clone() })
        .await
        .map_err(mailbox_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id}")))?;
    Ok(HttpResponse::Ok().json(values))
}
