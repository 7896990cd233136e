//! PostgreSQL only: several replicas sharing one database.

use super::*;

use std::sync::Arc;

use flowgate::config::LedgerUrl;
use flowgate::ledger::CreditLedger;
use tokio_postgres::error::SqlState;

/// Sends `n` reserves at once, round-robin over `replicas`; how many were reserved.
async fn reserved_across(
    replicas: &[Arc<dyn CreditLedger>],
    n: usize,
    make: impl Fn(usize) -> ledger::ReserveRequest,
) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (ledger, req) = (replicas[i % replicas.len()].clone(), make(i));
            tokio::spawn(async move { ledger.reserve(req).await })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        if let ReserveOutcome::Reserved { .. } = task.await.expect("task").expect("reserve") {
            reserved += 1;
        }
    }
    reserved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_the_database_admit_exactly_the_budget() {
    let store = crate::support::postgres("three_replicas").await;
    let replicas = [store.open().await, store.open().await, store.open().await];
    let reserved = reserved_across(&replicas, 200, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 50, 1)])
    })
    .await;
    assert_eq!(reserved, 50);
    for replica in &replicas {
        assert_eq!(used(&**replica, POLICY, "*").await, 50);
    }
}

/// A role whose transactions default to SERIALIZABLE (`ALTER ROLE … SET
/// default_transaction_isolation`): the ledger's transactions still run at READ COMMITTED (a
/// trigger notes the level each reservation is written at), so contended reserves do not fail
/// with serialization errors, and the budget stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_default_changes_nothing() {
    let store = crate::support::postgres("serializable_default").await;
    drop(store.open().await);
    store
        .execute(
            "CREATE TABLE levels (level text);
             CREATE FUNCTION note_level() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO levels VALUES (current_setting('transaction_isolation'));
                 RETURN NEW;
             END $$;
             CREATE TRIGGER note_level BEFORE INSERT ON reservations
                 FOR EACH ROW EXECUTE FUNCTION note_level();
             CREATE TRIGGER note_rate_level BEFORE INSERT OR UPDATE ON rate_limits
                 FOR EACH ROW EXECUTE FUNCTION note_level();",
        )
        .await;
    let LedgerUrl::Postgres(url) = &store.url else {
        unreachable!("a PostgreSQL store");
    };
    let url = LedgerUrl::Postgres(format!(
        "{url}%20-cdefault_transaction_isolation%3Dserializable"
    ));
    let open = || async { ledger::open(&url).await.expect("opens") };
    let replicas = [open().await, open().await];
    let reserved = reserved_across(&replicas, 120, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 40, 1)])
    })
    .await;
    assert_eq!(reserved, 40);
    replicas[0]
        .adjust(adjustment("*", 1))
        .await
        .expect("an adjustment, in its own transaction");
    for replica in &replicas {
        assert_eq!(
            used(&**replica, POLICY, "*").await,
            39,
            "1 credit given back"
        );
    }
    // Rate takes run outside the ledger's transactions, each statement its own.
    for replica in &replicas {
        replica
            .take_rate(
                "team-a/limited user:bob",
                Duration::from_secs(1),
                Duration::from_secs(5),
            )
            .await
            .expect("a rate take")
            .expect("PostgreSQL shares allowances");
    }
    assert!(store.count("SELECT count(*) FROM levels").await >= 43);
    assert_eq!(
        store
            .count("SELECT count(*) FROM levels WHERE level <> 'read committed'")
            .await,
        0,
        "every reservation written at READ COMMITTED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_the_schema_once() {
    let store = crate::support::postgres("replicas_starting_together").await;
    let url = &store.url;
    let (a, b, c) = tokio::join!(ledger::open(url), ledger::open(url), ledger::open(url));
    // The schema is created with plain CREATE TABLE and each migration recorded under its
    // version as primary key: a second creation or recording would fail its open.
    for opened in [a, b, c] {
        opened.expect("every replica opens");
    }
}

