//! Malformed input at every POST route of the contract (and malformed paths at the others):
//! every rejection is a 4xx with a JSON `{"error": ...}` body, and the server stays up.
//!
//! Requests go over a raw socket, so paths reach the server exactly as written (no client
//! normalising `..` or percent escapes) and a body the server refuses half-way through still
//! lets the test read the answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::device::FakeDevice;
use common::{TestServer, ADMIN_TOKEN};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::Value;

/// The POST routes of CONTRACT.md section 4, with placeholders for path parameters.
const POST_ROUTES: [&str; 6] = [
    "/api/devices/{id}/commands",
    "/api/devices/{id}/lock",
    "/api/tokens",
    "/api/webhooks",
    "/api/webhooks/{wid}/test",
    // Not a route: the API's own 404 must be JSON too.
    "/api/devices/{id}/nonsense",
];

/// GET and DELETE routes with path parameters, for the malformed-path cases.
const OTHER_ROUTES: [(&str, &str); 9] = [
    ("GET", "/api/devices/{id}"),
    ("GET", "/api/devices/{id}/values"),
    ("GET", "/api/devices/{id}/telemetry"),
    ("GET", "/api/devices/{id}/packets"),
    ("GET", "/api/commands/{id}"),
    ("GET", "/api/webhooks/{id}/deliveries"),
    ("DELETE", "/api/webhooks/{id}"),
    ("DELETE", "/api/tokens/{id}"),
    ("DELETE", "/api/devices/{id}/lock"),
];

