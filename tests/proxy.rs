//! The proxy end to end: real API server (resources and watch), real Flowise (predictions),
//! flowgate in-process. The test writes Chatflow status itself, standing in for the controller.

mod support;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use flowgate::crd::{Chatflow, ChatflowAccess};
use std::time::Duration;

use support::fake_flowise::{
    FakeFlowise, Mode, TOKEN_CLIENT, TOKEN_PATH, TOKEN_PUBLIC_CLIENT, TOKEN_USER,
};
use support::gate::{Flowgate, Options, eventually_status, get_json, predict, token};
use support::team::Team;

#[tokio::test]
async fn a_granted_user_lists_gets_and_predicts_through_flowgate() {
    let team = Team::new("proxy-predict").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let http = reqwest::Client::new();
    let list: Value = get_json(&format!("{}/api/v1/chatflows", gate.base), &team.alice()).await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![id.as_str()],
        "only the granted chatflow is listed: {list}"
    );
    assert_eq!(list[0]["type"], "AGENTFLOW");
    assert!(
        list[0].get("flowData").is_none(),
        "flow definitions are not exposed"
    );

    // The official SDKs ask this without credentials before predicting.
    let streaming: Value = http
        .get(format!("{}/api/v1/chatflows-streaming/{id}", gate.base))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(streaming["isStreaming"], true);

    // The chat window's settings are Flowise's answer, for a caller granted the chatflow only.
    let config_of = |bearer: String| {
        http.get(format!("{}/api/v1/public-chatbotConfig/{id}", gate.base))
            .bearer_auth(bearer)
            .send()
    };
    let config = config_of(team.alice()).await.expect("config");
    assert_eq!(config.status(), 200);
    let config: Value = config.json().await.expect("json");
    assert!(config["uploads"].is_object(), "Flowise's answer: {config}");
    // Of the flow's definition, only the start node's form settings the chat window reads: not
    // the reply node, its message, or the start node's state.
    let flow: Value = serde_json::from_str(config["flowData"].as_str().expect("flowData"))
        .expect("flowData is JSON");
    let nodes = flow["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{flow}");
    assert_eq!(nodes[0]["data"]["name"], "startAgentflow");
    assert_eq!(nodes[0]["data"]["inputs"]["startInputType"], "chatInput");
    assert!(
        nodes[0]["data"]["inputs"].get("startState").is_none(),
        "{flow}"
    );
    assert!(!flow.to_string().contains("Echo"), "{flow}");
    let bob = token("bob", json!({"email": "bob@example.com"}));
    assert_eq!(config_of(bob).await.expect("refused").status(), 403);

    let one = http
        .get(format!("{}/api/v1/chatflows/{id}", gate.base))
        .bearer_auth(team.alice())
        .send()
        .await
        .expect("get");
    assert_eq!(one.status(), 200);

    let (status, answer) = predict(&gate, &team.alice(), &id, json!({"question": "hello"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "Echo: hello");
    let chat_id = answer["chatId"].as_str().expect("chatId");
    assert!(
        chat_id.starts_with("fg-"),
        "the session is bound to the caller: {chat_id}"
    );

    // The ops port reports the served snapshot's age and the decisions taken.
    let metrics = http
        .get(format!("{}/metrics", gate.ops))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let compiled = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flowgate_index_snapshot_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    assert!(
        compiled > 1_700_000_000,
        "snapshot timestamp exported: {compiled}"
    );
    assert!(
        metrics.contains("flowgate_proxy_decisions_total{decision=\"allow\",reason=\"granted\"}"),
        "{metrics}"
    );

    // Continuing the same session keeps its id.
    let (_, again) = predict(
        &gate,
        &team.alice(),
        &id,
        json!({"question": "again", "chatId": chat_id}),
    )
    .await;
    assert_eq!(again["chatId"], chat_id);
    team.cleanup().await;
}

#[tokio::test]
async fn streaming_predictions_pass_through_event_by_event() {
    let team = Team::new("proxy-stream").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(team.alice())
        .json(&json!({"question": "hi", "streaming": true}))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut chunks = 0;
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunks += 1;
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(
        text.contains("\"event\":\"token\"") && text.contains("Echo: hi"),
        "{text}"
    );
    assert!(text.contains("\"event\":\"end\""), "{text}");
    assert!(
        chunks > 1,
        "events arrive as Flowise sends them, not as one buffered body"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn requests_without_a_grant_are_refused_with_json_errors() {
    let team = Team::new("proxy-deny").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let http = reqwest::Client::new();

    let no_token = http
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .json(&json!({"question": "x"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(no_token.status(), 401);
    let body: Value = no_token.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "unauthenticated");

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice-sub", "email": "alice@example.com", "exp": jiff::Timestamp::now().as_second() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more"),
    )
    .expect("sign");
    let (status, body) = predict(&gate, &forged, &id, json!({"question": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );

    let bob = token("bob", json!({"email": "bob@example.com"}));
    let (status, body) = predict(&gate, &bob, &id, json!({"question": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let list: Value = get_json(&format!("{}/api/v1/chatflows", gate.base), &bob).await;
    assert_eq!(list, json!([]), "no implicit access");

    let group_member = token("carol", json!({"groups": [team.group()]}));
    let (status, _) = predict(&gate, &group_member, &id, json!({"question": "x"})).await;
    assert_eq!(status, 200, "access by group claim");

    let (status, body) = predict(
        &gate,
        &team.alice(),
        "00000000-0000-4000-8000-00000000dead",
        json!({"question": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("chatflow_not_found"))
    );

    let (status, body) = predict(&gate, &team.alice(), &id, json!({"nothing": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    for path in [
        "/api/v1/chatmessage/x",
        "/api/v1/apikey",
        "/api/v1/internal-prediction/x",
        "/api/v1/prediction/%2e%2e",
    ] {
        let resp = http
            .post(format!("{}{path}", gate.base))
            .bearer_auth(team.alice())
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 404, "{path}");
    }
    team.cleanup().await;
}

#[tokio::test]
async fn revoked_access_and_suspension_take_effect_from_the_watch() {
    let team = Team::new("proxy-revoke").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let chatflows: Api<Chatflow> = Api::namespaced(team.client.clone(), &team.ns);
    chatflows
        .patch(
            "support-bot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true}})),
        )
        .await
        .expect("suspend");
    let body = eventually_status(&gate, &team.alice(), &id, 403).await;
    assert_eq!(body["error"]["code"], "chatflow_suspended");
    // Asked without credentials, the SDKs' streaming question names only the id: not the
    // Chatflow, its namespace, or that it is suspended.
    let streaming = reqwest::get(format!("{}/api/v1/chatflows-streaming/{id}", gate.base))
        .await
        .expect("answer");
    assert_eq!(streaming.status(), 503);
    let streaming = streaming.text().await.expect("body");
    assert!(
        streaming.contains(&id) && !streaming.contains(&team.ns) && !streaming.contains("suspend"),
        "{streaming}"
    );
    chatflows
        .patch(
            "support-bot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": false}})),
        )
        .await
        .expect("resume");
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let accesses: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    accesses
        .delete("support-team", &DeleteParams::default())
        .await
        .expect("revoke");
    let body = eventually_status(&gate, &team.alice(), &id, 403).await;
    assert_eq!(body["error"]["code"], "forbidden");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&id) && !message.contains(&team.ns),
        "named as asked, without the namespace: {message}"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn another_users_session_cannot_be_continued() {
    let team = Team::new("proxy-session").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let (_, first) = predict(&gate, &team.alice(), &id, json!({"question": "secret"})).await;
    let alices = first["chatId"].as_str().expect("chatId").to_string();
    let mallory = token("mallory", json!({"groups": [team.group()]}));
    let (status, hijack) = predict(
        &gate,
        &mallory,
        &id,
        json!({"question": "what did she say?", "chatId": alices}),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(
        hijack["chatId"].as_str(),
        Some(alices.as_str()),
        "mallory lands in a session of her own"
    );
    let (_, via_override) = predict(
        &gate,
        &mallory,
        &id,
        json!({"question": "x", "overrideConfig": {"sessionId": alices}}),
    )
    .await;
    assert_ne!(via_override["sessionId"].as_str(), Some(alices.as_str()));
    team.cleanup().await;
}

#[tokio::test]
async fn the_python_service_routes_keep_working() {
    let team = Team::new("proxy-compat").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let http = reqwest::Client::new();

    // The Python service passed Flowise's listing through: Flowise's keys, the admin model's
    // beside them.
    let list: Value = get_json(&format!("{}/chatflows", gate.base), &team.alice()).await;
    let one = &list[0];
    assert_eq!(one["id"], id.as_str(), "{list}");
    assert_eq!(one["flowise_id"], id.as_str());
    assert_eq!(one["chatflow"], "support-bot");
    assert_eq!(one["name"], format!("flowgate-test-{}", team.ns));
    assert_eq!(one["status"], "active");
    assert_eq!(
        (&one["isPublic"], &one["is_public"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(one["createdDate"], one["created_at"]);
    assert!(one.get("category").is_some(), "{one}");
    let by_name = http
        .get(format!("{}/chatflows/support-bot", gate.base))
        .bearer_auth(team.alice())
        .send()
        .await
        .expect("get");
    assert_eq!(by_name.status(), 200);
    // A name the caller may not use is not found, as an unknown one: no probing for names.
    let stranger = token("stranger-sub", json!({"email": "stranger@example.test"}));
    for name in ["support-bot", "no-such-bot"] {
        let probed = http
            .get(format!("{}/chatflows/{name}", gate.base))
            .bearer_auth(&stranger)
            .send()
            .await
            .expect("get");
        assert_eq!(probed.status(), 404, "{name}");
    }

    let predict = |body: Value| {
        http.post(format!("{}/chat/predict", gate.base))
            .bearer_auth(team.alice())
            .json(&body)
            .send()
    };
    let answer: Value =
        predict(json!({"chatflow_id": "support-bot", "message": "hello", "sessionId": "s-1"}))
            .await
            .expect("predict")
            .json()
            .await
            .expect("json");
    assert_eq!(answer["result"]["text"], "Echo: hello", "{answer}");
    assert_eq!(answer["chatflow_id"], "support-bot");
    // The session id comes back as it was sent, as the Python service answered it; Flowise's
    // chat is the caller's own.
    assert_eq!(answer["session_id"], "s-1", "{answer}");
    let chat = answer["result"]["chatId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        chat.starts_with("fg-") && chat.ends_with("-s-1"),
        "{answer}"
    );
    // Sent again, it continues that chat; sent by id from the listing, the chatflow is found.
    let again: Value = predict(json!({"chatflow_id": id, "question": "hi", "sessionId": "s-1"}))
        .await
        .expect("predict")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            &again["session_id"],
            &again["result"]["chatId"],
            &again["chatflow_id"]
        ),
        (&json!("s-1"), &json!(chat), &json!(id)),
        "{again}"
    );
    // Without one, a new chat's id, which continues that chat when sent back.
    let fresh: Value = predict(json!({"chatflow_id": "support-bot", "question": "hi"}))
        .await
        .expect("predict")
        .json()
        .await
        .expect("json");
    let new_chat = fresh["session_id"].as_str().unwrap_or_default().to_string();
    assert!(new_chat.starts_with("fg-") && new_chat != chat, "{fresh}");
    assert_eq!(fresh["result"]["chatId"], new_chat.as_str(), "{fresh}");
    // A field of the wrong type is refused, not skipped (a number `sessionId` would start a
    // new chat every time, silently).
    for (field, body) in [
        (
            "sessionId",
            json!({"chatflow_id": "support-bot", "question": "hi", "sessionId": 12345}),
        ),
        (
            "message",
            json!({"chatflow_id": "support-bot", "question": "hi", "message": ["hi"]}),
        ),
        (
            "question",
            json!({"chatflow_id": "support-bot", "question": 7, "message": "hi"}),
        ),
    ] {
        let refused = predict(body).await.expect("answer");
        assert_eq!(refused.status(), 400, "{field}");
        let error: Value = refused.json().await.expect("json");
        assert_eq!(
            error["error"]["message"],
            format!("field '{field}' must be a string"),
            "{error}"
        );
    }

    let missing = http
        .post(format!("{}/chat/authenticate", gate.base))
        .json(&json!({"username": "a", "password": "b"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        missing.status(),
        404,
        "no token endpoint configured → 404 with a clear message"
    );
    let body: Value = missing.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FLOWGATE_TOKEN_ENDPOINT_URL"))
    );
    team.cleanup().await;
}

#[tokio::test]
async fn the_token_routes_forward_password_and_refresh_grants() {
    let idp = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::start_with(Options {
        token_endpoint_url: Some(format!("{}{TOKEN_PATH}", idp.url)),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let post =
        |path: &str, body: Value| http.post(format!("{}{path}", gate.base)).json(&body).send();
    let (user, password) = TOKEN_USER;
    let resp = post(
        "/chat/authenticate",
        json!({"username": user, "password": password}),
    )
    .await
    .expect("answer");
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.expect("json");
    assert_eq!(tokens["access_token"], "at-1", "{tokens}");
    assert_eq!(tokens["refresh_token"], "rt-1", "{tokens}");
    // The provider says `Bearer`; the Python service always said `bearer`.
    assert_eq!(tokens["token_type"], "bearer", "{tokens}");

    let resp = post(
        "/chat/authenticate",
        json!({"username": user, "password": "wrong"}),
    )
    .await
    .expect("answer");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    // As plainly as the Python service: the provider's own reason is not repeated.
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("authentication failed") && !m.contains("wrong")),
        "{body}"
    );

    // The provider does not rotate refresh tokens: the one sent is answered back, as the Python
    // service always answered one.
    let resp = post("/chat/refresh", json!({"refresh_token": "rt-1"}))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.expect("json");
    assert_eq!(
        (
            tokens["access_token"].as_str(),
            tokens["refresh_token"].as_str()
        ),
        (Some("at-2"), Some("rt-1")),
        "{tokens}"
    );
    let resp = post("/chat/refresh", json!({})).await.expect("answer");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        idp.predictions(),
        0,
        "nothing but the token endpoint was called"
    );
}

#[tokio::test]
async fn a_slow_stream_reaches_the_client_event_by_event_in_flowises_order() {
    let team = Team::with_fake_flowise("proxy-slow-stream").await;
    let gap = Duration::from_millis(300);
    let fake = FakeFlowise::start(Mode::Stream { tokens: 0, gap }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(team.alice())
        .json(&json!({"question": "slowly", "streaming": true}))
        .send()
        .await
        .expect("stream starts");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if first_event_at.is_none() && text.contains("\n\n") {
            first_event_at = Some(tokio::time::Instant::now());
        }
    }
    let ended_at = tokio::time::Instant::now();
    let first = first_event_at.expect("at least one event");
    // The upstream sleeps `gap` before each of its six events: a buffering proxy would deliver the
    // first event together with the last one.
    assert!(
        ended_at - first >= gap * 4,
        "first event {:?} before the end",
        ended_at - first
    );
    let events: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["event"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        events,
        [
            "start",
            "token",
            "token",
            "usageMetadata",
            "metadata",
            "end"
        ],
        "Flowise's sequence, unchanged"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_service_account_token_is_granted_as_its_service_account_subject() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;

    let team = Team::new("proxy-sa").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(team.client.clone(), &team.ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "chat-client"}})).expect("literal");
    accounts
        .create(&Default::default(), &account)
        .await
        .expect("service account");
    team.grant(
        "sa-access",
        json!([{"serviceAccount": {"namespace": team.ns, "name": "chat-client"}}]),
    )
    .await;
    let token_for = |audience: &str| {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(600),
                ..Default::default()
            },
            ..Default::default()
        };
        let accounts = accounts.clone();
        async move {
            accounts
                .create_token_request("chat-client", &Default::default(), &request)
                .await
                .expect("TokenRequest")
                .status
                .expect("token")
                .token
        }
    };
    let gate = Flowgate::start_with(Options {
        service_account_audience: Some("flowgate-tests".into()),
        ..Default::default()
    })
    .await;
    let id = team.flowise_id.clone();
    let good = token_for("flowgate-tests").await;
    let body = eventually_status(&gate, &good, &id, 200).await;
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Echo: ")),
        "{body}"
    );
    let wrong_audience = token_for("someone-else").await;
    let (status, body) = predict(&gate, &wrong_audience, &id, json!({"question": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_configured_client_is_presented_at_the_token_endpoint_in_place_of_the_callers() {
    let idp = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    // The password grant through a flowgate presenting `client` (`auth`: basic or post). The
    // caller names a client of its own; flowgate's replaces it (the endpoint refuses a request
    // naming two, or one it does not know).
    let authenticate = async |client: Option<(String, Option<String>)>, auth: &str| {
        let gate = Flowgate::start_with(Options {
            token_endpoint_url: Some(format!("{}{TOKEN_PATH}", idp.url)),
            token_client: client,
            token_client_auth: Some(auth.into()),
            ..Default::default()
        })
        .await;
        let (user, password) = TOKEN_USER;
        let resp = reqwest::Client::new()
            .post(format!("{}/chat/authenticate", gate.base))
            .json(&json!({"username": user, "password": password,
                          "client_id": "someone-else", "client_secret": "guess"}))
            .send()
            .await
            .expect("answer");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or_default())
    };
    let confidential = (TOKEN_CLIENT.0.to_string(), Some(TOKEN_CLIENT.1.to_string()));
    for (client, auth, want) in [
        (confidential.clone(), "basic", TOKEN_CLIENT.0),
        (confidential, "post", TOKEN_CLIENT.0),
        (
            (TOKEN_PUBLIC_CLIENT.to_string(), None),
            "basic",
            TOKEN_PUBLIC_CLIENT,
        ),
    ] {
        let (status, tokens) = authenticate(Some(client), auth).await;
        assert_eq!(status, 200, "{want}: {tokens}");
        assert_eq!(
            tokens["access_token"],
            json!(format!("at-1@{want}")),
            "{tokens}"
        );
    }
    // A secret the endpoint refuses is flowgate's configuration, not the caller's 401.
    let wrong = Some((TOKEN_CLIENT.0.to_string(), Some("wrong".to_string())));
    assert_eq!(authenticate(wrong, "basic").await.0, 502);
    // Without one, the caller's own client goes through, and the endpoint judges it.
    assert_eq!(authenticate(None, "basic").await.0, 401);
}

/// The client secret's file is read again (every 10 s): a rotated Secret needs no restart.
#[tokio::test]
async fn a_rotated_client_secret_is_presented_without_a_restart() {
    let idp = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::start_with(Options {
        token_endpoint_url: Some(format!("{}{TOKEN_PATH}", idp.url)),
        token_client: Some((TOKEN_CLIENT.0.to_string(), Some("the old one".to_string()))),
        token_client_auth: Some("basic".into()),
        ..Default::default()
    })
    .await;
    let authenticate = async || {
        let (user, password) = TOKEN_USER;
        reqwest::Client::new()
            .post(format!("{}/chat/authenticate", gate.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("answer")
            .status()
            .as_u16()
    };
    assert_eq!(authenticate().await, 502, "the old secret is refused");
    let file = gate.dir.path().join("token-client-secret");
    std::fs::write(&file, format!("{}\n", TOKEN_CLIENT.1)).expect("rotate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        match authenticate().await {
            200 => break,
            status => {
                assert_eq!(status, 502);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the rotated secret is not presented after 25 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_token_cache_size_reaches_the_verifier() {
    let scrape = async |gate: &Flowgate| {
        let http = reqwest::Client::new();
        let alice = token("alice", json!({}));
        for _ in 0..2 {
            let listing = get_json(&format!("{}/api/v1/chatflows", gate.base), &alice).await;
            assert!(listing.is_array(), "{listing}");
        }
        http.get(format!("{}/metrics", gate.ops))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let cached = Flowgate::start().await;
    let metrics = scrape(&cached).await;
    assert!(
        metrics.contains("flowgate_token_cache_lookups_total{result=\"hit\"} 1"),
        "the second request was answered from the cache: {metrics}"
    );
    let off = Flowgate::start_with(Options {
        token_cache_size: Some("0".into()),
        ..Default::default()
    })
    .await;
    let metrics = scrape(&off).await;
    assert!(
        !metrics.contains("token_cache_lookups"),
        "no cache, no lookups: {metrics}"
    );
}
