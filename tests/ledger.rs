//! The ledger's scenario suite: every scenario runs against every backend.
//!
//! `scenarios!` generates, for each scenario, `sqlite::<name>` (a file in a temporary directory)
//! and `postgres::<name>` (a fresh schema in `FLOWGATE_TEST_POSTGRES_URL`; the tests fail when
//! it is unset: run `scripts/postgres.sh start` and `eval "$(scripts/postgres.sh env)"`).
//! The clock is injected through `now`; nothing sleeps.

#[path = "ledger/abandoned.rs"]
mod abandoned;
#[path = "ledger/adjust.rs"]
mod adjust;
#[path = "ledger/bursts.rs"]
mod bursts;
#[path = "ledger/commit_unanswered.rs"]
mod commit_unanswered;
#[path = "ledger/own_limits.rs"]
mod own_limits;
#[path = "ledger/postgres_indexes.rs"]
mod postgres_indexes;
#[path = "ledger/postgres_rates.rs"]
mod postgres_rates;
#[path = "ledger/postgres_replicas.rs"]
mod postgres_replicas;
#[path = "ledger/retention.rs"]
mod retention;
#[path = "ledger/sqlite_crash.rs"]
mod sqlite_crash;
#[path = "ledger/support.rs"]
mod support;
#[path = "ledger/tls.rs"]
mod tls;
#[path = "ledger/usage_log.rs"]
mod usage_log;

use std::collections::HashSet;
use std::time::Duration;

use flowgate::crd::policy::Period;
use flowgate::ledger::{
    self, AdjustOutcome, AdjustRequest, LedgerError, Limits, PolicyUsage, ReservationId,
    ReservationState, ReserveOutcome, Resolution, UsageFilter, UsageRecord,
};
use jiff::SignedDuration;

use adjust::*;
use bursts::*;
use own_limits::*;
use retention::*;
use support::{OutcomeExt, Store, at, concurrently, line, now, request, used, whole_log};
use usage_log::*;

macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(crate::support::sqlite()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let store = crate::support::postgres(stringify!($scenario)).await;
                    super::$scenario(store).await;
                }
            )*
        }
    };
}

scenarios!(
    a_reserve_within_budget_is_charged_and_reports_what_remains,
    an_exhausted_budget_names_the_policy_what_remains_and_when_it_resets,
    several_policies_are_charged_all_or_nothing,
    per_subject_buckets_are_independent_and_a_shared_bucket_is_not,
    settle_may_charge_more_than_reserved_and_the_next_reserve_is_refused,
    settles_past_the_counters_range_leave_the_bucket_full_and_usable,
    refund_releases_what_was_held,
    settle_and_refund_are_idempotent,
    closing_an_unknown_reservation_or_with_the_wrong_line_count_fails,
    an_idempotency_key_charges_once_and_a_refunded_key_reserves_again,
    concurrent_retries_with_one_idempotency_key_are_charged_once,
    expired_reservations_stay_charged_and_a_late_settle_or_refund_still_applies,
    a_new_period_is_a_fresh_budget,
    a_limit_lowered_mid_period_is_respected,
    concurrent_reserves_admit_exactly_the_budget,
    a_burst_of_mixed_requests_is_decided_as_if_each_ran_alone,
    a_burst_of_settles_refunds_and_reserves_keeps_the_budget_exact,
    a_key_refunded_and_reused_in_one_burst_is_charged_at_most_once,
    each_caller_of_a_burst_gets_its_own_reservation,
    charges_survive_a_restart_and_every_opened_ledger_shares_them,
    the_usage_log_records_every_settle_refund_and_expiry,
    a_final_cost_is_charged_and_logged_at_once_and_only_a_refund_or_settle_changes_it,
    a_burst_of_final_cost_and_held_reserves_logs_each_final_charge_once,
    policy_usage_sums_credits_and_counts_exhausted_buckets,
    a_bucket_with_its_own_limit_is_exhausted_against_it,
    a_burst_of_reserves_keeps_each_buckets_own_limit,
    a_reserve_of_nothing_still_keeps_its_own_limit,
    a_refused_reserve_leaves_no_bucket_behind,
    an_override_lowered_or_removed_since_gives_way_to_the_policys_limit,
    an_operation_the_database_refuses_fails_alone_in_its_burst,
    pruning_deletes_closed_reservations_and_usage_before_the_cutoff,
    pruning_during_a_burst_keeps_the_budget_exact,
    pruning_deletes_the_buckets_of_windows_long_over_and_keeps_never,
    an_adjustment_gives_back_or_takes_credits_whatever_the_budget,
    an_adjustment_with_an_idempotency_key_is_applied_once,
    an_adjustment_during_a_burst_of_reserves_keeps_the_budget_exact,
    an_adjustment_creating_a_bucket_keeps_the_subjects_own_limit,
    a_policys_buckets_are_listed_most_used_first,
);

