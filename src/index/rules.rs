//! Each resource converted at the edge into the rule the index uses, or a reason it is invalid.
//!
//! The controller reports the same errors in status; the index logs and skips the object.

use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::crd::{
    self, BudgetScope, Chatflow, ChatflowAccess, ChatflowType, CreditPolicy, Period, Role,
    SecretKeyRef, Subject,
};

/// Why a resource cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error("set exactly one of flowiseId, flowiseName, definition (found {0})")]
    ChatflowSource(usize),
    /// Flowise stores such a chatflow and then answers 500 on it.
    #[error("definition.flowData must be an object with an array '{0}'")]
    FlowData(&'static str),
    /// Flowise reads `node.data.category` of every node when it saves a chatflow, and answers
    /// 500 (a TypeError) for a node without `data`; it runs nodes by their `id`.
    #[error(
        "definition.flowData.nodes[{0}] must be an object with a string 'id' and an object 'data'"
    )]
    FlowDataNode(usize),
    /// Flowise reads `edge.source` and `edge.target` of every edge when it saves a chatflow.
    #[error("definition.flowData.edges[{0}] must be an object")]
    FlowDataEdge(usize),
    /// Flowise keeps a file embedded in a node's input (a `data:…;base64,` URI, as its UI saves
    /// a document loader's upload) in its own storage and puts `FILE-STORAGE::` in its place:
    /// what it holds would never match the definition, which would be sent again every sync.
    #[error(
        "definition.flowData.nodes[{node}].data.inputs.{input} embeds a file (a data: URI); \
         Flowise stores such a file and rewrites the input, so the chatflow would never match \
         its definition: load the file into a Flowise document store and name that instead"
    )]
    EmbeddedFile { node: usize, input: String },
    #[error("subjects[{index}] must set exactly one of user, group, serviceAccount")]
    Subject { index: usize },
    #[error(
        "budget.overrides[{index}].subjects[{subject}] must set exactly one of user, group, \
         serviceAccount"
    )]
    OverrideSubject { index: usize, subject: usize },
    #[error("budget.overrides need scope PerSubject: a Shared budget is one for all its subjects")]
    OverridesShared,
    #[error("chatflows: \"*\" cannot be combined with names")]
    MixedWildcard,
    #[error("budget.timeZone: unknown time zone '{0}'")]
    TimeZone(String),
    #[error("rateLimit.requests must be at least 1")]
    RateLimit,
    #[error("{0} must be at most 9223372036854775807 (the ledger counts in signed 64 bits)")]
    TooLarge(String),
    #[error(
        "Flowise chatflow {id} is also claimed by {others}: none of them is served until only one claims it"
    )]
    SharedFlowiseId { id: String, others: String },
    #[error(
        "Flowise chatflow {id} is held by {holder}: only that Chatflow is served while it claims it"
    )]
    HeldBy { id: String, holder: String },
    /// An object that does not even parse: a file under `--resources-dir`, or an object the API
    /// server stored before its CRD had the bound or pattern it breaks.
    #[error("does not parse: {0}")]
    Unreadable(String),
}

/// Which chatflows a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatflowSelector {
    /// Every Chatflow in the rule's namespace.
    All,
    /// These Chatflow names in the rule's namespace.
    Names(Vec<String>),
}

impl ChatflowSelector {
    /// A name given twice counts once (the schema lets `['*', '*']` through: a patch that
    /// appends `*` makes it).
    fn parse(names: &[String]) -> Result<Self, InvalidSpec> {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        let wildcard = names.iter().any(|n| n == "*");
        match (wildcard, names.len()) {
            (true, 1) => Ok(Self::All),
            (true, _) => Err(InvalidSpec::MixedWildcard),
            (false, _) => Ok(Self::Names(names)),
        }
    }
}

/// One subject, checked to name exactly one thing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectRule {
    User(String),
    Group(String),
    /// `namespace/name`.
    ServiceAccount(String),
}

