//! `GET /openapi.json`: the whole HTTP API as an OpenAPI 3.0 document. Component schemas are
//! generated with schemars from the Rust types the admin API serializes (and from small
//! mirror types for the proxy's answers, which are checked against real answers in
//! `tests/admin.rs`); the operations are listed in [`OPERATIONS`].

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::models::{
    AddUsersToChatflowByEmailRequest, AddUsersToChatflowRequest, BulkAddUsersByEmailRequest,
    BulkAddUsersRequest, ChatflowModel, ChatflowStats, ChatflowSyncResult, ChatflowUser,
    CreditAdjustment, CreditAdjustmentRequest, CreditUsageRecord, MessageResponse, PolicyBalances,
    UserChatflowResponse,
};
use super::shapes::{
    AbortResponse, AuthenticateRequest, ChatbotConfig, CompatChatflow, CompatPredictRequest,
    CompatPredictResponse, CreditsResponse, ErrorEnvelope, FlowiseChatflow, FlowiseChatflowList,
    Health, PredictionRequest, PredictionResponse, RefreshRequest, StreamingCapability,
    TokenResponse,
};

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Needs a bearer token.
    pub auth: bool,
    pub request: Option<&'static str>,
    /// Schema name of a `multipart/form-data` body it takes besides the JSON one.
    pub form: Option<&'static str>,
    /// Schema name of the 200 answer; `[Name]` for a list of them.
    pub response: &'static str,
    /// Error statuses the operation answers with.
    pub errors: &'static [u16],
    /// Answers `text/event-stream` too (a prediction with `streaming: true`).
    pub streams: bool,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    response: &'static str,
    errors: &'static [u16],
) -> Operation {
    Operation {
        method,
        path,
        summary,
        auth: true,
        request,
        form: None,
        response,
        errors,
        streams: false,
    }
}

const USERS: Option<&str> = Some("AddUsersToChatflowRequest");
const EMAILS: Option<&str> = Some("AddUsersToChatflowByEmailRequest");
const BULK_USERS: Option<&str> = Some("BulkAddUsersRequest");
const BULK_EMAILS: Option<&str> = Some("BulkAddUsersByEmailRequest");
const ADMIN_ERRORS: &[u16] = &[400, 401, 403, 404, 409, 502, 503];
const READ_ERRORS: &[u16] = &[401, 403, 404];

