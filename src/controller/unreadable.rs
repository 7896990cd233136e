//! Objects the API server stored that flowgate cannot read ([`Lenient::Unreadable`]): each is
//! reported in its `Ready` condition (InvalidSpec, naming the field) and otherwise left alone,
//! while every other object of its kind is reconciled as usual.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::{Context, ControllerError, apply_status};
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
    move |obj, ctx| match obj.as_ref() {
        Lenient::Read(read) => reconcile(read.clone(), ctx).boxed(),
        Lenient::Unreadable(_) => async move {
            let started = std::time::Instant::now();
            let result = ctx.fenced(report(&obj, &ctx, manager)).await;
            ctx.reconciled(obj.as_ref(), result.is_ok(), started);
            result
        }
        .boxed(),
    }
}

/// Says in `Ready` why `obj` cannot be read, once (unchanged, nothing is written), with a
/// Warning Event. Its other conditions go: nothing else about it is known. A Chatflow's
/// finalizer stays — its Flowise chatflow cannot be cleaned up unread — so deleting one waits
/// for its spec to be fixed.
///
/// Without CRD validation ratcheting (Kubernetes before 1.30, or the feature off) the API server
/// checks the whole stored object on a status write too, and refuses it for the very field
/// that makes it unreadable: then the Event is the report, sent once per generation.
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
    let Some((conditions, generation)) = next_conditions(bad, super::now()) else {
        return Ok(resync);
    };
    let key = super::object_key(obj);
    if ctx.event_only.has(&key, generation, &bad.error) {
        return Ok(resync);
    }
    tracing::warn!(
        object = %key,
        error = %bad.error,
        "cannot read this object; reported in its status and skipped"
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
    let status = serde_json::json!({
        "observedGeneration": generation,
        "conditions": conditions,
    });
    match apply_status(ctx, obj, status, manager).await {
        Err(ControllerError::Kube(kube::Error::Api(refused))) if refused.code == 422 => {
            tracing::warn!(object = %key, "the API server refuses a status for it too (its stored spec fails the CRD); reported by Event only");
            ctx.event_only.add(key, generation, bad.error.clone());
        }
        written => written?,
    }
    Ok(resync)
}

/// Unreadable objects whose status the API server refused, each with the generation and
/// problem its Event reported.
#[derive(Default)]
pub(crate) struct EventOnly(Mutex<HashMap<String, (Option<i64>, String)>>);

impl EventOnly {
    fn has(&self, key: &str, generation: Option<i64>, error: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|(g, e)| *g == generation && e == error)
    }

    fn add(&self, key: String, generation: Option<i64>, error: String) {
        self.lock().insert(key, (generation, error));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<i64>, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The conditions to write for `bad`, with its generation; `None` when its status says so
/// already.
fn next_conditions(
    bad: &Unreadable,
    now: jiff::Timestamp,
) -> Option<(
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    Option<i64>,
)> {
    let generation = bad.metadata.generation;
    let mut conditions = bad.conditions.clone();
    conditions.retain(|c| c.type_ == READY);
    conditions::upsert(
        &mut conditions,
        conditions::new(
            READY,
            false,
            reason::INVALID_SPEC,
            format!("cannot be read, so it is skipped: {}", bad.error),
            generation,
            now,
        ),
    );
    let unchanged = conditions == bad.conditions && bad.observed_generation == generation;
    (!unchanged).then_some((conditions, generation))
}

/// A watch event with what reads of it: an event of an object that does not read is dropped
/// (a store keeps the last version of it that did).
pub(super) fn readable<K: Clone>(event: watcher::Event<Lenient<K>>) -> Option<watcher::Event<K>> {
    let read = |obj: Lenient<K>| match obj {
        Lenient::Read(obj) => Some(Arc::unwrap_or_clone(obj)),
        Lenient::Unreadable(_) => None,
    };
    Some(match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(read(obj)?),
        watcher::Event::Delete(obj) => watcher::Event::Delete(read(obj)?),
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(read(obj)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// The same object, as the controller of [`Lenient`] objects of its kind names it.
pub(super) fn lenient_ref<K>(r: ObjectRef<K>) -> ObjectRef<Lenient<K>>
where
    K: Watched,
{
    let named = ObjectRef::new(&r.name);
    match &r.namespace {
        Some(ns) => named.within(ns),
        None => named,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn unreadable(generation: i64) -> Unreadable {
        Unreadable {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            error: "spec.budget.credits: invalid value: integer `-5`, expected u64".into(),
            conditions: Vec::new(),
            observed_generation: None,
        }
    }

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("time")
    }

    #[test]
    fn an_unreadable_object_is_reported_once() {
        let mut bad = unreadable(4);
        let (conditions, generation) = next_conditions(&bad, at(100)).expect("a first report");
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
        assert_eq!(next_conditions(&bad, at(200)), None, "written already");

        bad.metadata.generation = Some(5);
        let (again, _) = next_conditions(&bad, at(300)).expect("a new generation");
        assert_eq!(
            again[0].last_transition_time.0,
            at(100),
            "still False since the first report"
        );
    }

    #[test]
    fn the_conditions_of_a_readable_past_give_way_to_ready() {
        let mut bad = unreadable(2);
        bad.conditions = vec![
            conditions::new(READY, true, reason::ACTIVE, "", Some(1), at(1)),
            conditions::new("ResolvedRefs", true, "Resolved", "", Some(1), at(1)),
        ];
        let (conditions, _) = next_conditions(&bad, at(100)).expect("changed");
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY]);
        assert_eq!(conditions[0].last_transition_time.0, at(100));
    }
}
