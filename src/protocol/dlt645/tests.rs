use super::formats::{known, Format, Reading};
use super::*;
use crate::protocol::hex::parse_hex;
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    parse_hex(s).expect("test hex")
}

// Test vectors: built by the `dlt645` package 3.2.0 from PyPI (a peer implementation,
// `dlt645.protocol.protocol.DLT645Protocol.build_frame(addr, ctrl, data, preamble_count)` with
// the data encoded by its `float_to_bcd(value, format, "little")` / `string_to_bcd(digits,
// "little")`), for the meter whose wire address is `01 00 00 00 00 00` (printed
// 000000000001). The first is also the read-address frame quoted in most DL/T 645 guides.

/// build_frame(AA*6, 0x13, b"", 0)
const READ_ADDRESS_FRAME: &str = "68 AA AA AA AA AA AA 68 13 00 DF 16";
/// build_frame(addr, 0x93, addr, 4)
const ADDRESS_ANSWER: &str = "FE FE FE FE 68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16";
/// build_frame(addr, 0x11, DI 00010000, 0): read forward active total energy.
const READ_ENERGY: &str = "68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16";
/// build_frame(addr, 0x91, DI 00010000 + float_to_bcd(123456.78, "XXXXXX.XX"), 4)
const ENERGY_ANSWER: &str =
    "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 AB 89 67 45 17 16";
/// build_frame(addr, 0x91, DI 02010100 + float_to_bcd(220.1, "XXX.X"), 4)
const VOLTAGE_ANSWER: &str = "FE FE FE FE 68 01 00 00 00 00 00 68 91 06 33 34 34 35 34 55 C1 16";
/// build_frame(addr, 0x91, DI 02020100 + float_to_bcd(-1.234, "XXX.XXX"), 0): sign bit.
const CURRENT_ANSWER: &str = "68 01 00 00 00 00 00 68 91 07 33 34 35 35 67 45 B3 99 16";
/// build_frame(addr, 0x91, DI 02030000 + float_to_bcd(-12.3456, "XX.XXXX"), 0)
const POWER_ANSWER: &str = "68 01 00 00 00 00 00 68 91 07 33 33 36 35 89 67 C5 EF 16";
/// build_frame(addr, 0x91, DI 02060000 + float_to_bcd(0.987, "X.XXX"), 0)
const PF_ANSWER: &str = "68 01 00 00 00 00 00 68 91 06 33 33 39 35 BA 3C 32 16";
/// build_frame(addr, 0x91, DI 02800002 + float_to_bcd(49.98, "XX.XX"), 0)
const FREQUENCY_ANSWER: &str = "68 01 00 00 00 00 00 68 91 06 35 33 B3 35 CB 7C FF 16";
/// build_frame(addr, 0x91, DI 04000101 + string_to_bcd("25110201", "little"), 0)
const DATE_ANSWER: &str = "68 01 00 00 00 00 00 68 91 08 34 34 33 37 34 35 44 58 41 16";
/// build_frame(addr, 0x91, DI 04000102 + string_to_bcd("134530", "little"), 0)
const TIME_ANSWER: &str = "68 01 00 00 00 00 00 68 91 07 35 34 33 37 63 78 46 5D 16";
/// build_frame(addr, 0xD1, [0x02], 0): error answer, no such data.
const ERROR_ANSWER: &str = "68 01 00 00 00 00 00 68 D1 01 35 D8 16";

fn meter() -> Address {
    "000000000001".parse().expect("address")
}

fn di(s: &str) -> Di {
    s.parse().expect("di")
}

#[test]
fn addresses_and_identifiers_print_as_the_standard_writes_them() {
    assert_eq!(meter().0, [1, 0, 0, 0, 0, 0]);
    let a: Address = "123456789012".parse().expect("address");
    assert_eq!(a.0, [0x12, 0x90, 0x78, 0x56, 0x34, 0x12]);
    assert_eq!(a.to_string(), "123456789012");
    assert_eq!(BROADCAST.to_string(), "AAAAAAAAAAAA");
    for bad in ["12345678901", "1234567890123", "12345678901A", ""] {
        assert!(bad.parse::<Address>().is_err(), "{bad}");
    }
    assert_eq!(di("00010000").wire(), [0, 0, 1, 0]);
    assert_eq!(di("0201ff00").to_string(), "0201FF00");
    for bad in ["0001000", "000100000", "0001000G", "+0010000"] {
        assert!(bad.parse::<Di>().is_err(), "{bad}");
    }
}

