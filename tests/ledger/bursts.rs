//! Scenarios of many operations at once: what the group commits of both backends batch
//! together must be decided as if each operation ran alone.

use super::*;

pub async fn concurrent_retries_with_one_idempotency_key_are_charged_once(store: Store) {
    let ledger = store.open().await;
    let outcomes = concurrently(&ledger, 20, |_| {
        let mut req = request("alice", vec![line(POLICY, "alice", 100, 1)]);
        req.idempotency_key = Some("retried".into());
        req
    })
    .await;
    let ids: HashSet<ReservationId> = outcomes
        .iter()
        .map(|outcome| match outcome {
            ReserveOutcome::Reserved { id, .. } | ReserveOutcome::Duplicate { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    let reserved = outcomes
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved { .. }))
        .count();
    assert_eq!((reserved, ids.len()), (1, 1), "{outcomes:?}");
    assert_eq!(used(&*ledger, POLICY, "alice").await, 1);
}

pub async fn concurrent_reserves_admit_exactly_the_budget(store: Store) {
    let ledger = store.open().await;
    let outcomes = concurrently(&ledger, 200, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 50, 1)])
    })
    .await;
    let reserved = outcomes
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved { .. }))
        .count();
    let exhausted = outcomes
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Exhausted { .. }))
        .count();
    assert_eq!((reserved, exhausted), (50, 150));
    assert_eq!(used(&*ledger, POLICY, "*").await, 50);
}

/// A burst the writer commits in few batches: two-line requests whose per-subject line binds
/// before the shared one, and retries of one keyed request among them.
pub async fn a_burst_of_mixed_requests_is_decided_as_if_each_ran_alone(store: Store) {
    const SHARED: &str = "team-a/shared";
    let ledger = store.open().await;
    let outcomes = concurrently(&ledger, 50, |i| {
        if i % 5 == 4 {
            let mut req = request(
                "kim",
                vec![line(SHARED, "*", 30, 1), line(POLICY, "kim", 6, 1)],
            );
            req.idempotency_key = Some("kim-1".into());
            return req;
        }
        let user = format!("user-{}", i % 4);
        // Half the requests list their lines the other way round.
        let mut lines = vec![line(SHARED, "*", 30, 1), line(POLICY, &user, 6, 1)];
        if i % 2 == 0 {
            lines.reverse();
        }
        request(&user, lines)
    })
    .await;
    let (mut reserved, mut duplicates, mut refused) = (0, 0, 0);
    for outcome in &outcomes {
        match outcome {
            ReserveOutcome::Reserved { .. } => reserved += 1,
            ReserveOutcome::Duplicate { .. } => duplicates += 1,
            ReserveOutcome::Exhausted { policy, .. } => {
                assert_eq!(
                    policy, POLICY,
                    "only per-subject budgets run out: {outcome:?}"
                );
                refused += 1;
            }
        }
    }
    // 40 unkeyed requests by 4 users with 6 each; kim's 10 retries are one reservation.
    assert_eq!(
        (reserved, duplicates, refused),
        (24 + 1, 9, 16),
        "{outcomes:?}"
    );
    assert_eq!(used(&*ledger, SHARED, "*").await, 25);
    for user in ["user-0", "user-1", "user-2", "user-3"] {
        assert_eq!(used(&*ledger, POLICY, user).await, 6, "{user}");
    }
    assert_eq!(used(&*ledger, POLICY, "kim").await, 1);
}

