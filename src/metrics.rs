//! Prometheus metrics, registered once at start-up and shared. Metric families are atomic
//! internally; recording never takes a lock on the request path beyond the family's label map.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// Every metric flowgate exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    upstream_errors: Family<ReasonLabels, Counter>,
    credits_charged: Family<PolicyLabels, Counter>,
    /// Unix time of the snapshot the proxy serves.
    pub snapshot_compiled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
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
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 20))
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
        let snapshot_compiled = Gauge::default();
        registry.register(
            "index_snapshot_timestamp_seconds",
            "Unix time the served index snapshot was compiled",
            snapshot_compiled.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            decisions,
            upstream_errors,
            credits_charged,
            snapshot_compiled,
        }
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

    /// Counts one failed call to Flowise.
    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts credits settled on a policy (`namespace/name`).
    pub fn credits_charged(&self, policy: &str, credits: u64) {
        self.credits_charged
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
            })
            .inc_by(credits);
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_are_exported() {
        let metrics = Metrics::new();
        metrics.observe_request("prediction", 200, Duration::from_millis(3));
        metrics.decision("deny", "forbidden");
        metrics.upstream_error("timeout");
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains("flowgate_proxy_requests_total{route=\"prediction\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "flowgate_proxy_decisions_total{decision=\"deny\",reason=\"forbidden\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("flowgate_upstream_errors_total{reason=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flowgate_proxy_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
