//! Flowise's chatflow REST API, behind a trait so the controller's logic does not depend on HTTP.
//!
//! Shapes follow Flowise 3.1.2 as recorded in `docs/flowise-notes.md`: `flowData` travels as a
//! JSON *string*, `deployed`/`isPublic`/`apikeyid` may be null, the listing returns every flow type,
//! an unknown id on DELETE answers 500 "not found", and unknown routes answer 200 with HTML.

mod client;
mod doubt;
mod error;
#[cfg(test)]
pub(crate) mod fake;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use client::{FlowiseClient, Timeouts};
pub use doubt::CreatesInDoubt;
pub use error::FlowiseError;

/// How long a pooled connection to Flowise may sit idle before it is dropped instead of reused.
/// Flowise's server (Node's `http`) closes a keep-alive connection idle for 5 s
/// (`keepAliveTimeout`; it answers `Keep-Alive: timeout=5`): a request sent just as it closes is
/// reset — for a prediction, a 502 and a refund for nothing Flowise did wrong. So the pools let
/// go first. (A shorter idle time costs a new connection, not a failure.)
pub const IDLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(4);

/// The default Flowise API key (`FLOWGATE_FLOWISE_API_KEY_FILE`), as the header it is sent in;
/// the controller and the proxy share one, read again when the file changes.
pub type ApiKey = crate::secret_file::SecretFile<http::HeaderValue>;

/// `Bearer <key>` as a header value, marked sensitive (kept out of logs).
pub fn bearer(key: &str) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {}", key.trim()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An API key file as its header, for [`crate::secret_file::SecretFile::load`].
pub fn api_key_header(path: &std::path::Path, bytes: &[u8]) -> Result<http::HeaderValue, String> {
    bearer(&crate::secret_file::text(path, bytes)?).map_err(|_| {
        format!(
            "{}: the Flowise API key is not a valid header value",
            path.display()
        )
    })
}

/// The chatflow operations flowgate needs. Object-safe: the controller holds an
/// `Arc<dyn FlowiseApi>`.
pub trait FlowiseApi: Send + Sync {
    /// Every chatflow of every type in the key's workspace.
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>>;

    /// One chatflow; `None` when Flowise has no chatflow with this id (404, or an id Flowise
    /// considers malformed).
    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>>;

    /// Creates a chatflow; `name`, `type` and `flowData` must be set.
    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>>;

    /// Changes the fields set in `changes`; the others keep their values (Flowise merges).
    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>>;

    /// Deletes a chatflow. A chatflow that is already gone is a success.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>>;
}

/// A chatflow as Flowise returns it (fields flowgate does not use are dropped).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowiseChatflow {
    pub id: String,
    pub name: String,
    /// `CHATFLOW`, `AGENTFLOW`, `MULTIAGENT` or `ASSISTANT`; kept as text so a new type does not
    /// break the listing. Empty when Flowise has none: the column came with Flowise 1.8 and was
    /// left `null` on older rows (Flowise reads those as chatflows).
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub flow_type: String,
    /// The flow JSON, as a string (Flowise's wire format).
    #[serde(default, deserialize_with = "null_as_default")]
    pub flow_data: String,
    #[serde(default)]
    pub deployed: Option<bool>,
    #[serde(default)]
    pub is_public: Option<bool>,
    /// Id of the Flowise API key the chatflow is bound to (`null` or `""` when unbound).
    #[serde(default)]
    pub apikeyid: Option<String>,
    /// Free text; the Flowise UI uses `;`-separated tags. flowgate keeps its ownership marker here.
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "to_the_second")]
    pub created_date: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "to_the_second")]
    pub updated_date: Option<jiff::Timestamp>,
}

impl FlowiseChatflow {
    /// Whether Flowise requires an API key for predictions on this chatflow.
    pub fn api_key_bound(&self) -> bool {
        self.apikeyid.as_deref().is_some_and(|id| !id.is_empty())
    }

    /// The `;`-separated tags of `category`, trimmed, empty ones dropped.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.category
            .as_deref()
            .unwrap_or_default()
            .split(';')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
    }

    /// `flowData` parsed, or `None` when it is not JSON.
    pub fn flow_data_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.flow_data).ok()
    }
}