/// Replicas batch concurrently and lock buckets in one order whatever the order of a request's
/// lines; two-line requests listed both ways round neither deadlock nor overspend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_batching_two_line_requests_admit_exactly_the_budget() {
    const SHARED: &str = "team-a/shared";
    let store = crate::support::postgres("replicas_two_lines").await;
    let replicas = [store.open().await, store.open().await, store.open().await];
    let reserved = reserved_across(&replicas, 240, |i| {
        let user = format!("user-{}", i % 8);
        let mut lines = vec![line(SHARED, "*", 50, 1), line(POLICY, &user, 10, 1)];
        if i % 2 == 0 {
            lines.reverse();
        }
        request(&user, lines)
    })
    .await;
    assert_eq!(reserved, 50);
    assert_eq!(used(&*replicas[0], SHARED, "*").await, 50);
    let mut per_user = 0;
    for user in 0..8 {
        let used = used(&*replicas[1], POLICY, &format!("user-{user}")).await;
        assert!(used <= 10, "user-{user} used {used}");
        per_user += used;
    }
    assert_eq!(per_user, 50);
}

/// 20 reserves at once, of `user-{i}` on `line(i)`, the 8th by a subject PostgreSQL refuses (a
/// NUL byte in a text column): it sends the batch it lands in down the one-operation path.
/// Their outcomes by `i`.
async fn burst_with_a_refused_request(
    ledger: &Arc<dyn CreditLedger>,
    line: impl Fn(usize) -> ledger::BudgetLine,
) -> Vec<(usize, Result<ReserveOutcome, LedgerError>)> {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let ledger = ledger.clone();
            let subject = if i == 7 {
                "bad\0subject".to_string()
            } else {
                format!("user-{i}")
            };
            let req = request(&subject, vec![line(i)]);
            tokio::spawn(async move { (i, ledger.reserve(req).await) })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

/// A request PostgreSQL refuses (a NUL byte in a text column) fails alone: the requests
/// batched with it are decided one by one, exactly (a budget of 10 for 19 good requests), and
/// the refusals of that path name the policy as the batch's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_database_refuses_fails_alone() {
    let store = crate::support::postgres("refused_alone").await;
    let ledger = store.open().await;
    let (mut reserved, mut refused) = (0, 0);
    for (i, outcome) in burst_with_a_refused_request(&ledger, |_| line(POLICY, "*", 10, 1)).await {
        match (i, outcome) {
            // Refused by PostgreSQL, or by the budget before it reached PostgreSQL.
            (7, Err(LedgerError::Postgres(_)) | Ok(ReserveOutcome::Exhausted { .. })) => {}
            (7, other) => panic!("the NUL subject was not refused: {other:?}"),
            (_, Ok(ReserveOutcome::Reserved { .. })) => reserved += 1,
            (
                _,
                Ok(ReserveOutcome::Exhausted {
                    policy, remaining, ..
                }),
            ) => {
                assert_eq!((policy.as_str(), remaining), (POLICY, 0));
                refused += 1;
            }
            (i, other) => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 9));
    assert_eq!(used(&*ledger, POLICY, "*").await, 10);
}

/// The one-operation path a refused batch falls back to admits what the batch admits: an
/// amount larger than the budget into a bucket an admin gave credits to (a negative `used`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_path_admits_into_buckets_given_credits() {
    let store = crate::support::postgres("fallback_given").await;
    let ledger = store.open().await;
    for i in 0..20 {
        ledger
            .adjust(adjustment(&format!("user-{i}"), 7))
            .await
            .expect("7 credits given");
    }
    let given = |i| line(POLICY, &format!("user-{i}"), 10, 17);
    for outcome in burst_with_a_refused_request(&ledger, given).await {
        match outcome {
            (7, _) => {}
            (_, Ok(ReserveOutcome::Reserved { remaining, .. })) => {
                assert_eq!(remaining, vec![(POLICY.to_string(), 0)]);
            }
            (i, other) => panic!("request {i}: 10 + 7 credits fit 17, got {other:?}"),
        }
    }
}

