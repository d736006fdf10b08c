//! `POST /api/devices/{id}/commands`: parse an operator command, hand it to the device through
//! the supervisor, and wait for the device's answer. Every command routed to a device is
//! recorded in `commands` (`sent`, then `ok`, `failed` or `timeout`) with the name of the token
//! that sent it; `GET /api/commands/{cid}` reads that record back.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::history::blocking;
use super::{mailbox_error, AppState};
use crate::command::{finish, CommandError, DeviceCommand};
use crate::protocol::modbus::{self, Request};
use crate::storage::db::QueuedCommand;
use crate::storage::rows::{CommandRow, Row};
use crate::storage::store_now;
use crate::supervisor::{KickQueue, RouteCommand};

/// How long a caller waits for a device when the body names no `timeout_ms`: long enough for
/// a queued poll plus the profile's own timeout and retries, which usually answer first.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT_MS: u64 = 600_000;
/// How long a queued command waits for its device unless the body says `ttl_s`.
pub const DEFAULT_QUEUE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest `ttl_s` accepted: 30 days.
pub const MAX_QUEUE_TTL_S: u64 = 30 * 24 * 3600;

/// Longest command id accepted in a path (the column width).
const COMMAND_ID_MAX: usize = 40;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/devices/{id}/commands", web::post().to(send))
        .route("/commands/{cid}", web::get().to(get));
}

/// The JSON body; which fields apply depends on `type`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_if_offline: Option<bool>,
    /// With `queue_if_offline`: how long the command may wait for its device, in seconds
    /// (default one day); past that it ends `expired`, unsent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

fn need<T>(field: Option<T>, name: &str, kind: &str) -> Result<T, ApiError> {
    field.ok_or_else(|| ApiError::bad_request(format!("a {kind} command needs \"{name}\"")))
}

fn as_u16(v: &Value, what: &str) -> Result<u16, ApiError> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("{what} must be an integer 0..=65535, got {v}"))
        })
}

fn as_bool(v: &Value, what: &str) -> Result<bool, ApiError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be true or false, got {v}"
        ))),
    }
}

impl CommandBody {
    /// The device command this body asks for, validated.
    pub fn to_command(&self) -> Result<DeviceCommand, ApiError> {
        let kind = self.kind.as_str();
        let request = match kind {
            "read" => Request::read(
                need(self.function, "function", kind)?,
                need(self.start, "start", kind)?,
                need(self.count, "count", kind)?,
            )
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
            "write_register" => Request::WriteSingleRegister {
                address: need(self.address, "address", kind)?,
                value: as_u16(need(self.value.as_ref(), "value", kind)?, "value")?,
            },
            "write_registers" => Request::WriteMultipleRegisters {
                address: need(self.address, "address", kind)?,
                values: need(self.values.as_ref(), "values", kind)?
                    .iter()
                    .map(|v| as_u16(v, "each of values"))
                    .collect::<Result<_, _>>()?,
            },
            "write_coil" => Request::WriteSingleCoil {
                address: need(self.address, "address", kind)?,
                value: as_bool(need(self.value.as_ref(), "value", kind)?, "value")?,
            },
            "write_coils" => Request::WriteMultipleCoils {
                address: need(self.address, "address", kind)?,
                values: need(self.values.as_ref(), "values", kind)?
                    .iter()
                    .map(|v| as_bool(v, "each of values"))
                    .collect::<Result<_, _>>()?,
            },
            "named" => return Ok(DeviceCommand::Named(need(self.name.clone(), "name", kind)?)),
            "raw" => {
                let bytes = crate::protocol::hex::parse_hex(need(self.hex.as_deref(), "hex", kind)?)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                if bytes.len() < 2 {
                    return Err(ApiError::bad_request("a raw frame needs at least slave and function"));
                }
                return Ok(DeviceCommand::Raw(modbus::rtu::ensure_crc(bytes)));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown command type {other:?}: use read, write_register, write_registers, write_coil, write_coils, named or raw"
                )))
            }
        };
        request
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(DeviceCommand::Modbus(request))
    }

    pub fn wait(&self) -> Result<Duration, ApiError> {
        match self.timeout_ms {
            None => Ok(DEFAULT_WAIT),
            Some(ms) if (1..=MAX_WAIT_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(ApiError::bad_request(format!(
                "timeout_ms must be 1..={MAX_WAIT_MS}, got {ms}"
            ))),
        }
    }

    /// How long a command may wait in the offline queue: None unless `queue_if_offline`.
    pub fn queue_ttl(&self) -> Result<Option<Duration>, ApiError> {
        match (self.queue_if_offline, self.ttl_s) {
            (Some(true), None) => Ok(Some(DEFAULT_QUEUE_TTL)),
            (Some(true), Some(s)) if (1..=MAX_QUEUE_TTL_S).contains(&s) => {
                Ok(Some(Duration::from_secs(s)))
            }
            (Some(true), Some(s)) => Err(ApiError::bad_request(format!(
                "ttl_s must be 1..={MAX_QUEUE_TTL_S} seconds, got {s}"
            ))),
            (_, None) => Ok(None),
            (_, Some(_)) => Err(ApiError::bad_request(
                "ttl_s applies only with \"queue_if_offline\": true",
            )),
        }
    }
}

pub use crate::command::outcome_json;