/// The body of a create or (partial) update. Unset fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowWrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub flow_type: Option<String>,
    /// The flow JSON as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl ChatflowWrite {
    /// True when the write would change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Names of the fields set, for logs and Events (`name, flowData`).
    pub fn fields(&self) -> String {
        let fields = [
            ("name", self.name.is_some()),
            ("type", self.flow_type.is_some()),
            ("flowData", self.flow_data.is_some()),
            ("deployed", self.deployed.is_some()),
            ("category", self.category.is_some()),
        ];
        fields
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `url` as errors, logs and status may show it: a password in it masked.
pub fn shown(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// A field's value, or its type's default for `null` (`#[serde(default)]` covers only a
/// missing field: one `null` would fail the whole listing).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A Flowise date, to the second. Flowise on PostgreSQL or MySQL keeps milliseconds, and a
/// Kubernetes `Time` is written to the second: a Chatflow's status holding them would differ
/// from what it reads back at every comparison, and be written again (and reconciled again
/// through the watch) for ever.
fn to_the_second<'de, D>(deserializer: D) -> Result<Option<jiff::Timestamp>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let date = Option::<jiff::Timestamp>::deserialize(deserializer)?;
    Ok(date.map(|date| jiff::Timestamp::from_second(date.as_second()).unwrap_or(date)))
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Flowise deleted the chatflow.
    Deleted,
    /// Flowise had no such chatflow.
    AlreadyGone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chatflow_in_flowise_shape_decodes_with_nulls() {
        let json = r#"{
            "id": "672c3d66-a2bc-4701-b72c-58bd73f1b3d5", "name": "echo",
            "flowData": "{\"nodes\":[],\"edges\":[]}", "deployed": null, "isPublic": false,
            "apikeyid": "", "chatbotConfig": null, "category": "a; flowgate:ns/x ;",
            "type": "AGENTFLOW", "createdDate": "2026-11-22T04:17:49.000Z",
            "updatedDate": "2026-11-22T04:17:49.000Z", "workspaceId": "d73e3169"
        }"#;
        let cf: FlowiseChatflow = serde_json::from_str(json).expect("decodes");
        assert_eq!(cf.flow_type, "AGENTFLOW");
        assert_eq!(cf.deployed, None);
        assert!(!cf.api_key_bound(), "an empty apikeyid binds no key");
        assert_eq!(cf.categories().collect::<Vec<_>>(), ["a", "flowgate:ns/x"]);
        assert_eq!(
            cf.flow_data_json(),
            Some(serde_json::json!({"nodes": [], "edges": []}))
        );
        assert_eq!(cf.created_date.map(|t| t.as_second()), Some(1_795_321_069));
    }

    #[test]
    fn dates_are_kept_to_the_second_as_a_status_holds_them() {
        // Flowise on PostgreSQL writes milliseconds; the status written back holds seconds.
        let json = r#"{"id": "x", "name": "echo", "createdDate": "2026-11-22T04:17:49.123Z",
                       "updatedDate": null}"#;
        let cf: FlowiseChatflow = serde_json::from_str(json).expect("decodes");
        let created = cf.created_date.expect("a date");
        assert_eq!(created, "2026-11-22T04:17:49Z".parse().expect("timestamp"));
        let written = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created,
        ))
        .expect("a status date");
        assert_eq!(written, "2026-11-22T04:17:49Z");
        assert_eq!(cf.updated_date, None);
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        let url = reqwest::Url::parse("http://flowgate:s3cret@flowise:3000/").expect("url");
        assert_eq!(shown(&url), "http://flowgate:***@flowise:3000/");
        let plain = reqwest::Url::parse("http://flowise:3000/").expect("url");
        assert_eq!(shown(&plain), "http://flowise:3000/");
    }

    #[test]
    fn a_row_older_than_the_type_column_decodes_in_a_listing() {
        let json = r#"[
            {"id": "a", "name": "old", "type": null, "flowData": null},
            {"id": "b", "name": "new", "type": "CHATFLOW", "flowData": "{}"}
        ]"#;
        let list: Vec<FlowiseChatflow> = serde_json::from_str(json).expect("decodes");
        assert_eq!(
            (list[0].flow_type.as_str(), list[0].flow_data.as_str()),
            ("", "")
        );
        assert_eq!(list[1].flow_type, "CHATFLOW");
    }

    #[test]
    fn a_write_sends_only_the_fields_it_sets() {
        let write = ChatflowWrite {
            flow_data: Some("{}".into()),
            deployed: Some(true),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&write).expect("serializes"),
            serde_json::json!({"flowData": "{}", "deployed": true})
        );
        assert_eq!(write.fields(), "flowData, deployed");
        assert!(ChatflowWrite::default().is_empty());
    }
}
