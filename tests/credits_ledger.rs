//! The ledger read back and kept in bounds through flowgate: the usage log (who may read which
//! rows, filters, paging) and retention (old rows pruned at start, budgets kept, failed runs
//! counted).

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::admin::{admin_get, call, root};
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, eventually_status, predict};
use support::team::Team;

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
    // 30 used; then 60 (50 %), 90 (80 %), each settle 10 below its 40-credit hold.
    thresholds_cross_at_the_settle("credits-token-hold-alerts", "held", 40).await;
}

/// A hold exactly right leaves the bucket as the reserve left it at the settle: the tokens it
/// counted still cross the thresholds then.
#[tokio::test]
async fn tokens_that_use_the_hold_exactly_cross_their_thresholds_too() {
    // 30 used; then 60 (50 %), 90 (80 %), each settle what its 30-credit hold held.
    thresholds_cross_at_the_settle("credits-token-exact-alerts", "exact", 30).await;
}

/// A policy `name` pricing 30 tokens a prediction at 30 credits, holding `reserve_tokens`'
/// worth: after the first prediction (30 of 100 used), each of two more crosses 50 % and 80 %.
async fn thresholds_cross_at_the_settle(prefix: &str, name: &str, reserve_tokens: u64) {
    let (team, gate, _fake) = token_alerts(
        prefix,
        name,
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Daily"},
               "cost": {"perPrediction": 0, "perThousandTokens": 1000, "reserveTokens": reserve_tokens},
               "alertAtPercent": [50, 80]}),
    )
    .await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    let alerts = |percent: u8| alerted(&gate, &team, name, percent);
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
