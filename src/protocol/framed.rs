//! The length-prefixed protocol of the original Python DTU server (CONTRACT.md §3 "framed").
//!
//! ```text
//! D→S  00 00 03 E9        registration: u32 BE device number => id "1001"
//! S→D  01                 registration accepted
//! D→S  02 00              heartbeat          S→D 02  acknowledged
//! D→S  03 LL <LL bytes>   opaque data        S→D 03  acknowledged
//! S→D  04 LL <RTU request>   D→S 04 LL <RTU response>
//! ```
//! Frames are at most 2 + 255 bytes, so a partial frame never holds more than that.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::hex::to_hex;
use crate::protocol::link::{CodecError, Inbound, Outbound};

const TYPE_REGISTER_ACK: u8 = 0x01;
const TYPE_HEARTBEAT: u8 = 0x02;
const TYPE_DATA: u8 = 0x03;
const TYPE_MODBUS: u8 = 0x04;
/// Registration: the device number, u32 big-endian.
const REGISTRATION_LEN: usize = 4;
/// Shortest RTU response: slave, function|0x80, code, CRC.
const MIN_ADU: usize = 5;

/// Codec for the framed protocol; one per connection.
#[derive(Debug, Default)]
pub struct FramedCodec {
    registered: bool,
}

impl FramedCodec {
    pub fn new() -> FramedCodec {
        FramedCodec::default()
    }

    /// True once the 4-byte registration has been decoded.
    pub fn is_registered(&self) -> bool {
        self.registered
    }
}

impl Decoder for FramedCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.registered {
            let number = match src.get(..REGISTRATION_LEN) {
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                _ => return Ok(None),
            };
            src.advance(REGISTRATION_LEN);
            self.registered = true;
            return Ok(Some(Inbound::Register(number.to_string())));
        }
        let (kind, len) = match src.get(..2) {
            Some(&[kind, len]) => (kind, usize::from(len)),
            // One byte: an unknown type is an error already; a known one waits for LL.
            _ => match src.first() {
                Some(&kind) if !is_inbound_type(kind) => return Err(unknown_type(kind, src)),
                _ => return Ok(None),
            },
        };
        if !is_inbound_type(kind) {
            return Err(unknown_type(kind, src));
        }
        if src.len() < 2 + len {
            return Ok(None);
        }
        let frame = src.split_to(2 + len).freeze();
        let payload = frame.slice(2..);
        let item = match kind {
            TYPE_HEARTBEAT if len == 0 => Inbound::Heartbeat,
            TYPE_HEARTBEAT => Inbound::Malformed {
                reason: format!("heartbeat with length {len}, expected 0"),
                bytes: frame,
            },
            TYPE_DATA => Inbound::Data(payload),
            _ if len < MIN_ADU => Inbound::Malformed {
                reason: format!("Modbus frame of {len} bytes, shorter than {MIN_ADU}"),
                bytes: frame,
            },
            _ => Inbound::Modbus(payload),
        };
        if let Inbound::Malformed { reason, bytes } = &item {
            log::debug!("framed: {reason}: {}", to_hex(bytes));
        }
        Ok(Some(item))
    }
}

/// Types a device may send after registration.
fn is_inbound_type(kind: u8) -> bool {
    matches!(kind, TYPE_HEARTBEAT | TYPE_DATA | TYPE_MODBUS)
}

/// Frame boundaries are lost: nothing after this byte can be trusted.
fn unknown_type(kind: u8, src: &[u8]) -> CodecError {
    CodecError::protocol(format!("unknown frame type 0x{kind:02X}"), src)
}

