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
//! [`FramedCodec`] is the server's side, [`FramedDevice`] the simulator's.

use bytes::{Buf, BytesMut};

use crate::protocol::hex::to_hex;
use crate::protocol::link::{
    CodecError, DeviceLink, FromServer, Inbound, LinkCodec, LinkProtocol, Outbound, Role,
};

/// The entry of [`crate::protocol::PROTOCOLS`].
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "framed",
    role: Role::Polled {
        server: |_| Ok(Box::new(FramedCodec::new())),
        device: |_| Box::new(FramedDevice),
    },
    needs_registration: false,
};

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

impl LinkCodec for FramedCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.registered {
            let number = match src.get(..REGISTRATION_LEN) {
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                _ => return Ok(None),
            };
            let raw = src.split_to(REGISTRATION_LEN).freeze();
            self.registered = true;
            return Ok(Some(Inbound::Register {
                id: number.to_string(),
                raw,
            }));
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
            TYPE_HEARTBEAT if len == 0 => Inbound::Heartbeat { raw: frame },
            TYPE_HEARTBEAT => Inbound::Malformed {
                reason: format!("heartbeat with length {len}, expected 0"),
                bytes: frame,
            },
            TYPE_DATA => Inbound::Data(payload),
            _ if len < MIN_ADU => Inbound::Malformed {
                reason: format!("Modbus frame of {len} bytes, shorter than {MIN_ADU}"),
                bytes: frame,
            },
            _ => Inbound::Answer(payload),
        };
        if let Inbound::Malformed { reason, bytes } = &item {
            log::debug!("framed: {reason}: {}", to_hex(bytes));
        }
        Ok(Some(item))
    }

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::RegisterAck => dst.extend_from_slice(&[TYPE_REGISTER_ACK]),
            Outbound::HeartbeatAck => dst.extend_from_slice(&[TYPE_HEARTBEAT]),
            Outbound::DataAck => dst.extend_from_slice(&[TYPE_DATA]),
            Outbound::Request(adu) => {
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
            // The framed protocol has nothing else to say.
            _ => {}
        }
        Ok(())
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

/// The simulator's side of the framed protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramedDevice;

impl DeviceLink for FramedDevice {
    fn registration_id(&self, number: u64) -> Result<String, String> {
        u32::try_from(number)
            .map(|n| n.to_string())
            .map_err(|_| format!("device number {number} does not fit a framed registration (u32)"))
    }

    fn registration(&self, number: u64) -> Result<Vec<u8>, String> {
        self.registration_id(number)?;
        Ok(u32::try_from(number)
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec())
    }

    fn heartbeat(&self, _number: u64) -> Vec<u8> {
        vec![TYPE_HEARTBEAT, 0]
    }

    fn acknowledged(&self) -> bool {
        true
    }