#[test]
fn requests_encode_as_the_peer_builds_them() {
    // Our requests carry the four FE of the preamble; the peer built these without.
    assert_eq!(
        Request::ReadAddress.encode(&meter()),
        [h("FE FE FE FE"), h(READ_ADDRESS_FRAME)].concat()
    );
    assert_eq!(
        Request::Read(di("00010000")).encode(&meter()),
        [h("FE FE FE FE"), h(READ_ENERGY)].concat()
    );
}

#[test]
fn answers_decode_with_the_decimals_and_sign_of_their_format() {
    let cases: [(&str, &str, f64); 6] = [
        (ENERGY_ANSWER, "00010000", 123_456.78),
        (VOLTAGE_ANSWER, "02010100", 220.1),
        (CURRENT_ANSWER, "02020100", -1.234),
        (POWER_ANSWER, "02030000", -12.3456),
        (PF_ANSWER, "02060000", 0.987),
        (FREQUENCY_ANSWER, "02800002", 49.98),
    ];
    for (frame, id, value) in cases {
        let request = Request::Read(di(id));
        let Ok(Answer::Data {
            di: got,
            data,
            more,
        }) = parse_answer(request, Some(&meter()), &h(frame))
        else {
            panic!("{frame} does not answer {id}");
        };
        assert_eq!((got, more), (di(id), false));
        let format = known(got).expect("in the table").format;
        let reading = format.decode(&data).expect("decodes");
        assert!((reading.value - value).abs() < 1e-9, "{id}: {reading:?}");
        assert_eq!(format.encode(value), data, "{id} encodes back");
    }
    let date = parse_answer(
        Request::Read(di("04000101")),
        Some(&meter()),
        &h(DATE_ANSWER),
    );
    let Ok(Answer::Data { data, .. }) = date else {
        panic!("{date:?}");
    };
    assert_eq!(
        Format::Date.decode(&data),
        Ok(Reading {
            value: 25_110_201.0,
            text: Some("2025-11-02, weekday 1".into())
        })
    );
    let time = parse_answer(Request::Read(di("04000102")), None, &h(TIME_ANSWER));
    let Ok(Answer::Data { data, .. }) = time else {
        panic!("{time:?}");
    };
    assert_eq!(
        Format::Time.decode(&data).map(|r| r.text),
        Ok(Some("13:45:30".into()))
    );
}

#[test]
fn the_address_answer_names_the_meter() {
    assert_eq!(
        parse_answer(Request::ReadAddress, None, &h(ADDRESS_ANSWER)),
        Ok(Answer::Address(meter()))
    );
}

#[test]
fn error_answers_and_answers_to_something_else() {
    let read = Request::Read(di("00010000"));
    assert_eq!(
        parse_answer(read, Some(&meter()), &h(ERROR_ANSWER)),
        Err(Dlt645Error::Meter { code: 2 })
    );
    assert_eq!(error_text(0x02), "no such data");
    assert_eq!(
        error_text(0x05),
        "other error, password wrong or not authorised"
    );
    let other: Address = "000000000002".parse().expect("address");
    assert!(matches!(
        parse_answer(read, Some(&other), &h(ENERGY_ANSWER)),
        Err(Dlt645Error::WrongAddress { .. })
    ));
    assert!(matches!(
        parse_answer(
            Request::Read(di("00020000")),
            Some(&meter()),
            &h(ENERGY_ANSWER)
        ),
        Err(Dlt645Error::WrongDi { .. })
    ));
    assert!(matches!(
        parse_answer(Request::ReadAddress, None, &h(ENERGY_ANSWER)),
        Err(Dlt645Error::WrongControl { .. })
    ));
    // Our own request is no answer.
    assert!(matches!(
        parse_answer(read, Some(&meter()), &h(READ_ENERGY)),
        Err(Dlt645Error::WrongControl { .. })
    ));
    let mut bad_cs = h(ENERGY_ANSWER);
    let at = bad_cs.len() - 2;
    bad_cs[at] ^= 1;
    assert!(matches!(
        parse_answer(read, Some(&meter()), &bad_cs),
        Err(Dlt645Error::BadFrame { .. })
    ));
    // B1: more frames follow; the first one's data is kept.
    let follows = Frame {
        address: meter(),
        control: 0xB1,
        data: [di("00010000").wire().to_vec(), vec![0, 0, 0, 0]].concat(),
    }
    .encode(0);
    assert!(matches!(
        parse_answer(read, Some(&meter()), &follows),
        Ok(Answer::Data { more: true, .. })
    ));
}

