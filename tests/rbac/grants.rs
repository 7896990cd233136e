//! Under the chart's ServiceAccount: the admin API, chatflow API keys from Secrets, the Flowise
//! import, ServiceAccount callers, credit alert Events — and what the token must not do.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reqwest::Method as M;
use serde_json::{Value, json};

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};

use crate::harness::{chatflow_doc, create, wait_ready};
use crate::rbac_support::{AUDIENCE, ChartAccount, Stack, token_request};
use crate::support;
use crate::support::gate::token;

/// A Chatflow `name` adopting a new echo chatflow of this test, Ready; its Flowise id.
async fn adopted(stack: &Stack, name: &str, extra: Value) -> String {
    let (_, id) = stack.flowise_chatflow(name).await;
    let api = Api::<Chatflow>::namespaced(stack.account.admin.clone(), stack.ns());
    let mut spec = json!({"flowiseId": id});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    create(&api, chatflow_doc(name, spec)).await;
    wait_ready(&api, name, "True", "Synced").await;
    id
}

async fn grant(stack: &Stack, name: &str, chatflow: &str, subjects: Value) {
    let api = Api::<ChatflowAccess>::namespaced(stack.account.admin.clone(), stack.ns());
    let doc = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
                     "metadata": {"name": name},
                     "spec": {"chatflows": [chatflow], "subjects": subjects, "role": "User"}});
    create(&api, doc).await;
}

#[tokio::test]
async fn the_admin_api_grants_revokes_and_deletes_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-admin", false).await;
    let id = adopted(&stack, "helpdesk", json!({"deletionPolicy": "Delete"})).await;
    let accesses = Api::<ChatflowAccess>::namespaced(stack.account.admin.clone(), stack.ns());
    let root = token("root", json!({"role": "Admin"}));
    let (bob, carol) = ("bob@example.test", "carol@example.test");
    let path = |email: &str| {
        format!(
            "/api/admin/chatflows/{id}/users/email/{}",
            email.replace('@', "%40")
        )
    };
    let bob_token = token("bob", json!({"email": bob}));
    stack.eventually_predicts(&bob_token, &id, 403).await;

    // chatflowaccesses get (404) + create: the admin API's own object appears.
    let (status, body) = stack.call(M::POST, &path(bob), &root).await;
    assert_eq!(status, 200, "grant bob: {body}");
    stack.eventually_predicts(&bob_token, &id, 200).await;
    // get + update: a second user is added to the same object.
    let (status, body) = stack.call(M::POST, &path(carol), &root).await;
    assert_eq!(status, 200, "grant carol: {body}");
    let object = accesses
        .get("admin-api-helpdesk")
        .await
        .expect("the admin API's ChatflowAccess");
    assert_eq!(object.spec.subjects.len(), 2, "{:?}", object.spec.subjects);
    // update: one user is removed; delete: the last one takes the object with it.
    let (status, body) = stack.call(M::DELETE, &path(carol), &root).await;
    assert_eq!(status, 200, "revoke carol: {body}");
    let (status, body) = stack.call(M::DELETE, &path(bob), &root).await;
    assert_eq!(status, 200, "revoke bob: {body}");
    stack.eventually_predicts(&bob_token, &id, 403).await;
    assert!(
        accesses
            .get_opt("admin-api-helpdesk")
            .await
            .expect("GET works")
            .is_none(),
        "the last revoke deletes the admin-api object"
    );

    // chatflows get + patch (deletionPolicy Delete -> Retain) + delete.
    let (status, body) = stack
        .call(M::DELETE, &format!("/api/admin/chatflows/{id}"), &root)
        .await;
    assert_eq!(status, 200, "delete the Chatflow object: {body}");
    let chatflows = Api::<Chatflow>::namespaced(stack.account.admin.clone(), stack.ns());
    crate::harness::wait_deleted(&chatflows, "helpdesk").await;
    let name = format!("{}-helpdesk", stack.prefix);
    assert_eq!(
        crate::harness::named_in_flowise(&name).await.len(),
        1,
        "switched to Retain first: Flowise keeps the chatflow"
    );
    stack.controller_stop().await;
}

