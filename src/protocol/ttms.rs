//! The `$TTMS` relay protocol of the original terminal relay server:
//!
//! ```text
//! "$TTMS" | len u16 BE (whole frame, header to checksum) | addr 4 bytes | cmd u8 | body | xor u8
//! ```
//!
//! `xor` is the XOR of every byte before it. The decoder yields whole frames; a frame with a bad
//! checksum is a [`TtmsItem::BadChecksum`] item (dropped and logged by the caller, the
//! connection lives). Bytes that do not start with `$TTMS`, a length below the smallest frame
//! or above [`MAX_FRAME`] are fatal (`Err`): the stream cannot be resynchronised safely.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::link::{CodecError, LinkProtocol, Role};

/// The entry of [`crate::protocol::PROTOCOLS`]: terminals whose frames the server relays.
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "ttms",
    role: Role::Relay,
    needs_registration: false,
};

/// Header of frames from terminals.
pub const HEADER_IN: &[u8; 5] = b"$TTMS";
/// Header of frames the server forwards to a target.
pub const HEADER_OUT: &[u8; 5] = b"$TTMX";
/// header + len + addr + cmd + xor.
pub const MIN_FRAME: usize = 5 + 2 + 4 + 1 + 1;
/// Largest frame accepted; a longer declared length closes the connection.
pub const MAX_FRAME: usize = 8 * 1024;

pub const CMD_HEARTBEAT: u8 = 0x01;
pub const CMD_DATA: u8 = 0xAA;

/// One parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtmsFrame {
    pub header: [u8; 5],
    pub addr: u32,
    pub cmd: u8,
    pub body: Bytes,
}

impl TtmsFrame {
    /// The frame's bytes with a freshly computed length and checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = MIN_FRAME + self.body.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.header);
        // Callers keep bodies under MAX_FRAME; saturate rather than wrap if one does not.
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&self.addr.to_be_bytes());
        out.push(self.cmd);
        out.extend_from_slice(&self.body);
        out.push(xor(&out));
        out
    }

    /// The heartbeat answer: the same frame with body = `unix_time` as u32 BE.
    pub fn heartbeat_answer(&self, unix_time: u32) -> TtmsFrame {
        TtmsFrame {
            header: self.header,
            addr: self.addr,
            cmd: self.cmd,
            body: Bytes::copy_from_slice(&unix_time.to_be_bytes()),
        }
    }

    /// The data frame as forwarded to its target: `$TTMX`, addr = the sender's ccid.
    pub fn forwarded(&self, sender: u32) -> TtmsFrame {
        TtmsFrame {
            header: *HEADER_OUT,
            addr: sender,
            cmd: self.cmd,
            body: self.body.clone(),
        }
    }
}

/// A terminal's id as the rest of the server sees it: the ccid as 8 uppercase hex digits.
pub fn ccid_id(ccid: u32) -> String {
    format!("{ccid:08X}")
}

pub fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtmsItem {
    Frame(TtmsFrame),
    /// A whole frame whose checksum is wrong: `raw` is its bytes, `expected` the right xor.
    BadChecksum {
        raw: Bytes,
        expected: u8,
    },
}

/// The server side (the default) takes only `$TTMS` frames; the terminal side
/// ([`TtmsCodec::terminal`], for simulated terminals) also takes the `$TTMX` frames the server
/// forwards.
#[derive(Debug, Default, Clone)]
pub struct TtmsCodec {
    terminal: bool,
}

impl TtmsCodec {
    pub fn terminal() -> TtmsCodec {
        TtmsCodec { terminal: true }
    }
}

impl Decoder for TtmsCodec {
    type Item = TtmsItem;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<TtmsItem>, CodecError> {
        // Check the header as soon as its first bytes are there, so garbage closes at once.
        let head = src.len().min(HEADER_IN.len());
        let forwarded = self.terminal && src[..head] == HEADER_OUT[..head];
        if src[..head] != HEADER_IN[..head] && !forwarded {
            return Err(CodecError::protocol("frame does not start with $TTMS", src));
        }
        if src.len() < 7 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([src[5], src[6]]));
        if len < MIN_FRAME {
            return Err(CodecError::protocol(
                format!("frame length {len} is below the minimum {MIN_FRAME}"),
                src,
            ));
        }
        if len > MAX_FRAME {
            return Err(CodecError::protocol(
                format!("frame length {len} exceeds the maximum {MAX_FRAME}"),
                src,
            ));
        }
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let raw = src.split_to(len).freeze();
        let expected = xor(&raw[..len - 1]);
        if raw[len - 1] != expected {
            return Ok(Some(TtmsItem::BadChecksum { raw, expected }));
        }
        let mut r = &raw[7..len - 1];
        let addr = r.get_u32();
        let cmd = r.get_u8();
        let body = raw.slice(12..len - 1);
        let mut header = [0u8; 5];
        header.copy_from_slice(&raw[..5]);
        Ok(Some(TtmsItem::Frame(TtmsFrame {
            header,
            addr,
            cmd,
            body,
        })))
    }
}

