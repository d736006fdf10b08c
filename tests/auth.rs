//! End-to-end: tokens and roles on every kind of route, device-restricted tokens, token
//! management, the generated admin token across a restart, command records, and malformed
//! input thrown at every POST route.

mod common;

use common::device::FakeDevice;
use common::{answer, wait_for, Options, TestServer, ADMIN_TOKEN, DEADLINE};
use dtu_supervisor::storage::db::Db;
use serde_json::{json, Value};

fn online_device(server: &TestServer, number: u32) -> FakeDevice {
    let dev = FakeDevice::framed(server.framed, number);
    wait_for("device online", || {
        server.online(&number.to_string()).then_some(())
    });
    dev
}

/// Creates a token as admin and returns its secret.
fn token(server: &TestServer, name: &str, role: &str, devices: Option<Value>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(d) = devices {
        body["devices"] = d;
    }
    let (status, answer) = server.post("/api/tokens", &body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["role"], role);
    answer["token"].as_str().expect("token shown").to_string()
}

fn is_json_error(body: &Value) -> bool {
    body["error"].is_string()
}

const WRITE: &str = r#"{"type":"write_register","address":2100,"value":3}"#;

#[test]
fn each_role_against_read_command_and_admin_routes() {
    let server = TestServer::start();
    let _dev = online_device(&server, 7101);
    let viewer = token(&server, "viewer", "viewer", None);
    let operator = token(&server, "operator", "operator", None);
    let admin = token(&server, "admin2", "admin", None);
    let write: Value = serde_json::from_str(WRITE).unwrap();
    let cmd = "/api/devices/7101/commands";

    // Health needs nothing; everything else needs a valid token.
    assert_eq!(server.get_as(None, "/api/health").0, 200);
    for path in [
        "/api/devices",
        "/api/devices/7101",
        "/api/devices/7101/values",
        "/api/devices/7101/telemetry",
        "/api/devices/7101/packets",
        "/api/events",
        "/api/export?device=7101",
        "/api/tokens",
        "/api/commands/cffff",
        "/api/webhooks",
        "/api/webhooks/wnone/deliveries",
        "/api/relay",
        "/api/openapi.json",
        "/api/devices/7101/lock",
        "/api/stream",
        "/api/no/such/route",
    ] {
        for bad in [None, Some("wrong"), Some("")] {
            let (status, body) = server.get_as(bad, path);
            assert_eq!(status, 401, "{path} with {bad:?}: {body}");
            assert!(is_json_error(&body), "{path}: {body}");
        }
    }
    let (status, body) = server.post_as(None, cmd, &write);
    assert_eq!((status, is_json_error(&body)), (401, true));
    let (status, _) = server.post_as(Some("wrong"), "/api/tokens", &json!({}));
    assert_eq!(status, 401);

    // Reads: every role.
    for t in [&viewer, &operator, &admin] {
        for path in [
            "/api/devices",
            "/api/devices/7101",
            "/api/devices/7101/values",
            "/api/devices/7101/telemetry",
            "/api/devices/7101/packets",
            "/api/events",
            "/api/relay",
            "/api/openapi.json",
            "/api/devices/7101/lock",
        ] {
            let (status, body) = server.get_as(Some(t), path);
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    // The control lock: operator and admin.
    let lock = "/api/devices/7101/lock";
    let (status, body) = server.post_as(Some(&viewer), lock, &json!({"ttl_s": 5}));
    assert_eq!((status, is_json_error(&body)), (403, true), "{body}");
    assert_eq!(server.delete_as(Some(&viewer), lock).0, 403);
    for t in [&operator, &admin] {
        let (status, body) = server.post_as(Some(t), lock, &json!({"ttl_s": 5}));
        assert_eq!(status, 200, "{body}");
        let (status, body) = server.delete_as(Some(t), lock);
        assert_eq!(status, 200, "{body}");
    }
    // Webhooks: admin only, every route.
    for t in [&viewer, &operator] {
        assert_eq!(server.get_as(Some(t), "/api/webhooks").0, 403);
        let hook = json!({"url": "http://127.0.0.1:9/h", "events": ["*"]});
        let (status, body) = server.post_as(Some(t), "/api/webhooks", &hook);
        assert_eq!((status, is_json_error(&body)), (403, true), "{body}");
        assert_eq!(server.delete_as(Some(t), "/api/webhooks/wnone").0, 403);
        assert_eq!(
            server.get_as(Some(t), "/api/webhooks/wnone/deliveries").0,
            403
        );
        let (status, _) = server.post_as(Some(t), "/api/webhooks/wnone/test", &json!({}));
        assert_eq!(status, 403);
    }
    assert_eq!(server.get_as(Some(&admin), "/api/webhooks").0, 200);
    // Commands: operator and admin.
    let (status, body) = server.post_as(Some(&viewer), cmd, &write);
    assert_eq!((status, is_json_error(&body)), (403, true), "{body}");
    for t in [&operator, &admin] {
        let (status, body) = server.post_as(Some(t), cmd, &write);
        assert_eq!(status, 200, "{body}");
    }
    // Token management: admin only.
    for t in [&viewer, &operator] {
        assert_eq!(server.get_as(Some(t), "/api/tokens").0, 403);
        let (status, body) =
            server.post_as(Some(t), "/api/tokens", &json!({"name":"x","role":"admin"}));
        assert_eq!((status, is_json_error(&body)), (403, true));
        assert_eq!(server.delete_as(Some(t), "/api/tokens/tnone").0, 403);
    }
    assert_eq!(server.get_as(Some(&admin), "/api/tokens").0, 200);

    // The `token` query parameter works for the export only.
    let export = server.url(&format!("/api/export?device=7101&token={viewer}"));
    assert_eq!(answer(ureq::get(&export).call()).0, 200);
    let devices = server.url(&format!("/api/devices?token={viewer}"));
    assert_eq!(answer(ureq::get(&devices).call()).0, 401);
}

#[test]
fn device_restricted_tokens_see_only_their_devices() {
    let server = TestServer::start();
    let _a = online_device(&server, 7201);
    let _b = online_device(&server, 7202);
    let _c = online_device(&server, 7301);
    let exact = token(&server, "exact", "operator", Some(json!(["7201"])));
    let prefix = token(&server, "prefix", "operator", Some(json!(["72*"])));
    let write: Value = serde_json::from_str(WRITE).unwrap();

    let ids = |t: &str| -> Vec<String> {
        let (status, body) = server.get_as(Some(t), "/api/devices");
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&exact), vec!["7201"]);
    assert_eq!(ids(&prefix), vec!["7201", "7202"]);

    for (t, allowed, denied) in [(&exact, "7201", "7202"), (&prefix, "7202", "7301")] {
        for path in ["", "/values", "/telemetry", "/packets"] {
            let ok = server.get_as(Some(t), &format!("/api/devices/{allowed}{path}"));
            assert_eq!(ok.0, 200, "{allowed}{path}: {}", ok.1);
            let (status, body) = server.get_as(Some(t), &format!("/api/devices/{denied}{path}"));
            assert_eq!(
                (status, is_json_error(&body)),
                (403, true),
                "{denied}{path}"
            );
        }
        let (status, _) = server.get_as(Some(t), &format!("/api/events?device={denied}"));
        assert_eq!(status, 403);
        let (status, _) = server.get_as(Some(t), &format!("/api/export?device={denied}"));
        assert_eq!(status, 403);
        // A restricted token must name its device to export.
        assert_eq!(server.get_as(Some(t), "/api/export").0, 403);
        let (status, body) =
            server.post_as(Some(t), &format!("/api/devices/{denied}/commands"), &write);
        assert_eq!(status, 403, "{body}");
        let (status, body) =
            server.post_as(Some(t), &format!("/api/devices/{allowed}/commands"), &write);
        assert_eq!(status, 200, "{body}");
    }

    // Events without a device: only the reachable devices' rows.
    wait_for("connect events stored", || {
        let (_, all) = server.get("/api/events");
        (all.as_array()?.len() >= 3).then_some(())
    });
    let (status, events) = server.get_as(Some(&exact), "/api/events");
    assert_eq!(status, 200);
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["device_id"] == "7201"),
        "{events:?}"
    );
}

