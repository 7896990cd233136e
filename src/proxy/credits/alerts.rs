//! `alertAtPercent`: a log line, `flowgate_credit_alerts_total` and a Warning Event on the
//! CreditPolicy when a subject's charge crosses one of its thresholds. A reservation is checked
//! for its flat cost (a hold above it is mostly given back at the settle, and counting it would
//! cross the same threshold again with every prediction); a settle for the tokens on top of the
//! flat cost, so that a budget spent on tokens alerts too.

use super::{Charge, Credits, held};
use crate::index::PolicyRule;

/// Kubernetes Events on a CreditPolicy when a subject crosses one of its `alertAtPercent`.
#[derive(Clone)]
pub struct Alerts {
    recorder: kube::runtime::events::Recorder,
}

impl Alerts {
    pub fn new(client: kube::Client) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "flowgate-proxy".into(),
            instance: None,
        };
        Self {
            recorder: kube::runtime::events::Recorder::new(client, reporter),
        }
    }
}

/// The `alertAtPercent` thresholds a charge of `amount` crossed, leaving `remaining` of `limit`.
pub fn crossed(limit: u64, remaining: u64, amount: u64, percents: &[u8]) -> Vec<u8> {
    if limit == 0 {
        return Vec::new();
    }
    let after = limit.saturating_sub(remaining);
    let before = after.saturating_sub(amount);
    percents
        .iter()
        .copied()
        .filter(|p| {
            // In u128: a budget near u64::MAX (a stand-in for "unlimited") must not overflow.
            let threshold = (u128::from(limit) * u128::from(*p)).div_ceil(100);
            u128::from(before) < threshold && threshold <= u128::from(after)
        })
        .collect()
}

/// What a charge's settle needs to check its thresholds: kept only when a policy of the charge
/// has some.
pub(super) struct Alerting {
    /// The identity key charged.
    pub subject: String,
    /// The subject's credits per period on each policy of the charge, in its order.
    pub limits: Vec<u64>,
}

impl Credits {
    /// Checks a reservation's flat cost on `policy`, where `left` is what its hold left of
    /// `limit`.
    pub(super) fn alert_reserved(&self, policy: &PolicyRule, limit: u64, subject: &str, left: u64) {
        let remaining = left.saturating_add(held(policy).saturating_sub(policy.per_prediction));
        self.alert(policy, limit, subject, remaining, policy.per_prediction);
    }

    /// Checks a settle's charge for tokens, on top of the flat cost the reservation checked,
    /// `actual` being the charge on each of the charge's policies.
    pub(super) fn alert_settled(&self, charge: &Charge, actual: &[u64]) {
        let Some(alerting) = &charge.alerting else {
            return;
        };
        for (i, policy) in charge.policies.iter().enumerate() {
            let (Some(left), Some(actual), Some(limit)) =
                (charge.left.get(i), actual.get(i), alerting.limits.get(i))
            else {
                continue;
            };
            if policy.alert_at_percent.is_empty() || *actual <= policy.per_prediction {
                continue;
            }
            let remaining = left.saturating_add(held(policy)).saturating_sub(*actual);
            let tokens = actual - policy.per_prediction;
            self.alert(policy, *limit, &alerting.subject, remaining, tokens);
        }
    }

    /// Alerts on the `alertAtPercent` thresholds of `policy` a charge of `amount` crossed,
    /// leaving `remaining` of `limit` (the subject's credits per period on `policy`: its budget
    /// override's, if any).
    fn alert(&self, policy: &PolicyRule, limit: u64, subject: &str, remaining: u64, amount: u64) {
        for percent in crossed(limit, remaining, amount, &policy.alert_at_percent) {
            self.metrics.credit_alert(&policy.id, percent);
            tracing::info!(policy = %policy.id, subject, percent, remaining, "credit threshold crossed");
            let Some(alerts) = self.alerts.clone() else {
                continue;
            };
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("flowgate.io/v1alpha1".into()),
                kind: Some("CreditPolicy".into()),
                name: Some(policy.name.clone()),
                namespace: Some(policy.namespace.clone()),
                ..Default::default()
            };
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "CreditThresholdCrossed".into(),
                note: Some(format!(
                    "{subject} has used {percent}% of {limit} credits ({remaining} left this period)"
                )),
                action: "Charge".into(),
                secondary: None,
            };
            self.background.spawn(async move {
                if let Err(error) = alerts.recorder.publish(&event, &reference).await {
                    tracing::debug!(%error, "could not publish the credit alert Event");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_is_crossed_once_by_the_charge_that_reaches_it() {
        // 1000 credits, alerts at 80% and 100%, cost 1.
        assert_eq!(
            crossed(1000, 201, 1, &[80, 100]),
            Vec::<u8>::new(),
            "799 used"
        );
        assert_eq!(crossed(1000, 200, 1, &[80, 100]), vec![80], "800 used");
        assert_eq!(
            crossed(1000, 199, 1, &[80, 100]),
            Vec::<u8>::new(),
            "801 used"
        );
        assert_eq!(crossed(1000, 0, 1, &[80, 100]), vec![100]);
        assert_eq!(
            crossed(10, 0, 10, &[50, 100]),
            vec![50, 100],
            "one big charge crosses both"
        );
        assert_eq!(crossed(0, 0, 1, &[80]), Vec::<u8>::new());
        let huge = u64::MAX / 2;
        assert_eq!(
            crossed(huge, huge - huge / 10 * 8, huge / 10 * 8, &[80]),
            Vec::<u8>::new(),
            "just below 80 % of a huge budget, without overflowing"
        );
        assert_eq!(crossed(huge, 0, huge, &[80, 100]), vec![80, 100]);
    }
}
