//! The controller against the real local API server (scripts/local-cluster.sh) and the real
//! Flowise (scripts/flowise.sh). Every test has its own namespace, its own Lease, its own
//! controller watching only that namespace, and Flowise chatflows named with its own prefix,
//! deleted when the test ends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use flowgate::controller::{
    Controller, ControllerError, LAST_SYNC_REFRESH, LeaseSettings, Settings, SyncOutcome, SyncState,
};
use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};
use flowgate::flowise::{ChatflowWrite, FlowiseApi, FlowiseChatflow, FlowiseClient, Timeouts};
use flowgate::metrics::Metrics;

/// A controller running in this test.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ControllerError>>,
    metrics: Arc<Metrics>,
    sync: SyncState,
}

impl Running {
    /// Stops it as SIGTERM does: in-flight work finishes, the Lease is released.
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the controller stops within 30 s")
            .expect("the controller task did not panic");
        result.expect("the controller stopped cleanly");
    }

    /// Ends it abruptly, as `kill -9` would: nothing is released.
    fn kill(self) {
        self.task.abort();
    }

    fn reconciles(&self) -> u64 {
        self.metrics.controller.reconciles("Chatflow")
    }
}

/// Settings for a controller scoped to `ns`, with a short Lease in `ns`.
fn settings(ns: &str) -> Settings {
    let mut lease = LeaseSettings::new(ns);
    lease.duration = Duration::from_secs(3);
    lease.renew_every = Duration::from_secs(1);
    lease.retry_every = Duration::from_millis(300);
    Settings {
        namespace: Some(ns.to_string()),
        import_namespace: None,
        import_name_prefix: None,
        sync_interval: Duration::from_secs(60),
        last_sync_refresh: LAST_SYNC_REFRESH,
        lease,
    }
}

fn start_with(client: &Client, settings: Settings, flowise: Arc<dyn FlowiseApi>) -> Running {
    let metrics = Arc::new(Metrics::new());
    let controller = Controller::new(client.clone(), flowise, settings, metrics.clone());
    let sync = controller.sync_state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        metrics,
        sync,
    }
}

fn start(client: &Client, settings: Settings) -> Running {
    start_with(client, settings, Arc::new(support::flowise()))
}

/// A client for Flowise at `url` with the real API key.
fn flowise_at(url: &str) -> Arc<dyn FlowiseApi> {
    let (_, key) = support::flowise_env();
    Arc::new(
        FlowiseClient::new(
            url.parse().expect("url"),
            Some(key),
            Timeouts {
                connect: Duration::from_secs(1),
                request: Duration::from_secs(5),
            },
        )
        .expect("client"),
    )
}

/// A client, a fresh namespace, the Chatflows API there, and the guard that empties the
/// namespace when the test ends.
async fn setup(prefix: &str) -> (Client, String, Api<Chatflow>, support::NamespaceCleanup) {
    support::logs();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    let cleanup = support::NamespaceCleanup(ns.clone());
    (client, ns, api, cleanup)
}

async fn create<K>(api: &Api<K>, doc: serde_json::Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(doc).expect("object literal");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("created")
}

fn chatflow_doc(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
           "metadata": {"name": name}, "spec": spec})
}

/// Creates an echo Agentflow directly in Flowise.
async fn flowise_chatflow(name: &str, category: Option<&str>) -> FlowiseChatflow {
    support::flowise()
        .create(&ChatflowWrite {
            name: Some(name.into()),
            flow_type: Some("AGENTFLOW".into()),
            flow_data: Some(support::echo_flow_data().to_string()),
            deployed: Some(true),
            category: category.map(str::to_string),
        })
        .await
        .expect("created in Flowise")
}

/// The Flowise chatflows named exactly `name`.
async fn named_in_flowise(name: &str) -> Vec<FlowiseChatflow> {
    let all = support::flowise().list().await.expect("Flowise lists");
    all.into_iter().filter(|c| c.name == name).collect()
}