/// Every route of the router, with its schemas.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/api/v1/chatflows",
        "Chatflows the caller may use (Flowise shape)",
        None,
        "FlowiseChatflowList",
        &[400, 401],
    ),
    op(
        "get",
        "/api/v1/chatflows/{id}",
        "One chatflow (Flowise shape)",
        None,
        "FlowiseChatflow",
        READ_ERRORS,
    ),
    Operation {
        auth: false,
        ..op(
            "get",
            "/api/v1/chatflows-streaming/{id}",
            "Whether Flowise streams the chatflow's answers, as Flowise says (asked by the Flowise SDKs without credentials)",
            None,
            "StreamingCapability",
            &[403, 404, 502, 503, 504],
        )
    },
    Operation {
        streams: true,
        form: Some("PredictionForm"),
        ..op(
            "post",
            "/api/v1/prediction/{id}",
            "Prediction, forwarded to Flowise: a JSON body, or multipart/form-data with files; \
             answered in JSON, or SSE when streaming",
            Some("PredictionRequest"),
            "PredictionResponse",
            &[400, 401, 402, 403, 404, 409, 413, 429, 502, 503, 504],
        )
    },
    op(
        "get",
        "/api/v1/public-chatbotConfig/{id}",
        "The chat window's settings of a granted chatflow (forwarded to Flowise)",
        None,
        "ChatbotConfig",
        &[401, 403, 404, 502, 503, 504],
    ),
    op(
        "put",
        "/api/v1/chatmessage/abort/{id}/{chatId}",
        "Stop generating in one of the caller's own chats (forwarded to Flowise)",
        None,
        "AbortResponse",
        &[401, 403, 404, 502, 503, 504],
    ),
    op(
        "get",
        "/chatflows",
        "Chatflows the caller may use (Python service shape)",
        None,
        "[CompatChatflow]",
        &[401],
    ),
    op(
        "get",
        "/chatflows/{id}",
        "One chatflow by name or Flowise id (Python service shape)",
        None,
        "CompatChatflow",
        &[401, 403, 404, 409],
    ),
    Operation {
        streams: true,
        ..op(
            "post",
            "/chat/predict",
            "The Python service's prediction",
            Some("CompatPredictRequest"),
            "CompatPredictResponse",
            &[400, 401, 402, 403, 404, 409, 413, 429, 502, 503, 504],
        )
    },
    Operation {
        auth: false,
        ..op(
            "post",
            "/chat/authenticate",
            "Password grant at the configured token endpoint",
            Some("AuthenticateRequest"),
            "TokenResponse",
            &[400, 401, 404, 502, 503, 504],
        )
    },
    Operation {
        auth: false,
        ..op(
            "post",
            "/chat/refresh",
            "Refresh-token grant at the configured token endpoint",
            Some("RefreshRequest"),
            "TokenResponse",
            &[400, 401, 404, 502, 503, 504],
        )
    },
    op(
        "get",
        "/credits",
        "The caller's credit balances",
        None,
        "CreditsResponse",
        &[401, 503],
    ),
    op(
        "get",
        "/credits/usage",
        "The caller's own credits usage log, newest first",
        None,
        "[CreditUsageRecord]",
        &[400, 401, 503],
    ),
    Operation {
        auth: false,
        ..op("get", "/openapi.json", "This document", None, "", &[])
    },
    Operation {
        auth: false,
        ..op(
            "get",
            "/health",
            "The proxy answers (the Python service's health check)",
            None,
            "Health",
            &[],
        )
    },
    op(
        "post",
        "/api/admin/chatflows/add-users",
        "Add users (subject values) to a chatflow",
        USERS,
        "[UserChatflowResponse]",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/add-users-by-email",
        "Add users by email to a chatflow",
        EMAILS,
        "[UserChatflowResponse]",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/{chatflow_id}/users/{user_id}",
        "Add one user",
        None,
        "UserChatflowResponse",
        ADMIN_ERRORS,
    ),
    op(
        "delete",
        "/api/admin/chatflows/{chatflow_id}/users/{user_id}",
        "Remove one user (404: no link; 409: granted by a GitOps ChatflowAccess)",
        None,
        "MessageResponse",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/{chatflow_id}/users/email/{email}",
        "Add one user by email",
        None,
        "UserChatflowResponse",
        ADMIN_ERRORS,
    ),
    op(
        "delete",
        "/api/admin/chatflows/{chatflow_id}/users/email/{email}",
        "Remove one user by email (404: no link; 409: granted by a GitOps ChatflowAccess)",
        None,
        "MessageResponse",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/{flowise_id}/users/bulk",
        "Add users to the chatflow of the path",
        BULK_USERS,
        "[UserChatflowResponse]",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/{flowise_id}/users/email/bulk",
        "Add users by email to the chatflow of the path",
        BULK_EMAILS,
        "[UserChatflowResponse]",
        ADMIN_ERRORS,
    ),
    op(
        "post",
        "/api/admin/chatflows/sync",
        "Run a Flowise sync pass now (global admin)",
        None,
        "ChatflowSyncResult",
        &[401, 403, 404],
    ),
    op(
        "get",
        "/api/admin/chatflows",
        "Chatflows the caller administers",
        None,
        "[ChatflowModel]",
        &[400, 401, 403, 404],
    ),
    op(
        "get",
        "/api/admin/chatflows/stats",
        "Counts and the last sync pass",
        None,
        "ChatflowStats",
        &[401, 403, 404],
    ),
    op(
        "get",
        "/api/admin/chatflows/{flowise_id}",
        "One chatflow",
        None,
        "ChatflowModel",
        READ_ERRORS,
    ),
    op(
        "delete",
        "/api/admin/chatflows/{flowise_id}",
        "Delete the Chatflow object (never the chatflow in Flowise)",
        None,
        "MessageResponse",
        &[401, 403, 404, 409, 502, 503],
    ),
    op(
        "get",
        "/api/admin/chatflows/{flowise_id}/users",
        "Users granted the chatflow",
        None,
        "[ChatflowUser]",
        READ_ERRORS,
    ),
    op(
        "get",
        "/api/admin/credits/usage",
        "The credits usage log, newest first (global admin; a chatflow's admin with `chatflow`)",
        None,
        "[CreditUsageRecord]",
        &[400, 401, 403, 404, 503],
    ),
    op(
        "post",
        "/api/admin/credits/adjustments",
        "Give credits to (or take them from) one budget in its current period (global admin; \
         `Idempotency-Key` applies it once)",
        Some("CreditAdjustmentRequest"),
        "CreditAdjustment",
        ADMIN_ERRORS,
    ),
    op(
        "get",
        "/api/admin/credits/balances",
        "One policy's budgets in its current period, the most used first (global admin, or an \
         admin of every chatflow it applies to)",
        None,
        "PolicyBalances",
        &[400, 401, 403, 404, 503],
    ),
];

