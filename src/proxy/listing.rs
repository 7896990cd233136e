//! Chatflows rendered from the index: Flowise's JSON shape for `/api/v1/chatflows`, and the Python
//! service's (Flowise's shape with its admin model's keys beside) for `/chatflows`. What only
//! Flowise knows of a chatflow, its chat window's settings, is asked of it ([`chatbot_config`]).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};

use super::buffers::{self, Held};
use super::upstream::{self, Upstream};
use super::{MAX_ANSWER, ProxyError};
use crate::index::ChatflowEntry;
use crate::server::Body;

/// `GET /api/v1/public-chatbotConfig/{id}`, Flowise's answer passed through: what Flowise's chat
/// window and embed ask before a chat (the welcome message, starter prompts, follow-up prompts,
/// uploads allowed, text-to-speech, and the flow data Flowise strips for public use), which the
/// index does not have. Public in Flowise; asked here only for a granted chatflow (the caller
/// was authorized), with the chatflow's Flowise key. The answer counts in the caller's share of
/// the body memory (`held`) until it is written.
pub(super) async fn chatbot_config(
    upstream: &Upstream,
    flowise_id: &str,
    key: Option<&HeaderValue>,
    peer: SocketAddr,
    mut held: Held,
) -> Result<Response<Body>, ProxyError> {
    let path = format!("/api/v1/public-chatbotConfig/{flowise_id}");
    let req = upstream.request(
        Method::GET,
        &path,
        &HeaderMap::new(),
        peer,
        key,
        Bytes::new(),
    )?;
    let (parts, body) = upstream.send(req).await?.into_parts();
    if !parts.status.is_success() {
        let body = upstream
            .read_body(body, 64 * 1024, None)
            .await
            .unwrap_or_default();
        return Err(ProxyError::Upstream(super::flowise_message(
            parts.status,
            &body,
        )));
    }
    let answer = upstream
        .read_body(body, MAX_ANSWER, Some(&mut held))
        .await?;
    let mut resp = Response::builder().status(StatusCode::OK);
    if let Some(headers) = resp.headers_mut() {
        upstream::copy_response_headers(&parts.headers, headers);
    }
    resp.body(
        http_body_util::Full::new(buffers::owning(answer, held))
            .map_err(|e| match e {})
            .boxed(),
    )
    .map_err(|e| ProxyError::Internal(e.to_string()))
}

/// One chatflow in Flowise's shape (the fields Flowise's own listing has that the index knows;
/// `flowData` and the API key binding are never shown to callers).
pub fn flowise_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    let (created, updated) = rule.dates();
    json!({
        "id": rule.flowise_id,
        "name": rule.shown_name(),
        "deployed": rule.deployed.unwrap_or(false),
        "isPublic": false,
        "type": rule.flow_type_or_default(),
        "category": null,
        "createdDate": created,
        "updatedDate": updated,
    })
}

/// One chatflow as the Python service's `/chatflows` showed it. That service passed Flowise's
/// listing through, so these are Flowise's keys (`id` the Flowise id, `isPublic`,
/// `createdDate`, ...), with the admin API's `Chatflow` model's snake_case keys beside them and
/// `chatflow`, the Chatflow object's name. A chatflow not (yet) found in Flowise has that name as
/// its `id`: `/chatflows/{id}` and `/chat/predict` take either.
pub fn compat_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    let status = if rule.suspended {
        "suspended"
    } else if rule.ready {
        "active"
    } else {
        "inactive"
    };
    let (created, updated) = rule.dates();
    let mut shape = flowise_shape(cf);
    if let Value::Object(fields) = &mut shape {
        if rule.flowise_id.is_none() {
            fields.insert("id".into(), json!(rule.name));
        }
        fields.extend([
            ("chatflow".into(), json!(rule.name)),
            ("flowise_id".into(), json!(rule.flowise_id)),
            ("namespace".into(), json!(rule.namespace)),
            ("description".into(), Value::Null),
            ("status".into(), json!(status)),
            ("is_public".into(), json!(false)),
            ("created_at".into(), json!(created)),
            ("updated_at".into(), json!(updated)),
        ]);
    }
    shape
}
