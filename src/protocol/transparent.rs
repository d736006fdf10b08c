//! DTUs that pass serial bytes through untouched (USR-IOT style), CONTRACT.md §3.
//! [`TransparentCodec`] is the server's side, [`TransparentDevice`] the simulator's.
//!
//! Nothing on the wire says where a packet ends, so the codec decides from context: the
//! first bytes are the registration as the profile describes it; later, a response to the
//! request in flight is framed by its protocol's rules ([`Expect`]: RTU length and CRC, the MBAP
//! header of Modbus TCP, the DL/T 645 frame and checksum), the profile's
//! heartbeat bytes are a heartbeat wherever an item may begin (alone, glued before or after
//! an answer, inside other bytes), and anything else is unsolicited data. A complete answer
//! with a good CRC always wins: a heartbeat is never taken out of an RTU frame's bytes, and
//! bytes that may still become the answer awaited (its slave address, then its function) are
//! held until its length has arrived. That length is the one the request fixes (a read asks
//! for its count) rather than the byte count the bytes carry, so a heartbeat that happens to
//! equal the slave address and function is not held for a length it seems to announce.
//!
//! **Registration modes** ([`RegistrationMode`]). In `connect` mode the registration is the
//! first packet only. In `prefix` mode every packet the DTU sends starts with it (the first
//! one registers the DTU), in `both` mode every packet after the registration packet does.
//! TCP keeps no packet boundaries, so a *packet* here is what follows this DTU's
//! registration bytes: the codec takes them (without an item of their own) wherever an item
//! may begin, and the serial bytes after them — one answer, or other bytes up to the next
//! registration or heartbeat — belong to that packet. An answer or a heartbeat ends the
//! packet. Serial bytes that no prefix opened are dropped as [`Inbound::Malformed`], and so
//! is a prefix naming another id (the packet of another DTU, or of none), followed by its
//! serial bytes. Heartbeats may come with the prefix or without it. Nothing depends on how
//! the bytes were cut into reads.
//!
//! Bounds: the registration is looked for in the first [`REGISTRATION_WINDOW`] bytes; a
//! response candidate is at most [`MAX_REQUEST`] bytes, resynchronising one byte at a time; a
//! partial heartbeat is shorter than the heartbeat, a partial prefix shorter than the
//! registration; data items are at most [`MAX_DATA`] bytes. So the codec never holds more
//! than a few hundred bytes between reads, and each decode call consumes at least one byte or
//! waits.

use bytes::{Buf, Bytes, BytesMut};
use regex::Regex;

use crate::protocol::hex::to_hex;
use crate::protocol::link::{
    CodecError, DeviceLink, Expect, FromServer, Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec,
    LinkOptions, LinkProtocol, Outbound, Registration, RegistrationMode, Role,
};
use crate::protocol::serial::{Candidate, Framing, MAX_REQUEST};

/// The entry of [`crate::protocol::PROTOCOLS`].
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "transparent",
    role: Role::Polled {
        server: server_codec,
        device: |options| {
            Box::new(
                TransparentDevice::new(options.heartbeat.clone(), options.registration_mode)
                    .with_framing(options.framing),
            )
        },
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
    /// Answers that may come unasked (see `LinkCodec::set_passive`).
    passive: Vec<Expect>,
    registered: bool,
    /// The id registered, for messages.
    id: String,
    /// In `prefix` and `both` mode, the registration as it arrived: every packet starts
    /// with it.
    prefix: Option<Bytes>,
    /// The packet the next serial bytes belong to (prefix modes only).
    packet: Packet,
}

/// In the prefix modes, whose packet the bytes at hand belong to.
#[derive(Debug, Clone, PartialEq)]
enum Packet {
    /// None: an answer or a heartbeat ended the last one (or none came yet).
    Closed,
    /// This DTU's: its prefix came.
    Open,
    /// Another DTU's, this id's: its serial bytes are dropped.
    Foreign(String),
    /// None, but serial bytes came: they are dropped up to this DTU's prefix or heartbeat.
    /// A read may end inside them, so where the next read begins is no packet boundary (else
    /// the bytes after it would wait to be judged as a prefix, and a heartbeat behind them
    /// with them).
    Orphan,
}

