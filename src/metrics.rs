//! Prometheus metrics, registered once at start-up and shared. Metric families are atomic
//! internally; recording never takes a lock on the request path beyond the family's label map.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod controller;
pub use controller::{ControllerMetrics, SyncCounts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrdLabels {
    crd: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdjustmentLabels {
    policy: String,
    /// `given` or `taken`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    policy: String,
    percent: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// `flowgate_token_cache_lookups_total{result="hit"|"miss"}`: bearer tokens answered from the
/// verified-token cache or verified, read from the verifier at each scrape (the request path
/// only bumps the cache's own atomic). Absent until a source is set, and with the cache off.
#[derive(Clone, Default)]
pub struct TokenCacheLookups(Arc<OnceLock<LookupSource>>);

type LookupSource = Box<dyn Fn() -> Option<crate::identity::Lookups> + Send + Sync>;

impl TokenCacheLookups {
    /// Where the counts come from (the verifier); only the first source set is kept.
    pub fn read_from(
        &self,
        source: impl Fn() -> Option<crate::identity::Lookups> + Send + Sync + 'static,
    ) {
        // A second source would be a second verifier in one process: the first one counts.
        let _ = self.0.set(Box::new(source));
    }
}

impl std::fmt::Debug for TokenCacheLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCacheLookups")
    }
}

impl Collector for TokenCacheLookups {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(lookups) = self.0.get().and_then(|read| read()) else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "token_cache_lookups",
            "Bearer tokens looked up in the verified-token cache, by result: hit (not verified again) or miss",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("hit", lookups.hits), ("miss", lookups.misses)] {
            let labels = [("result", result)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Every metric flowgate exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    upstream_errors: Family<ReasonLabels, Counter>,
    credits_charged: Family<PolicyLabels, Counter>,
    credits_adjusted: Family<AdjustmentLabels, Counter>,
    ledger_latency: Family<OperationLabels, Histogram>,
    credit_alerts: Family<AlertLabels, Counter>,
    ledger_pruned: Family<TableLabels, Counter>,
    ledger_prune_failures: Counter,
    corrections_lost: Family<OperationLabels, Counter>,
    token_reviews: Family<OutcomeLabels, Counter>,
    stream_hangups: Family<OutcomeLabels, Counter>,
    /// Unix time of the snapshot the proxy serves.
    pub snapshot_compiled: Gauge,
    index_invalid: Family<KindLabels, Gauge>,
    index_watch_errors: Family<KindLabels, Counter>,
    crd_fields_missing: Family<CrdLabels, Gauge>,
    crd_readable: Family<CrdLabels, Gauge>,
    /// Bytes of request and answer bodies held in memory now (the proxy's `Buffers` count).
    pub body_buffer: Gauge,
    /// What `body_buffer` may reach (FLOWGATE_BODY_MEMORY).
    pub body_buffer_limit: Gauge,
    /// The verified-token cache's hits and misses, read at each scrape.
    pub token_cache: TokenCacheLookups,
    /// The controller's reconciles, status writes, Flowise sync passes and leadership.
    pub controller: ControllerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The policies whose counters exist, with their alert thresholds: started at 0 as policies
/// appear ([`Metrics::policy_seen`]) and removed as they go, so that namespaces and policies
/// coming and going (one per pull request, say) do not grow `/metrics` for ever.
#[derive(Debug, Default)]
pub struct PolicySeries {
    known: std::collections::HashMap<Arc<str>, Vec<u8>>,
    /// Policies gone lately, with their thresholds: a prediction still under way when its
    /// policy went may count a charge or an alert after, which brings a series back. Removed
    /// again at each change for [`PolicySeries::GONE_FOR`] (past the longest a prediction runs).
    gone: std::collections::HashMap<Arc<str>, (Vec<u8>, std::time::Instant)>,
}

impl PolicySeries {
    const GONE_FOR: Duration = Duration::from_secs(15 * 60);

    /// Brings the series in line with `policies` (each policy's id and alert thresholds).
    pub fn follow<'a>(
        &mut self,
        metrics: &Metrics,
        policies: impl IntoIterator<Item = (&'a Arc<str>, &'a [u8])>,
    ) {
        let now: std::collections::HashMap<Arc<str>, Vec<u8>> = policies
            .into_iter()
            .map(|(id, thresholds)| (id.clone(), thresholds.to_vec()))
            .collect();
        for (id, before) in &self.known {
            let kept = now.get(id);
            let gone: Vec<u8> = before
                .iter()
                .copied()
                .filter(|percent| kept.is_none_or(|kept| !kept.contains(percent)))
                .collect();
            if kept.is_none() || !gone.is_empty() {
                metrics.policy_gone(id, &gone, kept.is_none());
            }
            if kept.is_none() {
                self.gone
                    .insert(id.clone(), (before.clone(), std::time::Instant::now()));
            }
        }
        self.gone.retain(|id, (thresholds, since)| {
            let back = now.contains_key(id);
            if !back && !self.known.contains_key(id) {
                metrics.policy_gone(id, thresholds, true);
            }
            !back && since.elapsed() < Self::GONE_FOR
        });
        for (id, thresholds) in &now {
            if self.known.get(id) != Some(thresholds) {
                metrics.policy_seen(id, thresholds);
            }
        }
        self.known = now;
    }
}

impl Metrics {
    /// Builds the registry with every metric family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flowgate");
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])
            .set(1);
        registry.register("build_info", "flowgate version", build_info);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Proxy requests by route and status",
            requests.clone(),
        );
        // 0.25 ms to 17.5 min: a JSON prediction's time is its whole run in Flowise, up to
        // the longest upstream timeout (14 min).
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00025, 2.0, 23))
        });
        registry.register(
            "proxy_request_duration_seconds",
            "Time to the response head, by route",
            latency.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "proxy_decisions",
            "Access decisions by outcome and reason",
            decisions.clone(),
        );
        // The decisions the chart's alerts watch, from 0: increase() sees the first of each.
        for (decision, reason) in [
            ("allow", "granted"),
            ("deny", "ledger_unavailable"),
            ("deny", "policy_invalid"),
            ("deny", "keys_unavailable"),
            ("deny", "token_review_unavailable"),
            ("deny", "overloaded"),
        ] {
            let _ = decisions.get_or_create(&DecisionLabels { decision, reason });
        }
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed calls to Flowise by reason",
            upstream_errors.clone(),
        );
        let credits_charged = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "credits_charged",
            "Credits charged by settled predictions, by policy",
            credits_charged.clone(),
        );
        let credits_adjusted = Family::<AdjustmentLabels, Counter>::default();
        registry.register(
            "credits_adjusted",
            "Credits admins gave (direction=given) or took (taken) by adjustment, by policy",
            credits_adjusted.clone(),
        );
        let ledger_latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to 16 s: a reserve waits up to 15 s (its deadline, a keyed one's refund).
            Histogram::new(exponential_buckets(0.00005, 1.6, 28))
        });
        registry.register(
            "ledger_operation_duration_seconds",
            "Credit ledger calls from the proxy, until durable: reserve, settle, refund",
            ledger_latency.clone(),
        );
        let credit_alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "credit_alerts",
            "Subjects crossing a CreditPolicy alertAtPercent threshold",
            credit_alerts.clone(),
        );
        let ledger_pruned = Family::<TableLabels, Counter>::default();
        registry.register(
            "ledger_pruned_rows",
            "Ledger rows deleted by FLOWGATE_LEDGER_RETENTION: reservations, usage, buckets",
            ledger_pruned.clone(),
        );
        let corrections_lost = Family::<OperationLabels, Counter>::default();
        registry.register(
            "ledger_corrections_lost",
            "Settles and refunds the ledger never took (failed past their retries, or for good): \
             each of those reservations is charged what it held, by the sweep",
            corrections_lost.clone(),
        );
        for operation in ["settle", "refund"] {
            let _ = corrections_lost.get_or_create(&OperationLabels { operation });
        }
        let ledger_prune_failures = Counter::default();
        registry.register(
            "ledger_prune_failures",
            "Retention runs that stopped on a ledger error (the next one starts over)",
            ledger_prune_failures.clone(),
        );
        let token_reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_reviews",
            "TokenReviews of ServiceAccount tokens sent to the API server, by outcome: accepted, refused, unavailable",
            token_reviews.clone(),
        );
        let token_cache = TokenCacheLookups::default();
        registry.register_collector(Box::new(token_cache.clone()));
        let stream_hangups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "stream_hangups",
            "Streamed answers whose client went away before the end, by what flowgate did: \
             aborted (Flowise asked to abort the run), read_to_end (read on for the token report), \
             stopped (read on until a limit, then let go)",
            stream_hangups.clone(),
        );
        let snapshot_compiled = Gauge::default();
        registry.register(
            "index_snapshot_timestamp_seconds",
            "Unix time the served index snapshot was compiled",
            snapshot_compiled.clone(),
        );
        let index_invalid = Family::<KindLabels, Gauge>::default();
        registry.register(
            "index_invalid_resources",
            "Objects the served index skips because their spec is invalid, by kind: a skipped \
             CreditPolicy charges nothing, a skipped ChatflowAccess grants nothing (their status \
             says why: Ready=False, InvalidSpec)",
            index_invalid.clone(),
        );
        let index_watch_errors = Family::<KindLabels, Counter>::default();
        // Every kind from the start, at 0: increase() sees the first error.
        for kind in ["Chatflow", "ChatflowAccess", "CreditPolicy"] {
            index_watch_errors.get_or_create(&KindLabels { kind }).get();
        }
        registry.register(
            "index_watch_errors",
            "Failed lists and watches of the index's objects, by kind: while they fail, the proxy \
             enforces the last state it saw of that kind (a revocation is not seen)",
            index_watch_errors.clone(),
        );
        let crd_fields_missing = Family::<CrdLabels, Gauge>::default();
        registry.register(
            "crd_fields_missing",
            "Fields of this flowgate's CRD that the cluster's installed CRD lacks, by CRD: the API \
             server drops them from every object (apply this version's crds/); no series while \
             the CRD cannot be read",
            crd_fields_missing.clone(),
        );
        let crd_readable = Family::<CrdLabels, Gauge>::default();
        registry.register(
            "crd_readable",
            "Whether the last read of the installed CRD, to compare it with this flowgate's, \
             succeeded (1) or failed (0: flowgate_crd_fields_missing has no series then)",
            crd_readable.clone(),
        );
        let body_buffer = Gauge::default();
        registry.register(
            "body_buffer_bytes",
            "Bytes of prediction bodies and JSON answers held in memory now; a request body counts \
             twice its size plus its parsed JSON values until it is encoded for Flowise",
            body_buffer.clone(),
        );
        let body_buffer_limit = Gauge::default();
        registry.register(
            "body_buffer_limit_bytes",
            "What flowgate_body_buffer_bytes may reach before new prediction bodies are refused \
             (FLOWGATE_BODY_MEMORY)",
            body_buffer_limit.clone(),
        );
        let controller = ControllerMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            latency,
            decisions,
            upstream_errors,
            credits_charged,
            credits_adjusted,
            ledger_latency,
            credit_alerts,
            ledger_pruned,
            ledger_prune_failures,
            corrections_lost,
            token_reviews,
            stream_hangups,
            snapshot_compiled,
            index_invalid,
            index_watch_errors,
            crd_fields_missing,
            crd_readable,
            body_buffer,
            body_buffer_limit,
            token_cache,
            controller,
        }
    }

    /// How many objects of `kind` the served snapshot skips as invalid.
    pub fn set_invalid(&self, kind: &'static str, count: usize) {
        self.index_invalid
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// How many fields of this binary's `crd` the installed one lacks, or `None` when it could
    /// not be read ([`crate::crd::installed`]).
    pub fn crd_fields_missing(&self, crd: &str, count: Option<usize>) {
        let labels = CrdLabels {
            crd: crd.to_string(),
        };
        self.crd_readable
            .get_or_create(&labels)
            .set(i64::from(count.is_some()));
        match count {
            Some(count) => {
                self.crd_fields_missing
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            None => {
                self.crd_fields_missing.remove(&labels);
            }
        }
    }

    /// Counts one failed list or watch of `kind` by the index.
    pub fn index_watch_error(&self, kind: &str) {
        let kind = match kind {
            "Chatflow" => "Chatflow",
            "ChatflowAccess" => "ChatflowAccess",
            _ => "CreditPolicy",
        };
        self.index_watch_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one access decision.
    pub fn decision(&self, decision: &'static str, reason: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { decision, reason })
            .inc();
    }

    /// Counts one TokenReview answered `outcome` (`accepted`, `refused`, `unavailable`).
    pub fn token_review(&self, outcome: &'static str) {
        self.token_reviews
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one stream whose client went away before its end, by `outcome`.
    pub fn stream_hangup(&self, outcome: &'static str) {
        self.stream_hangups
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one failed call to Flowise.
    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts credits settled on a policy (`namespace/name`). Saturates: a charge of absurd
    /// token counts (saturated at `u64::MAX`, as the ledger saturates its buckets) would wrap
    /// the counter, which Prometheus reads as a reset.
    pub fn credits_charged(&self, policy: &str, credits: u64) {
        let counter = self.credits_charged.get_or_create(&PolicyLabels {
            policy: policy.to_string(),
        });
        counter.inc_by(credits.min(u64::MAX - counter.get()));
    }

    /// Counts an admin's adjustment of `credits` (positive: given) on a policy.
    pub fn credits_adjusted(&self, policy: &str, credits: i64) {
        self.credits_adjusted
            .get_or_create(&AdjustmentLabels {
                policy: policy.to_string(),
                direction: if credits > 0 { "given" } else { "taken" },
            })
            .inc_by(credits.unsigned_abs());
    }

    /// Times one ledger call (`reserve`, `settle` or `refund`), answered or failed.
    pub fn ledger_call(&self, operation: &'static str, elapsed: Duration) {
        self.ledger_latency
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts ledger rows deleted by retention, by table (`reservations`, `usage`, `buckets`).
    pub fn ledger_pruned(&self, table: &'static str, rows: u64) {
        self.ledger_pruned
            .get_or_create(&TableLabels { table })
            .inc_by(rows);
    }

    /// Counts a settle or refund (`operation`) given up: its reservation is swept at its hold.
    pub fn correction_lost(&self, operation: &'static str) {
        self.corrections_lost
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Counts a retention run that stopped on a ledger error.
    pub fn ledger_prune_failed(&self) {
        self.ledger_prune_failures.inc();
    }

    /// Starts a policy's counters at 0 (charged, adjusted both ways, each alert threshold):
    /// `increase()` and `rate()` count nothing of a series' first value, so a counter that
    /// appeared at its first adjustment or alert would hide it (they are rare, and per pod).
    pub fn policy_seen(&self, policy: &str, alert_at_percent: &[u8]) {
        let policy = policy.to_string();
        let _ = self.credits_charged.get_or_create(&PolicyLabels {
            policy: policy.clone(),
        });
        for direction in ["given", "taken"] {
            let _ = self.credits_adjusted.get_or_create(&AdjustmentLabels {
                policy: policy.clone(),
                direction,
            });
        }
        for &percent in alert_at_percent {
            let _ = self.credit_alerts.get_or_create(&AlertLabels {
                policy: policy.clone(),
                percent,
            });
        }
    }

    /// Removes a policy's alert counters for `thresholds` and, when `whole`, its charged and
    /// adjusted counters: the policy is gone (deleted, or invalid), or no longer lists them.
    fn policy_gone(&self, policy: &str, thresholds: &[u8], whole: bool) {
        let policy = policy.to_string();
        for &percent in thresholds {
            self.credit_alerts.remove(&AlertLabels {
                policy: policy.clone(),
                percent,
            });
        }
        if whole {
            for direction in ["given", "taken"] {
                self.credits_adjusted.remove(&AdjustmentLabels {
                    policy: policy.clone(),
                    direction,
                });
            }
            self.credits_charged.remove(&PolicyLabels { policy });
        }
    }

    /// Counts a subject crossing a policy's alert threshold.
    pub fn credit_alert(&self, policy: &str, percent: u8) {
        self.credit_alerts
            .get_or_create(&AlertLabels {
                policy: policy.to_string(),
                percent,
            })
            .inc();
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[cfg(test)]
mod tests;
