//! The generated CRDs against the real API server: examples accepted, bad objects refused with a
//! message naming the field, printer columns, short names, categories, `kubectl explain`, and
//! the typed kube-rs API (create, list, watch, status by server-side apply).

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::json;

use flowgate::crd::{Chatflow, ChatflowAccess, ChatflowSpec, CreditPolicy};

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Chatflow" => ApiResource::erase::<Chatflow>(&()),
        "ChatflowAccess" => ApiResource::erase::<ChatflowAccess>(&()),
        "CreditPolicy" => ApiResource::erase::<CreditPolicy>(&()),
        other => ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", other)),
    }
}

/// Creates `doc` in `ns` and returns the API server's answer.
async fn create(
    client: &kube::Client,
    ns: &str,
    mut doc: serde_json::Value,
) -> kube::Result<DynamicObject> {
    doc["metadata"]["namespace"] = json!(ns);
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(&kind));
    let obj: DynamicObject = serde_json::from_value(doc).expect("object literal");
    api.create(&PostParams::default(), &obj).await
}

fn rejection_message(result: kube::Result<DynamicObject>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                status.code, 422,
                "schema violations are 422 Invalid: {status:?}"
            );
            status.message.clone()
        }
        other => panic!("expected the API server to refuse the object, got {other:?}"),
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "examples").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let examples = support::examples();
    assert!(
        examples.len() >= 5,
        "examples/ holds the team-a walkthrough"
    );
    for (file, doc) in examples {
        create(&client, &ns, doc)
            .await
            .unwrap_or_else(|e| panic!("examples/{file} refused: {e}"));
    }
    let chatflows: Api<Chatflow> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = chatflows
        .list(&ListParams::default())
        .await
        .expect("list chatflows")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, vec!["faq-bot", "support-bot"]);
    let faq = chatflows.get("faq-bot").await.expect("faq-bot stored");
    let flow = &faq
        .spec
        .definition
        .expect("faq-bot owns a definition")
        .flow_data;
    assert_eq!(
        flow["nodes"].as_array().map(Vec::len),
        Some(2),
        "flowData kept as-is"
    );
}

#[tokio::test]
async fn a_chatflow_with_an_unknown_type_is_refused_naming_the_field() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "bad-type").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let message = rejection_message(
        create(
            &client,
            &ns,
            json!({
                "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
                "metadata": {"name": "bad"},
                "spec": {"definition": {"type": "NOTATYPE", "flowData": {"nodes": [], "edges": []}}}
            }),
        )
        .await,
    );
    assert!(message.contains("spec.definition.type"), "{message}");
    assert!(message.contains("NOTATYPE"), "{message}");
}

#[tokio::test]
async fn a_negative_budget_is_refused_naming_the_field() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "bad-budget").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let message = rejection_message(
        create(
            &client,
            &ns,
            json!({
                "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
                "metadata": {"name": "bad"},
                "spec": {"chatflows": ["*"], "budget": {"credits": -1, "period": "Monthly"}}
            }),
        )
        .await,
    );
    assert!(message.contains("spec.budget.credits"), "{message}");
}

