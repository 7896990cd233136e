//! ChatflowAccess and CreditPolicy status.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;
use crate::support;
use flowgate::crd::{ChatflowAccess, CreditPolicy};

#[tokio::test]
async fn access_resolves_refs_as_chatflows_come_and_reports_expiry_and_invalid_specs() {
    let (client, ns, api, _objects) = setup("cfa").await;
    let accesses: Api<ChatflowAccess> = Api::namespaced(client.clone(), &ns);
    let controller = start(&client, settings(&ns));
    create(
        &api,
        chatflow_doc("faq-bot", json!({"flowiseName": "fgtest-nowhere"})),
    )
    .await;

    create(&accesses, json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "team"},
        "spec": {"chatflows": ["faq-bot", "support-bot"], "subjects": [{"user": "alice"}, {"group": "support"}]}
    }))
    .await;
    let access = wait_until(
        &accesses,
        "team",
        30,
        "ResolvedRefs=False",
        |a: &ChatflowAccess| {
            a.conditions()
                .iter()
                .any(|c| c.type_ == "ResolvedRefs" && c.status == "False")
        },
    )
    .await;
    let status = access.status.clone().expect("status");
    assert_eq!((status.resolved_chatflows, status.subjects), (1, 2));
    let refs = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .expect("refs");
    assert!(
        refs.message.contains("support-bot") && !refs.message.contains("faq-bot"),
        "{}",
        refs.message
    );
    assert_eq!(ready(&access), Some(("True".into(), "Active".into())));

    // The missing Chatflow appears: the access is re-evaluated without being touched.
    create(
        &api,
        chatflow_doc("support-bot", json!({"flowiseName": "fgtest-nowhere-2"})),
    )
    .await;
    wait_until(
        &accesses,
        "team",
        30,
        "ResolvedRefs=True",
        |a: &ChatflowAccess| {
            a.status.as_ref().is_some_and(|s| s.resolved_chatflows == 2)
                && a.conditions()
                    .iter()
                    .any(|c| c.type_ == "ResolvedRefs" && c.status == "True")
        },
    )
    .await;

    // Being deleted, though another tool's finalizer keeps it: the proxy serves it no more, and
    // the access no longer counts it.
    let mut finalizers = api
        .get("support-bot")
        .await
        .expect("read")
        .metadata
        .finalizers
        .unwrap_or_default();
    finalizers.push("example.com/keep".into());
    let keep = json!({"metadata": {"finalizers": finalizers}});
    api.patch("support-bot", &PatchParams::default(), &Patch::Merge(&keep))
        .await
        .expect("finalizer added");
    api.delete("support-bot", &Default::default())
        .await
        .expect("deletion started");
    wait_until(
        &accesses,
        "team",
        30,
        "ResolvedRefs=False while support-bot is being deleted",
        |a: &ChatflowAccess| a.status.as_ref().is_some_and(|s| s.resolved_chatflows == 1),
    )
    .await;
    finalizers.retain(|f| f != "example.com/keep");
    let release = json!({"metadata": {"finalizers": finalizers}});
    api.patch(
        "support-bot",
        &PatchParams::default(),
        &Patch::Merge(&release),
    )
    .await
    .expect("finalizer removed");

    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
    let soon = jiff::Timestamp::from_second(soon.as_second()).expect("time");
    create(&accesses, json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "temporary"},
        "spec": {"chatflows": ["*"], "subjects": [{"user": "bob"}], "expiresAt": soon.to_string()}
    }))
    .await;
    wait_ready(&accesses, "temporary", "True", "Active").await;
    wait_ready(&accesses, "temporary", "False", "Expired").await;

    create(
        &accesses,
        json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {"name": "broken"},
            "spec": {"chatflows": ["*", "faq-bot"], "subjects": [{"user": "carol"}]}
        }),
    )
    .await;
    wait_ready(&accesses, "broken", "False", "InvalidSpec").await;
    assert_eq!(
        ready(&accesses.get("team").await.expect("read")),
        Some(("True".into(), "Active".into())),
        "one bad object does not affect the others"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_credit_policy_reports_invalid_time_zones_and_leaves_credit_fields_alone() {
    let (client, ns, _, _objects) = setup("cpol").await;
    let policies: Api<CreditPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = |name: &str, tz: &str| {
        json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": name},
            "spec": {"chatflows": ["*"], "budget": {"credits": 100, "period": "Monthly", "timeZone": tz}}
        })
    };
    create(&policies, policy("mars", "Mars/Olympus")).await;
    create(&policies, policy("berlin", "Europe/Berlin")).await;
    // The ledger's fields, written under another field manager before the controller runs.
    let credits = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
                         "status": {"creditsUsed": 7, "subjectsExhausted": 1}});
    policies
        .patch_status(
            "berlin",
            &PatchParams::apply("flowgate-credits-test").force(),
            &Patch::Apply(&credits),
        )
        .await
        .expect("credits written");
    let controller = start(&client, settings(&ns));

    let mars = wait_ready(&policies, "mars", "False", "InvalidSpec").await;
    assert!(mars.conditions()[0].message.contains("Mars/Olympus"));
    let berlin = wait_ready(&policies, "berlin", "True", "Active").await;
    let status = berlin.status.expect("status");
    assert_eq!(
        (status.credits_used, status.subjects_exhausted),
        (7, 1),
        "credit fields kept"
    );
    assert_eq!(status.observed_generation, Some(1));
    controller.stop().await;
}

