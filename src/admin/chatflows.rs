//! Chatflows as the Python service's admin API shows them, and their removal from Kubernetes.
//! Deleting never deletes the chatflow in Flowise: an owned Chatflow with `deletionPolicy:
//! Delete` is first switched to `Retain`.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::access::{self, kube_error};
use super::models::{ChatflowModel, ChatflowStats, MessageResponse};
use crate::controller::{SyncOutcome, SyncReport};
use crate::crd::{Chatflow, ChatflowAccess, DeletionPolicy};
use crate::index::ChatflowEntry;
use crate::proxy::ProxyError;

/// `deleted` (its chatflow vanished from Flowise: `NotFoundInFlowise`, the Python service's
/// "removed"), `active` (Ready and not suspended) or `inactive`.
fn status(cf: &ChatflowEntry) -> &'static str {
    if cf.rule.gone_from_flowise {
        "deleted"
    } else if cf.rule.ready && !cf.rule.suspended {
        "active"
    } else {
        "inactive"
    }
}

/// One chatflow in the `Chatflow` model.
pub fn model(cf: &ChatflowEntry) -> ChatflowModel {
    let rule = &cf.rule;
    let (created_at, updated_at) = rule.dates();
    ChatflowModel {
        id: format!("{}/{}", rule.namespace, rule.name),
        flowise_id: rule.flowise_id.clone(),
        name: rule.shown_name().to_string(),
        chatflow: rule.name.clone(),
        namespace: rule.namespace.clone(),
        description: None,
        status: status(cf).into(),
        created_at,
        updated_at,
        is_public: false,
        deployed: rule.deployed.unwrap_or(false),
    }
}

/// The listing; chatflows gone from Flowise only with `include_deleted`.
pub fn list(chatflows: &[&Arc<ChatflowEntry>], include_deleted: bool) -> Vec<ChatflowModel> {
    chatflows
        .iter()
        .filter(|cf| include_deleted || !cf.rule.gone_from_flowise)
        .map(|cf| model(cf))
        .collect()
}

/// Counts, and this replica's last sync pass.
pub fn stats(chatflows: &[&Arc<ChatflowEntry>], last: Option<SyncReport>) -> ChatflowStats {
    let count = |want: &str| {
        u32::try_from(chatflows.iter().filter(|cf| status(cf) == want).count()).unwrap_or(u32::MAX)
    };
    ChatflowStats {
        total_chatflows: u32::try_from(chatflows.len()).unwrap_or(u32::MAX),
        active_chatflows: count("active"),
        inactive_chatflows: count("inactive"),
        deleted_chatflows: count("deleted"),
        last_sync_status: last.as_ref().map(|r| {
            match r.outcome {
                SyncOutcome::Success => "success",
                SyncOutcome::Failed => "failed",
            }
            .to_string()
        }),
        last_sync_time: last.map(|r| r.finished_at.to_string()),
    }
}

/// Deletes the Chatflow object, switching `deletionPolicy: Delete` to `Retain` first so the
/// chatflow in Flowise stays. Runs to its end in a task of its own: a client that hangs up
/// between the switch and the delete must not leave the object switched and not deleted.
pub async fn delete(
    client: &Client,
    cf: &ChatflowEntry,
    imports: bool,
) -> Result<MessageResponse, ProxyError> {
    let (client, ns, name) = (
        client.clone(),
        cf.rule.namespace.clone(),
        cf.rule.name.clone(),
    );
    // A chatflow Flowise still has and no Chatflow claims once this one is gone would be
    // imported by the next sync pass (unsuspended, into the import namespace, with its grants):
    // an imported Chatflow's delete would not last, and an adopted one's would hand its
    // chatflow to whoever the import namespace grants. Only one Flowise is known not to have is
    // let go; not Ready for another reason (suspended, Flowise unreachable) says nothing about
    // that. One created from a definition carries its marker, which no pass imports.
    let reimported = imports && !cf.rule.gone_from_flowise;
    tokio::spawn(async move { delete_now(&client, &ns, &name, reimported).await })
        .await
        .map_err(|e| ProxyError::Internal(format!("the delete stopped: {e}")))?
}