/// A replica starts while another's write is open: its schema check takes no table lock once
/// the tables and indexes exist (CREATE INDEX IF NOT EXISTS would wait for the write to end,
/// and every write after it would wait for the start).
#[tokio::test]
async fn a_replica_starts_while_another_holds_a_write_open() {
    let store = crate::support::postgres("start_during_write").await;
    let _first = store.open().await;
    let mut sql = store.sql().await;
    let tx = sql.transaction().await.expect("begin");
    for insert in [
        "INSERT INTO buckets (policy, bucket, window_start, used) VALUES ('p', 'b', 0, 0)",
        "INSERT INTO reservations (subject, chatflow, state, created_us, expires_us, updated_us)
         VALUES ('s', 'c', 'reserved', 0, 0, 0)",
        "INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
         VALUES (0, 0, 's', 'c', 'p', 0, 0, 'charged')",
        "INSERT INTO chat_turns (chat, replica, turn, expires_us) VALUES ('c', 'r', 0, 0)",
    ] {
        tx.execute(insert, &[]).await.expect("write");
    }
    let second = tokio::time::timeout(Duration::from_secs(10), ledger::open(&store.url))
        .await
        .expect("the start waits for no write")
        .expect("opens");
    drop(second);
    tx.rollback().await.expect("rollback");
}

/// A ledger in a schema ahead of another flowgate's on the search path (a per-user schema in
/// front of `public`) gets its own indexes: the look-up before each is in its own schema.
#[tokio::test]
async fn a_schema_ahead_on_the_search_path_gets_its_own_indexes() {
    let behind = crate::support::postgres("search_path_behind").await;
    drop(behind.open().await);
    let ahead = crate::support::postgres("search_path_ahead").await;
    let (LedgerUrl::Postgres(ahead_url), LedgerUrl::Postgres(behind_url)) =
        (&ahead.url, &behind.url)
    else {
        panic!("PostgreSQL stores");
    };
    let behind_schema = behind_url.rsplit("%3D").next().expect("schema");
    let url = LedgerUrl::Postgres(format!("{ahead_url},{behind_schema}"));
    let ledger = ledger::open(&url).await.expect("opens ahead of the other");
    // Keyed reserves need the ahead schema's own unique index (ON CONFLICT infers it).
    let mut keyed = request("alice", vec![line(POLICY, "alice", 10, 1)]);
    keyed.idempotency_key = Some("k".into());
    assert!(matches!(
        ledger.reserve(keyed).await.expect("reserve"),
        ReserveOutcome::Reserved { .. }
    ));
    ahead.late_index_built().await;
    let sql = ahead.sql().await;
    let ahead_schema = ahead_url.rsplit("%3D").next().expect("schema");
    let row = sql
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname NOT LIKE '%pkey'",
            &[&ahead_schema],
        )
        .await
        .expect("indexes");
    assert_eq!(row.get::<_, i64>(0), 9, "every index, in its own schema");
}

/// A batch PostgreSQL aborts leaves no transaction open on its connection: every request after
/// a refused one is served.
#[tokio::test]
async fn the_connection_of_a_refused_batch_serves_the_next_request() {
    let store = crate::support::postgres("refused_then_served").await;
    let ledger = store.open().await;
    for round in 0..3 {
        let bad = request("bad\0subject", vec![line(POLICY, "*", 100, 1)]);
        // Refused for what it holds, not for a transaction left aborted on the connection.
        let bad = ledger.reserve(bad).await;
        assert!(
            matches!(&bad, Err(LedgerError::Postgres(e))
                if e.code() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)),
            "round {round}: {bad:?}"
        );
        let good = request(&format!("user-{round}"), vec![line(POLICY, "*", 100, 1)]);
        let good = ledger.reserve(good).await;
        assert!(
            matches!(good, Ok(ReserveOutcome::Reserved { .. })),
            "round {round}: {good:?}"
        );
    }
    assert_eq!(used(&*ledger, POLICY, "*").await, 3);
}