/// Ready's (status, reason) of an object's conditions.
fn ready<K: HasConditions>(obj: &K) -> Option<(String, String)> {
    obj.conditions()
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

trait HasConditions {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;
}

impl HasConditions for Chatflow {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

impl HasConditions for ChatflowAccess {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

impl HasConditions for CreditPolicy {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

/// Waits (watching, up to `secs`) until `name` satisfies `check`.
async fn wait_until<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    what: &str,
    check: impl Fn(&K) -> bool + Send + 'static,
) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let condition = await_condition(api.clone(), name, move |obj: Option<&K>| {
        obj.is_some_and(&check)
    });
    tokio::time::timeout(Duration::from_secs(secs), condition)
        .await
        .unwrap_or_else(|_| panic!("{name}: timed out after {secs} s waiting for {what}"))
        .expect("watching works")
        .expect("the object exists")
}

/// Waits until Ready has `status` and `reason`.
async fn wait_ready<K>(api: &Api<K>, name: &str, status: &str, reason: &str) -> K
where
    K: Resource
        + HasConditions
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let want = (status.to_string(), reason.to_string());
    let what = format!("Ready={status} ({reason})");
    wait_until(api, name, 30, &what, move |obj| {
        ready(obj).as_ref() == Some(&want)
    })
    .await
}

/// Waits until the object is gone.
async fn wait_deleted(api: &Api<Chatflow>, name: &str) {
    let gone = await_condition(api.clone(), name, |obj: Option<&Chatflow>| obj.is_none());
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .unwrap_or_else(|_| panic!("{name} still exists after 30 s"))
        .expect("watching works");
}

/// Reasons of the Events about `name` in `ns`.
async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events list")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

async fn wait_for_event(client: &Client, ns: &str, name: &str, reason: &str) {
    support::eventually(20, &format!("a {reason} Event about {name}"), || async {
        event_reasons(client, ns, name)
            .await
            .iter()
            .any(|r| r == reason)
            .then_some(())
    })
    .await;
}

// --- adoption ------------------------------------------------------------------------------

#[tokio::test]
async fn adopting_by_id_and_by_name_reports_what_flowise_holds() {
    let (client, ns, api, _objects) = setup("cf-adopt").await;
    let name = support::unique("fgtest-adopt");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));

    create(
        &api,
        chatflow_doc("by-id", json!({"flowiseId": existing.id})),
    )
    .await;
    create(&api, chatflow_doc("by-name", json!({"flowiseName": name}))).await;
    for object in ["by-id", "by-name"] {
        let cf = wait_ready(&api, object, "True", "Synced").await;
        let status = cf.status.expect("status");
        assert_eq!(status.flowise_id.as_deref(), Some(existing.id.as_str()));
        assert_eq!(status.flowise_name.as_deref(), Some(name.as_str()));
        assert_eq!(status.flow_type.as_deref(), Some("AGENTFLOW"));
        assert_eq!(status.deployed, Some(true));
        assert_eq!(status.api_key_bound, Some(false));
        assert_eq!(status.observed_generation, Some(1));
        assert!(status.last_sync_time.is_some());
        assert!(
            cf.metadata.finalizers.is_none(),
            "adopted chatflows need no finalizer"
        );
    }
    wait_for_event(&client, &ns, "by-id", "Adopted").await;

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
        .find(|l| l.starts_with("by-id"))
        .expect("a row for by-id")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["by-id", existing.id.as_str(), "AGENTFLOW", "true", "True"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_ambiguous_name_is_a_conflict_and_unknown_ones_are_not_found() {
    let (client, ns, api, _objects) = setup("cf-conflict").await;
    let name = support::unique("fgtest-twice");
    let _cleanup = support::FlowiseCleanup(name.clone());
    flowise_chatflow(&name, None).await;
    flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));

    create(&api, chatflow_doc("twice", json!({"flowiseName": name}))).await;
    create(
        &api,
        chatflow_doc(
            "no-id",
            json!({"flowiseId": "3f1c2a7e-1111-4222-8333-444455556666"}),
        ),
    )
    .await;
    create(
        &api,
        chatflow_doc("no-name", json!({"flowiseName": format!("{name}-missing")})),
    )
    .await;

    wait_ready(&api, "twice", "False", "Conflict").await;
    wait_ready(&api, "no-id", "False", "NotFoundInFlowise").await;
    wait_ready(&api, "no-name", "False", "NotFoundInFlowise").await;
    wait_for_event(&client, &ns, "twice", "Conflict").await;
    controller.stop().await;
}

