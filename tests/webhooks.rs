//! End-to-end: webhook subscribers from server.toml and from the API, delivering to real HTTP
//! receivers on loopback; signatures verified here with HMAC-SHA256; retries, the delivery log,
//! and dead or slow receivers that must not hold up devices or other receivers.

mod common;

use std::time::Duration;

use common::device::FakeDevice;
use common::receiver::Receiver;
use common::{free_port, wait_for, Options, TestServer};
use serde_json::{json, Value};

/// Small delivery settings so that retries and pauses happen within a test.
fn delivery(extra: &str) -> String {
    format!(
        r#"
[webhook_delivery]
timeout = "2s"
max_attempts = 3
backoff_initial = "50ms"
backoff_max = "200ms"
pause_after = 2
pause_for = "1s"
{extra}
"#
    )
}

fn webhook(url: &str, events: &str, secret: &str) -> String {
    format!("\n[[webhooks]]\nurl = \"{url}\"\nevents = {events}\nsecret = \"{secret}\"\n")
}

fn server_with(toml: String) -> TestServer {
    TestServer::start_with(Options {
        extra_server_toml: toml,
        ..Options::default()
    })
}

fn online(server: &TestServer, number: u32) -> FakeDevice {
    let dev = FakeDevice::framed(server.framed, number);
    wait_for("device online", || {
        server.online(&number.to_string()).then_some(())
    });
    dev
}

/// Waits until the receiver holds an envelope of `event` for `device`; returns it and its request.
fn wait_event(rx: &Receiver, event: &str, device: &str) -> (common::receiver::Received, Value) {
    wait_for(&format!("a {event} webhook for {device}"), || {
        rx.envelopes()
            .into_iter()
            .find(|(_, e)| e["event"] == event && e["device_id"] == device)
    })
}

