//! `GET /api/stream`: live events over WebSocket against the real server and fake DTUs.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::device::FakeDevice;
use common::{wait_for, Options, TestServer, ADMIN_TOKEN, DEADLINE};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// Opens a stream; `token` goes in the Authorization header. Err(status) when the server
/// refuses the handshake.
fn open(server: &TestServer, query: &str, token: Option<&str>) -> Result<Ws, u16> {
    let url = format!("ws://127.0.0.1:{}/api/stream{query}", server.web);
    let mut req = url.into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let tcp = TcpStream::connect(("127.0.0.1", server.web)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    match tungstenite::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The next event, or None when nothing arrived within the read timeout.
fn next_event(ws: &mut Ws) -> Option<Value> {
    match ws.read() {
        Ok(Message::Text(text)) => Some(serde_json::from_str(text.as_str()).expect("JSON event")),
        Ok(Message::Close(frame)) => panic!("stream closed: {frame:?}"),
        Ok(_) => None,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("stream read failed: {e}"),
    }
}

/// Reads events until `want` accepts one (returned), keeping every event read in `seen`.
fn read_until(
    ws: &mut Ws,
    seen: &mut Vec<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Some(ev) = next_event(ws) {
            seen.push(ev.clone());
            if want(&ev) {
                return ev;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; saw {seen:#?}"
        );
    }
}

fn is(ev: &Value, event: &str, device: &str) -> bool {
    ev["event"] == event && ev["device_id"] == device
}

#[test]
fn online_telemetry_and_offline_of_a_device_arrive_as_webhook_envelopes() {
    let server = TestServer::start();
    let mut ws = open(&server, "", Some(ADMIN_TOKEN)).expect("admin may stream");
    let dev = FakeDevice::framed_with(server.framed, 1001, &[(2000, &[235])]);
    let mut seen = Vec::new();
    let online = read_until(&mut ws, &mut seen, "device.online", |e| {
        is(e, "device.online", "1001")
    });
    assert_eq!(online["data"]["protocol"], "framed");
    for key in ["id", "event", "device_id", "at", "data"] {
        assert!(online.get(key).is_some(), "{key} missing in {online}");
    }
    let telemetry = read_until(&mut ws, &mut seen, "telemetry with temperature", |e| {
        is(e, "telemetry", "1001") && e["data"]["values"].get("temperature").is_some()
    });
    assert_eq!(telemetry["data"]["values"]["temperature"], json!(23.5));

    // Pings are answered.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .expect("ping");
    let start = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Ok(Message::Text(t)) => seen.push(serde_json::from_str(t.as_str()).expect("JSON")),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("read: {e}"),
        }
        assert!(start.elapsed() < DEADLINE, "no pong");
    }

    dev.close();
    let offline = read_until(&mut ws, &mut seen, "device.offline", |e| {
        is(e, "device.offline", "1001")
    });
    assert_eq!(offline["data"]["reason"], "closed");
    let ids: std::collections::HashSet<_> = seen.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), seen.len(), "event ids are unique");
    ws.close(None).expect("close");
}

#[test]
fn tokens_decide_what_a_stream_sees() {
    let server = TestServer::start();
    assert_eq!(open(&server, "", None).err(), Some(401), "no token");
    assert_eq!(
        open(&server, "", Some("not-a-token")).err(),
        Some(401),
        "bad token"
    );
    let (status, created) = server.post(
        "/api/tokens",
        &json!({"name": "site-a", "role": "viewer", "devices": ["1001"]}),
    );
    assert_eq!(status, 201, "{created}");
    let restricted = created["token"].as_str().expect("token").to_string();
    // Outside the token's reach: 403 before any WebSocket is opened.
    assert_eq!(
        open(&server, "?device=1002", Some(&restricted)).err(),
        Some(403)
    );
    assert_eq!(
        open(&server, "?device=10*", Some(&restricted)).err(),
        Some(403)
    );
    assert_eq!(
        open(&server, "?events=device.onlin", Some(ADMIN_TOKEN)).err(),
        Some(400),
        "unknown event name"
    );

    // The query token works for the stream (browsers cannot set headers on a WebSocket).
    let mut limited = open(&server, &format!("?token={restricted}"), None).expect("query token");
    let mut admin = open(&server, "", Some(ADMIN_TOKEN)).expect("admin");
    let mut narrowed = open(&server, "?device=1002&events=telemetry", Some(ADMIN_TOKEN))
        .expect("narrowed by device and kind");
    let _a = FakeDevice::framed(server.framed, 1001);
    let _b = FakeDevice::framed(server.framed, 1002);

    // The admin stream sees both; count 1001's telemetry until 1002's first telemetry.
    let mut all = Vec::new();
    read_until(&mut admin, &mut all, "telemetry of 1002", |e| {
        is(e, "telemetry", "1002")
    });
    let before = all.iter().filter(|e| is(e, "telemetry", "1001")).count();
    // Every subscriber gets events in the bus's order, so once the restricted stream has
    // passed that many 1001 telemetry events and one more, it is past 1002's telemetry too.
    let mut mine = Vec::new();
    let start = Instant::now();
    while mine.iter().filter(|e| is(e, "telemetry", "1001")).count() <= before {
        if let Some(ev) = next_event(&mut limited) {
            mine.push(ev);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "restricted stream saw {mine:#?}"
        );
    }
    assert!(
        mine.iter().any(|e| is(e, "device.online", "1001")),
        "{mine:#?}"
    );
    assert!(
        mine.iter().all(|e| e["device_id"] == "1001"),
        "a token for 1001 saw {mine:#?}"
    );

    let mut only_b = Vec::new();
    read_until(&mut narrowed, &mut only_b, "telemetry of 1002", |e| {
        is(e, "telemetry", "1002")
    });
    assert!(
        only_b.iter().all(|e| is(e, "telemetry", "1002")),
        "device=1002&events=telemetry saw {only_b:#?}"
    );
}

