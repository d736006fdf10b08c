//! A fake DTU on a real TCP socket, with a register map the test controls. One thread reads
//! what the server sends and answers Modbus requests like an RS-485 slave would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dtu_supervisor::protocol::modbus::rtu::exception_adu;
use dtu_supervisor::protocol::modbus::{Request, Response};
use dtu_supervisor::protocol::points::{encode_registers, PointType, WordOrder};

use super::wait_for;

/// Addresses at or above this answer "illegal data address", to test exceptions.
pub const ILLEGAL_FROM: u32 = 60_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Framed,
    Transparent,
    /// A transparent DTU whose every packet starts with `prefix` (USR "registration packet:
    /// prefix of data"); it glues a bare heartbeat before and after its answers to reads at
    /// 2000 (the test profile's timer poll; not to the heartbeat poll's, which each heartbeat
    /// would run again at once).
    Prefixed {
        prefix: &'static [u8],
        heartbeat: &'static [u8],
    },
    /// A DTU speaking DDP over TCP (Hongdian H7710S-DDP), built here from the vendor's
    /// document byte by byte: frames `7B | type | length u16 BE | 11-byte id | data | 7B`. It
    /// registers and heartbeats with `register` (type 01), reads requests from 89 frames and
    /// answers in 09 frames.
    Ddp {
        register: &'static [u8],
    },
}

#[derive(Default)]
pub struct DeviceState {
    pub registers: Mutex<HashMap<u16, u16>>,
    pub coils: Mutex<HashMap<u16, bool>>,
    pub mute: AtomicBool,
    pub requests: Mutex<Vec<Request>>,
    pub register_acks: AtomicUsize,
    pub heartbeat_acks: AtomicUsize,
    /// Every DDP frame the server sent, as it arrived.
    pub frames: Mutex<Vec<Vec<u8>>>,
    pub closed: AtomicBool,
    /// Milliseconds to wait before answering (a slow RS-485 slave).
    pub delay_ms: AtomicU64,
    /// Requests that arrived while an earlier one was still unanswered: must stay 0.
    pub overlaps: AtomicUsize,
    /// Read requests answered (written to the socket), by start address.
    pub answered: Mutex<HashMap<u16, usize>>,
    /// While set, requests are read but not answered until it is cleared (a slave that takes
    /// as long as the test wants).
    pub hold: AtomicBool,
    /// A prefixed DTU sends its next answer with these bytes as the prefix instead of its own
    /// (a packet of another DTU).
    pub next_prefix: Mutex<Option<Vec<u8>>>,
}

pub struct FakeDevice {
    pub proto: Proto,
    stream: TcpStream,
    pub state: Arc<DeviceState>,
    reader: Option<JoinHandle<()>>,
}

impl FakeDevice {
    /// Connects and sends nothing (for tests of unregistered connections).
    pub fn connect(port: u16, proto: Proto) -> FakeDevice {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to server");
        stream.set_nodelay(true).ok();
        let state = Arc::new(DeviceState::default());
        let reader = {
            let stream = stream.try_clone().expect("clone socket");
            let state = state.clone();
            std::thread::spawn(move || serve(stream, proto, state))
        };
        FakeDevice {
            proto,
            stream,
            state,
            reader: Some(reader),
        }
    }

    /// A framed DTU with device number `number`, registered (its `01` ack received).
    pub fn framed(port: u16, number: u32) -> FakeDevice {
        Self::framed_with(port, number, &[])
    }

    /// A framed DTU whose registers hold `preset` (address, values) before it registers, so
    /// that even the first poll reads them.
    pub fn framed_with(port: u16, number: u32, preset: &[(u16, &[u16])]) -> FakeDevice {
        let mut dev = Self::connect(port, Proto::Framed);
        for (address, values) in preset {
            dev.set_registers(*address, values);
        }
        dev.send(&number.to_be_bytes());
        wait_for("the registration ack", || {
            (dev.state.register_acks.load(Ordering::SeqCst) > 0).then_some(())
        });
        dev
    }

    /// A transparent DTU that sends `first` as its first packet (registration, possibly glued
    /// to more bytes).
    pub fn transparent(port: u16, first: &[u8]) -> FakeDevice {
        let mut dev = Self::connect(port, Proto::Transparent);
        dev.send(first);
        dev
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A write to a socket the server closed may fail; tests check the outcome elsewhere.
        let _ = self.stream.write_all(bytes);
    }

