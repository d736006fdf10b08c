//! Unit tests of the RTU framing: known-good frames, every fault, lengths, round trips and
//! garbage.

use super::*;
use crate::protocol::hex::parse_hex;
use crate::protocol::modbus::exception_name;
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
            (0..=max, Just(values))
                .prop_map(|(address, values)| Request::WriteMultipleRegisters { address, values })
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
            Request::WriteMultipleRegisters { address, values } => Just(Response::WriteMultiple {
                address: *address,
                count: values.len() as u16,
            })
            .boxed(),
        };
        (Just(request), response)
    })
}

#[test]
fn requests_are_found_behind_junk() {
    let request = Request::ReadHoldingRegisters { start: 7, count: 1 }.encode(1);
    assert_eq!(find_request(&request), Some((0, 8)));
    assert_eq!(find_request(&request[..5]), None);
    let mut junk = b"www".to_vec();
    junk.extend_from_slice(&request);
    assert_eq!(find_request(&junk), Some((3, 8)));
    let multi = Request::WriteMultipleRegisters {
        address: 1,
        values: vec![1, 2, 3],
    }
    .encode(1);
    assert_eq!(find_request(&multi), Some((0, 15)));
    assert_eq!(find_request(&multi[..10]), None);
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