struct Answer {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request on its own connection. The body is written by another thread, so an
/// early answer (e.g. 413 before the body is read) is still received.
fn raw(server: &TestServer, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", server.web)).expect("connect");
    stream
        .set_read_timeout(Some(common::DEADLINE))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        head.push_str(&format!("Content-Type: {c}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().expect("clone");
    let body = body.to_vec();
    let sender = std::thread::spawn(move || {
        // The server may answer and close before taking the whole body: not an error here.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived (the server refused the rest of the body).
            Err(_) if !bytes.is_empty() => break,
            Err(e) => panic!("{method} {path}: no answer: {e}"),
        }
        if complete(&bytes) {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    parse(&bytes).unwrap_or_else(|| {
        panic!(
            "{method} {path}: unreadable answer {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn split_head(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn complete(bytes: &[u8]) -> bool {
    match split_head(bytes) {
        Some((head, body)) => content_length(head).is_some_and(|n| body.len() >= n),
        None => false,
    }
}

fn parse(bytes: &[u8]) -> Option<Answer> {
    let (head, body) = split_head(bytes)?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = match content_length(head) {
        Some(n) => body.get(..n)?.to_vec(),
        None => dechunk(body)?,
    };
    Some(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).ok()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn assert_json_4xx(what: &str, a: &Answer) {
    assert!(
        (400..500).contains(&a.status),
        "{what}: status {} body {}",
        a.status,
        a.body
    );
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{what}: {} answered non-JSON {:?}: {e}", a.status, a.body));
    assert!(
        v["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {} without an error message: {v}",
        a.status
    );
}

fn health_ok(server: &TestServer) {
    let (status, body) = server.get("/api/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
}

/// Bodies no route accepts: (label, content type, bytes).
fn bad_bodies() -> Vec<(&'static str, Option<&'static str>, Vec<u8>)> {
    let json = Some("application/json");
    let mut huge = b"{\"name\":\"".to_vec();
    huge.extend(std::iter::repeat(b'a').take(2 * 1024 * 1024));
    huge.extend_from_slice(b"\",\"role\":\"viewer\"}");
    let binary: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect();
    vec![
        ("empty", json, Vec::new()),
        ("empty without content type", None, Vec::new()),
        ("truncated JSON", json, b"{\"type\":".to_vec()),
        ("not JSON", json, b"hello there".to_vec()),
        ("trailing garbage", json, b"{\"type\":\"read\"}}}".to_vec()),
        ("JSON null", json, b"null".to_vec()),
        ("JSON number", json, b"12345".to_vec()),
        ("JSON string", json, b"\"read\"".to_vec()),
        ("JSON array", json, b"[1,2,3]".to_vec()),
        (
            "wrong types",
            json,
            br#"{"type":5,"name":[],"role":{},"url":7,"events":"*","ttl_s":"x","function":"three","start":-1}"#.to_vec(),
        ),
        (
            "out of range numbers",
            json,
            br#"{"type":"read","function":3,"start":70000,"count":1e9,"ttl_s":-5}"#.to_vec(),
        ),
        (
            "unknown fields",
            json,
            br#"{"type":"read","function":3,"start":0,"count":1,"name":"n","role":"viewer","url":"http://127.0.0.1:9/h","events":["*"],"ttl_s":5,"surprise":true}"#.to_vec(),
        ),
        (
            "deep nesting",
            json,
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        ("invalid UTF-8", json, vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
        ("binary", Some("application/octet-stream"), binary.clone()),
        ("binary as JSON", json, binary),
        (
            "JSON as text/plain",
            Some("text/plain"),
            br#"{"type":"read","function":3,"start":0,"count":1}"#.to_vec(),
        ),
        ("huge", json, huge),
    ]
}

fn concrete(route: &str, id: &str) -> String {
    route
        .replace("{id}", id)
        .replace("{wid}", id)
        .replace("{tid}", id)
}

#[test]
fn malformed_bodies_get_json_4xx_at_every_post_route() {
    let server = TestServer::start();
    // A real device, so that the device routes do not all stop at "unknown device".
    let _dev = FakeDevice::framed(server.framed, 1001);
    common::wait_for("device online", || server.online("1001").then_some(()));
    for route in POST_ROUTES {
        for id in ["1001", "w-unknown"] {
            let path = concrete(route, id);
            for (label, ctype, body) in bad_bodies() {
                let a = raw(&server, "POST", &path, ctype, &body);
                assert_json_4xx(&format!("POST {path} with {label}"), &a);
            }
        }
    }
    health_ok(&server);
    assert!(
        !server.log_text().contains("panicked"),
        "a handler panicked"
    );
}

#[test]
fn malformed_paths_get_json_4xx() {
    let server = TestServer::start();
    let overlong = "9".repeat(300);
    let very_long = "x".repeat(4000);
    let ids = [
        overlong.as_str(),
        very_long.as_str(),
        "%FF%FE%FD",
        "%00",
        "%C0%AF",
        "%2e%2e",
        "..",
        "%25%25%25",
        "a%2Fb",
        "%20",
        "%E2%80%AE1001",
    ];
    for id in ids {
        for route in POST_ROUTES {
            let path = concrete(route, id);
            let a = raw(
                &server,
                "POST",
                &path,
                Some("application/json"),
                br#"{"type":"read","function":3,"start":0,"count":1}"#,
            );
            assert_json_4xx(&format!("POST {path}"), &a);
        }
        for (method, route) in OTHER_ROUTES {
            let path = concrete(route, id);
            let a = raw(&server, method, &path, None, b"");
            assert_json_4xx(&format!("{method} {path}"), &a);
        }
    }
    // Query strings: bad numbers, bad times and unknown parameters are refused as JSON;
    // oversized limits are capped rather than refused.
    for query in [
        "/api/events?limit=abc",
        "/api/events?limit=-1",
        "/api/events?limit=0",
        "/api/events?surprise=1",
        "/api/devices/1001/telemetry?from=yesterday",
        "/api/devices/1001/telemetry?limit=99999999999999999999999",
        "/api/devices/1001/packets?limit=%FF",
        "/api/export?format=pdf",
        "/api/stream?device=%FF",
    ] {
        let a = raw(&server, "GET", query, None, b"");
        assert_json_4xx(&format!("GET {query}"), &a);
    }
    for path in ["/nope", "/static/../../etc/passwd", "/%FF", "/api", "/api/"] {
        let a = raw(&server, "GET", path, None, b"");
        assert_json_4xx(&format!("GET {path}"), &a);
    }
    for path in [
        "/api/events?limit=1000000000",
        "/api/events?limit=99999999999999999999999",
        "/api/relay?limit=99999999999999999999999",
        "/api/devices?limit=99999999999999999999999",
    ] {
        let a = raw(&server, "GET", path, None, b"");
        assert_eq!(a.status, 200, "{path}: a big limit is capped: {}", a.body);
    }
    health_ok(&server);
}

#[test]
fn post_routes_without_a_token_get_json_401() {
    let server = TestServer::start();
    for route in POST_ROUTES {
        let path = concrete(route, "1001");
        let (status, body) = server.post_as(None, &path, &serde_json::json!({}));
        assert_eq!(status, 401, "POST {path}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
}

/// Random bytes, random JSON-ish text and random path segments: never a 5xx, never a
/// non-JSON rejection, and the server keeps answering.
#[test]
fn random_input_never_breaks_the_api() {
    let server = TestServer::start();
    let strategy = (
        0..POST_ROUTES.len(),
        "[a-zA-Z0-9%._~*-]{1,80}",
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            "[{}\\[\\]\":,a-z0-9 ]{0,300}".prop_map(String::into_bytes),
        ],
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |(route, id, body)| {
        let path = concrete(POST_ROUTES[route], &id);
        let a = raw(&server, "POST", &path, Some("application/json"), &body);
        prop_assert!(
            (400..500).contains(&a.status),
            "POST {} -> {} {}",
            path,
            a.status,
            a.body
        );
        let v: Value = serde_json::from_str(&a.body).map_err(|e| {
            TestCaseError::fail(format!("POST {path} -> non-JSON {:?}: {e}", a.body))
        })?;
        prop_assert!(v["error"].is_string());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    health_ok(&server);
}

#[test]
fn server_answers_after_a_slow_partial_body() {
    // A client that announces a body and sends only part of it, then stalls and goes away,
    // does not wedge the server.
    let server = TestServer::start();
    let mut stream = TcpStream::connect(("127.0.0.1", server.web)).expect("connect");
    let head = format!(
        "POST /api/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
    );
    stream.write_all(head.as_bytes()).expect("write");
    health_ok(&server);
    drop(stream);
    health_ok(&server);
}

/// Bytes on the web port that are no HTTP request: each is answered 400 by actix and
/// counted, and logged at debug only — a scanner cannot fill the error log.
#[test]
fn garbage_on_the_web_port_is_counted_not_logged_as_an_error() {
    use std::io::{Read, Write};
    let server = TestServer::start();
    for junk in [
        &b"GET / HTTP/1.1\r\nBad\x01Header: x\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
        b"GET /\x7f HTTP/9.9\r\n\r\n",
    ] {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", server.web)).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        tcp.write_all(junk).expect("write");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{junk:?} -> {answer:?}");
    }
    let text = ureq::get(&server.url("/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let parse_errors: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dtu_http_client_errors_total{kind=\"parse\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the parse error counter");
    assert!(parse_errors >= 3.0, "{text}");
    let log = server.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("parse error")),
        "parse errors logged as errors: {log}"
    );
    health_ok(&server);
}