const POLICY: &str = "team-a/monthly";

/// A policy's `credits` and the credits its overrides give.
fn limits(credits: u64, overrides: &[u64]) -> Limits {
    Limits {
        credits,
        overrides: overrides.to_vec(),
    }
}

async fn a_reserve_within_budget_is_charged_and_reports_what_remains(store: Store) {
    let ledger = store.open().await;

    let first = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 3)]))
        .await
        .expect("reserve");
    let ReserveOutcome::Reserved { remaining, .. } = first else {
        panic!("expected Reserved, got {first:?}");
    };
    assert_eq!(remaining, vec![(POLICY.to_string(), 7)]);
    assert_eq!(used(&*ledger, POLICY, "alice").await, 3);

    let rest = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 7)]))
        .await
        .expect("reserve");
    assert!(
        matches!(&rest, ReserveOutcome::Reserved { remaining, .. } if remaining[0].1 == 0),
        "the last credit fits exactly: {rest:?}"
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 10);
}

async fn an_exhausted_budget_names_the_policy_what_remains_and_when_it_resets(store: Store) {
    let ledger = store.open().await;
    ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 5, 4)]))
        .await
        .expect("reserve")
        .id();

    let refused = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 5, 2)]))
        .await
        .expect("running out is not an error");
    assert_eq!(
        refused,
        ReserveOutcome::Exhausted {
            policy: POLICY.into(),
            remaining: 1,
            reset_at: Some(at("2026-06-01T00:00:00Z")),
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 4, "nothing charged");

    let mut forever = line("team-a/lifetime", "alice", 0, 1);
    forever.window = ledger::window(Period::Never, "UTC", now()).expect("window");
    let refused = ledger
        .reserve(request("alice", vec![forever]))
        .await
        .expect("reserve");
    assert!(
        matches!(
            &refused,
            ReserveOutcome::Exhausted {
                reset_at: None,
                remaining: 0,
                ..
            }
        ),
        "a Never budget does not reset: {refused:?}"
    );
}

async fn several_policies_are_charged_all_or_nothing(store: Store) {
    let ledger = store.open().await;
    let lines = || {
        vec![
            line("team-a/zeta", "alice", 10, 1),
            line("team-a/alpha", "*", 1, 1),
            line("team-a/mid", "alice", 10, 1),
        ]
    };
    let first = ledger
        .reserve(request("alice", lines()))
        .await
        .expect("reserve");
    let ReserveOutcome::Reserved { remaining, .. } = first else {
        panic!("expected Reserved, got {first:?}");
    };
    assert_eq!(
        remaining,
        vec![
            ("team-a/zeta".to_string(), 9),
            ("team-a/alpha".to_string(), 0),
            ("team-a/mid".to_string(), 9)
        ],
        "in request order"
    );

    let second = ledger
        .reserve(request("alice", lines()))
        .await
        .expect("reserve");
    assert!(
        matches!(&second, ReserveOutcome::Exhausted { policy, .. } if policy == "team-a/alpha"),
        "{second:?}"
    );
    assert_eq!(
        used(&*ledger, "team-a/zeta", "alice").await,
        1,
        "not charged"
    );
    assert_eq!(used(&*ledger, "team-a/alpha", "*").await, 1);
    assert_eq!(
        used(&*ledger, "team-a/mid", "alice").await,
        1,
        "not charged"
    );

    // When several do not fit, the first in request order is named (not the first by name).
    let both_short = vec![
        line("team-a/zeta", "alice", 1, 1),
        line("team-a/alpha", "*", 1, 1),
    ];
    let third = ledger
        .reserve(request("alice", both_short))
        .await
        .expect("reserve");
    assert!(
        matches!(&third, ReserveOutcome::Exhausted { policy, .. } if policy == "team-a/zeta"),
        "{third:?}"
    );
}

