//! Credits end to end: exact budgets under concurrency (one flowgate on SQLite, three flowgate
//! processes sharing PostgreSQL), refunds when Flowise fails, token-based costs, idempotency.

mod support;

/// Streamed and resumed Agentflows: every node charged once, whatever the stream brought.
#[path = "credits/agentflow.rs"]
mod agentflow;

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, SECRET, credits_used, eventually_status, predict, used_becomes};
use support::process::{KillOnDrop, free_port};
use support::team::Team;

async fn credits(gate_base: &str, bearer: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{gate_base}/credits"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("credits answer")
        .json()
        .await
        .expect("credits JSON")
}

fn balance<'a>(credits: &'a Value, policy: &str) -> &'a Value {
    credits["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|x| x["policy"] == policy))
        .unwrap_or_else(|| panic!("no balance for {policy}: {credits}"))
}

/// The CreditPolicy `tokens`: 2 credits per prediction and 10 per 1,000 tokens on support-bot.
fn tokens_policy() -> Value {
    json!({"chatflows": ["support-bot"], "budget": {"credits": 1000, "period": "Daily"},
           "cost": {"perPrediction": 2, "perThousandTokens": 10}})
}

/// A team on a fake Flowise with [`tokens_policy`]; returns it and the policy's id.
async fn token_priced(prefix: &str) -> (Team, String) {
    let team = Team::with_fake_flowise(prefix).await;
    team.policy("tokens", tokens_policy()).await;
    let policy = format!("{}/tokens", team.ns);
    (team, policy)
}

/// A streamed prediction (`streaming: true`) of `id` through `gate`, read to its end.
async fn streamed(gate: &Flowgate, bearer: &str, id: &str) -> String {
    reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .json(&json!({"question": "hi", "streaming": true}))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("stream read")
}

