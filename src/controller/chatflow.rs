//! Chatflow: one Flowise chatflow, adopted (`flowiseId`, `flowiseName`) or owned (`definition`).
//!
//! `reconcile` is a short driver over named steps; only `dereference`, `sync` and
//! `update_status` talk to Flowise or the API server:
//!
//! 1. [`validate`] (pure): the spec → [`Desired`], or InvalidSpec. An invalid spec never touches
//!    Flowise, so validation comes before anything else.
//! 2. [`dereference`]: what Flowise holds for this Chatflow → [`Found`].
//! 3. [`plan`] (pure): keep, create, update (only the fields that differ), or report.
//! 4. `sync`: carries out the plan in Flowise → [`Outcome`].
//! 5. [`next_status`] (pure) and `update_status`: written only when it differs.
//!
//! **Never a duplicate.** An owned chatflow carries the marker `flowgate:<namespace>/<name>` as
//! a tag in its Flowise `category` (which the Flowise UI shows as a tag). Before creating,
//! the controller looks for its marker in the listing, so a lost status write, a restart or a new
//! leader finds the chatflow again instead of creating a second one; the id in status is only a
//! shortcut. A chatflow of the same name without the marker is somebody else's: Conflict, not
//! a second chatflow of that name. Cleanup deletes only chatflows carrying the marker.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::{Context, ControllerError, apply_status, object_key};
use crate::crd::conditions::{self, reason};
use crate::crd::{
    Chatflow, ChatflowStatus, ChatflowType, DeletionPolicy, FIELD_MANAGER, FINALIZER,
};
use crate::flowise::{ChatflowWrite, Deletion, FlowiseApi, FlowiseChatflow, FlowiseError};
use crate::index::rules::{ChatflowSource, chatflow_source, held_before};

pub(super) const KIND: &str = "Chatflow";

/// What the spec asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Desired {
    /// Adopt the Flowise chatflow with this id.
    AdoptId(String),
    /// Adopt the one Flowise chatflow with this name.
    AdoptName(String),
    /// Own a chatflow with this content.
    Own(Owned),
}

/// An owned chatflow as it should be in Flowise.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Owned {
    /// `flowgate:<namespace>/<name>`, kept in the chatflow's `category`.
    pub marker: String,
    pub name: String,
    pub flow_type: ChatflowType,
    pub flow_data: serde_json::Value,
    pub deployed: Option<bool>,
}

/// The ownership marker of the Chatflow `namespace/name`.
pub(crate) fn marker(namespace: &str, name: &str) -> String {
    format!("{MARKER_PREFIX}{namespace}/{name}")
}

/// Whether `chatflow` carries some Chatflow's ownership marker: flowgate created it from a
/// `definition`.
pub(crate) fn carries_a_marker(chatflow: &FlowiseChatflow) -> bool {
    chatflow
        .categories()
        .any(|tag| tag.starts_with(MARKER_PREFIX))
}

/// What every ownership marker starts with.
const MARKER_PREFIX: &str = "flowgate:";

/// The Flowise chatflow a Chatflow's status records.
#[derive(Debug, Clone, Copy)]
pub(super) struct Known<'a> {
    pub id: &'a str,
    /// The status says the spec as it is now found it (`Synced` at the object's generation):
    /// an owned chatflow, found by its marker or created.
    pub ours: bool,
}

impl<'a> Known<'a> {
    /// An id the status records, for whatever spec.
    #[cfg(test)]
    pub fn id(id: &'a str) -> Self {
        Self { id, ours: false }
    }

    fn from_status(status: &'a ChatflowStatus, generation: Option<i64>) -> Option<Self> {
        let id = status.flowise_id.as_deref()?;
        let ours = status.conditions.iter().any(|c| {
            c.type_ == conditions::READY
                && c.reason == reason::SYNCED
                && c.observed_generation == generation
        });
        Some(Self { id, ours })
    }
}

/// Whether `chatflow` carries `marker` among its category tags.
pub(crate) fn has_marker(chatflow: &FlowiseChatflow, marker: &str) -> bool {
    chatflow.categories().any(|tag| tag == marker)
}

