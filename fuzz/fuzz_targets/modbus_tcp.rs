//! Modbus TCP (protocol/modbus/tcp.rs), as a Modbus TCP device behind a transparent DTU
//! answers: the master's response parser and the length rules a transparent link cuts
//! answers by; the slave's side (the simulator) turning requests into RTU frames and back,
//! and finding requests in a byte stream.
//!
//! Input: an operation byte, its fields, then the bytes.
//! ```text
//! 0  parse_response    transaction u16, unit, request (fuzz_support::request), ADU
//! 1  find_request      bytes
//! 2  to_rtu / from_rtu ADU
//! 3  Expect::Tcp       transaction u16, unit, function, exceptions flag, bytes
//! ```
#![no_main]

use dtu_supervisor::protocol::link::Expect;
use dtu_supervisor::protocol::modbus::rtu::check_crc;
use dtu_supervisor::protocol::modbus::tcp::{self, MAX_ADU};
use dtu_supervisor::protocol::modbus::{Request, Response};
use dtu_supervisor::protocol::serial::Candidate;
use fuzz_support::{request, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        0 => {
            let transaction = input.u16();
            let unit = input.u8();
            let Some(request) = request(&mut input) else {
                return;
            };
            parse_response(transaction, unit, &request, input.rest());
        }
        1 => find_request(input.rest()),
        2 => to_rtu(input.rest()),
        _ => {
            let expect = Expect::Tcp {
                transaction: input.u16(),
                unit: input.u8(),
                function: input.u8(),
            };
            let exceptions = input.u8() & 1 != 0;
            candidate(&expect, exceptions, input.rest());
        }
    }
    // Total on any bytes.
    let _ = tcp::response_len(data);
    let _ = tcp::response_pdu_len(data);
});

fn parse_response(transaction: u16, unit: u8, request: &Request, adu: &[u8]) {
    let function = request.function();
    if let Ok(response) = tcp::parse_response(transaction, unit, request, adu) {
        match (&response, request) {
            (
                Response::Bits(bits),
                Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. },
            ) => assert_eq!(bits.len(), usize::from(*count)),
            (Response::Bits(_), _) => panic!("bits answer a read of coils or inputs only"),
            // What was accepted is the answer the simulator writes.
            _ => assert_eq!(tcp::frame(transaction, unit, &response.pdu(function)), adu),
        }
        assert_eq!(adu.len(), tcp::HEADER + request.answer_pdu_len());
    }
    if let Ok(raw) = tcp::parse_raw_response(transaction, unit, function, adu) {
        assert_eq!(raw, adu);
    }
}

fn find_request(bytes: &[u8]) {
    if let Some((start, len)) = tcp::find_request(bytes) {
        let adu = bytes.get(start..start + len).expect("inside the bytes");
        assert!(len <= MAX_ADU);
        // A request found is one the simulator can execute.
        let (transaction, rtu) = tcp::to_rtu(adu).expect("a found request splits");
        assert_eq!(tcp::from_rtu(transaction, &rtu).as_deref(), Some(adu));
    }
}

fn to_rtu(adu: &[u8]) {
    if let Ok((transaction, rtu)) = tcp::to_rtu(adu) {
        assert!(check_crc(&rtu));
        assert_eq!(tcp::from_rtu(transaction, &rtu).as_deref(), Some(adu));
    }
}

fn candidate(expect: &Expect, exceptions: bool, bytes: &[u8]) {
    if let Candidate::Answer(n) = expect.candidate(bytes, exceptions) {
        let adu = bytes.get(..n).expect("an answer inside the bytes");
        assert!((8..=MAX_ADU).contains(&n));
        tcp::split(adu).expect("an answer cut out has a sound header");
    }
}
