//! Unit tests of the transparent link: every split position, glued heartbeats and answers,
//! resynchronisation, and garbage.
use super::*;
use crate::protocol::hex::parse_hex;
use crate::protocol::modbus::rtu::{self, exception_adu, MAX_ADU};
use crate::protocol::modbus::Response;
use crate::protocol::test_util::{check_every_split, feed, merge_data, splits};
use bytes::Bytes;
use proptest::prelude::*;

const IMEI: &[u8] = b"866123456789012";
const HB: &[u8] = b"www.usr.cn";

fn h(s: &str) -> Vec<u8> {
    parse_hex(s).unwrap()
}

fn data(bytes: &[u8]) -> Inbound {
    Inbound::Unsolicited(Bytes::copy_from_slice(bytes))
}

fn modbus(bytes: &[u8]) -> Inbound {
    Inbound::Answer(Bytes::copy_from_slice(bytes))
}

/// A registration as decoded: the id with the bytes it came as (ASCII).
fn reg(id: &str) -> Inbound {
    Inbound::Register {
        id: id.into(),
        raw: Bytes::copy_from_slice(id.as_bytes()),
    }
}

/// A registration of a hex-format profile: the bytes are the id's hex digits decoded.
fn reg_hex(id: &str) -> Inbound {
    Inbound::Register {
        id: id.into(),
        raw: Bytes::from(h(id)),
    }
}

/// The USR heartbeat of `usr()`.
fn hb() -> Inbound {
    Inbound::Heartbeat {
        raw: Bytes::from_static(HB),
    }
}

/// The one-byte heartbeat of `binary()`.
fn hb_fe() -> Inbound {
    Inbound::Heartbeat {
        raw: Bytes::from_static(&[0xFE]),
    }
}

