//! End-to-end: raw packets. Whatever `[storage] packets` stores (all, errors, none), the API
//! shows each device's recent packets from memory; after a restart (memory gone) it shows
//! what the database kept, which follows the mode.

mod common;

use common::device::FakeDevice;
use common::{wait_for, Options, TestServer};

/// `(direction, kind, hex)` of each packet the API lists, newest first.
fn packets(server: &TestServer, id: &str) -> Vec<(String, String, String)> {
    let (status, body) = server.get(&format!("/api/devices/{id}/packets?limit=10000"));
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (text("direction"), text("kind"), text("hex"))
        })
        .collect()
}

fn has(list: &[(String, String, String)], direction: &str, kind: &str) -> bool {
    list.iter().any(|(d, k, _)| d == direction && k == kind)
}

/// A device polled a while, then a refused frame, then a poll left unanswered; answers the
/// server (restarted, so only the database speaks) and the packets it showed before.
fn run(mode: &str, id: u32) -> (TestServer, Vec<(String, String, String)>) {
    let mut server = TestServer::start_with(Options {
        extra_server_toml: format!("packets = \"{mode}\"\n"),
        ..Options::default()
    });
    let dev = FakeDevice::framed(server.framed, id);
    let name = id.to_string();
    server.wait_value(&name, "temperature");
    // A heartbeat frame with a length: the codec refuses it.
    let mut dev = dev;
    dev.send(&[0x02, 0x01, 0xFF]);
    dev.mute(true);
    wait_for("a poll to fail", || {
        server
            .log_text()
            .contains(&format!("device {name}: poll block failed"))
            .then_some(())
    });
    let before = packets(&server, &name);
    assert!(has(&before, "in", "register"), "{mode}: {before:?}");
    assert!(has(&before, "out", "modbus"), "{mode}: {before:?}");
    assert!(has(&before, "in", "modbus"), "{mode}: {before:?}");
    assert!(
        before
            .iter()
            .any(|(_, k, hex)| k == "malformed" && hex == "02 01 FF"),
        "{mode}: {before:?}"
    );
    // Newest first: the last request went out after the refused frame came in.
    assert_eq!(before[0].0, "out", "{mode}: {before:?}");
    assert!(server.terminate().success());
    server.restart();
    (server, before)
}

#[test]
fn errors_mode_stores_refused_frames_and_failed_exchanges_only() {
    let (server, _) = run("errors", 6101);
    let stored = packets(&server, "6101");
    assert!(
        stored
            .iter()
            .any(|(d, k, hex)| d == "in" && k == "malformed" && hex == "02 01 FF"),
        "{stored:?}"
    );
    // The unanswered poll: its request and its retry (`retries = 1`), the same bytes.
    let requests: Vec<&String> = stored
        .iter()
        .filter(|(d, k, _)| d == "out" && k == "modbus")
        .map(|(_, _, hex)| hex)
        .collect();
    assert!(requests.len() >= 2, "{stored:?}");
    assert!(requests.windows(2).any(|w| w[0] == w[1]), "{stored:?}");
    // Nothing of the exchanges that went well, nor the registration.
    assert!(!has(&stored, "in", "modbus"), "{stored:?}");
    assert!(!has(&stored, "in", "register"), "{stored:?}");
}

#[test]
fn all_mode_stores_every_packet() {
    let (server, before) = run("all", 6102);
    let stored = packets(&server, "6102");
    for (d, k) in [
        ("in", "register"),
        ("out", "modbus"),
        ("in", "modbus"),
        ("in", "malformed"),
    ] {
        assert!(has(&stored, d, k), "{d} {k}: {stored:?}");
    }
    // What the API showed from memory before the restart is what the database holds.
    assert_eq!(stored.len(), before.len(), "{stored:?}\n{before:?}");
}

#[test]
fn none_mode_stores_nothing_but_the_api_showed_the_recent_packets() {
    let (server, before) = run("none", 6103);
    assert!(!before.is_empty());
    assert_eq!(
        packets(&server, "6103"),
        Vec::<(String, String, String)>::new()
    );
}
