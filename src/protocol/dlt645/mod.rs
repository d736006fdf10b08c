//! DL/T 645-2007, the protocol of Chinese electricity meters on RS-485: frames, reads of a
//! data identifier (control code 11, answers 91 / B1, error D1), the read of the meter's
//! address (13, to the broadcast address AA AA AA AA AA AA), and the formats of the values
//! ([`formats`]). Master side (the server's polls) and slave side (the simulator).
//!
//! ```text
//! [FE FE FE FE] 68 | A0 .. A5 | 68 | C | L | DATA (each byte + 33h) | CS | 16
//! ```
//! The address is 12 BCD digits sent lowest byte first (`000000000001` is `01 00 00 00 00
//! 00`); a data identifier is printed `DI3 DI2 DI1 DI0` and sent `DI0` first; CS is the sum
//! modulo 256 of every byte from the first 68 to the end of DATA. Writes need the meter's
//! passwords and are not here. Every function reading device bytes is total.

pub mod formats;

use std::fmt;
use std::str::FromStr;

use crate::protocol::hex::to_hex;

/// What may precede a frame to wake the meter's receiver.
pub const PREAMBLE: u8 = 0xFE;
/// Preamble bytes a frame may carry (the standard's four).
pub const MAX_PREAMBLE: usize = 4;
pub const START: u8 = 0x68;
pub const END: u8 = 0x16;
/// A frame without preamble and data: 68, address, 68, C, L, CS, 16.
pub const MIN_FRAME: usize = 12;
/// The longest frame: the preamble, and 255 bytes of data.
pub const MAX_FRAME: usize = MAX_PREAMBLE + MIN_FRAME + 255;
/// Control code of a read of one data identifier.
pub const READ_DATA: u8 = 0x11;
/// Control code of a read of the meter's address.
pub const READ_ADDRESS: u8 = 0x13;
/// Bit 7 of the control code: the frame comes from the meter.
pub const FROM_METER: u8 = 0x80;
/// Bit 6: an error answer (its data is one error byte).
pub const ERROR: u8 = 0x40;
/// Bit 5: more frames follow (B1 answers); reading them needs control code 12.
pub const FOLLOWS: u8 = 0x20;
/// What the data bytes carry on the wire: each byte plus 33h.
const OFFSET: u8 = 0x33;

/// A meter address, as it goes on the wire (`A0` first).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 6]);

/// The broadcast address, answered by the one meter on the bus (read address only).
pub const BROADCAST: Address = Address([0xAA; 6]);

impl Address {
    /// The address printed on the meter: 12 digits, the last byte on the wire first.
    pub fn printed(&self) -> String {
        self.0.iter().rev().map(|b| format!("{b:02X}")).collect()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.printed())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.printed())
    }
}

impl FromStr for Address {
    type Err = String;

    /// 12 decimal digits as printed on the meter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if digits.len() != 12 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "{s:?} is not a meter address (12 decimal digits, as printed on the meter)"
            ));
        }
        let mut wire = [0u8; 6];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            if let ([hi, lo], Some(slot)) = (pair, wire.get_mut(5 - i)) {
                *slot = ((hi - b'0') << 4) | (lo - b'0');
            }
        }
        Ok(Address(wire))
    }
}

/// A data identifier, as the standard prints it: `DI3 DI2 DI1 DI0` (`0x0001_0000` is
/// forward active total energy).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Di(pub u32);

impl Di {
    /// Its four bytes as sent (`DI0` first), before the 33h offset.
    pub fn wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// `DI3`, `DI2`, `DI1`, `DI0`.
    pub fn bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Di {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

impl fmt::Debug for Di {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Di({:08X})", self.0)
    }
}

impl FromStr for Di {
    type Err = String;

    /// 8 hex digits, `DI3` first.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{s:?} is not a data identifier (8 hex digits DI3 DI2 DI1 DI0, e.g. \"00010000\")"
            ));
        }
        u32::from_str_radix(s, 16)
            .map(Di)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

/// What an error answer's byte says, bit by bit.
pub fn error_text(code: u8) -> String {
    const BITS: [&str; 7] = [
        "other error",
        "no such data",
        "password wrong or not authorised",
        "baud rate cannot change",
        "too many year time zones",
        "too many day periods",
        "too many tariffs",
    ];
    let named: Vec<&str> = BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| code & (1 << i) != 0)
        .map(|(_, name)| *name)
        .collect();
    if named.is_empty() {
        "unknown".into()
    } else {
        named.join(", ")
    }
}