/// USR-IOT default: IMEI registration, "www.usr.cn" heartbeat, no replies.
fn usr() -> TransparentCodec {
    TransparentCodec::new(
        Registration {
            format: IdFormat::Ascii,
            matcher: IdMatcher::Pattern(Regex::new("^[0-9]{15}$").unwrap()),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        Some(Heartbeat {
            bytes: HB.to_vec(),
            reply: Vec::new(),
        }),
    )
}

/// Binary 4-byte id rendered as hex, one-byte heartbeat FE answered with FE.
fn binary() -> TransparentCodec {
    TransparentCodec::new(
        Registration {
            format: IdFormat::Hex,
            matcher: IdMatcher::Length(4),
            reply: h("AA 55"),
            mode: RegistrationMode::Connect,
        },
        Some(Heartbeat {
            bytes: h("FE"),
            reply: h("FE"),
        }),
    )
}

fn expecting(mut codec: TransparentCodec, slave: u8, function: u8) -> TransparentCodec {
    codec.set_expect(Some(Expect::Rtu {
        slave,
        function,
        len: None,
    }));
    codec
}

/// Every cut of `stream` through a fresh `make()` codec gives `expected` and no error.
fn check_all_splits(make: impl Fn() -> TransparentCodec, stream: &[u8], expected: &[Inbound]) {
    let expected = merge_data(expected.to_vec());
    for chunks in splits(stream) {
        let (items, err, rest) = feed(&mut make(), &chunks);
        assert_eq!(err, None, "chunks {chunks:?}");
        assert_eq!(items, expected, "chunks {chunks:?}");
        assert!(rest.is_empty(), "left {rest:?} for {chunks:?}");
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn registration_by_pattern() {
    check_all_splits(usr, IMEI, &[reg("866123456789012")]);
    let mut codec = usr();
    let (items, err, rest) = feed(&mut codec, &[&IMEI[..14]]);
    assert!(items.is_empty() && err.is_none() && rest.len() == 14);
    assert!(!codec.is_registered());
    let (items, _, _) = feed(&mut codec, &[&IMEI[..14], &IMEI[14..]]);
    assert_eq!(items, vec![reg("866123456789012")]);
    assert!(codec.is_registered());
}

#[test]
fn registration_takes_longest_matching_prefix() {
    let codec = || {
        TransparentCodec::new(
            Registration {
                format: IdFormat::Ascii,
                // Unanchored on purpose: the codec anchors it.
                matcher: IdMatcher::Pattern(Regex::new("[0-9]{4,15}").unwrap()),
                reply: Vec::new(),
                mode: RegistrationMode::Connect,
            },
            None,
        )
    };
    let mut buf = BytesMut::from(&b"123456789012345678"[..]);
    let item = codec().decode(&mut buf).unwrap();
    assert_eq!(item, Some(reg("123456789012345")));
    assert_eq!(&buf[..], b"678");
    let (items, _, rest) = feed(&mut codec(), &[b"12345abc"]);
    assert_eq!(items[0], reg("12345"));
    assert!(rest.is_empty(), "abc became data");
    assert_eq!(items[1], data(b"abc"));
}

#[test]
fn registration_hex_pattern() {
    let codec = || {
        TransparentCodec::new(
            Registration {
                format: IdFormat::Hex,
                matcher: IdMatcher::Pattern(Regex::new("^A5[0-9A-F]{6}$").unwrap()),
                reply: Vec::new(),
                mode: RegistrationMode::Connect,
            },
            None,
        )
    };
    check_all_splits(codec, &h("A5 01 02 0B"), &[reg_hex("A501020B")]);
}

#[test]
fn registration_by_length_hex() {
    check_all_splits(
        binary,
        &h("00 00 03 E9 FE"),
        &[reg_hex("000003E9"), hb_fe()],
    );
}

#[test]
fn registration_failures() {
    // 63 bytes without a match: maybe more comes. 64: give up.
    let junk = [b'x'; 64];
    let (items, err, _) = feed(&mut usr(), &[&junk[..63]]);
    assert!(items.is_empty() && err.is_none());
    let (_, err, _) = feed(&mut usr(), &[&junk[..63], &junk[63..]]);
    assert!(err
        .unwrap()
        .contains("no registration id in the first 64 bytes"));
    // Invalid UTF-8 is never an ascii id.
    let (_, err, _) = feed(&mut usr(), &[&[0xFF; 70]]);
    assert!(err.is_some());
    let ascii4 = TransparentCodec::new(
        Registration {
            format: IdFormat::Ascii,
            matcher: IdMatcher::Length(4),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        None,
    );
    let (_, err, _) = feed(&mut { ascii4 }, &[&h("41 42 C3 28")]);
    assert!(err.unwrap().contains("UTF-8"));
    let zero = TransparentCodec::new(
        Registration {
            format: IdFormat::Hex,
            matcher: IdMatcher::Length(0),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        None,
    );
    assert!(feed(&mut { zero }, &[b"a"]).1.is_some());
    let long = TransparentCodec::new(
        Registration {
            format: IdFormat::Hex,
            matcher: IdMatcher::Length(REGISTRATION_WINDOW + 1),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        None,
    );
    assert!(feed(&mut { long }, &[b"a"])
        .1
        .unwrap()
        .contains("outside 1..=64"));
}

/// Registration, heartbeats, responses, data and an exception all glued in one read,
/// and cut at every position.
#[test]
fn glued_session_at_every_split() {
    let r1 = Response::Registers(vec![0x0102, 0x0304]).encode(1, 3);
    let r2 = exception_adu(1, 3, 2);
    let stream = cat(&[IMEI, HB, &r1, HB, b"hello ww!", &r2, HB, &r1]);
    check_all_splits(
        || expecting(usr(), 1, 3),
        &stream,
        &[
            reg("866123456789012"),
            hb(),
            modbus(&r1),
            hb(),
            data(b"hello ww!"),
            modbus(&r2),
            hb(),
            modbus(&r1),
        ],
    );
}

#[test]
fn two_responses_and_heartbeat_between() {
    let r1 = Response::Registers(vec![7]).encode(9, 4);
    let r2 = Response::Registers(vec![8]).encode(9, 4);
    let stream = cat(&[&h("00 00 00 09"), &r1, &r2, &h("FE"), &r1]);
    check_all_splits(
        || expecting(binary(), 9, 4),
        &stream,
        &[
            reg_hex("00000009"),
            modbus(&r1),
            modbus(&r2),
            hb_fe(),
            modbus(&r1),
        ],
    );
}

#[test]
fn bad_crc_resyncs_byte_by_byte() {
    let good = Response::Registers(vec![0x2A2A]).encode(1, 3);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let stream = cat(&[IMEI, &bad, &good]);
    check_all_splits(
        || expecting(usr(), 1, 3),
        &stream,
        &[
            reg("866123456789012"),
            Inbound::Malformed {
                reason: format!(
                    "bad CRC in response {}; dropped 1 byte to resync",
                    to_hex(&bad)
                ),
                bytes: Bytes::from_static(&[1]),
            },
            data(&bad[1..]),
            modbus(&good),
        ],
    );
}

#[test]
fn oversize_response_is_dropped() {
    // Byte count 0xFF: a 260-byte frame, over MAX_ADU.
    let stream = cat(&[IMEI, &h("01 03 FF 00"), HB]);
    let (items, err, rest) = feed(&mut expecting(usr(), 1, 3), &[&stream]);
    assert_eq!(err, None);
    assert!(rest.is_empty());
    assert!(matches!(&items[1], Inbound::Malformed { reason, .. } if reason.contains("over 256")));
    assert_eq!(items[2..], [data(&h("03 FF 00")), hb()]);
}

#[test]
fn unknown_function_waits_for_crc_at_most_max_adu() {
    // A raw FC 0x41 answer: framed by its CRC, glued to a heartbeat.
    let answer = rtu::ensure_crc(h("01 41 10 20 30"));
    check_all_splits(
        || expecting(usr(), 1, 0x41),
        &cat(&[IMEI, &answer, HB]),
        &[reg("866123456789012"), modbus(&answer), hb()],
    );
    // No CRC ever: wait up to MAX_ADU bytes, then drop one.
    let mut junk = h("01 41");
    junk.extend((0..MAX_ADU - 2).map(|i| (i % 7) as u8 + 0x10));
    assert_eq!(rtu::response_len(&junk), None);
    let mut codec = expecting(usr(), 1, 0x41);
    let (items, err, rest) = feed(&mut codec, &[IMEI, &junk[..MAX_ADU - 1]]);
    assert_eq!((items.len(), err, rest.len()), (1, None, MAX_ADU - 1));
    let mut buf = BytesMut::from(&rest[..]);
    buf.extend_from_slice(&junk[MAX_ADU - 1..]);
    let item = codec.decode(&mut buf).unwrap().unwrap();
    assert!(matches!(item, Inbound::Malformed { ref reason, .. } if reason.contains("no CRC")));
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(data(&junk[1..])));
    assert!(buf.is_empty());
}

#[test]
fn without_expect_responses_are_data() {
    let r = Response::Registers(vec![1]).encode(1, 3);
    check_all_splits(
        usr,
        &cat(&[IMEI, &r, HB, &r]),
        &[reg("866123456789012"), data(&r), hb(), data(&r)],
    );
}

#[test]
fn passive_answers_are_cut_out_with_nothing_in_flight() {
    // The DTU polls slave 1 (function 3) itself and sends the answers up unasked.
    let passive = || {
        let mut codec = usr();
        codec.set_passive(&[Expect::Rtu {
            slave: 1,
            function: 3,
            len: None,
        }]);
        codec
    };
    let r = Response::Registers(vec![1, 2]).encode(1, 3);
    let other = Response::Registers(vec![1]).encode(2, 3);
    let exception = exception_adu(1, 3, 2);
    check_all_splits(
        passive,
        &cat(&[IMEI, &r, HB, &r, &other, b"zz"]),
        &[
            reg("866123456789012"),
            modbus(&r),
            hb(),
            modbus(&r),
            // Another slave's answer, and bytes that are no answer at all, stay data.
            data(&cat(&[&other, b"zz"])),
        ],
    );
    // An exception to a question nobody here asked is no passive answer.
    check_all_splits(
        passive,
        &cat(&[IMEI, &exception]),
        &[reg("866123456789012"), data(&exception)],
    );
}

#[test]
fn partial_heartbeat_waits_then_becomes_data() {
    let mut codec = usr();
    let (items, err, rest) = feed(&mut codec, &[IMEI, b"www.us"]);
    assert_eq!((items.len(), err), (1, None));
    assert_eq!(rest, b"www.us");
    let mut buf = BytesMut::from(&b"www.usX"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(data(b"www.usX")));
}

#[test]
fn no_heartbeat_configured() {
    let codec = || {
        let mut c = usr();
        c.heartbeat = None;
        expecting(c, 1, 3)
    };
    let r = Response::Registers(vec![1]).encode(1, 3);
    check_all_splits(
        codec,
        &cat(&[IMEI, HB, &r]),
        &[reg("866123456789012"), data(HB), modbus(&r)],
    );
    // An empty heartbeat is no heartbeat (it would match everywhere).
    let empty = TransparentCodec::new(
        Registration {
            format: IdFormat::Hex,
            matcher: IdMatcher::Length(1),
            reply: Vec::new(),
            mode: RegistrationMode::Connect,
        },
        Some(Heartbeat {
            bytes: Vec::new(),
            reply: h("01"),
        }),
    );
    let (items, err, _) = feed(&mut { empty }, &[&h("07 61 62")]);
    assert_eq!(err, None);
    assert_eq!(items, vec![reg_hex("07"), data(b"ab")]);
}

#[test]
fn large_data_is_chunked() {
    let big = vec![b'z'; MAX_DATA * 2 + 10];
    let mut codec = usr();
    let mut buf = BytesMut::from(&cat(&[IMEI, &big])[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(Inbound::Register { .. }))
    ));
    let sizes: Vec<usize> = std::iter::from_fn(|| match codec.decode(&mut buf) {
        Ok(Some(Inbound::Unsolicited(d))) => Some(d.len()),
        _ => None,
    })
    .collect();
    assert_eq!(sizes, vec![MAX_DATA, MAX_DATA, 10]);
}

#[test]
fn encode_outbound() {
    let adu = h("01 03 07 D0 00 01 84 87");
    let mut codec = binary();
    let mut out = BytesMut::new();
    codec.encode(Outbound::RegisterAck, &mut out).unwrap();
    codec.encode(Outbound::HeartbeatAck, &mut out).unwrap();
    codec.encode(Outbound::DataAck, &mut out).unwrap();
    codec
        .encode(Outbound::Request(Bytes::from(adu.clone())), &mut out)
        .unwrap();
    assert_eq!(to_hex(&out), "AA 55 FE 01 03 07 D0 00 01 84 87");
    let mut codec = usr();
    let mut out = BytesMut::new();
    codec.encode(Outbound::RegisterAck, &mut out).unwrap();
    codec.encode(Outbound::HeartbeatAck, &mut out).unwrap();
    codec.encode(Outbound::DataAck, &mut out).unwrap();
    assert!(out.is_empty());
    let err = codec
        .encode(
            Outbound::Request(Bytes::from(vec![1; MAX_REQUEST + 1])),
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("over 271"), "{err}");
}

#[test]
fn the_protocol_entry_makes_codecs_from_the_profile() {
    let Role::Polled { server, device } = PROTOCOL.role else {
        panic!("transparent DTUs are polled");
    };
    let err = server(&LinkOptions::default()).unwrap_err();
    assert!(err.contains("registration"), "{err}");
    let usr = usr();
    let options = LinkOptions {
        registration: Some(usr.registration.clone()),
        heartbeat: usr.heartbeat.clone(),
    };
    let mut codec = server(&options).unwrap();
    codec.set_expect(Some(Expect::Rtu {
        slave: 1,
        function: 3,
        len: None,
    }));
    let r = Response::Registers(vec![5]).encode(1, 3);
    let (items, _, _) = feed(&mut *codec, &[IMEI, HB, &r]);
    assert_eq!(items, vec![reg("866123456789012"), hb(), modbus(&r)]);
    let sim = device(&crate::protocol::link::DeviceOptions {
        heartbeat: HB.to_vec(),
        ..Default::default()
    });
    assert_eq!(sim.registration_id(7).unwrap(), "860000000000007");
    assert_eq!(sim.heartbeat(7), HB);
}

#[test]
fn device_side_packets_are_what_the_server_side_reads() {
    let sim = TransparentDevice::new(HB.to_vec(), RegistrationMode::Connect);
    assert_eq!(
        sim.registration_id(866123456789012).unwrap(),
        "866123456789012"
    );
    assert!(!sim.acknowledged() && !sim.framed());
    let mut stream = sim.registration(866123456789012).unwrap();
    stream.extend_from_slice(&sim.heartbeat(866123456789012));
    let r = Response::Registers(vec![9]).encode(1, 3);
    sim.answer(866123456789012, &r, &mut stream);
    check_all_splits(
        || expecting(usr(), 1, 3),
        &stream,
        &[reg("866123456789012"), hb(), modbus(&r)],
    );
    // Requests come out of whatever the server wrote before them.
    let request = crate::protocol::modbus::Request::read(3, 0, 2)
        .unwrap()
        .encode(1);
    let mut buf = BytesMut::from(&cat(&[b"AA", &request, b"x"])[..]);
    assert_eq!(
        sim.decode(&mut buf).unwrap(),
        Some(FromServer::Request(Bytes::from(request)))
    );
    assert_eq!(&buf[..], b"x");
    assert_eq!(sim.decode(&mut buf).unwrap(), None);
}

fn codec_strategy() -> impl Strategy<Value = TransparentCodec> {
    (
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some(HB.to_vec())),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Some),
        ],
        proptest::option::of((any::<u8>(), any::<u8>())),
        0usize..8,
    )
        .prop_map(|(pattern, hb, expect, len)| {
            let registration = if pattern {
                Registration {
                    format: IdFormat::Ascii,
                    matcher: IdMatcher::Pattern(Regex::new("^[0-9]{3,15}$").unwrap()),
                    reply: Vec::new(),
                    mode: RegistrationMode::Connect,
                }
            } else {
                Registration {
                    format: IdFormat::Hex,
                    matcher: IdMatcher::Length(len),
                    reply: Vec::new(),
                    mode: RegistrationMode::Connect,
                }
            };
            let heartbeat = hb.map(|bytes| Heartbeat {
                bytes,
                reply: Vec::new(),
            });
            let mut codec = TransparentCodec::new(registration, heartbeat);
            codec.set_expect(expect.map(|(slave, function)| Expect::Rtu {
                slave,
                function,
                len: None,
            }));
            codec
        })
}

/// One thing a well-behaved device sends after registering.
#[derive(Debug, Clone)]
enum Event {
    Heartbeat,
    Response(Vec<u16>),
    Exception(u8),
    Data(Vec<u8>),
}

fn event_strategy() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Heartbeat),
        proptest::collection::vec(any::<u16>(), 1..20).prop_map(Event::Response),
        (1u8..12).prop_map(Event::Exception),
        proptest::collection::vec(b'a'..=b'v', 1..30).prop_map(Event::Data),
    ]
}