impl Encoder<Outbound> for FramedCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::RegisterAck => dst.extend_from_slice(&[TYPE_REGISTER_ACK]),
            Outbound::HeartbeatAck => dst.extend_from_slice(&[TYPE_HEARTBEAT]),
            Outbound::DataAck => dst.extend_from_slice(&[TYPE_DATA]),
            Outbound::Modbus(adu) => {
                let len = u8::try_from(adu.len()).map_err(|_| {
                    CodecError::protocol(
                        format!("Modbus request of {} bytes does not fit LL", adu.len()),
                        &adu,
                    )
                })?;
                dst.reserve(2 + adu.len());
                dst.extend_from_slice(&[TYPE_MODBUS, len]);
                dst.extend_from_slice(&adu);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::link::test_util::{feed, splits};
    use crate::protocol::modbus::{self, Request, Response};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        crate::protocol::hex::parse_hex(s).unwrap()
    }

    fn registered() -> FramedCodec {
        FramedCodec { registered: true }
    }

    /// Decodes `bytes` whole, then cut every way, and checks every cut gives `expected`.
    fn check_all_splits(bytes: &[u8], expected: &[Inbound], error: Option<&str>) {
        for chunks in splits(bytes) {
            let mut codec = FramedCodec::new();
            let (items, err, _) = feed(&mut codec, &chunks);
            assert_eq!(items, expected, "chunks {chunks:?}");
            match (error, err) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{got}"),
                (want, got) => panic!("error {got:?}, expected {want:?} for {chunks:?}"),
            }
        }
    }

    #[test]
    fn registration() {
        let mut codec = FramedCodec::new();
        assert!(!codec.is_registered());
        let (items, err, rest) = feed(&mut codec, &[&h("00 00 03 E9")]);
        assert_eq!(items, vec![Inbound::Register("1001".into())]);
        assert!(err.is_none() && rest.is_empty());
        assert!(codec.is_registered());
        let (items, _, _) = feed(&mut FramedCodec::new(), &[&h("FF FF FF FF")]);
        assert_eq!(items, vec![Inbound::Register("4294967295".into())]);
    }

    #[test]
    fn full_session_at_every_split() {
        let response = Response::Registers(vec![0x1234, 0x5678]).encode(1, 3);
        let exception = modbus::rtu::exception_adu(1, 3, 2);
        let mut stream = h("00 00 03 E9 02 00 03 03 AA BB CC 03 00");
        stream.push(0x04);
        stream.push(response.len() as u8);
        stream.extend_from_slice(&response);
        stream.extend_from_slice(&h("02 00"));
        stream.push(0x04);
        stream.push(exception.len() as u8);
        stream.extend_from_slice(&exception);
        stream.extend_from_slice(&h("02 01 FF 04 03 01 02 03 02 00"));
        let expected = vec![
            Inbound::Register("1001".into()),
            Inbound::Heartbeat,
            Inbound::Data(Bytes::from(h("AA BB CC"))),
            Inbound::Data(Bytes::new()),
            Inbound::Modbus(Bytes::from(response)),
            Inbound::Heartbeat,
            Inbound::Modbus(Bytes::from(exception)),
            Inbound::Malformed {
                reason: "heartbeat with length 1, expected 0".into(),
                bytes: Bytes::from(h("02 01 FF")),
            },
            Inbound::Malformed {
                reason: "Modbus frame of 3 bytes, shorter than 5".into(),
                bytes: Bytes::from(h("04 03 01 02 03")),
            },
            Inbound::Heartbeat,
        ];
        // Data items merge in feed(); compare unmerged for the whole stream.
        let mut codec = FramedCodec::new();
        let mut buf = BytesMut::from(&stream[..]);
        let mut items = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            items.push(item);
        }
        assert_eq!(items, expected);
        assert!(buf.is_empty());
        check_all_splits(
            &stream,
            &crate::protocol::link::test_util::merge_data(expected),
            None,
        );
    }

    #[test]
    fn two_responses_glued() {
        let a = Request::read(3, 0, 1).unwrap();
        let b = Request::WriteSingleRegister {
            address: 7,
            value: 9,
        };
        let ra = Response::Registers(vec![42]).encode(1, a.function());
        let rb = Response::WriteSingleRegister {
            address: 7,
            value: 9,
        }
        .encode(1, b.function());
        let mut stream = h("00 00 00 01");
        for r in [&ra, &rb] {
            stream.extend_from_slice(&[0x04, r.len() as u8]);
            stream.extend_from_slice(r);
        }
        check_all_splits(
            &stream,
            &[
                Inbound::Register("1".into()),
                Inbound::Modbus(Bytes::from(ra)),
                Inbound::Modbus(Bytes::from(rb)),
            ],
            None,
        );
    }

    #[test]
    fn unknown_type_is_fatal() {
        check_all_splits(
            &h("00 00 03 E9 02 00 07 00"),
            &[Inbound::Register("1001".into()), Inbound::Heartbeat],
            Some("unknown frame type 0x07"),
        );
        // A second registration, or a server-only type, from the device.
        for kind in [0x00, 0x01, 0x05, 0xFF] {
            let err = registered()
                .decode(&mut BytesMut::from(&[kind][..]))
                .unwrap_err();
            assert!(err.to_string().contains("unknown frame type"), "{err}");
        }
    }

    #[test]
    fn partial_frames_wait() {
        let mut codec = registered();
        for partial in [
            &h("")[..],
            &h("02"),
            &h("03"),
            &h("03 02 AA"),
            &h("04 05 01 83 02 C0"),
        ] {
            let mut buf = BytesMut::from(partial);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "{partial:?}");
            assert_eq!(&buf[..], partial);
        }
        let mut buf = BytesMut::from(&h("00 00 03")[..]);
        assert_eq!(FramedCodec::new().decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn encode_outbound() {
        let mut codec = registered();
        let mut out = BytesMut::new();
        codec.encode(Outbound::RegisterAck, &mut out).unwrap();
        codec.encode(Outbound::HeartbeatAck, &mut out).unwrap();
        codec.encode(Outbound::DataAck, &mut out).unwrap();
        let adu = Request::read(3, 2000, 1).unwrap().encode(1);
        codec
            .encode(Outbound::Modbus(Bytes::from(adu)), &mut out)
            .unwrap();
        assert_eq!(
            crate::protocol::hex::to_hex(&out),
            "01 02 03 04 08 01 03 07 D0 00 01 84 87"
        );
        let mut out = BytesMut::new();
        codec
            .encode(Outbound::Modbus(Bytes::from(vec![1; 255])), &mut out)
            .unwrap();
        assert_eq!(out.len(), 257);
        assert_eq!(out[1], 255);
        let err = codec
            .encode(
                Outbound::Modbus(Bytes::from(vec![1; 256])),
                &mut BytesMut::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
    }

    #[test]
    fn largest_frames() {
        let mut stream = h("00 00 00 05 03 FF");
        stream.extend_from_slice(&[0xAB; 255]);
        stream.extend_from_slice(&[0x04, 0xFF]);
        stream.extend_from_slice(&[0xCD; 255]);
        let (items, err, rest) = feed(&mut FramedCodec::new(), &[&stream]);
        assert!(err.is_none() && rest.is_empty());
        assert_eq!(
            items,
            vec![
                Inbound::Register("5".into()),
                Inbound::Data(Bytes::from(vec![0xAB; 255])),
                Inbound::Modbus(Bytes::from(vec![0xCD; 255])),
            ]
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
        ) {
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (items, err, rest) = feed(&mut FramedCodec::new(), &chunks);
            // Whatever is left waits for a frame that fits in 257 bytes (or the error).
            if err.is_none() {
                prop_assert!(rest.len() < 2 + 256);
            }
            prop_assert!(items.len() <= chunks.iter().map(|c| c.len()).sum::<usize>());
        }

        #[test]
        fn well_formed_frames_survive_any_split(
            id in any::<u32>(),
            frames in proptest::collection::vec(
                (2u8..=4, proptest::collection::vec(any::<u8>(), 5..40)),
                0..8,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut stream = id.to_be_bytes().to_vec();
            let mut expected = vec![Inbound::Register(id.to_string())];
            for (kind, payload) in &frames {
                match kind {
                    2 => {
                        stream.extend_from_slice(&[2, 0]);
                        expected.push(Inbound::Heartbeat);
                    }
                    3 => {
                        stream.extend_from_slice(&[3, payload.len() as u8]);
                        stream.extend_from_slice(payload);
                        expected.push(Inbound::Data(Bytes::from(payload.clone())));
                    }
                    _ => {
                        stream.extend_from_slice(&[4, payload.len() as u8]);
                        stream.extend_from_slice(payload);
                        expected.push(Inbound::Modbus(Bytes::from(payload.clone())));
                    }
                }
            }
            let at = cut.index(stream.len() + 1);
            let (a, b) = stream.split_at(at);
            let (items, err, rest) = feed(&mut FramedCodec::new(), &[a, b]);
            prop_assert!(err.is_none());
            prop_assert!(rest.is_empty());
            prop_assert_eq!(items, crate::protocol::link::test_util::merge_data(expected));
        }
    }
}
