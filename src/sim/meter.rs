//! The Modbus slave behind a simulated DTU: its memory ([`Shared`]), what it answers
//! ([`Shared::execute`]), the values it reads when nothing was written ([`signal`]) and the
//! [`SimHandle`] that sets them from outside.
//!
//! Every address exists. Holding and input registers are one table (FC3 and FC4 read the
//! same values), coils and discrete inputs are one table (FC1 and FC2).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;
use tokio::sync::watch;

use crate::protocol::dlt645::Di;
use crate::protocol::hex::to_hex;
use crate::protocol::modbus::{self, tcp, ModbusError, Request, Response};
use crate::protocol::points::{self, PointType, WordOrder};
use crate::protocol::serial::Framing;

use super::stats::{inc, SimStats, StatsSnapshot};

#[path = "meter_dlt645.rs"]
pub mod dlt645;

/// Default value of a register never written: a slow sine (period 5–9.5 min depending on
/// the address, phase from device and address) around `200 + device % 100 + address % 10`,
/// amplitude 50 — so an `i16` point with scale 0.1 reads like 15–35 °C and moves on a chart.
/// Deterministic: same inputs, same value.
pub fn signal(device: u64, address: u16, unix_secs: f64) -> u16 {
    let period = 300.0 + f64::from(address % 10) * 30.0;
    let phase = (device % 360) as f64 * 0.017_453_3 + f64::from(address) * 0.1;
    let wave = (std::f64::consts::TAU * unix_secs / period + phase).sin();
    let base = 200.0 + (device % 100) as f64 + f64::from(address % 10);
    (base + 50.0 * wave).round().clamp(0.0, 65535.0) as u16
}

/// Default value of a coil / discrete input never written: on while the address's
/// [`signal`] is above its mid-line, so bits flip every few minutes.
pub fn signal_bit(device: u64, address: u16, unix_secs: f64) -> bool {
    let base = 200 + (device % 100) as u16 + address % 10;
    signal(device, address, unix_secs) > base
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Written values; everything else comes from [`signal`]. Empty maps allocate nothing.
#[derive(Debug, Default)]
struct Memory {
    registers: HashMap<u16, u16>,
    coils: HashMap<u16, bool>,
}

/// The slaves on the simulated bus: each one's written values, and which are silent.
#[derive(Debug, Default)]
struct Bus {
    memories: HashMap<u8, Memory>,
    /// Slaves that do not answer (a unit switched off, a cut wire).
    silent: HashSet<u8>,
    /// DL/T 645 readings fixed per (slave, data identifier).
    readings: HashMap<(u8, u32), f64>,
}

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Normal response ADU.
    Reply(Vec<u8>),
    /// Exception response ADU.
    Exception(Vec<u8>),
    /// Another slave's request, or a broadcast: nothing to send.
    Ignored,
    /// Bad CRC, or a length that does not fit the function: nothing to send.
    Malformed,
}

/// Applies a write request to one slave's memory; answers its echo (None for a read, which
/// writes nothing).
fn write_to(mem: &mut Memory, request: &Request) -> Option<Response> {
    Some(match request {
        Request::WriteSingleCoil { address, value } => {
            mem.coils.insert(*address, *value);
            Response::WriteSingleCoil {
                address: *address,
                value: *value,
            }
        }
        Request::WriteSingleRegister { address, value } => {
            mem.registers.insert(*address, *value);
            Response::WriteSingleRegister {
                address: *address,
                value: *value,
            }
        }
        Request::WriteMultipleCoils { address, values } => {
            for (i, v) in values.iter().enumerate() {
                mem.coils.insert(address.wrapping_add(i as u16), *v);
            }
            Response::WriteMultiple {
                address: *address,
                count: values.len() as u16,
            }
        }
        Request::WriteMultipleRegisters { address, values } => {
            for (i, v) in values.iter().enumerate() {
                mem.registers.insert(address.wrapping_add(i as u16), *v);
            }
            Response::WriteMultiple {
                address: *address,
                count: values.len() as u16,
            }
        }
        Request::ReadCoils { .. }
        | Request::ReadDiscreteInputs { .. }
        | Request::ReadHoldingRegisters { .. }
        | Request::ReadInputRegisters { .. } => return None,
    })
}