proptest! {
    #[test]
    fn garbage_never_panics_and_terminates(
        mut codec in codec_strategy(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
        digits_first in any::<bool>(),
    ) {
        let mut chunks: Vec<Vec<u8>> = chunks;
        if digits_first {
            chunks.insert(0, IMEI.to_vec());
        }
        let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let (_, err, rest) = feed(&mut codec, &slices);
        if err.is_none() {
            prop_assert!(rest.len() < REGISTRATION_WINDOW.max(MAX_ADU));
        }
    }

    #[test]
    fn well_formed_session_survives_any_cut(
        events in proptest::collection::vec(event_strategy(), 0..12),
        cut in any::<prop::sample::Index>(),
        one_by_one in any::<bool>(),
    ) {
        let mut stream = IMEI.to_vec();
        let mut expected = vec![reg("866123456789012")];
        for event in &events {
            match event {
                Event::Heartbeat => {
                    stream.extend_from_slice(HB);
                    expected.push(hb());
                }
                Event::Response(registers) => {
                    let adu = Response::Registers(registers.clone()).encode(1, 3);
                    stream.extend_from_slice(&adu);
                    expected.push(modbus(&adu));
                }
                Event::Exception(code) => {
                    let adu = exception_adu(1, 3, *code);
                    stream.extend_from_slice(&adu);
                    expected.push(modbus(&adu));
                }
                Event::Data(bytes) => {
                    stream.extend_from_slice(bytes);
                    expected.push(data(bytes));
                }
            }
        }
        let chunks: Vec<&[u8]> = if one_by_one {
            stream.chunks(1).collect()
        } else {
            let (a, b) = stream.split_at(cut.index(stream.len() + 1));
            vec![a, b]
        };
        let (items, err, rest) = feed(&mut expecting(usr(), 1, 3), &chunks);
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(items, merge_data(expected));
    }
}

// ---------------------------------------------------------------------------------------
// Heartbeats anywhere: never out of an answer's bytes, wherever the reads are cut.

/// A profile like `binary()` but with `heartbeat` as its heartbeat.
fn with_heartbeat(heartbeat: &[u8]) -> TransparentCodec {
    let mut codec = binary();
    codec.heartbeat = Some(Heartbeat {
        bytes: heartbeat.to_vec(),
        reply: Vec::new(),
    });
    codec
}

fn hb_of(bytes: &[u8]) -> Inbound {
    Inbound::Heartbeat {
        raw: Bytes::copy_from_slice(bytes),
    }
}

/// Every cut of `stream` through a fresh `make()` codec gives `expected`, decoded as a
/// connection does (`feed_polled`: a request for slave 1, function 3 in flight until each of
/// `answers` answers have come).
fn check_all_splits_polled(
    make: impl Fn() -> TransparentCodec,
    stream: &[u8],
    answers: usize,
    expected: &[Inbound],
) {
    let expected = merge_data(expected.to_vec());
    let answers = vec![
        Expect::Rtu {
            slave: 1,
            function: 3,
            len: None,
        };
        answers
    ];
    for chunks in splits(stream) {
        let (items, err, rest) = feed_polled(&mut make(), &chunks, &answers);
        assert_eq!(err, None, "chunks {chunks:?}");
        assert_eq!(items, expected, "chunks {chunks:?}");
        assert!(rest.is_empty(), "left {rest:?} for {chunks:?}");
    }
}

#[test]
fn a_heartbeat_equal_to_the_slave_address_never_takes_an_answers_first_byte() {
    // Heartbeat 01, answers from slave 1: a read that ends right after an answer's slave
    // byte must wait for the function byte.
    let r = Response::Registers(vec![0x0102]).encode(1, 3);
    let stream = cat(&[&h("00 00 00 09"), &r, &h("01"), &h("01"), &r, &h("01")]);
    check_all_splits_polled(
        || with_heartbeat(&h("01")),
        &stream,
        2,
        &[
            reg_hex("00000009"),
            modbus(&r),
            hb_of(&h("01")),
            hb_of(&h("01")),
            modbus(&r),
            hb_of(&h("01")),
        ],
    );
}

#[test]
fn a_repeated_one_byte_heartbeat_equal_to_slave_and_function_is_not_held_as_a_header() {
    // Found by `heartbeats_anywhere_between_answers`: heartbeat 02, three of them, then
    // slave 2's exception to function 2. `02 02 82` begins like slave 2's answer to
    // function 2 announcing 130 bytes; the read asked for one byte (a 6-byte answer), so
    // it is a heartbeat at once instead of a header waiting for bytes that never come.
    let exception = exception_adu(2, 2, 1);
    assert_eq!(exception, h("02 82 01 71 60"));
    let stream = cat(&[&h("00 00 00 09"), &h("02 02 02"), &exception]);
    let answer = Expect::Rtu {
        slave: 2,
        function: 2,
        len: Some(6),
    };
    let expected = [
        reg_hex("00000009"),
        hb_of(&h("02")),
        hb_of(&h("02")),
        hb_of(&h("02")),
        modbus(&exception),
    ];
    for chunks in splits(&stream) {
        let (items, err, rest) = feed_polled(&mut with_heartbeat(&h("02")), &chunks, &[answer]);
        assert_eq!(err, None, "chunks {chunks:?}");
        assert_eq!(items, expected, "chunks {chunks:?}");
        assert!(rest.is_empty(), "left {rest:?} for {chunks:?}");
    }
}

#[test]
fn a_heartbeat_that_starts_like_the_answer_header_is_still_a_heartbeat() {
    // 01 03 FF announces 255 data bytes, more than an ADU holds: not the answer.
    let hb = h("01 03 FF 55");
    let r = Response::Registers(vec![7]).encode(1, 3);
    check_all_splits_polled(
        || with_heartbeat(&hb),
        &cat(&[&h("00 00 00 09"), &hb, &r, &hb]),
        1,
        &[reg_hex("00000009"), hb_of(&hb), modbus(&r), hb_of(&hb)],
    );
    // 01 03 02 announces a 7-byte answer: the heartbeat waits until 7 bytes are there and
    // their CRC says they are not the answer.
    let hb = h("01 03 02 AA");
    check_all_splits_polled(
        || with_heartbeat(&hb),
        &cat(&[&h("00 00 00 09"), &hb, &r, &hb]),
        1,
        &[reg_hex("00000009"), hb_of(&hb), modbus(&r), hb_of(&hb)],
    );
}

#[test]
fn a_held_heartbeat_is_released_when_the_request_ends() {
    let hb = h("01 03 02 AA");
    let mut codec = expecting(with_heartbeat(&hb), 1, 3);
    let (items, err, rest) = feed(&mut codec, &[&h("00 00 00 09"), &hb]);
    assert_eq!((items.len(), err), (1, None));
    assert_eq!(rest, hb);
    // The request timed out: the connection clears the expectation and decodes again.
    codec.set_expect(None);
    let mut buf = BytesMut::from(&rest[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(hb_of(&hb)));
    assert!(buf.is_empty());
}

#[test]
fn a_bad_crc_candidate_that_is_the_heartbeat_is_the_heartbeat() {
    // The heartbeat is 01 03 00 00 00 (five bytes, the length an 01 03 00 header announces):
    // its CRC is wrong, so it is no answer, and it is not dropped byte by byte either.
    let hb = h("01 03 00 00 00");
    let r = Response::Registers(vec![1, 2]).encode(1, 3);
    check_all_splits(
        || expecting(with_heartbeat(&hb), 1, 3),
        &cat(&[&h("00 00 00 09"), &hb, &r]),
        &[reg_hex("00000009"), hb_of(&hb), modbus(&r)],
    );
}

// ---------------------------------------------------------------------------------------
// Registration prefixed to every packet.

const OTHER_IMEI: &[u8] = b"866999999999999";

/// The USR profile in registration mode `mode`.
fn usr_in(mode: RegistrationMode) -> TransparentCodec {
    let mut codec = usr();
    codec.registration.mode = mode;
    codec
}

fn no_prefix(bytes: &[u8]) -> Inbound {
    Inbound::Malformed {
        reason: "serial bytes without this DTU's registration prefix (\"866123456789012\")".into(),
        bytes: Bytes::copy_from_slice(bytes),
    }
}

/// What is dropped of a packet of `id`.
fn foreign_bytes(id: &str, bytes: &[u8]) -> Inbound {
    Inbound::Malformed {
        reason: format!("serial bytes of a packet of {id:?}"),
        bytes: Bytes::copy_from_slice(bytes),
    }
}

fn foreign(id: &[u8]) -> Inbound {
    Inbound::Malformed {
        reason: format!(
            "packet prefix names {:?}, not this DTU's \"866123456789012\"; its serial bytes are dropped",
            String::from_utf8_lossy(id)
        ),
        bytes: Bytes::copy_from_slice(id),
    }
}

#[test]
fn prefix_mode_takes_the_registration_off_every_packet() {
    let r1 = Response::Registers(vec![0x0102, 0x0304]).encode(1, 3);
    let r2 = exception_adu(1, 3, 2);
    // First packet: registration + heartbeat. Then answers with the prefix, heartbeats
    // glued before and after, with and without the prefix, and other serial bytes.
    let stream = cat(&[
        IMEI, HB, IMEI, &r1, HB, HB, IMEI, &r2, HB, IMEI, b"hello", IMEI, HB, IMEI, &r1,
    ]);
    check_all_splits(
        || expecting(usr_in(RegistrationMode::Prefix), 1, 3),
        &stream,
        &[
            reg("866123456789012"),
            hb(),
            modbus(&r1),
            hb(),
            hb(),
            modbus(&r2),
            hb(),
            data(b"hello"),
            hb(),
            modbus(&r1),
        ],
    );
    // A first packet of serial bytes registers too.
    check_all_splits(
        || expecting(usr_in(RegistrationMode::Prefix), 1, 3),
        &cat(&[IMEI, &r1, HB]),
        &[reg("866123456789012"), modbus(&r1), hb()],
    );
}

#[test]
fn both_mode_registers_on_connect_then_takes_the_prefix_off_every_packet() {
    let r = Response::Registers(vec![42]).encode(1, 3);
    check_all_splits(
        || expecting(usr_in(RegistrationMode::Both), 1, 3),
        &cat(&[IMEI, HB, IMEI, &r, IMEI, HB, IMEI, &r]),
        &[reg("866123456789012"), hb(), modbus(&r), hb(), modbus(&r)],
    );
    // The registration packet is not a packet's prefix: what follows it needs its own.
    check_every_split(
        || expecting(usr_in(RegistrationMode::Both), 1, 3),
        &cat(&[IMEI, &r, IMEI, &r]),
        &[reg("866123456789012"), no_prefix(&r), modbus(&r)],
    );
}

#[test]
fn serial_bytes_without_the_prefix_are_rejected() {
    let r = Response::Registers(vec![9, 9]).encode(1, 3);
    check_every_split(
        || expecting(usr_in(RegistrationMode::Prefix), 1, 3),
        // An answer after a heartbeat needs a prefix of its own; the one after it has it.
        &cat(&[IMEI, HB, &r, HB, IMEI, &r]),
        &[
            reg("866123456789012"),
            hb(),
            no_prefix(&r),
            hb(),
            modbus(&r),
        ],
    );
}

#[test]
fn a_prefix_naming_another_id_drops_its_packet() {
    let r = Response::Registers(vec![0x1111]).encode(1, 3);
    check_every_split(
        || expecting(usr_in(RegistrationMode::Prefix), 1, 3),
        &cat(&[IMEI, HB, OTHER_IMEI, &r, IMEI, &r, OTHER_IMEI, HB]),
        &[
            reg("866123456789012"),
            hb(),
            foreign(OTHER_IMEI),
            foreign_bytes("866999999999999", &r),
            modbus(&r),
            foreign(OTHER_IMEI),
            hb(),
        ],
    );
}

#[test]
fn prefix_mode_with_a_binary_id_of_fixed_length() {
    let codec = || {
        let mut c = binary();
        c.registration.mode = RegistrationMode::Prefix;
        expecting(c, 9, 4)
    };
    let id = h("00 00 03 E9");
    let r = Response::Registers(vec![1]).encode(9, 4);
    let other = h("00 00 04 00");
    check_every_split(
        codec,
        &cat(&[&id, &h("FE"), &id, &r, &h("FE"), &other, &r, &id, &r]),
        &[
            reg_hex("000003E9"),
            hb_fe(),
            modbus(&r),
            hb_fe(),
            Inbound::Malformed {
                reason: "packet prefix names \"00000400\", not this DTU's \"000003E9\"; its serial bytes are dropped".into(),
                bytes: Bytes::from(other.clone()),
            },
            foreign_bytes("00000400", &r),
            modbus(&r),
        ],
    );
}

/// Found by fuzzing (fuzz/fuzz_targets/transparent.rs): in prefix mode, serial bytes without
/// the prefix whose read ended inside them left the next read to be judged as a packet start,
/// so its first bytes waited for a prefix's worth of bytes; the same bytes in one read were
/// dropped at once. The stream of the fuzzer's input, minimized: registration, heartbeat,
/// then bytes of no packet, the last one alone in its read.
#[test]
fn serial_bytes_without_the_prefix_are_dropped_however_the_reads_are_cut() {
    let stream = h(
        "38 36 36 31 32 33 34 35 36 37 38 39 30 31 32 77 77 77 2E 75 73 72 2E 63 6E
         38 36 36 31 32 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56 56
         56 56 56 56 56 36 36 31 32 33 34 35 36 37 38 39 30 31 72 2E FD FB FE FD FC FB C3",
    );
    let junk = &stream[IMEI.len() + HB.len()..];
    check_every_split(
        || usr_in(RegistrationMode::Prefix),
        &stream,
        &[reg("866123456789012"), hb(), no_prefix(junk)],
    );
    // A heartbeat behind such bytes is not held back.
    let (items, err, rest) = feed(
        &mut usr_in(RegistrationMode::Prefix),
        &[IMEI, HB, b"abc", b"xy", HB],
    );
    assert_eq!(err, None);
    assert!(rest.is_empty(), "left {rest:?}");
    assert_eq!(
        crate::protocol::test_util::merge_malformed(items),
        vec![reg("866123456789012"), hb(), no_prefix(b"abcxy"), hb()]
    );
}

/// Found by fuzzing: a heartbeat that begins with the registration prefix was taken for the
/// prefix when a read ended inside it, and its rest for serial bytes; read whole it was the
/// heartbeat. The fuzzer's stream: an id of four bytes F2, a heartbeat of eighteen, then
/// bytes behind a prefix of no DTU's.
#[test]
fn a_heartbeat_that_begins_with_the_prefix_is_the_heartbeat_however_the_reads_are_cut() {
    let heartbeat = [0xF2; 18];
    let codec = || {
        let mut c = with_heartbeat(&heartbeat);
        c.registration.mode = RegistrationMode::Prefix;
        let tcp = Expect::Tcp {
            transaction: 0xF2F2,
            unit: 0xF2,
            function: 0xF2,
        };
        c.set_expect(Some(tcp));
        c.set_passive(&[tcp, tcp]);
        c
    };
    let stream = h(
        "F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 F2 01 FE 03
         01 09 04 00 00 04 FF FF FF FF 00 00 00 00 00 00 00 00 27 00 00 00 03 E9 FE 00 00 03 E9
         09 04 02 00 01 99 31 FA FE FF FB 00 00 01 99 31",
    );
    check_every_split(
        codec,
        &stream,
        &[
            reg_hex("F2F2F2F2"),
            hb_of(&heartbeat),
            Inbound::Malformed {
                reason: "packet prefix names \"F201FE03\", not this DTU's \"F2F2F2F2\"; its serial bytes are dropped".into(),
                bytes: Bytes::from(h("F2 01 FE 03")),
            },
            foreign_bytes("F201FE03", &stream[26..]),
        ],
    );
    // A USR DTU whose heartbeat is its IMEI and a mark, with the IMEI before every packet.
    let imei_heartbeat = cat(&[IMEI, b"!"]);
    let r = Response::Registers(vec![5]).encode(1, 3);
    check_every_split(
        || {
            let mut c = expecting(usr_in(RegistrationMode::Prefix), 1, 3);
            c.heartbeat = Some(Heartbeat {
                bytes: imei_heartbeat.clone(),
                reply: Vec::new(),
            });
            c
        },
        &cat(&[IMEI, &imei_heartbeat, IMEI, &r, &imei_heartbeat]),
        &[
            reg("866123456789012"),
            hb_of(&imei_heartbeat),
            modbus(&r),
            hb_of(&imei_heartbeat),
        ],
    );
}

#[test]
fn a_partial_prefix_waits() {
    let mut codec = expecting(usr_in(RegistrationMode::Prefix), 1, 3);
    let (items, err, rest) = feed(&mut codec, &[IMEI, HB, &IMEI[..9]]);
    assert_eq!((items, err), (vec![reg("866123456789012"), hb()], None));
    assert_eq!(rest, &IMEI[..9]);
    // A packet start that diverges from the prefix is judged on as many bytes as the prefix.
    let (items, err, rest) = feed(
        &mut expecting(usr_in(RegistrationMode::Prefix), 1, 3),
        &[IMEI, HB, b"8661234xyz"],
    );
    assert_eq!((items.len(), err), (2, None));
    assert_eq!(rest, b"8661234xyz");
}

#[test]
fn requests_carry_no_prefix() {
    let adu = h("01 03 07 D0 00 01 84 87");
    for mode in [RegistrationMode::Prefix, RegistrationMode::Both] {
        let mut codec = usr_in(mode);
        let (items, _, _) = feed(&mut codec, &[IMEI]);
        assert_eq!(items, vec![reg("866123456789012")]);
        let mut out = BytesMut::new();
        codec
            .encode(Outbound::Request(Bytes::from(adu.clone())), &mut out)
            .unwrap();
        assert_eq!(&out[..], &adu[..]);
    }
}

#[test]
fn device_side_in_the_prefix_modes() {
    let r = Response::Registers(vec![3]).encode(1, 3);
    for mode in [
        RegistrationMode::Connect,
        RegistrationMode::Prefix,
        RegistrationMode::Both,
    ] {
        let sim = TransparentDevice::new(HB.to_vec(), mode);
        let number = 866123456789012;
        let mut stream = sim.registration(number).unwrap();
        stream.extend_from_slice(&sim.heartbeat(number));
        sim.answer(number, &r, &mut stream);
        let expected: &[u8] = match mode {
            RegistrationMode::Connect => &cat(&[IMEI, HB, &r]),
            RegistrationMode::Prefix => &cat(&[IMEI, HB, IMEI, HB, IMEI, &r]),
            RegistrationMode::Both => &cat(&[IMEI, IMEI, HB, IMEI, &r]),
        };
        assert_eq!(stream, expected, "{mode}");
        let mut first = vec![reg("866123456789012")];
        if mode == RegistrationMode::Prefix {
            first.push(hb());
        }
        check_all_splits(
            || expecting(usr_in(mode), 1, 3),
            &stream,
            &[first, vec![hb(), modbus(&r)]].concat(),
        );
    }
}

/// Decodes `chunks` as a connection does: a request is in flight, expecting the next of
/// `answers`, until its answer has come; after the last one, none.
fn feed_polled(
    codec: &mut TransparentCodec,
    chunks: &[&[u8]],
    answers: &[Expect],
) -> (Vec<Inbound>, Option<String>, Vec<u8>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut answered = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        // Every item consumes a byte: this many rounds always suffice.
        for _ in 0..=buf.len() + 1 {
            codec.set_expect(answers.get(answered).copied());
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    if matches!(item, Inbound::Answer(_)) {
                        answered += 1;
                    }
                    out.push(item);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string()), buf.to_vec()),
            }
        }
    }
    (merge_data(out), None, buf.to_vec())
}