/// Settles (each sent twice), refunds and new reserves at once: every close applies once and
/// the bucket ends at exactly what is charged.
pub async fn a_burst_of_settles_refunds_and_reserves_keeps_the_budget_exact(store: Store) {
    let ledger = store.open().await;
    let first = concurrently(&ledger, 20, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 20, 1)])
    })
    .await;
    let ids: Vec<ReservationId> = first.iter().map(OutcomeExt::id).collect();
    let closes: Vec<_> = (0..30)
        .map(|n| {
            let (ledger, id) = (ledger.clone(), ids[n % 20]);
            tokio::spawn(async move {
                if n % 20 < 10 {
                    ledger.settle(id, &[1], 7, now()).await
                } else {
                    ledger.refund(id, now()).await
                }
            })
        })
        .collect();
    let more = concurrently(&ledger, 15, |i| {
        request(&format!("late-{i}"), vec![line(POLICY, "*", 20, 1)])
    })
    .await;
    let mut applied = vec![0; 20];
    for (n, close) in closes.into_iter().enumerate() {
        let resolution = close.await.expect("task").expect("close");
        let expected = if n % 20 < 10 {
            ReservationState::Settled
        } else {
            ReservationState::Refunded
        };
        assert_eq!(resolution.state, expected, "close {n}");
        applied[n % 20] += usize::from(resolution.applied);
    }
    assert_eq!(applied, vec![1; 20], "each reservation closes once");
    let late = more
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved { .. }))
        .count();
    assert!(
        late <= 10,
        "{late} late reserves fit into 10 released credits"
    );
    assert_eq!(used(&*ledger, POLICY, "*").await, 10 + late as i64);
    let log = whole_log(&*ledger).await;
    let settled: i64 = log
        .iter()
        .filter(|r| r.outcome == ReservationState::Settled)
        .map(|r| r.credits)
        .sum();
    let refunded = log
        .iter()
        .filter(|r| r.outcome == ReservationState::Refunded)
        .count();
    assert_eq!((settled, refunded, log.len()), (10, 10, 20));
}

/// Refunds of keyed reservations racing retries with the same keys (often in one batch): a
/// retry either finds the old reservation (it ran first) or reserves anew after the refund,
/// and the bucket holds exactly the new reservations.
pub async fn a_key_refunded_and_reused_in_one_burst_is_charged_at_most_once(store: Store) {
    let ledger = store.open().await;
    let keyed = |n: usize| {
        let mut req = request("alice", vec![line(POLICY, "alice", 100, 1)]);
        req.idempotency_key = Some(format!("key-{n}"));
        req
    };
    let mut old = Vec::new();
    for n in 0..20 {
        old.push(ledger.reserve(keyed(n)).await.expect("reserve").id());
    }
    let refunds: Vec<_> = old
        .iter()
        .map(|&id| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.refund(id, now()).await })
        })
        .collect();
    let retries = concurrently(&ledger, 20, keyed).await;
    for refund in refunds {
        let resolution = refund.await.expect("task").expect("refund");
        assert!(resolution.applied && resolution.state == ReservationState::Refunded);
    }
    let mut fresh = 0;
    for (n, outcome) in retries.iter().enumerate() {
        match outcome {
            ReserveOutcome::Reserved { id, .. } => {
                assert_ne!(*id, old[n], "key-{n}");
                fresh += 1;
            }
            ReserveOutcome::Duplicate { id, .. } => assert_eq!(*id, old[n], "key-{n}"),
            other => panic!("key-{n}: {other:?}"),
        }
    }
    assert_eq!(used(&*ledger, POLICY, "alice").await, fresh);
}

/// Each caller of a burst gets the id of its own reservation: refunding the ids returned to
/// every other caller releases exactly those callers' credits.
pub async fn each_caller_of_a_burst_gets_its_own_reservation(store: Store) {
    const CALLERS: usize = 40;
    let ledger = store.open().await;
    let outcomes = concurrently(&ledger, CALLERS, |i| {
        let user = format!("user-{i}");
        request(&user, vec![line(POLICY, &user, 100, i as u64 + 1)])
    })
    .await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if i % 2 == 0 {
            let refund = ledger.refund(outcome.id(), now()).await.expect("refund");
            assert!(refund.applied, "user-{i}: {refund:?}");
        }
    }
    for i in 0..CALLERS {
        let expected = if i % 2 == 0 { 0 } else { i as i64 + 1 };
        let user = format!("user-{i}");
        assert_eq!(used(&*ledger, POLICY, &user).await, expected, "{user}");
    }
}

