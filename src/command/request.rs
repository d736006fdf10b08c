//! An operator command as a client asks for it: the JSON body of
//! `POST /api/devices/{id}/commands`, validated into a [`DeviceCommand`] with how long to
//! wait for it and whether (and how long) it may wait in the offline queue. The body is also
//! what the offline queue stores and reads back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::DeviceCommand;
use crate::protocol::dlt645::Di;
use crate::protocol::hex::parse_hex;
use crate::protocol::modbus::rtu;
use crate::protocol::modbus::Request;

/// A request that cannot be a command; the message says why (a 400 in the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

impl RequestError {
    pub fn new(message: impl Into<String>) -> RequestError {
        RequestError(message.into())
    }
}

/// How long a caller waits for a device when the body names no `timeout_ms`: long enough for
/// a queued poll plus the profile's own timeout and retries, which usually answer first.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT_MS: u64 = 600_000;
/// How long a queued command waits for its device unless the body says `ttl_s`.
pub const DEFAULT_QUEUE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest `ttl_s` accepted: 30 days.
pub const MAX_QUEUE_TTL_S: u64 = 30 * 24 * 3600;

/// The JSON body; which fields apply depends on `type`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// The data identifier of a `dlt645_read`, 8 hex digits as the standard prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub di: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_if_offline: Option<bool>,
    /// With `queue_if_offline`: how long the command may wait for its device, in seconds
    /// (default one day); past that it ends `expired`, unsent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

fn need<T>(field: Option<T>, name: &str, kind: &str) -> Result<T, RequestError> {
    field.ok_or_else(|| RequestError::new(format!("a {kind} command needs \"{name}\"")))
}

fn as_u16(v: &Value, what: &str) -> Result<u16, RequestError> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| RequestError::new(format!("{what} must be an integer 0..=65535, got {v}")))
}

fn as_bool(v: &Value, what: &str) -> Result<bool, RequestError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => Err(RequestError::new(format!(
            "{what} must be true or false, got {v}"
        ))),
    }
}

impl CommandBody {
    /// The device command this body asks for, validated.
    pub fn to_command(&self) -> Result<DeviceCommand, RequestError> {
        let kind = self.kind.as_str();
        let request = match kind {
            "read" => Request::read(
                need(self.function, "function", kind)?,
                need(self.start, "start", kind)?,
                need(self.count, "count", kind)?,
            )
            .map_err(|e| RequestError::new(e.to_string()))?,
            "write_register" => Request::WriteSingleRegister {
                address: need(self.address, "address", kind)?,
                value: as_u16(need(self.value.as_ref(), "value", kind)?, "value")?,
            },
            "write_registers" => Request::WriteMultipleRegisters {
                address: need(self.address, "address", kind)?,
                values: need(self.values.as_ref(), "values", kind)?
                    .iter()
                    .map(|v| as_u16(v, "each of values"))
                    .collect::<Result<_, _>>()?,
            },
            "write_coil" => Request::WriteSingleCoil {
                address: need(self.address, "address", kind)?,
                value: as_bool(need(self.value.as_ref(), "value", kind)?, "value")?,
            },
            "write_coils" => Request::WriteMultipleCoils {
                address: need(self.address, "address", kind)?,
                values: need(self.values.as_ref(), "values", kind)?
                    .iter()
                    .map(|v| as_bool(v, "each of values"))
                    .collect::<Result<_, _>>()?,
            },
            "named" => return Ok(DeviceCommand::Named(need(self.name.clone(), "name", kind)?)),
            "dlt645_read" => {
                let di = need(self.di.as_deref(), "di", kind)?
                    .parse::<Di>()
                    .map_err(RequestError::new)?;
                return Ok(DeviceCommand::Dlt645Read(di));
            }
            "raw" => {
                let bytes = parse_hex(need(self.hex.as_deref(), "hex", kind)?)
                    .map_err(|e| RequestError::new(e.to_string()))?;
                if bytes.len() < 2 {
                    return Err(RequestError::new("a raw frame needs at least slave and function"));
                }
                return Ok(DeviceCommand::Raw(rtu::ensure_crc(bytes)));
            }
            other => {
                return Err(RequestError::new(format!(
                    "unknown command type {other:?}: use read, write_register, write_registers, write_coil, write_coils, named, raw or dlt645_read"
                )))
            }
        };
        request
            .validate()
            .map_err(|e| RequestError::new(e.to_string()))?;
        Ok(DeviceCommand::Modbus(request))
    }

