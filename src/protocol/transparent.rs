//! DTUs that pass serial bytes through untouched (USR-IOT style), CONTRACT.md §3.
//! [`TransparentCodec`] is the server's side, [`TransparentDevice`] the simulator's.
//!
//! Nothing on the wire says where a packet ends, so the codec decides from context: the
//! first bytes are the registration packet as the profile describes it; later, a response
//! to the request in flight is framed by the RTU rules ([`rtu::response_len`] + CRC), the
//! profile's heartbeat bytes are a heartbeat, and anything else is unsolicited data.
//!
//! Bounds: the registration is looked for in the first [`REGISTRATION_WINDOW`] bytes; a
//! response candidate is at most [`MAX_ADU`] bytes, resynchronising one byte at a time; a
//! partial heartbeat is shorter than the heartbeat; data items are at most [`MAX_DATA`]
//! bytes. So the codec never holds more than a few hundred bytes between reads, and each
//! decode call consumes at least one byte or waits.

use bytes::{Buf, BytesMut};
use regex::Regex;

use crate::protocol::hex::to_hex;
use crate::protocol::link::{
    CodecError, DeviceLink, Expect, FromServer, Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec,
    LinkOptions, LinkProtocol, Outbound, Registration, Role,
};
use crate::protocol::modbus::rtu::{self, MAX_ADU};

/// The entry of [`crate::protocol::PROTOCOLS`].
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "transparent",
    role: Role::Polled {
        server: server_codec,
        device: |options| Box::new(TransparentDevice::new(options.heartbeat.clone())),
    },
    needs_registration: true,
};

fn server_codec(options: &LinkOptions) -> Result<Box<dyn LinkCodec>, String> {
    let registration = options
        .registration
        .clone()
        .ok_or("a transparent DTU's profile must say how it registers ([registration])")?;
    Ok(Box::new(TransparentCodec::new(
        registration,
        options.heartbeat.clone(),
    )))
}

/// A registration id is at most this many bytes: a `Pattern` must match within them and a
/// `Length` may not exceed them (IMEI 15, ICCID 20: plenty), so waiting for one is bounded.
pub const REGISTRATION_WINDOW: usize = 64;
/// Longest `Data` item; a longer run of unsolicited bytes comes out in several items.
pub const MAX_DATA: usize = 4096;

/// Codec for the transparent protocol; one per connection.
#[derive(Debug)]
pub struct TransparentCodec {
    registration: Registration,
    /// The pattern anchored at both ends, so "matches completely" is one `is_match`.
    anchored: Option<Regex>,
    /// `None` also for a heartbeat of zero bytes, which would match everywhere.
    heartbeat: Option<Heartbeat>,
    expect: Option<Expect>,
    registered: bool,
}

impl TransparentCodec {
    pub fn new(registration: Registration, heartbeat: Option<Heartbeat>) -> Self {
        let anchored = match &registration.matcher {
            IdMatcher::Pattern(re) => Regex::new(&format!("^(?:{})$", re.as_str())).ok(),
            IdMatcher::Length(_) => None,
        };
        let heartbeat = heartbeat.filter(|hb| {
            if hb.bytes.is_empty() {
                log::warn!("transparent: empty heartbeat bytes ignored");
            }
            !hb.bytes.is_empty()
        });
        TransparentCodec {
            registration,
            anchored,
            heartbeat,
            expect: None,
            registered: false,
        }
    }

