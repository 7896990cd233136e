//! Request and response bodies of the admin API, in the Python service's shapes. The OpenAPI
//! document ([`super::openapi`]) is generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::proxy::ProxyError;

/// `AddUsersToChatflowRequest`: users (subject `user:` values) to grant a chatflow.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct AddUsersToChatflowRequest {
    /// Values matched against the caller's user claims (`sub`, `email`, …); at most 1000 (none: nothing is done, `[]`).
    #[schemars(length(max = 1000))]
    pub user_ids: Vec<String>,
    /// Flowise id of the chatflow (or `namespace/name`, the listing's `id`).
    #[schemars(length(min = 1))]
    pub chatflow_id: String,
}

/// `AddUsersToChatlowByEmailRequest` (sic): users by email to grant a chatflow.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct AddUsersToChatflowByEmailRequest {
    /// At most 1000 (none: nothing is done, `[]`); an unusable one is reported in its own
    /// result.
    #[schemars(length(max = 1000))]
    pub emails: Vec<String>,
    /// Flowise id of the chatflow (or `namespace/name`, the listing's `id`).
    #[schemars(length(min = 1))]
    pub chatflow_id: String,
}

/// The body of `POST /api/admin/chatflows/{flowise_id}/users/bulk`: the path names the chatflow
/// (a `chatflow_id` in the body is ignored).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct BulkAddUsersRequest {
    /// Values matched against the caller's user claims (`sub`, `email`, …); at most 1000 (none: nothing is done, `[]`).
    #[schemars(length(max = 1000))]
    pub user_ids: Vec<String>,
}

/// The body of `POST /api/admin/chatflows/{flowise_id}/users/email/bulk`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct BulkAddUsersByEmailRequest {
    /// At most 1000 (none: nothing is done, `[]`); an unusable one is reported in its own
    /// result.
    #[schemars(length(max = 1000))]
    pub emails: Vec<String>,
}

/// Outcome of one entry of an add or remove.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    Success,
    Error,
}

/// `UserChatflowResponse`: one per input entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct UserChatflowResponse {
    /// The subject value (user id or email); null when the entry was unusable.
    pub user_id: Option<String>,
    pub username: String,
    pub status: EntryStatus,
    pub message: String,
}

impl UserChatflowResponse {
    pub fn success(user: &str, message: String) -> Self {
        Self {
            user_id: Some(user.to_string()),
            username: user.to_string(),
            status: EntryStatus::Success,
            message,
        }
    }

    pub fn error(user: Option<&str>, username: &str, message: String) -> Self {
        Self {
            user_id: user.map(str::to_string),
            username: username.to_string(),
            status: EntryStatus::Error,
            message,
        }
    }
}

/// A plain confirmation.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct MessageResponse {
    pub message: String,
}

/// A Chatflow object as the Python service's `Chatflow` model.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ChatflowModel {
    /// `namespace/name` of the Chatflow object.
    pub id: String,
    pub flowise_id: Option<String>,
    /// The chatflow's name in Flowise (the object's name until it is known).
    pub name: String,
    /// The Chatflow object's name.
    pub chatflow: String,
    pub namespace: String,
    /// Always null: Flowise keeps no description.
    pub description: Option<String>,
    /// `active` (Ready, not suspended), `inactive` or `deleted` (gone from Flowise).
    pub status: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Always false: through flowgate every caller needs a token.
    pub is_public: bool,
    /// Flowise's `deployed`.
    pub deployed: bool,
}

/// `GET /api/admin/chatflows/stats`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ChatflowStats {
    pub total_chatflows: u32,
    pub active_chatflows: u32,
    pub inactive_chatflows: u32,
    pub deleted_chatflows: u32,
    /// `success` or `failed`; null before the first pass of this replica.
    pub last_sync_status: Option<String>,
    pub last_sync_time: Option<String>,
}

/// One user of a chatflow.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ChatflowUser {
    pub user_id: String,
    pub username: String,
    /// The subject value when it is an email.
    pub email: Option<String>,
    /// `User` or `Admin` (the strongest grant).
    pub role: String,
    /// Creation time of the granting ChatflowAccess, when known.
    pub assigned_at: Option<String>,
    /// False when every grant is suspended or expired.
    pub is_active_in_chatflow: bool,
    /// `namespace/name` of each ChatflowAccess naming this user.
    pub granted_by: Vec<String>,
}

/// `ChatflowSyncResult`, re-declared for the schema (the controller's type is the source).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ChatflowSyncResult {
    pub new_chatflows_added: u32,
    pub existing_chatflows_updated: u32,
    pub chatflows_removed: u32,
    pub total_chatflows_synced: u32,
    pub errors: Vec<String>,
}

impl From<crate::controller::ChatflowSyncResult> for ChatflowSyncResult {
    fn from(r: crate::controller::ChatflowSyncResult) -> Self {
        Self {
            new_chatflows_added: r.new_chatflows_added,
            existing_chatflows_updated: r.existing_chatflows_updated,
            chatflows_removed: r.chatflows_removed,
            total_chatflows_synced: r.total_chatflows_synced,
            errors: r.errors,
        }
    }
}

