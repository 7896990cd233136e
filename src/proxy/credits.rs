//! Credits on the request path: reserve the flat cost of every applicable policy atomically before
//! forwarding (where a policy prices tokens and sets `reserveTokens`, the hold of [`held`]), then
//! settle the actual cost (flat + tokens Flowise reported) or refund.
//!
//! Running out is a 402 naming the policy; a ledger that cannot be reached is a 503 — never a free
//! pass. Settling and refunding happen off the request path (a spawned task), so a client never
//! waits for the second durable write. When no applicable policy prices tokens, the flat cost is
//! the whole cost: it is reserved as final ([`ReserveRequest::final_cost`]) and there is nothing
//! to settle, so such a prediction costs the ledger one write (a refund still undoes it).
//!
//! A charged answer carries `X-Credits-Remaining`: the smallest balance left over the policies
//! that charged it — once its tokens are counted for a JSON answer, after the hold for a stream
//! (its headers go out before its tokens are known, and a stream that ends unanswered is
//! refunded). A 402 carries it too (what is left of the policy that refused), with `Retry-After`
//! until that budget resets — a hint: another policy may still refuse then, and none is sent
//! for a `Never` period or a prediction dearer than the whole budget.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::Retryable;
use futures::future::BoxFuture;
use hyper::header::HeaderName;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::ProxyError;
use super::sse::StreamUsage;
use crate::admin::models::CreditUsageRecord;
use crate::config::InvalidPolicies;
use crate::crd::BudgetScope;
use crate::identity::Identity;
use crate::index::{Caller, ChatflowEntry, PolicyRule, Snapshot};
use crate::ledger::{
    self, BudgetLine, CreditLedger, LedgerError, ReservationId, ReserveOutcome, ReserveRequest,
    UsageFilter,
};
use crate::metrics::Metrics;

mod alerts;

use alerts::Alerting;
pub use alerts::Alerts;

/// How long a reservation may stay open before a sweep settles it as expired (longer than any
/// upstream call may take).
pub const RESERVATION_TTL: Duration = Duration::from_secs(900);
/// Longest an answer waits for the refund of its keyed request (see [`Credits::refund_now`]).
pub const KEYED_REFUND_WAIT: Duration = Duration::from_secs(5);
/// How often expired reservations are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long a prediction waits for its reservation to be committed before it is refused with
/// 503 `ledger_unavailable`. A ledger that stalls (SQLite's write lock held by another process,
/// a PostgreSQL failover) would otherwise hold every charged request, its body and its chat's
/// turn for as long as the stall lasts. A reservation that lands after is refunded at once.
pub const RESERVE_DEADLINE: Duration = Duration::from_secs(10);
/// The caller's smallest balance left after a charged answer, or of the budget that refused.
pub const X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");

/// The ledger as the proxy uses it.
#[derive(Clone)]
pub struct Credits {
    ledger: Arc<dyn CreditLedger>,
    metrics: Arc<Metrics>,
    alerts: Option<Alerts>,
    /// What an invalid CreditPolicy does to the predictions it would charge.
    invalid_policies: InvalidPolicies,
    /// Settles, refunds and alerts still running after their request was answered; the proxy
    /// waits for them when it stops.
    background: TaskTracker,
    /// Cancelled when a shutdown cuts the connections still open after its drain period.
    cut: CancellationToken,
    /// [`RESERVE_DEADLINE`].
    reserve_deadline: Duration,
}

/// Credits held for one request.
pub struct Charge {
    id: ReservationId,
    policies: Vec<Arc<PolicyRule>>,
    /// Charged in full at reserve time (no policy prices tokens): nothing to settle.
    final_cost: bool,
    /// The request carried an `Idempotency-Key`: its refund lands before the answer, so that a
    /// prompt retry with the same key finds it free, not "in progress" (409).
    keyed: bool,
    /// Remaining balance on each charged policy (in `policies`' order), after this reservation.
    left: Vec<u64>,
    /// Smallest remaining balance over the charged policies, after this reservation.
    pub remaining: Option<u64>,
    /// For the settle's `alertAtPercent` check, where one is due.
    alerting: Option<Alerting>,
}

