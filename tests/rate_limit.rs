//! `ChatflowAccess.spec.rateLimit` through the real API server: predictions over the rate get
//! 429 with `Retry-After`, reach no Flowise and charge nothing; a grant without a limit is not
//! held back; removing the limit lifts it. Answers say what is left of the allowance
//! (`RateLimit-*`) and of the credits (`X-Credits-Remaining`, and `Retry-After` on a 402).

mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use flowgate::crd::ChatflowAccess;
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, eventually_status, predict, token, used_becomes};
use support::header;
use support::team::Team;

/// Grants `user` the team's `support-bot` at 3 a minute (ChatflowAccess `limited`); the API of
/// the team's ChatflowAccess objects, to change it.
async fn limited_access(team: &Team, user: &str) -> Api<ChatflowAccess> {
    let api: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    let limited: ChatflowAccess = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "limited"},
        "spec": {"chatflows": ["support-bot"], "subjects": [{"user": user}],
                 "rateLimit": {"requests": 3, "per": "Minute"}}
    }))
    .expect("access literal");
    api.create(&PostParams::default(), &limited)
        .await
        .expect("access created");
    api
}

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
    let api = limited_access(&team, &bob_email).await;
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
    // Over the limit, a prediction is refused before its body is read: a body announced at
    // 10 MB that never comes gets the 429 at once, not the 408 of a body that stalled.
    let (mut sender, never_ends) =
        futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    futures::SinkExt::send(&mut sender, Ok(b"{\"question\": \"".to_vec()))
        .await
        .expect("first bytes");
    let announced = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http.post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&bob)
            .header("content-type", "application/json")
            .header("content-length", "10000000")
            .body(reqwest::Body::wrap_stream(never_ends))
            .send(),
    )
    .await
    .expect("answered before the body came")
    .expect("an answer");
    assert_eq!(announced.status().as_u16(), 429);
    drop(sender);

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

#[tokio::test]
async fn replicas_on_postgresql_share_one_allowance() {
    let pg = std::env::var("FLOWGATE_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !pg.is_empty(),
        "FLOWGATE_TEST_POSTGRES_URL is not set: run scripts/test.sh, or `scripts/postgres.sh start && eval \"$(scripts/postgres.sh env)\"`"
    );
    let team = Team::with_fake_flowise("rate-shared").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let bob_email = format!("bob@{}.test", team.ns);
    limited_access(&team, &bob_email).await;
    let replica = || Flowgate::with_flowise_and_ledger(&fake.url, pg.clone());
    let (a, b) = (replica().await, replica().await);
    let id = team.flowise_id.clone();
    let bob = token("bob-sub", json!({"email": bob_email}));
    // Each replica admits bob once it knows the grant; those two spend two of the three.
    eventually_status(&a, &bob, &id, 200).await;
    eventually_status(&b, &bob, &id, 200).await;
    let http = reqwest::Client::new();
    let (status, _, _) = predict_raw(&http, &a, &bob, &id).await;
    assert_eq!(status, 200, "the third of three");
    for gate in [&a, &b] {
        let (status, retry_after, body) = predict_raw(&http, gate, &bob, &id).await;
        assert_eq!(status, 429, "{body}");
        assert!(
            retry_after.is_some_and(|s| (1..=20).contains(&s)),
            "{retry_after:?}"
        );
    }
    team.cleanup().await;
}

