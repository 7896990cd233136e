//! `ChatflowAccess`: who may use which chatflows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Grants subjects the use of chatflows in this namespace. Access is the union of all
/// ChatflowAccess objects; there is no implicit access.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flowgate.io",
    version = "v1alpha1",
    kind = "ChatflowAccess",
    doc = "Grants users, groups and ServiceAccounts the use of Chatflows in its namespace",
    plural = "chatflowaccesses",
    shortname = "cfa",
    category = "flowgate",
    namespaced,
    status = "ChatflowAccessStatus",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Chatflows","type":"integer","jsonPath":".status.resolvedChatflows"}"#,
    printcolumn = r#"{"name":"Subjects","type":"integer","jsonPath":".status.subjects"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowAccessSpec {
    /// Names of Chatflow objects in this namespace, or `["*"]` for all of them.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$"))
    )]
    pub chatflows: Vec<String>,

    /// Who is granted access. Each entry sets exactly one of `user`, `group`, `serviceAccount`.
    #[schemars(length(min = 1))]
    pub subjects: Vec<Subject>,

    /// `User` may use the chatflows; `Admin` may also manage them through the admin API.
    #[serde(default)]
    pub role: Role,

    /// When set, the access ends by itself at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::TIME_PATTERN))]
    pub expires_at: Option<Time>,

    /// When true, the access is kept but grants nothing.
    #[serde(default)]
    pub suspended: bool,

    /// At most this many predictions per subject through this access, over its chatflows
    /// together; more are refused with 429 until the rate allows again. Replicas on a
    /// PostgreSQL ledger share one allowance (each counts its own while the database is
    /// unreachable). Unset: no limit. A caller several objects grant gets the most generous
    /// of their limits, none if one has none (but for the admin API's own objects, which grant
    /// access and take the caller's other limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A request rate: `requests` per `per`, which may all come at once (a burst of `requests`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Predictions allowed per period.
    // Bounded in the schema: the API server does not check `uint32`, and one number past it
    // would fail the whole watch of ChatflowAccess objects.
    #[schemars(range(min = 1, max = 4_294_967_295_u32))]
    pub requests: u32,
    /// The period: `Second`, `Minute` or `Hour`.
    pub per: RatePeriod,
}

/// The period of a [`RateLimit`]. Windows slide: the allowance refills steadily.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RatePeriod {
    Second,
    Minute,
    Hour,
}

impl RatePeriod {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
        })
    }
}

/// One party that may be granted access or charged credits. Set exactly one field.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// A user, matched against the identity claims (by default `sub`, then `email`). A value
    /// with an `@` is an address, matched whatever its case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub user: Option<String>,
    /// A group, matched against the groups claim (by default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub group: Option<String>,
    /// A Kubernetes ServiceAccount, authenticated with its own token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
}

/// A Kubernetes ServiceAccount.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct ServiceAccountRef {
    /// Namespace of the ServiceAccount.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the ServiceAccount.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What a ChatflowAccess lets its subjects do.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum Role {
    /// Use the chatflows (list them, predict).
    #[default]
    User,
    /// Use the chatflows and manage their users through the admin API.
    Admin,
}

/// What the controller resolved of a ChatflowAccess.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatflowAccessStatus {
    /// How many Chatflows the rule resolves to now.
    #[serde(default)]
    #[schemars(range(max = 4_294_967_295_u32))]
    pub resolved_chatflows: u32,
    /// How many valid subjects the rule names.
    #[serde(default)]
    #[schemars(range(max = 4_294_967_295_u32))]
    pub subjects: u32,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the rule is in force; reasons InvalidSpec, Expired, Suspended) and `ResolvedRefs`
    /// (False names the Chatflows that do not exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The annotation the admin API keeps on the ChatflowAccess objects it writes: when it added
/// each user subject, a JSON object of user value → RFC 3339 time (its `assigned_at`; one
/// object holds every user of a chatflow, so its creation time is only the first one's).
pub const ASSIGNED_AT_ANNOTATION: &str = "flowgate.io/assigned-at";

/// [`ASSIGNED_AT_ANNOTATION`] read; empty when absent or not such an object, and entries that
/// are not times left out: it is only ever shown.
pub fn assigned_at(
    meta: &kube::api::ObjectMeta,
) -> std::collections::BTreeMap<String, jiff::Timestamp> {
    let Some(raw) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ASSIGNED_AT_ANNOTATION))
    else {
        return Default::default();
    };
    // Entry by entry: one hand-edited into something else loses only itself.
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(user, at)| Some((user, at.as_str()?.parse().ok()?)))
        .collect()
}

/// Whether `value` has an email address's shape: one `@` between a local part and a domain,
/// at most 254 bytes, nothing a path, query or line could hide in. Not a check that it exists.
pub fn is_address(value: &str) -> bool {
    let mut parts = value.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && value.len() <= 254
        && !domain.starts_with('.')
        && !value.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '%' | '?' | '#')
        })
}

/// What a user subject value is compared by: an address ([`is_address`]) with its ASCII letters
/// in lower case, since providers and people write the same one in different cases
/// (`Alice@Corp.com` in Git, `alice@corp.com` in the token); any other value as it is: ids,
/// and values that only contain an `@` (a workflow ref `…/chat.yml@refs/heads/main`), are
/// case-sensitive. ASCII only: Unicode case folding would make distinct characters one
/// (the Kelvin sign and `k`).
pub fn user_key(value: &str) -> std::borrow::Cow<'_, str> {
    if is_address(value) && value.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(value.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// Whether two user subject values name the same user: `user_key(a) == user_key(b)`, without
/// allocating.
pub fn same_user(a: &str, b: &str) -> bool {
    // The shape does not depend on ASCII case: `b` is an address too when this holds.
    a == b || (is_address(a) && a.eq_ignore_ascii_case(b))
}

#[cfg(test)]
mod user_tests {
    use super::*;

    #[test]
    fn addresses_compare_whatever_their_case_and_ids_as_they_are() {
        assert_eq!(user_key("Alice@Corp.IO"), "alice@corp.io");
        assert!(matches!(
            user_key("alice@corp.io"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(user_key("User-ABC"), "User-ABC");
        assert!(same_user("Alice@Corp.IO", "alice@corp.io"));
        assert!(same_user("alice@corp.io", "ALICE@CORP.IO"));
        assert!(
            !same_user("User-ABC", "user-abc"),
            "an id is case-sensitive"
        );
        assert!(!same_user("alice@corp.io", "alice@corp.iq"));
        assert!(!same_user("alice@corp.io", "alice@corp.io.evil"));
        // Something with an `@` that is no address keeps its case.
        let workflow = "org/repo/.github/workflows/chat.yml@refs/heads/main";
        assert!(!same_user(workflow, &workflow.to_uppercase()));
        assert_eq!(user_key("A@b@C"), "A@b@C");
        // ASCII letters only: the Kelvin sign is not a `k`.
        assert!(!same_user("\u{212A}ate@corp.io", "kate@corp.io"));
        assert_eq!(user_key("\u{212A}ATE@corp.io"), "\u{212A}ate@corp.io");
        // The two agree.
        for (a, b) in [("Bo@X.io", "bo@x.io"), ("x@Y.io", "X@y.io"), ("id", "ID")] {
            assert_eq!(same_user(a, b), user_key(a) == user_key(b), "{a} {b}");
        }
    }
}
