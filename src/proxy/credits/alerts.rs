//! `alertAtPercent`: a log line, `flowgate_credit_alerts_total` and a Warning Event on the
//! CreditPolicy when a subject's charge crosses one of its thresholds. A reservation is checked
//! for its flat cost (a hold above it is mostly given back at the settle, and counting it would
//! cross the same threshold again with every prediction); a settle, once it landed, for what it
//! changed on top of the hold, against where it left the bucket (`Resolution::used`), so that a
//! budget spent on tokens alerts too — once per threshold however many predictions settle at
//! once, and however far past the limit a settle goes.

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

/// The `alertAtPercent` thresholds of `limit` a charge crossed, taking the credits used from
/// `before` to `after` (either may be past the limit, or below 0).
pub fn crossed(limit: u64, before: i128, after: i128, percents: &[u8]) -> Vec<u8> {
    if limit == 0 {
        return Vec::new();
    }
    percents
        .iter()
        .copied()
        .filter(|p| {
            // In u128: a budget near u64::MAX (a stand-in for "unlimited") must not overflow.
            let threshold = (u128::from(limit) * u128::from(*p)).div_ceil(100);
            let threshold = i128::try_from(threshold).unwrap_or(i128::MAX);
            before < threshold && threshold <= after
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
        let after = i128::from(limit) - i128::from(remaining);
        let before = after - i128::from(policy.per_prediction);
        self.alert(policy, limit, subject, before, after);
    }

    /// Checks a settle that landed: `actual` the charge on each of the charge's policies, `used`
    /// each line's bucket right after it ([`crate::ledger::Resolution::used`]). What the charge
    /// came to on top of the flat cost (which the reservation checked) took the bucket to
    /// there — also when the settle left the bucket as it was (the hold exactly right): the
    /// hold's share above the flat cost was counted at the reserve, but checked only now.
    pub(super) fn alert_settled(
        &self,
        charge: &Charge,
        alerting: &Alerting,
        actual: &[u64],
        used: &[Option<i64>],
    ) {
        for (i, policy) in charge.policies.iter().enumerate() {
            let (Some(actual), Some(limit), Some(Some(after))) =
                (actual.get(i), alerting.limits.get(i), used.get(i))
            else {
                continue;
            };
            let added = i128::from(*actual) - i128::from(policy.per_prediction);
            if policy.alert_at_percent.is_empty() || added <= 0 {
                continue;
            }
            let after = i128::from(*after);
            self.alert(policy, *limit, &alerting.subject, after - added, after);
        }
    }

    /// Alerts on the `alertAtPercent` thresholds of `policy` a charge crossed, taking the
    /// credits used from `before` to `after` of `limit` (the subject's credits per period on
    /// `policy`: its budget override's, if any).
    fn alert(&self, policy: &PolicyRule, limit: u64, subject: &str, before: i128, after: i128) {
        let remaining = u64::try_from((i128::from(limit) - after).max(0)).unwrap_or(u64::MAX);
        for percent in crossed(limit, before, after, &policy.alert_at_percent) {
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
                note: Some(match policy.scope {
                    crate::crd::BudgetScope::Shared => format!(
                        "the shared budget has reached {percent}% of {limit} credits \
                         ({remaining} left this period; crossed by a charge of {subject})"
                    ),
                    _ => format!(
                        "{subject} has used {percent}% of {limit} credits ({remaining} left \
                         this period)"
                    ),
                }),
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

    /// `crossed` by what is left: `remaining` of `limit` after a charge of `amount`.
    fn leaving(limit: u64, remaining: u64, amount: u64, percents: &[u8]) -> Vec<u8> {
        let after = i128::from(limit) - i128::from(remaining);
        crossed(limit, after - i128::from(amount), after, percents)
    }

    #[test]
    fn a_threshold_is_crossed_once_by_the_charge_that_reaches_it() {
        // 1000 credits, alerts at 80% and 100%, cost 1.
        assert_eq!(
            leaving(1000, 201, 1, &[80, 100]),
            Vec::<u8>::new(),
            "799 used"
        );
        assert_eq!(leaving(1000, 200, 1, &[80, 100]), vec![80], "800 used");
        assert_eq!(
            leaving(1000, 199, 1, &[80, 100]),
            Vec::<u8>::new(),
            "801 used"
        );
        assert_eq!(leaving(1000, 0, 1, &[80, 100]), vec![100]);
        assert_eq!(
            leaving(10, 0, 10, &[50, 100]),
            vec![50, 100],
            "one big charge crosses both"
        );
        assert_eq!(leaving(0, 0, 1, &[80]), Vec::<u8>::new());
        let huge = u64::MAX / 2;
        assert_eq!(
            leaving(huge, huge - huge / 10 * 8, huge / 10 * 8, &[80]),
            Vec::<u8>::new(),
            "just below 80 % of a huge budget, without overflowing"
        );
        assert_eq!(leaving(huge, 0, huge, &[80, 100]), vec![80, 100]);
        assert_eq!(
            crossed(u64::MAX, 0, i128::from(u64::MAX), &[100]),
            vec![100]
        );
    }

    /// A settle that takes the budget past its limit (90 → 120 of 100) crosses 100 %, not 80 %
    /// again: where it started is not moved down by the overdraft.
    #[test]
    fn a_charge_past_the_limit_does_not_cross_lower_thresholds_again() {
        assert_eq!(crossed(100, 60, 90, &[80, 100]), vec![80]);
        assert_eq!(crossed(100, 90, 120, &[80, 100]), vec![100]);
        assert_eq!(crossed(100, 120, 150, &[80, 100]), Vec::<u8>::new());
    }
}
