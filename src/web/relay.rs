//! `GET /api/relay?target=`: `$TTMS` frames waiting in `relay_queue` for offline terminals,
//! oldest first, as `[{"id","target","sender","hex","queued_at"}]`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::error::ApiError;
use super::history::{page_limit, LimitParam};
use super::AppState;

/// Largest `limit` honoured; more is capped, not refused.
const MAX_LIMIT: i64 = 10_000;
const DEFAULT_LIMIT: i64 = 1_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/relay").route(web::get().to(waiting)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayParams {
    /// A terminal id (ccid as 8 hex digits, any case); all targets when absent or empty.
    target: Option<String>,
    limit: Option<LimitParam>,
}

async fn waiting(
    state: web::Data<AppState>,
    q: web::Query<RelayParams>,
) -> Result<HttpResponse, ApiError> {
    let target = q
        .target
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_uppercase);
    let limit = page_limit(q.limit.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)?;
    let rows = state
        .db
        .call(move |db| db.relay_pending(target.as_deref(), limit))
        .await?;
    Ok(HttpResponse::Ok().json(rows))
}
