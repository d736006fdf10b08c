//! The DDP link (protocol/ddp.rs), the server's side as a connection drives it, and the
//! simulator's side.
//!
//! Input: 4 cut lengths (fuzz_support::chunks), a mode byte (bit 0: the simulator's side),
//! then the bytes a DTU (or the server) sends.
#![no_main]

use bytes::BytesMut;
use dtu_supervisor::protocol::ddp::{DdpCodec, DdpDevice, ID_LEN, MAX_FRAME, MIN_FRAME};
use dtu_supervisor::protocol::link::{DeviceLink, FromServer, Inbound};
use dtu_supervisor::protocol::modbus::rtu::MAX_ADU;
use fuzz_support::{assert_same, chunks, cuts, drive, Bounds, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cuts = cuts(&mut input);
    let device_side = input.u8() & 1 != 0;
    let stream = input.rest();
    if device_side {
        simulator(stream, &cuts);
        return;
    }
    // A partial frame is shorter than the longest frame.
    let bounds = Bounds {
        held: MAX_FRAME - 1,
    };
    let run = |reads: &[&[u8]]| {
        let mut codec = DdpCodec::new();
        let run = drive(&mut codec, reads, &bounds, &mut |_, item| check_item(item));
        // The id, once registered, is what the first Register item said.
        let registered = run.items.iter().find_map(|item| match item {
            Inbound::Register { id, .. } => Some(id.clone()),
            _ => None,
        });
        assert_eq!(codec.id(), registered.as_deref());
        run
    };
    let whole = run(&[stream]);
    let cut = run(&chunks(stream, &cuts));
    assert_same(&whole, &cut);
});

fn check_item(item: &Inbound) {
    let frame = |raw: &[u8]| {
        assert!((MIN_FRAME..=MAX_FRAME).contains(&raw.len()), "{raw:?}");
        assert_eq!((raw[0], raw[raw.len() - 1]), (0x7B, 0x7B));
    };
    match item {
        Inbound::Register { id, raw } => {
            frame(raw);
            assert!(!id.is_empty() && id.len() <= ID_LEN);
        }
        Inbound::Heartbeat { raw } | Inbound::Logout { raw } | Inbound::Unsolicited(raw) => {
            frame(raw)
        }
        Inbound::Answer(data) => assert!(data.len() >= 5 && data.len() <= MAX_FRAME - MIN_FRAME),
        Inbound::Malformed { bytes, .. } => assert!(!bytes.is_empty()),
        Inbound::Data(_) => panic!("DDP user data is an answer, never a data packet"),
    }
}

/// The simulator reads the server's frames.
fn simulator(stream: &[u8], cuts: &[u8; 4]) {
    let device = DdpDevice;
    let mut buf = BytesMut::new();
    for read in chunks(stream, cuts) {
        buf.extend_from_slice(read);
        for _ in 0..=buf.len() + 1 {
            let before = buf.len();
            match device.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before);
                    if let FromServer::Request(adu) = item {
                        assert!(adu.len() <= MAX_ADU);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < MIN_FRAME + MAX_ADU);
    }
}
