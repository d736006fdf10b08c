//! `webhooks` (the subscribers created through the API) and `webhook_deliveries` (their
//! delivery log, written through the Storage actor by `batch.rs`).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::storage::db::{on_inner, AnyConnection, Db, StorageError};
use crate::storage::insert::NewWebhook;
#[cfg(feature = "mysql")]
use crate::storage::mysql;
use crate::storage::schema::webhooks;
use crate::storage::time::{naive, utc};

/// A webhook subscriber added through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// JSON list of event names, or `["*"]`.
    pub events: String,
    pub secret: Option<String>,
    /// JSON list of device ids and `prefix*` patterns; None for every device.
    pub devices: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One stored delivery attempt, as `GET /api/webhooks/{wid}/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub delivery: String,
    pub event: String,
    pub events: i32,
    pub attempt: i32,
    pub outcome: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub at: DateTime<Utc>,
}

type WebhookTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    NaiveDateTime,
);

type DeliveryTuple = (
    i64,
    String,
    String,
    i32,
    i32,
    String,
    Option<i32>,
    Option<String>,
    i64,
    NaiveDateTime,
);

impl Db {
    /// The API-created webhook subscribers, oldest first.
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StorageError> {
        use crate::storage::schema::webhooks::dsl::*;
        let rows: Vec<WebhookTuple> = webhooks
            .select((id, url, events, secret, devices, created_at))
            .order((created_at.asc(), id.asc()))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, u, e, s, d, c)| WebhookRecord {
                id: i,
                url: u,
                events: e,
                secret: s,
                devices: d,
                created_at: utc(c),
            })
            .collect())
    }

    /// Stores a new webhook subscriber.
    pub fn insert_webhook(&self, w: &WebhookRecord) -> Result<(), StorageError> {
        if w.id.chars().count() > 40 {
            return Err(StorageError::Query(
                "webhook id longer than 40 characters".into(),
            ));
        }
        let row = NewWebhook {
            id: &w.id,
            url: &w.url,
            events: &w.events,
            secret: w.secret.as_deref(),
            devices: w.devices.as_deref(),
            created_at: naive(w.created_at),
        };
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        on_inner!(conn, c => diesel::insert_into(webhooks::table).values(&row).execute(c),
                  mysql c => mysql::insert_webhook(c, &row))?;
        Ok(())
    }

    /// Deletes a webhook subscriber (its delivery log stays); false when there was none.
    pub fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StorageError> {
        use crate::storage::schema::webhooks::dsl::*;
        let n = diesel::delete(webhooks.filter(id.eq(webhook_id))).execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }

    /// The latest `limit` delivery attempts of a subscriber, newest first.
    pub fn deliveries(
        &self,
        webhook: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, StorageError> {
        use crate::storage::schema::webhook_deliveries::dsl::*;
        let rows: Vec<DeliveryTuple> = webhook_deliveries
            .filter(webhook_id.eq(webhook))
            .select((
                id,
                delivery,
                event,
                events,
                attempt,
                outcome,
                status_code,
                error,
                latency_ms,
                at,
            ))
            .order(id.desc())
            .limit(limit)
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, dl, ev, n, a, o, sc, er, l, t)| DeliveryRecord {
                id: i,
                delivery: dl,
                event: ev,
                events: n,
                attempt: a,
                outcome: o,
                status_code: sc,
                error: er,
                latency_ms: l,
                at: utc(t),
            })
            .collect())
    }
}
