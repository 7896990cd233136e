//! The bound on bodies held in memory (`FLOWGATE_BODY_MEMORY`), end to end: a body that could
//! never fit is 413, one that does not fit beside the bodies held now is 503 `overloaded` with
//! `Retry-After`, neither is charged or sent to Flowise, and every byte counted is let go again —
//! also a stalled upload's once its client leaves. An answer its client does not read counts
//! until it does, and keeps new bodies out meanwhile.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

        // An upload that declared 450 KiB and stalls after 400 KiB holds twice what it sent: what
        // it only declared holds nothing.
        let mut stalled = tokio::net::TcpStream::connect(gate.base.trim_start_matches("http://"))
            .await
            .expect("connect");
        let head = format!(
            "POST /api/v1/prediction/{id} HTTP/1.1\r\nHost: flowgate\r\n\
             Authorization: Bearer {alice}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            450 << 10
        );
        stalled.write_all(head.as_bytes()).await.expect("send");
        stalled
            .write_all(&vec![b' '; 400 << 10])
            .await
            .expect("send");
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

/// The body of the one HTTP/1.1 answer on `conn` (it has a Content-Length).
async fn read_answer(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut read = Vec::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let text = String::from_utf8_lossy(&read);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .expect("a Content-Length")
                .parse()
                .expect("a number");
            if read.len() >= end + 4 + length {
                return read[end + 4..end + 4 + length].to_vec();
            }
        }
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "the answer ended early");
        read.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_unread_answer_counts_until_its_client_reads_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let team = Team::with_fake_flowise("body-memory-answer").await;
        // Echoes the question twice: a 7 MiB question is a 14 MiB answer, more than the
        // connection's buffers (hyper's ~400 KiB, a loopback socket's few MiB) take unread.
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(fake.url.clone()),
            body_memory: Some("16Mi".into()),
            ..Options::default()
        })
        .await;
        let alice = team.alice();
        let id = team.flowise_id.clone();
        support::eventually(15, "the chatflow indexed", || async {
            (predict(&gate, &alice, &id, json!({"question": "hi"}))
                .await
                .0
                == 200)
                .then_some(())
        })
        .await;
        let question: usize = 7 << 20;
        let body = serde_json::to_vec(&of_size(question)).expect("JSON");
        let mut reader = tokio::net::TcpStream::connect(gate.base.trim_start_matches("http://"))
            .await
            .expect("connect");
        let head = format!(
            "POST /api/v1/prediction/{id} HTTP/1.1\r\nHost: flowgate\r\n\
             Authorization: Bearer {alice}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        reader.write_all(head.as_bytes()).await.expect("send");
        reader.write_all(&body).await.expect("send");
        // Flowise has read the question (so its hold ended) and the answer is held unread.
        let held = support::eventually(20, "the unread answer counted", || async {
            let bodies = fake.bodies.lock().expect("bodies").len();
            let held = support::metric(&gate.ops, GAUGE).await.unwrap_or(0.0);
            (bodies == 2 && held > (2 * question) as f64).then_some(held)
        })
        .await;
        // Counted whole while unread: a 1.5 MiB question (3 MiB counted) does not fit beside it.
        let (status, body) = predict(&gate, &alice, &id, of_size(3 << 19)).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert_eq!(support::metric(&gate.ops, GAUGE).await, Some(held));
        // Read, it is let go, and the question fits.
        let answer = read_answer(&mut reader).await;
        assert!(answer.len() > 2 * question, "{} bytes", answer.len());
        support::eventually(10, "the answer let go", || async {
            (support::metric(&gate.ops, GAUGE).await == Some(0.0)).then_some(())
        })
        .await;
        let (status, body) = predict(&gate, &alice, &id, of_size(3 << 19)).await;
        assert_eq!(status, 200, "{body}");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