/// `field` of a body as a list of at most 1000 strings; the 400 names the field.
pub fn string_list(
    body: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Vec<String>, ProxyError> {
    let bad = || {
        ProxyError::BadRequest(format!(
            "field '{field}' must be a list of at most 1000 strings"
        ))
    };
    let list = body.get(field).and_then(|v| v.as_array()).ok_or_else(bad)?;
    if list.len() > 1000 {
        return Err(bad());
    }
    list.iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

/// `field` of a body as a non-empty string; the 400 names the field.
pub fn string_field(
    body: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, ProxyError> {
    match body.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ProxyError::BadRequest(format!(
            "field '{field}' is required (a non-empty string)"
        ))),
    }
}

/// `POST /api/admin/credits/adjustments`: credits given to (or taken from) one budget in its
/// current period.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditAdjustmentRequest {
    /// The CreditPolicy, `namespace/name`.
    pub policy: String,
    /// Whose budget, as the usage log names subjects (`user:<first user claim>`,
    /// `sa:<namespace>/<name>`); left out, empty or `*` for a `Shared` policy.
    #[serde(default)]
    #[schemars(regex(
        pattern = r"^(user:[^\u0000-\u001f\u007f-\u009f]+|sa:[^/\u0000-\u001f\u007f-\u009f]+/[^/\u0000-\u001f\u007f-\u009f]+|\*|)$"
    ))]
    pub subject: Option<String>,
    /// Credits given (positive) or taken (negative); not 0, at most 10^12 either way.
    #[schemars(range(min = -1_000_000_000_000i64, max = 1_000_000_000_000i64))]
    #[schemars(extend("not" = {"enum": [0]}))]
    pub credits: i64,
    /// Why, for the record: the log line and the Kubernetes Event on the policy (at most 500
    /// characters, without control characters).
    #[serde(default)]
    #[schemars(
        length(max = 500),
        regex(pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")
    )]
    pub reason: Option<String>,
}

/// What an adjustment did, and the budget it changed as it stands now.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditAdjustment {
    /// The adjustment's reservation id (its usage row's `reservation_id`).
    pub id: i64,
    pub policy: String,
    /// The budget's subject, `*` for a `Shared` one.
    pub subject: String,
    /// Credits given (positive) or taken (negative).
    pub adjusted: i64,
    /// The subject's credits per period: the policy's, or a budget override naming its user or
    /// ServiceAccount (an override by group cannot be told from the subject alone).
    pub credits: u64,
    /// Used in the period after the adjustment (below 0 when more was given than used).
    pub used: i64,
    pub remaining: i64,
    pub period_start: String,
    pub reset_at: Option<String>,
    /// Set when the usage log has no charge of this subject on this policy: a subject spelt
    /// otherwise than flowgate names the caller (`user:<first user claim>`) gets a budget of
    /// its own that no caller draws from. The adjustment is applied all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `GET /api/admin/credits/balances`: one policy's budgets in its current period.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBalances {
    pub policy: String,
    /// `PerSubject` or `Shared`.
    pub scope: String,
    pub period: String,
    pub time_zone: String,
    /// The policy's credits per period (a subject's own may differ: `budget.overrides`).
    pub credits: u64,
    pub period_start: String,
    pub reset_at: Option<String>,
    /// Credits used over all subjects, net of adjustments.
    pub credits_used: i64,
    /// Subjects with nothing left.
    pub subjects_exhausted: u64,
    /// The subjects that used the most first (at most `limit`), or the one `subject` asked for.
    pub balances: Vec<SubjectBalance>,
}

/// One subject's budget in the current period.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectBalance {
    /// The identity key (`user:…`, `sa:namespace/name`), or `*` for a `Shared` budget.
    pub subject: String,
    /// Its credits per period: a budget override naming its user or ServiceAccount in the
    /// current spec, else the one its last prediction was charged against (an override by
    /// group), else the policy's.
    pub credits: u64,
    /// Used so far (below 0 when an adjustment gave more than was used).
    pub used: i64,
    pub remaining: i64,
}

/// One row of the credits usage log: what one settle, refund, expiry or final-cost charge
/// changed on one policy. A reservation's rows sum to what it is charged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct CreditUsageRecord {
    /// The row's id: pass the last one of a page as `before` for the next page.
    pub id: i64,
    /// When it happened (RFC 3339).
    pub time: String,
    /// The reservation (one per charged prediction).
    pub reservation_id: i64,
    /// Who was charged: the identity key (`user:…`, `sa:namespace/name`), or `*` for a
    /// `Shared` budget's adjustment.
    pub subject: String,
    /// `namespace/name` of the Chatflow; empty for an adjustment.
    pub chatflow: String,
    /// `namespace/name` of the CreditPolicy.
    pub policy: String,
    /// The change of the charge (negative for a refund of something already charged, or for
    /// credits an adjustment gave).
    pub credits: i64,
    /// Tokens Flowise reported (only where a policy prices tokens).
    pub tokens: u64,
    /// `charged`, `settled`, `refunded`, `expired` or `adjusted`.
    pub outcome: String,
    /// An adjustment's: who made it (the admin's identity key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjusted_by: Option<String>,
    /// An adjustment's: the reason its admin gave, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<crate::ledger::UsageRecord> for CreditUsageRecord {
    fn from(r: crate::ledger::UsageRecord) -> Self {
        Self {
            id: r.id,
            time: r.time.to_string(),
            reservation_id: r.reservation.0,
            subject: r.subject,
            chatflow: r.chatflow,
            policy: r.policy,
            credits: r.credits,
            tokens: r.tokens,
            outcome: r.outcome.as_str().to_string(),
            adjusted_by: r.adjusted_by,
            reason: r.reason,
        }
    }
}
