//! End-to-end: passive polls. The DTU queries its meter itself and sends the answers up
//! unasked; the server never sends the poll, and stores what fits it. The meter is pymodbus
//! (`tests/peers/rtu_bus.py`), in front of it a framed and a transparent DTU.

mod common;

use common::peers::Peer;
use common::{wait_for, Options, TestServer};
use serde_json::Value;

const DATA: &str = r#"
[profiles.default]
registration = { pattern = "^[0-9]{4}$" }
heartbeat = { ascii = "www.usr.cn" }
[[profiles.default.polls]]
name = "auto"
function = 3
start = 0
count = 2
trigger = "passive"
[[profiles.default.points]]
name = "voltage"
address = 0
type = "u16"
scale = 0.1
unit = "V"
[[profiles.default.points]]
name = "current"
address = 1
type = "u16"
scale = 0.01
"#;

fn passive_answer_is_stored(transparent: bool) {
    let server = TestServer::start_with(Options {
        data_toml: DATA.into(),
        ..Options::default()
    });
    let (id, port) = if transparent {
        ("2002", server.transparent)
    } else {
        ("2001", server.framed)
    };
    let mut args: Vec<String> = Vec::new();
    if transparent {
        args.push("--transparent".into());
    }
    args.extend([
        "127.0.0.1".into(),
        port.to_string(),
        id.into(),
        "1=0:2301,1:512".into(),
    ]);
    let mut dtu = Peer::start("rtu_bus.py", &args);
    dtu.expect_line("registered");
    wait_for("the DTU online", || server.online(id).then_some(()));

    // The DTU's own query; its answer comes up unasked, between heartbeats.
    dtu.say("query 1 3 0 2");
    dtu.expect_line("queried");
    wait_for("the unasked answer decoded", || {
        let device = server.device(id)?;
        let voltage = device["values"]["voltage"]["value"].as_f64()?;
        let current = device["values"]["current"]["value"].as_f64()?;
        ((voltage - 230.1).abs() < 1e-9 && (current - 5.12).abs() < 1e-9).then_some(())
    });
    // Stored like any poll's values.
    wait_for("the values stored", || {
        let (_, rows) = server.get(&format!("/api/devices/{id}/telemetry?point=voltage"));
        rows.as_array().is_some_and(|r| !r.is_empty()).then_some(())
    });
    // The server never asked: no request went out to the DTU.
    let (_, packets) = server.get(&format!("/api/devices/{id}/packets?limit=1000"));
    let sent: Vec<&Value> = packets
        .as_array()
        .expect("packets")
        .iter()
        .filter(|p| p["direction"] == "out")
        .collect();
    assert!(sent.is_empty(), "{sent:?}");
    // An answer of another slave fits no passive poll: not stored, the DTU stays online.
    dtu.say("query 2 3 0 2");
    dtu.expect_line("no answer");
    assert!(server.online(id));
}

#[test]
fn a_framed_dtus_unasked_answer_is_stored() {
    passive_answer_is_stored(false);
}

#[test]
fn a_transparent_dtus_unasked_answer_is_cut_out_and_stored() {
    passive_answer_is_stored(true);
}
