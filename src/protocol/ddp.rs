//! DDP, the framing of Hongdian DTUs (H7710 and kin) and of other vendors' "DDP mode"
//! (Four-Faith among them), over TCP. [`DdpCodec`] is the server's (the DSC's) side,
//! [`DdpDevice`] the simulator's.
//!
//! ```text
//! 7B | type | length u16 BE (the whole frame) | DTU id, 11 bytes ASCII | data | 7B
//!
//! D→S  01  register, data = the DTU's mobile IP (4) and port (2), 22 bytes in all
//! S→D  81  registered, no data, 16 bytes (the DTU's id echoed)
//! D→S  02  logout                                  S→D  82  logged out
//! D→S  09  user data: the serial bytes (here a Modbus RTU answer)
//! S→D  89  user data: a Modbus RTU request for the serial side
//! D→S  01  again, for the id registered: the heartbeat, answered 81 again
//! ```
//!
//! Sources, and where they differ:
//! - *H7710S-DDP 协议* (Hongdian; copies at www.nameidi.com/n/95qp6n89.html and
//!   www.ziliaoku.com/res/info_da3c4d67c0164a33a5721f0ad92ef27c.html) and its summary
//!   *宏电 DTU DDP 协议规范 V30* (wenku.csdn.net/doc/2mzt8cxcb3): the frame above, data
//!   0..=1024 bytes, the length counting the whole frame with both flags, network byte
//!   order, the packet types (DTU: 01 02 04 05 09 0B 0D 0E 0F; DSC: 81 82 83 84 85 89 8B
//!   8D 8E 8F), register = id + IP (4) + port (2) with length 0x16, answer 81 with length
//!   0x10. 82 makes the DTU restart.
//! - DTU firmware speaking DDP (github.com/yanlaisheng/ZGP331_V5.31, `User/com3_232.c`): its
//!   register packet `7B 01 00 16 "13912345678" 0A 66 9A 00 0F A2 7B` doubles as the
//!   heartbeat, re-sent every interval and answered 81; over **TCP** user data sits between
//!   the id and the end flag and the length counts it (`7B 09 00 13 <id> 61 62 63 7B`), over
//!   **UDP** the length stays 0x10 and the data follows the end flag
//!   (`7B 09 00 10 <id> 7B 61 62 63`). Listeners are TCP: this file follows the TCP layout
//!   (the one above). A server written for the UDP layout (a JavaScript one that requires
//!   registers of exactly 22 bytes and reads data after byte 16) reads TCP frames wrong.
//! - Escaping: none of these escapes 0x7B (or 0x7D) inside a frame — the length delimits
//!   it, and the firmware copies serial bytes verbatim. Four-Faith's own PROT mode escapes
//!   FD/FE, but that is another framing. So a 0x7B in the data is data; the end flag is
//!   checked at the declared length, and bytes that are not a frame there are dropped up to
//!   the next 0x7B (resynchronising) as [`Inbound::Malformed`].
//!
//! Choices where the sources are silent: a register frame may carry any data (the IP and
//! port are logged, not used: the connection's peer address is what counts); a register for
//! the id already online on the connection is its heartbeat; a register or any frame naming
//! another id is dropped and logged; 05 (the DTU acknowledging our user data) and answers to
//! management frames this server never sends (0B 0D 0E 0F) are kept as unsolicited bytes,
//! 04 (the DTU calls our frame invalid) is logged; user data shorter than an RTU answer is
//! dropped; no 85 is sent for user data (its answer is the next request). A logout is
//! answered 82 and ends the connection ([`Inbound::Logout`]).
//!
//! Bounds: a frame is at most [`MAX_FRAME`] bytes, so the codec never holds more than that
//! between reads; each decode call consumes at least one byte or waits.

use bytes::{Bytes, BytesMut};

use crate::protocol::hex::to_hex;
use crate::protocol::link::{
    CodecError, DeviceLink, FromServer, Inbound, LinkCodec, LinkProtocol, Outbound, Role,
};
use crate::protocol::modbus::rtu::MAX_ADU;

/// The entry of [`crate::protocol::PROTOCOLS`].
pub const PROTOCOL: LinkProtocol = LinkProtocol {
    name: "ddp",
    role: Role::Polled {
        server: |_| Ok(Box::new(DdpCodec::new())),
        device: |_| Box::new(DdpDevice),
    },
    needs_registration: false,
};

