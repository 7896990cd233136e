//! Under the chart's ServiceAccount: every file of `examples/` reaches Ready, an owned chatflow
//! is created and cleaned up through its finalizer, and the leader Lease is held.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};

use crate::harness::{create, owned_doc, wait_deleted, wait_for_event, wait_ready, wait_until};
use crate::rbac_support::{AUDIENCE, Stack, token_request};
use crate::support;
use crate::support::gate::token;

/// `examples/` moved into `ns`: the ServiceAccount subject into `apps_ns`, and the Flowise
/// names it adopts ("Support Bot") or owns ("FAQ Bot") prefixed with `prefix`, so tests sharing
/// one Flowise never see each other's chatflows (adoption by name needs exactly one match).
fn rewrite(mut doc: Value, ns: &str, apps_ns: &str, prefix: &str) -> Value {
    doc["metadata"]["namespace"] = json!(ns);
    let spec = &mut doc["spec"];
    if let Some(name) = spec["flowiseName"].as_str() {
        spec["flowiseName"] = json!(format!("{prefix}-{name}"));
    }
    if let Some(name) = spec["definition"]["name"].as_str() {
        spec["definition"]["name"] = json!(format!("{prefix}-{name}"));
    }
    if let Some(subjects) = spec["subjects"].as_array_mut() {
        for subject in subjects {
            if subject["serviceAccount"].is_object() {
                subject["serviceAccount"]["namespace"] = json!(apps_ns);
            }
        }
    }
    doc
}

/// The Ready condition an example must reach: (status, reason).
fn expected_ready(doc: &Value) -> (&'static str, &'static str) {
    match doc["kind"].as_str() {
        Some("Chatflow") => ("True", "Synced"),
        Some("CreditPolicy") => ("True", "Active"),
        Some("ChatflowAccess") => {
            let expired = doc["spec"]["expiresAt"]
                .as_str()
                .and_then(|at| at.parse::<jiff::Timestamp>().ok())
                .is_some_and(|at| at <= jiff::Timestamp::now());
            if expired {
                ("False", "Expired")
            } else {
                ("True", "Active")
            }
        }
        other => panic!("an example of an unknown kind: {other:?}"),
    }
}

#[tokio::test]
async fn every_example_reaches_ready_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-examples", false).await;
    let (admin, ns) = (stack.account.admin.clone(), stack.ns().to_string());
    // examples/chatflow-support-bot.yaml adopts "Support Bot" by name (scripts/dev.sh creates
    // it); ours is the echo flow under this test's prefix.
    let (_, support_bot) = stack.flowise_chatflow("Support Bot").await;
    let apps_ns = support::fresh_namespace(&admin, "rbac-apps").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &apps_ns);
    let chat_client: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "chat-client"}})).expect("literal");
    accounts
        .create(&PostParams::default(), &chat_client)
        .await
        .expect("the chat client's ServiceAccount");

    let (chatflows, accesses, policies) = (
        Api::<Chatflow>::namespaced(admin.clone(), &ns),
        Api::<ChatflowAccess>::namespaced(admin.clone(), &ns),
        Api::<CreditPolicy>::namespaced(admin.clone(), &ns),
    );
    let examples: Vec<(String, Value)> = support::examples()
        .into_iter()
        .map(|(file, doc)| (file, rewrite(doc, &ns, &apps_ns, &stack.prefix)))
        .collect();
    assert!(
        examples.len() >= 6,
        "examples/ holds the team-a walkthrough"
    );
    for (file, doc) in &examples {
        match doc["kind"].as_str() {
            Some("Chatflow") => drop(create(&chatflows, doc.clone()).await),
            Some("ChatflowAccess") => drop(create(&accesses, doc.clone()).await),
            Some("CreditPolicy") => drop(create(&policies, doc.clone()).await),
            other => panic!("examples/{file}: unknown kind {other:?}"),
        }
    }
    // Ready is written by the controller (list/watch on the three kinds, server-side apply on
    // their /status) under the chart's token.
    for (file, doc) in &examples {
        let name = doc["metadata"]["name"].as_str().expect("named");
        let (status, reason) = expected_ready(doc);
        let ready = match doc["kind"].as_str() {
            Some("Chatflow") => {
                crate::harness::ready(&wait_ready(&chatflows, name, status, reason).await)
            }
            Some("ChatflowAccess") => {
                crate::harness::ready(&wait_ready(&accesses, name, status, reason).await)
            }
            _ => crate::harness::ready(&wait_ready(&policies, name, status, reason).await),
        };
        assert_eq!(
            ready,
            Some((status.to_string(), reason.to_string())),
            "examples/{file}"
        );
    }
    let adopted = chatflows.get("support-bot").await.expect("support-bot");
    assert_eq!(
        adopted.status.and_then(|s| s.flowise_id),
        Some(support_bot.clone())
    );
    // Events about the objects (events.k8s.io create) come from the controller too.
    wait_for_event(&admin, &ns, "support-bot", "Adopted").await;
    wait_for_event(&admin, &ns, "faq-bot", "Created").await;

    // The binary's index (list/watch under the same token) serves the examples' grants: a user
    // by email, a group, and the chat client by its ServiceAccount token.
    let alice = token("alice", json!({"email": "alice@example.com"}));
    let faq = chatflows
        .get("faq-bot")
        .await
        .expect("faq-bot")
        .status
        .and_then(|s| s.flowise_id)
        .expect("faq-bot has its Flowise id");
    for (who, bearer, id) in [
        ("alice", alice.clone(), &support_bot),
        (
            "the support group",
            token("sam", json!({"groups": ["support"]})),
            &faq,
        ),
        (
            "apps/chat-client",
            token_request(&admin, &apps_ns, "chat-client", Some(AUDIENCE)).await,
            &support_bot,
        ),
    ] {
        let body = stack.eventually_predicts(&bearer, id, 200).await;
        assert!(
            body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Echo: ")),
            "{who}: {body}"
        );
    }
    let bob = token("bob", json!({"email": "bob@example.com"}));
    let (status, _) = stack.predict(&bob, &support_bot).await;
    assert_eq!(status, 403, "nobody else is granted");

    // The binary read the installed CRDs (get on customresourcedefinitions, by name) and found
    // them this version's.
    let scrape = format!("{}/metrics", stack.binary.ops);
    for crd in [
        "chatflows.flowgate.io",
        "chatflowaccesses.flowgate.io",
        "creditpolicies.flowgate.io",
    ] {
        let metrics = reqwest::get(&scrape)
            .await
            .expect("/metrics")
            .text()
            .await
            .expect("text");
        for series in [
            format!("flowgate_crd_fields_missing{{crd=\"{crd}\"}} 0"),
            format!("flowgate_crd_readable{{crd=\"{crd}\"}} 1"),
        ] {
            assert!(metrics.contains(&series), "{series} in:\n{metrics}");
        }
    }

    // The leader writes usage from the ledger into the policies' status (its own field manager).
    wait_until(&policies, "monthly-default", 60, "creditsUsed > 0", |p| {
        p.status.as_ref().is_some_and(|s| s.credits_used > 0)
    })
    .await;
    stack.controller_stop().await;
}

