//! `ChatflowAccess.spec.rateLimit` through the real API server: predictions over the rate get
//! 429 with `Retry-After`, reach no Flowise and charge nothing; a grant without a limit is not
//! held back; removing the limit lifts it.

mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use flowgate::crd::ChatflowAccess;
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, eventually_status, predict, token, used_becomes};
use support::team::Team;

/// POSTs a prediction; returns the status, `Retry-After`, and the JSON body.
async fn predict_raw(
    http: &reqwest::Client,
    gate: &Flowgate,
    bearer: &str,
    id: &str,
) -> (u16, Option<u64>, Value) {
    let resp = http
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .json(&json!({"question": "hi"}))
        .send()
        .await
        .expect("flowgate answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn predictions_over_the_rate_are_refused_with_429_and_charge_nothing() {
    let team = Team::with_fake_flowise("rate-limit").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    team.policy(
        "daily",
        json!({"chatflows": ["support-bot"], "budget": {"credits": 1000, "period": "Daily"}}),
    )
    .await;
    let policy = format!("{}/daily", team.ns);
    let bob_email = format!("bob@{}.test", team.ns);
    let api: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    let limited: ChatflowAccess = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "limited"},
        "spec": {"chatflows": ["support-bot"], "subjects": [{"user": bob_email}],
                 "rateLimit": {"requests": 3, "per": "Minute"}}
    }))
    .expect("access literal");
    api.create(&PostParams::default(), &limited)
        .await
        .expect("access created");
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    let bob = token("bob-sub", json!({"email": bob_email}));

    // The first allowed prediction spends one of the three (refusals before it were 403s).
    eventually_status(&gate, &bob, &id, 200).await;
    let forwarded = fake.predictions();
    let http = reqwest::Client::new();
    let burst = (0..5).map(|_| predict_raw(&http, &gate, &bob, &id));
    let answers = futures::future::join_all(burst).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    for (status, retry_after, body) in answers.iter().filter(|a| a.0 == 429) {
        assert_eq!(body["error"]["code"], "rate_limited", "{status} {body}");
        assert_eq!(body["error"]["access"], format!("{}/limited", team.ns));
        // One request every 20 s (60 s / 3): the next is at most 20 s away.
        assert!(
            retry_after.is_some_and(|s| (1..=20).contains(&s)),
            "{retry_after:?}"
        );
        assert_eq!(body["error"]["retryAfter"], json!(retry_after));
    }
    assert_eq!(
        fake.predictions(),
        forwarded + 2,
        "refused ones reach no Flowise"
    );

    // The Python-compatible route spends the same allowance.
    let compat = http
        .post(format!("{}/chat/predict", gate.base))
        .bearer_auth(&bob)
        .json(&json!({"chatflow_id": "support-bot", "question": "hi"}))
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(compat.status().as_u16(), 429);

    // The team's grant has no limit: alice is not held back.
    for _ in 0..8 {
        let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "hi"})).await;
        assert_eq!(status, 200);
    }
    // Only admitted predictions were charged: bob's three.
    used_becomes(&gate, &bob, &policy, 3).await;

    // Removing the limit (a GitOps change) lifts it.
    let lift = json!({"spec": {"rateLimit": null}});
    api.patch("limited", &PatchParams::default(), &Patch::Merge(&lift))
        .await
        .expect("limit removed");
    eventually_status(&gate, &bob, &id, 200).await;
    for _ in 0..5 {
        let (status, _) = predict(&gate, &bob, &id, json!({"question": "hi"})).await;
        assert_eq!(status, 200);
    }
    team.cleanup().await;
}
