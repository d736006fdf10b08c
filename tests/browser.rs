//! End-to-end in a real browser: the console served by the real binary, driven in headless
//! Chromium through chromedriver (tests/common/webdriver.rs), with fake DTUs on real sockets.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`),
//! hence ignored by default; `.ci/run` installs them and runs
//! `cargo test --test browser -- --ignored`.
//!
//! Every check waits for the DOM to show the expected state (or a generous deadline), so the
//! tests pass whether live updates come over the WebSocket stream or by polling.

mod common;

use common::device::FakeDevice;
use common::webdriver::Browser;
use common::{wait_for, Options, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Opens the console and signs in with `token`.
fn sign_in(b: &Browser, server: &TestServer, token: &str) {
    b.goto(&server.url("/"));
    b.wait_visible("#login");
    b.type_into("#token", token);
    b.click("#login-submit");
}

/// Signs in as admin and waits for the device list.
fn admin_console(server: &TestServer) -> Browser {
    let b = Browser::start();
    sign_in(&b, server, ADMIN_TOKEN);
    b.wait_visible("#device-table");
    b
}

fn stored_token(b: &Browser) -> Value {
    b.eval("return sessionStorage.getItem('dtu-token');", vec![])
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn a_bad_token_shows_an_error_and_stays_on_login() {
    let server = TestServer::start();
    let b = Browser::start();
    sign_in(&b, &server, "not-the-token");
    let msg = b.wait_text("#login-error", "the refusal", |t| !t.is_empty());
    assert!(msg.contains("401") && msg.contains("refused"), "{msg}");
    assert!(b.visible("#login"));
    assert!(!b.visible("#devices"));
    assert!(!b.visible("#logout"));
    assert_eq!(stored_token(&b), Value::Null);
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn the_device_list_shows_a_device_coming_online_and_going_offline_without_reload() {
    let server = TestServer::start();
    let b = admin_console(&server);
    b.wait_text("#summary", "an empty fleet", |t| t == "0 online of 0");
    assert_eq!(stored_token(&b), json!(ADMIN_TOKEN));
    // Live updates come from the stream, or from polling while it cannot open; either is
    // announced. DTU_EXPECT_STREAM=1 insists on the stream.
    if std::env::var("DTU_EXPECT_STREAM").is_ok_and(|v| v == "1") {
        b.wait_text("#live", "the live stream", |t| t.contains("live"));
    } else {
        let mode = b.wait_text("#live", "the update mode", |t| !t.is_empty());
        assert!(mode.contains("live") || mode.contains("polling"), "{mode}");
    }
    // A marker that a reload would wipe.
    b.eval("window.__sameDocument = true;", vec![]);

    let dev = FakeDevice::framed(server.framed, 4711);
    let row = "#device-table tr[data-id=\"4711\"]";
    b.wait_text(&format!("{row} td.state"), "online", |t| t == "online");
    b.wait_text("#summary", "one online", |t| t == "1 online of 1");
    let text = b.text(row).unwrap_or_default();
    assert!(
        text.contains("framed") && text.contains("127.0.0.1"),
        "{text}"
    );

    dev.close();
    b.wait_text(&format!("{row} td.state"), "offline", |t| t == "offline");
    b.wait_text("#summary", "none online", |t| t == "0 online of 1");
    assert_eq!(
        b.eval("return window.__sameDocument === true;", vec![]),
        json!(true),
        "the page was reloaded"
    );

    // Every asset came from this server: nothing fetched from anywhere else.
    let foreign = b.eval(
        "return performance.getEntriesByType('resource').map(e => e.name)\
           .concat([...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href))\
           .filter(u => !u.startsWith(location.origin));",
        vec![],
    );
    assert_eq!(foreign, json!([]), "assets from elsewhere");
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn the_device_page_shows_decoded_values_history_and_a_read_answer() {
    let server = TestServer::start();
    // temperature i16 * 0.1 at 2000; pressure u16 * 0.01 at 2300 (polled on heartbeat).
    let mut dev = FakeDevice::framed_with(server.framed, 5001, &[(2000, &[235]), (2300, &[1234])]);
    dev.heartbeat();
    let b = admin_console(&server);
    b.click("#device-table tr[data-id=\"5001\"] a");
    b.wait_text("#device-title", "the device title", |t| t == "Device 5001");
    let temp = "#values tr[data-point=\"temperature\"]";
    b.wait_text(&format!("{temp} td:nth-child(2)"), "23.5", |t| t == "23.5");
    assert_eq!(
        b.text(&format!("{temp} td:nth-child(3)")).as_deref(),
        Some("°C")
    );
    b.wait_text(
        "#values tr[data-point=\"pressure\"] td:nth-child(2)",
        "12.34",
        |t| t == "12.34",
    );
    b.wait_text("#device-state", "online", |t| t == "online");

    // A changed register shows up without touching the page.
    dev.set_registers(2000, &[-51i16 as u16]);
    b.wait_text(&format!("{temp} td:nth-child(2)"), "-5.1", |t| t == "-5.1");

    // History: the chart draws the stored values of the selected point; packets and
    // connection events are listed.
    b.wait_visible("#chart polyline.series");
    b.wait_text("#chart-note", "a summary of the values", |t| {
        t.contains("values")
    });
    b.wait_text("#events tbody", "the connect event", |t| {
        t.contains("connect")
    });
    b.wait_text("#packets tbody", "packets", |t| !t.trim().is_empty());

    // The export link downloads this device's history with the token in the query.
    let href = b
        .eval("return document.querySelector('#export-csv').href;", vec![])
        .as_str()
        .map(str::to_string)
        .expect("export href");
    assert!(
        href.contains("format=csv") && href.contains("device=5001"),
        "{href}"
    );
    let csv = ureq::get(&href)
        .call()
        .expect("download the export")
        .into_string()
        .expect("csv text");
    assert!(csv.contains("temperature"), "{csv}");

    // A read command: the JSON answer and its decoded values.
    b.type_into("#cmd-start", "2000");
    b.type_into("#cmd-count", "1");
    dev.set_registers(2000, &[300]);
    b.click("#cmd-send");
    let status = b.wait_text("#cmd-status", "the answer", |t| t.starts_with("200"));
    assert!(status.contains("ok"), "{status}");
    let result = b.text("#cmd-result").unwrap_or_default();
    assert!(
        result.contains("\"registers\"") && result.contains("300"),
        "{result}"
    );
    b.wait_text(
        "#cmd-values-table tr:first-child td:nth-child(2)",
        "30",
        |t| t == "30",
    );

    // A bad input is explained before anything is sent.
    b.type_into("#cmd-start", "two thousand");
    b.click("#cmd-send");
    b.wait_text("#cmd-status", "the input error", |t| {
        t.contains("start must be a whole number")
    });
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn command_errors_are_shown_with_their_status() {
    let server = TestServer::start();
    let _dev = FakeDevice::framed(server.framed, 6001);
    wait_for("device online", || server.online("6001").then_some(()));
    let (status, body) = server.post("/api/tokens", &json!({"name": "eyes", "role": "viewer"}));
    assert_eq!(status, 201, "{body}");
    let viewer = body["token"].as_str().expect("token").to_string();

    let b = Browser::start();
    sign_in(&b, &server, &viewer);
    b.wait_visible("#device-table");
    b.click("#device-table tr[data-id=\"6001\"] a");
    b.wait_text("#device-state", "online", |t| t == "online");
    b.type_into("#cmd-start", "2000");
    b.click("#cmd-send");
    let msg = b.wait_text("#cmd-status", "the refusal", |t| t.starts_with("403"));
    assert!(msg.contains("operator"), "{msg}");
    // The viewer still reads: no webhook tab, no admin views.
    assert!(!b.visible("#nav-webhooks"));
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn text_from_the_server_is_shown_as_text_never_as_markup() {
    let data = common::DATA_TOML.replace(
        "unit = \"°C\"",
        "unit = \"<img src=x onerror=\\\"window.__injected=1\\\">\"",
    );
    let server = TestServer::start_with(Options {
        data_toml: data,
        ..Options::default()
    });
    let _dev = FakeDevice::framed_with(server.framed, 7001, &[(2000, &[100])]);
    let b = admin_console(&server);
    b.click("#device-table tr[data-id=\"7001\"] a");
    let unit = b.wait_text(
        "#values tr[data-point=\"temperature\"] td:nth-child(3)",
        "the unit",
        |t| !t.is_empty(),
    );
    assert_eq!(unit, "<img src=x onerror=\"window.__injected=1\">");
    assert_eq!(
        b.eval(
            "return document.querySelectorAll('main img').length === 0 && window.__injected === undefined;",
            vec![]
        ),
        json!(true)
    );
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn logout_returns_to_login_and_forgets_the_token() {
    let server = TestServer::start();
    let b = admin_console(&server);
    assert_eq!(stored_token(&b), json!(ADMIN_TOKEN));
    // A reload keeps the session (the token is in sessionStorage) ...
    b.goto(&server.url("/"));
    b.wait_visible("#device-table");
    assert!(!b.visible("#login"));

    b.click("#logout");
    b.wait_visible("#login");
    assert!(!b.visible("#devices") && !b.visible("#logout"));
    assert_eq!(stored_token(&b), Value::Null);
    // ... and after logging out a reload asks for the token again.
    b.goto(&server.url("/"));
    b.wait_visible("#login");
    assert!(!b.visible("#device-table"));
}

#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn a_revoked_token_sends_the_console_back_to_login_with_a_message() {
    let server = TestServer::start();
    let (status, body) = server.post("/api/tokens", &json!({"name": "temp", "role": "operator"}));
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    let tid = body["id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body["id"].to_string());

    let b = Browser::start();
    sign_in(&b, &server, &token);
    b.wait_visible("#device-table");
    let (status, body) = server.delete_as(Some(ADMIN_TOKEN), &format!("/api/tokens/{tid}"));
    assert!(status == 200 || status == 204, "{status} {body}");
    // The next poll (or reconnect of the stream) is refused; the console says so.
    // Opening a device page asks the server at once.
    b.eval("location.hash = '#/device/1';", vec![]);
    let msg = b.wait_text("#login-error", "the refusal", |t| t.contains("401"));
    assert!(msg.contains("Sign in again"), "{msg}");
    assert_eq!(stored_token(&b), Value::Null);
}

/// The stream's envelopes (contract section 5) as the console's WebSocket handler receives
/// them. Polling and the stream are stopped first, so only these events change the page.
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn stream_envelopes_update_the_list_and_the_device_page() {
    let server = TestServer::start();
    let _dev = FakeDevice::framed_with(server.framed, 8001, &[(2000, &[200])]);
    let b = admin_console(&server);
    let row =
        |id: &str, col: usize| format!("#device-table tr[data-id=\"{id}\"] td:nth-child({col})");
    b.wait_text(&row("8001", 2), "online", |t| t == "online");
    b.eval("stopPolling(); closeStream(); state.refetch = -1;", vec![]);
    let inject = |event: Value| {
        b.eval(
            "handleEvent(JSON.parse(arguments[0]));",
            vec![json!(event.to_string())],
        );
    };
    let at = "2026-01-02T03:04:05Z";

    inject(
        json!({"id": "e1", "event": "device.offline", "device_id": "8001", "at": at,
                  "data": {"reason": "heartbeat_timeout"}}),
    );
    b.wait_text(&row("8001", 2), "offline", |t| t == "offline");
    b.wait_text(&row("8001", 8), "the reason", |t| {
        t == "offline: heartbeat_timeout"
    });
    b.wait_text("#summary", "none online", |t| t == "0 online of 1");

    inject(
        json!({"id": "e2", "event": "device.online", "device_id": "8002", "at": at,
                  "data": {"protocol": "transparent", "profile": "usr-meter", "remote_addr": "10.0.0.7:5000"}}),
    );
    b.wait_text(&row("8002", 2), "online", |t| t == "online");
    assert_eq!(b.text(&row("8002", 3)).as_deref(), Some("transparent"));
    assert_eq!(b.text(&row("8002", 5)).as_deref(), Some("10.0.0.7:5000"));
    b.wait_text("#summary", "one online", |t| t == "1 online of 2");

    inject(
        json!({"id": "e3", "event": "poll.failed", "device_id": "8002", "at": at,
                  "data": {"poll": "block", "error": "no answer"}}),
    );
    b.wait_text(&row("8002", 8), "the failure", |t| {
        t == "poll failed (block): no answer"
    });

    // On the device page a telemetry event replaces the shown value, keeping its unit.
    b.eval("location.hash = '#/device/8001';", vec![]);
    let temp = "#values tr[data-point=\"temperature\"]";
    b.wait_text(&format!("{temp} td:nth-child(2)"), "20", |t| t == "20");
    b.eval("clearInterval(state.pageTimer);", vec![]);
    inject(
        json!({"id": "e4", "event": "telemetry", "device_id": "8001", "at": at,
                  "data": {"values": {"temperature": 42.5}}}),
    );
    b.wait_text(&format!("{temp} td:nth-child(2)"), "42.5", |t| t == "42.5");
    assert_eq!(
        b.text(&format!("{temp} td:nth-child(3)")).as_deref(),
        Some("°C")
    );

    // A followed (queued) command ends on its command.completed event, without polling.
    b.eval(
        "trackCommand('c-streamed', 'queued'); clearInterval(state.track.timer);",
        vec![],
    );
    b.wait_text("#cmd-track-status", "queued", |t| t == "queued");
    inject(
        json!({"id": "e5", "event": "command.completed", "device_id": "8001", "at": at,
                  "data": {"command_id": "c-other", "status": "failed", "error": "not this one"}}),
    );
    inject(
        json!({"id": "e6", "event": "command.completed", "device_id": "8001", "at": at,
                  "data": {"command_id": "c-streamed", "status": "ok",
                           "result": {"address": 2100, "value": 3}, "error": null}}),
    );
    b.wait_text("#cmd-track-status", "ok", |t| t == "ok");
    assert_eq!(b.text("#cmd-track-trail").as_deref(), Some("queued → ok"));
    let result = b.text("#cmd-result").unwrap_or_default();
    assert!(result.contains("2100"), "{result}");
}

/// The webhook view is the admin's, and only where the server has the webhook API: with it,
/// subscribers and their deliveries are listed; without it (404) the tab stays hidden and the
/// page says so.
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn webhooks_are_listed_for_admins_where_the_api_exists() {
    let server = TestServer::start();
    let (status, _) = server.get("/api/webhooks");
    let b = admin_console(&server);
    if status == 404 {
        // The console probes the API at sign-in and notes the answer.
        wait_for("the console's webhook probe", || {
            let v = b.eval(
                "return document.querySelector('#nav-webhooks').dataset.probed || null;",
                vec![],
            );
            v.as_str().map(str::to_string)
        });
        assert!(!b.visible("#nav-webhooks"));
        b.eval("location.hash = '#/webhooks';", vec![]);
        b.wait_text("#webhooks-error", "the absence", |t| {
            t == "This server has no webhook API."
        });
        return;
    }
    assert_eq!(status, 200, "GET /api/webhooks");
    let (status, body) = server.post(
        "/api/webhooks",
        &json!({"url": "http://127.0.0.1:9/hook", "events": ["device.online"]}),
    );
    assert!((200..300).contains(&status), "{status} {body}");
    b.goto(&server.url("/"));
    b.wait_visible("#nav-webhooks");
    b.click("#nav-webhooks");
    b.wait_text("#webhook-table tbody", "the subscriber", |t| {
        t.contains("http://127.0.0.1:9/hook")
    });
    b.click("#webhook-table tbody tr:first-child button");
    b.wait_text("#deliveries-title", "the deliveries", |t| {
        t.starts_with("Deliveries of webhook")
    });
}

/// A new operator token's secret.
fn operator_token(server: &TestServer, name: &str) -> String {
    let (status, body) = server.post("/api/tokens", &json!({"name": name, "role": "operator"}));
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// Seconds from now until the RFC 3339 time `at`.
fn seconds_until(at: &Value) -> i64 {
    let at = at.as_str().expect("a time");
    let t = chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time");
    (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds()
}

/// The control lock on the device page: taken in the console (with its ttl), it shows the
/// holder and locks another token's commands out (423) until "Release"; taken by another
/// token, the console's own "Take control" and commands are refused with the holder shown,
/// and the admin's "Release" breaks it.
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn the_control_lock_is_taken_shown_and_released_in_the_console() {
    let server = TestServer::start();
    let _dev = FakeDevice::framed(server.framed, 6301);
    wait_for("device online", || server.online("6301").then_some(()));
    let ops = operator_token(&server, "ops");
    let commands = "/api/devices/6301/commands";
    let write = json!({"type": "write_register", "address": 2100, "value": 5});

    let b = admin_console(&server);
    b.click("#device-table tr[data-id=\"6301\"] a");
    b.wait_text("#device-state", "online", |t| t == "online");
    b.wait_text("#lock-state", "no lock", |t| t.starts_with("Not locked"));

    b.type_into("#lock-ttl", "600");
    b.click("#lock-take");
    b.wait_text("#lock-state", "the holder", |t| {
        t.starts_with("Locked by admin until ")
    });
    let (status, lock) = server.get("/api/devices/6301/lock");
    assert_eq!(status, 200, "{lock}");
    assert_eq!(
        (&lock["locked"], &lock["holder"]),
        (&json!(true), &json!("admin"))
    );
    let left = seconds_until(&lock["expires_at"]);
    assert!(
        (500..=600).contains(&left),
        "the ttl of the form: {left} s left"
    );

    // Another token's command is refused while the console shows the lock.
    let (status, body) = server.post_as(Some(&ops), commands, &write);
    assert_eq!((status, &body["holder"]), (423, &json!("admin")), "{body}");
    assert!(b
        .text("#lock-state")
        .is_some_and(|t| t.starts_with("Locked by admin")));

    b.click("#lock-release");
    b.wait_text("#lock-state", "no lock", |t| t.starts_with("Not locked"));
    let (status, body) = server.get("/api/devices/6301/lock");
    assert_eq!((status, &body["locked"]), (200, &json!(false)), "{body}");
    let (status, body) = server.post_as(Some(&ops), commands, &write);
    assert_eq!(
        status, 200,
        "released, the other token commands again: {body}"
    );

    // The other way round: "ops" holds it; the page picks that up by itself.
    let (status, body) =
        server.post_as(Some(&ops), "/api/devices/6301/lock", &json!({"ttl_s": 600}));
    assert_eq!(status, 200, "{body}");
    b.wait_text("#lock-state", "the other holder", |t| {
        t.starts_with("Locked by ops until ")
    });
    b.type_into("#lock-ttl", "60");
    b.click("#lock-take");
    let msg = b.wait_text("#lock-error", "the refusal", |t| t.starts_with("423"));
    assert!(msg.contains("locked by ops"), "{msg}");
    b.type_into("#cmd-start", "2000");
    b.click("#cmd-send");
    let msg = b.wait_text("#cmd-status", "the refused command", |t| {
        t.starts_with("423")
    });
    assert!(msg.contains("locked by ops"), "{msg}");
    // An admin's release breaks anyone's lock.
    b.click("#lock-release");
    b.wait_text("#lock-state", "no lock", |t| t.starts_with("Not locked"));
    assert_eq!(b.text("#lock-error").unwrap_or_default(), "");
    let (_, body) = server.get("/api/devices/6301/lock");
    assert_eq!(body["locked"], json!(false), "{body}");
}

/// "queue if offline": a command for an offline device answers 202; the page follows it from
/// `queued` to `sent` (the device is back but holds its answer) to `ok`, and the device got
/// the write.
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn a_command_queued_for_an_offline_device_shows_queued_then_ok() {
    // A slave that may take its time (the test holds its answer back, for as long as a wait
    // may last) without retries.
    let server = TestServer::start_with(Options {
        data_toml: common::DATA_TOML
            .replace(
                "response_timeout = \"400ms\"",
                "response_timeout = \"120s\"",
            )
            .replace("retries = 1", "retries = 0"),
        ..Options::default()
    });
    let dev = FakeDevice::framed(server.framed, 6401);
    wait_for("device online", || server.online("6401").then_some(()));
    dev.close();
    wait_for("device offline", || (!server.online("6401")).then_some(()));

    let b = admin_console(&server);
    b.click("#device-table tr[data-id=\"6401\"] a");
    b.wait_text("#device-state", "offline", |t| t == "offline");
    b.select("#cmd-type", "write_register");
    b.wait_visible("#cmd-address");
    b.type_into("#cmd-address", "2100");
    b.type_into("#cmd-value", "7");
    // Without the box an offline device refuses.
    b.click("#cmd-send");
    b.wait_text("#cmd-status", "the refusal", |t| t.starts_with("409"));
    b.click("#cmd-queue");
    b.type_into("#cmd-queue-ttl", "600");
    b.type_into("#cmd-timeout", "150000");
    b.click("#cmd-send");
    b.wait_text("#cmd-status", "the 202", |t| t == "202 queued");
    b.wait_text("#cmd-track-status", "queued", |t| t == "queued");
    let cid = b.text("#cmd-track-id").unwrap_or_default();
    let (status, record) = server.get(&format!("/api/commands/{cid}"));
    assert_eq!(status, 200, "{cid}: {record}");
    assert_eq!(record["status"], "queued");
    assert_eq!(record["request"]["queue_if_offline"], json!(true));
    assert_eq!(record["request"]["ttl_s"], json!(600));
    assert_eq!(record["request"]["timeout_ms"], json!(150_000));

    // The device registers but holds its answers: the command is claimed (`sent`) and waits.
    let mut dev = FakeDevice::connect(server.framed, common::device::Proto::Framed);
    dev.hold(true);
    dev.send(&6401u32.to_be_bytes());
    b.wait_text("#cmd-track-status", "sent", |t| t == "sent");
    assert_eq!(b.text("#cmd-track-trail").as_deref(), Some("queued → sent"));
    dev.hold(false);
    b.wait_text("#cmd-track-status", "ok", |t| t == "ok");
    assert_eq!(
        b.text("#cmd-track-trail").as_deref(),
        Some("queued → sent → ok")
    );
    b.wait_text("#cmd-status", "the end", |t| t == "queued command ok");
    let result = b.text("#cmd-result").unwrap_or_default();
    assert!(result.contains("2100"), "{result}");
    assert_eq!(dev.register(2100), 7);
    // The record is stored just after the event that may have told the page.
    wait_for("the stored record to be ok", || {
        let (_, record) = server.get(&format!("/api/commands/{cid}"));
        (record["status"] == "ok").then_some(())
    });
}

/// The webhook view against the real API and a real receiver: a subscriber made through the
/// API is listed; "send test" reaches the receiver and its delivery (attempt, status code,
/// latency) is listed; a subscriber added in the form is stored with its filters and deleted
/// again with two clicks.
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn the_webhooks_view_tests_adds_and_deletes_subscribers() {
    let server = TestServer::start();
    let receiver = common::receiver::Receiver::ok();
    let (status, hook) = server.post(
        "/api/webhooks",
        &json!({"url": receiver.url(), "events": ["device.online"], "secret": "s3cret"}),
    );
    assert_eq!(status, 201, "{hook}");
    let wid = hook["id"].as_str().expect("webhook id").to_string();

    let b = admin_console(&server);
    b.wait_visible("#nav-webhooks");
    b.click("#nav-webhooks");
    let row = format!("#webhook-table tr[data-id=\"{wid}\"]");
    let text = b.wait_text(&row, "the subscriber", |t| t.contains(&receiver.url()));
    assert!(
        text.contains("device.online") && text.contains("active"),
        "{text}"
    );
    assert_eq!(
        b.text(&format!("{row} td:nth-child(6)")).as_deref(),
        Some("yes")
    );

    b.click(&format!("{row} button.test"));
    let note = b.wait_text("#webhooks-note", "the test's outcome", |t| {
        t.starts_with("Test of")
    });
    assert!(
        note.contains("delivered") && note.contains("HTTP 200"),
        "{note}"
    );
    let first = "#delivery-table tbody tr:first-child";
    b.wait_text(first, "the test delivery", |t| t.contains("webhook.test"));
    let cells: Vec<String> = (1..=8)
        .map(|i| {
            b.text(&format!("{first} td:nth-child({i})"))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        (cells[4].as_str(), cells[5].as_str(), cells[6].as_str()),
        ("1", "ok", "200"),
        "{cells:?}"
    );
    assert!(cells[7].ends_with(" ms"), "{cells:?}");
    let got = receiver.received();
    assert!(
        got.iter()
            .any(|r| r.json()["event"] == "webhook.test" && r.signed_with("s3cret")),
        "the receiver got no signed test"
    );

    // A second subscriber from the form.
    let second = format!("http://127.0.0.1:{}/second", receiver.port);
    b.type_into("#wh-url", &second);
    b.type_into("#wh-events", "device.offline, telemetry");
    b.type_into("#wh-devices", "64*");
    b.click("#wh-add");
    let note = b.wait_text("#webhooks-note", "the new id", |t| {
        t.starts_with("Added webhook ")
    });
    let new_id = note
        .trim_start_matches("Added webhook ")
        .trim_end_matches('.')
        .to_string();
    let (_, list) = server.get("/api/webhooks");
    let added = list
        .as_array()
        .and_then(|l| l.iter().find(|h| h["id"] == json!(new_id)))
        .cloned()
        .unwrap_or_else(|| panic!("{new_id} not in {list}"));
    assert_eq!(added["url"], json!(second));
    assert_eq!(added["events"], json!(["device.offline", "telemetry"]));
    assert_eq!(added["devices"], json!(["64*"]));
    assert_eq!(added["has_secret"], json!(false));
    let new_row = format!("#webhook-table tr[data-id=\"{new_id}\"]");
    b.wait_text(&new_row, "the new row", |t| t.contains("/second"));

    // Delete: the first click arms the button, the second deletes.
    b.click(&format!("{new_row} button.delete"));
    b.wait_text(&format!("{new_row} button.delete"), "armed", |t| {
        t == "really delete?"
    });
    let (_, list) = server.get("/api/webhooks");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(2),
        "one click deletes nothing"
    );
    b.click(&format!("{new_row} button.delete"));
    b.wait_text("#webhooks-note", "the deletion", |t| {
        t == format!("Deleted webhook {new_id}.")
    });
    wait_for("the row to go", || {
        let gone = b.eval(
            "return document.querySelector(arguments[0]) === null;",
            vec![json!(new_row)],
        );
        (gone == json!(true)).then_some(())
    });
    let (_, list) = server.get("/api/webhooks");
    let ids: Vec<&Value> = list
        .as_array()
        .map(|l| l.iter().map(|h| &h["id"]).collect())
        .unwrap_or_default();
    assert_eq!(ids, [&json!(wid)]);
}

/// Without a browser: the console's files come from the server itself, with their types,
/// and refer to nothing elsewhere.
#[test]
fn the_console_is_served_whole_by_the_server() {
    let server = TestServer::start();
    for (path, kind, must) in [
        ("/", "text/html", "/static/app.js"),
        ("/static/app.js", "text/javascript", "/api/stream?token="),
        ("/static/style.css", "text/css", "svg#chart"),
    ] {
        let resp = ureq::get(&server.url(path)).call().expect(path);
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.header("content-type").unwrap_or("").to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let text = resp.into_string().expect("text");
        assert!(text.contains(must), "{path} lacks {must}");
        for scheme in ["http://", "https://", "//cdn"] {
            let outside = text
                .match_indices(scheme)
                .any(|(i, _)| !text[i..].starts_with("http://www.w3.org/2000/svg"));
            assert!(!outside, "{path} refers to {scheme}...");
        }
    }
    let (status, _) = common::answer(ureq::get(&server.url("/static/nope.js")).call());
    assert_eq!(status, 404);
}

/// A fleet bigger than one page: the console shows a page of 500 rows the server chose,
/// pages forward and back, and its filter asks the server (which searches the whole fleet,
/// not the page in the browser).
#[test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
fn a_fleet_bigger_than_a_page_is_paged_and_filtered_by_the_server() {
    use std::io::Write;
    let server = TestServer::start();
    // Registered DTUs that answer nothing: enough for the list (they stay online until
    // their heartbeat timeout, far beyond this test).
    let fleet: Vec<std::net::TcpStream> = (20_000u32..20_520)
        .map(|n| {
            let mut s =
                std::net::TcpStream::connect(("127.0.0.1", server.framed)).expect("connect a DTU");
            s.write_all(&n.to_be_bytes()).expect("register");
            s
        })
        .collect();
    wait_for("520 devices online", || {
        let (_, list) = server.get("/api/devices?online=true");
        (list.as_array().map(Vec::len) == Some(fleet.len())).then_some(())
    });
    let b = admin_console(&server);
    let rows = "return document.querySelectorAll('#device-table tbody tr').length;";
    let first_row = "return document.querySelector('#device-table tbody tr').dataset.id;";
    b.wait_text("#summary", "the whole fleet counted", |t| {
        t == "520 online of 520"
    });
    b.wait_text("#page-range", "the first page", |t| {
        t == "Devices 1–500 of 520"
    });
    assert_eq!(b.eval(rows, vec![]), json!(500));
    assert_eq!(b.eval(first_row, vec![]), json!("20000"));

    b.click("#next-devices");
    b.wait_text("#page-range", "the second page", |t| {
        t == "Devices 501–520 of 520"
    });
    assert_eq!(b.eval(rows, vec![]), json!(20));
    assert_eq!(b.eval(first_row, vec![]), json!("20500"));
    b.click("#prev-devices");
    b.wait_text("#page-range", "the first page again", |t| {
        t == "Devices 1–500 of 520"
    });

    // Devices 20510..20519 are on the second page: found although the browser holds the first.
    b.type_into("#filter", "2051");
    b.wait_text("#summary", "the matches counted", |t| {
        t == "10 online of 10 matching"
    });
    assert_eq!(b.eval(rows, vec![]), json!(10));
    assert_eq!(b.eval(first_row, vec![]), json!("20510"));
    assert!(!b.visible("#pager"), "one page of matches needs no pager");
    drop(fleet);
}
