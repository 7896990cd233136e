//! Objects the API server stored that flowgate cannot read ([`Lenient::Unreadable`]): each is
//! reported in its `Ready` condition (InvalidSpec, naming the field) or, where the API server
//! refuses that, by Event, and otherwise left alone, while every other object of its kind is
//! reconciled as usual. A Chatflow among them keeps its claim on its Flowise chatflow
//! (`claims.rs`, [`crate::index::rules::unreadable_claim`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Context, ControllerError};
use crate::crd::Watched;
use crate::crd::conditions::{self, READY, reason};
use crate::crd::lenient::{Lenient, Unreadable};

/// `reconcile` for the objects that read; the others get [`report`].
pub(super) fn or_report<K, F, Fut>(
    mut reconcile: F,
    manager: &'static str,
) -> impl FnMut(Arc<Lenient<K>>, Arc<Context>) -> BoxFuture<'static, Result<Action, ControllerError>>
where
    K: Watched<Scope = k8s_openapi::NamespaceResourceScope>,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, ControllerError>> + Send + 'static,
{
    move |obj, ctx| {
        let reconciling = match obj.as_ref() {
            Lenient::Read(read) => reconcile(read.clone(), ctx).boxed(),
            Lenient::Unreadable(_) => async move {
                let started = std::time::Instant::now();
                let result = ctx.fenced(report(&obj, &ctx, manager)).await;
                ctx.reconciled(obj.as_ref(), result.is_ok(), started);
                result
            }
            .boxed(),
        };
        caught(reconciling).boxed()
    }
}

/// `reconciling`, a panic in it an error of its object: kube-runtime would raise it again in
/// the controller's own task, which would end it (and its Lease's renewals) for good.
async fn caught(
    reconciling: impl Future<Output = Result<Action, ControllerError>>,
) -> Result<Action, ControllerError> {
    match std::panic::AssertUnwindSafe(reconciling)
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(ControllerError::Panicked(
            crate::telemetry::panic_message(&*panic).to_string(),
        )),
    }
}

/// Says in `Ready` why `obj` cannot be read, once (unchanged, nothing is written), with a
/// Warning Event. Its other conditions go: nothing else about it is known; its other status
/// fields stay (a merge patch: a Chatflow's `flowiseId` is what its claim rests on). A
/// Chatflow's finalizer stays — its Flowise chatflow cannot be cleaned up unread — so deleting
/// one that owns its chatflow waits for its spec to be fixed.
///
/// Without CRD validation ratcheting (Kubernetes before 1.30, or the feature off), and for a
/// value of the wrong type on any version, the API server checks the whole stored object on a
/// status write too and refuses it (422) for the very field that makes it unreadable: then the
/// Event is the report, sent again every [`EVENT_AGAIN`] so that it outlives Events' TTL.
async fn report<K>(
    obj: &Lenient<K>,
    ctx: &Context,
    manager: &str,
) -> Result<Action, ControllerError>
where
    K: Watched<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let resync = Action::requeue(ctx.settings.sync_interval);
    let Lenient::Unreadable(bad) = obj else {
        return Ok(resync);
    };
    let chatflow = K::kind(&()) == "Chatflow";
    let Some((conditions, generation)) = next_conditions(bad, chatflow, super::now()) else {
        return Ok(resync);
    };
    let key = super::object_key(obj);
    if ctx.event_only.sent(&key, generation, &bad.error) {
        return Ok(resync);
    }
    let (Some(name), Some(ns)) = (&bad.metadata.name, &bad.metadata.namespace) else {
        return Err(ControllerError::Unnamed);
    };
    let patch = serde_json::json!({"status": {
        "observedGeneration": generation,
        "conditions": conditions,
    }});
    let params = PatchParams {
        field_manager: Some(manager.to_string()),
        ..PatchParams::default()
    };
    let written = Api::<Lenient<K>>::namespaced(ctx.client.clone(), ns)
        .patch_status(name, &params, &Patch::Merge(&patch))
        .await;
    let event_only = match written {
        Ok(_) => {
            ctx.metrics
                .controller
                .status_written(super::kind_name::<K>());
            false
        }
        Err(kube::Error::Api(refused)) if refused.code == 422 => true,
        Err(error) => return Err(error.into()),
    };
    tracing::warn!(
        object = %key,
        error = %bad.error,
        event_only,
        "cannot read this object; reported and skipped"
    );
    if let Some(ready) = conditions.first() {
        ctx.event(
            obj,
            EventType::Warning,
            reason::INVALID_SPEC,
            "Reconcile",
            ready.message.clone(),
        )
        .await;
    }
    if event_only {
        ctx.event_only.add(key, generation, bad.error.clone());
    }
    Ok(resync)
}