/// A new command id: random, so ids stay unique across restarts.
fn new_command_id() -> String {
    super::auth::new_id('c')
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
    let command = body.to_command()?;
    let wait = body.wait()?;
    let queue_ttl = body.queue_ttl()?;
    let cid = new_command_id();
    let (reply, answer) = oneshot::channel();
    let routed = state
        .supervisor
        .send(RouteCommand {
            id: id.clone(),
            command,
            reply,
            token: Some(caller.token_id.clone()),
        })
        .await
        .map_err(mailbox_error)?;
    match (routed, queue_ttl) {
        (Ok(()), _) => {}
        (Err(CommandError::Offline(_)), Some(ttl)) => {
            return enqueue(&state, &caller, &id, cid, &body, ttl).await
        }
        (Err(e), _) => return Err(e.into()),
    }
    let now = Utc::now();
    let record = CommandRow {
        id: cid.clone(),
        device_id: id.clone(),
        request: serde_json::to_string(&*body).unwrap_or_default(),
        status: "sent".into(),
        result: None,
        error: None,
        requested_by: Some(caller.name.clone()),
        created_at: now,
        updated_at: now,
    };
    // Written at once (not batched), like the final state: the final write waits for this one,
    // so the two reach the database in order; neither delays the device or the answer.
    let sent = {
        let (db, storage, row) = (state.db.clone(), state.storage.clone(), record.clone());
        actix_rt::spawn(async move { store_now(&db, &storage, Row::Command(row)).await })
    };
    let result = match tokio::time::timeout(wait, answer).await {
        Err(_) => Err(CommandError::Timeout(wait.as_millis() as u64)),
        Ok(Err(_)) => Err(CommandError::Disconnected),
        Ok(Ok(result)) => result,
    };
    {
        let (db, storage, events) = (
            state.db.clone(),
            state.storage.clone(),
            state.events.clone(),
        );
        let result = result.clone();
        actix_rt::spawn(async move {
            let buffered = !sent.await.unwrap_or(false);
            finish(record, &result, buffered, &db, &storage, &events).await;
        });
    }
    let outcome = result.map_err(|e| ApiError::from(e).with("id", json!(cid)))?;
    Ok(HttpResponse::Ok().json(json!({
        "id": cid,
        "status": "ok",
        "result": outcome_json(&outcome),
    })))
}

/// Stores a command for an offline device in its queue (committed before answering 202) and
/// tells the supervisor, in case the device registered meanwhile.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    id: &str,
    cid: String,
    body: &CommandBody,
    ttl: Duration,
) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let ttl =
        chrono::Duration::from_std(ttl).map_err(|_| ApiError::bad_request("ttl_s out of range"))?;
    let cmd = QueuedCommand {
        id: cid.clone(),
        device_id: id.to_string(),
        request: serde_json::to_string(body).unwrap_or_default(),
        requested_by: Some(caller.name.clone()),
        token_id: Some(caller.token_id.clone()),
        created_at: now,
        expires_at: now + ttl,
        seq: 0,
    };
    let expires_at = cmd.expires_at;
    let seq = blocking(&state.db, move |db| db.enqueue_command(&cmd)).await?;
    log::info!(
        "device {id}: command {cid} queued (#{seq}) by {} until {expires_at}",
        caller.name
    );
    state.supervisor.do_send(KickQueue { id: id.to_string() });
    Ok(HttpResponse::Accepted().json(json!({
        "id": cid,
        "status": "queued",
        "expires_at": expires_at,
    })))
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
    let record = blocking(&state.db, move |db| db.command(&key))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(queue: Option<bool>, ttl: Option<u64>) -> CommandBody {
        CommandBody {
            kind: "write_register".into(),
            function: None,
            start: None,
            count: None,
            address: Some(1),
            value: Some(json!(1)),
            values: None,
            name: None,
            hex: None,
            timeout_ms: None,
            queue_if_offline: queue,
            ttl_s: ttl,
        }
    }

    #[test]
    fn queue_ttl_defaults_bounds_and_needs_the_flag() {
        let ttl = |q, t| body(q, t).queue_ttl().map_err(|e| e.status.as_u16());
        assert_eq!(ttl(None, None), Ok(None));
        assert_eq!(ttl(Some(false), None), Ok(None));
        assert_eq!(ttl(Some(true), None), Ok(Some(DEFAULT_QUEUE_TTL)));
        assert_eq!(ttl(Some(true), Some(5)), Ok(Some(Duration::from_secs(5))));
        assert_eq!(
            ttl(Some(true), Some(MAX_QUEUE_TTL_S)),
            Ok(Some(Duration::from_secs(MAX_QUEUE_TTL_S)))
        );
        assert_eq!(ttl(Some(true), Some(0)), Err(400));
        assert_eq!(ttl(Some(true), Some(MAX_QUEUE_TTL_S + 1)), Err(400));
        assert_eq!(ttl(None, Some(5)), Err(400));
    }

    #[test]
    fn stored_requests_read_back_as_the_same_command() {
        let stored = serde_json::to_string(&body(Some(true), Some(60))).expect("json");
        let (command, wait) = crate::command::queue::parse_request(&stored).expect("parses");
        assert_eq!(
            command,
            DeviceCommand::Modbus(Request::WriteSingleRegister {
                address: 1,
                value: 1
            })
        );
        assert_eq!(wait, DEFAULT_WAIT);
        assert!(crate::command::queue::parse_request("{\"type\":\"bogus\"}").is_err());
        assert!(crate::command::queue::parse_request("not json").is_err());
    }
}
