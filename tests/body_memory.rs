//! The bound on bodies held in memory (`FLOWGATE_BODY_MEMORY`), end to end:
//!
//! - a JSON prediction may be as large as an upload (50 MiB; images come as base64 in it);
//! - a body that could never fit is 413, one that does not fit beside the bodies held now is 503
//!   `overloaded` with `Retry-After`; neither is charged or sent to Flowise;
//! - a declared length holds nothing; what arrives holds twice its size, and a stalled upload
//!   lets go once its client leaves;
//! - one caller's bodies hold at most half the budget (429 past it), so others keep the rest;
//! - a question stops counting once Flowise has read it, not when Flowise answers;
//! - an answer its client does not read counts whole, in the budget and its caller's share, and
//!   keeps new bodies out, until it is written;
//! - a whole answer larger than flowgate holds is a 502 `answer_too_large`, charged: Flowise ran
//!   it;
//! - a prediction is decided again once its body has come: a grant revoked while it came holds.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, credits_used, predict, used_becomes};
use support::team::Team;

const GAUGE: &str = "flowgate_body_buffer_bytes";

/// A prediction whose question makes the JSON body about `size` bytes.
fn of_size(size: usize) -> serde_json::Value {
    json!({"question": "x".repeat(size)})
}

async fn held(gate: &Flowgate) -> f64 {
    support::metric(&gate.ops, GAUGE).await.unwrap_or(-1.0)
}

/// A connection to `gate` that has sent the head of a prediction declaring `length` bytes.
async fn declaring(gate: &Flowgate, bearer: &str, id: &str, length: usize) -> TcpStream {
    declaring_to(gate, bearer, &format!("/api/v1/prediction/{id}"), length).await
}

/// A connection to `gate` that has sent the head of a POST to `path` declaring `length` bytes.
async fn declaring_to(gate: &Flowgate, bearer: &str, path: &str, length: usize) -> TcpStream {
    with_head(gate, bearer, path, length, "").await
}

/// A connection to `gate` that has sent the head of a POST to `path` declaring `length` bytes,
/// with `extra` header lines (each ending in CRLF).
async fn with_head(
    gate: &Flowgate,
    bearer: &str,
    path: &str,
    length: usize,
    extra: &str,
) -> TcpStream {
    let mut conn = TcpStream::connect(gate.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: flowgate\r\n\
         Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("send");
    conn
}

/// The answer to a POST to `path` whose head declares `length` bytes and whose body never comes:
/// answered within 20 s (not a 408 in 30 s), it did not wait for the body. Only the head is
/// sent, so the refusal never races a body still being written.
async fn answered_without_body(gate: &Flowgate, bearer: &str, path: &str, length: usize) -> String {
    let mut conn = declaring_to(gate, bearer, path, length).await;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    answer
}

/// The status and JSON of an answer refused before the body was read (it closes the connection).
async fn refused_up_front(gate: &Flowgate, bearer: &str, id: &str, length: usize) -> (u16, String) {
    let path = format!("/api/v1/prediction/{id}");
    let answer = answered_without_body(gate, bearer, &path, length).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, answer)
}

/// The body of the one HTTP/1.1 answer on `conn` (it has a Content-Length).
async fn read_answer(conn: &mut TcpStream) -> Vec<u8> {
    let mut read = Vec::new();
    let mut buf = vec![0; 1 << 20];
    let (start, length) = loop {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "the answer ended early");
        read.extend_from_slice(&buf[..n]);
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("a Content-Length");
            break (end + 4, length);
        }
    };
    while read.len() < start + length {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "the answer ended early");
        read.extend_from_slice(&buf[..n]);
    }
    read[start..start + length].to_vec()
}

/// A team whose chatflow answers through `fake`, and flowgate with `memory` for bodies.
async fn gate_with(prefix: &str, fake: &FakeFlowise, memory: &str) -> (Team, Flowgate, String) {
    let team = Team::with_fake_flowise(prefix).await;
    team.policy(
        "flat",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"},
               "cost": {"perPrediction": 1}}),
    )
    .await;
    let gate = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        body_memory: Some(memory.into()),
        ..Options::default()
    })
    .await;
    let policy = format!("{}/flat", team.ns);
    let alice = team.alice();
    support::eventually(15, "the policy indexed", || async {
        credits_used(&gate.base, &alice, &policy).await
    })
    .await;
    (team, gate, policy)
}

