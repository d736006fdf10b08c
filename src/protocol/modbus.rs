//! Modbus RTU framing, master side (polls and commands) and slave side (the simulator).
//!
//! Every function that looks at bytes from a device is total: it never panics, whatever the
//! bytes are, and reports what is wrong through [`ModbusError`]. Device exceptions
//! ([`ModbusError::Exception`]) are kept apart from transport faults (CRC, slave, length).

use std::fmt::Write as _;

/// Largest RTU ADU: slave + 253-byte PDU + CRC.
pub const MAX_ADU: usize = 256;

/// CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF); transmitted little-endian.
const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// CRC-16/MODBUS of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    CRC.checksum(data)
}

/// Appends the CRC of `frame` to it, low byte first as RTU sends it.
pub fn append_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// True if `adu` ends with the CRC of what precedes it; false if it is shorter than 3 bytes.
pub fn check_crc(adu: &[u8]) -> bool {
    if adu.len() < 3 {
        return false;
    }
    let (body, tail) = adu.split_at(adu.len() - 2);
    tail == crc16(body).to_le_bytes()
}

/// Parses "01 03 07 D0 00 01", "0103 07d0", "01:03..." (whitespace, colons and dashes
/// ignored, case-insensitive). An empty or separator-only string is an empty vector, so an
/// empty `reply = ""` in the settings means "no bytes".
pub fn parse_hex(s: &str) -> Result<Vec<u8>, ModbusError> {
    let mut digits = Vec::with_capacity(s.len());
    for (pos, c) in s.char_indices() {
        if c.is_whitespace() || c == ':' || c == '-' {
            continue;
        }
        match c.to_digit(16) {
            // to_digit(16) is at most 15, so the cast is lossless.
            Some(d) => digits.push(d as u8),
            None => {
                return Err(ModbusError::InvalidHex(format!(
                    "invalid character {c:?} at position {pos} in {s:?}"
                )))
            }
        }
    }
    if digits.len() % 2 != 0 {
        return Err(ModbusError::InvalidHex(format!(
            "odd number of hex digits ({}) in {s:?}",
            digits.len()
        )));
    }
    Ok(digits
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => (hi << 4) | lo,
            _ => 0, // chunks_exact(2) never yields another length
        })
        .collect())
}

/// Appends the CRC unless the last two bytes already are the CRC of what precedes them.
///
/// Operators paste frames with or without CRC; a frame whose last two bytes happen to equal
/// the CRC of the rest (1 in 65536) is taken as already carrying one.
pub fn ensure_crc(mut frame: Vec<u8>) -> Vec<u8> {
    if !check_crc(&frame) {
        append_crc(&mut frame);
    }
    frame
}

/// "01 03 07 D0": uppercase, space separated; the one format of bytes in every log line.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out
}

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
    #[error("response to function {got}, expected function {expected}")]
    WrongFunction { expected: u8, got: u8 },
    #[error("bad length ({reason}) in frame {hex}")]
    BadLength { hex: String, reason: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid hex: {0}")]
    InvalidHex(String),
}

fn bad_length(adu: &[u8], reason: impl Into<String>) -> ModbusError {
    ModbusError::BadLength {
        hex: to_hex(adu),
        reason: reason.into(),
    }
}