impl Charge {
    /// Smallest remaining balance over the charged policies once settled with `tokens`.
    pub fn remaining_after(&self, tokens: u64) -> Option<u64> {
        self.policies
            .iter()
            .zip(&self.left)
            .map(|(policy, left)| {
                left.saturating_add(held(policy))
                    .saturating_sub(cost(policy, tokens))
            })
            .min()
    }

    /// Whether settling needs the tokens Flowise reports (some policy prices them).
    pub fn counts_tokens(&self) -> bool {
        !self.final_cost
    }
}

impl Credits {
    pub fn new(ledger: Arc<dyn CreditLedger>, metrics: Arc<Metrics>) -> Self {
        Self {
            ledger,
            metrics,
            alerts: None,
            invalid_policies: InvalidPolicies::Skip,
            background: TaskTracker::new(),
            cut: CancellationToken::new(),
            reserve_deadline: RESERVE_DEADLINE,
        }
    }

    /// The settles, refunds and alerts still running in the background.
    pub fn background(&self) -> &TaskTracker {
        &self.background
    }

    /// With [`InvalidPolicies::Refuse`], a prediction an invalid CreditPolicy would have
    /// charged is refused (503 `policy_invalid`) instead of costing nothing on it.
    pub fn with_invalid_policies(mut self, invalid_policies: InvalidPolicies) -> Self {
        self.invalid_policies = invalid_policies;
        self
    }

    /// Also publishes an Event when a subject crosses a policy's `alertAtPercent`.
    /// `cut` says when a shutdown cuts the connections its drain left open: a prediction
    /// dropped then was flowgate's to stop, not the caller's, and is refunded.
    pub fn with_shutdown_cut(mut self, cut: CancellationToken) -> Self {
        self.cut = cut;
        self
    }

    /// Whether a shutdown cut the connections: predictions dropped now are refunded, not
    /// charged as a client's hang-up.
    pub fn cut_by_shutdown(&self) -> bool {
        self.cut.is_cancelled()
    }

    pub fn with_alerts(mut self, alerts: Alerts) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// With [`InvalidPolicies::Refuse`], 503 `policy_invalid` when an invalid CreditPolicy would
    /// have charged `caller` on `cf`. The prediction routes ask before reading the body (a
    /// refusal does not change between retries, so it should cost nothing); [`Credits::reserve`]
    /// asks again.
    pub fn refuse_invalid(
        &self,
        snapshot: &Snapshot,
        caller: &Caller<'_>,
        cf: &ChatflowEntry,
    ) -> Result<(), ProxyError> {
        if self.invalid_policies == InvalidPolicies::Refuse
            && let Some(invalid) = snapshot.invalid_policy_for(caller, cf)
        {
            return Err(ProxyError::PolicyInvalid {
                policy: invalid.id.to_string(),
                problem: invalid.error.to_string(),
            });
        }
        Ok(())
    }