// --- owned definitions ---------------------------------------------------------------------

fn owned_doc(object: &str, flowise_name: &str, policy: &str) -> serde_json::Value {
    chatflow_doc(
        object,
        json!({"definition": {"name": flowise_name, "type": "AGENTFLOW",
                              "flowData": support::echo_flow_data(), "deployed": false},
               "deletionPolicy": policy}),
    )
}

#[tokio::test]
async fn an_owned_definition_is_created_updated_on_change_and_deleted_with_delete_policy() {
    let (client, ns, api, _objects) = setup("cf-owned").await;
    let name = support::unique("fgtest-owned");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    create(&api, owned_doc("owned", &name, "Delete")).await;
    let cf = wait_ready(&api, "owned", "True", "Synced").await;
    let id = cf
        .status
        .as_ref()
        .and_then(|s| s.flowise_id.clone())
        .expect("id in status");
    assert!(cf.finalizers().iter().any(|f| f == "flowgate.io/cleanup"));
    let in_flowise = named_in_flowise(&name).await;
    assert_eq!(in_flowise.len(), 1, "exactly one chatflow of that name");
    assert_eq!(in_flowise[0].id, id);
    assert_eq!(in_flowise[0].flow_type, "AGENTFLOW");
    assert_eq!(
        in_flowise[0].flow_data_json(),
        Some(support::echo_flow_data())
    );
    assert_eq!(
        in_flowise[0].category.as_deref(),
        Some(format!("flowgate:{ns}/owned").as_str())
    );
    wait_for_event(&client, &ns, "owned", "Created").await;

    // Edit the definition: deployed and the reply text change.
    let mut flow = support::echo_flow_data();
    let edited = flow.to_string().replace("Echo: ", "Edited echo: ");
    flow = serde_json::from_str(&edited).expect("still JSON");
    let patch = json!({"spec": {"definition": {"deployed": true, "flowData": flow}}});
    api.patch("owned", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edited");
    let cf = wait_until(&api, "owned", 30, "generation 2 synced", |cf: &Chatflow| {
        let status = cf.status.clone().unwrap_or_default();
        status.observed_generation == Some(2) && status.deployed == Some(true)
    })
    .await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );
    let now = support::flowise()
        .get(&id)
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(now.deployed, Some(true));
    assert_eq!(now.flow_data_json(), Some(flow));
    assert_eq!(named_in_flowise(&name).await.len(), 1, "updated in place");
    wait_for_event(&client, &ns, "owned", "Updated").await;

    api.delete("owned", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "owned").await;
    assert_eq!(
        support::flowise().get(&id).await.expect("read"),
        None,
        "deleted from Flowise"
    );
    wait_for_event(&client, &ns, "owned", "Deleted").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_retained_definition_stays_in_flowise_after_its_chatflow_is_deleted() {
    let (client, ns, api, _objects) = setup("cf-retain").await;
    let name = support::unique("fgtest-retain");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    create(&api, owned_doc("kept", &name, "Retain")).await;
    let cf = wait_ready(&api, "kept", "True", "Synced").await;
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");
    api.delete("kept", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "kept").await;
    assert!(
        support::flowise().get(&id).await.expect("read").is_some(),
        "retained in Flowise"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_restart_or_a_lost_status_write_never_creates_a_second_chatflow() {
    let (client, ns, api, _objects) = setup("cf-once").await;
    let name = support::unique("fgtest-once");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let clear_status = |object: &'static str| {
        let api = api.clone();
        async move {
            api.patch_status(
                object,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": null})),
            )
            .await
            .expect("status cleared");
        }
    };

    let first = start(&client, settings(&ns));
    create(&api, owned_doc("once", &name, "Delete")).await;
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");

    // The status is lost while the controller runs: it finds its chatflow again.
    clear_status("once").await;
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );

    // A restart with the status lost as well.
    first.stop().await;
    clear_status("once").await;
    let second = start(&client, settings(&ns));
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );
    assert_eq!(named_in_flowise(&name).await.len(), 1, "still one chatflow");

    // A controller killed between creating in Flowise and writing status left this behind.
    let crashed_name = format!("{name}-crashed");
    let orphan = flowise_chatflow(&crashed_name, Some(&format!("flowgate:{ns}/crashed"))).await;
    create(&api, owned_doc("crashed", &crashed_name, "Delete")).await;
    let cf = wait_ready(&api, "crashed", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(orphan.id.as_str())
    );
    assert_eq!(
        named_in_flowise(&crashed_name).await.len(),
        1,
        "the orphan was taken over"
    );
    second.stop().await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_touches_nothing_in_flowise_and_deletes_freely() {
    let (client, ns, api, _objects) = setup("cf-invalid").await;
    let name = support::unique("fgtest-invalid");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    let mut two_sources = owned_doc("two", &name, "Delete");
    two_sources["spec"]["flowiseName"] = json!("something");
    create(&api, two_sources).await;
    let mut no_nodes = owned_doc("no-nodes", &format!("{name}-nodes"), "Delete");
    no_nodes["spec"]["definition"]["flowData"] = json!({"edges": []});
    create(&api, no_nodes).await;

    let cf = wait_ready(&api, "two", "False", "InvalidSpec").await;
    let message = cf.conditions()[0].message.clone();
    assert!(message.contains("exactly one of"), "{message}");
    wait_ready(&api, "no-nodes", "False", "InvalidSpec").await;
    wait_for_event(&client, &ns, "two", "InvalidSpec").await;
    let created: Vec<_> = support::flowise()
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.name.starts_with(&name))
        .collect();
    assert!(
        created.is_empty(),
        "nothing created in Flowise: {created:?}"
    );

    // Cleanup is never blocked by validation.
    api.delete("two", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "two").await;
    controller.stop().await;
}

