//! End-to-end: a transparent DTU in front of a DL/T 645-2007 meter (`meter = "dlt645"`). The
//! meter is the `dlt645` package's `MeterServerService` (PyPI), bridged by
//! `tests/peers/dlt645_meter.py`; the server is the real binary. The address is read with
//! `auto`, energy and voltage are stored with their formats' decimals, an identifier the
//! meter does not know comes back as an error answer: `poll.failed`, and a 502 for a command.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::peers::Peer;
use common::{wait_for, Options, TestServer};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const DTU: &str = "860000000002002";
/// The meter as printed on it; on the wire `04 03 02 01 24 20`.
const METER: &str = "202401020304";

const DATA: &str = r#"
[profiles.default]
meter = "dlt645"
address = "auto"
response_timeout = "1s"
retries = 0
registration = { pattern = "^[0-9]{15}$" }
heartbeat = { ascii = "www.usr.cn" }
[[profiles.default.points]]
name = "energy_total"
di = "00010000"
every = "300ms"
[[profiles.default.points]]
name = "voltage_a"
di = "02010100"
every = "300ms"
[[profiles.default.points]]
name = "missing"
di = "02990000"
format = "XX.XX"
unit = "x"
every = "400ms"
"#;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn value(server: &TestServer, point: &str) -> Option<(f64, String)> {
    let device = server.device(DTU)?;
    let v = &device["values"][point];
    Some((v["value"].as_f64()?, v["unit"].as_str()?.to_string()))
}

/// The stream of `poll.failed` events of the DTU.
fn stream(server: &TestServer) -> WebSocket<TcpStream> {
    let url = format!(
        "ws://127.0.0.1:{}/api/stream?events=poll.failed&device={DTU}",
        server.web
    );
    let mut req = url.into_client_request().expect("request");
    let token = server.token.clone().expect("admin token");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let tcp = TcpStream::connect(("127.0.0.1", server.web)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    tungstenite::client(req, tcp).expect("handshake").0
}

#[test]
fn a_dlt645_meter_behind_a_transparent_dtu() {
    let server = TestServer::start_with(Options {
        data_toml: DATA.into(),
        ..Options::default()
    });
    let mut ws = stream(&server);
    let mut meter = Peer::start(
        "dlt645_meter.py",
        &[
            "127.0.0.1".into(),
            server.transparent.to_string(),
            DTU.into(),
            METER.into(),
            "00010000=123456.78".into(),
            "02010100=220.1".into(),
        ],
    );
    meter.expect_line("registered");

    // Stored with the decimals of the standard's formats, the units of the table.
    wait_for("energy and voltage decoded", || {
        let (energy, kwh) = value(&server, "energy_total")?;
        let (volts, v) = value(&server, "voltage_a")?;
        (close(energy, 123_456.78) && close(volts, 220.1) && kwh == "kWh" && v == "V").then_some(())
    });
    // Stored rows come with the storage's next flush.
    let stored: Vec<f64> = wait_for("energy rows stored", || {
        let (_, rows) = server.get(&format!(
            "/api/devices/{DTU}/telemetry?point=energy_total&limit=5"
        ));
        let values: Vec<f64> = rows
            .as_array()?
            .iter()
            .filter_map(|r| r["value"].as_f64())
            .collect();
        (!values.is_empty()).then_some(values)
    });
    assert!(stored.iter().all(|v| close(*v, 123_456.78)), "{stored:?}");

    // The address was read once, with the broadcast address, and the reads went to it.
    let out = server.packets_out(DTU, 500);
    let discover = "FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16";
    assert_eq!(out.iter().filter(|h| *h == discover).count(), 1, "{out:?}");
    assert!(
        out.iter()
            .any(|h| h.starts_with("FE FE FE FE 68 04 03 02 01 24 20 68 11 04 33 33 34 33")),
        "a read of 00010000 addressed to the meter: {out:?}"
    );

    // The value moves when the meter's does.
    meter.say("set 02010100 231.4");
    meter.expect_line("set");
    wait_for("the new voltage", || {
        let (volts, _) = value(&server, "voltage_a")?;
        close(volts, 231.4).then_some(())
    });

    // A command reads one identifier: its value and its data.
    let (status, body) = server.post(
        &format!("/api/devices/{DTU}/commands"),
        &json!({"type": "dlt645_read", "di": "02010100"}),
    );
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["di"], "02010100");
    assert_eq!(result["data"], "14 23", "{result}");
    assert!(
        close(result["value"].as_f64().unwrap_or_default(), 231.4),
        "{result}"
    );
    assert_eq!(result["values"]["voltage_a"]["unit"], "V");

    // An identifier the meter does not have: its error answer, a 502 for a command...
    let (status, body) = server.post(
        &format!("/api/devices/{DTU}/commands"),
        &json!({"type": "dlt645_read", "di": "02990000"}),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["meter_error"], 2, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no such data"),
        "{body}"
    );

    // ... and poll.failed for the point's poll, while the others go on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed: Value = loop {
        assert!(Instant::now() < deadline, "no poll.failed event");
        match ws.read() {
            Ok(Message::Text(text)) => {
                let event: Value = serde_json::from_str(text.as_str()).expect("JSON event");
                if event["event"] == "poll.failed" {
                    break event;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("stream: {e}"),
        }
    };
    assert_eq!(failed["device_id"], DTU);
    assert_eq!(failed["data"]["poll"], "missing");
    let error = failed["data"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("meter error 0x02"), "{failed}");
    assert!(value(&server, "missing").is_none());
    assert!(server.online(DTU));
}
