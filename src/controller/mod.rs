//! The controller: keeps Flowise in step with the Chatflow objects and reports what it sees in
//! the status of every flowgate resource.
//!
//! ```text
//!  run ── leader::Lease ──(while leading)──┬─ chatflow: validate → dereference → plan → sync → status
//!                                          ├─ access:   resolve refs, expiry        → status
//!                                          ├─ policy:   validate, resolve refs      → status
//!                                          └─ sync:     periodic Flowise listing → import, counts
//! ```
//!
//! Only the replica holding the Lease reconciles and writes status; the others wait (their proxy
//! keeps serving). Errors from Flowise say whether they are transient: transient ones requeue
//! with backoff, permanent ones are reported in status and retried at the sync interval.

mod access;
mod chatflow;
mod claims;
pub mod credits_status;
mod error;
mod leader;
mod names;
mod policy;
mod sync;
mod unreadable;
mod written;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller as KubeController, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crd::{Chatflow, ChatflowAccess, CreditPolicy, FIELD_MANAGER, Lenient};
use crate::flowise::{FlowiseApi, FlowiseClient};
use crate::metrics::Metrics;

use error::Backoff;
pub use error::ControllerError;
pub use leader::LeaseSettings;
pub use sync::{ChatflowSyncResult, SyncOutcome, SyncReport, SyncState};

/// How long a status's `lastSyncTime` may lag before an otherwise unchanged status is rewritten
/// just to move it. Every other status change moves it at once. Without this bound a resync
/// would write every Chatflow every `--sync-interval` (a write, a watch event and an index
/// recompile per object per minute); with it an idle Chatflow is written at most every 10 minutes.
pub const LAST_SYNC_REFRESH: Duration = Duration::from_secs(600);

/// What the controller does and where.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch this namespace only; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Import unclaimed Flowise chatflows as Chatflows in this namespace.
    pub import_namespace: Option<String>,
    /// Consider only Flowise chatflows whose name starts with this when importing and counting
    /// (`None`: all). Lets several flowgate installations, or tests, share one Flowise.
    pub import_name_prefix: Option<String>,
    /// How often every Chatflow is compared with Flowise, and the sync pass runs.
    pub sync_interval: Duration,
    /// See [`LAST_SYNC_REFRESH`].
    pub last_sync_refresh: Duration,
    /// The Lease that elects the one reconciling replica.
    pub lease: LeaseSettings,
    /// How long after a create whose outcome is unknown it may still land in Flowise (twice
    /// the request timeout): not sent again meanwhile ([`crate::flowise::CreatesInDoubt`]).
    pub create_window: Duration,
}

/// [`Settings::create_window`] by default: twice Flowise's default request timeout.
pub const CREATE_WINDOW: Duration = Duration::from_secs(60);

impl Settings {
    /// The settings of `flowgate run`; the Lease lives in `lease_namespace` (the namespace the
    /// process runs in).
    pub fn from_config(config: &Config, lease_namespace: &str) -> Self {
        Self {
            namespace: None,
            import_namespace: config.import_namespace.clone(),
            import_name_prefix: None,
            sync_interval: config.sync_interval,
            last_sync_refresh: LAST_SYNC_REFRESH,
            lease: LeaseSettings::new(lease_namespace),
            create_window: CREATE_WINDOW,
        }
    }
}

/// The controller, ready to run.
pub struct Controller {
    client: Client,
    flowise: Arc<dyn FlowiseApi>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    sync: SyncState,
    ledger: Option<Arc<dyn crate::ledger::CreditLedger>>,
}

impl Controller {
    /// A controller talking to `flowise` with `settings`.
    pub fn new(
        client: Client,
        flowise: Arc<dyn FlowiseApi>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let settings = Arc::new(settings);
        metrics.controller.set_sync_interval(settings.sync_interval);
        // A create that went unanswered may land after the next listing: not sent again until
        // it has had twice the request timeout to.
        let flowise: Arc<dyn FlowiseApi> = Arc::new(crate::flowise::CreatesInDoubt::new(
            flowise,
            settings.create_window,
        ));
        let sync = SyncState::new(
            client.clone(),
            flowise.clone(),
            settings.clone(),
            metrics.clone(),
        );
        Self {
            client,
            flowise,
            settings,
            metrics,
            sync,
            ledger: None,
        }
    }

