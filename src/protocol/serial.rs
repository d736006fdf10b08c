//! What speaks on the serial side behind a DTU (Modbus RTU, Modbus TCP, DL/T 645), as far
//! as a link without framing of its own needs to know it: where the answer awaited begins
//! and ends in a byte stream ([`Expect`], for the server's transparent codec) and where a
//! request ends ([`Framing`], for the simulator's side of such a link). The frames themselves
//! are [`rtu`], [`tcp`] and [`dlt645`]'s.

use std::fmt;
use std::str::FromStr;

use crate::protocol::dlt645;
use crate::protocol::hex::to_hex;
use crate::protocol::modbus::{rtu, tcp};

/// The longest request any meter protocol sends: a DL/T 645 frame with its preamble.
pub const MAX_REQUEST: usize = dlt645::MAX_FRAME;

/// The answer a connection waits for: what the request in flight makes it look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An RTU answer of `slave` to `function` (or its exception), CRC-framed. `len`: the
    /// normal answer's ADU length where the request fixes it (a read asks for its count),
    /// so bytes that merely begin like its header (a one-byte heartbeat equal to the slave
    /// address, repeated) are refused at once instead of held for a byte count they carry.
    Rtu {
        slave: u8,
        function: u8,
        len: Option<usize>,
    },
    /// A Modbus TCP answer in `transaction` of `unit` to `function` (or its exception).
    Tcp {
        transaction: u16,
        unit: u8,
        function: u8,
    },
    /// A DL/T 645 answer to `request` from the meter at `address` (None: any meter, for the
    /// read of the address), with or without its preamble.
    Dlt645 {
        address: Option<dlt645::Address>,
        request: dlt645::Request,
    },
}

/// What the bytes at the start of a buffer are, as far as one awaited answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// Not its answer.
    No,
    /// Its answer may begin here: wait for more bytes.
    Wait,
    /// Its answer, this many bytes, checked (CRC, checksum or length rules).
    Answer(usize),
    /// Its header, but no answer: why.
    Rejected(String),
}

impl Expect {
    /// True if the answer's header (or, with `exceptions`, the header of an exception or
    /// error answer) starts `bytes`, or could once more bytes come.
    pub fn may_start(&self, bytes: &[u8], exceptions: bool) -> bool {
        if bytes.is_empty() {
            return false;
        }
        match *self {
            Expect::Rtu {
                slave, function, ..
            } => match bytes {
                [s] => *s == slave,
                [s, f, ..] => {
                    *s == slave && (*f == function || (exceptions && *f == function | 0x80))
                }
                [] => false,
            },
            Expect::Tcp {
                transaction,
                unit,
                function,
            } => {
                let [t0, t1] = transaction.to_be_bytes();
                bytes.iter().take(8).enumerate().all(|(i, b)| match i {
                    0 => *b == t0,
                    1 => *b == t1,
                    2 | 3 => *b == 0,
                    6 => *b == unit,
                    7 => *b == function || (exceptions && *b == function | 0x80),
                    _ => true,
                })
            }
            Expect::Dlt645 { address, request } => {
                let pre = bytes
                    .iter()
                    .take(dlt645::MAX_PREAMBLE)
                    .take_while(|b| **b == dlt645::PREAMBLE)
                    .count();
                let controls = request.answer_controls();
                let error = controls[2];
                bytes
                    .get(pre..)
                    .unwrap_or_default()
                    .iter()
                    .take(9)
                    .enumerate()
                    .all(|(i, b)| match i {
                        0 | 7 => *b == dlt645::START,
                        1..=6 => address.map_or(true, |a| a.0.get(i - 1) == Some(b)),
                        _ => controls.contains(&Some(*b)) && (exceptions || error != Some(*b)),
                    })
            }
        }
    }

    /// Whether `bytes` begin this answer (see [`Expect::may_start`] for `exceptions`).
    pub fn candidate(&self, bytes: &[u8], exceptions: bool) -> Candidate {
        if !self.may_start(bytes, exceptions) {
            return Candidate::No;
        }
        match self {
            Expect::Rtu { len, .. } => rtu_candidate(bytes, *len),
            Expect::Tcp { .. } => tcp_candidate(bytes),
            Expect::Dlt645 { .. } => dlt645_candidate(bytes),
        }
    }
}