impl SubjectRule {
    fn parse(index: usize, subject: &Subject) -> Result<Self, InvalidSpec> {
        match (&subject.user, &subject.group, &subject.service_account) {
            (Some(user), None, None) => Ok(Self::User(user.clone())),
            (None, Some(group), None) => Ok(Self::Group(group.clone())),
            (None, None, Some(sa)) => Ok(Self::ServiceAccount(format!(
                "{}/{}",
                sa.namespace, sa.name
            ))),
            _ => Err(InvalidSpec::Subject { index }),
        }
    }
}

/// Whom and where an invalid CreditPolicy would charge, as far as it can be read: its chatflows
/// (all of its namespace's when the list does not parse) and its subjects (empty, everyone with
/// access, when the list does not parse).
pub fn invalid_policy_reach(policy: &CreditPolicy) -> (ChatflowSelector, Vec<SubjectRule>) {
    let chatflows =
        ChatflowSelector::parse(&policy.spec.chatflows).unwrap_or(ChatflowSelector::All);
    let subjects = subjects(&policy.spec.subjects).unwrap_or_default();
    (chatflows, subjects)
}

fn subjects(list: &[Subject]) -> Result<Vec<SubjectRule>, InvalidSpec> {
    let mut rules = list
        .iter()
        .enumerate()
        .map(|(i, s)| SubjectRule::parse(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    rules.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rules.dedup();
    Ok(rules)
}

/// Where a Chatflow's Flowise chatflow comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatflowSource<'a> {
    Id(String),
    Name(String),
    /// Borrowed: a definition's `flowData` may be a large JSON, and the index compiles every
    /// Chatflow at every change.
    Definition(&'a crd::ChatflowDefinition),
}

/// A Chatflow as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatflowRule {
    pub namespace: String,
    pub name: String,
    /// The Flowise id, from the spec or, once synced, from status.
    pub flowise_id: Option<String>,
    pub flowise_name: Option<String>,
    pub flow_type: Option<String>,
    pub deployed: Option<bool>,
    /// Status says the chatflow exists in Flowise and is usable.
    pub ready: bool,
    /// Status says the chatflow vanished from Flowise (`NotFoundInFlowise`): "deleted" to the
    /// admin API, as the Python service counted removed chatflows.
    pub gone_from_flowise: bool,
    pub suspended: bool,
    pub api_key: Option<SecretKeyRef>,
    /// Flowise binds the chatflow to an API key (status), so predictions must carry one.
    pub api_key_bound: bool,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
    /// The object's uid (none in files mode): which Chatflow of this name it is.
    pub uid: Option<String>,
}

/// Checks the spec of a Chatflow (the rule the schema cannot express).
/// The first input of a document loader that embeds a file, as Flowise's `containsBase64File`
/// reads one (and then stores the file in place of it): a string that matches
/// `/^data.*;base64/i`, or that starts with `[` and is a JSON list of which one element does.
/// It looks only at nodes of the `Document Loaders` category; a file another node takes the
/// same way (an OpenAPI toolkit's YAML, a CSV agent's file) is kept as it is, and matches its
/// definition.
fn embedded_file(nodes: &[serde_json::Value]) -> Option<(usize, String)> {
    let embeds = |text: &str| {
        if text.starts_with('[') {
            return serde_json::from_str::<Vec<serde_json::Value>>(text).is_ok_and(|files| {
                files
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .any(base64_file)
            });
        }
        base64_file(text)
    };
    nodes.iter().enumerate().find_map(|(index, node)| {
        let category = node.pointer("/data/category").and_then(|c| c.as_str());
        if category != Some("Document Loaders") {
            return None;
        }
        let inputs = node.pointer("/data/inputs")?.as_object()?;
        inputs
            .iter()
            .find(|(_, value)| value.as_str().is_some_and(embeds))
            .map(|(name, _)| (index, name.clone()))
    })
}

/// `/^data.*;base64/i` (JavaScript's `.` stops at a line break).
fn base64_file(text: &str) -> bool {
    let line = text
        .split(['\n', '\r', '\u{2028}', '\u{2029}'])
        .next()
        .unwrap_or_default()
        .as_bytes();
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"data")
        && line[4..]
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b";base64"))
}