#[tokio::test]
async fn an_owned_chatflow_is_created_and_cleaned_up_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-owned", false).await;
    let api = Api::<Chatflow>::namespaced(stack.account.admin.clone(), stack.ns());
    let flowise_name = format!("{}-owned", stack.prefix);
    create(&api, owned_doc("owned", &flowise_name, "Delete")).await;
    let cf = wait_ready(&api, "owned", "True", "Synced").await;
    assert!(
        cf.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty()),
        "the cleanup finalizer was added (chatflows: patch)"
    );
    let id = cf.status.and_then(|s| s.flowise_id).expect("flowise id");
    assert_eq!(
        crate::harness::named_in_flowise(&flowise_name).await.len(),
        1,
        "created in Flowise"
    );
    api.delete("owned", &DeleteParams::default())
        .await
        .expect("delete");
    // The finalizer is removed (chatflows: patch) once the chatflow is deleted from Flowise.
    wait_deleted(&api, "owned").await;
    assert!(
        crate::harness::named_in_flowise(&flowise_name)
            .await
            .iter()
            .all(|c| c.id != id),
        "deleted from Flowise"
    );
    stack.controller_stop().await;
}

#[tokio::test]
async fn the_leader_lease_is_acquired_renewed_and_released_under_the_chart_service_account() {
    let mut stack = Stack::start("rbac-lease", false).await;
    let leases: Api<Lease> = Api::namespaced(stack.account.admin.clone(), stack.ns());
    let held = |lease: &Lease| {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
    };
    // get + create: the first candidate creates the Lease.
    let lease = support::eventually(30, "the Lease is held", || async {
        leases
            .get_opt("flowgate-controller")
            .await
            .ok()
            .flatten()
            .filter(|l| held(l).is_some())
    })
    .await;
    let renewed_at = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first = renewed_at(&lease);
    // update: the holder renews every second.
    support::eventually(15, "the Lease is renewed", || async {
        let now = leases.get("flowgate-controller").await.ok()?;
        (renewed_at(&now) != first && held(&now).is_some()).then_some(())
    })
    .await;
    // update: on shutdown the Lease is released for the next replica.
    stack.controller_stop().await;
    let released = leases.get("flowgate-controller").await.expect("Lease");
    assert_eq!(held(&released), None, "released on shutdown: {released:?}");
}
