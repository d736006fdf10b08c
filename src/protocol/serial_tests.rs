//! Modbus TCP and DL/T 645 answers cut out of a transparent DTU's byte stream, at every split
//! position, between heartbeats; and garbage. The frames are the peer-built vectors of
//! `modbus/tcp_tests.rs` (pymodbus 3.8.6) and `dlt645/tests.rs` (the `dlt645` package 3.2.0).

use super::*;
use crate::protocol::hex::parse_hex;
use crate::protocol::link::{
    Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec, Registration, RegistrationMode,
};
use crate::protocol::test_util::{check_every_split, feed};
use crate::protocol::transparent::TransparentCodec;
use bytes::Bytes;
use proptest::prelude::*;

const IMEI: &[u8] = b"866123456789012";
const HB: &[u8] = b"www.usr.cn";

/// pymodbus: ReadHoldingRegistersResponse(registers=[0x022B, 0, 0x64], dev_id=17,
/// transaction_id=1).
const TCP_ANSWER: &str = "00 01 00 00 00 09 11 03 06 02 2B 00 00 00 64";
/// pymodbus: ExceptionResponse(3, 2, slave=17, transaction=7).
const TCP_EXCEPTION: &str = "00 07 00 00 00 03 11 83 02";
/// dlt645: build_frame(01 00 00 00 00 00, 0x91, DI 00010000 + 123456.78 "XXXXXX.XX", 4).
const DLT_ENERGY: &str = "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 AB 89 67 45 17 16";
/// dlt645: build_frame(addr, 0x93, addr, 4), the answer to the read of the address.
const DLT_ADDRESS: &str = "FE FE FE FE 68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16";
/// dlt645: build_frame(addr, 0xD1, [0x02], 0), an error answer.
const DLT_ERROR: &str = "68 01 00 00 00 00 00 68 D1 01 35 D8 16";

fn h(s: &str) -> Vec<u8> {
    parse_hex(s).expect("test hex")
}