async fn per_subject_buckets_are_independent_and_a_shared_bucket_is_not(store: Store) {
    let ledger = store.open().await;
    let per_subject = |who: &str| request(who, vec![line("team-a/each", who, 2, 2)]);
    ledger
        .reserve(per_subject("alice"))
        .await
        .expect("reserve")
        .id();
    assert!(matches!(
        ledger.reserve(per_subject("alice")).await.expect("reserve"),
        ReserveOutcome::Exhausted { .. }
    ));
    ledger
        .reserve(per_subject("bob"))
        .await
        .expect("reserve")
        .id();

    let shared = |who: &str| request(who, vec![line("team-a/pool", "*", 2, 1)]);
    ledger.reserve(shared("alice")).await.expect("reserve").id();
    ledger.reserve(shared("bob")).await.expect("reserve").id();
    let carol = ledger.reserve(shared("carol")).await.expect("reserve");
    assert!(
        matches!(&carol, ReserveOutcome::Exhausted { policy, remaining: 0, .. } if policy == "team-a/pool"),
        "{carol:?}"
    );
    assert_eq!(used(&*ledger, "team-a/pool", "*").await, 2);
}

async fn settle_may_charge_more_than_reserved_and_the_next_reserve_is_refused(store: Store) {
    let ledger = store.open().await;
    let id = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 2)]))
        .await
        .expect("reserve")
        .id();
    let settled = ledger.settle(id, &[12], 9000, now()).await.expect("settle");
    assert_eq!(
        settled,
        Resolution {
            state: ReservationState::Settled,
            applied: true,
            used: vec![Some(12)],
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 12, "over the limit");
    // Two reserved at once, settled in turn: each settle says where it left the bucket, the
    // second counting the first (alertAtPercent checks a settle against that).
    let (first, second) = (
        ledger
            .reserve(request("dave", vec![line(POLICY, "dave", 10, 0)]))
            .await
            .expect("reserve")
            .id(),
        ledger
            .reserve(request("dave", vec![line(POLICY, "dave", 10, 0)]))
            .await
            .expect("reserve")
            .id(),
    );
    let landed = ledger
        .settle(first, &[3], 300, now())
        .await
        .expect("settle");
    assert_eq!(landed.used, [Some(3)]);
    let landed = ledger
        .settle(second, &[4], 400, now())
        .await
        .expect("settle");
    assert_eq!(landed.used, [Some(7)]);
    // A settle of exactly what was held leaves the bucket as it was, and says where that is:
    // the hold's share above the flat cost is checked against the alerts only then.
    let exact = ledger
        .reserve(request("dave", vec![line(POLICY, "dave", 10, 2)]))
        .await
        .expect("reserve")
        .id();
    let landed = ledger
        .settle(exact, &[2], 200, now())
        .await
        .expect("settle");
    assert_eq!(landed.used, [Some(9)]);
    let again = ledger
        .settle(second, &[4], 400, now())
        .await
        .expect("settle");
    assert!(!again.applied && again.used.is_empty(), "{again:?}");

    let refused = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 1)]))
        .await
        .expect("reserve");
    assert!(
        matches!(refused, ReserveOutcome::Exhausted { remaining: 0, .. }),
        "{refused:?}"
    );
    // A policy that prices only tokens reserves 0: a spent budget refuses that too, whether
    // overdrawn by a settle or used exactly up.
    let zero = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 0)]))
        .await
        .expect("reserve");
    assert!(matches!(zero, ReserveOutcome::Exhausted { .. }), "{zero:?}");
    let id = ledger
        .reserve(request("carol", vec![line(POLICY, "carol", 10, 0)]))
        .await
        .expect("reserve")
        .id();
    ledger.settle(id, &[10], 1000, now()).await.expect("settle");
    let zero = ledger
        .reserve(request("carol", vec![line(POLICY, "carol", 10, 0)]))
        .await
        .expect("reserve");
    assert!(matches!(zero, ReserveOutcome::Exhausted { .. }), "{zero:?}");

    // Settling for less than was held gives the difference back.
    let id = ledger
        .reserve(request("bob", vec![line(POLICY, "bob", 10, 5)]))
        .await
        .expect("reserve")
        .id();
    ledger.settle(id, &[3], 0, now()).await.expect("settle");
    assert_eq!(used(&*ledger, POLICY, "bob").await, 3);
}

