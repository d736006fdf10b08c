//! The link between a DTU and the server, whatever protocol frames it: what a DTU sends
//! ([`Inbound`]), what the server sends it ([`Outbound`]), the two sides of a link codec
//! ([`LinkCodec`] in the server, [`DeviceLink`] in the simulator) and the entry each protocol
//! file exports for the list of protocols ([`LinkProtocol`], listed in
//! [`crate::protocol::PROTOCOLS`]).
//!
//! A server-side codec is driven by its connection: socket bytes are appended to a `BytesMut`
//! and `decode` is called until `Ok(None)`. `Err` is fatal (the connection is closed); one bad
//! frame is an [`Inbound::Malformed`] item and the connection lives. Every decode path is
//! bounded in what it buffers and how far it looks, and never panics on any bytes.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};

use crate::protocol::hex::to_hex;
use crate::protocol::serial::Framing;

/// What a device sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The device registered with this id; `raw` is the registration as it arrived, for the
    /// packet history.
    Register { id: String, raw: Bytes },
    /// A heartbeat, as it arrived.
    Heartbeat { raw: Bytes },
    /// A data packet of the link protocol (framed type 03), which the server acknowledges.
    Data(Bytes),
    /// Bytes that are neither a heartbeat nor the answer awaited, on a link without framing of
    /// its own (transparent): stored, never answered.
    Unsolicited(Bytes),
    /// One answer from the serial side: a Modbus RTU response ADU (CRC included), a Modbus TCP
    /// ADU or a DL/T 645 frame. A link that frames it (framed type 04) has not looked inside;
    /// the connection parses it against the request in flight.
    Answer(Bytes),
    /// Dropped bytes; the connection logs `reason` and the bytes in hex with the device id.
    Malformed { reason: String, bytes: Bytes },
    /// The device signs off (DDP `02`), as it arrived: the connection answers
    /// [`Outbound::LogoutAck`] and closes, and the device goes offline as `closed`.
    Logout { raw: Bytes },
}

/// What the server sends a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    RegisterAck,
    HeartbeatAck,
    DataAck,
    /// The answer to [`Inbound::Logout`].
    LogoutAck,
    /// A request for the serial side: a Modbus RTU ADU with CRC, a Modbus TCP ADU or a
    /// DL/T 645 frame, as the meter behind the DTU speaks.
    Request(Bytes),
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
    pub fn protocol(reason: impl Into<String>, bytes: &[u8]) -> CodecError {
        const SHOWN: usize = 64;
        let mut hex = to_hex(bytes.get(..SHOWN).unwrap_or(bytes));
        if bytes.len() > SHOWN {
            hex.push_str(&format!(" ... ({} bytes)", bytes.len()));
        }
        CodecError::Protocol {
            reason: reason.into(),
            hex,
        }
    }
}

/// The answer the connection waits for, as the request in flight makes it look (RTU, Modbus
/// TCP, DL/T 645). A link without framing of its own needs it to cut the answer out of the
/// byte stream.
pub use crate::protocol::serial::Expect;

/// The server side of a link protocol for one connection.
pub trait LinkCodec: Send + fmt::Debug {
    /// The next item at the start of `src`, consuming its bytes; `Ok(None)` until one is
    /// complete. Bytes that make no item of their own (the registration prefixed to a
    /// packet) may be consumed before `Ok(None)`.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError>;

    /// Appends `item` as it goes on the wire (nothing, where the protocol has no such item:
    /// a codec matches the items it writes and lets every other pass, so an item one protocol
    /// adds costs the others nothing).
    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError>;

    /// The request in flight (`None` when there is none). Only a link without framing of its
    /// own needs it to tell answers from other bytes. Bytes already buffered may decode
    /// differently afterwards, so decode again after changing it.
    fn set_expect(&mut self, _expect: Option<Expect>) {}

    /// Answers that may arrive unasked: a DTU that polls its meter itself sends the replies
    /// up. A link without framing of its own looks for them as for the answer in flight
    /// (normal answers only: an exception to a question nobody here asked says nothing).
    fn set_passive(&mut self, _answers: &[Expect]) {}
}

/// How a registration id is written, where the profile describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFormat {
    /// The packet's bytes are the id text.
    Ascii,
    /// The id is the packet's bytes as uppercase hex.
    Hex,
}

impl IdFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            IdFormat::Ascii => "ascii",
            IdFormat::Hex => "hex",
        }
    }
}

impl FromStr for IdFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ascii" => Ok(IdFormat::Ascii),
            "hex" => Ok(IdFormat::Hex),
            _ => Err(format!("unknown format {s:?} (expected ascii or hex)")),
        }
    }
}

impl fmt::Display for IdFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the registration id is recognised.
#[derive(Debug, Clone)]
pub enum IdMatcher {
    /// The id (as text, per [`IdFormat`]) must match this regex.
    Pattern(regex::Regex),
    /// The registration packet is exactly this many bytes.
    Length(usize),
}

