//! `GET /api/openapi.json`: the machine-readable description of the API.
//!
//! A hand-kept OpenAPI 3.0 document (`openapi.json` beside this file) compiled into the binary,
//! rather than one generated from annotations (utoipa): the document then describes the
//! contract as written, including its JSON error shape and the WebSocket route, without
//! attribute macros on every handler and schema type, and nothing is fetched at build or run
//! time. `tests/openapi.rs` keeps it honest in both directions: every route registered in
//! `src/web/` is described, and every described route is served. The one thing the file does
//! not list by hand is the protocol names: they come from the server's list of protocols, so a
//! new protocol needs no edit here.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use serde_json::Value;

use crate::protocol::PROTOCOLS;

/// The document as kept in the source tree.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/openapi.json").route(web::get().to(document)));
}

/// The document as served: [`DOCUMENT`] with the protocol names of [`PROTOCOLS`].
pub fn served() -> &'static str {
    static SERVED: OnceLock<String> = OnceLock::new();
    SERVED.get_or_init(|| {
        let Ok(mut doc) = serde_json::from_str::<Value>(DOCUMENT) else {
            // A unit test keeps the file valid JSON; serve it as it is rather than nothing.
            return DOCUMENT.to_string();
        };
        let names: Vec<Value> = PROTOCOLS.iter().map(|p| Value::from(p.name)).collect();
        if let Some(protocol) = doc
            .pointer_mut("/components/schemas/Device/properties/protocol")
            .and_then(Value::as_object_mut)
        {
            protocol.insert("enum".into(), Value::Array(names));
        }
        doc.to_string()
    })
}

async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(served())
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_openapi_json() {
        let doc: serde_json::Value =
            serde_json::from_str(super::DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["paths"].as_object().is_some_and(|p| p.len() > 10));
    }

    #[test]
    fn the_served_document_lists_every_protocol() {
        let doc: serde_json::Value = serde_json::from_str(super::served()).expect("JSON");
        let listed = &doc["components"]["schemas"]["Device"]["properties"]["protocol"]["enum"];
        let names: Vec<&str> = crate::protocol::PROTOCOLS.iter().map(|p| p.name).collect();
        assert_eq!(listed, &serde_json::json!(names));
        assert!(names.contains(&"framed") && names.contains(&"ttms"));
    }
}