// --- resync, no storms, Flowise down ----------------------------------------------------------

#[tokio::test]
async fn reconciles_settle_and_a_resync_of_an_unchanged_chatflow_writes_nothing() {
    let (client, ns, api, _objects) = setup("cf-settle").await;
    let name = support::unique("fgtest-settle");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let mut fast = settings(&ns);
    fast.sync_interval = Duration::from_secs(1);
    let controller = start(&client, fast);

    create(&api, owned_doc("quiet", &name, "Delete")).await;
    let cf = wait_ready(&api, "quiet", "True", "Synced").await;
    // Let the last status write's own watch event be reconciled.
    let cf = wait_until(
        &api,
        "quiet",
        10,
        "a settled status",
        move |now: &Chatflow| now.resource_version() == cf.resource_version(),
    )
    .await;
    let (writes, reconciles) = (
        controller.metrics.controller.status_writes("Chatflow"),
        controller.reconciles(),
    );

    // Observing that nothing happens needs a window: five resync intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let after = api.get("quiet").await.expect("read");
    assert_eq!(
        after.resource_version(),
        cf.resource_version(),
        "no write on resync"
    );
    assert_eq!(
        controller.metrics.controller.status_writes("Chatflow"),
        writes
    );
    let resyncs = controller.reconciles() - reconciles;
    assert!(
        (2..=12).contains(&resyncs),
        "about one reconcile per second, no storm: {resyncs}"
    );
    let last = controller.sync.last().expect("sync passes ran");
    assert_eq!(last.outcome, SyncOutcome::Success);
    assert_eq!(last.result.existing_chatflows_updated, 0);
    assert_eq!(named_in_flowise(&name).await.len(), 1);
    controller.stop().await;
}