    /// Reserves the flat cost on every policy that applies; `None` when no policy applies.
    pub async fn reserve(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        cf: &ChatflowEntry,
        idempotency_key: Option<String>,
        now: Timestamp,
    ) -> Result<Option<Charge>, ProxyError> {
        self.refuse_invalid(snapshot, caller, cf)?;
        let policies: Vec<Arc<PolicyRule>> = snapshot
            .policies_for(caller, cf)
            .into_iter()
            .cloned()
            .collect();
        if policies.is_empty() {
            return Ok(None);
        }
        let limits: Vec<(u64, bool)> = policies.iter().map(|p| p.credits_for(caller)).collect();
        let lines = policies
            .iter()
            .zip(&limits)
            .map(|(p, &(limit, own_limit))| {
                Ok(BudgetLine {
                    policy: p.id.to_string(),
                    bucket: bucket(p, identity).to_string(),
                    limit,
                    own_limit,
                    window: window(p, now)?,
                    amount: held(p),
                })
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let final_cost = policies.iter().all(|p| p.per_thousand_tokens == 0);
        let keyed = idempotency_key.is_some();
        let request = ReserveRequest {
            subject: identity.key.clone(),
            chatflow: format!("{}/{}", cf.rule.namespace, cf.rule.name),
            idempotency_key,
            lines,
            now,
            ttl: RESERVATION_TTL,
            final_cost,
        };
        match timed(&self.metrics, "reserve", self.land(request)).await {
            Ok(ReserveOutcome::Reserved { id, remaining }) => {
                for ((policy, (_, left)), (limit, _)) in
                    policies.iter().zip(&remaining).zip(&limits)
                {
                    if !policy.alert_at_percent.is_empty() {
                        self.alert_reserved(policy, *limit, &identity.key, *left);
                    }
                }
                // A settle may cross a threshold with its tokens.
                let alerting = (!final_cost
                    && policies.iter().any(|p| !p.alert_at_percent.is_empty()))
                .then(|| Alerting {
                    subject: identity.key.clone(),
                    limits: limits.iter().map(|(limit, _)| *limit).collect(),
                });
                Ok(Some(Charge {
                    alerting,
                    id,
                    policies,
                    final_cost,
                    keyed,
                    left: remaining.iter().map(|(_, left)| *left).collect(),
                    remaining: remaining.iter().map(|(_, left)| *left).min(),
                }))
            }
            Ok(ReserveOutcome::Exhausted {
                policy,
                remaining,
                reset_at,
            }) => {
                let never_fits = policies
                    .iter()
                    .zip(&limits)
                    .any(|(p, (limit, _))| *p.id == *policy && fits_no_budget(held(p), *limit));
                Err(ProxyError::InsufficientCredits {
                    retry_after: reset_at
                        .filter(|_| !never_fits)
                        .map(|at| secs_until(now, at)),
                    policy,
                    remaining: i64::try_from(remaining).unwrap_or(i64::MAX),
                    reset: reset_at.map(|t| t.to_string()),
                })
            }
            Ok(ReserveOutcome::Duplicate { .. }) => Err(ProxyError::DuplicateRequest),
            Err(error) => {
                tracing::error!(%error, reason = error.reason(), "credits ledger unavailable; refusing");
                Err(ProxyError::LedgerUnavailable)
            }
        }
    }

    /// `request` committed to the ledger, or an error once [`RESERVE_DEADLINE`] has passed
    /// (the reservation refunded when it lands). A keyed request waits [`KEYED_REFUND_WAIT`]
    /// longer for its reservation to land and be refunded, as [`Self::refund_now`] does: the
    /// 503 invites a retry with the same key, which would otherwise meet the late reservation
    /// and get 409.
    async fn land(&self, request: ReserveRequest) -> Result<ReserveOutcome, LedgerError> {
        let deadline = self.reserve_deadline;
        let keyed = request.idempotency_key.is_some();
        let mut landing = Landing::new(self, request);
        if let Ok(outcome) = tokio::time::timeout(deadline, &mut landing).await {
            return outcome;
        }
        if keyed {
            match tokio::time::timeout(KEYED_REFUND_WAIT, &mut landing).await {
                Ok(Ok(ReserveOutcome::Reserved { id, .. })) => {
                    let refund = self.release(id);
                    if tokio::time::timeout(KEYED_REFUND_WAIT, refund)
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            ?KEYED_REFUND_WAIT,
                            "answering before a keyed refund landed"
                        );
                    }
                }
                // Known late, and nothing to undo: the answer it deserves (402, 409), not a
                // 503 whose retry would only meet it.
                Ok(Ok(outcome)) => return Ok(outcome),
                _ => {}
            }
        }
        // Not landed yet: dropped, it is refunded when it lands (`Landing`).
        drop(landing);
        Err(LedgerError::WriteTimeout(deadline))
    }

    /// Charges the actual cost in the background: the flat cost plus tokens on every policy.
    /// A final-cost charge is already what it should be; only the metrics see it.
    pub fn settle(&self, charge: Charge, tokens: u64) {
        let actual: Vec<u64> = charge.policies.iter().map(|p| cost(p, tokens)).collect();
        self.settle_at(charge, actual, tokens);
    }

