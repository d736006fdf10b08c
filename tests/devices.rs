//! End-to-end: real server, real TCP devices — registration, polls and decoding, liveness,
//! replacement, bad neighbours, transparent DTUs, graceful stop.

mod common;

use common::device::{FakeDevice, Proto};
use common::{wait_for, Options, TestServer};
use serde_json::Value;

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn framed_device_registers_and_timer_poll_decodes_values() {
    let server = TestServer::start();
    let dev = FakeDevice::connect(server.framed, Proto::Framed);
    dev.load_test_points();
    let mut dev = dev;
    dev.send(&1001u32.to_be_bytes());
    wait_for("registration ack", || {
        (dev.state
            .register_acks
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
            .then_some(())
    });

    let device = wait_for("device 1001 online", || server.device("1001"));
    assert_eq!(device["online"], Value::Bool(true));
    assert_eq!(device["protocol"], "framed");
    assert_eq!(device["profile"], "default");
    assert!(device["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));

    assert!(close_to(server.wait_value("1001", "temperature"), -12.3));
    let (_, values) = server.get("/api/devices/1001/values");
    assert!(close_to(
        values["humidity"]["value"].as_f64().unwrap(),
        56.25
    ));
    assert!(close_to(
        values["energy"]["value"].as_f64().unwrap(),
        123_456.0
    ));
    assert_eq!(values["temperature"]["unit"], "°C");
    assert!(values["temperature"]["at"]
        .as_str()
        .is_some_and(|t| t.contains('T')));
    // The heartbeat poll has not run: no heartbeat was sent.
    assert!(values.get("pressure").is_none());

    let (status, list) = server.get("/api/devices");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(|l| l.len()), Some(1));
    assert_eq!(list[0]["id"], "1001");

    // The timer poll repeats.
    wait_for("a second timer poll", || {
        (dev.reads_at(2000) >= 2).then_some(())
    });
}

#[test]
fn heartbeat_is_acknowledged_and_triggers_heartbeat_poll() {
    let server = TestServer::start();
    let mut dev = FakeDevice::framed(server.framed, 2002);
    dev.load_test_points();
    assert_eq!(dev.reads_at(2300), 0);
    dev.heartbeat();
    wait_for("heartbeat ack", || {
        (dev.state
            .heartbeat_acks
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
            .then_some(())
    });
    assert!(close_to(server.wait_value("2002", "pressure"), 1.5));
    assert_eq!(dev.reads_at(2300), 1);
}

#[test]
fn silent_device_goes_offline_and_its_socket_is_closed() {
    let server = TestServer::start_with(Options {
        heartbeat_interval: "500ms",
        max_missed: 2,
        ..Options::default()
    });
    let dev = FakeDevice::framed(server.framed, 3003);
    // Polls answered count as traffic; a mute device that sends nothing is silent.
    dev.mute(true);
    wait_for("device online", || server.online("3003").then_some(()));
    dev.wait_closed("the server to close the silent device");
    wait_for("device offline", || (!server.online("3003")).then_some(()));
    assert!(server.log_text().contains("device 3003: silent for"));
}

#[test]
fn second_connection_with_same_id_replaces_the_first() {
    let server = TestServer::start();
    let first = FakeDevice::framed(server.framed, 4004);
    let first_addr = wait_for("first online", || server.device("4004"))["remote_addr"].clone();
    let second = FakeDevice::framed(server.framed, 4004);
    first.wait_closed("the older connection to be closed");
    let device = wait_for("the newer connection to hold the id", || {
        server
            .device("4004")
            .filter(|d| d["remote_addr"] != first_addr && d["online"] == Value::Bool(true))
    });
    assert_eq!(device["online"], Value::Bool(true));
    assert!(!second.is_closed());
    // The newer connection is the one polled from now on.
    let before = second.reads_at(2000);
    wait_for("the newer connection to be polled", || {
        (second.reads_at(2000) > before).then_some(())
    });
    assert!(server
        .log_text()
        .contains("device 4004: closing (replaced)"));
    let (_, list) = server.get("/api/devices");
    assert_eq!(list.as_array().map(|l| l.len()), Some(1));
}

#[test]
fn garbage_and_silent_connections_are_closed_while_a_neighbour_is_polled() {
    let server = TestServer::start_with(Options {
        register_timeout: "1s",
        ..Options::default()
    });
    let neighbour = FakeDevice::framed(server.framed, 5005);
    neighbour.load_test_points();
    wait_for("neighbour polled", || {
        (neighbour.reads_at(2000) >= 1).then_some(())
    });

    let mut garbage = FakeDevice::framed(server.framed, 5006);
    garbage.send(&[0x7F, 0xFF, 0x00, 0x13, 0x37]);
    let silent = FakeDevice::connect(server.framed, Proto::Framed);

    garbage.wait_closed("the garbage sender to be closed");
    silent.wait_closed("the silent unregistered connection to be closed");
    let log = server.log_text();
    assert!(log.contains("device 5006: protocol error"), "log: {log}");
    assert!(log.contains("7F"), "the bad bytes are logged in hex");
    assert!(log.contains("no registration within"));

    let before = neighbour.reads_at(2000);
    wait_for("the neighbour to keep being polled", || {
        (neighbour.reads_at(2000) >= before + 2).then_some(())
    });
    assert!(server.online("5005"));
    assert!(close_to(server.wait_value("5005", "temperature"), -12.3));
}

#[test]
fn transparent_dtu_with_registration_and_heartbeat_glued() {
    let server = TestServer::start();
    let mut first = b"860000000000777".to_vec();
    first.extend_from_slice(b"www.usr.cn");
    let dev = FakeDevice::connect(server.transparent, Proto::Transparent);
    dev.load_test_points();
    let mut dev = dev;
    dev.send(&first);
    let device = wait_for("transparent device online", || {
        server.device("860000000000777")
    });
    assert_eq!(device["protocol"], "transparent");
    // The glued heartbeat triggered the heartbeat poll, the timer poll ran too.
    assert!(close_to(
        server.wait_value("860000000000777", "pressure"),
        1.5
    ));
    assert!(close_to(
        server.wait_value("860000000000777", "temperature"),
        -12.3
    ));
    // A later heartbeat glued in front of nothing else is recognised as well.
    let before = dev.reads_at(2300);
    dev.heartbeat();
    wait_for("second heartbeat poll", || {
        (dev.reads_at(2300) > before).then_some(())
    });
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero() {
    let mut server = TestServer::start();
    let dev = FakeDevice::framed(server.framed, 6006);
    wait_for("device online", || server.online("6006").then_some(()));
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "log: {}", server.log_text());
    dev.wait_closed("device connection closed on shutdown");
}

#[test]
fn console_and_its_assets_are_served_by_the_server() {
    let server = TestServer::start();
    let page = ureq::get(&server.url("/")).call().expect("console page");
    assert!(page.content_type().starts_with("text/html"));
    let html = page.into_string().unwrap();
    assert!(
        html.contains(r#"type="password""#),
        "login screen with a password input"
    );
    // Every script and stylesheet the page names is served here, none from elsewhere.
    for asset in ["/static/app.js", "/static/style.css"] {
        assert!(html.contains(asset));
        let r = ureq::get(&server.url(asset)).call().expect(asset);
        assert_eq!(r.status(), 200);
        assert!(!r.into_string().unwrap().is_empty());
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external asset"
    );
    assert_eq!(server.get("/static/nope.js").0, 404);
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    // The server starts with a soft limit below the fleet it must hold; the hard limit is
    // this process's (the shell that starts the server lowers only the soft one).
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("limits");
    let soft = 256;
    assert!(
        hard > 400,
        "this test needs a hard limit above 400, not {hard}"
    );
    let server = TestServer::start_with(Options {
        soft_open_files: Some(soft),
        ..Options::default()
    });
    assert!(
        server.log_text().contains(&format!(
            "open files: soft limit raised from {soft} to {hard}"
        )),
        "log: {}",
        server.log_text()
    );
    // More DTUs than the soft limit it started with are all online.
    let count = 300u32;
    let mut sockets = Vec::new();
    for n in 0..count {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.framed)).expect("connect");
        std::io::Write::write_all(&mut s, &(70_000 + n).to_be_bytes()).expect("register");
        sockets.push(s);
    }
    wait_for("every DTU online", || {
        let (_, list) = server.get("/api/devices");
        let online = list
            .as_array()
            .map_or(0, |l| l.iter().filter(|d| d["online"] == true).count());
        (online == count as usize).then_some(())
    });
    drop(sockets);
}