/// How often the Event of an object whose status the API server refuses is sent again: well
/// within the hour Events live by default.
const EVENT_AGAIN: Duration = Duration::from_secs(30 * 60);

/// Unreadable objects whose status the API server refused: the generation and problem their
/// last Event reported, and when.
#[derive(Default)]
pub(crate) struct EventOnly(Mutex<HashMap<String, Reported>>);

/// The generation and problem an Event reported, and when.
type Reported = (Option<i64>, String, Instant);

impl EventOnly {
    /// Whether this problem of this generation was reported by Event lately.
    fn sent(&self, key: &str, generation: Option<i64>, error: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|(g, e, at)| *g == generation && e == error && at.elapsed() < EVENT_AGAIN)
    }

    fn add(&self, key: String, generation: Option<i64>, error: String) {
        let mut reported = self.lock();
        // Objects fixed or deleted since leave their entries; a few thousand at most.
        reported.retain(|_, (_, _, at)| at.elapsed() < EVENT_AGAIN * 2);
        reported.insert(key, (generation, error, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reported>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The conditions to write for `bad` (a Chatflow's when `chatflow`), with its generation; `None`
/// when its status says so already.
fn next_conditions(
    bad: &Unreadable,
    chatflow: bool,
    now: jiff::Timestamp,
) -> Option<(
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    Option<i64>,
)> {
    let generation = bad.metadata.generation;
    let mut conditions = bad.conditions.clone();
    conditions.retain(|c| c.type_ == READY);
    let message = format!("cannot be read, so it is skipped: {}", bad.error);
    // A Chatflow's claim in Conflict stays in Conflict, or the report would make it hold the
    // Flowise chatflow another Chatflow holds ([`crate::index::rules::unreadable_claim`]).
    let conflict = conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == reason::CONFLICT);
    let (why, message) = if conflict {
        let held = "another Chatflow holds the Flowise chatflow it claims";
        (reason::CONFLICT, format!("{message}; and {held}"))
    } else {
        (reason::INVALID_SPEC, message)
    };
    // Ready's observedGeneration stays the spec last compared with Flowise, as the reconciler
    // keeps it while it compares nothing (`chatflow::next_status`): a Chatflow edited while it
    // cannot be read holds nothing by its status, so an edit pointing its claim elsewhere and
    // back does not take back what another Chatflow took meanwhile. (Unedited, as after a CRD
    // upgrade, it keeps holding what it held.)
    // Other kinds hold nothing by it: theirs is the generation described, as Kubernetes'
    // clients (`kubectl wait`) read it.
    let compared = if chatflow {
        bad.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .and_then(|c| c.observed_generation)
    } else {
        generation
    };
    conditions::upsert(
        &mut conditions,
        conditions::new(READY, false, why, message, compared, now),
    );
    let unchanged = conditions == bad.conditions && bad.observed_generation == generation;
    (!unchanged).then_some((conditions, generation))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// A reconcile that panics is its object's error, tried again at the sync interval; the
    /// controller's task, which runs every reconcile and renews the Lease, goes on.
    #[tokio::test]
    async fn a_reconcile_that_panics_is_an_error_of_its_object() {
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok(Action::await_change())
        };
        let error = caught(panicking).await.expect_err("caught");
        assert!(
            matches!(&error, ControllerError::Panicked(m) if m == "a bug"),
            "{error}"
        );
        assert!(!error.transient());
        assert_eq!(error.reason(), "panicked");
        let fine = caught(async { Ok(Action::await_change()) }).await;
        assert!(fine.is_ok());
    }

    fn unreadable(generation: i64) -> Unreadable {
        Unreadable {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            error: "spec.budget.credits: invalid value: integer `-5`, expected u64".into(),
            conditions: Vec::new(),
            observed_generation: None,
            spec: serde_json::Value::Null,
            status: serde_json::Value::Null,
        }
    }

    /// The kind the tests report as: a Chatflow, whose Ready's generation is what it compared.
    const CHATFLOW: bool = true;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("time")
    }

    #[test]
    fn an_unreadable_object_is_reported_once() {
        let mut bad = unreadable(4);
        let (conditions, generation) =
            next_conditions(&bad, CHATFLOW, at(100)).expect("a first report");
        assert_eq!(generation, Some(4));
        assert_eq!(conditions.len(), 1);
        let ready = &conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::INVALID_SPEC)
        );
        assert!(
            ready.message.contains("spec.budget.credits"),
            "{}",
            ready.message
        );

        bad.conditions = conditions;
        bad.observed_generation = generation;
        assert_eq!(
            next_conditions(&bad, CHATFLOW, at(200)),
            None,
            "written already"
        );

        bad.metadata.generation = Some(5);
        let (again, generation) =
            next_conditions(&bad, CHATFLOW, at(300)).expect("a new generation");
        assert_eq!(
            again[0].last_transition_time.0,
            at(100),
            "still False since the first report"
        );
        assert_eq!(generation, Some(5));
        bad.conditions = again;
        bad.observed_generation = generation;
        assert_eq!(
            next_conditions(&bad, CHATFLOW, at(400)),
            None,
            "and that once"
        );
    }

    #[test]
    fn an_edit_while_unreadable_holds_nothing_by_its_status() {
        // Held Flowise chatflow x at generation 4, then turned unreadable (a CRD upgrade).
        let mut bad = unreadable(4);
        bad.status = serde_json::json!({"flowiseId": "x"});
        bad.spec = serde_json::json!({"flowiseId": "x"});
        bad.conditions = vec![conditions::new(
            READY,
            true,
            reason::SYNCED,
            "",
            Some(4),
            at(0),
        )];
        let (conditions, _) = next_conditions(&bad, CHATFLOW, at(100)).expect("a report");
        bad.conditions = conditions;
        bad.observed_generation = Some(4);
        let claim = crate::index::rules::unreadable_claim;
        assert_eq!(
            claim(&bad),
            Some(("x".into(), true)),
            "unedited, it keeps it"
        );
        // Edited (pointed elsewhere and back, say) while it still cannot be read.
        bad.metadata.generation = Some(6);
        // Another kind's Ready describes the generation it reports on, as `kubectl wait` reads.
        let (other, _) = next_conditions(&bad, false, at(200)).expect("a report");
        assert_eq!(other[0].observed_generation, Some(6));
        let (conditions, _) = next_conditions(&bad, CHATFLOW, at(200)).expect("a report");
        assert_eq!(
            conditions[0].observed_generation,
            Some(4),
            "nothing compared"
        );
        bad.conditions = conditions;
        bad.observed_generation = Some(6);
        assert_eq!(
            claim(&bad),
            Some(("x".into(), false)),
            "it claims, holding nothing"
        );
    }

    #[test]
    fn a_claim_in_conflict_is_reported_still_in_conflict() {
        // Reported as InvalidSpec, it would read as holding the Flowise chatflow another holds.
        let mut bad = unreadable(4);
        bad.conditions = vec![conditions::new(
            READY,
            false,
            reason::CONFLICT,
            "Flowise chatflow x is held by team-a/bot",
            Some(4),
            at(0),
        )];
        let (conditions, _) = next_conditions(&bad, CHATFLOW, at(100)).expect("a report");
        assert_eq!(conditions[0].reason, reason::CONFLICT);
        assert!(
            conditions[0].message.contains("cannot be read"),
            "{}",
            conditions[0].message
        );
        bad.conditions = conditions;
        bad.observed_generation = Some(4);
        assert_eq!(next_conditions(&bad, CHATFLOW, at(200)), None, "and once");
    }

    #[test]
    fn the_conditions_of_a_readable_past_give_way_to_ready() {
        let mut bad = unreadable(2);
        bad.conditions = vec![
            conditions::new(READY, true, reason::ACTIVE, "", Some(1), at(1)),
            conditions::new("ResolvedRefs", true, "Resolved", "", Some(1), at(1)),
        ];
        let (conditions, _) = next_conditions(&bad, CHATFLOW, at(100)).expect("changed");
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY]);
        assert_eq!(conditions[0].last_transition_time.0, at(100));
    }
}
