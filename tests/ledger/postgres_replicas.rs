//! PostgreSQL only: several replicas sharing one database.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_the_database_admit_exactly_the_budget() {
    let store = crate::support::postgres("three_replicas").await;
    let replicas = [store.open().await, store.open().await, store.open().await];
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let ledger = replicas[i % 3].clone();
            let req = request(&format!("user-{i}"), vec![line(POLICY, "*", 50, 1)]);
            tokio::spawn(async move { ledger.reserve(req).await })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        if let ReserveOutcome::Reserved { .. } = task.await.expect("task").expect("reserve") {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 50);
    for replica in &replicas {
        assert_eq!(used(&**replica, POLICY, "*").await, 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_the_schema_once() {
    let store = crate::support::postgres("replicas_starting_together").await;
    let url = &store.url;
    let (a, b, c) = tokio::join!(ledger::open(url), ledger::open(url), ledger::open(url));
    for opened in [a, b, c] {
        opened.expect("every replica opens");
    }
}
