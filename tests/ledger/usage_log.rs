//! Usage-log scenarios: what each settle, refund, expiry and final-cost charge logs, the
//! filters and paging of the log.

use super::*;

pub async fn the_usage_log_records_every_settle_refund_and_expiry(store: Store) {
    let ledger = store.open().await;
    let t = |minutes| now() + SignedDuration::from_mins(minutes);

    let two_lines = ledger
        .reserve(request(
            "alice",
            vec![
                line(POLICY, "alice", 10, 2),
                line("team-a/pool", "*", 100, 2),
            ],
        ))
        .await
        .expect("reserve")
        .id();
    ledger
        .settle(two_lines, &[3, 1], 1200, t(1))
        .await
        .expect("settle");
    let mut other_bot = request("bob", vec![line(POLICY, "bob", 10, 1)]);
    other_bot.chatflow = "team-a/other-bot".into();
    let refunded = ledger.reserve(other_bot).await.expect("reserve").id();
    ledger.refund(refunded, t(2)).await.expect("refund");
    let expired = ledger
        .reserve(request("bob", vec![line(POLICY, "bob", 10, 2)]))
        .await
        .expect("reserve")
        .id();
    ledger.sweep(t(3)).await.expect("sweep");
    ledger
        .settle(expired, &[5], 700, t(4))
        .await
        .expect("late settle");
    // Still held: not in the log.
    ledger
        .reserve(request("carol", vec![line(POLICY, "carol", 10, 1)]))
        .await
        .expect("reserve")
        .id();

    let row =
        |time, reservation, subject: &str, policy: &str, credits, tokens, outcome| UsageRecord {
            id: 0,
            time,
            reservation,
            subject: subject.into(),
            chatflow: "team-a/support-bot".into(),
            policy: policy.into(),
            credits,
            tokens,
            outcome,
            adjusted_by: None,
            reason: None,
        };
    use ReservationState::{Expired, Refunded, Settled};
    let logged = ledger.usage(UsageFilter::default()).await.expect("usage");
    // Row ids are the store's own; everything else is known.
    let all: Vec<UsageRecord> = logged
        .iter()
        .map(|r| UsageRecord { id: 0, ..r.clone() })
        .collect();
    let other_bot = UsageRecord {
        chatflow: "team-a/other-bot".into(),
        ..row(t(2), refunded, "bob", POLICY, 0, 0, Refunded)
    };
    assert_eq!(
        all,
        vec![
            row(t(4), expired, "bob", POLICY, 3, 700, Settled),
            row(t(3), expired, "bob", POLICY, 2, 0, Expired),
            other_bot.clone(),
            row(t(1), two_lines, "alice", "team-a/pool", 1, 1200, Settled),
            row(t(1), two_lines, "alice", POLICY, 3, 1200, Settled),
        ],
        "newest first"
    );
    let bob: i64 = all
        .iter()
        .filter(|r| r.subject == "bob")
        .map(|r| r.credits)
        .sum();
    assert_eq!(
        bob,
        used(&*ledger, POLICY, "bob").await,
        "the log sums to the charge"
    );

    let filtered = |subject: Option<&str>, policy: Option<&str>, since, limit| UsageFilter {
        subject: subject.map(Into::into),
        policy: policy.map(Into::into),
        since,
        limit,
        ..UsageFilter::default()
    };
    let of_chatflow = ledger
        .usage(UsageFilter {
            chatflow: Some("team-a/other-bot".into()),
            ..UsageFilter::default()
        })
        .await
        .expect("usage");
    assert_eq!(of_chatflow.len(), 1);
    assert_eq!(
        UsageRecord {
            id: 0,
            ..of_chatflow[0].clone()
        },
        other_bot
    );

    // Pages of two, each after the last row of the one before, are the log in order.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = ledger
            .usage(UsageFilter {
                before,
                limit: 2,
                ..UsageFilter::default()
            })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        pages.extend(page);
    }
    assert_eq!(pages, logged, "paged = all at once");
    let bob_after_first = ledger
        .usage(UsageFilter {
            subject: Some("bob".into()),
            before: Some(logged[0].id),
            ..UsageFilter::default()
        })
        .await
        .expect("usage");
    assert_eq!(
        bob_after_first,
        logged[1..3].to_vec(),
        "a cursor with a filter"
    );
    let alice = ledger
        .usage(filtered(Some("alice"), None, None, 100))
        .await
        .expect("usage");
    assert_eq!(alice.len(), 2);
    let pool = ledger
        .usage(filtered(None, Some("team-a/pool"), None, 100))
        .await
        .expect("usage");
    assert_eq!(pool, vec![logged[3].clone()]);
    let recent = ledger
        .usage(filtered(None, None, Some(t(3)), 100))
        .await
        .expect("usage");
    assert_eq!(recent, logged[..2].to_vec());
    let newest = ledger
        .usage(filtered(None, None, None, 1))
        .await
        .expect("usage");
    assert_eq!(newest, logged[..1].to_vec());
}

