//! End-to-end: every operator command type against a real TCP device, and each failure's
//! status code.

mod common;

use common::device::FakeDevice;
use common::{wait_for, TestServer};
use serde_json::{json, Value};

fn command(server: &TestServer, id: &str, body: Value) -> (u16, Value) {
    server.post(&format!("/api/devices/{id}/commands"), &body)
}

fn online_device(server: &TestServer, number: u32) -> FakeDevice {
    let dev = FakeDevice::framed(server.framed, number);
    wait_for("device online", || {
        server.online(&number.to_string()).then_some(())
    });
    dev
}

#[test]
fn read_and_write_commands_round_trip() {
    let server = TestServer::start();
    let dev = online_device(&server, 7001);
    dev.set_registers(2000, &[0xFF85, 0, 0, 0]); // temperature -12.3

    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"read","function":3,"start":2000,"count":4}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert!(body["id"].as_str().is_some());
    assert_eq!(body["result"]["registers"], json!([0xFF85, 0, 0, 0]));
    let t = body["result"]["values"]["temperature"]["value"]
        .as_f64()
        .unwrap();
    assert!((t - -12.3).abs() < 1e-9);

    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"write_register","address":2100,"value":1}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"address":2100,"value":1}));
    assert_eq!(dev.register(2100), 1);

    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"write_registers","address":2200,"values":[1,2,3]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"address":2200,"count":3}));
    assert_eq!(
        (dev.register(2200), dev.register(2201), dev.register(2202)),
        (1, 2, 3)
    );

    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"write_coil","address":5,"value":true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"address":5,"value":true}));
    assert!(dev.coil(5));

    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"read","function":1,"start":4,"count":3}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["bits"], json!([false, true, false]));

    // Raw without CRC: the server appends it; the answer comes back as hex.
    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"raw","hex":"01 03 08 34 00 01"}),
    );
    assert_eq!(status, 200, "{body}");
    let hex = body["result"]["hex"].as_str().unwrap().to_string();
    assert!(hex.starts_with("01 03 02 00 01"), "raw answer {hex}"); // register 2100 = 1

    // Raw with its CRC already there is sent unchanged.
    let (status, body) = command(
        &server,
        "7001",
        json!({"type":"raw","hex":"01 03 08 34 00 01 C7 A4"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["hex"].as_str().unwrap(), hex);
}

#[test]
fn named_command_checks_its_precondition() {
    let server = TestServer::start();
    let dev = online_device(&server, 7002);
    dev.set_registers(2030, &[1]); // status 1: not standby

    let (status, body) = command(&server, "7002", json!({"type":"named","name":"turn_on"}));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("device must be in standby"));
    assert_eq!(dev.register(2100), 0, "the write must not have been sent");

    dev.set_registers(2030, &[5]);
    let (status, body) = command(&server, "7002", json!({"type":"named","name":"turn_on"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.register(2100), 1);

    let (status, body) = command(&server, "7002", json!({"type":"named","name":"reset"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!((dev.register(2101), dev.register(2102)), (7, 8));

    let (status, body) = command(&server, "7002", json!({"type":"named","name":"no_such"}));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn failures_map_to_their_status_codes() {
    let server = TestServer::start();
    let dev = online_device(&server, 7003);

    // Modbus exception: 502 with the code.
    let (status, body) = command(
        &server,
        "7003",
        json!({"type":"read","function":3,"start":60000,"count":2}),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["exception"], 2);

    // Unknown device: 404.
    let (status, body) = command(
        &server,
        "nope",
        json!({"type":"read","function":3,"start":0,"count":1}),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(server.get("/api/devices/nope").0, 404);

    // Bad bodies: 400 with a JSON error.
    for bad in [
        json!({"type":"read","function":9,"start":0,"count":1}),
        json!({"type":"read","function":3,"start":0,"count":500}),
        json!({"type":"read","function":3,"start":0}),
        json!({"type":"write_register","address":1,"value":70000}),
        json!({"type":"write_coil","address":1,"value":"yes"}),
        json!({"type":"raw","hex":"zz"}),
        json!({"type":"explode"}),
        json!({"type":"read","function":3,"start":0,"count":1,"surprise":true}),
        json!({"type":"read","function":3,"start":0,"count":1,"timeout_ms":0}),
    ] {
        let (status, body) = command(&server, "7003", bad.clone());
        assert_eq!(status, 400, "{bad} answered {body}");
        assert!(body["error"].is_string(), "{bad} answered {body}");
    }
    let (status, body) = server.post_raw(
        "/api/devices/7003/commands",
        "application/json",
        "{not json",
    );
    assert_eq!(status, 400);
    assert!(body["error"].is_string());

    // A device that does not answer: 504 after the profile's timeout and retry.
    dev.mute(true);
    let (status, body) = command(
        &server,
        "7003",
        json!({"type":"write_register","address":2100,"value":9}),
    );
    assert_eq!(status, 504, "{body}");
    // Both attempts reached the device, one after the other.
    let writes = dev
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| {
            matches!(
                r,
                dtu_supervisor::protocol::modbus::Request::WriteSingleRegister { value: 9, .. }
            )
        })
        .count();
    assert_eq!(writes, 2);
    dev.mute(false);

    // Offline device: 409.
    dev.close();
    wait_for("device offline", || (!server.online("7003")).then_some(()));
    let (status, body) = command(
        &server,
        "7003",
        json!({"type":"read","function":3,"start":0,"count":1}),
    );
    assert_eq!(status, 409, "{body}");
}

#[test]
fn commands_queue_behind_polls_one_request_in_flight() {
    let server = TestServer::start();
    let dev = online_device(&server, 7004);
    // A slow device (150 ms per answer) and many concurrent commands, while the 1 s timer poll
    // runs too: the device counts every request that reaches it before its previous answer.
    dev.state
        .delay_ms
        .store(150, std::sync::atomic::Ordering::SeqCst);
    let handles: Vec<_> = (0..8u16)
        .map(|i| {
            let url = server.url("/api/devices/7004/commands");
            std::thread::spawn(move || {
                let body = json!({"type":"write_register","address":3000 + i,"value":i + 1});
                ureq::post(&url)
                    .set("Authorization", &format!("Bearer {}", common::ADMIN_TOKEN))
                    .send_json(body)
                    .map(|r| r.status())
                    .unwrap_or(0)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    for i in 0..8u16 {
        assert_eq!(dev.register(3000 + i), i + 1);
    }
    assert_eq!(
        dev.state.overlaps.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
