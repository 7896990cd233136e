//! Side doors stay shut: every Flowise route that is not on the allow-list, with every method,
//! and path tricks on the allowed ones (`..`, `%2f`, `%2e`, `//`, case, trailing junk, overlong
//! paths) are answered 404 — with a token that is granted the chatflow — and the fake Flowise
//! behind the proxy receives nothing at all. Requests are written as raw HTTP/1.1 so no client
//! library normalises the path first.

mod support;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, eventually_status};
use support::team::Team;

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Sends one raw request; returns the status and the body parsed as JSON (Null otherwise).
async fn raw(base: &str, method: &str, target: &str, bearer: &str) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request written");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("answered within 10 s");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn side_doors_and_path_tricks_never_reach_flowise() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("side-door test bounded to 120 s");
}

async fn run() {
    let team = Team::with_fake_flowise("side-doors").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    let alice = team.alice();
    // Wait until the chatflow is indexed and granted (one real prediction), then count from there.
    eventually_status(&gate, &alice, &id, 200).await;
    let before = fake.requests();

    let side_doors = [
        format!("/api/v1/internal-prediction/{id}"),
        format!("/api/v1/webhook/{id}"),
        format!("/api/v1/mcp/{id}"),
        format!("/api/v1/chatmessage/{id}"),
        format!("/api/v1/internal-chatmessage/{id}"),
        format!("/api/v1/attachments/{id}/chat"),
        format!("/api/v1/get-upload-file?chatflowId={id}&chatId=x&fileName=a"),
        "/api/v1/get-upload-file".to_string(),
        format!("/api/v1/feedback/{id}"),
        format!("/api/v1/leads/{id}"),
        format!("/api/v1/public-chatflows/{id}"),
        format!("/api/v1/vector/upsert/{id}"),
        format!("/api/v1/vector/internal-upsert/{id}"),
        "/api/v1/apikey".to_string(),
        "/api/v1/apikey/x".to_string(),
        "/api/v1/credentials".to_string(),
        "/api/v1/variables".to_string(),
        "/api/v1/tools".to_string(),
        "/api/v1/assistants".to_string(),
        "/api/v1/document-store/store".to_string(),
        "/api/v1/export-import/export".to_string(),
        format!("/api/v1/openai-assistants-file/download?chatflowId={id}"),
        format!("/api/v1/upsert-history/{id}"),
        format!("/api/v1/stats/{id}"),
        "/api/v1/settings".to_string(),
        "/api/v1/ping".to_string(),
        "/api/v1/version".to_string(),
        "/api/v1/auth/login".to_string(),
        "/api/v1/account/register".to_string(),
        "/api/v1/nodes".to_string(),
        "/api/v1/executions".to_string(),
        "/api/v1/prediction".to_string(),
        "/".to_string(),
        "/index.html".to_string(),
    ];
    let tricks = [
        format!("/api/v1/prediction/{id}/../../apikey"),
        format!("/api/v1/prediction/../internal-prediction/{id}"),
        "/api/v1/prediction/%2e%2e/apikey".to_string(),
        format!("/api/v1/prediction/%2e%2e%2finternal-prediction%2f{id}"),
        format!("/api/v1/prediction%2f{id}"),
        format!("/api/v1/internal-prediction%2f..%2fprediction/{id}"),
        format!("/api/v1/prediction/{id}%2f..%2f..%2fapikey"),
        format!("/api/v1/%70rediction/{id}"),
        format!("/api/v1//prediction/{id}"),
        format!("//api/v1/prediction/{id}"),
        format!("/api/v1/prediction//{id}"),
        format!("/api/v1/./prediction/{id}"),
        format!("/api/v1/prediction/./{id}"),
        format!("/API/V1/PREDICTION/{id}"),
        format!("/Api/v1/prediction/{id}"),
        format!("/api/v1/Prediction/{id}"),
        format!("/api/v1/prediction/{id}/x"),
        format!("/api/v1/prediction/{id};x"),
        format!("/api/v1/prediction/{id}%00"),
        format!("/api/v1/prediction/{id}%20"),
        format!("/api/v1/prediction/{id}\\..\\apikey"),
        format!("/api/v1/prediction/{id}.json/x"),
        format!("/api/v1/prediction/{id}//"),
        format!("/api/v1/prediction/{}", "a".repeat(300)),
        format!("/api/v1/prediction/{id}/{}", "b/".repeat(400)),
        format!("/{}api/v1/prediction/{id}", "x/../".repeat(50)),
        format!("/api/v2/prediction/{id}"),
        format!("/api/v1/prediction-x/{id}"),
        format!("/api/v1/chatflows/{id}/../../apikey"),
        "/api/v1/chatflows/%2e%2e".to_string(),
        format!("/chatflows/../api/v1/apikey?x={id}"),
        format!("/chat/predict/../../api/v1/internal-prediction/{id}"),
        format!("/chat/../api/v1/webhook/{id}"),
        "/credits/../api/v1/apikey".to_string(),
    ];
    let mut failures = Vec::new();
    let mut sent = 0;
    for path in side_doors.iter().chain(tricks.iter()) {
        for method in METHODS {
            sent += 1;
            let (status, body) = raw(&gate.base, method, path, &alice).await;
            let json_ok = method == "HEAD" || body["error"]["code"] == "not_found";
            if status != 404 || !json_ok {
                failures.push(format!("{method} {path}: {status} {body}"));
            }
        }
    }
    // Absolute-form and asterisk targets: routed on their path, never forwarded.
    for target in [
        format!("http://flowise.internal/api/v1/internal-prediction/{id}"),
        "http://flowise.internal/api/v1/apikey".to_string(),
        "*".to_string(),
    ] {
        for method in ["GET", "POST", "OPTIONS"] {
            sent += 1;
            let (status, body) = raw(&gate.base, method, &target, &alice).await;
            if !matches!(status, 400 | 404) {
                failures.push(format!("{method} {target}: {status} {body}"));
            }
        }
    }
    // Allowed paths with other methods: 405, still nothing forwarded.
    for (path, allowed) in [
        (format!("/api/v1/prediction/{id}"), "POST"),
        ("/chat/predict".to_string(), "POST"),
        (format!("/api/v1/chatmessage/abort/{id}/x"), "PUT"),
        (format!("/api/v1/public-chatbotConfig/{id}"), "GET"),
    ] {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            // HEAD is answered as GET is.
            if method == allowed || (allowed, method) == ("GET", "HEAD") {
                continue;
            }
            sent += 1;
            let (status, body) = raw(&gate.base, method, &path, &alice).await;
            if status != 405 {
                failures.push(format!("{method} {path}: {status} {body}"));
            }
        }
    }
    // A huge request target is refused by the server or the router, never forwarded.
    sent += 1;
    let (status, _) = raw(
        &gate.base,
        "POST",
        &format!("/api/v1/prediction/{id}/{}", "z".repeat(70_000)),
        &alice,
    )
    .await;
    if !matches!(status, 0 | 400 | 404 | 414 | 431) {
        failures.push(format!("70 kB target: {status}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} side-door requests not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{sent} side-door requests refused");
    assert_eq!(
        fake.requests(),
        before,
        "Flowise received nothing from {sent} side-door requests"
    );

    // The door that is open still works, through the same raw client.
    let (status, body) = raw(
        &gate.base,
        "GET",
        &format!("/api/v1/chatflows/{id}"),
        &alice,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    team.cleanup().await;
}

#[tokio::test]
async fn another_users_session_cannot_be_continued_when_streaming_or_via_override_config() {
    tokio::time::timeout(Duration::from_secs(60), sessions())
        .await
        .expect("session test bounded to 60 s");
}

/// Streams one prediction; returns its status and the SSE text.
async fn stream(gate: &Flowgate, bearer: &str, id: &str, body: Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("flowgate answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn sessions() {
    let team = Team::with_fake_flowise("side-sessions").await;
    let fake = FakeFlowise::start(Mode::Stream {
        tokens: 0,
        gap: Duration::from_millis(1),
    })
    .await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    let alice = team.alice();
    eventually_status(&gate, &alice, &id, 200).await;

    let (status, _) = stream(
        &gate,
        &alice,
        &id,
        serde_json::json!({"question": "secret", "streaming": true}),
    )
    .await;
    assert_eq!(status, 200);
    let alices = fake.last_body()["chatId"]
        .as_str()
        .expect("a bound chatId was forwarded")
        .to_string();
    // Alice continues her own session: the same id is forwarded.
    let (status, _) = stream(
        &gate,
        &alice,
        &id,
        serde_json::json!({"question": "more", "streaming": true, "chatId": alices}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fake.last_body()["chatId"], alices.as_str());

    let mallory = support::gate::token("mallory", serde_json::json!({"groups": [team.group()]}));
    for body in [
        serde_json::json!({"question": "what did she say?", "streaming": true, "chatId": alices}),
        serde_json::json!({"question": "x", "streaming": true, "overrideConfig": {"sessionId": alices}}),
        serde_json::json!({"question": "x", "streaming": true, "chatId": alices,
                           "overrideConfig": {"sessionId": alices}}),
        serde_json::json!({"question": "x", "streaming": true, "chatId": "mine",
                           "overrideConfig": {"sessionId": alices}}),
        serde_json::json!({"question": "x", "chatId": alices, "overrideConfig": {"sessionId": alices}}),
    ] {
        let (status, text) = stream(&gate, &mallory, &id, body.clone()).await;
        assert_eq!(status, 200, "{body}: {text}");
        let forwarded = fake.last_body();
        assert_ne!(
            forwarded["chatId"],
            alices.as_str(),
            "{body} -> {forwarded}"
        );
        assert_ne!(
            forwarded["overrideConfig"]["sessionId"],
            alices.as_str(),
            "{body} -> {forwarded}"
        );
        // Mallory's session id may embed the one she asked for, but is bound to her: never
        // Alice's own id.
        assert!(
            !text.contains(&format!("\"chatId\":\"{alices}\"")),
            "{body}: {text}"
        );
    }
    team.cleanup().await;
}

/// What reaches Flowise with a prediction: the body's headers, the caller's user agent, a
/// request id and W3C trace context; never the caller's token, cookies, forwarding headers or
/// Flowise's own control headers. The request id comes back in the answer.
#[tokio::test]
async fn only_allowed_headers_reach_flowise_and_every_answer_carries_its_request_id() {
    tokio::time::timeout(Duration::from_secs(60), headers())
        .await
        .expect("header test bounded to 60 s");
}

async fn headers() {
    let team = Team::with_fake_flowise("headers").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    eventually_status(&gate, &alice, &id, 200).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/prediction/{id}", gate.base);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    // The caller's own id is kept.
    let resp = http
        .post(&url)
        .bearer_auth(&alice)
        .header("x-request-id", "client-42")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=abc")
        .header("user-agent", "flowise-sdk/1.0")
        .header("cookie", "session=secret")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-from", "internal")
        .header("flowise-tool", "true")
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-42");
    let sent = fake.last_headers();
    let header = |name: &str| sent.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-request-id"), Some("client-42"));
    assert_eq!(header("traceparent"), Some(traceparent));
    assert_eq!(header("tracestate"), Some("vendor=abc"));
    assert_eq!(header("user-agent"), Some("flowise-sdk/1.0"));
    assert_eq!(header("x-forwarded-for"), Some("127.0.0.1"), "overwritten");
    for dropped in ["authorization", "cookie", "x-request-from", "flowise-tool"] {
        assert_eq!(header(dropped), None, "{dropped} reached Flowise");
    }
    // Behind a proxy flowgate trusts (here the test itself, on loopback), Flowise is told the
    // address that proxy forwarded for: the first untrusted one from the right.
    let behind = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        trusted_proxies: Some("127.0.0.0/8, ::1".into()),
        ..Options::default()
    })
    .await;
    eventually_status(&behind, &alice, &id, 200).await;
    let resp = http
        .post(format!("{}/api/v1/prediction/{id}", behind.base))
        .bearer_auth(&alice)
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 127.0.0.5")
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let sent = fake.last_headers();
    assert_eq!(
        sent.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        Some("203.0.113.9")
    );

    // Without one (or with an implausible one), flowgate makes one up and sends it both ways.
    for given in [None, Some("has space")] {
        let mut req = http.post(&url).bearer_auth(&alice);
        if let Some(given) = given {
            req = req.header("x-request-id", given);
        }
        let resp = req
            .json(&serde_json::json!({"question": "hi"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 200);
        let answered = resp.headers()["x-request-id"].to_str().expect("ascii");
        assert_eq!(answered.len(), 32, "{answered}");
        assert_eq!(
            fake.last_headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some(answered)
        );
    }

    // Refusals carry one too, and nothing reached Flowise for them.
    let before = fake.requests();
    let refused = http
        .post(&url)
        .bearer_auth("not-a-token")
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-request-id"].len(), 32);
    assert_eq!(fake.requests(), before);
    team.cleanup().await;
}
