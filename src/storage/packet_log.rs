//! What is kept of the bytes that cross device sockets. In memory, always: the last
//! `recent` packets of each device (200 as shipped), which the API serves merged with the
//! stored ones, so the console's packet view works whatever is stored. In the database, as
//! `[storage] packets` says: `all` of them, only the `errors` (frames the codec refused,
//! answers no request explains, and every packet of an exchange that failed: the request,
//! its retries and the exception answer if any), or `none`.
//!
//! Each device's packets sit in one byte ring (time, direction and kind, length, bytes: 11
//! bytes of overhead a packet), not one allocation per packet. Shared by every connection
//! and the web layer; the map is split in shards so connections on different threads rarely
//! wait for one another.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::repo::packets::PacketRecord;
use super::rows::{Direction, PacketKind, PacketRow};
use crate::protocol::hex::to_hex;

/// `[storage] packets`: which raw packets go to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketMode {
    /// Every packet (the default, as before the setting existed).
    #[default]
    All,
    /// Only refused frames, unexplained answers and failed exchanges.
    Errors,
    /// None; the in-memory ring still serves the API.
    None,
}

impl FromStr for PacketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<PacketMode, String> {
        match s {
            "all" => Ok(PacketMode::All),
            "errors" => Ok(PacketMode::Errors),
            "none" => Ok(PacketMode::None),
            other => Err(format!(
                "{other:?} is not a packet mode (all, errors or none)"
            )),
        }
    }
}

/// Packets kept in memory per device, as shipped.
pub const RECENT_DEFAULT: usize = 200;
/// A packet longer than this is not kept in memory (it is stored as the mode says): one
/// flood of junk must not take a device's whole ring.
const RING_MAX_PACKET: usize = 4096;
/// Bytes of a ring entry before the packet: time (8), direction and kind (1), length (2).
const HEADER: usize = 11;
const SHARDS: usize = 16;

#[derive(Clone)]
pub struct PacketLog {
    mode: PacketMode,
    /// Packets kept per device; 0 keeps none.
    recent: usize,
    shards: Arc<[Mutex<HashMap<String, Ring>>]>,
}

impl std::fmt::Debug for PacketLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLog")
            .field("mode", &self.mode)
            .field("recent", &self.recent)
            .finish()
    }
}

/// One device's last packets, oldest first, each as [`HEADER`] + bytes.
#[derive(Default)]
struct Ring {
    buf: VecDeque<u8>,
    count: usize,
    /// Sequence number of the oldest entry; entries are numbered in arrival order.
    first_seq: u64,
    /// Sequence number of the first packet of the exchange in progress, if one is.
    exchange: Option<u64>,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }

    fn push(&mut self, direction: Direction, kind: PacketKind, bytes: &[u8], at: i64, keep: usize) {
        while self.count >= keep.max(1) {
            self.pop();
        }
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        self.buf.extend(at.to_le_bytes());
        self.buf.push_back(tag(direction, kind));
        self.buf.extend(len.to_le_bytes());
        self.buf.extend(bytes);
        self.count += 1;
    }

    fn pop(&mut self) {
        let Some(len) = self.entry_len(0) else {
            self.buf.clear();
            self.count = 0;
            return;
        };
        self.buf.drain(..HEADER + len);
        self.count -= 1;
        self.first_seq += 1;
    }

    fn entry_len(&self, offset: usize) -> Option<usize> {
        let lo = *self.buf.get(offset + 9)?;
        let hi = *self.buf.get(offset + 10)?;
        Some(usize::from(u16::from_le_bytes([lo, hi])))
    }

    /// The entries from sequence number `from` on, oldest first.
    fn entries(&self, from: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut offset = 0;
        let mut seq = self.first_seq;
        while let Some(len) = self.entry_len(offset) {
            if seq >= from {
                let mut at = [0u8; 8];
                for (i, b) in at.iter_mut().enumerate() {
                    *b = self.buf.get(offset + i).copied().unwrap_or_default();
                }
                let tag = self.buf.get(offset + 8).copied().unwrap_or_default();
                let bytes = self
                    .buf
                    .range(offset + HEADER..offset + HEADER + len)
                    .copied()
                    .collect();
                out.push(Entry {
                    at: i64::from_le_bytes(at),
                    tag,
                    bytes,
                });
            }
            offset += HEADER + len;
            seq += 1;
        }
        out
    }
}