/// A cost or token count past 2^63 (a Flowise answer's usage, times a price) is charged as
/// 2^63 - 1, and the bucket saturates there: the settle is not refused and left to the sweep,
/// and the bucket stays a number later reserves, settles and adjustments can read.
async fn settles_past_the_counters_range_leave_the_bucket_full_and_usable(store: Store) {
    let ledger = store.open().await;
    let spend = |amount| request("alice", vec![line(POLICY, "alice", 10, amount)]);
    let first = ledger.reserve(spend(1)).await.expect("reserve").id();
    let second = ledger.reserve(spend(1)).await.expect("reserve").id();
    for id in [first, second] {
        let settled = ledger
            .settle(id, &[u64::MAX], u64::MAX, now())
            .await
            .expect("a settle past 2^63 is applied");
        assert_eq!(settled.state, ReservationState::Settled);
        assert!(settled.applied);
        assert_eq!(used(&*ledger, POLICY, "alice").await, i64::MAX, "saturated");
    }
    assert!(matches!(
        ledger.reserve(spend(0)).await.expect("reserve"),
        ReserveOutcome::Exhausted { remaining: 0, .. }
    ));
    let given = ledger
        .adjust(adjustment("alice", i64::MAX))
        .await
        .expect("an adjustment still reads the bucket");
    assert!(
        matches!(given, AdjustOutcome::Adjusted { used: 0, .. }),
        "{given:?}"
    );
    // An adjustment that takes past the range saturates too.
    ledger.adjust(adjustment("alice", -5)).await.expect("take");
    ledger
        .adjust(adjustment("alice", i64::MIN + 1))
        .await
        .expect("take");
    assert_eq!(used(&*ledger, POLICY, "alice").await, i64::MAX);
    assert!(matches!(
        ledger.reserve(spend(1)).await.expect("reserve"),
        ReserveOutcome::Exhausted { .. }
    ));
    // The policy's total (its status, the admin API) saturates too, beside others' charges.
    ledger
        .reserve(request("bob", vec![line(POLICY, "bob", 10, 3)]))
        .await
        .expect("reserve");
    let usage = ledger
        .policy_usage(POLICY, &support::monthly_utc(now()), limits(10, &[]))
        .await
        .expect("the policy's usage still reads");
    assert_eq!(usage.credits_used, i64::MAX);
    assert_eq!(usage.buckets_exhausted, 1);
}

