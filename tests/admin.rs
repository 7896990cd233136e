//! The admin API end to end: real API server (ChatflowAccess writes and the watch that enforces
//! them), real Flowise (predictions), flowgate in-process without the controller. (The chatflow
//! routes and the sync: `admin_chatflows.rs`.)

mod support;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use flowgate::crd::ChatflowAccess;
use reqwest::Method as M;
use support::admin::{call, encode, root};
use support::gate::{Flowgate, eventually_status, token};
use support::team::Team;

async fn resource_version(team: &Team, name: &str) -> String {
    let api: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    api.get(name)
        .await
        .expect("access exists")
        .metadata
        .resource_version
        .expect("resourceVersion")
}

/// Whether an added address is "new" is told from the chatflow's own namespace: a chatflow's
/// admin cannot probe which addresses other teams' ChatflowAccess objects name.
#[tokio::test]
async fn an_add_tells_nothing_of_other_namespaces_grants() {
    let (ours, theirs) = tokio::join!(Team::new("admin-probe-a"), Team::new("admin-probe-b"));
    let gate = Flowgate::start().await;
    let id = ours.flowise_id.clone();
    // Theirs names its own user; the index must have it before the probe means anything.
    eventually_status(
        &gate,
        &token("t-sub", json!({"email": theirs.user()})),
        &theirs.flowise_id,
        200,
    )
    .await;
    let add = |email: String| {
        let path = format!("/api/admin/chatflows/{id}/users/email/{}", encode(&email));
        let gate = &gate;
        async move { call(gate, M::POST, &path, Some(&root()), None).await }
    };
    let (status, body) = add(theirs.user()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("New user")),
        "another namespace's grant is not told: {body}"
    );
    // Our own namespace's grants still are.
    let (status, body) = add(ours.user()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("successfully added")),
        "{body}"
    );
}

