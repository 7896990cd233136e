//! `CreditPolicy`: credit budgets for predictions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Subject;

/// A credit budget over chatflows in this namespace. A prediction must fit every policy that
/// applies to it and is charged on all of them at once; with no policy, access alone decides.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flowgate.io",
    version = "v1alpha1",
    kind = "CreditPolicy",
    doc = "A credit budget charged by predictions on Chatflows in its namespace",
    plural = "creditpolicies",
    shortname = "cpol",
    category = "flowgate",
    namespaced,
    status = "CreditPolicyStatus",
    printcolumn = r#"{"name":"Credits","type":"integer","jsonPath":".spec.budget.credits"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.budget.period"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.budget.scope"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.creditsUsed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CreditPolicySpec {
    /// Names of Chatflow objects in this namespace, or `["*"]` for all of them.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$"))
    )]
    pub chatflows: Vec<String>,

    /// Who the budget applies to; empty means everyone who has access to those chatflows.
    #[serde(default)]
    pub subjects: Vec<Subject>,

    /// How many credits, over which period, shared or per subject.
    pub budget: Budget,

    /// What a prediction costs.
    #[serde(default)]
    pub cost: Cost,

    /// Percentages of the budget at which a subject's use raises a Kubernetes Event and a metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 100)))]
    pub alert_at_percent: Vec<u8>,
}

/// A number of credits per period.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Credits available in each period (at most 2^53-1, exact in every JSON parser).
    #[schemars(range(max = 9_007_199_254_740_991_u64))]
    pub credits: u64,
    /// Length of a period; periods are calendar-aligned in `timeZone` (a Monthly budget resets at
    /// local midnight on the 1st). `Never` never resets.
    pub period: Period,
    /// IANA time zone the periods are aligned in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// `PerSubject`: every subject has the full budget. `Shared`: the subjects share one budget.
    #[serde(default)]
    pub scope: BudgetScope,
    /// Other budgets for some subjects of a `PerSubject` policy, larger or smaller: a subject
    /// an override names has its `credits` instead (the largest, when several name it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<BudgetOverride>,
}

/// A budget of its own for some subjects of a `PerSubject` policy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetOverride {
    /// Who has this budget instead of the policy's `credits`.
    #[schemars(length(min = 1))]
    pub subjects: Vec<Subject>,
    /// Credits available to each of them in each period (at most 2^53-1).
    #[schemars(range(max = 9_007_199_254_740_991_u64))]
    pub credits: u64,
}

fn utc() -> String {
    "UTC".to_string()
}

/// Length of a budget period.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Period {
    /// From the top of each hour.
    Hourly,
    /// From local midnight.
    Daily,
    /// From local midnight on Monday.
    Weekly,
    /// From local midnight on the 1st.
    #[default]
    Monthly,
    /// One budget that never resets.
    Never,
}

/// Whether subjects share a budget.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum BudgetScope {
    /// Each subject has the whole budget.
    #[default]
    PerSubject,
    /// All subjects draw from one budget.
    Shared,
}

/// What one prediction costs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// Flat credits per prediction, for every flow type (at most 2^53-1).
    #[serde(default = "one")]
    #[schemars(range(max = 9_007_199_254_740_991_u64))]
    pub per_prediction: u64,
    /// Extra credits per thousand tokens, when Flowise reports token usage (`usageMetadata`;
    /// at most 2^53-1).
    #[serde(default)]
    #[schemars(range(max = 9_007_199_254_740_991_u64))]
    pub per_thousand_tokens: u64,
    /// Tokens held for a prediction until Flowise reports what it used, where tokens are priced:
    /// each prediction reserves `perPrediction` plus these tokens' price, then is charged what
    /// it used. It bounds what predictions running at once can spend past the budget (with 0,
    /// each of them may). At most 2^32-1.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 4_294_967_295_u32))]
    pub reserve_tokens: u32,
}

impl Default for Cost {
    fn default() -> Self {
        Self {
            per_prediction: 1,
            per_thousand_tokens: 0,
            reserve_tokens: 0,
        }
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn one() -> u64 {
    1
}

/// Use of the budget in the current period.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditPolicyStatus {
    /// Start of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub period_start: Option<Time>,
    /// When the current period ends and the budget resets (absent for `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub next_reset: Option<Time>,
    /// Credits charged in the current period, over all subjects, net of admins' adjustments
    /// (refreshed periodically).
    #[serde(default)]
    pub credits_used: u64,
    /// Subjects with no credits left in the current period.
    #[serde(default)]
    #[schemars(range(max = 4_294_967_295_u32))]
    pub subjects_exhausted: u32,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the policy is valid and enforced (reason InvalidSpec otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