    /// Also keeps CreditPolicy usage (`creditsUsed`, `periodStart`, …) in status, from `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<dyn crate::ledger::CreditLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// A controller configured like `flowgate run`, with Flowise's default `api_key`.
    pub fn from_config(
        client: Client,
        config: &Config,
        api_key: Option<Arc<crate::flowise::ApiKey>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ControllerError> {
        let flowise = Arc::new(FlowiseClient::from_config(config, api_key)?);
        let settings = Settings::from_config(config, client.default_namespace());
        Ok(Self::new(client, flowise, settings, metrics))
    }

    /// The sync handle: last pass, and `sync_now` for the admin API.
    pub fn sync_state(&self) -> SyncState {
        self.sync.clone()
    }

    /// Campaigns for the Lease and, while holding it, reconciles everything; returns after
    /// `shutdown` once in-flight reconciles have finished and the Lease is released.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ControllerError> {
        let lease = leader::Lease::new(self.client.clone(), self.settings.lease.clone());
        tracing::info!(
            identity = %self.settings.lease.identity,
            lease = %format!("{}/{}", self.settings.lease.namespace, self.settings.lease.name),
            "controller campaigning for leadership"
        );
        loop {
            let Some(acquired) = lease.acquire(&shutdown).await else {
                return Ok(());
            };
            tracing::info!(identity = %self.settings.lease.identity, "leading: reconciling");
            self.metrics.controller.set_leader(true);
            let session = shutdown.child_token();
            // Cancelled when the Lease is lost: reconciles still running stop at their next
            // await instead of finishing, so a Flowise write can no longer start here while
            // another replica already leads.
            let fence = CancellationToken::new();
            // The Lease is held until the last reconcile has finished, also through a
            // shutdown's drain: released earlier, or left to expire, another replica could
            // create what a reconcile here is still creating.
            let led = CancellationToken::new();
            tokio::join!(
                async {
                    self.lead(session.clone(), fence.clone()).await;
                    session.cancel();
                    led.cancel();
                },
                async {
                    if !lease.hold(&led, acquired).await {
                        self.metrics.controller.set_leader(false);
                        fence.cancel();
                        session.cancel();
                    }
                },
            );
            self.metrics.controller.set_leader(false);
            if shutdown.is_cancelled() {
                lease.release().await;
                tracing::info!("controller stopped; lease released");
                return Ok(());
            }
            tracing::warn!("lost the lease; waiting to lead again");
        }
    }

