//! Pure byte-level code: how DTUs frame what they send on their TCP link, Modbus, and how
//! register values become points. Nothing here knows actix, settings or sockets, so every
//! function can be tested, fuzzed and reused: the simulator speaks the device side of the
//! same codecs.
//!
//! A new DTU protocol is one file here exporting a [`LinkProtocol`] (its server-side codec,
//! its simulator side) and one line in [`PROTOCOLS`]. Settings, listeners, the supervisor,
//! the simulator and the API find it there.

pub mod ddp;
pub mod dlt645;
pub mod framed;
pub mod hex;
pub mod link;
pub mod modbus;
pub mod points;
pub mod serial;
pub mod transparent;
pub mod ttms;

#[cfg(test)]
pub(crate) mod test_util;

use std::fmt;
use std::str::FromStr;

use link::{LinkProtocol, Role};

/// Every link protocol a listener can speak, one line each.
#[rustfmt::skip]
pub const PROTOCOLS: &[&LinkProtocol] = &[
    &framed::PROTOCOL,
    &transparent::PROTOCOL,
    &ddp::PROTOCOL,
    &ttms::PROTOCOL,
];

/// A listener's link protocol: an entry of [`PROTOCOLS`], found by its name.
#[derive(Clone, Copy)]
pub struct Protocol(&'static LinkProtocol);

impl Protocol {
    /// The protocol of a registry entry.
    pub const fn of(entry: &'static LinkProtocol) -> Protocol {
        Protocol(entry)
    }

    /// The protocol named `name`, if there is one.
    pub fn by_name(name: &str) -> Option<Protocol> {
        PROTOCOLS
            .iter()
            .find(|p| p.name == name)
            .map(|p| Protocol(p))
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    /// What its connections do once registered.
    pub fn role(self) -> Role {
        self.0.role
    }

    /// Whether its devices are polled, and so need a profile.
    pub fn needs_profile(self) -> bool {
        matches!(self.0.role, Role::Polled { .. })
    }

    /// Whether the profile must say how its devices register.
    pub fn needs_registration(self) -> bool {
        self.0.needs_registration
    }

    /// Whether its devices are `$TTMS` relay terminals (they take no commands).
    pub fn is_relay(self) -> bool {
        matches!(self.0.role, Role::Relay)
    }

    /// The names of every protocol, for error messages.
    pub fn names() -> String {
        let names: Vec<&str> = PROTOCOLS.iter().map(|p| p.name).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }
}

impl PartialEq for Protocol {
    fn eq(&self, other: &Protocol) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Protocol {}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::by_name(s)
            .ok_or_else(|| format!("unknown protocol {s:?} (expected {})", Protocol::names()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_name() {
        let framed: Protocol = "framed".parse().unwrap();
        assert_eq!(framed.as_str(), "framed");
        assert!(framed.needs_profile() && !framed.needs_registration());
        let transparent = Protocol::by_name("transparent").unwrap();
        assert!(transparent.needs_profile() && transparent.needs_registration());
        let ttms = Protocol::by_name("ttms").unwrap();
        assert!(ttms.is_relay() && !ttms.needs_profile());
        assert_ne!(framed, transparent);
        // The message names every protocol of the list, the last after "or".
        let err = "modbus".parse::<Protocol>().unwrap_err();
        let names: Vec<&str> = PROTOCOLS.iter().map(|p| p.name).collect();
        let (last, rest) = names.split_last().unwrap();
        assert_eq!(
            err,
            format!(
                "unknown protocol \"modbus\" (expected {} or {last})",
                rest.join(", ")
            )
        );
        assert!(
            err.contains("framed, ") && err.ends_with(" or ttms)"),
            "{err}"
        );
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in PROTOCOLS.iter().enumerate() {
            for b in &PROTOCOLS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }
}