    /// True once the registration packet has been decoded.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    fn heartbeat_bytes(&self) -> &[u8] {
        self.heartbeat
            .as_ref()
            .map_or(&[], |hb| hb.bytes.as_slice())
    }

    /// The id `bytes` render to, if they render at all.
    fn render(&self, bytes: &[u8]) -> Option<String> {
        match self.registration.format {
            IdFormat::Ascii => std::str::from_utf8(bytes).ok().map(str::to_owned),
            IdFormat::Hex => Some(hex::encode_upper(bytes)),
        }
    }

    fn decode_registration(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let found = match &self.registration.matcher {
            IdMatcher::Length(n) if *n == 0 || *n > REGISTRATION_WINDOW => {
                return Err(CodecError::protocol(
                    format!("registration length {n} outside 1..={REGISTRATION_WINDOW}"),
                    src,
                ));
            }
            IdMatcher::Length(n) => {
                let Some(bytes) = src.get(..*n) else {
                    return Ok(None);
                };
                let id = self.render(bytes).ok_or_else(|| {
                    CodecError::protocol("registration id is not valid UTF-8", bytes)
                })?;
                Some((*n, id))
            }
            IdMatcher::Pattern(re) => {
                let window = src.len().min(REGISTRATION_WINDOW);
                // Longest prefix first: "the longest prefix whose rendering matches".
                (1..=window).rev().find_map(|n| {
                    let id = self.render(src.get(..n)?)?;
                    let whole = match &self.anchored {
                        Some(anchored) => anchored.is_match(&id),
                        None => re.find(&id).is_some_and(|m| m.range() == (0..id.len())),
                    };
                    whole.then_some((n, id))
                })
            }
        };
        match found {
            Some((n, id)) => {
                let raw = src.split_to(n).freeze();
                self.registered = true;
                log::debug!("transparent: registered as {id:?}");
                Ok(Some(Inbound::Register { id, raw }))
            }
            None if src.len() >= REGISTRATION_WINDOW => Err(CodecError::protocol(
                format!("no registration id in the first {REGISTRATION_WINDOW} bytes"),
                src,
            )),
            None => Ok(None),
        }
    }

    /// `src` starts with the expected slave and function (or exception): one RTU response.
    fn decode_response(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let reason = match rtu::response_len(src) {
            Some(n) if n > MAX_ADU => format!("response length {n} over {MAX_ADU}"),
            Some(n) if src.len() < n => return Ok(None),
            Some(n) => match src.get(..n) {
                Some(adu) if rtu::check_crc(adu) => {
                    return Ok(Some(Inbound::Answer(src.split_to(n).freeze())));
                }
                Some(adu) => format!("bad CRC in response {}", to_hex(adu)),
                None => return Ok(None),
            },
            None if src.len() >= MAX_ADU => format!("no CRC-framed response in {MAX_ADU} bytes"),
            None => return Ok(None),
        };
        let bytes = src.split_to(1).freeze();
        log::debug!(
            "transparent: {reason}; dropped {} to resync",
            to_hex(&bytes)
        );
        Ok(Some(Inbound::Malformed {
            reason: format!("{reason}; dropped 1 byte to resync"),
            bytes,
        }))
    }

    /// True if a response header to the request in flight (slave, function or exception)
    /// starts `bytes`, or could once more bytes come (`bytes` is just the slave).
    fn response_may_start(&self, bytes: &[u8]) -> bool {
        let Some(expect) = self.expect else {
            return false;
        };
        match bytes {
            [slave] => *slave == expect.slave,
            [slave, function, ..] => {
                *slave == expect.slave
                    && (*function == expect.function || *function == expect.function | 0x80)
            }
            [] => false,
        }
    }

    /// True if the heartbeat starts `bytes`, or `bytes` is a proper prefix of it.
    fn heartbeat_may_start(&self, bytes: &[u8]) -> bool {
        let hb = self.heartbeat_bytes();
        !hb.is_empty() && (bytes.starts_with(hb) || hb.starts_with(bytes))
    }

    /// Length of the unsolicited run at the start of `src` (which is neither a heartbeat nor
    /// a response header): up to where one may begin, at most [`MAX_DATA`]; at least 1.
    fn data_len(&self, src: &[u8]) -> usize {
        let limit = src.len().min(MAX_DATA);
        (1..limit)
            .find(|&i| {
                let rest = src.get(i..).unwrap_or_default();
                self.response_may_start(rest) || self.heartbeat_may_start(rest)
            })
            .unwrap_or(limit)
    }
}

