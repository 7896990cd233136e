//! Adjustment scenarios: an admin's correction of one bucket, either way, applied once per key
//! and exact among concurrent reserves.

use super::*;

pub fn adjustment(bucket: &str, credits: i64) -> AdjustRequest {
    AdjustRequest {
        policy: POLICY.into(),
        bucket: bucket.into(),
        window: support::monthly_utc(now()),
        credits,
        idempotency_key: None,
        now: now(),
        actor: "user:root".into(),
        reason: None,
        own_limit: None,
    }
}

fn adjusted(outcome: AdjustOutcome) -> (ReservationId, i64) {
    match outcome {
        AdjustOutcome::Adjusted { id, used } => (id, used),
        other => panic!("expected Adjusted, got {other:?}"),
    }
}

pub async fn an_adjustment_gives_back_or_takes_credits_whatever_the_budget(store: Store) {
    let ledger = store.open().await;
    let spend = |amount| request("alice", vec![line(POLICY, "alice", 10, amount)]);
    ledger.reserve(spend(10)).await.expect("reserve").id();
    assert!(matches!(
        ledger.reserve(spend(1)).await.expect("reserve"),
        ReserveOutcome::Exhausted { .. }
    ));

    let (given, used_after) =
        adjusted(ledger.adjust(adjustment("alice", 5)).await.expect("adjust"));
    assert_eq!(used_after, 5, "five credits given back");
    let ReserveOutcome::Reserved { remaining, .. } =
        ledger.reserve(spend(3)).await.expect("reserve")
    else {
        panic!("the given credits are spendable");
    };
    assert_eq!(remaining, vec![(POLICY.to_string(), 2)]);

    // Taking is never refused for the budget: the bucket goes past its limit.
    let (taken, used_after) = adjusted(
        ledger
            .adjust(AdjustRequest {
                actor: "user:auditor".into(),
                reason: Some("abuse, ticket 9".into()),
                ..adjustment("alice", -20)
            })
            .await
            .expect("adjust"),
    );
    assert_eq!(used_after, 28);
    assert!(matches!(
        ledger.reserve(spend(1)).await.expect("reserve"),
        ReserveOutcome::Exhausted { remaining: 0, .. }
    ));

    // A bucket never charged starts below zero: more than the budget this period.
    let (_, used_after) = adjusted(ledger.adjust(adjustment("bob", 7)).await.expect("adjust"));
    assert_eq!(used_after, -7);
    let ReserveOutcome::Reserved { remaining, .. } = ledger
        .reserve(request("bob", vec![line(POLICY, "bob", 10, 17)]))
        .await
        .expect("reserve")
    else {
        panic!("10 + 7 credits fit");
    };
    assert_eq!(remaining, vec![(POLICY.to_string(), 0)]);
    assert_eq!(
        ledger
            .policy_usage(POLICY, &support::monthly_utc(now()), limits(10, &[]))
            .await
            .expect("usage"),
        PolicyUsage {
            credits_used: 28 + 10,
            buckets_exhausted: 2
        }
    );

    // Logged as what they changed in the charge, with no chatflow, and who made them and why;
    // a prediction's rows have neither.
    let whole = whole_log(&*ledger).await;
    let who = |r: &UsageRecord| (r.adjusted_by.clone(), r.reason.clone());
    let made: Vec<_> = whole
        .iter()
        .filter(|r| r.subject == "alice")
        .map(|r| (r.reservation, who(r)))
        .collect();
    assert!(made.contains(&(
        taken,
        (Some("user:auditor".into()), Some("abuse, ticket 9".into()))
    )));
    assert!(made.contains(&(given, (Some("user:root".into()), None))));
    assert!(
        whole
            .iter()
            .filter(|r| r.outcome != ReservationState::Adjusted)
            .all(|r| who(r) == (None, None)),
        "{whole:?}"
    );
    let log: Vec<(ReservationId, String, String, i64, ReservationState)> = whole
        .into_iter()
        .filter(|r| r.outcome == ReservationState::Adjusted && r.subject == "alice")
        .map(|r| (r.reservation, r.subject, r.chatflow, r.credits, r.outcome))
        .collect();
    assert_eq!(
        log,
        vec![
            (
                taken,
                "alice".into(),
                String::new(),
                20,
                ReservationState::Adjusted
            ),
            (
                given,
                "alice".into(),
                String::new(),
                -5,
                ReservationState::Adjusted
            ),
        ]
    );
    // Final: a settle or refund of an adjustment changes nothing.
    for resolution in [
        ledger.refund(given, now()).await.expect("refund"),
        ledger.settle(taken, &[0], 0, now()).await.expect("settle"),
    ] {
        assert_eq!(
            resolution,
            Resolution {
                state: ReservationState::Adjusted,
                applied: false,
                used: Vec::new(),
            }
        );
    }
    assert_eq!(used(&*ledger, POLICY, "alice").await, 28);
}