#[tokio::test]
async fn a_user_added_by_email_can_predict_until_removed_and_gitops_objects_stay_untouched() {
    let team = Team::new("admin-cycle").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let gitops_version = resource_version(&team, "support-team").await;
    let bob = format!("bob+x@{}.test", team.ns);
    let bob_token = token("bob-sub", json!({"email": bob}));
    eventually_status(&gate, &bob_token, &id, 403).await;

    let path = format!("/api/admin/chatflows/{id}/users/email/{}", encode(&bob));
    let (status, added) = call(&gate, M::POST, &path, Some(&root()), None).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["status"], "success");
    assert_eq!(added["user_id"], json!(bob));
    assert!(
        added["message"]
            .as_str()
            .is_some_and(|m| m.contains("New user")),
        "a never-seen email is 'created': {added}"
    );
    eventually_status(&gate, &bob_token, &id, 200).await;
    // A user added later is listed as assigned later, though one object grants both.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let carol = format!("carol@{}.test", team.ns);
    let path_carol = format!("/api/admin/chatflows/{id}/users/email/{}", encode(&carol));
    let (status, body) = call(&gate, M::POST, &path_carol, Some(&root()), None).await;
    assert_eq!(status, 200, "{body}");
    let times = support::eventually(10, "carol listed", || async {
        let (_, users) = call(
            &gate,
            M::GET,
            &format!("/api/admin/chatflows/{id}/users"),
            Some(&root()),
            None,
        )
        .await;
        let list = users.as_array().cloned().unwrap_or_default();
        let at = |who: &str| {
            list.iter()
                .find(|u| u["user_id"] == json!(who))
                .and_then(|u| u["assigned_at"].as_str())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        };
        Some((at(&bob)?, at(&carol)?))
    })
    .await;
    assert!(
        times.0 < times.1,
        "bob {} before carol {}",
        times.0,
        times.1
    );
    let (status, _) = call(&gate, M::DELETE, &path_carol, Some(&root()), None).await;
    assert_eq!(status, 200);

    // The same address in another case is the same user: already granted, not a second grant.
    let shouting = format!(
        "/api/admin/chatflows/{id}/users/email/{}",
        encode(&bob.to_uppercase())
    );
    let (status, again) = call(&gate, M::POST, &shouting, Some(&root()), None).await;
    assert_eq!(status, 200, "{again}");
    assert!(
        again["message"]
            .as_str()
            .is_some_and(|m| m.contains("already has access")),
        "{again}"
    );

    let ours: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    let object = ours
        .get("admin-api-support-bot")
        .await
        .expect("admin-api object");
    assert_eq!(
        object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("flowgate.io/managed-by")),
        Some(&"admin-api".to_string())
    );

    // Alice is granted by GitOps; the admin API may add its own grant next to it, here
    // written in capitals: still the one user, listed once with both grants.
    let alice = team.user();
    let path_alice = format!(
        "/api/admin/chatflows/{id}/users/email/{}",
        encode(&alice.to_uppercase())
    );
    let (status, body) = call(&gate, M::POST, &path_alice, Some(&root()), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("successfully added"))
    );

    let users_path = format!("/api/admin/chatflows/{id}/users");
    let users = support::eventually(10, "both users listed", || async {
        let (_, users) = call(&gate, M::GET, &users_path, Some(&root()), None).await;
        let list = users.as_array().cloned().unwrap_or_default();
        let alices = list.iter().filter(|u| {
            u["user_id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(&alice))
        });
        let [alice_row] = alices.collect::<Vec<_>>()[..] else {
            return None;
        };
        (list.iter().any(|u| u["email"] == json!(bob))
            && alice_row["granted_by"]
                .as_array()
                .is_some_and(|g| g.len() == 2))
        .then_some(list)
    })
    .await;
    assert!(
        users
            .iter()
            .all(|u| u["is_active_in_chatflow"] == true && u["role"] == "User")
    );
    assert!(
        users
            .iter()
            .all(|u| u["assigned_at"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "assigned_at is the granting object's creation time: {users:?}"
    );

    let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked"))
    );
    eventually_status(&gate, &bob_token, &id, 403).await;
    let (status, body) = call(&gate, M::DELETE, &path, Some(&root()), None).await;
    assert_eq!(status, 404, "removing twice finds no link: {body}");

    let (status, body) = call(&gate, M::DELETE, &path_alice, Some(&root()), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("support-team")),
        "{body}"
    );
    let conflict = support::eventually(
        10,
        "alice's admin-api grant gone from the index",
        || async {
            let (status, body) = call(&gate, M::DELETE, &path_alice, Some(&root()), None).await;
            (status == 409).then_some(body)
        },
    )
    .await;
    assert_eq!(conflict["error"]["code"], "conflict");
    assert!(
        conflict["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{}/support-team", team.ns)))
    );
    eventually_status(&gate, &team.alice(), &id, 200).await;

    assert_eq!(
        resource_version(&team, "support-team").await,
        gitops_version
    );
    team.cleanup().await;
}

