//! Sending a command to a device now: route it through the supervisor, record it, wait for the
//! device's answer, record the end and raise `command.completed` — or, for an offline device
//! and a body that asks for it, store it in the offline queue.

use std::time::Duration;

use actix::Addr;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::command::record::finish;
use crate::command::request::{CommandBody, RequestError};
use crate::command::{CommandError, CommandOutcome, KickQueue, RouteCommand, Routes};
use crate::events::bus::EventBus;
use crate::storage::db::{Db, QueuedCommand, StorageError};
use crate::storage::rows::{new_id, CommandRow, Row};
use crate::storage::{store_now, Storage};

/// What sending a command needs. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    /// The supervisor, which routes commands.
    pub routes: Routes,
    pub db: Db,
    /// Where records go when the database cannot take them at once.
    pub storage: Addr<Storage>,
    /// Where `command.completed` is raised.
    pub events: Addr<EventBus>,
}

/// Who sends a command: the API token's id (what control locks are checked against) and name
/// (what the record keeps).
#[derive(Debug, Clone)]
pub struct Requester {
    pub token_id: String,
    pub name: String,
}

/// How a command went.
#[derive(Debug)]
pub enum Sent {
    /// The device answered.
    Answered { id: String, outcome: CommandOutcome },
    /// The device is offline; the command waits in its queue until `expires_at`.
    Queued {
        id: String,
        expires_at: DateTime<Utc>,
    },
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Refused or failed; `id` names its record once it was routed to the device.
    #[error("{error}")]
    Command {
        error: CommandError,
        id: Option<String>,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The supervisor is gone: the server is stopping.
    #[error("server is shutting down: {0}")]
    Stopping(String),
}

impl From<CommandError> for SendError {
    fn from(error: CommandError) -> SendError {
        SendError::Command { error, id: None }
    }
}

impl Commands {
    /// Sends `body` to `device` and waits for its end (or queues it).
    pub async fn send(
        &self,
        device: &str,
        body: &CommandBody,
        by: &Requester,
    ) -> Result<Sent, SendError> {
        let command = body.to_command()?;
        let wait = body.wait()?;
        let queue_ttl = body.queue_ttl()?;
        let cid = new_id('c');
        let (reply, answer) = oneshot::channel();
        let routed = self
            .routes
            .route
            .send(RouteCommand {
                id: device.to_string(),
                command,
                reply,
                token: Some(by.token_id.clone()),
            })
            .await
            .map_err(|e| SendError::Stopping(e.to_string()))?;
        match (routed, queue_ttl) {
            (Ok(()), _) => {}
            (Err(CommandError::Offline(_)), Some(ttl)) => {
                return self.enqueue(device, cid, body, by, ttl).await;
            }
            (Err(e), _) => return Err(e.into()),
        }
        let now = Utc::now();
        let record = CommandRow {
            id: cid.clone(),
            device_id: device.to_string(),
            request: serde_json::to_string(body).unwrap_or_default(),
            status: "sent".into(),
            result: None,
            error: None,
            requested_by: Some(by.name.clone()),
            created_at: now,
            updated_at: now,
        };
        // Written at once (not batched), like the final state: the final write waits for this
        // one, so the two reach the database in order; neither delays the device or the
        // answer.
        let sent = {
            let (db, storage, row) = (self.db.clone(), self.storage.clone(), record.clone());
            actix_rt::spawn(async move { store_now(&db, &storage, Row::Command(row)).await })
        };
        let result = match tokio::time::timeout(wait, answer).await {
            Err(_) => Err(CommandError::Timeout(wait.as_millis() as u64)),
            Ok(Err(_)) => Err(CommandError::Disconnected),
            Ok(Ok(result)) => result,
        };
        {
            let (db, storage, events) =
                (self.db.clone(), self.storage.clone(), self.events.clone());
            let result = result.clone();
            actix_rt::spawn(async move {
                let buffered = !sent.await.unwrap_or(false);
                finish(record, &result, buffered, &db, &storage, &events).await;
            });
        }
        match result {
            Ok(outcome) => Ok(Sent::Answered { id: cid, outcome }),
            Err(error) => Err(SendError::Command {
                error,
                id: Some(cid),
            }),
        }
    }

    /// Stores a command for an offline device in its queue (committed before answering) and
    /// tells the supervisor, in case the device registered meanwhile.
    async fn enqueue(
        &self,
        device: &str,
        cid: String,
        body: &CommandBody,
        by: &Requester,
        ttl: Duration,
    ) -> Result<Sent, SendError> {
        let now = Utc::now();
        let ttl =
            chrono::Duration::from_std(ttl).map_err(|_| RequestError::new("ttl_s out of range"))?;
        let cmd = QueuedCommand {
            id: cid.clone(),
            device_id: device.to_string(),
            request: serde_json::to_string(body).unwrap_or_default(),
            requested_by: Some(by.name.clone()),
            token_id: Some(by.token_id.clone()),
            created_at: now,
            expires_at: now + ttl,
            seq: 0,
        };
        let expires_at = cmd.expires_at;
        let seq = self.db.call(move |db| db.enqueue_command(&cmd)).await?;
        log::info!(
            "device {device}: command {cid} queued (#{seq}) by {} until {expires_at}",
            by.name
        );
        self.routes.kick.do_send(KickQueue {
            id: device.to_string(),
        });
        Ok(Sent::Queued {
            id: cid,
            expires_at,
        })
    }
}