#[tokio::test]
async fn chatflow_api_keys_are_read_from_secrets_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-secret", false).await;
    let (_, key) = support::flowise_env();
    let secrets: Api<Secret> = Api::namespaced(stack.account.admin.clone(), stack.ns());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "flowise-key"}, "stringData": {"apiKey": key},
    }))
    .expect("literal");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("the key's Secret");
    let id = adopted(
        &stack,
        "keyed",
        json!({"apiKeySecretRef": {"name": "flowise-key", "key": "apiKey"}}),
    )
    .await;
    grant(
        &stack,
        "alice",
        "keyed",
        json!([{"user": "alice@example.com"}]),
    )
    .await;
    // The proxy reads the Secret (get) for every prediction on a chatflow bound to a key; a
    // Secret it cannot read is a 503 naming it.
    let alice = token("alice", json!({"email": "alice@example.com"}));
    let body = stack.eventually_predicts(&alice, &id, 200).await;
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Echo: ")),
        "{body}"
    );
    stack.controller_stop().await;
}

#[tokio::test]
async fn unclaimed_flowise_chatflows_are_imported_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-import", true).await;
    let (_, id) = stack.flowise_chatflow("unclaimed").await;
    // The sync pass imports it into the import namespace (chatflows: create).
    let result = stack.sync_now().await;
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let api = Api::<Chatflow>::namespaced(stack.account.admin.clone(), stack.ns());
    let imported = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .find(|c| c.spec.flowise_id.as_deref() == Some(id.as_str()))
        .expect("the unclaimed chatflow is imported");
    let name = imported.metadata.name.clone().expect("named");
    wait_ready(&api, &name, "True", "Synced").await;
    // A second pass finds the object there (create answers 409, then get): no error.
    let again = stack.sync_now().await;
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    stack.controller_stop().await;
}

#[tokio::test]
async fn service_account_callers_are_verified_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-sa-caller", false).await;
    let id = adopted(&stack, "in-cluster", json!({})).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.account.admin.clone(), stack.ns());
    let client: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "chat-client"}})).expect("literal");
    accounts
        .create(&PostParams::default(), &client)
        .await
        .expect("the chat client's ServiceAccount");
    let ns = stack.ns().to_string();
    grant(
        &stack,
        "chat-client",
        "in-cluster",
        json!([{"serviceAccount": {"namespace": ns, "name": "chat-client"}}]),
    )
    .await;
    // The binary verifies it with the keys it read from /.well-known/openid-configuration and
    // /openid/v1/jwks under the chart's token, then reviews it (a TokenReview) under that token.
    let bearer = token_request(&stack.account.admin, &ns, "chat-client", Some(AUDIENCE)).await;
    stack.eventually_predicts(&bearer, &id, 200).await;
    // The review shows in the binary's metrics.
    let accepted = support::metric(
        &stack.binary.ops,
        "flowgate_token_reviews_total{outcome=\"accepted\"}",
    )
    .await;
    assert!(
        accepted.is_some_and(|n| n >= 1.0),
        "an accepted review counted: {accepted:?}"
    );
    stack.controller_stop().await;
}

#[tokio::test]
async fn credit_alerts_are_recorded_as_events_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-events", false).await;
    let id = adopted(&stack, "metered", json!({})).await;
    grant(&stack, "team", "metered", json!([{"group": "team"}])).await;
    let policies = Api::<CreditPolicy>::namespaced(stack.account.admin.clone(), stack.ns());
    let policy = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
        "metadata": {"name": "one-each"},
        "spec": {"chatflows": ["metered"], "subjects": [],
                 "budget": {"credits": 1, "period": "Never", "scope": "PerSubject"},
                 "cost": {"perPrediction": 1}, "alertAtPercent": [100]}});
    create(&policies, policy).await;
    wait_ready(&policies, "one-each", "True", "Active").await;
    let events: Api<Event> = Api::namespaced(stack.account.admin.clone(), stack.ns());
    let alerts = || async {
        events
            .list(&ListParams::default())
            .await
            .expect("events list")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("CreditThresholdCrossed"))
            .collect::<Vec<_>>()
    };
    // events create: the first subject to use its one credit crosses 100 %.
    let first = token("ann", json!({"groups": ["team"]}));
    stack.eventually_predicts(&first, &id, 200).await;
    support::eventually(20, "a CreditThresholdCrossed Event", || async {
        (!alerts().await.is_empty()).then_some(())
    })
    .await;
    // events patch: the same alert about the same policy again is counted on that Event.
    let second = token("ben", json!({"groups": ["team"]}));
    let (status, body) = stack.predict(&second, &id).await;
    assert_eq!(status, 200, "{body}");
    support::eventually(
        20,
        "the Event's series counts the second crossing",
        || async {
            let all = alerts().await;
            all.iter()
                .any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
                .then_some(())
        },
    )
    .await;
    stack.controller_stop().await;
}

