//! Chatflows rendered from the index: Flowise's JSON shape for `/api/v1/chatflows`, and the Python
//! service's (Flowise's shape with its admin model's keys beside) for `/chatflows`. What only
//! Flowise knows of a chatflow, its chat window's settings and whether it can stream, is asked of
//! it ([`chatbot_config`], [`streaming_capability`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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
/// uploads allowed, text-to-speech), which the index does not have. Public in Flowise; asked
/// here only for a granted chatflow (the caller was authorized), with the chatflow's Flowise
/// key. Of the flow's definition Flowise adds (`flowData`, its secrets stripped but its prompts,
/// tool URLs and every node kept), only what the chat window reads stays ([`chat_window_view`]).
/// The answer counts in the caller's share of the body memory (`held`) until it is written.
pub(super) async fn chatbot_config(
    upstream: &Upstream,
    flowise_id: &str,
    key: Option<&HeaderValue>,
    peer: SocketAddr,
    mut held: Held,
) -> Result<Response<Body>, ProxyError> {
    let path = format!("/api/v1/public-chatbotConfig/{flowise_id}");
    let (parts, answer) = ask(upstream, &path, key, peer, MAX_ANSWER, Some(&mut held)).await?;
    let mut config: Value = serde_json::from_slice(&answer)
        .map_err(|e| ProxyError::Upstream(format!("Flowise's chatbot config is not JSON: {e}")))?;
    drop(answer);
    if let Some(config) = config.as_object_mut()
        && let Some(flow_data) = config.remove("flowData")
    {
        let view = flow_data.as_str().map(chat_window_view);
        if let Some(view) = view {
            config.insert("flowData".into(), Value::String(view));
        }
    }
    let body = serde_json::to_vec(&config).map_err(|e| ProxyError::Internal(e.to_string()))?;
    drop(config);
    // Flowise's answer is gone: the reduced one is what is held now.
    held.shrink_to(0);
    held.grow(body.capacity());
    let mut resp = Response::builder().status(StatusCode::OK);
    if let Some(headers) = resp.headers_mut() {
        upstream::copy_response_headers(&parts.headers, headers);
    }
    resp.body(buffers::whole(buffers::owning(body, held)))
        .map_err(|e| ProxyError::Internal(e.to_string()))
}

/// The inputs of an Agentflow's start node that Flowise's chat window and flowise-embed read
/// from a chatbot config's `flowData`: whether the chat starts with a form, and the form.
const START_INPUTS: [&str; 4] = [
    "startInputType",
    "formTitle",
    "formDescription",
    "formInputTypes",
];

/// What of a chatflow's definition (`flowData`, JSON in a string) the chat window needs: its
/// start nodes (`startAgentflow`) with [`START_INPUTS`] only. Prompts, tool URLs, other nodes
/// and edges are the chatflow's builders', not its callers'. A definition that does not parse
/// is shown as none.
fn chat_window_view(flow_data: &str) -> String {
    let definition: Value = serde_json::from_str(flow_data).unwrap_or_default();
    let starts: Vec<Value> = definition
        .get("nodes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|node| node.pointer("/data/name").and_then(Value::as_str) == Some("startAgentflow"))
        .map(|node| {
            let inputs: serde_json::Map<String, Value> = START_INPUTS
                .iter()
                .filter_map(|name| {
                    let value = node.pointer(&format!("/data/inputs/{name}"))?;
                    Some(((*name).to_string(), value.clone()))
                })
                .collect();
            json!({
                "id": node.get("id").cloned().unwrap_or(Value::Null),
                "data": {"name": "startAgentflow", "inputs": inputs},
            })
        })
        .collect();
    json!({"nodes": starts, "edges": []}).to_string()
}

/// Flowise's answer to `GET path` (at most `limit` bytes, counted in `held`), with its head; a
/// refusal is 502 with Flowise's message.
async fn ask(
    upstream: &Upstream,
    path: &str,
    key: Option<&HeaderValue>,
    peer: SocketAddr,
    limit: usize,
    held: Option<&mut Held>,
) -> Result<(hyper::http::response::Parts, Bytes), ProxyError> {
    let req = upstream.request(
        Method::GET,
        path,
        &HeaderMap::new(),
        peer,
        key,
        Bytes::new(),
    )?;
    let (parts, body) = upstream.send(req).await?.into_parts();
    if !parts.status.is_success() {
        let body = upstream.error_body(body).await;
        return Err(ProxyError::Upstream(super::flowise_message(
            parts.status,
            &body,
        )));
    }
    let answer = upstream.read_body(body, limit, held).await?;
    Ok((parts, answer))
}

/// The query of Flowise's `GET /api/v1/chatflows`, as Flowise reads it: `type` lists one type
/// (matched exactly; a value Flowise has no type of lists every type, as Flowise does), and
/// `page` with `limit`, both over 0, one page of the list as `{"data": [...], "total": n}`
/// (`total` counting every page). A value that is not a whole number, or below 0, is a 400.
pub(super) fn flowise_list(
    chatflows: Vec<&ChatflowEntry>,
    query: Option<&str>,
) -> Result<Value, ProxyError> {
    const TYPES: [&str; 4] = ["CHATFLOW", "AGENTFLOW", "MULTIAGENT", "ASSISTANT"];
    let (mut flow_type, mut page, mut limit) = (None, 0_usize, 0_usize);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // A number past any list's length is as good as the largest one.
        let number = |name: &str| match value.parse::<usize>() {
            Ok(n) => Ok(n),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(usize::MAX),
            Err(_) => Err(ProxyError::BadRequest(format!(
                "query parameter '{name}' must be a whole number, 0 or more"
            ))),
        };
        match &*key {
            "type" => flow_type = TYPES.into_iter().find(|t| *t == value),
            "page" => page = number("page")?,
            "limit" => limit = number("limit")?,
            _ => {}
        }
    }
    let mut chatflows = chatflows;
    newest_first(&mut chatflows);
    let listed: Vec<Value> = chatflows
        .into_iter()
        .filter(|cf| flow_type.is_none_or(|t| cf.rule.flow_type_or_default() == t))
        .map(flowise_shape)
        .collect();
    if page == 0 || limit == 0 {
        return Ok(Value::Array(listed));
    }
    let total = listed.len();
    let data: Vec<Value> = listed
        .into_iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .collect();
    Ok(json!({ "data": data, "total": total }))
}

