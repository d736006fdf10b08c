//! `GET /api/stream`: live events over WebSocket, one text message per event carrying the
//! same JSON envelope as a webhook body.
//!
//! Each client is one subscription of the [`EventBus`] with a bounded queue
//! (`[web] stream_queue` events). Nothing a client does can slow a device: the bus never
//! waits for a queue, and when a client reads so slowly that its queue overflows, the server
//! closes the socket (close code 1008, reason `too slow: N events dropped`) instead of
//! skipping events silently. A device-restricted token only ever receives its devices'
//! events; `device=` (ids and `prefix*`, comma-separated) narrows further, 403 outside the
//! token's reach; `events=` (names, comma-separated) narrows by kind.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use serde::Deserialize;

use super::auth::{check_device_id, Caller};
use super::error::ApiError;
use super::{mailbox_error, AppState};
use crate::events::bus::{EventBus, EventFilter, Subscribe, Subscription, Unsubscribe};
use crate::metrics::METRICS;

/// Most device patterns one stream may name.
const PATTERNS_MAX: usize = 100;
/// How often a client whose sends are stuck is checked for dropped events.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the close frame may take to be queued for a client that stopped reading.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Largest message a client may send (it has nothing to say but pings and close).
const MAX_FRAME: usize = 4 * 1024;

/// Set once when the server stops, so that every stream closes with 1001 at once instead of
/// holding the HTTP server's graceful shutdown until its timeout.
fn stopping() -> &'static tokio::sync::watch::Sender<bool> {
    static STOPPING: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();
    STOPPING.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// Closes every open stream (`1001 server stopping`); called when the server stops.
pub fn stop_all() {
    stopping().send_replace(true);
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/stream").route(web::get().to(stream)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Device ids and `prefix*` patterns, comma-separated.
    device: Option<String>,
    /// Event names, comma-separated; every kind when absent.
    events: Option<String>,
    /// Read by the auth middleware (browsers cannot set headers on a WebSocket).
    #[allow(dead_code)]
    token: Option<String>,
}

/// Whether the token's reach covers `pattern` entirely: an id the token sees, or a `prefix*`
/// inside one of the token's own `prefix*` patterns.
fn within_reach(caller: &Caller, pattern: &str) -> bool {
    let Some(reach) = &caller.devices else {
        return true;
    };
    match pattern.strip_suffix('*') {
        None => caller.can_see(pattern),
        Some(prefix) => reach.iter().any(|r| {
            r.strip_suffix('*')
                .is_some_and(|own| prefix.starts_with(own))
        }),
    }
}

/// The device patterns a stream follows: the requested ones (each within the token's reach),
/// else the token's own list (None: every device).
fn device_filter(caller: &Caller, device: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(device) = device else {
        return Ok(caller.devices.clone());
    };
    let patterns: Vec<String> = device
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    if patterns.is_empty() {
        return Err(ApiError::bad_request(
            "device= names no device; give ids or prefix* patterns, comma-separated",
        ));
    }
    if patterns.len() > PATTERNS_MAX {
        return Err(ApiError::bad_request(format!(
            "device= names more than {PATTERNS_MAX} devices"
        )));
    }
    for p in &patterns {
        let id = p.strip_suffix('*').unwrap_or(p);
        if !p.ends_with('*') || !id.is_empty() {
            check_device_id(id)?;
        }
        if id.contains('*') {
            return Err(ApiError::bad_request(format!(
                "{p:?}: '*' may only end a pattern"
            )));
        }
        if !within_reach(caller, p) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} has no access to devices {p}", caller.name),
            ));
        }
    }
    Ok(Some(patterns))
}

async fn stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let devices = device_filter(&caller, query.device.as_deref())?;
    let events: Vec<String> = query
        .events
        .as_deref()
        .unwrap_or("*")
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let filter = EventFilter::parse(&events, devices).map_err(ApiError::bad_request)?;
    // The handshake is checked before subscribing, so a plain GET costs nothing. No
    // `Upgrade: websocket` at all: 426, naming the protocol to upgrade to; an upgrade with a
    // bad or missing key or version: 400 (actix's own error would be a 500).
    if !wants_websocket(&req) {
        return Ok(upgrade_required());
    }
    let (response, session, messages) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::bad_request(format!("GET /api/stream needs a WebSocket handshake: {e}"))
    })?;
    let subscription = state
        .events
        .send(Subscribe {
            filter,
            capacity: state.settings.server.web.stream_queue,
        })
        .await
        .map_err(mailbox_error)?;
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    log::info!(
        "stream {}: client {peer} (token {:?}) connected",
        subscription.id,
        caller.name
    );
    actix_web::rt::spawn(run(
        session,
        messages.max_frame_size(MAX_FRAME),
        subscription,
        caller,
        state.events.clone(),
        peer,
    ));
    Ok(response)
}

