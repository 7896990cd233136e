//! Retention scenarios: what pruning deletes, what it keeps, and that budgets do not move.

use std::sync::Arc;
use std::time::Duration;

use flowgate::crd::policy::Period;
use flowgate::ledger::retention::{self, Pruned};
use flowgate::ledger::{
    self, CreditLedger, LedgerError, ReservationId, ReservationState, ReserveOutcome,
    ReserveRequest, Resolution, UsageFilter,
};
use jiff::{SignedDuration, Timestamp};

use super::support::{OutcomeExt, Store, concurrently, line, now, request, used};

const POLICY: &str = "team-a/monthly";

fn plus(hours: i64, minutes: i64) -> Timestamp {
    now() + SignedDuration::from_hours(hours) + SignedDuration::from_mins(minutes)
}

/// A request by `subject` for 2 credits of a 1,000-credit shared budget at `at`.
fn charge(subject: &str, at: Timestamp) -> ReserveRequest {
    let mut request = request(subject, vec![line(POLICY, "*", 1_000, 2)]);
    request.now = at;
    request
}

async fn reserve(ledger: &Arc<dyn CreditLedger>, request: ReserveRequest) -> ReservationId {
    ledger.reserve(request).await.expect("reserve").id()
}

async fn refund(
    ledger: &Arc<dyn CreditLedger>,
    id: ReservationId,
) -> Result<Resolution, LedgerError> {
    ledger.refund(id, plus(72, 0)).await
}

/// Reservations in every state, a day apart, pruned two rows per call so the walk crosses
/// several chunks: only closed reservations last changed before the cutoff go, with the usage
/// rows before it; budgets stay; a forgotten idempotency key may be used again.
pub async fn pruning_deletes_closed_reservations_and_usage_before_the_cutoff(store: Store) {
    let ledger = store.open().await;

    // Open for ten days: still `reserved` at the cutoff, whatever its age. Lowest id, so the
    // walk starts on a row it must keep.
    let mut open = charge("erin", now());
    open.ttl = Duration::from_secs(10 * 24 * 3_600);
    let open = reserve(&ledger, open).await;

    let mut keyed = charge("alice", now());
    keyed.idempotency_key = Some("retry-me".into());
    let settled = reserve(&ledger, keyed.clone()).await;
    ledger
        .settle(settled, &[3], 40, plus(0, 1))
        .await
        .expect("settle");
    let refunded = reserve(&ledger, charge("bob", now())).await;
    refund_at(&ledger, refunded, plus(0, 1)).await;
    let mut flat = charge("carol", now());
    flat.final_cost = true;
    let charged = reserve(&ledger, flat).await;
    let expired = reserve(&ledger, charge("dave", now())).await;
    let settled_late = reserve(&ledger, charge("frank", now())).await;
    assert_eq!(ledger.sweep(plus(0, 2)).await.expect("sweep"), 2);

    let cutoff = plus(24, 0);
    ledger
        .settle(settled_late, &[5], 0, plus(25, 0))
        .await
        .expect("a late settle after the cutoff");
    let recent = reserve(&ledger, charge("grace", plus(48, 0))).await;
    ledger
        .settle(recent, &[2], 0, plus(48, 0))
        .await
        .expect("settle");

    let budget = used(&*ledger, POLICY, "*").await;
    assert_eq!(
        budget,
        2 + 3 + 2 + 2 + 5 + 2,
        "open, settled, charged, expired, late, recent"
    );

    let pruned = retention::prune(&*ledger, cutoff, 2, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(
        pruned,
        Pruned {
            reservations: 4,
            usage: 5,
            buckets: 0,
        },
        "settled, refunded, charged and expired; their rows and the late one's expiry row"
    );
    assert_eq!(
        used(&*ledger, POLICY, "*").await,
        budget,
        "budgets are kept"
    );

    for gone in [settled, refunded, charged, expired] {
        let err = refund(&ledger, gone).await.expect_err("pruned");
        assert!(
            matches!(err, LedgerError::UnknownReservation(id) if id == gone),
            "{err}"
        );
    }
    let log = ledger.usage(UsageFilter::default()).await.expect("usage");
    let left: Vec<_> = log
        .iter()
        .map(|row| (row.reservation, row.outcome, row.credits))
        .collect();
    assert_eq!(
        left,
        vec![
            (recent, ReservationState::Settled, 2),
            (settled_late, ReservationState::Settled, 3),
        ],
        "only rows at or after the cutoff"
    );
    assert!(log.iter().all(|row| row.time >= cutoff));

    // Kept reservations still close.
    let late = refund(&ledger, settled_late).await.expect("kept");
    assert!(!late.applied, "already settled");
    let open = refund(&ledger, open).await.expect("kept open");
    assert_eq!(open.state, ReservationState::Refunded);
    assert!(open.applied);

    // The pruned reservation's key is forgotten: a retry now is a new charge.
    keyed.now = plus(72, 0);
    let again = ledger.reserve(keyed).await.expect("reserve");
    assert!(
        matches!(again, ReserveOutcome::Reserved { id, .. } if id > recent),
        "{again:?}"
    );

    let nothing = retention::prune(&*ledger, cutoff, 2, Duration::ZERO)
        .await
        .expect("prune again");
    assert_eq!(nothing, Pruned::default(), "a second prune finds nothing");
}

/// Pruning while a burst of reserves runs neither loses nor adds a charge.
pub async fn pruning_during_a_burst_keeps_the_budget_exact(store: Store) {
    let ledger = store.open().await;
    for n in 0..300 {
        let id = reserve(&ledger, charge(&format!("old-{n}"), now())).await;
        ledger
            .settle(id, &[1], 0, plus(0, 1))
            .await
            .expect("settle");
    }
    assert_eq!(used(&*ledger, POLICY, "*").await, 300);

    let pruning = {
        let ledger = ledger.clone();
        tokio::spawn(
            async move { retention::prune(&*ledger, plus(24, 0), 7, Duration::ZERO).await },
        )
    };
    let outcomes = concurrently(&ledger, 200, |n| charge(&format!("new-{n}"), plus(48, 0))).await;
    let pruned = pruning.await.expect("task").expect("prune");

    let admitted = outcomes
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved { .. }))
        .count();
    assert_eq!(admitted, 200);
    assert_eq!(used(&*ledger, POLICY, "*").await, 300 + 2 * 200);
    assert_eq!(
        pruned,
        Pruned {
            reservations: 300,
            usage: 300,
            buckets: 0,
        },
        "every old reservation and its usage row; none of the burst's"
    );
}

