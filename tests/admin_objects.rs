//! The admin API's own ChatflowAccess objects (`admin-api-<chatflow>`) against the real API
//! server: owned by their Chatflow, so that Kubernetes deletes them with it; never carried over
//! to a later Chatflow of the same name; written only while they grant that one chatflow alone.

mod support;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess};
use reqwest::Method as M;
use support::admin::{call, root};
use support::gate::{Flowgate, eventually_status};
use support::team::Team;

const OBJECT: &str = "admin-api-support-bot";

fn users(access: &ChatflowAccess) -> Vec<String> {
    access
        .spec
        .subjects
        .iter()
        .filter_map(|s| s.user.clone())
        .collect()
}

#[tokio::test]
async fn the_admin_apis_grants_belong_to_their_chatflow_and_to_it_alone() {
    let team = Team::new("admin-objects").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let admin = root();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let add = |user: &str| {
        let path = format!("/api/admin/chatflows/{id}/users/{user}");
        let admin = admin.clone();
        let gate = &gate;
        async move { call(gate, M::POST, &path, Some(&admin), None).await }
    };
    let remove = |user: &str| {
        let path = format!("/api/admin/chatflows/{id}/users/{user}");
        let admin = admin.clone();
        let gate = &gate;
        async move { call(gate, M::DELETE, &path, Some(&admin), None).await }
    };
    let ours: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    let chatflows: Api<Chatflow> = Api::namespaced(team.client.clone(), &team.ns);
    let uid = chatflows
        .get("support-bot")
        .await
        .expect("chatflow")
        .metadata
        .uid
        .expect("uid");

    // Owned by the Chatflow: Kubernetes' garbage collector deletes it with the Chatflow.
    let (status, out) = add("olga").await;
    assert_eq!(status, 200, "{out}");
    let object = ours.get(OBJECT).await.expect("object");
    let owners = object.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (
            owners[0].kind.as_str(),
            owners[0].api_version.as_str(),
            owners[0].name.as_str(),
            owners[0].uid.as_str(),
            owners[0].controller
        ),
        (
            "Chatflow",
            "flowgate.io/v1alpha1",
            "support-bot",
            uid.as_str(),
            None
        )
    );

    // Left by a former Chatflow of this name (its collection still to come): its users were
    // never this Chatflow's, and the next write starts afresh, owned by this one.
    let former = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "name": "support-bot",
        "uid": "00000000-0000-4000-8000-0000000f0e3e"}]}});
    ours.patch(OBJECT, &PatchParams::default(), &Patch::Merge(&former))
        .await
        .expect("patched");
    let (status, out) = add("pavel").await;
    assert_eq!(status, 200, "{out}");
    let object = ours.get(OBJECT).await.expect("object");
    assert_eq!(users(&object), ["pavel"], "olga was the former Chatflow's");
    let owners = object.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].uid, uid);

    // Labelled, but granting another chatflow too: removing someone would take that one away
    // from them as well, so it is not the admin API's to change.
    let wide =
        |chatflows: serde_json::Value| Patch::Merge(json!({"spec": {"chatflows": chatflows}}));
    ours.patch(
        OBJECT,
        &PatchParams::default(),
        &wide(json!(["support-bot", "faq-bot"])),
    )
    .await
    .expect("patched");
    let (status, out) = remove("pavel").await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("names other chatflows")),
        "{out}"
    );
    assert_eq!(users(&ours.get(OBJECT).await.expect("object")), ["pavel"]);
    ours.patch(
        OBJECT,
        &PatchParams::default(),
        &wide(json!(["support-bot"])),
    )
    .await
    .expect("patched back");

    // Suspended by hand: adding to it would answer "added" to someone it does not let in.
    let suspend = |on: bool| Patch::Merge(json!({"spec": {"suspended": on}}));
    ours.patch(OBJECT, &PatchParams::default(), &suspend(true))
        .await
        .expect("suspended");
    let (status, out) = add("quinn").await;
    assert_eq!(status, 409, "{out}");
    // Removing from it narrows it: allowed.
    let (status, out) = remove("pavel").await;
    assert_eq!(status, 200, "{out}");
    assert!(
        ours.get_opt(OBJECT).await.expect("get").is_none(),
        "no one left: deleted"
    );
    team.cleanup().await;
}