/// Cuts `stream` at the given points (indexes into it, any order, repeats allowed).
fn cut_at<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.windows(2)
        .filter_map(|w| stream.get(w[0]..w[1]))
        .collect()
}

/// One answer on the RS-485 bus: slave, function (1..=4), and its registers or bits, or an
/// exception code.
#[derive(Debug, Clone)]
enum Frame {
    Registers(u8, u8, Vec<u16>),
    Bits(u8, u8, Vec<bool>),
    Exception(u8, u8, u8),
}

impl Frame {
    fn expect(&self) -> Expect {
        let (Frame::Registers(slave, function, _)
        | Frame::Bits(slave, function, _)
        | Frame::Exception(slave, function, _)) = self;
        // The server knows the answer's length from its read request; for an exception
        // the request's count is not part of the frame: a one-item read.
        let len = match self {
            Frame::Registers(_, _, regs) => 5 + 2 * regs.len(),
            Frame::Bits(_, _, bits) => 5 + bits.len().div_ceil(8),
            Frame::Exception(_, function, _) if *function >= 3 => 7,
            Frame::Exception(..) => 6,
        };
        Expect::Rtu {
            slave: *slave,
            function: *function,
            len: Some(len),
        }
    }

    fn slave(&self) -> u8 {
        let (Frame::Registers(slave, ..) | Frame::Bits(slave, ..) | Frame::Exception(slave, ..)) =
            self;
        *slave
    }

