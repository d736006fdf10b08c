//! The one mapping from failures to HTTP answers: `{"error": "<message>"}` with a fitting status.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value};

use crate::command::request::RequestError;
use crate::command::send::SendError;
use crate::command::CommandError;
use crate::protocol::dlt645::Dlt645Error;
use crate::protocol::modbus::ModbusError;
use crate::storage::db::StorageError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Further fields of the error body, e.g. a Modbus exception code.
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = self.extra.clone();
        body.insert("error".into(), json!(self.message));
        HttpResponse::build(self.status).json(Value::Object(body))
    }
}

/// Wraps the whole app: actix answers a known path asked with another method with a bodiless
/// 405; this gives it the JSON error shape of every other answer, keeping its `Allow` header.
pub async fn method_not_allowed_as_json(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    if res.status() != StatusCode::METHOD_NOT_ALLOWED {
        return Ok(res.map_into_boxed_body());
    }
    let allow = res.headers().get(header::ALLOW).cloned();
    let (req, _) = res.into_parts();
    let message = match allow.as_ref().and_then(|a| a.to_str().ok()) {
        Some(methods) => format!("method not allowed on this route (allowed: {methods})"),
        None => "method not allowed on this route".to_string(),
    };
    let mut body = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message).error_response();
    if let Some(allow) = allow {
        body.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(ServiceResponse::new(req, body))
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let message = e.to_string();
        match e {
            CommandError::UnknownDevice(_) => ApiError::not_found(message),
            CommandError::Offline(_) | CommandError::Precondition(_) => {
                ApiError::new(StatusCode::CONFLICT, message)
            }
            CommandError::Locked {
                holder, expires_at, ..
            } => ApiError::new(StatusCode::LOCKED, message)
                .with("holder", json!(holder))
                .with("expires_at", json!(expires_at)),
            CommandError::Invalid(_) => ApiError::bad_request(message),
            CommandError::Timeout(_) | CommandError::Disconnected => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, message)
            }
            CommandError::Modbus(ModbusError::Exception { function, code }) => {
                ApiError::new(StatusCode::BAD_GATEWAY, message)
                    .with("exception", json!(code))
                    .with("function", json!(function))
            }
            CommandError::Modbus(_) => ApiError::new(StatusCode::BAD_GATEWAY, message),
            CommandError::Meter(Dlt645Error::Meter { code }) => {
                ApiError::new(StatusCode::BAD_GATEWAY, message).with("meter_error", json!(code))
            }
            CommandError::Meter(_) => ApiError::new(StatusCode::BAD_GATEWAY, message),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        log::error!("storage query failed: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}"),
        )
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::bad_request(e.0)
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Request(e) => e.into(),
            SendError::Command { error, id: None } => error.into(),
            SendError::Command {
                error,
                id: Some(id),
            } => ApiError::from(error).with("id", json!(id)),
            SendError::Storage(e) => e.into(),
            SendError::Stopping(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("server is shutting down: {message}"),
            ),
        }
    }
}

/// Turns actix-web's own rejections (bad JSON, bad path or query) into the JSON error shape.
pub fn json_rejection(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::bad_request(err.to_string()).into()
}

/// JSON body rejections: 413 for a body over the limit, 415 for a content type other than
/// JSON, 400 for everything else (bad JSON, unknown or missing fields).
pub fn json_payload_rejection(err: actix_web::error::JsonPayloadError) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let status = match &err {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        E::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, err.to_string()).into()
}
