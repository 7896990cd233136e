//! The index writer: reflectors on the three kinds feed one task that recompiles the snapshot on
//! every change and publishes it. Requests read [`SnapshotHandle::load`] once.
//!
//! While the API server is unreachable the reflectors retry with backoff and the last snapshot
//! keeps serving.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Resources, Snapshot, Unreadable, compile};
use crate::crd::{Chatflow, ChatflowAccess, CreditPolicy, Lenient, Watched};
use crate::metrics::Metrics;
use crate::ops::Gate;

/// Shared read access to the current snapshot.
#[derive(Clone)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
    /// Generation of the current snapshot; receivers never miss a publish.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl SnapshotHandle {
    /// A handle starting at `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot and tells every subscriber; logs what it newly skips.
    pub fn publish(&self, snapshot: Snapshot) {
        super::log_newly_invalid(&self.current.load().invalid, &snapshot.invalid);
        self.current.store(Arc::new(snapshot));
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver whose `changed()` resolves after each publish it has not seen yet.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// The reflector stores. Objects that do not read as their kind are kept too (see
/// [`Lenient`]): the index reports them, and a CreditPolicy among them may refuse.
#[derive(Clone)]
pub struct Stores {
    pub chatflows: Store<Lenient<Chatflow>>,
    pub accesses: Store<Lenient<ChatflowAccess>>,
    pub policies: Store<Lenient<CreditPolicy>>,
}

impl Stores {
    /// Everything the stores hold now.
    pub fn resources(&self) -> Resources {
        let mut res = Resources::default();
        res.chatflows = readable(&self.chatflows, &mut res.unreadable);
        res.accesses = readable(&self.accesses, &mut res.unreadable);
        res.policies = readable(&self.policies, &mut res.unreadable);
        // Deterministic order: the same objects always compile to the same snapshot.
        res.chatflows
            .sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
        res.accesses
            .sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
        res.policies
            .sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
        res.unreadable
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        res
    }
}

/// The objects of `store` that read as their kind; the others go to `unreadable`, but for those
/// being deleted: as a readable one being deleted, such an object neither refuses (a policy),
/// grants (an access) nor claims (a Chatflow), whatever finalizer still holds it.
fn readable<K: Watched>(
    store: &Store<Lenient<K>>,
    unreadable: &mut Vec<Unreadable>,
) -> Vec<Arc<K>> {
    let state = store.state();
    let mut read = Vec::with_capacity(state.len());
    for obj in state {
        match obj.as_ref() {
            Lenient::Read(obj) => read.push(obj.clone()),
            Lenient::Unreadable(bad) if bad.metadata.deletion_timestamp.is_some() => {}
            Lenient::Unreadable(bad) => unreadable.push(Unreadable {
                kind: kind_name::<K>(),
                namespace: bad.metadata.namespace.clone().unwrap_or_default(),
                name: bad.metadata.name.clone().unwrap_or_default(),
                error: bad.error.clone(),
                claim: (kind_name::<K>() == "Chatflow")
                    .then(|| super::rules::unreadable_claim(bad))
                    .flatten(),
            }),
        }
    }
    read
}

/// The kind as the static name [`Unreadable`] keeps.
fn kind_name<K: Watched>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Chatflow" => "Chatflow",
        "ChatflowAccess" => "ChatflowAccess",
        _ => "CreditPolicy",
    }
}

fn key(meta: &kube::api::ObjectMeta) -> (Option<&str>, Option<&str>) {
    (meta.namespace.as_deref(), meta.name.as_deref())
}

