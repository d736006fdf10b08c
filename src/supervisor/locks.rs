//! Control locks: exclusive command rights on one device, held by one API token until they
//! expire. They live in the supervisor because every command, from the API or the offline
//! queue, is routed there. Kept in memory only: a restart releases every lock.

use std::collections::HashMap;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::command::CommandError;
use crate::supervisor::Supervisor;

/// The lock of one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlLock {
    pub device_id: String,
    /// The name of the token that holds it.
    pub holder: String,
    pub expires_at: DateTime<Utc>,
    /// The id of that token: what commands are checked against.
    #[serde(skip)]
    pub token_id: String,
}

impl ControlLock {
    pub fn refusal(&self) -> CommandError {
        CommandError::Locked {
            device: self.device_id.clone(),
            holder: self.holder.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// The locks by device id; an expired lock is forgotten when it is next looked at.
#[derive(Debug, Default)]
pub struct Locks(HashMap<String, ControlLock>);

impl Locks {
    /// The live lock of `device`, forgetting it if it has expired.
    pub fn live(&mut self, device: &str) -> Option<&ControlLock> {
        let expired = self.0.get(device)?.expires_at <= Utc::now();
        if expired {
            if let Some(lock) = self.0.remove(device) {
                log::info!("device {device}: control lock of {} expired", lock.holder);
            }
            return None;
        }
        self.0.get(device)
    }

    /// Refuses a command from `token` while another token holds the lock of `device`.
    pub fn check(&mut self, device: &str, token: Option<&str>) -> Result<(), CommandError> {
        match self.live(device) {
            Some(lock) if token != Some(lock.token_id.as_str()) => Err(lock.refusal()),
            _ => Ok(()),
        }
    }
}

/// Takes or extends the control lock of a known device for `ttl`: refused (`Locked`) while
/// another token holds it; the holder taking it again moves its expiry to now + `ttl`.
#[derive(Message)]
#[rtype(result = "Result<ControlLock, CommandError>")]
pub struct AcquireLock {
    pub device: String,
    pub token_id: String,
    pub holder: String,
    pub ttl: chrono::Duration,
}

impl Handler<AcquireLock> for Supervisor {
    type Result = Result<ControlLock, CommandError>;

    fn handle(&mut self, msg: AcquireLock, _: &mut Self::Context) -> Self::Result {
        if !self.knows(&msg.device) {
            return Err(CommandError::UnknownDevice(msg.device));
        }
        if let Some(lock) = self.locks.live(&msg.device) {
            if lock.token_id != msg.token_id {
                return Err(lock.refusal());
            }
        }
        let lock = ControlLock {
            device_id: msg.device.clone(),
            holder: msg.holder,
            expires_at: Utc::now() + msg.ttl,
            token_id: msg.token_id,
        };
        let previous = self.locks.0.insert(msg.device.clone(), lock.clone());
        log::info!(
            "device {}: control lock {} by {} until {}",
            msg.device,
            if previous.is_some() {
                "extended"
            } else {
                "taken"
            },
            lock.holder,
            lock.expires_at
        );
        Ok(lock)
    }
}

/// Releases the control lock of a device: by its holder, or by anyone when `force` (an admin
/// breaking it). Answers the released lock, or None when the device was not locked.
#[derive(Message)]
#[rtype(result = "Result<Option<ControlLock>, CommandError>")]
pub struct ReleaseLock {
    pub device: String,
    pub token_id: String,
    /// The name of the caller, for the log.
    pub by: String,
    pub force: bool,
}

impl Handler<ReleaseLock> for Supervisor {
    type Result = Result<Option<ControlLock>, CommandError>;

    fn handle(&mut self, msg: ReleaseLock, _: &mut Self::Context) -> Self::Result {
        let Some(lock) = self.locks.live(&msg.device) else {
            return Ok(None);
        };
        if lock.token_id != msg.token_id {
            if !msg.force {
                return Err(lock.refusal());
            }
            log::warn!(
                "device {}: control lock of {} broken by admin {}",
                msg.device,
                lock.holder,
                msg.by
            );
        } else {
            log::info!("device {}: control lock released by {}", msg.device, msg.by);
        }
        Ok(self.locks.0.remove(&msg.device))
    }
}

/// The live control lock of a device, if any.
#[derive(Message)]
#[rtype(result = "Option<ControlLock>")]
pub struct GetLock {
    pub device: String,
}

impl Handler<GetLock> for Supervisor {
    type Result = Option<ControlLock>;

    fn handle(&mut self, msg: GetLock, _: &mut Self::Context) -> Option<ControlLock> {
        self.locks.live(&msg.device).cloned()
    }
}
