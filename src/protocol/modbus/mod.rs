//! Modbus at the PDU level: requests and responses as the master builds and the slave
//! reads them, their validation, and the errors of the protocol. How a PDU crosses the wire
//! is a framing's business: [`rtu`] (slave address and CRC on a serial line) or [`tcp`] (the
//! MBAP header of Modbus TCP, passed through a transparent DTU).

pub mod rtu;
pub mod tcp;

use crate::protocol::hex::to_hex;

/// Human name of a Modbus exception code, for logs and API errors.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "slave device failure",
        5 => "acknowledge",
        6 => "slave device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target failed to respond",
        _ => "unknown",
    }
}

/// Everything that can be wrong with a Modbus frame or request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModbusError {
    /// The device answered with an exception (or, from [`Request::decode`], the exception a
    /// slave must answer with).
    #[error("modbus exception {code} ({}) to function {function}", exception_name(*code))]
    Exception { function: u8, code: u8 },
    #[error("bad CRC in frame {hex}")]
    BadCrc { hex: String },
    #[error("response from slave {got}, expected slave {expected}")]
    WrongSlave { expected: u8, got: u8 },
    #[error("response in transaction {got}, expected transaction {expected}")]
    WrongTransaction { expected: u16, got: u16 },
    #[error("response to function {got}, expected function {expected}")]
    WrongFunction { expected: u8, got: u8 },
    #[error("bad length ({reason}) in frame {hex}")]
    BadLength { hex: String, reason: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

pub(crate) fn bad_length(adu: &[u8], reason: impl Into<String>) -> ModbusError {
    ModbusError::BadLength {
        hex: to_hex(adu),
        reason: reason.into(),
    }
}

/// Big-endian u16 at `at`, if the bytes are there.
pub(crate) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at.checked_add(2)?)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Packs bits LSB first, as FC1/2 responses and FC15 requests carry them.
pub(crate) fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |acc, (i, &b)| if b { acc | (1 << i) } else { acc })
        })
        .collect()
}

/// Unpacks `count` bits LSB first (fewer if `bytes` is short; callers check lengths first).
pub(crate) fn unpack_bits(bytes: &[u8], count: usize) -> Vec<bool> {
    bytes
        .iter()
        .flat_map(|byte| (0..8).map(move |i| byte & (1 << i) != 0))
        .take(count)
        .collect()
}

/// Bytes needed to carry `n` bits.
pub(crate) fn bit_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// A length as a u16 field; invalid (unvalidated) requests saturate instead of wrapping.
pub(crate) fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A length as a u8 byte count; saturates for the same reason.
pub(crate) fn len_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// A Modbus request, master side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// FC1, count 1..=2000.
    ReadCoils { start: u16, count: u16 },
    /// FC2, count 1..=2000.
    ReadDiscreteInputs { start: u16, count: u16 },
    /// FC3, count 1..=125.
    ReadHoldingRegisters { start: u16, count: u16 },
    /// FC4, count 1..=125.
    ReadInputRegisters { start: u16, count: u16 },
    /// FC5, sent as FF00 (on) / 0000 (off).
    WriteSingleCoil { address: u16, value: bool },
    /// FC6.
    WriteSingleRegister { address: u16, value: u16 },
    /// FC15, 1..=1968 coils.
    WriteMultipleCoils { address: u16, values: Vec<bool> },
    /// FC16, 1..=123 registers.
    WriteMultipleRegisters { address: u16, values: Vec<u16> },
}

/// Why a request is invalid, with the exception code a slave answers it with.
struct Invalid {
    code: u8,
    message: String,
}

impl Request {
    /// A read request for function 1..=4, validated.
    pub fn read(function: u8, start: u16, count: u16) -> Result<Request, ModbusError> {
        let request = match function {
            1 => Request::ReadCoils { start, count },
            2 => Request::ReadDiscreteInputs { start, count },
            3 => Request::ReadHoldingRegisters { start, count },
            4 => Request::ReadInputRegisters { start, count },
            _ => {
                return Err(ModbusError::InvalidRequest(format!(
                    "function {function} is not a read function (1..=4)"
                )))
            }
        };
        request.validate()?;
        Ok(request)
    }