/// Whether `cf`'s chatflow carries its ownership marker, which no sync pass imports: its spec is
/// a `definition`, and its status says that spec as it is found or created the chatflow it
/// records (`Synced` at its generation). A definition whose status still names a chatflow it
/// adopted before (a name taken, Flowise away) is not vouched for.
fn owns_its_chatflow(cf: &Chatflow) -> bool {
    cf.spec.definition.is_some()
        && cf.status.as_ref().is_some_and(|status| {
            status.conditions.iter().any(|c| {
                c.type_ == crate::crd::conditions::READY
                    && c.reason == crate::crd::conditions::reason::SYNCED
                    && c.observed_generation == cf.metadata.generation
            })
        })
}

async fn delete_now(
    client: &Client,
    ns: &str,
    name: &str,
    reimported: bool,
) -> Result<MessageResponse, ProxyError> {
    let api: Api<Chatflow> = Api::namespaced(client.clone(), ns);
    let gone = || ProxyError::NotFoundDetail(format!("Chatflow {ns}/{name} no longer exists"));
    // The switch to Retain and the delete must see the same object: a GitOps sync putting
    // `Delete` back in between (or a new object of that name) would otherwise have its chatflow
    // deleted in Flowise. Both are conditional on the version read; a race is retried.
    let mut attempts = 0;
    // The object this call switched to Retain (its uid and generation then), to switch back if
    // it cannot be deleted.
    let mut switched: Option<(Option<String>, Option<i64>)> = None;
    loop {
        attempts += 1;
        let Some(mut current) = api.get_opt(name).await.map_err(kube_error)? else {
            return Err(gone());
        };
        let imported = current
            .labels()
            .get(crate::crd::LABEL_IMPORTED)
            .is_some_and(|v| v == "true");
        if reimported && imported {
            return Err(ProxyError::Conflict(format!(
                "Chatflow {ns}/{name} was imported from Flowise, which still has its chatflow \
                 (as far as flowgate knows): the next sync pass (FLOWGATE_IMPORT_NAMESPACE) \
                 would import it again. Delete the chatflow in Flowise, or claim it with a \
                 Chatflow of your own"
            )));
        }
        if reimported && !owns_its_chatflow(&current) {
            return Err(ProxyError::Conflict(format!(
                "Chatflow {ns}/{name} names a chatflow Flowise still has that flowgate did not \
                 create for it (as far as flowgate knows): once it is gone the next sync pass \
                 would import that chatflow into FLOWGATE_IMPORT_NAMESPACE, for whoever that \
                 namespace grants. Delete the chatflow in Flowise first, or let another Chatflow \
                 claim it and delete this one with kubectl"
            )));
        }
        if current.spec.deletion_policy == DeletionPolicy::Delete {
            let retain = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"deletionPolicy": "Retain"},
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&retain))
                .await
            {
                Ok(patched) => {
                    switched = Some((patched.metadata.uid.clone(), patched.metadata.generation));
                    current = patched;
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(gone()),
                Err(e) => return Err(kube_error(e)),
            }
        }
        let exactly = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: current.metadata.uid.clone(),
                resource_version: current.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &exactly).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(gone()),
            Err(e) => {
                if let Some((uid, generation)) = switched {
                    switch_back(&api, ns, name, uid, generation).await;
                }
                return Err(kube_error(e));
            }
        }
    }
    let access = remove_own_access(client, ns, name).await;
    Ok(MessageResponse {
        message: format!(
            "Chatflow {ns}/{name} deleted from Kubernetes{access}; the chatflow in Flowise is kept."
        ),
    })
}