/// Step 1: the spec checked for what the schema cannot express ([`chatflow_source`]): exactly
/// one source and, for a definition, `flowData` with `nodes` and `edges` arrays (Flowise
/// answers 500 otherwise).
pub(super) fn validate(cf: &Chatflow) -> Result<Desired, String> {
    match chatflow_source(&cf.spec).map_err(|e| e.to_string())? {
        ChatflowSource::Id(id) => Ok(Desired::AdoptId(id)),
        ChatflowSource::Name(name) => Ok(Desired::AdoptName(name)),
        ChatflowSource::Definition(def) => {
            let namespace = cf.metadata.namespace.as_deref().unwrap_or_default();
            let name = cf.metadata.name.as_deref().unwrap_or_default();
            Ok(Desired::Own(Owned {
                marker: marker(namespace, name),
                name: def.name.clone().unwrap_or_else(|| name.to_string()),
                flow_type: def.flow_type,
                flow_data: def.flow_data.clone(),
                deployed: def.deployed,
            }))
        }
    }
}

/// What Flowise holds for a Chatflow.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Found {
    One(FlowiseChatflow),
    /// Nothing; for an owned chatflow, the chatflows without its marker that already have its
    /// name: their ids, each with the Chatflow (`namespace/name`) whose marker it carries, if any.
    None {
        name_taken_by: Vec<(String, Option<String>)>,
    },
    /// Several candidates (ids).
    Many(Vec<String>),
}

fn one_of(mut candidates: Vec<FlowiseChatflow>) -> Found {
    match candidates.len() {
        0 => Found::None {
            name_taken_by: Vec::new(),
        },
        1 => Found::One(candidates.remove(0)),
        _ => Found::Many(candidates.into_iter().map(|c| c.id).collect()),
    }
}

/// Step 2: looks the Chatflow up in Flowise. An owned chatflow is found by the id in status
/// when that still exists, else by its marker in the listing.
pub(super) async fn dereference(
    flowise: &dyn FlowiseApi,
    desired: &Desired,
    known: Option<Known<'_>>,
) -> Result<Found, FlowiseError> {
    match desired {
        Desired::AdoptId(id) => Ok(match flowise.get(id).await? {
            Some(chatflow) => Found::One(chatflow),
            None => Found::None {
                name_taken_by: Vec::new(),
            },
        }),
        Desired::AdoptName(name) => {
            let all = flowise.list().await?;
            Ok(one_of(
                all.into_iter().filter(|c| &c.name == name).collect(),
            ))
        }
        Desired::Own(owned) => {
            // The id in status is a shortcut only to a chatflow that carries our marker: a
            // Chatflow that adopted X and was switched to a `definition` must not take X over
            // (and delete it later with `deletionPolicy: Delete`). Or to one whose marker a
            // Flowise user took away (the UI edits the category's tags), when the status says
            // this very spec found it: the marker is put back.
            if let Some(known) = known
                && let Some(chatflow) = flowise.get(known.id).await?
                && (has_marker(&chatflow, &owned.marker)
                    || (known.ours && !carries_a_marker(&chatflow)))
            {
                return Ok(Found::One(chatflow));
            }
            let all = flowise.list().await?;
            let name_taken_by = all
                .iter()
                .filter(|c| c.name == owned.name && !has_marker(c, &owned.marker))
                .map(|c| {
                    let owner = c.categories().find_map(|t| t.strip_prefix(MARKER_PREFIX));
                    (c.id.clone(), owner.map(str::to_string))
                })
                .collect();
            match one_of(
                all.into_iter()
                    .filter(|c| has_marker(c, &owned.marker))
                    .collect(),
            ) {
                Found::None { .. } => Ok(Found::None { name_taken_by }),
                found => Ok(found),
            }
        }
    }
}

/// What to do in Flowise.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plan {
    /// Flowise is as it should be.
    Keep(FlowiseChatflow),
    Create(ChatflowWrite),
    /// Send these changes to the chatflow.
    Update(FlowiseChatflow, ChatflowWrite),
    NotFound(String),
    /// The chatflow found is held by another Chatflow.
    Conflict(String),
    /// Flowise's chatflows leave the spec ambiguous or undoable (several match, a name taken).
    FlowiseConflict(String),
}

