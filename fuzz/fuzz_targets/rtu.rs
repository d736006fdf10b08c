//! Modbus RTU (protocol/modbus/rtu.rs): the master's response parser, the length rules a
//! transparent link cuts answers by, and the slave's side (request decoding and finding
//! requests in a byte stream, for the simulator).
//!
//! Input: an operation byte (bit 7: give the frame its CRC, so the fuzzer gets past it),
//! the operation's fields, then the frame.
//! ```text
//! 0  parse_response    slave, request (fuzz_support::request), ADU
//! 1  Request::decode   ADU
//! 2  lengths           response_len, request_len, find_request over the bytes
//! 3  Expect::Rtu       slave, function, length flag and length, exceptions flag, bytes
//! ```
#![no_main]

use dtu_supervisor::protocol::link::Expect;
use dtu_supervisor::protocol::modbus::rtu::{self, check_crc, MAX_ADU};
use dtu_supervisor::protocol::modbus::{Request, Response};
use dtu_supervisor::protocol::serial::Candidate;
use fuzz_support::{request, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let op = input.u8();
    let fix_crc = op & 0x80 != 0;
    match op & 0x7F {
        0 => {
            let slave = input.u8();
            let Some(request) = request(&mut input) else {
                return;
            };
            let adu = with_crc(input.rest(), fix_crc);
            parse_response(slave, &request, &adu);
        }
        1 => decode_request(&with_crc(input.rest(), fix_crc)),
        2 => lengths(input.rest()),
        _ => {
            let slave = input.u8();
            let function = input.u8();
            let flag = input.u8();
            let len = usize::from(input.u16());
            let expect = Expect::Rtu {
                slave,
                function,
                len: (flag & 1 != 0).then_some(len),
            };
            candidate(&expect, flag & 2 != 0, input.rest());
        }
    }
});

/// `bytes`, their last two replaced by the CRC of the others when `fix`.
fn with_crc(bytes: &[u8], fix: bool) -> Vec<u8> {
    if !fix || bytes.len() < 3 {
        return bytes.to_vec();
    }
    let mut adu = bytes[..bytes.len() - 2].to_vec();
    rtu::append_crc(&mut adu);
    adu
}

fn parse_response(slave: u8, request: &Request, adu: &[u8]) {
    let function = request.function();
    if let Ok(response) = rtu::parse_response(slave, request, adu) {
        // What was accepted is an answer to this request, as the simulator would write it.
        match (&response, request) {
            (
                Response::Bits(bits),
                Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. },
            ) => assert_eq!(bits.len(), usize::from(*count)),
            (Response::Bits(_), _) => panic!("bits answer a read of coils or inputs only"),
            _ => assert_eq!(response.encode(slave, function), adu),
        }
        // Slave, the PDU the request fixes, CRC.
        assert_eq!(adu.len(), 1 + request.answer_pdu_len() + 2);
    }
    if let Ok(raw) = rtu::parse_raw_response(slave, function, adu) {
        assert_eq!(raw, adu);
    }
}

fn decode_request(adu: &[u8]) {
    let Ok((slave, request)) = Request::decode(adu) else {
        return;
    };
    assert!(
        request.validate().is_ok(),
        "{request:?} decoded but invalid"
    );
    let encoded = request.encode(slave);
    // Coil writes may carry set padding bits, which encoding clears.
    if !matches!(request, Request::WriteMultipleCoils { .. }) {
        assert_eq!(encoded, adu);
    }
    assert_eq!(Request::decode(&encoded), Ok((slave, request)));
}

fn lengths(bytes: &[u8]) {
    if let Some(n) = rtu::response_len(bytes) {
        assert!(n >= 4);
    }
    let _ = rtu::request_len(bytes);
    if let Some((start, len)) = rtu::find_request(bytes) {
        let frame = bytes.get(start..start + len).expect("inside the bytes");
        assert!(len >= 4 && check_crc(frame));
    }
    // A frame given its CRC carries one.
    if !bytes.is_empty() {
        assert!(check_crc(&rtu::ensure_crc(bytes.to_vec())));
    }
}

fn candidate(expect: &Expect, exceptions: bool, bytes: &[u8]) {
    let result = expect.candidate(bytes, exceptions);
    if result != Candidate::No {
        assert!(expect.may_start(bytes, exceptions));
    }
    if let Candidate::Answer(n) = result {
        let adu = bytes.get(..n).expect("an answer inside the bytes");
        assert!(n <= MAX_ADU && check_crc(adu));
        if let Expect::Rtu {
            len: Some(len),
            function,
            ..
        } = expect
        {
            if adu[1] == *function && function & 0x80 == 0 {
                assert_eq!(n, *len, "the length the request fixes");
            }
        }
    }
}
