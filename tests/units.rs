//! End-to-end: several Modbus slaves behind one DTU (an RS-485 bus), each a device of its own.
//! The bus is pymodbus's Modbus server (`tests/peers/rtu_bus.py`), the DTU a framed one in
//! front of it, the server the real binary.

mod common;

use common::peers::Peer;
use common::{wait_for, Options, TestServer};
use serde_json::{json, Value};

const DATA: &str = r#"
[profiles.meter]
[[profiles.meter.polls]]
name = "block"
function = 3
start = 0
count = 2
every = "200ms"
[[profiles.meter.points]]
name = "voltage"
address = 0
type = "u16"
scale = 0.1
unit = "V"

[profiles.plc]
[[profiles.plc.polls]]
name = "level"
function = 3
start = 0
count = 1
every = "200ms"
[[profiles.plc.points]]
name = "level"
address = 0
type = "u16"

[profiles.default]
response_timeout = "300ms"
retries = 0
max_failed = 2
# The harness's transparent listener uses this profile too.
registration = { pattern = "^[0-9]{15}$" }
[[profiles.default.units]]
slave = 1
profile = "meter"
[[profiles.default.units]]
slave = 7
profile = "plc"
"#;

fn device(server: &TestServer, id: &str) -> Value {
    server
        .device(id)
        .unwrap_or_else(|| panic!("device {id} is listed"))
}

fn value(server: &TestServer, id: &str, point: &str) -> Option<f64> {
    device(server, id)["values"][point]["value"].as_f64()
}

fn read_register(server: &TestServer, id: &str, address: u16) -> Value {
    let (status, body) = server.post(
        &format!("/api/devices/{id}/commands"),
        &json!({"type": "read", "function": 3, "start": address, "count": 1}),
    );
    assert_eq!(status, 200, "{body}");
    body["result"]["registers"][0].clone()
}

#[test]
fn units_of_a_bus_are_devices_of_their_own() {
    let server = TestServer::start_with(Options {
        data_toml: DATA.into(),
        ..Options::default()
    });
    let mut bus = Peer::start(
        "rtu_bus.py",
        &[
            "127.0.0.1".into(),
            server.framed.to_string(),
            "1001".into(),
            "1=0:230".into(),
            "7=0:5".into(),
        ],
    );
    bus.expect_line("registered");

    // The DTU and its two units, each unit with its DTU and slave address.
    wait_for("both units online", || {
        (server.online("1001.1") && server.online("1001.7")).then_some(())
    });
    let dtu = device(&server, "1001");
    assert!(
        dtu.get("parent").is_none() && dtu.get("unit").is_none(),
        "{dtu}"
    );
    let (_, list) = server.get("/api/devices");
    let units: Vec<(String, String, u64)> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter(|d| d.get("parent").is_some())
        .map(|d| {
            (
                d["id"].as_str().unwrap_or_default().to_string(),
                d["parent"].as_str().unwrap_or_default().to_string(),
                d["unit"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        units,
        vec![
            ("1001.1".into(), "1001".into(), 1),
            ("1001.7".into(), "1001".into(), 7)
        ]
    );
    assert_eq!(device(&server, "1001.7")["profile"], "plc");

    // Values decoded per unit, each with its own profile.
    wait_for("unit values", || {
        (value(&server, "1001.1", "voltage") == Some(23.0)
            && value(&server, "1001.7", "level") == Some(5.0))
        .then_some(())
    });
    assert!(device(&server, "1001.1")["values"].get("level").is_none());

    // A write to 1001.7 reaches slave 7 only.
    let (status, body) = server.post(
        "/api/devices/1001.7/commands",
        &json!({"type": "write_register", "address": 100, "value": 42}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(read_register(&server, "1001.7", 100), 42);
    assert_eq!(read_register(&server, "1001.1", 100), 0);
    // The DTU itself has no slave of its own: only raw frames go to it directly.
    let (status, _) = server.post(
        "/api/devices/1001/commands",
        &json!({"type": "read", "function": 3, "start": 0, "count": 1}),
    );
    assert_eq!(status, 400);

    // Unit 7 stops answering: offline for no response, while unit 1 goes on being polled.
    bus.say("mute 7");
    bus.expect_line("muted 7");
    wait_for("unit 7 offline", || {
        (!server.online("1001.7")).then_some(())
    });
    wait_for("the no_response event stored", || {
        let (_, events) = server.get("/api/events?device=1001.7");
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["event"] == "no_response"))
            .then_some(())
    });
    assert!(server.online("1001.1") && server.online("1001"));
    let before = device(&server, "1001.1")["values"]["voltage"]["at"].clone();
    wait_for("unit 1 still polled", || {
        (device(&server, "1001.1")["values"]["voltage"]["at"] != before).then_some(())
    });
    // A command to the silent unit fails as a device that does not answer does.
    let (status, _) = server.post(
        "/api/devices/1001.7/commands",
        &json!({"type": "read", "function": 3, "start": 0, "count": 1, "queue_if_offline": false}),
    );
    assert_eq!(status, 409, "offline: refused, not sent");

    // Back on the bus: online again.
    bus.say("unmute 7");
    bus.expect_line("unmuted 7");
    wait_for("unit 7 online again", || {
        server.online("1001.7").then_some(())
    });
}