    pub fn wait(&self) -> Result<Duration, RequestError> {
        match self.timeout_ms {
            None => Ok(DEFAULT_WAIT),
            Some(ms) if (1..=MAX_WAIT_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(RequestError::new(format!(
                "timeout_ms must be 1..={MAX_WAIT_MS}, got {ms}"
            ))),
        }
    }

    /// How long a command may wait in the offline queue: None unless `queue_if_offline`.
    pub fn queue_ttl(&self) -> Result<Option<Duration>, RequestError> {
        match (self.queue_if_offline, self.ttl_s) {
            (Some(true), None) => Ok(Some(DEFAULT_QUEUE_TTL)),
            (Some(true), Some(s)) if (1..=MAX_QUEUE_TTL_S).contains(&s) => {
                Ok(Some(Duration::from_secs(s)))
            }
            (Some(true), Some(s)) => Err(RequestError::new(format!(
                "ttl_s must be 1..={MAX_QUEUE_TTL_S} seconds, got {s}"
            ))),
            (_, None) => Ok(None),
            (_, Some(_)) => Err(RequestError::new(
                "ttl_s applies only with \"queue_if_offline\": true",
            )),
        }
    }
}

/// The device command and answer wait of a stored request body.
pub fn parse_request(request: &str) -> Result<(DeviceCommand, Duration), RequestError> {
    let body: CommandBody =
        serde_json::from_str(request).map_err(|e| RequestError::new(e.to_string()))?;
    Ok((body.to_command()?, body.wait()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(queue: Option<bool>, ttl: Option<u64>) -> CommandBody {
        CommandBody {
            kind: "write_register".into(),
            function: None,
            start: None,
            count: None,
            address: Some(1),
            value: Some(json!(1)),
            values: None,
            name: None,
            hex: None,
            di: None,
            timeout_ms: None,
            queue_if_offline: queue,
            ttl_s: ttl,
        }
    }

    #[test]
    fn queue_ttl_defaults_bounds_and_needs_the_flag() {
        // Every refusal is a bad request (400 in the API).
        let ttl = |q, t| body(q, t).queue_ttl().map_err(|_: RequestError| 400);
        assert_eq!(ttl(None, None), Ok(None));
        assert_eq!(ttl(Some(false), None), Ok(None));
        assert_eq!(ttl(Some(true), None), Ok(Some(DEFAULT_QUEUE_TTL)));
        assert_eq!(ttl(Some(true), Some(5)), Ok(Some(Duration::from_secs(5))));
        assert_eq!(
            ttl(Some(true), Some(MAX_QUEUE_TTL_S)),
            Ok(Some(Duration::from_secs(MAX_QUEUE_TTL_S)))
        );
        assert_eq!(ttl(Some(true), Some(0)), Err(400));
        assert_eq!(ttl(Some(true), Some(MAX_QUEUE_TTL_S + 1)), Err(400));
        assert_eq!(ttl(None, Some(5)), Err(400));
    }

    #[test]
    fn stored_requests_read_back_as_the_same_command() {
        let stored = serde_json::to_string(&body(Some(true), Some(60))).expect("json");
        let (command, wait) = parse_request(&stored).expect("parses");
        assert_eq!(
            command,
            DeviceCommand::Modbus(Request::WriteSingleRegister {
                address: 1,
                value: 1
            })
        );
        assert_eq!(wait, DEFAULT_WAIT);
        assert!(parse_request("{\"type\":\"bogus\"}").is_err());
        let (command, _) =
            parse_request("{\"type\":\"dlt645_read\",\"di\":\"02010100\"}").expect("parses");
        assert_eq!(command, DeviceCommand::Dlt645Read(Di(0x0201_0100)));
        for bad in [
            "{\"type\":\"dlt645_read\"}",
            "{\"type\":\"dlt645_read\",\"di\":\"0201010\"}",
            "{\"type\":\"dlt645_read\",\"di\":\"0201010X\"}",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
        assert!(parse_request("not json").is_err());
    }
}