/// Whether the request asks to upgrade to WebSocket (`Upgrade: websocket`, any case).
fn wants_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// 426 with `Upgrade: websocket`, in the JSON error shape.
fn upgrade_required() -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "GET /api/stream is a WebSocket: send Upgrade: websocket with Connection: Upgrade, \
         Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
    )
    .error_response();
    response.headers_mut().insert(
        actix_web::http::header::UPGRADE,
        actix_web::http::header::HeaderValue::from_static("websocket"),
    );
    response
}

/// Why a stream ended.
enum End {
    /// The client closed it, or the connection is gone.
    Client,
    /// The client did not keep up; `n` events were dropped.
    TooSlow(u64),
    /// The server is stopping.
    ServerStopping,
}

async fn run(
    mut session: Session,
    mut messages: MessageStream,
    mut sub: Subscription,
    caller: Caller,
    bus: actix::Addr<EventBus>,
    peer: String,
) {
    let mut stop = stopping().subscribe();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        let dropped = sub.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            break End::TooSlow(dropped);
        }
        if *stop.borrow_and_update() {
            break End::ServerStopping;
        }
        tokio::select! {
            _ = stop.changed() => {}
            event = sub.events.recv() => {
                let Some(event) = event else { break End::ServerStopping };
                // The filter already holds the token's reach; this guards it twice.
                if !caller.can_see(&event.device_id) {
                    continue;
                }
                let sending = session.text(event.body.to_string());
                if let Err(end) = watched(sending, &sub, &mut check).await {
                    break end;
                }
            }
            message = messages.recv() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    if let Err(end) = watched(session.pong(&bytes), &sub, &mut check).await {
                        break end;
                    }
                }
                Some(Ok(Message::Close(reason))) => {
                    log::debug!("stream {}: client {peer} closed: {reason:?}", sub.id);
                    break End::Client;
                }
                // Pongs, and anything a client says: the stream only talks one way.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log::info!("stream {}: client {peer}: protocol error: {e}", sub.id);
                    break End::Client;
                }
                None => break End::Client,
            },
            _ = check.tick() => {}
        }
    };
    bus.do_send(Unsubscribe(sub.id));
    match end {
        End::Client => {
            log::info!("stream {}: client {peer} disconnected", sub.id);
            let _ = tokio::time::timeout(CLOSE_GRACE, session.close(None)).await;
        }
        End::TooSlow(n) => {
            METRICS.streams_dropped.inc();
            log::warn!(
                "stream {}: client {peer} too slow, {n} events dropped; disconnecting",
                sub.id
            );
            let reason = CloseReason {
                code: CloseCode::Policy,
                description: Some(format!("too slow: {n} events dropped")),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, session.close(Some(reason))).await;
        }
        End::ServerStopping => {
            let reason = CloseReason {
                code: CloseCode::Away,
                description: Some("server stopping".into()),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, session.close(Some(reason))).await;
        }
    }
    // Dropping the session and the message stream ends the response; a client that reads
    // nothing any more holds at most what is already in the socket buffers.
    drop(messages);
}

/// Runs one send to the client; while the client does not take it, watches the
/// subscription's drop count, so that a stuck client is noticed even though no send completes.
async fn watched(
    sending: impl std::future::Future<Output = Result<(), actix_ws::Closed>>,
    sub: &Subscription,
    check: &mut tokio::time::Interval,
) -> Result<(), End> {
    tokio::pin!(sending);
    loop {
        tokio::select! {
            sent = &mut sending => return sent.map_err(|_| End::Client),
            _ = check.tick() => {
                let dropped = sub.dropped.load(Ordering::Relaxed);
                if dropped > 0 {
                    return Err(End::TooSlow(dropped));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::auth::Role;

    fn caller(devices: Option<Vec<&str>>) -> Caller {
        Caller {
            token_id: "t".into(),
            name: "n".into(),
            role: Role::Viewer,
            devices: devices.map(|d| d.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn requested_devices_must_lie_within_the_tokens_reach() {
        let c = caller(Some(vec!["1001", "86*"]));
        assert_eq!(
            device_filter(&c, None).expect("own list"),
            Some(vec!["1001".to_string(), "86*".to_string()])
        );
        assert_eq!(
            device_filter(&c, Some("1001, 861*")).expect("inside"),
            Some(vec!["1001".to_string(), "861*".to_string()])
        );
        let status = |d| device_filter(&c, Some(d)).map_err(|e| e.status);
        assert_eq!(status("1002"), Err(StatusCode::FORBIDDEN));
        assert_eq!(status("8*"), Err(StatusCode::FORBIDDEN));
        assert_eq!(status("*"), Err(StatusCode::FORBIDDEN));
        assert_eq!(status(","), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("1*0*"), Err(StatusCode::BAD_REQUEST));
        let long = "x".repeat(65);
        assert_eq!(status(&long), Err(StatusCode::BAD_REQUEST));
        let all = caller(None);
        assert_eq!(device_filter(&all, None).expect("all"), None);
        assert_eq!(
            device_filter(&all, Some("*")).expect("star"),
            Some(vec!["*".to_string()])
        );
    }
}
