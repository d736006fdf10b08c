//! One operator command's whole life. A client's JSON body becomes a [`DeviceCommand`]
//! ([`request`]); [`send`] routes it through the supervisor to the device's connection, waits
//! for the answer and keeps its record ([`record`]: `sent`, then `ok`, `failed` or `timeout`,
//! then `command.completed`); a command for an offline device may wait in the offline queue
//! ([`queue`]) and is delivered the same way when the device registers. This file holds the
//! types every step shares.

pub mod queue;
pub mod record;
pub mod request;
pub mod send;

use actix::{Message, Recipient};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::protocol::dlt645::{Di, Dlt645Error};
use crate::protocol::hex::to_hex;
use crate::protocol::modbus::{ModbusError, Request, Response};
use crate::protocol::points::Decoded;

/// What an operator asked a device to do.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCommand {
    /// A Modbus request to the profile's slave.
    Modbus(Request),
    /// A complete RTU ADU (CRC included) sent as is; its first byte names the slave.
    Raw(Vec<u8>),
    /// A command of the device's profile, by name.
    Named(String),
    /// A read of one data identifier of a DL/T 645 meter.
    Dlt645Read(Di),
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
    /// A DL/T 645 meter's answer to a read of `di`: its data bytes (offset undone), and the
    /// value they decode to where the format is known (the profile's point for that
    /// identifier, named like it, or the table's, named like the identifier), with the text
    /// of a date or time.
    Dlt645 {
        di: Di,
        data: Vec<u8>,
        values: Vec<Decoded>,
        text: Option<String>,
    },
}

/// Why a command did not succeed. Each maps to one HTTP status in the web layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("device {0} is offline")]
    Offline(String),
    /// Another token holds the device's control lock.
    #[error("device {device} is locked by {holder} until {expires_at}")]
    Locked {
        device: String,
        holder: String,
        expires_at: DateTime<Utc>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
    #[error("device did not answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Modbus(ModbusError),
    /// A DL/T 645 meter's error answer, or data it sent that cannot be decoded.
    #[error("{0}")]
    Meter(Dlt645Error),
    #[error("device disconnected before answering")]
    Disconnected,
}

/// Where the device actor sends a command's end.
pub type CommandReply = oneshot::Sender<Result<CommandOutcome, CommandError>>;

/// The `result` object of a successful command, as the API answers it and the record keeps it.
pub fn outcome_json(outcome: &CommandOutcome) -> Value {
    match outcome {
        CommandOutcome::Raw(adu) => json!({ "hex": to_hex(adu) }),
        CommandOutcome::Dlt645 {
            di,
            data,
            values,
            text,
        } => {
            let first = values.first();
            let mut result = json!({
                "di": di.to_string(),
                "data": to_hex(data),
                "value": first.map(|d| d.value),
                "unit": first.map(|d| d.unit.clone()),
            });
            if let (Some(text), Some(obj)) = (text, result.as_object_mut()) {
                obj.insert("text".into(), json!(text));
            }
            if let Some(obj) = result.as_object_mut() {
                obj.insert("values".into(), Value::Object(decoded_map(values)));
            }
            result
        }
        CommandOutcome::Modbus { response, values } => {
            let mut result = match response {
                Response::Registers(regs) => json!({ "registers": regs }),
                Response::Bits(bits) => json!({ "bits": bits }),
                Response::WriteSingleRegister { address, value } => {
                    json!({ "address": address, "value": value })
                }
                Response::WriteSingleCoil { address, value } => {
                    json!({ "address": address, "value": value })
                }
                Response::WriteMultiple { address, count } => {
                    json!({ "address": address, "count": count })
                }
            };
            if matches!(response, Response::Registers(_) | Response::Bits(_)) {
                if let Some(obj) = result.as_object_mut() {
                    obj.insert("values".into(), Value::Object(decoded_map(values)));
                }
            }
            result
        }
    }
}

/// Decoded points by name, as a result's `values` shows them.
fn decoded_map(values: &[Decoded]) -> Map<String, Value> {
    values
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                json!({"value": d.value, "raw": d.raw, "unit": d.unit}),
            )
        })
        .collect()
}

/// The record status a command's end maps to: `ok`, `timeout` or `failed`.
pub fn status_of(result: &Result<CommandOutcome, CommandError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::Timeout(_)) => "timeout",
        Err(_) => "failed",
    }
}

// The messages that route a command; the supervisor answers them.

/// How commands reach the supervisor.
#[derive(Clone)]
pub struct Routes {
    pub route: Recipient<RouteCommand>,
    pub kick: Recipient<KickQueue>,
}

/// Hands a command to the connection holding `id`; its end comes through `reply`. Refused
/// (`Locked`) while another token than `token` holds the device's control lock.
#[derive(Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct RouteCommand {
    pub id: String,
    pub command: DeviceCommand,
    pub reply: CommandReply,
    /// The id of the API token the command comes from.
    pub token: Option<String>,
}

/// A command has just been queued for `id`: if the device is online after all (it registered
/// while the command was being stored), deliver it now rather than at its next registration.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KickQueue {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_command_ends() {
        let ok = Ok(CommandOutcome::Raw(vec![1, 3]));
        assert_eq!(status_of(&ok), "ok");
        assert_eq!(status_of(&Err(CommandError::Timeout(5))), "timeout");
        assert_eq!(status_of(&Err(CommandError::Disconnected)), "failed");
        assert_eq!(status_of(&Err(CommandError::Offline("d".into()))), "failed");
        assert_eq!(
            outcome_json(&CommandOutcome::Raw(vec![1, 3])),
            json!({"hex": "01 03"})
        );
        let energy = CommandOutcome::Dlt645 {
            di: Di(0x0001_0000),
            data: vec![0x78, 0x56, 0x34, 0x12],
            values: vec![Decoded {
                name: "energy".into(),
                raw: 123_456.78,
                value: 123_456.78,
                unit: "kWh".into(),
            }],
            text: None,
        };
        assert_eq!(
            outcome_json(&energy),
            json!({"di": "00010000", "data": "78 56 34 12", "value": 123_456.78, "unit": "kWh",
                   "values": {"energy": {"value": 123_456.78, "raw": 123_456.78, "unit": "kWh"}}})
        );
    }
}