pub fn chatflow_source(spec: &crd::ChatflowSpec) -> Result<ChatflowSource<'_>, InvalidSpec> {
    let set = [
        spec.flowise_id.is_some(),
        spec.flowise_name.is_some(),
        spec.definition.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    match (&spec.flowise_id, &spec.flowise_name, &spec.definition) {
        (Some(id), None, None) => Ok(ChatflowSource::Id(id.to_ascii_lowercase())),
        (None, Some(name), None) => Ok(ChatflowSource::Name(name.clone())),
        (None, None, Some(def)) => {
            let array = |field| {
                def.flow_data
                    .get(field)
                    .and_then(|v| v.as_array())
                    .ok_or(InvalidSpec::FlowData(field))
            };
            let (nodes, edges) = (array("nodes")?, array("edges")?);
            let node = |n: &serde_json::Value| {
                n.get("id").is_some_and(|id| id.is_string())
                    && n.get("data").is_some_and(|data| data.is_object())
            };
            if let Some(index) = nodes.iter().position(|n| !node(n)) {
                return Err(InvalidSpec::FlowDataNode(index));
            }
            if let Some(index) = edges.iter().position(|e| !e.is_object()) {
                return Err(InvalidSpec::FlowDataEdge(index));
            }
            if let Some((node, input)) = embedded_file(nodes) {
                return Err(InvalidSpec::EmbeddedFile { node, input });
            }
            Ok(ChatflowSource::Definition(def))
        }
        _ => Err(InvalidSpec::ChatflowSource(set)),
    }
}

/// The Flowise chatflow a Chatflow claims (lowercase): the id its spec names, else the one its
/// status found. The spec wins because status can lag behind an edit of `flowiseId`; a status
/// id found for another `flowiseName` than the spec's now names another chatflow, so there is
/// none until the controller resolves the new name.
pub fn flowise_id(source: &ChatflowSource<'_>, status: &crd::ChatflowStatus) -> Option<String> {
    match source {
        ChatflowSource::Id(id) => Some(id.clone()),
        ChatflowSource::Name(name) if status.flowise_name.as_deref() != Some(name) => None,
        _ => status.flowise_id.as_ref().map(|id| id.to_ascii_lowercase()),
    }
}

/// The Flowise chatflow (lowercase id) a Chatflow claims: [`flowise_id`] of a valid spec, the
/// one it is served by. One whose spec is invalid (a mistake the schema lets through, as both
/// `flowiseId` and `flowiseName`) is served none but still claims what its spec's `flowiseId`
/// names, else (an owned definition, say) what its status records: an edit of its own must not
/// hand its chatflow, grants and budgets to another namespace's claim. A status id found for
/// another `flowiseName` than the spec's is not claimed, as [`flowise_id`] reads it: it is
/// stale, kept from before the spec pointed at a name Flowise does not have — unless the spec
/// also has a definition whose name the status records (it came from the definition: adding a
/// `flowiseName` beside it gives nothing up). Whether it holds
/// what it claims is [`holds`]; the controller reports an invalid spec whose claim another holds
/// as `Conflict`.
pub fn claimed_flowise_id(cf: &Chatflow) -> Option<String> {
    let status = cf.status.clone().unwrap_or_default();
    match chatflow_source(&cf.spec) {
        Ok(source) => flowise_id(&source, &status),
        Err(_) => match (&cf.spec.flowise_id, &cf.spec.flowise_name) {
            (Some(id), _) => Some(id.to_ascii_lowercase()),
            (None, Some(name))
                if status.flowise_name.as_deref() != Some(name)
                    && (status.flowise_name.is_none()
                        || status.flowise_name != definition_name(cf)) =>
            {
                None
            }
            (None, _) => status.flowise_id.map(|id| id.to_ascii_lowercase()),
        },
    }
}

/// The name an owned definition gives its chatflow (`definition.name`, else the object's).
fn definition_name(cf: &Chatflow) -> Option<String> {
    let definition = cf.spec.definition.as_ref()?;
    definition.name.clone().or_else(|| cf.metadata.name.clone())
}

/// The Flowise chatflow (lowercase id) a Chatflow that cannot be read claims, as far as its
/// stored document says (`spec.flowiseId`, else the id its status records), and whether its
/// status says it holds it, as [`holds`] reads a readable one. It is never served, but it keeps
/// its claim: one that turned unreadable (a CRD upgrade, not its namespace's doing) must not
/// hand its chatflow, grants and budgets to another namespace's claim. One being deleted
/// claims nothing.
pub fn unreadable_claim(bad: &crd::lenient::Unreadable) -> Option<(String, bool)> {
    unreadable_status(bad, true)
}