/// Starts reflectors on every namespace and the writer task. Returns the stores and the
/// snapshot handle; `ready` opens after the first full sync of all three kinds.
pub fn spawn(
    client: Client,
    ready: Gate,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> (Stores, SnapshotHandle) {
    let dirty = Arc::new(Notify::new());
    let (chatflows, cf_task) =
        reflect::<Lenient<Chatflow>>(client.clone(), dirty.clone(), metrics.clone());
    let (accesses, cfa_task) =
        reflect::<Lenient<ChatflowAccess>>(client.clone(), dirty.clone(), metrics.clone());
    let (policies, cpol_task) = reflect::<Lenient<CreditPolicy>>(client, dirty.clone(), metrics);
    let stores = Stores {
        chatflows,
        accesses,
        policies,
    };
    let handle = SnapshotHandle::default();

    let writer = {
        let (stores, handle) = (stores.clone(), handle.clone());
        async move {
            let synced = futures::future::join3(
                stores.chatflows.wait_until_ready(),
                stores.accesses.wait_until_ready(),
                stores.policies.wait_until_ready(),
            )
            .await;
            if synced.0.is_err() || synced.1.is_err() || synced.2.is_err() {
                return;
            }
            loop {
                let notified = dirty.notified();
                let started = std::time::Instant::now();
                let resources = stores.resources();
                let snapshot = match tokio::task::spawn_blocking(move || compile(&resources)).await
                {
                    Ok(mut snapshot) => {
                        snapshot.compiled_at = Some(jiff::Timestamp::now());
                        snapshot
                    }
                    Err(error) => {
                        // A bug. Fail closed: the last snapshot may grant what has since been
                        // revoked, so none is served (503 index_not_ready) and /readyz says so;
                        // the next change is compiled again.
                        tracing::error!(%error, "index compile failed; refusing until a compile succeeds");
                        ready.close();
                        handle.publish(Snapshot::default());
                        notified.await;
                        continue;
                    }
                };
                tracing::debug!(elapsed = ?started.elapsed(), chatflows = snapshot.chatflows().len(), "index recompiled");
                handle.publish(snapshot);
                ready.open();
                notified.await;
                // Coalesce bursts (an initial list, a kubectl apply of many files) into one compile.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = futures::future::join4(cf_task, cfa_task, cpol_task, writer) => {}
        }
    });
    (stores, handle)
}

/// How long the API server keeps one watch open (`timeoutSeconds`) before the reflector watches
/// again from where it was: kube-runtime takes a watch that has said nothing for this plus 5 s
/// for dead. Its default, 290 s, left a watch on a connection gone dead without a word (an API
/// server frozen or replaced behind a ClusterIP that still routes to it, a load balancer
/// dropping the flow) silent for five minutes, enforcing deleted grants and counting no error.
const WATCH_TIMEOUT_SECS: u32 = 30;
/// Longest the index's client waits for the API server's next bytes, since the request was
/// written or bytes last came (a list, or a watch the server ends within [`WATCH_TIMEOUT_SECS`]):
/// a request sent on a pooled connection gone dead fails then and is retried on a new one,
/// instead of waiting for the kernel's ~15 minutes of retransmissions.
const READ_TIMEOUT: Duration = Duration::from_secs(45);

/// The index's own client (its own connection pool), whose requests time out: see
/// [`READ_TIMEOUT`]. The controller keeps the default client.
pub async fn client() -> Result<Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    Client::try_from(config)
}

/// How the reflectors retry a failed watch: kube-runtime's default (client-go's: 0.8 s doubling to
/// 30 s, with jitter) capped at 5 s instead, so enforcement catches up within seconds of an API
/// server coming back after a long outage. Three watches retrying every 5 s are no burden on it.
fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

fn reflect<K: Watched>(
    client: Client,
    dirty: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> (Store<K>, impl Future<Output = ()>) {
    let api: Api<K> = Api::all(client);
    let (reader, writer) = reflector::store();
    // Lists (at start and after a 410) read the latest state, not the API server's watch cache:
    // a cache behind etcd (another API server instance) could grant a just-deleted access again
    // until the watch caught up. The controller's watches may read the cache.
    let stream = watcher(api, watcher::Config::default().timeout(WATCH_TIMEOUT_SECS))
        .backoff(watch_backoff())
        .modify(crate::crd::trim)
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(_) => dirty.notify_one(),
                Err(error) => {
                    // Objects flowgate cannot read are kept as such (`Lenient`), so this is
                    // the API server failing or refusing: the alert on this counter says so.
                    // A 410 (the watch fell behind; a relist follows at once) is no failure.
                    let desync =
                        matches!(&error, watcher::Error::WatchError(status) if status.code == 410);
                    if !desync {
                        metrics.index_watch_error(K::kind(&()).as_ref());
                    }
                    tracing::warn!(kind = K::kind(&()).as_ref(), %error, "watch error; retrying")
                }
            }
            std::future::ready(())
        });
    (reader, stream)
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    #[test]
    fn an_unreadable_object_being_deleted_is_left_out() {
        // A policy stored before a CRD bound it now breaks, and another like it being deleted
        // (a finalizer holds it): with FLOWGATE_INVALID_POLICIES=refuse the first refuses its
        // namespace; the second must not.
        let policy = |name: &str, deleting: bool| -> Lenient<CreditPolicy> {
            let mut metadata = json!({"name": name, "namespace": "team-a"});
            if deleting {
                metadata["deletionTimestamp"] = json!("2026-06-01T12:00:00Z");
                metadata["finalizers"] = json!(["example.com/hold"]);
            }
            serde_json::from_value(json!({
                "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
                "metadata": metadata,
                "spec": {"budgets": "not a list"},
            }))
            .expect("policy literal")
        };
        let (store, mut writer) = reflector::store::<Lenient<CreditPolicy>>();
        for (name, deleting) in [("broken", false), ("going", true)] {
            let policy = policy(name, deleting);
            assert!(
                matches!(policy, Lenient::Unreadable(_)),
                "{name} unreadable"
            );
            writer.apply_watcher_event(&Event::Apply(policy));
        }
        let mut unreadable = Vec::new();
        assert!(readable(&store, &mut unreadable).is_empty());
        let names: Vec<&str> = unreadable.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["broken"]);
    }
}
