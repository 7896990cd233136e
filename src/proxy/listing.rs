//! Chatflows rendered from the index: Flowise's JSON shape for `/api/v1/chatflows`, and the Python
//! service's (Flowise's shape with its admin model's keys beside) for `/chatflows`.

use serde_json::{Value, json};

use crate::index::ChatflowEntry;

/// One chatflow in Flowise's shape (the fields Flowise's own listing has that the index knows;
/// `flowData` and the API key binding are never shown to callers).
pub fn flowise_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    let (created, updated) = rule.dates();
    json!({
        "id": rule.flowise_id,
        "name": rule.shown_name(),
        "deployed": rule.deployed.unwrap_or(false),
        "isPublic": false,
        "type": rule.flow_type_or_default(),
        "category": null,
        "createdDate": created,
        "updatedDate": updated,
    })
}

/// One chatflow as the Python service's `/chatflows` showed it. That service passed Flowise's
/// listing through, so these are Flowise's keys (`id` the Flowise id, `isPublic`,
/// `createdDate`, ...), with the admin API's `Chatflow` model's snake_case keys beside them and
/// `chatflow`, the Chatflow object's name. A chatflow not (yet) found in Flowise has that name as
/// its `id`: `/chatflows/{id}` and `/chat/predict` take either.
pub fn compat_shape(cf: &ChatflowEntry) -> Value {
    let rule = &cf.rule;
    let status = if rule.suspended {
        "suspended"
    } else if rule.ready {
        "active"
    } else {
        "inactive"
    };
    let (created, updated) = rule.dates();
    let mut shape = flowise_shape(cf);
    if let Value::Object(fields) = &mut shape {
        if rule.flowise_id.is_none() {
            fields.insert("id".into(), json!(rule.name));
        }
        fields.extend([
            ("chatflow".into(), json!(rule.name)),
            ("flowise_id".into(), json!(rule.flowise_id)),
            ("namespace".into(), json!(rule.namespace)),
            ("description".into(), Value::Null),
            ("status".into(), json!(status)),
            ("is_public".into(), json!(false)),
            ("created_at".into(), json!(created)),
            ("updated_at".into(), json!(updated)),
        ]);
    }
    shape
}