#[test]
fn tokens_are_shown_once_listed_without_secret_and_revoked_at_once() {
    let server = TestServer::start();
    let (status, created) = server.post(
        "/api/tokens",
        &json!({"name":"ops","role":"operator","devices":["10*"]}),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["role"], "operator");
    assert!(secret.len() >= 32);

    let (status, list) = server.get("/api/tokens");
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains(&secret), "listing shows a secret: {text}");
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed");
    assert_eq!(mine["name"], "ops");
    assert_eq!(mine["devices"], json!(["10*"]));
    assert!(mine.get("token").is_none() && mine.get("hash").is_none());

    // Only the hash is stored.
    let db = Db::connect(&server.sqlite_url(), 1).unwrap();
    let stored = db.tokens().unwrap();
    let row = stored.iter().find(|t| t.id == id).unwrap();
    assert_ne!(row.hash, secret);
    assert_eq!(row.hash.len(), 64);

    assert_eq!(server.get_as(Some(&secret), "/api/devices").0, 200);
    let (status, body) = server.delete_as(Some(ADMIN_TOKEN), &format!("/api/tokens/{id}"));
    assert_eq!(status, 200, "{body}");
    // Revoked at once: the very next request fails.
    assert_eq!(server.get_as(Some(&secret), "/api/devices").0, 401);
    let (_, list) = server.get("/api/tokens");
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["id"] != id.as_str()));
    assert_eq!(
        server
            .delete_as(Some(ADMIN_TOKEN), &format!("/api/tokens/{id}"))
            .0,
        404
    );

    // Bad token bodies.
    for body in [
        json!({"name":"","role":"viewer"}),
        json!({"name":"x","role":"root"}),
        json!({"name":"x","role":"viewer","devices":["a*b"]}),
        json!({"name":"x","role":"viewer","extra":1}),
        json!({"role":"viewer"}),
    ] {
        let (status, answer) = server.post("/api/tokens", &body);
        assert_eq!(
            (status, is_json_error(&answer)),
            (400, true),
            "{body}: {answer}"
        );
    }
}