/// Step 3: the plan for what was found.
pub(super) fn plan(desired: &Desired, found: Found) -> Plan {
    match (desired, found) {
        (Desired::Own(owned), Found::One(current)) => {
            let changes = changes(owned, &current);
            if changes.is_empty() {
                Plan::Keep(current)
            } else {
                Plan::Update(current, changes)
            }
        }
        (Desired::Own(owned), Found::None { name_taken_by }) if name_taken_by.is_empty() => {
            Plan::Create(create_body(owned))
        }
        (Desired::Own(owned), Found::None { name_taken_by }) => {
            let taken: Vec<String> = name_taken_by
                .iter()
                .map(|(id, owner)| match owner {
                    Some(owner) => format!("{id}, created for Chatflow {owner}"),
                    None => format!("{id}, not created by flowgate"),
                })
                .collect();
            Plan::FlowiseConflict(format!(
                "Flowise already has a chatflow named '{}' that this Chatflow does not own ({}); \
                 give the definition another name (definition.name), or adopt that chatflow \
                 with flowiseId",
                owned.name,
                taken.join("; ")
            ))
        }
        (Desired::Own(owned), Found::Many(ids)) => Plan::FlowiseConflict(format!(
            "several Flowise chatflows carry the marker {}: {}",
            owned.marker,
            ids.join(", ")
        )),
        (_, Found::One(current)) => Plan::Keep(current),
        (Desired::AdoptId(id), Found::None { .. }) => {
            Plan::NotFound(format!("Flowise has no chatflow with id {id}"))
        }
        (Desired::AdoptName(name), Found::None { .. }) => {
            Plan::NotFound(format!("Flowise has no chatflow named '{name}'"))
        }
        (Desired::AdoptName(name), Found::Many(ids)) => Plan::FlowiseConflict(format!(
            "several Flowise chatflows are named '{name}' ({}); adopt one with flowiseId",
            ids.join(", ")
        )),
        (Desired::AdoptId(id), Found::Many(_)) => {
            Plan::FlowiseConflict(format!("Flowise answered several chatflows for id {id}"))
        }
    }
}

/// The full body that creates `owned`.
fn create_body(owned: &Owned) -> ChatflowWrite {
    ChatflowWrite {
        name: Some(owned.name.clone()),
        flow_type: Some(owned.flow_type.as_str().to_string()),
        flow_data: Some(owned.flow_data.to_string()),
        deployed: Some(owned.deployed.unwrap_or(false)),
        category: Some(owned.marker.clone()),
    }
}

/// The fields of `current` that differ from `owned`. `flowData` is compared as JSON, so key order
/// and whitespace do not count; `deployed` only when the definition sets it; the category keeps
/// other tags and only gains the marker when it lacks it.
pub(super) fn changes(owned: &Owned, current: &FlowiseChatflow) -> ChatflowWrite {
    let flow_type = owned.flow_type.as_str();
    ChatflowWrite {
        name: (current.name != owned.name).then(|| owned.name.clone()),
        flow_type: (current.flow_type != flow_type).then(|| flow_type.to_string()),
        flow_data: (current.flow_data_json().as_ref() != Some(&owned.flow_data))
            .then(|| owned.flow_data.to_string()),
        deployed: owned
            .deployed
            .filter(|want| current.deployed.unwrap_or(false) != *want),
        category: (!has_marker(current, &owned.marker)).then(|| {
            current
                .categories()
                .chain(std::iter::once(owned.marker.as_str()))
                .collect::<Vec<_>>()
                .join(";")
        }),
    }
}

/// What the sync step did.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    None,
    Created,
    /// The fields sent, e.g. `flowData, deployed`.
    Updated(String),
}

/// The result of steps 2–4, the input of the status.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    Synced {
        chatflow: FlowiseChatflow,
        change: Change,
    },
    /// Synced, but other Chatflows (`others`, namespace/name) claim the same Flowise chatflow,
    /// and this one does not hold it alone: the proxy serves `holder` if one of them holds it
    /// ([`holds`]), else none of them.
    Shared {
        chatflow: FlowiseChatflow,
        change: Change,
        holder: Option<String>,
        others: Vec<String>,
    },
    NotFound(String),
    /// Another Chatflow holds the Flowise chatflow this one claims.
    Conflict(String),
    /// [`Plan::FlowiseConflict`]: this one keeps what it held.
    FlowiseConflict(String),
    Invalid(String),
    /// Flowise could not be asked (transient) or refused the call (permanent).
    Unreachable(String),
}

