//! PostgreSQL only: reserves whose callers went away while the database was slow (their futures
//! dropped, as when a client hangs up) leave nothing charged once it answers again: one still
//! queued is never written, one whose batch was running is refunded by the ledger itself, and
//! none holds a budget that live callers would be refused for.

use super::*;

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserves_whose_callers_left_while_the_database_was_slow_charge_nothing() {
    let store = crate::support::postgres("abandoned_reserves").await;
    let ledger = store.open().await;
    let shared = |who: &str| request(who, vec![line(POLICY, "*", 100, 1)]);
    let seed = ledger.reserve(shared("seed")).await.expect("reserve").id();
    ledger.refund(seed, now()).await.expect("refund");
    // Another session holds the budget's row: every batch that charges it waits.
    let holder = store.sql().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM buckets FOR UPDATE")
        .await
        .expect("row held");
    // One reserve takes the first writer into a waiting batch, three the second; ten queue.
    let mut callers = Vec::new();
    for (wave, count) in [(1, 1), (2, 3), (3, 10)] {
        for i in 0..count {
            let (ledger, request) = (Arc::clone(&ledger), shared(&format!("w{wave}-{i}")));
            callers.push(tokio::spawn(async move { ledger.reserve(request).await }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(callers.iter().all(|c| !c.is_finished()), "all wait");
    // Their clients go away; then the database answers again.
    for caller in &callers {
        caller.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.batch_execute("COMMIT").await.expect("row let go");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while used(&*ledger, POLICY, "*").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still charged: {}",
            used(&*ledger, POLICY, "*").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |filter: &str| {
        let sql = format!("SELECT count(*) FROM reservations WHERE {filter}");
        let store = &store;
        async move { store.count(&sql).await }
    };
    // The two writers' batches ran and committed (each took one reserve or more of the first
    // two waves); the rest was never written.
    assert_eq!(count("subject LIKE 'w3-%'").await, 0, "never written");
    let written = count("subject LIKE 'w%'").await;
    assert!((2..=4).contains(&written), "{written} written");
    let refunded = count("subject LIKE 'w%' AND state = 'refunded'").await;
    assert_eq!(refunded, written, "what was written is refunded");
    // A live caller has the whole budget.
    let live = ledger
        .reserve(request("live", vec![line(POLICY, "*", 1, 1)]))
        .await
        .expect("reserve");
    assert!(matches!(live, ReserveOutcome::Reserved { .. }), "{live:?}");
}

/// The answer was sent and never read: its caller went away between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_answered_but_never_read_is_refunded() {
    let store = crate::support::postgres("abandoned_unread").await;
    let ledger = store.open().await;
    let mut reserve = ledger.reserve(request("alice", vec![line(POLICY, "alice", 10, 3)]));
    assert!(futures::poll!(&mut reserve).is_pending(), "queued");
    answered(&store).await;
    drop(reserve);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while used(&*ledger, POLICY, "alice").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still charged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refunded = "SELECT count(*) FROM reservations WHERE state = 'refunded'";
    assert_eq!(store.count(refunded).await, 1);
}

/// The refund of a reserve whose caller went away meets a failing database (here its statements
/// are cancelled, as a `statement_timeout` or a failover would): it is retried until it lands,
/// not lost with the batch it was in. A flat cost's reservation is a final charge no sweep gives
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_of_an_abandoned_reserve_is_retried_until_it_lands() {
    let store = crate::support::postgres("abandoned_retried").await;
    let ledger = store.open().await;
    store
        .sql()
        .await
        .batch_execute(
            "CREATE TABLE failing (on_purpose BOOLEAN);
             INSERT INTO failing VALUES (true);
             CREATE FUNCTION cancel_refunds() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.state = 'refunded' AND EXISTS (SELECT 1 FROM failing) THEN
                     RAISE EXCEPTION 'cancelled by the test' USING ERRCODE = 'query_canceled';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER cancel_refunds BEFORE UPDATE ON reservations
                 FOR EACH ROW EXECUTE FUNCTION cancel_refunds();",
        )
        .await
        .expect("trigger");
    let mut charged = request("alice", vec![line(POLICY, "alice", 10, 3)]);
    charged.final_cost = true;
    let mut reserve = ledger.reserve(charged);
    assert!(futures::poll!(&mut reserve).is_pending(), "queued");
    // Nobody reads the answer.
    answered(&store).await;
    drop(reserve);
    // Refunds fail for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        used(&*ledger, POLICY, "alice").await,
        3,
        "still charged meanwhile"
    );
    store
        .sql()
        .await
        .batch_execute("DELETE FROM failing")
        .await
        .expect("the database recovers");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while used(&*ledger, POLICY, "alice").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refund was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refunded = "SELECT count(*) FROM reservations WHERE state = 'refunded'";
    assert_eq!(store.count(refunded).await, 1);
}

/// Waits until the one reservation queued is committed, and its answer sent (the writer answers
/// right after its commit).
async fn answered(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.count("SELECT count(*) FROM reservations").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}
