//! The sync pass: one Flowise listing compared with every Chatflow, every `--sync-interval` and
//! on demand ([`SyncState::sync_now`], for the admin API's `POST /chatflows/sync`).
//!
//! A pass imports unclaimed Flowise chatflows (with `--import-namespace`), counts what changed
//! the way the Python service's `ChatflowSyncResult` does, and asks the Chatflow reconciler to
//! run at once when a status no longer matches Flowise. The reconciler stays the one writer of
//! Chatflow status; the pass only creates imported Chatflow objects, which is idempotent (create,
//! never overwrite), so it is safe on any replica. Nothing is ever deleted: a vanished chatflow
//! is reported by its Chatflow (`NotFoundInFlowise`), and Flowise being down only adds an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::Stream;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::chatflow::{Desired, carries_a_marker, changes, has_marker, marker, validate};
use crate::crd::conditions::{READY, reason};
use crate::crd::{Chatflow, ChatflowSpec, ChatflowStatus, FIELD_MANAGER, LABEL_IMPORTED, Lenient};
use crate::flowise::{FlowiseApi, FlowiseChatflow};
use crate::index::rules::unreadable_claim;
use crate::metrics::{Metrics, SyncCounts};

/// The counts of one sync pass, in the Python service's shape (`ChatflowSyncResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatflowSyncResult {
    /// Chatflow objects created by the import.
    pub new_chatflows_added: u32,
    /// Chatflows whose status no longer matched Flowise (refreshed by the reconciler now).
    pub existing_chatflows_updated: u32,
    /// Adopted or imported Chatflows whose chatflow disappeared from Flowise since the last pass.
    pub chatflows_removed: u32,
    /// Chatflows Flowise listed.
    pub total_chatflows_synced: u32,
    /// What went wrong; empty on success.
    pub errors: Vec<String>,
}

/// Whether a pass went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOutcome {
    Success,
    Failed,
}

/// The last pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    pub result: ChatflowSyncResult,
    pub finished_at: jiff::Timestamp,
    pub outcome: SyncOutcome,
    /// Flowise's listing was read (a pass may fail on other things: the Chatflow listing, an
    /// import).
    pub flowise_listed: bool,
}

/// Shared handle on the sync: the last pass and a way to run one now. Cheap to clone.
#[derive(Clone)]
pub struct SyncState {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    flowise: Arc<dyn FlowiseApi>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    last: Mutex<Option<SyncReport>>,
    /// One pass at a time.
    running: tokio::sync::Mutex<()>,
    /// Asks the Chatflow reconciler to reconcile everything.
    reconcile_all: broadcast::Sender<()>,
}

impl SyncState {
    pub(super) fn new(
        client: Client,
        flowise: Arc<dyn FlowiseApi>,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (reconcile_all, _) = broadcast::channel(4);
        Self {
            inner: Arc::new(Inner {
                client,
                flowise,
                settings,
                metrics,
                last: Mutex::new(None),
                running: tokio::sync::Mutex::new(()),
                reconcile_all,
            }),
        }
    }

    /// Whether sync passes import unclaimed Flowise chatflows (`FLOWGATE_IMPORT_NAMESPACE`).
    pub fn imports(&self) -> bool {
        self.inner.settings.import_namespace.is_some()
    }

    /// Whether a sync pass would import an unclaimed chatflow Flowise names `name` (a name not
    /// known: as if it would).
    pub fn would_import(&self, name: Option<&str>) -> bool {
        let prefix = self.inner.settings.import_name_prefix.as_deref();
        self.imports() && name.is_none_or(|name| prefix.is_none_or(|p| name.starts_with(p)))
    }

