//! The ledger read back and kept in bounds through flowgate: the usage log (who may read which
//! rows, filters, paging) and retention (old rows pruned at start, budgets kept, failed runs
//! counted).

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::admin::{call, root};
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, eventually_status, predict};
use support::team::Team;

/// GETs `path` with `bearer` (an admin's, or a caller's own routes); the status and the JSON
/// body.
async fn admin_get(gate: &Flowgate, path: String, bearer: String) -> (u16, Value) {
    call(gate, reqwest::Method::GET, &path, Some(&bearer), None).await
}

#[tokio::test]
async fn a_global_admin_reads_the_usage_log_filtered_and_no_one_else_does() {
    let team = Team::with_fake_flowise("credits-usage").await;
    let policy = format!("{}/flat", team.ns);
    team.policy(
        "flat",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily"},
               "cost": {"perPrediction": 2}}),
    )
    .await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let (status, _) = predict(&gate, &team.alice(), &id, json!({"question": "two"})).await;
    assert_eq!(status, 200);
    let usage = |query: String, bearer: String| {
        admin_get(&gate, format!("/api/admin/credits/usage{query}"), bearer)
    };

    let (status, rows_json) = usage(format!("?policy={policy}"), root()).await;
    assert_eq!(status, 200, "{rows_json}");
    let rows = rows_json.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "one row per prediction: {rows:?}");
    let subject = rows[0]["subject"].as_str().unwrap_or_default().to_string();
    for row in &rows {
        assert_eq!(row["policy"], policy.as_str(), "{row}");
        assert_eq!(row["chatflow"], format!("{}/support-bot", team.ns), "{row}");
        assert_eq!(
            (row["credits"].as_i64(), row["outcome"].as_str()),
            (Some(2), Some("charged"))
        );
        assert_eq!(row["subject"], subject.as_str());
        assert!(
            row["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{row}"
        );
    }
    assert!(subject.contains("alice"), "{subject}");
    assert!(
        rows[0]["reservation_id"].as_i64() > rows[1]["reservation_id"].as_i64(),
        "newest first: {rows:?}"
    );

    let count = |(status, rows): (u16, Value)| {
        assert_eq!(status, 200, "{rows}");
        rows.as_array().map_or(0, Vec::len)
    };
    let encoded: String = form_urlencoded::byte_serialize(subject.as_bytes()).collect();
    assert_eq!(count(usage(format!("?subject={encoded}"), root()).await), 2);
    assert_eq!(
        count(usage("?subject=user%3Anobody".into(), root()).await),
        0
    );
    assert_eq!(count(usage("?limit=1".into(), root()).await), 1);
    let (status, next) = usage(format!("?limit=1&before={}", rows[0]["id"]), root()).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next, json!([rows[1]]), "the page after the newest row");
    assert_eq!(
        count(usage("?since=2999-01-01T00:00:00Z".into(), root()).await),
        0
    );

    let (status, body) = usage("?since=yesterday".into(), root()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = usage(String::new(), team.alice()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("admin_required")),
        "{body}"
    );

    // Every caller reads their own rows at /credits/usage, whatever subject they name.
    let own = |query: &str| admin_get(&gate, format!("/credits/usage{query}"), team.alice());
    let (status, mine) = own("?subject=user%3Asomeone-else").await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine, rows_json, "the same rows an admin sees for alice");
    assert_eq!(count(own("?limit=1").await), 1);
    assert_eq!(
        count(own(&format!("?chatflow={}/other-bot", team.ns)).await),
        0
    );
    let (status, _) = call(&gate, reqwest::Method::GET, "/credits/usage", None, None).await;
    assert_eq!(status, 401, "no token, no usage");

    // A chatflow's admin reads that chatflow's rows, named by Flowise id or namespace/name.
    let owner = team.owner().await;
    let by_id = format!("?chatflow={id}");
    support::eventually(10, "the chatflow admin reads its usage", || async {
        (usage(by_id.clone(), owner.clone()).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(count(usage(by_id.clone(), owner.clone()).await), 2);
    let by_name = format!("?chatflow={}/support-bot", team.ns);
    assert_eq!(count(usage(by_name, owner.clone()).await), 2);
    for (query, bearer) in [
        (String::new(), owner.clone()),
        (format!("?chatflow={}/other-bot", team.ns), owner.clone()),
        (by_id, team.alice()),
    ] {
        let (status, body) = usage(query.clone(), bearer).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("admin_required")),
            "{query}: {body}"
        );
    }
    // A global admin may name a chatflow the index no longer has: its usage outlives it.
    assert_eq!(
        count(usage(format!("?chatflow={}/deleted-bot", team.ns), root()).await),
        0
    );
    team.cleanup().await;
}

