//! Chatflows rendered from the index: Flowise's JSON shape for `/api/v1/chatflows`, the Python
//! service's `Chatflow` model for `/chatflows`.

use serde_json::{Value, json};

use crate::index::ChatflowEntry;

/// One chatflow in Flowise's shape (the fields Flowise's own listing has that the index knows;
/// `flowData` and the API key binding are never shown to callers).
pub fn flowise_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    json!({
        "id": rule.flowise_id,
        "name": rule.flowise_name.clone().unwrap_or_else(|| rule.name.clone()),
        "deployed": rule.deployed.unwrap_or(false),
        "isPublic": false,
        "type": rule.flow_type_or_default(),
        "category": null,
        "createdDate": rule.created.map(|t| t.to_string()),
        "updatedDate": rule.updated.or(rule.created).map(|t| t.to_string()),
    })
}

/// One chatflow in the Python service's `Chatflow` model.
pub fn compat_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    let status = if rule.suspended {
        "suspended"
    } else if rule.ready {
        "active"
    } else {
        "inactive"
    };
    json!({
        "id": rule.name,
        "flowise_id": rule.flowise_id,
        "name": rule.flowise_name.clone().unwrap_or_else(|| rule.name.clone()),
        "namespace": rule.namespace,
        "description": null,
        "status": status,
        "type": rule.flow_type_or_default(),
        "deployed": rule.deployed.unwrap_or(false),
        "is_public": false,
        "created_at": rule.created.map(|t| t.to_string()),
        "updated_at": rule.updated.or(rule.created).map(|t| t.to_string()),
    })
}