#[test]
fn every_event_type_arrives_signed() {
    let rx = Receiver::ok();
    let server = server_with(delivery("") + &webhook(&rx.url(), r#"["*"]"#, "s3cret"));
    let dev = online(&server, 8101);

    let (req, env) = wait_event(&rx, "device.online", "8101");
    assert!(req.signed_with("s3cret"), "{:?}", req.headers);
    assert!(!req.signed_with("other"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.path, "/hook");
    for key in ["id", "event", "device_id", "at", "data"] {
        assert!(env.get(key).is_some(), "{key} missing in {env}");
    }
    assert_eq!(req.header("x-dtu-event"), Some("device.online"));
    assert_eq!(req.header("x-dtu-delivery"), env["id"].as_str());

    dev.set_registers(2000, &[235]);
    let (req, env) = wait_for("telemetry with temperature 23.5", || {
        rx.envelopes().into_iter().find(|(_, e)| {
            e["event"] == "telemetry"
                && e["device_id"] == "8101"
                && e["data"]["values"]["temperature"]
                    .as_f64()
                    .is_some_and(|t| (t - 23.5).abs() < 1e-9)
        })
    });
    assert!(req.signed_with("s3cret"));
    assert_eq!(req.header("x-dtu-event"), Some("telemetry"));
    assert!(env["data"]["values"].is_object(), "{env}");

    let (status, body) = server.post(
        "/api/devices/8101/commands",
        &json!({"type":"write_register","address":2100,"value":1}),
    );
    assert_eq!(status, 200, "{body}");
    let (req, env) = wait_event(&rx, "command.completed", "8101");
    assert!(req.signed_with("s3cret"));
    assert_eq!(req.header("x-dtu-event"), Some("command.completed"));
    assert!(env["data"].is_object(), "{env}");
    assert_eq!(env["data"]["command_id"], body["id"], "{env}");
    assert_eq!(env["data"]["status"], "ok", "{env}");
    // Whoever reacts to the event finds the command's final state already stored.
    let (status, record) = server.get(&format!(
        "/api/commands/{}",
        env["data"]["command_id"].as_str().expect("command id")
    ));
    assert_eq!(
        (status, record["status"].as_str()),
        (200, Some("ok")),
        "{record}"
    );

    dev.mute(true);
    let (req, _) = wait_event(&rx, "poll.failed", "8101");
    assert!(req.signed_with("s3cret"));
    dev.mute(false);

    dev.close();
    let (req, env) = wait_event(&rx, "device.offline", "8101");
    assert!(req.signed_with("s3cret"));
    assert!(env["data"]["reason"].is_string(), "{env}");

    // Every request, batches included, is signed, and a batch says how many it carries.
    for r in rx.received() {
        assert!(r.signed_with("s3cret"), "{:?}", r.headers);
        let n = r.envelopes().len();
        if n > 1 {
            assert_eq!(r.header("x-dtu-batch"), Some(n.to_string().as_str()));
            assert_eq!(r.header("x-dtu-event"), Some("telemetry"));
        }
    }

    // The settings subscriber is listed, its secret not shown, and it cannot be deleted.
    let (status, list) = server.get("/api/webhooks");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], "settings-1");
    assert_eq!(list[0]["source"], "settings");
    assert_eq!(list[0]["has_secret"], true);
    assert!(!list.to_string().contains("s3cret"));
    let (status, body) = server.delete_as(Some(common::ADMIN_TOKEN), "/api/webhooks/settings-1");
    assert_eq!(status, 409, "{body}");
    let (status, log) = server.get("/api/webhooks/settings-1/deliveries");
    assert_eq!(status, 200, "{log}");
    assert!(log
        .as_array()
        .is_some_and(|l| l.iter().any(|d| d["outcome"] == "ok")));
}

#[test]
fn a_failing_receiver_gets_retries_and_every_attempt_is_logged() {
    let rx = Receiver::start(500, Duration::ZERO);
    let server = server_with(delivery(""));
    let (status, hook) = server.post(
        "/api/webhooks",
        &json!({"url": rx.url(), "events": ["device.online"], "secret": "k"}),
    );
    assert_eq!(status, 201, "{hook}");
    let wid = hook["id"].as_str().expect("id").to_string();
    let _dev = online(&server, 8201);

    // max_attempts = 3: the same delivery three times.
    let delivery_id = wait_for("three attempts at the receiver", || {
        let got = rx.received();
        let first = got
            .iter()
            .find(|r| r.header("x-dtu-event") == Some("device.online"))?;
        let id = first.header("x-dtu-delivery")?.to_string();
        let same = got
            .iter()
            .filter(|r| r.header("x-dtu-delivery") == Some(id.as_str()))
            .count();
        (same >= 3).then_some(id)
    });
    let log = wait_for("three attempts in the delivery log", || {
        let (_, log) = server.get(&format!("/api/webhooks/{wid}/deliveries"));
        let attempts: Vec<Value> = log
            .as_array()?
            .iter()
            .filter(|d| d["delivery"] == delivery_id.as_str())
            .cloned()
            .collect();
        (attempts.len() == 3).then_some(attempts)
    });
    let mut numbers: Vec<i64> = log.iter().filter_map(|d| d["attempt"].as_i64()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3]);
    for d in &log {
        assert_eq!(d["outcome"], "http_error", "{d}");
        assert_eq!(d["status_code"], 500, "{d}");
        assert_eq!(d["event"], "device.online");
        assert!(
            d["latency_ms"].as_i64().is_some() && d["at"].is_string(),
            "{d}"
        );
    }
    // No fourth attempt of that delivery.
    assert_eq!(
        rx.received()
            .iter()
            .filter(|r| r.header("x-dtu-delivery") == Some(delivery_id.as_str()))
            .count(),
        3
    );

    // A second delivery given up on (pause_after = 2) pauses the subscriber...
    let _dev3 = online(&server, 8203);
    let entry = |server: &TestServer| {
        let (_, list) = server.get("/api/webhooks");
        list.as_array()
            .and_then(|l| l.iter().find(|w| w["id"] == wid.as_str()).cloned())
    };
    wait_for("the subscriber to be paused", || {
        entry(&server).filter(|w| w["paused"] == true && w["failed"] == 2)
    });
    // ...and once it answers 2xx again, the next delivery goes through and resumes it.
    rx.set_status(204);
    let _dev2 = online(&server, 8202);
    wait_for("a delivered device.online of 8202", || {
        let (_, log) = server.get(&format!("/api/webhooks/{wid}/deliveries"));
        log.as_array()?
            .iter()
            .find(|d| d["outcome"] == "ok" && d["status_code"] == 204)
            .cloned()
    });
    wait_for("the subscriber to be resumed", || {
        entry(&server).filter(|w| w["paused"] == false && w["delivered"] == 1)
    });
}