struct Entry {
    /// Microseconds since the epoch.
    at: i64,
    tag: u8,
    bytes: Vec<u8>,
}

const KINDS: [PacketKind; 8] = [
    PacketKind::Register,
    PacketKind::Heartbeat,
    PacketKind::Data,
    PacketKind::Modbus,
    PacketKind::Unsolicited,
    PacketKind::Relay,
    PacketKind::Logout,
    PacketKind::Malformed,
];

fn tag(direction: Direction, kind: PacketKind) -> u8 {
    let kind = KINDS.iter().position(|k| *k == kind).unwrap_or_default() as u8;
    kind << 1 | u8::from(direction == Direction::Out)
}

fn untag(tag: u8) -> (Direction, PacketKind) {
    let direction = if tag & 1 == 1 {
        Direction::Out
    } else {
        Direction::In
    };
    let kind = KINDS
        .get(usize::from(tag >> 1))
        .copied()
        .unwrap_or(PacketKind::Data);
    (direction, kind)
}

impl PacketLog {
    pub fn new(mode: PacketMode, recent: usize) -> PacketLog {
        let shards: Vec<Mutex<HashMap<String, Ring>>> =
            (0..SHARDS).map(|_| Mutex::default()).collect();
        PacketLog {
            mode,
            recent,
            shards: shards.into(),
        }
    }

    fn shard(&self, device: &str) -> MutexGuard<'_, HashMap<String, Ring>> {
        let mut h = DefaultHasher::new();
        device.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        // A thread that panicked while holding the lock left a ring at worst half-written;
        // the entries are self-describing, and a bad one ends the walk, so go on with it.
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a packet in the device's ring; answers whether the database should have it too.
    pub fn record(
        &self,
        device: &str,
        direction: Direction,
        kind: PacketKind,
        bytes: &[u8],
        at: DateTime<Utc>,
    ) -> bool {
        if self.recent > 0 && bytes.len() <= RING_MAX_PACKET {
            let mut shard = self.shard(device);
            let ring = match shard.get_mut(device) {
                Some(ring) => ring,
                None => shard.entry(device.to_string()).or_default(),
            };
            ring.push(direction, kind, bytes, at.timestamp_micros(), self.recent);
        }
        match self.mode {
            PacketMode::All => true,
            PacketMode::None => false,
            PacketMode::Errors => kind.is_error(),
        }
    }

    /// A request is about to go out: the packets from here on belong to its exchange.
    pub fn exchange_started(&self, device: &str) {
        // Only `errors` looks back at an exchange: the other modes skip the lock per request.
        if self.mode != PacketMode::Errors {
            return;
        }
        if let Some(ring) = self.shard(device).get_mut(device) {
            ring.exchange = Some(ring.next_seq());
        }
    }

    /// The exchange in progress ended. If it `failed` (no answer, an exception), in `errors`
    /// mode: its packets (as far as the ring still holds them), for the database.
    pub fn exchange_ended(&self, device: &str, failed: bool) -> Vec<PacketRow> {
        if self.mode != PacketMode::Errors {
            return Vec::new();
        }
        let mut shard = self.shard(device);
        let Some(ring) = shard.get_mut(device) else {
            return Vec::new();
        };
        let Some(from) = ring.exchange.take() else {
            return Vec::new();
        };
        if !failed {
            return Vec::new();
        }
        ring.entries(from)
            .into_iter()
            // Already stored when they arrived.
            .filter(|e| !untag(e.tag).1.is_error())
            .map(|e| {
                let (direction, kind) = untag(e.tag);
                PacketRow {
                    device_id: device.to_string(),
                    direction,
                    kind,
                    bytes: e.bytes,
                    at: micros(e.at),
                }
            })
            .collect()
    }

