//! What every controller test uses: a controller running in the test, a fresh namespace,
//! object literals, and waits on conditions and Events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Resource};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use flowgate::controller::{
    Controller, ControllerError, LAST_SYNC_REFRESH, LeaseSettings, Settings, SyncState,
};
use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};
use flowgate::flowise::{ChatflowWrite, FlowiseApi, FlowiseChatflow, FlowiseClient, Timeouts};
use flowgate::metrics::Metrics;

/// A controller running in this test.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), ControllerError>>,
    pub metrics: Arc<Metrics>,
    pub sync: SyncState,
}

impl Running {
    /// Runs `controller`, which reports to `metrics`, until stopped or killed.
    pub fn spawn(controller: Controller, metrics: Arc<Metrics>) -> Self {
        let sync = controller.sync_state();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::new(controller).run(shutdown.clone()));
        Running {
            shutdown,
            task,
            metrics,
            sync,
        }
    }

    /// Stops it as SIGTERM does: in-flight work finishes, the Lease is released.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the controller stops within 30 s")
            .expect("the controller task did not panic");
        result.expect("the controller stopped cleanly");
    }

    /// Ends it abruptly, as `kill -9` would: nothing is released.
    pub fn kill(self) {
        self.task.abort();
    }

    pub fn reconciles(&self) -> u64 {
        self.metrics.controller.reconciles("Chatflow")
    }
}

/// Settings for a controller scoped to `ns`, with a short Lease in `ns`.
pub fn settings(ns: &str) -> Settings {
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
        create_window: Duration::from_secs(8),
    }
}

pub fn start_with(client: &Client, settings: Settings, flowise: Arc<dyn FlowiseApi>) -> Running {
    let metrics = Arc::new(Metrics::new());
    let controller = Controller::new(client.clone(), flowise, settings, metrics.clone());
    Running::spawn(controller, metrics)
}

pub fn start(client: &Client, settings: Settings) -> Running {
    start_with(client, settings, Arc::new(crate::support::flowise()))
}

/// A client for Flowise at `url` with the real API key.
pub fn flowise_at(url: &str) -> Arc<dyn FlowiseApi> {
    let (_, key) = crate::support::flowise_env();
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
pub async fn setup(
    prefix: &str,
) -> (
    Client,
    String,
    Api<Chatflow>,
    crate::support::NamespaceCleanup,
) {
    crate::support::logs();
    let client = crate::support::client().await;
    crate::support::install_crds(&client).await;
    let ns = crate::support::fresh_namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    let cleanup = crate::support::NamespaceCleanup(ns.clone());
    (client, ns, api, cleanup)
}

pub async fn create<K>(api: &Api<K>, doc: serde_json::Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(doc).expect("object literal");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("created")
}

pub fn chatflow_doc(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
           "metadata": {"name": name}, "spec": spec})
}

/// Creates an echo Agentflow directly in Flowise.
pub async fn flowise_chatflow(name: &str, category: Option<&str>) -> FlowiseChatflow {
    crate::support::flowise()
        .create(&ChatflowWrite {
            name: Some(name.into()),
            flow_type: Some("AGENTFLOW".into()),
            flow_data: Some(crate::support::echo_flow_data().to_string()),
            deployed: Some(true),
            category: category.map(str::to_string),
        })
        .await
        .expect("created in Flowise")
}

/// The Flowise chatflows named exactly `name`.
pub async fn named_in_flowise(name: &str) -> Vec<FlowiseChatflow> {
    let all = crate::support::flowise()
        .list()
        .await
        .expect("Flowise lists");
    all.into_iter().filter(|c| c.name == name).collect()
}

/// Ready's (status, reason) of an object's conditions.
pub fn ready<K: HasConditions>(obj: &K) -> Option<(String, String)> {
    obj.conditions()
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub trait HasConditions {
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
pub async fn wait_until<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    what: &str,
    check: impl Fn(&K) -> bool + Send + 'static,
) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let check = std::sync::Arc::new(check);
    // A watch can end with 410 Expired on a busy API server: watch again until the deadline.
    let watch = async {
        loop {
            let check = check.clone();
            let condition = await_condition(api.clone(), name, move |obj: Option<&K>| {
                obj.is_some_and(|o| check(o))
            });
            match condition.await {
                Ok(Some(obj)) => return obj,
                Ok(None) => panic!("{name}: the object does not exist"),
                Err(error) => tracing::debug!(%error, "watch ended; watching again"),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), watch).await {
        Ok(obj) => obj,
        Err(_) => {
            let now = api.get_opt(name).await;
            panic!("{name}: timed out after {secs} s waiting for {what}; it is now {now:?}")
        }
    }
}

/// Waits until Ready has `status` and `reason`.
pub async fn wait_ready<K>(api: &Api<K>, name: &str, status: &str, reason: &str) -> K
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
pub async fn wait_deleted(api: &Api<Chatflow>, name: &str) {
    let gone = await_condition(api.clone(), name, |obj: Option<&Chatflow>| obj.is_none());
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .unwrap_or_else(|_| panic!("{name} still exists after 30 s"))
        .expect("watching works");
}

/// The Events about `name` in `ns`.
pub async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events list")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Reasons of the Events about `name` in `ns`.
pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    events_about(client, ns, name)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

pub async fn wait_for_event(client: &Client, ns: &str, name: &str, reason: &str) {
    crate::support::eventually(20, &format!("a {reason} Event about {name}"), || async {
        event_reasons(client, ns, name)
            .await
            .iter()
            .any(|r| r == reason)
            .then_some(())
    })
    .await;
}

/// The notes of the `CleanupFailed` Events about `name`, once there is one.
pub async fn cleanup_failed_notes(client: &Client, ns: &str, name: &str) -> Vec<String> {
    wait_for_event(client, ns, name, "CleanupFailed").await;
    events_about(client, ns, name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("CleanupFailed"))
        .filter_map(|e| e.note)
        .collect()
}

/// An owned-definition Chatflow: the echo Agentflow named `flowise_name` in Flowise.
pub fn owned_doc(object: &str, flowise_name: &str, policy: &str) -> serde_json::Value {
    chatflow_doc(
        object,
        json!({"definition": {"name": flowise_name, "type": "AGENTFLOW",
                              "flowData": crate::support::echo_flow_data(), "deployed": false},
               "deletionPolicy": policy}),
    )
}