fn schemas() -> Map<String, Value> {
    let mut generator: SchemaGenerator = SchemaSettings::openapi3().into_generator();
    macro_rules! add {
        ($($t:ty),* $(,)?) => { $( let _ = generator.subschema_for::<$t>(); )* };
    }
    add!(
        ErrorEnvelope,
        FlowiseChatflow,
        FlowiseChatflowList,
        CompatChatflow,
        StreamingCapability,
        ChatbotConfig,
        AbortResponse,
        Health,
        PredictionRequest,
        PredictionResponse,
        CompatPredictRequest,
        CompatPredictResponse,
        AuthenticateRequest,
        RefreshRequest,
        TokenResponse,
        CreditsResponse,
        AddUsersToChatflowRequest,
        AddUsersToChatflowByEmailRequest,
        BulkAddUsersRequest,
        BulkAddUsersByEmailRequest,
        UserChatflowResponse,
        MessageResponse,
        ChatflowModel,
        ChatflowStats,
        ChatflowSyncResult,
        ChatflowUser,
        CreditUsageRecord,
        CreditAdjustmentRequest,
        CreditAdjustment,
        PolicyBalances,
    );
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert("PredictionForm".into(), prediction_form());
    schemas
}

fn reference(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(item) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        }
        None if name.is_empty() => json!({"type": "object"}),
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

fn operation(op: &Operation) -> Value {
    let mut responses = Map::new();
    let mut ok = json!({"description": "OK", "content": {"application/json": {"schema": reference(op.response)}}});
    if op.streams {
        // Each server-sent event of Flowise's stream, passed through frame by frame.
        ok["content"]["text/event-stream"] = json!({"schema": {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
        }});
    }
    responses.insert("200".into(), ok);
    let mut errors = op.errors.to_vec();
    errors.push(405);
    if op.auth {
        // The index not loaded yet, keys or a TokenReview unavailable.
        errors.push(503);
    }
    if op.request.is_some() {
        // A body not received in time, too large, past the caller's share of the body memory,
        // or the body memory full (`proxy::body`, `proxy::buffers`).
        errors.extend([408, 413, 429, 503]);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses.insert(
            status.to_string(),
            json!({"description": reason(status), "content": {"application/json": {"schema": reference("ErrorEnvelope")}}}),
        );
    }
    if op.path == "/api/v1/prediction/{id}" {
        // `forward.rs`: Flowise's own refusal, passed on as it came (and refunded).
        responses.insert(
            "4XX".into(),
            json!({"description": "Flowise refused the prediction itself (its chatflow gone, \
                   its own rate limit, a request it cannot take): Flowise's status and body, \
                   passed on as they came, not flowgate's error envelope; nothing is charged",
                   "content": {"application/json": {"schema": {}}}}),
        );
    }
    if op.streams {
        prediction_headers(&mut responses);
    }
    let parameters: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .chain(query_parameters(op))
        .collect();
    let mut value = json!({
        "summary": op.summary,
        "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '.', '-'], "_")),
        "parameters": parameters,
        "responses": responses,
    });
    if !op.auth {
        value["security"] = json!([]);
    }
    if let Some(request) = op.request {
        let mut content = json!({"application/json": {"schema": reference(request)}});
        if let Some(form) = op.form {
            content["multipart/form-data"] = json!({"schema": reference(form),
                "encoding": {"files": {"contentType": "application/octet-stream"}}});
        }
        value["requestBody"] = json!({"required": true, "content": content});
    }
    value
}

/// `multipart/form-data` prediction fields, as Flowise reads them (schemars has no binary
/// strings).
fn prediction_form() -> Value {
    json!({
        "type": "object",
        "description": "A prediction with files: at most 50 MiB and 1000 parts, read whole, \
            uncompressed. Every field that names a session (chatId, sessionId, \
            overrideConfig[sessionId], ...) is replaced by the caller's own chatId (and one \
            sessionId and overrideConfig[sessionId] where sent). Flowise reads the other text \
            fields as overrideConfig.",
        "properties": {
            "question": {"type": "string", "description": "Required unless files are sent"},
            "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
                      "description": "The uploads; Flowise takes files under this name only"},
            "streaming": {"type": "string", "enum": ["true", "false"]},
            "chatId": {"type": "string"},
        },
        "anyOf": [{"required": ["question"]}, {"required": ["files"]}],
        "additionalProperties": {"type": "string"},
    })
}

