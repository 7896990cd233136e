//! The bound on bodies held in memory (`FLOWGATE_BODY_MEMORY`), end to end: a body that could
//! never fit is 413, one that does not fit beside the bodies held now is 503 `overloaded` with
//! `Retry-After`, neither is charged or sent to Flowise, and every byte counted is let go again —
//! also a stalled upload's once its client leaves.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, credits_used, predict, used_becomes};
use support::team::Team;

const GAUGE: &str = "flowgate_body_buffer_bytes";

/// A prediction whose question makes the JSON body about `size` bytes.
fn of_size(size: usize) -> serde_json::Value {
    json!({"question": "x".repeat(size)})
}

#[tokio::test]
async fn bodies_past_the_memory_budget_are_refused_and_cost_nothing() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let team = Team::with_fake_flowise("body-memory").await;
        team.policy(
            "flat",
            json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"},
                   "cost": {"perPrediction": 1}}),
        )
        .await;
        let policy = format!("{}/flat", team.ns);
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(fake.url.clone()),
            body_memory: Some("1Mi".into()),
            ..Options::default()
        })
        .await;
        let alice = team.alice();
        support::eventually(15, "the policy indexed", || async {
            credits_used(&gate.base, &alice, &policy).await
        })
        .await;
        let id = team.flowise_id.clone();
        assert_eq!(
            support::metric(&gate.ops, "flowgate_body_buffer_limit_bytes").await,
            Some(1048576.0)
        );

        // Twice 600 KiB is more than the whole 1 MiB: never fits.
        let (status, body) = predict(&gate, &alice, &id, of_size(600 << 10)).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");

        // An upload that declared 400 KiB and stalls holds 800 KiB of the budget...
        let mut stalled = tokio::net::TcpStream::connect(gate.base.trim_start_matches("http://"))
            .await
            .expect("connect");
        let head = format!(
            "POST /api/v1/prediction/{id} HTTP/1.1\r\nHost: flowgate\r\n\
             Authorization: Bearer {alice}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{{\"question\": \"",
            400 << 10
        );
        stalled.write_all(head.as_bytes()).await.expect("send");
        support::eventually(10, "the stalled upload counted", || async {
            (support::metric(&gate.ops, GAUGE).await == Some(f64::from(800 << 10))).then_some(())
        })
        .await;
        // ...so 2 × 200 KiB more does not fit now: 503, to be retried.
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .json(&of_size(200 << 10))
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: serde_json::Value = resp.json().await.expect("JSON error");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        // A small question still fits beside it.
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.predictions(), 1, "refused bodies never reach Flowise");
        assert_eq!(credits_used(&gate.base, &alice, &policy).await, Some(1));

        // The upload's client leaves: its bytes are let go, and the larger body fits.
        drop(stalled);
        support::eventually(10, "the stalled upload let go", || async {
            (support::metric(&gate.ops, GAUGE).await == Some(0.0)).then_some(())
        })
        .await;
        let (status, body) = predict(&gate, &alice, &id, of_size(200 << 10)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.predictions(), 2);
        used_becomes(&gate, &alice, &policy, 2).await;
        // Every hold ended: the refused, the answered and the abandoned.
        assert_eq!(support::metric(&gate.ops, GAUGE).await, Some(0.0));
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