/// Sends `n` predictions at once through `bases` (round robin); returns (200s, 402s, others).
async fn burst(bases: &[String], bearer: &str, id: &str, n: usize) -> (usize, usize, Vec<u16>) {
    let http = reqwest::Client::new();
    let answers = futures::stream::iter(0..n)
        .map(|i| {
            let http = http.clone();
            let url = format!("{}/api/v1/prediction/{id}", bases[i % bases.len()]);
            let bearer = bearer.to_string();
            async move {
                http.post(url)
                    .bearer_auth(bearer)
                    .json(&json!({"question": format!("q{i}")}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(n)
        .collect::<Vec<u16>>()
        .await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    let refused = answers.iter().filter(|s| **s == 402).count();
    let other = answers
        .into_iter()
        .filter(|s| *s != 200 && *s != 402)
        .collect();
    (ok, refused, other)
}

#[tokio::test]
async fn exactly_the_budget_is_admitted_under_concurrency_with_sqlite() {
    let team = Team::new("credits-sqlite").await;
    team.policy(
        "fifty",
        json!({"chatflows": ["*"], "budget": {"credits": 50, "period": "Never"}}),
    )
    .await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let probe = support::gate::token("probe", json!({"email": team.user()}));
    // Wait until the policy is in the index: /credits lists it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while credits(&gate.base, &probe).await["balances"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (ok, refused, other) =
        burst(std::slice::from_ref(&gate.base), &team.alice(), &id, 200).await;
    assert_eq!(
        (ok, refused, other),
        (50, 150, vec![]),
        "exactly the budget is admitted, against the real Flowise"
    );
    let (status, body) = predict(&gate, &team.alice(), &id, json!({"question": "one more"})).await;
    assert_eq!(status, 402);
    assert_eq!(body["error"]["policy"], format!("{}/fifty", team.ns));
    assert_eq!(body["error"]["remaining"], 0);

    let mine = credits(&gate.base, &team.alice()).await;
    assert_eq!(balance(&mine, &format!("{}/fifty", team.ns))["used"], 50);
    let someone_else = credits(&gate.base, &probe).await;
    assert_eq!(
        balance(&someone_else, &format!("{}/fifty", team.ns))["used"],
        0,
        "PerSubject budgets are separate"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_failing_flowise_refunds_and_token_usage_is_charged() {
    let (team, policy) = token_priced("credits-refund").await;
    let failing = FakeFlowise::start(Mode::Fail).await;
    let gate = Flowgate::with_flowise(&failing.url).await;
    let id = team.flowise_id.clone();
    let body = eventually_status(&gate, &team.alice(), &id, 502).await;
    assert_eq!(body["error"]["code"], "upstream_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("boom")),
        "{body}"
    );
    for _ in 0..5 {
        let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "x"})).await;
        assert_eq!(status, 502);
    }
    assert!(failing.predictions() >= 6);
    // Refunds are written off the request path: wait for them to land.
    used_becomes(&gate, &team.alice(), &policy, 0).await;

    let answering = FakeFlowise::start(Mode::Answer { tokens: 1500 }).await;
    let gate = Flowgate::with_flowise(&answering.url).await;
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let streaming = FakeFlowise::start(Mode::Stream {
        tokens: 250,
        gap: Duration::from_millis(5),
    })
    .await;
    let gate2 = Flowgate::with_flowise(&streaming.url).await;
    let text = streamed(&gate2, &team.alice(), &id).await;
    assert!(text.contains("usageMetadata"), "{text}");
    // Each test flowgate has its own SQLite ledger. JSON answer: 2 + ceil(1500 * 10 / 1000) = 17
    // (the readiness probe above was one such prediction); stream: 2 + ceil(250 * 10 / 1000) = 5.
    for (gate, want) in [(&gate, 17), (&gate2, 5)] {
        used_becomes(gate, &team.alice(), &policy, want).await;
    }
    team.cleanup().await;
}

#[tokio::test]
async fn reserved_tokens_bound_what_streams_at_once_can_spend() {
    // One credit a token, 20 tokens held besides the flat cost: each prediction holds 21 of the
    // 40 credits until Flowise reports its 10 tokens (1 + 10 charged). Without the hold, any
    // number of streams at once would each be admitted and then charged past the budget.
    let team = Team::with_fake_flowise("credits-reserve").await;
    team.policy(
        "tokens",
        json!({"chatflows": ["*"], "budget": {"credits": 40, "period": "Never"},
               "cost": {"perPrediction": 1, "perThousandTokens": 1000, "reserveTokens": 20}}),
    )
    .await;
    let policy = format!("{}/tokens", team.ns);
    let fake = FakeFlowise::start(Mode::Stream {
        tokens: 10,
        gap: Duration::from_millis(300),
    })
    .await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let (alice, id) = (team.alice(), team.flowise_id.clone());
    support::gate::indexed(&gate, &alice, &policy).await;
    let ask = |chat: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .json(&json!({"question": "hi", "chatId": chat, "streaming": true}))
            .send()
    };
    let first = ask("c1").await.expect("answer");
    assert_eq!(first.status(), 200);
    assert_eq!(credits_used(&gate.base, &alice, &policy).await, Some(21));
    let second = ask("c2").await.expect("answer");
    assert_eq!(second.status(), 402, "21 held + 21 > 40");
    let text = first.text().await.expect("the first answer");
    assert!(text.contains("usageMetadata"), "{text}");
    // Settled at what it used; the hold is free again.
    used_becomes(&gate, &alice, &policy, 11).await;
    let third = ask("c2").await.expect("answer");
    assert_eq!(third.status(), 200, "11 + 21 <= 40");
    assert!(third.text().await.expect("answer").contains("[DONE]"));
    used_becomes(&gate, &alice, &policy, 22).await;
    team.cleanup().await;
}

#[tokio::test]
async fn a_streaming_request_that_flowise_answers_with_json_is_charged() {
    // Flowise answers a chatflow it cannot stream with JSON even when asked to stream (and the
    // SDKs always ask): that answer was delivered, so it is charged, never refunded.
    let team = Team::with_fake_flowise("credits-json-stream").await;
    // Another id than the team's (two Chatflows naming one Flowise id are both refused).
    let (head, last) = team.flowise_id.split_at(team.flowise_id.len() - 1);
    let flat_id = format!("{head}{}", if last == "0" { "1" } else { "0" });
    team.chatflow("flat-bot", &flat_id).await;
    let api: kube::Api<flowgate::crd::ChatflowAccess> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let grant: flowgate::crd::ChatflowAccess = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "flat"},
        "spec": {"chatflows": ["flat-bot"], "subjects": [{"user": team.user()}]}
    }))
    .expect("access literal");
    api.create(&kube::api::PostParams::default(), &grant)
        .await
        .expect("access created");
    team.policy("tokens", tokens_policy()).await;
    team.policy(
        "flat",
        json!({"chatflows": ["flat-bot"], "budget": {"credits": 1000, "period": "Daily"}}),
    )
    .await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 1000 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let alice = team.alice();
    eventually_status(&gate, &alice, &flat_id, 200).await;
    let http = reqwest::Client::new();
    for (id, streaming) in [
        (&team.flowise_id, json!(true)),
        (&flat_id, json!(true)),
        (&flat_id, json!("true")),
    ] {
        let resp = http
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .json(&json!({"question": "hi", "streaming": streaming}))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(answer["text"], "Echo: hi");
    }
    // The compat route hands such an answer back in its own shape.
    let answer: Value = http
        .post(format!("{}/chat/predict", gate.base))
        .bearer_auth(&alice)
        .json(&json!({"chatflow_id": "flat-bot", "question": "hi", "streaming": true}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["result"]["text"], "Echo: hi", "{answer}");
    // tokens: 2 + 1000 * 10 / 1000, settled. flat: the probe, two streams and the compat call,
    // each final at reserve; a refund of any of them would have landed before the last reserve.
    used_becomes(&gate, &alice, &format!("{}/tokens", team.ns), 12).await;
    let used = credits_used(&gate.base, &alice, &format!("{}/flat", team.ns)).await;
    assert_eq!(used, Some(4));
    // The compat route's `credits_remaining` counts the answer's tokens too: 1000 - 12 - 12.
    let answer: Value = http
        .post(format!("{}/chat/predict", gate.base))
        .bearer_auth(&alice)
        .json(&json!({"chatflow_id": "support-bot", "question": "hi"}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["credits_remaining"], 976, "{answer}");
    team.cleanup().await;
}

/// `flowgate_ledger_operation_duration_seconds_count` of one operation, from the ops listener.
async fn ledger_calls(gate: &Flowgate, operation: &str) -> u64 {
    let series =
        format!("flowgate_ledger_operation_duration_seconds_count{{operation=\"{operation}\"}}");
    support::metric(&gate.ops, &series)
        .await
        .map_or(0, |n| n as u64)
}

#[tokio::test]
async fn a_flat_cost_is_charged_at_reserve_with_no_settle_and_refunded_when_flowise_fails() {
    let team = Team::with_fake_flowise("credits-flat").await;
    let policy = format!("{}/flat", team.ns);
    team.policy(
        "flat",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily"},
               "cost": {"perPrediction": 3}}),
    )
    .await;
    let id = team.flowise_id.clone();

    let failing = FakeFlowise::start(Mode::Fail).await;
    let gate = Flowgate::with_flowise(&failing.url).await;
    eventually_status(&gate, &team.alice(), &id, 502).await;
    for _ in 0..3 {
        let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "x"})).await;
        assert_eq!(status, 502);
    }
    // Refunds are written off the request path: wait for them to land.
    used_becomes(&gate, &team.alice(), &policy, 0).await;
    assert!(ledger_calls(&gate, "refund").await >= 4);

    let answering = FakeFlowise::start(Mode::Answer { tokens: 1500 }).await;
    let gate = Flowgate::with_flowise(&answering.url).await;
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "y"})).await;
    assert_eq!(status, 200);
    // Charged when reserved, before the answer: no wait, and tokens are not priced.
    assert_eq!(
        credits_used(&gate.base, &team.alice(), &policy).await,
        Some(6),
        "3 per prediction, twice"
    );
    assert_eq!(ledger_calls(&gate, "reserve").await, 2);
    assert_eq!(
        ledger_calls(&gate, "settle").await,
        0,
        "nothing settles a final cost"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_is_charged_once() {
    let team = Team::with_fake_flowise("credits-idem").await;
    let policy = format!("{}/ten", team.ns);
    team.policy("ten", json!({"chatflows": ["*"], "budget": {"credits": 10, "period": "Monthly", "timeZone": "Europe/Berlin"}})).await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    let http = reqwest::Client::new();
    let send = |key: &'static str| {
        http.post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(team.alice())
            .header("Idempotency-Key", key)
            .json(&json!({"question": "pay once"}))
            .send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if send("warm-up").await.expect("answer").status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = send("order-42").await.expect("answer");
    assert_eq!(first.status(), 200);
    let retry = send("order-42").await.expect("answer");
    assert_eq!(retry.status(), 409);
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["error"]["code"], "duplicate_request");
    let mine = credits(&gate.base, &team.alice()).await;
    let line = balance(&mine, &policy);
    assert_eq!(line["used"], 2, "warm-up + order-42 charged once: {mine}");
    assert_eq!(line["timeZone"], "Europe/Berlin");
    assert!(
        line["resetAt"]
            .as_str()
            .is_some_and(|r| r.ends_with("T23:00:00Z") || r.ends_with("T22:00:00Z")),
        "local midnight on the 1st: {line}"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_keyed_request_that_failed_upstream_may_be_retried_at_once() {
    // The refund of a keyed request lands before its error answer: a client retrying the same
    // key straight after a 502 finds it free, not "in progress" (409).
    keyed_retries_after_failures("credits-idem-retry", Mode::Fail, false, 502).await;
}

#[tokio::test]
async fn a_keyed_stream_that_failed_before_answering_may_be_retried_at_once() {
    // Flowise answers 200 and streams an error: the refund of a keyed request lands before the
    // stream's end reaches the client, so an immediate retry with the key is not a 409.
    keyed_retries_after_failures(
        "credits-idem-stream",
        Mode::StreamFail {
            end_after: Duration::ZERO,
        },
        true,
        200,
    )
    .await;
}

/// Sends 20 keyed predictions to a Flowise failing as `mode`, each retried at once with its key,
/// through a flowgate on PostgreSQL (where a refund's commit takes long enough for a retry to
/// overtake it): every attempt is answered `status`, none 409, and nothing stays charged.
async fn keyed_retries_after_failures(prefix: &str, mode: Mode, streaming: bool, status: u16) {
    let team = Team::with_fake_flowise(prefix).await;
    let policy = format!("{}/ten", team.ns);
    team.policy(
        "ten",
        json!({"chatflows": ["*"], "budget": {"credits": 10, "period": "Daily"}}),
    )
    .await;
    let failing = FakeFlowise::start(mode).await;
    let gate = Flowgate::with_flowise_and_ledger(
        &failing.url,
        std::env::var("FLOWGATE_TEST_POSTGRES_URL").expect("PostgreSQL for tests"),
    )
    .await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, status).await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let key = format!("order-{i}-{}", team.ns);
        for attempt in 0..2 {
            let resp = http
                .post(format!("{}/api/v1/prediction/{id}", gate.base))
                .bearer_auth(team.alice())
                .header("Idempotency-Key", &key)
                .json(&json!({"question": "retry me", "streaming": streaming}))
                .send()
                .await
                .expect("answer");
            assert_eq!(resp.status(), status, "{key}, attempt {attempt}");
            let text = resp.text().await.expect("the whole answer");
            assert!(text.contains("boom"), "{key}, attempt {attempt}: {text}");
        }
    }
    used_becomes(&gate, &team.alice(), &policy, 0).await;
    team.cleanup().await;
}

