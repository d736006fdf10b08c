//! What the fuzz targets share: reading a target's settings from the head of the input
//! ([`Input`]), cutting the rest into reads as a socket would ([`chunks`]), driving a link
//! codec as a connection does ([`drive`]) and the requests and expectations the server builds
//! ([`request`], [`expect`]).
//!
//! Inputs are plain bytes with a small fixed layout per target (documented in each target),
//! so fuzz/seeds.py can write the unit tests' vectors as seeds.

use bytes::BytesMut;
use dtu_supervisor::protocol::dlt645::{self, Address, Di};
use dtu_supervisor::protocol::link::{CodecError, Expect, Inbound, LinkCodec};
use dtu_supervisor::protocol::modbus::Request;

/// Reads a target's settings byte by byte from the front of the input; past the end every
/// byte is 0, so any input is a valid one.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes }
    }

    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }

    /// Big-endian, as the protocols write them (and the seeds are easier to read).
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next `n` bytes, fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    /// Everything left: the byte stream the target decodes.
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// How many cut lengths an input carries.
pub const CUTS: usize = 4;

/// Reads the cut lengths at the head of a stream input.
pub fn cuts(input: &mut Input<'_>) -> [u8; CUTS] {
    [input.u8(), input.u8(), input.u8(), input.u8()]
}

/// `stream` cut into reads as a socket delivers them: read `i` is `cuts[i % 4] + 1` bytes,
/// or everything left for 0xFF.
pub fn chunks<'a>(stream: &'a [u8], cuts: &[u8; CUTS]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let len = match cuts[i % CUTS] {
            0xFF => rest.len(),
            c => usize::from(c) + 1,
        };
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// What a run of a codec over some reads gave.
#[derive(Debug, PartialEq)]
pub struct Run {
    pub items: Vec<Inbound>,
    /// Whether a fatal error ended it.
    pub failed: bool,
    /// Bytes left in the buffer.
    pub rest: Vec<u8>,
}

/// What a driven codec is checked against.
pub struct Bounds {
    /// Most bytes the codec may hold between reads (after `Ok(None)`).
    pub held: usize,
}

/// Feeds `reads` to `codec` as a connection does (append, then decode until `Ok(None)` or an
/// error), checking what every link codec promises (link.rs): an item consumes bytes, the
/// decode loop ends, the codec holds at most `bounds.held` bytes between reads.
/// `after_item` sees each item with the codec, to change what it expects as the server does.
pub fn drive(
    codec: &mut dyn LinkCodec,
    reads: &[&[u8]],
    bounds: &Bounds,
    after_item: &mut dyn FnMut(&mut dyn LinkCodec, &Inbound),
) -> Run {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        // Every item consumes at least one byte, so this many rounds always suffice.
        let most = buf.len() + 1;
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds <= most, "decode loop did not terminate");
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "{item:?} consumed nothing");
                    after_item(codec, &item);
                    items.push(item);
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= bounds.held,
                        "holds {} bytes between reads, bound {}",
                        buf.len(),
                        bounds.held
                    );
                    break;
                }
                Err(e) => {
                    check_error(&e);
                    return Run {
                        items,
                        failed: true,
                        rest: buf.to_vec(),
                    };
                }
            }
        }
    }
    Run {
        items,
        failed: false,
        rest: buf.to_vec(),
    }
}

/// An error renders (its hex is cut at 64 bytes: the message stays short).
fn check_error(e: &CodecError) {
    let text = e.to_string();
    assert!(text.len() < 4096, "error message of {} bytes", text.len());
}