/// Waits until the metric series `series` (name and labels, as `/metrics` prints them) reads
/// `want`.
async fn metric_becomes(gate: &Flowgate, series: &str, want: u64) {
    let mut seen = None;
    for _ in 0..100 {
        seen = support::metric(&gate.ops, series).await.map(|n| n as u64);
        if seen == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series}: {seen:?}, want {want}");
}

#[tokio::test]
async fn a_ledger_retention_prunes_old_rows_at_start_keeps_budgets_and_counts_failed_runs() {
    use flowgate::ledger::{self, BudgetLine, ReserveOutcome, ReserveRequest, UsageFilter};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", path.display());
    let store = flowgate::config::LedgerUrl::Sqlite(path);
    let now = jiff::Timestamp::now();
    let window = ledger::window(flowgate::crd::policy::Period::Never, "UTC", now).expect("window");
    let policy = "retention/lifetime";
    let predict_at = |at: jiff::Timestamp| ReserveRequest {
        subject: "user:alice".into(),
        chatflow: "retention/bot".into(),
        idempotency_key: None,
        lines: vec![BudgetLine {
            policy: policy.into(),
            bucket: "*".into(),
            limit: 100,
            own_limit: false,
            window,
            amount: 4,
        }],
        now: at,
        ttl: Duration::from_secs(900),
        final_cost: true,
    };
    {
        let ledger = ledger::open(&store).await.expect("ledger");
        let old = now - jiff::SignedDuration::from_hours(40 * 24);
        for at in [old, old, old, now - jiff::SignedDuration::from_hours(1)] {
            let outcome = ledger.reserve(predict_at(at)).await.expect("reserve");
            assert!(
                matches!(outcome, ReserveOutcome::Reserved { .. }),
                "{outcome:?}"
            );
        }
    }

    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        ledger_url: Some(url),
        ledger_retention: Some("30d".into()),
        ..Default::default()
    })
    .await;
    let pruned = |table: &str| format!("flowgate_ledger_pruned_rows_total{{table=\"{table}\"}}");
    metric_becomes(&gate, &pruned("reservations"), 3).await;
    metric_becomes(&gate, &pruned("usage"), 3).await;

    let (status, rows) = admin_get(
        &gate,
        format!("/api/admin/credits/usage?policy={policy}"),
        root(),
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(1),
        "the recent row: {rows}"
    );
    drop(gate);

    let ledger = ledger::open(&store).await.expect("reopen");
    assert_eq!(
        ledger.balance(policy, "*", &window).await.expect("balance"),
        16,
        "the lifetime budget keeps every charge"
    );
    let of_policy = || UsageFilter {
        policy: Some(policy.into()),
        ..Default::default()
    };
    assert_eq!(ledger.usage(of_policy()).await.expect("usage").len(), 1);

    // A run that fails (here the database refuses to delete usage rows) is counted, and the
    // rows it could not delete stay.
    let old = now - jiff::SignedDuration::from_hours(40 * 24);
    for _ in 0..2 {
        ledger.reserve(predict_at(old)).await.expect("reserve");
    }
    drop(ledger);
    rusqlite::Connection::open(dir.path().join("ledger.db"))
        .and_then(|c| {
            c.execute_batch(
                "CREATE TRIGGER keep BEFORE DELETE ON usage
                 BEGIN SELECT RAISE(ABORT, 'kept by the test'); END;",
            )
        })
        .expect("trigger");
    let gate = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        ledger_url: Some(format!(
            "sqlite://{}",
            dir.path().join("ledger.db").display()
        )),
        ledger_retention: Some("30d".into()),
        ..Default::default()
    })
    .await;
    metric_becomes(&gate, "flowgate_ledger_prune_failures_total", 1).await;
    drop(gate);
    let ledger = ledger::open(&store).await.expect("reopen");
    assert_eq!(
        ledger.usage(of_policy()).await.expect("usage").len(),
        3,
        "the recent row and the two the failed run could not delete"
    );
}