/// A replica cut off from PostgreSQL counts on its own, from where the shared allowance stood:
/// a caller who spent it all is not given a fresh one by the outage.
#[tokio::test]
async fn a_replica_cut_off_from_postgresql_goes_on_from_the_shared_allowance() {
    let (relay, relayed) = support::gated_postgres().await;
    let team = Team::with_fake_flowise("rate-cut-off").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let bob_email = format!("bob@{}.test", team.ns);
    limited_access(&team, &bob_email).await;
    let gate = Flowgate::with_flowise_and_ledger(&fake.url, relayed).await;
    let id = team.flowise_id.clone();
    let bob = token("bob-sub", json!({"email": bob_email}));
    eventually_status(&gate, &bob, &id, 200).await;
    let http = reqwest::Client::new();
    for want in [200, 200, 429] {
        let (status, _, body) = predict_raw(&http, &gate, &bob, &id).await;
        assert_eq!(status, want, "{body}");
    }
    relay.close();
    let (status, retry_after, body) = predict_raw(&http, &gate, &bob, &id).await;
    assert_eq!(status, 429, "the outage gave back no allowance: {body}");
    assert!(
        retry_after.is_some_and(|s| (1..=20).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(fake.predictions(), 3);
    team.cleanup().await;
}

/// A header's value as a number.
fn number(resp: &reqwest::Response, name: &str) -> Option<u64> {
    header(resp.headers(), name).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn answers_tell_the_caller_its_allowance_and_balance() {
    // Through the real Flowise: a rate-limited caller sees what is left of its allowance on
    // every answer, refusals included; every charged caller sees its balance; both refusals say
    // when to come back.
    let team = Team::new("rate-headers").await;
    team.policy(
        "daily",
        json!({"chatflows": ["support-bot"], "budget": {"credits": 3, "period": "Daily"}}),
    )
    .await;
    let bob_email = format!("bob@{}.test", team.ns);
    team.grant("limited", json!([{"user": bob_email}])).await;
    let api: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    // Per hour: one request refills every 12 min, so the counts below hold however slow the run.
    let limit = json!({"spec": {"rateLimit": {"requests": 5, "per": "Hour"}}});
    api.patch("limited", &PatchParams::default(), &Patch::Merge(&limit))
        .await
        .expect("limit set");
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let bob = token("bob-sub", json!({"email": bob_email}));
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/prediction/{id}", gate.base);
    let ask = |bearer: &str, body: Value| http.post(&url).bearer_auth(bearer).json(&body).send();

    // The first allowed prediction (flowgate started after the patch: every grant it sees has
    // the limit) spends one request of five and one credit of three. The allowance refills one
    // request every 720 s (3600 s / 5): exactly 720 s away for a fresh one.
    let first = loop {
        let resp = ask(&bob, json!({"question": "hi"}))
            .await
            .expect("flowgate answers");
        if resp.status() == 200 {
            break resp;
        }
        assert_eq!(
            resp.status(),
            403,
            "refused only until the index has the grant"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(number(&first, "x-credits-remaining"), Some(2));
    assert_eq!(
        header(first.headers(), "ratelimit-limit"),
        Some("5, 5;w=3600")
    );
    assert_eq!(number(&first, "ratelimit-remaining"), Some(4));
    assert_eq!(number(&first, "ratelimit-reset"), Some(720));
    let within_an_interval = |resp: &reqwest::Response| {
        let reset = number(resp, "ratelimit-reset");
        assert!(reset.is_some_and(|s| (1..=720).contains(&s)), "{reset:?}");
    };

    // A stream: the balance after its flat cost, in the headers before the first event.
    let stream = ask(&bob, json!({"question": "hi", "streaming": true}))
        .await
        .expect("stream starts");
    assert_eq!(stream.status(), 200);
    assert!(
        header(stream.headers(), "content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
    );
    // Flowise's own, passed on: an nginx in front streams it unbuffered (docs/install.md).
    assert_eq!(header(stream.headers(), "x-accel-buffering"), Some("no"));
    assert_eq!(number(&stream, "ratelimit-remaining"), Some(3));
    within_an_interval(&stream);
    assert_eq!(number(&stream, "x-credits-remaining"), Some(1));
    assert!(
        stream
            .text()
            .await
            .expect("stream read")
            .contains("Echo: hi")
    );

    let last = ask(&bob, json!({"question": "hi"})).await.expect("answer");
    assert_eq!(last.status(), 200);
    assert_eq!(number(&last, "x-credits-remaining"), Some(0));
    assert_eq!(number(&last, "ratelimit-remaining"), Some(2));

    // Out of credits: 402 with nothing left and `Retry-After` at the budget's reset. The
    // request still spent one of the allowance, and says so.
    let broke = ask(&bob, json!({"question": "hi"})).await.expect("answer");
    assert_eq!(broke.status(), 402);
    assert_eq!(number(&broke, "x-credits-remaining"), Some(0));
    assert_eq!(number(&broke, "ratelimit-remaining"), Some(1));
    within_an_interval(&broke);
    let retry_after = number(&broke, "retry-after").expect("Retry-After on 402");
    let body: Value = broke.json().await.expect("json");
    let reset: jiff::Timestamp = body["error"]["resetAt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("resetAt: {body}"));
    let until = reset.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (until - 5..=until + 5).contains(&i64::try_from(retry_after).unwrap_or(i64::MAX)),
        "Retry-After {retry_after} s, reset in {until} s"
    );
    let broke = ask(&bob, json!({"question": "hi"})).await.expect("answer");
    assert_eq!(broke.status(), 402);
    assert_eq!(number(&broke, "ratelimit-remaining"), Some(0));

    // Over the rate: nothing left, and `RateLimit-Reset` is the `Retry-After`.
    let refused = ask(&bob, json!({"question": "hi"})).await.expect("answer");
    assert_eq!(refused.status(), 429);
    assert_eq!(number(&refused, "ratelimit-remaining"), Some(0));
    within_an_interval(&refused);
    assert_eq!(
        number(&refused, "ratelimit-reset"),
        number(&refused, "retry-after")
    );
    assert_eq!(
        header(refused.headers(), "x-credits-remaining"),
        None,
        "nothing charged"
    );

    // Alice's grant has no limit: no RateLimit headers; the compat route's balance is in its
    // body and its headers alike. She spends her own 3 (the policy is per subject).
    for left in (0..3).rev() {
        let resp = http
            .post(format!("{}/chat/predict", gate.base))
            .bearer_auth(team.alice())
            .json(&json!({"chatflow_id": "support-bot", "question": "hi"}))
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(resp.headers(), "ratelimit-limit"), None);
        assert_eq!(number(&resp, "x-credits-remaining"), Some(left));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["credits_remaining"], json!(left), "{body}");
    }
    team.cleanup().await;
}
