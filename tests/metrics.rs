//! `/metrics`: Prometheus text from the real server, with counters that move as a fake DTU
//! is polled and HTTP requests are answered.

mod common;

use std::collections::HashMap;

use common::device::FakeDevice;
use common::{wait_for, Options, TestServer, ADMIN_TOKEN};

/// Every sample of the exposition: `name{labels}` -> value.
fn scrape(server: &TestServer, token: Option<&str>) -> (u16, String, HashMap<String, f64>) {
    let mut req = ureq::get(&server.url("/metrics"));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("scrape failed: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("Content-Type").unwrap_or("").to_string();
    let text = resp.into_string().expect("body");
    if status != 200 {
        return (status, text, HashMap::new());
    }
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(name.to_string(), value);
    }
    (status, text, samples)
}

fn value(server: &TestServer, name: &str) -> f64 {
    let (_, text, samples) = scrape(server, None);
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

#[test]
fn counters_move_with_devices_polls_storage_and_requests() {
    let server = TestServer::start();
    let (status, text, before) = scrape(&server, None);
    assert_eq!(status, 200, "no token needed by default: {text}");
    for name in [
        "dtu_connections",
        "dtu_connections_total",
        "dtu_devices_registered",
        "dtu_devices_known",
        "dtu_polls_sent_total",
        "dtu_polls_answered_total",
        "dtu_polls_failed_total",
        "dtu_polls_timeout_total",
        "dtu_poll_latency_seconds_count",
        "dtu_storage_rows_buffered",
        "dtu_storage_rows_written_total",
        "dtu_storage_rows_spooled_total",
        "dtu_storage_spool_rows",
        "dtu_storage_spool_bytes",
        "dtu_storage_write_lag_seconds",
        "dtu_storage_rows_offered_per_second",
        "dtu_storage_rows_written_per_second",
        "dtu_storage_rows_dropped_total{kind=\"packet\"}",
        "dtu_storage_rows_dropped_total{kind=\"telemetry\"}",
        "dtu_storage_degraded",
        "dtu_events_published_total",
        "dtu_event_subscribers",
        "dtu_stream_clients_dropped_total",
    ] {
        assert!(before.contains_key(name), "{name} missing in\n{text}");
    }
    assert!(text.contains("# TYPE dtu_webhook_deliveries_total counter"));
    assert_eq!(before["dtu_connections"], 0.0);
    assert_eq!(before["dtu_devices_registered"], 0.0);

    let dev = FakeDevice::framed_with(server.framed, 1001, &[(2000, &[235])]);
    server.wait_value("1001", "temperature");
    wait_for("two answered polls", || {
        (value(&server, "dtu_polls_answered_total") >= 2.0).then_some(())
    });
    wait_for("rows written", || {
        (value(&server, "dtu_storage_rows_written_total") > 0.0).then_some(())
    });
    let (_, text, now) = scrape(&server, None);
    assert_eq!(now["dtu_connections"], 1.0, "{text}");
    assert!(now["dtu_connections_total"] >= 1.0, "{text}");
    assert_eq!(now["dtu_devices_registered"], 1.0, "{text}");
    assert_eq!(now["dtu_devices_known"], 1.0, "{text}");
    assert!(now["dtu_polls_sent_total"] >= now["dtu_polls_answered_total"]);
    assert!(now["dtu_poll_latency_seconds_count"] >= 2.0, "{text}");
    assert_eq!(
        now["dtu_poll_latency_seconds_bucket{le=\"+Inf\"}"],
        now["dtu_poll_latency_seconds_count"]
    );
    assert!(now["dtu_events_published_total"] > before["dtu_events_published_total"]);

    // A device that stops answering: polls time out, and the counter says so.
    dev.mute(true);
    wait_for("a poll timeout", || {
        (value(&server, "dtu_polls_timeout_total") >= 1.0).then_some(())
    });
    dev.close();
    wait_for("the connection gauge to go down", || {
        let (_, _, s) = scrape(&server, None);
        (s["dtu_connections"] == 0.0 && s["dtu_devices_registered"] == 0.0).then_some(())
    });
    assert_eq!(value(&server, "dtu_devices_known"), 1.0);

    // HTTP requests by route pattern and status, never by concrete path.
    let (status, _) = server.get("/api/devices/1001");
    assert_eq!(status, 200);
    let (status, _) = server.get("/api/devices/nope-4242");
    assert_eq!(status, 404);
    let (status, _) = server.get_as(None, "/api/devices");
    assert_eq!(status, 401);
    let (status, _) = server.get("/api/no/such/route/here");
    assert_eq!(status, 404);
    let (_, text, samples) = scrape(&server, None);
    let count = |route: &str, status: u16| {
        samples
            .get(&format!(
                "dtu_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(count("/api/devices/{id}", 200) >= 1.0, "{text}");
    assert!(count("/api/devices/{id}", 404) >= 1.0, "{text}");
    assert!(count("/api/devices", 401) >= 1.0, "{text}");
    assert!(count("unmatched", 404) >= 1.0, "{text}");
    assert!(count("/metrics", 200) >= 1.0, "{text}");
    assert!(
        !text.contains("nope-4242"),
        "concrete ids never become labels"
    );
    assert!(
        !text.contains("/no/such"),
        "unmatched paths never become labels"
    );
}

#[test]
fn metrics_can_require_a_token() {
    let server = TestServer::start_with(Options {
        env: vec![("DTU__WEB__METRICS_TOKEN".into(), "true".into())],
        ..Options::default()
    });
    let (status, body, _) = scrape(&server, None);
    assert_eq!(status, 401);
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(scrape(&server, Some("wrong")).0, 401);
    let (status, text, _) = scrape(&server, Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{text}");
}

/// Webhook attempts are counted by outcome: a healthy receiver's `ok`, a dead port's
/// `connect_error`; `dtu_event_subscribers` counts both senders.
#[test]
fn webhook_deliveries_are_counted_by_outcome() {
    let rx = common::receiver::Receiver::ok();
    let dead = common::free_port();
    let server = TestServer::start_with(Options {
        extra_server_toml: format!(
            r#"
[webhook_delivery]
max_attempts = 2
backoff_initial = "50ms"
backoff_max = "100ms"

[[webhooks]]
url = "{}"
events = ["device.online"]

[[webhooks]]
url = "http://127.0.0.1:{dead}/hook"
events = ["device.online"]
"#,
            rx.url()
        ),
        ..Options::default()
    });
    let _dev = FakeDevice::framed(server.framed, 1001);
    wait_for("a delivered and a refused attempt", || {
        let (_, _, samples) = scrape(&server, None);
        let ok = samples.get(r#"dtu_webhook_deliveries_total{outcome="ok"}"#)?;
        let refused = samples.get(r#"dtu_webhook_deliveries_total{outcome="connect_error"}"#)?;
        (*ok >= 1.0 && *refused >= 1.0).then_some(())
    });
    assert!(value(&server, "dtu_event_subscribers") >= 2.0);
    assert_eq!(rx.count(), 1);
}
