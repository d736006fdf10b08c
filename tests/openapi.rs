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

/// `(METHOD, /path)` of every `web::resource("/path").route(web::method()…)…` in
/// `src/web/*.rs`: each resource's routes follow it, up to the next resource.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/web");
    let path_re = regex::Regex::new(r#"^\(\s*"([^"]+)"\s*\)"#).expect("regex");
    let method_re = regex::Regex::new(r#"\.route\(\s*web::(get|post|put|patch|delete|head)\(\)"#)
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
        let prefix = if ROOT_FILES.contains(&file.as_str()) {
            ""
        } else {
            "/api"
        };
        for resource in source.split("web::resource").skip(1) {
            let Some(route_path) = path_re.captures(resource) else {
                continue;
            };
            for method in method_re.captures_iter(resource) {
                out.insert((
                    method[1].to_uppercase(),
                    format!("{prefix}{}", &route_path[1]),
                ));
            }
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
    let mut undocumented = Vec::new();
    for (method, path) in &documented {
        // As the path is documented, with bad path parameters and with absurd limits: each
        // answer's status is one the document lists for the operation.
        let bad_ids = path
            .replace("{id}", &"x".repeat(65))
            .replace("{cid}", "%00")
            .replace("{wid}", "%00")
            .replace("{tid}", "%00");
        for (variant, concrete) in [
            ("sample", path.clone()),
            ("bad ids", bad_ids),
            (
                "huge limit",
                format!("{path}?limit=99999999999999999999999"),
            ),
            ("zero limit", format!("{path}?limit=0")),
        ] {
            let (status, body) = call(&server, method, &concrete);
            if variant == "sample" {
                let no_route = status == 405 || (status == 404 && body["error"] == "no such route");
                if no_route {
                    unserved.push(format!("{method} {path} -> {status} {body}"));
                }
            }
            let op = &doc["paths"][path.as_str()][method.to_lowercase()];
            if op["responses"].get(status.to_string()).is_none() {
                undocumented.push(format!(
                    "{method} {concrete} ({variant}) -> {status} {body}"
                ));
            }
        }
    }
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:#?}"
    );
    assert!(
        undocumented.is_empty(),
        "answers with a status the document does not list: {undocumented:#?}"
    );
}

/// A known path asked with a method it does not serve: 405 with `Allow` naming the methods it
/// does (as documented), in the JSON error shape — never a 404.
#[test]
fn an_unlisted_method_on_a_documented_path_is_405_with_allow() {
    let server = TestServer::start();
    let doc = document(&server);
    let documented = documented(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    let mut wrong = Vec::new();
    for path in paths {
        let allowed: BTreeSet<&str> = documented
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m.as_str())
            .collect();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if allowed.contains(method) {
                continue;
            }
            let concrete = path
                .replace("{id}", "1001")
                .replace("{cid}", "c0")
                .replace("{wid}", "w0")
                .replace("{tid}", "t0");
            let result = server.request(method, &concrete).call();
            let (status, allow, body) = match result {
                Ok(r) | Err(ureq::Error::Status(_, r)) => {
                    let status = r.status();
                    let allow = r.header("Allow").unwrap_or_default().to_string();
                    let body: Value = r.into_json().unwrap_or(Value::Null);
                    (status, allow, body)
                }
                Err(e) => panic!("{method} {concrete}: {e}"),
            };
            let listed: BTreeSet<&str> = allow.split(',').map(str::trim).collect();
            if status != 405 || listed != allowed || !body["error"].is_string() {
                wrong.push(format!(
                    "{method} {path} -> {status}, Allow {allow:?} (documented {allowed:?}), {body}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