#[tokio::test]
async fn a_global_admin_gives_and_takes_credits_once_per_key_and_the_policy_records_why() {
    let team = Team::with_fake_flowise("credits-adjust").await;
    let policy = format!("{}/daily", team.ns);
    // Bob's group has a budget of its own, which his name cannot tell.
    team.policy(
        "daily",
        json!({"chatflows": ["*"], "budget": {"credits": 2, "period": "Daily",
               "overrides": [{"subjects": [{"group": team.group()}], "credits": 5}]}}),
    )
    .await;
    team.policy(
        "pool",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily", "scope": "Shared"}}),
    )
    .await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    eventually_status(&gate, &alice, &id, 200).await;
    let ask = || predict(&gate, &alice, &id, json!({"question": "q"}));
    // Alice's own prediction with the key the admin will use, spelled as adjustments' keys
    // once were stored, takes nothing from the admin.
    let keyed = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "adjust:ticket-42")
        .json(&json!({"question": "q"}))
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(keyed.status().as_u16(), 200);
    assert_eq!(ask().await.0, 402, "both credits spent");

    let adjust = |body: Value, bearer: String, key: Option<&'static str>| {
        let gate = &gate;
        async move {
            let mut req = reqwest::Client::new()
                .post(format!("{}/api/admin/credits/adjustments", gate.base))
                .bearer_auth(bearer)
                .json(&body);
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            let resp = req.send().await.expect("flowgate answers");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let give = json!({"policy": policy, "subject": "user:alice-sub", "credits": 3,
                      "reason": "refund for ticket 42"});
    let (status, given) = adjust(give.clone(), root(), Some("ticket-42")).await;
    assert_eq!(status, 200, "{given}");
    assert_eq!(
        (
            &given["subject"],
            &given["adjusted"],
            &given["credits"],
            &given["used"],
            &given["remaining"]
        ),
        (
            &json!("user:alice-sub"),
            &json!(3),
            &json!(2),
            &json!(-1),
            &json!(3)
        ),
        "{given}"
    );
    assert!(
        given.get("warning").is_none(),
        "alice was charged before: {given}"
    );
    let (status, again) = adjust(give, root(), Some("ticket-42")).await;
    assert_eq!(
        (status, &again["error"]["code"]),
        (409, &json!("duplicate_request")),
        "a retried adjustment is applied once: {again}"
    );
    for n in 0..3 {
        assert_eq!(ask().await.0, 200, "given credit {n}");
    }
    assert_eq!(ask().await.0, 402, "the three given credits are spent");
    let member = team.member("bob");
    let (status, _) = predict(&gate, &member, &id, json!({"question": "q"})).await;
    assert_eq!(status, 200, "bob has his own budget");
    // The answer gives bob's budget as his last prediction was charged against: his group's.
    let (status, bob) = adjust(
        json!({"policy": policy, "subject": "user:bob-sub", "credits": 1}),
        root(),
        None,
    )
    .await;
    assert_eq!(
        (status, &bob["credits"], &bob["used"], &bob["remaining"]),
        (200, &json!(5), &json!(0), &json!(5)),
        "{bob}"
    );

    // The Shared pool has one bucket: no subject. Taking goes past its budget.
    let (status, taken) = adjust(
        json!({"policy": format!("{}/pool", team.ns), "credits": -200}),
        root(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(
        (&taken["subject"], &taken["used"], &taken["remaining"]),
        (&json!("*"), &json!(206), &json!(0)),
        "{taken}"
    );
    let adjusted = |policy: String, direction: &str| {
        format!("flowgate_credits_adjusted_total{{policy=\"{policy}\",direction=\"{direction}\"}}")
    };
    assert_eq!(
        support::metric(&gate.ops, &adjusted(policy.clone(), "given")).await,
        Some(4.0),
        "alice's 3 and bob's 1: the retried adjustment counts once"
    );
    assert_eq!(
        support::metric(&gate.ops, &adjusted(format!("{}/pool", team.ns), "taken")).await,
        Some(200.0)
    );

    // Refusals, each with a JSON error saying why; none changes a budget.
    for (body, bearer, want) in [
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 1}),
            member.clone(),
            403,
        ),
        (
            json!({"policy": format!("{}/nope", team.ns), "subject": "user:x", "credits": 1}),
            root(),
            404,
        ),
        (json!({"policy": policy, "credits": 1}), root(), 400),
        (
            json!({"policy": policy, "subject": "alice-sub", "credits": 1}),
            root(),
            400,
        ),
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 0}),
            root(),
            400,
        ),
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 1.5}),
            root(),
            400,
        ),
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 1, "credit": 1}),
            root(),
            400,
        ),
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 10_000_000_000_000_i64}),
            root(),
            400,
        ),
        (
            json!({"policy": policy, "subject": "user:alice-sub", "credits": 1, "reason": "a\nb"}),
            root(),
            400,
        ),
        (
            json!({"policy": format!("{}/pool", team.ns), "subject": "user:alice-sub", "credits": 1}),
            root(),
            400,
        ),
    ] {
        let (status, answer) = adjust(body.clone(), bearer, None).await;
        assert_eq!(status, want, "{body} -> {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    assert_eq!(ask().await.0, 402, "no refusal gave anything");

    // Who stands where this period: the most used first.
    let balances = |query: String, bearer: String| {
        admin_get(&gate, format!("/api/admin/credits/balances{query}"), bearer)
    };
    let (status, daily) = balances(format!("?policy={policy}"), root()).await;
    assert_eq!(status, 200, "{daily}");
    let rows: Vec<(&Value, &Value, &Value, &Value)> = daily["balances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (&b["subject"], &b["used"], &b["credits"], &b["remaining"]))
        .collect();
    assert_eq!(
        rows,
        vec![
            (&json!("user:alice-sub"), &json!(2), &json!(2), &json!(0)),
            (&json!("user:bob-sub"), &json!(0), &json!(5), &json!(5)),
        ],
        "{daily}"
    );
    assert_eq!(
        (
            &daily["creditsUsed"],
            &daily["subjectsExhausted"],
            &daily["scope"]
        ),
        (&json!(2), &json!(1), &json!("PerSubject")),
        "{daily}"
    );
    let (status, one) = balances(format!("?policy={policy}&subject=user:alice-sub"), root()).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        one["balances"],
        json!([{"subject": "user:alice-sub", "credits": 2, "used": 2, "remaining": 0}])
    );
    let (status, one) = balances(
        format!("?policy={policy}&subject=user:nobody&limit=5"),
        root(),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        one["balances"],
        json!([{"subject": "user:nobody", "credits": 2, "used": 0, "remaining": 2}])
    );
    // The chatflow's admin reads its policy's balances (once the proxy sees the grant), but
    // changes nothing, and learns nothing of policies it does not administer.
    let owner = team.owner().await;
    let path = format!("?policy={policy}");
    let read = support::eventually(15, "the owner reads the balances", || async {
        let (status, body) = balances(path.clone(), owner.clone()).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(read["balances"], daily["balances"], "{read}");
    let (status, _) = adjust(
        json!({"policy": policy, "subject": "user:alice-sub", "credits": 1}),
        owner.clone(),
        None,
    )
    .await;
    assert_eq!(status, 403, "only a global admin adjusts");
    let (status, _) = balances(format!("?policy={}/nope", team.ns), owner.clone()).await;
    assert_eq!(status, 403, "not 404: a non-admin learns nothing");
    // A chatflow of the policy (`*`) the owner does not administer: no longer theirs to read.
    let other_id = team.flowise_id.replacen("-8000-", "-9000-", 1);
    team.chatflow("faq-bot", &other_id).await;
    support::eventually(15, "the owner refused", || async {
        let (status, _) = balances(path.clone(), owner.clone()).await;
        (status == 403).then_some(())
    })
    .await;
    for (query, bearer, want) in [
        (format!("?policy={policy}"), member.clone(), 403),
        (String::new(), root(), 400),
        (format!("?policy={policy}&subject="), root(), 400),
        (format!("?policy={policy}&limit=0"), root(), 400),
        (format!("?policy={}/nope", team.ns), root(), 404),
    ] {
        let (status, answer) = balances(query.clone(), bearer).await;
        assert_eq!(status, want, "{query} -> {answer}");
    }

    // The usage log and the policy's Events record it.
    let (status, rows) = admin_get(
        &gate,
        format!("/api/admin/credits/usage?policy={policy}"),
        root(),
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    let adjusted: Vec<&Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["outcome"] == "adjusted" && r["subject"] == "user:alice-sub")
        .collect();
    assert_eq!(adjusted.len(), 1, "{rows}");
    assert_eq!(
        (
            &adjusted[0]["credits"],
            &adjusted[0]["chatflow"],
            &adjusted[0]["reservation_id"],
            &adjusted[0]["adjusted_by"],
            &adjusted[0]["reason"]
        ),
        (
            &json!(-3),
            &json!(""),
            &given["id"],
            &json!("user:root"),
            &json!("refund for ticket 42")
        ),
        "{rows}"
    );
    // Alice sees it in her own log, without who made it or the note they left.
    let (status, own) = admin_get(&gate, "/credits/usage".into(), alice.clone()).await;
    assert_eq!(status, 200, "{own}");
    let mine: Vec<&Value> = own
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["outcome"] == "adjusted")
        .collect();
    assert!(
        mine.len() == 1 && mine[0].get("adjusted_by").is_none() && mine[0].get("reason").is_none(),
        "{own}"
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    // Published in the background, after the answer.
    let notes = support::eventually(10, "the three CreditsAdjusted Events", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let notes: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("CreditsAdjusted"))
            .map(|e| {
                (
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                )
            })
            .collect();
        (notes.len() == 3).then_some(notes)
    })
    .await;
    assert!(
        notes.iter().any(|(name, note)| name == "daily"
            && note.starts_with("user:root gave 3 credits to user:alice-sub")
            && note.ends_with(": refund for ticket 42")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|(name, note)| name == "pool" && note.contains("took 200 credits from *")),
        "{notes:?}"
    );

    // A policy that names a chatflow the index does not serve (not created yet, invalid, in
    // conflict): its buckets may hold that chatflow's users' usage, so only an admin of every
    // chatflow it names reads them.
    let budget = json!({"credits": 1000, "period": "Daily"});
    team.policy(
        "named",
        json!({"chatflows": ["support-bot", "later-bot"], "budget": budget}),
    )
    .await;
    team.policy(
        "mine",
        json!({"chatflows": ["support-bot"], "budget": budget}),
    )
    .await;
    let (named, mine) = (
        format!("?policy={}/named", team.ns),
        format!("?policy={}/mine", team.ns),
    );
    support::eventually(15, "both policies served", || async {
        let (a, _) = balances(named.clone(), root()).await;
        let (b, _) = balances(mine.clone(), root()).await;
        (a == 200 && b == 200).then_some(())
    })
    .await;
    assert_eq!(balances(mine, owner.clone()).await.0, 200);
    assert_eq!(balances(named, owner).await.0, 403);

    // A subject spelt otherwise than flowgate names the caller: applied, with a warning, also
    // the second time (its own adjustments are no charge).
    for _ in 0..2 {
        let misspelt = json!({"policy": policy, "subject": "user:alice", "credits": -1});
        let (status, warned) = adjust(misspelt, root(), None).await;
        assert_eq!(status, 200, "{warned}");
        assert!(
            warned["warning"]
                .as_str()
                .is_some_and(|w| w.contains("no prediction was ever charged to user:alice on")),
            "{warned}"
        );
    }
}

/// A team whose policy `name` (`spec`) prices 30 tokens a prediction, behind a flowgate, after
/// its first charged prediction (30 used).
async fn token_alerts(
    prefix: &str,
    name: &str,
    spec: serde_json::Value,
) -> (Team, Flowgate, FakeFlowise) {
    let team = Team::with_fake_flowise(prefix).await;
    team.policy(name, spec).await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 30 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    eventually_status(&gate, &team.alice(), &team.flowise_id, 200).await;
    (team, gate, fake)
}

/// How often `percent` of `policy` has alerted.
async fn alerted(gate: &Flowgate, team: &Team, policy: &str, percent: u8) -> Option<f64> {
    let series = format!(
        "flowgate_credit_alerts_total{{policy=\"{}/{policy}\",percent=\"{percent}\"}}",
        team.ns
    );
    support::metric(&gate.ops, &series).await
}

#[tokio::test]
async fn a_budget_spent_on_tokens_crosses_its_thresholds_at_the_settle() {
    // No flat cost: only the settles, 30 credits a prediction, move the budget.
    let (team, gate, _fake) = token_alerts(
        "credits-token-alerts",
        "tokens",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily"},
               "cost": {"perPrediction": 0, "perThousandTokens": 1000},
               "alertAtPercent": [50, 80, 100]}),
    )
    .await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    let alerts = |percent: u8| alerted(&gate, &team, "tokens", percent);
    for (used, crossed) in [(60, Some(50)), (90, Some(80)), (120, Some(100))] {
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "q"})).await;
        assert_eq!(status, 200, "{used}: {body}");
        if let Some(percent) = crossed {
            support::eventually(10, "the threshold alerted at the settle", || async {
                (alerts(percent).await == Some(1.0)).then_some(())
            })
            .await;
        }
    }
    // The last settle went past the limit (90 → 120): 100 %, not 80 % again.
    assert_eq!(alerts(50).await, Some(1.0), "each threshold once");
    assert_eq!(alerts(80).await, Some(1.0), "each threshold once");
    team.cleanup().await;
}