/// Big-endian u16 at `at`, if the bytes are there.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at.checked_add(2)?)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Packs bits LSB first, as FC1/2 responses and FC15 requests carry them.
fn pack_bits(bits: &[bool]) -> Vec<u8> {
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
fn unpack_bits(bytes: &[u8], count: usize) -> Vec<bool> {
    bytes
        .iter()
        .flat_map(|byte| (0..8).map(move |i| byte & (1 << i) != 0))
        .take(count)
        .collect()
}

/// Bytes needed to carry `n` bits.
fn bit_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// A length as a u16 field; invalid (unvalidated) requests saturate instead of wrapping.
fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A length as a u8 byte count; saturates for the same reason.
fn len_u8(n: usize) -> u8 {
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

    /// The full ADU with CRC. Call [`Request::validate`] first: an invalid request still
    /// encodes (lengths saturate), to a frame a device rejects.
    pub fn encode(&self, slave: u8) -> Vec<u8> {
        let mut adu = Vec::with_capacity(16);
        adu.push(slave);
        adu.push(self.function());
        match self {
            Request::ReadCoils { start, count }
            | Request::ReadDiscreteInputs { start, count }
            | Request::ReadHoldingRegisters { start, count }
            | Request::ReadInputRegisters { start, count } => {
                adu.extend_from_slice(&start.to_be_bytes());
                adu.extend_from_slice(&count.to_be_bytes());
            }
            Request::WriteSingleCoil { address, value } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&coil_word(*value).to_be_bytes());
            }
            Request::WriteSingleRegister { address, value } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&value.to_be_bytes());
            }
            Request::WriteMultipleCoils { address, values } => {
                let packed = pack_bits(values);
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&len_u16(values.len()).to_be_bytes());
                adu.push(len_u8(packed.len()));
                adu.extend_from_slice(&packed);
            }
            Request::WriteMultipleRegisters { address, values } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&len_u16(values.len()).to_be_bytes());
                adu.push(len_u8(values.len().saturating_mul(2)));
                for v in values {
                    adu.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        append_crc(&mut adu);
        adu
    }

    /// Slave side (the simulator): a request ADU (CRC checked) -> (slave, request).
    ///
    /// Framing faults (too short, bad CRC, length not matching the byte count) are
    /// `BadCrc`/`BadLength`: a real slave stays silent. A well-framed request that a slave
    /// must refuse is `Err(Exception { function, code })` with the code to answer with:
    /// 1 unknown function, 3 bad quantity / byte count / coil value, 2 address range.
    pub fn decode(adu: &[u8]) -> Result<(u8, Request), ModbusError> {
        if adu.len() < 4 {
            return Err(bad_length(adu, "request shorter than 4 bytes"));
        }
        if !check_crc(adu) {
            return Err(ModbusError::BadCrc { hex: to_hex(adu) });
        }
        let body = adu.get(..adu.len() - 2).unwrap_or_default();
        let (slave, function) = match body {
            [slave, function, ..] => (*slave, *function),
            _ => return Err(bad_length(adu, "request shorter than 4 bytes")),
        };
        let refuse = |code: u8| ModbusError::Exception { function, code };
        let fixed = |body: &[u8]| -> Result<(u16, u16), ModbusError> {
            match (body.len(), be16(body, 2), be16(body, 4)) {
                (6, Some(a), Some(b)) => Ok((a, b)),
                (n, _, _) => Err(bad_length(
                    adu,
                    format!("function {function} request is 8 bytes, got {}", n + 2),
                )),
            }
        };
        let request = match function {
            1..=4 => {
                let (start, count) = fixed(body)?;
                match function {
                    1 => Request::ReadCoils { start, count },
                    2 => Request::ReadDiscreteInputs { start, count },
                    3 => Request::ReadHoldingRegisters { start, count },
                    _ => Request::ReadInputRegisters { start, count },
                }
            }
            5 => {
                let (address, word) = fixed(body)?;
                let value = match word {
                    0xFF00 => true,
                    0x0000 => false,
                    _ => return Err(refuse(3)),
                };
                Request::WriteSingleCoil { address, value }
            }
            6 => {
                let (address, value) = fixed(body)?;
                Request::WriteSingleRegister { address, value }
            }
            15 | 16 => {
                let (address, quantity, byte_count) =
                    match (be16(body, 2), be16(body, 4), body.get(6)) {
                        (Some(a), Some(q), Some(bc)) => (a, q, usize::from(*bc)),
                        _ => return Err(bad_length(adu, "write request header truncated")),
                    };
                let data = body.get(7..).unwrap_or_default();
                if data.len() != byte_count {
                    return Err(bad_length(
                        adu,
                        format!("byte count {byte_count} but {} data bytes", data.len()),
                    ));
                }
                let quantity = usize::from(quantity);
                if function == 15 {
                    if byte_count != bit_bytes(quantity) {
                        return Err(refuse(3));
                    }
                    Request::WriteMultipleCoils {
                        address,
                        values: unpack_bits(data, quantity),
                    }
                } else {
                    if byte_count != quantity.saturating_mul(2) {
                        return Err(refuse(3));
                    }
                    Request::WriteMultipleRegisters {
                        address,
                        values: data
                            .chunks_exact(2)
                            .map(|w| match w {
                                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                                _ => 0,
                            })
                            .collect(),
                    }
                }
            }
            _ => return Err(refuse(1)),
        };
        request.check().map_err(|invalid| refuse(invalid.code))?;
        Ok((slave, request))
    }
}

/// FC5 coil value on the wire.
fn coil_word(on: bool) -> u16 {
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
    /// Slave side: this response's ADU (with CRC) for `function`. Oversized payloads
    /// saturate the byte count; the simulator only builds responses to validated requests.
    pub fn encode(&self, slave: u8, function: u8) -> Vec<u8> {
        let mut adu = vec![slave, function];
        match self {
            Response::Bits(bits) => {
                let packed = pack_bits(bits);
                adu.push(len_u8(packed.len()));
                adu.extend_from_slice(&packed);
            }
            Response::Registers(registers) => {
                adu.push(len_u8(registers.len().saturating_mul(2)));
                for r in registers {
                    adu.extend_from_slice(&r.to_be_bytes());
                }
            }
            Response::WriteSingleCoil { address, value } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&coil_word(*value).to_be_bytes());
            }
            Response::WriteSingleRegister { address, value } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&value.to_be_bytes());
            }
            Response::WriteMultiple { address, count } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&count.to_be_bytes());
            }
        }
        append_crc(&mut adu);
        adu
    }
}

