//! Unit tests of the transparent link: every split position, glued heartbeats and answers,
//! resynchronisation, and garbage.
use super::*;
use crate::protocol::hex::parse_hex;
use crate::protocol::modbus::rtu::exception_adu;
use crate::protocol::modbus::Response;
use crate::protocol::test_util::{feed, merge_data, splits};
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
        },
        Some(Heartbeat {
            bytes: h("FE"),
            reply: h("FE"),
        }),
    )
}

fn expecting(mut codec: TransparentCodec, slave: u8, function: u8) -> TransparentCodec {
    codec.set_expect(Some(Expect { slave, function }));
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
        },
        None,
    );
    assert!(feed(&mut { zero }, &[b"a"]).1.is_some());
    let long = TransparentCodec::new(
        Registration {
            format: IdFormat::Hex,
            matcher: IdMatcher::Length(REGISTRATION_WINDOW + 1),
            reply: Vec::new(),
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
            Outbound::Request(Bytes::from(vec![1; MAX_ADU + 1])),
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("over 256"), "{err}");
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
    codec.set_expect(Some(Expect {
        slave: 1,
        function: 3,
    }));
    let r = Response::Registers(vec![5]).encode(1, 3);
    let (items, _, _) = feed(&mut *codec, &[IMEI, HB, &r]);
    assert_eq!(items, vec![reg("866123456789012"), hb(), modbus(&r)]);
    let sim = device(&crate::protocol::link::DeviceOptions {
        heartbeat: HB.to_vec(),
    });
    assert_eq!(sim.registration_id(7).unwrap(), "860000000000007");
    assert_eq!(sim.heartbeat(7), HB);
}

#[test]
fn device_side_packets_are_what_the_server_side_reads() {
    let sim = TransparentDevice::new(HB.to_vec());
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
                }
            } else {
                Registration {
                    format: IdFormat::Hex,
                    matcher: IdMatcher::Length(len),
                    reply: Vec::new(),
                }
            };
            let heartbeat = hb.map(|bytes| Heartbeat {
                bytes,
                reply: Vec::new(),
            });
            let mut codec = TransparentCodec::new(registration, heartbeat);
            codec.set_expect(expect.map(|(slave, function)| Expect { slave, function }));
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
        events in proptest::collection::vec(
            prop_oneof![
                Just(Event::Heartbeat),
                proptest::collection::vec(any::<u16>(), 1..20).prop_map(Event::Response),
                (1u8..12).prop_map(Event::Exception),
                proptest::collection::vec(b'a'..=b'v', 1..30).prop_map(Event::Data),
            ],
            0..12,
        ),
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