#[tokio::test]
async fn flowise_down_turns_ready_to_unreachable_deletes_nothing_and_recovers() {
    let (client, ns, api, _objects) = setup("cf-down").await;
    let name = support::unique("fgtest-down");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let adopted = flowise_chatflow(&format!("{name}-adopted"), None).await;
    let gate = support::FlowiseGate::open_to_flowise().await;
    let mut fast = settings(&ns);
    fast.sync_interval = Duration::from_secs(2);
    let controller = start_with(&client, fast, flowise_at(&gate.url()));

    create(&api, owned_doc("owned", &name, "Delete")).await;
    create(
        &api,
        chatflow_doc("adopted", json!({"flowiseId": adopted.id})),
    )
    .await;
    let owned = wait_ready(&api, "owned", "True", "Synced").await;
    wait_ready(&api, "adopted", "True", "Synced").await;
    let owned_id = owned.status.and_then(|s| s.flowise_id).expect("id");

    gate.close();
    for object in ["owned", "adopted"] {
        let cf = wait_ready(&api, object, "False", "FlowiseUnreachable").await;
        assert!(
            cf.status.and_then(|s| s.flowise_id).is_some(),
            "last known id kept"
        );
    }
    let last = support::eventually(10, "a failed sync pass", || async {
        controller
            .sync
            .last()
            .filter(|r| r.outcome == SyncOutcome::Failed)
    })
    .await;
    assert!(
        last.result.errors[0].contains("listing Flowise chatflows"),
        "{:?}",
        last.result.errors
    );
    assert!(
        api.get_opt("owned").await.expect("read").is_some(),
        "nothing deleted"
    );
    assert!(
        support::flowise()
            .get(&owned_id)
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        support::flowise()
            .get(&adopted.id)
            .await
            .expect("read")
            .is_some()
    );
    wait_for_event(&client, &ns, "owned", "FlowiseUnreachable").await;

    gate.reopen().await;
    wait_ready(&api, "owned", "True", "Synced").await;
    wait_ready(&api, "adopted", "True", "Synced").await;
    assert_eq!(
        named_in_flowise(&name).await.len(),
        1,
        "no duplicate after recovery"
    );
    controller.stop().await;
}

// --- import and sync counts ----------------------------------------------------------------