/// Three replicas pruning at once, while a fourth settles some of the old reservations, split
/// the work between them (`SKIP LOCKED`): every old closed reservation and usage row is deleted
/// exactly once, none fails, and the budget does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_pruning_at_once_delete_each_row_once() {
    use flowgate::ledger::retention;
    use jiff::SignedDuration;

    let store = crate::support::postgres("replicas_pruning").await;
    let writer = store.open().await;
    let later = |hours| now() + SignedDuration::from_hours(hours);
    let mut open = Vec::new();
    for i in 0..600 {
        let mut req = request(&format!("user-{i}"), vec![line(POLICY, "*", 10_000, 1)]);
        req.final_cost = i % 3 != 0;
        let id = writer.reserve(req).await.expect("reserve").id();
        if i % 3 == 0 {
            open.push(id);
        }
    }
    // A third were held: settle half of those before the cutoff (old, prunable), and the other
    // half while the prune runs, after it (kept).
    let (early, late) = open.split_at(open.len() / 2);
    for &id in early {
        writer.settle(id, &[1], 0, later(1)).await.expect("settle");
    }
    let budget = used(&*writer, POLICY, "*").await;

    let cutoff = later(24);
    let replicas = [store.open().await, store.open().await, store.open().await];
    let pruning: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let replica = replica.clone();
            tokio::spawn(
                async move { retention::prune(&*replica, cutoff, 50, Duration::ZERO).await },
            )
        })
        .collect();
    for &id in late {
        // A settle may race the prune of a neighbouring chunk but never loses its reservation:
        // held ones are not prunable.
        writer
            .settle(id, &[1], 0, later(48))
            .await
            .expect("late settle");
    }
    let mut reservations = 0;
    let mut usage = 0;
    for task in pruning {
        let pruned = task.await.expect("task").expect("prune");
        reservations += pruned.reservations;
        usage += pruned.usage;
    }
    // Rows a replica skipped because another held them are deleted by that other one; anything
    // still left (skipped under a settle's lock) goes in the next run.
    let rest = retention::prune(&*writer, cutoff, 50, Duration::ZERO)
        .await
        .expect("prune again");
    assert_eq!(
        reservations + rest.reservations,
        400 + 100,
        "final costs and early settles"
    );
    assert_eq!(usage + rest.usage, 400 + 100, "one usage row each");
    assert_eq!(
        used(&*writer, POLICY, "*").await,
        budget,
        "budgets are kept"
    );
    let left = whole_log(&*writer).await;
    assert_eq!(left.len(), late.len(), "only the late settles' rows");
}

#[tokio::test]
async fn sqlite_shares_neither_rate_allowances_nor_chat_turns() {
    let ledger = crate::support::sqlite().open().await;
    let take = ledger
        .take_rate("k", Duration::from_secs(1), Duration::ZERO)
        .await
        .expect("take");
    assert_eq!(take, None, "one replica counts in its own process");
    let turn = ledger.begin_turn("chat-1").await.expect("asked");
    assert_eq!(turn, None, "one replica keeps its turns in its own process");
}