    /// The function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::ReadCoils { .. } => 1,
            Request::ReadDiscreteInputs { .. } => 2,
            Request::ReadHoldingRegisters { .. } => 3,
            Request::ReadInputRegisters { .. } => 4,
            Request::WriteSingleCoil { .. } => 5,
            Request::WriteSingleRegister { .. } => 6,
            Request::WriteMultipleCoils { .. } => 15,
            Request::WriteMultipleRegisters { .. } => 16,
        }
    }

    /// The length of a normal answer's PDU (function code and data): what the request asks
    /// for fixes it, so a link that cuts answers out of a byte stream need not trust the
    /// answer's own byte count.
    pub fn answer_pdu_len(&self) -> usize {
        match self {
            Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. } => {
                2 + usize::from(*count).div_ceil(8)
            }
            Request::ReadHoldingRegisters { count, .. }
            | Request::ReadInputRegisters { count, .. } => 2 + 2 * usize::from(*count),
            // Function, address and value or quantity.
            Request::WriteSingleCoil { .. }
            | Request::WriteSingleRegister { .. }
            | Request::WriteMultipleCoils { .. }
            | Request::WriteMultipleRegisters { .. } => 5,
        }
    }

    /// The PDU: function code and data, as every framing carries it.
    pub fn pdu(&self) -> Vec<u8> {
        let mut pdu = Vec::with_capacity(8);
        pdu.push(self.function());
        match self {
            Request::ReadCoils { start, count }
            | Request::ReadDiscreteInputs { start, count }
            | Request::ReadHoldingRegisters { start, count }
            | Request::ReadInputRegisters { start, count } => {
                pdu.extend_from_slice(&start.to_be_bytes());
                pdu.extend_from_slice(&count.to_be_bytes());
            }
            Request::WriteSingleCoil { address, value } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&coil_word(*value).to_be_bytes());
            }
            Request::WriteSingleRegister { address, value } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&value.to_be_bytes());
            }
            Request::WriteMultipleCoils { address, values } => {
                let packed = pack_bits(values);
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&len_u16(values.len()).to_be_bytes());
                pdu.push(len_u8(packed.len()));
                pdu.extend_from_slice(&packed);
            }
            Request::WriteMultipleRegisters { address, values } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&len_u16(values.len()).to_be_bytes());
                pdu.push(len_u8(values.len().saturating_mul(2)));
                for v in values {
                    pdu.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        pdu
    }

    /// Counts in range and `start + count` not past 65536.
    pub fn validate(&self) -> Result<(), ModbusError> {
        self.check()
            .map_err(|invalid| ModbusError::InvalidRequest(invalid.message))
    }

    /// The Modbus rules in the order a slave applies them: quantity (exception 3), then
    /// address range (exception 2).
    fn check(&self) -> Result<(), Invalid> {
        let (what, start, count, max) = match self {
            Request::ReadCoils { start, count } => {
                ("read coils", *start, usize::from(*count), 2000)
            }
            Request::ReadDiscreteInputs { start, count } => {
                ("read discrete inputs", *start, usize::from(*count), 2000)
            }
            Request::ReadHoldingRegisters { start, count } => {
                ("read holding registers", *start, usize::from(*count), 125)
            }
            Request::ReadInputRegisters { start, count } => {
                ("read input registers", *start, usize::from(*count), 125)
            }
            Request::WriteSingleCoil { .. } | Request::WriteSingleRegister { .. } => return Ok(()),
            Request::WriteMultipleCoils { address, values } => {
                ("write multiple coils", *address, values.len(), 1968)
            }
            Request::WriteMultipleRegisters { address, values } => {
                ("write multiple registers", *address, values.len(), 123)
            }
        };
        if !(1..=max).contains(&count) {
            return Err(Invalid {
                code: 3,
                message: format!("{what}: count {count} out of range 1..={max}"),
            });
        }
        if usize::from(start) + count > 0x1_0000 {
            return Err(Invalid {
                code: 2,
                message: format!("{what}: start {start} + count {count} passes address 65535"),
            });
        }
        Ok(())
    }
}

/// FC5 coil value on the wire.
pub(crate) fn coil_word(on: bool) -> u16 {
    if on {
        0xFF00
    } else {
        0x0000
    }
}

/// A decoded Modbus response.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// FC1/2, truncated to the requested count.
    Bits(Vec<bool>),
    /// FC3/4.
    Registers(Vec<u16>),
    WriteSingleCoil {
        address: u16,
        value: bool,
    },
    WriteSingleRegister {
        address: u16,
        value: u16,
    },
    /// FC15/16 echo.
    WriteMultiple {
        address: u16,
        count: u16,
    },
}

impl Response {
    /// Slave side: this response's PDU for `function`. Oversized payloads saturate the byte
    /// count; the simulator only builds responses to validated requests.
    pub fn pdu(&self, function: u8) -> Vec<u8> {
        let mut pdu = vec![function];
        match self {
            Response::Bits(bits) => {
                let packed = pack_bits(bits);
                pdu.push(len_u8(packed.len()));
                pdu.extend_from_slice(&packed);
            }
            Response::Registers(registers) => {
                pdu.push(len_u8(registers.len().saturating_mul(2)));
                for r in registers {
                    pdu.extend_from_slice(&r.to_be_bytes());
                }
            }
            Response::WriteSingleCoil { address, value } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&coil_word(*value).to_be_bytes());
            }
            Response::WriteSingleRegister { address, value } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&value.to_be_bytes());
            }
            Response::WriteMultiple { address, count } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&count.to_be_bytes());
            }
        }
        pdu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_validate() {
        assert!(Request::read(0, 0, 1).is_err());
        assert!(Request::read(5, 0, 1).is_err());
        assert!(Request::read(3, 0, 0).is_err());
        assert!(Request::read(3, 0, 125).is_ok());
        assert!(Request::read(3, 0, 126).is_err());
        assert!(Request::read(4, 65535, 1).is_ok());
        assert!(Request::read(4, 65535, 2).is_err());
        assert!(Request::read(1, 0, 2000).is_ok());
        assert!(Request::read(2, 0, 2001).is_err());
        assert!(Request::read(1, 63536, 2000).is_ok());
        assert!(Request::read(1, 63537, 2000).is_err());
        let coils = |n| Request::WriteMultipleCoils {
            address: 0,
            values: vec![true; n],
        };
        assert!(coils(0).validate().is_err());
        assert!(coils(1968).validate().is_ok());
        assert!(coils(1969).validate().is_err());
        let regs = |a, n| Request::WriteMultipleRegisters {
            address: a,
            values: vec![1; n],
        };
        assert!(regs(0, 123).validate().is_ok());
        assert!(regs(0, 124).validate().is_err());
        assert!(regs(65535, 1).validate().is_ok());
        assert!(regs(65535, 2).validate().is_err());
        assert!(Request::WriteSingleRegister {
            address: 65535,
            value: 1
        }
        .validate()
        .is_ok());
    }
}
