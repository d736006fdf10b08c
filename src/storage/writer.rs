//! The database side of storage: [`DbWriter`], a sync actor on its own thread (a
//! [`SyncArbiter`]) so that diesel never blocks the async workers.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;
use log::error;

use crate::storage::db::{Db, StorageError};
use crate::storage::rows::Row;

/// What [`DbWriter`] writes through: the real [`Db`], or a stand-in in tests.
pub trait BatchWriter: Send + 'static {
    /// Writes all `rows` in one transaction, or none of them. Blocking.
    fn write(&mut self, rows: &[Row]) -> Result<usize, StorageError>;
}

impl BatchWriter for Db {
    fn write(&mut self, rows: &[Row]) -> Result<usize, StorageError> {
        Db::write(self, rows)
    }
}

/// Writes one batch; answers with what [`BatchWriter::write`] answered. The rows are shared
/// with the storage actor, which keeps them for a retry if the write fails.
#[derive(Debug, Clone)]
pub struct WriteBatch(pub Arc<Vec<Row>>);

impl Message for WriteBatch {
    type Result = Result<usize, StorageError>;
}

/// The one thread that writes to the database.
pub struct DbWriter {
    writer: Option<Box<dyn BatchWriter>>,
}

impl DbWriter {
    /// Starts the writer on a one-thread [`SyncArbiter`]. Needs a running actix `System`.
    pub fn start(writer: impl BatchWriter) -> Addr<DbWriter> {
        let slot: Mutex<Option<Box<dyn BatchWriter>>> = Mutex::new(Some(Box::new(writer)));
        SyncArbiter::start(1, move || DbWriter {
            // Called once: one thread, and the actor never stops itself.
            writer: slot.lock().unwrap_or_else(PoisonError::into_inner).take(),
        })
    }
}

impl Actor for DbWriter {
    type Context = SyncContext<Self>;
}

impl Handler<WriteBatch> for DbWriter {
    type Result = Result<usize, StorageError>;

    fn handle(&mut self, msg: WriteBatch, _: &mut Self::Context) -> Self::Result {
        let Some(writer) = self.writer.as_mut() else {
            return Err(StorageError::Query("no database writer".into()));
        };
        // A panic must not kill the thread: the arbiter would then panic on the next send.
        match catch_unwind(AssertUnwindSafe(|| writer.write(&msg.0))) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                error!("storage: the database writer panicked: {what}");
                Err(StorageError::Query(format!(
                    "database writer panicked: {what}"
                )))
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