/// One decode step after registration.
enum Step {
    Item(Inbound),
    Wait,
    /// This DTU's registration prefix, this long: a packet opens.
    Prefix(usize),
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
            passive: Vec::new(),
            registered: false,
            id: String::new(),
            prefix: None,
            packet: Packet::Closed,
        }
    }

    /// True once the registration has been decoded.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    fn heartbeat_bytes(&self) -> &[u8] {
        self.heartbeat
            .as_ref()
            .map_or(&[], |hb| hb.bytes.as_slice())
    }

    fn prefix_bytes(&self) -> &[u8] {
        self.prefix.as_deref().unwrap_or_default()
    }

    /// The id `bytes` render to, if they render at all.
    fn render(&self, bytes: &[u8]) -> Option<String> {
        match self.registration.format {
            IdFormat::Ascii => std::str::from_utf8(bytes).ok().map(str::to_owned),
            IdFormat::Hex => Some(hex::encode_upper(bytes)),
        }
    }

    /// Whether `id` is a whole registration id by the profile's pattern.
    fn matches_pattern(&self, re: &Regex, id: &str) -> bool {
        match &self.anchored {
            Some(anchored) => anchored.is_match(id),
            None => re.find(id).is_some_and(|m| m.range() == (0..id.len())),
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
                    self.matches_pattern(re, &id).then_some((n, id))
                })
            }
        };
        match found {
            Some((n, id)) => {
                let raw = src.split_to(n).freeze();
                self.registered = true;
                log::debug!(
                    "transparent: registered as {id:?} (registration mode {})",
                    self.registration.mode
                );
                let mode = self.registration.mode;
                if mode.prefixes_packets() {
                    self.prefix = Some(raw.clone());
                    // In prefix mode the registration was the first packet's prefix.
                    if mode == RegistrationMode::Prefix {
                        self.packet = Packet::Open;
                    }
                }
                self.id = id.clone();
                Ok(Some(Inbound::Register { id, raw }))
            }
            None if src.len() >= REGISTRATION_WINDOW => Err(CodecError::protocol(
                format!("no registration id in the first {REGISTRATION_WINDOW} bytes"),
                src,
            )),
            None => Ok(None),
        }
    }

    /// Whether `bytes` begin the answer to the request in flight (or, a normal one, an answer
    /// that may come unasked): the first answer any of them finds, else a wait, else the
    /// reason a header led to no answer.
    fn response_at(&self, bytes: &[u8]) -> Candidate {
        let awaited = self.expect.iter().map(|e| (e, true));
        let unasked = self.passive.iter().map(|e| (e, false));
        let mut found = Candidate::No;
        for (expect, exceptions) in awaited.chain(unasked) {
            match expect.candidate(bytes, exceptions) {
                Candidate::Answer(n) => return Candidate::Answer(n),
                Candidate::Wait => found = Candidate::Wait,
                Candidate::Rejected(reason) if found == Candidate::No => {
                    found = Candidate::Rejected(reason)
                }
                _ => {}
            }
        }
        found
    }

    /// True if a response header to the request in flight (slave, function or exception)
    /// starts `bytes`, or could once more bytes come (`bytes` is just the slave).
    fn response_may_start(&self, bytes: &[u8]) -> bool {
        self.expect.is_some_and(|e| e.may_start(bytes, true))
            || self.passive.iter().any(|e| e.may_start(bytes, false))
    }

    /// True if the heartbeat starts `bytes`, or `bytes` is a proper prefix of it.
    fn heartbeat_may_start(&self, bytes: &[u8]) -> bool {
        let hb = self.heartbeat_bytes();
        !hb.is_empty() && (bytes.starts_with(hb) || hb.starts_with(bytes))
    }

    /// True if this DTU's registration prefix starts `bytes`, or `bytes` is a proper prefix
    /// of it.
    fn prefix_may_start(&self, bytes: &[u8]) -> bool {
        let prefix = self.prefix_bytes();
        !prefix.is_empty() && (bytes.starts_with(prefix) || prefix.starts_with(bytes))
    }

    /// Length of the run at the start of `src` that is neither a heartbeat, a prefix nor
    /// (where serial bytes may come) a response header: up to where one may begin, at most
    /// [`MAX_DATA`]; at least 1.
    fn data_len(&self, src: &[u8], serial: bool) -> usize {
        let limit = src.len().min(MAX_DATA);
        (1..limit)
            .find(|&i| {
                let rest = src.get(i..).unwrap_or_default();
                (serial && self.response_may_start(rest))
                    || self.heartbeat_may_start(rest)
                    || self.prefix_may_start(rest)
            })
            .unwrap_or(limit)
    }

    /// One step at an item boundary once registered; `src` is not empty.
    fn step(&mut self, src: &mut BytesMut) -> Step {
        // Serial bytes (answers, other data) are this DTU's only after its prefix, where
        // packets carry one.
        let serial = self.prefix.is_none() || self.packet == Packet::Open;
        let mut rejected = None;
        if serial {
            match self.response_at(src) {
                Candidate::Answer(n) => {
                    self.packet = Packet::Closed;
                    return Step::Item(Inbound::Answer(src.split_to(n).freeze()));
                }
                Candidate::Wait => return Step::Wait,
                Candidate::Rejected(reason) => rejected = Some(reason),
                Candidate::No => {}
            }
        }
        let heartbeat = self.heartbeat_bytes();
        if !heartbeat.is_empty() && src.starts_with(heartbeat) {
            let raw = src.split_to(heartbeat.len()).freeze();
            self.packet = Packet::Closed;
            return Step::Item(Inbound::Heartbeat { raw });
        }
        let prefix = self.prefix_bytes();
        if !prefix.is_empty() && src.starts_with(prefix) {
            // A heartbeat that begins with the prefix may still be arriving: it wins whole.
            if self.heartbeat_may_start(src) {
                return Step::Wait;
            }
            return Step::Prefix(prefix.len());
        }
        if self.heartbeat_may_start(src) || self.prefix_may_start(src) {
            // A proper prefix of either: wait for the rest.
            return Step::Wait;
        }
        if let Some(reason) = rejected {
            let bytes = src.split_to(1).freeze();
            log::debug!(
                "transparent: {reason}; dropped {} to resync",
                to_hex(&bytes)
            );
            return Step::Item(Inbound::Malformed {
                reason: format!("{reason}; dropped 1 byte to resync"),
                bytes,
            });
        }
        if !serial {
            return self.unprefixed(src);
        }
        let n = self.data_len(src, true);
        Step::Item(Inbound::Unsolicited(src.split_to(n).freeze()))
    }

    /// Bytes that are not this DTU's, in the prefix modes: the serial bytes of another
    /// DTU's packet, up to where this DTU's prefix or its heartbeat may begin; where a packet
    /// must begin, another DTU's prefix (judged on as many bytes as this DTU's), or serial
    /// bytes of no packet.
    fn unprefixed(&mut self, src: &mut BytesMut) -> Step {
        if let Packet::Foreign(other) = &self.packet {
            let n = self.data_len(src, false);
            return Step::Item(Inbound::Malformed {
                reason: format!("serial bytes of a packet of {other:?}"),
                bytes: src.split_to(n).freeze(),
            });
        }
        if self.packet == Packet::Orphan {
            return self.orphan_bytes(src);
        }
        let len = self.prefix_bytes().len();
        let Some(head) = src.get(..len) else {
            // Too few bytes to tell a prefix from other bytes yet.
            return Step::Wait;
        };
        let other = self
            .render(head)
            .filter(|id| match &self.registration.matcher {
                IdMatcher::Pattern(re) => self.matches_pattern(re, id),
                // Any bytes of that length are an id.
                IdMatcher::Length(_) => true,
            });
        if let Some(other) = other {
            let reason = format!(
                "packet prefix names {other:?}, not this DTU's {:?}; its serial bytes are dropped",
                self.id
            );
            self.packet = Packet::Foreign(other);
            return Step::Item(Inbound::Malformed {
                reason,
                bytes: src.split_to(len).freeze(),
            });
        }
        self.packet = Packet::Orphan;
        self.orphan_bytes(src)
    }

    /// Serial bytes of no packet, up to where this DTU's prefix or its heartbeat may begin.
    fn orphan_bytes(&self, src: &mut BytesMut) -> Step {
        let n = self.data_len(src, false);
        Step::Item(Inbound::Malformed {
            reason: format!(
                "serial bytes without this DTU's registration prefix ({:?})",
                self.id
            ),
            bytes: src.split_to(n).freeze(),
        })
    }
}

