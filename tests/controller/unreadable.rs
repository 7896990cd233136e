//! Objects of every kind that the API server stored but flowgate cannot read (written here
//! straight into etcd, as an object from before a CRD bound is): each is reported once, naming
//! the field, by a Warning Event; the other objects of its kind are reconciled as usual. This
//! API server (1.20, no CRD validation ratcheting) refuses their status, as every version does
//! for a value of the wrong type; where it takes it, `Ready` says the same (a unit test in
//! `controller::unreadable`).

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy, Lenient};

use crate::harness::{chatflow_doc, create, flowise_chatflow, settings, setup, start, wait_ready};
use crate::support::{self, edit_in_etcd};

#[tokio::test]
async fn unreadable_objects_are_reported_and_the_rest_of_their_kind_reconciled() {
    let (client, ns, chatflows, _objects) = setup("unread").await;
    let accesses: Api<ChatflowAccess> = Api::namespaced(client.clone(), &ns);
    let policies: Api<CreditPolicy> = Api::namespaced(client.clone(), &ns);
    let access = |name: &str| {
        json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
               "metadata": {"name": name},
               "spec": {"chatflows": ["*"], "subjects": [{"user": "alice"}]}})
    };
    create(&accesses, access("fine")).await;
    create(&accesses, access("broken")).await;
    create(
        &policies,
        json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
               "metadata": {"name": "broken"},
               "spec": {"chatflows": ["*"], "budget": {"credits": 10, "period": "Monthly"}}}),
    )
    .await;
    create::<Chatflow>(
        &chatflows,
        chatflow_doc(
            "broken",
            json!({"flowiseId": "00000000-0000-4000-8000-00000000dead"}),
        ),
    )
    .await;
    edit_in_etcd("chatflowaccesses", &ns, "broken", |o| {
        o["spec"]["rateLimit"] = json!({"requests": -1, "per": "Second"});
    })
    .await;
    // A value of the wrong type: the API server refuses a status for it on every version.
    edit_in_etcd("creditpolicies", &ns, "broken", |o| {
        o["spec"]["budget"]["credits"] = json!("many");
    })
    .await;
    edit_in_etcd("chatflows", &ns, "broken", |o| {
        o["spec"]["deletionPolicy"] = json!("Sometimes");
    })
    .await;
    // Requeued every 2 s: a report that wrote each time would show in the resourceVersions.
    let mut settings = settings(&ns);
    settings.sync_interval = Duration::from_secs(2);
    let controller = start(&client, settings);

    let fine = wait_ready(&accesses, "fine", "True", "Active").await;
    assert_eq!(fine.metadata.name.as_deref(), Some("fine"));
    let cases = [
        ("ChatflowAccess", "spec.rateLimit.requests"),
        ("CreditPolicy", "spec.budget.credits"),
        ("Chatflow", "spec.deletionPolicy"),
    ];
    for (kind, field) in cases {
        let note = crate::support::eventually(30, &format!("the {kind}'s report"), || async {
            reports(&client, &ns)
                .await
                .into_iter()
                .find(|(k, _, _)| k == kind)
                .map(|(_, note, _)| note)
        })
        .await;
        assert!(
            note.contains(field) && note.contains("cannot be read"),
            "{kind}: {note}"
        );
    }

    // Reported once: resyncs every 2 s find it reported and send nothing more.
    let before = reports(&client, &ns).await;
    let reconciles = controller.metrics.controller.reconciles("CreditPolicy");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        controller.metrics.controller.reconciles("CreditPolicy") > reconciles,
        "the resyncs ran"
    );
    assert_eq!(
        reports(&client, &ns).await,
        before,
        "nothing reported again"
    );
    controller.stop().await;
}

/// A Chatflow that cannot be read still claims the Flowise chatflow its stored spec names: the
/// sync pass does not import that one, and says why; once it is fixed, it holds what it
/// claims.
#[tokio::test]
async fn nothing_is_imported_while_a_chatflow_cannot_be_read() {
    let (client, ns, api, _objects) = setup("unread-import").await;
    let prefix = support::unique("fgtest-unread");
    let _cleanup = support::FlowiseCleanup(prefix.clone());
    let claimed = flowise_chatflow(&format!("{prefix} Claimed"), None).await;
    create::<Chatflow>(
        &api,
        chatflow_doc("claims", json!({"flowiseId": claimed.id})),
    )
    .await;
    edit_in_etcd("chatflows", &ns, "claims", |o| {
        o["spec"]["deletionPolicy"] = json!("Sometimes");
    })
    .await;

    let mut import = settings(&ns);
    import.import_namespace = Some(ns.clone());
    import.import_name_prefix = Some(prefix.clone());
    let controller = start(&client, import);
    let pass = support::eventually(30, "the first sync pass", || async {
        controller.sync.last()
    })
    .await;
    assert_eq!(pass.result.new_chatflows_added, 0, "{pass:?}");
    let held = format!("cannot be read: {ns}/claims");
    assert!(
        pass.result.errors.iter().any(|e| e.contains(&held)),
        "{:?}",
        pass.result.errors
    );
    let lenient: Api<Lenient<Chatflow>> = Api::namespaced(client.clone(), &ns);
    let all = lenient.list(&ListParams::default()).await.expect("lists");
    assert_eq!(all.items.len(), 1, "no second claim of {}", claimed.id);

    // Fixed through the API server: it claims its chatflow, and nothing is imported.
    api.patch(
        "claims",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})),
    )
    .await
    .expect("a valid spec is accepted");
    let fixed = support::eventually(30, "a pass that sees it", || async {
        let pass = controller.sync.sync_now().await;
        pass.errors.is_empty().then_some(pass)
    })
    .await;
    assert_eq!(
        (fixed.new_chatflows_added, fixed.total_chatflows_synced),
        (0, 1),
        "{fixed:?}"
    );
    wait_ready(&api, "claims", "True", "Synced").await;
    controller.stop().await;
}

/// The InvalidSpec Events about the objects named `broken`: (kind, note, how many times sent).
async fn reports(client: &kube::Client, ns: &str) -> Vec<(String, String, i32)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut found: Vec<(String, String, i32)> = events
        .list(&Default::default())
        .await
        .expect("events list")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .filter_map(|e| {
            let regarding = e.regarding?;
            (regarding.name.as_deref() == Some("broken")).then(|| {
                let sent = e.series.map_or(1, |s| s.count);
                (
                    regarding.kind.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                    sent,
                )
            })
        })
        .collect();
    found.sort();
    found
}
