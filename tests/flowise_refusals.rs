//! Flowise refusing a prediction, nothing charged: its connections refused (502), flowgate's
//! credentials refused (502 naming the key to check, not the caller's 401), its own rate limit
//! (its 429 and `Retry-After` passed on). The other faults between flowgate and Flowise are in
//! `tests/faults.rs`.

mod support;

use std::time::Duration;

use serde_json::json;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, indexed, predict, used_becomes};
use support::team::Team;

#[tokio::test]
async fn flowise_refusing_connections_is_a_502_and_every_charge_is_refunded() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-refused").await;
        // A port nothing listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let gate = Flowgate::with_flowise(&url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let id = team.flowise_id.clone();
        for streaming in [false, true, false, true, false] {
            let (status, body) = predict(
                &gate,
                &alice,
                &id,
                json!({"question": "hello?", "streaming": streaming}),
            )
            .await;
            assert_eq!(status, 502, "{body}");
            assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
        }
        used_becomes(&gate, &alice, &policy, 0).await;
        // Counted once, as Flowise's failure: the grant was the access decision.
        let count = |series: &'static str| support::metric(&gate.ops, series);
        assert_eq!(
            count(r#"flowgate_upstream_errors_total{reason="upstream_unreachable"}"#).await,
            Some(5.0)
        );
        assert_eq!(
            count(r#"flowgate_proxy_decisions_total{decision="allow",reason="granted"}"#).await,
            Some(5.0)
        );
        assert_eq!(
            count(
                r#"flowgate_proxy_decisions_total{decision="deny",reason="upstream_unreachable"}"#
            )
            .await,
            None,
            "not an access decision"
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn flowise_refusing_flowgates_credentials_is_a_502_not_the_callers_401() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-flowise-401").await;
        let alice = team.alice();
        // As a route refuses a missing key (401), and as Flowise 3 refuses a prediction on a
        // chatflow bound to another key (500 "…buildChatflow - Unauthorized").
        for (mode, streaming) in [
            (Mode::Unauthorized, false),
            (Mode::Unauthorized, true),
            (Mode::KeyBound, false),
        ] {
            let refusing = FakeFlowise::start(mode).await;
            let gate = Flowgate::with_flowise(&refusing.url).await;
            indexed(&gate, &alice, &policy).await;
            let (status, body) = predict(
                &gate,
                &alice,
                &team.flowise_id,
                json!({"question": "hello?", "streaming": streaming}),
            )
            .await;
            assert_eq!(status, 502, "{body}");
            assert_eq!(body["error"]["code"], "upstream_error", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("apiKeySecretRef")),
                "{mode:?}: {body}"
            );
            used_becomes(&gate, &alice, &policy, 0).await;
        }
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// Flowise's own per-chatflow rate limit (a 429) is the caller's to back off from: its status
/// and `Retry-After` reach the client on both prediction routes, and nothing is charged.
#[tokio::test]
async fn flowise_limiting_its_rate_is_a_429_with_its_retry_after_and_refunded() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-flowise-429").await;
        let limiting = FakeFlowise::start(Mode::RateLimited).await;
        let gate = Flowgate::with_flowise(&limiting.url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let http = reqwest::Client::new();
        for (path, body) in [
            (
                format!("/api/v1/prediction/{}", team.flowise_id),
                json!({"question": "hello?"}),
            ),
            (
                "/chat/predict".to_string(),
                json!({"chatflow_id": team.flowise_id, "question": "hello?"}),
            ),
        ] {
            let resp = http
                .post(format!("{}{path}", gate.base))
                .bearer_auth(&alice)
                .json(&body)
                .send()
                .await
                .expect("answer");
            assert_eq!(resp.status(), 429, "{path}");
            assert_eq!(
                resp.headers().get("retry-after").map(|v| v.as_bytes()),
                Some(&b"7"[..]),
                "{path}"
            );
            let text = resp.text().await.expect("body");
            if path == "/chat/predict" {
                let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(answer["error"]["code"], "upstream_refused", "{answer}");
            } else {
                assert!(text.contains("Too many requests"), "Flowise's own: {text}");
            }
        }
        used_becomes(&gate, &alice, &policy, 0).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