#[test]
fn api_subscribers_are_admin_only_validated_tested_and_kept() {
    let rx = Receiver::ok();
    let mut server = server_with(delivery(""));

    let (status, viewer) = server.post(
        "/api/tokens",
        &json!({"name": "watcher", "role": "operator"}),
    );
    assert_eq!(status, 201, "{viewer}");
    let viewer = viewer["token"].as_str().expect("token").to_string();
    let body = json!({"url": rx.url(), "events": ["*"]});
    for (status, body) in [
        server.get_as(Some(&viewer), "/api/webhooks"),
        server.post_as(Some(&viewer), "/api/webhooks", &body),
        server.delete_as(Some(&viewer), "/api/webhooks/wabc"),
        server.post_as(Some(&viewer), "/api/webhooks/wabc/test", &json!({})),
        server.get_as(Some(&viewer), "/api/webhooks/wabc/deliveries"),
    ] {
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }

    for bad in [
        json!({"url": "ftp://example.com/x", "events": ["*"]}),
        json!({"url": "http://", "events": ["*"]}),
        json!({"url": "not a url", "events": ["*"]}),
        json!({"url": "http://host:99999/x", "events": ["*"]}),
        json!({"url": rx.url(), "events": ["device.exploded"]}),
        json!({"url": rx.url(), "events": ["*", "bogus.event"]}),
        json!({"url": rx.url(), "events": []}),
        json!({"url": rx.url(), "events": ["*"], "devices": ["a*b"]}),
        json!({"url": rx.url(), "events": ["*"], "colour": "red"}),
        json!({"events": ["*"]}),
    ] {
        let (status, body) = server.post("/api/webhooks", &bad);
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(body["error"].is_string(), "{body}");
    }

    let (status, hook) = server.post(
        "/api/webhooks",
        &json!({"url": rx.url(), "events": ["device.online", "device.offline"],
                "secret": "t0p", "devices": ["83*"]}),
    );
    assert_eq!(status, 201, "{hook}");
    let wid = hook["id"].as_str().expect("id").to_string();
    assert_eq!(hook["source"], "api");
    assert_eq!(hook["devices"], json!(["83*"]));

    let (status, test) = server.post(&format!("/api/webhooks/{wid}/test"), &json!({}));
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["ok"], true, "{test}");
    let got = rx.received();
    let req = got
        .iter()
        .find(|r| r.header("x-dtu-event") == Some("webhook.test"))
        .expect("test delivery received");
    assert!(req.signed_with("t0p"));
    assert_eq!(req.json()["data"]["webhook"], wid.as_str());
    let entry = wait_for("the test delivery in the log", || {
        let (status, log) = server.get(&format!("/api/webhooks/{wid}/deliveries"));
        assert_eq!(status, 200, "{log}");
        log.as_array()?
            .iter()
            .find(|d| d["event"] == "webhook.test")
            .cloned()
    });
    assert_eq!(entry["outcome"], "ok", "{entry}");
    assert_eq!(entry["delivery"], test["delivery"], "{entry}");

    // The device filter: 8301 matches 83*, 8401 does not.
    let _a = online(&server, 8401);
    let _b = online(&server, 8301);
    wait_event(&rx, "device.online", "8301");
    assert!(!rx.envelopes().iter().any(|(_, e)| e["device_id"] == "8401"));

    // Kept across a restart.
    server.terminate();
    server.restart();
    let (status, list) = server.get("/api/webhooks");
    assert_eq!(status, 200, "{list}");
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|w| w["id"] == wid.as_str())),
        "{list}"
    );
    let (status, test) = server.post(&format!("/api/webhooks/{wid}/test"), &json!({}));
    assert_eq!((status, &test["ok"]), (200, &json!(true)), "{test}");

    let (status, body) =
        server.delete_as(Some(common::ADMIN_TOKEN), &format!("/api/webhooks/{wid}"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get(&format!("/api/webhooks/{wid}/deliveries"));
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        server.delete_as(Some(common::ADMIN_TOKEN), &format!("/api/webhooks/{wid}"));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn dead_and_slow_receivers_do_not_hold_up_devices_or_healthy_receivers() {
    let healthy = Receiver::ok();
    let slow = Receiver::start(200, Duration::from_secs(10));
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let toml = delivery("queue = 4\nbatch_max = 2")
        + &webhook(&dead, r#"["*"]"#, "d")
        + &webhook(&slow.url(), r#"["*"]"#, "s")
        + &webhook(&healthy.url(), r#"["*"]"#, "h");
    let server = server_with(toml);
    let a = online(&server, 8501);
    let b = online(&server, 8502);

    // The slow receiver is holding a request and the dead one has failed attempts...
    wait_for("the slow receiver to be stuck in a request", || {
        (slow.in_flight() > 0).then_some(())
    });
    wait_for("connect errors to the dead receiver", || {
        let (_, log) = server.get("/api/webhooks/settings-1/deliveries");
        log.as_array()?
            .iter()
            .find(|d| d["outcome"] == "connect_error")
            .cloned()
    });
    // ...while both devices keep being polled and the healthy receiver keeps getting their
    // telemetry.
    let polls = (a.reads_at(2000), b.reads_at(2000));
    let seen = |dev: &str| {
        healthy
            .envelopes()
            .iter()
            .filter(|(_, e)| e["event"] == "telemetry" && e["device_id"] == dev)
            .count()
    };
    let delivered = (seen("8501"), seen("8502"));
    wait_for("more polls and more healthy deliveries", || {
        (a.reads_at(2000) >= polls.0 + 5
            && b.reads_at(2000) >= polls.1 + 5
            && seen("8501") >= delivered.0 + 5
            && seen("8502") >= delivered.1 + 5)
            .then_some(())
    });

    // The slow receiver's attempts time out; the dead one is paused and its queue (4 events)
    // overflows, which is visible in the list, the log and the metrics.
    wait_for("timeouts recorded for the slow receiver", || {
        let (_, log) = server.get("/api/webhooks/settings-2/deliveries");
        log.as_array()?
            .iter()
            .find(|d| d["outcome"] == "timeout")
            .cloned()
    });
    wait_for("an overflow of the dead receiver", || {
        let (_, list) = server.get("/api/webhooks");
        let dead = list
            .as_array()?
            .iter()
            .find(|w| w["id"] == "settings-1")?
            .clone();
        let (_, log) = server.get("/api/webhooks/settings-1/deliveries");
        let overflow = log
            .as_array()?
            .iter()
            .find(|d| d["outcome"] == "overflow")
            .cloned()?;
        (dead["dropped"].as_u64()? > 0 && dead["paused"] == true).then_some((dead, overflow))
    });
    let (_, list) = server.get("/api/webhooks");
    let healthy_entry = list
        .as_array()
        .and_then(|l| l.iter().find(|w| w["id"] == "settings-3").cloned())
        .expect("healthy subscriber listed");
    assert_eq!(healthy_entry["paused"], false, "{healthy_entry}");
    assert_eq!(healthy_entry["failed"], 0, "{healthy_entry}");
}

#[test]
fn settings_reject_bad_webhooks_with_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[[webhooks]]\nurl = \"gopher://x\"\nevents = [\"*\"]\n",
            "webhooks[0].url",
        ),
        (
            "[[webhooks]]\nurl = \"http://x/h\"\nevents = [\"device.onlin\"]\n",
            "webhooks[0].events[0]",
        ),
        (
            "[[webhooks]]\nurl = \"http://x/h\"\nevents = [\"*\"]\ndevices = [\"a*b\"]\n",
            "webhooks[0].devices[0]",
        ),
        (
            "[webhook_delivery]\nmax_attempts = 0\n",
            "webhook_delivery.max_attempts",
        ),
        (
            "[webhook_delivery]\nbackoff_initial = \"5s\"\nbackoff_max = \"1s\"\n",
            "webhook_delivery.backoff_max",
        ),
    ];
    for (toml, key) in cases {
        std::fs::write(dir.path().join("server.toml"), toml).expect("write");
        std::fs::write(dir.path().join("data.toml"), common::DATA_TOML).expect("write");
        let out = std::process::Command::new(common::binary())
            .arg("check")
            .arg("--settings")
            .arg(dir.path())
            .output()
            .expect("run --check");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{toml} accepted: {text}");
        assert!(text.contains("server.toml"), "{text}");
        assert!(text.contains(key), "{key} not in {text}");
    }
}

#[test]
fn telemetry_waiting_for_a_slow_receiver_comes_in_batches() {
    let rx = Receiver::start(200, Duration::from_millis(1500));
    let toml = format!(
        "\n[webhook_delivery]\ntimeout = \"20s\"\nbatch_max = 50\n{}",
        webhook(&rx.url(), r#"["telemetry"]"#, "b")
    );
    let server = server_with(toml);
    let _a = online(&server, 8601);
    let _b = online(&server, 8602);
    let batch = wait_for("a batched POST", || {
        rx.received().into_iter().find(|r| r.envelopes().len() > 1)
    });
    let envelopes = batch.envelopes();
    assert!(batch.signed_with("b"), "{:?}", batch.headers);
    assert_eq!(batch.header("x-dtu-event"), Some("telemetry"));
    assert_eq!(
        batch.header("x-dtu-batch"),
        Some(envelopes.len().to_string().as_str())
    );
    assert_eq!(
        batch.header("x-dtu-delivery").map(|d| d.to_string()),
        envelopes[0]["id"].as_str().map(|id| format!("b{id}"))
    );
    assert!(envelopes.iter().all(|e| e["event"] == "telemetry"));
    // Events of each device stay in order across requests.
    for dev in ["8601", "8602"] {
        let times: Vec<String> = rx
            .envelopes()
            .iter()
            .filter(|(_, e)| e["device_id"] == dev)
            .filter_map(|(_, e)| e["at"].as_str().map(str::to_string))
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "{dev}");
    }
}