/// When a DTU sends its registration, where its protocol leaves that to the profile
/// (`[profiles.X.registration] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RegistrationMode {
    /// Once, as the first packet after connecting.
    #[default]
    Connect,
    /// At the head of every packet it sends; the first packet registers it.
    Prefix,
    /// Once after connecting, and at the head of every packet after that.
    Both,
}

impl RegistrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Connect => "connect",
            RegistrationMode::Prefix => "prefix",
            RegistrationMode::Both => "both",
        }
    }

    /// Whether every packet after the registration starts with it.
    pub fn prefixes_packets(self) -> bool {
        self != RegistrationMode::Connect
    }
}

impl FromStr for RegistrationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connect" => Ok(RegistrationMode::Connect),
            "prefix" => Ok(RegistrationMode::Prefix),
            "both" => Ok(RegistrationMode::Both),
            _ => Err(format!(
                "unknown mode {s:?} (expected connect, prefix or both)"
            )),
        }
    }
}

impl fmt::Display for RegistrationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a DTU's registration looks like and when it comes, where its protocol leaves that to
/// the profile (`[profiles.X.registration]`).
#[derive(Debug, Clone)]
pub struct Registration {
    pub format: IdFormat,
    pub matcher: IdMatcher,
    /// Bytes to answer with; empty for none.
    pub reply: Vec<u8>,
    pub mode: RegistrationMode,
}

/// The exact bytes of a heartbeat and what to answer (`[profiles.X.heartbeat]`).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub bytes: Vec<u8>,
    /// Empty for no answer.
    pub reply: Vec<u8>,
}

/// What a link codec may take from the device's profile.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    pub registration: Option<Registration>,
    pub heartbeat: Option<Heartbeat>,
}

/// What the simulator's side of a link may be told.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// The heartbeat bytes, where the protocol leaves them to the DTU's configuration.
    pub heartbeat: Vec<u8>,
    /// When the registration is sent, where the protocol leaves that to the DTU's
    /// configuration.
    pub registration_mode: RegistrationMode,
    /// How the meter behind it frames requests, for a link that has to find them in the
    /// bytes that arrive (transparent).
    pub framing: Framing,
}

/// What a simulated device gets from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromServer {
    /// The registration was accepted.
    RegisterAck,
    /// A heartbeat or data packet was acknowledged.
    Ack,
    /// A request for the serial side (an RTU request ADU).
    Request(Bytes),
}

/// The device side of a link protocol, as the simulator speaks it. One value serves a whole
/// fleet; what a device sends that names it (its registration, and where the protocol puts the
/// id in them, its heartbeats and answers) takes the device's number.
pub trait DeviceLink: Send + Sync + fmt::Debug {
    /// The id the server knows device number `number` by, or why the number does not fit.
    fn registration_id(&self, number: u64) -> Result<String, String>;

    /// The registration packet of device `number`.
    fn registration(&self, number: u64) -> Result<Vec<u8>, String>;

    /// The heartbeat of device `number`; empty when the number does not fit the protocol
    /// (which [`DeviceLink::registration`] reports first).
    fn heartbeat(&self, number: u64) -> Vec<u8>;

    /// Whether the server acknowledges the registration (and heartbeats wait for that).
    fn acknowledged(&self) -> bool;

    /// A data packet carrying `payload`, where the protocol has them.
    fn data(&self, payload: &[u8]) -> Option<Vec<u8>>;

    /// The next item the server sent at the start of `buf`, consuming its bytes; `Ok(None)`
    /// until one is complete. `Err` means the bytes cannot be read (the caller drops them).
    fn decode(&self, buf: &mut BytesMut) -> Result<Option<FromServer>, CodecError>;

    /// Appends the answer `adu` of device `number` as it goes on the wire.
    fn answer(&self, number: u64, adu: &[u8], out: &mut Vec<u8>);

    /// Whether requests arrive framed; without framing, a request cut by a silence is lost
    /// (the TCP stand-in for the RTU inter-frame gap).
    fn framed(&self) -> bool;
}

/// What a connection does once its device has registered.
#[derive(Clone, Copy)]
pub enum Role {
    /// Request/response: the server polls the serial device behind the DTU through a profile
    /// and sends it operator commands.
    Polled {
        /// A codec for one connection, or why the options do not make one.
        server: fn(&LinkOptions) -> Result<Box<dyn LinkCodec>, String>,
        /// The simulator's side.
        device: fn(&DeviceOptions) -> Box<dyn DeviceLink>,
    },
    /// `$TTMS` terminals, whose frames the server relays from one to another.
    Relay,
}

/// One link protocol a listener can speak (`protocol = "<name>"`).
pub struct LinkProtocol {
    pub name: &'static str,
    pub role: Role,
    /// Whether the profile must say how devices register (`[profiles.X.registration]`).
    pub needs_registration: bool,
}

impl fmt::Debug for LinkProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}