/// Start and end of every frame.
pub const FLAG: u8 = 0x7B;
/// The DTU's id, ASCII (a phone number, as Hongdian DTUs are set up).
pub const ID_LEN: usize = 11;
/// Flag, type, length and id.
const HEAD: usize = 4 + ID_LEN;
/// A frame without data: head and end flag.
pub const MIN_FRAME: usize = HEAD + 1;
/// Most data a frame carries (the specification's 1024 bytes).
pub const MAX_DATA: usize = 1024;
/// Longest frame.
pub const MAX_FRAME: usize = MIN_FRAME + MAX_DATA;
/// Shortest RTU response: slave, function|0x80, code, CRC.
const MIN_ADU: usize = 5;

// What a DTU sends.
const REGISTER: u8 = 0x01;
const LOGOUT: u8 = 0x02;
const INVALID: u8 = 0x04;
const USER_DATA_ACK: u8 = 0x05;
const USER_DATA: u8 = 0x09;
const QUERY_ANSWER: u8 = 0x0B;
const SET_ANSWER: u8 = 0x0D;
const LOG_ANSWER: u8 = 0x0E;
const UPGRADE_ANSWER: u8 = 0x0F;
// What the server (the DSC) sends.
const REGISTERED: u8 = 0x81;
const LOGGED_OUT: u8 = 0x82;
const DSC_USER_DATA: u8 = 0x89;

/// Types a DTU sends.
fn from_dtu(kind: u8) -> bool {
    matches!(
        kind,
        REGISTER
            | LOGOUT
            | INVALID
            | USER_DATA_ACK
            | USER_DATA
            | QUERY_ANSWER
            | SET_ANSWER
            | LOG_ANSWER
            | UPGRADE_ANSWER
    )
}

/// Types a server sends (81..=8F as the specification lists them).
fn from_server(kind: u8) -> bool {
    matches!(
        kind,
        0x81..=0x85 | DSC_USER_DATA | 0x8B | 0x8D | 0x8E | 0x8F
    )
}

/// What the bytes at the start of a buffer are.
#[derive(Debug, PartialEq)]
enum Scan {
    /// Not enough bytes to tell.
    Wait,
    /// A frame of this type and length, flags checked.
    Frame { kind: u8, len: usize },
    /// No frame starts here: drop this many bytes, for this reason.
    Skip { len: usize, reason: String },
}

/// The frame at the start of `buf`, of a type `kind_ok` accepts and at most `max` bytes.
/// A flag that starts no frame is dropped alone, and bytes up to the next flag after it as
/// bytes outside a frame: a frame may start at any flag, and what is dropped does not depend
/// on how the bytes arrived.
fn scan(buf: &[u8], max: usize, kind_ok: fn(u8) -> bool) -> Scan {
    let skip = |reason: String| Scan::Skip { len: 1, reason };
    let (kind, len) = match buf {
        [] => return Scan::Wait,
        [first, ..] if *first != FLAG => {
            return Scan::Skip {
                len: buf.iter().position(|b| *b == FLAG).unwrap_or(buf.len()),
                reason: "bytes outside a frame".into(),
            }
        }
        [_, kind, ..] if !kind_ok(*kind) => {
            return skip(format!("unknown frame type 0x{kind:02X}"))
        }
        [_, kind, hi, lo, ..] => (*kind, usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => return Scan::Wait,
    };
    if !(MIN_FRAME..=max).contains(&len) {
        return skip(format!(
            "frame type 0x{kind:02X} declares {len} bytes, outside {MIN_FRAME}..={max}"
        ));
    }
    match buf.get(len - 1) {
        None => Scan::Wait,
        Some(&FLAG) => Scan::Frame { kind, len },
        Some(_) => skip(format!(
            "frame type 0x{kind:02X} of {len} bytes has no end flag"
        )),
    }
}

/// A frame of `kind` for `id` carrying `data` (at most [`MAX_DATA`] bytes, checked by the
/// callers).
fn frame(kind: u8, id: &[u8; ID_LEN], data: &[u8]) -> Vec<u8> {
    let len = MIN_FRAME + data.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[FLAG, kind]);
    // Callers keep data within MAX_DATA, so the length fits u16.
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(data);
    out.push(FLAG);
    out
}

/// The id bytes of a complete frame.
fn id_of(frame: &[u8]) -> [u8; ID_LEN] {
    let mut id = [0; ID_LEN];
    if let Some(bytes) = frame.get(4..HEAD) {
        id.copy_from_slice(bytes);
    }
    id
}

/// The data of a complete frame.
fn data_of(frame: &Bytes) -> Bytes {
    frame.slice(HEAD..frame.len().saturating_sub(1).max(HEAD))
}