    /// Runs every reconciler and the periodic sync until `session` ends.
    async fn lead(&self, session: CancellationToken, fence: CancellationToken) {
        let chatflows = controller(self.api::<Lenient<Chatflow>>());
        // One Chatflow reflector: ChatflowAccess and CreditPolicy reconciles resolve names
        // against its store and are triggered by its events, which it applies to the store
        // before passing on. With a watch of their own the trigger could run ahead of the store
        // and leave `ResolvedRefs` stale until the next resync.
        let (chatflow_names, writer) = reflector::store::<Lenient<Chatflow>>();
        let ctx = Arc::new(Context {
            client: self.client.clone(),
            flowise: self.flowise.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "flowgate".into(),
                    instance: Some(self.settings.lease.identity.clone()),
                },
            ),
            backoff: Backoff::default(),
            event_only: unreadable::EventOnly::default(),
            written: written::Written::default(),
            chatflows: chatflow_names,
            fence: fence.clone(),
            flowise_names: chatflow::FlowiseNames::default(),
        });
        let stop = {
            let session = session.clone();
            move || {
                let session = session.clone();
                async move { session.cancelled().await }
            }
        };

        // Chatflows claiming the Flowise chatflow of one that changed or went: their Conflict
        // starts or ends with it, not at their next resync.
        let (claim_refs, claim_triggers) = futures::channel::mpsc::unbounded();
        let chatflow_task = run_after_chatflows(
            chatflows
                .reconcile_all_on(self.sync.reconcile_requests())
                .reconcile_on(claim_triggers)
                .graceful_shutdown_on(stop()),
            unreadable::or_report(chatflow::reconcile, FIELD_MANAGER),
            ctx.clone(),
            session.clone(),
        );

        let (access_refs, access_triggers) = futures::channel::mpsc::unbounded();
        let (policy_refs, policy_triggers) = futures::channel::mpsc::unbounded();
        let access_controller = controller(self.api::<Lenient<ChatflowAccess>>());
        let policy_controller = controller(self.api::<Lenient<CreditPolicy>>());
        let fan_out = {
            let (accesses, policies) = (access_controller.store(), policy_controller.store());
            let store = ctx.chatflows.clone();
            let mut claims = claims::Claims::default();
            let mut names = names::Names::default();
            let events = reflector::reflector(
                writer,
                watcher(self.api::<Lenient<Chatflow>>(), watcher_config())
                    .default_backoff()
                    .modify(crate::crd::trim),
            )
            .take_until(session.clone().cancelled_owned());
            events.for_each(move |event| {
                match event {
                    Ok(event) => {
                        for namespace in names.after(&event) {
                            for access in in_namespace(&accesses, &namespace) {
                                let _ = access_refs.unbounded_send(access);
                            }
                            for policy in in_namespace(&policies, &namespace) {
                                let _ = policy_refs.unbounded_send(policy);
                            }
                        }
                        for other in claims.after(&store, &event) {
                            let _ = claim_refs.unbounded_send(other);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Chatflow watch error"),
                }
                std::future::ready(())
            })
        };
        let access_task = run_after_chatflows(
            access_controller
                .reconcile_on(access_triggers)
                .graceful_shutdown_on(stop()),
            unreadable::or_report(access::reconcile, FIELD_MANAGER),
            ctx.clone(),
            session.clone(),
        );
        let policy_task = run_after_chatflows(
            policy_controller
                .reconcile_on(policy_triggers)
                .graceful_shutdown_on(stop()),
            unreadable::or_report(policy::reconcile, policy::POLICY_STATUS_MANAGER),
            ctx.clone(),
            session.clone(),
        );

        let usage_task = {
            let (api, ledger, session) = (
                self.api::<Lenient<CreditPolicy>>(),
                self.ledger.clone(),
                session.clone(),
            );
            async move {
                if let Some(ledger) = ledger {
                    credits_status::run(api, ledger, session).await;
                }
            }
        };

        // The periodic passes stop midway when the session ends: once the Lease is lost, a
        // usage pass finishing on a slow API server would write older `creditsUsed` over the
        // new leader's (and hold up this replica's next campaign); at shutdown nothing is lost
        // by leaving a pass the next leader makes anyway.
        let fenced = |task| async {
            tokio::select! {
                () = task => {}
                () = session.cancelled() => {}
            }
        };
        tokio::join!(
            fan_out,
            chatflow_task,
            access_task,
            policy_task,
            fenced(usage_task.boxed()),
            fenced(self.sync.run_periodically(session.clone()).boxed()),
        );
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Runs `controller` with `reconcile` until `session` ends, once `ctx.chatflows` holds every
/// Chatflow: each kind's reconciles weigh claims or resolve names against it, and kube-runtime
/// waits only for the controller's own store.
async fn run_after_chatflows<K, Fut>(
    controller: KubeController<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> Fut,
    ctx: Arc<Context>,
    session: CancellationToken,
) where
    K: crate::crd::Watched,
    Fut: futures::TryFuture<Ok = Action, Error = ControllerError> + Send + 'static,
{
    let store = controller.store();
    if ctx.chatflows.wait_until_ready().await.is_ok() {
        let run = controller
            .run(reconcile, error_policy::<K>, ctx)
            .for_each(log_outcome);
        until_stopped(run, store, &session).await;
    }
}

/// Runs a controller until it ends or `session` does; then lets its graceful shutdown finish
/// the reconciles in flight. kube-runtime's runner starts only once the controller's store is
/// ready, and a graceful shutdown that comes first stops the watch that would make it ready, so
/// the run would never end: then nothing can be in flight, and the run is dropped instead.
async fn until_stopped<K>(
    run: impl std::future::Future<Output = ()>,
    store: Store<K>,
    session: &CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut run = std::pin::pin!(run);
    tokio::select! {
        () = &mut run => return,
        () = session.cancelled() => {}
    }
    if store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
    {
        run.await;
    }
}

fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Reconciles of one kind running at once. A Chatflow's reconcile may list every chatflow in
/// Flowise (with their flows): a reconcile of all (a new leader, a sync pass that changed its
/// mind) would otherwise ask Flowise for every one at once, and time out.
const RECONCILES_AT_ONCE: u16 = 4;

/// `KubeController::new`, with each object trimmed ([`crate::crd::trim`]) before the
/// controller's store keeps it, and at most [`RECONCILES_AT_ONCE`] reconciles at a time. Its
/// objects are [`Lenient`]: one that does not read is reported, not a failure of every list.
fn controller<K: crate::crd::Watched>(api: Api<Lenient<K>>) -> KubeController<Lenient<K>> {
    let (reader, writer) = reflector::store();
    let objects = reflector::reflector(
        writer,
        watcher(api, watcher_config()).modify(crate::crd::trim),
    )
    .applied_objects();
    KubeController::for_stream(objects, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE))
}

/// Every object of `store` in the namespace of `cf`: a Chatflow appearing or going away changes
/// how rules in its namespace resolve.
fn in_namespace<K>(store: &Store<K>, ns: &str) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .filter(|obj| obj.namespace().as_deref() == Some(ns))
        .map(|obj| kube::runtime::reflector::ObjectRef::from_obj(obj.as_ref()))
        .collect()
}

