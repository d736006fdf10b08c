//! DTUs that pass serial bytes through untouched (USR-IOT style), CONTRACT.md §3.
//! [`TransparentCodec`] is the server's side, [`TransparentDevice`] the simulator's.
//!
//! Nothing on the wire says where a packet ends, so the codec decides from context: the
//! first bytes are the registration packet as the profile describes it; later, a response
//! to the request in flight is framed by the RTU rules ([`rtu::response_len`] + CRC), the
//! profile's heartbeat bytes are a heartbeat, and anything else is unsolicited data.
//!
//! Bounds: the registration is looked for in the first [`REGISTRATION_WINDOW`] bytes; a
//! response candidate is at most [`MAX_ADU`] bytes, resynchronising one byte at a time; a
//! partial heartbeat is shorter than the heartbeat; data items are at most [`MAX_DATA`]
//! bytes. So the codec never holds more than a few hundred bytes between reads, and each
//! decode call consumes at least one byte or waits.

use bytes::{Buf, BytesMut};
use regex::Regex;

use crate::protocol::hex::to_hex;
use crate::protocol::link::{
    CodecError, DeviceLink, Expect, FromServer, Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec,
    LinkOptions, LinkProtocol, Outbound, Registration, Role,
};
use crate::protocol::modbus::rtu::{self, MAX_ADU};

/// The entry of [`crate::protocol::PROTOCOLS`].
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "transparent",
    role: Role::Polled {
        server: server_codec,
        device: |options| Box::new(TransparentDevice::new(options.heartbeat.clone())),
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
    registered: bool,
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
            registered: false,
        }
    }

    /// True once the registration packet has been decoded.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    fn heartbeat_bytes(&self) -> &[u8] {
        self.heartbeat
            .as_ref()
            .map_or(&[], |hb| hb.bytes.as_slice())
    }

    /// The id `bytes` render to, if they render at all.
    fn render(&self, bytes: &[u8]) -> Option<String> {
        match self.registration.format {
            IdFormat::Ascii => std::str::from_utf8(bytes).ok().map(str::to_owned),
            IdFormat::Hex => Some(hex::encode_upper(bytes)),
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
                    let whole = match &self.anchored {
                        Some(anchored) => anchored.is_match(&id),
                        None => re.find(&id).is_some_and(|m| m.range() == (0..id.len())),
                    };
                    whole.then_some((n, id))
                })
            }
        };
        match found {
            Some((n, id)) => {
                let raw = src.split_to(n).freeze();
                self.registered = true;
                log::debug!("transparent: registered as {id:?}");
                Ok(Some(Inbound::Register { id, raw }))
            }
            None if src.len() >= REGISTRATION_WINDOW => Err(CodecError::protocol(
                format!("no registration id in the first {REGISTRATION_WINDOW} bytes"),
                src,
            )),
            None => Ok(None),
        }
    }

    /// `src` starts with the expected slave and function (or exception): one RTU response.
    fn decode_response(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let reason = match rtu::response_len(src) {
            Some(n) if n > MAX_ADU => format!("response length {n} over {MAX_ADU}"),
            Some(n) if src.len() < n => return Ok(None),
            Some(n) => match src.get(..n) {
                Some(adu) if rtu::check_crc(adu) => {
                    return Ok(Some(Inbound::Answer(src.split_to(n).freeze())));
                }
                Some(adu) => format!("bad CRC in response {}", to_hex(adu)),
                None => return Ok(None),
            },
            None if src.len() >= MAX_ADU => format!("no CRC-framed response in {MAX_ADU} bytes"),
            None => return Ok(None),
        };
        let bytes = src.split_to(1).freeze();
        log::debug!(
            "transparent: {reason}; dropped {} to resync",
            to_hex(&bytes)
        );
        Ok(Some(Inbound::Malformed {
            reason: format!("{reason}; dropped 1 byte to resync"),
            bytes,
        }))
    }

    /// True if a response header to the request in flight (slave, function or exception)
    /// starts `bytes`, or could once more bytes come (`bytes` is just the slave).
    fn response_may_start(&self, bytes: &[u8]) -> bool {
        let Some(expect) = self.expect else {
            return false;
        };
        match bytes {
            [slave] => *slave == expect.slave,
            [slave, function, ..] => {
                *slave == expect.slave
                    && (*function == expect.function || *function == expect.function | 0x80)
            }
            [] => false,
        }
    }

    /// True if the heartbeat starts `bytes`, or `bytes` is a proper prefix of it.
    fn heartbeat_may_start(&self, bytes: &[u8]) -> bool {
        let hb = self.heartbeat_bytes();
        !hb.is_empty() && (bytes.starts_with(hb) || hb.starts_with(bytes))
    }

    /// Length of the unsolicited run at the start of `src` (which is neither a heartbeat nor
    /// a response header): up to where one may begin, at most [`MAX_DATA`]; at least 1.
    fn data_len(&self, src: &[u8]) -> usize {
        let limit = src.len().min(MAX_DATA);
        (1..limit)
            .find(|&i| {
                let rest = src.get(i..).unwrap_or_default();
                self.response_may_start(rest) || self.heartbeat_may_start(rest)
            })
            .unwrap_or(limit)
    }
}

