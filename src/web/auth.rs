//! Access control: bearer tokens with a role and an optional device list.
//!
//! Tokens are stored hashed (hex SHA-256) in the `tokens` table and cached in memory, so a
//! request never waits on the database to be authenticated; the cache is reloaded whenever a
//! token is created or revoked. A presented token is hashed and compared with every cached
//! hash in constant time. The admin token of the settings (`[auth] admin_token`) lives in
//! memory only; without one, an admin token is generated at first start, stored hashed and
//! logged once.
//!
//! The `/api` scope is wrapped in [`authenticate`], which puts the [`Caller`] into the request;
//! handlers take `Caller` as an extractor and check the role and the device they touch.

use std::future::{ready, Ready};
use std::sync::{Arc, RwLock};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::storage::db::{Db, StorageError, TokenRecord};

use crate::storage::rows::{new_id, DEVICE_ID_MAX};
use rand::RngCore;
/// Most entries a token's or a webhook's device list may have.
pub const DEVICE_LIST_MAX: usize = 1_000;
/// The id the settings' admin token goes by (it is not a row of `tokens`).
pub const SETTINGS_TOKEN_ID: &str = "settings";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who is calling: the token that authenticated the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// Device ids and `prefix*` patterns this token may touch; None for every device.
    pub devices: Option<Vec<String>>,
}

impl Caller {
    /// 403 unless the token's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {} role; token {:?} is {}",
                    role.as_str(),
                    self.name,
                    self.role.as_str()
                ),
            ))
        }
    }

    /// Whether the token reaches this device.
    pub fn can_see(&self, device: &str) -> bool {
        match &self.devices {
            None => true,
            Some(list) => crate::events::bus::device_matches(list, device),
        }
    }

    /// Whether the token is limited to some devices.
    pub fn restricted(&self) -> bool {
        self.devices.is_some()
    }

    /// Checks a device id from a path or query: 400 when it cannot be a device id, 403 when
    /// the token does not reach it.
    pub fn device(&self, id: &str) -> Result<(), ApiError> {
        check_device_id(id)?;
        if self.can_see(id) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} has no access to device {id}", self.name),
            ))
        }
    }
}

/// 400 for a device list (token reach, webhook filter) that is too long or holds something
/// that is neither an id nor a `prefix*`.
pub fn check_device_list(devices: &[String]) -> Result<(), ApiError> {
    if devices.len() > DEVICE_LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "devices lists at most {DEVICE_LIST_MAX} entries"
        )));
    }
    for d in devices {
        crate::events::bus::check_device_pattern(d)
            .map_err(|e| ApiError::bad_request(format!("devices: {e}")))?;
    }
    Ok(())
}

/// 400 for an empty device id, one longer than the database stores, or one no device can
/// register with: control characters, invisible formatting characters (bidi overrides,
/// zero-width ones) or U+FFFD, which is what a percent escape of invalid UTF-8 decodes to.
pub fn check_device_id(id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::bad_request("empty device id"));
    }
    if id.trim_matches('.').is_empty() || id.contains('/') {
        return Err(ApiError::bad_request(format!(
            "{id:?} cannot be a device id (no '/', not only dots)"
        )));
    }
    if let Some(c) = id.chars().find(|c| unprintable(*c)) {
        return Err(ApiError::bad_request(format!(
            "a device id cannot contain {:?} (U+{:04X})",
            c, c as u32
        )));
    }
    if id.chars().count() > DEVICE_ID_MAX {
        return Err(ApiError::bad_request(format!(
            "a device id has at most {DEVICE_ID_MAX} characters"
        )));
    }
    Ok(())
}

fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{FFFD}'
                | '\u{FEFF}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
        )
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(unauthorized),
        )
    }
}

pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or invalid token: send Authorization: Bearer <token>",
    )
}

/// Lowercase hex SHA-256 of a token, as stored.
pub fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random secret: 32 bytes as 64 hex digits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

struct Entry {
    hash: [u8; 32],
    caller: Caller,
}

/// The token cache. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    db: Db,
    /// The settings' admin token, if any (not stored).
    settings_admin: Option<[u8; 32]>,
    cache: Arc<RwLock<Arc<Vec<Entry>>>>,
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_hash).ok()?;
    bytes.try_into().ok()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The device list of a stored token (None: every device).
pub fn parse_devices(stored: Option<&str>) -> Option<Vec<String>> {
    // A list that cannot be read allows nothing rather than everything.
    stored.map(|s| serde_json::from_str::<Vec<String>>(s).unwrap_or_default())
}