/// A flowgate process (the real binary) for multi-replica tests; killed when dropped.
struct Replica {
    _child: KillOnDrop,
    base: String,
}

fn spawn_replica(flowise_url: &str, ledger_url: &str, secret_file: &std::path::Path) -> Replica {
    let (port, ops) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["run", "--no-controller"])
        .env("FLOWGATE_FLOWISE_URL", flowise_url)
        .env("FLOWGATE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("FLOWGATE_OPS_ADDR", format!("127.0.0.1:{ops}"))
        .env("FLOWGATE_LEDGER_URL", ledger_url)
        .env("FLOWGATE_JWT_HS256_SECRET_FILE", secret_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("flowgate binary starts");
    Replica {
        _child: KillOnDrop(child),
        base: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn three_flowgate_processes_sharing_postgres_admit_exactly_the_budget() {
    let pg = std::env::var("FLOWGATE_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !pg.is_empty(),
        "FLOWGATE_TEST_POSTGRES_URL is not set: run scripts/test.sh, or `scripts/postgres.sh start && eval \"$(scripts/postgres.sh env)\"`"
    );
    let team = Team::with_fake_flowise("credits-pg").await;
    team.policy("shared-fifty", json!({"chatflows": ["*"], "budget": {"credits": 50, "period": "Never", "scope": "Shared"}})).await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hs256");
    std::fs::write(&secret, SECRET).expect("secret");
    let replicas: Vec<Replica> = (0..3)
        .map(|_| spawn_replica(&fake.url, &pg, &secret))
        .collect();
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let id = team.flowise_id.clone();
    let probe = support::gate::token("probe", json!({"groups": [team.group()]}));
    // Every replica must have the policy indexed before the burst.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for base in &bases {
        loop {
            let listed = match http
                .get(format!("{base}/credits"))
                .bearer_auth(&probe)
                .send()
                .await
            {
                Ok(resp) => resp
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["balances"].as_array().map(|b| !b.is_empty()))
                    .unwrap_or(false),
                Err(_) => false,
            };
            if listed {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {base} never ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A shared budget: alice and the group members draw from the same 50.
    let (ok, refused, other) = burst(&bases, &team.alice(), &id, 200).await;
    assert_eq!(
        (ok, refused, other),
        (50, 150, vec![]),
        "exactly 50 across three replicas"
    );
    assert_eq!(
        fake.predictions(),
        50,
        "only admitted requests reached Flowise"
    );
    team.cleanup().await;
}

/// The same policies, read as the controller reads them.
fn lenient(
    api: &kube::Api<flowgate::crd::CreditPolicy>,
) -> kube::Api<flowgate::crd::Lenient<flowgate::crd::CreditPolicy>> {
    let client = api.clone().into_client();
    match api.namespace() {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    }
}

/// The status of CreditPolicy `name` once the controller's usage refresh has run on `ledger`.
async fn refreshed_status(
    api: &kube::Api<flowgate::crd::CreditPolicy>,
    ledger: &dyn flowgate::ledger::CreditLedger,
    name: &str,
) -> flowgate::crd::CreditPolicyStatus {
    flowgate::controller::credits_status::refresh_all(
        &lenient(api),
        ledger,
        jiff::Timestamp::now(),
    )
    .await
    .expect("usage refresh");
    api.get(name)
        .await
        .expect("policy")
        .status
        .unwrap_or_default()
}

#[tokio::test]
async fn policy_status_shows_usage_and_crossing_a_threshold_raises_an_event() {
    let team = Team::with_fake_flowise("credits-status").await;
    team.policy("ten", json!({"chatflows": ["*"], "budget": {"credits": 10, "period": "Daily", "timeZone": "Europe/Berlin"},
                              "alertAtPercent": [50]})).await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let gate = Flowgate::with_flowise_and_ledger(&fake.url, ledger_url.clone()).await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    for _ in 0..5 {
        let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "x"})).await;
        assert_eq!(status, 200);
    }
    // Six predictions at cost 1 (the readiness probe was one): the fifth reached 50% of 10.
    let config_ledger = flowgate::config::LedgerUrl::Sqlite(dir.path().join("ledger.db"));
    let ledger = flowgate::ledger::open(&config_ledger)
        .await
        .expect("ledger opens");
    let api: kube::Api<flowgate::crd::CreditPolicy> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = refreshed_status(&api, ledger.as_ref(), "ten").await;
        if status.credits_used == 6 {
            assert!(
                status.period_start.is_some() && status.next_reset.is_some(),
                "{status:?}"
            );
            assert_eq!(status.subjects_exhausted, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "creditsUsed never reached 6: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = flowgate::controller::credits_status::refresh_all(
        &lenient(&api),
        ledger.as_ref(),
        jiff::Timestamp::now(),
    )
    .await
    .expect("usage refresh");
    assert_eq!(written, 0, "unchanged usage writes no status");

    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.expect("events");
        let alert = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("CreditThresholdCrossed"));
        if let Some(alert) = alert {
            let note = alert.note.clone().unwrap_or_default();
            assert!(note.contains("50%"), "{note}");
            assert_eq!(
                alert.regarding.as_ref().and_then(|r| r.name.as_deref()),
                Some("ten")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CreditThresholdCrossed event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    team.cleanup().await;
}

#[tokio::test]
async fn a_budget_override_gives_its_subjects_their_own_credits() {
    // The policy's budget is 1 a day; alice's override is 3, dave's 2. Requests, balances and
    // the policy's status count each against their own: alice has used 2, past the policy's 1
    // but not her 3, so she is not exhausted.
    let team = Team::with_fake_flowise("credits-override").await;
    let dave_email = format!("dave@{}.test", team.ns);
    let erin_email = format!("erin@{}.test", team.ns);
    team.policy(
        "daily",
        json!({"chatflows": ["*"], "budget": {"credits": 1, "period": "Daily",
               "overrides": [{"subjects": [{"user": team.user()}], "credits": 3},
                             {"subjects": [{"user": dave_email}], "credits": 2},
                             {"subjects": [{"user": erin_email}], "credits": 0}]}}),
    )
    .await;
    let policy = format!("{}/daily", team.ns);
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let gate = Flowgate::with_flowise_and_ledger(&fake.url, ledger).await;
    let id = team.flowise_id.clone();
    let (alice, carol, dave) = (team.alice(), team.member("carol"), team.member("dave"));
    eventually_status(&gate, &alice, &id, 200).await;
    let mut statuses = Vec::new();
    for bearer in [&alice, &dave, &dave, &dave, &carol, &carol] {
        let (status, _) = predict(&gate, bearer, &id, json!({"question": "x"})).await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 402, 200, 402],
        "alice within her 3 (the probe was one), dave has 2, carol the policy's 1"
    );
    // A 402 says when the budget comes back, unless it never fits: erin's own budget is 0.
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/prediction/{id}", gate.base);
    for (bearer, comes_back) in [(&dave, true), (&team.member("erin"), false)] {
        let resp = http
            .post(&url)
            .bearer_auth(bearer)
            .json(&json!({"question": "x"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 402);
        assert_eq!(
            resp.headers().contains_key("retry-after"),
            comes_back,
            "{:?}",
            resp.headers()
        );
    }
    for (bearer, own, used) in [(&alice, 3, 2), (&dave, 2, 2), (&carol, 1, 1)] {
        let balances = credits(&gate.base, bearer).await;
        let balance = balance(&balances, &policy);
        assert_eq!(
            (&balance["credits"], &balance["used"], &balance["remaining"]),
            (&json!(own), &json!(used), &json!(own - used)),
            "{balances}"
        );
    }

    let ledger = flowgate::ledger::open(&flowgate::config::LedgerUrl::Sqlite(
        dir.path().join("ledger.db"),
    ))
    .await
    .expect("ledger opens");
    let api: kube::Api<flowgate::crd::CreditPolicy> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let status = refreshed_status(&api, ledger.as_ref(), "daily").await;
    assert_eq!(
        (status.credits_used, status.subjects_exhausted),
        (5, 2),
        "dave and carol are spent; alice, 2 of her 3, is not"
    );
    team.cleanup().await;
}