#[test]
fn frames_are_found_at_every_length_and_after_junk() {
    let frame = h(ENERGY_ANSWER);
    assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
    for cut in 0..frame.len() {
        assert_eq!(find_frame(&frame[..cut]), None, "cut at {cut}");
        assert!(frame_len(&frame[..cut]).is_ok(), "cut at {cut}");
    }
    let mut buf = b"www.usr.cn\x68\x01".to_vec();
    let start = buf.len();
    buf.extend_from_slice(&frame);
    assert_eq!(find_frame(&buf), Some((start, frame.len())));
    assert!(frame_len(&h("FE FE FE FE FE 68")).is_err());
    assert!(frame_len(&h("68 01 00 00 00 00 00 69")).is_err());
}

#[test]
fn the_table_and_format_overrides() {
    let f = |s: &str| s.parse::<Format>();
    assert_eq!(
        f("XXXXXX.XX"),
        Ok(Format::Number {
            digits: 8,
            decimals: 2,
            signed: false
        })
    );
    assert_eq!(
        f("-XX.XXXX"),
        Ok(Format::Number {
            digits: 6,
            decimals: 4,
            signed: true
        })
    );
    for bad in [
        "",
        "XXX",
        "X.",
        "XX.XX.X",
        "XXXXXXXXXXXXXXXXXX",
        "xx.xx",
        "NNNN.NN",
    ] {
        assert!(f(bad).is_err(), "{bad}");
    }
    for s in ["XXXXXX.XX", "-XX.XXXX", "XXXX", "YYMMDDWW", "hhmmss"] {
        assert_eq!(f(s).map(|f| f.to_string()), Ok(s.to_string()));
    }
    let unit = |id: &str| known(di(id)).map(|k| (k.format.to_string(), k.unit));
    assert_eq!(unit("00000000"), Some(("-XXXXXX.XX".into(), "kWh")));
    assert_eq!(unit("00013F0C"), Some(("XXXXXX.XX".into(), "kWh")));
    assert_eq!(unit("02010300"), Some(("XXX.X".into(), "V")));
    assert_eq!(unit("02040000"), Some(("-XX.XXXX".into(), "kvar")));
    assert_eq!(unit("02800002"), Some(("XX.XX".into(), "Hz")));
    for unknown in [
        "0001FF00", "00014000", "02010400", "0201FF00", "02050000", "04000103",
    ] {
        assert_eq!(known(di(unknown)), None, "{unknown}");
    }
    // Past what the digits hold, the largest value (with a sign bit, a top digit of 7).
    let saturated = |format: &str, value: f64| {
        let format: Format = format.parse().expect("format");
        format.decode(&format.encode(value)).map(|r| r.value)
    };
    assert_eq!(saturated("XX.XX", 1000.0), Ok(99.99));
    assert_eq!(saturated("-XX.XX", -1000.0), Ok(-79.99));
    assert!(Format::Time.decode(&[0x12, 0x34]).is_err(), "short");
    assert!(Format::Time.decode(&[0x1A, 0x34, 0x12]).is_err(), "not BCD");
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), id: u32) {
        let _ = Frame::decode(&bytes);
        let _ = parse_answer(Request::Read(Di(id)), Some(&meter()), &bytes);
        let _ = parse_answer(Request::ReadAddress, None, &bytes);
        if let Some((start, len)) = find_frame(&bytes) {
            prop_assert!(start + len <= bytes.len());
            prop_assert!(Frame::decode(&bytes[start..start + len]).is_ok());
        }
        if let Ok(Some(len)) = frame_len(&bytes) {
            prop_assert!(len <= MAX_FRAME);
        }
        for format in ["XXXXXX.XX", "-XX.XXXX", "YYMMDDWW", "hhmmss"] {
            let _ = format.parse::<Format>().map(|f| f.decode(&bytes));
        }
    }

    #[test]
    fn frames_round_trip(address: [u8; 6], control: u8, data in proptest::collection::vec(any::<u8>(), 0..=255), preamble in 0usize..=4) {
        let frame = Frame { address: Address(address), control, data };
        let bytes = frame.encode(preamble);
        prop_assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(find_frame(&bytes), Some((0, bytes.len())));
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
    }

    #[test]
    fn numbers_round_trip(value in -799_999.99f64..799_999.99) {
        let format: Format = "-XXXXXX.XX".parse().expect("format");
        let reading = format.decode(&format.encode(value)).expect("decodes");
        prop_assert!((reading.value - value).abs() <= 0.005 + 1e-9, "{} vs {}", reading.value, value);
    }
}
