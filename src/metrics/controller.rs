//! The controller's metrics: reconciles, status writes, the Flowise sync and leadership.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{KindLabels, OutcomeLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResultLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindReasonLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

/// The controller's metrics: `flowgate_reconciles_total{kind,result}` (the name the chart's
/// dashboard reads), reconcile errors by reason and durations, status writes, the Flowise sync
/// counts, and `flowgate_controller_leader`.
pub struct ControllerMetrics {
    reconciles: Family<KindResultLabels, Counter>,
    reconcile_errors: Family<KindReasonLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    status_writes: Family<KindLabels, Counter>,
    sync_passes: Family<OutcomeLabels, Counter>,
    sync_changes: Family<ChangeLabels, Counter>,
    sync_last: Family<ChangeLabels, Gauge>,
    sync_last_timestamp: Gauge,
    sync_last_success: Gauge,
    sync_interval: Gauge,
    leader: Gauge,
    restarts: Counter,
}

/// Counts of one Flowise sync pass, as exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub added: u64,
    pub updated: u64,
    pub removed: u64,
    pub total: u64,
    pub errors: u64,
}

impl ControllerMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<KindResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and result (success, error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<KindReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to 131 s: one Flowise call of a reconcile may take its 30 s timeout.
            Histogram::new(exponential_buckets(0.001, 2.0, 18))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, by kind",
            reconcile_duration.clone(),
        );
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status patches sent to the API server, by kind",
            status_writes.clone(),
        );
        let sync_passes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sync_passes",
            "Flowise sync passes by outcome (success, failed)",
            sync_passes.clone(),
        );
        let sync_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "sync_chatflows",
            "Chatflows added, updated, removed and errors over all sync passes",
            sync_changes.clone(),
        );
        let sync_last = Family::<ChangeLabels, Gauge>::default();
        registry.register(
            "sync_last_chatflows",
            "Counts of the last sync pass (added, updated, removed, total, errors)",
            sync_last.clone(),
        );
        let sync_last_timestamp = Gauge::default();
        registry.register(
            "sync_last_timestamp_seconds",
            "Unix time the last sync pass finished",
            sync_last_timestamp.clone(),
        );
        let sync_last_success = Gauge::default();
        registry.register(
            "sync_last_success_timestamp_seconds",
            "Unix time the last successful sync pass finished; before one, when this replica \
             first took the lead (0 before that)",
            sync_last_success.clone(),
        );
        let sync_interval = Gauge::default();
        registry.register(
            "sync_interval_seconds",
            "FLOWGATE_SYNC_INTERVAL: the time between two sync passes of the leader",
            sync_interval.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "controller_leader",
            "1 while this replica holds the controller Lease",
            leader.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "controller_restarts",
            "Times the controller stopped unexpectedly (a panic outside a reconcile) and was \
             started again",
            restarts.clone(),
        );
        Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            sync_passes,
            sync_changes,
            sync_last,
            sync_last_timestamp,
            sync_last_success,
            sync_interval,
            leader,
            restarts,
        }
    }

    /// Counts a restart of a controller that stopped unexpectedly.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Records the configured time between sync passes (for the alert on passes failing).
    pub fn set_sync_interval(&self, interval: Duration) {
        let secs = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
        self.sync_interval.set(secs);
    }

    /// Counts one finished reconcile of `kind`.
    pub fn reconciled(&self, kind: &'static str, ok: bool, elapsed: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&KindResultLabels { kind, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one failed reconcile of `kind`.
    pub fn reconcile_error(&self, kind: &'static str, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&KindReasonLabels { kind, reason })
            .inc();
    }

    /// Counts one status patch of `kind`.
    pub fn status_written(&self, kind: &'static str) {
        self.status_writes.get_or_create(&KindLabels { kind }).inc();
    }

    /// Records one sync pass.
    pub fn sync_pass(&self, success: bool, counts: SyncCounts, finished_unix: i64) {
        let outcome = if success { "success" } else { "failed" };
        self.sync_passes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        for (change, value) in [
            ("added", counts.added),
            ("updated", counts.updated),
            ("removed", counts.removed),
            ("errors", counts.errors),
        ] {
            self.sync_changes
                .get_or_create(&ChangeLabels { change })
                .inc_by(value);
        }
        for (change, value) in [
            ("added", counts.added),
            ("updated", counts.updated),
            ("removed", counts.removed),
            ("total", counts.total),
            ("errors", counts.errors),
        ] {
            self.sync_last
                .get_or_create(&ChangeLabels { change })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.sync_last_timestamp.set(finished_unix);
        if success {
            self.sync_last_success.set(finished_unix);
        }
    }

    /// Whether this replica leads. Taking the lead before any pass succeeded here starts the
    /// last success's clock: `FlowgateFlowiseSyncFailing` counts two sync intervals from then,
    /// not from 1970 (it fired 5 minutes after a restart while Flowise was still away).
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if leader && self.sync_last_success.get() == 0 {
            self.sync_last_success
                .set(jiff::Timestamp::now().as_second());
        }
    }

    /// Reconciles of `kind` so far, whatever their result (for tests and diagnostics).
    pub fn reconciles(&self, kind: &'static str) -> u64 {
        ["success", "error"]
            .into_iter()
            .map(|result| {
                self.reconciles
                    .get_or_create(&KindResultLabels { kind, result })
                    .get()
            })
            .sum()
    }

    /// Status patches of `kind` so far.
    pub fn status_writes(&self, kind: &'static str) -> u64 {
        self.status_writes.get_or_create(&KindLabels { kind }).get()
    }

    /// Whether the leader gauge is set.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }
}