/// State shared between a running device and its handles.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) id: u64,
    /// The slaves that answer; the first is the one the handle's setters address.
    slaves: Vec<u8>,
    /// What they speak.
    framing: Framing,
    bus: Mutex<Bus>,
    pub(super) stats: SimStats,
    pub(super) stop: watch::Sender<bool>,
}

impl Shared {
    /// A meter answering `slaves` (at least one; an empty list means slave 1).
    pub(super) fn new(id: u64, slaves: Vec<u8>, stop: watch::Sender<bool>) -> Shared {
        let slaves = if slaves.is_empty() { vec![1] } else { slaves };
        Shared {
            id,
            slaves,
            framing: Framing::Rtu,
            bus: Mutex::new(Bus::default()),
            stats: SimStats::default(),
            stop,
        }
    }

    /// The same meters speaking `framing` (Modbus RTU unless told).
    pub(super) fn with_framing(self, framing: Framing) -> Shared {
        Shared { framing, ..self }
    }

    /// One request of the meters' framing: RTU as it is, Modbus TCP through the RTU slave
    /// (the answer in the request's MBAP header), DL/T 645 by the meters of [`dlt645`].
    fn execute_framed(&self, adu: &[u8], now: f64) -> Outcome {
        match self.framing {
            Framing::Rtu => self.execute(adu, now),
            Framing::ModbusTcp => {
                let Ok((transaction, rtu_adu)) = tcp::to_rtu(adu) else {
                    return Outcome::Malformed;
                };
                let in_header = |answer: Vec<u8>| tcp::from_rtu(transaction, &answer);
                match self.execute(&rtu_adu, now) {
                    Outcome::Reply(r) => in_header(r).map_or(Outcome::Malformed, Outcome::Reply),
                    Outcome::Exception(r) => {
                        in_header(r).map_or(Outcome::Malformed, Outcome::Exception)
                    }
                    other => other,
                }
            }
            Framing::Dlt645 => self.execute_dlt645(adu, now),
        }
    }

    fn bus(&self) -> MutexGuard<'_, Bus> {
        // A poisoned lock only means a panic elsewhere while holding it; the maps are
        // still consistent (every update is a single insert).
        self.bus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slave the handle's setters address.
    pub(super) fn main_slave(&self) -> u8 {
        self.slaves.first().copied().unwrap_or(1)
    }

    /// What drives a slave's unwritten values: the device number, and for a bus of several
    /// slaves the slave too, so that each unit reads differently.
    fn seed(&self, slave: u8) -> u64 {
        if self.slaves.len() == 1 {
            self.id
        } else {
            self.id.wrapping_mul(1000).wrapping_add(u64::from(slave))
        }
    }

    fn register_at(&self, bus: &Bus, slave: u8, address: u16, now: f64) -> u16 {
        bus.memories
            .get(&slave)
            .and_then(|m| m.registers.get(&address))
            .copied()
            .unwrap_or_else(|| signal(self.seed(slave), address, now))
    }

    fn coil_at(&self, bus: &Bus, slave: u8, address: u16, now: f64) -> bool {
        bus.memories
            .get(&slave)
            .and_then(|m| m.coils.get(&address))
            .copied()
            .unwrap_or_else(|| signal_bit(self.seed(slave), address, now))
    }