/// Items as far as the way the bytes were cut cannot change them: runs of data, of
/// unsolicited bytes and of dropped bytes joined (a dropped run's reason may name the bytes
/// seen so far, so reasons are left out).
pub fn normalized(items: &[Inbound]) -> Vec<Inbound> {
    let mut out: Vec<Inbound> = Vec::new();
    for item in items {
        let item = match item {
            Inbound::Malformed { bytes, .. } => Inbound::Malformed {
                reason: String::new(),
                bytes: bytes.clone(),
            },
            other => other.clone(),
        };
        match (out.last_mut(), item) {
            (Some(Inbound::Data(prev)), Inbound::Data(next))
            | (Some(Inbound::Unsolicited(prev)), Inbound::Unsolicited(next))
            | (
                Some(Inbound::Malformed { bytes: prev, .. }),
                Inbound::Malformed { bytes: next, .. },
            ) => {
                *prev = [&prev[..], &next[..]].concat().into();
            }
            (_, item) => out.push(item),
        }
    }
    out
}

/// Asserts that `cut` decoded the same as `whole` (the stream in one read): what a device
/// sent does not depend on how TCP cut it.
pub fn assert_same(whole: &Run, cut: &Run) {
    assert_eq!(
        (normalized(&whole.items), whole.failed),
        (normalized(&cut.items), cut.failed),
        "the same bytes decode differently when cut"
    );
    if !whole.failed {
        assert_eq!(whole.rest, cut.rest, "different bytes left when cut");
    }
}

/// A Modbus request as the server builds it (validated: it sends no other), from 6 bytes:
/// kind (% 8: functions 1, 2, 3, 4, 5, 6, 15, 16), two u16 fields `a` (start or address) and
/// `b` (count or value), and a byte `n` for the multiple writes. None for a request the
/// server would not send.
pub fn request(input: &mut Input<'_>) -> Option<Request> {
    let kind = input.u8() % 8;
    let a = input.u16();
    let b = input.u16();
    let n = usize::from(input.u8());
    let request = match kind {
        0 => Request::ReadCoils { start: a, count: b },
        1 => Request::ReadDiscreteInputs { start: a, count: b },
        2 => Request::ReadHoldingRegisters { start: a, count: b },
        3 => Request::ReadInputRegisters { start: a, count: b },
        4 => Request::WriteSingleCoil {
            address: a,
            value: b != 0,
        },
        5 => Request::WriteSingleRegister {
            address: a,
            value: b,
        },
        // `b` coils set in the pattern of `n`'s bits.
        6 => Request::WriteMultipleCoils {
            address: a,
            values: (0..usize::from(b))
                .map(|i| n & (1 << (i % 8)) != 0)
                .collect(),
        },
        // `n` registers counting up from `b`.
        _ => Request::WriteMultipleRegisters {
            address: a,
            values: (0..n).map(|i| b.wrapping_add(i as u16)).collect(),
        },
    };
    request.validate().ok().map(|()| request)
}

/// An answer the server may wait for, from a kind byte and its fields (None: kind 0).
/// RTU: slave, function, a length flag and the length (0x100 added with flag bit 1).
/// TCP: transaction, unit, function. DL/T 645: an address flag, the address, and a request
/// (0: read the address, else read the identifier that follows).
pub fn expect(input: &mut Input<'_>) -> Option<Expect> {
    match input.u8() % 4 {
        0 => None,
        1 => {
            let slave = input.u8();
            let function = input.u8();
            let flag = input.u8();
            let len = usize::from(input.u8()) + if flag & 2 != 0 { 0x100 } else { 0 };
            Some(Expect::Rtu {
                slave,
                function,
                len: (flag & 1 != 0).then_some(len),
            })
        }
        2 => Some(Expect::Tcp {
            transaction: input.u16(),
            unit: input.u8(),
            function: input.u8(),
        }),
        _ => {
            let has_address = input.u8() & 1 != 0;
            let mut address = [0u8; 6];
            for b in &mut address {
                *b = input.u8();
            }
            let request = dlt645_request(input);
            Some(Expect::Dlt645 {
                address: has_address.then_some(Address(address)),
                request,
            })
        }
    }
}

/// A DL/T 645 request: 0 reads the address, anything else the identifier that follows.
pub fn dlt645_request(input: &mut Input<'_>) -> dlt645::Request {
    match input.u8() {
        0 => dlt645::Request::ReadAddress,
        _ => dlt645::Request::Read(Di(input.u32())),
    }
}