/// Entry point: the finalizer for Chatflows that own a definition with `deletionPolicy: Delete`
/// (or did), then [`apply`] or [`cleanup`].
pub(super) async fn reconcile(
    cf: Arc<Chatflow>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = ctx.fenced(with_finalizer(cf.clone(), &ctx)).await;
    ctx.reconciled(cf.as_ref(), result.is_ok(), started);
    result
}

/// Only a Chatflow whose deletion deletes something in Flowise carries the finalizer: one on
/// every Chatflow would hold each deletion for a controller (none leads, the CRDs are deleted
/// after `helm uninstall`, a namespace goes) with nothing to do. A Chatflow whose policy turns
/// `Retain` loses it.
async fn with_finalizer(cf: Arc<Chatflow>, ctx: &Context) -> Result<Action, ControllerError> {
    let wanted = cf.spec.definition.is_some() && cf.spec.deletion_policy == DeletionPolicy::Delete;
    let held = cf.finalizers().iter().position(|f| f == FINALIZER);
    let ns = cf.namespace().ok_or(ControllerError::Unnamed)?;
    let api: Api<Chatflow> = Api::namespaced(ctx.client.clone(), &ns);
    match held {
        // Being deleted with nothing to clean up (another finalizer holds it): nothing to do,
        // least of all create its chatflow in Flowise.
        None if !wanted && cf.metadata.deletion_timestamp.is_some() => {
            return Ok(Action::await_change());
        }
        None if !wanted => return apply(&cf, ctx).await,
        Some(at) if !wanted && cf.metadata.deletion_timestamp.is_none() => {
            // Only over the object as read (its resourceVersion in the patch): a finalizer
            // another controller added meanwhile is not lost. The patch brings the next
            // reconcile; a conflict retries.
            let mut finalizers = cf.finalizers().to_vec();
            finalizers.remove(at);
            let patch = serde_json::json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": cf.resource_version(),
            }});
            api.patch(
                &cf.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(ControllerError::Kube)?;
            return apply(&cf, ctx).await;
        }
        _ => {}
    }
    finalizer(&api, FINALIZER, cf, |event| async {
        match event {
            Finalizer::Apply(cf) => apply(&cf, ctx).await,
            Finalizer::Cleanup(cf) => cleanup::cleanup(&cf, ctx).await,
        }
    })
    .await
    .map_err(ControllerError::finalizer)
}