    pub fn heartbeat(&mut self) {
        match self.proto {
            Proto::Framed => self.send(&[0x02, 0x00]),
            Proto::Transparent => self.send(b"www.usr.cn"),
            Proto::Prefixed { prefix, heartbeat } => self.send(&[prefix, heartbeat].concat()),
            // A Hongdian DTU's heartbeat is its register packet again.
            Proto::Ddp { register } => self.send(register),
        }
    }

    /// Registers for the test profile's points: temperature -12.3 °C (i16 ×0.1), humidity
    /// 56.25 % (f32 ABCD), energy 123456 kWh (u32 CDAB), status 5, pressure 1.5 bar (u16 ×0.01).
    pub fn load_test_points(&self) {
        self.set_registers(
            2000,
            &encode_registers(PointType::I16, WordOrder::Abcd, -123.0),
        );
        self.set_registers(
            2010,
            &encode_registers(PointType::F32, WordOrder::Abcd, 56.25),
        );
        self.set_registers(
            2020,
            &encode_registers(PointType::U32, WordOrder::Cdab, 123_456.0),
        );
        self.set_registers(2030, &[5]);
        self.set_registers(2300, &[150]);
    }

    pub fn set_registers(&self, address: u16, values: &[u16]) {
        let mut regs = self.state.registers.lock().expect("lock");
        for (i, v) in values.iter().enumerate() {
            regs.insert(address + i as u16, *v);
        }
    }

    pub fn register(&self, address: u16) -> u16 {
        self.state
            .registers
            .lock()
            .expect("lock")
            .get(&address)
            .copied()
            .unwrap_or(0)
    }

    pub fn coil(&self, address: u16) -> bool {
        self.state
            .coils
            .lock()
            .expect("lock")
            .get(&address)
            .copied()
            .unwrap_or(false)
    }

    /// Holds answers back while `on` (see `DeviceState::hold`).
    pub fn hold(&self, on: bool) {
        self.state.hold.store(on, Ordering::SeqCst);
    }

    /// Every request the device has received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn mute(&self, on: bool) {
        self.state.mute.store(on, Ordering::SeqCst);
    }

    /// How many read requests starting at `start` the device has received.
    pub fn reads_at(&self, start: u16) -> usize {
        self.state
            .requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| matches!(r, Request::ReadHoldingRegisters { start: s, .. } if *s == start))
            .count()
    }

    /// How many reads starting at `start` the device has answered.
    pub fn answered_at(&self, start: u16) -> usize {
        self.state
            .answered
            .lock()
            .expect("lock")
            .get(&start)
            .copied()
            .unwrap_or(0)
    }

    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Waits until the server has closed this connection.
    pub fn wait_closed(&self, what: &str) {
        wait_for(what, || self.is_closed().then_some(()));
    }

    pub fn close(mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn serve(mut stream: TcpStream, proto: Proto, state: Arc<DeviceState>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some((used, request)) = next_request(&buf, proto, &state) {
            buf.drain(..used);
            if let Some(adu) = request {
                while state.hold.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let delay = state.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                    // Anything more from the server before our answer is a second request in flight.
                    let mut peek = [0u8; 1];
                    stream.set_nonblocking(true).ok();
                    if !buf.is_empty() || matches!(stream.peek(&mut peek), Ok(n) if n > 0) {
                        state.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    stream.set_nonblocking(false).ok();
                }
                if let Some(answer) = answer(&adu, &state) {
                    let out = match proto {
                        Proto::Framed => {
                            let mut f = vec![0x04, answer.len() as u8];
                            f.extend_from_slice(&answer);
                            f
                        }
                        Proto::Transparent => answer,
                        Proto::Prefixed { prefix, heartbeat } => {
                            let prefix = state
                                .next_prefix
                                .lock()
                                .expect("lock")
                                .take()
                                .unwrap_or_else(|| prefix.to_vec());
                            let timer_poll = matches!(
                                Request::decode(&adu),
                                Ok((_, Request::ReadHoldingRegisters { start: 2000, .. }))
                            );
                            let glued: &[u8] = if timer_poll { heartbeat } else { &[] };
                            [glued, &prefix, &answer, glued].concat()
                        }
                        Proto::Ddp { register } => ddp_frame(0x09, &register[4..15], &answer),
                    };
                    if stream.write_all(&out).is_err() {
                        break;
                    }
                    if let Ok((_, Request::ReadHoldingRegisters { start, .. })) =
                        Request::decode(&adu)
                    {
                        *state
                            .answered
                            .lock()
                            .expect("lock")
                            .entry(start)
                            .or_default() += 1;
                    }
                }
            }
        }
    }
    state.closed.store(true, Ordering::SeqCst);
}

