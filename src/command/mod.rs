//! Operator commands as the device actor executes them, and how they end.
//!
//! The web layer turns a JSON body into a [`DeviceCommand`], the supervisor routes it to the
//! device's actor, and the actor answers through the [`CommandReply`] channel once the device
//! has answered (or not). Keeping these types apart from the web layer lets tests and other
//! front ends drive devices the same way.

pub mod queue;

use actix::Addr;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::protocol::modbus::{ModbusError, Request, Response};
use crate::protocol::points::Decoded;
use crate::storage::rows::{CommandRow, Row};
use crate::storage::{store_now, Db, Storage, Store};

/// What an operator asked a device to do.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCommand {
    /// A Modbus request to the profile's slave.
    Modbus(Request),
    /// A complete RTU ADU (CRC included) sent as is; its first byte names the slave.
    Raw(Vec<u8>),
    /// A command of the device's profile, by name.
    Named(String),
}

/// A successful command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The device's answer to a Modbus request, with the profile's points it covers decoded.
    Modbus {
        response: Response,
        values: Vec<Decoded>,
    },
    /// The answer ADU to a raw request.
    Raw(Vec<u8>),
}

/// Why a command did not succeed. Each maps to one HTTP status in the web layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("device {0} is offline")]
    Offline(String),
    /// Another token holds the device's control lock.
    #[error("device {device} is locked by {holder} until {expires_at}")]
    Locked {
        device: String,
        holder: String,
        expires_at: DateTime<Utc>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
    #[error("device did not answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Modbus(ModbusError),
    #[error("device disconnected before answering")]
    Disconnected,
}

/// Where the device actor sends a command's end.
pub type CommandReply = oneshot::Sender<Result<CommandOutcome, CommandError>>;

/// The `result` object of a successful command, as the API answers it and the record keeps it.
pub fn outcome_json(outcome: &CommandOutcome) -> Value {
    match outcome {
        CommandOutcome::Raw(adu) => json!({ "hex": crate::protocol::hex::to_hex(adu) }),
        CommandOutcome::Modbus { response, values } => {
            let mut result = match response {
                Response::Registers(regs) => json!({ "registers": regs }),
                Response::Bits(bits) => json!({ "bits": bits }),
                Response::WriteSingleRegister { address, value } => {
                    json!({ "address": address, "value": value })
                }
                Response::WriteSingleCoil { address, value } => {
                    json!({ "address": address, "value": value })
                }
                Response::WriteMultiple { address, count } => {
                    json!({ "address": address, "count": count })
                }
            };
            if matches!(response, Response::Registers(_) | Response::Bits(_)) {
                let decoded: Map<String, Value> = values
                    .iter()
                    .map(|d| {
                        (
                            d.name.clone(),
                            json!({"value": d.value, "raw": d.raw, "unit": d.unit}),
                        )
                    })
                    .collect();
                if let Some(obj) = result.as_object_mut() {
                    obj.insert("values".into(), Value::Object(decoded));
                }
            }
            result
        }
    }
}

/// The record status a command's end maps to: `ok`, `timeout` or `failed`.
pub fn status_of(result: &Result<CommandOutcome, CommandError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::Timeout(_)) => "timeout",
        Err(_) => "failed",
    }
}

/// How every command ends, whether an API caller waited for it or it came from the offline
/// queue: the record gets its final status, result or error and time; then the caller stores
/// it and raises `command.completed` (see [`finish`]).
pub fn complete(record: &mut CommandRow, result: &Result<CommandOutcome, CommandError>) {
    record.updated_at = Utc::now();
    record.status = status_of(result).into();
    match result {
        Ok(outcome) => {
            record.result = Some(outcome_json(outcome).to_string());
            record.error = None;
        }
        Err(e) => {
            record.result = None;
            record.error = Some(e.to_string());
        }
    }
}

/// Ends a command: `complete`s the record, writes it at once (so that a client reading
/// `GET /api/commands/{id}` after the event finds the final state), then raises
/// `command.completed`. With `buffered` (an earlier state of the record went through the
/// storage buffer because the database was away), the final state follows it there instead,
/// so it cannot be overtaken. Answers the record as stored.
pub async fn finish(
    mut record: CommandRow,
    result: &Result<CommandOutcome, CommandError>,
    buffered: bool,
    db: &Db,
    storage: &Addr<Storage>,
    events: &Addr<EventBus>,
) -> CommandRow {
    complete(&mut record, result);
    if buffered {
        storage.do_send(Store(Row::Command(record.clone())));
    } else {
        store_now(db, storage, Row::Command(record.clone())).await;
    }
    publish_completed(events, &record, result.as_ref().ok().map(outcome_json));
    record
}