/// The id `bytes` name: ASCII, padding (NUL or spaces) at the end dropped; `None` when that
/// leaves nothing or something not printable.
fn render_id(bytes: &[u8; ID_LEN]) -> Option<String> {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, 0 | b' '))
        .map_or(0, |p| p + 1);
    let id = bytes.get(..end)?;
    (!id.is_empty() && id.iter().all(|b| (0x20..0x7F).contains(b)))
        .then(|| id.iter().map(|b| char::from(*b)).collect())
}

/// Codec for the DDP protocol; one per connection.
#[derive(Debug, Default)]
pub struct DdpCodec {
    /// The id registered, as it arrives in every frame, and as text.
    id: Option<([u8; ID_LEN], String)>,
}

impl DdpCodec {
    pub fn new() -> DdpCodec {
        DdpCodec::default()
    }

    /// The id registered, once it is.
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().map(|(_, id)| id.as_str())
    }

    /// What a whole frame of `kind` means.
    fn item(&mut self, kind: u8, frame: Bytes) -> Inbound {
        let id = id_of(&frame);
        let malformed = |reason: String, bytes: Bytes| Inbound::Malformed { reason, bytes };
        let Some((own, own_text)) = &self.id else {
            return match (kind, render_id(&id)) {
                (REGISTER, Some(text)) => {
                    log::debug!(
                        "ddp: {text} registers from {}",
                        mobile_address(&data_of(&frame))
                    );
                    self.id = Some((id, text.clone()));
                    Inbound::Register {
                        id: text,
                        raw: frame,
                    }
                }
                (REGISTER, None) => malformed(
                    format!(
                        "register with an id that is not printable ASCII: {}",
                        to_hex(&id)
                    ),
                    frame,
                ),
                // The connection refuses whatever comes before a registration.
                _ => malformed(format!("frame type 0x{kind:02X} before a register"), frame),
            };
        };
        if id != *own {
            let named = render_id(&id).unwrap_or_else(|| to_hex(&id));
            return malformed(
                format!(
                    "frame type 0x{kind:02X} for DTU {named:?} on the connection of {own_text:?}"
                ),
                frame,
            );
        }
        match kind {
            REGISTER => Inbound::Heartbeat { raw: frame },
            LOGOUT => Inbound::Logout { raw: frame },
            USER_DATA => {
                let data = data_of(&frame);
                if data.len() < MIN_ADU {
                    malformed(
                        format!(
                            "user data of {} bytes, shorter than an RTU answer ({MIN_ADU})",
                            data.len()
                        ),
                        frame,
                    )
                } else {
                    Inbound::Answer(data)
                }
            }
            INVALID => malformed(
                "the DTU calls a frame of ours invalid (type 0x04)".into(),
                frame,
            ),
            // Acknowledgements of our user data; answers to management frames never sent.
            _ => Inbound::Unsolicited(frame),
        }
    }

    /// A frame for the registered DTU.
    fn to_dtu(&self, kind: u8, data: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        let Some((id, _)) = &self.id else {
            return Err(CodecError::protocol(
                format!("no DTU id to address a frame of type 0x{kind:02X} to"),
                data,
            ));
        };
        if data.len() > MAX_DATA {
            return Err(CodecError::protocol(
                format!("user data of {} bytes over {MAX_DATA}", data.len()),
                data,
            ));
        }
        dst.extend_from_slice(&frame(kind, id, data));
        Ok(())
    }
}

/// A register's data as `IP:port`, for the log.
fn mobile_address(data: &[u8]) -> String {
    match data {
        [a, b, c, d, hi, lo] => format!("{a}.{b}.{c}.{d}:{}", u16::from_be_bytes([*hi, *lo])),
        other => format!("(data {})", to_hex(other)),
    }
}

impl LinkCodec for DdpCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        match scan(src, MAX_FRAME, from_dtu) {
            Scan::Wait => Ok(None),
            Scan::Skip { len, reason } => {
                let bytes = src.split_to(len.max(1)).freeze();
                log::debug!("ddp: {reason}: dropped {}", to_hex(&bytes));
                Ok(Some(Inbound::Malformed { reason, bytes }))
            }
            Scan::Frame { kind, len } => {
                let frame = src.split_to(len).freeze();
                Ok(Some(self.item(kind, frame)))
            }
        }
    }

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            // A repeated register is the heartbeat: both are answered 81.
            Outbound::RegisterAck | Outbound::HeartbeatAck => self.to_dtu(REGISTERED, &[], dst),
            Outbound::LogoutAck => self.to_dtu(LOGGED_OUT, &[], dst),
            Outbound::Request(adu) => self.to_dtu(DSC_USER_DATA, &adu, dst),
            // No other item is answered in DDP.
            _ => Ok(()),
        }
    }
}

