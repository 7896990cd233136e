//! Faults between flowgate and Flowise, nothing lost: Flowise slower than the upstream timeout,
//! dropping the connection mid-stream or going silent, and a client hanging up mid-stream
//! (Flowise refusing a prediction outright is `tests/flowise_refusals.rs`). Each answer is a clear error (a stream cut ends with an error event) and every
//! charge ends refunded or settled as designed. The ledger's own faults are in
//! `tests/ledger_faults.rs`.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, give_up_in_flowise, indexed, predict, token, used_becomes};
use support::team::Team;

#[tokio::test]
async fn flowise_slower_than_the_upstream_timeout_is_a_504_refunded_and_aborted() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-slow").await;
        let slow = FakeFlowise::start(Mode::Slow {
            delay: Duration::from_secs(10),
        })
        .await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(slow.url.clone()),
            upstream_timeout: Some("1s".into()),
            ..Default::default()
        })
        .await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let id = team.flowise_id.clone();
        // One chat: the 504 waits for the abort, so the retry finds the chat free (not 409).
        for streaming in [false, true] {
            let started = tokio::time::Instant::now();
            let (status, body) = predict(
                &gate,
                &alice,
                &id,
                json!({"question": "anyone there?", "streaming": streaming, "chatId": "retry"}),
            )
            .await;
            assert_eq!(status, 504, "streaming {streaming}: {body}");
            assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "answered at the timeout, not when Flowise finally did"
            );
        }
        assert_eq!(slow.predictions(), 2, "both requests reached Flowise");
        used_becomes(&gate, &alice, &policy, 0).await;
        // Refunded, so Flowise is asked to stop the work (the abort is sent in the background).
        while slow.aborts.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Headers in time, the JSON answer not: the same.
        let slow_body = FakeFlowise::start(Mode::SlowBody {
            delay: Duration::from_secs(10),
        })
        .await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(slow_body.url.clone()),
            upstream_timeout: Some("1s".into()),
            ..Default::default()
        })
        .await;
        indexed(&gate, &alice, &policy).await;
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "half there?"})).await;
        assert_eq!(status, 504, "{body}");
        assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
        used_becomes(&gate, &alice, &policy, 0).await;
        support::eventually(10, "Flowise's abort endpoint called", || async {
            (slow_body.aborts.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        let timeouts = support::metric(
            &gate.ops,
            "flowgate_upstream_errors_total{reason=\"upstream_timeout\"}",
        )
        .await;
        assert_eq!(timeouts, Some(1.0), "counted as a Flowise timeout");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// A Flowise that starts an SSE answer and closes the connection in the middle of it. With
/// `answered`, a token event goes out before the cut.
async fn cutting_flowise(answered: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the request head and body (Content-Length).
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let mut events = vec![r#"{"event":"start","data":""}"#];
                if answered {
                    events.push(r#"{"event":"token","data":"Half an ans"}"#);
                }
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     transfer-encoding: chunked\r\n\r\n",
                );
                for event in events {
                    let data = format!("message:\ndata:{event}\n\n");
                    out.push_str(&format!("{:x}\r\n{data}\r\n", data.len()));
                }
                let _ = stream.write_all(out.as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped without the last chunk: the body is cut.
            });
        }
    });
    url
}