/// With `reserveTokens` a prediction holds more than it costs: the tokens it did use still
/// cross the thresholds at the settle.
#[tokio::test]
async fn tokens_within_the_hold_cross_their_thresholds_too() {
    let (team, gate, _fake) = token_alerts(
        "credits-token-hold-alerts",
        "held",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily"},
               "cost": {"perPrediction": 0, "perThousandTokens": 1000, "reserveTokens": 40},
               "alertAtPercent": [50, 80]}),
    )
    .await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    let alerts = |percent: u8| alerted(&gate, &team, "held", percent);
    // 30 used; then 60 (50 %), 90 (80 %), each settle 10 below its 40-credit hold.
    for percent in [50, 80] {
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "q"})).await;
        assert_eq!(status, 200, "{body}");
        support::eventually(10, "the threshold alerted at the settle", || async {
            (alerts(percent).await == Some(1.0)).then_some(())
        })
        .await;
    }
    team.cleanup().await;
}

/// A caller whose name has an override and whose group a larger one is charged against the
/// larger (the proxy takes the largest that applies): the admin's balances and adjustments say
/// so, though the name alone tells only the smaller.
#[tokio::test]
async fn an_admin_reads_the_larger_override_a_callers_group_gives() {
    let team = Team::with_fake_flowise("credits-two-overrides").await;
    let policy = format!("{}/daily", team.ns);
    team.policy(
        "daily",
        json!({"chatflows": ["*"], "budget": {"credits": 1, "period": "Daily",
               "overrides": [{"subjects": [{"user": "carol-sub"}], "credits": 2},
                             {"subjects": [{"group": team.group()}], "credits": 4},
                             {"subjects": [{"user": "erin-sub"}], "credits": 6}]}}),
    )
    .await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let (id, carol) = (team.flowise_id.clone(), team.member("carol"));
    eventually_status(&gate, &carol, &id, 200).await;
    for _ in 0..2 {
        assert_eq!(
            predict(&gate, &carol, &id, json!({"question": "q"}))
                .await
                .0,
            200
        );
    }
    let path = format!("/api/admin/credits/balances?policy={policy}&subject=user:carol-sub");
    let (status, one) = admin_get(&gate, path, root()).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        one["balances"],
        json!([{"subject": "user:carol-sub", "credits": 4, "used": 3, "remaining": 1}]),
        "3 of her group's 4 used (the probe was one)"
    );
    let take = json!({"policy": policy, "subject": "user:carol-sub", "credits": -1});
    let (status, taken) = call(
        &gate,
        reqwest::Method::POST,
        "/api/admin/credits/adjustments",
        Some(&root()),
        Some(take),
    )
    .await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(
        (&taken["credits"], &taken["used"], &taken["remaining"]),
        (&json!(4), &json!(4), &json!(0)),
        "{taken}"
    );
    // Taken from erin before she was ever charged: her bucket keeps her own 6, so 3 used is
    // not spent though the policy's budget is 1. Carol, 4 of her 4, is.
    let take = json!({"policy": policy, "subject": "user:erin-sub", "credits": -3});
    let adjustments = "/api/admin/credits/adjustments";
    let (status, taken) = call(
        &gate,
        reqwest::Method::POST,
        adjustments,
        Some(&root()),
        Some(take),
    )
    .await;
    assert_eq!(status, 200, "{taken}");
    let path = format!("/api/admin/credits/balances?policy={policy}");
    let (status, all) = admin_get(&gate, path, root()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["subjectsExhausted"], json!(1), "{all}");
    // Erin's override lowered to 3 (her bucket still holds the 6 it was made with): the admin
    // reads 3, as the proxy now charges her against.
    let api: kube::Api<flowgate::crd::CreditPolicy> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let lowered = json!({"spec": {"budget": {"overrides": [
        {"subjects": [{"user": "carol-sub"}], "credits": 2},
        {"subjects": [{"group": team.group()}], "credits": 4},
        {"subjects": [{"user": "erin-sub"}], "credits": 3}]}}});
    api.patch(
        "daily",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&lowered),
    )
    .await
    .expect("override lowered");
    let path = format!("/api/admin/credits/balances?policy={policy}&subject=user:erin-sub");
    support::eventually(15, "erin's lowered override read", || async {
        let (_, one) = admin_get(&gate, path.clone(), root()).await;
        (one["balances"][0]["credits"] == json!(3)).then_some(())
    })
    .await;
    team.cleanup().await;
}