/// Device number `n` of the simulator registers as `PHONE_BASE + n` (11 ASCII digits, a
/// phone number as Hongdian DTUs are set up), unless `n` has 11 digits already.
pub const PHONE_BASE: u64 = 13_800_000_000;

/// The simulator's side of a DDP link: registers (its mobile IP and port sent as zeros: it
/// has none, and the server does not use them), repeats the register as its heartbeat,
/// answers 89 frames with 09 frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct DdpDevice;

impl DdpDevice {
    fn id(&self, number: u64) -> Result<[u8; ID_LEN], String> {
        let id = self.registration_id(number)?;
        let mut out = [0; ID_LEN];
        if id.len() != ID_LEN {
            return Err(format!("DDP id {id:?} is not {ID_LEN} characters"));
        }
        out.copy_from_slice(id.as_bytes());
        Ok(out)
    }
}

impl DeviceLink for DdpDevice {
    fn registration_id(&self, number: u64) -> Result<String, String> {
        match number {
            0..=9_999_999_999 => Ok((PHONE_BASE + number).to_string()),
            10_000_000_000..=99_999_999_999 => Ok(number.to_string()),
            _ => Err(format!(
                "device number {number} does not fit a DDP id ({ID_LEN} digits)"
            )),
        }
    }

    fn registration(&self, number: u64) -> Result<Vec<u8>, String> {
        Ok(frame(REGISTER, &self.id(number)?, &[0; 6]))
    }

    /// The register again, as Hongdian DTUs send it.
    fn heartbeat(&self, number: u64) -> Vec<u8> {
        self.registration(number).unwrap_or_default()
    }

    fn acknowledged(&self) -> bool {
        true
    }