    /// Charges what was held: Flowise ran the prediction, but how many tokens it took cannot
    /// be read (its answer was larger than flowgate holds). The hold is each policy's own
    /// estimate (`reserveTokens`), where the flat cost alone would make the run's tokens free.
    pub fn settle_held(&self, charge: Charge) {
        let actual: Vec<u64> = charge.policies.iter().map(|p| held(p)).collect();
        self.settle_at(charge, actual, 0);
    }

    fn settle_at(&self, charge: Charge, actual: Vec<u64>, tokens: u64) {
        for (policy, credits) in charge.policies.iter().zip(&actual) {
            self.metrics.credits_charged(&policy.id, *credits);
        }
        if charge.final_cost {
            return;
        }
        let (ledger, metrics, credits) = (self.ledger.clone(), self.metrics.clone(), self.clone());
        self.background.spawn(async move {
            let settle = || {
                timed(
                    &metrics,
                    "settle",
                    ledger.settle(charge.id, &actual, tokens, Timestamp::now()),
                )
            };
            match retried(settle, charge.id, "settle").await {
                Ok(landed) => {
                    if let Some(alerting) = &charge.alerting {
                        credits.alert_settled(&charge, alerting, &actual, &landed.used);
                    }
                }
                // The reservation stays; the sweep charges it at the reserved amount.
                Err(error) => {
                    tracing::error!(%error, reservation = charge.id.0, "settling failed");
                    metrics.correction_lost("settle");
                }
            }
        });
    }

    /// [`Credits::settle`] with the tokens of a stream, counted in the background: reading a
    /// large node list is not the request path's work. A stream whose node list went unread
    /// is charged at least what it held (as [`Credits::settle_held`]).
    pub fn settle_stream(&self, charge: Charge, usage: StreamUsage) {
        if !charge.counts_tokens() {
            return self.settle(charge, 0);
        }
        let credits = self.clone();
        self.background.spawn(async move {
            let at_least_held = usage.list_unread();
            let tokens = usage.count().await;
            let actual: Vec<u64> = charge
                .policies
                .iter()
                .map(|p| {
                    let counted = cost(p, tokens);
                    if at_least_held {
                        counted.max(held(p))
                    } else {
                        counted
                    }
                })
                .collect();
            credits.settle_at(charge, actual, tokens);
        });
    }

    /// Releases the reservation (Flowise failed before answering): before returning when the
    /// request is keyed, so that a prompt retry with the same key finds it free (409 otherwise).
    /// The refund runs in its own task either way: a client gone meanwhile does not cancel it.
    pub async fn refund_now(&self, charge: Charge) {
        let keyed = charge.keyed;
        let refund = self.release(charge.id);
        // A task that failed is already logged. With the ledger down the refund retries for
        // minutes: the answer does not wait that long.
        if keyed
            && tokio::time::timeout(KEYED_REFUND_WAIT, refund)
                .await
                .is_err()
        {
            tracing::warn!(?KEYED_REFUND_WAIT, "answering before a keyed refund landed");
        }
    }

    /// Releases the reservation in the background (Flowise failed before answering).
    pub fn refund(&self, charge: Charge) {
        self.release(charge.id);
    }

    /// [`Credits::refund`], returning the refund's task when the request is keyed: its answer
    /// should end only once the refund landed (see [`Credits::refund_now`]).
    pub fn refund_held(&self, charge: Charge) -> Option<tokio::task::JoinHandle<()>> {
        let keyed = charge.keyed;
        let refund = self.release(charge.id);
        keyed.then_some(refund)
    }

    /// Refunds reservation `id` in a background task, retried while the ledger is unreachable.
    fn release(&self, id: ReservationId) -> tokio::task::JoinHandle<()> {
        let ledger = self.ledger.clone();
        let metrics = self.metrics.clone();
        self.background.spawn(async move {
            let refund = || timed(&metrics, "refund", ledger.refund(id, Timestamp::now()));
            if let Err(error) = retried(refund, id, "refund").await {
                // The reservation stays; the sweep charges it at the reserved amount.
                tracing::error!(%error, reservation = id.0, "refund failed");
                metrics.correction_lost("refund");
            }
        })
    }