async fn refund_at(ledger: &Arc<dyn CreditLedger>, id: ReservationId, at: Timestamp) {
    let done = ledger.refund(id, at).await.expect("refund");
    assert_eq!(done.state, ReservationState::Refunded);
}

/// Buckets go once their window had ended well before the cutoff (it started
/// `LONGEST_WINDOW` earlier): an old month's, an old day's, a deleted policy's. The current
/// windows stay, and so does a `Never` budget, however old.
pub async fn pruning_deletes_the_buckets_of_windows_long_over_and_keeps_never(store: Store) {
    let ledger = store.open().await;
    let long_ago = now() - SignedDuration::from_hours(24 * 100);
    let charge_in = |policy: &str, period: Period, at: Timestamp| {
        let mut req = request("alice", vec![line(policy, "alice", 1_000, 2)]);
        req.lines[0].window = ledger::window(period, "UTC", at).expect("window");
        req.now = at;
        req.final_cost = true;
        req
    };
    for req in [
        charge_in("team-a/monthly", Period::Monthly, long_ago),
        charge_in("team-a/daily", Period::Daily, long_ago),
        charge_in("team-a/deleted", Period::Hourly, long_ago),
        charge_in("team-a/lifetime", Period::Never, long_ago),
        charge_in("team-a/monthly", Period::Monthly, now()),
        charge_in("team-a/daily", Period::Daily, now()),
        charge_in("team-a/lifetime", Period::Never, now()),
    ] {
        ledger.reserve(req).await.expect("reserve").id();
    }
    let balance = |policy: &'static str, period: Period, at: Timestamp| {
        let ledger = ledger.clone();
        async move {
            let window = ledger::window(period, "UTC", at).expect("window");
            ledger
                .balance(policy, "alice", &window)
                .await
                .expect("balance")
        }
    };
    assert_eq!(
        balance("team-a/monthly", Period::Monthly, long_ago).await,
        2
    );

    let pruned = retention::prune(&*ledger, plus(1, 0), 2, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(
        pruned.buckets, 3,
        "the old month, the old day and the deleted policy's hour"
    );
    for (policy, period, at) in [
        ("team-a/monthly", Period::Monthly, long_ago),
        ("team-a/daily", Period::Daily, long_ago),
        ("team-a/deleted", Period::Hourly, long_ago),
    ] {
        assert_eq!(
            balance(policy, period, at).await,
            0,
            "{policy} long ago is gone"
        );
    }
    assert_eq!(balance("team-a/monthly", Period::Monthly, now()).await, 2);
    assert_eq!(balance("team-a/daily", Period::Daily, now()).await, 2);
    assert_eq!(
        balance("team-a/lifetime", Period::Never, now()).await,
        4,
        "a Never budget keeps every charge"
    );
    // A window that ended, but less than LONGEST_WINDOW before the cutoff, stays for now.
    let yesterday = now() - SignedDuration::from_hours(24);
    ledger
        .reserve(charge_in("team-a/daily", Period::Daily, yesterday))
        .await
        .expect("reserve");
    let again = retention::prune(&*ledger, plus(1, 0), 2, Duration::ZERO)
        .await
        .expect("prune again");
    assert_eq!(again.buckets, 0);
    assert_eq!(balance("team-a/daily", Period::Daily, yesterday).await, 2);
}