/// An exception response: `function | 0x80`, `code`, CRC.
pub fn exception_adu(slave: u8, function: u8, code: u8) -> Vec<u8> {
    let mut adu = vec![slave, function | 0x80, code];
    append_crc(&mut adu);
    adu
}

/// Checks what every response shares: length, CRC, slave, function or exception.
/// Returns the ADU without its CRC.
fn check_header(slave: u8, function: u8, adu: &[u8]) -> Result<&[u8], ModbusError> {
    if adu.len() < 5 {
        return Err(bad_length(adu, "response shorter than 5 bytes"));
    }
    if !check_crc(adu) {
        return Err(ModbusError::BadCrc { hex: to_hex(adu) });
    }
    let body = adu.get(..adu.len() - 2).unwrap_or_default();
    let (got_slave, got_function) = match body {
        [s, f, ..] => (*s, *f),
        _ => return Err(bad_length(adu, "response shorter than 5 bytes")),
    };
    if got_slave != slave {
        return Err(ModbusError::WrongSlave {
            expected: slave,
            got: got_slave,
        });
    }
    if got_function == function | 0x80 && got_function != function {
        return match body {
            [_, _, code] => Err(ModbusError::Exception {
                function,
                code: *code,
            }),
            _ => Err(bad_length(adu, "exception response is 5 bytes")),
        };
    }
    if got_function != function {
        return Err(ModbusError::WrongFunction {
            expected: function,
            got: got_function,
        });
    }
    Ok(body)
}

/// Parse a complete response ADU to `request` sent to `slave`: checks CRC, slave, function,
/// byte count vs requested count, echo fields for writes; a function|0x80 frame =>
/// `Err(Exception)`.
pub fn parse_response(slave: u8, request: &Request, adu: &[u8]) -> Result<Response, ModbusError> {
    let body = check_header(slave, request.function(), adu)?;
    // Read responses: slave, function, byte count, data.
    let read_data = |expected: usize| -> Result<&[u8], ModbusError> {
        let byte_count = body.get(2).map(|b| usize::from(*b));
        let data = body.get(3..).unwrap_or_default();
        match byte_count {
            Some(bc) if bc != expected => Err(bad_length(
                adu,
                format!("byte count {bc}, expected {expected} for the requested count"),
            )),
            Some(bc) if data.len() != bc => Err(bad_length(
                adu,
                format!("byte count {bc} but {} data bytes", data.len()),
            )),
            Some(_) => Ok(data),
            None => Err(bad_length(adu, "no byte count")),
        }
    };
    // Write responses: slave, function, two echoed words.
    let echo = || -> Result<(u16, u16), ModbusError> {
        match (body.len(), be16(body, 2), be16(body, 4)) {
            (6, Some(a), Some(b)) => Ok((a, b)),
            (n, _, _) => Err(bad_length(
                adu,
                format!("write response is 8 bytes, got {}", n + 2),
            )),
        }
    };
    let mismatch = |what: &str, got: u16, sent: u16| {
        bad_length(adu, format!("echoed {what} {got}, sent {sent}"))
    };
    match request {
        Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. } => {
            let count = usize::from(*count);
            let data = read_data(bit_bytes(count))?;
            Ok(Response::Bits(unpack_bits(data, count)))
        }
        Request::ReadHoldingRegisters { count, .. } | Request::ReadInputRegisters { count, .. } => {
            let data = read_data(usize::from(*count) * 2)?;
            Ok(Response::Registers(
                data.chunks_exact(2)
                    .map(|w| match w {
                        [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                        _ => 0,
                    })
                    .collect(),
            ))
        }
        Request::WriteSingleCoil { address, value } => {
            let (a, word) = echo()?;
            if a != *address {
                return Err(mismatch("address", a, *address));
            }
            if word != coil_word(*value) {
                return Err(mismatch("coil value", word, coil_word(*value)));
            }
            Ok(Response::WriteSingleCoil {
                address: a,
                value: *value,
            })
        }
        Request::WriteSingleRegister { address, value } => {
            let (a, v) = echo()?;
            if a != *address {
                return Err(mismatch("address", a, *address));
            }
            if v != *value {
                return Err(mismatch("value", v, *value));
            }
            Ok(Response::WriteSingleRegister {
                address: a,
                value: v,
            })
        }
        Request::WriteMultipleCoils { address, values } => {
            write_multiple_echo(echo()?, *address, values.len(), mismatch)
        }
        Request::WriteMultipleRegisters { address, values } => {
            write_multiple_echo(echo()?, *address, values.len(), mismatch)
        }
    }
}

