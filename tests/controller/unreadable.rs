//! Objects of every kind that the API server stored but flowgate cannot read (written here
//! straight into etcd, as an object from before a CRD bound is): each is reported once, naming
//! the field, by a Warning Event (and in `Ready`, where the API server takes its status); the
//! other objects of its kind are reconciled as usual.

use std::time::Duration;

use kube::api::Api;
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy, Lenient};

use k8s_openapi::api::events::v1::Event;

use crate::harness::{chatflow_doc, create, settings, setup, start, wait_ready};
use crate::support::edit_in_etcd;

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
    edit_in_etcd("creditpolicies", &ns, "broken", |o| {
        o["spec"]["budget"]["credits"] = json!(-5);
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
        // Where the API server takes a status for it (CRD validation ratcheting, Kubernetes
        // 1.30 on), Ready says the same; this one refuses it, for the same field.
        let ready = match kind {
            "ChatflowAccess" => ready_message::<ChatflowAccess>(&client, &ns).await,
            "CreditPolicy" => ready_message::<CreditPolicy>(&client, &ns).await,
            _ => ready_message::<Chatflow>(&client, &ns).await,
        };
        assert!(
            ready.as_ref().is_none_or(|m| *m == note),
            "{kind}: Ready says {ready:?}"
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

/// Ready's message of the object `broken` of kind `K`, read as the controller reads it.
async fn ready_message<K>(client: &kube::Client, ns: &str) -> Option<String>
where
    K: flowgate::crd::Watched<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<Lenient<K>> = Api::namespaced(client.clone(), ns);
    let Lenient::Unreadable(bad) = api.get("broken").await.expect("readable as Lenient") else {
        panic!("the broken {} reads", std::any::type_name::<K>());
    };
    bad.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
}