#[test]
fn generated_admin_token_is_logged_once_works_and_survives_a_restart() {
    let mut server = TestServer::start_with(Options {
        admin_token: None,
        ..Options::default()
    });
    const MARK: &str = "generated admin token: ";
    let log = server.log_text();
    assert_eq!(log.matches(MARK).count(), 1, "{log}");
    let secret = log
        .split(MARK)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(secret.len(), 64);
    server.token = Some(secret.clone());
    assert_eq!(server.get("/api/tokens").0, 200);
    assert_eq!(server.get_as(Some(ADMIN_TOKEN), "/api/tokens").0, 401);

    let url = server.sqlite_url();
    let hashes = || {
        let db = Db::connect(&url, 1).unwrap();
        let mut h: Vec<String> = db
            .tokens()
            .unwrap()
            .into_iter()
            .filter(|t| t.role == "admin")
            .map(|t| t.hash)
            .collect();
        h.sort();
        h
    };
    let before = hashes();
    assert_eq!(before.len(), 1);

    assert!(server.terminate().success());
    server.restart();
    let log = server.log_text();
    assert!(!log.contains(MARK), "{log}");
    assert!(log.contains("an admin token exists"), "{log}");
    assert!(!log.contains(&secret));
    assert_eq!(server.get("/api/tokens").0, 200);
    assert_eq!(hashes(), before);
}

#[test]
fn commands_are_recorded_with_sender_and_final_status() {
    let server = TestServer::start();
    let dev = online_device(&server, 7401);
    let alice = token(&server, "alice", "operator", None);
    let viewer = token(&server, "watcher", "viewer", Some(json!(["74*"])));
    let outsider = token(&server, "outsider", "viewer", Some(json!(["99*"])));

    let (status, body) = server.post_as(
        Some(&alice),
        "/api/devices/7401/commands",
        &json!({"type":"write_register","address":2100,"value":7}),
    );
    assert_eq!(status, 200, "{body}");
    let ok_id = body["id"].as_str().unwrap().to_string();
    let record = wait_for("the ok command record", || {
        let (status, r) = server.get_as(Some(&viewer), &format!("/api/commands/{ok_id}"));
        (status == 200 && r["status"] == "ok").then_some(r)
    });
    assert_eq!(record["id"], ok_id.as_str());
    assert_eq!(record["device_id"], "7401");
    assert_eq!(record["requested_by"], "alice");
    assert_eq!(record["request"]["type"], "write_register");
    assert_eq!(record["request"]["value"], 7);
    assert_eq!(record["result"]["value"], 7);
    assert!(record["error"].is_null());
    assert!(record["created_at"].is_string() && record["updated_at"].is_string());

    // A muted device: 504 and the record ends as timeout.
    dev.mute(true);
    let (status, body) = server.post_as(
        Some(&alice),
        "/api/devices/7401/commands",
        &json!({"type":"read","function":3,"start":0,"count":1}),
    );
    assert_eq!(status, 504, "{body}");
    let timeout_id = body["id"].as_str().unwrap().to_string();
    assert_ne!(timeout_id, ok_id);
    let record = wait_for("the timeout command record", || {
        let (status, r) = server.get(&format!("/api/commands/{timeout_id}"));
        (status == 200 && r["status"] == "timeout").then_some(r)
    });
    assert_eq!(record["requested_by"], "alice");
    assert!(record["error"].is_string());
    dev.mute(false);

    // Out of reach, unknown, malformed.
    assert_eq!(
        server
            .get_as(Some(&outsider), &format!("/api/commands/{ok_id}"))
            .0,
        403
    );
    let (status, body) = server.get("/api/commands/cdoesnotexist");
    assert_eq!((status, is_json_error(&body)), (404, true));
    let (status, _) = server.get(&format!("/api/commands/{}", "c".repeat(100)));
    assert_eq!(status, 400);
}