impl LinkCodec for TransparentCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.registered {
            return self.decode_registration(src);
        }
        if src.is_empty() {
            return Ok(None);
        }
        let heartbeat = self.heartbeat_bytes();
        let is_heartbeat = !heartbeat.is_empty() && src.starts_with(heartbeat);
        if self.response_may_start(src) {
            if src.len() >= 2 {
                return self.decode_response(src);
            }
            if !is_heartbeat {
                // Only the slave byte so far: the function byte decides.
                return Ok(None);
            }
        }
        if is_heartbeat {
            let raw = src.split_to(heartbeat.len()).freeze();
            return Ok(Some(Inbound::Heartbeat { raw }));
        }
        if self.heartbeat_may_start(src) {
            // A proper prefix of the heartbeat: wait for the rest.
            return Ok(None);
        }
        let n = self.data_len(src);
        Ok(Some(Inbound::Unsolicited(src.split_to(n).freeze())))
    }

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::RegisterAck => dst.extend_from_slice(&self.registration.reply),
            Outbound::HeartbeatAck => dst.extend_from_slice(
                self.heartbeat
                    .as_ref()
                    .map_or(&[][..], |hb| hb.reply.as_slice()),
            ),
            Outbound::DataAck => {}
            Outbound::Request(adu) => {
                if adu.len() > MAX_ADU {
                    return Err(CodecError::protocol(
                        format!("Modbus request of {} bytes over {MAX_ADU}", adu.len()),
                        &adu,
                    ));
                }
                dst.extend_from_slice(&adu);
            }
        }
        Ok(())
    }

    /// The request in flight; its answer is framed by RTU rules until this changes.
    fn set_expect(&mut self, expect: Option<Expect>) {
        self.expect = expect;
    }
}

/// Device number `n` of the simulator registers as `IMEI_BASE + n` (15 ASCII digits,
/// IMEI-like), unless `n` has 15 digits already.
pub const IMEI_BASE: u64 = 860_000_000_000_000;

/// Default heartbeat of USR-IOT DTUs.
pub const USR_HEARTBEAT: &[u8] = b"www.usr.cn";

/// The simulator's side of a transparent link: ASCII IMEI registration, a configured
/// heartbeat, requests found by their RTU framing in whatever bytes arrive.
#[derive(Debug, Clone)]
pub struct TransparentDevice {
    heartbeat: Vec<u8>,
}

impl TransparentDevice {
    pub fn new(heartbeat: Vec<u8>) -> TransparentDevice {
        TransparentDevice { heartbeat }
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
        self.registration_id(number).map(String::into_bytes)
    }

    fn heartbeat(&self, _number: u64) -> Vec<u8> {
        self.heartbeat.clone()
    }

    fn acknowledged(&self) -> bool {
        false
    }

    fn data(&self, _payload: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError> {
        match rtu::find_request(buf) {
            Some((start, len)) => {
                if start > 0 {
                    log::debug!("transparent device: skipping {}", to_hex(&buf[..start]));
                }
                buf.advance(start);
                Ok(Some(FromServer::Request(buf.split_to(len).freeze())))
            }
            None => {
                // Nothing framed in twice the longest request: keep only what may still begin one.
                if buf.len() > 2 * MAX_ADU {
                    buf.advance(buf.len() - MAX_ADU);
                }
                Ok(None)
            }
        }
    }

    fn answer(&self, _number: u64, adu: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(adu);
    }

    fn framed(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[path = "transparent_tests.rs"]
mod tests;
