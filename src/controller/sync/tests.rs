use serde_json::json;

use super::*;

fn entry(id: &str, name: &str, category: Option<&str>) -> FlowiseChatflow {
    FlowiseChatflow {
        id: id.into(),
        name: name.into(),
        flow_type: "CHATFLOW".into(),
        flow_data: r#"{"nodes":[],"edges":[]}"#.into(),
        deployed: Some(true),
        is_public: None,
        apikeyid: None,
        category: category.map(str::to_string),
        created_date: None,
        updated_date: None,
    }
}

fn chatflow(name: &str, spec: serde_json::Value, status: Option<serde_json::Value>) -> Chatflow {
    let mut doc = json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    });
    if let Some(status) = status {
        doc["status"] = status;
    }
    serde_json::from_value(doc).expect("valid Chatflow")
}

fn synced_status(id: &str, name: &str) -> serde_json::Value {
    json!({"flowiseId": id, "flowiseName": name, "type": "CHATFLOW", "deployed": true,
           "apiKeyBound": false,
           "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
}

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";

#[test]
fn unclaimed_chatflows_are_imported_and_claimed_ones_are_not() {
    let flowise = [
        entry(A, "Adopted By Id", None),
        entry(B, "Owned", Some("flowgate:ns/owned")),
        entry(C, "Nobody's", None),
    ];
    let chatflows = [
        chatflow("by-id", json!({"flowiseId": A}), None),
        chatflow(
            "owned",
            json!({"definition": {"flowData": {"nodes": [], "edges": []}}}),
            None,
        ),
    ];
    let plan = plan(&flowise, &chatflows, Some("imports"), None);
    let imported: Vec<(String, Option<String>)> = plan
        .imports
        .iter()
        .map(|c| (c.name_any(), c.spec.flowise_id.clone()))
        .collect();
    assert_eq!(
        imported,
        [("nobody-s-cccccccc".to_string(), Some(C.to_string()))]
    );
    let labels = plan.imports[0].labels();
    assert_eq!(
        labels.get("flowgate.io/imported").map(String::as_str),
        Some("true")
    );
    assert_eq!(plan.imports[0].namespace().as_deref(), Some("imports"));
    assert_eq!(plan.total, 3);
}

#[test]
fn a_chatflow_left_behind_by_its_deleted_owner_is_not_imported() {
    // `owned` was deleted with `Retain`: its chatflow waits for it, in any tag position.
    let flowise = [
        entry(B, "Owned", Some("support;flowgate:ns/owned")),
        entry(C, "Nobody's", Some("support")),
    ];
    let plan = plan(&flowise, &[], Some("imports"), None);
    let imported: Vec<String> = plan.imports.iter().map(|c| c.name_any()).collect();
    assert_eq!(imported, ["nobody-s-cccccccc"]);
    assert_eq!(plan.total, 2, "still counted");
}

#[test]
fn without_an_import_namespace_nothing_is_imported() {
    let plan = plan(&[entry(C, "x", None)], &[], None, None);
    assert!(plan.imports.is_empty());
    assert_eq!(plan.total, 1);
}

#[test]
fn a_name_prefix_limits_import_and_total() {
    let flowise = [entry(A, "team-x bot", None), entry(B, "other", None)];
    let plan = plan(&flowise, &[], Some("ns"), Some("team-x"));
    assert_eq!(plan.total, 1);
    assert_eq!(plan.imports.len(), 1);
}

#[test]
fn an_owned_definition_in_conflict_is_not_counted_as_updated_on_every_pass() {
    // It adopted A, then turned to a definition of A's name: Conflict, A still in status.
    let mut status = synced_status(A, "Their Bot");
    status["conditions"][0]["status"] = json!("False");
    status["conditions"][0]["reason"] = json!("Conflict");
    let cf = chatflow(
        "owned",
        json!({"definition": {"name": "Their Bot", "flowData": {"nodes": [], "edges": []}}}),
        Some(status),
    );
    let flowise = [entry(A, "Their Bot", None)];
    let plan = plan(&flowise, std::slice::from_ref(&cf), None, None);
    assert!(plan.updated.is_empty(), "{:?}", plan.updated);
}

#[test]
fn a_vanished_adopted_chatflow_counts_as_removed_once() {
    let cf = chatflow(
        "imported",
        json!({"flowiseId": A}),
        Some(synced_status(A, "x")),
    );
    let plan_now = plan(&[], std::slice::from_ref(&cf), None, None);
    assert_eq!(plan_now.removed, ["ns/imported"]);
    let mut reported = synced_status(A, "x");
    reported["conditions"][0] = json!({"type": "Ready", "status": "False", "reason": "NotFoundInFlowise",
                                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let cf = chatflow("imported", json!({"flowiseId": A}), Some(reported));
    assert!(
        plan(&[], &[cf], None, None).removed.is_empty(),
        "already reported"
    );
}

#[test]
fn a_changed_chatflow_counts_as_updated_and_an_unchanged_one_does_not() {
    let mut renamed = entry(A, "New Name", None);
    renamed.deployed = Some(true);
    let cf = chatflow(
        "a",
        json!({"flowiseId": A}),
        Some(synced_status(A, "Old Name")),
    );
    assert_eq!(
        plan(&[renamed], std::slice::from_ref(&cf), None, None).updated,
        ["ns/a"]
    );
    let same = entry(A, "Old Name", None);
    let plan = plan(&[same], &[cf], None, None);
    assert!(plan.updated.is_empty() && plan.removed.is_empty());
}

#[test]
fn a_chatflow_without_a_type_is_unchanged_when_its_status_has_none() {
    let mut untyped = entry(A, "Old Row", None);
    untyped.flow_type = String::new();
    let mut status = synced_status(A, "Old Row");
    status.as_object_mut().expect("an object").remove("type");
    let cf = chatflow("a", json!({"flowiseId": A}), Some(status));
    let plan = plan(&[untyped], &[cf], None, None);
    assert!(plan.updated.is_empty(), "{:?}", plan.updated);
}

/// Imports a Chatflow that cannot be read may claim are held back, all in one error.
#[test]
fn imports_an_unreadable_chatflow_may_claim_are_held_back_in_one_error() {
    let ids: Vec<String> = (1..=7)
        .map(|n| format!("{n:08}-0000-4000-8000-000000000000"))
        .collect();
    let flowise: Vec<FlowiseChatflow> = ids.iter().map(|id| entry(id, "x", None)).collect();
    let imports = || plan(&flowise, &[], Some("imports"), None).imports;

    // Its claim cannot be told: every import waits.
    let mut held = imports();
    let error = hold_back(&mut held, &[("ns/bad".into(), None)]).expect("held back");
    assert!(held.is_empty());
    assert!(
        error.starts_with("not importing 7 Flowise chatflow(s) (")
            && error.contains("and 2 more")
            && error.ends_with("cannot be read: ns/bad"),
        "{error}"
    );
    // It claims one: only that one waits.
    let mut held = imports();
    let error = hold_back(&mut held, &[("ns/bad".into(), Some(ids[0].to_uppercase()))]);
    assert_eq!(held.len(), 6);
    assert!(error.is_some_and(|e| e.contains(&ids[0]) && !e.contains("more")));
    let mut all = imports();
    assert_eq!(hold_back(&mut all, &[]), None);
    assert_eq!(all.len(), 7);
}

/// An unnamed chatflow (Flowise takes an empty name) counted as updated would make every
/// pass reconcile every Chatflow.
#[test]
fn a_chatflow_without_a_name_is_unchanged_when_its_status_has_none() {
    let unnamed = entry(A, "", None);
    let mut status = synced_status(A, "");
    status
        .as_object_mut()
        .expect("an object")
        .remove("flowiseName");
    let cf = chatflow("a", json!({"flowiseId": A}), Some(status));
    let plan = plan(&[unnamed], &[cf], None, None);
    assert!(plan.updated.is_empty(), "{:?}", plan.updated);
}

#[test]
fn an_owned_definition_edited_in_flowise_counts_as_updated() {
    let mut edited = entry(A, "owned", Some("flowgate:ns/owned"));
    edited.flow_data = r#"{"nodes":[{"id":"new"}],"edges":[]}"#.into();
    let cf = chatflow(
        "owned",
        json!({"definition": {"flowData": {"nodes": [], "edges": []}}}),
        Some(synced_status(A, "owned")),
    );
    assert_eq!(plan(&[edited], &[cf], None, None).updated, ["ns/owned"]);
}

#[test]
fn import_names_are_dns_safe_stable_and_distinct() {
    assert_eq!(
        import_name("Support Bot (v2)!", A),
        "support-bot-v2-aaaaaaaa"
    );
    assert_eq!(
        import_name("Support Bot (v2)!", B),
        "support-bot-v2-bbbbbbbb"
    );
    assert_eq!(import_name("日本語", C), "chatflow-cccccccc");
    let long = import_name(&"x".repeat(300), A);
    assert!(long.len() <= 63, "{long}");
}

#[test]
fn the_result_has_the_python_field_names() {
    let result = ChatflowSyncResult {
        new_chatflows_added: 1,
        existing_chatflows_updated: 2,
        chatflows_removed: 3,
        total_chatflows_synced: 4,
        errors: vec!["e".into()],
    };
    assert_eq!(
        serde_json::to_value(&result).expect("serializes"),
        json!({"new_chatflows_added": 1, "existing_chatflows_updated": 2, "chatflows_removed": 3,
               "total_chatflows_synced": 4, "errors": ["e"]})
    );
}