#[tokio::test]
async fn import_creates_one_labelled_chatflow_per_unclaimed_chatflow_and_reports_vanished_ones() {
    let (client, ns, api, _objects) = setup("cf-import").await;
    let prefix = support::unique("fgtest-import");
    let _cleanup = support::FlowiseCleanup(prefix.clone());
    let first = flowise_chatflow(&format!("{prefix} First"), None).await;
    let second = flowise_chatflow(&format!("{prefix} Second"), None).await;
    let claimed = flowise_chatflow(&format!("{prefix} Claimed"), None).await;
    create(
        &api,
        chatflow_doc("claimed", json!({"flowiseId": claimed.id})),
    )
    .await;

    let mut import = settings(&ns);
    import.import_namespace = Some(ns.clone());
    import.import_name_prefix = Some(prefix.clone());
    let controller = start(&client, import);

    let pass = support::eventually(30, "the first sync pass", || async {
        controller.sync.last()
    })
    .await;
    assert_eq!(
        pass.outcome,
        SyncOutcome::Success,
        "{:?}",
        pass.result.errors
    );
    assert_eq!(pass.result.new_chatflows_added, 2);
    assert_eq!(pass.result.total_chatflows_synced, 3);
    assert_eq!(pass.result.chatflows_removed, 0);

    let imported = api
        .list(&ListParams::default().labels("flowgate.io/imported=true"))
        .await
        .expect("list")
        .items;
    let mut ids: Vec<String> = imported
        .iter()
        .filter_map(|c| c.spec.flowise_id.clone())
        .collect();
    ids.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "one object per unclaimed chatflow");
    let first_object = imported
        .iter()
        .find(|c| c.spec.flowise_id.as_deref() == Some(first.id.as_str()))
        .expect("first imported")
        .name_any();
    assert!(first_object.ends_with(&first.id[..8]), "{first_object}");
    for cf in &imported {
        wait_ready(&api, &cf.name_any(), "True", "Synced").await;
    }
    wait_ready(&api, "claimed", "True", "Synced").await;

    let again = controller.sync.sync_now().await;
    assert_eq!(
        (
            again.new_chatflows_added,
            again.existing_chatflows_updated,
            again.chatflows_removed
        ),
        (0, 0, 0),
        "idempotent: {again:?}"
    );
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        3
    );

    support::flowise()
        .delete(&second.id)
        .await
        .expect("deleted in Flowise");
    let removed = controller.sync.sync_now().await;
    assert_eq!(removed.chatflows_removed, 1, "{removed:?}");
    assert_eq!(removed.total_chatflows_synced, 2);
    let second_object = imported
        .iter()
        .find(|c| c.spec.flowise_id.as_deref() == Some(second.id.as_str()))
        .expect("second imported")
        .name_any();
    wait_ready(&api, &second_object, "False", "NotFoundInFlowise").await;
    assert!(
        api.get_opt(&second_object).await.expect("read").is_some(),
        "never deleted"
    );
    let after = controller.sync.sync_now().await;
    assert_eq!(after.chatflows_removed, 0, "counted once: {after:?}");

    let text = controller.metrics.encode().expect("metrics encode");
    assert!(
        text.contains("flowgate_controller_sync_chatflows_total{change=\"added\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_controller_sync_chatflows_total{change=\"removed\"} 1"),
        "{text}"
    );
    controller.stop().await;
}

// --- ChatflowAccess and CreditPolicy ---------------------------------------------------------

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

    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
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

// --- leader election -----------------------------------------------------------------------

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_another_takes_over_when_it_is_killed() {
    let (client, ns, api, _objects) = setup("cf-leader").await;
    let name = support::unique("fgtest-leader");
    let _cleanup = support::FlowiseCleanup(name.clone());
    flowise_chatflow(&name, None).await;
    let a = start(&client, settings(&ns));
    let b = start(&client, settings(&ns));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    support::eventually(20, "one leader", || async {
        (a.metrics.controller.is_leader() || b.metrics.controller.is_leader()).then_some(())
    })
    .await;
    assert!(
        !(a.metrics.controller.is_leader() && b.metrics.controller.is_leader()),
        "never two leaders"
    );
    let (leader, follower) = if a.metrics.controller.is_leader() {
        (a, b)
    } else {
        (b, a)
    };

    create(&api, chatflow_doc("first", json!({"flowiseName": name}))).await;
    wait_ready(&api, "first", "True", "Synced").await;
    assert!(leader.reconciles() > 0);
    assert_eq!(follower.reconciles(), 0, "the follower does not reconcile");
    let holder = |lease: Lease| {
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    let before = holder(leases.get("flowgate-controller").await.expect("lease"));

    leader.kill();
    create(&api, chatflow_doc("second", json!({"flowiseName": name}))).await;
    // Lease duration 3 s: the follower takes over after it, then reconciles.
    wait_ready(&api, "second", "True", "Synced").await;
    assert!(follower.metrics.controller.is_leader());
    assert!(follower.reconciles() > 0);
    let after = holder(leases.get("flowgate-controller").await.expect("lease"));
    assert_ne!(before, after, "the Lease changed hands");
    follower.stop().await;
}
