//! The PostgreSQL ledger's indexes added after tables may have grown: built concurrently, in the
//! background, after start (a plain CREATE INDEX would hold every write meanwhile); an invalid
//! one an interrupted build left is built again.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chatflow_index_is_built_after_start_and_rebuilt_when_invalid() {
    let store = support::postgres("late_indexes").await;
    let ledger = store.open().await;
    store.late_index_built().await;
    ledger
        .reserve(request("alice", vec![line(POLICY, "alice", 10, 1)]))
        .await
        .expect("reserve");
    drop(ledger);
    // What a build cut short (its replica gone) leaves; the test's role may mark it so.
    store
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = \
             to_regclass(quote_ident(current_schema()) || '.usage_by_chatflow')",
        )
        .await;
    assert_eq!(store.chatflow_index().await, Some(false));
    let ledger = store.open().await;
    store.late_index_built().await;
    let rows = ledger
        .usage(UsageFilter {
            chatflow: Some("team-a/support-bot".into()),
            ..UsageFilter::default()
        })
        .await
        .expect("usage");
    assert!(rows.is_empty(), "a held reservation is not in the log yet");
}

/// Two installations in one database (a schema each) build their indexes side by side: one
/// whose build is still going does not make the other skip its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_in_another_schema_does_not_hold_this_ones_back() {
    let (first, second) = (
        support::postgres("late_indexes_first").await,
        support::postgres("late_indexes_second").await,
    );
    // A build waits for every older snapshot in the database (a pg_dump's, say): this one
    // keeps the first build going until it ends.
    let holder = first.sql().await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class")
        .await
        .expect("an old snapshot");
    let _first = first.open().await;
    first
        .chatflow_index_becomes("being built", |state| state == Some(false))
        .await;
    let _second = second.open().await;
    second
        .chatflow_index_becomes("started while the first build goes on", |state| {
            state.is_some()
        })
        .await;
    holder
        .batch_execute("COMMIT")
        .await
        .expect("snapshot let go");
    first.late_index_built().await;
    second.late_index_built().await;
}