impl LinkCodec for TransparentCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.registered {
            return self.decode_registration(src);
        }
        // A prefix makes no item: go on with what follows it. Each round consumes at least
        // one byte, so this ends.
        while !src.is_empty() {
            match self.step(src) {
                Step::Item(item) => return Ok(Some(item)),
                Step::Wait => return Ok(None),
                Step::Prefix(n) => {
                    src.advance(n);
                    self.packet = Packet::Open;
                }
            }
        }
        Ok(None)
    }

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::RegisterAck => dst.extend_from_slice(&self.registration.reply),
            Outbound::HeartbeatAck => dst.extend_from_slice(
                self.heartbeat
                    .as_ref()
                    .map_or(&[][..], |hb| hb.reply.as_slice()),
            ),
            // Downlink requests carry no prefix, whatever the registration mode.
            Outbound::Request(adu) => {
                if adu.len() > MAX_REQUEST {
                    return Err(CodecError::protocol(
                        format!("request of {} bytes over {MAX_REQUEST}", adu.len()),
                        &adu,
                    ));
                }
                dst.extend_from_slice(&adu);
            }
            // Data packets and logouts are not a transparent DTU's: nothing to answer.
            _ => {}
        }
        Ok(())
    }

    /// The request in flight; its answer is framed by its protocol's rules until this changes.
    fn set_expect(&mut self, expect: Option<Expect>) {
        self.expect = expect;
    }

    fn set_passive(&mut self, answers: &[Expect]) {
        self.passive = answers.to_vec();
    }
}

