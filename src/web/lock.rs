//! The control lock: `POST /api/devices/{id}/lock` `{"ttl_s"}` gives the calling token
//! exclusive command rights on a device until it releases them (`DELETE`) or they expire;
//! commands from other tokens then answer 423 with `holder` and `expires_at`. Polls go on.
//!
//! The lock lives in the supervisor, where commands are routed, and only in memory: a restart
//! releases every lock. An admin may break anyone's lock with `DELETE` (logged); an admin's
//! commands are locked out like anyone else's until then.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{mailbox_error, AppState};
use crate::supervisor::locks::{AcquireLock, GetLock, ReleaseLock};

/// Lock time when the body names no `ttl_s`.
pub const DEFAULT_LOCK_TTL_S: u64 = 300;
/// The longest lock one request takes: a day (the holder may extend it by posting again).
pub const MAX_LOCK_TTL_S: u64 = 86_400;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/devices/{id}/lock")
            .route(web::post().to(acquire))
            .route(web::delete().to(release))
            .route(web::get().to(show)),
    );
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    pub ttl_s: Option<u64>,
}

impl LockBody {
    pub fn ttl(&self) -> Result<chrono::Duration, ApiError> {
        let s = self.ttl_s.unwrap_or(DEFAULT_LOCK_TTL_S);
        if !(1..=MAX_LOCK_TTL_S).contains(&s) {
            return Err(ApiError::bad_request(format!(
                "ttl_s must be 1..={MAX_LOCK_TTL_S} seconds, got {s}"
            )));
        }
        // In range by the check above.
        Ok(chrono::Duration::seconds(s as i64))
    }
}

/// Takes the lock, or extends it when the caller holds it: 200 `{"device_id","holder","expires_at"}`.
async fn acquire(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    // A JSON object like every other body (`{}` takes the default ttl): an empty or non-JSON
    // body is a client error, not a request for defaults.
    body: web::Json<LockBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.require(Role::Operator)?;
    caller.device(&id)?;
    let ttl = body.ttl()?;
    let lock = state
        .supervisor
        .send(AcquireLock {
            device: id,
            token_id: caller.token_id.clone(),
            holder: caller.name.clone(),
            ttl,
        })
        .await
        .map_err(mailbox_error)??;
    Ok(HttpResponse::Ok().json(lock))
}

/// Releases the caller's lock (an admin: anyone's): 200 with the released lock, 404 when the
/// device is not locked, 423 when another token holds it.
async fn release(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.require(Role::Operator)?;
    caller.device(&id)?;
    let released = state
        .supervisor
        .send(ReleaseLock {
            device: id.clone(),
            token_id: caller.token_id.clone(),
            by: caller.name.clone(),
            force: caller.role >= Role::Admin,
        })
        .await
        .map_err(mailbox_error)??
        .ok_or_else(|| ApiError::not_found(format!("device {id} is not locked")))?;
    Ok(HttpResponse::Ok().json(json!({
        "device_id": released.device_id,
        "holder": released.holder,
        "expires_at": released.expires_at,
        "released": true,
    })))
}

/// Who holds the lock, for any role that reaches the device: `{"device_id","locked",…}`.
async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    caller.device(&id)?;
    let lock = state
        .supervisor
        .send(GetLock { device: id.clone() })
        .await
        .map_err(mailbox_error)?;
    Ok(HttpResponse::Ok().json(match lock {
        Some(l) => json!({
            "device_id": l.device_id,
            "locked": true,
            "holder": l.holder,
            "expires_at": l.expires_at,
        }),
        None => json!({"device_id": id, "locked": false}),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ttl_bounds() {
        let ttl = |s| LockBody { ttl_s: s }.ttl().map(|d| d.num_seconds());
        assert_eq!(ttl(None).ok(), Some(300));
        let parse = |b: &str| serde_json::from_str::<LockBody>(b);
        assert_eq!(parse("{}").ok().and_then(|b| b.ttl_s), None);
        assert_eq!(parse(r#"{"ttl_s":5}"#).ok().and_then(|b| b.ttl_s), Some(5));
        assert!(parse(r#"{"ttl":5}"#).is_err());
        assert!(parse(r#"{"ttl_s":"5"}"#).is_err());
        assert!(parse("").is_err());
        assert_eq!(ttl(Some(1)).ok(), Some(1));
        assert_eq!(ttl(Some(86_400)).ok(), Some(86_400));
        assert_eq!(ttl(Some(0)).map_err(|e| e.status.as_u16()).err(), Some(400));
        assert_eq!(
            ttl(Some(86_401)).map_err(|e| e.status.as_u16()).err(),
            Some(400)
        );
    }
}
