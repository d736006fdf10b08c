//! Many simulated devices at once: [`spawn_fleet`] starts them with one shared connect rate
//! ([`ConnectLimiter`]), [`run_fleet`] runs them until a signal and reports their counters.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::stats::StatsSnapshot;
use super::{SimConfig, SimDevice, SimError, SimHandle};

/// Hands out connection slots `1/rate` apart (shared by a fleet).
#[derive(Debug)]
pub(super) struct ConnectLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectLimiter {
    pub(super) fn new(rate_per_sec: f64) -> Option<Arc<ConnectLimiter>> {
        (rate_per_sec.is_finite() && rate_per_sec > 0.0).then(|| {
            Arc::new(ConnectLimiter {
                interval: Duration::from_secs_f64(1.0 / rate_per_sec),
                next: Mutex::new(Instant::now()),
            })
        })
    }

    pub(super) async fn acquire(&self) {
        let slot = {
            // A poisoned lock only means a panic elsewhere while holding it; the instant in
            // it is still a valid next slot.
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        sleep_until(slot).await;
    }
}

/// Many devices with consecutive numbers, each its own task, sharing one connect rate.
#[derive(Debug)]
pub struct Fleet {
    handles: Vec<SimHandle>,
    tasks: Vec<JoinHandle<Result<(), SimError>>>,
    running: Arc<AtomicU64>,
    all_ended: Arc<Notify>,
}

/// Start `count` devices numbered `first_id..` on the current tokio runtime. Connection
/// attempts, first ones and reconnects alike, are spaced to at most `rate` per second
/// (`rate <= 0`: no limit). A device that ends with an error (no `reconnect`) logs it at
/// debug level, except the first one in the fleet, at warn.
pub fn spawn_fleet(config: SimConfig, count: usize, first_id: u64, rate: f64) -> Fleet {
    let link = config.device_link().ok();
    let config = Arc::new(config);
    let limiter = ConnectLimiter::new(rate);
    let running = Arc::new(AtomicU64::new(count as u64));
    let all_ended = Arc::new(Notify::new());
    let first_error = Arc::new(AtomicBool::new(true));
    let mut handles = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let (device, handle) = SimDevice::with_shared_config(
            first_id + i,
            config.clone(),
            link.clone(),
            limiter.clone(),
        );
        let (running, all_ended, first_error) =
            (running.clone(), all_ended.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let id = device.id();
            let result = device.run().await;
            if let Err(e) = &result {
                if first_error.swap(false, Ordering::Relaxed) {
                    warn!("device {id} stopped: {e} (other devices' errors at debug level)");
                } else {
                    debug!("device {id} stopped: {e}");
                }
            }
            if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                all_ended.notify_one();
            }
            result
        }));
        handles.push(handle);
    }
    Fleet {
        handles,
        tasks,
        running,
        all_ended,
    }
}

impl Fleet {
    /// Handles of the devices, in number order.
    pub fn handles(&self) -> &[SimHandle] {
        &self.handles
    }

    /// Counters summed over every device.
    pub fn stats(&self) -> StatsSnapshot {
        self.handles
            .iter()
            .fold(StatsSnapshot::default(), |acc, h| acc + h.stats())
    }

    /// Devices whose task has not ended.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire) as usize
    }

    /// Resolves once every device has ended by itself (only without `reconnect`, or after
    /// each was stopped through its handle).
    pub async fn ended(&self) {
        while self.running() > 0 {
            self.all_ended.notified().await;
        }
    }

    /// Stop every device, wait for their tasks and return the final counters.
    pub async fn stop(self) -> StatsSnapshot {
        for h in &self.handles {
            h.stop();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.handles
            .iter()
            .fold(StatsSnapshot::default(), |acc, h| acc + h.stats())
    }
}

/// Run a fleet until Ctrl-C / SIGTERM (or until every device has ended, e.g. without
/// `reconnect`), logging the counters every `report_every` at info level
/// (`Duration::ZERO`: never). Returns the final counters.
pub async fn run_fleet(
    config: SimConfig,
    count: usize,
    first_id: u64,
    rate: f64,
    report_every: Duration,
) -> StatsSnapshot {
    info!(
        "starting {count} {} DTUs {first_id}..={} -> {} at {rate}/s",
        config.protocol,
        first_id + (count as u64).saturating_sub(1),
        config.server
    );
    let fleet = spawn_fleet(config, count, first_id, rate);
    let mut last = StatsSnapshot::default();
    until_stopped(fleet.ended(), "device", report_every, || {
        let now = fleet.stats();
        info!(
            "{now} (last {report_every:?}: +{} polls, +{} heartbeats, +{} connects)",
            now.polls_answered - last.polls_answered,
            now.heartbeats_sent - last.heartbeats_sent,
            now.connects - last.connects
        );
        last = now;
    })
    .await;
    let total = fleet.stop().await;
    info!("final: {total}");
    total
}