/// Splits one thing the server sent off `buf`: `(bytes used, Some(request ADU))`, or
/// `(used, None)` for an ack; `None` when more bytes are needed.
fn next_request(buf: &[u8], proto: Proto, state: &DeviceState) -> Option<(usize, Option<Vec<u8>>)> {
    match proto {
        Proto::Framed => match *buf.first()? {
            0x01 => {
                state.register_acks.fetch_add(1, Ordering::SeqCst);
                Some((1, None))
            }
            0x02 => {
                state.heartbeat_acks.fetch_add(1, Ordering::SeqCst);
                Some((1, None))
            }
            0x03 => Some((1, None)),
            0x04 => {
                let len = *buf.get(1)? as usize;
                let adu = buf.get(2..2 + len)?;
                Some((2 + len, Some(adu.to_vec())))
            }
            other => panic!("fake device: server sent unknown frame type {other:#04x}"),
        },
        Proto::Ddp { register } => {
            let len = usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]));
            assert!(len >= 16, "fake DDP device: the server sent {buf:02X?}");
            let frame = buf.get(..len)?;
            assert!(
                frame[0] == 0x7B && frame[len - 1] == 0x7B && frame[4..15] == register[4..15],
                "fake DDP device: the server sent {frame:02X?}"
            );
            state.frames.lock().expect("lock").push(frame.to_vec());
            match frame[1] {
                0x81 => {
                    state.register_acks.fetch_add(1, Ordering::SeqCst);
                    Some((len, None))
                }
                0x89 => Some((len, Some(frame[15..len - 1].to_vec()))),
                _ => Some((len, None)),
            }
        }
        Proto::Transparent | Proto::Prefixed { .. } => {
            let function = *buf.get(1)?;
            let len = match function {
                1..=6 => 8,
                15 | 16 => 9 + *buf.get(6)? as usize,
                _ => buf.len(),
            };
            let adu = buf.get(..len)?;
            Some((len, Some(adu.to_vec())))
        }
    }
}

/// A DDP frame (TCP layout): the length counts the whole frame.
fn ddp_frame(kind: u8, id: &[u8], data: &[u8]) -> Vec<u8> {
    let len = (16 + data.len()) as u16;
    let mut frame = vec![0x7B, kind];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(id);
    frame.extend_from_slice(data);
    frame.push(0x7B);
    frame
}

fn answer(adu: &[u8], state: &DeviceState) -> Option<Vec<u8>> {
    let (slave, request) = Request::decode(adu).ok()?;
    state.requests.lock().expect("lock").push(request.clone());
    if state.mute.load(Ordering::SeqCst) {
        return None;
    }
    let function = request.function();
    let span = |start: u16, count: usize| u32::from(start) + count as u32 > ILLEGAL_FROM;
    let mut regs = state.registers.lock().expect("lock");
    let mut coils = state.coils.lock().expect("lock");
    let response = match request {
        Request::ReadHoldingRegisters { start, count }
        | Request::ReadInputRegisters { start, count } => {
            if span(start, count as usize) {
                return Some(exception_adu(slave, function, 2));
            }
            Response::Registers(
                (0..count)
                    .map(|i| regs.get(&(start + i)).copied().unwrap_or(0))
                    .collect(),
            )
        }
        Request::ReadCoils { start, count } | Request::ReadDiscreteInputs { start, count } => {
            Response::Bits(
                (0..count)
                    .map(|i| coils.get(&(start + i)).copied().unwrap_or(false))
                    .collect(),
            )
        }
        Request::WriteSingleRegister { address, value } => {
            if span(address, 1) {
                return Some(exception_adu(slave, function, 2));
            }
            regs.insert(address, value);
            Response::WriteSingleRegister { address, value }
        }
        Request::WriteMultipleRegisters { address, values } => {
            for (i, v) in values.iter().enumerate() {
                regs.insert(address + i as u16, *v);
            }
            Response::WriteMultiple {
                address,
                count: values.len() as u16,
            }
        }
        Request::WriteSingleCoil { address, value } => {
            coils.insert(address, value);
            Response::WriteSingleCoil { address, value }
        }
        Request::WriteMultipleCoils { address, values } => {
            for (i, v) in values.iter().enumerate() {
                coils.insert(address + i as u16, *v);
            }
            Response::WriteMultiple {
                address,
                count: values.len() as u16,
            }
        }
    };
    Some(response.encode(slave, function))
}
