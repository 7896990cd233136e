//! A policy's usage for its status, and budget overrides' own limits kept with their buckets.

use super::*;

pub async fn policy_usage_sums_credits_and_counts_exhausted_buckets(store: Store) {
    let ledger = store.open().await;
    for (who, amount) in [("alice", 5), ("bob", 2), ("carol", 1)] {
        let id = ledger
            .reserve(request(who, vec![line(POLICY, who, 5, amount)]))
            .await
            .expect("reserve")
            .id();
        if who == "carol" {
            ledger.refund(id, now()).await.expect("refund");
        }
    }
    let mut last_month = line(POLICY, "dave", 5, 5);
    last_month.window = support::monthly_utc(at("2026-04-15T00:00:00Z"));
    ledger
        .reserve(request("dave", vec![last_month]))
        .await
        .expect("reserve")
        .id();

    let usage = ledger
        .policy_usage(POLICY, &support::monthly_utc(now()), limits(5, &[]))
        .await
        .expect("policy usage");
    assert_eq!(
        usage,
        PolicyUsage {
            credits_used: 7,
            buckets_exhausted: 1
        }
    );
}

/// `line`, with `limit` the subject's own (a budget override).
pub fn own_line(bucket: &str, limit: u64, amount: u64) -> ledger::BudgetLine {
    ledger::BudgetLine {
        own_limit: true,
        ..line(POLICY, bucket, limit, amount)
    }
}

pub async fn a_bucket_with_its_own_limit_is_exhausted_against_it(store: Store) {
    let ledger = store.open().await;
    // The policy's budget is 5. erin's own is 2, grace's 10; frank has the policy's.
    ledger
        .reserve(request("erin", vec![own_line("erin", 2, 2)]))
        .await
        .expect("reserve")
        .id();
    let refused = ledger
        .reserve(request("erin", vec![own_line("erin", 2, 1)]))
        .await
        .expect("reserve");
    assert!(
        matches!(refused, ReserveOutcome::Exhausted { remaining: 0, .. }),
        "her own limit holds though the policy's would admit it: {refused:?}"
    );
    ledger
        .reserve(request("frank", vec![line(POLICY, "frank", 5, 2)]))
        .await
        .expect("reserve")
        .id();
    ledger
        .reserve(request("grace", vec![own_line("grace", 10, 7)]))
        .await
        .expect("reserve")
        .id();
    let window = support::monthly_utc(now());
    let usage = ledger
        .policy_usage(POLICY, &window, limits(5, &[2, 10]))
        .await
        .expect("policy usage");
    assert_eq!(
        usage,
        PolicyUsage {
            credits_used: 11,
            buckets_exhausted: 1
        },
        "erin (2 of 2) is exhausted; grace (7 of her 10) is not, though 7 is past the policy's 5"
    );
    // erin's override gone: her next reserve keeps no limit of her own, and the policy's counts.
    ledger
        .reserve(request("erin", vec![line(POLICY, "erin", 5, 1)]))
        .await
        .expect("reserve")
        .id();
    let usage = ledger
        .policy_usage(POLICY, &window, limits(5, &[2, 10]))
        .await
        .expect("policy usage");
    assert_eq!(usage.buckets_exhausted, 0);
    // A restart keeps what each bucket holds.
    drop(ledger);
    let reopened = store.open().await;
    let usage = reopened
        .policy_usage(POLICY, &window, limits(3, &[2, 10]))
        .await
        .expect("policy usage");
    assert_eq!(
        (usage.credits_used, usage.buckets_exhausted),
        (12, 1),
        "against a policy's 3: erin (3) is spent, frank (2) is not, nor grace (7 of her own 10)"
    );
}