    /// The last pass, if one has run.
    pub fn last(&self) -> Option<SyncReport> {
        self.inner
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a pass now (after the one in progress, if any) and returns its counts.
    pub async fn sync_now(&self) -> ChatflowSyncResult {
        self.pass().await
    }

    /// A stream that yields whenever a pass wants every Chatflow reconciled.
    pub(super) fn reconcile_requests(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.inner.reconcile_all.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// A pass now and every sync interval until `session` ends.
    pub(super) async fn run_periodically(&self, session: CancellationToken) {
        loop {
            self.pass().await;
            tokio::select! {
                () = session.cancelled() => return,
                () = tokio::time::sleep(self.inner.settings.sync_interval) => {}
            }
        }
    }

    async fn pass(&self) -> ChatflowSyncResult {
        let inner = &self.inner;
        let _one_at_a_time = inner.running.lock().await;
        let mut flowise_listed = true;
        let result = match self.observe().await {
            Err((error, listed)) => {
                flowise_listed = listed;
                ChatflowSyncResult {
                    errors: vec![error],
                    ..Default::default()
                }
            }
            Ok((flowise, chatflows, unreadable)) => {
                let mut plan = plan(
                    &flowise,
                    &chatflows,
                    inner.settings.import_namespace.as_deref(),
                    inner.settings.import_name_prefix.as_deref(),
                );
                let held = hold_back(&mut plan.imports, &unreadable);
                let (added, mut errors) = self.import(plan.imports).await;
                errors.extend(held);
                if !plan.updated.is_empty() || !plan.removed.is_empty() {
                    let _ = inner.reconcile_all.send(());
                }
                tracing::debug!(updated = ?plan.updated, removed = ?plan.removed, "sync pass");
                ChatflowSyncResult {
                    new_chatflows_added: added,
                    existing_chatflows_updated: count(plan.updated.len()),
                    chatflows_removed: count(plan.removed.len()),
                    total_chatflows_synced: count(plan.total),
                    errors,
                }
            }
        };
        self.record(&result, flowise_listed);
        result
    }

    /// Flowise's listing, the Chatflow objects in scope, and `namespace/name` of those in scope
    /// that cannot be read, each with the Flowise chatflow its stored document claims, when it
    /// says.
    /// An error says whether Flowise's listing was read.
    async fn observe(&self) -> Result<Observed, (String, bool)> {
        let inner = &self.inner;
        let flowise = inner
            .flowise
            .list()
            .await
            .map_err(|e| (format!("listing Flowise chatflows: {e}"), false))?;
        let api: Api<Lenient<Chatflow>> = match &inner.settings.namespace {
            Some(ns) => Api::namespaced(inner.client.clone(), ns),
            None => Api::all(inner.client.clone()),
        };
        let listed = api
            .list(&ListParams::default())
            .await
            .map_err(|e| (format!("listing Chatflow objects: {e}"), true))?
            .items;
        let (mut chatflows, mut unreadable) = (Vec::new(), Vec::new());
        for cf in listed {
            match cf {
                Lenient::Read(cf) => chatflows.push(Arc::unwrap_or_clone(cf)),
                // Being deleted, it claims nothing (as the index reads it).
                Lenient::Unreadable(bad) if bad.metadata.deletion_timestamp.is_some() => {}
                Lenient::Unreadable(bad) => unreadable.push((
                    format!(
                        "{}/{}",
                        bad.metadata.namespace.as_deref().unwrap_or_default(),
                        bad.metadata.name.as_deref().unwrap_or_default()
                    ),
                    unreadable_claim(&bad).map(|(id, _)| id),
                )),
            }
        }
        Ok((flowise, chatflows, unreadable))
    }

    /// Creates the imported Chatflows; an object that already exists and adopts the same id
    /// counts as done, one that adopts something else is an error.
    async fn import(&self, imports: Vec<Chatflow>) -> (u32, Vec<String>) {
        let (mut added, mut errors) = (0, Vec::new());
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        for cf in imports {
            let ns = cf.namespace().unwrap_or_default();
            let api: Api<Chatflow> = Api::namespaced(self.inner.client.clone(), &ns);
            match api.create(&params, &cf).await {
                Ok(_) => {
                    tracing::info!(chatflow = %format!("{ns}/{}", cf.name_any()), flowise_id = ?cf.spec.flowise_id, "imported");
                    added += 1;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    match api.get(&cf.name_any()).await {
                        Ok(existing) if existing.spec.flowise_id == cf.spec.flowise_id => {}
                        Ok(_) => errors.push(format!(
                            "cannot import Flowise chatflow {}: Chatflow {ns}/{} exists and adopts another chatflow",
                            cf.spec.flowise_id.as_deref().unwrap_or_default(),
                            cf.name_any()
                        )),
                        Err(e) => errors.push(format!("importing {ns}/{}: {e}", cf.name_any())),
                    }
                }
                Err(e) => errors.push(format!("importing {ns}/{}: {e}", cf.name_any())),
            }
        }
        (added, errors)
    }

    fn record(&self, result: &ChatflowSyncResult, flowise_listed: bool) {
        let inner = &self.inner;
        let outcome = if result.errors.is_empty() {
            SyncOutcome::Success
        } else {
            SyncOutcome::Failed
        };
        let finished_at = super::now();
        let previous = inner
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(SyncReport {
                result: result.clone(),
                finished_at,
                outcome,
                flowise_listed,
            });
        // Flowise went away or came back: let every Chatflow say so now, not at its next resync.
        // (Not on an import's error coming or going: that changes no Chatflow's status.)
        if previous.is_some_and(|p| p.flowise_listed != flowise_listed) {
            let _ = inner.reconcile_all.send(());
        }
        if outcome == SyncOutcome::Failed {
            tracing::warn!(errors = ?result.errors, "sync pass failed");
        }
        inner.metrics.controller.sync_pass(
            outcome == SyncOutcome::Success,
            SyncCounts {
                added: result.new_chatflows_added.into(),
                updated: result.existing_chatflows_updated.into(),
                removed: result.chatflows_removed.into(),
                total: result.total_chatflows_synced.into(),
                errors: u64::try_from(result.errors.len()).unwrap_or(u64::MAX),
            },
            finished_at.as_second(),
        );
    }
}

/// Takes out of `imports` those a Chatflow that cannot be read may claim (it still claims what
/// its stored document names: importing that would make a second claim; one whose claim cannot
/// be told holds every import back), and says so in one error.
fn hold_back(
    imports: &mut Vec<Chatflow>,
    unreadable: &[(String, Option<String>)],
) -> Option<String> {
    let mut held = Vec::new();
    let mut claimants = std::collections::BTreeSet::new();
    imports.retain(|import| {
        let id = import.spec.flowise_id.as_deref().unwrap_or_default();
        let claimed_by: Vec<&str> = unreadable
            .iter()
            .filter(|(_, claim)| claim.as_deref().is_none_or(|c| c.eq_ignore_ascii_case(id)))
            .map(|(name, _)| name.as_str())
            .collect();
        if claimed_by.is_empty() {
            return true;
        }
        held.push(id.to_string());
        claimants.extend(claimed_by.into_iter().map(str::to_string));
        false
    });
    if held.is_empty() {
        return None;
    }
    // One error for them all: a thousand chatflows held back by one object are one problem.
    const NAMED: usize = 5;
    let more = held.len().saturating_sub(NAMED);
    held.truncate(NAMED);
    Some(format!(
        "not importing {} Flowise chatflow(s) ({}{}): they may be claimed by Chatflow objects \
         that cannot be read: {}",
        held.len() + more,
        held.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        claimants.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Flowise's listing, the readable Chatflows, and the others with what they claim.
type Observed = (
    Vec<FlowiseChatflow>,
    Vec<Chatflow>,
    Vec<(String, Option<String>)>,
);

/// What a pass found.
#[derive(Debug, Default)]
pub(super) struct SyncPlan {
    /// Chatflow objects to create in the import namespace.
    pub imports: Vec<Chatflow>,
    /// `namespace/name` of Chatflows whose status no longer matches Flowise.
    pub updated: Vec<String>,
    /// `namespace/name` of adopted Chatflows whose chatflow vanished from Flowise.
    pub removed: Vec<String>,
    /// Flowise chatflows in scope.
    pub total: usize,
}

/// Compares Flowise's listing with the Chatflows (pure).
///
/// A Flowise chatflow is claimed by a Chatflow that points at it: by the id in its status or
/// spec, by its `flowiseName`, or by carrying the Chatflow's ownership marker. Only Chatflows the
/// reconciler has seen (with a status) are counted as updated or removed.
pub(super) fn plan(
    flowise: &[FlowiseChatflow],
    chatflows: &[Chatflow],
    import_namespace: Option<&str>,
    name_prefix: Option<&str>,
) -> SyncPlan {
    let by_id: HashMap<&str, &FlowiseChatflow> =
        flowise.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut plan = SyncPlan::default();

    for cf in chatflows {
        let ns = cf.namespace().unwrap_or_default();
        let name = cf.name_any();
        let marker = marker(&ns, &name);
        let status_id = cf.status.as_ref().and_then(|s| s.flowise_id.as_deref());
        let spec_id = cf
            .spec
            .flowise_id
            .as_ref()
            .map(|id| id.to_ascii_lowercase());
        for entry in flowise {
            let points_at = Some(entry.id.as_str()) == status_id
                || Some(&entry.id) == spec_id.as_ref()
                || cf.spec.flowise_name.as_deref() == Some(entry.name.as_str())
                || (cf.spec.definition.is_some() && has_marker(entry, &marker));
            if points_at {
                claimed.insert(entry.id.as_str());
            }
        }

        let (Some(status), Ok(desired)) = (cf.status.as_ref(), validate(cf)) else {
            continue;
        };
        let target: Option<&FlowiseChatflow> = match &desired {
            Desired::AdoptId(id) => by_id.get(id.as_str()).copied(),
            Desired::AdoptName(wanted) => {
                let mut named = flowise.iter().filter(|c| &c.name == wanted);
                match (named.next(), named.next()) {
                    (Some(one), None) => Some(one),
                    (None, _) => None,
                    // Several: the Chatflow reports Conflict; nothing to count.
                    (Some(_), Some(_)) => continue,
                }
            }
            Desired::Own(owned) => status_id
                .and_then(|id| by_id.get(id).copied())
                .or_else(|| flowise.iter().find(|c| has_marker(c, &owned.marker))),
        };
        // An owned definition in conflict (its name taken, its chatflow held by another) is one
        // a reconcile cannot bring in line: counted, it would make every pass reconcile all.
        if matches!(desired, Desired::Own(_))
            && matches!(
                ready_reason(status),
                Some(reason::CONFLICT | reason::FLOWISE_CONFLICT)
            )
        {
            continue;
        }
        let key = format!("{ns}/{name}");
        match (target, &desired) {
            (Some(entry), Desired::Own(owned)) => {
                if !reflects(status, entry) || !changes(owned, entry).is_empty() {
                    plan.updated.push(key);
                }
            }
            (Some(entry), _) => {
                if !reflects(status, entry) {
                    plan.updated.push(key);
                }
            }
            // An owned chatflow that vanished is created again: an update.
            (None, Desired::Own(_)) => {
                if status_id.is_some() {
                    plan.updated.push(key);
                }
            }
            (None, _) => {
                if status_id.is_some() && ready_reason(status) != Some(reason::NOT_FOUND_IN_FLOWISE)
                {
                    plan.removed.push(key);
                }
            }
        }
    }

    let in_scope: Vec<&FlowiseChatflow> = flowise
        .iter()
        .filter(|c| name_prefix.is_none_or(|p| c.name.starts_with(p)))
        .collect();
    plan.total = in_scope.len();
    if let Some(ns) = import_namespace {
        plan.imports = in_scope
            .into_iter()
            .filter(|c| !claimed.contains(c.id.as_str()))
            // Created for a Chatflow that is gone (deleted with `Retain`): it belongs to that
            // Chatflow, which takes it back when created again; an import would take it first.
            .filter(|c| !carries_a_marker(c))
            .map(|c| import_object(ns, c))
            .collect();
    }
    plan
}

fn ready_reason(status: &ChatflowStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

/// Whether `status` says what Flowise says of `entry` (and is not stuck on an earlier failure).
fn reflects(status: &ChatflowStatus, entry: &FlowiseChatflow) -> bool {
    status.flowise_id.as_deref() == Some(entry.id.as_str())
        // Status never carries an empty name or type (`next_status`): a chatflow without one
        // has none in status either.
        && status.flowise_name.as_deref() == Some(entry.name.as_str()).filter(|n| !n.is_empty())
        && status.flow_type.as_deref() == Some(entry.flow_type.as_str()).filter(|t| !t.is_empty())
        && status.deployed == Some(entry.deployed.unwrap_or(false))
        && status.api_key_bound == Some(entry.api_key_bound())
        && !matches!(
            ready_reason(status),
            Some(reason::NOT_FOUND_IN_FLOWISE | reason::FLOWISE_UNREACHABLE)
        )
}

/// The Chatflow that imports `entry` into `namespace`.
fn import_object(namespace: &str, entry: &FlowiseChatflow) -> Chatflow {
    let mut cf = Chatflow::new(
        &import_name(&entry.name, &entry.id),
        ChatflowSpec {
            flowise_id: Some(entry.id.clone()),
            ..Default::default()
        },
    );
    cf.metadata.namespace = Some(namespace.to_string());
    cf.metadata.labels = Some(BTreeMap::from([(
        LABEL_IMPORTED.to_string(),
        "true".to_string(),
    )]));
    cf
}

/// A DNS-safe object name for a Flowise chatflow: its name lower-cased with runs of other
/// characters as `-`, at most 50 characters, then the first 8 characters of its id — stable
/// across passes and distinct for chatflows of the same name.
pub(super) fn import_name(flowise_name: &str, id: &str) -> String {
    let mut base = String::new();
    for ch in flowise_name.chars() {
        if ch.is_ascii_alphanumeric() {
            base.push(ch.to_ascii_lowercase());
        } else if !base.is_empty() && !base.ends_with('-') {
            base.push('-');
        }
    }
    base.truncate(50);
    let base = base.trim_end_matches('-');
    let base = if base.is_empty() { "chatflow" } else { base };
    let suffix: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{base}-{suffix}")
}

#[cfg(test)]
mod tests;