fn usr(expect: Option<Expect>) -> TransparentCodec {
    let mut codec = TransparentCodec::new(
        Registration {
            format: IdFormat::Ascii,
            matcher: IdMatcher::Pattern(regex::Regex::new("^[0-9]{15}$").expect("regex")),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        Some(Heartbeat {
            bytes: HB.to_vec(),
            reply: Vec::new(),
        }),
    );
    codec.set_expect(expect);
    codec
}

fn reg() -> Inbound {
    Inbound::Register {
        id: String::from_utf8_lossy(IMEI).into(),
        raw: Bytes::from_static(IMEI),
    }
}

fn hb() -> Inbound {
    Inbound::Heartbeat {
        raw: Bytes::from_static(HB),
    }
}

fn answer(bytes: &[u8]) -> Inbound {
    Inbound::Answer(Bytes::copy_from_slice(bytes))
}

fn stream(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn meter() -> dlt645::Address {
    "000000000001".parse().expect("address")
}

const TCP_READ: Expect = Expect::Tcp {
    transaction: 1,
    unit: 17,
    function: 3,
};

fn energy_read() -> Expect {
    Expect::Dlt645 {
        address: Some(meter()),
        request: dlt645::Request::Read(dlt645::Di(0x0001_0000)),
    }
}

#[test]
fn a_modbus_tcp_answer_between_heartbeats_at_every_split() {
    let tcp = h(TCP_ANSWER);
    check_every_split(
        || usr(Some(TCP_READ)),
        &stream(&[IMEI, HB, &tcp, HB]),
        &[reg(), hb(), answer(&tcp), hb()],
    );
    let exception = h(TCP_EXCEPTION);
    let awaited = Expect::Tcp {
        transaction: 7,
        unit: 17,
        function: 3,
    };
    check_every_split(
        || usr(Some(awaited)),
        &stream(&[IMEI, &exception, HB]),
        &[reg(), answer(&exception), hb()],
    );
}

#[test]
fn a_modbus_tcp_answer_of_another_transaction_is_no_answer() {
    let tcp = h(TCP_ANSWER);
    let other = Expect::Tcp {
        transaction: 2,
        unit: 17,
        function: 3,
    };
    check_every_split(
        || usr(Some(other)),
        &stream(&[IMEI, &tcp, HB]),
        &[reg(), Inbound::Unsolicited(Bytes::from(tcp.clone())), hb()],
    );
}

#[test]
fn a_modbus_tcp_length_that_breaks_the_function_rule_is_dropped() {
    // FC3 with byte count 6, but an MBAP length saying 8 bytes follow the header.
    let bad = h("00 01 00 00 00 08 11 03 06 02 2B 00 00 00");
    let (items, err, _) = feed(&mut usr(Some(TCP_READ)), &[IMEI, &bad, HB]);
    assert_eq!(err, None);
    assert!(
        !items.iter().any(|i| matches!(i, Inbound::Answer(_))),
        "{items:?}"
    );
    assert!(matches!(items.first(), Some(Inbound::Register { .. })));
    assert!(
        matches!(items.get(1), Some(Inbound::Malformed { .. })),
        "{items:?}"
    );
    assert_eq!(items.last(), Some(&hb()));
}

#[test]
fn dlt645_answers_with_their_preamble_at_every_split() {
    let energy = h(DLT_ENERGY);
    check_every_split(
        || usr(Some(energy_read())),
        &stream(&[IMEI, HB, &energy, HB]),
        &[reg(), hb(), answer(&energy), hb()],
    );
    let error = h(DLT_ERROR);
    check_every_split(
        || usr(Some(energy_read())),
        &stream(&[IMEI, &error, HB]),
        &[reg(), answer(&error), hb()],
    );
    // The read of the address: any meter may answer.
    let address = h(DLT_ADDRESS);
    let discover = Expect::Dlt645 {
        address: None,
        request: dlt645::Request::ReadAddress,
    };
    check_every_split(
        || usr(Some(discover)),
        &stream(&[IMEI, HB, &address]),
        &[reg(), hb(), answer(&address)],
    );
}

#[test]
fn a_dlt645_answer_of_another_meter_is_no_answer() {
    let energy = h(DLT_ENERGY);
    let elsewhere = Expect::Dlt645 {
        address: Some("000000000002".parse().expect("address")),
        request: dlt645::Request::Read(dlt645::Di(0x0001_0000)),
    };
    let (items, err, rest) = feed(&mut usr(Some(elsewhere)), &[IMEI, &energy, HB]);
    assert_eq!((err, rest.len()), (None, 0));
    assert!(
        !items.iter().any(|i| matches!(i, Inbound::Answer(_))),
        "{items:?}"
    );
    assert_eq!(items.last(), Some(&hb()));
}

#[test]
fn a_dlt645_answer_with_a_bad_checksum_is_dropped() {
    let mut energy = h(DLT_ENERGY);
    let cs = energy.len() - 2;
    energy[cs] ^= 0x01;
    let (items, err, rest) = feed(&mut usr(Some(energy_read())), &[IMEI, &energy, HB]);
    assert_eq!((err, rest.len()), (None, 0));
    assert!(
        !items.iter().any(|i| matches!(i, Inbound::Answer(_))),
        "{items:?}"
    );
    assert!(
        items
            .iter()
            .any(|i| matches!(i, Inbound::Malformed { reason, .. } if reason.contains("checksum"))),
        "{items:?}"
    );
    assert_eq!(items.last(), Some(&hb()));
}

#[test]
fn an_rtu_answer_whose_byte_count_differs_from_the_request_is_refused_at_once() {
    // A read of 2 registers: a 9-byte answer. `01 03 7F` announces 127 data bytes.
    let expect = Expect::Rtu {
        slave: 1,
        function: 3,
        len: Some(9),
    };
    let good = crate::protocol::modbus::Response::Registers(vec![1, 2]).encode(1, 3);
    assert_eq!(expect.candidate(&good, true), Candidate::Answer(9));
    assert!(matches!(
        expect.candidate(&h("01 03 7F 00"), true),
        Candidate::Rejected(reason) if reason.contains("132") && reason.contains('9')
    ));
    // Without the header's byte count yet: wait; an exception keeps its own length.
    assert_eq!(expect.candidate(&h("01 03"), true), Candidate::Wait);
    let exception = rtu::exception_adu(1, 3, 2);
    assert_eq!(expect.candidate(&exception, true), Candidate::Answer(5));
    // Unknown length (a hand-written request of another function): the byte count rules.
    let unknown = Expect::Rtu {
        slave: 1,
        function: 3,
        len: None,
    };
    assert_eq!(unknown.candidate(&h("01 03 7F 00"), true), Candidate::Wait);
}

#[test]
fn the_simulator_finds_requests_of_each_framing() {
    let junk: &[u8] = b"\x01www.usr.cn";
    let cases = [
        (
            Framing::Rtu,
            crate::protocol::modbus::Request::read(3, 0, 2)
                .expect("read")
                .encode(1),
        ),
        (
            Framing::ModbusTcp,
            crate::protocol::modbus::tcp::encode_request(
                5,
                1,
                &crate::protocol::modbus::Request::read(3, 0, 2).expect("read"),
            ),
        ),
        (
            Framing::Dlt645,
            dlt645::Request::Read(dlt645::Di(0x0201_0100)).encode(&meter()),
        ),
    ];
    for (framing, request) in cases {
        let buf = [junk, &request].concat();
        assert_eq!(
            framing.find_request(&buf),
            Some((junk.len(), request.len())),
            "{framing}"
        );
        assert!(request.len() <= framing.max_request());
        assert_eq!(framing.as_str().parse::<Framing>(), Ok(framing));
    }
    assert!("modbus".parse::<Framing>().is_err());
}

proptest! {
    /// Garbage after the registration, with an answer of each kind awaited: no panic, no
    /// error, and every byte is consumed or waits as the start of what is awaited.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), which in 0usize..3) {
        let expect = [TCP_READ, energy_read(), Expect::Dlt645 { address: None, request: dlt645::Request::ReadAddress }][which];
        let (_, err, rest) = feed(&mut usr(Some(expect)), &[IMEI, &bytes]);
        prop_assert_eq!(err, None);
        prop_assert!(rest.len() <= MAX_REQUEST, "{} bytes held", rest.len());
        for framing in Framing::ALL {
            if let Some((start, len)) = framing.find_request(&bytes) {
                prop_assert!(start + len <= bytes.len());
            }
        }
    }
}