/// Newest first, by when Flowise last updated them, as Flowise lists its chatflows.
pub(super) fn newest_first(chatflows: &mut [&ChatflowEntry]) {
    chatflows.sort_by_key(|cf| std::cmp::Reverse(cf.rule.updated.or(cf.rule.created)));
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

/// How long Flowise's answer to `chatflows-streaming` is used before it is asked again: an edit
/// that changes whether a chatflow can stream shows within this.
const STREAMING_TTL: Duration = Duration::from_secs(30);

/// Flowise's `isStreaming` of chatflows by Flowise id, kept for [`STREAMING_TTL`]: the official
/// SDKs ask before every prediction, and anyone may ask.
#[derive(Clone, Default)]
pub struct StreamingAnswers(Arc<Mutex<HashMap<String, (Instant, bool)>>>);

impl StreamingAnswers {
    fn get(&self, flowise_id: &str) -> Option<bool> {
        let answers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .get(flowise_id)
            .filter(|(at, _)| at.elapsed() < STREAMING_TTL)
            .map(|&(_, streams)| streams)
    }

    fn put(&self, flowise_id: &str, streams: bool) {
        let mut answers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Only chatflows in the index are asked about; those gone since go when they expire.
        if answers.len() >= 4096 {
            answers.retain(|_, (at, _)| at.elapsed() < STREAMING_TTL);
        }
        answers.insert(flowise_id.to_string(), (Instant::now(), streams));
    }
}

/// `GET /api/v1/chatflows-streaming/{id}`: whether Flowise streams the chatflow's answers, as
/// Flowise says (`{"isStreaming": bool}`). The official SDKs and the chat embed ask it, without
/// credentials, to choose how to read a prediction's answer: a chatflow Flowise cannot stream
/// (its ending node cannot) answers JSON even when asked to stream.
pub(super) async fn streaming_capability(
    upstream: &Upstream,
    answers: &StreamingAnswers,
    flowise_id: &str,
    key: Option<&HeaderValue>,
    peer: SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    let streams = match answers.get(flowise_id) {
        Some(streams) => streams,
        None => {
            let path = format!("/api/v1/chatflows-streaming/{flowise_id}");
            let (_, answer) = ask(upstream, &path, key, peer, 64 * 1024, None).await?;
            let streams = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v.get("isStreaming")?.as_bool())
                .ok_or_else(|| {
                    ProxyError::Upstream(
                        "Flowise's chatflows-streaming answer has no isStreaming".into(),
                    )
                })?;
            answers.put(flowise_id, streams);
            streams
        }
    };
    Ok(super::error::json(
        StatusCode::OK,
        &json!({ "isStreaming": streams }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_window_sees_only_the_start_nodes_form() {
        let definition = json!({
            "nodes": [
                {"id": "start", "data": {"name": "startAgentflow", "inputs": {
                    "startInputType": "formInput", "formTitle": "Ticket",
                    "formInputTypes": [{"type": "string", "name": "subject"}],
                    "startState": [{"key": "secret", "value": "s3cret"}]}}},
                {"id": "llm", "data": {"name": "llmAgentflow", "inputs": {
                    "llmMessages": [{"role": "system", "content": "You are ACME's internal bot"}]}}}
            ],
            "edges": [{"source": "start", "target": "llm"}]
        });
        let view: Value =
            serde_json::from_str(&chat_window_view(&definition.to_string())).expect("JSON");
        assert_eq!(
            view,
            json!({"nodes": [{"id": "start", "data": {"name": "startAgentflow", "inputs": {
                "startInputType": "formInput", "formTitle": "Ticket",
                "formInputTypes": [{"type": "string", "name": "subject"}]}}}], "edges": []})
        );
        // A chatflow (no start node) and a definition that does not parse show none.
        for definition in [
            r#"{"nodes": [{"id": "a", "data": {"name": "chatOpenAI"}}]}"#,
            "{",
        ] {
            let view: Value = serde_json::from_str(&chat_window_view(definition)).expect("JSON");
            assert_eq!(view, json!({"nodes": [], "edges": []}));
        }
    }
    use crate::crd::Chatflow;
    use crate::index::{Resources, compile};

    const IDS: [&str; 3] = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ];

    /// The snapshot's chatflows of [`IDS`], in that order.
    fn in_order(snapshot: &crate::index::Snapshot) -> Vec<&ChatflowEntry> {
        IDS.iter()
            .map(|id| &**snapshot.chatflow_by_flowise_id(id).expect("indexed"))
            .collect()
    }

    fn chatflow(name: &str, id: &str, flow_type: &str) -> Arc<Chatflow> {
        let yaml = format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: {name}, namespace: a}}\n\
             spec: {{flowiseId: {id}}}\nstatus: {{flowiseId: {id}, type: {flow_type}}}\n"
        );
        Arc::new(serde_saphyr::from_str(&yaml).expect("fixture is valid YAML"))
    }

    /// Flowise's own dates are shown (not the object's creation and flowgate's last sync, which
    /// moves every few minutes), newest first by `updatedDate`, as Flowise lists.
    #[test]
    fn chatflows_show_flowises_dates_newest_first() {
        let dated = |name: &str, id: &str, updated: &str| -> Arc<Chatflow> {
            let yaml = format!(
                "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\n\
                 metadata: {{name: {name}, namespace: a, creationTimestamp: '2026-11-20T00:00:00Z'}}\n\
                 spec: {{flowiseId: {id}}}\nstatus: {{flowiseId: {id}, \
                 flowiseCreatedAt: '2025-01-01T00:00:00Z', flowiseUpdatedAt: '{updated}', \
                 lastSyncTime: '2026-11-25T10:00:00Z'}}\n"
            );
            Arc::new(serde_saphyr::from_str(&yaml).expect("fixture is valid YAML"))
        };
        let ids = IDS;
        let snapshot = compile(&Resources {
            chatflows: vec![
                dated("old", ids[0], "2025-02-01T00:00:00Z"),
                dated("new", ids[1], "2025-06-01T00:00:00Z"),
                dated("mid", ids[2], "2025-03-01T00:00:00Z"),
            ],
            ..Default::default()
        });
        let entries = in_order(&snapshot);
        let list = flowise_list(entries, None).expect("a list");
        let shown: Vec<(&str, &str, &str)> = list
            .as_array()
            .expect("an array")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default(),
                    c["createdDate"].as_str().unwrap_or_default(),
                    c["updatedDate"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("new", "2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z"),
                ("mid", "2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z"),
                ("old", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn the_list_is_filtered_by_type_and_paged_as_flowise_does() {
        let ids = IDS;
        let snapshot = compile(&Resources {
            chatflows: vec![
                chatflow("one", ids[0], "CHATFLOW"),
                chatflow("two", ids[1], "AGENTFLOW"),
                chatflow("three", ids[2], "AGENTFLOW"),
            ],
            ..Default::default()
        });
        let entries = || in_order(&snapshot);
        let listed = |query: &str| flowise_list(entries(), Some(query)).expect("a list");
        let names = |list: &Value| -> Vec<String> {
            list.as_array()
                .expect("an array")
                .iter()
                .map(|c| c["id"].as_str().expect("id").to_string())
                .collect()
        };
        assert_eq!(names(&listed("")), ids);
        assert_eq!(names(&listed("type=AGENTFLOW")), ids[1..]);
        // Exact, as Flowise matches: anything else lists every type.
        assert_eq!(names(&listed("type=agentflow")), ids);
        assert_eq!(names(&listed("type=BOGUS")), ids);
        // A page only with both over 0.
        assert_eq!(names(&listed("page=1")), ids);
        assert_eq!(names(&listed("page=0&limit=2")), ids);
        let page = listed("page=2&limit=2");
        assert_eq!(page["total"], 3);
        assert_eq!(names(&page["data"]), ids[2..]);
        let page = listed("type=AGENTFLOW&page=1&limit=1");
        assert_eq!(page["total"], 2);
        assert_eq!(names(&page["data"]), ids[1..2]);
        assert_eq!(
            names(&listed("page=9&limit=2")["data"]),
            Vec::<String>::new()
        );
        let huge = "99999999999999999999999999999999";
        let page = listed(&format!("page={huge}&limit={huge}"));
        assert_eq!(page["total"], 3);
        assert_eq!(names(&page["data"]), Vec::<String>::new());
        assert_eq!(names(&listed(&format!("page=1&limit={huge}"))["data"]), ids);
        for bad in ["page=-1&limit=2", "limit=x"] {
            assert!(
                matches!(
                    flowise_list(entries(), Some(bad)),
                    Err(ProxyError::BadRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