    /// Execute one RTU request ADU (CRC included) the way a meter on the bus would.
    fn execute(&self, adu: &[u8], now: f64) -> Outcome {
        if adu.len() < 4 || !modbus::rtu::check_crc(adu) {
            return Outcome::Malformed;
        }
        let (slave, function) = (adu[0], adu[1]);
        let broadcast = slave == 0;
        if !broadcast && (!self.slaves.contains(&slave) || self.bus().silent.contains(&slave)) {
            return Outcome::Ignored;
        }
        let exception = |code: u8| {
            if broadcast {
                Outcome::Ignored
            } else {
                Outcome::Exception(modbus::rtu::exception_adu(slave, function, code))
            }
        };
        let request = match Request::decode(adu) {
            Ok((_, r)) => r,
            // Well framed but refused (unknown function, bad quantity, range past 65535).
            Err(ModbusError::Exception { code, .. }) => return exception(code),
            // Length not matching the function or byte count: a real slave stays silent.
            Err(e) => {
                debug!("device {}: malformed request ({e})", self.id);
                return Outcome::Malformed;
            }
        };
        let function = request.function();
        let is_read = matches!(
            request,
            Request::ReadCoils { .. }
                | Request::ReadDiscreteInputs { .. }
                | Request::ReadHoldingRegisters { .. }
                | Request::ReadInputRegisters { .. }
        );
        if broadcast && is_read {
            return Outcome::Ignored;
        }
        // A broadcast write reaches every slave on the bus.
        let targets: Vec<u8> = if broadcast {
            self.slaves.clone()
        } else {
            vec![slave]
        };
        let response = {
            let mut bus = self.bus();
            match request {
                Request::ReadCoils { start, count }
                | Request::ReadDiscreteInputs { start, count } => Response::Bits(
                    (0..count)
                        .map(|i| self.coil_at(&bus, slave, start.wrapping_add(i), now))
                        .collect(),
                ),
                Request::ReadHoldingRegisters { start, count }
                | Request::ReadInputRegisters { start, count } => Response::Registers(
                    (0..count)
                        .map(|i| self.register_at(&bus, slave, start.wrapping_add(i), now))
                        .collect(),
                ),
                write => {
                    let mut response = None;
                    for s in &targets {
                        response = write_to(bus.memories.entry(*s).or_default(), &write);
                    }
                    match response {
                        Some(r) => r,
                        None => return Outcome::Ignored,
                    }
                }
            }
        };
        if broadcast {
            return Outcome::Ignored;
        }
        Outcome::Reply(response.encode(slave, function))
    }

    /// Execute and count; returns the bytes to send (empty for no answer).
    pub(super) fn answer(&self, adu: &[u8]) -> Vec<u8> {
        match self.execute_framed(adu, unix_now()) {
            Outcome::Reply(r) => {
                inc(&self.stats.polls_answered);
                r
            }
            Outcome::Exception(r) => {
                inc(&self.stats.exceptions);
                r
            }
            Outcome::Ignored => {
                inc(&self.stats.ignored);
                debug!("device {}: not answering {}", self.id, to_hex(adu));
                Vec::new()
            }
            Outcome::Malformed => {
                inc(&self.stats.malformed);
                debug!(
                    "device {}: bad CRC or length, dropped {}",
                    self.id,
                    to_hex(adu)
                );
                Vec::new()
            }
        }
    }
}

/// Controls a [`SimDevice`](super::SimDevice), running or not: fixed register values,
/// counters, stop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimHandle {
    pub(super) shared: Arc<Shared>,
}

impl SimHandle {
    /// The device number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Fix a register (holding and input) to `value`, as if written by FC6.
    pub fn set_register(&self, address: u16, value: u16) {
        self.set_registers(address, &[value]);
    }

    /// Fix consecutive registers from `address` on (wrapping past 65535).
    pub fn set_registers(&self, address: u16, values: &[u16]) {
        self.set_registers_of(self.shared.main_slave(), address, values);
    }

    /// Fix consecutive registers of one slave of the bus (a unit).
    pub fn set_registers_of(&self, slave: u8, address: u16, values: &[u16]) {
        let mut bus = self.shared.bus();
        let mem = bus.memories.entry(slave).or_default();
        for (i, v) in values.iter().enumerate() {
            mem.registers.insert(address.wrapping_add(i as u16), *v);
        }
    }

    /// Fix a typed value (`raw`, before any scale) at `address`, encoded like the server's
    /// points decode it (`points::encode_registers`).
    pub fn set_value(&self, address: u16, ty: PointType, order: WordOrder, raw: f64) {
        self.set_registers(address, &points::encode_registers(ty, order, raw));
    }

    /// Fix a coil (and discrete input).
    pub fn set_coil(&self, address: u16, value: bool) {
        let slave = self.shared.main_slave();
        let mut bus = self.shared.bus();
        bus.memories
            .entry(slave)
            .or_default()
            .coils
            .insert(address, value);
    }