#[tokio::test]
async fn other_schema_violations_are_refused_naming_the_field() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "bad-fields").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let cases = [
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "metadata": {"name": "a"},
                   "spec": {"flowiseId": "not-a-uuid"}}),
            "spec.flowiseId",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "metadata": {"name": "b"},
                   "spec": {"flowiseName": "x", "deletionPolicy": "Sometimes"}}),
            "spec.deletionPolicy",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "c"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}], "role": "Owner"}}),
            "spec.role",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "d"},
                   "spec": {"chatflows": [], "subjects": [{"user": "u"}]}}),
            "spec.chatflows",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "e"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": 5, "period": "Fortnightly"}}}),
            "spec.budget.period",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "f"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": 5, "period": "Daily", "scope": "Everyone"}}}),
            "spec.budget.scope",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "g"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": 5, "period": "Daily"},
                            "cost": {"perPrediction": -2}}}),
            "spec.cost.perPrediction",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "h"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                            "rateLimit": {"requests": 0, "per": "Minute"}}}),
            "spec.rateLimit.requests",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "i"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                            "rateLimit": {"requests": 5, "per": "Day"}}}),
            "spec.rateLimit.per",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "j"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": 5, "period": "Daily"},
                            "cost": {"perPrediction": 9_007_199_254_740_992_u64}}}),
            "spec.cost.perPrediction",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "k"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": u64::MAX, "period": "Daily"}}}),
            "spec.budget.credits",
        ),
        // Values the API server's formats let through but flowgate could not read: each would
        // fail the whole watch of its kind.
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "l"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                            "rateLimit": {"requests": 4_294_967_296_u64, "per": "Minute"}}}),
            "spec.rateLimit.requests",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "m"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                            "expiresAt": "2030-01-01T00:00:00.1234567890Z"}}),
            "spec.expiresAt",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "p"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                            "expiresAt": "9999-12-31T00:00:00Z"}}),
            "spec.expiresAt",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy", "metadata": {"name": "n"},
                   "spec": {"chatflows": ["*"], "budget": {"credits": 5, "period": "Daily"},
                            "alertAtPercent": [150]}}),
            "spec.alertAtPercent",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "o"},
                   "spec": {"chatflows": ["Support_Bot"], "subjects": [{"user": "u"}]}}),
            "spec.chatflows",
        ),
        (
            json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "Team_A"},
                   "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}]}}),
            "metadata.name",
        ),
    ];
    for (doc, field) in cases {
        // Where there is no API server (`flowgate check`, `--resources-dir`), flowgate refuses
        // the same objects, naming the same field.
        let kind = doc["kind"].as_str().unwrap_or_default();
        let schema = flowgate::crd::schema::for_kind(kind).expect("a flowgate kind");
        let violations = schema.violations(&doc);
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with(&format!(".{field}"))),
            "expected {field} in {violations:?}"
        );
        let message = rejection_message(create(&client, &ns, doc).await);
        assert!(message.contains(field), "expected {field} in: {message}");
    }
    // The bounds keep what flowgate reads: nanoseconds and an offset, the largest rate.
    let edge = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "edge"},
        "spec": {"chatflows": ["x"], "subjects": [{"user": "u"}],
                 "expiresAt": "2030-01-01T00:00:00.123456789+02:00",
                 "rateLimit": {"requests": u32::MAX, "per": "Hour"}}});
    let schema = flowgate::crd::schema::for_kind("ChatflowAccess").expect("schema");
    assert_eq!(schema.violations(&edge), Vec::<String>::new());
    create(&client, &ns, edge).await.expect("accepted");
    let typed: kube::Api<flowgate::crd::ChatflowAccess> =
        kube::Api::namespaced(client.clone(), &ns);
    let edge = typed.get("edge").await.expect("read back typed");
    assert_eq!(edge.spec.rate_limit.map(|r| r.requests), Some(u32::MAX));
}

#[tokio::test]
async fn typed_api_creates_lists_watches_and_applies_status() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "typed").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    let api: Api<Chatflow> = Api::namespaced(client.clone(), &ns);

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let chatflow = Chatflow::new(
        "support-bot",
        ChatflowSpec {
            flowise_name: Some("Support Bot".into()),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &chatflow)
        .await
        .expect("created");

    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.try_next().await.expect("watch works") {
            if let watcher::Event::Apply(cf) | watcher::Event::InitApply(cf) = event
                && cf.metadata.name.as_deref() == Some("support-bot")
            {
                return cf;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the watch sees the new Chatflow within 20 s");
    assert_eq!(seen.spec.flowise_name.as_deref(), Some("Support Bot"));

    let status = json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "status": {
            "flowiseId": "3f1c2a7e-0000-4000-8000-000000000001",
            "type": "CHATFLOW", "deployed": true, "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "in sync",
                            "lastTransitionTime": "2026-11-22T00:00:00Z"}]
        }
    });
    api.patch_status(
        "support-bot",
        &PatchParams::apply("flowgate").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("status applied server-side");
    let stored = api.get_status("support-bot").await.expect("read back");
    let stored = stored.status.expect("status stored");
    assert_eq!(
        stored.flowise_id.as_deref(),
        Some("3f1c2a7e-0000-4000-8000-000000000001")
    );
    assert!(flowgate::crd::conditions::is_true(
        &stored.conditions,
        "Ready"
    ));

    let listed = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);

    // Printer columns and short name, as an operator sees them.
    let table = support::kubectl(&["get", "cf", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "FLOWISE-ID", "TYPE", "DEPLOYED", "READY", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("one row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        [
            "support-bot",
            "3f1c2a7e-0000-4000-8000-000000000001",
            "CHATFLOW",
            "true",
            "True"
        ]
    );
}