    fn data(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let len = u8::try_from(payload.len()).ok()?;
        let mut packet = vec![TYPE_DATA, len];
        packet.extend_from_slice(payload);
        Some(packet)
    }

    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        match kind {
            TYPE_REGISTER_ACK => {
                buf.advance(1);
                Ok(Some(FromServer::RegisterAck))
            }
            TYPE_HEARTBEAT | TYPE_DATA => {
                buf.advance(1);
                Ok(Some(FromServer::Ack))
            }
            TYPE_MODBUS => {
                let Some(&len) = buf.get(1) else {
                    return Ok(None);
                };
                let len = usize::from(len);
                if len == 0 {
                    return Err(CodecError::protocol("empty request frame", &buf[..2]));
                }
                if buf.len() < 2 + len {
                    return Ok(None);
                }
                let frame = buf.split_to(2 + len).freeze();
                Ok(Some(FromServer::Request(frame.slice(2..))))
            }
            _ => Err(unknown_type(kind, buf)),
        }
    }

    fn answer(&self, _number: u64, adu: &[u8], out: &mut Vec<u8>) {
        // Answers are RTU ADUs of at most 256 bytes; one that does not fit LL is not sent.
        if let Ok(len) = u8::try_from(adu.len()) {
            out.extend_from_slice(&[TYPE_MODBUS, len]);
            out.extend_from_slice(adu);
        }
    }

    fn framed(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::modbus::{self, Request, Response};
    use crate::protocol::test_util::{feed, merge_data, splits};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        crate::protocol::hex::parse_hex(s).unwrap()
    }

    /// The registration of device `number`, as decoded with its raw bytes.
    fn reg(number: u32) -> Inbound {
        Inbound::Register {
            id: number.to_string(),
            raw: Bytes::copy_from_slice(&number.to_be_bytes()),
        }
    }

    fn hb() -> Inbound {
        Inbound::Heartbeat {
            raw: Bytes::from_static(&[2, 0]),
        }
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
        assert_eq!(items, vec![reg(1001)]);
        assert!(err.is_none() && rest.is_empty());
        assert!(codec.is_registered());
        let (items, _, _) = feed(&mut FramedCodec::new(), &[&h("FF FF FF FF")]);
        assert_eq!(items, vec![reg(4294967295)]);
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
            reg(1001),
            hb(),
            Inbound::Data(Bytes::from(h("AA BB CC"))),
            Inbound::Data(Bytes::new()),
            Inbound::Answer(Bytes::from(response)),
            hb(),
            Inbound::Answer(Bytes::from(exception)),
            Inbound::Malformed {
                reason: "heartbeat with length 1, expected 0".into(),
                bytes: Bytes::from(h("02 01 FF")),
            },
            Inbound::Malformed {
                reason: "Modbus frame of 3 bytes, shorter than 5".into(),
                bytes: Bytes::from(h("04 03 01 02 03")),
            },
            hb(),
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
        check_all_splits(&stream, &merge_data(expected), None);
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
                reg(1),
                Inbound::Answer(Bytes::from(ra)),
                Inbound::Answer(Bytes::from(rb)),
            ],
            None,
        );
    }

    #[test]
    fn unknown_type_is_fatal() {
        check_all_splits(
            &h("00 00 03 E9 02 00 07 00"),
            &[reg(1001), hb()],
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
            .encode(Outbound::Request(Bytes::from(adu)), &mut out)
            .unwrap();
        assert_eq!(
            crate::protocol::hex::to_hex(&out),
            "01 02 03 04 08 01 03 07 D0 00 01 84 87"
        );
        let mut out = BytesMut::new();
        codec
            .encode(Outbound::Request(Bytes::from(vec![1; 255])), &mut out)
            .unwrap();
        assert_eq!(out.len(), 257);
        assert_eq!(out[1], 255);
        let err = codec
            .encode(
                Outbound::Request(Bytes::from(vec![1; 256])),
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
                reg(5),
                Inbound::Data(Bytes::from(vec![0xAB; 255])),
                Inbound::Answer(Bytes::from(vec![0xCD; 255])),
            ]
        );
    }

    #[test]
    fn device_side_reads_acks_and_requests() {
        let device = FramedDevice;
        let mut buf = BytesMut::from(&[1u8, 2, 4, 3, 0xAA, 0xBB, 0xCC, 4, 5][..]);
        assert_eq!(
            device.decode(&mut buf).unwrap(),
            Some(FromServer::RegisterAck)
        );
        assert_eq!(device.decode(&mut buf).unwrap(), Some(FromServer::Ack));
        assert_eq!(
            device.decode(&mut buf).unwrap(),
            Some(FromServer::Request(Bytes::from(vec![0xAA, 0xBB, 0xCC])))
        );
        assert_eq!(device.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 2);
        let mut bad = BytesMut::from(&[0x99u8, 1][..]);
        assert!(device.decode(&mut bad).is_err());
        let mut empty_request = BytesMut::from(&[4u8, 0][..]);
        assert!(device.decode(&mut empty_request).is_err());
    }

    #[test]
    fn device_side_packets_are_what_the_server_side_reads() {
        let device = FramedDevice;
        assert_eq!(device.registration_id(1001).unwrap(), "1001");
        assert!(device.registration_id(u64::from(u32::MAX) + 1).is_err());
        let mut stream = device.registration(1001).unwrap();
        stream.extend_from_slice(&device.heartbeat(1001));
        stream.extend_from_slice(&device.data(b"id=1").unwrap());
        let answer = Response::Registers(vec![7]).encode(1, 3);
        device.answer(1001, &answer, &mut stream);
        let (items, err, rest) = feed(&mut FramedCodec::new(), &[&stream]);
        assert!(err.is_none() && rest.is_empty());
        assert_eq!(
            items,
            vec![
                reg(1001),
                hb(),
                Inbound::Data(Bytes::from_static(b"id=1")),
                Inbound::Answer(Bytes::from(answer)),
            ]
        );
        // What the server encodes, the device reads back.
        let mut out = BytesMut::new();
        let mut codec = registered();
        codec.encode(Outbound::RegisterAck, &mut out).unwrap();
        codec.encode(Outbound::HeartbeatAck, &mut out).unwrap();
        let request = Request::read(3, 0, 1).unwrap().encode(1);
        codec
            .encode(Outbound::Request(Bytes::from(request.clone())), &mut out)
            .unwrap();
        assert_eq!(
            device.decode(&mut out).unwrap(),
            Some(FromServer::RegisterAck)
        );
        assert_eq!(device.decode(&mut out).unwrap(), Some(FromServer::Ack));
        assert_eq!(
            device.decode(&mut out).unwrap(),
            Some(FromServer::Request(Bytes::from(request)))
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
            let mut expected = vec![reg(id)];
            for (kind, payload) in &frames {
                match kind {
                    2 => {
                        stream.extend_from_slice(&[2, 0]);
                        expected.push(hb());
                    }
                    3 => {
                        stream.extend_from_slice(&[3, payload.len() as u8]);
                        stream.extend_from_slice(payload);
                        expected.push(Inbound::Data(Bytes::from(payload.clone())));
                    }
                    _ => {
                        stream.extend_from_slice(&[4, payload.len() as u8]);
                        stream.extend_from_slice(payload);
                        expected.push(Inbound::Answer(Bytes::from(payload.clone())));
                    }
                }
            }
            let at = cut.index(stream.len() + 1);
            let (a, b) = stream.split_at(at);
            let (items, err, rest) = feed(&mut FramedCodec::new(), &[a, b]);
            prop_assert!(err.is_none());
            prop_assert!(rest.is_empty());
            prop_assert_eq!(items, merge_data(expected));
        }
    }
}
