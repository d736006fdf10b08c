//! End-to-end: DTUs whose link is more than bytes passed through — a transparent DTU that
//! puts its registration before every packet and glues heartbeats to its answers.

mod common;

use common::device::{FakeDevice, Proto};
use common::{wait_for, Options, TestServer, DATA_TOML};
use dtu_supervisor::protocol::points::{encode_registers, PointType, WordOrder};

const IMEI: &[u8] = b"866123456789012";
const HEARTBEAT: &[u8] = b"www.usr.cn";

/// The test profile's registration in `mode`.
fn data_toml_with_registration_mode(mode: &str) -> String {
    let pattern = "pattern = \"^[0-9]{15}$\"";
    assert!(DATA_TOML.contains(pattern));
    DATA_TOML.replace(pattern, &format!("{pattern}\nmode = \"{mode}\""))
}

/// Temperature -12.3 °C (i16 ×0.1 at 2000), humidity 56.25 % (f32 at 2010), pressure
/// 1.5 bar (u16 ×0.01 at 2300).
fn load_points(dev: &FakeDevice) {
    dev.set_registers(
        2000,
        &encode_registers(PointType::I16, WordOrder::Abcd, -123.0),
    );
    dev.set_registers(
        2010,
        &encode_registers(PointType::F32, WordOrder::Abcd, 56.25),
    );
    dev.set_registers(2300, &[150]);
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn transparent_prefix_mode_with_heartbeats_glued_to_the_answers() {
    let server = TestServer::start_with(Options {
        data_toml: data_toml_with_registration_mode("prefix"),
        ..Options::default()
    });
    let mut dev = FakeDevice::connect(
        server.transparent,
        Proto::Prefixed {
            prefix: IMEI,
            heartbeat: HEARTBEAT,
        },
    );
    load_points(&dev);
    // The first packet: the registration before a heartbeat. It registers the DTU, and the
    // heartbeat in it runs the heartbeat poll.
    dev.heartbeat();
    let id = "866123456789012";
    wait_for("the DTU online", || server.online(id).then_some(()));
    // Every answer comes as heartbeat + prefix + answer + heartbeat in one write.
    assert!(close_to(server.wait_value(id, "temperature"), -12.3));
    assert!(close_to(server.wait_value(id, "pressure"), 1.5));
    let (_, values) = server.get(&format!("/api/devices/{id}/values"));
    assert!(close_to(
        values["humidity"]["value"].as_f64().unwrap(),
        56.25
    ));
    // Requests go out without a prefix: the fake slave parsed them as plain RTU.
    assert!(dev.reads_at(2000) >= 1);
    // The history holds the registration, heartbeats and answers; the prefixes were taken
    // off the packets, not kept as stray bytes.
    let packets = wait_for("answers and heartbeats in the history", || {
        let (_, packets) = server.get(&format!("/api/devices/{id}/packets?limit=500"));
        let packets = packets.as_array()?.clone();
        let has = |kind: &str| {
            packets
                .iter()
                .any(|p| p["direction"] == "in" && p["kind"] == kind)
        };
        (has("modbus") && has("heartbeat") && has("register")).then_some(packets)
    });
    assert!(
        packets.iter().all(|p| p["kind"] != "unsolicited"),
        "{packets:?}"
    );
    assert!(packets
        .iter()
        .any(|p| p["kind"] == "register"
            && p["hex"] == "38 36 36 31 32 33 34 35 36 37 38 39 30 31 32"));

    // A packet whose prefix names another DTU: dropped, logged with its bytes in hex, the
    // connection lives and the retry's answer (with the right prefix) is taken.
    let other = b"866999999999999";
    *dev.state.next_prefix.lock().unwrap() = Some(other.to_vec());
    dev.set_registers(
        2000,
        &encode_registers(PointType::I16, WordOrder::Abcd, 41.0),
    );
    wait_for("the foreign packet logged", || {
        server
            .log_text()
            .contains("packet prefix names \"866999999999999\", not this DTU's \"866123456789012\"")
            .then_some(())
    });
    assert!(server.log_text().contains(&format!(
        "device {id}: dropped malformed frame (packet prefix names"
    )));
    assert!(server
        .log_text()
        .contains("38 36 36 39 39 39 39 39 39 39 39 39 39 39 39"));
    wait_for("the value the retry read", || {
        let (_, values) = server.get(&format!("/api/devices/{id}/values"));
        values["temperature"]["value"]
            .as_f64()
            .filter(|t| close_to(*t, 4.1))
    });
    assert!(server.online(id));
    assert!(!dev.is_closed());
}

#[test]
fn transparent_both_mode_registers_on_connect() {
    let server = TestServer::start_with(Options {
        data_toml: data_toml_with_registration_mode("both"),
        ..Options::default()
    });
    let mut dev = FakeDevice::connect(
        server.transparent,
        Proto::Prefixed {
            prefix: IMEI,
            heartbeat: HEARTBEAT,
        },
    );
    load_points(&dev);
    // The registration packet alone; after it, every packet starts with the registration.
    dev.send(IMEI);
    let id = "866123456789012";
    wait_for("the DTU online", || server.online(id).then_some(()));
    assert!(close_to(server.wait_value(id, "temperature"), -12.3));
    dev.heartbeat();
    assert!(close_to(server.wait_value(id, "pressure"), 1.5));
}