#[tokio::test]
async fn bodies_past_the_memory_budget_are_refused_and_cost_nothing() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let (team, gate, policy) = gate_with("body-memory", &fake, "1Mi").await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        assert_eq!(
            support::metric(&gate.ops, "flowgate_body_buffer_limit_bytes").await,
            Some(1048576.0)
        );

        // Twice 300 KiB is more than a caller's half of the 1 MiB: it could never fit, and the
        // answer names the largest body that could (a quarter of the budget).
        let (status, answer) = refused_up_front(&gate, &alice, &id, 300 << 10).await;
        assert_eq!(status, 413, "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
        assert!(answer.contains("larger than 262144 bytes"), "{answer}");
        // 200 KiB of `0,` parse into ~100,000 values: too many to hold, though the text fits.
        let values = format!(r#"{{"question": "hi", "h": [{}0]}}"#, "0,".repeat(100_000));
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(values)
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(resp.status(), 413);
        let body: serde_json::Value = resp.json().await.expect("JSON error");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("values")),
            "{body}"
        );

        // An upload that declared 250 KiB and stalls after 200 KiB holds twice what it sent:
        // what it only declared holds nothing.
        let stall = |bearer: String| {
            let (gate, id) = (&gate, &id);
            async move {
                let mut conn = declaring(gate, &bearer, id, 250 << 10).await;
                conn.write_all(&vec![b' '; 200 << 10]).await.expect("send");
                conn
            }
        };
        let alice_stalled = stall(alice.clone()).await;
        support::eventually(10, "the stalled upload counted", || async {
            (held(&gate).await == f64::from(400 << 10)).then_some(())
        })
        .await;
        // Alice's next 100 KiB would take her past her half of the budget: 429, hers alone.
        let (status, answer) = refused_up_front(&gate, &alice, &id, 100 << 10).await;
        assert_eq!(status, 429, "{answer}");
        assert!(answer.contains("body_memory_share"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        // Bob stalls the same way: together they hold 800 KiB.
        let bob_stalled = stall(team.member("bob")).await;
        support::eventually(10, "both stalled uploads counted", || async {
            (held(&gate).await == f64::from(800 << 10)).then_some(())
        })
        .await;
        // So Carol's 2 × 150 KiB, well within her own half, does not fit now: 503, to retry.
        let (status, answer) = refused_up_front(&gate, &team.member("carol"), &id, 150 << 10).await;
        assert_eq!(status, 503, "{answer}");
        assert!(answer.contains("overloaded"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        // A small question still fits beside it.
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.predictions(), 1, "refused bodies never reach Flowise");
        assert_eq!(credits_used(&gate.base, &alice, &policy).await, Some(1));

        // The uploads' clients leave: their bytes are let go, and the larger body fits.
        drop((alice_stalled, bob_stalled));
        support::eventually(10, "the stalled uploads let go", || async {
            (held(&gate).await == 0.0).then_some(())
        })
        .await;
        let (status, body) = predict(&gate, &alice, &id, of_size(200 << 10)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.predictions(), 2);
        used_becomes(&gate, &alice, &policy, 2).await;
        // Every hold ended: the refused, the answered and the abandoned.
        assert_eq!(held(&gate).await, 0.0);
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_caller_no_grant_names_is_refused_before_its_compat_body_is_read() {
    // `/chat/predict` names its chatflow in the body, so the body is read before the chatflow
    // is authorized; a caller with no grant at all is refused first, and holds nothing.
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let (team, gate, _) = gate_with("body-no-grants", &fake, "8Mi").await;
    let stranger = support::gate::token("stranger", json!({"email": "nobody@example.com"}));
    let answer = answered_without_body(&gate, &stranger, "/chat/predict", 1 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("no ChatflowAccess grants this caller any chatflow"),
        "{answer}"
    );
    assert_eq!(held(&gate).await, 0.0);
    // A member of the team's group is named by a grant: read, authorized, answered.
    let member = team.member("carol");
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/predict", gate.base))
        .bearer_auth(&member)
        .json(&json!({"chatflow_id": "support-bot", "question": "hi"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.predictions(), 1, "only the member's reached Flowise");
    resp.bytes().await.expect("the answer");
    // Flowise's answer and the consolidated one let go once written.
    support::eventually(10, "the compat answer let go", || async {
        (held(&gate).await == 0.0).then_some(())
    })
    .await;
    team.cleanup().await;
}

/// The admin API reads a body only for a caller allowed the route, at most 1 MiB, counted in
/// the body memory as the caller's.
#[tokio::test]
async fn admin_bodies_are_read_only_for_callers_allowed_the_route_and_count_in_the_memory() {
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let (team, gate, _) = gate_with("body-admin", &fake, "8Mi").await;
    let id = team.flowise_id.clone();
    // Alice may predict, and administers nothing: refused on the head alone.
    let alice = team.alice();
    for path in [
        "/api/admin/chatflows/add-users".to_string(),
        "/api/admin/chatflows/add-users-by-email".to_string(),
        format!("/api/admin/chatflows/{id}/users/bulk"),
        format!("/api/admin/chatflows/{id}/users/email/bulk"),
        "/api/admin/credits/adjustments".to_string(),
    ] {
        let answer = answered_without_body(&gate, &alice, &path, 512 << 10).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
    }
    assert_eq!(held(&gate).await, 0.0);

    // A global admin's bodies: 100,000 small values parse to more than its share of the 8 MiB;
    // a body past 1 MiB is not read on.
    let admin = support::admin::root();
    let many = json!({"chatflow_id": id, "user_ids": vec![0; 100_000]});
    let long = json!({"chatflow_id": id, "user_ids": ["x".repeat(2 << 20)]});
    for (body, what) in [(many, "100,000 values"), (long, "2 MiB")] {
        let (status, out) = support::admin::call(
            &gate,
            reqwest::Method::POST,
            "/api/admin/chatflows/add-users",
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(status, 413, "{what}: {out}");
        assert_eq!(out["error"]["code"], "payload_too_large", "{what}: {out}");
    }
    assert_eq!(held(&gate).await, 0.0, "nothing held once answered");
    team.cleanup().await;
}

#[tokio::test]
async fn a_question_stops_counting_once_flowise_has_read_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let fake = FakeFlowise::start(Mode::Slow {
            delay: Duration::from_secs(3),
        })
        .await;
        let (team, gate, _) = gate_with("body-memory-run", &fake, "16Mi").await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        let base = gate.base.clone();
        let asking = tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/api/v1/prediction/{id}"))
                .bearer_auth(&alice)
                .json(&of_size(3 << 20))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        // Flowise has the whole question and runs for 3 s: nothing of it is held any more.
        support::eventually(10, "Flowise read the question", || async {
            (!fake.bodies.lock().expect("bodies").is_empty()).then_some(())
        })
        .await;
        support::eventually(2, "the question let go", || async {
            (held(&gate).await == 0.0).then_some(())
        })
        .await;
        assert!(!asking.is_finished(), "Flowise is still running it");
        let status = asking.await.expect("joined").expect("flowgate answers");
        assert_eq!(status, 200);
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// A connection that asked `question` bytes' prediction and reads nothing back (64 KiB socket
/// receive buffer).
async fn unread(gate: &Flowgate, bearer: &str, id: &str, question: usize) -> TcpStream {
    let body = serde_json::to_vec(&of_size(question)).expect("JSON");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
    let addr = gate
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut conn = socket.connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/prediction/{id} HTTP/1.1\r\nHost: flowgate\r\n\
         Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("send");
    conn.write_all(&body).await.expect("send");
    conn
}

#[tokio::test]
async fn unread_answers_count_whole_until_they_are_written() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // Echoes the question twice: a 7 MiB question is a 14 MiB answer, far more than the
        // connection takes unread (hyper's ~400 KiB, flowgate's socket buffer of at most
        // 4 MiB here, and the reader's 64 KiB).
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let (team, gate, _) = gate_with("body-memory-answer", &fake, "32Mi").await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        let question: usize = 7 << 20;
        let mut readers = Vec::new();
        for (n, bearer) in [(1, alice.clone()), (2, team.member("bob"))] {
            readers.push(unread(&gate, &bearer, &id, question).await);
            // Flowise has read the question (so its hold ended) and the answer is held unread.
            support::eventually(20, "the unread answer counted", || async {
                let read = fake.bodies.lock().expect("bodies").len();
                (read == n && held(&gate).await > (2 * n * question) as f64).then_some(())
            })
            .await;
        }
        // Counted whole while unread, in the budget and in each reader's share: Alice's next
        // 3 MiB question (6 MiB counted) would pass her half (429); Carol's fits in hers but not
        // beside the two answers (503).
        let whole = held(&gate).await;
        let (status, answer) = refused_up_front(&gate, &alice, &id, 3 << 20).await;
        assert_eq!(status, 429, "{answer}");
        let (status, answer) = refused_up_front(&gate, &team.member("carol"), &id, 3 << 20).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(held(&gate).await, whole);
        // Read, they are let go, and the question fits.
        for mut reader in readers {
            let answer = read_answer(&mut reader).await;
            assert!(answer.len() > 2 * question, "{} bytes", answer.len());
        }
        support::eventually(10, "the answers let go", || async {
            (held(&gate).await == 0.0).then_some(())
        })
        .await;
        let (status, body) = predict(&gate, &alice, &id, of_size(3 << 20)).await;
        assert_eq!(status, 200, "{body}");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn an_answer_larger_than_flowgate_holds_is_refused_and_charged() {
    let (team, policy) = Team::with_flat_policy("body-huge-answer").await;
    let fake = FakeFlowise::start(Mode::Huge {
        bytes: flowgate::proxy::MAX_ANSWER + 1,
    })
    .await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let alice = team.alice();
    support::gate::indexed(&gate, &alice, &policy).await;
    let (status, body) = predict(&gate, &alice, &team.flowise_id, json!({"question": "all"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "answer_too_large", "{body}");
    // The flat cost, as for an answer: Flowise ran it (a refund would make it free).
    used_becomes(&gate, &alice, &policy, 1).await;
    assert_eq!(
        fake.aborts.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing to abort"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_json_prediction_may_be_as_large_as_an_upload() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // Flowise's chat window sends images in the JSON, as base64 data URLs: two photos of
        // 5 MB make about 13.4 MB.
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let (team, gate, policy) = gate_with("body-large", &fake, "256Mi").await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        let photo = format!("data:image/png;base64,{}", "A".repeat(7 << 20));
        let upload =
            |name: &str| json!({"data": photo, "type": "file", "name": name, "mime": "image/png"});
        let (status, body) = predict(
            &gate,
            &alice,
            &id,
            json!({"question": "what is in these?", "uploads": [upload("a.png"), upload("b.png")]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.predictions(), 1);
        // Past the upload limit (50 MiB), refused before it is read, and not charged.
        let (status, answer) = refused_up_front(&gate, &alice, &id, (50 << 20) + 1).await;
        assert_eq!(status, 413, "{answer}");
        used_becomes(&gate, &alice, &policy, 1).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// A connection that has sent the head of a POST of `length` bytes to `path` with `Expect:
/// 100-continue`, and read flowgate's `100 Continue`: flowgate has decided on the head and begun
/// reading the body.
async fn continued(gate: &Flowgate, bearer: &str, path: &str, length: usize) -> TcpStream {
    let expect = "Expect: 100-continue\r\n";
    let mut conn = with_head(gate, bearer, path, length, expect).await;
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.expect("an interim answer");
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn
}

#[tokio::test]
async fn a_grant_revoked_while_the_body_comes_holds_for_the_prediction() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let (team, gate, _) = gate_with("body-revoked", &fake, "16Mi").await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        let direct = serde_json::to_vec(&json!({"question": "hello"})).expect("JSON");
        let named = serde_json::to_vec(&json!({"chatflow_id": "support-bot", "question": "hello"}))
            .expect("JSON");
        // Both allowed on their heads, and half their bodies sent...
        let path = format!("/api/v1/prediction/{id}");
        let mut by_id = continued(&gate, &alice, &path, direct.len()).await;
        let mut by_name = continued(&gate, &alice, "/chat/predict", named.len()).await;
        by_id.write_all(&direct[..8]).await.expect("send");
        by_name.write_all(&named[..8]).await.expect("send");
        // ...when the grant is deleted, and flowgate has seen it.
        let api: kube::Api<flowgate::crd::ChatflowAccess> =
            kube::Api::namespaced(team.client.clone(), &team.ns);
        api.delete("support-team", &kube::api::DeleteParams::default())
            .await
            .expect("grant deleted");
        support::gate::eventually_status(&gate, &alice, &id, 403).await;
        // (Those of its polls that came before the deletion reached Flowise.)
        let reached = fake.predictions();
        // By name, a chatflow the caller may not see is not found.
        let refusals = [
            (&mut by_id, &direct, "forbidden"),
            (&mut by_name, &named, "chatflow_not_found"),
        ];
        for (conn, body, code) in refusals {
            conn.write_all(&body[8..]).await.expect("send");
            let answer: serde_json::Value =
                serde_json::from_slice(&read_answer(conn).await).expect("a JSON answer");
            assert_eq!(answer["error"]["code"], code, "{answer}");
        }
        assert_eq!(fake.predictions(), reached, "neither reached Flowise");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_token_that_expires_while_the_body_comes_is_refused() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let (team, gate, _) = gate_with("body-expired", &fake, "16Mi").await;
        let id = team.flowise_id.clone();
        // Valid for 3 s more (exp 27 s ago, 30 s of leeway).
        let exp = jiff::Timestamp::now().as_second() - 27;
        let short = support::gate::token("alice-sub", json!({"email": team.user(), "exp": exp}));
        let body = serde_json::to_vec(&json!({"question": "hello"})).expect("JSON");
        let path = format!("/api/v1/prediction/{id}");
        let mut conn = continued(&gate, &short, &path, body.len()).await;
        conn.write_all(&body[..8]).await.expect("send");
        tokio::time::sleep(Duration::from_secs(4)).await;
        conn.write_all(&body[8..]).await.expect("send");
        let answer: serde_json::Value =
            serde_json::from_slice(&read_answer(&mut conn).await).expect("a JSON answer");
        assert_eq!(answer["error"]["code"], "invalid_token", "{answer}");
        assert_eq!(fake.predictions(), 0, "nothing reached Flowise");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}
