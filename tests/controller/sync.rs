//! Resync without storms, Flowise down and back, import and the sync counts.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

use crate::harness::*;
use crate::support;
use flowgate::controller::SyncOutcome;
use flowgate::flowise::FlowiseApi;

#[tokio::test]
async fn reconciles_settle_and_a_resync_of_an_unchanged_chatflow_writes_nothing() {
    let (client, ns, api, _objects) = setup("cf-settle").await;
    let name = support::unique("fgtest-settle");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let mut fast = settings(&ns);
    fast.sync_interval = Duration::from_secs(1);
    let controller = start(&client, fast);

    create(&api, owned_doc("quiet", &name, "Delete")).await;
    wait_ready(&api, "quiet", "True", "Synced").await;
    // The create's writes (its announcement in status, then its outcome) each bring a
    // reconcile, which may see the object as the cache had it a moment before and write the
    // same status again: wait until no write has come for two seconds.
    let mut writes = controller.metrics.controller.status_writes("Chatflow");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = controller.metrics.controller.status_writes("Chatflow");
        if now == writes {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status is still written at every resync after 30 s ({now} writes)"
        );
        writes = now;
    }
    let cf = api.get("quiet").await.expect("read");
    let reconciles = controller.reconciles();

    // Observing that nothing happens needs a window: five resync intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let after = api.get("quiet").await.expect("read");
    assert_eq!(
        after.resource_version(),
        cf.resource_version(),
        "no write on resync"
    );
    assert_eq!(
        controller.metrics.controller.status_writes("Chatflow"),
        writes
    );
    let resyncs = controller.reconciles() - reconciles;
    assert!(
        (2..=12).contains(&resyncs),
        "about one reconcile per second, no storm: {resyncs}"
    );
    let last = controller.sync.last().expect("sync passes ran");
    assert_eq!(last.outcome, SyncOutcome::Success);
    assert_eq!(last.result.existing_chatflows_updated, 0);
    assert_eq!(named_in_flowise(&name).await.len(), 1);
    controller.stop().await;
}

#[tokio::test]
async fn flowise_down_marks_chatflows_unreachable_deletes_nothing_and_recovers() {
    let (client, ns, api, _objects) = setup("cf-down").await;
    let name = support::unique("fgtest-down");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let adopted = flowise_chatflow(&format!("{name}-adopted"), None).await;
    let gate = support::FlowiseGate::open_to_flowise().await;
    let mut fast = settings(&ns);
    fast.sync_interval = Duration::from_secs(2);
    let controller = start_with(&client, fast, flowise_at(&gate.url()));

    create(&api, owned_doc("owned", &name, "Delete")).await;
    create(
        &api,
        chatflow_doc("adopted", json!({"flowiseId": adopted.id})),
    )
    .await;
    let owned = wait_ready(&api, "owned", "True", "Synced").await;
    wait_ready(&api, "adopted", "True", "Synced").await;
    let owned_id = owned.status.and_then(|s| s.flowise_id).expect("id");

    gate.close();
    // Ready as they were (the proxy keeps serving them), the reason says Flowise is unreachable.
    for object in ["owned", "adopted"] {
        let cf = wait_ready(&api, object, "True", "FlowiseUnreachable").await;
        assert!(
            cf.status.and_then(|s| s.flowise_id).is_some(),
            "last known id kept"
        );
    }
    let last = support::eventually(10, "a failed sync pass", || async {
        controller
            .sync
            .last()
            .filter(|r| r.outcome == SyncOutcome::Failed)
    })
    .await;
    assert!(
        last.result.errors[0].contains("listing Flowise chatflows"),
        "{:?}",
        last.result.errors
    );
    assert!(
        api.get_opt("owned").await.expect("read").is_some(),
        "nothing deleted"
    );
    assert!(
        support::flowise()
            .get(&owned_id)
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        support::flowise()
            .get(&adopted.id)
            .await
            .expect("read")
            .is_some()
    );
    wait_for_event(&client, &ns, "owned", "FlowiseUnreachable").await;

    gate.reopen().await;
    wait_ready(&api, "owned", "True", "Synced").await;
    wait_ready(&api, "adopted", "True", "Synced").await;
    assert_eq!(
        named_in_flowise(&name).await.len(),
        1,
        "no duplicate after recovery"
    );
    controller.stop().await;
}

#[tokio::test]
async fn import_creates_one_labelled_chatflow_per_unclaimed_chatflow_and_reports_vanished_ones() {
    let (client, ns, api, _objects) = setup("cf-import").await;
    let prefix = support::unique("fgtest-import");
    let _cleanup = support::FlowiseCleanup(prefix.clone());
    let first = flowise_chatflow(&format!("{prefix} First"), None).await;
    let second = flowise_chatflow(&format!("{prefix} Second"), None).await;
    let claimed = flowise_chatflow(&format!("{prefix} Claimed"), None).await;
    create(
        &api,
        chatflow_doc("claimed", json!({"flowiseId": claimed.id})),
    )
    .await;

    let mut import = settings(&ns);
    import.import_namespace = Some(ns.clone());
    import.import_name_prefix = Some(prefix.clone());
    let controller = start(&client, import);

    let pass = support::eventually(30, "the first sync pass", || async {
        controller.sync.last()
    })
    .await;
    assert_eq!(
        pass.outcome,
        SyncOutcome::Success,
        "{:?}",
        pass.result.errors
    );
    assert_eq!(pass.result.new_chatflows_added, 2);
    assert_eq!(pass.result.total_chatflows_synced, 3);
    assert_eq!(pass.result.chatflows_removed, 0);

    let imported = api
        .list(&ListParams::default().labels("flowgate.io/imported=true"))
        .await
        .expect("list")
        .items;
    let mut ids: Vec<String> = imported
        .iter()
        .filter_map(|c| c.spec.flowise_id.clone())
        .collect();
    ids.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "one object per unclaimed chatflow");
    let first_object = imported
        .iter()
        .find(|c| c.spec.flowise_id.as_deref() == Some(first.id.as_str()))
        .expect("first imported")
        .name_any();
    assert!(first_object.ends_with(&first.id[..8]), "{first_object}");
    for cf in &imported {
        wait_ready(&api, &cf.name_any(), "True", "Synced").await;
    }
    wait_ready(&api, "claimed", "True", "Synced").await;

    let again = controller.sync.sync_now().await;
    assert_eq!(
        (
            again.new_chatflows_added,
            again.existing_chatflows_updated,
            again.chatflows_removed
        ),
        (0, 0, 0),
        "idempotent: {again:?}"
    );
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        3
    );

    support::flowise()
        .delete(&second.id)
        .await
        .expect("deleted in Flowise");
    let removed = controller.sync.sync_now().await;
    assert_eq!(removed.chatflows_removed, 1, "{removed:?}");
    assert_eq!(removed.total_chatflows_synced, 2);
    let second_object = imported
        .iter()
        .find(|c| c.spec.flowise_id.as_deref() == Some(second.id.as_str()))
        .expect("second imported")
        .name_any();
    wait_ready(&api, &second_object, "False", "NotFoundInFlowise").await;
    assert!(
        api.get_opt(&second_object).await.expect("read").is_some(),
        "never deleted"
    );
    let after = controller.sync.sync_now().await;
    assert_eq!(after.chatflows_removed, 0, "counted once: {after:?}");

    let text = controller.metrics.encode().expect("metrics encode");
    assert!(
        text.contains("flowgate_sync_chatflows_total{change=\"added\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_sync_chatflows_total{change=\"removed\"} 1"),
        "{text}"
    );
    controller.stop().await;
}