#[tokio::test]
async fn a_write_the_api_server_refuses_for_good_is_a_conflict_not_a_retry() {
    // A quota of no ChatflowAccess: the API server's ResourceQuota admission refuses the
    // admin API's object (403), which no retry changes.
    let team = Team::new("admin-quota").await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(team.client.clone(), &team.ns);
    let quota = serde_json::from_value(json!({
        "metadata": {"name": "no-access-objects"},
        "spec": {"hard": {"count/chatflowaccesses.flowgate.io": "0"}}
    }))
    .expect("quota");
    quotas
        .create(&kube::api::PostParams::default(), &quota)
        .await
        .expect("quota created");
    // No quota controller runs here: its status, which admission reads, is written by hand.
    let status = json!({"status": {
        "hard": {"count/chatflowaccesses.flowgate.io": "0"},
        "used": {"count/chatflowaccesses.flowgate.io": "1"}
    }});
    quotas
        .patch_status(
            "no-access-objects",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("quota status written");
    let gate = Flowgate::start().await;
    let path = format!(
        "/api/admin/chatflows/{}/users/email/{}",
        team.flowise_id,
        encode(&format!("carol@{}.test", team.ns))
    );
    let (status, body) = call(&gate, M::POST, &path, Some(&root()), None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "kubernetes_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("quota"),
        "the API server's reason: {message}"
    );
    team.cleanup().await;
}

#[tokio::test]
async fn adds_report_each_entry_and_refuse_bad_bodies_strangers_and_unknown_chatflows() {
    let team = Team::new("admin-bulk").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    let admin = root();

    let (status, out) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/add-users",
        Some(&admin),
        Some(json!({"user_ids": ["carol", " ", "dave"], "chatflow_id": id})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let statuses: Vec<&str> = out
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(statuses, ["success", "error", "success"], "{out}");

    // `chatflow_id` may also be the listing's `namespace/name`.
    let (status, out) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/add-users-by-email",
        Some(&admin),
        Some(json!({"emails": ["erin@example.test", "not-an-email"], "chatflow_id": format!("{}/support-bot", team.ns)})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out[0]["status"], "success");
    assert_eq!(out[1]["status"], "error");
    assert_eq!(out[1]["user_id"], Value::Null);

    // The path's id wins over the body's.
    let (status, out) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{id}/users/bulk"),
        Some(&admin),
        Some(json!({"user_ids": ["frank"], "chatflow_id": "ignored"})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (status, out) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{id}/users/email/bulk"),
        Some(&admin),
        Some(json!({"emails": ["gina@example.test"]})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (status, out) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{id}/users/henry"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (status, out["status"].clone()),
        (200, json!("success")),
        "{out}"
    );

    // An identity provider's subject is not path-safe: added in a body, removed by its
    // percent-encoded path segment.
    let (status, out) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/add-users",
        Some(&admin),
        Some(json!({"user_ids": ["auth0|64f1c2"], "chatflow_id": id})),
    )
    .await;
    assert_eq!(
        (status, out[0]["status"].clone()),
        (200, json!("success")),
        "{out}"
    );
    let (status, out) = call(
        &gate,
        M::DELETE,
        &format!("/api/admin/chatflows/{id}/users/auth0%7C64f1c2"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    // The users list reads the index, which the watch updates a moment later.
    let users_path = format!("/api/admin/chatflows/{id}/users");
    support::eventually(10, "auth0|64f1c2 gone from the users list", || async {
        let (status, users) = call(&gate, M::GET, &users_path, Some(&admin), None).await;
        (status == 200 && !users.to_string().contains("auth0|64f1c2")).then_some(())
    })
    .await;

    // Concurrent adds never lose an update.
    let adds = (0..8).map(|i| {
        let (gate, admin, id) = (&gate, admin.clone(), id.clone());
        async move {
            call(
                gate,
                M::POST,
                &format!("/api/admin/chatflows/{id}/users/racer-{i}"),
                Some(&admin),
                None,
            )
            .await
            .0
        }
    });
    assert!(
        futures::future::join_all(adds)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let ours: Api<ChatflowAccess> = Api::namespaced(team.client.clone(), &team.ns);
    let object = ours
        .get("admin-api-support-bot")
        .await
        .expect("admin-api object");
    let users: Vec<String> = object
        .spec
        .subjects
        .iter()
        .filter_map(|s| s.user.clone())
        .collect();
    for expected in [
        "carol",
        "dave",
        "erin@example.test",
        "frank",
        "gina@example.test",
        "henry",
    ]
    .into_iter()
    .map(String::from)
    .chain((0..8).map(|i| format!("racer-{i}")))
    {
        assert!(
            users.contains(&expected),
            "{expected} missing from {users:?}"
        );
    }

    // An object with the label that grants more than the admin API writes (here, someone made
    // it Admin) is not the admin API's to edit: adding to it would make Admins.
    let patch = PatchParams::default();
    let role = |role: &str| Patch::Merge(json!({"spec": {"role": role}}));
    ours.patch("admin-api-support-bot", &patch, &role("Admin"))
        .await
        .expect("patched");
    let (status, out) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{id}/users/ivan"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than role User")),
        "{out}"
    );
    let object = ours.get("admin-api-support-bot").await.expect("object");
    assert!(
        !object
            .spec
            .subjects
            .iter()
            .any(|s| s.user.as_deref() == Some("ivan"))
    );
    // Removing someone only narrows it: allowed.
    let (status, out) = call(
        &gate,
        M::DELETE,
        &format!("/api/admin/chatflows/{id}/users/racer-7"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    ours.patch("admin-api-support-bot", &patch, &role("User"))
        .await
        .expect("patched back");

    // 400 names the field.
    for (path, body, field) in [
        (
            "/api/admin/chatflows/add-users",
            json!({"chatflow_id": id}),
            "user_ids",
        ),
        (
            "/api/admin/chatflows/add-users",
            json!({"user_ids": ["x"]}),
            "chatflow_id",
        ),
        (
            "/api/admin/chatflows/add-users-by-email",
            json!({"emails": "a@b.c", "chatflow_id": id}),
            "emails",
        ),
    ] {
        let (status, out) = call(&gate, M::POST, path, Some(&admin), Some(body)).await;
        assert_eq!(status, 400, "{out}");
        assert!(
            out["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{out}"
        );
    }
    // 404 for an unknown chatflow, 401 without a token, 403 for a user who is not an admin.
    let unknown = "00000000-0000-4000-8000-00000000dead";
    let (status, _) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{unknown}/users/x"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &gate,
        M::DELETE,
        &format!("/api/admin/chatflows/{unknown}/users/email/a%40b.c"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, out) = call(
        &gate,
        M::POST,
        &format!("/api/admin/chatflows/{id}/users/x"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{out}");
    for (method, path) in [
        (M::POST, format!("/api/admin/chatflows/{id}/users/x")),
        (M::DELETE, format!("/api/admin/chatflows/{id}/users/carol")),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/email/x%40y.z"),
        ),
        (
            M::DELETE,
            format!("/api/admin/chatflows/{id}/users/email/erin%40example.test"),
        ),
        (M::POST, format!("/api/admin/chatflows/{id}/users/bulk")),
        (
            M::POST,
            format!("/api/admin/chatflows/{id}/users/email/bulk"),
        ),
        (M::GET, format!("/api/admin/chatflows/{id}/users")),
        (M::GET, format!("/api/admin/chatflows/{id}")),
        (M::DELETE, format!("/api/admin/chatflows/{id}")),
        (M::GET, "/api/admin/chatflows".to_string()),
        (M::GET, "/api/admin/chatflows/stats".to_string()),
        (M::POST, "/api/admin/chatflows/sync".to_string()),
    ] {
        let body = (method == M::POST)
            .then(|| json!({"user_ids": ["x"], "emails": ["x@y.z"], "chatflow_id": id}));
        let (status, out) = call(&gate, method.clone(), &path, Some(&team.alice()), body).await;
        assert_eq!(status, 403, "{method} {path}: {out}");
        assert_eq!(out["error"]["code"], "admin_required");
    }

    // `role: Admin` on the chatflow is enough for that chatflow, not for sync.
    let owner_token = team.owner().await;
    let path = format!("/api/admin/chatflows/{id}/users/ivy");
    support::eventually(10, "the chatflow admin may add users", || async {
        (call(&gate, M::POST, &path, Some(&owner_token), None)
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    let (status, list) = call(
        &gate,
        M::GET,
        "/api/admin/chatflows",
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "only the administered chatflow: {list}"
    );
    let (status, _) = call(
        &gate,
        M::POST,
        "/api/admin/chatflows/sync",
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 403);
    team.cleanup().await;
}
