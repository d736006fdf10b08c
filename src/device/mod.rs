//! Everything about one connected DTU: its actor, wire codecs, Modbus and point decoding.

pub mod actor;
pub mod codec;
pub mod command;
pub mod link;
pub mod modbus;
pub mod points;
