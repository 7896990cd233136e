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