fn write_multiple_echo(
    (a, c): (u16, u16),
    address: u16,
    sent_count: usize,
    mismatch: impl Fn(&str, u16, u16) -> ModbusError,
) -> Result<Response, ModbusError> {
    if a != address {
        return Err(mismatch("address", a, address));
    }
    if usize::from(c) != sent_count {
        return Err(mismatch("count", c, len_u16(sent_count)));
    }
    Ok(Response::WriteMultiple {
        address: a,
        count: c,
    })
}

/// For "raw" operator commands: checks CRC, slave and function (or exception), and that the
/// length fits the function's framing where it is known; returns the ADU (CRC included).
pub fn parse_raw_response(slave: u8, function: u8, adu: &[u8]) -> Result<Vec<u8>, ModbusError> {
    check_header(slave, function, adu)?;
    match response_len(adu) {
        Some(n) if n != adu.len() => Err(bad_length(
            adu,
            format!(
                "function {function} response should be {n} bytes, got {}",
                adu.len()
            ),
        )),
        _ => Ok(adu.to_vec()),
    }
}

/// Length of the response ADU at the start of `buf` (buf[0]=slave, buf[1]=function or
/// |0x80), including CRC: None until enough header bytes are there.
///
/// Exceptions 5; FC5/6/15/16 (and 0B): 8; FC1-4 (and the other byte-count functions
/// 0C/11/14/15/17): 5 + byte_count; FC7: 5; FC16h: 10; FC18h: 6 + u16 byte count. Any other
/// function has no length rule, so waiting for a header would wait forever: it is the
/// shortest prefix (4..=MAX_ADU bytes) that ends in its own CRC, None while there is none
/// (the caller caps the wait at MAX_ADU).
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    if function & 0x80 != 0 {
        return Some(5);
    }
    match function {
        1..=4 | 0x0C | 0x11 | 0x14 | 0x15 | 0x17 => buf.get(2).map(|bc| 5 + usize::from(*bc)),
        5 | 6 | 0x0B | 0x0F | 0x10 => Some(8),
        7 => Some(5),
        0x16 => Some(10),
        0x18 => be16(buf, 2).map(|bc| 6 + usize::from(bc)),
        _ => crc_prefix_len(buf),
    }
}

