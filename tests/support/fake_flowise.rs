//! A small in-process stand-in for Flowise, for what the real one cannot do on demand: answer
//! 500, report token usage, stream slowly. It speaks Flowise's exact prediction shapes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How the fake answers predictions.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// 200 JSON; Agentflow usage of `tokens` in `agentFlowExecutedData`.
    Answer { tokens: u64 },
    /// 500 with Flowise's error shape.
    Fail,
    /// SSE: token events, one `usageMetadata` of `tokens`, `end`; `gap` between events.
    Stream { tokens: u64, gap: Duration },
    /// SSE as Flowise 3 streams an Agentflow of a Start node and LLM nodes using `nodes` tokens
    /// each: `nextAgentFlow` before and after every node and the node list after it, tokens and
    /// `usageMetadata` for the last node only; with `fail_after: Some(n)`, an `error` event
    /// once `n` LLM nodes finished (`n` < 3: before any token), and the end.
    Agentflow {
        nodes: [u64; 3],
        fail_after: Option<usize>,
    },
    /// 200 JSON of an Agentflow resumed at Human Input node `human`: the resumed run's LLM
    /// node of `earlier` tokens, the resumed node, then this run's LLM node of `own` tokens.
    Resumed { earlier: u64, own: u64 },
    /// SSE that fails before answering: `start`, an `error` event, and `end_after` later `end`
    /// (as Flowise streams a run that failed at once).
    StreamFail { end_after: Duration },
    /// 200 JSON like `Answer { tokens: 0 }`, after `delay` (the request is recorded on arrival).
    Slow { delay: Duration },
    /// 200 JSON headers at once, the body after `delay`.
    SlowBody { delay: Duration },
    /// 400 with Flowise's error shape: the headers at once, the body after `delay`.
    SlowRefusal { delay: Duration },
    /// 401, as Flowise answers a route called without its key.
    Unauthorized,
    /// 500, as Flowise 3 answers a prediction on a chatflow bound to another key.
    KeyBound,
    /// 429 with `Retry-After: 7`, as Flowise's own per-chatflow rate limit answers.
    RateLimited,
    /// `status` (502, 503, 504) with an HTML page, as an ingress in front of Flowise answers
    /// when it gives up on it.
    Gateway { status: u16 },
    /// 200 JSON of `bytes` bytes (an Agentflow's node list can be tens of megabytes).
    Huge { bytes: usize },
}

/// A running fake; counts what it received.
pub struct FakeFlowise {
    pub url: String,
    pub predictions: Arc<AtomicU64>,
    /// Abort requests received (counted on arrival).
    pub aborts: Arc<AtomicU64>,
    /// How long the abort endpoint takes to answer, in milliseconds (0 at start).
    pub abort_delay_ms: Arc<AtomicU64>,
    /// The paths of the abort requests received, in order. A `Stream` whose chat is named in
    /// one ends at its next event, as Flowise ends an Agentflow it stopped.
    pub abort_paths: Arc<Mutex<Vec<String>>>,
    /// Every request received, whatever its path.
    pub requests: Arc<AtomicU64>,
    /// The JSON bodies of the predictions received, in order.
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The headers of the predictions received, in order.
    pub headers: Arc<Mutex<Vec<hyper::HeaderMap>>>,
}