/// The driver: validate → dereference → plan → sync → status.
async fn apply(cf: &Chatflow, ctx: &Context) -> Result<Action, ControllerError> {
    // A create recorded in status, as the cache has it: the object may be one of the create's
    // own writes, from before its outcome was (a status without the id, which a reconcile
    // that fails now would write back over it). Read as the API server has it.
    let read;
    let cf = match cf.status.as_ref().and_then(|s| s.create_sent_at.as_ref()) {
        Some(_) => {
            read = announce::fresh(ctx, cf).await?;
            &read
        }
        None => cf,
    };
    // As last written, where the API server dropped fields an older CRD lacks.
    let written = ctx.written.as_written(&object_key(cf), cf);
    let cf = written.as_ref();
    let old = cf.status.clone().unwrap_or_default();
    let flowise = announce::Announced::new(ctx, cf);
    let (outcome, error) = match validate(cf) {
        // An invalid spec still claims ([`claimed_flowise_id`]: its flowiseId, else its
        // status's id), and would read as holding it when reported InvalidSpec: when another
        // holds it, it is in Conflict.
        Err(message) => match crate::index::rules::claimed_flowise_id(cf).and_then(|id| {
            let holder = super::claims::others(&ctx.chatflows, cf, &id)
                .into_iter()
                .find_map(|other| other.holds.then_some(other.name))?;
            Some((id, holder))
        }) {
            Some((id, holder)) => (
                Outcome::Conflict(format!(
                    "{message}; and Flowise chatflow {id}, which this one claims, is held by \
                     {holder}"
                )),
                None,
            ),
            None => (Outcome::Invalid(message), None),
        },
        Ok(desired) => {
            // Another Chatflow that holds a Flowise chatflow keeps it: this one writes nothing
            // to it, even one that carries this one's marker (left by a retained namesake);
            // nor while the holder's edited spec is not compared yet (`keeps`: its status
            // says it held it, for an older generation), when it holds it for the index not.
            let held_by = |id: &str| {
                super::claims::others(&ctx.chatflows, cf, id)
                    .into_iter()
                    .find_map(|other| other.keeps.then_some(other.name))
            };
            let known = Known::from_status(&old, cf.metadata.generation);
            match sync_named(&ctx.flowise_names, &flowise, &desired, known, &held_by).await {
                Ok(outcome) => (outcome, None),
                Err(unsynced) => unsynced.outcome(),
            }
        }
    };
    let outcome = match outcome {
        Outcome::Synced { chatflow, change } => {
            let others = super::claims::others(&ctx.chatflows, cf, &chatflow.id);
            let holders: Vec<&String> = others
                .iter()
                .filter(|other| other.holds)
                .map(|other| &other.name)
                .collect();
            // As the proxy's index decides: this one is served if it is the only claim, or
            // the only one that holds the Flowise chatflow.
            if others.is_empty() || (holders.is_empty() && held_before(cf, &chatflow.id)) {
                Outcome::Synced { chatflow, change }
            } else {
                Outcome::Shared {
                    chatflow,
                    change,
                    holder: match holders.as_slice() {
                        [holder] => Some((*holder).clone()),
                        _ => None,
                    },
                    others: others.into_iter().map(|other| other.name).collect(),
                }
            }
        }
        outcome => outcome,
    };
    let new = next_status(
        &old,
        &outcome,
        cf.metadata.generation,
        cf.spec.suspended,
        super::now(),
        ctx.settings.last_sync_refresh,
    );
    if let Some((type_, why, note)) = notable(&old, &new, &outcome) {
        ctx.event(cf, type_, why, "Reconcile", note).await;
    }
    update_status(ctx, cf, &new).await?;
    // After the status it leads to: every version of the object written between the create
    // and this one carries `createSentAt`, so a reconcile of any of them reads it again.
    flowise.settle(&outcome, error.as_ref()).await;
    match error {
        Some(error) => Err(error.into()),
        None => Ok(Action::requeue(ctx.settings.sync_interval)),
    }
}

/// A [`sync`] that failed.
#[derive(Debug)]
pub(super) struct Unsynced {
    pub(super) error: FlowiseError,
    /// Flowise had answered that the chatflow it owned is no longer there (and the create that
    /// would make it again failed).
    pub(super) absent: bool,
}

impl Unsynced {
    /// What it tells of the chatflow, and the error to retry on.
    pub(super) fn outcome(self) -> (Outcome, Option<FlowiseError>) {
        let Self { error, absent } = self;
        let outcome = if absent {
            // Flowise said the chatflow is not there: Ready does not stay True on the id of
            // one it no longer has.
            Outcome::NotFound(format!(
                "Flowise has no chatflow carrying this Chatflow's marker, and creating it \
                 failed: {error}"
            ))
        } else {
            Outcome::Unreachable(error.to_string())
        };
        (outcome, Some(error))
    }
}

impl From<FlowiseError> for Unsynced {
    fn from(error: FlowiseError) -> Self {
        Self {
            error,
            absent: false,
        }
    }
}

