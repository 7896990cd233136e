//! The global admin's credit routes through flowgate: adjustments (given and taken once per
//! key, recorded on the policy) and balances, including the overrides a caller's name cannot
//! tell.

mod support;

use serde_json::{Value, json};

use support::admin::{admin_get, call, root};
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, eventually_status, predict};
use support::team::Team;

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
            json!({"policy": policy, "subject": "sa:team/a/b", "credits": 1}),
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
    // The global admin takes `credits` from `subject`.
    let admin = root();
    let take = |subject: &str, credits: i64| {
        let body = json!({"policy": policy, "subject": subject, "credits": -credits});
        call(
            &gate,
            reqwest::Method::POST,
            "/api/admin/credits/adjustments",
            Some(&admin),
            Some(body),
        )
    };
    let (status, taken) = take("user:carol-sub", 1).await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(
        (&taken["credits"], &taken["used"], &taken["remaining"]),
        (&json!(4), &json!(4), &json!(0)),
        "{taken}"
    );
    // Taken from erin before she was ever charged: her bucket keeps her own 6, so 3 used is
    // not spent though the policy's budget is 1. Carol, 4 of her 4, is.
    let (status, taken) = take("user:erin-sub", 3).await;
    assert_eq!(status, 200, "{taken}");
    // Dave has no override by name: his group's 4 is what his bucket keeps.
    let dave = team.member("dave");
    let (status, answer) = predict(&gate, &dave, &id, json!({"question": "q"})).await;
    assert_eq!(status, 200, "{answer}");
    let path = format!("/api/admin/credits/balances?policy={policy}");
    let (status, all) = admin_get(&gate, path, root()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["subjectsExhausted"], json!(1), "{all}");
    // Erin's override lowered to 3 (her bucket still holds the 6 it was made with): the admin
    // reads 3, as the proxy now charges her against. The group's override removed: dave's
    // bucket still holds 4 (a refused caller's bucket is not written again), but the policy's 1
    // is his budget now.
    let api: kube::Api<flowgate::crd::CreditPolicy> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    let lowered = json!({"spec": {"budget": {"overrides": [
        {"subjects": [{"user": "carol-sub"}], "credits": 2},
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
    let path = format!("/api/admin/credits/balances?policy={policy}&subject=user:dave-sub");
    let (status, one) = admin_get(&gate, path, root()).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        one["balances"],
        json!([{"subject": "user:dave-sub", "credits": 1, "used": 1, "remaining": 0}])
    );
    let path = format!("/api/admin/credits/balances?policy={policy}");
    let (status, all) = admin_get(&gate, path, root()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all["subjectsExhausted"],
        json!(3),
        "carol (4 of 2), erin (3 of 3) and dave (1 of 1): {all}"
    );
    team.cleanup().await;
}
