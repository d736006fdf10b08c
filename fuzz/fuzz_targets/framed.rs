//! The framed link (protocol/framed.rs), the server's side as a connection drives it, and
//! the simulator's side.
//!
//! Input: 4 cut lengths (fuzz_support::chunks), a mode byte (bit 0: the simulator's side),
//! then the bytes a device (or the server) sends.
#![no_main]

use bytes::BytesMut;
use dtu_supervisor::protocol::framed::{FramedCodec, FramedDevice};
use dtu_supervisor::protocol::link::{DeviceLink, FromServer, Inbound};
use fuzz_support::{assert_same, chunks, cuts, drive, Bounds, Input};
use libfuzzer_sys::fuzz_target;

/// A frame is at most type, length and 255 bytes: a partial one is shorter.
const HELD: usize = 2 + 255 - 1;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cuts = cuts(&mut input);
    let device_side = input.u8() & 1 != 0;
    let stream = input.rest();
    if device_side {
        simulator(stream, &cuts);
        return;
    }
    let bounds = Bounds { held: HELD };
    let run = |reads: &[&[u8]]| {
        drive(&mut FramedCodec::new(), reads, &bounds, &mut |_, item| {
            check_item(item)
        })
    };
    let whole = run(&[stream]);
    let cut = run(&chunks(stream, &cuts));
    assert_same(&whole, &cut);
});

fn check_item(item: &Inbound) {
    match item {
        Inbound::Register { raw, .. } => assert_eq!(raw.len(), 4),
        Inbound::Heartbeat { raw } => assert_eq!(&raw[..], [2, 0]),
        Inbound::Data(payload) => assert!(payload.len() <= 255),
        Inbound::Answer(adu) => assert!((5..=255).contains(&adu.len())),
        Inbound::Malformed { bytes, .. } => assert!(bytes.len() <= 2 + 255),
        other => panic!("the framed link has no {other:?}"),
    }
}

/// The simulator reads the server's acknowledgements and requests.
fn simulator(stream: &[u8], cuts: &[u8; 4]) {
    let device = FramedDevice;
    let mut buf = BytesMut::new();
    for read in chunks(stream, cuts) {
        buf.extend_from_slice(read);
        for _ in 0..=buf.len() + 1 {
            let before = buf.len();
            match device.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before);
                    if let FromServer::Request(adu) = item {
                        assert!(!adu.is_empty() && adu.len() <= 255);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= HELD);
    }
}