async fn refund_releases_what_was_held(store: Store) {
    let ledger = store.open().await;
    let full = || request("alice", vec![line(POLICY, "alice", 3, 3)]);
    let id = ledger.reserve(full()).await.expect("reserve").id();
    assert!(matches!(
        ledger.reserve(full()).await.expect("reserve"),
        ReserveOutcome::Exhausted { .. }
    ));

    let refunded = ledger.refund(id, now()).await.expect("refund");
    assert_eq!(
        refunded,
        Resolution {
            state: ReservationState::Refunded,
            applied: true,
            used: vec![Some(0)],
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 0);
    ledger.reserve(full()).await.expect("reserve").id();
}

async fn settle_and_refund_are_idempotent(store: Store) {
    let ledger = store.open().await;
    let reserve = || ledger.reserve(request("alice", vec![line(POLICY, "alice", 10, 1)]));
    let noop = |state| Resolution {
        state,
        applied: false,
        used: Vec::new(),
    };

    let settled = reserve().await.expect("reserve").id();
    assert!(
        ledger
            .settle(settled, &[2], 0, now())
            .await
            .expect("settle")
            .applied
    );
    assert_eq!(
        ledger
            .settle(settled, &[2], 0, now())
            .await
            .expect("settle"),
        noop(ReservationState::Settled)
    );
    assert_eq!(
        ledger.refund(settled, now()).await.expect("refund"),
        noop(ReservationState::Settled)
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 2);

    let refunded = reserve().await.expect("reserve").id();
    assert!(
        ledger
            .refund(refunded, now())
            .await
            .expect("refund")
            .applied
    );
    assert_eq!(
        ledger.refund(refunded, now()).await.expect("refund"),
        noop(ReservationState::Refunded)
    );
    assert_eq!(
        ledger
            .settle(refunded, &[5], 0, now())
            .await
            .expect("settle"),
        noop(ReservationState::Refunded)
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 2, "unchanged");
}

async fn closing_an_unknown_reservation_or_with_the_wrong_line_count_fails(store: Store) {
    let ledger = store.open().await;
    let unknown = ledger
        .refund(ReservationId(987_654), now())
        .await
        .expect_err("unknown");
    assert!(
        matches!(
            unknown,
            LedgerError::UnknownReservation(ReservationId(987_654))
        ),
        "{unknown}"
    );
    assert!(!unknown.transient());

    let id = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 1)]))
        .await
        .expect("reserve")
        .id();
    let mismatch = ledger
        .settle(id, &[1, 1], 0, now())
        .await
        .expect_err("two amounts for one line");
    assert_eq!(mismatch.reason(), "LineCount");
    assert_eq!(used(&*ledger, POLICY, "alice").await, 1, "still held");
    assert!(
        ledger
            .settle(id, &[1], 0, now())
            .await
            .expect("settle")
            .applied
    );
}

async fn an_idempotency_key_charges_once_and_a_refunded_key_reserves_again(store: Store) {
    let ledger = store.open().await;
    let keyed = |who: &str, key: &str| {
        let mut req = request(who, vec![line(POLICY, who, 10, 1)]);
        req.idempotency_key = Some(key.into());
        req
    };

    let id = ledger
        .reserve(keyed("alice", "k1"))
        .await
        .expect("reserve")
        .id();
    let retry = ledger.reserve(keyed("alice", "k1")).await.expect("reserve");
    assert_eq!(
        retry,
        ReserveOutcome::Duplicate {
            id,
            state: ReservationState::Reserved
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 1, "charged once");

    // Keys are scoped to the subject.
    ledger
        .reserve(keyed("bob", "k1"))
        .await
        .expect("reserve")
        .id();

    ledger.settle(id, &[1], 0, now()).await.expect("settle");
    assert_eq!(
        ledger.reserve(keyed("alice", "k1")).await.expect("reserve"),
        ReserveOutcome::Duplicate {
            id,
            state: ReservationState::Settled
        }
    );

    let refunded = ledger
        .reserve(keyed("alice", "k2"))
        .await
        .expect("reserve")
        .id();
    ledger.refund(refunded, now()).await.expect("refund");
    let again = ledger
        .reserve(keyed("alice", "k2"))
        .await
        .expect("reserve")
        .id();
    assert_ne!(again, refunded, "a refunded key reserves anew");
    assert_eq!(
        ledger.reserve(keyed("alice", "k2")).await.expect("reserve"),
        ReserveOutcome::Duplicate {
            id: again,
            state: ReservationState::Reserved
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 2);

    // A key whose request spent the budget is still a duplicate, not a 402: the key is checked
    // before the budget, on both backends.
    let mut last = request("carol", vec![line(POLICY, "carol", 1, 1)]);
    last.idempotency_key = Some("k3".into());
    let id = ledger.reserve(last.clone()).await.expect("reserve").id();
    assert_eq!(
        ledger.reserve(last).await.expect("reserve"),
        ReserveOutcome::Duplicate {
            id,
            state: ReservationState::Reserved
        }
    );
}

async fn expired_reservations_stay_charged_and_a_late_settle_or_refund_still_applies(store: Store) {
    let ledger = store.open().await;
    let mut abandoned = request("alice", vec![line(POLICY, "alice", 10, 2)]);
    abandoned.idempotency_key = Some("crashed".into());
    let refunded_late = ledger
        .reserve(abandoned.clone())
        .await
        .expect("reserve")
        .id();
    let settled_late = ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 3)]))
        .await
        .expect("reserve")
        .id();
    let ttl = SignedDuration::from_secs(60);
    let before_expiry = now() + ttl - SignedDuration::from_secs(1);

    assert_eq!(ledger.sweep(before_expiry).await.expect("sweep"), 0);
    assert_eq!(ledger.sweep(now() + ttl).await.expect("sweep"), 2);
    assert_eq!(
        ledger.sweep(now() + ttl).await.expect("sweep"),
        0,
        "swept once"
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 5, "kept charged");
    assert_eq!(
        ledger.reserve(abandoned).await.expect("reserve"),
        ReserveOutcome::Duplicate {
            id: refunded_late,
            state: ReservationState::Expired
        },
        "a retry of an expired request is not charged again"
    );

    let later = now() + SignedDuration::from_mins(5);
    assert_eq!(
        ledger.refund(refunded_late, later).await.expect("refund"),
        Resolution {
            state: ReservationState::Refunded,
            applied: true,
            used: vec![Some(3)],
        }
    );
    assert_eq!(used(&*ledger, POLICY, "alice").await, 3, "released");
    assert!(
        ledger
            .settle(settled_late, &[4], 100, later)
            .await
            .expect("settle")
            .applied
    );
    assert_eq!(
        used(&*ledger, POLICY, "alice").await,
        4,
        "adjusted to actual"
    );
}