/// Objects applied together, as a GitOps sync does, in no particular order: every reference
/// resolves from the watch events alone (the resync is 10 minutes away), and Chatflows going
/// away turn the references naming them False.
#[tokio::test]
async fn references_follow_chatflows_applied_and_deleted_together_without_a_resync() {
    let (client, ns, api, _objects) = setup("refs").await;
    let accesses: Api<ChatflowAccess> = Api::namespaced(client.clone(), &ns);
    let policies: Api<CreditPolicy> = Api::namespaced(client.clone(), &ns);
    let mut quiet = settings(&ns);
    quiet.sync_interval = std::time::Duration::from_secs(600);
    let controller = start(&client, quiet);
    support::eventually(20, "the controller leads", || async {
        controller.metrics.controller.is_leader().then_some(())
    })
    .await;

    const PAIRS: usize = 12;
    let apply = (0..PAIRS).map(|i| {
        let (api, accesses, policies) = (api.clone(), accesses.clone(), policies.clone());
        async move {
            let bot = format!("bot-{i}");
            create(
                &accesses,
                json!({
                    "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
                    "metadata": {"name": format!("access-{i}")},
                    "spec": {"chatflows": [bot], "subjects": [{"user": "alice"}]}
                }),
            )
            .await;
            create(
                &policies,
                json!({
                    "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
                    "metadata": {"name": format!("policy-{i}")},
                    "spec": {"chatflows": [bot], "budget": {"credits": 10, "period": "Monthly"}}
                }),
            )
            .await;
            create(
                &api,
                chatflow_doc(&bot, json!({"flowiseName": "fgtest-nowhere"})),
            )
            .await;
        }
    });
    futures::future::join_all(apply).await;

    let refs = |want: &'static str| {
        move |conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
            conditions
                .iter()
                .any(|c| c.type_ == "ResolvedRefs" && c.status == want)
        }
    };
    for i in 0..PAIRS {
        let resolved = refs("True");
        wait_until(
            &accesses,
            &format!("access-{i}"),
            20,
            "ResolvedRefs=True",
            move |a| resolved(a.conditions()),
        )
        .await;
        let resolved = refs("True");
        wait_until(
            &policies,
            &format!("policy-{i}"),
            20,
            "ResolvedRefs=True",
            move |p| resolved(p.conditions()),
        )
        .await;
    }

    let gone = PAIRS / 2;
    for i in 0..gone {
        api.delete(&format!("bot-{i}"), &Default::default())
            .await
            .expect("delete");
    }
    for i in 0..PAIRS {
        let want = if i < gone { "False" } else { "True" };
        let check = refs(want);
        wait_until(&accesses, &format!("access-{i}"), 20, want, move |a| {
            check(a.conditions())
        })
        .await;
        let check = refs(want);
        wait_until(&policies, &format!("policy-{i}"), 20, want, move |p| {
            check(p.conditions())
        })
        .await;
    }
    controller.stop().await;
}