impl Tokens {
    /// Reads the stored tokens and sets up the admin token: the settings' one, or a generated
    /// one at first start (logged once). Blocking.
    pub fn start(db: Db, admin_token: &str) -> Result<Tokens, StorageError> {
        let admin_token = admin_token.trim();
        let tokens = Tokens {
            db: db.clone(),
            settings_admin: (!admin_token.is_empty()).then(|| digest(admin_token)),
            cache: Arc::new(RwLock::new(Arc::new(Vec::new()))),
        };
        if tokens.settings_admin.is_some() {
            log::info!("auth: admin token from the settings ([auth] admin_token)");
        } else {
            let stored = db.tokens()?;
            if stored.iter().any(|t| !t.revoked && t.role == "admin") {
                log::info!("auth: an admin token exists (shown once when it was generated)");
            } else {
                let secret = new_secret();
                db.insert_token(&TokenRecord {
                    id: new_id('t'),
                    name: "admin".into(),
                    role: "admin".into(),
                    hash: hash_hex(&secret),
                    devices: None,
                    created_at: Utc::now(),
                    revoked: false,
                })?;
                log::warn!(
                    "auth: generated admin token: {secret} (store it now: it is shown only this once)"
                );
            }
        }
        tokens.reload()?;
        Ok(tokens)
    }

    /// Re-reads the tokens table into the cache. Blocking.
    pub fn reload(&self) -> Result<(), StorageError> {
        let mut entries = Vec::new();
        if let Some(hash) = self.settings_admin {
            entries.push(Entry {
                hash,
                caller: Caller {
                    token_id: SETTINGS_TOKEN_ID.into(),
                    name: "admin".into(),
                    role: Role::Admin,
                    devices: None,
                },
            });
        }
        for t in self.db.tokens()? {
            if t.revoked {
                continue;
            }
            let (Some(hash), Some(role)) = (parse_hash(&t.hash), Role::parse(&t.role)) else {
                log::warn!(
                    "auth: token {} has an unreadable hash or role; ignored",
                    t.id
                );
                continue;
            };
            entries.push(Entry {
                hash,
                caller: Caller {
                    token_id: t.id,
                    name: t.name,
                    role,
                    devices: parse_devices(t.devices.as_deref()),
                },
            });
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        *cache = Arc::new(entries);
        Ok(())
    }

    /// The caller a presented token stands for. Compares against every live token in
    /// constant time, so timing tells nothing about which hash came close.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let hash = digest(presented);
        let entries = self.cache.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut found = None;
        for e in entries.iter() {
            if bool::from(e.hash.ct_eq(&hash)) && found.is_none() {
                found = Some(e.caller.clone());
            }
        }
        found
    }
}

/// The bearer token of an `Authorization` header; None when there is none or it is not a
/// usable bearer token.
pub fn bearer(headers: &header::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// Routes that also take the token as a `token` query parameter, because what calls them
/// cannot set headers: download links (`GET /api/export`) and browser WebSockets
/// (`GET /api/stream`).
const QUERY_TOKEN_PATHS: [&str; 2] = ["/api/export", "/api/stream"];

/// The token of a request: `Authorization: Bearer <token>`, or for the GET routes of
/// [`QUERY_TOKEN_PATHS`] only a `token` query parameter.
fn presented_token(req: &ServiceRequest) -> Option<String> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return bearer(req.headers());
    }
    if req.method() == Method::GET && QUERY_TOKEN_PATHS.contains(&req.path()) {
        let query =
            web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
                .ok()?;
        return query.get("token").cloned().filter(|t| !t.is_empty());
    }
    None
}

/// Middleware of the `/api` scope: 401 unless a valid token is presented (`/api/health`
/// excepted); the caller goes into the request's extensions for the [`Caller`] extractor.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if req.path() != "/api/health" {
        let caller = req
            .app_data::<web::Data<AppState>>()
            .zip(presented_token(&req))
            .and_then(|(state, token)| state.tokens.authenticate(&token));
        match caller {
            Some(caller) => {
                req.extensions_mut().insert(caller);
            }
            None => return Err(unauthorized().into()),
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(devices: Option<Vec<&str>>) -> Caller {
        Caller {
            token_id: "t".into(),
            name: "n".into(),
            role: Role::Operator,
            devices: devices.map(|d| d.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn device_patterns() {
        let c = caller(Some(vec!["1001", "86*"]));
        assert!(c.can_see("1001"));
        assert!(!c.can_see("10011"));
        assert!(c.can_see("86123"));
        assert!(c.can_see("86"));
        assert!(!c.can_see("9"));
        assert!(caller(None).can_see("anything"));
        assert!(!caller(Some(vec![])).can_see("1001"));
        assert_eq!(
            c.device(&"x".repeat(65)).map_err(|e| e.status),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            c.device("9").map_err(|e| e.status),
            Err(StatusCode::FORBIDDEN)
        );
        for bad in [
            "",
            " ",
            "..",
            ".",
            "a/b",
            "a\0b",
            "\u{FFFD}",
            "\u{202E}1001",
            "10\u{200B}01",
        ] {
            assert_eq!(
                check_device_id(bad).map_err(|e| e.status),
                Err(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
        assert!(check_device_id("860123456789012").is_ok());
    }

    #[test]
    fn roles_are_ordered() {
        let c = caller(None);
        assert!(c.require(Role::Viewer).is_ok());
        assert!(c.require(Role::Operator).is_ok());
        assert!(c.require(Role::Admin).is_err());
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(new_secret().len(), 64);
    }
}