    /// User data frames carry the serial side's bytes, not packets of the link.
    fn data(&self, _payload: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError> {
        // A request is at most an ADU: a longer frame is not one the server sends.
        match scan(buf, MIN_FRAME + MAX_ADU, from_server) {
            Scan::Wait => Ok(None),
            Scan::Skip { len, reason } => {
                Err(CodecError::protocol(reason, buf.get(..len).unwrap_or(buf)))
            }
            Scan::Frame { kind, len } => {
                let frame = buf.split_to(len).freeze();
                Ok(Some(match kind {
                    REGISTERED => FromServer::RegisterAck,
                    DSC_USER_DATA => FromServer::Request(data_of(&frame)),
                    // Logged out, asked to register again, user data acknowledged, or
                    // management the simulator does not do: nothing to answer.
                    _ => FromServer::Ack,
                }))
            }
        }
    }

    fn answer(&self, number: u64, adu: &[u8], out: &mut Vec<u8>) {
        // Answers are RTU ADUs of at most 256 bytes; a device whose number fits no id has
        // not registered either.
        if let (Ok(id), true) = (self.id(number), adu.len() <= MAX_DATA) {
            out.extend_from_slice(&frame(USER_DATA, &id, adu));
        }
    }

    fn framed(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::hex::parse_hex;
    use crate::protocol::modbus::rtu::exception_adu;
    use crate::protocol::modbus::{Request, Response};
    use crate::protocol::test_util::{check_every_split, feed, merge_data, merge_malformed};
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    /// The register packet of the DDP firmware cited above (its `GPRS_ZhuCe`): id
    /// 13912345678, mobile IP 10.102.154.0, port 4002.
    const VENDOR_REGISTER: &str =
        "7B 01 00 16 31 33 39 31 32 33 34 35 36 37 38 0A 66 9A 00 0F A2 7B";
    /// Its answer, per the specification (2.1.2: 81, length 0x10, the id, end flag).
    const VENDOR_REGISTERED: &str = "7B 81 00 10 31 33 39 31 32 33 34 35 36 37 38 7B";
    const ID: &[u8; ID_LEN] = b"13912345678";

    /// A frame built here by hand, byte by byte, independently of `frame()`.
    fn by_hand(kind: u8, data: &[u8]) -> Vec<u8> {
        let len = 16 + data.len();
        let mut f = vec![0x7B, kind, (len >> 8) as u8, len as u8];
        f.extend_from_slice(ID);
        f.extend_from_slice(data);
        f.push(0x7B);
        f
    }

    fn registered() -> DdpCodec {
        DdpCodec {
            id: Some((*ID, "13912345678".into())),
        }
    }

    fn reg() -> Inbound {
        Inbound::Register {
            id: "13912345678".into(),
            raw: Bytes::from(h(VENDOR_REGISTER)),
        }
    }

    fn malformed(reason: &str, bytes: &[u8]) -> Inbound {
        Inbound::Malformed {
            reason: reason.into(),
            bytes: Bytes::copy_from_slice(bytes),
        }
    }

    /// Decodes `stream` cut every way through a fresh codec: always `expected`.
    fn check_all_splits(stream: &[u8], expected: &[Inbound]) {
        check_every_split(DdpCodec::new, stream, expected);
    }

    #[test]
    fn the_vendor_register_is_answered_81_with_the_same_id() {
        let mut codec = DdpCodec::new();
        let (items, err, rest) = feed(&mut codec, &[&h(VENDOR_REGISTER)]);
        assert_eq!((items, err, rest), (vec![reg()], None, vec![]));
        assert_eq!(codec.id(), Some("13912345678"));
        let mut out = BytesMut::new();
        codec.encode(Outbound::RegisterAck, &mut out).unwrap();
        assert_eq!(to_hex(&out), VENDOR_REGISTERED);
        assert_eq!(
            mobile_address(&data_of(&Bytes::from(h(VENDOR_REGISTER)))),
            "10.102.154.0:4002"
        );
    }

    #[test]
    fn a_session_at_every_split() {
        let answer = Response::Registers(vec![0x0102, 0x7B7B]).encode(1, 3);
        let exception = exception_adu(1, 3, 2);
        let stream = [
            h(VENDOR_REGISTER),
            by_hand(0x09, &answer),
            // The register again: the heartbeat.
            h(VENDOR_REGISTER),
            // The DTU acknowledging our user data.
            by_hand(0x05, &[]),
            by_hand(0x09, &exception),
            by_hand(0x0D, b"set ok"),
            by_hand(0x09, &answer),
            by_hand(0x02, &[]),
        ]
        .concat();
        check_all_splits(
            &stream,
            &[
                reg(),
                Inbound::Answer(Bytes::from(answer.clone())),
                Inbound::Heartbeat {
                    raw: Bytes::from(h(VENDOR_REGISTER)),
                },
                Inbound::Unsolicited(Bytes::from(by_hand(0x05, &[]))),
                Inbound::Answer(Bytes::from(exception)),
                Inbound::Unsolicited(Bytes::from(by_hand(0x0D, b"set ok"))),
                Inbound::Answer(Bytes::from(answer)),
                Inbound::Logout {
                    raw: Bytes::from(by_hand(0x02, &[])),
                },
            ],
        );
    }

    #[test]
    fn what_the_server_sends() {
        let mut codec = registered();
        let request = Request::read(3, 2000, 40).unwrap().encode(1);
        let mut out = BytesMut::new();
        codec.encode(Outbound::RegisterAck, &mut out).unwrap();
        codec.encode(Outbound::HeartbeatAck, &mut out).unwrap();
        codec.encode(Outbound::DataAck, &mut out).unwrap();
        codec
            .encode(Outbound::Request(Bytes::from(request.clone())), &mut out)
            .unwrap();
        codec.encode(Outbound::LogoutAck, &mut out).unwrap();
        let expected = [
            h(VENDOR_REGISTERED),
            h(VENDOR_REGISTERED),
            h("7B 89 00 18 31 33 39 31 32 33 34 35 36 37 38 01 03 07 D0 00 28 45 59 7B"),
            h("7B 82 00 10 31 33 39 31 32 33 34 35 36 37 38 7B"),
        ]
        .concat();
        assert_eq!(to_hex(&out), to_hex(&expected));
        // The request sits between the 89 frame's id and its end flag.
        assert_eq!(&expected[32 + 15..32 + 23], &request[..]);
        // Nothing to address before a register; no frame over 1040 bytes.
        let err = DdpCodec::new()
            .encode(Outbound::RegisterAck, &mut BytesMut::new())
            .unwrap_err();
        assert!(err.to_string().contains("no DTU id"), "{err}");
        let err = codec
            .encode(
                Outbound::Request(Bytes::from(vec![1; MAX_DATA + 1])),
                &mut BytesMut::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("1025 bytes over 1024"), "{err}");
        let mut out = BytesMut::new();
        codec
            .encode(Outbound::Request(Bytes::from(vec![1; MAX_DATA])), &mut out)
            .unwrap();
        assert_eq!((out.len(), &out[2..4]), (MAX_FRAME, &[0x04, 0x10][..]));
    }

    #[test]
    fn bytes_that_are_no_frame_are_dropped_up_to_the_next_flag() {
        let answer = Response::Registers(vec![5]).encode(1, 3);
        let good = by_hand(0x09, &answer);
        let mut no_end = by_hand(0x09, &answer);
        let last = no_end.len() - 1;
        no_end[last] = 0x00;
        let stream = [
            b"AT\r\n".to_vec(),
            h(VENDOR_REGISTER),
            b"xyz".to_vec(),
            good.clone(),
            // Unknown type 0x77.
            h("7B 77 00 10"),
            good.clone(),
            // Length 9, shorter than any frame.
            h("7B 09 00 09"),
            good.clone(),
            no_end.clone(),
            good.clone(),
        ]
        .concat();
        let (items, err, rest) = feed(&mut DdpCodec::new(), &[&stream]);
        assert_eq!((err, rest), (None, vec![]));
        let answers = items
            .iter()
            .filter(|i| **i == Inbound::Answer(Bytes::from(answer.clone())))
            .count();
        assert_eq!(answers, 4, "{items:?}");
        let expected = vec![
            malformed("bytes outside a frame", b"AT\r\n"),
            reg(),
            malformed("bytes outside a frame", b"xyz"),
            Inbound::Answer(Bytes::from(answer.clone())),
            malformed("unknown frame type 0x77", &h("7B")),
            malformed("bytes outside a frame", &h("77 00 10")),
            Inbound::Answer(Bytes::from(answer.clone())),
            malformed(
                "frame type 0x09 declares 9 bytes, outside 16..=1040",
                &h("7B"),
            ),
            malformed("bytes outside a frame", &h("09 00 09")),
            Inbound::Answer(Bytes::from(answer.clone())),
            // The frame without its end flag: its flag, then the bytes up to the next flag
            // (the next frame's).
            malformed("frame type 0x09 of 23 bytes has no end flag", &no_end[..1]),
            malformed("bytes outside a frame", &no_end[1..]),
            Inbound::Answer(Bytes::from(answer)),
        ];
        // (The junk before the register would close the connection in the driver; the codec
        // itself reads on, whatever the cuts.)
        assert_eq!(merge_malformed(items), merge_malformed(expected.clone()));
        check_all_splits(&stream, &expected);
    }

    #[test]
    fn a_frame_for_another_id_is_dropped_and_the_connection_reads_on() {
        let answer = Response::Registers(vec![1]).encode(1, 4);
        let mut other = by_hand(0x09, &answer);
        other[4..15].copy_from_slice(b"13900000000");
        let mut other_register = h(VENDOR_REGISTER);
        other_register[4..15].copy_from_slice(b"13900000000");
        let stream = [
            h(VENDOR_REGISTER),
            other.clone(),
            other_register.clone(),
            by_hand(0x09, &answer),
        ]
        .concat();
        check_all_splits(
            &stream,
            &[
                reg(),
                malformed(
                    "frame type 0x09 for DTU \"13900000000\" on the connection of \"13912345678\"",
                    &other,
                ),
                malformed(
                    "frame type 0x01 for DTU \"13900000000\" on the connection of \"13912345678\"",
                    &other_register,
                ),
                Inbound::Answer(Bytes::from(answer)),
            ],
        );
    }

    #[test]
    fn ids_and_frames_before_a_register() {
        // Padding after a short id goes; an id that is not printable is no id.
        let mut padded = h(VENDOR_REGISTER);
        padded[4..15].copy_from_slice(b"1001\0\0\0\0\0  ");
        let (items, _, _) = feed(&mut DdpCodec::new(), &[&padded]);
        assert_eq!(
            items,
            vec![Inbound::Register {
                id: "1001".into(),
                raw: Bytes::from(padded)
            }]
        );
        let mut bad = h(VENDOR_REGISTER);
        bad[4..15].copy_from_slice(&[0x01; 11]);
        let (items, _, _) = feed(&mut DdpCodec::new(), &[&bad]);
        assert!(
            matches!(&items[..], [Inbound::Malformed { reason, .. }] if reason.contains("not printable ASCII: 01 01")),
            "{items:?}"
        );
        let mut blank = h(VENDOR_REGISTER);
        blank[4..15].copy_from_slice(&[0; 11]);
        let mut codec = DdpCodec::new();
        let (items, _, _) = feed(&mut codec, &[&blank]);
        assert!(
            matches!(&items[..], [Inbound::Malformed { .. }]),
            "{items:?}"
        );
        assert_eq!(codec.id(), None);
        // User data first: not a registration (the connection refuses it).
        let (items, _, _) = feed(&mut codec, &[&by_hand(0x09, b"12345")]);
        assert!(
            matches!(&items[..], [Inbound::Malformed { reason, .. }] if reason == "frame type 0x09 before a register"),
            "{items:?}"
        );
    }

    #[test]
    fn short_user_data_and_the_udp_layout() {
        // The firmware's TCP example: 3 bytes of user data, too short for an RTU answer.
        let tcp = h("7B 09 00 13 31 33 39 31 32 33 34 35 36 37 38 61 62 63 7B");
        let (items, err, _) = feed(&mut registered(), &[&tcp]);
        assert_eq!(err, None);
        assert_eq!(
            items,
            vec![malformed(
                "user data of 3 bytes, shorter than an RTU answer (5)",
                &tcp
            )]
        );
        // Its UDP example, data after a 16-byte frame: not this framing.
        let udp = h("7B 09 00 10 31 33 39 31 32 33 34 35 36 37 38 7B 61 62 63");
        let (items, err, _) = feed(&mut registered(), &[&udp]);
        assert_eq!(err, None);
        assert_eq!(
            items,
            vec![
                malformed(
                    "user data of 0 bytes, shorter than an RTU answer (5)",
                    &udp[..16]
                ),
                malformed("bytes outside a frame", b"abc"),
            ]
        );
        // The DTU calling a frame of ours invalid is logged.
        let (items, _, _) = feed(&mut registered(), &[&by_hand(0x04, &[])]);
        assert!(
            matches!(&items[..], [Inbound::Malformed { reason, .. }] if reason.contains("invalid")),
            "{items:?}"
        );
    }

    #[test]
    fn the_largest_frame_and_one_byte_more() {
        let data = vec![0x7B; MAX_DATA];
        let big = by_hand(0x09, &data);
        assert_eq!(big.len(), MAX_FRAME);
        let (items, err, rest) = feed(&mut registered(), &[&big]);
        assert_eq!((err, rest), (None, vec![]));
        assert_eq!(items, vec![Inbound::Answer(Bytes::from(data))]);
        // 1041 declared: no frame, and no waiting for it.
        let mut codec = registered();
        let mut buf = BytesMut::from(&h("7B 09 04 11 31")[..]);
        let item = codec.decode(&mut buf).unwrap();
        assert_eq!(
            item,
            Some(malformed(
                "frame type 0x09 declares 1041 bytes, outside 16..=1040",
                &h("7B")
            ))
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(malformed("bytes outside a frame", &h("09 04 11 31")))
        );
        // A partial frame waits, holding its bytes.
        for partial in [
            &h("7B")[..],
            &h("7B 09"),
            &h("7B 09 00"),
            &big[..MAX_FRAME - 1],
        ] {
            let mut buf = BytesMut::from(partial);
            assert_eq!(registered().decode(&mut buf).unwrap(), None);
            assert_eq!(buf.len(), partial.len());
        }
    }

    #[test]
    fn the_entry_and_the_device_side() {
        // In the list, polled, and needing no [registration] in the profile.
        let ddp = crate::protocol::Protocol::by_name("ddp").unwrap();
        assert!(ddp.needs_profile() && !ddp.needs_registration());
        let Role::Polled { server, device } = PROTOCOL.role else {
            panic!("DDP DTUs are polled");
        };
        let mut codec = server(&Default::default()).unwrap();
        let sim = device(&Default::default());
        assert!(sim.acknowledged() && sim.framed());
        assert_eq!(sim.data(b"x"), None);
        assert_eq!(sim.registration_id(1001).unwrap(), "13800001001");
        assert_eq!(sim.registration_id(13912345678).unwrap(), "13912345678");
        assert!(sim.registration_id(100_000_000_000).is_err());
        assert!(sim.registration(100_000_000_000).is_err());
        assert!(sim.heartbeat(100_000_000_000).is_empty());
        // What the device sends, the server reads.
        let answer = Response::Registers(vec![9, 8]).encode(1, 3);
        let mut stream = sim.registration(1001).unwrap();
        assert_eq!(
            to_hex(&stream),
            "7B 01 00 16 31 33 38 30 30 30 30 31 30 30 31 00 00 00 00 00 00 7B"
        );
        stream.extend_from_slice(&sim.heartbeat(1001));
        sim.answer(1001, &answer, &mut stream);
        let (items, err, rest) = feed(&mut *codec, &[&stream]);
        assert_eq!((err, rest), (None, vec![]));
        let register = sim.registration(1001).unwrap();
        assert_eq!(
            items,
            vec![
                Inbound::Register {
                    id: "13800001001".into(),
                    raw: Bytes::from(register.clone())
                },
                Inbound::Heartbeat {
                    raw: Bytes::from(register)
                },
                Inbound::Answer(Bytes::from(answer)),
            ]
        );
        // What the server sends, the device reads.
        let request = Request::read(3, 0, 2).unwrap().encode(1);
        let mut out = BytesMut::new();
        codec.encode(Outbound::RegisterAck, &mut out).unwrap();
        codec
            .encode(Outbound::Request(Bytes::from(request.clone())), &mut out)
            .unwrap();
        codec.encode(Outbound::LogoutAck, &mut out).unwrap();
        assert_eq!(sim.decode(&mut out).unwrap(), Some(FromServer::RegisterAck));
        assert_eq!(
            sim.decode(&mut out).unwrap(),
            Some(FromServer::Request(Bytes::from(request)))
        );
        assert_eq!(sim.decode(&mut out).unwrap(), Some(FromServer::Ack));
        assert_eq!(sim.decode(&mut out).unwrap(), None);
    }

    #[test]
    fn the_device_side_reads_the_vendor_example_and_refuses_junk() {
        let sim = DdpDevice;
        // The firmware's TCP example of 89: user data "123".
        let mut buf =
            BytesMut::from(&h("7B 89 00 13 31 33 39 31 32 33 34 35 36 37 38 31 32 33 7B")[..]);
        assert_eq!(
            sim.decode(&mut buf).unwrap(),
            Some(FromServer::Request(Bytes::from_static(b"123")))
        );
        assert!(buf.is_empty());
        for junk in [&b"OK"[..], &h("7B 09 00 10"), &h("7B 89 01 20")] {
            let mut buf = BytesMut::from(junk);
            assert!(sim.decode(&mut buf).is_err(), "{junk:?}");
        }
        let mut partial = BytesMut::from(&h("7B 89 00 18 31")[..]);
        assert_eq!(sim.decode(&mut partial).unwrap(), None);
    }

    /// One thing a registered DTU sends.
    #[derive(Debug, Clone)]
    enum Sent {
        Answer(Vec<u16>),
        Exception(u8),
        Heartbeat,
        Ack,
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            register_first in any::<bool>(),
        ) {
            let mut all: Vec<&[u8]> = Vec::new();
            let register = h(VENDOR_REGISTER);
            if register_first {
                all.push(&register);
            }
            all.extend(chunks.iter().map(Vec::as_slice));
            let (items, err, rest) = feed(&mut DdpCodec::new(), &all);
            prop_assert_eq!(err, None);
            // Whatever is left waits for a frame that fits in MAX_FRAME bytes.
            prop_assert!(rest.len() < MAX_FRAME);
            prop_assert!(items.len() <= all.iter().map(|c| c.len()).sum::<usize>());
        }

        #[test]
        fn well_formed_frames_survive_any_cut(
            sent in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u16>(), 1..120).prop_map(Sent::Answer),
                    (1u8..12).prop_map(Sent::Exception),
                    Just(Sent::Heartbeat),
                    Just(Sent::Ack),
                ],
                0..10,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            one_by_one in any::<bool>(),
        ) {
            let mut stream = h(VENDOR_REGISTER);
            let mut expected = vec![reg()];
            for s in &sent {
                let (bytes, item) = match s {
                    Sent::Answer(registers) => {
                        let adu = Response::Registers(registers.clone()).encode(7, 4);
                        (by_hand(0x09, &adu), Inbound::Answer(Bytes::from(adu)))
                    }
                    Sent::Exception(code) => {
                        let adu = exception_adu(7, 4, *code);
                        (by_hand(0x09, &adu), Inbound::Answer(Bytes::from(adu)))
                    }
                    Sent::Heartbeat => (
                        h(VENDOR_REGISTER),
                        Inbound::Heartbeat { raw: Bytes::from(h(VENDOR_REGISTER)) },
                    ),
                    Sent::Ack => {
                        let f = by_hand(0x05, &[]);
                        (f.clone(), Inbound::Unsolicited(Bytes::from(f)))
                    }
                };
                stream.extend_from_slice(&bytes);
                expected.push(item);
            }
            let chunks: Vec<&[u8]> = if one_by_one {
                stream.chunks(1).collect()
            } else {
                let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                at.extend([0, stream.len()]);
                at.sort_unstable();
                at.windows(2).filter_map(|w| stream.get(w[0]..w[1])).collect()
            };
            let (items, err, rest) = feed(&mut DdpCodec::new(), &chunks);
            prop_assert_eq!(err, None);
            prop_assert!(rest.is_empty());
            prop_assert_eq!(items, merge_data(expected));
        }
    }
}
