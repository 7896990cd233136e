//! The admin API's own ChatflowAccess objects (`admin-api-<chatflow>`) against the real API
//! server: owned by their Chatflow, so that Kubernetes deletes them with it; never carried over
//! to a later Chatflow of the same name; written only while they grant that one chatflow alone.

mod support;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess};
use reqwest::Method as M;
use support::admin::{call, root};
use support::gate::{Flowgate, Options, eventually_status};
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

    // Nothing to add: `[]`, as the Python service answered, and no object written.
    let bulk = format!("/api/admin/chatflows/{id}/users/bulk");
    let none = Some(json!({"user_ids": []}));
    let (status, out) = call(&gate, M::POST, &bulk, Some(&admin), none).await;
    assert_eq!((status, &out), (200, &json!([])));
    assert!(ours.get_opt(OBJECT).await.expect("read").is_none());

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
    // Nor "already has access" to someone it lists and does not let in.
    let (status, out) = add("pavel").await;
    assert_eq!(status, 409, "{out}");
    // A rate limit of its own, set by hand: what the admin API grants has none.
    ours.patch(OBJECT, &PatchParams::default(), &suspend(false))
        .await
        .expect("resumed");
    let limit = Patch::Merge(json!({"spec": {"rateLimit": {"requests": 5, "per": "Minute"}}}));
    ours.patch(OBJECT, &PatchParams::default(), &limit)
        .await
        .expect("limited");
    let (status, out) = add("quinn").await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits its rate")),
        "{out}"
    );
    assert_eq!(users(&ours.get(OBJECT).await.expect("object")), ["pavel"]);
    // Removing from it narrows it: allowed.
    let (status, out) = remove("pavel").await;
    assert_eq!(status, 200, "{out}");
    assert!(
        ours.get_opt(OBJECT).await.expect("get").is_none(),
        "no one left: deleted"
    );

    // Being deleted, held by another tool's finalizer: it grants no one, so nothing is
    // answered "added" into it; once it is gone, a new one is made.
    let (status, out) = add("rita").await;
    assert_eq!(status, 200, "{out}");
    let keep =
        |finalizers: Vec<&str>| Patch::Merge(json!({"metadata": {"finalizers": finalizers}}));
    ours.patch(
        OBJECT,
        &PatchParams::default(),
        &keep(vec!["example.com/keep"]),
    )
    .await
    .expect("finalizer added");
    ours.delete(OBJECT, &Default::default())
        .await
        .expect("deletion started");
    let (status, out) = add("sam").await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("being deleted")),
        "{out}"
    );
    // A revocation still answers as one.
    let (status, out) = remove("rita").await;
    assert_eq!(status, 200, "{out}");
    ours.patch(OBJECT, &PatchParams::default(), &keep(vec![]))
        .await
        .expect("finalizer removed");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while ours.get_opt(OBJECT).await.expect("get").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, out) = add("sam").await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(users(&ours.get(OBJECT).await.expect("object")), ["sam"]);
    team.cleanup().await;
}

/// A Chatflow the admin API switched to `Retain` for a delete that Kubernetes then refused (here
/// RBAC: the identity may patch Chatflows but not delete them; in a cluster, an admission
/// policy protecting GitOps objects) is switched back to `Delete`: it must not be left
/// retaining its chatflow in Flowise when it is deleted later.
#[tokio::test]
async fn a_delete_refused_after_the_switch_to_retain_switches_it_back() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::PostParams;

    let admin = support::client().await;
    support::install_crds(&admin).await;
    let ns = support::fresh_namespace(&admin, "admin-delete-refused").await;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "no-delete"},
        "rules": [{"apiGroups": ["flowgate.io"], "resources": ["chatflows"],
                   "verbs": ["get", "patch"]}],
    }))
    .expect("role");
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role created");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "no-delete"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-delete"},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted", "namespace": ns}],
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding created");
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:restricted"));
    let restricted = kube::Client::try_from(config).expect("impersonating client");

    let chatflows: Api<Chatflow> = Api::namespaced(admin.clone(), &ns);
    let object: Chatflow = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "metadata": {"name": "kept", "namespace": ns},
        "spec": {"flowiseName": "kept", "deletionPolicy": "Delete"},
    }))
    .expect("chatflow");
    let created = chatflows
        .create(&PostParams::default(), &object)
        .await
        .expect("chatflow created");
    let snapshot = flowgate::index::compile(&flowgate::index::Resources {
        chatflows: vec![std::sync::Arc::new(created)],
        ..Default::default()
    });
    let entry = snapshot
        .chatflow_by_name(&ns, "kept")
        .expect("indexed")
        .clone();

    let refused = flowgate::admin::chatflows::delete(&restricted, &entry, false)
        .await
        .expect_err("the delete is forbidden");
    assert_eq!(
        refused.status_and_code().1,
        "kubernetes_refused",
        "{refused}"
    );
    let after = chatflows.get("kept").await.expect("still there");
    assert_eq!(
        after.spec.deletion_policy,
        flowgate::crd::DeletionPolicy::Delete,
        "switched back"
    );
    chatflows
        .delete("kept", &Default::default())
        .await
        .expect("cleaned up");
}

