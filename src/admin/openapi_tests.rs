//! The OpenAPI document lists exactly the routes the router knows.

use super::*;
use crate::proxy::routes::{Route, route};
use hyper::Method;

/// A concrete path for a template.
fn sample(path: &str) -> String {
    path.replace("{email}", "bob%2Bx%40example.com")
        .replace(['{', '}'], "")
}

#[test]
fn every_documented_operation_routes() {
    for op in OPERATIONS {
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).expect("method");
        let path = sample(op.path);
        assert!(route(&method, &path).is_ok(), "{} {path}", op.method);
    }
}

#[test]
fn every_route_is_documented() {
    // One example per route variant; the match below fails to compile when a variant is added.
    let documented: Vec<Route> = OPERATIONS
        .iter()
        .filter_map(|op| {
            let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).ok()?;
            route(&method, &sample(op.path)).ok()
        })
        .collect();
    let kinds: std::collections::BTreeSet<String> = documented.iter().map(kind).collect();
    let all = [
        "ListChatflows",
        "GetChatflow",
        "Predict",
        "ChatflowStreaming",
        "ChatbotConfig",
        "AbortChat",
        "CompatListChatflows",
        "CompatGetChatflow",
        "CompatPredict",
        "Authenticate",
        "Refresh",
        "Credits",
        "OwnCreditUsage",
        "OpenApi",
        "Health",
        "AddUsers",
        "AddUsersByEmail",
        "AddUser",
        "AddUserByEmail",
        "RemoveUser",
        "RemoveUserByEmail",
        "BulkAddUsers",
        "BulkAddUsersByEmail",
        "Sync",
        "AdminList",
        "Stats",
        "AdminGet",
        "Delete",
        "ListUsers",
        "CreditUsage",
        "AdjustCredits",
        "CreditBalances",
    ];
    for name in all {
        assert!(
            kinds.contains(name),
            "{name} is not in the OpenAPI document"
        );
    }
}

fn kind(route: &Route) -> String {
    use crate::admin::routes::AdminRoute as A;
    match route {
        Route::ListChatflows => "ListChatflows",
        Route::GetChatflow(_) => "GetChatflow",
        Route::Predict(_) => "Predict",
        Route::ChatflowStreaming(_) => "ChatflowStreaming",
        Route::ChatbotConfig(_) => "ChatbotConfig",
        Route::AbortChat { .. } => "AbortChat",
        Route::CompatListChatflows => "CompatListChatflows",
        Route::CompatGetChatflow(_) => "CompatGetChatflow",
        Route::CompatPredict => "CompatPredict",
        Route::Authenticate => "Authenticate",
        Route::Refresh => "Refresh",
        Route::Credits => "Credits",
        Route::CreditUsage => "OwnCreditUsage",
        Route::OpenApi => "OpenApi",
        Route::Health => "Health",
        Route::Admin(a) => match a {
            A::AddUsers => "AddUsers",
            A::AddUsersByEmail => "AddUsersByEmail",
            A::AddUser { .. } => "AddUser",
            A::AddUserByEmail { .. } => "AddUserByEmail",
            A::RemoveUser { .. } => "RemoveUser",
            A::RemoveUserByEmail { .. } => "RemoveUserByEmail",
            A::BulkAddUsers(_) => "BulkAddUsers",
            A::BulkAddUsersByEmail(_) => "BulkAddUsersByEmail",
            A::Sync => "Sync",
            A::ListChatflows => "AdminList",
            A::Stats => "Stats",
            A::GetChatflow(_) => "AdminGet",
            A::DeleteChatflow(_) => "Delete",
            A::ListUsers(_) => "ListUsers",
            A::CreditUsage => "CreditUsage",
            A::AdjustCredits => "AdjustCredits",
            A::CreditBalances => "CreditBalances",
        },
    }
    .to_string()
}

#[test]
fn the_document_references_only_defined_schemas() {
    let doc = document();
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| *c != '"').collect();
        assert!(
            schemas.contains_key(&name),
            "{name} is referenced but not defined"
        );
    }
}

/// What `credits::adjust` refuses, the document says: a generated client (and schemathesis)
/// sends what the server takes, and the key that makes a retry safe.
#[test]
fn an_adjustment_is_documented_as_the_server_checks_it() {
    let doc = document();
    let request = &doc["components"]["schemas"]["CreditAdjustmentRequest"]["properties"];
    assert_eq!(request["credits"]["minimum"], -1_000_000_000_000i64);
    assert_eq!(request["credits"]["maximum"], 1_000_000_000_000i64);
    assert_eq!(request["credits"]["not"], serde_json::json!({"enum": [0]}));
    let schema = &doc["components"]["schemas"]["CreditAdjustmentRequest"];
    let body = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"policy": "team-a/daily", "credits": 5});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    for (extra, taken) in [
        (
            serde_json::json!({"subject": "user:alice@example.com"}),
            true,
        ),
        (serde_json::json!({"subject": "sa:team-a/bot"}), true),
        // A Shared policy's budget: left out, empty or `*`.
        (serde_json::json!({"subject": "*"}), true),
        (serde_json::json!({"subject": ""}), true),
        (serde_json::json!({"subject": "alice"}), false),
        (serde_json::json!({"subject": "user:al\u{1}ice"}), false),
        (serde_json::json!({"subject": "sa:team-a/"}), false),
        (serde_json::json!({"reason": "refund for INC-42"}), true),
        (serde_json::json!({"reason": "a\nb"}), false),
        (serde_json::json!({"reason": "x".repeat(501)}), false),
    ] {
        let body = body(extra);
        assert_eq!(jsonschema::is_valid(schema, &body), taken, "{body}");
    }
    let parameters = doc["paths"]["/api/admin/credits/adjustments"]["post"]["parameters"]
        .as_array()
        .expect("parameters");
    assert!(
        parameters
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{parameters:?}"
    );
}

#[test]
fn flowises_own_refusals_of_a_prediction_are_documented_as_passed_on() {
    let doc = document();
    let responses = &doc["paths"]["/api/v1/prediction/{id}"]["post"]["responses"];
    let passed_on = responses["4XX"]["description"].as_str().expect("4XX");
    assert!(
        passed_on.contains("Flowise's status and body"),
        "{passed_on}"
    );
    // flowgate's own refusals keep their envelope.
    assert_eq!(
        responses["402"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorEnvelope"
    );
}

/// The text filters of the usage and balance reads say what they refuse (control characters),
/// so a client, and schemathesis, does not send what is answered 400.
#[test]
fn usage_and_balance_filters_refuse_control_characters_in_the_document_too() {
    let doc = document();
    for (path, name) in [
        ("/api/admin/credits/balances", "policy"),
        ("/api/admin/credits/balances", "subject"),
        ("/api/admin/credits/usage", "subject"),
        ("/api/admin/credits/usage", "chatflow"),
        ("/api/admin/credits/usage", "policy"),
        ("/credits/usage", "chatflow"),
        ("/credits/usage", "policy"),
    ] {
        let parameters = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let schema = &parameters
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} {name}"))["schema"];
        assert_eq!(schema["pattern"], NO_CONTROL, "{path} {name}");
    }
    // The pattern refuses what `text_param` refuses (`char::is_control`), and takes the rest.
    let schema = serde_json::json!({"type": "string", "pattern": NO_CONTROL});
    for c in [
        '\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}', 'a', '/', '\u{a0}', 'é', '😀',
    ] {
        let text = format!("team-a/x{c}y");
        assert_eq!(
            jsonschema::is_valid(&schema, &serde_json::json!(text)),
            !c.is_control(),
            "{c:?}"
        );
    }
}