async fn a_new_period_is_a_fresh_budget(store: Store) {
    let ledger = store.open().await;
    let berlin_monthly = |instant: &str| {
        let now = at(instant);
        let mut req = request(
            "alice",
            vec![ledger::BudgetLine {
                policy: POLICY.into(),
                bucket: "alice".into(),
                limit: 2,
                own_limit: false,
                window: ledger::window(Period::Monthly, "Europe/Berlin", now).expect("window"),
                amount: 1,
            }],
        );
        req.now = now;
        req
    };
    // 2026-10-31T23:00Z is local midnight on November 1st in Berlin (CET, after the DST change).
    for _ in 0..2 {
        ledger
            .reserve(berlin_monthly("2026-10-31T12:00:00Z"))
            .await
            .expect("reserve")
            .id();
    }
    let october = ledger
        .reserve(berlin_monthly("2026-10-31T22:59:59Z"))
        .await
        .expect("reserve");
    assert_eq!(
        october,
        ReserveOutcome::Exhausted {
            policy: POLICY.into(),
            remaining: 0,
            reset_at: Some(at("2026-10-31T23:00:00Z")),
        }
    );
    let november = ledger
        .reserve(berlin_monthly("2026-10-31T23:00:00Z"))
        .await
        .expect("reserve");
    assert!(
        matches!(&november, ReserveOutcome::Reserved { remaining, .. } if remaining[0].1 == 1),
        "{november:?}"
    );
}

async fn a_limit_lowered_mid_period_is_respected(store: Store) {
    let ledger = store.open().await;
    let with_limit = |limit, amount| request("alice", vec![line(POLICY, "alice", limit, amount)]);
    ledger
        .reserve(with_limit(10, 6))
        .await
        .expect("reserve")
        .id();

    let lowered = ledger.reserve(with_limit(5, 1)).await.expect("reserve");
    assert!(
        matches!(lowered, ReserveOutcome::Exhausted { remaining: 0, .. }),
        "{lowered:?}"
    );
    let raised = ledger.reserve(with_limit(8, 2)).await.expect("reserve");
    assert!(
        matches!(&raised, ReserveOutcome::Reserved { remaining, .. } if remaining[0].1 == 0),
        "{raised:?}"
    );
}

/// SQLite: a restart (the writer thread stops on drop); PostgreSQL: a replica going away.
async fn charges_survive_a_restart_and_every_opened_ledger_shares_them(store: Store) {
    let first = store.open().await;
    let outcomes = concurrently(&first, 10, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 100, 1)])
    })
    .await;
    drop(first);

    let restarted = store.open().await;
    assert_eq!(
        used(&*restarted, POLICY, "*").await,
        10,
        "every reserved charge kept"
    );
    let replica = store.open().await;
    let settled = restarted
        .settle(outcomes[0].id(), &[5], 0, now())
        .await
        .expect("settle after the restart");
    assert!(settled.applied);
    assert_eq!(used(&*replica, POLICY, "*").await, 14);
}
