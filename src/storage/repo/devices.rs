//! `devices`: the latest facts about every device ever seen (written as upserts by
//! `batch.rs`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::storage::db::{Db, StorageError};
use crate::storage::rows::DeviceRow;
use crate::storage::time::utc;

type DeviceTuple = (
    String,
    String,
    Option<String>,
    String,
    i16,
    NaiveDateTime,
    NaiveDateTime,
    Option<String>,
    Option<i16>,
);

impl Db {
    /// Every device ever seen, by id.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StorageError> {
        use crate::storage::schema::devices::dsl::*;
        let rows: Vec<DeviceTuple> = devices
            .select((
                id,
                protocol,
                profile,
                remote_addr,
                online,
                connected_at,
                last_seen,
                parent,
                unit,
            ))
            .order(id.asc())
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(i, p, pr, addr, on, conn_at, seen, par, u)| DeviceRow {
                id: i,
                protocol: p,
                profile: pr,
                remote_addr: addr,
                online: on != 0,
                connected_at: utc(conn_at),
                last_seen: utc(seen),
                parent: par,
                // A stored unit outside 1..=247 cannot come from a profile: not a unit.
                unit: u.and_then(|u| u8::try_from(u).ok()),
            })
            .collect())
    }
}