/// A chat's turn is one replica's at a time: another replica is refused until it ends, a
/// replica's own stale turn is taken over (its end is on its way), a stale end does not end
/// the turn that took over, and a turn its replica stopped renewing is taken once its lease passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_chats_turn() {
    use flowgate::ledger::SharedTurn;

    let store = crate::support::postgres("replicas_chat_turns").await;
    let (a, b) = (store.open().await, store.open().await);
    let begin = |ledger: &Arc<dyn CreditLedger>, chat: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger
                .begin_turn(chat)
                .await
                .expect("asked")
                .expect("shared")
        }
    };
    let SharedTurn::Taken(first) = begin(&a, "chat-1").await else {
        panic!("a free chat is taken");
    };
    assert_eq!(begin(&b, "chat-1").await, SharedTurn::Busy);
    assert!(matches!(begin(&b, "chat-2").await, SharedTurn::Taken(_)));
    // `a` takes the chat again while its first turn's row is still there (as when that turn's
    // end has not reached the database yet): a replica's own row is taken over.
    let SharedTurn::Taken(second) = begin(&a, "chat-1").await else {
        panic!("a replica's own turn is taken over");
    };
    assert_ne!(first, second);
    let SharedTurn::Taken(other) = begin(&a, "chat-3").await else {
        panic!("a free chat is taken");
    };
    a.end_turn(first);
    a.end_turn(other);
    // Ends run in order: once chat-3 is free, the stale end of chat-1 has run too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while begin(&b, "chat-3").await == SharedTurn::Busy {
        assert!(tokio::time::Instant::now() < deadline, "chat-3 never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        begin(&b, "chat-1").await,
        SharedTurn::Busy,
        "the stale end did not end the turn that took over"
    );
    // `a` stops renewing (as if it had stopped): once the lease passed the chat is free.
    store
        .execute("UPDATE chat_turns SET expires_us = 0 WHERE chat = 'chat-1'")
        .await;
    assert!(matches!(begin(&b, "chat-1").await, SharedTurn::Taken(_)));
    assert_eq!(begin(&a, "chat-1").await, SharedTurn::Busy);
    // The sweep deletes passed leases, and only those.
    store
        .execute("UPDATE chat_turns SET expires_us = 0 WHERE chat = 'chat-2'")
        .await;
    a.sweep(now()).await.expect("sweep");
    assert_eq!(
        store
            .count("SELECT count(*) FROM chat_turns WHERE chat = 'chat-2'")
            .await,
        0
    );
    assert_eq!(store.count("SELECT count(*) FROM chat_turns").await, 2);
}

/// A chat's prediction that just ended on one replica (its turn's end queued there, not yet
/// written) and the client asking again at once through another replica: the chat is asked for
/// once more a moment later before it is `chat_busy`. One still running stays busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_ended_on_another_replica_just_before_is_taken() {
    use flowgate::ledger::SharedTurn;
    use flowgate::proxy::ProxyError;
    use flowgate::proxy::turns::ChatTurns;

    let store = crate::support::postgres("replicas_turn_recheck").await;
    let (a, b) = (store.open().await, store.open().await);
    let on_b = ChatTurns::shared(b.clone());
    let Ok(Some(SharedTurn::Taken(first))) = a.begin_turn("chat-1").await else {
        panic!("a free chat is taken");
    };
    let ending = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.end_turn(first);
        })
    };
    let turn = on_b
        .begin("chat-1", true)
        .await
        .expect("taken once its end landed");
    ending.await.expect("ended");
    drop(turn);
    let Ok(Some(SharedTurn::Taken(_))) = a.begin_turn("chat-2").await else {
        panic!("a free chat is taken");
    };
    assert!(matches!(
        on_b.begin("chat-2", true).await,
        Err(ProxyError::ChatBusy)
    ));
}

