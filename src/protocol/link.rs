//! Wire codecs for dial-in DTUs: bytes from the socket in, [`Inbound`] items out.
//!
//! The device actor owns one [`DeviceCodec`], appends socket bytes to a `BytesMut` and calls
//! `decode` until `Ok(None)`. `Err` is fatal (the actor closes the connection); one bad
//! frame is an [`Inbound::Malformed`] item and the connection lives. Every decode path is
//! bounded in what it buffers and how far it looks, and never panics on any bytes.

use crate::protocol::framed::FramedCodec;
use crate::protocol::transparent::TransparentCodec;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// What a device sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The device registered with this id.
    Register(String),
    Heartbeat,
    /// Framed type 03; transparent: bytes that are neither heartbeat nor an expected response.
    Data(Bytes),
    /// One complete RTU response ADU (CRC included). The transparent codec framed it by CRC;
    /// the framed codec has not validated it: the actor calls `modbus::rtu::parse_response`.
    Modbus(Bytes),
    /// Dropped bytes; the actor logs `reason` and `to_hex(bytes)` with the device id.
    Malformed {
        reason: String,
        bytes: Bytes,
    },
}

/// What the server sends a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    RegisterAck,
    HeartbeatAck,
    DataAck,
    /// An RTU request ADU with CRC.
    Modbus(Bytes),
}

/// A fatal codec error: the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{reason}: {hex}")]
    Protocol { reason: String, hex: String },
}

impl CodecError {
    /// A protocol error about `bytes` (at most the first 64 are shown).
    pub(crate) fn protocol(reason: impl Into<String>, bytes: &[u8]) -> CodecError {
        const SHOWN: usize = 64;
        let mut hex = crate::protocol::hex::to_hex(bytes.get(..SHOWN).unwrap_or(bytes));
        if bytes.len() > SHOWN {
            hex.push_str(&format!(" ... ({} bytes)", bytes.len()));
        }
        CodecError::Protocol {
            reason: reason.into(),
            hex,
        }
    }
}

/// What the transparent codec should expect: the request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub slave: u8,
    pub function: u8,
}

/// The codec of one connection, chosen by its listener's protocol.
#[derive(Debug)]
pub enum DeviceCodec {
    Framed(FramedCodec),
    Transparent(TransparentCodec),
}

impl DeviceCodec {
    /// The request in flight (`None` when there is none). Only the transparent codec needs it
    /// to tell responses from other bytes; the framed protocol tags its frames. Bytes already
    /// buffered may decode differently afterwards, so decode again after changing it.
    pub fn set_expect(&mut self, expect: Option<Expect>) {
        match self {
            DeviceCodec::Framed(_) => {}
            DeviceCodec::Transparent(codec) => codec.set_expect(expect),
        }
    }

    /// True once the codec has decoded a registration.
    pub fn is_registered(&self) -> bool {
        match self {
            DeviceCodec::Framed(codec) => codec.is_registered(),
            DeviceCodec::Transparent(codec) => codec.is_registered(),
        }
    }
}

impl Decoder for DeviceCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        match self {
            DeviceCodec::Framed(codec) => codec.decode(src),
            DeviceCodec::Transparent(codec) => codec.decode(src),
        }
    }
}

impl Encoder<Outbound> for DeviceCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            DeviceCodec::Framed(codec) => codec.encode(item, dst),
            DeviceCodec::Transparent(codec) => codec.encode(item, dst),
        }
    }
}

/// Helpers shared by the codec tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Decodes until `Ok(None)` or an error, asserting progress so a bug cannot hang a test.
    pub fn drain<D>(codec: &mut D, buf: &mut BytesMut, out: &mut Vec<Inbound>) -> Result<(), String>
    where
        D: Decoder<Item = Inbound, Error = CodecError>,
    {
        // Every item consumes at least one byte, so this many rounds always suffice.
        for _ in 0..=buf.len() + 1 {
            let before = buf.len();
            match codec.decode(buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "{item:?} consumed nothing");
                    out.push(item);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
        panic!("decode loop did not terminate");
    }

    /// Feeds `chunks` one after another, draining after each; merges adjacent `Data` items,
    /// whose boundaries depend on how the bytes were split. Returns the items, the error if
    /// one ended the stream, and the bytes left over.
    pub fn feed<D>(codec: &mut D, chunks: &[&[u8]]) -> (Vec<Inbound>, Option<String>, Vec<u8>)
    where
        D: Decoder<Item = Inbound, Error = CodecError>,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut error = None;
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            if let Err(e) = drain(codec, &mut buf, &mut out) {
                error = Some(e);
                break;
            }
        }
        (merge_data(out), error, buf.to_vec())
    }

    /// Joins runs of `Data` items into one.
    pub fn merge_data(items: Vec<Inbound>) -> Vec<Inbound> {
        let mut merged: Vec<Inbound> = Vec::new();
        for item in items {
            match (merged.last_mut(), item) {
                (Some(Inbound::Data(prev)), Inbound::Data(next)) => {
                    let mut joined = prev.to_vec();
                    joined.extend_from_slice(&next);
                    *prev = Bytes::from(joined);
                }
                (_, item) => merged.push(item),
            }
        }
        merged
    }

    /// Every way to cut `bytes`: one byte at a time, and every two-way split.
    pub fn splits(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![bytes.chunks(1).collect::<Vec<_>>()];
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            all.push(vec![a, b]);
        }
        all
    }
}