/// `expected`: the normal answer's length, where the request fixes it.
fn rtu_candidate(bytes: &[u8], expected: Option<usize>) -> Candidate {
    let [_, function, ..] = *bytes else {
        // Only the slave byte so far: the function byte decides.
        return Candidate::Wait;
    };
    let said = rtu::response_len(bytes);
    let len = match expected {
        Some(n) if function & 0x80 == 0 => {
            if let Some(said) = said.filter(|said| *said != n) {
                return Candidate::Rejected(format!(
                    "response length {said} where the request asks for {n}: {}",
                    to_hex(bytes.get(..3).unwrap_or(bytes))
                ));
            }
            Some(n)
        }
        _ => said,
    };
    match len {
        Some(n) if n > rtu::MAX_ADU => {
            Candidate::Rejected(format!("response length {n} over {}", rtu::MAX_ADU))
        }
        Some(n) => match bytes.get(..n) {
            Some(adu) if rtu::check_crc(adu) => Candidate::Answer(n),
            Some(adu) => Candidate::Rejected(format!("bad CRC in response {}", to_hex(adu))),
            None => Candidate::Wait,
        },
        None if bytes.len() >= rtu::MAX_ADU => {
            Candidate::Rejected(format!("no CRC-framed response in {} bytes", rtu::MAX_ADU))
        }
        None => Candidate::Wait,
    }
}

fn tcp_candidate(bytes: &[u8]) -> Candidate {
    if bytes.len() < 8 {
        return Candidate::Wait;
    }
    match tcp::response_len(bytes) {
        Some(n) if !(8..=tcp::MAX_ADU).contains(&n) => Candidate::Rejected(format!(
            "MBAP length {} outside 2..={}",
            n - 6,
            tcp::MAX_ADU - 6
        )),
        Some(n) => match bytes.get(..n) {
            Some(adu) => {
                let pdu = adu.get(7..).unwrap_or_default();
                match tcp::response_pdu_len(pdu) {
                    Some(rule) if rule != pdu.len() => Candidate::Rejected(format!(
                        "MBAP length says a {}-byte PDU, its function {rule}: {}",
                        pdu.len(),
                        to_hex(adu)
                    )),
                    _ => Candidate::Answer(n),
                }
            }
            None => Candidate::Wait,
        },
        None => Candidate::Wait,
    }
}

fn dlt645_candidate(bytes: &[u8]) -> Candidate {
    match dlt645::frame_len(bytes) {
        Ok(None) => Candidate::Wait,
        Err(reason) => Candidate::Rejected(reason),
        Ok(Some(n)) => match bytes.get(..n) {
            None => Candidate::Wait,
            Some(frame) => match dlt645::Frame::decode(frame) {
                Ok(_) => Candidate::Answer(n),
                Err(e) => Candidate::Rejected(e.to_string()),
            },
        },
    }
}

/// How requests are framed on the serial side, for the simulator's side of a link without
/// framing of its own (which has to find them in whatever bytes arrive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    #[default]
    Rtu,
    ModbusTcp,
    Dlt645,
}

impl Framing {
    pub const ALL: [Framing; 3] = [Framing::Rtu, Framing::ModbusTcp, Framing::Dlt645];

    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Rtu => "modbus-rtu",
            Framing::ModbusTcp => "modbus-tcp",
            Framing::Dlt645 => "dlt645",
        }
    }

    /// Where the first complete request in `buf` is, as `(start, len)`, sliding over junk.
    pub fn find_request(self, buf: &[u8]) -> Option<(usize, usize)> {
        match self {
            Framing::Rtu => rtu::find_request(buf),
            Framing::ModbusTcp => tcp::find_request(buf),
            Framing::Dlt645 => dlt645::find_frame(buf),
        }
    }

    /// The longest request.
    pub fn max_request(self) -> usize {
        match self {
            Framing::Rtu => rtu::MAX_ADU,
            Framing::ModbusTcp => tcp::MAX_ADU,
            Framing::Dlt645 => dlt645::MAX_FRAME,
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Framing::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("unknown meter {s:?} (expected modbus-rtu, modbus-tcp or dlt645)")
            })
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
