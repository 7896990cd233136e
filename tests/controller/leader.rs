//! One controller reconciles per Lease; another takes over when it is killed.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use crate::harness::*;
use crate::support;

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_another_takes_over_when_it_is_killed() {
    let (client, ns, api, _objects) = setup("cf-leader").await;
    let name = support::unique("fgtest-leader");
    let _cleanup = support::FlowiseCleanup(name.clone());
    flowise_chatflow(&name, None).await;
    let a = start(&client, settings(&ns));
    let b = start(&client, settings(&ns));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    support::eventually(20, "one leader", || async {
        (a.metrics.controller.is_leader() || b.metrics.controller.is_leader()).then_some(())
    })
    .await;
    assert!(
        !(a.metrics.controller.is_leader() && b.metrics.controller.is_leader()),
        "never two leaders"
    );
    let (leader, follower) = if a.metrics.controller.is_leader() {
        (a, b)
    } else {
        (b, a)
    };

    create(&api, chatflow_doc("first", json!({"flowiseName": name}))).await;
    wait_ready(&api, "first", "True", "Synced").await;
    // A reconcile is counted when it returns, just after its status write.
    support::eventually(10, "the leader counts its reconcile", || async {
        (leader.reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(follower.reconciles(), 0, "the follower does not reconcile");
    let holder = |lease: Lease| {
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    let before = holder(leases.get("flowgate-controller").await.expect("lease"));

    leader.kill();
    create(&api, chatflow_doc("second", json!({"flowiseName": name}))).await;
    // Lease duration 3 s: the follower takes over after it, then reconciles.
    wait_ready(&api, "second", "True", "Synced").await;
    assert!(follower.metrics.controller.is_leader());
    support::eventually(10, "the new leader counts its reconcile", || async {
        (follower.reconciles() > 0).then_some(())
    })
    .await;
    let after = holder(leases.get("flowgate-controller").await.expect("lease"));
    assert_ne!(before, after, "the Lease changed hands");
    follower.stop().await;
}
