//! Helpers shared by the link codec tests.

use bytes::{Bytes, BytesMut};

use crate::protocol::link::{Inbound, LinkCodec};

/// Decodes until `Ok(None)` or an error, asserting progress so a bug cannot hang a test.
pub fn drain(
    codec: &mut dyn LinkCodec,
    buf: &mut BytesMut,
    out: &mut Vec<Inbound>,
) -> Result<(), String> {
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

/// Feeds `chunks` one after another, draining after each; merges adjacent `Data` (and
/// `Unsolicited`) items, whose boundaries depend on how the bytes were split. Returns the
/// items, the error if one ended the stream, and the bytes left over.
pub fn feed(
    codec: &mut dyn LinkCodec,
    chunks: &[&[u8]],
) -> (Vec<Inbound>, Option<String>, Vec<u8>) {
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

/// Joins runs of `Data` items, and runs of `Unsolicited` items, into one.
pub fn merge_data(items: Vec<Inbound>) -> Vec<Inbound> {
    let mut merged: Vec<Inbound> = Vec::new();
    for item in items {
        match (merged.last_mut(), item) {
            (Some(Inbound::Data(prev)), Inbound::Data(next))
            | (Some(Inbound::Unsolicited(prev)), Inbound::Unsolicited(next)) => {
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

/// Joins runs of `Malformed` items with one reason: where a run of dropped bytes ends
/// depends on how the bytes were split, what is dropped and why does not.
pub fn merge_malformed(items: Vec<Inbound>) -> Vec<Inbound> {
    let mut merged: Vec<Inbound> = Vec::new();
    for item in items {
        match (merged.last_mut(), item) {
            (
                Some(Inbound::Malformed { reason, bytes }),
                Inbound::Malformed {
                    reason: next_reason,
                    bytes: next,
                },
            ) if *reason == next_reason => {
                *bytes = Bytes::from([&bytes[..], &next[..]].concat());
            }
            (_, item) => merged.push(item),
        }
    }
    merged
}

/// Decodes `stream` cut every way ([`splits`]) through a fresh `make()` codec: every cut
/// gives `expected` (runs of data and of dropped bytes joined, [`merge_data`] and
/// [`merge_malformed`]), no error, and leaves nothing.
pub fn check_every_split<C: LinkCodec>(make: impl Fn() -> C, stream: &[u8], expected: &[Inbound]) {
    let expected = merge_malformed(merge_data(expected.to_vec()));
    for chunks in splits(stream) {
        let (items, err, rest) = feed(&mut make(), &chunks);
        assert_eq!(err, None, "chunks {chunks:?}");
        assert_eq!(merge_malformed(items), expected, "chunks {chunks:?}");
        assert!(rest.is_empty(), "left {rest:?} for {chunks:?}");
    }
}