/// [`unreadable_claim`], with whether its status says it held the id whatever spec it was
/// written for, as [`held_before`] reads a readable one.
pub fn unreadable_held_before(bad: &crd::lenient::Unreadable) -> Option<(String, bool)> {
    unreadable_status(bad, false)
}

fn unreadable_status(bad: &crd::lenient::Unreadable, current: bool) -> Option<(String, bool)> {
    if bad.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
    };
    let recorded = text(&bad.status, "flowiseId");
    let id = text(&bad.spec, "flowiseId").or_else(|| recorded.clone())?;
    let holds = recorded.as_deref() == Some(id.as_str())
        && bad.conditions.iter().any(|c| {
            c.type_ == crd::conditions::READY
                && c.reason != crd::conditions::reason::CONFLICT
                && (!current || c.observed_generation == bad.metadata.generation)
        });
    Some((id, holds))
}

/// Whether `cf` holds Flowise chatflow `id`: the controller found it there (`status.flowiseId`)
/// and did not find it in conflict with another claim. Of several Chatflows claiming one
/// Flowise chatflow, the one that holds it keeps it and is served; the others are not. Only
/// the controller writes status, so editing a spec to name another's id never makes a holder:
/// no namespace can take over another's chatflow, its grants and budgets, or take it offline.
/// Claims that no one holds (made together, or left after the holder went) are served none
/// until only one remains. A status older than the spec (Ready's `observedGeneration` behind
/// the object's `generation`) holds nothing until the controller has compared the new spec:
/// an edit that points a claim elsewhere and back never brings back what it held before.
pub fn holds(cf: &Chatflow, id: &str) -> bool {
    held_by_status(cf, id, true)
}

/// Whether `cf`'s status says it held `id`, whatever spec it was written for: the controller
/// asks this of the Chatflow whose new spec it has just compared with Flowise (and [`holds`]
/// of every other).
pub fn held_before(cf: &Chatflow, id: &str) -> bool {
    held_by_status(cf, id, false)
}

fn held_by_status(cf: &Chatflow, id: &str, current: bool) -> bool {
    let Some(status) = cf.status.as_ref() else {
        return false;
    };
    status
        .flowise_id
        .as_deref()
        .is_some_and(|held| held.eq_ignore_ascii_case(id))
        && status.conditions.iter().any(|c| {
            c.type_ == crd::conditions::READY
                && c.reason != crd::conditions::reason::CONFLICT
                && (!current || c.observed_generation == cf.metadata.generation)
        })
}

impl TryFrom<&Chatflow> for ChatflowRule {
    type Error = InvalidSpec;

    fn try_from(cf: &Chatflow) -> Result<Self, Self::Error> {
        let source = chatflow_source(&cf.spec)?;
        let status = cf.status.clone().unwrap_or_default();
        let gone_from_flowise = status.conditions.iter().any(|c| {
            c.type_ == crd::conditions::READY
                && c.status == "False"
                && c.reason == crd::conditions::reason::NOT_FOUND_IN_FLOWISE
        });
        let flowise_id = flowise_id(&source, &status);
        // Ready for the id the spec names, not one it named before: after an edit of
        // `flowiseId` the old Ready stands until the controller has checked the new id (its
        // status then carries it), and forwarding meanwhile would reach a chatflow nothing
        // checked, with the old check's key binding.
        let checked = match &source {
            ChatflowSource::Id(id) => status
                .flowise_id
                .as_deref()
                .is_some_and(|found| found.eq_ignore_ascii_case(id)),
            _ => true,
        };
        let ready = checked && crd::conditions::is_true(&status.conditions, crd::conditions::READY);
        let flow_type = status.flow_type.clone().or_else(|| match &source {
            ChatflowSource::Definition(def) => Some(def.flow_type.as_str().to_string()),
            _ => None,
        });
        Ok(Self {
            namespace: cf.metadata.namespace.clone().unwrap_or_default(),
            name: cf.metadata.name.clone().unwrap_or_default(),
            flowise_id,
            flowise_name: status.flowise_name,
            flow_type,
            deployed: status.deployed,
            ready,
            gone_from_flowise,
            suspended: cf.spec.suspended,
            api_key: cf.spec.api_key_secret_ref.clone(),
            api_key_bound: status.api_key_bound.unwrap_or(false),
            // Flowise's own dates; the object's creation until Flowise has told them.
            created: status
                .flowise_created_at
                .or(cf.metadata.creation_timestamp.clone())
                .map(|t| t.0),
            updated: status.flowise_updated_at.map(|t| t.0),
            uid: cf.metadata.uid.clone(),
        })
    }
}