/// Raises `command.completed` for a record in its final state (also `expired`).
pub fn publish_completed(events: &Addr<EventBus>, record: &CommandRow, result: Option<Value>) {
    events.do_send(Publish(Event::new(
        EventKind::CommandCompleted,
        &record.device_id,
        json!({
            "command_id": record.id,
            "status": record.status,
            "result": result,
            "error": record.error,
            "requested_by": record.requested_by,
        }),
    )));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;

    use crate::events::bus::{EventFilter, Subscribe};

    fn row() -> CommandRow {
        let at = Utc::now();
        CommandRow {
            id: "c1".into(),
            device_id: "d1".into(),
            request: "{}".into(),
            status: "sent".into(),
            result: None,
            error: None,
            requested_by: Some("alice".into()),
            created_at: at,
            updated_at: at,
        }
    }

    #[actix_rt::test]
    async fn finish_stores_the_end_before_raising_command_completed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::connect(&format!("sqlite://{}/c.db", dir.path().display()), 2).expect("db");
        let storage = Storage::start(
            db.clone(),
            crate::settings::ServerSettings::default().storage,
            dir.path().join("spool.jsonl"),
        );
        let bus = EventBus::default().start();
        let mut sub = bus
            .send(Subscribe {
                filter: EventFilter::default(),
                capacity: 8,
            })
            .await
            .expect("bus answers");
        let ok = finish(
            row(),
            &Ok(CommandOutcome::Raw(vec![1, 3])),
            false,
            &db,
            &storage,
            &bus,
        )
        .await;
        assert_eq!(ok.status, "ok");
        assert_eq!(ok.result.as_deref(), Some(r#"{"hex":"01 03"}"#));
        assert_eq!(ok.error, None);

        let first = sub.events.recv().await.expect("event");
        let body: Value = serde_json::from_str(&first.body).expect("json");
        assert_eq!(body["event"], "command.completed");
        assert_eq!(body["device_id"], "d1");
        assert_eq!(body["data"]["command_id"], "c1");
        assert_eq!(body["data"]["status"], "ok");
        assert_eq!(body["data"]["result"], json!({"hex": "01 03"}));
        assert_eq!(body["data"]["requested_by"], "alice");
        // Whoever reacts to the event finds the final state stored, not "sent".
        let stored = db.command("c1").expect("read").expect("stored");
        assert_eq!(stored.status, "ok");

        let late = CommandRow {
            id: "c2".into(),
            ..row()
        };
        let late = finish(
            late,
            &Err(CommandError::Timeout(400)),
            false,
            &db,
            &storage,
            &bus,
        )
        .await;
        assert_eq!(late.status, "timeout");
        assert_eq!(late.result, None);
        assert!(late.error.as_deref().is_some_and(|e| e.contains("400 ms")));
        let second = sub.events.recv().await.expect("event");
        let body: Value = serde_json::from_str(&second.body).expect("json");
        assert_eq!(body["data"]["status"], "timeout");
        assert_eq!(body["data"]["result"], Value::Null);
        let stored = db.command("c2").expect("read").expect("stored");
        assert_eq!(stored.status, "timeout");

        // After an earlier state went through the buffer, the final one follows it there.
        let buffered = CommandRow {
            id: "c3".into(),
            ..row()
        };
        let done = finish(
            buffered,
            &Ok(CommandOutcome::Raw(vec![2])),
            true,
            &db,
            &storage,
            &bus,
        )
        .await;
        assert_eq!(done.status, "ok");
        let third = sub.events.recv().await.expect("event");
        assert!(
            third.body.contains(r#""command_id":"c3""#),
            "{}",
            third.body
        );
        storage
            .send(crate::storage::FlushAll::default())
            .await
            .expect("storage answers");
        let stored = db
            .command("c3")
            .expect("read")
            .expect("stored after the flush");
        assert_eq!(stored.status, "ok");
    }

    #[test]
    fn statuses_of_command_ends() {
        let ok = Ok(CommandOutcome::Raw(vec![1, 3]));
        assert_eq!(status_of(&ok), "ok");
        assert_eq!(status_of(&Err(CommandError::Timeout(5))), "timeout");
        assert_eq!(status_of(&Err(CommandError::Disconnected)), "failed");
        assert_eq!(status_of(&Err(CommandError::Offline("d".into()))), "failed");
        assert_eq!(
            outcome_json(&CommandOutcome::Raw(vec![1, 3])),
            json!({"hex": "01 03"})
        );
    }
}