/// Waits for Ctrl-C / SIGTERM or for `ended` (every `what` has stopped by itself), whichever
/// comes first, calling `report` every `report_every` meanwhile (`Duration::ZERO`: never).
pub(super) async fn until_stopped(
    ended: impl Future<Output = ()>,
    what: &str,
    report_every: Duration,
    mut report: impl FnMut(),
) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown, ended);
    let reporting = !report_every.is_zero();
    // The ticker is never polled when not reporting; any period will do.
    let period = if reporting {
        report_every
    } else {
        Duration::from_secs(3600)
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("stopping");
                return;
            }
            _ = &mut ended => {
                info!("every {what} has stopped");
                return;
            }
            _ = ticker.tick(), if reporting => report(),
        }
    }
}

/// Resolves at Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::time::timeout;

    use super::*;
    use crate::protocol::modbus::{self, Request};
    use crate::sim::test_util::{accept, adu, config, framed, listener, read_n, DEADLINE};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_registers_every_device() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, framed());
        cfg.heartbeat = Duration::from_millis(100);
        let fleet = spawn_fleet(cfg, 20, 1001, 500.0);
        let mut ids = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..20 {
            let mut s = accept(&l).await;
            let reg = read_n(&mut s, 4).await;
            ids.push(u32::from_be_bytes([reg[0], reg[1], reg[2], reg[3]]));
            s.write_all(&[1]).await.unwrap();
            sockets.push(s);
        }
        ids.sort_unstable();
        assert_eq!(ids, (1001..1021).collect::<Vec<u32>>());
        // Every device answers its own poll.
        for (i, h) in fleet.handles().iter().enumerate() {
            h.set_register(0, i as u16);
        }
        for s in &mut sockets {
            let request = adu(1, &Request::ReadHoldingRegisters { start: 0, count: 1 });
            // Framed: `04 LL <request>`.
            let mut packet = vec![4, request.len() as u8];
            packet.extend_from_slice(&request);
            s.write_all(&packet).await.unwrap();
            // Skip heartbeats until the response.
            loop {
                let t = read_n(s, 1).await[0];
                if t == 2 {
                    assert_eq!(read_n(s, 1).await, [0]);
                    continue;
                }
                assert_eq!(t, 4);
                let len = read_n(s, 1).await[0] as usize;
                let answer = read_n(s, len).await;
                assert!(modbus::rtu::check_crc(&answer));
                break;
            }
        }
        let stats = fleet.stats();
        assert_eq!(stats.connected, 20, "{stats}");
        assert_eq!(stats.registrations, 20, "{stats}");
        assert_eq!(stats.polls_answered, 20, "{stats}");
        assert_eq!(fleet.running(), 20);
        let total = fleet.stop().await;
        assert_eq!(total.connected, 0, "{total}");
    }

    #[tokio::test]
    async fn run_fleet_returns_when_every_device_has_ended() {
        // Nothing listens: without reconnect every device fails once and ends.
        let (l, addr) = listener().await;
        drop(l);
        let total = timeout(
            DEADLINE,
            run_fleet(config(addr, framed()), 5, 1, 0.0, Duration::ZERO),
        )
        .await
        .expect("run_fleet did not return");
        assert_eq!(total.connect_failures, 5, "{total}");
        assert_eq!(total.connected, 0, "{total}");
    }

    #[tokio::test]
    async fn fleet_applies_initial_values() {
        // Nothing listens there: the devices never reach a server.
        let (l, addr) = listener().await;
        drop(l);
        let cfg = SimConfig {
            initial_values: vec!["2010=45.5:f32".parse().unwrap(), "2100=1".parse().unwrap()],
            ..config(addr, framed())
        };
        let fleet = spawn_fleet(cfg, 2, 1, 0.0);
        for h in fleet.handles() {
            h.stop();
        }
        fleet.ended().await;
        for h in fleet.handles() {
            let hi = h.register(2010);
            let lo = h.register(2011);
            assert_eq!(f32::from_bits((u32::from(hi) << 16) | u32::from(lo)), 45.5);
            assert_eq!(h.register(2100), 1);
        }
        assert_eq!(fleet.running(), 0);
        fleet.stop().await;
    }

    #[tokio::test]
    async fn limiter_spaces_slots() {
        let limiter = ConnectLimiter::new(50.0).expect("limiter");
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first slot is immediate, the next four 20 ms apart (lower bound only).
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(79), "{elapsed:?}");
        assert!(ConnectLimiter::new(0.0).is_none());
        assert!(ConnectLimiter::new(f64::NAN).is_none());
    }
}
