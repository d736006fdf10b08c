//! End-to-end with `dtu-sim --meter`: a bus of two simulated DL/T 645 meters behind a framed
//! DTU, each a unit addressed by its meter address; and a simulated Modbus TCP slave behind a
//! transparent DTU. The peers of `tests/dlt645.rs` and `tests/modbus_tcp.rs` check the
//! reading of the standards; these check the simulator and several meters on one bus.

mod common;

use std::process::{Child, Command, Stdio};

use common::{wait_for, Options, TestServer};
use serde_json::json;

/// A `dtu-sim` process, killed on drop.
struct Sim(Child);

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let child = Command::new(env!("CARGO_BIN_EXE_dtu-sim"))
            .args(args)
            .args(["--heartbeat", "1s", "--stats-every", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dtu-sim");
        Sim(child)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const METERS: &str = r#"
[profiles.meter645]
meter = "dlt645"
[[profiles.meter645.points]]
name = "voltage_a"
di = "02010100"
every = "200ms"
[[profiles.meter645.points]]
name = "energy"
di = "00010000"
every = "200ms"

[profiles.default]
response_timeout = "500ms"
retries = 0
# The harness's transparent listener uses this profile too.
registration = { pattern = "^[0-9]{15}$" }
[[profiles.default.units]]
slave = 1
profile = "meter645"
address = "001001000001"
[[profiles.default.units]]
slave = 7
profile = "meter645"
address = "001001000007"
"#;

fn value(server: &TestServer, id: &str, point: &str) -> Option<f64> {
    server.device(id)?["values"][point]["value"].as_f64()
}

#[test]
fn a_bus_of_simulated_dlt645_meters_is_units_by_meter_address() {
    let server = TestServer::start_with(Options {
        data_toml: METERS.into(),
        ..Options::default()
    });
    let framed = format!("127.0.0.1:{}", server.framed);
    let _sim = Sim::start(&[
        "--server",
        &framed,
        "--first-id",
        "1001",
        "--meter",
        "dlt645",
        "--units",
        "1,7",
    ]);
    wait_for("both meters read", || {
        let volts = [
            value(&server, "1001.1", "voltage_a")?,
            value(&server, "1001.7", "voltage_a")?,
        ];
        let energy = value(&server, "1001.7", "energy")?;
        (volts.iter().all(|v| (214.0..=226.0).contains(v)) && energy >= 1000.0).then_some(())
    });
    let (status, body) = server.post(
        "/api/devices/1001.7/commands",
        &json!({"type": "dlt645_read", "di": "02800002"}),
    );
    assert_eq!(status, 200, "{body}");
    let hz = body["result"]["value"].as_f64().unwrap_or_default();
    assert!((49.9..=50.1).contains(&hz), "{body}");
    assert_eq!(body["result"]["unit"], "Hz");
    // The simulator knows only the table's identifiers: anything else is its error answer.
    let (status, body) = server.post(
        "/api/devices/1001.1/commands",
        &json!({"type": "dlt645_read", "di": "02050000"}),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["meter_error"], 2);
    // Modbus commands do not go to a meter.
    let (status, _) = server.post(
        "/api/devices/1001.1/commands",
        &json!({"type": "read", "function": 3, "start": 0, "count": 1}),
    );
    assert_eq!(status, 400);
}

const TCP: &str = r#"
[profiles.default]
modbus = "tcp"
registration = { pattern = "^[0-9]{15}$" }
heartbeat = { ascii = "www.usr.cn" }
[[profiles.default.polls]]
name = "block"
function = 4
start = 100
count = 2
every = "200ms"
[[profiles.default.points]]
name = "level"
address = 101
type = "u16"
"#;

#[test]
fn a_simulated_modbus_tcp_slave_behind_a_transparent_dtu() {
    let server = TestServer::start_with(Options {
        data_toml: TCP.into(),
        ..Options::default()
    });
    let transparent = format!("127.0.0.1:{}", server.transparent);
    let _sim = Sim::start(&[
        "--server",
        &transparent,
        "--protocol",
        "transparent",
        "--meter",
        "modbus-tcp",
        "--set",
        "101=4321",
    ]);
    let id = "860000000001001";
    wait_for("the level decoded", || {
        (value(&server, id, "level")? == 4321.0).then_some(())
    });
    let (status, body) = server.post(
        &format!("/api/devices/{id}/commands"),
        &json!({"type": "write_registers", "address": 101, "values": [7, 8]}),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the written level polled", || {
        (value(&server, id, "level")? == 7.0).then_some(())
    });
}
