//! Connection limits (`[limits]`), checked when a socket is accepted, before a byte of it is
//! read: connections open in all, from one source address, and not registered yet. A socket
//! over a limit is closed at once and counted (`dtu_connections_refused_total{reason}`); the
//! log says so at most once a minute per reason, since a flood would otherwise fill it. What
//! a connection admitted holds is a [`Permit`], given back when the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::METRICS;
use crate::settings::LimitSettings;

/// Files kept free of connections when `max_connections` follows the open-files limit.
const FILE_RESERVE: u64 = 256;
/// Refusals of one reason are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// `max_connections` as it applies: given, or the soft open-files limit less a reserve.
pub fn max_connections(settings: &LimitSettings) -> usize {
    if settings.max_connections > 0 {
        return settings.max_connections;
    }
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    usize::try_from(files.saturating_sub(FILE_RESERVE).max(64)).unwrap_or(usize::MAX)
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Connections,
    PerAddress,
    Unregistered,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::PerAddress => "per_address",
            Refusal::Unregistered => "unregistered",
        }
    }
}

/// The counts every device listener shares.
#[derive(Debug)]
pub struct Limits {
    max_connections: usize,
    max_per_address: usize,
    max_unregistered: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    unregistered: usize,
    per_address: HashMap<IpAddr, usize>,
    logged: HashMap<Refusal, Instant>,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            max_connections: max_connections(settings),
            max_per_address: settings.max_per_address,
            max_unregistered: settings.max_unregistered,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Lets a connection from `peer` in, or says which limit it is over (counted, and logged
    /// now and then).
    pub fn admit(self: &Arc<Self>, peer: IpAddr, listener: &str) -> Result<Permit, Refusal> {
        let mut counts = self.lock();
        let from_peer = counts.per_address.get(&peer).copied().unwrap_or(0);
        let refusal = if counts.open >= self.max_connections {
            Some((Refusal::Connections, self.max_connections))
        } else if from_peer >= self.max_per_address {
            Some((Refusal::PerAddress, self.max_per_address))
        } else if counts.unregistered >= self.max_unregistered {
            Some((Refusal::Unregistered, self.max_unregistered))
        } else {
            None
        };
        if let Some((refusal, max)) = refusal {
            METRICS
                .connections_refused
                .inc(vec![("reason", refusal.as_str().to_string())]);
            let now = Instant::now();
            let due = counts
                .logged
                .get(&refusal)
                .map_or(true, |t| now.duration_since(*t) >= LOG_EVERY);
            if due {
                counts.logged.insert(refusal, now);
                log::warn!(
                    "listener {listener}: refusing connections from {peer} and others: over \
                     max_{} ({max}); counted in dtu_connections_refused_total, logged once a minute",
                    refusal.as_str()
                );
            } else {
                log::debug!("listener {listener}: refused {peer}: {}", refusal.as_str());
            }
            return Err(refusal);
        }
        counts.open += 1;
        counts.unregistered += 1;
        *counts.per_address.entry(peer).or_insert(0) += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            peer,
            unregistered: true,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (open, unregistered) now.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.lock();
        (c.open, c.unregistered)
    }
}

/// A connection's place within the limits; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    peer: IpAddr,
    unregistered: bool,
}

impl Permit {
    /// The connection registered: it no longer counts as unregistered.
    pub fn registered(&mut self) {
        if std::mem::take(&mut self.unregistered) {
            let mut c = self.limits.lock();
            c.unregistered = c.unregistered.saturating_sub(1);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.open = c.open.saturating_sub(1);
        if self.unregistered {
            c.unregistered = c.unregistered.saturating_sub(1);
        }
        if let Some(n) = c.per_address.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize, unregistered: usize) -> Arc<Limits> {
        Limits::new(&LimitSettings {
            max_connections: total,
            max_per_address: per_address,
            max_unregistered: unregistered,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn each_limit_refuses_and_a_permit_gives_its_place_back() {
        let l = limits(4, 2, 3);
        let a1 = l.admit(ip(1), "t").expect("first");
        let mut a2 = l.admit(ip(1), "t").expect("second from one address");
        assert_eq!(l.admit(ip(1), "t").err(), Some(Refusal::PerAddress));
        let b1 = l.admit(ip(2), "t").expect("another address");
        // Three unregistered: the next waits for one to register.
        assert_eq!(l.admit(ip(3), "t").err(), Some(Refusal::Unregistered));
        a2.registered();
        a2.registered(); // twice changes nothing
        assert_eq!(l.counts(), (3, 2));
        let c1 = l.admit(ip(3), "t").expect("room again");
        assert_eq!(l.admit(ip(4), "t").err(), Some(Refusal::Connections));
        drop(a1);
        drop(c1);
        assert_eq!(l.counts(), (2, 1));
        let again = l.admit(ip(1), "t").expect("the address has room again");
        drop((again, a2, b1));
        assert_eq!(l.counts(), (0, 0));
        assert!(l.lock().per_address.is_empty(), "no address left behind");
    }

    #[test]
    fn zero_connections_means_the_open_files_limit() {
        let s = LimitSettings::default();
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("rlimit");
        assert_eq!(
            max_connections(&s) as u64,
            soft.saturating_sub(FILE_RESERVE).max(64)
        );
        let given = LimitSettings {
            max_connections: 7,
            ..s
        };
        assert_eq!(max_connections(&given), 7);
    }
}
