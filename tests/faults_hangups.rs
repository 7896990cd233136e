//! A client that hangs up once Flowise has failed its prediction is refunded, as one that stayed
//! to the end is: when the client leaves does not decide a refund. (A hang-up before Flowise
//! answered or failed is charged: `tests/faults.rs`.) And a gateway in front of Flowise that
//! gives up on it is refunded and the run aborted, as flowgate's own timeout is.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, give_up_in_flowise, indexed, predict, used_becomes};
use support::team::Team;

/// An ingress between flowgate and Flowise answering 504 (its read timeout) or 502/503 gave up
/// on a run that may still be going: refunded, and Flowise asked to stop it (a 500 is
/// Flowise's own failure, the run over: refunded only). A 504 stays a timeout for the caller.
#[tokio::test]
async fn a_gateway_giving_up_on_flowise_is_refunded_and_the_run_aborted() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-gateway").await;
        let alice = team.alice();
        for (status, code) in [(504, "upstream_timeout"), (502, "upstream_unreachable")] {
            let fake = FakeFlowise::start(Mode::Gateway { status }).await;
            let gate = Flowgate::with_flowise(&fake.url).await;
            indexed(&gate, &alice, &policy).await;
            for streaming in [false, true] {
                // After a 504 the answer waits for the abort, so a retry finds the chat free;
                // after a 502 the chat is held until Flowise confirms in the background.
                let chat = if status == 504 {
                    "gw".to_string()
                } else {
                    format!("gw-{streaming}")
                };
                let (answered, body) = predict(
                    &gate,
                    &alice,
                    &team.flowise_id,
                    json!({"question": "still there?", "streaming": streaming, "chatId": chat}),
                )
                .await;
                assert_eq!(answered, status, "{body}");
                assert_eq!(body["error"]["code"], code, "{body}");
            }
            used_becomes(&gate, &alice, &policy, 0).await;
            support::eventually(10, "Flowise asked to stop both runs", || async {
                (fake.aborts.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
            })
            .await;
        }
        let failing = FakeFlowise::start(Mode::Fail).await;
        let gate = Flowgate::with_flowise(&failing.url).await;
        indexed(&gate, &alice, &policy).await;
        let (answered, body) = predict(
            &gate,
            &alice,
            &team.flowise_id,
            json!({"question": "boom?"}),
        )
        .await;
        assert_eq!(
            (answered, &body["error"]["code"]),
            (502, &json!("upstream_error"))
        );
        used_becomes(&gate, &alice, &policy, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            failing.aborts.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "Flowise's own failure ended the run"
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_client_hanging_up_after_flowises_error_event_is_refunded() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("hangup-error-event").await;
        // The error event at once, Flowise's `end` long after the client left.
        let fake = FakeFlowise::start(Mode::StreamFail {
            end_after: Duration::from_secs(30),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        for _ in 0..2 {
            let resp = reqwest::Client::new()
                .post(format!(
                    "{}/api/v1/prediction/{}",
                    gate.base, team.flowise_id
                ))
                .bearer_auth(&alice)
                .json(&json!({"question": "hi", "streaming": true}))
                .send()
                .await
                .expect("flowgate answers");
            assert_eq!(resp.status(), 200);
            let mut body = resp.bytes_stream();
            let mut read = String::new();
            while !read.contains(r#""event":"error""#) {
                let chunk = body.next().await.expect("more events").expect("chunk");
                read.push_str(&String::from_utf8_lossy(&chunk));
            }
            assert!(!read.contains("[DONE]"), "hung up before the end: {read}");
            // Hung up here, with Flowise's failure in hand.
        }
        assert_eq!(fake.predictions(), 2, "both were charged and forwarded");
        used_becomes(&gate, &alice, &policy, 0).await;
        support::eventually(
            10,
            "both error events counted as Flowise's failures",
            || async {
                let series = r#"flowgate_upstream_errors_total{reason="stream_error_event"}"#;
                (support::metric(&gate.ops, series).await == Some(2.0)).then_some(())
            },
        )
        .await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_client_hanging_up_while_flowise_refuses_its_prediction_is_refunded() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("hangup-refusal").await;
        // A 400's headers at once, its body long after the client left.
        let fake = FakeFlowise::start(Mode::SlowRefusal {
            delay: Duration::from_secs(30),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        for i in 1..=2 {
            // Flowise's 400 headers went out at once; flowgate has them well within a second.
            let after = Duration::from_secs(1);
            give_up_in_flowise(&gate, &alice, &team.flowise_id, &fake, i, after).await;
        }
        used_becomes(&gate, &alice, &policy, 0).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// A client that hangs up while flowgate is still connecting to Flowise never had its request
/// reach Flowise: refunded, as when the connection fails (a Flowise whose accept queue is full:
/// its SYNs are dropped, and the connection is never made).
#[tokio::test]
async fn a_client_hanging_up_before_its_request_reached_flowise_is_refunded() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("hangup-connecting").await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let _listener = socket.listen(0).expect("listen");
        let _queued = std::net::TcpStream::connect(addr).expect("fills the accept queue");
        let gate = Flowgate::with_flowise(&format!("http://{addr}")).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let asking = tokio::spawn({
            let url = format!("{}/api/v1/prediction/{}", gate.base, team.flowise_id);
            let alice = alice.clone();
            async move {
                reqwest::Client::new()
                    .post(url)
                    .bearer_auth(alice)
                    .json(&json!({"question": "hi"}))
                    .send()
                    .await
            }
        });
        let started = tokio::time::Instant::now();
        // The reserve lands within this (a flat cost: final at once), the connection does not.
        used_becomes(&gate, &alice, &policy, 1).await;
        asking.abort();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "hung up while connecting, before the 5 s connect timeout"
        );
        used_becomes(&gate, &alice, &policy, 0).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