    /// Fix what a DL/T 645 meter (the first slave) reads for `di` (`dtu-sim --meter dlt645`).
    pub fn set_reading(&self, di: Di, value: f64) {
        self.set_reading_of(self.shared.main_slave(), di, value);
    }

    /// Fix what the DL/T 645 meter at `slave` of the bus reads for `di`.
    pub fn set_reading_of(&self, slave: u8, di: Di, value: f64) {
        self.shared.bus().readings.insert((slave, di.0), value);
    }

    /// Silence a slave of the bus (it stops answering), or let it answer again.
    pub fn set_silent(&self, slave: u8, silent: bool) {
        let mut bus = self.shared.bus();
        if silent {
            bus.silent.insert(slave);
        } else {
            bus.silent.remove(&slave);
        }
    }

    /// Forget every fixed or written value: all addresses follow the signal again.
    pub fn clear(&self) {
        let mut bus = self.shared.bus();
        bus.memories = HashMap::new();
        bus.readings = HashMap::new();
    }

    /// What FC3 would read at `address` now (of the first slave).
    pub fn register(&self, address: u16) -> u16 {
        self.register_of(self.shared.main_slave(), address)
    }

    /// What FC3 would read at `address` of `slave` now.
    pub fn register_of(&self, slave: u8, address: u16) -> u16 {
        let bus = self.shared.bus();
        self.shared.register_at(&bus, slave, address, unix_now())
    }

    /// What FC1 would read at `address` now (of the first slave).
    pub fn coil(&self, address: u16) -> bool {
        let bus = self.shared.bus();
        let slave = self.shared.main_slave();
        self.shared.coil_at(&bus, slave, address, unix_now())
    }

    /// This device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Ask the device to close its connection and end `run` with `Ok`.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::modbus::rtu::MAX_ADU;
    use proptest::prelude::*;

    fn adu(slave: u8, request: &Request) -> Vec<u8> {
        request.encode(slave)
    }

    fn shared(id: u64, slave: u8) -> Shared {
        Shared::new(id, vec![slave], watch::channel(false).0)
    }

    #[test]
    fn signal_is_deterministic_and_moves() {
        assert_eq!(signal(1001, 2000, 1e9), signal(1001, 2000, 1e9));
        let values: Vec<u16> = (0..10)
            .map(|i| signal(1001, 2000, 1e9 + 30.0 * f64::from(i)))
            .collect();
        assert!(values.windows(2).any(|w| w[0] != w[1]), "{values:?}");
        for t in 0..1000 {
            let v = signal(1001, 2000, f64::from(t) * 7.0);
            assert!((150..=350).contains(&v), "{v}");
        }
        // Different devices differ.
        assert_ne!(signal(1001, 2000, 1e9), signal(1002, 2000, 1e9));
    }

    #[test]
    fn broadcast_write_is_applied_silently() {
        let dev = shared(1, 1);
        let write = adu(
            0,
            &Request::WriteSingleRegister {
                address: 3,
                value: 9,
            },
        );
        assert_eq!(dev.execute(&write, 0.0), Outcome::Ignored);
        let read = adu(1, &Request::ReadHoldingRegisters { start: 3, count: 1 });
        assert_eq!(
            dev.execute(&read, 0.0),
            Outcome::Reply(Response::Registers(vec![9]).encode(1, 3))
        );
        let broadcast_read = adu(0, &Request::ReadHoldingRegisters { start: 3, count: 1 });
        assert_eq!(dev.execute(&broadcast_read, 0.0), Outcome::Ignored);
    }

    #[test]
    fn unwritten_registers_follow_the_signal() {
        let dev = shared(42, 1);
        let read = adu(
            1,
            &Request::ReadHoldingRegisters {
                start: 100,
                count: 2,
            },
        );
        let expected = vec![signal(42, 100, 5.0), signal(42, 101, 5.0)];
        assert_eq!(
            dev.execute(&read, 5.0),
            Outcome::Reply(Response::Registers(expected).encode(1, 3))
        );
    }

