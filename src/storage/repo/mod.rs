//! The queries of each table, one file per table (or concern), each an `impl Db` with its
//! record types and tests. Their records are re-exported by `storage::db`.
//!
//! Reads go through `AnyConnection` (portable types only) and compare times through
//! `time::bound`; single-row inserts that bind times go through `on_inner!`, with MySQL's
//! DATETIME version in `mysql.rs`. Rows written through the Storage actor are inserted by
//! `batch.rs`.

pub(super) mod commands;
pub(super) mod devices;
pub(super) mod events;
pub(super) mod packets;
pub(super) mod relay;
pub(super) mod retention;
pub(super) mod telemetry;
pub(super) mod tokens;
pub(super) mod webhooks;
