//! Chatflows as the Python service's admin API shows them, and their removal from Kubernetes.
//! Deleting never deletes the chatflow in Flowise: an owned Chatflow with `deletionPolicy:
//! Delete` is first switched to `Retain`.

use std::sync::Arc;

use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::access::kube_error;
use super::models::{ChatflowModel, ChatflowStats, MessageResponse};
use crate::controller::{SyncOutcome, SyncReport};
use crate::crd::{Chatflow, DeletionPolicy};
use crate::index::ChatflowEntry;
use crate::proxy::ProxyError;

/// `active` (Ready and not suspended) or `inactive`. The index holds no deleted Chatflows: a
/// deleted object is gone, so `deleted` counts are always 0 and `include_deleted` changes nothing.
fn status(cf: &ChatflowEntry) -> &'static str {
    if cf.rule.ready && !cf.rule.suspended {
        "active"
    } else {
        "inactive"
    }
}

/// One chatflow in the `Chatflow` model.
pub fn model(cf: &ChatflowEntry) -> ChatflowModel {
    let rule = &cf.rule;
    ChatflowModel {
        id: format!("{}/{}", rule.namespace, rule.name),
        flowise_id: rule.flowise_id.clone(),
        name: rule.name.clone(),
        namespace: rule.namespace.clone(),
        description: rule.flowise_name.clone(),
        status: status(cf).into(),
        created_at: rule.created.map(|t| t.to_string()),
        updated_at: rule.updated.or(rule.created).map(|t| t.to_string()),
        is_public: rule.deployed.unwrap_or(false),
    }
}

/// The listing.
pub fn list(chatflows: &[&Arc<ChatflowEntry>], _include_deleted: bool) -> Vec<ChatflowModel> {
    chatflows.iter().map(|cf| model(cf)).collect()
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
        deleted_chatflows: 0,
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
/// chatflow in Flowise stays.
pub async fn delete(client: &Client, cf: &ChatflowEntry) -> Result<MessageResponse, ProxyError> {
    let (ns, name) = (&cf.rule.namespace, &cf.rule.name);
    let api: Api<Chatflow> = Api::namespaced(client.clone(), ns);
    let gone = || ProxyError::NotFoundDetail(format!("Chatflow {ns}/{name} no longer exists"));
    let Some(current) = api.get_opt(name).await.map_err(kube_error)? else {
        return Err(gone());
    };
    if current.spec.deletion_policy == DeletionPolicy::Delete {
        let retain = serde_json::json!({"spec": {"deletionPolicy": "Retain"}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&retain))
            .await
            .map_err(kube_error)?;
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(MessageResponse {
            message: format!(
                "Chatflow {ns}/{name} deleted from Kubernetes; the chatflow in Flowise is kept."
            ),
        }),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(gone()),
        Err(e) => Err(kube_error(e)),
    }
}