    #[test]
    fn a_bus_of_units_answers_for_each_with_values_of_its_own() {
        let dev = Shared::new(3, vec![1, 7], watch::channel(false).0);
        let handle = SimHandle {
            shared: Arc::new(dev),
        };
        handle.set_registers_of(7, 100, &[77]);
        handle.set_registers(100, &[11]);
        let read = Request::ReadHoldingRegisters {
            start: 100,
            count: 1,
        };
        let answer = |slave: u8| handle.shared.execute(&adu(slave, &read), 0.0);
        assert_eq!(
            answer(1),
            Outcome::Reply(Response::Registers(vec![11]).encode(1, 3))
        );
        assert_eq!(
            answer(7),
            Outcome::Reply(Response::Registers(vec![77]).encode(7, 3))
        );
        assert_eq!(answer(2), Outcome::Ignored, "not on this bus");
        // Unwritten registers differ from unit to unit.
        assert_ne!(handle.register_of(1, 5), handle.register_of(7, 5));
        handle.set_silent(7, true);
        assert_eq!(answer(7), Outcome::Ignored);
        assert!(matches!(answer(1), Outcome::Reply(_)));
        handle.set_silent(7, false);
        assert!(matches!(answer(7), Outcome::Reply(_)));
        // A broadcast write reaches every unit, silently.
        let write = Request::WriteSingleRegister {
            address: 9,
            value: 5,
        };
        assert_eq!(
            handle.shared.execute(&adu(0, &write), 0.0),
            Outcome::Ignored
        );
        assert_eq!((handle.register_of(1, 9), handle.register_of(7, 9)), (5, 5));
    }

    #[test]
    fn refused_and_malformed_requests() {
        let dev = shared(1, 1);
        // FC5 with a value other than FF00/0000: exception 3.
        let mut bad_coil = vec![1, 5, 0, 1, 0x12, 0x34];
        modbus::rtu::append_crc(&mut bad_coil);
        assert_eq!(
            dev.execute(&bad_coil, 0.0),
            Outcome::Exception(modbus::rtu::exception_adu(1, 5, 3))
        );
        // FC16 whose byte count does not match its data: silence.
        let mut short = vec![1, 16, 0, 1, 0, 2, 4, 0, 1];
        modbus::rtu::append_crc(&mut short);
        assert_eq!(dev.execute(&short, 0.0), Outcome::Malformed);
        // FC3 of the wrong length: silence.
        let mut long = vec![1, 3, 0, 1, 0, 1, 0];
        modbus::rtu::append_crc(&mut long);
        assert_eq!(dev.execute(&long, 0.0), Outcome::Malformed);
        assert_eq!(dev.execute(&[1, 3], 0.0), Outcome::Malformed);
    }

    #[test]
    fn largest_reads_fit_an_adu() {
        let dev = shared(1, 1);
        for (request, function) in [
            (
                Request::ReadHoldingRegisters {
                    start: 0,
                    count: 125,
                },
                3,
            ),
            (
                Request::ReadCoils {
                    start: 0,
                    count: 2000,
                },
                1,
            ),
        ] {
            match dev.execute(&adu(1, &request), 0.0) {
                Outcome::Reply(r) => {
                    assert!(r.len() <= MAX_ADU);
                    assert_eq!(r[1], function);
                }
                other => panic!("{other:?}"),
            }
        }
        let too_many = adu(
            1,
            &Request::ReadHoldingRegisters {
                start: 0,
                count: 126,
            },
        );
        assert_eq!(
            dev.execute(&too_many, 0.0),
            Outcome::Exception(modbus::rtu::exception_adu(1, 3, 3))
        );
    }

    proptest! {
        #[test]
        fn written_registers_read_back(address in 0u16..65000, values in proptest::collection::vec(any::<u16>(), 1..=123)) {
            let dev = shared(7, 3);
            let write = adu(3, &Request::WriteMultipleRegisters { address, values: values.clone() });
            prop_assert_eq!(
                dev.execute(&write, 0.0),
                Outcome::Reply(Response::WriteMultiple { address, count: values.len() as u16 }.encode(3, 16))
            );
            let read = adu(3, &Request::ReadHoldingRegisters { start: address, count: values.len() as u16 });
            if usize::from(address) + values.len() <= 0x1_0000 {
                prop_assert_eq!(dev.execute(&read, 0.0), Outcome::Reply(Response::Registers(values).encode(3, 3)));
            }
        }
    }
}
