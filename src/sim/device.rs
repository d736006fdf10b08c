//! One simulated DTU: dial, register, heartbeat, answer the server's requests from its
//! [`meter`](super::meter), reconnect with backoff. What goes on the wire comes from the
//! protocol's [`DeviceLink`]; this file knows no protocol by name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use log::{debug, warn};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::protocol::hex::to_hex;
use crate::protocol::link::{DeviceLink, FromServer};

use super::fleet::ConnectLimiter;
use super::meter::{Shared, SimHandle};
use super::stats::{add, inc, ConnectedGuard, SimStats, StatsSnapshot};
use super::{SimConfig, SimError};

/// A write that takes longer than this (server not reading) ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when `stop` has been requested (never, if every sender is gone).
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One simulated DTU. Create with [`SimDevice::new`], drive with [`SimDevice::run`]
/// (or [`SimDevice::spawn`]); control it through the [`SimHandle`].
#[derive(Debug)]
pub struct SimDevice {
    config: Arc<SimConfig>,
    /// The protocol's device side; `None` for a protocol whose devices are not polled (then
    /// `run` fails at once).
    link: Option<Arc<dyn DeviceLink>>,
    shared: Arc<Shared>,
    stop_rx: watch::Receiver<bool>,
    limiter: Option<Arc<ConnectLimiter>>,
    /// Set when the current session registered: the next reconnect starts from `backoff_min`.
    registered: bool,
}

/// How one connection ended, when not with an error.
enum SessionEnd {
    Stopped,
    Closed,
}

impl SimDevice {
    /// A device with device number `id_number` (framed: the 4-byte id; transparent: see
    /// [`SimDevice::registration_id`]). Nothing happens until it is run.
    pub fn new(id_number: u64, config: SimConfig) -> (SimDevice, SimHandle) {
        let link = config.device_link().ok();
        Self::with_shared_config(id_number, Arc::new(config), link, None)
    }

    /// A device of a fleet: the configuration, the protocol's device side and the connect
    /// rate limit are shared by every device.
    pub(super) fn with_shared_config(
        id_number: u64,
        config: Arc<SimConfig>,
        link: Option<Arc<dyn DeviceLink>>,
        limiter: Option<Arc<ConnectLimiter>>,
    ) -> (SimDevice, SimHandle) {
        let (stop, stop_rx) = watch::channel(false);
        let shared =
            Arc::new(Shared::new(id_number, config.slaves(), stop).with_framing(config.meter));
        let handle = SimHandle {
            shared: shared.clone(),
        };
        for value in &config.initial_values {
            value.apply(&handle);
        }
        for slave in &config.silent {
            handle.set_silent(*slave, true);
        }
        (
            SimDevice {
                config,
                link,
                shared,
                stop_rx,
                limiter,
                registered: false,
            },
            handle,
        )
    }

    /// The device number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The id the server will know this device by, as its protocol writes it (framed: the
    /// decimal device number; transparent: `IMEI_BASE + n`, 15 digits, or `n` itself when it
    /// already has 15 or more digits), or why the number does not fit the protocol.
    pub fn registration_id(&self) -> Result<String, SimError> {
        self.link()?
            .registration_id(self.shared.id)
            .map_err(SimError::IdOutOfRange)
    }

    fn link(&self) -> Result<Arc<dyn DeviceLink>, SimError> {
        self.link
            .clone()
            .ok_or(SimError::NotPolled(self.config.protocol))
    }

    /// Fix a register's value (see [`SimHandle::set_register`]).
    pub fn set_register(&self, address: u16, value: u16) {
        self.handle().set_register(address, value);
    }

