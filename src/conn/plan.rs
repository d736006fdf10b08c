//! How a poll or an operator command becomes a request on the wire for one target, and how
//! a request is matched with its answer. The target's meter protocol (its profile's
//! [`Meter`]: Modbus RTU, Modbus TCP, DL/T 645) is decided here and nowhere else: a [`Wire`]
//! is built for it, framed by it and matches answers by its rules.

use crate::command::{CommandError, DeviceCommand};
use crate::protocol::dlt645::{self, Dlt645Error};
use crate::protocol::link::Expect;
use crate::protocol::modbus::rtu::{self, MAX_ADU};
use crate::protocol::modbus::{tcp, ModbusError, Request, Response};
use crate::protocol::points::Point;
use crate::settings::{Meter, NamedCommand, Poll, PollRead, Profile, Require, WriteSpec};

/// One request on the wire, as it must be matched with its answer.
#[derive(Debug, Clone)]
pub enum Wire {
    /// A Modbus request to `slave`: RTU, or Modbus TCP in transaction `tcp` (stamped when
    /// sent, [`Wire::stamp`]).
    Modbus {
        slave: u8,
        request: Request,
        tcp: Option<u16>,
    },
    /// An RTU ADU the operator wrote by hand; its answer is checked for slave, function and
    /// CRC. To a Modbus TCP slave its PDU goes in an MBAP header instead.
    Raw {
        slave: u8,
        function: u8,
        adu: Vec<u8>,
        tcp: Option<u16>,
    },
    /// A DL/T 645 request to the meter at `address`; None: not known yet (`address =
    /// "auto"`, see [`Wire::addressed`]), or the broadcast of a read of the address.
    Dlt645 {
        address: Option<dlt645::Address>,
        request: dlt645::Request,
    },
}

/// An answer matched with the request in flight.
pub enum Answer {
    Modbus(Response),
    Raw(Vec<u8>),
    /// The data of a DL/T 645 read (identifier removed, offset undone).
    Dlt645 {
        di: dlt645::Di,
        data: Vec<u8>,
    },
    /// The meter's address, read with the broadcast address.
    Address(dlt645::Address),
}

/// A Modbus TCP transaction id placeholder until [`Wire::stamp`].
fn tcp_of(meter: Meter) -> Option<u16> {
    (meter == Meter::ModbusTcp).then_some(0)
}

impl Wire {
    /// A Modbus request to `slave` of a profile whose slave speaks `meter`.
    pub fn modbus(meter: Meter, slave: u8, request: Request) -> Wire {
        Wire::Modbus {
            slave,
            request,
            tcp: tcp_of(meter),
        }
    }

    /// The request of `poll` to `slave` (Modbus) or to the meter at `address` (DL/T 645).
    pub fn poll(
        meter: Meter,
        slave: u8,
        address: Option<dlt645::Address>,
        poll: &Poll,
    ) -> Result<Wire, String> {
        match &poll.read {
            PollRead::Block(b) => Request::read(b.function, b.start, b.count)
                .map(|request| Wire::modbus(meter, slave, request))
                .map_err(|e| e.to_string()),
            PollRead::Dlt645 { di, .. } => Ok(Wire::Dlt645 {
                address,
                request: dlt645::Request::Read(*di),
            }),
        }
    }

    /// A DL/T 645 read for a meter whose address is `known` (None: not read yet): addressed
    /// to it, or, while it is unknown, the broadcast read of the address that must come first.
    /// Any other request is returned as it is.
    pub fn addressed(self, known: Option<dlt645::Address>) -> Wire {
        match self {
            Wire::Dlt645 {
                address: None,
                request: request @ dlt645::Request::Read(_),
            } => match known {
                Some(address) => Wire::Dlt645 {
                    address: Some(address),
                    request,
                },
                None => Wire::Dlt645 {
                    address: None,
                    request: dlt645::Request::ReadAddress,
                },
            },
            other => other,
        }
    }

    /// Gives a Modbus TCP request its transaction id; nothing for other requests.
    pub fn stamp(&mut self, transaction: u16) {
        if let Wire::Modbus { tcp: Some(t), .. } | Wire::Raw { tcp: Some(t), .. } = self {
            *t = transaction;
        }
    }

    /// The bytes that go to the serial side.
    pub fn adu(&self) -> Vec<u8> {
        match self {
            Wire::Modbus {
                slave,
                request,
                tcp: None,
            } => request.encode(*slave),
            Wire::Modbus {
                slave,
                request,
                tcp: Some(t),
            } => tcp::encode_request(*t, *slave, request),
            Wire::Raw { adu, tcp: None, .. } => adu.clone(),
            Wire::Raw {
                slave,
                adu,
                tcp: Some(t),
                ..
            } => {
                // The PDU between the slave byte and the CRC (checked when the plan was made).
                let pdu = adu.get(1..adu.len().saturating_sub(2)).unwrap_or_default();
                tcp::frame(*t, *slave, pdu)
            }
            Wire::Dlt645 { address, request } => {
                request.encode(address.as_ref().unwrap_or(&dlt645::BROADCAST))
            }
        }
    }

