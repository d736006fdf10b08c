//! The HTTP front end: the REST API under `/api`. Handlers are thin: they parse and validate
//! input, send one message to an actor, and map the answer to JSON.

pub mod auth;
pub mod commands;
pub mod console;
pub mod devices;
pub mod error;
pub mod history;
pub mod lock;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod stream;
pub mod tokens;
pub mod webhooks;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpResponse};

use crate::command::send::Commands;
use crate::events::bus::EventBus;
use crate::events::webhooks::Webhooks;
use crate::settings::Settings;
use crate::storage::db::Db;
use crate::storage::packet_log::PacketLog;
use crate::storage::Storage;
use crate::supervisor::Supervisor;
use error::{json_payload_rejection, json_rejection, ApiError};

/// Largest request body the API accepts; commands and settings are small.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub supervisor: Addr<Supervisor>,
    pub settings: Arc<Settings>,
    pub db: Db,
    /// Where rows go (batched).
    pub storage: Addr<Storage>,
    /// Every device's last packets in memory, served before the stored ones.
    pub packets: PacketLog,
    /// Sends operator commands and keeps their records.
    pub commands: Commands,
    /// The token cache that authenticates every `/api` request.
    pub tokens: auth::Tokens,
    /// Where command events are raised and WebSocket clients subscribe.
    pub events: Addr<EventBus>,
    /// The webhook subscribers and their senders.
    pub webhooks: Webhooks,
}

/// Registers the API's routes and JSON error handling on an actix-web app.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY)
                    .error_handler(|e, _| json_payload_rejection(e)),
            )
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::PathConfig::default().error_handler(|e, _| json_rejection(e)))
            .app_data(web::QueryConfig::default().error_handler(|e, _| json_rejection(e)))
            .configure(console::routes)
            .configure(metrics::routes)
            .service(
                web::scope("/api")
                    .wrap(actix_web::middleware::from_fn(auth::authenticate))
                    .service(web::resource("/health").route(web::get().to(health)))
                    .configure(devices::routes)
                    .configure(commands::routes)
                    .configure(lock::routes)
                    .configure(history::routes)
                    .configure(relay::routes)
                    .configure(tokens::routes)
                    .configure(webhooks::routes)
                    .configure(stream::routes)
                    .configure(openapi::routes)
                    .default_service(web::to(no_such_route)),
            )
            // Outside /api too: a JSON 404 rather than an empty body.
            .default_service(web::to(no_such_route));
    }
}

async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

/// Always 200 while the server runs (a slow database is no reason to drop its DTUs); the
/// body says `degraded`, with why, while storage does not keep up.
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let storage = state
        .storage
        .send(crate::storage::GetStats)
        .await
        .map_err(mailbox_error)?;
    let body = if storage.degraded.is_empty() {
        serde_json::json!({"status": "ok"})
    } else {
        serde_json::json!({"status": "degraded", "reasons": storage.degraded})
    };
    Ok(HttpResponse::Ok().json(body))
}

/// Maps a failed mailbox send (the actor is gone, i.e. the server is stopping) to 503.
pub fn mailbox_error(e: actix::MailboxError) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("server is shutting down: {e}"),
    )
}