fn log_outcome<K: Resource>(
    outcome: Result<
        (kube::runtime::reflector::ObjectRef<K>, Action),
        kube::runtime::controller::Error<ControllerError, watcher::Error>,
    >,
) -> std::future::Ready<()> {
    match outcome {
        Ok(_) => {}
        // Counted and logged by the error policy.
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        // Deleted while queued: nothing to do.
        Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
        // A watch failing (CRDs missing, no permission, API server away) is retried with backoff.
        Err(error) => tracing::warn!(%error, "controller watch or queue error"),
    }
    std::future::ready(())
}

/// What every reconcile needs.
pub(crate) struct Context {
    pub client: Client,
    pub flowise: Arc<dyn FlowiseApi>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: Backoff,
    /// Unreadable objects reported by Event alone (the API server refused their status).
    pub event_only: unreadable::EventOnly,
    /// Statuses written whose stored copy lacks part of them (an older CRD).
    pub written: written::Written,
    /// Chatflows as the reflector that triggers ChatflowAccess and CreditPolicy reconciles sees
    /// them (for resolving references).
    pub chatflows: Store<Lenient<Chatflow>>,
    /// Cancelled when the Lease is lost.
    pub fence: CancellationToken,
    /// Owned definitions synced one Flowise name at a time.
    pub flowise_names: chatflow::FlowiseNames,
}

impl Context {
    /// Runs a reconcile's `work` while this replica holds the Lease: when it is lost, `work` is
    /// dropped at its next await (a Flowise call in flight is abandoned, as on a crash; the new
    /// leader's reconcile finds what it did by the ownership marker).
    pub async fn fenced<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ControllerError>>,
    ) -> Result<T, ControllerError> {
        tokio::select! {
            biased;
            () = self.fence.cancelled() => Err(ControllerError::LeaseLost),
            result = work => result,
        }
    }

    /// Counts a reconcile of `obj` that began at `started`. One that succeeded forgets the
    /// object's failures: its next transient error is retried after 1 s again.
    pub fn reconciled<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        ok: bool,
        started: std::time::Instant,
    ) {
        let kind = kind_name::<K>();
        self.metrics
            .controller
            .reconciled(kind, ok, started.elapsed());
        if ok {
            self.backoff.reset(&object_key(obj));
        }
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(%error, reason, "could not publish an Event");
        }
    }

    /// Names of the Chatflows in `namespace`.
    pub fn chatflow_names(&self, namespace: &str) -> BTreeSet<String> {
        self.chatflows
            .state()
            .iter()
            .filter(|cf| cf.meta().namespace.as_deref() == Some(namespace))
            .filter(|cf| !names::deleting(cf))
            .filter_map(|cf| cf.meta().name.clone())
            .collect()
    }
}