impl FakeFlowise {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let predictions = Arc::new(AtomicU64::new(0));
        let aborts = Arc::new(AtomicU64::new(0));
        let abort_delay_ms = Arc::new(AtomicU64::new(0));
        let abort_paths = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (p, a, r) = (predictions.clone(), aborts.clone(), requests.clone());
        let (d, ap) = (abort_delay_ms.clone(), abort_paths.clone());
        let (b, h) = (bodies.clone(), headers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (p, a, r, b, h) = (p.clone(), a.clone(), r.clone(), b.clone(), h.clone());
                let (d, ap) = (d.clone(), ap.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().starts_with("/api/v1/prediction/") {
                            h.lock().expect("headers lock").push(req.headers().clone());
                        }
                        let aborts = (a.clone(), d.clone(), ap.clone());
                        answer(req, mode, p.clone(), aborts, b.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            predictions,
            aborts,
            abort_delay_ms,
            abort_paths,
            requests,
            bodies,
            headers,
        }
    }

    /// The headers of the last prediction received.
    pub fn last_headers(&self) -> hyper::HeaderMap {
        self.headers
            .lock()
            .expect("headers lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// The body of the last prediction received.
    pub fn last_body(&self) -> serde_json::Value {
        self.bodies
            .lock()
            .expect("bodies lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Every request received so far, whatever its path.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn predictions(&self) -> u64 {
        self.predictions.load(Ordering::SeqCst)
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The fake also plays an OAuth token endpoint here (for `/chat/authenticate` and `/chat/refresh`).
pub const TOKEN_PATH: &str = "/oauth/token";
/// The one password grant it accepts: this user with this password (which needs encoding).
pub const TOKEN_USER: (&str, &str) = ("alice", "s3cret & more=+");

/// The one confidential client it knows: this id with this secret (both need form-encoding).
pub const TOKEN_CLIENT: (&str, &str) = ("flowgate ui", "s:cret/+");
/// The one public client it knows.
pub const TOKEN_PUBLIC_CLIENT: &str = "public-ui";

/// The client of a token request: `Ok(None)` for none, `Err` for an unknown one or two
/// authentication methods at once (RFC 6749 §2.3).
fn token_client(
    headers: &hyper::HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Result<Option<String>, ()> {
    use base64::Engine;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    let in_form = form.contains_key("client_id") || form.contains_key("client_secret");
    let Some(basic) = basic else {
        let secret = form.get("client_secret").map(String::as_str);
        return match form.get("client_id").map(String::as_str) {
            None if !in_form => Ok(None),
            Some(TOKEN_PUBLIC_CLIENT) if secret.is_none() => Ok(Some(TOKEN_PUBLIC_CLIENT.into())),
            // client_secret_post.
            Some(id) if (id, secret) == (TOKEN_CLIENT.0, Some(TOKEN_CLIENT.1)) => {
                Ok(Some(TOKEN_CLIENT.0.into()))
            }
            _ => Err(()),
        };
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (id, secret) = decoded.split_once(':').ok_or(())?;
    let form_decode = |s: &str| -> String {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if in_form || (form_decode(id).as_str(), form_decode(secret).as_str()) != TOKEN_CLIENT {
        return Err(());
    }
    Ok(Some(TOKEN_CLIENT.0.into()))
}

/// Password grant for [`TOKEN_USER`]: tokens `at-1` and `rt-1`. Refresh grant of `rt-1`: `at-2`
/// and no new refresh token (a provider that does not rotate them). Anything else: 400. A client
/// it does not know ([`token_client`]): 401 `invalid_client`. The access token names the client:
/// `at-1@<client id>` where there was one.
async fn token_grant(req: Request<hyper::body::Incoming>) -> Response<FakeBody> {
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str);
    let Ok(client) = token_client(&headers, &form) else {
        return full(
            401,
            "application/json",
            serde_json::json!({"error": "invalid_client", "error_description": "unknown client"})
                .to_string(),
        );
    };
    let access = match client {
        Some(client) => format!("at-1@{client}"),
        None => "at-1".into(),
    };
    let answer = match field("grant_type") {
        Some("password")
            if (field("username"), field("password"))
                == (Some(TOKEN_USER.0), Some(TOKEN_USER.1)) =>
        {
            serde_json::json!({"access_token": access, "token_type": "Bearer", "refresh_token": "rt-1", "expires_in": 300})
        }
        Some("refresh_token") if field("refresh_token") == Some("rt-1") => {
            serde_json::json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 300})
        }
        _ => {
            return full(
                400,
                "application/json",
                serde_json::json!({"error": "invalid_grant", "error_description": "wrong credentials"}).to_string(),
            );
        }
    };
    full(200, "application/json", answer.to_string())
}

/// A JSON answer of `status` whose headers go out at once and whose body follows `delay` later.
fn json_later(status: u16, answer: serde_json::Value, delay: Duration) -> Response<FakeBody> {
    let body = futures::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(answer.to_string())))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    resp
}

fn full(status: u16, content_type: &str, body: String) -> Response<FakeBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    resp.headers_mut()
        .insert("content-type", content_type.parse().expect("header"));
    resp
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    mode: Mode,
    predictions: Arc<AtomicU64>,
    (aborts, abort_delay_ms, abort_paths): (
        Arc<AtomicU64>,
        Arc<AtomicU64>,
        Arc<Mutex<Vec<String>>>,
    ),
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
) -> Result<Response<FakeBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == TOKEN_PATH {
        return Ok(token_grant(req).await);
    }
    if path.starts_with("/api/v1/chatmessage/abort/") {
        aborts.fetch_add(1, Ordering::SeqCst);
        abort_paths
            .lock()
            .expect("abort paths lock")
            .push(path.clone());
        tokio::time::sleep(Duration::from_millis(abort_delay_ms.load(Ordering::SeqCst))).await;
        return Ok(full(200, "application/json", "{}".into()));
    }
    // As Flowise answers: its streamed modes come from chatflows it can stream.
    if path.starts_with("/api/v1/chatflows-streaming/") {
        let streams = matches!(
            mode,
            Mode::Stream { .. } | Mode::Agentflow { .. } | Mode::StreamFail { .. }
        );
        let answer = serde_json::json!({ "isStreaming": streams }).to_string();
        return Ok(full(200, "application/json", answer));
    }
    if !path.starts_with("/api/v1/prediction/") {
        return Ok(full(
            404,
            "application/json",
            "{\"message\":\"not found\"}".into(),
        ));
    }
    predictions.fetch_add(1, Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    bodies.lock().expect("bodies lock").push(request.clone());
    let chat_id = request["chatId"].as_str().unwrap_or("new").to_string();
    let question = request["question"].as_str().unwrap_or_default().to_string();
    Ok(match mode {
        Mode::Huge { bytes } => full(
            200,
            "application/json",
            serde_json::json!({"text": "x".repeat(bytes), "chatId": chat_id}).to_string(),
        ),
        Mode::Unauthorized => full(
            401,
            "application/json",
            serde_json::json!({"statusCode": 401, "success": false, "message": "Unauthorized", "stack": {}}).to_string(),
        ),
        Mode::KeyBound => full(
            500,
            "application/json",
            serde_json::json!({"statusCode": 500, "success": false,
                "message": "Error: predictionsServices.buildChatflow - Unauthorized", "stack": {}})
            .to_string(),
        ),
        Mode::RateLimited => {
            let mut resp = full(
                429,
                "text/html; charset=utf-8",
                "Too many requests, please try again later.".into(),
            );
            resp.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("7"));
            resp
        }
        Mode::Gateway { status } => full(
            status,
            "text/html",
            format!("<html><body><h1>{status} Gateway</h1>nginx</body></html>"),
        ),
        Mode::Fail => full(
            500,
            "application/json",
            serde_json::json!({"statusCode": 500, "success": false, "message": "Error: buildChatflow - boom", "stack": {}}).to_string(),
        ),
        Mode::Slow { delay } => {
            tokio::time::sleep(delay).await;
            full(
                200,
                "application/json",
                serde_json::json!({"text": format!("Echo: {question}"), "question": question, "chatId": chat_id, "sessionId": chat_id}).to_string(),
            )
        }
        Mode::SlowRefusal { delay } => json_later(
            400,
            serde_json::json!({"statusCode": 400, "success": false, "message": "Error: buildChatflow - bad input", "stack": {}}),
            delay,
        ),
        Mode::SlowBody { delay } => json_later(
            200,
            serde_json::json!({"text": format!("Echo: {question}"), "question": question, "chatId": chat_id, "sessionId": chat_id}),
            delay,
        ),
        Mode::Answer { tokens } => full(
            200,
            "application/json",
            serde_json::json!({
                "text": format!("Echo: {question}"), "question": question, "chatId": chat_id, "sessionId": chat_id,
                "agentFlowExecutedData": [{"data": {"output": {"usageMetadata": {"input_tokens": tokens / 2, "output_tokens": tokens - tokens / 2, "total_tokens": tokens}}}}]
            })
            .to_string(),
        ),
        Mode::Resumed { earlier, own } => full(
            200,
            "application/json",
            serde_json::json!({
                "text": format!("Echo: {question}"), "question": question, "chatId": chat_id, "sessionId": chat_id,
                "agentFlowExecutedData": [
                    {"nodeId": "llm_0", "status": "FINISHED", "data": {"name": "llmAgentflow", "output": {"usageMetadata": {"total_tokens": earlier}}}},
                    {"nodeId": "human", "status": "FINISHED", "data": {"name": "humanInputAgentflow", "output": {"content": "proceed"}}},
                    {"nodeId": "llm_1", "status": "FINISHED", "data": {"name": "llmAgentflow", "output": {"usageMetadata": {"total_tokens": own}}}}
                ]
            })
            .to_string(),
        ),
        Mode::StreamFail { end_after } => {
            // Chunked, event by event, as Flowise writes it.
            let frames = [
                r#"{"event":"start","data":""}"#,
                r#"{"event":"error","data":"Error: buildAgentflow - boom"}"#,
                r#"{"event":"end","data":"[DONE]"}"#,
            ]
            .map(|e| Frame::data(Bytes::from(format!("message:\ndata:{e}\n\n"))));
            let frames = futures::StreamExt::then(futures::stream::iter(frames), move |frame| async move {
                if frame.data_ref().is_some_and(|d| d.ends_with(b"[DONE]\"}\n\n")) {
                    tokio::time::sleep(end_after).await;
                }
                Ok::<_, Infallible>(frame)
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            resp.headers_mut().insert("content-type", "text/event-stream".parse().expect("header"));
            resp
        }
        Mode::Agentflow { nodes, fail_after } => {
            // Written as Flowise writes them, `event` first.
            let event = |kind: &str, data: serde_json::Value| {
                format!("message:\ndata:{{\"event\":\"{kind}\",\"data\":{data}}}\n\n")
            };
            let next = |node: &str, status: &str| {
                event("nextAgentFlow", serde_json::json!({"nodeId": node, "nodeLabel": node, "status": status}))
            };
            let mut out = event("agentFlowEvent", "INPROGRESS".into());
            out += &next("startAgentflow_0", "INPROGRESS");
            out += &next("startAgentflow_0", "FINISHED");
            let mut done = vec![serde_json::json!({"nodeId": "startAgentflow_0", "status": "FINISHED", "data": {"output": {"question": question}}})];
            out += &event("agentFlowExecutedData", done.clone().into());
            for (i, tokens) in nodes.iter().enumerate() {
                let node = format!("llmAgentflow_{i}");
                out += &next(&node, "INPROGRESS");
                if fail_after == Some(i) {
                    break;
                }
                if i + 1 == nodes.len() {
                    out += &event("token", format!("Echo: {question}").into());
                    out += &event("usageMetadata", serde_json::json!({"input_tokens": tokens / 2, "output_tokens": tokens - tokens / 2, "total_tokens": tokens}));
                }
                out += &next(&node, "FINISHED");
                done.push(serde_json::json!({"nodeId": node, "status": "FINISHED",
                    "data": {"output": {"content": "x", "usageMetadata": {"total_tokens": tokens}}}}));
                out += &event("agentFlowExecutedData", done.clone().into());
            }
            if fail_after.is_some() {
                out += &event("error", "Error: the last node failed".into());
            } else {
                out += &event("agentFlowEvent", "FINISHED".into());
                out += &event("metadata", serde_json::json!({"chatId": chat_id}));
            }
            out += &event("end", "[DONE]".into());
            full(200, "text/event-stream", out)
        }
        Mode::Stream { tokens, gap } => {
            let frames = vec![
                r#"{"event":"start","data":""}"#.to_string(),
                r#"{"event":"token","data":"Echo: "}"#.to_string(),
                serde_json::json!({"event": "token", "data": question}).to_string(),
                serde_json::json!({"event": "usageMetadata", "data": {"input_tokens": tokens / 2, "output_tokens": tokens - tokens / 2, "total_tokens": tokens}}).to_string(),
                serde_json::json!({"event": "metadata", "data": {"chatId": chat_id}}).to_string(),
                r#"{"event":"end","data":"[DONE]"}"#.to_string(),
            ];
            let aborted = format!("/{chat_id}");
            // Only an abort that arrives while the run goes stops it (Flowise aborts the runs in
            // progress).
            let before = abort_paths.lock().expect("abort paths lock").len();
            let stream = futures::stream::unfold(frames.into_iter(), move |mut it| {
                let (abort_paths, aborted) = (abort_paths.clone(), aborted.clone());
                async move {
                let mut frame = it.next()?;
                tokio::time::sleep(gap).await;
                if abort_paths.lock().expect("abort paths lock").iter().skip(before).any(|p| p.ends_with(&aborted)) {
                    // As Flowise 3.1 ends an Agentflow it stopped: the node and the flow
                    // TERMINATED, the node list without the cut node's tokens, an error.
                    frame = [
                        r#"{"event":"nextAgentFlow","data":{"nodeId":"llm_0","status":"TERMINATED"}}"#,
                        r#"{"event":"agentFlowExecutedData","data":[{"nodeId":"llm_0","status":"TERMINATED","data":{}}]}"#,
                        r#"{"event":"agentFlowEvent","data":"TERMINATED"}"#,
                        r#"{"event":"error","data":"Flow execution was cancelled"}"#,
                    ]
                    .join("\n\nmessage:\ndata:");
                    it = Vec::new().into_iter();
                }
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("message:\ndata:{frame}\n\n")))), it))
                }
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert("content-type", "text/event-stream".parse().expect("header"));
            resp.headers_mut().insert("x-accel-buffering", "no".parse().expect("header"));
            resp
        }
    })
}