/// Final-cost and held reserves in one burst, over budget: the batches write each kind with its
/// own state, and the usage log has exactly one row per final charge.
pub async fn a_burst_of_final_cost_and_held_reserves_logs_each_final_charge_once(store: Store) {
    let ledger = store.open().await;
    let outcomes = concurrently(&ledger, 80, |i| {
        let mut req = request(&format!("user-{i}"), vec![line(POLICY, "*", 50, 1)]);
        req.final_cost = i % 2 == 0;
        if i % 10 == 0 {
            req.idempotency_key = Some(format!("key-{i}"));
        }
        req
    })
    .await;
    let reserved: Vec<(usize, ReservationId)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            ReserveOutcome::Reserved { id, .. } => Some((i, *id)),
            _ => None,
        })
        .collect();
    assert_eq!(reserved.len(), 50, "{outcomes:?}");
    assert_eq!(used(&*ledger, POLICY, "*").await, 50);

    let logged: HashSet<ReservationId> = whole_log(&*ledger)
        .await
        .into_iter()
        .map(|row| {
            assert_eq!(
                (row.credits, row.outcome),
                (1, ReservationState::Charged),
                "{row:?}"
            );
            row.reservation
        })
        .collect();
    let finals: HashSet<ReservationId> = reserved
        .iter()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, id)| *id)
        .collect();
    assert!(!finals.is_empty());
    assert_eq!(
        logged, finals,
        "one row per final charge, none for the held ones"
    );

    // The held ones expire; the final ones are not open.
    let expired = ledger
        .sweep(now() + SignedDuration::from_mins(60))
        .await
        .expect("sweep");
    assert_eq!(expired as usize, reserved.len() - finals.len());
    assert_eq!(used(&*ledger, POLICY, "*").await, 50);
}

/// An operation the database refuses after its first writes (its usage row, here) fails alone:
/// the others of its burst — batched with it by either backend — are charged, settled and
/// logged, and nothing of the refused one stays.
pub async fn an_operation_the_database_refuses_fails_alone_in_its_burst(store: Store) {
    let ledger = store.open().await;
    store.refuse_usage_of_subject_refused().await;
    let subject = |i: usize| {
        if i % 10 == 3 {
            "refused".to_string()
        } else {
            format!("user-{i}")
        }
    };

    // Final costs: the usage row is written with the reservation.
    let reserves: Vec<_> = (0..40)
        .map(|i| {
            let (ledger, subject) = (ledger.clone(), subject(i));
            tokio::spawn(async move {
                let mut req = request(&subject, vec![line(POLICY, "*", 1_000, 1)]);
                req.final_cost = true;
                ledger.reserve(req).await
            })
        })
        .collect();
    for (i, task) in reserves.into_iter().enumerate() {
        let outcome = task.await.expect("task");
        match (subject(i).as_str(), outcome) {
            ("refused", Err(_)) | (_, Ok(ReserveOutcome::Reserved { .. })) => {}
            (who, other) => panic!("{who}: {other:?}"),
        }
    }
    assert_eq!(used(&*ledger, POLICY, "*").await, 36);

    // Held reserves (no usage row yet), then settled at once: the refused settle fails after
    // its bucket and line changes, which must not stay.
    let mut held = Vec::new();
    for i in 0..20 {
        let req = request(&subject(i), vec![line(POLICY, "*", 1_000, 2)]);
        held.push((subject(i), ledger.reserve(req).await.expect("reserve").id()));
    }
    assert_eq!(used(&*ledger, POLICY, "*").await, 36 + 40);
    let settles: Vec<_> = held
        .iter()
        .map(|(_, id)| {
            let (ledger, id) = (ledger.clone(), *id);
            tokio::spawn(async move { ledger.settle(id, &[5], 0, now()).await })
        })
        .collect();
    for ((who, _), task) in held.iter().zip(settles) {
        let settled = task.await.expect("task");
        assert_eq!(settled.is_err(), who == "refused", "{who}: {settled:?}");
    }
    assert_eq!(
        used(&*ledger, POLICY, "*").await,
        36 + 18 * 5 + 2 * 2,
        "18 settled at 5, the 2 refused still held at 2"
    );
    let log = whole_log(&*ledger).await;
    assert_eq!(log.len(), 36 + 18);
    assert!(log.iter().all(|row| row.subject != "refused"));
}
