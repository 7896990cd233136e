//! CreditPolicy: reports whether the policy is valid (`Ready`, e.g. InvalidSpec for an unknown
//! time zone) and whether the Chatflows it names exist (`ResolvedRefs`).
//!
//! The controller owns only `observedGeneration` and `conditions` of the status. `creditsUsed`,
//! `periodStart`, `nextReset` and `subjectsExhausted` belong to the credits ledger, which writes
//! them with its own field manager; server-side apply keeps each manager's fields, so the patch
//! here is built by hand with exactly the two fields (the typed status would send
//! `creditsUsed: 0`).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::access::refs_condition;
use super::{Context, ControllerError, apply_status, object_key, ready_transition, resolve_refs};
use crate::crd::CreditPolicy;
use crate::crd::conditions::{self, reason};
use crate::index::PolicyRule;

pub(super) const KIND: &str = "CreditPolicy";

/// Field manager of the controller's part of a CreditPolicy status. Distinct from the
/// `flowgate` manager so that, whichever manager the ledger uses for the credit fields, the two
/// applies never remove each other's fields.
pub(super) const POLICY_STATUS_MANAGER: &str = "flowgate-controller";

/// The part of a CreditPolicy status the controller writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct PolicyConditions {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

impl PolicyConditions {
    fn of(policy: &CreditPolicy) -> Self {
        let status = policy.status.clone().unwrap_or_default();
        Self {
            observed_generation: status.observed_generation,
            conditions: status.conditions,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "observedGeneration": self.observed_generation,
            "conditions": self.conditions,
        })
    }
}

/// The controller's part of the status of `policy` given the Chatflows of its namespace.
pub(super) fn next_status(
    policy: &CreditPolicy,
    existing: &BTreeSet<String>,
    now: jiff::Timestamp,
) -> PolicyConditions {
    let generation = policy.metadata.generation;
    let mut new = PolicyConditions::of(policy);
    new.observed_generation = generation;
    let (ok, why, message) = match PolicyRule::try_from(policy) {
        Ok(_) => (true, reason::ACTIVE, "the budget is enforced".to_string()),
        Err(invalid) => (false, reason::INVALID_SPEC, invalid.to_string()),
    };
    conditions::upsert(
        &mut new.conditions,
        conditions::new(conditions::READY, ok, why, message, generation, now),
    );
    let (_, missing) = resolve_refs(&policy.spec.chatflows, existing);
    conditions::upsert(
        &mut new.conditions,
        refs_condition(&missing, generation, now),
    );
    new
}

pub(super) async fn reconcile(
    policy: Arc<CreditPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = ctx.fenced(update(&policy, &ctx)).await;
    ctx.reconciled(policy.as_ref(), result.is_ok(), started);
    result
}

/// Writes the controller's part of the status when it changed.
async fn update(policy: &CreditPolicy, ctx: &Context) -> Result<Action, ControllerError> {
    // As last written, where the API server dropped fields an older CRD lacks.
    let written = ctx.written.as_written(&object_key(policy), policy);
    let policy = written.as_ref();
    let ns = policy.namespace().ok_or(ControllerError::Unnamed)?;
    let old = PolicyConditions::of(policy);
    let new = next_status(policy, &ctx.chatflow_names(&ns), super::now());
    if new != old {
        if let Some((type_, why, note)) = ready_transition(&old.conditions, &new.conditions) {
            ctx.event(policy, type_, why, "Reconcile", note).await;
        }
        apply_status(ctx, policy, new.to_json(), POLICY_STATUS_MANAGER).await?;
    }
    Ok(Action::requeue(ctx.settings.sync_interval))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(time_zone: &str, chatflows: &[&str]) -> CreditPolicy {
        serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": "monthly", "namespace": "team-a", "generation": 4},
            "spec": {"chatflows": chatflows,
                     "budget": {"credits": 100, "period": "Monthly", "timeZone": time_zone}},
            "status": {"creditsUsed": 15, "subjectsExhausted": 1},
        }))
        .expect("valid CreditPolicy")
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).expect("valid time")
    }

    fn find<'a>(status: &'a PolicyConditions, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn an_unknown_time_zone_is_invalid_spec() {
        let status = next_status(&policy("Mars/Olympus", &["*"]), &BTreeSet::new(), now());
        let ready = find(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(ready.message.contains("Mars/Olympus"), "{}", ready.message);
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn a_valid_policy_is_ready_and_names_missing_chatflows() {
        let existing: BTreeSet<String> = ["faq-bot".to_string()].into();
        let status = next_status(
            &policy("Europe/Berlin", &["faq-bot", "nope"]),
            &existing,
            now(),
        );
        assert_eq!(find(&status, "Ready").status, "True");
        let refs = find(&status, "ResolvedRefs");
        assert_eq!(refs.status, "False");
        assert!(refs.message.ends_with(": nope"), "{}", refs.message);
    }

    #[test]
    fn the_patch_carries_only_the_controllers_fields() {
        let status = next_status(&policy("UTC", &["*"]), &BTreeSet::new(), now());
        let patch = status.to_json();
        let keys: Vec<&String> = patch.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["conditions", "observedGeneration"]);
    }
}