/// Everything that can be wrong with a DL/T 645 answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Dlt645Error {
    /// The meter answered with an error frame (D1 / D3): its error byte.
    #[error("meter error {code:#04X} ({})", error_text(*code))]
    Meter { code: u8 },
    #[error("bad DL/T 645 frame ({reason}): {hex}")]
    BadFrame { reason: String, hex: String },
    #[error("answer from meter {got}, expected meter {expected}")]
    WrongAddress { expected: Address, got: Address },
    #[error("control code {got:#04X} does not answer {sent:#04X}")]
    WrongControl { sent: u8, got: u8 },
    #[error("answer for data identifier {got}, expected {expected}")]
    WrongDi { expected: Di, got: Di },
    /// The data of an answer does not fit its format.
    #[error("cannot decode data identifier {di}: {reason}")]
    BadValue { di: Di, reason: String },
}

fn bad_frame(bytes: &[u8], reason: impl Into<String>) -> Dlt645Error {
    Dlt645Error::BadFrame {
        reason: reason.into(),
        hex: to_hex(bytes),
    }
}

/// The sum modulo 256 of `bytes`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// A frame as the two sides see it: data with the 33h offset undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: Address,
    pub control: u8,
    pub data: Vec<u8>,
}

impl Frame {
    /// The frame on the wire, after `preamble` FE bytes (0..=4). Data over 255 bytes is cut
    /// (nothing built here comes near it).
    pub fn encode(&self, preamble: usize) -> Vec<u8> {
        let data = self.data.get(..255).unwrap_or(&self.data);
        let mut out = vec![PREAMBLE; preamble.min(MAX_PREAMBLE)];
        let start = out.len();
        out.push(START);
        out.extend_from_slice(&self.address.0);
        out.push(START);
        out.push(self.control);
        out.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
        out.extend(data.iter().map(|b| b.wrapping_add(OFFSET)));
        let cs = checksum(out.get(start..).unwrap_or_default());
        out.push(cs);
        out.push(END);
        out
    }

    /// A complete frame (preamble included, as [`frame_len`] cut it): start bytes, length,
    /// checksum and end byte checked.
    pub fn decode(bytes: &[u8]) -> Result<Frame, Dlt645Error> {
        let pre = preamble_len(bytes);
        let frame = bytes.get(pre..).unwrap_or_default();
        if frame.len() < MIN_FRAME {
            return Err(bad_frame(bytes, "shorter than 12 bytes"));
        }
        let (Some(&START), Some(&START)) = (frame.first(), frame.get(7)) else {
            return Err(bad_frame(
                bytes,
                "no 68 at the start of the frame or its address",
            ));
        };
        let control = frame.get(8).copied().unwrap_or_default();
        let len = usize::from(frame.get(9).copied().unwrap_or_default());
        if frame.len() != MIN_FRAME + len {
            return Err(bad_frame(
                bytes,
                format!("length {len} but {} data bytes", frame.len() - MIN_FRAME),
            ));
        }
        let body = frame.get(..10 + len).unwrap_or_default();
        let cs = frame.get(10 + len).copied().unwrap_or_default();
        if cs != checksum(body) {
            return Err(bad_frame(
                bytes,
                format!("checksum {cs:02X}, computed {:02X}", checksum(body)),
            ));
        }
        if frame.last() != Some(&END) {
            return Err(bad_frame(bytes, "no 16 at the end"));
        }
        let mut address = [0u8; 6];
        address.copy_from_slice(frame.get(1..7).unwrap_or(&[0; 6]));
        Ok(Frame {
            address: Address(address),
            control,
            data: frame
                .get(10..10 + len)
                .unwrap_or_default()
                .iter()
                .map(|b| b.wrapping_sub(OFFSET))
                .collect(),
        })
    }
}

/// How many preamble bytes (FE, at most four) start `bytes`.
fn preamble_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(MAX_PREAMBLE)
        .take_while(|b| **b == PREAMBLE)
        .count()
}

/// The length of the frame at the start of `buf`, preamble included: `Ok(None)` while its
/// length byte has not arrived, `Err` when `buf` does not start like a frame (a fifth FE,
/// a first byte other than FE or 68, no 68 after the address).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let pre = preamble_len(buf);
    let frame = buf.get(pre..).unwrap_or_default();
    match frame.first() {
        None => return Ok(None),
        Some(&START) => {}
        Some(b) => return Err(format!("{b:02X} where a frame begins (68)")),
    }
    match frame.get(7) {
        None => return Ok(None),
        Some(&START) => {}
        Some(b) => return Err(format!("{b:02X} after the address, not 68")),
    }
    Ok(frame.get(9).map(|len| pre + MIN_FRAME + usize::from(*len)))
}