    /// What its answer looks like, for a link that cuts it out of a byte stream.
    pub fn expect(&self) -> Expect {
        let modbus = |slave: u8, function: u8, len: Option<usize>, tcp: Option<u16>| match tcp {
            None => Expect::Rtu {
                slave,
                function,
                // Slave address, PDU, CRC.
                len: len.map(|pdu| pdu + 3),
            },
            Some(transaction) => Expect::Tcp {
                transaction,
                unit: slave,
                function,
            },
        };
        match self {
            Wire::Modbus {
                slave,
                request,
                tcp,
            } => modbus(
                *slave,
                request.function(),
                Some(request.answer_pdu_len()),
                *tcp,
            ),
            Wire::Raw {
                slave,
                function,
                adu,
                tcp,
            } => {
                // A hand-written request of a standard function fixes its answer's length
                // too; any other function is framed by the answer's own rules.
                let len = Request::decode(adu)
                    .ok()
                    .map(|(_, request)| request.answer_pdu_len());
                modbus(*slave, *function, len, *tcp)
            }
            Wire::Dlt645 { address, request } => Expect::Dlt645 {
                address: *address,
                request: *request,
            },
        }
    }

    /// Whether `adu` answers this request: the answer, a device exception or meter error,
    /// or `NotTheAnswer` when it is not the answer to this request at all (a late answer to
    /// an earlier one, line noise), with what is wrong.
    pub fn match_answer(&self, adu: &[u8]) -> Result<Answer, Mismatch> {
        let modbus = |e: ModbusError| match e {
            e @ ModbusError::Exception { .. } => Mismatch::Exception(CommandError::Modbus(e)),
            e => Mismatch::NotTheAnswer(e.to_string()),
        };
        match self {
            Wire::Modbus {
                slave,
                request,
                tcp: None,
            } => rtu::parse_response(*slave, request, adu)
                .map(Answer::Modbus)
                .map_err(modbus),
            Wire::Modbus {
                slave,
                request,
                tcp: Some(t),
            } => tcp::parse_response(*t, *slave, request, adu)
                .map(Answer::Modbus)
                .map_err(modbus),
            Wire::Raw {
                slave,
                function,
                tcp: None,
                ..
            } => rtu::parse_raw_response(*slave, *function, adu)
                .map(Answer::Raw)
                .map_err(modbus),
            Wire::Raw {
                slave,
                function,
                tcp: Some(t),
                ..
            } => tcp::parse_raw_response(*t, *slave, *function, adu)
                .map(Answer::Raw)
                .map_err(modbus),
            Wire::Dlt645 { address, request } => {
                match dlt645::parse_answer(*request, address.as_ref(), adu) {
                    Ok(dlt645::Answer::Data { di, data, more }) => {
                        if more {
                            log::debug!(
                                "DL/T 645 answer for {di} has frames to follow; the first is read"
                            );
                        }
                        Ok(Answer::Dlt645 { di, data })
                    }
                    Ok(dlt645::Answer::Address(a)) => Ok(Answer::Address(a)),
                    Err(e @ Dlt645Error::Meter { .. }) => {
                        Err(Mismatch::Exception(CommandError::Meter(e)))
                    }
                    Err(e) => Err(Mismatch::NotTheAnswer(e.to_string())),
                }
            }
        }
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
            Wire::Raw { .. } | Wire::Dlt645 { .. } => None,
        }
    }
}

/// Why an answer did not end the request in flight.
pub enum Mismatch {
    /// The device refused the request (a Modbus exception, a DL/T 645 error answer): the
    /// request ends with this error.
    Exception(CommandError),
    /// Not the answer to this request: keep waiting (the timeout retries).
    NotTheAnswer(String),
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
        let meter = target.map_or(Meter::ModbusRtu, |(profile, _)| profile.meter);
        let dlt645 = matches!(meter, Meter::Dlt645(_));
        if dlt645 && !matches!(command, DeviceCommand::Dlt645Read(_)) {
            return Err(CommandError::Invalid(
                "a DL/T 645 meter takes dlt645_read commands only (writes are not supported)"
                    .into(),
            ));
        }
        match command {
            DeviceCommand::Dlt645Read(di) => {
                if !dlt645 {
                    return Err(CommandError::Invalid(
                        "dlt645_read is for DL/T 645 meters; this device's profile speaks Modbus"
                            .into(),
                    ));
                }
                Ok(Plan::Single(Wire::Dlt645 {
                    address: None,
                    request: dlt645::Request::Read(di),
                }))
            }
            DeviceCommand::Modbus(request) => {
                let (_, slave) = target.ok_or_else(no_profile)?;
                request
                    .validate()
                    .map_err(|e| CommandError::Invalid(e.to_string()))?;
                Ok(Plan::Single(Wire::modbus(meter, slave, request)))
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
                        tcp: tcp_of(meter),
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
    let then = Wire::modbus(profile.meter, slave, request);
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
        .filter_map(Poll::block)
        .find(|p| {
            let end = u32::from(p.start) + u32::from(p.count);
            p.start <= point.address && u32::from(point.address) + u32::from(width) <= end
        })
        .map_or(3, |p| p.function);
    let read = Request::read(function, point.address, width)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    Ok(Plan::Checked {
        read: Wire::modbus(profile.meter, slave, read),
        point: point.clone(),
        require: require.clone(),
        then,
    })
}