/// A ChatflowAccess as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRule {
    pub namespace: String,
    pub name: String,
    pub chatflows: ChatflowSelector,
    pub subjects: Vec<SubjectRule>,
    pub role: Role,
    pub expires_at: Option<Timestamp>,
    pub suspended: bool,
    /// When the object was created (the admin API's `assigned_at`, unless `assigned` has one).
    pub created: Option<Timestamp>,
    /// When the admin API added each user subject ([`crd::access::ASSIGNED_AT_ANNOTATION`]).
    pub assigned: std::collections::BTreeMap<String, Timestamp>,
    pub rate_limit: Option<crd::RateLimit>,
    /// The Chatflows that own the object (name, uid), as the admin API's objects are owned by
    /// the Chatflow they grant.
    pub owners: Vec<(String, String)>,
    /// Written by the admin API (its label): it grants access, and no rate of its own.
    pub admin_api: bool,
}

impl AccessRule {
    /// Whether the object was written for another Chatflow of `cf`'s name (one deleted, whose
    /// dependents Kubernetes has not collected yet): its users were never granted this one.
    pub fn left_by_former(&self, cf: &ChatflowRule) -> bool {
        let Some(uid) = cf.uid.as_deref() else {
            return false;
        };
        self.owners
            .iter()
            .any(|(name, owner)| *name == cf.name && owner != uid)
    }
}

impl TryFrom<&ChatflowAccess> for AccessRule {
    type Error = InvalidSpec;

    fn try_from(access: &ChatflowAccess) -> Result<Self, Self::Error> {
        Ok(Self {
            namespace: access.metadata.namespace.clone().unwrap_or_default(),
            name: access.metadata.name.clone().unwrap_or_default(),
            chatflows: ChatflowSelector::parse(&access.spec.chatflows)?,
            subjects: subjects(&access.spec.subjects)?,
            role: access.spec.role,
            expires_at: access.spec.expires_at.as_ref().map(|t| t.0),
            suspended: access.spec.suspended,
            created: access.metadata.creation_timestamp.as_ref().map(|t| t.0),
            assigned: crd::access::assigned_at(&access.metadata),
            rate_limit: match access.spec.rate_limit {
                Some(limit) if limit.requests == 0 => return Err(InvalidSpec::RateLimit),
                limit => limit,
            },
            owners: access
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|owner| {
                    owner.kind == "Chatflow"
                        && owner.api_version.split('/').next() == Some(crd::GROUP)
                })
                .map(|owner| (owner.name.clone(), owner.uid.clone()))
                .collect(),
            admin_api: access
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(crd::LABEL_MANAGED_BY))
                .is_some_and(|by| by == crd::MANAGED_BY_ADMIN_API),
        })
    }
}

/// A CreditPolicy as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    /// `namespace/name`: the policy's identity in the ledger.
    pub id: Arc<str>,
    pub namespace: String,
    pub name: String,
    pub chatflows: ChatflowSelector,
    /// Empty: everyone with access.
    pub subjects: Vec<SubjectRule>,
    pub credits: u64,
    pub period: Period,
    pub time_zone: TimeZone,
    pub time_zone_name: String,
    pub scope: BudgetScope,
    pub per_prediction: u64,
    pub per_thousand_tokens: u64,
    /// Tokens held at reserve besides the flat cost (`cost.reserveTokens`).
    pub reserve_tokens: u64,
    pub alert_at_percent: Vec<u8>,
    /// Budgets of their own for some subjects (`PerSubject` only): who, and how many credits.
    pub overrides: Vec<(Vec<SubjectRule>, u64)>,
}