pub async fn an_adjustment_with_an_idempotency_key_is_applied_once(store: Store) {
    let ledger = store.open().await;
    let keyed = || AdjustRequest {
        idempotency_key: Some("ticket-42".into()),
        ..adjustment("alice", 50)
    };
    let (id, used_after) = adjusted(ledger.adjust(keyed()).await.expect("adjust"));
    assert_eq!(used_after, -50);
    assert_eq!(
        ledger.adjust(keyed()).await.expect("adjust again"),
        AdjustOutcome::Duplicate {
            id,
            state: ReservationState::Adjusted
        }
    );
    // Another replica, or a restart, knows the key too.
    let other = store.open().await;
    assert!(matches!(
        other.adjust(keyed()).await.expect("adjust elsewhere"),
        AdjustOutcome::Duplicate { .. }
    ));
    assert_eq!(used(&*ledger, POLICY, "alice").await, -50);
    // The key is the bucket's: another bucket may use it.
    let (_, bob) = adjusted(
        ledger
            .adjust(AdjustRequest {
                bucket: "bob".into(),
                ..keyed()
            })
            .await
            .expect("adjust bob"),
    );
    assert_eq!(bob, -50);
    // And another policy, for the same subject.
    let (_, other_policy) = adjusted(
        ledger
            .adjust(AdjustRequest {
                policy: "team-a/other".into(),
                ..keyed()
            })
            .await
            .expect("adjust another policy"),
    );
    assert_eq!(other_policy, -50);
    // A subject's own prediction with the same key is another thing: the subject cannot take
    // an adjustment's key (to stop a charge an admin makes), nor the other way round.
    let mut prediction = request("alice", vec![line(POLICY, "alice", 10, 1)]);
    prediction.idempotency_key = Some("ticket-42".into());
    ledger.reserve(prediction).await.expect("reserve").id();
    let mut taken_first = request("carol", vec![line(POLICY, "carol", 10, 1)]);
    taken_first.idempotency_key = Some("ticket-7".into());
    ledger.reserve(taken_first).await.expect("reserve").id();
    adjusted(
        ledger
            .adjust(AdjustRequest {
                bucket: "carol".into(),
                idempotency_key: Some("ticket-7".into()),
                ..adjustment("carol", -5)
            })
            .await
            .expect("adjust carol"),
    );
    assert_eq!(used(&*ledger, POLICY, "carol").await, 6);
}

pub async fn an_adjustment_during_a_burst_of_reserves_keeps_the_budget_exact(store: Store) {
    let ledger = store.open().await;
    let give = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.adjust(adjustment("*", 10)).await })
    };
    let burst = concurrently(&ledger, 80, |_| {
        request("alice", vec![line(POLICY, "*", 50, 1)])
    })
    .await;
    adjusted(give.await.expect("task").expect("adjust"));
    let mut admitted = burst
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved { .. }))
        .count();
    // Whatever the order, the budget and the credits given are spent exactly.
    while let ReserveOutcome::Reserved { .. } = ledger
        .reserve(request("alice", vec![line(POLICY, "*", 50, 1)]))
        .await
        .expect("reserve")
    {
        admitted += 1;
        assert!(admitted <= 60, "more admitted than 50 + 10");
    }
    assert_eq!(admitted, 60);
    assert_eq!(used(&*ledger, POLICY, "*").await, 50);
}

/// A bucket an adjustment creates keeps the subject's own budget (an override), as a reserve's
/// would: a policy's status does not count the subject spent against the policy's budget. A
/// bucket already there keeps the limit its last reserve wrote.
pub async fn an_adjustment_creating_a_bucket_keeps_the_subjects_own_limit(store: Store) {
    let ledger = store.open().await;
    let take = |bucket: &str, credits, own_limit| AdjustRequest {
        own_limit,
        ..adjustment(bucket, credits)
    };
    // The policy's budget is 5; erin's own is 10, frank has the policy's.
    for request in [take("erin", -8, Some(10)), take("frank", -8, None)] {
        ledger.adjust(request).await.expect("adjust");
    }
    let window = support::monthly_utc(now());
    let usage = || ledger.policy_usage(POLICY, &window, limits(5, &[10]));
    assert_eq!(
        usage().await.expect("usage"),
        PolicyUsage {
            credits_used: 16,
            buckets_exhausted: 1
        },
        "frank, 8 of 5, is spent; erin, 8 of her 10, is not"
    );
    ledger
        .adjust(take("erin", -1, Some(3)))
        .await
        .expect("adjust");
    assert_eq!(
        usage().await.expect("usage").buckets_exhausted,
        1,
        "erin's bucket keeps its limit of 10"
    );
}
