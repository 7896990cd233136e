//! The shapes of the proxy's own answers (built as JSON in `proxy`), declared as types for the
//! OpenAPI document. `tests/admin.rs` checks real answers against the document, so a change to a
//! handler that these types do not follow fails there.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"error": {"code", "message"}}`, the body of every error answer.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`forbidden`, `admin_required`, …).
    pub code: String,
    pub message: String,
}

/// A chatflow in Flowise's JSON shape (`GET /api/v1/chatflows`).
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowiseChatflow {
    pub id: Option<String>,
    pub name: String,
    pub deployed: bool,
    pub is_public: bool,
    #[serde(rename = "type")]
    pub flow_type: String,
    pub category: Option<String>,
    pub created_date: Option<String>,
    pub updated_date: Option<String>,
}

/// `GET /api/v1/chatflows`: the list, or with `page` and `limit` one page of it and the count of
/// every page's.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FlowiseChatflowList {
    All(Vec<FlowiseChatflow>),
    Page {
        data: Vec<FlowiseChatflow>,
        total: u64,
    },
}

/// A chatflow in the Python service's shape (`GET /chatflows`): Flowise's keys, as that service
/// passed Flowise's listing through, with its admin `Chatflow` model's snake_case keys beside.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct CompatChatflow {
    /// The Flowise id; the Chatflow object's name while the chatflow is not (yet) in Flowise.
    pub id: String,
    /// The Chatflow object's name.
    pub chatflow: String,
    pub flowise_id: Option<String>,
    /// The chatflow's name in Flowise (the object's name until it is known).
    pub name: String,
    pub namespace: String,
    pub description: Option<String>,
    /// `active`, `inactive` or `suspended`.
    pub status: String,
    #[serde(rename = "type")]
    pub flow_type: String,
    pub deployed: bool,
    /// Always false: through flowgate every caller needs a token.
    #[serde(rename = "isPublic")]
    pub is_public_flowise: bool,
    /// Always false, as `isPublic`.
    pub is_public: bool,
    pub category: Option<String>,
    #[serde(rename = "createdDate")]
    pub created_date: Option<String>,
    #[serde(rename = "updatedDate")]
    pub updated_date: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// `GET /api/v1/chatflows-streaming/{id}`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingCapability {
    pub is_streaming: bool,
}

/// `GET /health`: `{"status": "healthy", "service": "flowgate"}`.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    pub service: String,
}

/// `GET /api/v1/public-chatbotConfig/{id}`: Flowise's own answer, passed through — the chat
/// window's settings (`welcomeMessage`, `starterPrompts`, …) with `uploads`, `isTTSEnabled` and
/// the flow data Flowise strips for public use; `"OK"` when the chatflow has none of them.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ChatbotConfig {
    Settings(Map<String, Value>),
    Nothing(String),
}

/// `PUT /api/v1/chatmessage/abort/{id}/{chatId}`: Flowise's own answer.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct AbortResponse {
    pub status: u16,
    pub message: String,
}

/// `POST /chat/predict` body: `question` or its alias `message` is required.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [
    {"required": ["question"], "properties": {"question": {"type": "string"}}},
    {"required": ["message"], "properties": {"message": {"type": "string"}}}
]))]
pub struct CompatPredictRequest {
    /// Name or Flowise id of the chatflow.
    #[serde(rename = "chatflow_id")]
    #[schemars(length(min = 1))]
    pub chatflow_id: String,
    pub question: Option<String>,
    /// Alias of `question` (used when `question` is absent or null).
    pub message: Option<String>,
    pub session_id: Option<String>,
    pub override_config: Option<Map<String, Value>>,
    pub streaming: Option<StreamingFlag>,
}

/// `streaming`: a boolean, or the same as a string, as Flowise accepts from form-style clients.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StreamingFlag {
    Bool(bool),
    Text(StreamingText),
}

/// `"true"` or `"false"`.
#[derive(Serialize, Deserialize, JsonSchema)]
pub enum StreamingText {
    #[serde(rename = "true")]
    True,
    #[serde(rename = "false")]
    False,
}

/// `POST /chat/predict` answer (non-streaming).
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct CompatPredictResponse {
    /// Flowise's answer.
    pub result: Value,
    /// The smallest balance left over the policies that charged the prediction; null when no
    /// CreditPolicy applies to it (nothing is counted).
    pub credits_remaining: Option<u64>,
    pub chatflow_id: String,
    /// The `sessionId` the request sent (every request that sends it continues one chat of the
    /// caller's own); a new chat's id when it sent none.
    pub session_id: String,
}

/// A Flowise prediction body (`POST /api/v1/prediction/{id}`); other Flowise fields pass through.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionRequest {
    /// Required unless one of Flowise's other inputs (`form`, `uploads`, `humanInput`) is sent;
    /// never null.
    pub question: String,
    pub streaming: Option<StreamingFlag>,
    pub chat_id: Option<String>,
    pub override_config: Option<Map<String, Value>>,
}

/// Flowise's prediction answer, passed through.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PredictionResponse {
    pub text: Option<String>,
    #[serde(rename = "chatId")]
    pub chat_id: Option<String>,
}

/// `POST /chat/authenticate` body.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct AuthenticateRequest {
    pub username: String,
    pub password: String,
}

/// `POST /chat/refresh` body.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Tokens from the token endpoint.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// `GET /credits`.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct CreditsResponse {
    pub subject: String,
    pub balances: Vec<Balance>,
}

/// One policy's balance for the caller.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub policy: String,
    pub scope: String,
    pub period: String,
    pub time_zone: String,
    pub credits: u64,
    pub used: i64,
    pub remaining: i64,
    pub period_start: String,
    pub reset_at: Option<String>,
}