/// Steps 2–4. `held_by` names the other Chatflow that holds a Flowise chatflow, if one does: an
/// update is not sent to a chatflow another holds, and a rename not into a name another
/// chatflow has (which would make a `flowiseName` claim on it ambiguous, taking it offline).
pub(super) async fn sync(
    flowise: &dyn FlowiseApi,
    desired: &Desired,
    known: Option<Known<'_>>,
    held_by: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Outcome, Unsynced> {
    let found = dereference(flowise, desired, known).await?;
    let plan = match plan(desired, found) {
        Plan::Update(current, changes) => guard(flowise, current, changes, held_by).await?,
        plan => plan,
    };
    Ok(match plan {
        Plan::Keep(chatflow) => Outcome::Synced {
            chatflow,
            change: Change::None,
        },
        Plan::Create(body) => Outcome::Synced {
            // A chatflow it had (an id in status) is gone from Flowise; one it never had is
            // not "gone", and its failed first create is Flowise being unreachable.
            chatflow: flowise.create(&body).await.map_err(|error| Unsynced {
                error,
                absent: known.is_some(),
            })?,
            change: Change::Created,
        },
        Plan::Update(current, changes) => Outcome::Synced {
            chatflow: flowise.update(&current.id, &changes).await?,
            change: Change::Updated(changes.fields()),
        },
        Plan::NotFound(message) => Outcome::NotFound(message),
        Plan::Conflict(message) => Outcome::Conflict(message),
        Plan::FlowiseConflict(message) => Outcome::FlowiseConflict(message),
    })
}

/// Owned definitions are synced one name at a time (in stripes of names): two Chatflows whose
/// definitions name one Flowise chatflow, reconciled together, would both find the name free
/// in their listings and both create it (or rename into it), where the second must find the
/// first's and report `FlowiseConflict`.
pub(crate) struct FlowiseNames([tokio::sync::Mutex<()>; 64]);

impl Default for FlowiseNames {
    fn default() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl FlowiseNames {
    async fn lock(&self, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % 64).unwrap_or(0);
        self.0[stripe].lock().await
    }
}

/// [`sync`], holding `desired`'s name ([`FlowiseNames`]) when it is an owned definition.
pub(super) async fn sync_named(
    names: &FlowiseNames,
    flowise: &dyn FlowiseApi,
    desired: &Desired,
    known: Option<Known<'_>>,
    held_by: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Outcome, Unsynced> {
    let _name = match desired {
        Desired::Own(owned) => Some(names.lock(&owned.name).await),
        Desired::AdoptId(_) | Desired::AdoptName(_) => None,
    };
    sync(flowise, desired, known, held_by).await
}

/// An update, unless the chatflow is another's ([`sync`]'s `held_by`) or it renames the chatflow
/// to a name another chatflow in Flowise has: then a conflict, and nothing is written.
async fn guard(
    flowise: &dyn FlowiseApi,
    current: FlowiseChatflow,
    changes: ChatflowWrite,
    held_by: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Plan, FlowiseError> {
    if let Some(holder) = held_by(&current.id) {
        return Ok(Plan::Conflict(format!(
            "Flowise chatflow {} carries this Chatflow's marker but is held by {holder}: \
             nothing is written to it",
            current.id
        )));
    }
    if let Some(name) = &changes.name {
        let taken: Vec<String> = flowise
            .list()
            .await?
            .into_iter()
            .filter(|c| &c.name == name && c.id != current.id)
            .map(|c| c.id)
            .collect();
        if !taken.is_empty() {
            return Ok(Plan::FlowiseConflict(format!(
                "Flowise already has a chatflow named '{name}' ({}); the chatflow is not \
                 renamed to it: rename the definition",
                taken.join(", ")
            )));
        }
    }
    Ok(Plan::Update(current, changes))
}

/// Step 6: writes `new` when it differs from what the object carries.
async fn update_status(
    ctx: &Context,
    cf: &Chatflow,
    new: &ChatflowStatus,
) -> Result<(), ControllerError> {
    // `createSentAt` is another field manager's ([`announce`]): neither kept nor removed here.
    let without_intent = |status: &ChatflowStatus| ChatflowStatus {
        create_sent_at: None,
        ..status.clone()
    };
    let new = without_intent(new);
    if cf.status.as_ref().map(without_intent) == Some(new.clone()) {
        return Ok(());
    }
    let status = serde_json::to_value(&new).map_err(ControllerError::Serialize)?;
    apply_status(ctx, cf, status, FIELD_MANAGER).await
}

mod announce;
mod cleanup;
mod status;

pub(super) use status::next_status;
use status::notable;

#[cfg(test)]
#[path = "chatflow_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "chatflow_sync_tests.rs"]
mod sync_tests;
