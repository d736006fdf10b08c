//! dtu-supervisor: supervises fleets of dial-in DTUs — registration, heartbeats, Modbus RTU
//! polling and decoding, operator commands — behind a REST API.

pub mod device;
pub mod events;
pub mod metrics;
pub mod queue;
pub mod relay;
pub mod rules;
pub mod server;
pub mod settings;
pub mod sim;
pub mod sim_ttms;
pub mod storage;
pub mod supervisor;
pub mod web;
pub mod webhooks;