    fn adu(&self) -> Vec<u8> {
        match self {
            Frame::Registers(s, f, regs) => Response::Registers(regs.clone()).encode(*s, *f),
            Frame::Bits(s, f, bits) => Response::Bits(bits.clone()).encode(*s, *f),
            Frame::Exception(s, f, code) => exception_adu(*s, *f, *code),
        }
    }
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            1u8..=247,
            3u8..=4,
            proptest::collection::vec(any::<u16>(), 1..20)
        )
            .prop_map(|(s, f, r)| Frame::Registers(s, f, r)),
        (
            1u8..=247,
            1u8..=2,
            proptest::collection::vec(any::<bool>(), 1..40)
        )
            .prop_map(|(s, f, b)| Frame::Bits(s, f, b)),
        (1u8..=247, 1u8..=4, 1u8..12).prop_map(|(s, f, c)| Frame::Exception(s, f, c)),
    ]
}

/// Whether `heartbeat` begins like one of `frames`' answers (slave, then function or
/// exception): the one case where the codec holds it until the answer's length has arrived,
/// which a stream that ends there never brings.
fn looks_like_an_answer(heartbeat: &[u8], frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| heartbeat.len() >= 2 && f.expect().may_start(heartbeat, true))
}

proptest! {
    /// Any heartbeat (any bytes, one to a dozen), glued before, between and after random RTU
    /// answers of random slaves, cut at random points: every answer and every heartbeat comes
    /// out whole and in order.
    #[test]
    fn heartbeats_anywhere_between_answers(
        heartbeat in prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..3),
            proptest::collection::vec(any::<u8>(), 1..12),
        ],
        ascii in any::<bool>(),
        events in proptest::collection::vec(proptest::option::of(frame_strategy()), 0..16),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        slave_first in proptest::option::of(any::<prop::sample::Index>()),
        one_by_one in any::<bool>(),
    ) {
        // ASCII heartbeats ("www.usr.cn"-like) or any bytes.
        let mut heartbeat: Vec<u8> = if ascii {
            heartbeat.iter().map(|b| b'!' + b % 90).collect()
        } else {
            heartbeat
        };
        let frames: Vec<Frame> = events.iter().flatten().cloned().collect();
        // Often a heartbeat that begins with the address of a slave that answers: the
        // bytes a codec must not mistake one for the other.
        if let (Some(pick), false) = (slave_first, frames.is_empty()) {
            heartbeat[0] = frames[pick.index(frames.len())].slave();
        }
        prop_assume!(!looks_like_an_answer(&heartbeat, &frames));
        let id = h("00 00 00 09");
        let mut stream = id.clone();
        let mut expected = vec![reg_hex("00000009")];
        for event in &events {
            match event {
                Some(frame) => {
                    let adu = frame.adu();
                    stream.extend_from_slice(&adu);
                    expected.push(modbus(&adu));
                }
                None => {
                    stream.extend_from_slice(&heartbeat);
                    expected.push(hb_of(&heartbeat));
                }
            }
        }
        let answers: Vec<Expect> = frames.iter().map(Frame::expect).collect();
        let chunks = if one_by_one {
            stream.chunks(1).collect()
        } else {
            cut_at(&stream, &cuts)
        };
        let (items, err, rest) = feed_polled(&mut with_heartbeat(&heartbeat), &chunks, &answers);
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty(), "left {:?}", rest);
        prop_assert_eq!(items, expected);
    }

    /// Prefix and both mode: packets of answers, heartbeats (with and without the prefix)
    /// and other serial bytes, cut at random points, decode the same.
    #[test]
    fn prefixed_packets_survive_any_cut(
        both in any::<bool>(),
        events in proptest::collection::vec(event_strategy(), 0..12),
        prefixed_heartbeats in proptest::collection::vec(any::<bool>(), 12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mode = if both { RegistrationMode::Both } else { RegistrationMode::Prefix };
        let mut stream = Vec::new();
        let mut expected = vec![reg("866123456789012")];
        match mode {
            // The registration packet, alone.
            RegistrationMode::Both => stream.extend_from_slice(IMEI),
            // The first packet: a heartbeat with the registration before it.
            _ => {
                stream.extend_from_slice(IMEI);
                stream.extend_from_slice(HB);
                expected.push(hb());
            }
        }
        let mut answers = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match event {
                Event::Heartbeat => {
                    if prefixed_heartbeats[i] {
                        stream.extend_from_slice(IMEI);
                    }
                    stream.extend_from_slice(HB);
                    expected.push(hb());
                }
                Event::Response(registers) => {
                    let adu = Response::Registers(registers.clone()).encode(1, 3);
                    stream.extend_from_slice(IMEI);
                    stream.extend_from_slice(&adu);
                    expected.push(modbus(&adu));
                    answers.push(Expect::Rtu { slave: 1, function: 3, len: None });
                }
                Event::Exception(code) => {
                    let adu = exception_adu(1, 3, *code);
                    stream.extend_from_slice(IMEI);
                    stream.extend_from_slice(&adu);
                    expected.push(modbus(&adu));
                    answers.push(Expect::Rtu { slave: 1, function: 3, len: None });
                }
                Event::Data(bytes) => {
                    stream.extend_from_slice(IMEI);
                    stream.extend_from_slice(bytes);
                    expected.push(data(bytes));
                }
            }
        }
        let chunks = cut_at(&stream, &cuts);
        let (items, err, rest) = feed_polled(&mut usr_in(mode), &chunks, &answers);
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty(), "left {:?}", rest);
        prop_assert_eq!(items, merge_data(expected));
    }

    /// Whatever follows a registration in the prefix modes, decoding ends, never panics and
    /// holds few bytes.
    #[test]
    fn garbage_after_a_prefixed_registration(
        both in any::<bool>(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
        expect in proptest::option::of((any::<u8>(), any::<u8>())),
    ) {
        let mode = if both { RegistrationMode::Both } else { RegistrationMode::Prefix };
        let mut codec = usr_in(mode);
        codec.set_expect(expect.map(|(slave, function)| Expect::Rtu { slave, function, len: None }));
        let mut all: Vec<&[u8]> = vec![IMEI];
        all.extend(chunks.iter().map(Vec::as_slice));
        let (items, err, rest) = feed(&mut codec, &all);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&items[0], &reg("866123456789012"));
        prop_assert!(rest.len() < MAX_ADU);
    }
}