/// Device number `n` of the simulator registers as `IMEI_BASE + n` (15 ASCII digits,
/// IMEI-like), unless `n` has 15 digits already.
pub const IMEI_BASE: u64 = 860_000_000_000_000;

/// Default heartbeat of USR-IOT DTUs.
pub const USR_HEARTBEAT: &[u8] = b"www.usr.cn";

/// The simulator's side of a transparent link: ASCII IMEI registration, a configured
/// heartbeat, requests found by their RTU framing in whatever bytes arrive. In `prefix` mode
/// its first packet is its heartbeat with the registration before it (it is sent at once on
/// connecting, so the server learns the id), and every heartbeat and answer carries the
/// registration before it; in `both` mode the registration is also sent alone on connecting.
#[derive(Debug, Clone)]
pub struct TransparentDevice {
    heartbeat: Vec<u8>,
    mode: RegistrationMode,
    /// How the meter behind it frames requests (RTU unless told).
    framing: Framing,
}

impl TransparentDevice {
    pub fn new(heartbeat: Vec<u8>, mode: RegistrationMode) -> TransparentDevice {
        TransparentDevice {
            heartbeat,
            mode,
            framing: Framing::Rtu,
        }
    }

    /// The same DTU in front of a meter whose requests are framed by `framing`.
    pub fn with_framing(self, framing: Framing) -> TransparentDevice {
        TransparentDevice { framing, ..self }
    }

    /// `packet` as device `number` sends it: after its registration in the prefix modes.
    fn packet(&self, number: u64, packet: &[u8]) -> Vec<u8> {
        if !self.mode.prefixes_packets() {
            return packet.to_vec();
        }
        let mut out = self
            .registration_id(number)
            .map(String::into_bytes)
            .unwrap_or_default();
        out.extend_from_slice(packet);
        out
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
        let id = self.registration_id(number)?;
        Ok(match self.mode {
            RegistrationMode::Prefix => self.packet(number, &self.heartbeat),
            RegistrationMode::Connect | RegistrationMode::Both => id.into_bytes(),
        })
    }

    fn heartbeat(&self, number: u64) -> Vec<u8> {
        self.packet(number, &self.heartbeat)
    }

    fn acknowledged(&self) -> bool {
        false
    }

    fn data(&self, _payload: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError> {
        match self.framing.find_request(buf) {
            Some((start, len)) => {
                if start > 0 {
                    log::debug!("transparent device: skipping {}", to_hex(&buf[..start]));
                }
                buf.advance(start);
                Ok(Some(FromServer::Request(buf.split_to(len).freeze())))
            }
            None => {
                // Nothing framed in twice the longest request: keep only what may still begin one.
                let max = self.framing.max_request();
                if buf.len() > 2 * max {
                    buf.advance(buf.len() - max);
                }
                Ok(None)
            }
        }
    }

    fn answer(&self, number: u64, adu: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.packet(number, adu));
    }

    fn framed(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[path = "transparent_tests.rs"]
mod tests;
