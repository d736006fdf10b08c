//! Device routes: the list, one device, its latest values.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::{mailbox_error, AppState};
use crate::supervisor::messages::{DeviceView, GetDevice, ListDevices, Values};

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

/// A device the caller may see, with its latest values; 404 when the server does not know it.
async fn device(
    state: &AppState,
    caller: &Caller,
    id: String,
) -> Result<(DeviceView, Values), ApiError> {
    caller.device(&id)?;
    state
        .supervisor
        .send(GetDevice { id: id.clone() })
        .await
        .map_err(mailbox_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id}")))
}

async fn one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (view, values) = device(&state, &caller, id.into_inner()).await?;
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
    let (_, values) = device(&state, &caller, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(values))
}