/// A request of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read one data identifier (control code 11).
    Read(Di),
    /// Read the address of the one meter on the bus (13, to [`BROADCAST`]).
    ReadAddress,
}

impl Request {
    pub fn control(self) -> u8 {
        match self {
            Request::Read(_) => READ_DATA,
            Request::ReadAddress => READ_ADDRESS,
        }
    }

    /// The frame to `address` (ignored for [`Request::ReadAddress`], which goes to the
    /// broadcast address), after the four FE bytes of the preamble.
    pub fn encode(self, address: &Address) -> Vec<u8> {
        let frame = match self {
            Request::Read(di) => Frame {
                address: *address,
                control: READ_DATA,
                data: di.wire().to_vec(),
            },
            Request::ReadAddress => Frame {
                address: BROADCAST,
                control: READ_ADDRESS,
                data: Vec::new(),
            },
        };
        frame.encode(MAX_PREAMBLE)
    }

    /// The control codes of its answers: normal, with frames to follow (reads only), error.
    pub fn answer_controls(self) -> [Option<u8>; 3] {
        let c = self.control();
        let follows = matches!(self, Request::Read(_)).then_some(c | FROM_METER | FOLLOWS);
        [Some(c | FROM_METER), follows, Some(c | FROM_METER | ERROR)]
    }
}

/// A meter's normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The data of a read: the identifier's value bytes (offset undone, DI removed); `more`
    /// when the meter has frames to follow (B1: only this first frame is read).
    Data { di: Di, data: Vec<u8>, more: bool },
    /// The meter's address.
    Address(Address),
}

/// Master side: the complete frame `bytes` (preamble included) as the answer to `request`
/// sent to `address` (None: any meter, as for the read of the address). An error answer is
/// `Err(Meter)`; anything else not answering this request is another `Err`.
pub fn parse_answer(
    request: Request,
    address: Option<&Address>,
    bytes: &[u8],
) -> Result<Answer, Dlt645Error> {
    let frame = Frame::decode(bytes)?;
    let sent = request.control();
    if !request.answer_controls().contains(&Some(frame.control)) {
        return Err(Dlt645Error::WrongControl {
            sent,
            got: frame.control,
        });
    }
    if let Some(expected) = address {
        if frame.address != *expected {
            return Err(Dlt645Error::WrongAddress {
                expected: *expected,
                got: frame.address,
            });
        }
    }
    if frame.control & ERROR != 0 {
        return match frame.data.as_slice() {
            [code] => Err(Dlt645Error::Meter { code: *code }),
            _ => Err(bad_frame(bytes, "an error answer carries one byte")),
        };
    }
    match request {
        Request::Read(expected) => {
            let Some((di, data)) = frame.data.split_first_chunk::<4>() else {
                return Err(bad_frame(
                    bytes,
                    "a read answer shorter than its identifier",
                ));
            };
            let got = Di(u32::from_le_bytes(*di));
            if got != expected {
                return Err(Dlt645Error::WrongDi { expected, got });
            }
            Ok(Answer::Data {
                di: got,
                data: data.to_vec(),
                more: frame.control & FOLLOWS != 0,
            })
        }
        Request::ReadAddress => match <[u8; 6]>::try_from(frame.data.as_slice()) {
            Ok(address) => Ok(Answer::Address(Address(address))),
            Err(_) => Err(bad_frame(bytes, "an address answer carries 6 bytes")),
        },
    }
}

/// Either side, on a link without framing: where the first complete frame with a good
/// checksum and end byte is in `buf`, as `(start, len)`, preamble included, sliding over
/// junk before it. None: no complete frame yet.
pub fn find_frame(buf: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    while start < buf.len() {
        let rest = buf.get(start..).unwrap_or_default();
        match frame_len(rest) {
            Ok(Some(len)) => match rest.get(..len) {
                Some(frame) if Frame::decode(frame).is_ok() => return Some((start, len)),
                Some(_) => {}
                None => return None,
            },
            Ok(None) => return None,
            Err(_) => {}
        }
        start += 1;
    }
    None
}

#[cfg(test)]
mod tests;
