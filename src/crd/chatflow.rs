//! `Chatflow`: one Flowise chatflow as a Kubernetes object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One Flowise chatflow. Set exactly one of `flowiseId`, `flowiseName` (adopt an existing
/// chatflow) or `definition` (flowgate creates and updates the chatflow in Flowise).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flowgate.io",
    version = "v1alpha1",
    kind = "Chatflow",
    doc = "A Flowise chatflow managed or adopted by flowgate",
    plural = "chatflows",
    shortname = "cf",
    category = "flowgate",
    namespaced,
    status = "ChatflowStatus",
    printcolumn = r#"{"name":"Flowise-ID","type":"string","jsonPath":".status.flowiseId"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.type"}"#,
    printcolumn = r#"{"name":"Deployed","type":"boolean","jsonPath":".status.deployed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowSpec {
    /// Adopt the existing Flowise chatflow with this id (a UUID). Flowgate never deletes an
    /// adopted chatflow from Flowise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub flowise_id: Option<String>,

    /// Adopt the existing Flowise chatflow with this name. The name must be unique in Flowise;
    /// when several chatflows carry it the Chatflow reports `Ready=False, reason
    /// FlowiseConflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub flowise_name: Option<String>,

    /// Own the chatflow: flowgate creates it in Flowise from this definition, keeps it in step
    /// with every change, and applies `deletionPolicy` when the Chatflow is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<ChatflowDefinition>,

    /// What happens in Flowise when a Chatflow that owns its `definition` is deleted:
    /// `Retain` (default) leaves the chatflow in Flowise, `Delete` removes it. Adopted chatflows
    /// are always retained.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Flowise API key for this chatflow, when Flowise binds the chatflow to a key. The proxy sends
    /// it with every prediction; without it the proxy's default key (if any) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// When true, every prediction on this chatflow is refused (403); access rules stay as they are.
    #[serde(default)]
    pub suspended: bool,
}

/// A chatflow flowgate owns in Flowise.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowDefinition {
    /// Name of the chatflow in Flowise. Defaults to the Chatflow's `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,

    /// Kind of flow in Flowise.
    #[serde(rename = "type", default)]
    pub flow_type: ChatflowType,

    /// The Flowise flow JSON (`nodes`, `edges`, …), kept as-is and sent to Flowise unchanged.
    #[schemars(schema_with = "super::preserve_unknown_fields")]
    pub flow_data: serde_json::Value,

    /// Whether the chatflow is marked deployed in Flowise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<bool>,
}

/// Kind of Flowise flow.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChatflowType {
    /// A classic chatflow.
    #[default]
    Chatflow,
    /// An Agentflow (v2).
    Agentflow,
    /// A multi-agent flow.
    Multiagent,
    /// An OpenAI-style assistant.
    Assistant,
}

impl ChatflowType {
    /// The value Flowise uses in its `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chatflow => "CHATFLOW",
            Self::Agentflow => "AGENTFLOW",
            Self::Multiagent => "MULTIAGENT",
            Self::Assistant => "ASSISTANT",
        }
    }
}

/// What happens in Flowise when an owned Chatflow is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave the chatflow in Flowise.
    #[default]
    Retain,
    /// Delete the chatflow from Flowise.
    Delete,
}

/// A key of a Secret in the Chatflow's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What flowgate last saw of the chatflow in Flowise.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowStatus {
    /// The chatflow's id in Flowise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flowise_id: Option<String>,
    /// The chatflow's name in Flowise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flowise_name: Option<String>,
    /// The chatflow's type in Flowise (CHATFLOW, AGENTFLOW, MULTIAGENT, ASSISTANT).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub flow_type: Option<String>,
    /// Whether Flowise marks the chatflow deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<bool>,
    /// Whether Flowise binds the chatflow to an API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_bound: Option<bool>,
    /// When Flowise created the chatflow (its `createdDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub flowise_created_at: Option<Time>,
    /// When Flowise last updated the chatflow (its `updatedDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub flowise_updated_at: Option<Time>,
    /// When flowgate last compared this Chatflow with Flowise successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub last_sync_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When a create of this chatflow was sent to Flowise whose outcome flowgate has not
    /// learnt (no answer in time, or the controller stopped or lost its Lease meanwhile). It
    /// may still land, so no controller sends it again for a while unless the chatflow appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub create_sent_at: Option<Time>,
    /// `Ready`: True when the chatflow exists in Flowise and may be used. Reasons: Synced,
    /// NotFoundInFlowise, FlowiseUnreachable, InvalidSpec, Suspended, Conflict (another
    /// Chatflow claims the same Flowise chatflow), FlowiseConflict (several Flowise chatflows
    /// match the spec, or the name it would give is taken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