#[tokio::test]
async fn flowise_cutting_a_stream_refunds_unanswered_and_settles_answered_predictions() {
    tokio::time::timeout(Duration::from_secs(60), async {
        for (answered, want) in [(false, 0), (true, 3)] {
            let (team, policy) = Team::with_flat_policy("faults-cut").await;
            let gate = Flowgate::with_flowise(&cutting_flowise(answered).await).await;
            let alice = team.alice();
            indexed(&gate, &alice, &policy).await;
            for _ in 0..3 {
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
                // The cut reaches the client as Flowise's own failures do: an error event, and
                // never the end of a whole answer.
                let text = resp.text().await.expect("the stream ends with its error");
                assert!(
                    text.contains(r#"data:{"event":"error","data":"flowgate: the stream from Flowise broke off"#)
                        && !text.contains("[DONE]"),
                    "{text}"
                );
            }
            // Nothing answered: refunded; a partial answer was delivered: settled at 1 each.
            used_becomes(&gate, &alice, &policy, want).await;
            team.cleanup().await;
        }
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_stream_flowise_stops_sending_is_cut_at_the_upstream_timeout_refunded_and_aborted() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-stall").await;
        // The headers at once, then nothing for longer than the whole test.
        let stalled = FakeFlowise::start(Mode::Stream {
            tokens: 0,
            gap: Duration::from_secs(120),
        })
        .await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(stalled.url.clone()),
            upstream_timeout: Some("1s".into()),
            ..Default::default()
        })
        .await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let started = tokio::time::Instant::now();
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/api/v1/prediction/{}",
                gate.base, team.flowise_id
            ))
            .bearer_auth(&alice)
            .json(&json!({"question": "still there?", "streaming": true, "chatId": "stalled"}))
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(resp.status(), 200, "the stream started");
        // Cut with an error event saying why, never the end of a whole answer.
        let text = resp.text().await.expect("the stream ends with its error");
        assert!(
            text.contains(r#""event":"error","data":"flowgate: Flowise sent no event for 1s"#)
                && !text.contains("[DONE]"),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cut at the timeout, not when Flowise would have gone on"
        );
        // The end waited for the abort: the chat is free for a prompt retry, not 409.
        assert_eq!(
            stalled.aborts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "Flowise was asked to stop the run before the stream ended"
        );
        let (status, body) = predict(
            &gate,
            &alice,
            &team.flowise_id,
            json!({"question": "again?", "chatId": "stalled", "streaming": true}),
        )
        .await;
        assert_ne!(status, 409, "the chat was free: {body}");
        used_becomes(&gate, &alice, &policy, 0).await;
        // After the 200's head, yet a failure in Flowise all the same.
        let stalls = support::metric(
            &gate.ops,
            r#"flowgate_upstream_errors_total{reason="stream_failed"}"#,
        )
        .await;
        assert_eq!(stalls, Some(2.0), "both counted as Flowise's failure");
        assert_eq!(stalled.predictions(), 2, "both reached Flowise");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_aborts_in_flowise_and_is_charged() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-hangup").await;
        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 0,
            gap: Duration::from_millis(400),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        for i in 1..=3 {
            // Read the first event, then hang up.
            hang_up_after(&gate, &alice, &team.flowise_id, "start").await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while fake.aborts.load(std::sync::atomic::Ordering::SeqCst) < i {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Flowise's abort endpoint called after hang-up {i}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        used_becomes(&gate, &alice, &policy, 3).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// The CreditPolicy `tokens` of `team`: 100 credits, 1 a prediction and 1 a token; its id.
async fn one_credit_a_token(team: &Team) -> String {
    team.policy(
        "tokens",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"},
               "cost": {"perPrediction": 1, "perThousandTokens": 1000}}),
    )
    .await;
    format!("{}/tokens", team.ns)
}

/// Streams a prediction, reads until an event of `kind` arrived, then hangs up.
async fn hang_up_after(gate: &Flowgate, bearer: &str, flowise_id: &str, kind: &str) {
    hang_up_in(gate, bearer, flowise_id, None, kind).await;
}

/// [`hang_up_after`] in chat `chat` (a new one when `None`).
async fn hang_up_in(
    gate: &Flowgate,
    bearer: &str,
    flowise_id: &str,
    chat: Option<&str>,
    kind: &str,
) {
    let mut question = json!({"question": "a long one", "streaming": true});
    if let Some(chat) = chat {
        question["chatId"] = json!(chat);
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{flowise_id}", gate.base))
        .bearer_auth(bearer)
        .json(&question)
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut read = String::new();
    let wanted = format!("\"event\":\"{kind}\"");
    while !read.contains(&wanted) {
        let chunk = body.next().await.expect("more events").expect("chunk");
        read.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!read.contains("[DONE]"), "hung up before the end: {read}");
}

/// The caller's usage rows on `policy`, oldest first: (outcome, credits, tokens).
async fn usage_rows(gate: &Flowgate, bearer: &str, policy: &str) -> Vec<(String, i64, u64)> {
    let rows: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/credits/usage?policy={policy}", gate.base))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("usage answers")
        .json()
        .await
        .expect("usage rows");
    let mut rows: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap_or_default().to_string(),
                r["credits"].as_i64().unwrap_or_default(),
                r["tokens"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.reverse();
    rows
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_is_charged_the_tokens_of_the_whole_run_when_tokens_are_priced()
 {
    tokio::time::timeout(Duration::from_secs(60), async {
        let team = Team::with_fake_flowise("faults-hangup-tokens").await;
        // The run's 10 tokens, reported after the client left, cost 10.
        let policy = one_credit_a_token(&team).await;
        let alice = team.alice();
        let aborts = |fake: &FakeFlowise| fake.aborts.load(std::sync::atomic::Ordering::SeqCst);

        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 10,
            gap: Duration::from_millis(300),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        indexed(&gate, &alice, &policy).await;
        // Gone before the first token: the client had nothing of the answer; aborted, flat cost.
        hang_up_after(&gate, &alice, &team.flowise_id, "start").await;
        support::eventually(10, "Flowise's abort endpoint called", || async {
            (aborts(&fake) == 1).then_some(())
        })
        .await;
        used_becomes(&gate, &alice, &policy, 1).await;
        // Gone after a token: read to its end without the client, charged 1 + 10, not aborted.
        hang_up_after(&gate, &alice, &team.flowise_id, "token").await;
        used_becomes(&gate, &alice, &policy, 12).await;
        assert_eq!(
            usage_rows(&gate, &alice, &policy).await.last(),
            Some(&("settled".to_string(), 11, 10)),
            "settled at 1 + 10 tokens"
        );
        assert_eq!(aborts(&fake), 1, "the second run was not aborted");
        for (outcome, count) in [("aborted", 1.0), ("read_to_end", 1.0)] {
            let series = format!("flowgate_stream_hangups_total{{outcome=\"{outcome}\"}}");
            assert_eq!(
                support::metric(&gate.ops, &series).await,
                Some(count),
                "{series}"
            );
        }

        // Still streaming FLOWGATE_UPSTREAM_TIMEOUT after the hang-up: aborted, charged what
        // Flowise reported by then (the flat cost). Each gap (2 s) is well inside the timeout
        // (3 s; a longer one would cut the stream as stalled); the report comes two gaps (4 s)
        // after the hang-up, well past it.
        let slow = FakeFlowise::start(Mode::Stream {
            tokens: 10,
            gap: Duration::from_secs(2),
        })
        .await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(slow.url.clone()),
            upstream_timeout: Some("3s".into()),
            ..Default::default()
        })
        .await;
        indexed(&gate, &alice, &policy).await;
        hang_up_after(&gate, &alice, &team.flowise_id, "token").await;
        // A gate of its own, with a ledger of its own.
        support::eventually(10, "the abandoned stream settled", || async {
            let rows = usage_rows(&gate, &alice, &policy).await;
            rows.iter()
                .any(|(outcome, _, _)| outcome == "settled")
                .then_some(rows)
        })
        .await;
        used_becomes(&gate, &alice, &policy, 1).await;
        support::eventually(10, "Flowise's abort endpoint called", || async {
            (aborts(&slow) == 1).then_some(())
        })
        .await;
        assert_eq!(
            support::metric(
                &gate.ops,
                "flowgate_stream_hangups_total{outcome=\"stopped\"}"
            )
            .await,
            Some(1.0)
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// `PUT /api/v1/chatmessage/abort/{id}/{chat}` as `bearer`: the status and the JSON answer.
async fn stop(gate: &Flowgate, bearer: &str, id: &str, chat: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/chatmessage/abort/{id}/{chat}",
            gate.base
        ))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("flowgate answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn stop_generating_aborts_only_the_callers_own_run_and_charges_what_it_streamed() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let team = Team::with_fake_flowise("faults-stop").await;
        // A run read to its end costs 1 + 10.
        let policy = one_credit_a_token(&team).await;
        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 10,
            // Room for the stops below between the first token and the second.
            gap: Duration::from_secs(1),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let (alice, bob) = (team.alice(), team.member("bob"));
        let id = team.flowise_id.clone();
        indexed(&gate, &alice, &policy).await;
        let aborts = || fake.abort_paths.lock().expect("abort paths").clone();

        let mut answer = long_question(&gate, &alice, &id, "c1").await.bytes_stream();
        let mut read = String::new();
        while !read.contains("\"event\":\"token\"") {
            let chunk = answer.next().await.expect("more events").expect("chunk");
            read.push_str(&String::from_utf8_lossy(&chunk));
        }
        let run = fake.last_body()["chatId"]
            .as_str()
            .expect("the chat id Flowise got")
            .to_string();

        // Bob names Alice's chat as she named it and as Flowise knows it: each lands in a chat
        // of his own. A caller no grant names is refused, and nothing reaches Flowise.
        for chat in ["c1", run.as_str()] {
            assert_eq!(stop(&gate, &bob, &id, chat).await.0, 200);
        }
        let stranger = token("stranger-sub", json!({"email": "stranger@nowhere.test"}));
        assert_eq!(stop(&gate, &stranger, &id, "c1").await.0, 403);
        let unknown = "00000000-0000-4000-8000-000000000000";
        assert_eq!(stop(&gate, &alice, unknown, "c1").await.0, 404);
        assert_eq!(aborts().len(), 2);
        assert!(
            aborts()
                .iter()
                .all(|p| p.rsplit('/').next() != Some(run.as_str())),
            "{:?}",
            aborts()
        );

        let (status, body) = stop(&gate, &alice, &id, "c1").await;
        assert_eq!(
            (status, &body["message"]),
            (200, &json!("Chat message aborted"))
        );
        assert_eq!(
            aborts().last(),
            Some(&format!("/api/v1/chatmessage/abort/{id}/{run}"))
        );
        while let Some(chunk) = answer.next().await {
            read.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
        assert!(read.contains("\"TERMINATED\""), "{read}");
        assert!(
            !read.contains("usageMetadata"),
            "stopped before the report: {read}"
        );
        // Flowise reported no tokens before it stopped: the text streamed ("Echo: ", 6 bytes)
        // counts at 4 bytes a token, 1 + 2, not the whole run's 1 + 10.
        used_becomes(&gate, &alice, &policy, 3).await;

        // Stopped before its first token (Flowise ends it with an error): the flat cost, as a
        // stop after it, not a refund.
        let mut answer = long_question(&gate, &alice, &id, "c2").await.bytes_stream();
        let mut read = String::new();
        while !read.contains("\"event\":\"start\"") {
            let chunk = answer.next().await.expect("more events").expect("chunk");
            read.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert_eq!(stop(&gate, &alice, &id, "c2").await.0, 200);
        while let Some(chunk) = answer.next().await {
            read.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
        assert!(
            read.contains("\"TERMINATED\"") && !read.contains("\"event\":\"token\""),
            "{read}"
        );
        used_becomes(&gate, &alice, &policy, 4).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// A streamed question in chat `chat`, read to its end.
async fn ask(gate: &Flowgate, bearer: &str, id: &str, chat: &str) -> (u16, serde_json::Value) {
    predict(
        gate,
        bearer,
        id,
        json!({"question": "hi", "chatId": chat, "streaming": true}),
    )
    .await
}

/// A streamed question in chat `chat`, answered 200 and left to stream.
async fn long_question(gate: &Flowgate, bearer: &str, id: &str, chat: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .json(&json!({"question": "a long one", "chatId": chat, "streaming": true}))
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn a_chat_takes_one_prediction_at_a_time() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-chat-turns").await;
        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 0,
            gap: Duration::from_millis(500),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let alice = team.alice();
        // Granted through the team's group.
        let bob = team.member("bob");
        indexed(&gate, &alice, &policy).await;
        let id = team.flowise_id.clone();
        // Alice's first question in chat c1 streams for ~3 s; her second one in c1 meanwhile
        // is refused before anything is charged or sent to Flowise.
        let first = long_question(&gate, &alice, &id, "c1").await;
        let (status, body) = ask(&gate, &alice, &id, "c1").await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "chat_busy", "{body}");
        assert_eq!(
            fake.predictions(),
            1,
            "the busy chat's question never reached Flowise"
        );
        // Another chat of hers, and Bob's own c1 (bound to him), are free.
        assert_eq!(ask(&gate, &alice, &id, "c2").await.0, 200);
        assert_eq!(ask(&gate, &bob, &id, "c1").await.0, 200);
        // Once the first answer ended, c1 takes the next question.
        let text = first.text().await.expect("the first answer");
        assert!(text.contains("[DONE]"), "{text}");
        assert_eq!(ask(&gate, &alice, &id, "c1").await.0, 200);
        // A run aborted (its client left before the first token) keeps the chat until Flowise
        // answered the abort, then a moment; then the chat is free again.
        fake.abort_delay_ms
            .store(3000, std::sync::atomic::Ordering::SeqCst);
        hang_up_in(&gate, &alice, &id, Some("c3"), "start").await;
        support::eventually(10, "Flowise's abort endpoint called", || async {
            (fake.aborts.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        let (status, body) = ask(&gate, &alice, &id, "c3").await;
        assert_eq!(status, 409, "busy while the abort is unanswered: {body}");
        support::eventually(10, "chat c3 free again", || async {
            (ask(&gate, &alice, &id, "c3").await.0 == 200).then_some(())
        })
        .await;
        used_becomes(&gate, &alice, &policy, 5).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn replicas_on_postgresql_share_a_chats_turn() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pg = support::postgres_url();
        // Replicas share turns while some policy prices tokens: this one does.
        let team = Team::with_fake_flowise("faults-shared-turns").await;
        let policy = one_credit_a_token(&team).await;
        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 0,
            gap: Duration::from_millis(500),
        })
        .await;
        let replica = || Flowgate::with_flowise_and_ledger(&fake.url, pg.clone());
        let (a, b) = (replica().await, replica().await);
        let alice = team.alice();
        indexed(&a, &alice, &policy).await;
        indexed(&b, &alice, &policy).await;
        let id = team.flowise_id.clone();
        // Alice's question in chat c1 streams from replica a for ~3 s; her second one in c1,
        // sent to replica b, is refused before anything is charged or sent to Flowise.
        let first = long_question(&a, &alice, &id, "c1").await;
        let (status, body) = ask(&b, &alice, &id, "c1").await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "chat_busy", "{body}");
        assert_eq!(
            fake.predictions(),
            1,
            "the busy chat's question never reached Flowise"
        );
        assert_eq!(
            ask(&b, &alice, &id, "c2").await.0,
            200,
            "another chat is free"
        );
        let text = first.text().await.expect("the first answer");
        assert!(text.contains("[DONE]"), "{text}");
        // The turn ends on replica a; replica b sees it end soon after.
        support::eventually(10, "chat c1 free on replica b", || async {
            (ask(&b, &alice, &id, "c1").await.0 == 200).then_some(())
        })
        .await;
        used_becomes(&a, &alice, &policy, 3).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_client_hanging_up_before_the_answer_aborts_in_flowise_and_is_charged() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (team, policy) = Team::with_flat_policy("faults-hangup-json").await;
        let fake = FakeFlowise::start(Mode::Slow {
            delay: Duration::from_secs(3),
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        for i in 1..=2 {
            // Once Flowise has the prediction, the client gives up (its connection is dropped).
            give_up_in_flowise(&gate, &alice, &team.flowise_id, &fake, i, Duration::ZERO).await;
            support::eventually(10, "Flowise's abort endpoint called", || async {
                (fake.aborts.load(std::sync::atomic::Ordering::SeqCst) >= i).then_some(())
            })
            .await;
        }
        // Charged the flat cost at once, as a hang-up mid-stream is; not left to the sweep.
        used_becomes(&gate, &alice, &policy, 2).await;
        // Never answered, yet counted: as 499, the client's hang-up.
        support::eventually(10, "both hang-ups counted as 499", || async {
            let series = r#"flowgate_proxy_requests_total{route="prediction",status="499"}"#;
            (support::metric(&gate.ops, series).await == Some(2.0)).then_some(())
        })
        .await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
