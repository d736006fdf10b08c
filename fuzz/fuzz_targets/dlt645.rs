//! DL/T 645-2007 (protocol/dlt645/): frames, the master's answer parser, finding frames in a
//! byte stream, what a transparent link waits for, and the value formats of the answers.
//!
//! Input: an operation byte (bit 7: give the frame its checksum, so the fuzzer gets past
//! it), the operation's fields, then the bytes.
//! ```text
//! 0  Frame::decode     bytes
//! 1  parse_answer      request (fuzz_support::dlt645_request), address flag, address, bytes
//! 2  find_frame        bytes
//! 3  Expect::Dlt645    address flag, address, request, exceptions flag, bytes
//! 4  formats           format text up to a NUL, then the value's bytes
//! ```
#![no_main]

use std::str::FromStr;

use dtu_supervisor::protocol::dlt645::formats::{self, Format};
use dtu_supervisor::protocol::dlt645::{
    self, frame_len, parse_answer, Address, Answer, Di, Frame, MAX_FRAME, PREAMBLE,
};
use dtu_supervisor::protocol::link::Expect;
use dtu_supervisor::protocol::serial::Candidate;
use fuzz_support::{dlt645_request, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let op = input.u8();
    let fix = op & 0x80 != 0;
    match op & 0x7F {
        0 => decode(&with_checksum(input.rest(), fix)),
        1 => {
            let request = dlt645_request(&mut input);
            let address = address(&mut input);
            let bytes = with_checksum(input.rest(), fix);
            if let Ok(Answer::Data { di, data, .. }) =
                parse_answer(request, address.as_ref(), &bytes)
            {
                // The server decodes a known identifier's value by its format.
                if let Some(known) = formats::known(di) {
                    let _ = known.format.decode(&data);
                }
            }
        }
        2 => find_frame(input.rest()),
        3 => {
            let address = address(&mut input);
            let request = dlt645_request(&mut input);
            let exceptions = input.u8() & 1 != 0;
            let expect = Expect::Dlt645 { address, request };
            let bytes = with_checksum(input.rest(), fix);
            if let Candidate::Answer(n) = expect.candidate(&bytes, exceptions) {
                let frame = bytes.get(..n).expect("an answer inside the bytes");
                assert!(n <= MAX_FRAME);
                Frame::decode(frame).expect("an answer cut out decodes");
            }
        }
        _ => format(input.rest()),
    }
});

/// An address when the flag byte's bit 0 is set (its 6 bytes follow either way).
fn address(input: &mut Input<'_>) -> Option<Address> {
    let present = input.u8() & 1 != 0;
    let mut address = [0u8; 6];
    for b in &mut address {
        *b = input.u8();
    }
    present.then_some(Address(address))
}

/// `bytes` with the checksum their frame length puts before the end byte fixed, when `fix`.
fn with_checksum(bytes: &[u8], fix: bool) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let (true, Ok(Some(len))) = (fix, frame_len(bytes)) {
        if len <= out.len() && len >= dlt645::MIN_FRAME {
            let pre = bytes.iter().take(4).take_while(|b| **b == PREAMBLE).count();
            let sum = dlt645::checksum(&out[pre..len - 2]);
            out[len - 2] = sum;
        }
    }
    out
}

fn decode(bytes: &[u8]) {
    if let Ok(frame) = Frame::decode(bytes) {
        // A frame decoded encodes back to its bytes, preamble included.
        let pre = bytes.iter().take(4).take_while(|b| **b == PREAMBLE).count();
        assert_eq!(frame.encode(pre), bytes);
        assert_eq!(frame_len(bytes), Ok(Some(bytes.len())));
    }
}

fn find_frame(bytes: &[u8]) {
    if let Some((start, len)) = dlt645::find_frame(bytes) {
        let frame = bytes.get(start..start + len).expect("inside the bytes");
        Frame::decode(frame).expect("a frame found decodes");
        assert_eq!(frame_len(&bytes[start..]), Ok(Some(len)));
    }
}

/// A format as a profile writes it, and a value in it.
fn format(bytes: &[u8]) {
    let (text, value) = match bytes.iter().position(|b| *b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let _ = Di::from_str(text);
    let _ = Address::from_str(text);
    if let Ok(format) = Format::from_str(text) {
        assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        if let Ok(reading) = format.decode(value) {
            // What decodes, the simulator writes the same way (within f64's exact integers).
            if let Format::Number { digits: 2..=14, .. } = format {
                assert_eq!(format.decode(&format.encode(reading.value)), Ok(reading));
            }
        }
    }
    if value.len() >= 4 {
        let di = Di(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        if let Some(known) = formats::known(di) {
            let _ = known.format.decode(&value[4..]);
        }
    }
}
