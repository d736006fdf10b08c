//! How an operator command becomes requests on the wire for one device's profile, and how a
//! request is matched with its answer.

use crate::command::{CommandError, DeviceCommand};
use crate::protocol::link::Expect;
use crate::protocol::modbus::rtu::{self, MAX_ADU};
use crate::protocol::modbus::{ModbusError, Request, Response};
use crate::protocol::points::Point;
use crate::settings::{NamedCommand, Profile, Require, WriteSpec};

/// One request on the wire, as it must be matched with its answer.
#[derive(Debug, Clone)]
pub enum Wire {
    Modbus {
        slave: u8,
        request: Request,
    },
    /// An ADU the operator wrote by hand; its answer is checked for slave, function and CRC.
    Raw {
        slave: u8,
        function: u8,
        adu: Vec<u8>,
    },
}

/// An answer matched with the request in flight.
pub enum Answer {
    Modbus(Response),
    Raw(Vec<u8>),
}

impl Wire {
    /// A read of `count` from `start` with `function`, to `slave`.
    pub fn read(slave: u8, function: u8, start: u16, count: u16) -> Result<Wire, String> {
        Request::read(function, start, count)
            .map(|request| Wire::Modbus { slave, request })
            .map_err(|e| e.to_string())
    }

    pub fn adu(&self) -> Vec<u8> {
        match self {
            Wire::Modbus { slave, request } => request.encode(*slave),
            Wire::Raw { adu, .. } => adu.clone(),
        }
    }

    pub fn expect(&self) -> Expect {
        match self {
            Wire::Modbus { slave, request } => Expect {
                slave: *slave,
                function: request.function(),
            },
            Wire::Raw {
                slave, function, ..
            } => Expect {
                slave: *slave,
                function: *function,
            },
        }
    }

    /// Whether `adu` answers this request: the answer, a device exception, or `Err(None)`
    /// when it is not the answer to this request at all (a late answer to an earlier one,
    /// line noise), with what is wrong.
    pub fn match_answer(&self, adu: &[u8]) -> Result<Answer, Mismatch> {
        let parsed = match self {
            Wire::Modbus { slave, request } => {
                rtu::parse_response(*slave, request, adu).map(Answer::Modbus)
            }
            Wire::Raw {
                slave, function, ..
            } => rtu::parse_raw_response(*slave, *function, adu).map(Answer::Raw),
        };
        parsed.map_err(|e| match e {
            e @ ModbusError::Exception { .. } => Mismatch::Exception(CommandError::Modbus(e)),
            e => Mismatch::NotTheAnswer(e),
        })
    }

    /// The start address of the read this request makes, for decoding its answer.
    pub fn read_start(&self) -> Option<u16> {
        match self {
            Wire::Modbus { request, .. } => match request {
                Request::ReadCoils { start, .. }
                | Request::ReadDiscreteInputs { start, .. }
                | Request::ReadHoldingRegisters { start, .. }
                | Request::ReadInputRegisters { start, .. } => Some(*start),
                _ => None,
            },
            Wire::Raw { .. } => None,
        }
    }
}

/// Why an answer did not end the request in flight.
pub enum Mismatch {
    /// The device refused the request: the request ends with this error.
    Exception(CommandError),
    /// Not the answer to this request: keep waiting (the timeout retries).
    NotTheAnswer(ModbusError),
}

/// An operator command once resolved against the profile.
pub enum Plan {
    Single(Wire),
    /// Read `point` live; send `then` only if it equals `require.equals`.
    Checked {
        read: Wire,
        point: Point,
        require: Require,
        then: Wire,
    },
}

impl Plan {
    /// The request this plan starts with.
    pub fn first(&self) -> &Wire {
        match self {
            Plan::Single(w) | Plan::Checked { read: w, .. } => w,
        }
    }

    /// Resolves an operator command against the device it goes to: the profile and slave
    /// address of its slave (None: a DTU whose slaves are units, which takes raw frames only).
    pub fn of(
        command: DeviceCommand,
        target: Option<(&Profile, u8)>,
    ) -> Result<Plan, CommandError> {
        let no_profile = || {
            CommandError::Invalid(
                "this device has no Modbus profile of its own (a DTU with units takes raw frames; \
                 send the others to its units, <id>.<slave>)"
                    .into(),
            )
        };
        match command {
            DeviceCommand::Modbus(request) => {
                let (_, slave) = target.ok_or_else(no_profile)?;
                request
                    .validate()
                    .map_err(|e| CommandError::Invalid(e.to_string()))?;
                Ok(Plan::Single(Wire::Modbus { slave, request }))
            }
            DeviceCommand::Raw(adu) => match (adu.first(), adu.get(1)) {
                (Some(&slave), Some(&function)) if adu.len() >= 4 && adu.len() <= MAX_ADU => {
                    if !rtu::check_crc(&adu) {
                        return Err(CommandError::Invalid("raw frame has a bad CRC".into()));
                    }
                    Ok(Plan::Single(Wire::Raw {
                        slave,
                        function,
                        adu,
                    }))
                }
                _ => Err(CommandError::Invalid(format!(
                    "raw frame must be 4..={MAX_ADU} bytes with CRC"
                ))),
            },
            DeviceCommand::Named(name) => {
                let (profile, slave) = target.ok_or_else(no_profile)?;
                let command = profile.command(&name).ok_or_else(|| {
                    CommandError::Invalid(format!(
                        "profile {} has no command {name:?}",
                        profile.name
                    ))
                })?;
                named(profile, slave, command)
            }
        }
    }
}

fn named(profile: &Profile, slave: u8, command: &NamedCommand) -> Result<Plan, CommandError> {
    let request = match &command.write {
        WriteSpec::Register { address, value } => Request::WriteSingleRegister {
            address: *address,
            value: *value,
        },
        WriteSpec::Registers { address, values } => Request::WriteMultipleRegisters {
            address: *address,
            values: values.clone(),
        },
        WriteSpec::Coil { address, value } => Request::WriteSingleCoil {
            address: *address,
            value: *value,
        },
    };
    let then = Wire::Modbus { slave, request };
    let Some(require) = &command.require else {
        return Ok(Plan::Single(then));
    };
    let point = profile.point(&require.point).ok_or_else(|| {
        CommandError::Invalid(format!(
            "command {} requires unknown point {}",
            command.name, require.point
        ))
    })?;
    // Read the point through the function of a poll that covers it, as polls do.
    let width = point.ty.registers();
    let function = profile
        .polls
        .iter()
        .find(|p| {
            let end = u32::from(p.start) + u32::from(p.count);
            p.start <= point.address && u32::from(point.address) + u32::from(width) <= end
        })
        .map_or(3, |p| p.function);
    let read = Request::read(function, point.address, width)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    Ok(Plan::Checked {
        read: Wire::Modbus {
            slave,
            request: read,
        },
        point: point.clone(),
        require: require.clone(),
        then,
    })
}