/// Puts `deletionPolicy: Delete` back on a Chatflow this call switched to `Retain` and then
/// could not delete (a webhook refused, the API server failed): only while it is the same
/// object with the same spec (uid and generation as the switch left them, still `Retain`), so
/// a change made since is never overwritten. A failure is logged: the object then keeps
/// `Retain`, and a later delete keeps its chatflow in Flowise.
async fn switch_back(
    api: &Api<Chatflow>,
    ns: &str,
    name: &str,
    uid: Option<String>,
    generation: Option<i64>,
) {
    let restored = async {
        for _ in 0..3 {
            let Some(current) = api.get_opt(name).await? else {
                // Deleted meanwhile: nothing is left to switch back.
                return Ok(true);
            };
            let same = current.metadata.uid == uid
                && current.metadata.generation == generation
                && current.spec.deletion_policy == DeletionPolicy::Retain;
            if !same {
                return Ok(false);
            }
            // A status write since (the controller's) changes the version, not the generation.
            let back = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"deletionPolicy": "Delete"},
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&back))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    };
    let restored = match restored.await {
        Ok(true) => Ok(()),
        Ok(false) => Err("changed since the switch".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = restored {
        tracing::warn!(%error, chatflow = %format!("{ns}/{name}"),
            "a Chatflow switched to Retain for a delete that failed could not be switched back; \
             it keeps Retain");
    }
}

/// Deletes the admin API's own grants for a deleted chatflow (`admin-api-<name>`, only when it
/// carries the admin API's label and names this chatflow alone: GitOps objects are never
/// touched), as it was read. Says what it removed. Kubernetes also deletes it with the
/// Chatflow that owns it, so a failure here is logged, not the delete's answer: the Chatflow is
/// gone either way.
async fn remove_own_access(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<ChatflowAccess> = Api::namespaced(client.clone(), ns);
    let object = access::object_name(name);
    let removed = async {
        match api.get_opt(&object).await? {
            Some(found) if access::check_own(&found, ns, name).is_ok() => {
                let exactly = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: found.metadata.uid.clone(),
                        resource_version: found.metadata.resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&object, &exactly).await {
                    Ok(_) => Ok(true),
                    // Gone, or changed since it was read (its owner's deletion collects it).
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(false),
        }
    };
    match removed.await {
        Ok(true) => format!(" with its admin API grants ({object})"),
        Ok(false) => String::new(),
        Err(error) => {
            tracing::warn!(%error, access = %format!("{ns}/{object}"),
                "the admin API's grants of a deleted Chatflow were not removed; Kubernetes \
                 collects them with it");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Resources, compile};

    fn chatflow(name: &str, ready: &str, reason: &str) -> Arc<Chatflow> {
        Arc::new(
            serde_saphyr::from_str(&format!(
                "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: {name}, namespace: t}}\n\
                 spec: {{flowiseName: {name}}}\nstatus: {{conditions: [{{type: Ready, status: '{ready}', reason: {reason}, \
                 message: m, lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}\n"
            ))
            .expect("fixture"),
        )
    }

    /// Only a definition whose status says that spec found or created its chatflow (marked, so
    /// no sync pass imports it) is deleted with imports on without more ado.
    #[test]
    fn only_a_definition_synced_at_its_generation_owns_its_chatflow() {
        let owned = |spec: &str, reason: &str, observed: i64| {
            let cf: Chatflow = serde_saphyr::from_str(&format!(
                "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\n\
                 metadata: {{name: bot, namespace: t, generation: 2}}\nspec: {spec}\n\
                 status: {{flowiseId: x, conditions: [{{type: Ready, status: 'False', reason: {reason}, \
                 message: m, lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: {observed}}}]}}\n"
            ))
            .expect("fixture");
            owns_its_chatflow(&cf)
        };
        let definition =
            "{definition: {name: Bot, type: AGENTFLOW, flowData: {nodes: [], edges: []}}}";
        assert!(owned(definition, "Synced", 2));
        assert!(
            !owned(definition, "Synced", 1),
            "adopted before the spec turned"
        );
        assert!(
            !owned(definition, "FlowiseConflict", 2),
            "its name taken: the id is old"
        );
        assert!(!owned("{flowiseId: x}", "Synced", 2), "adopted");
    }

    #[test]
    fn chatflows_gone_from_flowise_are_deleted_and_listed_only_on_request() {
        let snap = compile(&Resources {
            chatflows: vec![
                chatflow("live", "True", "Synced"),
                chatflow("down", "False", "FlowiseUnreachable"),
                chatflow("gone", "False", "NotFoundInFlowise"),
            ],
            ..Default::default()
        });
        let all: Vec<&Arc<ChatflowEntry>> = snap.chatflows().iter().collect();
        let names = |list: Vec<ChatflowModel>| list.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(list(&all, false)), ["live", "down"]);
        assert_eq!(names(list(&all, true)), ["live", "down", "gone"]);
        let counts = stats(&all, None);
        assert_eq!(
            (
                counts.total_chatflows,
                counts.active_chatflows,
                counts.inactive_chatflows,
                counts.deleted_chatflows
            ),
            (3, 1, 1, 1)
        );
    }
}
