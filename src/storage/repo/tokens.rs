//! `tokens`: the API tokens created through the API (never their secrets).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use crate::storage::db::{on_inner, AnyConnection, Db, StorageError};
use crate::storage::insert::NewToken;
#[cfg(feature = "mysql")]
use crate::storage::mysql;
use crate::storage::schema::tokens;
use crate::storage::time::{naive, utc};

/// A stored API token (never the secret: `hash` is the hex SHA-256 of it).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub hash: String,
    /// JSON list of device ids and `prefix*` patterns; None for every device.
    pub devices: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked: bool,
}

type TokenTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    NaiveDateTime,
    i16,
);

impl Db {
    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        use crate::storage::schema::tokens::dsl::*;
        let rows: Vec<TokenTuple> = tokens
            .select((id, name, role, hash, devices, created_at, revoked))
            .order((created_at.asc(), id.asc()))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, n, r, h, d, c, rv)| TokenRecord {
                id: i,
                name: n,
                role: r,
                hash: h,
                devices: d,
                created_at: utc(c),
                revoked: rv != 0,
            })
            .collect())
    }

    /// Stores a new token.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<(), StorageError> {
        if t.name.chars().count() > 64 || t.id.chars().count() > 40 {
            return Err(StorageError::Query(
                "token name longer than 64 characters".into(),
            ));
        }
        let row = NewToken {
            id: &t.id,
            name: &t.name,
            role: &t.role,
            hash: &t.hash,
            devices: t.devices.as_deref(),
            created_at: naive(t.created_at),
            revoked: i16::from(t.revoked),
        };
        let mut conn = self.conn()?;
        let conn: &mut AnyConnection = &mut conn;
        on_inner!(conn, c => diesel::insert_into(tokens::table).values(&row).execute(c),
                  mysql c => mysql::insert_token(c, &row))?;
        Ok(())
    }

    /// Revokes a token; false when there is no such live token.
    pub fn revoke_token(&self, token_id: &str) -> Result<bool, StorageError> {
        use crate::storage::schema::tokens::dsl::*;
        let n = diesel::update(tokens.filter(id.eq(token_id)).filter(revoked.eq(0i16)))
            .set(revoked.eq(1i16))
            .execute(&mut *self.conn()?)?;
        Ok(n > 0)
    }
}
