//! The ledger failing under flowgate, nothing lost: PostgreSQL unreachable while a settle is on
//! its way (retried until it lands) and while predictions arrive (503, fail closed, and served
//! again without a restart).

mod support;

use std::time::Duration;

use serde_json::json;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, indexed, predict, used_becomes};
use support::team::Team;

#[tokio::test]
async fn a_settle_that_meets_a_ledger_outage_is_retried_until_it_lands() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (relay, relayed) = support::gated_postgres().await;
        let team = Team::with_fake_flowise("faults-settle-retry").await;
        // Tokens priced: the charge is settled after the answer, not final at reserve.
        team.policy(
            "tokens",
            json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"},
                   "cost": {"perPrediction": 1, "perThousandTokens": 1}}),
        )
        .await;
        let policy = format!("{}/tokens", team.ns);
        let fake = FakeFlowise::start(Mode::Slow {
            delay: Duration::from_millis(1500),
        })
        .await;
        let gate = Flowgate::with_flowise_and_ledger(&fake.url, relayed).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let asked = tokio::spawn({
            let (base, alice, id) = (gate.base.clone(), alice.clone(), team.flowise_id.clone());
            async move {
                reqwest::Client::new()
                    .post(format!("{base}/api/v1/prediction/{id}"))
                    .bearer_auth(alice)
                    .json(&json!({"question": "slow"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        // Reserved and forwarded, Flowise still thinking: PostgreSQL goes away; the answer's
        // settle fails.
        support::eventually(10, "the prediction in Flowise", || async {
            (fake.predictions() > 0).then_some(())
        })
        .await;
        relay.close();
        assert_eq!(asked.await.expect("task").expect("answer"), 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
        relay.reopen().await;
        // Without a retry the reservation would stay open until the sweep, 15 minutes later.
        let usage = format!("{}/credits/usage?policy={policy}", gate.base);
        support::eventually(40, "the settle, once PostgreSQL was back", || async {
            let rows = reqwest::Client::new()
                .get(&usage)
                .bearer_auth(&alice)
                .send()
                .await
                .ok()?;
            let rows: serde_json::Value = rows.json().await.ok()?;
            rows.to_string().contains("\"settled\"").then_some(())
        })
        .await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 90 s");
}

#[tokio::test]
async fn postgres_unreachable_fails_closed_with_503_and_recovers_without_restart() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (relay, relayed) = support::gated_postgres().await;
        let (team, policy) = Team::with_flat_policy("faults-postgres").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = Flowgate::with_flowise_and_ledger(&fake.url, relayed).await;
        let alice = team.alice();
        indexed(&gate, &alice, &policy).await;
        let id = team.flowise_id.clone();
        let (status, body) = predict(&gate, &alice, &id, json!({"question": "before"})).await;
        assert_eq!(status, 200, "{body}");

        relay.close();
        for _ in 0..5 {
            let (status, body) = tokio::time::timeout(
                Duration::from_secs(15),
                predict(&gate, &alice, &id, json!({"question": "during"})),
            )
            .await
            .expect("a refusal within 15 s, not a hang");
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "ledger_unavailable", "{body}");
        }
        assert_eq!(fake.predictions(), 1, "nothing forwarded without a ledger");

        relay.reopen().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = predict(&gate, &alice, &id, json!({"question": "after"})).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "ledger back within 30 s of PostgreSQL coming back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(fake.predictions(), 2);
        used_becomes(&gate, &alice, &policy, 2).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 90 s");
}
