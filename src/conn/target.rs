//! What a polled connection polls: the DTU's one slave, or each unit of the RS-485 bus behind
//! it. A unit is a device of its own (`<dtu id>.<slave>`): online once it answers, offline
//! (`no_response`) after `max_failed` polls in a row without an answer, and then only probed
//! now and then, so that a dead slave cannot take the bus from the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::protocol::dlt645;
use crate::settings::{Meter, Profile};

/// How often a unit that stopped answering is polled, at most (without retries).
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// One slave the connection polls.
pub struct Target {
    pub slave: u8,
    pub profile: Arc<Profile>,
    /// The device id its values go under: the DTU's, or `<dtu id>.<slave>` for a unit; set
    /// when the DTU registers.
    pub id: String,
    /// Some for a unit of a bus: its presence.
    pub unit: Option<Unit>,
    /// Per poll of its profile: queued or in flight, so a slow slave never piles up polls.
    pub poll_pending: Vec<bool>,
    /// A DL/T 645 meter's address: the unit's or the profile's, or once read (`address =
    /// "auto"`) the one it answered with; None until then (and for a Modbus slave).
    pub meter_address: Option<dlt645::Address>,
}

/// Whether a unit answers.
pub struct Unit {
    pub presence: Presence,
    /// Polls in a row without an answer.
    pub failed: u32,
    /// When it was last polled while `Silent`.
    pub last_probe: Option<Instant>,
    /// Since when it is online (its `connected_at`).
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Not heard from on this connection yet: polled as usual.
    Unknown,
    Online,
    /// Left `max_failed` polls unanswered: probed every [`PROBE_EVERY`] only.
    Silent,
}

/// What a unit's presence became, for the connection to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    CameOnline,
    WentSilent,
}

impl Target {
    /// The targets of a DTU polled with `profile`: its units, or its one slave.
    pub fn of(profile: &Arc<Profile>) -> Vec<Target> {
        if profile.units.is_empty() {
            return vec![Target::new(profile.slave, profile.clone(), None, None)];
        }
        profile
            .units
            .iter()
            .map(|u| {
                let unit = Unit {
                    presence: Presence::Unknown,
                    failed: 0,
                    last_probe: None,
                    since: Utc::now(),
                };
                Target::new(u.slave, u.profile.clone(), Some(unit), u.address)
            })
            .collect()
    }

    fn new(
        slave: u8,
        profile: Arc<Profile>,
        unit: Option<Unit>,
        address: Option<dlt645::Address>,
    ) -> Target {
        let polls = profile.polls.len();
        let meter_address = match profile.meter {
            Meter::Dlt645(own) => address.or(own),
            Meter::ModbusRtu | Meter::ModbusTcp => None,
        };
        Target {
            slave,
            profile,
            id: String::new(),
            unit,
            poll_pending: vec![false; polls],
            meter_address,
        }
    }

    /// Whether a poll may go out now: a silent unit is probed every [`PROBE_EVERY`] only.
    pub fn may_poll(&mut self, now: Instant) -> bool {
        match &mut self.unit {
            Some(u) if u.presence == Presence::Silent => {
                let due = u
                    .last_probe
                    .map_or(true, |at| now.duration_since(at) >= PROBE_EVERY);
                if due {
                    u.last_probe = Some(now);
                }
                due
            }
            _ => true,
        }
    }

    /// Retries for a request to it: none while it is silent (a probe), else the profile's.
    pub fn retries(&self, configured: u32) -> u32 {
        match &self.unit {
            Some(u) if u.presence == Presence::Silent => 0,
            _ => configured,
        }
    }

    /// It answered (data or a device exception).
    pub fn answered(&mut self) -> Option<Change> {
        let u = self.unit.as_mut()?;
        u.failed = 0;
        if u.presence == Presence::Online {
            return None;
        }
        u.presence = Presence::Online;
        u.since = Utc::now();
        Some(Change::CameOnline)
    }

    /// A poll to it went unanswered, retries included; `max_failed` in a row silence it.
    pub fn unanswered(&mut self, max_failed: u32, now: Instant) -> Option<Change> {
        let u = self.unit.as_mut()?;
        u.failed = u.failed.saturating_add(1);
        if u.presence == Presence::Silent || u.failed < max_failed.max(1) {
            return None;
        }
        let was_online = u.presence == Presence::Online;
        u.presence = Presence::Silent;
        u.last_probe = Some(now);
        // A unit never heard from goes quiet without an event: it was never online.
        was_online.then_some(Change::WentSilent)
    }

    pub fn is_online_unit(&self) -> bool {
        matches!(&self.unit, Some(u) if u.presence == Presence::Online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Target {
        let profile = Arc::new(Profile {
            name: "meter".into(),
            slave: 1,
            response_timeout: Duration::from_secs(1),
            retries: 1,
            polls: Vec::new(),
            points: Vec::new(),
            commands: Vec::new(),
            rules: Vec::new(),
            units: Vec::new(),
            max_failed: 3,
            registration: None,
            heartbeat: None,
            meter: Meter::ModbusRtu,
        });
        Target::new(
            7,
            profile,
            Some(Unit {
                presence: Presence::Unknown,
                failed: 0,
                last_probe: None,
                since: Utc::now(),
            }),
            None,
        )
    }

    #[test]
    fn a_unit_is_online_while_it_answers_and_silent_after_max_failed() {
        let t0 = Instant::now();
        let mut u = unit();
        assert_eq!(u.answered(), Some(Change::CameOnline));
        assert_eq!(u.answered(), None);
        assert_eq!(u.unanswered(3, t0), None);
        assert_eq!(u.unanswered(3, t0), None);
        assert_eq!(u.answered(), None, "an answer resets the count");
        assert_eq!(u.unanswered(3, t0), None);
        assert_eq!(u.unanswered(3, t0), None);
        assert_eq!(u.unanswered(3, t0), Some(Change::WentSilent));
        assert_eq!(u.unanswered(3, t0), None);
        // Silent: probed every PROBE_EVERY, without retries.
        assert_eq!(u.retries(2), 0);
        assert!(!u.may_poll(t0 + Duration::from_secs(1)));
        assert!(u.may_poll(t0 + PROBE_EVERY));
        assert!(!u.may_poll(t0 + PROBE_EVERY + Duration::from_secs(1)));
        assert_eq!(u.answered(), Some(Change::CameOnline));
        assert_eq!(u.retries(2), 2);
        assert!(u.may_poll(t0));
    }

    #[test]
    fn a_unit_never_heard_from_goes_quiet_without_an_event() {
        let mut u = unit();
        let t0 = Instant::now();
        assert_eq!(u.unanswered(2, t0), None);
        assert_eq!(u.unanswered(2, t0), None);
        assert!(!u.is_online_unit());
        assert!(!u.may_poll(t0 + Duration::from_secs(1)));
    }
}
