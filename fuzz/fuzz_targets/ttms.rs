//! The `$TTMS` relay codec (protocol/ttms.rs) as tokio's FramedRead drives it: the server's
//! side, and the terminal's side (which also takes forwarded `$TTMX` frames).
//!
//! Input: 4 cut lengths (fuzz_support::chunks), a mode byte (bit 0: the terminal's side),
//! then the bytes a terminal (or the server) sends.
#![no_main]

use bytes::BytesMut;
use dtu_supervisor::protocol::ttms::{xor, TtmsCodec, TtmsItem, MAX_FRAME, MIN_FRAME};
use fuzz_support::{chunks, cuts, Input};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cuts = cuts(&mut input);
    let terminal = input.u8() & 1 != 0;
    let stream = input.rest();
    let make = || {
        if terminal {
            TtmsCodec::terminal()
        } else {
            TtmsCodec::default()
        }
    };
    let whole = run(make(), &[stream]);
    let cut = run(make(), &chunks(stream, &cuts));
    assert_eq!(whole, cut, "the same bytes decode differently when cut");
});

/// Frames (their raw bytes) until the end or an error (true).
fn run(mut codec: TtmsCodec, reads: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        for _ in 0..=buf.len() + 1 {
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    let raw = before.get(..before.len() - buf.len()).unwrap_or_default();
                    check_item(&item, raw);
                    frames.push(raw.to_vec());
                }
                Ok(None) => {
                    assert_eq!(buf, before, "waiting consumed bytes");
                    assert!(buf.len() < MAX_FRAME);
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

/// An item is the bytes it consumed: a frame re-encodes to them, a bad checksum is theirs.
fn check_item(item: &TtmsItem, raw: &[u8]) {
    assert!((MIN_FRAME..=MAX_FRAME).contains(&raw.len()));
    match item {
        TtmsItem::Frame(frame) => assert_eq!(frame.to_bytes(), raw),
        TtmsItem::BadChecksum { raw: bad, expected } => {
            assert_eq!(&bad[..], raw);
            assert_eq!(*expected, xor(&raw[..raw.len() - 1]));
            assert_ne!(raw[raw.len() - 1], *expected);
        }
    }
}