/// A take its asker gives up on (a client gone, the proxy's time limit) ends, whenever it is
/// given up: the chat is free for another replica at once, not after a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_given_up_on_ends() {
    use flowgate::ledger::SharedTurn;

    let store = crate::support::postgres("replicas_turn_given_up").await;
    let (a, b) = (store.open().await, store.open().await);
    let chats: Vec<String> = (0..20).map(|i| format!("chat-{i}")).collect();
    for (i, chat) in chats.iter().enumerate() {
        // Given up at different points of its round trip.
        let wait = Duration::from_micros(50 * i as u64);
        if let Ok(Ok(Some(SharedTurn::Taken(turn)))) =
            tokio::time::timeout(wait, a.begin_turn(chat)).await
        {
            // Answered in time: its asker ends it (as a prediction's turn does when dropped).
            a.end_turn(turn);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for chat in &chats {
        loop {
            match b.begin_turn(chat).await.expect("asked") {
                Some(SharedTurn::Taken(_)) => break,
                Some(SharedTurn::Busy) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{chat} still held by a turn nobody holds"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None => panic!("PostgreSQL shares turns"),
            }
        }
    }
}

/// A replica closing at shutdown writes what its writers still have queued (the refunds of
/// requests the drain cut), and lets go of its chat turns at once rather than after their
/// lease: a chat whose stream was cut is free on the other replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_replica_finishes_its_queue_and_lets_go_of_its_turns() {
    use flowgate::ledger::SharedTurn;

    let store = crate::support::postgres("replicas_close").await;
    let (a, b) = (store.open().await, store.open().await);
    let Some(SharedTurn::Taken(_)) = a.begin_turn("chat-1").await.expect("asked") else {
        panic!("a free chat is taken");
    };
    assert_eq!(
        b.begin_turn("chat-1").await.expect("asked"),
        Some(SharedTurn::Busy)
    );
    let make = |i: usize| request(&format!("user-{i}"), vec![line(POLICY, "*", 1_000, 1)]);
    a.reserve(make(0)).await.expect("the bucket exists");
    // The bucket's row held by someone else: the writers' batches wait behind it.
    let holder = store.sql().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM buckets FOR UPDATE")
        .await
        .expect("locked");
    let queued: Vec<_> = (1..=20)
        .map(|i| {
            let (a, request) = (a.clone(), make(i));
            tokio::spawn(async move { a.reserve(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.batch_execute("COMMIT").await.expect("released");
    });
    a.close(Duration::from_secs(5)).await.expect("closed");
    assert_eq!(
        store.count("SELECT count(*) FROM reservations").await,
        21,
        "every reserve queued before the close is written when it returns"
    );
    assert!(
        matches!(
            b.begin_turn("chat-1").await.expect("asked"),
            Some(SharedTurn::Taken(_))
        ),
        "the closing replica's turn is gone"
    );
    release.await.expect("released");
    for task in queued {
        task.await.expect("task").expect("reserved");
    }
}

/// A role that only uses the tables (a DBA made them; PostgreSQL 15 grants CREATE on a schema to
/// no one by default) starts on them and charges: CREATE TABLE IF NOT EXISTS would have needed
/// CREATE on the schema even with every table there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_only_uses_the_tables_starts_on_them() {
    let store = crate::support::postgres("replicas_app_role").await;
    store.open().await;
    // The grants below change the tables' catalog rows, as the index build the ledger started
    // does: one after the other, not both at once.
    store.late_index_built().await;
    let sql = store.sql().await;
    let schema: String = sql
        .query_one("SELECT current_schema()", &[])
        .await
        .expect("schema")
        .get(0);
    sql.batch_execute(&format!(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'flowgate_app_test') THEN
             DROP OWNED BY flowgate_app_test; DROP ROLE flowgate_app_test;
         END IF; END $$;
         CREATE ROLE flowgate_app_test LOGIN;
         GRANT USAGE ON SCHEMA {schema} TO flowgate_app_test;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO flowgate_app_test;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO flowgate_app_test;"
    ))
    .await
    .expect("a role that only uses the tables");
    let LedgerUrl::Postgres(url) = &store.url else {
        panic!("a PostgreSQL store");
    };
    let app = LedgerUrl::Postgres(url.replacen("postgres@", "flowgate_app_test@", 1));
    crate::support::opens_and_charges(&app).await;
    sql.batch_execute("DROP OWNED BY flowgate_app_test; DROP ROLE flowgate_app_test")
        .await
        .expect("cleaned up");
}