impl Encoder<TtmsFrame> for TtmsCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: TtmsFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        if MIN_FRAME + frame.body.len() > MAX_FRAME {
            return Err(CodecError::protocol(
                format!("body of {} bytes does not fit a frame", frame.body.len()),
                &frame.body,
            ));
        }
        dst.extend_from_slice(&frame.to_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(addr: u32, cmd: u8, body: &[u8]) -> Vec<u8> {
        TtmsFrame {
            header: *HEADER_IN,
            addr,
            cmd,
            body: Bytes::copy_from_slice(body),
        }
        .to_bytes()
    }

    fn decode_all(codec: &mut TtmsCodec, buf: &mut BytesMut) -> Vec<TtmsItem> {
        let mut out = Vec::new();
        while let Ok(Some(item)) = codec.decode(buf) {
            out.push(item);
        }
        out
    }

    #[test]
    fn heartbeat_round_trip() {
        let bytes = frame(0x1234_5678, CMD_HEARTBEAT, &[]);
        assert_eq!(bytes.len(), MIN_FRAME);
        assert_eq!(&bytes[..7], b"$TTMS\x00\x0d");
        let mut buf = BytesMut::from(&bytes[..]);
        let item = TtmsCodec::default().decode(&mut buf).ok().flatten();
        let Some(TtmsItem::Frame(f)) = item else {
            panic!("no frame: {item:?}")
        };
        assert_eq!(
            (f.addr, f.cmd, f.body.len()),
            (0x1234_5678, CMD_HEARTBEAT, 0)
        );
        let answer = f.heartbeat_answer(0x6560_0000).to_bytes();
        assert_eq!(answer.len(), MIN_FRAME + 4);
        assert_eq!(&answer[12..16], &[0x65, 0x60, 0, 0]);
        assert_eq!(xor(&answer[..answer.len() - 1]), answer[answer.len() - 1]);
        assert!(buf.is_empty());
    }

    #[test]
    fn forwarded_frame_has_ttmx_and_sender() {
        let f = TtmsFrame {
            header: *HEADER_IN,
            addr: 2,
            cmd: CMD_DATA,
            body: Bytes::from_static(b"hi"),
        };
        let out = f.forwarded(1).to_bytes();
        assert_eq!(&out[..5], b"$TTMX");
        assert_eq!(&out[7..11], &[0, 0, 0, 1]);
        assert_eq!(&out[12..14], b"hi");
        assert_eq!(xor(&out[..out.len() - 1]), out[out.len() - 1]);
        assert_eq!(ccid_id(0xAB), "000000AB");
    }

    #[test]
    fn glued_frames_decode_in_order() {
        let mut all = frame(1, CMD_HEARTBEAT, &[]);
        all.extend(frame(2, CMD_DATA, b"abc"));
        all.extend(frame(3, CMD_DATA, b""));
        let mut buf = BytesMut::from(&all[..]);
        let items = decode_all(&mut TtmsCodec::default(), &mut buf);
        let addrs: Vec<u32> = items
            .iter()
            .filter_map(|i| match i {
                TtmsItem::Frame(f) => Some(f.addr),
                _ => None,
            })
            .collect();
        assert_eq!(addrs, [1, 2, 3]);
        assert!(buf.is_empty());
    }

    #[test]
    fn split_frame_waits_for_the_rest() {
        let bytes = frame(7, CMD_DATA, b"hello world");
        for cut in 0..bytes.len() {
            let mut codec = TtmsCodec::default();
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(matches!(codec.decode(&mut buf), Ok(None)), "cut {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            let item = codec.decode(&mut buf).ok().flatten();
            assert!(
                matches!(item, Some(TtmsItem::Frame(f)) if f.addr == 7),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn bad_checksum_is_an_item_and_the_stream_goes_on() {
        let mut bad = frame(1, CMD_DATA, b"x");
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        bad.extend(frame(2, CMD_HEARTBEAT, &[]));
        let mut buf = BytesMut::from(&bad[..]);
        let items = decode_all(&mut TtmsCodec::default(), &mut buf);
        assert!(matches!(items[0], TtmsItem::BadChecksum { .. }));
        assert!(matches!(&items[1], TtmsItem::Frame(f) if f.addr == 2));
    }

    #[test]
    fn garbage_and_bad_lengths_are_fatal() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"$TTMX\x00\x0d",
            b"$T\x00",
            b"$TTMS\x00\x05",
            b"$TTMS\xff\xff",
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(TtmsCodec::default().decode(&mut buf).is_err(), "{bytes:?}");
        }
        // A partial header that matches so far just waits.
        let mut buf = BytesMut::from(&b"$TT"[..]);
        assert!(matches!(TtmsCodec::default().decode(&mut buf), Ok(None)));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
        ) {
            let mut codec = TtmsCodec::default();
            let mut buf = BytesMut::new();
            for c in chunks {
                buf.extend_from_slice(&c);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => { buf.clear(); break; }
                    }
                }
            }
        }

        #[test]
        fn valid_frames_survive_any_split(
            frames in proptest::collection::vec(
                (any::<u32>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut all = Vec::new();
            for (a, c, b) in &frames {
                all.extend(frame(*a, *c, b));
            }
            let cut = cut.index(all.len() + 1);
            let mut codec = TtmsCodec::default();
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&all[cut..]);
            got.extend(decode_all(&mut codec, &mut buf));
            prop_assert_eq!(got.len(), frames.len());
            for (item, (a, c, b)) in got.iter().zip(&frames) {
                match item {
                    TtmsItem::Frame(f) => {
                        prop_assert_eq!(f.addr, *a);
                        prop_assert_eq!(f.cmd, *c);
                        prop_assert_eq!(&f.body[..], &b[..]);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    #[test]
    fn only_the_terminal_side_takes_forwarded_frames() {
        let forwarded = TtmsFrame {
            header: *HEADER_OUT,
            addr: 7,
            cmd: CMD_DATA,
            body: Bytes::from_static(b"x"),
        };
        let mut buf = BytesMut::from(&forwarded.to_bytes()[..]);
        assert!(TtmsCodec::default().decode(&mut buf.clone()).is_err());
        let item = TtmsCodec::terminal().decode(&mut buf).ok().flatten();
        assert_eq!(item, Some(TtmsItem::Frame(forwarded)));
    }
}
