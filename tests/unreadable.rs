//! Objects the real API server holds that flowgate cannot read — stored before their CRD had the
//! bound they break, written here straight into etcd — are reported and skipped. Every other
//! object of their kind keeps being served; one that becomes unreadable stops granting; a
//! CreditPolicy that cannot be read refuses (with `--invalid-policies refuse`) instead of
//! charging nothing.

mod support;

use serde_json::{Value, json};

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, eventually_status, predict, token};
use support::team::Team;
use support::{edit_in_etcd, eventually, metric};

/// A `rateLimit.requests` over u32: what a ChatflowAccess from before the CRD's bound may hold.
fn over_the_bound(access: &mut Value) {
    access["spec"]["rateLimit"] = json!({"requests": 5_000_000_000_u64, "per": "Second"});
}

#[tokio::test]
async fn objects_flowgate_cannot_read_are_skipped_and_the_others_served() {
    let team = Team::with_fake_flowise("unreadable").await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
    let bob = token("bob-sub", json!({"email": format!("bob@{}.test", team.ns)}));
    team.grant("bob", json!([{"user": format!("bob@{}.test", team.ns)}]))
        .await;
    edit_in_etcd("chatflowaccesses", &team.ns, "bob", over_the_bound).await;

    // Started after: its first list holds the unreadable object.
    let gate = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        invalid_policies: Some("refuse".into()),
        ..Default::default()
    })
    .await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let (status, body) = predict(&gate, &bob, &id, json!({"question": "hi"})).await;
    assert_eq!(status, 403, "an unreadable grant grants nothing: {body}");
    let skipped = metric(
        &gate.ops,
        r#"flowgate_index_invalid_resources{kind="ChatflowAccess"}"#,
    )
    .await;
    assert!(skipped >= Some(1.0), "counted as invalid: {skipped:?}");

    // A grant turning unreadable while served stops granting (its old version is not kept).
    edit_in_etcd("chatflowaccesses", &team.ns, "support-team", over_the_bound).await;
    eventually_status(&gate, &team.alice(), &id, 403).await;
    // Fixed through the API server, it grants again.
    let api: kube::Api<flowgate::crd::ChatflowAccess> =
        kube::Api::namespaced(team.client.clone(), &team.ns);
    api.patch(
        "support-team",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"rateLimit": null}})),
    )
    .await
    .expect("a valid spec is accepted");
    eventually_status(&gate, &team.alice(), &id, 200).await;

    // A budget that cannot be read would have charged something: it refuses instead.
    team.policy(
        "spend",
        json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"}}),
    )
    .await;
    edit_in_etcd("creditpolicies", &team.ns, "spend", |policy| {
        policy["spec"]["budget"]["credits"] = json!(-5);
    })
    .await;
    let refused = eventually(10, "the unreadable policy refusing", || async {
        let (status, body) = predict(&gate, &team.alice(), &id, json!({"question": "x"})).await;
        (status == 503).then_some(body)
    })
    .await;
    let text = refused.to_string();
    assert!(
        text.contains(&format!("{}/spend", team.ns)) && text.contains("spec.budget.credits"),
        "says which policy and where: {text}"
    );
    team.cleanup().await;
}
