//! `GET /api/openapi.json`: the machine-readable description of the API.
//!
//! A hand-kept OpenAPI 3.0 document (`openapi.json` beside this file) compiled into the binary,
//! rather than one generated from annotations (utoipa): the document then describes the
//! contract as written, including its JSON error shape and the WebSocket route, without
//! attribute macros on every handler and schema type, and nothing is fetched at build or run
//! time. `tests/openapi.rs` keeps it honest in both directions: every route registered in
//! `src/web/` is described, and every described route is served.

use actix_web::{web, HttpResponse};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(document));
}

async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
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
}
