//! Operator commands as the device actor executes them, and how they end.
//!
//! The web layer turns a JSON body into a [`DeviceCommand`], the supervisor routes it to the
//! device's actor, and the actor answers through the [`CommandReply`] channel once the device
//! has answered (or not). Keeping these types apart from the web layer lets tests and other
//! front ends drive devices the same way.

use tokio::sync::oneshot;

use crate::device::modbus::{ModbusError, Request, Response};
use crate::device::points::Decoded;

/// What an operator asked a device to do.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCommand {
    /// A Modbus request to the profile's slave.
    Modbus(Request),
    /// A complete RTU ADU (CRC included) sent as is; its first byte names the slave.
    Raw(Vec<u8>),
    /// A command of the device's profile, by name.
    Named(String),
}

/// A successful command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The device's answer to a Modbus request, with the profile's points it covers decoded.
    Modbus {
        response: Response,
        values: Vec<Decoded>,
    },
    /// The answer ADU to a raw request.
    Raw(Vec<u8>),
}

/// Why a command did not succeed. Each maps to one HTTP status in the web layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("device {0} is offline")]
    Offline(String),
    #[error("{0}")]
    Invalid(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
    #[error("device did not answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Modbus(ModbusError),
    #[error("device disconnected before answering")]
    Disconnected,
}

/// Where the device actor sends a command's end.
pub type CommandReply = oneshot::Sender<Result<CommandOutcome, CommandError>>;