/// A profile that polls often with big answers, so that a client that reads nothing falls
/// behind quickly.
fn chatty_profile() -> String {
    let mut toml = String::from(
        r#"
[profiles.default]
slave = 1
response_timeout = "1s"
retries = 0

[[profiles.default.polls]]
name = "block"
function = 3
start = 2000
count = 100
every = "50ms"

[profiles.default.registration]
format = "ascii"
pattern = "^[0-9]{15}$"

[profiles.default.heartbeat]
ascii = "www.usr.cn"
"#,
    );
    for i in 0..100 {
        toml.push_str(&format!(
            "\n[[profiles.default.points]]\nname = \"point_with_a_long_name_{i:03}\"\naddress = {}\ntype = \"u16\"\nunit = \"kWh\"\n",
            2000 + i
        ));
    }
    toml
}

fn metric(server: &TestServer, name: &str) -> Option<f64> {
    let text = ureq::get(&server.url("/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_client_that_never_reads_is_dropped_while_devices_keep_being_polled() {
    let server = TestServer::start_with(Options {
        data_toml: chatty_profile(),
        env: vec![("DTU__WEB__STREAM_QUEUE".into(), "16".into())],
        ..Options::default()
    });
    let mut stuck = open(&server, "", Some(ADMIN_TOKEN)).expect("stream");
    let devices: Vec<FakeDevice> = (0..4)
        .map(|i| FakeDevice::framed_with(server.framed, 3001 + i, &[(2000, &[i as u16; 100])]))
        .collect();
    // The client reads nothing; once the socket buffers on both sides are full (megabytes on
    // loopback: about 15 s of these devices on an idle machine), the server's queue for it
    // overflows and it is dropped. A longer deadline than usual, for loaded machines.
    let start = Instant::now();
    while metric(&server, "dtu_stream_clients_dropped_total").unwrap_or(0.0) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the stuck client was not dropped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for("its subscription to end", || {
        (metric(&server, "dtu_event_subscribers")? == 0.0).then_some(())
    });
    // Polling went on and goes on: every device keeps answering polls.
    let answered: Vec<usize> = devices.iter().map(|d| d.answered_at(2000)).collect();
    for (dev, before) in devices.iter().zip(answered) {
        wait_for("more polls after the drop", || {
            (dev.answered_at(2000) >= before + 5).then_some(())
        });
    }
    assert!(server.log_text().contains("too slow"), "the drop is logged");
    // Reading now drains what was buffered, then the stream ends: with the close reason if
    // the close frame fitted behind the buffered events, else by the connection closing.
    let start = Instant::now();
    let mut events = 0;
    loop {
        match stuck.read() {
            Ok(Message::Text(_)) => events += 1,
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Policy);
                assert!(frame.reason.contains("too slow"), "{frame:?}");
                eprintln!("closed after {events} buffered events: {frame}");
                break;
            }
            Ok(Message::Close(None)) => panic!("close without a reason"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                eprintln!("ended after {events} buffered events: {e}");
                break;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the stream of a dropped client did not end ({events} events read)"
        );
    }
    assert!(events > 0, "the client had fallen behind");
    // A new client is served as usual.
    let mut fresh = open(&server, "?events=telemetry", Some(ADMIN_TOKEN)).expect("new stream");
    let mut seen = Vec::new();
    read_until(&mut fresh, &mut seen, "telemetry", |e| {
        e["event"] == "telemetry"
    });
}

#[test]
fn open_streams_are_closed_when_the_server_stops() {
    let mut server = TestServer::start();
    let mut ws = open(&server, "", Some(ADMIN_TOKEN)).expect("stream");
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let start = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert_eq!(frame.reason.as_str(), "server stopping");
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
        assert!(start.elapsed() < DEADLINE, "no close frame");
    }
    eprintln!("stopped in {:?}", started.elapsed());
}

/// Without a complete WebSocket handshake: 426 naming the upgrade when none is asked for, 400
/// when the upgrade lacks its key or version — never a 500, and JSON either way.
#[test]
fn a_get_without_a_valid_handshake_is_426_or_400() {
    let server = TestServer::start();
    let plain = server.request("GET", "/api/stream").call();
    let Err(ureq::Error::Status(status, r)) = plain else {
        panic!("a plain GET must be refused: {plain:?}");
    };
    assert_eq!(status, 426);
    assert_eq!(r.header("Upgrade"), Some("websocket"));
    let body: Value = r.into_json().expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("WebSocket")),
        "{body}"
    );
    for headers in [
        vec![("Upgrade", "websocket"), ("Connection", "Upgrade")],
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "8"),
        ],
    ] {
        let mut req = server.request("GET", "/api/stream");
        for (k, v) in &headers {
            req = req.set(k, v);
        }
        match req.call() {
            Err(ureq::Error::Status(400, r)) => {
                let body: Value = r.into_json().expect("JSON");
                assert!(body["error"].is_string(), "{body}");
            }
            other => panic!("{headers:?}: expected 400, got {other:?}"),
        }
    }
    let (_, text) = metrics_text(&server);
    assert!(!text.contains("status=\"500\""), "no 500 counted: {text}");
}

fn metrics_text(server: &TestServer) -> (u16, String) {
    let r = ureq::get(&server.url("/metrics")).call().expect("metrics");
    (r.status(), r.into_string().expect("text"))
}