/// The headers a prediction's answers carry: the caller's balance and rate allowance.
fn prediction_headers(responses: &mut Map<String, Value>) {
    let header =
        |description: &str, schema: Value| json!({"description": description, "schema": schema});
    let integer = || json!({"type": "integer", "minimum": 0});
    let balance = header(
        "Smallest balance left over the CreditPolicies that charged this prediction (of the one \
         that refused it, on a 402); absent when none applies",
        integer(),
    );
    let limit = header(
        "The ChatflowAccess rateLimit: `30, 30;w=60` is 30 requests per 60 s; absent without one",
        json!({"type": "string"}),
    );
    let remaining = header("Requests of the allowance left now", integer());
    let reset = header(
        "Seconds until the allowance refills by one request (with nothing left: when to send again)",
        integer(),
    );
    let retry = |what: &str| header(what, integer());
    // Every answer after the rate limit was spent tells what is left of it.
    for (status, response) in responses.iter_mut() {
        if !["200", "402", "409", "429", "502", "503", "504"].contains(&status.as_str()) {
            continue;
        }
        let mut headers = json!({"RateLimit-Limit": limit, "RateLimit-Remaining": remaining,
                                 "RateLimit-Reset": reset});
        match status.as_str() {
            "200" => headers["X-Credits-Remaining"] = balance.clone(),
            "402" => {
                headers["X-Credits-Remaining"] = balance.clone();
                headers["Retry-After"] = retry(
                    "Seconds until the refusing budget resets, a hint (another policy may still \
                     refuse); absent for a Never period or a perPrediction above the budget",
                );
            }
            "429" => headers["Retry-After"] = retry("Seconds until a request is allowed again"),
            _ => {}
        }
        response["headers"] = headers;
    }
}

/// The query (and header) parameters of an operation.
fn query_parameters(op: &Operation) -> Vec<Value> {
    let count =
        |name, description| param(name, description, json!({"type": "integer", "minimum": 0}));
    match (op.method, op.path) {
        ("post", "/api/v1/prediction/{id}" | "/chat/predict") => vec![json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A retry with the same key is charged once: 409 while a reservation with it stands (not refunded)",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        })],
        ("post", "/api/admin/credits/adjustments") => vec![json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A retry with the same key, on the same policy and subject, is applied once: 409 duplicate_request after the first",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        })],
        ("get", "/api/v1/chatflows") => vec![
            param(
                "type",
                "Only chatflows of this type (CHATFLOW, AGENTFLOW, MULTIAGENT, ASSISTANT; \
                 any other value lists every type, as Flowise does)",
                json!({"type": "string"}),
            ),
            count(
                "page",
                "With limit, both over 0: this page, as {data, total}",
            ),
            count("limit", "With page, both over 0: this many a page"),
        ],
        ("get", "/api/admin/chatflows") => vec![param(
            "include_deleted",
            "Also chatflows gone from Flowise",
            json!({"type": "boolean", "default": false}),
        )],
        ("get", "/api/admin/credits/balances") => vec![
            json!({"name": "policy", "in": "query", "required": true,
                   "description": "The CreditPolicy, `namespace/name`",
                   "schema": {"type": "string", "minLength": 1, "pattern": NO_CONTROL}}),
            param(
                "subject",
                "Only this subject (identity key, e.g. `user:alice-sub`)",
                json!({"type": "string", "minLength": 1, "pattern": NO_CONTROL}),
            ),
            param(
                "limit",
                "At most this many subjects, the most used",
                json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            ),
        ],
        ("get", "/api/admin/credits/usage") => {
            let mut params = vec![
                param(
                    "subject",
                    "Only this subject (identity key, e.g. `user:alice@example.com`)",
                    json!({"type": "string", "pattern": NO_CONTROL}),
                ),
                param(
                    "chatflow",
                    "Only this chatflow (Flowise id or `namespace/name`); required unless a global admin",
                    json!({"type": "string", "pattern": NO_CONTROL}),
                ),
            ];
            params.extend(usage_parameters());
            params
        }
        ("get", "/credits/usage") => {
            let mut params = vec![param(
                "chatflow",
                "Only this chatflow (`namespace/name`)",
                json!({"type": "string", "pattern": NO_CONTROL}),
            )];
            params.extend(usage_parameters());
            params
        }
        _ => Vec::new(),
    }
}

/// No control character (C0, DEL, C1: what `char::is_control` counts), as the usage and balance
/// reads check their text parameters (`proxy::usage_log::text_param`).
const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// The query parameters both usage logs take.
fn usage_parameters() -> Vec<Value> {
    vec![
        param(
            "policy",
            "Only this CreditPolicy (`namespace/name`)",
            json!({"type": "string", "pattern": NO_CONTROL}),
        ),
        param(
            "since",
            "Only rows at or after this time (RFC 3339)",
            json!({"type": "string", "format": "date-time"}),
        ),
        param(
            "before",
            "Only rows after this one, newest first: the `id` of the last row of the previous page",
            json!({"type": "integer", "format": "int64"}),
        ),
        param(
            "limit",
            "At most this many rows, the newest",
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        ),
    ]
}

/// An optional query parameter.
fn param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "flowgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Access control and credit budgets in front of Flowise. Every error is {\"error\": {\"code\", \"message\"}}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    })
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
