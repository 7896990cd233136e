//! Condition types and reasons, in one place, and the rule for updating a condition list.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the object is in force.
pub const READY: &str = "Ready";
/// Condition type: every Chatflow a rule names exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// Reasons a condition carries. Stable: used in metrics, Events and by users' alerts.
pub mod reason {
    /// The chatflow matches Flowise.
    pub const SYNCED: &str = "Synced";
    /// Flowise has no chatflow with the Chatflow's id or name.
    pub const NOT_FOUND_IN_FLOWISE: &str = "NotFoundInFlowise";
    /// Flowise could not be reached; the last known state is kept.
    pub const FLOWISE_UNREACHABLE: &str = "FlowiseUnreachable";
    /// The spec breaks a rule the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The object is suspended by its spec.
    pub const SUSPENDED: &str = "Suspended";
    /// Another object claims the same thing (for a Chatflow: another Chatflow holds its Flowise
    /// chatflow, or several claim it and none holds it).
    pub const CONFLICT: &str = "Conflict";
    /// What Flowise holds leaves the spec ambiguous or undoable: several Flowise chatflows
    /// match it, or the name it would give is taken. Not about other Chatflows: one that held
    /// its Flowise chatflow keeps holding it.
    pub const FLOWISE_CONFLICT: &str = "FlowiseConflict";
    /// The access has passed its `expiresAt`.
    pub const EXPIRED: &str = "Expired";
    /// The rule is in force.
    pub const ACTIVE: &str = "Active";
    /// Every referenced Chatflow exists.
    pub const RESOLVED: &str = "Resolved";
    /// Some referenced Chatflows do not exist.
    pub const CHATFLOWS_NOT_FOUND: &str = "ChatflowsNotFound";
}

/// Puts `new` into `conditions`, replacing the one of the same type.
///
/// `lastTransitionTime` moves only when the status changes: a reason or message update on an
/// unchanged status keeps the old time, so repeated reconciles produce identical conditions.
pub fn upsert(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// A condition of `type_`, `True` when `ok`, observed at `now` for `generation`.
///
/// The message is never empty: Kubernetes 1.20's server-side apply turns an empty string into
/// `null`, which the schema then refuses (`status.conditions.message … must be of type string`).
/// An empty message falls back to the reason.
pub fn new(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let message = message.into();
    Condition {
        message: if message.is_empty() {
            reason.to_string()
        } else {
            message
        },
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Whether `conditions` holds `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_stays_when_only_the_message_changes() {
        let mut conds = vec![new(
            READY,
            false,
            reason::FLOWISE_UNREACHABLE,
            "down",
            Some(1),
            at(100),
        )];
        upsert(
            &mut conds,
            new(
                READY,
                false,
                reason::FLOWISE_UNREACHABLE,
                "still down",
                Some(1),
                at(200),
            ),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(at(100)));
        assert_eq!(conds[0].message, "still down");
    }

    #[test]
    fn transition_time_moves_when_the_status_flips() {
        let mut conds = vec![new(
            READY,
            false,
            reason::FLOWISE_UNREACHABLE,
            "down",
            Some(1),
            at(100),
        )];
        upsert(
            &mut conds,
            new(READY, true, reason::SYNCED, "ok", Some(1), at(200)),
        );
        assert_eq!(conds[0].last_transition_time, Time(at(200)));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn an_empty_message_falls_back_to_the_reason() {
        assert_eq!(
            new(READY, true, reason::SYNCED, "", None, at(1)).message,
            "Synced"
        );
    }

    #[test]
    fn a_new_type_is_appended() {
        let mut conds = vec![new(READY, true, reason::ACTIVE, "", None, at(1))];
        upsert(
            &mut conds,
            new(
                RESOLVED_REFS,
                false,
                reason::CHATFLOWS_NOT_FOUND,
                "faq-bot",
                None,
                at(2),
            ),
        );
        assert_eq!(conds.len(), 2);
        assert!(!is_true(&conds, RESOLVED_REFS));
    }
}
