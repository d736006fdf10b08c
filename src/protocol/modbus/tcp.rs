//! Modbus TCP framing, as a Modbus TCP device behind a transparent DTU speaks it: the MBAP
//! header `transaction u16 | protocol u16 = 0 | length u16 (unit + PDU) | unit`, then the
//! PDU; big-endian, no CRC (Modbus Messaging on TCP/IP Implementation Guide V1.0b, §3.1.3).
//!
//! Master side: [`encode_request`], [`parse_response`] (the answer is matched by transaction,
//! protocol, unit, function and the length rules). Slave side, for the simulator: a request
//! becomes the RTU ADU its slave executes ([`to_rtu`]) and the RTU answer goes back in the
//! request's header ([`from_rtu`]). Every function reading device bytes is total.

use crate::protocol::modbus::rtu::{self, append_crc, check_body, parse_body};
use crate::protocol::modbus::{bad_length, be16, ModbusError, Request, Response};

/// The MBAP header with the unit id: transaction, protocol, length, unit.
pub const HEADER: usize = 7;
/// Largest ADU: the header's six bytes before the unit, then unit + 253-byte PDU.
pub const MAX_ADU: usize = 260;

/// The ADU of `pdu` for `unit` in transaction `transaction`.
pub fn frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut adu = Vec::with_capacity(HEADER + pdu.len());
    adu.extend_from_slice(&transaction.to_be_bytes());
    adu.extend_from_slice(&[0, 0]);
    // The length counts the unit and the PDU; a PDU too long saturates (never sent: requests
    // are validated, and raw frames are at most an RTU ADU).
    let length = u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX);
    adu.extend_from_slice(&length.to_be_bytes());
    adu.push(unit);
    adu.extend_from_slice(pdu);
    adu
}

/// The request ADU of `request` to `unit` (the slave address) in transaction `transaction`.
pub fn encode_request(transaction: u16, unit: u8, request: &Request) -> Vec<u8> {
    frame(transaction, unit, &request.pdu())
}

/// The length of the ADU at the start of `buf`, header included, once its header's length
/// field has arrived; None before.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    be16(buf, 4).map(|length| 6 + usize::from(length))
}

/// The PDU length a response's function and first bytes say (`pdu` starts with the
/// function): exceptions 2, reads 2 + byte count, write echoes 5; None for a function
/// without a rule here or while the byte count is missing.
pub fn response_pdu_len(pdu: &[u8]) -> Option<usize> {
    let function = *pdu.first()?;
    if function & 0x80 != 0 {
        return Some(2);
    }
    match function {
        1..=4 => pdu.get(1).map(|bc| 2 + usize::from(*bc)),
        5 | 6 | 15 | 16 => Some(5),
        _ => None,
    }
}

/// Checks the header of a complete ADU: at least unit and function, protocol 0, a length
/// field that covers exactly the bytes after it. Returns transaction, unit and PDU.
pub fn split(adu: &[u8]) -> Result<(u16, u8, &[u8]), ModbusError> {
    let (Some(transaction), Some(protocol), Some(length)) =
        (be16(adu, 0), be16(adu, 2), be16(adu, 4))
    else {
        return Err(bad_length(adu, "shorter than an MBAP header"));
    };
    if protocol != 0 {
        return Err(bad_length(adu, format!("protocol id {protocol}, not 0")));
    }
    if usize::from(length) + 6 != adu.len() {
        return Err(bad_length(
            adu,
            format!(
                "MBAP length {length} but {} bytes follow it",
                adu.len().saturating_sub(6)
            ),
        ));
    }
    match adu.get(6..) {
        Some([unit, pdu @ ..]) if !pdu.is_empty() => Ok((transaction, *unit, pdu)),
        _ => Err(bad_length(adu, "no function code after the MBAP header")),
    }
}

/// The unit-and-PDU body of a response in transaction `transaction`, header checked.
fn body(transaction: u16, adu: &[u8]) -> Result<&[u8], ModbusError> {
    let (got, _, _) = split(adu)?;
    if got != transaction {
        return Err(ModbusError::WrongTransaction {
            expected: transaction,
            got,
        });
    }
    Ok(adu.get(6..).unwrap_or_default())
}

/// Parse a complete response ADU to `request` sent to `unit` in transaction `transaction`:
/// header, transaction, unit, function, byte count and echoes; a function|0x80 PDU =>
/// `Err(Exception)`.
pub fn parse_response(
    transaction: u16,
    unit: u8,
    request: &Request,
    adu: &[u8],
) -> Result<Response, ModbusError> {
    let body = body(transaction, adu)?;
    check_body(unit, request.function(), body, adu)?;
    parse_body(request, body, adu)
}

/// For "raw" operator commands: checks header, transaction, unit and function (or
/// exception), and the length rule of the function where there is one; returns the ADU.
pub fn parse_raw_response(
    transaction: u16,
    unit: u8,
    function: u8,
    adu: &[u8],
) -> Result<Vec<u8>, ModbusError> {
    let body = body(transaction, adu)?;
    check_body(unit, function, body, adu)?;
    let pdu = body.get(1..).unwrap_or_default();
    match response_pdu_len(pdu) {
        Some(n) if n != pdu.len() => Err(bad_length(
            adu,
            format!(
                "function {function} response PDU should be {n} bytes, got {}",
                pdu.len()
            ),
        )),
        _ => Ok(adu.to_vec()),
    }
}

/// Slave side: the request ADU `adu` as `(transaction, RTU ADU with CRC)`, for the simulated
/// slave to execute.
pub fn to_rtu(adu: &[u8]) -> Result<(u16, Vec<u8>), ModbusError> {
    let (transaction, unit, pdu) = split(adu)?;
    let mut rtu_adu = Vec::with_capacity(pdu.len() + 3);
    rtu_adu.push(unit);
    rtu_adu.extend_from_slice(pdu);
    append_crc(&mut rtu_adu);
    Ok((transaction, rtu_adu))
}

/// Slave side: the RTU answer `rtu_adu` (CRC included) in the header of transaction
/// `transaction`; None if it is no RTU frame.
pub fn from_rtu(transaction: u16, rtu_adu: &[u8]) -> Option<Vec<u8>> {
    if !rtu::check_crc(rtu_adu) {
        return None;
    }
    let (unit, pdu) = rtu_adu.get(..rtu_adu.len() - 2)?.split_first()?;
    Some(frame(transaction, *unit, pdu))
}

/// Slave side, on a link without framing: where the first complete request in `buf` is, as
/// `(start, len)`: protocol 0, a length of 2..=254 and a known request function whose length
/// rule the length field fits, sliding over junk before it. None: no complete request yet.
pub fn find_request(buf: &[u8]) -> Option<(usize, usize)> {
    for start in 0..buf.len() {
        let rest = buf.get(start..).unwrap_or_default();
        let (Some(protocol), Some(length)) = (be16(rest, 2), be16(rest, 4)) else {
            break;
        };
        let length = usize::from(length);
        if protocol != 0 || !(2..=254).contains(&length) {
            continue;
        }
        let Some(&function) = rest.get(7) else {
            break;
        };
        let fits = match function {
            1..=6 => length == 6,
            15 | 16 => rest.get(12).is_some_and(|n| length == 7 + usize::from(*n)),
            _ => false,
        };
        if !fits {
            // Also when the byte count has not arrived: a request of 15/16 begins no sooner.
            if matches!(function, 15 | 16) && rest.len() < 13 {
                break;
            }
            continue;
        }
        if rest.len() < 6 + length {
            break;
        }
        return Some((start, 6 + length));
    }
    None
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