/// The token is the chart's ServiceAccount and nothing more: requests outside the chart's
/// rules are refused, including the verbs the chart deliberately leaves out.
#[tokio::test]
async fn the_chart_service_account_is_refused_what_the_chart_does_not_grant() {
    let account = ChartAccount::install("rbac-refused").await;
    let _objects = support::NamespaceCleanup(account.ns.clone());
    let client = account.client.clone();
    let ns = account.ns.clone();
    let sa = format!("system:serviceaccount:{ns}:{}", account.name);
    let forbidden = |what: &str, result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} must be forbidden to {sa}, got {other:?}"),
    };
    let ok = |result: Result<(), kube::Error>| result.map(|_| ());

    // Granted, as a control: the same token reads what the chart grants.
    Api::<Chatflow>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("chatflows: list is granted");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    forbidden(
        "secrets: list",
        ok(secrets.list(&ListParams::default()).await.map(drop)),
    );
    forbidden(
        "namespaces: list",
        ok(Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(drop)),
    );
    // flowgate's own CRDs are read by name; no other, and none is listed or changed.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get("chatflows.flowgate.io")
        .await
        .expect("flowgate's CRDs: get is granted");
    forbidden(
        "customresourcedefinitions: get of another CRD",
        ok(crds.get("leases.coordination.k8s.io").await.map(drop)),
    );
    forbidden(
        "customresourcedefinitions: list",
        ok(crds.list(&ListParams::default()).await.map(drop)),
    );
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "elsewhere"}})).expect("literal");
    forbidden(
        "leases: create outside the release namespace",
        ok(Api::<Lease>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &lease)
            .await
            .map(drop)),
    );
    let core_event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "involvedObject": {"kind": "Namespace", "name": ns},
        "reason": "Probe", "message": "probe",
    }))
    .expect("literal");
    forbidden(
        "core/v1 events: create (flowgate records events.k8s.io/v1 only)",
        ok(Api::<CoreEvent>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &core_event)
            .await
            .map(drop)),
    );
    let policy: CreditPolicy = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
        "metadata": {"name": "not-mine"},
        "spec": {"chatflows": ["*"], "subjects": [], "budget": {"credits": 1, "period": "Never"}},
    }))
    .expect("literal");
    forbidden(
        "creditpolicies: create",
        ok(Api::<CreditPolicy>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &policy)
            .await
            .map(drop)),
    );
    let chatflow: Chatflow = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "metadata": {"name": "anything", "resourceVersion": "1"},
        "spec": {"flowiseName": "anything"},
    }))
    .expect("literal");
    let chatflows = Api::<Chatflow>::namespaced(client.clone(), &ns);
    forbidden(
        "chatflows: update (the finalizer and the admin API patch)",
        ok(chatflows
            .replace("anything", &PostParams::default(), &chatflow)
            .await
            .map(drop)),
    );
    forbidden(
        "chatflows/status: update (status is server-side applied)",
        ok(chatflows
            .replace_status("anything", &PostParams::default(), &chatflow)
            .await
            .map(drop)),
    );
    let merge = Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}}));
    forbidden(
        "chatflowaccesses: patch (the admin API replaces on resourceVersion)",
        ok(Api::<ChatflowAccess>::namespaced(client.clone(), &ns)
            .patch("anything", &PatchParams::default(), &merge)
            .await
            .map(drop)),
    );
}
