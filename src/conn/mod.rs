//! One connection = one actor. [`lifecycle`] holds what every connection shares (register
//! timeout, liveness, close, the write path, reporting through [`link`]); a driver per kind
//! of behaviour (the `Driver` trait) adds the rest: [`device`] polls the serial device behind a DTU through
//! any request/response link protocol, [`relay`] relays `$TTMS` frames. [`listener`] starts
//! the right one for a listener's protocol.

pub mod accept;
pub mod device;
pub mod lifecycle;
pub mod limits;
pub mod link;
pub mod listener;
pub mod plan;
pub mod relay;
pub mod target;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::supervisor::messages::ConnId;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A new connection id: the one source, so ids never repeat within a process.
pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}
