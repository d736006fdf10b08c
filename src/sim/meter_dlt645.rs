//! The DL/T 645-2007 meters behind a simulated DTU (`dtu-sim --meter dlt645`): each slave of
//! the bus is a meter at [`address`]`(device, slave)`; it answers the read of its address
//! (broadcast, when it is the only meter answering) and reads of the identifiers of
//! [`formats::known`] with values that change over time ([`reading`]) or were fixed
//! ([`SimHandle::set_reading`](super::SimHandle::set_reading)); any other identifier gets
//! the error answer "no such data" (D1, 02), another control code "other error". Frames to
//! another meter, from a meter, or with a bad checksum get no answer.

use chrono::{Datelike, TimeZone, Timelike, Utc};

use crate::protocol::dlt645::{self, formats, Address, Di, Frame};

use super::{Outcome, Shared};

/// The address of the meter at `slave` of device `device`: the device number's last six
/// digits, then the slave's (device 1001, slave 1: `001001000001`).
pub fn address(device: u64, slave: u8) -> Address {
    format!("{:06}{:06}", device % 1_000_000, slave)
        .parse()
        .unwrap_or(dlt645::BROADCAST)
}

/// What identifier `di` of the meter seeded `seed` reads at `unix_secs`, if the table knows
/// it: energy that grows 10 kWh an hour, voltages around 220 V, currents around 5 A, powers,
/// a power factor near 0.95 and a frequency near 50 Hz that drift slowly, and the date and
/// time of the wall clock (UTC).
pub fn reading(seed: u64, di: Di, unix_secs: f64) -> Option<f64> {
    formats::known(di)?;
    let [di3, di2, di1, _] = di.bytes();
    let wave = |period: f64, phase: f64| {
        (std::f64::consts::TAU * unix_secs / period + phase + (seed % 360) as f64 * 0.0174).sin()
    };
    let phase = f64::from(di1);
    Some(match (di3, di2) {
        (0x00, kind) => {
            let total = 1000.0 + (seed % 100) as f64 * 10.0 + unix_secs / 360.0 % 900_000.0;
            // Reverse energy is a tenth of forward; a tariff a quarter of the total.
            let kind = if kind == 0x02 { 0.1 } else { 1.0 };
            let tariff = if di1 == 0 { 1.0 } else { 0.25 };
            total * kind * tariff
        }
        (0x02, 0x01) => 220.0 + 5.0 * wave(300.0, phase),
        (0x02, 0x02) => 5.0 + 2.0 * wave(240.0, phase),
        (0x02, 0x03) => 1.1 + 0.4 * wave(240.0, phase),
        (0x02, 0x04) => 0.3 + 0.1 * wave(200.0, phase),
        (0x02, 0x06) => 0.95 + 0.03 * wave(400.0, phase),
        (0x02, 0x80) => 50.0 + 0.05 * wave(120.0, 0.0),
        (0x04, _) => {
            let now = Utc
                .timestamp_opt(unix_secs as i64, 0)
                .single()
                .unwrap_or_default();
            let two = |n: u32| f64::from(n % 100);
            if di.0 == 0x0400_0101 {
                let year = u32::try_from(now.year()).unwrap_or_default();
                ((two(year) * 100.0 + two(now.month())) * 100.0 + two(now.day())) * 100.0
                    + two(now.weekday().num_days_from_sunday())
            } else {
                (two(now.hour()) * 100.0 + two(now.minute())) * 100.0 + two(now.second())
            }
        }
        _ => return None,
    })
}

