//! End-to-end: DTUs whose link is more than bytes passed through — a transparent DTU that
//! puts its registration before every packet and glues heartbeats to its answers, and a DDP
//! DTU (its frames built from the vendor's document, not by the server's codec).

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

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// A server whose transparent profile registers in `mode`, and a DTU connected to it (not
/// registered yet) that puts its registration before every packet.
fn prefixed_dtu(mode: &str) -> (TestServer, FakeDevice) {
    let server = TestServer::start_with(Options {
        data_toml: data_toml_with_registration_mode(mode),
        ..Options::default()
    });
    let dev = FakeDevice::connect(
        server.transparent,
        Proto::Prefixed {
            prefix: IMEI,
            heartbeat: HEARTBEAT,
        },
    );
    dev.load_test_points();
    (server, dev)
}

#[test]
fn transparent_prefix_mode_with_heartbeats_glued_to_the_answers() {
    let (server, mut dev) = prefixed_dtu("prefix");
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
    let (server, mut dev) = prefixed_dtu("both");
    // The registration packet alone; after it, every packet starts with the registration.
    dev.send(IMEI);
    let id = "866123456789012";
    wait_for("the DTU online", || server.online(id).then_some(()));
    assert!(close_to(server.wait_value(id, "temperature"), -12.3));
    dev.heartbeat();
    assert!(close_to(server.wait_value(id, "pressure"), 1.5));
}

/// The register packet of a DDP DTU firmware (id 13912345678, mobile IP 10.102.154.0, port
/// 4002): the bytes the H7710S-DDP document describes, as that firmware sends them.
const DDP_REGISTER: &[u8] = &[
    0x7B, 0x01, 0x00, 0x16, b'1', b'3', b'9', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', 0x0A,
    0x66, 0x9A, 0x00, 0x0F, 0xA2, 0x7B,
];
/// 81 (registered), length 0x10, the id echoed: the document's register answer.
const DDP_REGISTERED: &[u8] = &[
    0x7B, 0x81, 0x00, 0x10, b'1', b'3', b'9', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', 0x7B,
];

fn ddp_server() -> TestServer {
    TestServer::start_with(Options {
        extra_server_toml: "\n[[listeners]]\nname = \"hongdian\"\nbind = \"127.0.0.1:0\"\nprotocol = \"ddp\"\nprofile = \"default\"\n".into(),
        ..Options::default()
    })
}

#[test]
fn ddp_dtu_registers_is_polled_through_89_and_09_frames_and_logs_out() {
    let server = ddp_server();
    let port = server.listener_port("hongdian", "ddp");
    let mut dev = FakeDevice::connect(
        port,
        Proto::Ddp {
            register: DDP_REGISTER,
        },
    );
    dev.load_test_points();
    dev.send(DDP_REGISTER);
    let id = "13912345678";
    wait_for("the DTU online", || server.online(id).then_some(()));
    let device = server.device(id).unwrap();
    assert_eq!(device["protocol"], "ddp");
    // Registered: 81 with the same id, first of all the server sent.
    let first = wait_for("the 81", || {
        dev.state.frames.lock().unwrap().first().cloned()
    });
    assert_eq!(first, DDP_REGISTERED);
    // Polled through 89 frames, answered in 09 frames, decoded.
    assert!(close_to(server.wait_value(id, "temperature"), -12.3));
    let (_, values) = server.get(&format!("/api/devices/{id}/values"));
    assert!(close_to(
        values["humidity"]["value"].as_f64().unwrap(),
        56.25
    ));
    let block_poll = {
        // 01 03 07D0 0028 + CRC: the test profile's block poll, in an 89 frame of 16 + 8.
        let mut f = vec![0x7B, 0x89, 0x00, 0x18];
        f.extend_from_slice(b"13912345678");
        f.extend_from_slice(&[0x01, 0x03, 0x07, 0xD0, 0x00, 0x28, 0x45, 0x59, 0x7B]);
        f
    };
    assert!(dev.state.frames.lock().unwrap().contains(&block_poll));
    // The register again is the heartbeat: answered 81 again, and it runs the heartbeat poll.
    dev.heartbeat();
    assert!(close_to(server.wait_value(id, "pressure"), 1.5));
    wait_for("a second 81", || {
        (dev.state
            .register_acks
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2)
            .then_some(())
    });
    assert!(server.online(id));
    // Logout: answered 82, the connection ends, the DTU goes offline as closed.
    let mut logout = vec![0x7B, 0x02, 0x00, 0x10];
    logout.extend_from_slice(b"13912345678");
    logout.push(0x7B);
    dev.send(&logout);
    dev.wait_closed("the server to close after the logout");
    let last = dev.state.frames.lock().unwrap().last().cloned().unwrap();
    let mut logged_out = vec![0x7B, 0x82, 0x00, 0x10];
    logged_out.extend_from_slice(b"13912345678");
    logged_out.push(0x7B);
    assert_eq!(last, logged_out);
    wait_for("the DTU offline", || (!server.online(id)).then_some(()));
    wait_for("the disconnect (closed) in the history", || {
        let (_, events) = server.get(&format!("/api/events?device={id}"));
        events
            .as_array()?
            .iter()
            .any(|e| e["event"] == "disconnect" && e["detail"] == "closed")
            .then_some(())
    });
    assert!(server
        .log_text()
        .contains("device 13912345678: logged out; closing"));
}