    /// The caller's balance on every policy that applies to any chatflow they may use.
    pub async fn balances(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        now: Timestamp,
    ) -> Result<Value, ProxyError> {
        let mut seen: Vec<Arc<PolicyRule>> = Vec::new();
        for cf in snapshot.visible(caller, now) {
            for policy in snapshot.policies_for(caller, cf) {
                if !seen.iter().any(|p| p.id == policy.id) {
                    seen.push(policy.clone());
                }
            }
        }
        let mut balances = Vec::with_capacity(seen.len());
        for policy in seen {
            let window = window(&policy, now)?;
            let bucket = bucket(&policy, identity);
            let used = self
                .ledger
                .balance(&policy.id, bucket, &window)
                .await
                .map_err(|_| ProxyError::LedgerQueryUnavailable)?;
            // The caller's own budget where an override names it.
            let (limit, _) = policy.credits_for(caller);
            let credits = i64::try_from(limit).unwrap_or(i64::MAX);
            balances.push(json!({
                "policy": &*policy.id,
                "scope": match policy.scope { BudgetScope::PerSubject => "PerSubject", BudgetScope::Shared => "Shared" },
                "period": format!("{:?}", policy.period),
                "timeZone": policy.time_zone_name,
                "credits": limit,
                "used": used,
                "remaining": credits.saturating_sub(used).max(0),
                "periodStart": window.start.to_string(),
                "resetAt": window.end.map(|t| t.to_string()),
            }));
        }
        Ok(json!({"subject": identity.key, "balances": balances}))
    }

    /// The caller's usage log rows `filter` selects.
    pub async fn usage(&self, filter: UsageFilter) -> Result<Vec<CreditUsageRecord>, ProxyError> {
        super::usage_log::usage_records(&*self.ledger, filter).await
    }

    /// Expires reservations left behind by crashed requests, at start and every
    /// [`SWEEP_INTERVAL`].
    pub async fn run_sweeper(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.ledger.sweep(Timestamp::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    expired = n,
                    "expired reservations charged at their reserved amount"
                ),
                Err(error) => tracing::warn!(%error, "sweeping reservations failed"),
            }
        }
    }

    /// Deletes what is older than `keep` ([`ledger::retention`]) at start and every
    /// [`SWEEP_INTERVAL`] after the previous run ended. Its own task, so that a long first run
    /// (a backlog of months) never holds up the sweep.
    pub async fn run_retention(
        self,
        keep: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.prune(keep) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }

    /// Deletes the ledger rows older than `keep`, paced ([`ledger::retention::PAUSE`]).
    async fn prune(&self, keep: Duration) {
        let Ok(before) = Timestamp::now().checked_sub(keep) else {
            return;
        };
        let pruned = ledger::retention::prune(
            &*self.ledger,
            before,
            ledger::retention::CHUNK,
            ledger::retention::PAUSE,
        )
        .await;
        match pruned {
            Ok(pruned) => {
                self.metrics
                    .ledger_pruned("reservations", pruned.reservations);
                self.metrics.ledger_pruned("usage", pruned.usage);
                self.metrics.ledger_pruned("buckets", pruned.buckets);
                if pruned.reservations + pruned.usage + pruned.buckets > 0 {
                    tracing::info!(
                        reservations = pruned.reservations,
                        usage = pruned.usage,
                        buckets = pruned.buckets,
                        %before,
                        "pruned the ledger"
                    );
                }
            }
            Err(error) => {
                self.metrics.ledger_prune_failed();
                tracing::warn!(%error, "pruning the ledger failed");
            }
        }
    }
}

/// Runs one ledger call and records how long it took, answered or failed.
/// A settle or refund, retried while the ledger fails transiently (a lost connection, a
/// failover, a busy database): 0.2 s doubling to 10 s, for as long as a reservation may stay
/// open ([`RESERVATION_TTL`]). Both still correct a reservation the sweep charged meanwhile,
/// and both are idempotent (the reservation's state decides), so a retry of one that did commit
/// changes nothing. Few wait at once: while the ledger is down no new reservation is made.
async fn retried<T, F, Fut>(
    call: F,
    reservation: ReservationId,
    operation: &'static str,
) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    call.retry(crate::ledger::correction_backoff(RESERVATION_TTL))
        .sleep(tokio::time::sleep)
        .when(LedgerError::transient)
        .notify(|error, after| {
            tracing::warn!(%error, reservation = reservation.0, operation, ?after, "ledger failed; retrying");
        })
        .await
}