pub async fn a_burst_of_reserves_keeps_each_buckets_own_limit(store: Store) {
    // Many at once, as a group commit batches them: each bucket keeps its own last limit.
    let ledger = store.open().await;
    let calls = (0..8).map(|i| {
        let ledger = ledger.clone();
        async move {
            let who = format!("s{i}");
            // Even subjects have an override of 1, odd ones the policy's 5.
            let line = if i % 2 == 0 {
                own_line(&who, 1, 1)
            } else {
                line(POLICY, &who, 5, 1)
            };
            ledger.reserve(request(&who, vec![line])).await
        }
    });
    for outcome in futures::future::join_all(calls).await {
        outcome.expect("reserve").id();
    }
    let usage = ledger
        .policy_usage(POLICY, &support::monthly_utc(now()), limits(5, &[1]))
        .await
        .expect("policy usage");
    assert_eq!(
        (usage.credits_used, usage.buckets_exhausted),
        (8, 4),
        "the four with a limit of 1 are spent"
    );
}

pub async fn a_reserve_of_nothing_still_keeps_its_own_limit(store: Store) {
    // A policy that prices only tokens reserves 0: the bucket's `used` does not move, but its
    // own limit is still the last reserve's.
    let ledger = store.open().await;
    ledger
        .reserve(request("tess", vec![line(POLICY, "tess", 5, 1)]))
        .await
        .expect("reserve")
        .id();
    let window = support::monthly_utc(now());
    let before = ledger
        .policy_usage(POLICY, &window, limits(1, &[2]))
        .await
        .expect("usage");
    assert_eq!(before.buckets_exhausted, 1, "1 used against the policy's 1");
    ledger
        .reserve(request("tess", vec![own_line("tess", 2, 0)]))
        .await
        .expect("reserve")
        .id();
    let after = ledger
        .policy_usage(POLICY, &window, limits(1, &[2]))
        .await
        .expect("usage");
    assert_eq!(
        (after.credits_used, after.buckets_exhausted),
        (1, 0),
        "1 used against her own 2"
    );
}

/// A bucket keeps the override its last reserve was charged against until its next reserve
/// that passes; once the override is lowered or removed, its subject is refused from then on,
/// and the policy's status must count it against the limit the spec gives it now.
pub async fn an_override_lowered_or_removed_since_gives_way_to_the_policys_limit(store: Store) {
    let ledger = store.open().await;
    // carol's override (by group, say) is 4; she uses 3. The policy's own budget is 1.
    ledger
        .reserve(request("carol", vec![own_line("carol", 4, 3)]))
        .await
        .expect("reserve")
        .id();
    let window = support::monthly_utc(now());
    let exhausted = async |overrides| {
        ledger
            .policy_usage(POLICY, &window, limits(1, overrides))
            .await
            .expect("usage")
            .buckets_exhausted
    };
    assert_eq!(exhausted(&[4]).await, 0, "3 of her 4");
    assert_eq!(
        exhausted(&[2]).await,
        1,
        "lowered to 2: the policy's 1 counts"
    );
    assert_eq!(exhausted(&[]).await, 1, "removed: the policy's 1 counts");
    assert_eq!(exhausted(&[2, 4]).await, 0, "some override still gives 4");
}

/// A refused reserve leaves no budget behind: no bucket of 0 used for the policy's status to
/// count as spent against the policy's limit (alice's override gives her 50 of a policy's 0),
/// nor for the admin's balances to list.
pub async fn a_refused_reserve_leaves_no_bucket_behind(store: Store) {
    let ledger = store.open().await;
    for (who, line) in [
        ("alice", own_line("alice", 50, 60)),
        ("bob", line(POLICY, "bob", 0, 1)),
    ] {
        let refused = ledger.reserve(request(who, vec![line])).await;
        assert!(
            matches!(refused, Ok(ReserveOutcome::Exhausted { .. })),
            "{who}: {refused:?}"
        );
    }
    let window = support::monthly_utc(now());
    let usage = ledger
        .policy_usage(POLICY, &window, limits(0, &[50]))
        .await
        .expect("policy usage");
    assert_eq!(
        usage,
        PolicyUsage {
            credits_used: 0,
            buckets_exhausted: 0
        }
    );
    let listed = ledger
        .buckets(POLICY, &window, None, 10)
        .await
        .expect("buckets");
    assert_eq!(listed, [], "nothing was charged");
}
