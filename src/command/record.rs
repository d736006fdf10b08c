//! A command's record in `commands`: written `sent` when it goes to the device, then its
//! final state; `command.completed` is raised only once that final state is stored, so
//! whoever reacts to the event finds it at `GET /api/commands/{id}`.

use actix::Addr;
use chrono::Utc;
use serde_json::{json, Value};

use crate::command::{outcome_json, status_of, CommandError, CommandOutcome};
use crate::events::bus::{Event, EventBus, EventKind, Publish};
use crate::storage::rows::{CommandRow, Row};
use crate::storage::{store_now, Db, Storage, Store};

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
}