impl LinkCodec for TransparentCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.registered {
            return self.decode_registration(src);
        }
        if src.is_empty() {
            return Ok(None);
        }
        let heartbeat = self.heartbeat_bytes();
        let is_heartbeat = !heartbeat.is_empty() && src.starts_with(heartbeat);
        if self.response_may_start(src) {
            if src.len() >= 2 {
                return self.decode_response(src);
            }
            if !is_heartbeat {
                // Only the slave byte so far: the function byte decides.
                return Ok(None);
            }
        }
        if is_heartbeat {
            let raw = src.split_to(heartbeat.len()).freeze();
            return Ok(Some(Inbound::Heartbeat { raw }));
        }
        if self.heartbeat_may_start(src) {
            // A proper prefix of the heartbeat: wait for the rest.
            return Ok(None);
        }
        let n = self.data_len(src);
        Ok(Some(Inbound::Unsolicited(src.split_to(n).freeze())))
    }

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::RegisterAck => dst.extend_from_slice(&self.registration.reply),
            Outbound::HeartbeatAck => dst.extend_from_slice(
                self.heartbeat
                    .as_ref()
                    .map_or(&[][..], |hb| hb.reply.as_slice()),
            ),
            Outbound::DataAck => {}
            Outbound::Request(adu) => {
                if adu.len() > MAX_ADU {
                    return Err(CodecError::protocol(
                        format!("Modbus request of {} bytes over {MAX_ADU}", adu.len()),
                        &adu,
                    ));
                }
                dst.extend_from_slice(&adu);
            }
        }
        Ok(())
    }

    /// The request in flight; its answer is framed by RTU rules until this changes.
    fn set_expect(&mut self, expect: Option<Expect>) {
        self.expect = expect;
    }
}

/// Device number `n` of the simulator registers as `IMEI_BASE + n` (15 ASCII digits,
/// IMEI-like), unless `n` has 15 digits already.
pub const IMEI_BASE: u64 = 860_000_000_000_000;

/// Default heartbeat of USR-IOT DTUs.
pub const USR_HEARTBEAT: &[u8] = b"www.usr.cn";

/// The simulator's side of a transparent link: ASCII IMEI registration, a configured
/// heartbeat, requests found by their RTU framing in whatever bytes arrive.
#[derive(Debug, Clone)]
pub struct TransparentDevice {
    heartbeat: Vec<u8>,
}

impl TransparentDevice {
    pub fn new(heartbeat: Vec<u8>) -> TransparentDevice {
        TransparentDevice { heartbeat }
    }
}

impl DeviceLink for TransparentDevice {
    fn registration_id(&self, number: u64) -> Result<String, String> {
        if number >= 100_000_000_000_000 {
            return Ok(number.to_string());
        }
        Ok((IMEI_BASE + number).to_string())
    }

    fn registration(&self, number: u64) -> Result<Vec<u8>, String> {
        self.registration_id(number).map(String::into_bytes)
    }

    fn heartbeat(&self) -> Vec<u8> {
        self.heartbeat.clone()
    }

    fn acknowledged(&self) -> bool {
        false
    }

    fn data(&self, _payload: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError> {
        match rtu::find_request(buf) {
            Some((start, len)) => {
                if start > 0 {
                    log::debug!("transparent device: skipping {}", to_hex(&buf[..start]));
                }
                buf.advance(start);
                Ok(Some(FromServer::Request(buf.split_to(len).freeze())))
            }
            None => {
                // Nothing framed in twice the longest request: keep only what may still begin one.
                if buf.len() > 2 * MAX_ADU {
                    buf.advance(buf.len() - MAX_ADU);
                }
                Ok(None)
            }
        }
    }

    fn answer(&self, adu: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(adu);
    }

    fn framed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
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
        assert!(
            matches!(&items[1], Inbound::Malformed { reason, .. } if reason.contains("over 256"))
        );
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
        assert_eq!(sim.heartbeat(), HB);
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
        stream.extend_from_slice(&sim.heartbeat());
        let r = Response::Registers(vec![9]).encode(1, 3);
        sim.answer(&r, &mut stream);
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
}
