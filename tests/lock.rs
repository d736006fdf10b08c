//! End-to-end: the control lock. One operator token takes a device's lock; others' commands
//! answer 423 with the holder until it is released or expires; an admin may break it.

mod common;

use common::device::FakeDevice;
use common::{wait_for, TestServer};
use serde_json::{json, Value};

/// Creates a token with the admin token and returns its secret.
fn token(server: &TestServer, name: &str, role: &str) -> String {
    let (status, body) = server.post("/api/tokens", &json!({"name": name, "role": role}));
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

fn write(server: &TestServer, who: &str, id: &str, value: u16) -> (u16, Value) {
    server.post_as(
        Some(who),
        &format!("/api/devices/{id}/commands"),
        &json!({"type":"write_register","address":2100,"value":value}),
    )
}

fn lock(server: &TestServer, who: &str, id: &str, body: Value) -> (u16, Value) {
    server.post_as(Some(who), &format!("/api/devices/{id}/lock"), &body)
}

fn unlock(server: &TestServer, who: &str, id: &str) -> (u16, Value) {
    server.delete_as(Some(who), &format!("/api/devices/{id}/lock"))
}

fn online(server: &TestServer, number: u32) -> FakeDevice {
    let dev = FakeDevice::framed(server.framed, number);
    wait_for("device online", || {
        server.online(&number.to_string()).then_some(())
    });
    dev
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

#[test]
fn lock_gives_one_token_the_commands_until_released() {
    let server = TestServer::start();
    let dev = online(&server, 7301);
    let alice = token(&server, "alice", "operator");
    let bob = token(&server, "bob", "operator");
    let viewer = token(&server, "watcher", "viewer");

    let (status, body) = lock(&server, &viewer, "7301", json!({"ttl_s": 60}));
    assert_eq!(status, 403, "a viewer cannot lock: {body}");
    for bad in [
        json!({"ttl_s": 0}),
        json!({"ttl_s": 86_401}),
        json!({"ttl": 5}),
    ] {
        let (status, body) = lock(&server, &alice, "7301", bad);
        assert_eq!(status, 400, "{body}");
    }
    let (status, body) = lock(&server, &alice, "7399", json!({"ttl_s": 60}));
    assert_eq!(status, 404, "unknown device: {body}");

    let (status, body) = lock(&server, &alice, "7301", json!({"ttl_s": 60}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "7301");
    assert_eq!(body["holder"], "alice");
    let first_expiry = time(&body["expires_at"]);

    // Bob is locked out of commands and of the lock, and is told who holds it until when.
    let (status, body) = write(&server, &bob, "7301", 2);
    assert_eq!(status, 423, "{body}");
    assert_eq!(body["holder"], "alice");
    assert_eq!(time(&body["expires_at"]), first_expiry);
    assert!(body["error"].as_str().is_some());
    assert_eq!(dev.register(2100), 0, "bob's write reached the device");
    let (status, body) = lock(&server, &bob, "7301", json!({"ttl_s": 60}));
    assert_eq!((status, &body["holder"]), (423, &json!("alice")), "{body}");
    let (status, body) = unlock(&server, &bob, "7301");
    assert_eq!(status, 423, "{body}");
    // The queue is no way around it either.
    let (status, body) = server.post_as(
        Some(&bob),
        "/api/devices/7301/commands",
        &json!({"type":"write_register","address":2100,"value":9,"queue_if_offline":true}),
    );
    assert_eq!(status, 423, "{body}");

    // Alice commands; polls go on.
    let (status, body) = write(&server, &alice, "7301", 1);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.register(2100), 1);
    let polls = dev.reads_at(2000);
    wait_for("polls to go on while locked", || {
        (dev.reads_at(2000) > polls).then_some(())
    });

    // Anyone may see the lock.
    let (status, body) = server.get_as(Some(&viewer), "/api/devices/7301/lock");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["locked"], &body["holder"]),
        (&json!(true), &json!("alice"))
    );

    // Posting again extends it.
    let (status, body) = lock(&server, &alice, "7301", json!({"ttl_s": 600}));
    assert_eq!(status, 200, "{body}");
    assert!(time(&body["expires_at"]) > first_expiry, "{body}");

    // Released: Bob may command; nothing left to release.
    let (status, body) = unlock(&server, &alice, "7301");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"], true);
    let (status, body) = write(&server, &bob, "7301", 2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.register(2100), 2);
    let (status, body) = unlock(&server, &alice, "7301");
    assert_eq!(status, 404, "{body}");
    let (_, body) = server.get_as(Some(&viewer), "/api/devices/7301/lock");
    assert_eq!(body["locked"], false);
}

