//! ChatflowAccess: reports whether the rule is in force and whether the Chatflows it names exist.
//!
//! Pure [`next_status`] from the object, the Chatflow names in its namespace and the time; the
//! reconcile writes it when it differs and requeues at `expiresAt`, so an access expires on time
//! without a watch event. Chatflows appearing or going away re-run it (see `Controller::lead`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{Context, ControllerError, apply_status, object_key, ready_transition, resolve_refs};
use crate::crd::conditions::{self, reason};
use crate::crd::{ChatflowAccess, ChatflowAccessStatus, FIELD_MANAGER};
use crate::index::AccessRule;

pub(super) const KIND: &str = "ChatflowAccess";

/// The status of `access` at `now` given the Chatflows of its namespace, and how long until it
/// expires (when it is in force and has an `expiresAt`).
pub(super) fn next_status(
    access: &ChatflowAccess,
    existing: &BTreeSet<String>,
    now: jiff::Timestamp,
) -> (ChatflowAccessStatus, Option<Duration>) {
    let generation = access.metadata.generation;
    let mut new = access.status.clone().unwrap_or_default();
    new.observed_generation = generation;
    let (resolved, missing) = resolve_refs(&access.spec.chatflows, existing);
    new.resolved_chatflows = resolved;

    let rule = AccessRule::try_from(access);
    new.subjects = rule
        .as_ref()
        .map(|r| u32::try_from(r.subjects.len()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let expires_at = access.spec.expires_at.as_ref().map(|t| t.0);
    let mut expires_in = None;
    let (ok, why, message) = match &rule {
        Err(invalid) => (false, reason::INVALID_SPEC, invalid.to_string()),
        Ok(_) if access.spec.suspended => (
            false,
            reason::SUSPENDED,
            "spec.suspended is true: the access grants nothing".to_string(),
        ),
        Ok(_) => match expires_at {
            Some(at) if at <= now => (false, reason::EXPIRED, format!("expired at {at}")),
            Some(at) => {
                expires_in = now.duration_until(at).try_into().ok();
                (true, reason::ACTIVE, format!("in force until {at}"))
            }
            None => (true, reason::ACTIVE, "in force".to_string()),
        },
    };
    conditions::upsert(
        &mut new.conditions,
        conditions::new(conditions::READY, ok, why, message, generation, now),
    );
    conditions::upsert(
        &mut new.conditions,
        refs_condition(&missing, generation, now),
    );
    (new, expires_in)
}

/// `ResolvedRefs`: True, or False naming the Chatflows that do not exist. Messages are never
/// empty: Kubernetes 1.20's server-side apply turns `""` into null, which the schema refuses.
pub(super) fn refs_condition(
    missing: &[String],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    if missing.is_empty() {
        conditions::new(
            conditions::RESOLVED_REFS,
            true,
            reason::RESOLVED,
            "every named Chatflow exists",
            generation,
            now,
        )
    } else {
        conditions::new(
            conditions::RESOLVED_REFS,
            false,
            reason::CHATFLOWS_NOT_FOUND,
            format!(
                "Chatflows not found in this namespace: {}",
                missing.join(", ")
            ),
            generation,
            now,
        )
    }
}

pub(super) async fn reconcile(
    access: Arc<ChatflowAccess>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = ctx.fenced(update(&access, &ctx)).await;
    ctx.reconciled(access.as_ref(), result.is_ok(), started);
    result
}

/// Writes the status when it changed; requeues at `expiresAt` or the sync interval.
async fn update(access: &ChatflowAccess, ctx: &Context) -> Result<Action, ControllerError> {
    // As last written, where the API server dropped fields an older CRD lacks.
    let written = ctx.written.as_written(&object_key(access), access);
    let access = written.as_ref();
    let ns = access.namespace().ok_or(ControllerError::Unnamed)?;
    let (new, expires_in) = next_status(access, &ctx.chatflow_names(&ns), super::now());
    let old = access.status.clone().unwrap_or_default();
    if access.status.as_ref() != Some(&new) {
        if let Some((type_, why, note)) = ready_transition(&old.conditions, &new.conditions) {
            ctx.event(access, type_, why, "Reconcile", note).await;
        }
        let status = serde_json::to_value(&new).map_err(ControllerError::Serialize)?;
        apply_status(ctx, access, status, FIELD_MANAGER).await?;
    }
    let resync = ctx.settings.sync_interval;
    Ok(Action::requeue(match expires_in {
        // A second late rather than early: at `expiresAt` itself the access has expired.
        Some(left) => (left + Duration::from_secs(1)).min(resync),
        None => resync,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).expect("valid time")
    }

    fn access(spec: serde_json::Value) -> ChatflowAccess {
        serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {"name": "support-team", "namespace": "team-a", "generation": 2},
            "spec": spec,
        }))
        .expect("valid ChatflowAccess")
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn condition(status: &ChatflowAccessStatus, type_: &str) -> (String, String, String) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn missing_chatflows_are_named_in_resolved_refs() {
        let a = access(json!({"chatflows": ["faq-bot", "support-bot", "gone-bot"],
                              "subjects": [{"user": "alice"}, {"group": "support"}]}));
        let (status, _) = next_status(&a, &names(&["support-bot", "faq-bot", "other"]), at(0));
        assert_eq!(status.resolved_chatflows, 2);
        assert_eq!(status.subjects, 2);
        assert_eq!(status.observed_generation, Some(2));
        let (ok, why, message) = condition(&status, "ResolvedRefs");
        assert_eq!((ok.as_str(), why.as_str()), ("False", "ChatflowsNotFound"));
        assert!(message.ends_with(": gone-bot"), "{message}");
        assert_eq!(condition(&status, "Ready").0, "True");
    }

    #[test]
    fn a_wildcard_resolves_to_every_chatflow_of_the_namespace() {
        let a = access(json!({"chatflows": ["*"], "subjects": [{"user": "alice"}]}));
        let (status, _) = next_status(&a, &names(&["a", "b", "c"]), at(0));
        assert_eq!(status.resolved_chatflows, 3);
        assert_eq!(condition(&status, "ResolvedRefs").0, "True");
    }

    #[test]
    fn an_expired_access_is_not_ready_and_a_live_one_requeues_at_its_expiry() {
        let expiry = "2027-01-15T08:00:00Z";
        let a = access(json!({"chatflows": ["*"], "subjects": [{"user": "alice"}],
                              "expiresAt": expiry}));
        let expires: jiff::Timestamp = expiry.parse().expect("time");
        let before = expires - jiff::SignedDuration::from_secs(90);
        let (live, left) = next_status(&a, &names(&[]), before);
        assert_eq!(condition(&live, "Ready").1, "Active");
        assert_eq!(left, Some(Duration::from_secs(90)));
        let (expired, left) = next_status(&a, &names(&[]), expires);
        assert_eq!(condition(&expired, "Ready").0, "False");
        assert_eq!(condition(&expired, "Ready").1, "Expired");
        assert_eq!(left, None);
    }

    #[test]
    fn an_invalid_subject_is_reported_as_invalid_spec() {
        let a = access(json!({"chatflows": ["*"], "subjects": [{"user": "a", "group": "b"}]}));
        let (status, _) = next_status(&a, &names(&[]), at(0));
        let (ok, why, message) = condition(&status, "Ready");
        assert_eq!((ok.as_str(), why.as_str()), ("False", "InvalidSpec"));
        assert!(message.contains("subjects[0]"), "{message}");
        assert_eq!(status.subjects, 0);
    }

    #[test]
    fn a_suspended_access_is_not_ready() {
        let a = access(json!({"chatflows": ["*"], "subjects": [{"user": "a"}], "suspended": true}));
        let (status, _) = next_status(&a, &names(&[]), at(0));
        assert_eq!(condition(&status, "Ready").1, "Suspended");
    }

    #[test]
    fn reconciling_again_changes_nothing() {
        let mut a = access(json!({"chatflows": ["x"], "subjects": [{"user": "a"}]}));
        let (first, _) = next_status(&a, &names(&[]), at(0));
        a.status = Some(first.clone());
        let (second, _) = next_status(&a, &names(&[]), at(100));
        assert_eq!(second, first);
    }
}
