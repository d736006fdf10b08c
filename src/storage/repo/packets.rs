//! `raw_packets`: the bytes that crossed a device's socket, stored as hex.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::storage::db::{Db, StorageError};
use crate::storage::time::utc;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacketRecord {
    /// "in" or "out".
    pub direction: String,
    pub kind: String,
    /// Uppercase hex bytes separated by spaces: "01 03 00 00 00 02 C4 0B".
    pub hex: String,
    pub at: DateTime<Utc>,
}

impl Db {
    /// A device's raw packets, newest first; with `before`, only those older than that.
    pub fn packets(
        &self,
        device: &str,
        before: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<PacketRecord>, StorageError> {
        use crate::storage::schema::raw_packets::dsl::*;
        let mut query = raw_packets.filter(device_id.eq(device)).into_boxed();
        if let Some(before) = before {
            query = query.filter(at.lt(before.naive_utc()));
        }
        let rows: Vec<(String, String, String, NaiveDateTime)> = query
            .select((direction, kind, hex, at))
            .order((at.desc(), id.desc()))
            .limit(limit.max(0))
            .load(&mut *self.conn()?)?;
        Ok(rows
            .into_iter()
            .map(|(d, k, h, t)| PacketRecord {
                direction: d,
                kind: k,
                hex: spaced_hex(&h),
                at: utc(t),
            })
            .collect())
    }
}

/// "0103" → "01 03", whatever the case or spacing it was stored with.
fn spaced_hex(stored: &str) -> String {
    let mut out = String::with_capacity(stored.len() * 3 / 2);
    for (i, ch) in stored.chars().filter(|c| !c.is_whitespace()).enumerate() {
        if i > 0 && i % 2 == 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_spaced_and_uppercase() {
        assert_eq!(spaced_hex("0103000a"), "01 03 00 0A");
        assert_eq!(spaced_hex(""), "");
        assert_eq!(spaced_hex("01 03"), "01 03");
    }
}