#[test]
fn expired_lock_frees_the_device() {
    let server = TestServer::start();
    let dev = online(&server, 7302);
    let alice = token(&server, "alice", "operator");
    let bob = token(&server, "bob", "operator");
    let (status, body) = lock(&server, &alice, "7302", json!({"ttl_s": 1}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = write(&server, &bob, "7302", 5);
    assert_eq!(status, 423, "{body}");
    // Once the second has passed, Bob's command goes through.
    let expires = time(&body["expires_at"]);
    wait_for("the lock to expire", || {
        (chrono::Utc::now() > expires).then_some(())
    });
    let (status, body) = write(&server, &bob, "7302", 5);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.register(2100), 5);
    // And Bob may take it now.
    let (status, body) = lock(&server, &bob, "7302", json!({"ttl_s": 30}));
    assert_eq!((status, &body["holder"]), (200, &json!("bob")), "{body}");
}

#[test]
fn admin_may_break_a_lock() {
    let server = TestServer::start();
    let dev = online(&server, 7303);
    let alice = token(&server, "alice", "operator");
    let (status, body) = lock(&server, &alice, "7303", json!({}));
    assert_eq!(status, 200, "{body}");
    // Default lock time: five minutes.
    let left = time(&body["expires_at"]) - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(240) && left <= chrono::Duration::seconds(300));
    // The admin is locked out of commands like anyone ...
    let (status, body) = write(&server, common::ADMIN_TOKEN, "7303", 3);
    assert_eq!(status, 423, "{body}");
    // ... but may break the lock.
    let (status, body) = unlock(&server, common::ADMIN_TOKEN, "7303");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["holder"], "alice");
    let (status, body) = write(&server, common::ADMIN_TOKEN, "7303", 3);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.register(2100), 3);
    assert!(server.log_text().contains("broken by admin"));
}

#[test]
fn queued_commands_meet_the_lock_at_delivery() {
    let server = TestServer::start();
    let dev = online(&server, 7304);
    dev.close();
    wait_for("device offline", || (!server.online("7304")).then_some(()));
    let alice = token(&server, "alice", "operator");
    let bob = token(&server, "bob", "operator");
    let queue = |who: &str, value: u16| -> String {
        let (status, body) = server.post_as(
            Some(who),
            "/api/devices/7304/commands",
            &json!({"type":"write_register","address":2100,"value":value,"queue_if_offline":true}),
        );
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("id").to_string()
    };
    // Bob queued before Alice locked the (offline) device; Alice queues under her lock.
    let bobs = queue(&bob, 1);
    let (status, body) = lock(&server, &alice, "7304", json!({"ttl_s": 600}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post_as(
        Some(&bob),
        "/api/devices/7304/commands",
        &json!({"type":"write_register","address":2100,"value":3,"queue_if_offline":true}),
    );
    assert_eq!(status, 423, "{body}");
    let alices = queue(&alice, 2);

    let dev = online(&server, 7304);
    let end = |cid: &str| {
        wait_for(&format!("command {cid} to end"), || {
            let (_, r) = server.get(&format!("/api/commands/{cid}"));
            (r["status"] == "ok" || r["status"] == "failed").then_some(r)
        })
    };
    let b = end(&bobs);
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["requested_by"], "bob");
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("alice")),
        "{b}"
    );
    let a = end(&alices);
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["requested_by"], "alice");
    assert_eq!(dev.register(2100), 2);
    let writes = dev
        .requests()
        .iter()
        .filter(|r| {
            !matches!(
                r,
                dtu_supervisor::protocol::modbus::Request::ReadHoldingRegisters { .. }
            )
        })
        .count();
    assert_eq!(writes, 1, "only Alice's write reaches the device");
}