/// The error policy of every kind: transient errors back off per object (1 s, 2 s, 4 s, … up to
/// the sync interval); permanent ones were reported in status and wait for the next resync.
fn error_policy<K>(obj: Arc<K>, error: &ControllerError, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = kind_name::<K>();
    ctx.metrics.controller.reconcile_error(kind, error.reason());
    let key = object_key(obj.as_ref());
    if let Some(due) = error.due_in() {
        ctx.backoff.reset(&key);
        tracing::info!(kind, object = %key, %error, retry_in = ?due, "reconcile waits");
        Action::requeue(due)
    } else if error.transient() {
        let delay = ctx.backoff.next(&key, ctx.settings.sync_interval);
        tracing::warn!(kind, object = %key, %error, retry_in = ?delay, "reconcile failed (transient)");
        Action::requeue(delay)
    } else {
        ctx.backoff.reset(&key);
        tracing::warn!(kind, object = %key, %error, "reconcile failed (permanent); retrying at the sync interval");
        Action::requeue(ctx.settings.sync_interval)
    }
}

/// The kind as a static label.
fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Chatflow" => chatflow::KIND,
        "ChatflowAccess" => access::KIND,
        "CreditPolicy" => policy::KIND,
        _ => "other",
    }
}

/// `Kind/namespace/name` of an object.
fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Writes `status` with server-side apply on `/status` as field manager `manager` (forced).
/// Only the fields in `status` are owned; fields other managers set are left alone. What the
/// API server kept of it is noted in [`Context::written`].
pub(crate) async fn apply_status<K>(
    ctx: &Context,
    obj: &K,
    status: serde_json::Value,
    manager: &str,
) -> Result<(), ControllerError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let name = obj.meta().name.as_deref().ok_or(ControllerError::Unnamed)?;
    let ns = obj
        .meta()
        .namespace
        .as_deref()
        .ok_or(ControllerError::Unnamed)?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let stored = api
        .patch_status(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&body),
        )
        .await?;
    ctx.metrics.controller.status_written(kind_name::<K>());
    let stored = serde_json::to_value(&stored).map_err(ControllerError::Serialize)?;
    ctx.written
        .after_write(object_key(obj), &stored, body["status"].take());
    Ok(())
}

/// How many of `names` exist in `existing`, and which do not (`"*"`: every existing one).
pub(crate) fn resolve_refs(names: &[String], existing: &BTreeSet<String>) -> (u32, Vec<String>) {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    if names.iter().any(|n| n == "*") {
        return (count(existing.len()), Vec::new());
    }
    let wanted: BTreeSet<&String> = names.iter().collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !existing.contains(n.as_str()))
        .map(|n| n.to_string())
        .collect();
    (count(wanted.len() - missing.len()), missing)
}

/// The Event for `Ready` turning False for a new reason, or to `FlowiseUnreachable` (which
/// keeps a True Ready): Warning, except for Suspended.
pub(crate) fn ready_transition(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    new: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(EventType, &'static str, String)> {
    use crate::crd::conditions::{READY, reason};
    let ready = |list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        list.iter().find(|c| c.type_ == READY).cloned()
    };
    let now = ready(new)?;
    let problem = now.status == "False" || now.reason == reason::FLOWISE_UNREACHABLE;
    if !problem || ready(old).is_some_and(|before| before.reason == now.reason) {
        return None;
    }
    let why = [
        reason::NOT_FOUND_IN_FLOWISE,
        reason::FLOWISE_UNREACHABLE,
        reason::INVALID_SPEC,
        reason::SUSPENDED,
        reason::CONFLICT,
        reason::FLOWISE_CONFLICT,
        reason::EXPIRED,
    ]
    .into_iter()
    .find(|r| *r == now.reason)?;
    let type_ = if why == reason::SUSPENDED {
        EventType::Normal
    } else {
        EventType::Warning
    };
    Some((type_, why, now.message))
}

/// Now, to the second: the API server stores times to the second, so a status computed from a
/// finer time would never equal the one read back.
pub(crate) fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_by_name_or_wildcard() {
        let existing: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve_refs(&names(&["a", "c", "a"]), &existing),
            (1, vec!["c".to_string()])
        );
        assert_eq!(resolve_refs(&names(&["*"]), &existing), (2, vec![]));
    }
}
