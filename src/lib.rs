//! dtu-supervisor: supervises fleets of dial-in DTUs — registration, heartbeats, Modbus RTU
//! polling and decoding, operator commands — behind a REST API.
//!
//! The rooms, lowest first (see docs/architecture.md):
//! - [`protocol`]: pure byte-level code: link framings, Modbus, point decoding. No actix, no
//!   settings types, no I/O.
//! - [`settings`]: the two settings files, validated.
//! - [`metrics`], [`storage`], [`events`]: counters, the database and its batching actor, the
//!   event bus with rules and webhooks.
//! - [`command`]: one operator command's whole life: request, record, offline queue.
//! - [`supervisor`]: who is online and where each id is held; routes commands and relay frames.
//! - [`conn`]: one connection = one actor, its lifecycle written once, a driver per protocol.
//! - [`web`]: the REST API and the console.
//! - [`server`]: the wiring: listeners, actors, HTTP, shutdown.
//! - [`sim`]: the simulated DTUs of `dtu-sim`, the tests and the benches.

pub mod command;
pub mod conn;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod settings;
pub mod sim;
pub mod storage;
pub mod supervisor;
pub mod web;
