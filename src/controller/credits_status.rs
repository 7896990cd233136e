//! CreditPolicy usage in status: `periodStart`, `nextReset`, `creditsUsed`, `subjectsExhausted`,
//! read from the ledger by the leader every [`REFRESH`] — aggregates, not per request.
//!
//! Written with its own field manager, so it never strips the conditions the policy reconciler
//! owns (and the reverse).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::crd::{CreditPolicy, CreditPolicyStatus, Lenient};
use crate::index::PolicyRule;
use crate::ledger::{self, CreditLedger};

/// How often usage is refreshed.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Field manager of the usage fields.
pub const FIELD_MANAGER: &str = "flowgate-credits";

/// The usage fields a policy's status should show.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub period_start: Timestamp,
    pub next_reset: Option<Timestamp>,
    pub credits_used: u64,
    pub subjects_exhausted: u32,
}

impl Usage {
    /// Whether `status` already shows this usage (then nothing is written).
    pub fn shown_in(&self, status: Option<&CreditPolicyStatus>) -> bool {
        status.is_some_and(|s| {
            s.period_start.as_ref().map(|t| t.0) == Some(self.period_start)
                && s.next_reset.as_ref().map(|t| t.0) == self.next_reset
                && s.credits_used == self.credits_used
                && s.subjects_exhausted == self.subjects_exhausted
        })
    }
}

/// Refreshes every policy's usage until `session` ends.
pub async fn run(
    api: Api<Lenient<CreditPolicy>>,
    ledger: Arc<dyn CreditLedger>,
    session: CancellationToken,
) {
    loop {
        if let Err(error) = refresh_all(&api, ledger.as_ref(), Timestamp::now()).await {
            tracing::warn!(%error, "refreshing CreditPolicy usage failed; retrying");
        }
        tokio::select! {
            () = session.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// One pass over every policy; returns how many statuses were written.
pub async fn refresh_all(
    api: &Api<Lenient<CreditPolicy>>,
    ledger: &dyn CreditLedger,
    now: Timestamp,
) -> Result<usize, kube::Error> {
    let mut written = 0;
    // A policy that cannot be read is reported by its reconcile; it has no usage to show.
    let listed = api.list(&ListParams::default()).await?.items;
    for policy in listed.iter().filter_map(Lenient::read) {
        let Ok(rule) = PolicyRule::try_from(policy.as_ref()) else {
            continue;
        };
        let Ok(window) = ledger::window(rule.period, &rule.time_zone_name, now) else {
            continue;
        };
        let limits = ledger::Limits {
            credits: rule.credits,
            overrides: rule.override_credits(),
        };
        let usage = match ledger.policy_usage(&rule.id, &window, limits).await {
            Ok(usage) => usage,
            Err(error) => {
                tracing::warn!(%error, policy = %rule.id, "reading policy usage failed");
                continue;
            }
        };
        let usage = Usage {
            period_start: window.start,
            next_reset: window.end,
            credits_used: u64::try_from(usage.credits_used).unwrap_or(0),
            subjects_exhausted: u32::try_from(usage.buckets_exhausted).unwrap_or(u32::MAX),
        };
        if usage.shown_in(policy.status.as_ref()) {
            continue;
        }
        let patch = json!({
            "apiVersion": "flowgate.io/v1alpha1",
            "kind": "CreditPolicy",
            "status": {
                "periodStart": Time(usage.period_start),
                "nextReset": usage.next_reset.map(Time),
                "creditsUsed": usage.credits_used,
                "subjectsExhausted": usage.subjects_exhausted,
            }
        });
        let ns_api: Api<CreditPolicy> = Api::namespaced(api.clone().into_client(), &rule.namespace);
        let patched = ns_api
            .patch_status(
                &rule.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        // One policy's failure (deleted since the listing, refused) holds up no other's.
        match patched {
            Ok(_) => written += 1,
            Err(error) => {
                tracing::warn!(%error, policy = %rule.id, "writing policy usage failed");
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn unchanged_usage_writes_nothing_and_any_change_does() {
        let usage = Usage {
            period_start: at("2026-11-01T00:00:00Z"),
            next_reset: Some(at("2026-12-01T00:00:00Z")),
            credits_used: 15,
            subjects_exhausted: 1,
        };
        let mut status = CreditPolicyStatus {
            period_start: Some(Time(usage.period_start)),
            next_reset: usage.next_reset.map(Time),
            credits_used: 15,
            subjects_exhausted: 1,
            ..Default::default()
        };
        assert!(usage.shown_in(Some(&status)));
        status.credits_used = 16;
        assert!(!usage.shown_in(Some(&status)));
        assert!(!usage.shown_in(None));
    }
}
