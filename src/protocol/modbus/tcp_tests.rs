use super::*;
use crate::protocol::hex::parse_hex;
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    parse_hex(s).expect("test hex")
}

// Test vectors: built by pymodbus 3.8.6 (a peer implementation), `FramerSocket(DecodePDU(False))
// .buildFrame(pdu)` with the PDU named beside each; the register values are the Modbus
// Application Protocol Specification V1.1b3's FC3 example (§6.3: registers 108..110 of
// slave 17 hold 0x022B, 0x0000, 0x0064).

/// ReadHoldingRegistersRequest(address=0x6B, count=3, dev_id=17, transaction_id=1)
const READ_REQUEST: &str = "00 01 00 00 00 06 11 03 00 6B 00 03";
/// ReadHoldingRegistersResponse(registers=[0x022B, 0, 0x64], dev_id=17, transaction_id=1)
const READ_RESPONSE: &str = "00 01 00 00 00 09 11 03 06 02 2B 00 00 00 64";
/// WriteSingleRegisterRequest(address=1, registers=[3], dev_id=1, transaction_id=0x1234);
/// the response (an echo) is the same bytes.
const WRITE: &str = "12 34 00 00 00 06 01 06 00 01 00 03";
/// ExceptionResponse(3, 2, slave=17, transaction=7): illegal data address.
const EXCEPTION: &str = "00 07 00 00 00 03 11 83 02";

fn read() -> Request {
    Request::ReadHoldingRegisters {
        start: 0x6B,
        count: 3,
    }
}

#[test]
fn requests_encode_as_pymodbus_builds_them() {
    assert_eq!(encode_request(1, 17, &read()), h(READ_REQUEST));
    let write = Request::WriteSingleRegister {
        address: 1,
        value: 3,
    };
    assert_eq!(encode_request(0x1234, 1, &write), h(WRITE));
}

#[test]
fn responses_parse_and_are_matched_by_transaction_unit_and_function() {
    assert_eq!(
        parse_response(1, 17, &read(), &h(READ_RESPONSE)),
        Ok(Response::Registers(vec![0x022B, 0, 0x64]))
    );
    let write = Request::WriteSingleRegister {
        address: 1,
        value: 3,
    };
    assert_eq!(
        parse_response(0x1234, 1, &write, &h(WRITE)),
        Ok(Response::WriteSingleRegister {
            address: 1,
            value: 3
        })
    );
    assert_eq!(
        parse_response(7, 17, &read(), &h(EXCEPTION)),
        Err(ModbusError::Exception {
            function: 3,
            code: 2
        })
    );
    assert_eq!(
        parse_response(2, 17, &read(), &h(READ_RESPONSE)),
        Err(ModbusError::WrongTransaction {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        parse_response(1, 18, &read(), &h(READ_RESPONSE)),
        Err(ModbusError::WrongSlave {
            expected: 18,
            got: 17
        })
    );
    let fc4 = Request::ReadInputRegisters {
        start: 0x6B,
        count: 3,
    };
    assert!(matches!(
        parse_response(1, 17, &fc4, &h(READ_RESPONSE)),
        Err(ModbusError::WrongFunction { .. })
    ));
}

#[test]
fn bad_headers_are_refused() {
    let mut protocol = h(READ_RESPONSE);
    protocol[3] = 1;
    let mut short_length = h(READ_RESPONSE);
    short_length[5] = 8;
    let truncated = h(READ_RESPONSE)[..10].to_vec();
    for adu in [
        protocol,
        short_length,
        truncated,
        vec![],
        h("00 01 00 00 00 01 11"),
    ] {
        assert!(
            matches!(
                parse_response(1, 17, &read(), &adu),
                Err(ModbusError::BadLength { .. })
            ),
            "{adu:02X?}"
        );
    }
    // A byte count that disagrees with the request.
    let fewer = h("00 01 00 00 00 07 11 03 04 02 2B 00 00");
    assert!(matches!(
        parse_response(1, 17, &read(), &fewer),
        Err(ModbusError::BadLength { .. })
    ));
}

#[test]
fn raw_answers_keep_their_bytes_and_lengths_are_checked() {
    assert_eq!(
        parse_raw_response(1, 17, 3, &h(READ_RESPONSE)),
        Ok(h(READ_RESPONSE))
    );
    assert!(parse_raw_response(1, 17, 3, &h(EXCEPTION)).is_err());
    // A read PDU whose byte count disagrees with the MBAP length.
    let odd = h("00 01 00 00 00 06 11 03 06 02 2B 00");
    assert!(parse_raw_response(1, 17, 3, &odd).is_err());
}

#[test]
fn the_simulator_executes_requests_as_rtu() {
    let (transaction, rtu_adu) = to_rtu(&h(READ_REQUEST)).expect("a request");
    assert_eq!(transaction, 1);
    assert_eq!(rtu_adu, read().encode(17));
    let answer = Response::Registers(vec![0x022B, 0, 0x64]).encode(17, 3);
    assert_eq!(from_rtu(1, &answer), Some(h(READ_RESPONSE)));
    let exception = rtu::exception_adu(17, 3, 2);
    assert_eq!(from_rtu(7, &exception), Some(h(EXCEPTION)));
    assert_eq!(from_rtu(7, &[17, 3, 0, 0]), None, "bad CRC");
}

#[test]
fn requests_are_found_after_junk_and_not_before_they_are_whole() {
    let request = h(READ_REQUEST);
    let mut buf = b"\x01\x02www".to_vec();
    buf.extend_from_slice(&request);
    assert_eq!(find_request(&buf), Some((5, 12)));
    for cut in 0..request.len() {
        assert_eq!(find_request(&request[..cut]), None, "cut at {cut}");
    }
    let write = Request::WriteMultipleRegisters {
        address: 10,
        values: vec![1, 2, 3],
    };
    let adu = encode_request(9, 4, &write);
    assert_eq!(find_request(&adu), Some((0, adu.len())));
    // An RTU frame is not a Modbus TCP request.
    assert_eq!(find_request(&read().encode(17)), None);
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), transaction: u16, unit: u8) {
        let _ = split(&bytes);
        let _ = parse_response(transaction, unit, &read(), &bytes);
        let _ = parse_raw_response(transaction, unit, 3, &bytes);
        let _ = to_rtu(&bytes);
        let _ = from_rtu(transaction, &bytes);
        if let Some((start, len)) = find_request(&bytes) {
            prop_assert!(start + len <= bytes.len());
        }
        let _ = response_len(&bytes);
        let _ = response_pdu_len(&bytes);
    }

    #[test]
    fn register_answers_round_trip(transaction: u16, unit in 1u8..=247, start: u16, values in proptest::collection::vec(any::<u16>(), 1..=125)) {
        let count = values.len() as u16;
        prop_assume!(usize::from(start) + values.len() <= 0x1_0000);
        let request = Request::ReadHoldingRegisters { start, count };
        let (t, rtu_request) = to_rtu(&encode_request(transaction, unit, &request)).expect("request");
        prop_assert_eq!(t, transaction);
        prop_assert_eq!(&rtu_request, &request.encode(unit));
        let answer = from_rtu(transaction, &Response::Registers(values.clone()).encode(unit, 3)).expect("answer");
        prop_assert_eq!(response_len(&answer), Some(answer.len()));
        prop_assert_eq!(parse_response(transaction, unit, &request, &answer), Ok(Response::Registers(values)));
    }
}