impl Shared {
    /// One DL/T 645 frame (preamble included) the way the meters on the bus would take it.
    pub(super) fn execute_dlt645(&self, bytes: &[u8], now: f64) -> Outcome {
        let Ok(frame) = Frame::decode(bytes) else {
            return Outcome::Malformed;
        };
        if frame.control & dlt645::FROM_METER != 0 {
            return Outcome::Ignored;
        }
        let answering: Vec<(u8, Address)> = {
            let bus = self.bus();
            self.slaves
                .iter()
                .filter(|s| !bus.silent.contains(s))
                .map(|s| (*s, address(self.id, *s)))
                .collect()
        };
        let reply = |address: Address, control: u8, data: Vec<u8>| {
            Frame {
                address,
                control,
                data,
            }
            .encode(dlt645::MAX_PREAMBLE)
        };
        if frame.control == dlt645::READ_ADDRESS {
            // Only the one meter on the bus can answer a broadcast.
            return match answering.as_slice() {
                [(_, own)] if frame.address == dlt645::BROADCAST => Outcome::Reply(reply(
                    *own,
                    dlt645::READ_ADDRESS | dlt645::FROM_METER,
                    own.0.to_vec(),
                )),
                _ => Outcome::Ignored,
            };
        }
        let Some((slave, own)) = answering.into_iter().find(|(_, a)| *a == frame.address) else {
            return Outcome::Ignored;
        };
        let error = |code: u8| {
            Outcome::Exception(reply(
                own,
                frame.control | dlt645::FROM_METER | dlt645::ERROR,
                vec![code],
            ))
        };
        let di = match (frame.control, frame.data.as_slice()) {
            (dlt645::READ_DATA, [a, b, c, d]) => Di(u32::from_le_bytes([*a, *b, *c, *d])),
            // Writes and the rest: "other error".
            _ => return error(0x01),
        };
        let fixed = self.bus().readings.get(&(slave, di.0)).copied();
        let value = fixed.or_else(|| reading(self.seed(slave), di, now));
        match (formats::known(di), value) {
            (Some(known), Some(value)) => {
                let mut data = di.wire().to_vec();
                data.extend_from_slice(&known.format.encode(value));
                Outcome::Reply(reply(own, dlt645::READ_DATA | dlt645::FROM_METER, data))
            }
            _ => error(0x02),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::dlt645::{parse_answer, Answer, Dlt645Error, Request};
    use crate::protocol::serial::Framing;
    use tokio::sync::watch;

    fn meters(slaves: Vec<u8>) -> Shared {
        Shared::new(1001, slaves, watch::channel(false).0).with_framing(Framing::Dlt645)
    }

    fn value(shared: &Shared, slave: u8, di: u32, now: f64) -> Result<f64, Dlt645Error> {
        let meter = address(1001, slave);
        let request = Request::Read(Di(di));
        let bytes = match shared.execute_dlt645(&request.encode(&meter), now) {
            Outcome::Reply(b) | Outcome::Exception(b) => b,
            other => panic!("{other:?}"),
        };
        match parse_answer(request, Some(&meter), &bytes)? {
            Answer::Data { di, data, .. } => formats::known(di)
                .ok_or(Dlt645Error::Meter { code: 0xFF })?
                .format
                .decode(&data)
                .map(|r| r.value)
                .map_err(|reason| Dlt645Error::BadValue { di, reason }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_meter_tells_its_address_and_reads_values_that_move() {
        let shared = meters(vec![1]);
        let discover = Request::ReadAddress.encode(&dlt645::BROADCAST);
        let Outcome::Reply(answer) = shared.execute_dlt645(&discover, 0.0) else {
            panic!("no answer");
        };
        assert_eq!(
            parse_answer(Request::ReadAddress, None, &answer),
            Ok(Answer::Address("001001000001".parse().expect("address")))
        );
        let energy = |t| value(&shared, 1, 0x0001_0000, t).expect("energy");
        assert!(energy(3600.0) > energy(0.0));
        let volts = value(&shared, 1, 0x0201_0100, 100.0).expect("voltage");
        assert!((214.0..=226.0).contains(&volts), "{volts}");
        assert_eq!(
            value(&shared, 1, 0x0299_0000, 0.0),
            Err(Dlt645Error::Meter { code: 2 })
        );
        // 2025-11-02 (a Sunday) 13:45:30 UTC.
        let t = 1_762_091_130.0;
        assert_eq!(value(&shared, 1, 0x0400_0101, t), Ok(25_110_200.0));
        assert_eq!(value(&shared, 1, 0x0400_0102, t), Ok(134_530.0));
    }

    #[test]
    fn meters_of_a_bus_answer_to_their_own_address_only() {
        let shared = meters(vec![1, 7]);
        let handle = super::super::SimHandle {
            shared: std::sync::Arc::new(shared),
        };
        handle.set_reading_of(7, Di(0x0201_0100), 231.4);
        assert_eq!(value(&handle.shared, 7, 0x0201_0100, 0.0), Ok(231.4));
        assert_ne!(value(&handle.shared, 1, 0x0201_0100, 0.0), Ok(231.4));
        // Two meters: nobody answers the broadcast.
        let discover = Request::ReadAddress.encode(&dlt645::BROADCAST);
        assert_eq!(
            handle.shared.execute_dlt645(&discover, 0.0),
            Outcome::Ignored
        );
        let elsewhere = Request::Read(Di(0x0201_0100)).encode(&address(1001, 2));
        assert_eq!(
            handle.shared.execute_dlt645(&elsewhere, 0.0),
            Outcome::Ignored
        );
        handle.set_silent(7, true);
        let Outcome::Reply(_) = handle.shared.execute_dlt645(&discover, 0.0) else {
            panic!("the one meter left answers");
        };
        assert_eq!(
            handle.shared.execute_dlt645(b"\x68\x01", 0.0),
            Outcome::Malformed
        );
    }
}
