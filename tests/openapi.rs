//! `GET /api/openapi.json` describes every route, and every route it describes is served:
//! the routes registered in `src/web/` are read from the sources, the document from the
//! running server.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use serde_json::Value;

/// Files of `src/web/` whose routes sit at the root rather than under the `/api` scope.
const ROOT_FILES: [&str; 1] = ["metrics.rs"];
/// Files whose routes are not part of the API (the console's pages and assets).
const NOT_API: [&str; 1] = ["console.rs"];

/// `(METHOD, /path)` of every `.route("/path", web::method()` in `src/web/*.rs`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/web");
    let route = regex::Regex::new(
        r#"\.route\(\s*"([^"]+)"\s*,\s*web::(get|post|put|patch|delete|head)\(\)"#,
    )
    .expect("regex");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/web") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !file.ends_with(".rs") || NOT_API.contains(&file.as_str()) {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        for cap in route.captures_iter(&source) {
            let prefix = if ROOT_FILES.contains(&file.as_str()) {
                ""
            } else {
                "/api"
            };
            out.insert((cap[2].to_uppercase(), format!("{prefix}{}", &cap[1])));
        }
    }
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn document(server: &TestServer) -> Value {
    let (status, doc) = server.get("/api/openapi.json");
    assert_eq!(status, 200, "{doc}");
    doc
}

#[test]
fn every_registered_route_is_documented() {
    let server = TestServer::start();
    let doc = document(&server);
    assert_eq!(doc["openapi"], "3.0.3");
    let registered = registered_routes();
    // The scan finds what it should (guards against a regex that matches nothing).
    for known in [
        ("GET", "/api/health"),
        ("POST", "/api/devices/{id}/commands"),
        ("DELETE", "/api/tokens/{tid}"),
        ("GET", "/api/stream"),
        ("GET", "/metrics"),
    ] {
        assert!(
            registered.contains(&(known.0.to_string(), known.1.to_string())),
            "the source scan missed {known:?}: {registered:?}"
        );
    }
    let documented = documented(&doc);
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes registered in src/web/ but not in src/web/openapi.json: {missing:?}"
    );
}

/// A request for a documented route with sample path parameters.
fn call(server: &TestServer, method: &str, path: &str) -> (u16, Value) {
    let concrete = path
        .replace("{id}", "1001")
        .replace("{cid}", "c0")
        .replace("{wid}", "w0")
        .replace("{tid}", "t0");
    let req = server.request(method, &concrete);
    common::answer(match method {
        "POST" => req
            .set("Content-Type", "application/json")
            .send_string("{}"),
        _ => req.call(),
    })
}

#[test]
fn every_documented_route_is_served() {
    let server = TestServer::start();
    let doc = document(&server);
    let documented = documented(&doc);
    assert!(documented.len() >= 24, "{documented:?}");
    // The contract's table, section 4: every row is in the document.
    for (method, path) in [
        ("GET", "/api/health"),
        ("GET", "/api/devices"),
        ("GET", "/api/devices/{id}"),
        ("GET", "/api/devices/{id}/values"),
        ("GET", "/api/devices/{id}/telemetry"),
        ("GET", "/api/devices/{id}/packets"),
        ("GET", "/api/events"),
        ("POST", "/api/devices/{id}/commands"),
        ("GET", "/api/commands/{cid}"),
        ("GET", "/api/export"),
        ("GET", "/api/webhooks"),
        ("POST", "/api/webhooks"),
        ("DELETE", "/api/webhooks/{wid}"),
        ("POST", "/api/webhooks/{wid}/test"),
        ("GET", "/api/webhooks/{wid}/deliveries"),
        ("GET", "/api/tokens"),
        ("POST", "/api/tokens"),
        ("DELETE", "/api/tokens/{tid}"),
        ("POST", "/api/devices/{id}/lock"),
        ("DELETE", "/api/devices/{id}/lock"),
        ("GET", "/api/relay"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/stream"),
        ("GET", "/metrics"),
    ] {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "contract route {method} {path} is not documented"
        );
    }
    let mut unserved = Vec::new();
    for (method, path) in &documented {
        let (status, body) = call(&server, method, path);
        let no_route = status == 405 || (status == 404 && body["error"] == "no such route");
        if no_route {
            unserved.push(format!("{method} {path} -> {status} {body}"));
        }
    }
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:#?}"
    );
}