    /// The device's last `limit` packets in memory, newest first.
    pub fn recent(&self, device: &str, limit: usize) -> Vec<PacketRecord> {
        let shard = self.shard(device);
        let Some(ring) = shard.get(device) else {
            return Vec::new();
        };
        let mut entries = ring.entries(0);
        drop(shard);
        entries.reverse();
        entries.truncate(limit);
        entries
            .into_iter()
            .map(|e| {
                let (direction, kind) = untag(e.tag);
                PacketRecord {
                    direction: direction.as_str().to_string(),
                    kind: kind.as_str().to_string(),
                    hex: to_hex(&e.bytes),
                    at: micros(e.at),
                }
            })
            .collect()
    }
}

fn micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn row(
        device: &str,
        direction: Direction,
        kind: PacketKind,
        bytes: &[u8],
        ms: i64,
    ) -> PacketRow {
        PacketRow {
            device_id: device.into(),
            direction,
            kind,
            bytes: bytes.to_vec(),
            at: Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap(),
        }
    }

    impl PacketLog {
        fn record_row(&self, r: &PacketRow) -> bool {
            self.record(&r.device_id, r.direction, r.kind, &r.bytes, r.at)
        }
    }

    #[test]
    fn modes_parse_and_refuse_anything_else() {
        assert_eq!("all".parse(), Ok(PacketMode::All));
        assert_eq!("errors".parse(), Ok(PacketMode::Errors));
        assert_eq!("none".parse(), Ok(PacketMode::None));
        let err = "some".parse::<PacketMode>().unwrap_err();
        assert!(err.contains("all, errors or none"), "{err}");
    }

    #[test]
    fn the_ring_keeps_the_last_packets_newest_first() {
        let log = PacketLog::new(PacketMode::All, 3);
        for i in 0..5u8 {
            assert!(log.record_row(&row(
                "7",
                Direction::In,
                PacketKind::Modbus,
                &[i, 0xAB],
                i64::from(i)
            )));
        }
        log.record_row(&row("8", Direction::Out, PacketKind::Register, &[9], 0));
        let recent = log.recent("7", 10);
        let hex: Vec<&str> = recent.iter().map(|p| p.hex.as_str()).collect();
        assert_eq!(hex, ["04 AB", "03 AB", "02 AB"]);
        assert_eq!(recent[0].direction, "in");
        assert_eq!(recent[0].kind, "modbus");
        assert_eq!(recent[0].at.timestamp_millis(), 1_700_000_000_004);
        assert_eq!(log.recent("7", 1).len(), 1);
        let other = log.recent("8", 10);
        assert_eq!(
            (other[0].direction.as_str(), other[0].kind.as_str()),
            ("out", "register")
        );
        assert!(log.recent("9", 10).is_empty());
    }

    #[test]
    fn every_kind_and_direction_comes_back_as_it_went_in() {
        let log = PacketLog::new(PacketMode::All, 100);
        for (i, kind) in KINDS.iter().enumerate() {
            for direction in [Direction::In, Direction::Out] {
                log.record_row(&row("k", direction, *kind, &[i as u8], 0));
            }
        }
        let mut back: Vec<(String, String)> = log
            .recent("k", 100)
            .into_iter()
            .map(|p| (p.direction, p.kind))
            .collect();
        back.reverse();
        let expected: Vec<(String, String)> = KINDS
            .iter()
            .flat_map(|k| {
                [Direction::In, Direction::Out]
                    .map(|d| (d.as_str().to_string(), k.as_str().to_string()))
            })
            .collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn what_the_database_gets_follows_the_mode() {
        let good = row("7", Direction::In, PacketKind::Modbus, &[1], 0);
        let bad = row("7", Direction::In, PacketKind::Malformed, &[0xFF], 0);
        let stray = row("7", Direction::In, PacketKind::Unsolicited, &[2], 0);
        let all = PacketLog::new(PacketMode::All, 10);
        assert!(all.record_row(&good) && all.record_row(&bad));
        let errors = PacketLog::new(PacketMode::Errors, 10);
        assert!(!errors.record_row(&good));
        assert!(errors.record_row(&bad) && errors.record_row(&stray));
        let none = PacketLog::new(PacketMode::None, 10);
        assert!(!none.record_row(&good) && !none.record_row(&bad));
        assert_eq!(
            none.recent("7", 10).len(),
            2,
            "the ring keeps them all the same"
        );
    }

    #[test]
    fn a_failed_exchange_gives_its_packets_in_errors_mode_only() {
        let errors = PacketLog::new(PacketMode::Errors, 10);
        let all = PacketLog::new(PacketMode::All, 10);
        for log in [&errors, &all] {
            log.record_row(&row("7", Direction::In, PacketKind::Register, &[0, 7], 0));
            log.exchange_started("7");
            log.record_row(&row("7", Direction::Out, PacketKind::Modbus, &[1, 3], 1));
            log.record_row(&row("7", Direction::In, PacketKind::Malformed, &[0xEE], 2));
            log.record_row(&row("7", Direction::Out, PacketKind::Modbus, &[1, 3], 3));
        }
        let failed = errors.exchange_ended("7", true);
        let got: Vec<(Direction, Vec<u8>, i64)> = failed
            .iter()
            .map(|p| {
                (
                    p.direction,
                    p.bytes.clone(),
                    p.at.timestamp_millis() - 1_700_000_000_000,
                )
            })
            .collect();
        // The request and its retry, at their own times; the malformed frame was stored when
        // it came, the registration is no part of the exchange.
        assert_eq!(
            got,
            [
                (Direction::Out, vec![1, 3], 1),
                (Direction::Out, vec![1, 3], 3)
            ]
        );
        assert!(
            errors.exchange_ended("7", true).is_empty(),
            "an exchange fails once"
        );
        assert!(
            all.exchange_ended("7", true).is_empty(),
            "all: stored already"
        );
        assert!(errors.exchange_ended("unknown", true).is_empty());
    }

    #[test]
    fn an_exchange_that_succeeded_leaves_nothing_for_a_later_failure() {
        let log = PacketLog::new(PacketMode::Errors, 10);
        log.record_row(&row("7", Direction::In, PacketKind::Register, &[7], 0));
        log.exchange_started("7");
        log.record_row(&row("7", Direction::Out, PacketKind::Modbus, &[1], 1));
        log.record_row(&row("7", Direction::In, PacketKind::Modbus, &[1, 3], 2));
        assert!(log.exchange_ended("7", false).is_empty());
        // A command that failed before anything was sent: no exchange, nothing to store.
        assert!(log.exchange_ended("7", true).is_empty());
    }

    #[test]
    fn an_exchange_longer_than_the_ring_gives_what_is_left() {
        let log = PacketLog::new(PacketMode::Errors, 2);
        log.record_row(&row("7", Direction::In, PacketKind::Heartbeat, &[0], 0));
        log.exchange_started("7");
        for i in 1..=4 {
            log.record_row(&row(
                "7",
                Direction::Out,
                PacketKind::Modbus,
                &[i],
                i64::from(i),
            ));
        }
        let bytes: Vec<Vec<u8>> = log
            .exchange_ended("7", true)
            .into_iter()
            .map(|p| p.bytes)
            .collect();
        assert_eq!(bytes, [vec![3], vec![4]]);
    }

    #[test]
    fn oversized_packets_skip_the_ring_and_zero_keeps_none() {
        let log = PacketLog::new(PacketMode::All, 10);
        assert!(log.record_row(&row(
            "7",
            Direction::In,
            PacketKind::Data,
            &vec![0; 5000],
            0
        )));
        assert!(log.recent("7", 10).is_empty());
        let off = PacketLog::new(PacketMode::All, 0);
        off.record_row(&row("7", Direction::In, PacketKind::Data, &[1], 0));
        assert!(off.recent("7", 10).is_empty());
    }
}