#[tokio::test]
async fn an_imported_chatflow_flowise_still_has_is_not_deleted() {
    // With import on, the next sync pass would import it again: the delete would not last.
    let team = Team::new("admin-imported").await;
    let gate = Flowgate::start_with(Options {
        import_namespace: Some(team.ns.clone()),
        ..Options::default()
    })
    .await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let chatflows: Api<Chatflow> = Api::namespaced(team.client.clone(), &team.ns);
    // Adopted by a team (not imported): gone, it would be imported all the same, into the
    // import namespace and for whoever that namespace grants.
    let path = format!("/api/admin/chatflows/{id}");
    let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("would import that chatflow")),
        "{body}"
    );
    let imported = json!({"metadata": {"labels": {"flowgate.io/imported": "true"}}});
    chatflows
        .patch(
            "support-bot",
            &PatchParams::default(),
            &Patch::Merge(&imported),
        )
        .await
        .expect("labelled imported");
    let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("would import it again")),
        "{body}"
    );
    let kept = chatflows.get_opt("support-bot").await.expect("read");
    assert!(kept.is_some(), "the Chatflow is kept");

    // Not Ready for another reason than Flowise not having it (Flowise unreachable; a suspended
    // one likewise): the next pass would still import it again, unsuspended.
    let not_ready = async |reason: &str| {
        let status = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "status": {
            "flowiseId": id, "flowiseName": format!("flowgate-test-{}", team.ns),
            "type": "AGENTFLOW", "deployed": false, "apiKeyBound": false,
            "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                            "message": reason, "lastTransitionTime": "2026-11-22T00:01:00Z"}]}});
        chatflows
            .patch_status(
                "support-bot",
                &PatchParams::apply("flowgate-tests").force(),
                &Patch::Apply(&status),
            )
            .await
            .expect("status written");
    };
    not_ready("FlowiseUnreachable").await;
    eventually_status(&gate, &team.alice(), &id, 503).await;
    let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
    assert_eq!(status, 409, "{body}");
    let kept = chatflows.get_opt("support-bot").await.expect("read");
    assert!(kept.is_some(), "the Chatflow is kept");

    // Flowise is known not to have it: its callers no longer see it, as Flowise's own routes
    // would not show it...
    not_ready("NotFoundInFlowise").await;
    let alice = team.alice();
    let get = format!("/api/v1/chatflows/{id}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = call(&gate, M::GET, &get, Some(&alice), None).await;
        if status == 404 {
            assert_eq!(body["error"]["code"], "chatflow_not_found", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "still listed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = call(
        &gate,
        M::GET,
        &format!("/chatflows/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // A prediction too is 404 (for good), not 503 (a retry), as Flowise would answer.
    for (path, question) in [
        (
            format!("/api/v1/prediction/{id}"),
            json!({"question": "hi"}),
        ),
        (
            "/chat/predict".to_string(),
            json!({"chatflow_id": id, "message": "hi"}),
        ),
    ] {
        let (status, body) = call(&gate, M::POST, &path, Some(&alice), Some(question)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "chatflow_not_found", "{body}");
    }
    for list in ["/api/v1/chatflows", "/chatflows"] {
        let (status, body) = call(&gate, M::GET, list, Some(&alice), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!([]), "{list}");
    }
    // ...and the admin API deletes it (the pass has nothing to import again).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 409, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deleted = async || chatflows.get_opt("support-bot").await.expect("read");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while deleted().await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    team.cleanup().await;
}