#[tokio::test]
async fn short_names_category_and_explain_work_through_kubectl() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "kubectl").await;
    let _cleanup = support::NamespaceCleanup(ns.clone());
    for (_, doc) in support::examples() {
        create(&client, &ns, doc).await.expect("example accepted");
    }
    let all = support::kubectl(&["get", "flowgate", "-n", &ns, "-o", "name"]);
    for expected in [
        "chatflow.flowgate.io/faq-bot",
        "chatflowaccess.flowgate.io/support-team",
        "creditpolicy.flowgate.io/monthly-default",
    ] {
        assert!(
            all.contains(expected),
            "`kubectl get flowgate` lists {expected}: {all}"
        );
    }
    let cfa = support::kubectl(&["get", "cfa", "-n", &ns]);
    assert!(
        cfa.starts_with("NAME") && cfa.contains("ROLE") && cfa.contains("team-admins"),
        "{cfa}"
    );
    let cpol = support::kubectl(&["get", "cpol", "-n", &ns]);
    assert!(
        cpol.contains("CREDITS") && cpol.contains("PERIOD") && cpol.contains("monthly-default"),
        "{cpol}"
    );

    let explain = support::kubectl(&["explain", "chatflow.spec.flowiseId"]);
    assert!(
        explain.contains("Adopt the existing Flowise chatflow with this id"),
        "{explain}"
    );
    let explain = support::kubectl(&["explain", "chatflow.spec"]);
    assert!(
        explain.contains("deletionPolicy") && explain.contains("definition"),
        "{explain}"
    );
}

/// The installed CRDs compared with the binary's (`crd::installed`, behind
/// `flowgate_crd_fields_missing`): the ones this suite installs lack nothing, as the API server
/// holds them; an older copy, installed under a group of the test's own so that no other test
/// sees it, lacks the fields it was installed without; a CRD not installed lacks everything.
#[tokio::test]
async fn an_installed_crd_older_than_the_binary_is_found_lacking_its_new_fields() {
    use flowgate::crd::installed;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;

    let client = support::client().await;
    support::install_crds(&client).await;
    for (_, crd) in flowgate::crd::definitions() {
        let missing = installed::check(&client, &crd).await.expect("readable");
        assert_eq!(missing, Vec::<String>::new(), "{:?}", crd.metadata.name);
    }

    let group = "older.flowgate.test";
    let mut ours = ChatflowAccess::crd();
    ours.spec.group = group.to_string();
    ours.metadata.name = Some(format!("{}.{group}", ours.spec.names.plural));
    let name = ours.metadata.name.clone().expect("named");
    let mut older = serde_json::to_value(&ours).expect("json");
    let spec = &mut older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let removed = spec["properties"]
        .as_object_mut()
        .and_then(|p| p.remove("rateLimit"));
    assert!(removed.is_some(), "ChatflowAccess has spec.rateLimit");
    let older: CustomResourceDefinition = serde_json::from_value(older).expect("a CRD");
    support::apply_crd(&client, &older).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());

    let missing = installed::check(&client, &ours).await.expect("readable");
    crds.delete(&name, &Default::default())
        .await
        .expect("the test's CRD is deleted");
    assert_eq!(missing, ["spec.rateLimit"]);

    let mut absent = ours.clone();
    absent.metadata.name = Some(format!("absent.{group}"));
    let missing = installed::check(&client, &absent).await.expect("readable");
    assert_eq!(missing, ["the whole CRD (not installed)"]);
}
