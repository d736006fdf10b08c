//! Modbus RTU framing: the ADU as it crosses a serial line (slave address, PDU, CRC-16),
//! master side (polls and commands) and slave side (the simulator).
//!
//! Every function that looks at bytes from a device is total: it never panics, whatever the
//! bytes are, and reports what is wrong through [`ModbusError`]. Device exceptions
//! ([`ModbusError::Exception`]) are kept apart from transport faults (CRC, slave, length).

use crate::protocol::hex::to_hex;
use crate::protocol::modbus::{
    bad_length, be16, bit_bytes, coil_word, len_u16, unpack_bits, ModbusError, Request, Response,
};

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

impl Request {
    /// The full ADU with CRC. Call [`Request::validate`] first: an invalid request still
    /// encodes (lengths saturate), to a frame a device rejects.
    pub fn encode(&self, slave: u8) -> Vec<u8> {
        let mut adu = Vec::with_capacity(16);
        adu.push(slave);
        adu.extend_from_slice(&self.pdu());
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

impl Response {
    /// Slave side: this response's ADU (with CRC) for `function`. Oversized payloads
    /// saturate the byte count; the simulator only builds responses to validated requests.
    pub fn encode(&self, slave: u8, function: u8) -> Vec<u8> {
        let mut adu = vec![slave];
        adu.extend_from_slice(&self.pdu(function));
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
    check_body(slave, function, body, adu)?;
    Ok(body)
}

/// Checks the slave (or unit) and the function of `body` (`slave | function | data`, the
/// framing's own bytes removed; `adu` is the frame, for messages): an exception is
/// `Err(Exception)`.
pub(crate) fn check_body(
    slave: u8,
    function: u8,
    body: &[u8],
    adu: &[u8],
) -> Result<(), ModbusError> {
    let (got_slave, got_function) = match body {
        [s, f, ..] => (*s, *f),
        _ => return Err(bad_length(adu, "response without slave and function")),
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
    Ok(())
}

/// Parse a complete response ADU to `request` sent to `slave`: checks CRC, slave, function,
/// byte count vs requested count, echo fields for writes; a function|0x80 frame =>
/// `Err(Exception)`.
pub fn parse_response(slave: u8, request: &Request, adu: &[u8]) -> Result<Response, ModbusError> {
    let body = check_header(slave, request.function(), adu)?;
    parse_body(request, body, adu)
}

/// The response in `body` (`slave | function | data`, slave and function checked by
/// [`check_body`]) to `request`; `adu` is the whole frame, for messages.
pub(crate) fn parse_body(
    request: &Request,
    body: &[u8],
    adu: &[u8],
) -> Result<Response, ModbusError> {
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

/// Length of the response ADU at the start of `buf` (`buf[0]` = slave, `buf[1]` = function or
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

/// Slave side: the length of the request ADU at the start of `buf` (`buf[1]` is its
/// function), CRC included, once the bytes present tell it; None for a function without a
/// length rule here or while more bytes are needed.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    match buf.get(1)? {
        1..=6 => Some(8),
        15 | 16 => buf.get(6).map(|n| 9 + usize::from(*n)),
        _ => None,
    }
}

/// Slave side, on a link without framing: where the first request with a valid CRC in `buf`
/// is, as `(start, len)`, sliding over junk before it (the server's answers to registration
/// and heartbeat, corrupted frames). A frame of a function without a length rule counts when
/// it runs to the end of `buf` with a valid CRC (a slave answers it exception 1). None: no
/// complete request yet.
pub fn find_request(buf: &[u8]) -> Option<(usize, usize)> {
    for start in 0..buf.len() {
        let rest = buf.get(start..).unwrap_or_default();
        let Some(&function) = rest.get(1) else {
            break;
        };
        if rest.len() < 4 {
            break;
        }
        if matches!(function, 1..=6 | 15 | 16) {
            if let Some(len) = request_len(rest) {
                if rest.get(..len).is_some_and(check_crc) {
                    return Some((start, len));
                }
            }
        } else if rest.len() <= MAX_ADU && check_crc(rest) {
            return Some((start, rest.len()));
        }
    }
    None
}

#[cfg(test)]
#[path = "rtu_tests.rs"]
mod tests;