impl PolicyRule {
    /// The credits each budget override gives, for [`crate::ledger::Limits`].
    pub fn override_credits(&self) -> Vec<u64> {
        self.overrides.iter().map(|(_, credits)| *credits).collect()
    }
}

impl TryFrom<&CreditPolicy> for PolicyRule {
    type Error = InvalidSpec;

    fn try_from(policy: &CreditPolicy) -> Result<Self, Self::Error> {
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec;
        let time_zone = TimeZone::get(&spec.budget.time_zone)
            .map_err(|_| InvalidSpec::TimeZone(spec.budget.time_zone.clone()))?;
        // Past the schema (a file under --resources-dir): a flat cost the ledger cannot hold
        // would make every prediction on the policy fail.
        let too_large = |value: u64| i64::try_from(value).is_err();
        for (field, value) in [
            ("budget.credits", spec.budget.credits),
            ("cost.perPrediction", spec.cost.per_prediction),
            ("cost.perThousandTokens", spec.cost.per_thousand_tokens),
        ] {
            if too_large(value) {
                return Err(InvalidSpec::TooLarge(field.to_string()));
            }
        }
        // What a prediction holds with `reserveTokens` (`proxy::credits::held`), exactly: past
        // the ledger's range every prediction on the policy would fail.
        let hold = (u128::from(spec.cost.reserve_tokens)
            * u128::from(spec.cost.per_thousand_tokens))
        .div_ceil(1000)
            + u128::from(spec.cost.per_prediction);
        if i64::try_from(hold).is_err() {
            return Err(InvalidSpec::TooLarge(
                "perPrediction + reserveTokens × perThousandTokens / 1000 (the hold of \
                 cost.reserveTokens)"
                    .into(),
            ));
        }
        if let Some(i) = spec
            .budget
            .overrides
            .iter()
            .position(|o| too_large(o.credits))
        {
            return Err(InvalidSpec::TooLarge(format!(
                "budget.overrides[{i}].credits"
            )));
        }
        if !spec.budget.overrides.is_empty() && spec.budget.scope == BudgetScope::Shared {
            return Err(InvalidSpec::OverridesShared);
        }
        let overrides = spec
            .budget
            .overrides
            .iter()
            .enumerate()
            .map(|(index, o)| {
                subjects(&o.subjects)
                    .map(|who| (who, o.credits))
                    .map_err(|e| match e {
                        InvalidSpec::Subject { index: subject } => {
                            InvalidSpec::OverrideSubject { index, subject }
                        }
                        other => other,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut alerts = spec.alert_at_percent.clone();
        alerts.sort_unstable();
        alerts.dedup();
        Ok(Self {
            id: Arc::from(format!("{namespace}/{name}")),
            chatflows: ChatflowSelector::parse(&spec.chatflows)?,
            subjects: subjects(&spec.subjects)?,
            credits: spec.budget.credits,
            period: spec.budget.period,
            time_zone,
            time_zone_name: spec.budget.time_zone.clone(),
            scope: spec.budget.scope,
            per_prediction: spec.cost.per_prediction,
            per_thousand_tokens: spec.cost.per_thousand_tokens,
            reserve_tokens: u64::from(spec.cost.reserve_tokens),
            alert_at_percent: alerts,
            overrides,
            namespace,
            name,
        })
    }
}

impl ChatflowRule {
    /// The Flowise type, or CHATFLOW when Flowise has not told yet.
    pub fn flow_type_or_default(&self) -> &str {
        self.flow_type
            .as_deref()
            .unwrap_or(ChatflowType::Chatflow.as_str())
    }

    /// The chatflow's name in Flowise, or the object's name until Flowise has told it.
    pub fn shown_name(&self) -> &str {
        self.flowise_name.as_deref().unwrap_or(&self.name)
    }

    /// When the chatflow was created and last updated in Flowise, as Flowise writes them (until
    /// it has told them, when the object was created).
    pub fn dates(&self) -> (Option<String>, Option<String>) {
        (
            self.created.map(|t| t.to_string()),
            self.updated.or(self.created).map(|t| t.to_string()),
        )
    }
}