pub async fn a_final_cost_is_charged_and_logged_at_once_and_only_a_refund_or_settle_changes_it(
    store: Store,
) {
    let ledger = store.open().await;
    let t = |minutes| now() + SignedDuration::from_mins(minutes);
    let final_cost = |subject: &str, key: Option<&str>| {
        let mut req = request(
            subject,
            vec![
                line(POLICY, subject, 10, 2),
                line("team-a/pool", "*", 100, 1),
            ],
        );
        req.final_cost = true;
        req.idempotency_key = key.map(Into::into);
        req
    };

    let refunded = ledger
        .reserve(final_cost("alice", Some("k1")))
        .await
        .expect("reserve")
        .id();
    let kept = ledger
        .reserve(final_cost("bob", None))
        .await
        .expect("reserve")
        .id();
    let corrected = ledger
        .reserve(final_cost("carol", None))
        .await
        .expect("reserve")
        .id();
    assert_eq!(used(&*ledger, POLICY, "alice").await, 2, "charged at once");
    assert_eq!(used(&*ledger, "team-a/pool", "*").await, 3);
    assert_eq!(
        ledger
            .reserve(final_cost("alice", Some("k1")))
            .await
            .expect("retry"),
        ReserveOutcome::Duplicate {
            id: refunded,
            state: ReservationState::Charged
        },
        "a retry is not charged again"
    );
    assert_eq!(
        ledger.sweep(t(60)).await.expect("sweep"),
        0,
        "nothing to expire: nothing is held open"
    );

    assert_eq!(
        ledger.refund(refunded, t(1)).await.expect("refund"),
        Resolution {
            state: ReservationState::Refunded,
            applied: true,
            // Alice's own bucket, and the pool bob's and carol's reserves still hold 2 of.
            used: vec![Some(0), Some(2)],
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 0, "released");
    assert!(
        !ledger.refund(refunded, t(2)).await.expect("refund").applied,
        "once"
    );
    let again = match ledger
        .reserve(final_cost("alice", Some("k1")))
        .await
        .expect("reserve")
    {
        ReserveOutcome::Reserved { id, .. } => id,
        other => panic!("a refunded key reserves again: {other:?}"),
    };
    assert!(
        ledger
            .settle(corrected, &[5, 1], 3000, t(3))
            .await
            .expect("settle")
            .applied,
        "a settle still corrects a final charge"
    );
    assert_eq!(used(&*ledger, POLICY, "carol").await, 5);
    assert!(
        !ledger
            .refund(corrected, t(4))
            .await
            .expect("refund")
            .applied,
        "settled is final"
    );

    use ReservationState::{Charged, Refunded, Settled};
    let log = |subject: &str| {
        let ledger = ledger.clone();
        let subject = subject.to_string();
        async move {
            let mut rows: Vec<(ReservationId, String, i64, u64, ReservationState)> = ledger
                .usage(UsageFilter {
                    subject: Some(subject),
                    ..UsageFilter::default()
                })
                .await
                .expect("usage")
                .into_iter()
                .map(|r| (r.reservation, r.policy, r.credits, r.tokens, r.outcome))
                .collect();
            rows.reverse();
            rows
        }
    };
    let pool = || "team-a/pool".to_string();
    assert_eq!(
        log("bob").await,
        vec![
            (kept, POLICY.to_string(), 2, 0, Charged),
            (kept, pool(), 1, 0, Charged),
        ],
        "logged with the reserve, in line order"
    );
    assert_eq!(
        log("carol").await,
        vec![
            (corrected, POLICY.to_string(), 2, 0, Charged),
            (corrected, pool(), 1, 0, Charged),
            (corrected, POLICY.to_string(), 3, 3000, Settled),
            (corrected, pool(), 0, 3000, Settled),
        ]
    );
    // Oldest first: both reserves happened at `now()`, the refund a minute later.
    let alice = log("alice").await;
    assert_eq!(
        alice,
        vec![
            (refunded, POLICY.to_string(), 2, 0, Charged),
            (refunded, pool(), 1, 0, Charged),
            (again, POLICY.to_string(), 2, 0, Charged),
            (again, pool(), 1, 0, Charged),
            (refunded, POLICY.to_string(), -2, 0, Refunded),
            (refunded, pool(), -1, 0, Refunded),
        ]
    );
    let alice_sum: i64 = alice.iter().map(|row| row.2).sum();
    assert_eq!(
        alice_sum,
        used(&*ledger, POLICY, "alice").await + 1,
        "the log sums to the charges (alice's policy line and her pool line)"
    );
}

pub async fn a_policys_buckets_are_listed_most_used_first(store: Store) {
    let ledger = store.open().await;
    for (subject, amount) in [
        ("alice", 3),
        ("bob", 7),
        ("carol", 3),
        ("Zed", 3),
        ("dave", 1),
    ] {
        ledger
            .reserve(request(subject, vec![line(POLICY, subject, 10, amount)]))
            .await
            .expect("reserve")
            .id();
    }
    ledger
        .reserve(request("erin", vec![own_line("erin", 50, 20)]))
        .await
        .expect("reserve")
        .id();
    // Another policy, and another window of this one, are not listed.
    ledger
        .reserve(request("bob", vec![line("team-a/other", "bob", 10, 9)]))
        .await
        .expect("reserve")
        .id();
    let mut last_month = request("frank", vec![line(POLICY, "frank", 10, 9)]);
    last_month.lines[0].window = support::monthly_utc(at("2026-04-30T10:00:00Z"));
    ledger.reserve(last_month).await.expect("reserve").id();

    let window = support::monthly_utc(now());
    let listed = |bucket: Option<&'static str>, limit| {
        let (ledger, window) = (ledger.clone(), window);
        async move {
            ledger
                .buckets(POLICY, &window, bucket, limit)
                .await
                .expect("buckets")
                .into_iter()
                .map(|b| (b.bucket, b.used, b.own_limit))
                .collect::<Vec<_>>()
        }
    };
    let row = |bucket: &str, used: i64, own: Option<i64>| (bucket.to_string(), used, own);
    assert_eq!(
        listed(None, 100).await,
        vec![
            row("erin", 20, Some(50)),
            row("bob", 7, None),
            // Ties in byte order on both backends, whatever PostgreSQL's collation.
            row("Zed", 3, None),
            row("alice", 3, None),
            row("carol", 3, None),
            row("dave", 1, None),
        ]
    );
    assert_eq!(
        listed(None, 2).await,
        vec![row("erin", 20, Some(50)), row("bob", 7, None)]
    );
    assert_eq!(
        listed(Some("carol"), 100).await,
        vec![row("carol", 3, None)]
    );
    assert_eq!(listed(Some("nobody"), 100).await, vec![]);
}
