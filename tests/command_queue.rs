//! End-to-end: `"queue_if_offline": true` stores a command for an offline device and sends it
//! when the device next registers — once, in order, unless it expired first — across server
//! restarts and reconnects.

mod common;

use common::device::FakeDevice;
use common::{wait_for, Options, TestServer, DATA_TOML};
use dtu_supervisor::protocol::modbus::Request;
use serde_json::{json, Value};

fn command(server: &TestServer, id: &str, body: Value) -> (u16, Value) {
    server.post(&format!("/api/devices/{id}/commands"), &body)
}

fn record(server: &TestServer, cid: &str) -> Value {
    let (status, body) = server.get(&format!("/api/commands/{cid}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn status_of(server: &TestServer, cid: &str) -> String {
    record(server, cid)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until command `cid` has status `want`.
fn wait_status(server: &TestServer, cid: &str, want: &str) -> Value {
    wait_for(&format!("command {cid} to be {want}"), || {
        let r = record(server, cid);
        (r["status"] == want).then_some(r)
    })
}

/// Queues a command for `id` and returns its id.
fn queue(server: &TestServer, id: &str, mut body: Value) -> String {
    body["queue_if_offline"] = json!(true);
    let (status, answer) = command(server, id, body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    let cid = answer["id"].as_str().expect("command id").to_string();
    assert_eq!(status_of(server, &cid), "queued", "durable before 202");
    cid
}

/// Registers device `number` once and lets it go offline, so the server knows it.
fn known_offline(server: &TestServer, number: u32) {
    let dev = FakeDevice::framed(server.framed, number);
    let id = number.to_string();
    wait_for("device online", || server.online(&id).then_some(()));
    dev.close();
    wait_for("device offline", || (!server.online(&id)).then_some(()));
}

fn online(server: &TestServer, number: u32) -> FakeDevice {
    let dev = FakeDevice::framed(server.framed, number);
    wait_for("device online", || {
        server.online(&number.to_string()).then_some(())
    });
    dev
}

/// Register writes the device has received, in order: (address, value).
fn writes(dev: &FakeDevice) -> Vec<(u16, u16)> {
    dev.requests()
        .into_iter()
        .flat_map(|r| match r {
            Request::WriteSingleRegister { address, value } => vec![(address, value)],
            Request::WriteMultipleRegisters { address, values } => values
                .iter()
                .enumerate()
                .map(|(i, v)| (address + i as u16, *v))
                .collect(),
            _ => vec![],
        })
        .collect()
}

/// A profile whose slave may take its time (the test holds answers back) without retries.
fn patient_profile() -> Options {
    Options {
        data_toml: DATA_TOML
            .replace("response_timeout = \"400ms\"", "response_timeout = \"20s\"")
            .replace("retries = 1", "retries = 0"),
        ..Options::default()
    }
}

#[test]
fn queued_command_goes_out_when_the_device_registers() {
    let server = TestServer::start_with(patient_profile());
    known_offline(&server, 7201);

    // Without the flag an offline device is refused.
    let (status, body) = command(
        &server,
        "7201",
        json!({"type":"write_register","address":2100,"value":7}),
    );
    assert_eq!(status, 409, "{body}");
    // Never-seen devices cannot be queued for.
    let (status, body) = command(
        &server,
        "7299",
        json!({"type":"write_register","address":2100,"value":7,"queue_if_offline":true}),
    );
    assert_eq!(status, 404, "{body}");

    let cid = queue(
        &server,
        "7201",
        json!({"type":"write_register","address":2100,"value":7}),
    );
    let queued = record(&server, &cid);
    assert_eq!(queued["device_id"], "7201");
    assert!(queued["requested_by"].as_str().is_some(), "{queued}");
    assert_eq!(queued["request"]["value"], 7);

    // The device registers but holds its answers: the command is claimed (`sent`) and waits.
    let dev = FakeDevice::connect(server.framed, common::device::Proto::Framed);
    dev.hold(true);
    let mut dev = dev;
    dev.send(&7201u32.to_be_bytes());
    wait_status(&server, &cid, "sent");
    dev.hold(false);
    let done = wait_status(&server, &cid, "ok");
    assert_eq!(done["result"], json!({"address":2100,"value":7}));
    assert_eq!(dev.register(2100), 7);
    assert_eq!(writes(&dev), [(2100, 7)]);
}

#[test]
fn queued_commands_go_out_in_order() {
    let server = TestServer::start();
    known_offline(&server, 7202);
    let bodies = [
        json!({"type":"write_register","address":2100,"value":1}),
        json!({"type":"write_registers","address":2100,"values":[2,3]}),
        json!({"type":"write_register","address":2101,"value":4}),
        json!({"type":"write_register","address":2100,"value":5}),
    ];
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| queue(&server, "7202", b.clone()))
        .collect();
    let dev = online(&server, 7202);
    for cid in &ids {
        wait_status(&server, cid, "ok");
    }
    assert_eq!(
        writes(&dev),
        [(2100, 1), (2100, 2), (2101, 3), (2101, 4), (2100, 5)]
    );
    assert_eq!((dev.register(2100), dev.register(2101)), (5, 4));
}

#[test]
fn expired_command_is_never_sent() {
    let server = TestServer::start();
    known_offline(&server, 7203);
    // ttl_s bounds, and ttl_s only with the flag.
    for bad in [
        json!({"type":"write_register","address":2100,"value":1,"queue_if_offline":true,"ttl_s":0}),
        json!({"type":"write_register","address":2100,"value":1,"queue_if_offline":true,"ttl_s":2_592_001}),
        json!({"type":"write_register","address":2100,"value":1,"ttl_s":60}),
    ] {
        let (status, body) = command(&server, "7203", bad);
        assert_eq!(status, 400, "{body}");
    }
    let short = queue(
        &server,
        "7203",
        json!({"type":"write_register","address":2105,"value":9,"ttl_s":1}),
    );
    // The sweep expires it although the device never comes back.
    let expired = wait_status(&server, &short, "expired");
    assert!(expired["error"].as_str().is_some(), "{expired}");

    let later = queue(
        &server,
        "7203",
        json!({"type":"write_register","address":2106,"value":1}),
    );
    let dev = online(&server, 7203);
    wait_status(&server, &later, "ok");
    assert_eq!(writes(&dev), [(2106, 1)], "the expired command was sent");
    assert_eq!(status_of(&server, &short), "expired");
}

#[test]
fn queued_commands_survive_a_restart() {
    let mut server = TestServer::start();
    known_offline(&server, 7204);
    let a = queue(
        &server,
        "7204",
        json!({"type":"write_register","address":2100,"value":11}),
    );
    let b = queue(
        &server,
        "7204",
        json!({"type":"write_register","address":2100,"value":12}),
    );
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(status_of(&server, &a), "queued");
    let dev = online(&server, 7204);
    wait_status(&server, &a, "ok");
    wait_status(&server, &b, "ok");
    assert_eq!(writes(&dev), [(2100, 11), (2100, 12)]);
}

#[test]
fn online_device_with_the_flag_is_commanded_at_once() {
    let server = TestServer::start();
    let dev = online(&server, 7205);
    let (status, body) = command(
        &server,
        "7205",
        json!({"type":"write_register","address":2100,"value":3,"queue_if_offline":true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(dev.register(2100), 3);
}

#[test]
fn no_duplicates_when_the_device_reconnects() {
    let server = TestServer::start();
    known_offline(&server, 7206);
    let ids: Vec<String> = (0..6u16)
        .map(|i| {
            queue(
                &server,
                "7206",
                json!({"type":"write_register","address":2100 + i,"value":1}),
            )
        })
        .collect();
    // The DTU registers twice in quick succession; the second connection replaces the first,
    // possibly in the middle of delivering.
    let first = FakeDevice::framed(server.framed, 7206);
    let second = FakeDevice::framed(server.framed, 7206);
    let finals: Vec<Value> = ids
        .iter()
        .map(|cid| {
            wait_for(&format!("command {cid} to end"), || {
                let r = record(&server, cid);
                let s = r["status"].as_str().unwrap_or_default().to_string();
                (s == "ok" || s == "failed").then_some(r)
            })
        })
        .collect();
    let mut seen = writes(&first);
    seen.extend(writes(&second));
    for (i, r) in finals.iter().enumerate() {
        let address = 2100 + i as u16;
        let times = seen.iter().filter(|(a, _)| *a == address).count();
        match r["status"].as_str() {
            Some("ok") => assert_eq!(times, 1, "command {i} ({r}) sent {times} times"),
            _ => assert!(times <= 1, "command {i} ({r}) sent {times} times"),
        }
    }
    // Only a command that may have reached the replaced connection can have failed.
    let failed = finals.iter().filter(|r| r["status"] == "failed").count();
    assert!(failed <= 1, "{finals:?}");
    // The writes of each connection came in queue order.
    for dev in [&first, &second] {
        let addrs: Vec<u16> = writes(dev).iter().map(|(a, _)| *a).collect();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]), "{addrs:?}");
    }
}

#[test]
fn a_device_that_drops_mid_delivery_keeps_the_rest_queued() {
    let server = TestServer::start_with(patient_profile());
    known_offline(&server, 7207);
    let ids: Vec<String> = (1..=3u16)
        .map(|v| {
            queue(
                &server,
                "7207",
                json!({"type":"write_register","address":2100,"value":v}),
            )
        })
        .collect();
    // The device registers and sits on the first poll: the first command is claimed and waits
    // behind it in the connection's queue, unwritten, when the connection drops.
    let mut dev = FakeDevice::connect(server.framed, common::device::Proto::Framed);
    dev.hold(true);
    dev.send(&7207u32.to_be_bytes());
    wait_status(&server, &ids[0], "sent");
    let held = dev.state.clone();
    drop(dev);
    wait_for("device offline", || (!server.online("7207")).then_some(()));
    // Never written, so back in the queue; the others never left it.
    wait_status(&server, &ids[0], "queued");
    held.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status_of(&server, &ids[1]), "queued");
    assert_eq!(status_of(&server, &ids[2]), "queued");

    let dev = online(&server, 7207);
    for cid in &ids {
        wait_status(&server, cid, "ok");
    }
    assert_eq!(writes(&dev), [(2100, 1), (2100, 2), (2100, 3)]);
}
