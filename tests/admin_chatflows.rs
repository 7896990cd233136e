//! The admin API's chatflow routes end to end: listing, counts, deletion and the sync with
//! Flowise, against the real API server and real Flowise, flowgate in-process without the
//! controller. (Users of a chatflow: `admin.rs`.)

mod support;

use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess};
use flowgate::flowise::FlowiseApi;
use reqwest::Method as M;
use support::admin::{call, root};
use support::gate::{Flowgate, Options, create_echo_chatflow, eventually_status};
use support::team::Team;

#[tokio::test]
async fn chatflows_are_listed_counted_and_deleted_without_touching_flowise() {
    let team = Team::new("admin-chatflows").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let admin = root();
    eventually_status(&gate, &team.alice(), &id, 200).await;

    let (status, list) = call(
        &gate,
        M::GET,
        "/api/admin/chatflows?include_deleted=false",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mine = list
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["flowise_id"] == json!(id))
        .cloned()
        .expect("listed");
    assert_eq!(mine["id"], json!(format!("{}/support-bot", team.ns)));
    assert_eq!(mine["status"], "active");
    let (status, _) = call(
        &gate,
        M::GET,
        "/api/admin/chatflows?include_deleted=perhaps",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let (status, stats) = call(
        &gate,
        M::GET,
        "/api/admin/chatflows/stats",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stats}");
    assert!(stats["total_chatflows"].as_u64().is_some_and(|n| n >= 1));
    assert!(stats["active_chatflows"].as_u64().is_some_and(|n| n >= 1));

    let (status, one) = call(
        &gate,
        M::GET,
        &format!("/api/admin/chatflows/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    // The Python service's model: `name` is the chatflow's name in Flowise.
    assert_eq!(
        (&one["name"], &one["chatflow"], &one["is_public"]),
        (
            &json!(format!("flowgate-test-{}", team.ns)),
            &json!("support-bot"),
            &json!(false)
        ),
        "{one}"
    );
    let unknown = "00000000-0000-4000-8000-00000000beef";
    assert_eq!(
        call(
            &gate,
            M::GET,
            &format!("/api/admin/chatflows/{unknown}"),
            Some(&admin),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &gate,
            M::DELETE,
            &format!("/api/admin/chatflows/{unknown}"),
            Some(&admin),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &gate,
            M::GET,
            &format!("/api/admin/chatflows/{unknown}/users"),
            Some(&admin),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(&gate, M::GET, "/api/admin/chatflows", None, None)
            .await
            .0,
        401
    );

    // A user granted through the admin API: its own access object goes with the Chatflow.
    let path = format!("/api/admin/chatflows/{id}/users/email/gone%40example.test");
    let (status, added) = call(&gate, M::POST, &path, Some(&admin), None).await;
    assert_eq!(status, 200, "{added}");
    let accesses: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    assert!(
        accesses
            .get_opt("admin-api-support-bot")
            .await
            .expect("get")
            .is_some()
    );

    // An owned Chatflow asking Flowise to delete its chatflow: the admin API switches it to
    // Retain first. A finalizer of the test's keeps the object visible after the delete.
    let chatflows: Api<Chatflow> = Api::namespaced(team.client.clone(), &team.ns);
    let patch = json!({"metadata": {"finalizers": ["flowgate-tests/hold"]}, "spec": {"deletionPolicy": "Delete"}});
    chatflows
        .patch(
            "support-bot",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patched");
    let (status, out) = call(
        &gate,
        M::DELETE,
        &format!("/api/admin/chatflows/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert!(
        accesses
            .get_opt("admin-api-support-bot")
            .await
            .expect("get")
            .is_none(),
        "the admin API's grants for the deleted chatflow are gone: {out}"
    );
    assert!(
        accesses
            .get_opt("support-team")
            .await
            .expect("get")
            .is_some(),
        "GitOps grants are never touched"
    );
    let held = chatflows
        .get("support-bot")
        .await
        .expect("held by the finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.spec.deletion_policy,
        flowgate::crd::DeletionPolicy::Retain
    );
    let release = json!({"metadata": {"finalizers": null}});
    chatflows
        .patch(
            "support-bot",
            &PatchParams::default(),
            &Patch::Merge(&release),
        )
        .await
        .expect("released");

    assert!(
        matches!(support::flowise().get(&id).await, Ok(Some(_))),
        "the chatflow in Flowise is kept"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn sync_imports_what_flowise_has_and_counts_it() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "admin-sync").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let name = support::unique("flowgate-test-admin-sync");
    let _flowise_cleanup = support::FlowiseCleanup(name.clone());
    let flowise_id = create_echo_chatflow(&name).await;
    let gate = Flowgate::start_with(Options {
        import_namespace: Some(ns.clone()),
        ..Options::default()
    })
    .await;

    let (status, result) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/sync",
        Some(&root()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["errors"], json!([]), "{result}");
    let chatflows: Api<Chatflow> = Api::namespaced(client.clone(), &ns);
    let imported = chatflows
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    let count = |field: &str| result[field].as_u64().unwrap_or(0);
    assert_eq!(
        count("new_chatflows_added") as usize,
        imported.len(),
        "one object per import: {result}"
    );
    assert!(
        imported
            .iter()
            .any(|c| c.spec.flowise_id.as_deref() == Some(flowise_id.as_str())),
        "{result}"
    );
    let listed = support::flowise()
        .list()
        .await
        .expect("Flowise lists")
        .len() as u64;
    assert!(
        count("total_chatflows_synced") >= 1 && count("total_chatflows_synced") <= listed + 5,
        "{result}"
    );

    // A second pass imports nothing it already imported.
    let (_, again) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/sync",
        Some(&root()),
        None,
    )
    .await;
    let after = chatflows
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(
        after
            .iter()
            .filter(|c| c.spec.flowise_id.as_deref() == Some(flowise_id.as_str()))
            .count(),
        1,
        "{again}"
    );
    assert_eq!(
        again["new_chatflows_added"].as_u64().unwrap_or(0) as usize,
        after.len() - imported.len(),
        "{again}"
    );

    let (status, stats) = call(
        &gate,
        M::GET,
        "/api/admin/chatflows/stats",
        Some(&root()),
        None,
    )
    .await;
    assert_eq!(
        (status, stats["last_sync_status"].clone()),
        (200, json!("success")),
        "{stats}"
    );
    assert_eq!(
        call(&gate, M::POST, "/api/admin/chatflows/sync", None, None)
            .await
            .0,
        401
    );
}