/// Sends a raw request and returns the status and the body as JSON (None if not JSON).
fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Option<Value>) {
    let mut req = ureq::request(method, &server.url(path)).timeout(DEADLINE);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let r = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let (status, body) = answer(r);
    let json = match body {
        Value::String(s) => serde_json::from_str(&s).ok(),
        v => Some(v),
    };
    (status, json)
}

#[test]
fn malformed_bodies_paths_and_headers_get_json_4xx() {
    let server = TestServer::start();
    let _dev = online_device(&server, 7501);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let json_ct = ("Content-Type", "application/json");
    let auth = ("Authorization", bearer.as_str());
    let long_id = "9".repeat(65);
    let huge = format!(
        "{{\"name\":\"{}\",\"role\":\"viewer\"}}",
        "x".repeat(70_000)
    );

    let posts = [
        "/api/devices/7501/commands".to_string(),
        "/api/tokens".to_string(),
    ];
    let bodies: Vec<&str> = vec![
        "",
        "{",
        "{not json",
        "null",
        "[]",
        "42",
        "\"str\"",
        "{\"type\":1}",
        "{\"type\":\"read\",\"bogus\":true}",
        "{\"name\":\"x\",\"role\":\"viewer\",\"bogus\":true}",
        "{\"type\":\"read\",\"function\":3,\"start\":70000,\"count\":1}",
        "{\"type\":\"read\",\"function\":3,\"start\":0,\"count\":-1}",
        "{\"type\":\"raw\",\"hex\":\"zz\"}",
        "{\"type\":\"write_registers\",\"address\":1,\"values\":[1,\"a\"]}",
        "{\"type\":\"named\",\"name\":\"no_such_command\"}",
        "{\"name\":\"\\u0000\",\"role\":[]}",
        "\u{feff}{}",
    ];
    for path in &posts {
        for body in &bodies {
            let (status, answer) = raw(&server, "POST", path, &[json_ct, auth], Some(body));
            assert!(
                (400..500).contains(&status),
                "{path} {body:?}: {status} {answer:?}"
            );
            assert!(
                answer.as_ref().is_some_and(is_json_error),
                "{path} {body:?}: {answer:?}"
            );
        }
        // Wrong content type: 415; too large: 413; both JSON.
        let (status, answer) = raw(
            &server,
            "POST",
            path,
            &[("Content-Type", "text/plain"), auth],
            Some("{}"),
        );
        assert_eq!(status, 415, "{path}: {answer:?}");
        assert!(answer.as_ref().is_some_and(is_json_error));
        let (status, answer) = raw(&server, "POST", path, &[json_ct, auth], Some(&huge));
        assert_eq!(status, 413, "{path}: {answer:?}");
        assert!(answer.as_ref().is_some_and(is_json_error));
        // Headers that are not a valid token.
        for value in [
            "Bearer",
            "Bearer ",
            "Basic YWRtaW46YWRtaW4=",
            "bearer wrong",
            "Token test-admin-token-0123456789",
            &format!("Bearer {ADMIN_TOKEN}x"),
            &format!("Bearer {}", "A".repeat(5000)),
        ] {
            let (status, answer) = raw(
                &server,
                "POST",
                path,
                &[json_ct, ("Authorization", value)],
                Some("{}"),
            );
            assert_eq!(status, 401, "{path} {value:?}: {answer:?}");
            assert!(answer.as_ref().is_some_and(is_json_error));
        }
    }
    // Bad path ids.
    for path in [
        format!("/api/devices/{long_id}/commands"),
        format!("/api/devices/{long_id}"),
        format!("/api/devices/{long_id}/telemetry"),
    ] {
        let method = if path.ends_with("commands") {
            "POST"
        } else {
            "GET"
        };
        let (status, answer) = raw(&server, method, &path, &[json_ct, auth], Some(WRITE));
        assert_eq!(status, 400, "{path}: {answer:?}");
        assert!(answer.as_ref().is_some_and(is_json_error));
    }
    for path in [
        "/api/devices/%FF%FE/commands",
        "/api/devices/a%2Fb/commands",
        "/api/devices//commands",
        "/api/tokens/%00",
        "/api/nothing/here",
    ] {
        let (status, answer) = raw(&server, "POST", path, &[json_ct, auth], Some(WRITE));
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(
            answer.as_ref().is_some_and(is_json_error),
            "{path}: {status} {answer:?}"
        );
    }
    // Still up.
    assert_eq!(server.get_as(None, "/api/health").0, 200);
    assert_eq!(server.get("/api/devices/7501").0, 200);
}
