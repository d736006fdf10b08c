//! End-to-end: a transparent DTU in front of a Modbus TCP slave (`modbus = "tcp"`). The slave
//! is pymodbus's Modbus server with its socket (MBAP) framer, bridged by
//! `tests/peers/rtu_bus.py --tcp`; the server is the real binary. Polled and decoded, written
//! (a register, a named command), an exception as 502, a raw frame in an MBAP header.

mod common;

use common::peers::Peer;
use common::{wait_for, Options, TestServer};
use serde_json::{json, Value};

const DTU: &str = "860000000001001";

const DATA: &str = r#"
[profiles.default]
modbus = "tcp"
slave = 17
response_timeout = "500ms"
registration = { pattern = "^[0-9]{15}$" }
heartbeat = { ascii = "www.usr.cn" }
[[profiles.default.polls]]
name = "block"
function = 3
start = 0
count = 2
every = "200ms"
[[profiles.default.points]]
name = "voltage"
address = 0
type = "u16"
scale = 0.1
unit = "V"
[[profiles.default.points]]
name = "status"
address = 1
type = "u16"
[[profiles.default.commands]]
name = "reset"
write = { address = 1, value = 0 }
"#;

fn value(server: &TestServer, point: &str) -> Option<f64> {
    server.device(DTU)?["values"][point]["value"].as_f64()
}

fn command(server: &TestServer, body: Value) -> (u16, Value) {
    server.post(&format!("/api/devices/{DTU}/commands"), &body)
}

#[test]
fn a_modbus_tcp_slave_behind_a_transparent_dtu() {
    let server = TestServer::start_with(Options {
        data_toml: DATA.into(),
        ..Options::default()
    });
    let mut dtu = Peer::start(
        "rtu_bus.py",
        &[
            "--tcp".into(),
            "127.0.0.1".into(),
            server.transparent.to_string(),
            DTU.into(),
            "17=0:2305,1:7".into(),
        ],
    );
    dtu.expect_line("registered");

    // Polled and decoded: the MBAP answers of pymodbus, matched by transaction and unit.
    wait_for("voltage and status decoded", || {
        (value(&server, "voltage") == Some(230.5) && value(&server, "status") == Some(7.0))
            .then_some(())
    });

    // A write reaches the slave, and the next polls read it back.
    let (status, body) = command(
        &server,
        json!({"type": "write_register", "address": 1, "value": 42}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"address": 1, "value": 42}));
    wait_for("the written status polled", || {
        (value(&server, "status") == Some(42.0)).then_some(())
    });
    let (status, body) = command(
        &server,
        json!({"type": "read", "function": 3, "start": 0, "count": 2}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["registers"], json!([2305, 42]));
    assert_eq!(body["result"]["values"]["voltage"]["value"], json!(230.5));

    // A named command is a write like any other.
    let (status, body) = command(&server, json!({"type": "named", "name": "reset"}));
    assert_eq!(status, 200, "{body}");
    wait_for("the reset status polled", || {
        (value(&server, "status") == Some(0.0)).then_some(())
    });

    // pymodbus's blocks hold 1000 registers: past them, exception 2 comes back as a 502.
    let (status, body) = command(
        &server,
        json!({"type": "read", "function": 3, "start": 995, "count": 10}),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        (body["exception"].as_u64(), body["function"].as_u64()),
        (Some(2), Some(3))
    );

    // A raw RTU frame goes as its PDU in an MBAP header; the answer is the slave's ADU.
    let (status, body) = command(&server, json!({"type": "raw", "hex": "11 03 00 00 00 01"}));
    assert_eq!(status, 200, "{body}");
    let hex = body["result"]["hex"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        hex.ends_with(" 00 00 00 05 11 03 02 09 01"),
        "an MBAP answer of unit 17: {hex}"
    );

    // The requests on the wire carried the MBAP header, not a CRC.
    let requests = server.packets_out(DTU, 200);
    assert!(
        requests
            .iter()
            .any(|h| h.ends_with(" 00 00 00 06 11 03 00 00 00 02")),
        "{requests:?}"
    );
}
