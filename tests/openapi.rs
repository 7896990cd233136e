//! `GET /openapi.json`: the document validates (openapi-spec-validator) and real answers of
//! every kind of route match its schemas (jsonschema), checked by scripts/openapi-check.sh
//! (tests/fixtures/openapi_check.py in a cached venv).

mod support;

use reqwest::Method as M;
use serde_json::{Value, json};

use support::admin::{Probe, call, encode, root};
use support::gate::{Flowgate, eventually_status};
use support::team::Team;

#[tokio::test]
async fn the_openapi_document_validates_and_describes_real_answers() {
    let team = Team::new("admin-openapi").await;
    team.policy(
        "daily",
        json!({"chatflows": ["*"], "budget": {"credits": 1000, "period": "Daily"}}),
    )
    .await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let admin = root();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let (status, doc) = call(&gate, M::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/chatflows",
        "/api/v1/chatflows/{id}",
        "/api/v1/chatflows-streaming/{id}",
        "/api/v1/prediction/{id}",
        "/api/v1/chatmessage/abort/{id}/{chatId}",
        "/chatflows",
        "/chatflows/{id}",
        "/chat/predict",
        "/chat/authenticate",
        "/chat/refresh",
        "/credits",
        "/credits/usage",
        "/health",
        "/api/admin/chatflows/sync",
        "/api/admin/chatflows/{chatflow_id}/users/email/{email}",
        "/api/admin/credits/usage",
        "/api/admin/credits/adjustments",
        "/api/admin/credits/balances",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }

    // Real answers, each with the documented path it came from.
    let alice = team.alice();
    let email = format!("olga@{}.test", team.ns);
    let requests: Vec<Probe<'_>> = vec![
        (
            M::GET,
            "/api/v1/chatflows".into(),
            "/api/v1/chatflows".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            format!("/api/v1/chatflows/{id}"),
            "/api/v1/chatflows/{id}".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            format!("/api/v1/chatflows-streaming/{id}"),
            "/api/v1/chatflows-streaming/{id}".into(),
            None,
            None,
        ),
        (
            M::POST,
            format!("/api/v1/prediction/{id}"),
            "/api/v1/prediction/{id}".into(),
            Some(&alice),
            Some(json!({"question": "hi"})),
        ),
        // Forwarded to the real Flowise, which answers whether or not the chat is running.
        (
            M::PUT,
            format!("/api/v1/chatmessage/abort/{id}/c1"),
            "/api/v1/chatmessage/abort/{id}/{chatId}".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            "/chatflows".into(),
            "/chatflows".into(),
            Some(&alice),
            None,
        ),
        (M::GET, "/health".into(), "/health".into(), None, None),
        (
            M::GET,
            "/chatflows/support-bot".into(),
            "/chatflows/{id}".into(),
            Some(&alice),
            None,
        ),
        (
            M::POST,
            "/chat/predict".into(),
            "/chat/predict".into(),
            Some(&alice),
            Some(json!({"chatflow_id": id, "question": "hi"})),
        ),
        (
            M::POST,
            "/chat/authenticate".into(),
            "/chat/authenticate".into(),
            None,
            Some(json!({"username": "u", "password": "p"})),
        ),
        (
            M::GET,
            "/credits".into(),
            "/credits".into(),
            Some(&alice),
            None,
        ),
        (M::GET, "/credits".into(), "/credits".into(), None, None),
        (
            M::GET,
            "/credits/usage?limit=5".into(),
            "/credits/usage".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            "/credits/usage?since=never".into(),
            "/credits/usage".into(),
            Some(&alice),
            None,
        ),
        (
            M::POST,
            "/api/admin/chatflows/add-users".into(),
            "/api/admin/chatflows/add-users".into(),
            Some(&admin),
            Some(json!({"user_ids": ["pat", ""], "chatflow_id": id})),
        ),
        (
            M::POST,
            "/api/admin/chatflows/add-users-by-email".into(),
            "/api/admin/chatflows/add-users-by-email".into(),
            Some(&admin),
            Some(json!({"emails": [email, "bad"], "chatflow_id": id})),
        ),
        (
            M::POST,
            "/api/admin/chatflows/add-users".into(),
            "/api/admin/chatflows/add-users".into(),
            Some(&admin),
            Some(json!({})),
        ),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/quinn"),
            "/api/admin/chatflows/{chatflow_id}/users/{user_id}".into(),
            Some(&admin),
            None,
        ),
        (
            M::DELETE,
            format!("/api/admin/chatflows/{id}/users/quinn"),
            "/api/admin/chatflows/{chatflow_id}/users/{user_id}".into(),
            Some(&admin),
            None,
        ),
        (
            M::DELETE,
            format!("/api/admin/chatflows/{id}/users/nobody"),
            "/api/admin/chatflows/{chatflow_id}/users/{user_id}".into(),
            Some(&admin),
            None,
        ),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/email/{}", encode(&email)),
            "/api/admin/chatflows/{chatflow_id}/users/email/{email}".into(),
            Some(&admin),
            None,
        ),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/bulk"),
            "/api/admin/chatflows/{flowise_id}/users/bulk".into(),
            Some(&admin),
            Some(json!({"user_ids": ["ron"]})),
        ),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/email/bulk"),
            "/api/admin/chatflows/{flowise_id}/users/email/bulk".into(),
            Some(&admin),
            Some(json!({"emails": ["sam@example.test"]})),
        ),
        (
            M::GET,
            "/api/admin/chatflows".into(),
            "/api/admin/chatflows".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/chatflows".into(),
            "/api/admin/chatflows".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            "/api/admin/chatflows/stats".into(),
            "/api/admin/chatflows/stats".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/credits/usage?limit=5".into(),
            "/api/admin/credits/usage".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/credits/usage?limit=0".into(),
            "/api/admin/credits/usage".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/credits/usage".into(),
            "/api/admin/credits/usage".into(),
            Some(&alice),
            None,
        ),
        (
            M::GET,
            format!("/api/admin/chatflows/{id}"),
            "/api/admin/chatflows/{flowise_id}".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            format!("/api/admin/chatflows/{id}/users"),
            "/api/admin/chatflows/{flowise_id}/users".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/chatflows/00000000-0000-4000-8000-00000000f00d".into(),
            "/api/admin/chatflows/{flowise_id}".into(),
            Some(&admin),
            None,
        ),
        (
            M::POST,
            "/api/admin/credits/adjustments".into(),
            "/api/admin/credits/adjustments".into(),
            Some(&admin),
            Some(
                json!({"policy": format!("{}/daily", team.ns), "subject": "user:alice-sub",
                        "credits": 5, "reason": "openapi"}),
            ),
        ),
        (
            M::POST,
            "/api/admin/credits/adjustments".into(),
            "/api/admin/credits/adjustments".into(),
            Some(&admin),
            Some(json!({"policy": format!("{}/daily", team.ns), "credits": 5})),
        ),
        (
            M::POST,
            "/api/admin/credits/adjustments".into(),
            "/api/admin/credits/adjustments".into(),
            Some(&alice),
            Some(json!({"policy": format!("{}/daily", team.ns), "credits": 5})),
        ),
        (
            M::GET,
            format!("/api/admin/credits/balances?policy={}/daily", team.ns),
            "/api/admin/credits/balances".into(),
            Some(&admin),
            None,
        ),
        (
            M::GET,
            "/api/admin/credits/balances".into(),
            "/api/admin/credits/balances".into(),
            Some(&admin),
            None,
        ),
        (
            M::PUT,
            "/api/admin/chatflows/sync".into(),
            "/api/admin/chatflows/sync".into(),
            Some(&admin),
            None,
        ),
    ];
    let mut answers = Vec::new();
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path, template, bearer, body) in requests {
        let (status, answer) = call(&gate, method.clone(), &path, bearer, body).await;
        statuses.insert(status);
        let method = if status == 405 {
            "post".to_string()
        } else {
            method.as_str().to_lowercase()
        };
        answers.push(json!({"method": method, "path": template, "status": status, "body": answer}));
    }
    assert!(
        answers
            .iter()
            .any(|a| a["path"] == "/api/admin/credits/adjustments"
                && a["status"] == 200
                && a["body"]["subject"] == "user:alice-sub"),
        "an adjustment's answer is checked: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|a| a["path"] == "/api/admin/credits/balances"
                && a["status"] == 200
                && a["body"]["balances"][0]["subject"] == "user:alice-sub"),
        "a balances answer is checked: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|a| a["path"] == "/api/v1/chatmessage/abort/{id}/{chatId}"
                && a["status"] == 200
                && a["body"]["message"] == "Chat message aborted"),
        "Flowise answered the stop: {answers:?}"
    );
    for status in [200, 400, 401, 403, 404, 405] {
        assert!(
            statuses.contains(&status),
            "no answer with status {status} was checked: {statuses:?}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let doc_file = dir.path().join("openapi.json");
    let answers_file = dir.path().join("answers.json");
    std::fs::write(&doc_file, doc.to_string()).expect("write");
    std::fs::write(&answers_file, Value::Array(answers).to_string()).expect("write");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openapi-check.sh");
    let out = std::process::Command::new(script)
        .arg(&doc_file)
        .arg(&answers_file)
        .output()
        .expect("scripts/openapi-check.sh runs (needs python3 with venv; PyPI on first run)");
    assert!(
        out.status.success(),
        "the document or an answer does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    team.cleanup().await;
}
