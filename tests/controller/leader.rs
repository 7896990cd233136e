//! One controller reconciles per Lease; another takes over when it is killed; a replica that
//! loses the Lease stops the reconciles it has in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;

use flowgate::controller::Controller;
use flowgate::crd::Chatflow;
use flowgate::flowise::{ChatflowWrite, Deletion, FlowiseApi, FlowiseChatflow, FlowiseError};
use flowgate::ledger::{
    AdjustOutcome, AdjustRequest, BucketBalance, CreditLedger, LedgerFuture, Limits, PolicyUsage,
    PrunedChunk, ReservationId, ReserveOutcome, ReserveRequest, Resolution, UsageFilter,
    UsageRecord, Window,
};
use flowgate::metrics::Metrics;
use jiff::Timestamp;

use crate::harness::*;
use crate::support;

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_another_takes_over_when_it_is_killed() {
    let (client, ns, api, _objects) = setup("cf-leader").await;
    let name = support::unique("fgtest-leader");
    let _cleanup = support::FlowiseCleanup(name.clone());
    flowise_chatflow(&name, None).await;
    // A second Flowise chatflow: two Chatflows claiming one are both a Conflict.
    let other = support::unique("fgtest-leader-2");
    let _cleanup_other = support::FlowiseCleanup(other.clone());
    flowise_chatflow(&other, None).await;
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
    // A reconcile is counted when it returns, just after its status write.
    support::eventually(10, "the leader counts its reconcile", || async {
        (leader.reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(follower.reconciles(), 0, "the follower does not reconcile");
    let holder = |lease: Lease| {
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    let before = holder(leases.get("flowgate-controller").await.expect("lease"));

    leader.kill();
    create(&api, chatflow_doc("second", json!({"flowiseName": other}))).await;
    // Lease duration 3 s: the follower takes over after it, then reconciles.
    wait_ready(&api, "second", "True", "Synced").await;
    assert!(follower.metrics.controller.is_leader());
    support::eventually(10, "the new leader counts its reconcile", || async {
        (follower.reconciles() > 0).then_some(())
    })
    .await;
    let after = holder(leases.get("flowgate-controller").await.expect("lease"));
    assert_ne!(before, after, "the Lease changed hands");
    follower.stop().await;
}

/// The real Flowise, except that a create waits until `release` is notified (for ever, if it
/// never is). It records when one starts and when it is dropped by the controller.
struct HangingCreates {
    inner: Arc<dyn FlowiseApi>,
    started: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
}

impl HangingCreates {
    fn new() -> Self {
        Self {
            inner: Arc::new(support::flowise()),
            started: Arc::default(),
            dropped: Arc::default(),
            release: Arc::default(),
        }
    }
}

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl FlowiseApi for HangingCreates {
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
        self.inner.list()
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
        self.inner.get(id)
    }

    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        Box::pin(async move {
            let _dropped = Dropped(self.dropped.clone());
            self.started.store(true, Ordering::SeqCst);
            self.release.notified().await;
            self.inner.create(chatflow).await
        })
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        self.inner.update(id, changes)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
        self.inner.delete(id)
    }
}

/// A controller leading in a namespace of its own (`prefix`), with the create of its owned
/// Chatflow `owned` waiting in Flowise ([`HangingCreates`]).
struct CreateInFlight {
    client: kube::Client,
    ns: String,
    api: Api<flowgate::crd::Chatflow>,
    running: Running,
    dropped: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    /// The Flowise chatflow's name.
    name: String,
    _objects: support::NamespaceCleanup,
    _chatflow: support::FlowiseCleanup,
}

async fn a_create_in_flight(prefix: &str) -> CreateInFlight {
    let (client, ns, api, objects) = setup(prefix).await;
    let name = support::unique(&format!("fgtest-{prefix}"));
    let chatflow = support::FlowiseCleanup(name.clone());
    let flowise = HangingCreates::new();
    let (started, dropped, release) = (
        flowise.started.clone(),
        flowise.dropped.clone(),
        flowise.release.clone(),
    );
    let running = start_with(&client, settings(&ns), Arc::new(flowise));
    support::eventually(20, "the controller leads", || async {
        running.metrics.controller.is_leader().then_some(())
    })
    .await;
    create(&api, owned_doc("owned", &name, "Delete")).await;
    support::eventually(20, "the create reaches Flowise", || async {
        started.load(Ordering::SeqCst).then_some(())
    })
    .await;
    CreateInFlight {
        client,
        ns,
        api,
        running,
        dropped,
        release,
        name,
        _objects: objects,
        _chatflow: chatflow,
    }
}

/// Gives the Lease in `ns` to `holder` for ten minutes (`None`: releases it), as another
/// replica would after a partition: the one holding it learns at its next renewal (every second
/// here).
async fn hand_the_lease_to(client: &kube::Client, ns: &str, holder: Option<&str>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut lease = leases.get("flowgate-controller").await.expect("lease");
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = holder.map(String::from);
    spec.lease_duration_seconds = Some(600);
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    leases
        .replace("flowgate-controller", &PostParams::default(), &lease)
        .await
        .expect("the Lease changes hands");
}

#[tokio::test]
async fn losing_the_lease_stops_a_flowise_call_in_flight() {
    let CreateInFlight {
        client,
        ns,
        running,
        dropped,
        _objects,
        _chatflow,
        ..
    } = a_create_in_flight("cf-fence").await;
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the create is still waiting"
    );

    hand_the_lease_to(&client, &ns, Some("another-replica")).await;
    support::eventually(20, "the create in flight is dropped", || async {
        dropped.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(!running.metrics.controller.is_leader());
    // Nothing is left running that could hold up shutdown.
    running.stop().await;
}

/// A leader killed while its create was in flight: the create may still land in Flowise, so
/// the next leader does not send it again until the window (15 s here) has passed since it
/// was sent, as `status.createSentAt` tells; then it does, and the field goes.
#[tokio::test]
async fn a_create_the_last_leader_left_in_flight_is_not_sent_again_until_it_could_have_landed() {
    let CreateInFlight {
        client,
        ns,
        api,
        running,
        name,
        _objects,
        _chatflow,
        ..
    } = a_create_in_flight("cf-handover").await;
    let announced = api.get("owned").await.expect("owned");
    let Some(sent_at) = announced.status.and_then(|s| s.create_sent_at) else {
        panic!("the create is recorded in status before it is sent");
    };
    running.kill();

    let mut settings = settings(&ns);
    settings.create_window = Duration::from_secs(15);
    let next = start(&client, settings);
    support::eventually(20, "the next replica leads", || async {
        next.metrics.controller.is_leader().then_some(())
    })
    .await;
    let held = wait_until(
        &api,
        "owned",
        20,
        "the create held back",
        |cf: &Chatflow| {
            cf.conditions()
                .iter()
                .any(|c| c.type_ == "Ready" && c.message.contains("went unanswered"))
        },
    )
    .await;
    let waited = jiff::Timestamp::now().duration_since(sent_at.0);
    assert!(
        named_in_flowise(&name).await.is_empty(),
        "not created again {waited} after the first was sent"
    );
    assert_eq!(
        held.status.and_then(|s| s.create_sent_at),
        Some(sent_at.clone()),
        "the new leader keeps the first create's time"
    );

    wait_ready(&api, "owned", "True", "Synced").await;
    let waited = jiff::Timestamp::now().duration_since(sent_at.0);
    assert!(
        waited >= jiff::SignedDuration::from_secs(15),
        "created {waited} after the first was sent"
    );
    assert_eq!(named_in_flowise(&name).await.len(), 1);
    // Removed just after the status that says Synced is written.
    wait_until(
        &api,
        "owned",
        10,
        "createSentAt removed",
        |cf: &Chatflow| {
            cf.status
                .as_ref()
                .is_some_and(|s| s.create_sent_at.is_none())
        },
    )
    .await;
    next.stop().await;
}

/// A replica told to stop while a reconcile is still writing to Flowise keeps the Lease until
/// that reconcile has finished: left to expire, it would let another replica create the same
/// chatflow meanwhile.
#[tokio::test]
async fn a_stopping_leader_holds_the_lease_until_its_last_reconcile_finished() {
    let CreateInFlight {
        client,
        ns,
        api,
        running,
        release,
        _objects,
        _chatflow,
        ..
    } = a_create_in_flight("cf-drain").await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let renewed = |lease: Lease| {
        let spec = lease.spec.unwrap_or_default();
        (spec.holder_identity, spec.renew_time.map(|t| t.0))
    };
    let (holder, before) = renewed(leases.get("flowgate-controller").await.expect("lease"));
    let stopping = tokio::spawn(running.stop());
    // Twice the Lease's duration (3 s): still held, renewed all along.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (still, after) = renewed(leases.get("flowgate-controller").await.expect("lease"));
    assert_eq!(still, holder, "the stopping replica still holds the Lease");
    let (Some(before), Some(after)) = (before, after) else {
        panic!("a held Lease has a renewTime");
    };
    assert!(
        jiff::Timestamp::now().duration_since(after) < jiff::SignedDuration::from_secs(3),
        "renewed within its duration while the create ran ({before} → {after})"
    );
    assert!(!stopping.is_finished(), "the stop waits for the reconcile");

    release.notify_one();
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the stop ends once the create did")
        .expect("stopped cleanly");
    wait_ready(&api, "owned", "True", "Synced").await;
    let (holder, _) = renewed(leases.get("flowgate-controller").await.expect("lease"));
    assert_eq!(holder, None, "released once the create finished");
}

/// A replica told to stop just as it starts leading (a rollout, a SIGTERM at the wrong moment)
/// stops at once, also when its watches have not listed anything yet.
#[tokio::test]
async fn a_controller_stopped_as_soon_as_it_leads_stops_at_once() {
    let (client, ns, _api, _objects) = setup("cf-quick-stop").await;
    for _ in 0..5 {
        let running = start(&client, settings(&ns));
        support::eventually(20, "the controller leads", || async {
            running.metrics.controller.is_leader().then_some(())
        })
        .await;
        running.stop().await;
    }
}

/// An SQLite ledger whose usage reads never answer: a CreditPolicy status pass waits there.
struct HangingUsage {
    inner: Arc<dyn CreditLedger>,
    started: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
}

impl CreditLedger for HangingUsage {
    fn reserve(&self, request: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome> {
        self.inner.reserve(request)
    }

    fn settle<'a>(
        &'a self,
        id: ReservationId,
        actual: &'a [u64],
        tokens: u64,
        now: Timestamp,
    ) -> LedgerFuture<'a, Resolution> {
        self.inner.settle(id, actual, tokens, now)
    }

    fn refund(&self, id: ReservationId, now: Timestamp) -> LedgerFuture<'_, Resolution> {
        self.inner.refund(id, now)
    }

    fn adjust(&self, request: AdjustRequest) -> LedgerFuture<'_, AdjustOutcome> {
        self.inner.adjust(request)
    }

    fn sweep(&self, now: Timestamp) -> LedgerFuture<'_, u64> {
        self.inner.sweep(now)
    }

    fn balance<'a>(
        &'a self,
        policy: &'a str,
        bucket: &'a str,
        window: &'a Window,
    ) -> LedgerFuture<'a, i64> {
        self.inner.balance(policy, bucket, window)
    }

    fn policy_usage<'a>(
        &'a self,
        _policy: &'a str,
        _window: &'a Window,
        _limits: Limits,
    ) -> LedgerFuture<'a, PolicyUsage> {
        Box::pin(async move {
            let _dropped = Dropped(self.dropped.clone());
            self.started.store(true, Ordering::SeqCst);
            std::future::pending().await
        })
    }

    fn buckets<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        bucket: Option<&'a str>,
        limit: u32,
    ) -> LedgerFuture<'a, Vec<BucketBalance>> {
        self.inner.buckets(policy, window, bucket, limit)
    }

    fn usage(&self, filter: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>> {
        self.inner.usage(filter)
    }

    fn prune_reservations(
        &self,
        before: Timestamp,
        after: ReservationId,
        chunk: u32,
    ) -> LedgerFuture<'_, PrunedChunk> {
        self.inner.prune_reservations(before, after, chunk)
    }

    fn prune_usage(&self, before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        self.inner.prune_usage(before, chunk)
    }

    fn prune_buckets(&self, started_before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        self.inner.prune_buckets(started_before, chunk)
    }
}