/// Shortest prefix of 4..=MAX_ADU bytes that ends with the CRC of what precedes it.
fn crc_prefix_len(buf: &[u8]) -> Option<usize> {
    let mut digest = CRC.digest();
    // Before checking prefix `end`, the digest covers buf[..end - 2].
    digest.update(buf.get(..2)?);
    for end in 4..=buf.len().min(MAX_ADU) {
        let tail = buf.get(end - 2..end)?;
        if tail == digest.clone().finalize().to_le_bytes() {
            return Some(end);
        }
        digest.update(buf.get(end - 2..end - 1)?);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(&h("01 03 00 00 00 0A")), 0xCDC5);
    }

    #[test]
    fn check_and_append_crc() {
        let mut f = h("01 03 00 00 00 0A");
        append_crc(&mut f);
        assert_eq!(f, h("01 03 00 00 00 0A C5 CD"));
        assert!(check_crc(&f));
        assert!(!check_crc(&h("01 03 00 00 00 0A CD C5")));
        assert!(!check_crc(&[]));
        assert!(!check_crc(&[0x01]));
        assert!(!check_crc(&[0xFF, 0xFF]));
    }

    #[test]
    fn parse_hex_forms() {
        assert_eq!(h("01 03 07 D0 00 01"), vec![1, 3, 7, 0xD0, 0, 1]);
        assert_eq!(h("0103 07d0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h("01:03:07:d0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h("01-03-07-D0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h(" 01\t03\n"), vec![1, 3]);
        assert_eq!(h(""), Vec::<u8>::new());
        assert!(matches!(parse_hex("013"), Err(ModbusError::InvalidHex(_))));
        assert!(matches!(parse_hex("0g"), Err(ModbusError::InvalidHex(_))));
        assert!(matches!(parse_hex("0x01"), Err(ModbusError::InvalidHex(_))));
        assert!(matches!(parse_hex("é1"), Err(ModbusError::InvalidHex(_))));
    }

    #[test]
    fn to_hex_format() {
        assert_eq!(to_hex(&[1, 3, 7, 0xD0]), "01 03 07 D0");
        assert_eq!(to_hex(&[]), "");
        assert_eq!(to_hex(&[0xab]), "AB");
    }

    #[test]
    fn ensure_crc_adds_once() {
        assert_eq!(
            ensure_crc(h("01 03 00 00 00 0A")),
            h("01 03 00 00 00 0A C5 CD")
        );
        assert_eq!(
            ensure_crc(h("01 03 00 00 00 0A C5 CD")),
            h("01 03 00 00 00 0A C5 CD")
        );
        let short = ensure_crc(vec![0x01]);
        assert_eq!(short.len(), 3);
        assert!(check_crc(&short));
        assert_eq!(ensure_crc(Vec::new()), vec![0xFF, 0xFF]);
    }

    /// Requests from the Simply Modbus reference examples (slave 0x11).
    #[test]
    fn request_known_good_bytes() {
        let cases = [
            (
                Request::ReadCoils {
                    start: 0x13,
                    count: 0x25,
                },
                "11 01 00 13 00 25 0E 84",
            ),
            (
                Request::ReadDiscreteInputs {
                    start: 0xC4,
                    count: 0x16,
                },
                "11 02 00 C4 00 16 BA A9",
            ),
            (
                Request::ReadHoldingRegisters {
                    start: 0x6B,
                    count: 3,
                },
                "11 03 00 6B 00 03 76 87",
            ),
            (
                Request::ReadInputRegisters { start: 8, count: 1 },
                "11 04 00 08 00 01 B2 98",
            ),
            (
                Request::WriteSingleCoil {
                    address: 0xAC,
                    value: true,
                },
                "11 05 00 AC FF 00 4E 8B",
            ),
            (
                Request::WriteSingleRegister {
                    address: 1,
                    value: 3,
                },
                "11 06 00 01 00 03 9A 9B",
            ),
            (
                Request::WriteMultipleCoils {
                    address: 0x13,
                    values: vec![
                        true, false, true, true, false, false, true, true, true, false,
                    ],
                },
                "11 0F 00 13 00 0A 02 CD 01 BF 0B",
            ),
            (
                Request::WriteMultipleRegisters {
                    address: 1,
                    values: vec![0x000A, 0x0102],
                },
                "11 10 00 01 00 02 04 00 0A 01 02 C6 F0",
            ),
        ];
        for (request, hex) in cases {
            assert_eq!(to_hex(&request.encode(0x11)), hex, "{request:?}");
            assert_eq!(Request::decode(&h(hex)), Ok((0x11, request)));
        }
        assert_eq!(
            Request::read(3, 0, 10).unwrap().encode(1),
            h("01 03 00 00 00 0A C5 CD")
        );
        assert_eq!(
            to_hex(&Request::read(3, 2000, 1).unwrap().encode(1)),
            "01 03 07 D0 00 01 84 87"
        );
    }

    /// Responses from the same reference examples.
    #[test]
    fn response_known_good_bytes() {
        let coils = Request::ReadCoils {
            start: 0x13,
            count: 0x25,
        };
        let adu = h("11 01 05 CD 6B B2 0E 1B 45 E6");
        let Ok(Response::Bits(bits)) = parse_response(0x11, &coils, &adu) else {
            panic!("bits");
        };
        assert_eq!(bits.len(), 37);
        assert_eq!(
            &bits[..8],
            &[true, false, true, true, false, false, true, true]
        );
        assert_eq!(Response::Bits(bits).encode(0x11, 1), adu);

        let regs = Request::ReadHoldingRegisters {
            start: 0x6B,
            count: 3,
        };
        let adu = h("11 03 06 AE 41 56 52 43 40 49 AD");
        let r = parse_response(0x11, &regs, &adu).unwrap();
        assert_eq!(r, Response::Registers(vec![0xAE41, 0x5652, 0x4340]));
        assert_eq!(r.encode(0x11, 3), adu);

        let input = Request::ReadInputRegisters { start: 8, count: 1 };
        let adu = h("11 04 02 00 0A F8 F4");
        assert_eq!(
            parse_response(0x11, &input, &adu),
            Ok(Response::Registers(vec![10]))
        );

        let coil = Request::WriteSingleCoil {
            address: 0xAC,
            value: true,
        };
        let adu = h("11 05 00 AC FF 00 4E 8B");
        assert_eq!(
            parse_response(0x11, &coil, &adu),
            Ok(Response::WriteSingleCoil {
                address: 0xAC,
                value: true
            })
        );

        let multi = Request::WriteMultipleCoils {
            address: 0x13,
            values: vec![false; 10],
        };
        let adu = h("11 0F 00 13 00 0A 26 99");
        let r = parse_response(0x11, &multi, &adu).unwrap();
        assert_eq!(
            r,
            Response::WriteMultiple {
                address: 0x13,
                count: 10
            }
        );
        assert_eq!(r.encode(0x11, 15), adu);

        let regs = Request::WriteMultipleRegisters {
            address: 1,
            values: vec![10, 258],
        };
        let adu = h("11 10 00 01 00 02 12 98");
        assert_eq!(
            parse_response(0x11, &regs, &adu),
            Ok(Response::WriteMultiple {
                address: 1,
                count: 2
            })
        );
    }

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

    #[test]
    fn decode_refusals_carry_exception_codes() {
        let exc = |f, code| Err(ModbusError::Exception { function: f, code });
        // Unknown function.
        assert_eq!(
            Request::decode(&ensure_crc(h("01 2B 0E 01 00 00"))),
            exc(0x2B, 1)
        );
        // Count out of range / address overflow.
        assert_eq!(
            Request::decode(&ensure_crc(h("01 03 00 00 00 7E"))),
            exc(3, 3)
        );
        assert_eq!(
            Request::decode(&ensure_crc(h("01 03 00 00 00 00"))),
            exc(3, 3)
        );
        assert_eq!(
            Request::decode(&ensure_crc(h("01 03 FF FF 00 02"))),
            exc(3, 2)
        );
        // Coil value neither FF00 nor 0000.
        assert_eq!(
            Request::decode(&ensure_crc(h("01 05 00 01 12 34"))),
            exc(5, 3)
        );
        // Byte count not fitting the quantity.
        assert_eq!(
            Request::decode(&ensure_crc(h("01 10 00 01 00 02 02 00 0A"))),
            exc(16, 3)
        );
        assert_eq!(
            Request::decode(&ensure_crc(h("01 0F 00 01 00 09 01 FF"))),
            exc(15, 3)
        );
        // Framing faults.
        assert!(matches!(
            Request::decode(&h("01 03 00 00 00 0A C5 CE")),
            Err(ModbusError::BadCrc { .. })
        ));
        assert!(matches!(
            Request::decode(&ensure_crc(h("01 03 00 00 00"))),
            Err(ModbusError::BadLength { .. })
        ));
        assert!(matches!(
            Request::decode(&ensure_crc(h("01 10 00 01 00 02 04 00 0A"))),
            Err(ModbusError::BadLength { .. })
        ));
        assert!(matches!(
            Request::decode(&[]),
            Err(ModbusError::BadLength { .. })
        ));
        assert!(matches!(
            Request::decode(&[1, 2, 3]),
            Err(ModbusError::BadLength { .. })
        ));
    }

    #[test]
    fn exceptions() {
        let adu = exception_adu(1, 3, 2);
        assert_eq!(to_hex(&adu), "01 83 02 C0 F1");
        let req = Request::read(3, 0, 1).unwrap();
        let err = parse_response(1, &req, &adu).unwrap_err();
        assert_eq!(
            err,
            ModbusError::Exception {
                function: 3,
                code: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "modbus exception 2 (illegal data address) to function 3"
        );
        assert_eq!(parse_raw_response(1, 3, &adu), Err(err));
        // Exception to another function is a wrong function.
        assert_eq!(
            parse_response(1, &req, &exception_adu(1, 4, 2)),
            Err(ModbusError::WrongFunction {
                expected: 3,
                got: 0x84
            })
        );
        assert_eq!(exception_name(11), "gateway target failed to respond");
        assert_eq!(exception_name(7), "unknown");
        assert_eq!(exception_name(9), "unknown");
    }

    #[test]
    fn response_faults() {
        let req = Request::read(3, 0, 2).unwrap();
        let good = Response::Registers(vec![1, 2]).encode(1, 3);
        assert_eq!(
            parse_response(1, &req, &good),
            Ok(Response::Registers(vec![1, 2]))
        );

        let mut bad = good.clone();
        bad[3] ^= 1;
        assert!(matches!(
            parse_response(1, &req, &bad),
            Err(ModbusError::BadCrc { .. })
        ));
        assert_eq!(
            parse_response(2, &req, &good),
            Err(ModbusError::WrongSlave {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            parse_response(1, &Request::read(4, 0, 2).unwrap(), &good),
            Err(ModbusError::WrongFunction {
                expected: 4,
                got: 3
            })
        );
        // Byte count for 3 registers, 2 requested.
        let three = Response::Registers(vec![1, 2, 3]).encode(1, 3);
        assert!(matches!(
            parse_response(1, &req, &three),
            Err(ModbusError::BadLength { .. })
        ));
        // Byte count says 4, 6 data bytes present.
        let lying = ensure_crc(h("01 03 04 00 01 00 02 00 03"));
        assert!(matches!(
            parse_response(1, &req, &lying),
            Err(ModbusError::BadLength { .. })
        ));
        // Too short in every way.
        for n in 0..5 {
            assert!(matches!(
                parse_response(1, &req, &good[..n]),
                Err(ModbusError::BadLength { .. })
            ));
        }
        // Bits: 10 coils need 2 bytes.
        let coils = Request::read(1, 0, 10).unwrap();
        let one_byte = Response::Bits(vec![true; 8]).encode(1, 1);
        assert!(matches!(
            parse_response(1, &coils, &one_byte),
            Err(ModbusError::BadLength { .. })
        ));
        // Echo mismatches.
        let write = Request::WriteSingleRegister {
            address: 5,
            value: 7,
        };
        let other = Response::WriteSingleRegister {
            address: 5,
            value: 8,
        }
        .encode(1, 6);
        assert!(matches!(
            parse_response(1, &write, &other),
            Err(ModbusError::BadLength { .. })
        ));
        let other = Response::WriteSingleRegister {
            address: 6,
            value: 7,
        }
        .encode(1, 6);
        assert!(matches!(
            parse_response(1, &write, &other),
            Err(ModbusError::BadLength { .. })
        ));
        let coil = Request::WriteSingleCoil {
            address: 5,
            value: false,
        };
        let other = Response::WriteSingleCoil {
            address: 5,
            value: true,
        }
        .encode(1, 5);
        assert!(matches!(
            parse_response(1, &coil, &other),
            Err(ModbusError::BadLength { .. })
        ));
        let multi = Request::WriteMultipleRegisters {
            address: 5,
            values: vec![1, 2],
        };
        let other = Response::WriteMultiple {
            address: 5,
            count: 3,
        }
        .encode(1, 16);
        assert!(matches!(
            parse_response(1, &multi, &other),
            Err(ModbusError::BadLength { .. })
        ));
        let long = ensure_crc(h("01 10 00 05 00 02 00"));
        assert!(matches!(
            parse_response(1, &multi, &long),
            Err(ModbusError::BadLength { .. })
        ));
        // A long exception frame.
        let long_exc = ensure_crc(h("01 83 02 00"));
        assert!(matches!(
            parse_response(1, &req, &long_exc),
            Err(ModbusError::BadLength { .. })
        ));
    }

    #[test]
    fn raw_responses() {
        let adu = Response::Registers(vec![1]).encode(1, 3);
        assert_eq!(parse_raw_response(1, 3, &adu), Ok(adu.clone()));
        assert!(matches!(
            parse_raw_response(2, 3, &adu),
            Err(ModbusError::WrongSlave { .. })
        ));
        assert!(matches!(
            parse_raw_response(1, 4, &adu),
            Err(ModbusError::WrongFunction { .. })
        ));
        // Unknown function: anything framed by its CRC.
        let diag = ensure_crc(h("01 08 00 00 12 34"));
        assert_eq!(parse_raw_response(1, 8, &diag), Ok(diag.clone()));
        // Known function whose length does not fit its byte count.
        let lying = ensure_crc(h("01 03 04 00 01"));
        assert!(matches!(
            parse_raw_response(1, 3, &lying),
            Err(ModbusError::BadLength { .. })
        ));
    }

    #[test]
    fn response_len_per_function() {
        assert_eq!(response_len(&[]), None);
        assert_eq!(response_len(&[1]), None);
        for f in 1..=4 {
            assert_eq!(response_len(&[1, f]), None);
            assert_eq!(response_len(&[1, f, 4]), Some(9));
            assert_eq!(response_len(&[1, f, 255, 0]), Some(260));
        }
        for f in [5, 6, 15, 16] {
            assert_eq!(response_len(&[1, f]), Some(8));
        }
        for f in [0x81, 0x83, 0x90, 0xFF] {
            assert_eq!(response_len(&[1, f]), Some(5));
        }
        assert_eq!(response_len(&[1, 0x18, 0]), None);
        assert_eq!(response_len(&[1, 0x18, 0, 6]), Some(12));
        assert_eq!(response_len(&[1, 0x16]), Some(10));
        // Unknown function: the shortest CRC-terminated prefix, growing byte by byte.
        let diag = ensure_crc(h("01 08 00 00 12 34"));
        for n in 0..diag.len() {
            assert_eq!(response_len(&diag[..n]), None, "prefix {n}");
        }
        assert_eq!(response_len(&diag), Some(diag.len()));
        let mut glued = diag.clone();
        glued.extend_from_slice(b"www.usr.cn");
        assert_eq!(response_len(&glued), Some(diag.len()));
        // Minimal unknown frame: slave, function, CRC.
        assert_eq!(response_len(&ensure_crc(vec![1, 0x41])), Some(4));
        // Every complete response built here is measured right.
        for adu in [
            Response::Bits(vec![true; 9]).encode(1, 2),
            Response::Registers(vec![7; 125]).encode(1, 4),
            Response::WriteMultiple {
                address: 1,
                count: 2,
            }
            .encode(1, 15),
            exception_adu(1, 16, 4),
        ] {
            assert_eq!(response_len(&adu), Some(adu.len()));
            assert!(adu.len() <= MAX_ADU);
        }
    }

    fn request_strategy() -> impl Strategy<Value = Request> {
        fn range(max: u16) -> impl Strategy<Value = (u16, u16)> {
            (1..=max).prop_flat_map(|count| (0..=(65536 - u32::from(count)) as u16, Just(count)))
        }
        prop_oneof![
            range(2000).prop_map(|(start, count)| Request::ReadCoils { start, count }),
            range(2000).prop_map(|(start, count)| Request::ReadDiscreteInputs { start, count }),
            range(125).prop_map(|(start, count)| Request::ReadHoldingRegisters { start, count }),
            range(125).prop_map(|(start, count)| Request::ReadInputRegisters { start, count }),
            (any::<u16>(), any::<bool>())
                .prop_map(|(address, value)| Request::WriteSingleCoil { address, value }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(address, value)| Request::WriteSingleRegister { address, value }),
            proptest::collection::vec(any::<bool>(), 1..=1968).prop_flat_map(|values| {
                let max = (65536 - values.len()) as u16;
                (0..=max, Just(values))
                    .prop_map(|(address, values)| Request::WriteMultipleCoils { address, values })
            }),
            proptest::collection::vec(any::<u16>(), 1..=123).prop_flat_map(|values| {
                let max = (65536 - values.len()) as u16;
                (0..=max, Just(values)).prop_map(|(address, values)| {
                    Request::WriteMultipleRegisters { address, values }
                })
            }),
        ]
    }

    /// A request and a response that fits it, with random read data.
    fn exchange_strategy() -> impl Strategy<Value = (Request, Response)> {
        request_strategy().prop_flat_map(|request| {
            let response: BoxedStrategy<Response> = match &request {
                Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. } => {
                    proptest::collection::vec(any::<bool>(), usize::from(*count))
                        .prop_map(Response::Bits)
                        .boxed()
                }
                Request::ReadHoldingRegisters { count, .. }
                | Request::ReadInputRegisters { count, .. } => {
                    proptest::collection::vec(any::<u16>(), usize::from(*count))
                        .prop_map(Response::Registers)
                        .boxed()
                }
                Request::WriteSingleCoil { address, value } => Just(Response::WriteSingleCoil {
                    address: *address,
                    value: *value,
                })
                .boxed(),
                Request::WriteSingleRegister { address, value } => {
                    Just(Response::WriteSingleRegister {
                        address: *address,
                        value: *value,
                    })
                    .boxed()
                }
                Request::WriteMultipleCoils { address, values } => Just(Response::WriteMultiple {
                    address: *address,
                    count: values.len() as u16,
                })
                .boxed(),
                Request::WriteMultipleRegisters { address, values } => {
                    Just(Response::WriteMultiple {
                        address: *address,
                        count: values.len() as u16,
                    })
                    .boxed()
                }
            };
            (Just(request), response)
        })
    }

    proptest! {
        #[test]
        fn request_round_trip(slave in any::<u8>(), request in request_strategy()) {
            prop_assert!(request.validate().is_ok());
            let adu = request.encode(slave);
            prop_assert!(adu.len() <= MAX_ADU);
            prop_assert!(check_crc(&adu));
            prop_assert_eq!(Request::decode(&adu), Ok((slave, request)));
        }

        #[test]
        fn response_round_trip(slave in any::<u8>(), (request, response) in exchange_strategy()) {
            let adu = response.encode(slave, request.function());
            prop_assert!(adu.len() <= MAX_ADU);
            prop_assert_eq!(response_len(&adu), Some(adu.len()));
            for n in 0..adu.len() {
                // No prefix claims to be complete and shorter than the frame.
                if let Some(len) = response_len(&adu[..n]) {
                    prop_assert_eq!(len, adu.len());
                }
            }
            prop_assert_eq!(parse_response(slave, &request, &adu), Ok(response));
            prop_assert_eq!(parse_raw_response(slave, request.function(), &adu), Ok(adu.clone()));
            let exc = exception_adu(slave, request.function(), 4);
            prop_assert_eq!(
                parse_response(slave, &request, &exc),
                Err(ModbusError::Exception { function: request.function(), code: 4 })
            );
        }

        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            request in request_strategy(),
        ) {
            let _ = Request::decode(&bytes);
            let _ = parse_response(bytes.first().copied().unwrap_or(0), &request, &bytes);
            let _ = parse_raw_response(1, 3, &bytes);
            if let Some(n) = response_len(&bytes) {
                prop_assert!(n >= 4);
            }
            let _ = parse_hex(&String::from_utf8_lossy(&bytes));
            let hex = to_hex(&bytes);
            prop_assert_eq!(parse_hex(&hex), Ok(bytes.clone()));
            if !bytes.is_empty() {
                let with_crc = ensure_crc(bytes.clone());
                prop_assert!(check_crc(&with_crc));
                prop_assert_eq!(ensure_crc(with_crc.clone()), with_crc);
            }
        }

        #[test]
        fn corrupted_responses_are_rejected(
            (request, response) in exchange_strategy(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut adu = response.encode(1, request.function());
            let i = flip.index(adu.len());
            adu[i] ^= 1 << bit;
            prop_assert!(parse_response(1, &request, &adu).is_err());
        }
    }
}