/// A reservation on its way to disk. Dropped before it lands (its client went away while the
/// group commit ran), it still lands, in the background, and is refunded at once: no request owns
/// its charge, which would otherwise stay held until the sweep charged it (and hold its
/// `Idempotency-Key` for as long). A ledger that does this itself
/// ([`CreditLedger::refunds_dropped_reserves`]) is left to.
struct Landing {
    reserve: Option<BoxFuture<'static, Result<ReserveOutcome, LedgerError>>>,
    credits: Credits,
}

impl Landing {
    fn new(credits: &Credits, request: ReserveRequest) -> Self {
        let ledger = credits.ledger.clone();
        Self {
            reserve: Some(Box::pin(async move { ledger.reserve(request).await })),
            credits: credits.clone(),
        }
    }
}

impl Future for Landing {
    type Output = Result<ReserveOutcome, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(reserve) = self.reserve.as_mut() else {
            return Poll::Ready(Err(LedgerError::Unsupported(
                "a reservation polled after it landed",
            )));
        };
        let outcome = std::task::ready!(reserve.as_mut().poll(cx));
        self.reserve = None;
        Poll::Ready(outcome)
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        let Some(reserve) = self.reserve.take() else {
            return;
        };
        if self.credits.ledger.refunds_dropped_reserves() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a reservation whose client went away cannot be refunded: no runtime");
            return;
        };
        let credits = self.credits.clone();
        self.credits.background.spawn_on(
            async move {
                if let Ok(ReserveOutcome::Reserved { id, .. }) = reserve.await {
                    tracing::debug!(
                        reservation = id.0,
                        "client gone during its reserve; refunding"
                    );
                    // The refund runs in its own tracked task; this one may end.
                    credits.release(id);
                }
            },
            &runtime,
        );
    }
}

async fn timed<T>(metrics: &Metrics, operation: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    metrics.ledger_call(operation, started.elapsed());
    out
}

fn bucket<'a>(policy: &PolicyRule, identity: &'a Identity) -> &'a str {
    match policy.scope {
        BudgetScope::PerSubject => &identity.key,
        BudgetScope::Shared => "*",
    }
}

pub(crate) fn window(policy: &PolicyRule, now: Timestamp) -> Result<ledger::Window, ProxyError> {
    ledger::window(policy.period, &policy.time_zone_name, now)
        .map_err(|e| ProxyError::Internal(format!("policy {}: {e}", policy.id)))
}

/// What a prediction holds on `policy` until it is settled: the flat cost, and where tokens are
/// priced the price of `cost.reserveTokens` (the settle then charges what was used).
pub fn held(policy: &PolicyRule) -> u64 {
    if policy.per_thousand_tokens == 0 {
        return policy.per_prediction;
    }
    cost(policy, policy.reserve_tokens)
}

/// Credits one prediction costs on `policy` given the tokens Flowise reported.
pub fn cost(policy: &PolicyRule, tokens: u64) -> u64 {
    let token_cost = tokens
        .saturating_mul(policy.per_thousand_tokens)
        .div_ceil(1000);
    policy.per_prediction.saturating_add(token_cost)
}

/// Whether a prediction holding `held` fits no period of a budget of `limit` (no `Retry-After`):
/// dearer than the whole budget, or any prediction on a budget of 0 (the ledger admits none
/// once the bucket is at its limit, which a bucket of 0 always is).
fn fits_no_budget(held: u64, limit: u64) -> bool {
    held > limit || limit == 0
}

/// Whole seconds from `now` until `at` (`Retry-After`): rounded up, at least 1.
fn secs_until(now: Timestamp, at: Timestamp) -> u64 {
    let micros = at.as_microsecond().saturating_sub(now.as_microsecond());
    u64::try_from(micros).map_or(1, |m| m.div_ceil(1_000_000).max(1))
}

#[cfg(test)]
mod tests;