/// A CreditPolicy usage pass still running when the Lease is lost stops there: finished on a
/// slow API server, it would write older `creditsUsed` over the new leader's, and the replica
/// could not campaign again until it had.
#[tokio::test]
async fn losing_the_lease_stops_a_credit_usage_pass_in_flight() {
    let (client, ns, _api, _objects) = setup("cf-fence-usage").await;
    let policies: Api<flowgate::crd::CreditPolicy> = Api::namespaced(client.clone(), &ns);
    create(
        &policies,
        json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": "pool"},
            "spec": {"chatflows": ["*"], "budget": {"credits": 100, "period": "Monthly"}}
        }),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = flowgate::config::LedgerUrl::Sqlite(dir.path().join("ledger.db"));
    let ledger = HangingUsage {
        inner: flowgate::ledger::open(&url).await.expect("ledger"),
        started: Arc::default(),
        dropped: Arc::default(),
    };
    let (started, dropped) = (ledger.started.clone(), ledger.dropped.clone());
    let metrics = Arc::new(Metrics::new());
    let controller = Controller::new(
        client.clone(),
        Arc::new(support::flowise()),
        settings(&ns),
        metrics.clone(),
    )
    .with_ledger(Arc::new(ledger));
    let running = Running::spawn(controller, metrics);
    support::eventually(20, "the usage pass reads the ledger", || async {
        started.load(Ordering::SeqCst).then_some(())
    })
    .await;

    hand_the_lease_to(&client, &ns, Some("another-replica")).await;
    support::eventually(20, "the usage pass is dropped", || async {
        dropped.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(!running.metrics.controller.is_leader());
    // Given back, the Lease is this replica's again: nothing of the last term held it up.
    hand_the_lease_to(&client, &ns, None).await;
    support::eventually(20, "the replica leads again", || async {
        running.metrics.controller.is_leader().then_some(())
    })
    .await;
    running.stop().await;
}
