//! Device routes: the list, one device, its latest values.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::history::{query_limit, MAX_LIMIT};
use super::{mailbox_error, AppState};
use crate::supervisor::messages::{DeviceQuery, DeviceView, GetDevice, ListDevices, Values};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/devices").route(web::get().to(list)))
        .service(web::resource("/devices/{id}").route(web::get().to(one)))
        .service(web::resource("/devices/{id}/values").route(web::get().to(values)));
}

/// `GET /api/devices` parameters; each parsed here so that a bad one says what is wrong.
#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<String>,
    after: Option<String>,
    online: Option<String>,
    q: Option<String>,
}

/// Longest `q` text looked for; longer is refused, it cannot match an id.
const MAX_QUERY_TEXT: usize = 200;

impl ListParams {
    fn query(&self, caller: &Caller) -> Result<DeviceQuery, ApiError> {
        let limit = self
            .limit
            .as_deref()
            .map(|l| query_limit(l, MAX_LIMIT))
            .transpose()?;
        let online = match self.online.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "online must be true or false, got {other:?}"
                )))
            }
        };
        let text = self.q.as_deref().unwrap_or("");
        if text.chars().count() > MAX_QUERY_TEXT {
            return Err(ApiError::bad_request(format!(
                "q is longer than {MAX_QUERY_TEXT} characters"
            )));
        }
        Ok(DeviceQuery {
            after: self.after.clone().filter(|a| !a.is_empty()),
            limit: limit.and_then(|l| usize::try_from(l).ok()),
            online,
            text: None,
            reach: caller.devices.clone(),
        }
        .with_text(text))
    }
}

/// The devices the token reaches, in id order: all of them, or a page with `limit` (the
/// next page `after` the last id). Filters: `online`, `q` (text in the id, profile, protocol
/// or address). Headers say how many match (`X-Total-Count`, `X-Online-Count`) and, when
/// there is more, where the next page is (`Link: <…>; rel="next"`).
async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let query = params.query(&caller)?;
    let page = state
        .supervisor
        .send(ListDevices(query.clone()))
        .await
        .map_err(mailbox_error)?;
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header(("X-Total-Count", page.total.to_string()))
        .insert_header(("X-Online-Count", page.online.to_string()));
    if let Some(next) = &page.next {
        answer.insert_header((header::LINK, next_link(&params, &query, next)));
    }
    Ok(answer.json(page.devices))
}

/// The `Link` header of the next page: the same filters, `after` the last id shown.
fn next_link(params: &ListParams, query: &DeviceQuery, next: &str) -> String {
    let mut url = form_urlencoded::Serializer::new(String::new());
    if let Some(limit) = query.limit {
        url.append_pair("limit", &limit.to_string());
    }
    url.append_pair("after", next);
    if let Some(online) = query.online {
        url.append_pair("online", if online { "true" } else { "false" });
    }
    if let Some(q) = params.q.as_deref().filter(|q| !q.trim().is_empty()) {
        url.append_pair("q", q);
    }
    format!("</api/devices?{}>; rel=\"next\"", url.finish())
}

/// A device the caller may see, with its latest values; 404 when the server does not know it.
async fn device(
    state: &AppState,
    caller: &Caller,
    id: String,
) -> Result<(DeviceView, Values), ApiError> {
    caller.device(&id)?;
    state
        .supervisor
        .send(GetDevice { id: id.clone() })
        .await
        .map_err(mailbox_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id}")))
}

async fn one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (view, values) = device(&state, &caller, id.into_inner()).await?;
    let mut body = serde_json::to_value(view).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("values".into(), json!(values));
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn values(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, values) = device(&state, &caller, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(values))
}