    /// A handle to this device.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
        }
    }

    /// This device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Run on the current tokio runtime.
    pub fn spawn(self) -> JoinHandle<Result<(), SimError>> {
        tokio::spawn(self.run())
    }

    /// Dial, register, heartbeat and answer until stopped (`Ok`). Without `reconnect`, the
    /// first failure or disconnect ends it with the error ([`SimError::Closed`] when the
    /// server closed the connection); with it, every failure is retried after a backoff.
    pub async fn run(mut self) -> Result<(), SimError> {
        let link = self.link()?;
        let registration = link
            .registration(self.shared.id)
            .map_err(SimError::IdOutOfRange)?;
        let mut backoff = self.config.backoff_min;
        loop {
            if *self.stop_rx.borrow() {
                return Ok(());
            }
            if let Some(limiter) = self.limiter.clone() {
                tokio::select! {
                    _ = limiter.acquire() => {}
                    _ = stopped(&mut self.stop_rx) => return Ok(()),
                }
            }
            self.registered = false;
            let error = match self.session(&*link, &registration).await {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Closed) => {
                    debug!("device {}: server closed the connection", self.shared.id);
                    SimError::Closed
                }
                Err(e) => {
                    debug!("device {}: {e}", self.shared.id);
                    e
                }
            };
            if self.registered {
                backoff = self.config.backoff_min;
            }
            if !self.config.reconnect {
                return Err(error);
            }
            let delay = backoff.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
            backoff = (backoff * 2).min(self.config.backoff_max);
            tokio::select! {
                _ = sleep(delay) => {}
                _ = stopped(&mut self.stop_rx) => return Ok(()),
            }
        }
    }

    async fn connect(&mut self) -> Result<Option<TcpStream>, SimError> {
        let stats = &self.shared.stats;
        let (server, source) = (
            self.config.server,
            self.config.source_address(self.shared.id),
        );
        let connect = timeout(self.config.connect_timeout, async move {
            match source {
                // Bound first, so the kernel picks the port among this address's own.
                Some(source) => {
                    let socket = match source {
                        SocketAddr::V4(_) => TcpSocket::new_v4()?,
                        SocketAddr::V6(_) => TcpSocket::new_v6()?,
                    };
                    socket.bind(source)?;
                    socket.connect(server).await
                }
                None => TcpStream::connect(server).await,
            }
        });
        let result = tokio::select! {
            r = connect => r,
            _ = stopped(&mut self.stop_rx) => return Ok(None),
        };
        match result {
            Ok(Ok(stream)) => {
                // Small packets should leave at once, like a modem's do.
                let _ = stream.set_nodelay(true);
                Ok(Some(stream))
            }
            Ok(Err(e)) => {
                inc(&stats.connect_failures);
                if e.raw_os_error() == Some(24) {
                    warn!("too many open files: raise the limit (ulimit -n) for this many devices");
                }
                Err(SimError::Io(e))
            }
            Err(_) => {
                inc(&stats.connect_failures);
                Err(SimError::ConnectTimeout)
            }
        }
    }

    /// One connection, from connect to close.
    async fn session(
        &mut self,
        link: &dyn DeviceLink,
        registration: &[u8],
    ) -> Result<SessionEnd, SimError> {
        let Some(mut stream) = self.connect().await? else {
            return Ok(SessionEnd::Stopped);
        };
        let shared = self.shared.clone();
        let config = self.config.clone();
        let stats = &shared.stats;
        let _guard = ConnectedGuard::new(stats);
        let (mut rd, mut wr) = stream.split();
        let id = shared.id;
        let framed = link.framed();
        debug!("device {id}: connected to {}", config.server);

        let heartbeat = link.heartbeat(id);
        let mut first = registration.to_vec();
        let mut next_heartbeat = Instant::now() + config.heartbeat;
        // Round trips are measured with heartbeats, so only where they are acknowledged.
        let round_trips = config.round_trips.as_ref().filter(|_| link.acknowledged());
        let mut acks = AckCount::default();
        // A heartbeat due, waiting to leave behind the next answer (round trips only).
        let mut heartbeat_due = false;
        // The request that a heartbeat rode behind: when it arrived, and which acknowledgement
        // answers that heartbeat.
        let mut probe: Option<(Instant, u64)> = None;
        if config.glue_registration {
            first.extend_from_slice(&heartbeat);
            inc(&stats.heartbeats_sent);
            acks.sent += 1;
        }
        write(&mut wr, &first, stats).await?;
        // A registration the server does not acknowledge counts once it is sent.
        let mut registered = !link.acknowledged();
        if registered {
            inc(&stats.registrations);
            self.registered = true;
        }
        let register_deadline = Instant::now() + config.register_timeout;
        let mut next_data = config.data_every.map(|d| Instant::now() + d);
        let mut next_passive = config.passive.as_ref().map(|p| Instant::now() + p.every);
        let mut data_seq: u64 = 0;
        let mut buf = BytesMut::with_capacity(64);
        let mut last_rx = Instant::now();
        let mut out: Vec<u8> = Vec::new();

        loop {
            tokio::select! {
                _ = stopped(&mut self.stop_rx) => return Ok(SessionEnd::Stopped),
                read = rd.read_buf(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(SessionEnd::Closed);
                    }
                    add(&stats.bytes_in, n);
                    last_rx = Instant::now();
                    let arrived = last_rx;
                    loop {
                        match link.decode(&mut buf) {
                            Ok(None) => break,
                            Ok(Some(FromServer::RegisterAck)) => {
                                if !registered {
                                    registered = true;
                                    self.registered = true;
                                    inc(&stats.registrations);
                                    debug!("device {id}: registered");
                                    if !config.glue_registration {
                                        next_heartbeat = Instant::now() + config.heartbeat;
                                    }
                                }
                            }
                            Ok(Some(FromServer::Ack)) => {
                                inc(&stats.acks);
                                acks.received += 1;
                                if let (Some(rt), Some((at, nth))) = (round_trips, probe) {
                                    if acks.received >= nth {
                                        rt.record(arrived.saturating_duration_since(at));
                                        probe = None;
                                    }
                                }
                            }
                            Ok(Some(FromServer::Request(adu))) => {
                                let answer = shared.answer(&adu);
                                if !answer.is_empty() {
                                    link.answer(id, &answer, &mut out);
                                    if heartbeat_due {
                                        heartbeat_due = false;
                                        out.extend_from_slice(&heartbeat);
                                        inc(&stats.heartbeats_sent);
                                        acks.sent += 1;
                                        probe = Some((arrived, acks.sent));
                                    }
                                }
                            }
                            Err(e) => {
                                // Where one packet ends is lost: drop what is buffered.
                                inc(&stats.protocol_errors);
                                warn!("device {id}: protocol error from server, dropping {e}");
                                buf.clear();
                                break;
                            }
                        }
                    }
                    if !out.is_empty() {
                        write(&mut wr, &out, stats).await?;
                        out.clear();
                    }
                }
                _ = sleep_until(next_heartbeat), if registered => {
                    next_heartbeat = Instant::now() + config.heartbeat;
                    if round_trips.is_some() && !heartbeat_due {
                        // Leaves behind the next answer; alone if no request comes for a
                        // whole heartbeat interval (next turn of this arm).
                        heartbeat_due = true;
                    } else {
                        heartbeat_due = false;
                        write(&mut wr, &heartbeat, stats).await?;
                        inc(&stats.heartbeats_sent);
                        acks.sent += 1;
                    }
                }
                _ = sleep_until(register_deadline), if !registered => {
                    debug!("device {id}: registration not acknowledged within {:?}", config.register_timeout);
                    return Err(SimError::RegistrationTimeout);
                }
                _ = sleep_until(next_data.unwrap_or(register_deadline)), if registered && next_data.is_some() => {
                    let payload = format!("id={id} seq={}", data_seq + 1);
                    match link.data(payload.as_bytes()) {
                        Some(packet) => {
                            data_seq += 1;
                            write(&mut wr, &packet, stats).await?;
                            inc(&stats.data_sent);
                            acks.sent += 1;
                            next_data = config.data_every.map(|d| Instant::now() + d);
                        }
                        // The protocol has no data packets: `data_every` does not apply.
                        None => next_data = None,
                    }
                }
                _ = sleep_until(next_passive.unwrap_or(register_deadline)), if registered && next_passive.is_some() => {
                    // The DTU's own query of its meter: the answer goes up unasked.
                    if let Some(passive) = &config.passive {
                        let answer = shared.answer(&passive.request.encode(shared.main_slave()));
                        if !answer.is_empty() {
                            let mut out = Vec::new();
                            link.answer(id, &answer, &mut out);
                            write(&mut wr, &out, stats).await?;
                            inc(&stats.passive_sent);
                        }
                        next_passive = Some(Instant::now() + passive.every);
                    }
                }
                _ = sleep_until(last_rx + config.frame_gap), if !framed && !buf.is_empty() => {
                    debug!("device {id}: dropping incomplete {}", to_hex(&buf));
                    buf.clear();
                }
            }
        }
    }
}

/// Packets of one session that the server acknowledges in order (heartbeats, data packets):
/// how many were sent and how many acknowledgements came back, so that the one answering a
/// given heartbeat is known.
#[derive(Debug, Default)]
struct AckCount {
    sent: u64,
    received: u64,
}

async fn write(
    wr: &mut tokio::net::tcp::WriteHalf<'_>,
    bytes: &[u8],
    stats: &SimStats,
) -> Result<(), SimError> {
    match timeout(WRITE_TIMEOUT, wr.write_all(bytes)).await {
        Ok(Ok(())) => {
            add(&stats.bytes_out, bytes.len());
            Ok(())
        }
        Ok(Err(e)) => Err(SimError::Io(e)),
        Err(_) => Err(SimError::WriteTimeout),
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
