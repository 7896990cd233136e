//! Step 5 of a Chatflow's reconcile: the status an outcome leaves, and the Event worth
//! publishing for it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::{Change, Outcome};
use crate::crd::ChatflowStatus;
use crate::crd::conditions::{self, reason};

/// Step 5: the status after `outcome`.
///
/// `lastSyncTime` moves on a successful comparison when anything else in the status changes, or
/// when it is older than `refresh`; otherwise the status equals the old one and is not written.
pub(in crate::controller) fn next_status(
    old: &ChatflowStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    suspended: bool,
    now: jiff::Timestamp,
    refresh: Duration,
) -> ChatflowStatus {
    let mut new = old.clone();
    new.observed_generation = generation;
    let (mut ok, mut why, mut message) = match outcome {
        Outcome::Synced { chatflow, .. } | Outcome::Shared { chatflow, .. } => {
            new.flowise_id = Some(chatflow.id.clone());
            new.flowise_name = non_empty(&chatflow.name);
            new.flow_type = non_empty(&chatflow.flow_type);
            new.deployed = Some(chatflow.deployed.unwrap_or(false));
            new.api_key_bound = Some(chatflow.api_key_bound());
            new.flowise_created_at = chatflow.created_date.map(Time);
            new.flowise_updated_at = chatflow.updated_date.map(Time);
            match outcome {
                Outcome::Shared {
                    holder: Some(holder),
                    ..
                } => (
                    false,
                    reason::CONFLICT,
                    format!(
                        "Flowise chatflow {} is held by {holder}: the proxy serves that \
                         Chatflow, not this one, until this one points elsewhere",
                        chatflow.id,
                    ),
                ),
                Outcome::Shared { others, .. } => (
                    false,
                    reason::CONFLICT,
                    format!(
                        "Flowise chatflow {} is also claimed by {}: the proxy serves none of \
                         them until one claim remains",
                        chatflow.id,
                        others.join(", ")
                    ),
                ),
                _ => (
                    true,
                    reason::SYNCED,
                    "matches the chatflow in Flowise".to_string(),
                ),
            }
        }
        Outcome::NotFound(m) => (false, reason::NOT_FOUND_IN_FLOWISE, m.clone()),
        Outcome::Conflict(m) => (false, reason::CONFLICT, m.clone()),
        Outcome::FlowiseConflict(m) => (false, reason::FLOWISE_CONFLICT, m.clone()),
        Outcome::Invalid(m) => (false, reason::INVALID_SPEC, m.clone()),
        // The last known state is kept, Ready's status with it: the proxy keeps serving a
        // chatflow that was Ready (Flowise may well answer predictions while the controller
        // cannot list or read it), and one that was not stays refused, as does a spec changed
        // since Ready was earned (what it names was never checked).
        Outcome::Unreachable(m) => (
            conditions::is_true(&old.conditions, conditions::READY)
                && old.observed_generation == generation,
            reason::FLOWISE_UNREACHABLE,
            m.clone(),
        ),
    };
    // Only a comparison with Flowise (Synced, Shared) decides whether this Chatflow holds its
    // Flowise chatflow, which [`holds`] reads from Ready's reason. A claim in Conflict stays
    // in Conflict through anything else — Flowise away, an invalid edit, suspension — or it
    // would come to hold the chatflow by being suspended and resumed.
    let was_conflict = old
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::READY && c.reason == reason::CONFLICT);
    if was_conflict && let Some(id) = old.flowise_id.as_deref() {
        match outcome {
            // The last known state, as for any other.
            Outcome::Unreachable(_) => {
                if let Some(ready) = old.conditions.iter().find(|c| c.type_ == conditions::READY) {
                    (ok, why, message) = (false, reason::CONFLICT, ready.message.clone());
                }
            }
            // What it claims is not in Flowise (the name it adopts gone: its holder renamed
            // it, say): it records the holder's chatflow no more, or that status would count as
            // holding it ([`holds`]), taking it from its holder, offline or into this namespace.
            Outcome::NotFound(_) => {
                new.flowise_id = None;
                new.flowise_name = None;
            }
            Outcome::Invalid(problem) | Outcome::FlowiseConflict(problem) => {
                (ok, why, message) = (
                    false,
                    reason::CONFLICT,
                    format!(
                        "{problem}; and another Chatflow holds Flowise chatflow {id}, which \
                         this one claimed"
                    ),
                );
            }
            _ => {}
        }
    }
    // Suspension is the reason unless the spec is invalid or the claim is in conflict (the
    // stronger reason: not served either way, and [`holds`] must see it).
    if suspended && !matches!(outcome, Outcome::Invalid(_)) && why != reason::CONFLICT {
        (ok, why, message) = (
            false,
            reason::SUSPENDED,
            "spec.suspended is true: predictions are refused".to_string(),
        );
    }
    // Ready's observedGeneration is the spec last compared with Flowise, which [`holds`] reads:
    // Flowise away compared nothing, so a spec pointed elsewhere and back meanwhile does not
    // come to hold what another Chatflow took over in between.
    let compared = match outcome {
        Outcome::Unreachable(_) => old
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .and_then(|c| c.observed_generation),
        _ => generation,
    };
    conditions::upsert(
        &mut new.conditions,
        conditions::new(conditions::READY, ok, why, message, compared, now),
    );
    if matches!(outcome, Outcome::Synced { .. } | Outcome::Shared { .. }) {
        let stale = old.last_sync_time.as_ref().is_none_or(|t| {
            now.duration_since(t.0)
                .try_into()
                .is_ok_and(|age: Duration| age >= refresh)
        });
        if stale || new != *old {
            new.last_sync_time = Some(Time(now));
        }
    }
    new
}

/// `Some(text)` unless it is empty. Kubernetes 1.20's server-side apply turns an empty string
/// into null, which the schema refuses, so status never carries empty strings.
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// The Event worth publishing for a reconcile, if any: what was done in Flowise, an adoption,
/// or Ready turning False for a new reason. Repeats of the same state publish nothing.
pub(in crate::controller) fn notable(
    old: &ChatflowStatus,
    new: &ChatflowStatus,
    outcome: &Outcome,
) -> Option<(EventType, &'static str, String)> {
    if let Outcome::Synced { chatflow, change }
    | Outcome::Shared {
        chatflow, change, ..
    } = outcome
    {
        let shared = matches!(outcome, Outcome::Shared { .. });
        let what = format!("Flowise chatflow {} '{}'", chatflow.id, chatflow.name);
        match change {
            Change::Created => {
                return Some((EventType::Normal, "Created", format!("created {what}")));
            }
            Change::Updated(fields) => {
                return Some((
                    EventType::Normal,
                    "Updated",
                    format!("updated {fields} of {what}"),
                ));
            }
            Change::None if !shared && old.flowise_id.as_deref() != Some(chatflow.id.as_str()) => {
                return Some((EventType::Normal, "Adopted", format!("adopted {what}")));
            }
            Change::None => {}
        }
    }
    crate::controller::ready_transition(&old.conditions, &new.conditions)
}
