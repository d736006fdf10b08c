//! The transparent link (protocol/transparent.rs) as a connection drives it: a registration
//! as a profile describes it, a heartbeat, requests in flight one after another (the next
//! one set once an answer has come, as the connection does) and answers that may come
//! unasked; and the simulator's side, which finds requests in whatever bytes arrive.
//!
//! Input:
//! ```text
//! cuts[4]            read lengths (fuzz_support::chunks)
//! flags              bits 0-1 registration mode (connect, prefix, both, connect),
//!                    bit 2 hex ids (else ascii), bit 3 a fixed length (else a pattern),
//!                    bit 4 no heartbeat, bit 5 the simulator's side, bits 6-7 its framing
//! matcher            the length, or the pattern's index in PATTERNS
//! hb_len, hb[..]     the heartbeat (hb_len & 0x1F bytes)
//! n, expect * n      requests in flight, in turn (n % 5; fuzz_support::expect)
//! m, expect * m      answers that may come unasked (m % 3)
//! stream ...         what the DTU sends
//! ```
#![no_main]

use bytes::BytesMut;
use dtu_supervisor::protocol::link::{
    DeviceLink, Expect, FromServer, Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec,
    Registration, RegistrationMode,
};
use dtu_supervisor::protocol::serial::{Framing, MAX_REQUEST};
use dtu_supervisor::protocol::transparent::{
    TransparentCodec, TransparentDevice, MAX_DATA, REGISTRATION_WINDOW,
};
use fuzz_support::{assert_same, chunks, cuts, drive, expect, Bounds, Input};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

/// Registration patterns of the shipped settings and the unit tests, and a few loose ones.
const PATTERNS: &[&str] = &[
    "^[0-9]{15}$",
    "[0-9]{4,15}",
    "^A5[0-9A-F]{6}$",
    "^[0-9]{3,15}$",
    ".+",
    "[A-Za-z0-9]{1,20}",
    "^.{11}$",
    "x*",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cuts = cuts(&mut input);
    let flags = input.u8();
    let matcher = input.u8();
    let hb_len = usize::from(input.u8() & 0x1F);
    let heartbeat = input.take(hb_len).to_vec();
    let answers: Vec<Option<Expect>> = (0..input.u8() % 5).map(|_| expect(&mut input)).collect();
    let passive: Vec<Expect> = (0..input.u8() % 3)
        .filter_map(|_| expect(&mut input))
        .collect();
    let stream = input.rest();

    if flags & 0x20 != 0 {
        let framing = Framing::ALL[usize::from(flags >> 6) % Framing::ALL.len()];
        simulator(stream, &cuts, framing);
        return;
    }
    let registration = Registration {
        format: if flags & 4 != 0 {
            IdFormat::Hex
        } else {
            IdFormat::Ascii
        },
        matcher: if flags & 8 != 0 {
            IdMatcher::Length(usize::from(matcher))
        } else {
            let pattern = PATTERNS[usize::from(matcher) % PATTERNS.len()];
            IdMatcher::Pattern(Regex::new(pattern).expect("a valid pattern"))
        },
        reply: Vec::new(),
        mode: match flags & 3 {
            1 => RegistrationMode::Prefix,
            2 => RegistrationMode::Both,
            _ => RegistrationMode::Connect,
        },
    };
    let heartbeat = (flags & 0x10 == 0).then(|| Heartbeat {
        bytes: heartbeat,
        reply: Vec::new(),
    });
    let hb_bytes = heartbeat.as_ref().map(|hb| hb.bytes.clone());
    // The module's bounds: a registration window, an answer candidate, a partial heartbeat.
    let bounds = Bounds {
        held: REGISTRATION_WINDOW
            .max(MAX_REQUEST)
            .max(hb_bytes.as_ref().map_or(0, Vec::len)),
    };
    let run = |reads: &[&[u8]]| {
        let mut codec = TransparentCodec::new(registration.clone(), heartbeat.clone());
        codec.set_passive(&passive);
        codec.set_expect(answers.first().copied().flatten());
        let mut answered = 0;
        drive(&mut codec, reads, &bounds, &mut |codec, item| {
            check_item(item, hb_bytes.as_deref());
            if matches!(item, Inbound::Answer(_)) {
                answered += 1;
                codec.set_expect(answers.get(answered).copied().flatten());
            }
        })
    };
    let whole = run(&[stream]);
    // A registration pattern of variable length ("[0-9]{4,15}") takes the longest prefix
    // that matches, so a registration cut short would register a shorter id: DTUs send it
    // in one packet, and here it comes in one read too. Everything after it may be cut
    // anywhere.
    let registration_len = whole.items.iter().find_map(|item| match item {
        Inbound::Register { raw, .. } => Some(raw.len()),
        _ => None,
    });
    let (first, rest) = stream.split_at(registration_len.unwrap_or(0));
    let mut reads = vec![first];
    reads.extend(chunks(rest, &cuts));
    let cut = run(&reads);
    assert_same(&whole, &cut);
});

fn check_item(item: &Inbound, heartbeat: Option<&[u8]>) {
    match item {
        Inbound::Register { id, raw } => {
            assert!(!raw.is_empty() && raw.len() <= REGISTRATION_WINDOW);
            assert!(!id.is_empty());
        }
        Inbound::Heartbeat { raw } => assert_eq!(Some(&raw[..]), heartbeat),
        Inbound::Answer(adu) => assert!(!adu.is_empty() && adu.len() <= MAX_REQUEST),
        Inbound::Unsolicited(bytes) => assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA),
        Inbound::Malformed { bytes, .. } => {
            assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA)
        }
        other => panic!("a transparent DTU sends no {other:?}"),
    }
}

/// The simulator finds requests in whatever the server wrote.
fn simulator(stream: &[u8], cuts: &[u8; 4], framing: Framing) {
    let device = TransparentDevice::new(b"www.usr.cn".to_vec(), RegistrationMode::Connect)
        .with_framing(framing);
    let mut buf = BytesMut::new();
    for read in chunks(stream, cuts) {
        buf.extend_from_slice(read);
        for _ in 0..=buf.len() + 1 {
            let before = buf.len();
            match device.decode(&mut buf) {
                Ok(Some(FromServer::Request(request))) => {
                    assert!(buf.len() < before);
                    assert!(!request.is_empty() && request.len() <= framing.max_request());
                }
                Ok(Some(other)) => panic!("a transparent link carries no {other:?}"),
                Ok(None) => break,
                Err(e) => panic!("the simulator's transparent side never fails: {e}"),
            }
        }
        assert!(buf.len() <= 2 * framing.max_request());
    }
}
