//! The index: watched resources compiled into an immutable [`Snapshot`] that the proxy reads.
//!
//! [`compile`] is pure: resources in, lookups out. Bad objects are skipped and reported in
//! [`Snapshot::invalid`], never poisoning the rest. The watch task ([`watch`]) is the one writer;
//! it recompiles on every change and publishes the new snapshot, and a request reads the current
//! snapshot once.

pub mod files;
mod grants;
pub mod rules;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use foldhash::HashMap as FastMap;
use jiff::Timestamp;

use crate::crd::access::same_user;
use crate::crd::{Chatflow, ChatflowAccess, CreditPolicy, Role};
pub use grants::{Access, Limit};
use grants::{Grant, Granted, Holders};
pub use rules::{AccessRule, ChatflowRule, ChatflowSelector, InvalidSpec, PolicyRule, SubjectRule};

/// The raw resources a snapshot is compiled from.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub chatflows: Vec<Arc<Chatflow>>,
    pub accesses: Vec<Arc<ChatflowAccess>>,
    pub policies: Vec<Arc<CreditPolicy>>,
    /// Objects of these kinds that do not parse (a file's typo, an object the API server stored
    /// before its CRD had the bound it breaks), reported as invalid.
    pub unreadable: Vec<Unreadable>,
}

/// An object of a flowgate kind whose document does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// `Chatflow`, `ChatflowAccess` or `CreditPolicy`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub error: String,
    /// For a Chatflow: the Flowise chatflow it claims and whether it holds it
    /// ([`rules::unreadable_claim`]).
    pub claim: Option<(String, bool)>,
}

/// Who is asking, as far as access is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// Values of the identity's user claims (`sub`, `email`, …).
    pub users: &'a [String],
    pub groups: &'a [String],
    /// `namespace/name` of a ServiceAccount token.
    pub service_account: Option<&'a str>,
}

/// A chatflow in the snapshot.
#[derive(Debug)]
pub struct ChatflowEntry {
    /// Position in [`Snapshot::chatflows`].
    pub idx: u32,
    ns: u32,
    pub rule: ChatflowRule,
}

/// One resource the index skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub error: InvalidSpec,
}

/// Logs the resources `now` skips that `before` did not skip for the same reason: a snapshot is
/// compiled again on every change anywhere (the controller's status writes among them), and
/// repeating every skip each time would bury what is new.
pub fn log_newly_invalid(before: &[Invalid], now: &[Invalid]) {
    for invalid in newly_invalid(before, now) {
        let Invalid {
            kind,
            namespace,
            name,
            error,
        } = invalid;
        tracing::warn!(kind = *kind, %namespace, %name, %error, "skipping invalid resource");
    }
}

/// The skips of `now` that `before` does not have, for the same reason.
fn newly_invalid<'a>(before: &[Invalid], now: &'a [Invalid]) -> Vec<&'a Invalid> {
    let key = |i: &Invalid| {
        (
            i.kind,
            i.namespace.clone(),
            i.name.clone(),
            i.error.to_string(),
        )
    };
    let known: HashSet<_> = before.iter().map(key).collect();
    now.iter().filter(|i| !known.contains(&key(i))).collect()
}

/// A CreditPolicy the index skipped, kept with whom it would have charged: with
/// `FLOWGATE_INVALID_POLICIES=refuse` its predictions are refused rather than free.
#[derive(Debug)]
pub struct InvalidPolicy {
    /// `namespace/name`.
    pub id: Arc<str>,
    /// Empty: everyone with access.
    subjects: Vec<SubjectRule>,
    pub error: InvalidSpec,
}

/// Compiled, immutable view of every resource. Cheap to read, rebuilt on every change.
#[derive(Debug, Default)]
pub struct Snapshot {
    chatflows: Vec<Arc<ChatflowEntry>>,
    by_flowise_id: FastMap<String, u32>,
    by_name: HashMap<String, HashMap<String, u32>>,
    namespaces: Vec<String>,
    ns_chatflows: Vec<Vec<u32>>,
    /// Grants by chatflow idx.
    chatflow_holders: Vec<Holders>,
    /// `"*"` grants by namespace idx.
    namespace_holders: Vec<Holders>,
    /// Every subject named by a grant of some chatflow.
    granted: Granted,
    /// Policies by chatflow idx (named or `*`), each with the subjects it applies to.
    policies: Vec<Vec<Arc<PolicyRule>>>,
    access_rules: Vec<Arc<AccessRule>>,
    policy_rules: Vec<Arc<PolicyRule>>,
    /// Some valid CreditPolicy prices tokens.
    prices_tokens: bool,
    /// Invalid CreditPolicies by the chatflow idx they name, sorted by policy id.
    invalid_policies: FastMap<u32, Vec<Arc<InvalidPolicy>>>,
    /// Resources skipped because their spec is invalid.
    pub invalid: Vec<Invalid>,
    /// When the snapshot was compiled.
    pub compiled_at: Option<Timestamp>,
}

/// Compiles `resources` into a snapshot. Pure: same input, same output.
pub fn compile(resources: &Resources) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut ns_index: HashMap<String, u32> = HashMap::new();

    // A Chatflow being deleted (its Flowise chatflow being removed, or a finalizer of another
    // tool holding it) is not served, and claims nothing.
    let rules: Vec<_> = resources
        .chatflows
        .iter()
        .filter(|cf| cf.metadata.deletion_timestamp.is_none())
        .map(|cf| (cf, ChatflowRule::try_from(cf.as_ref())))
        .collect();
    // Who claims each Flowise chatflow, and whether each holds it ([`rules::holds`]). Of several
    // claims, only the one that holds it alone is served; none when no one (or more than one)
    // holds it.
    // One whose spec is invalid is served none but still claims ([`rules::claimed_flowise_id`]).
    let mut claimants: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for (cf, _) in &rules {
        if let Some(id) = rules::claimed_flowise_id(cf) {
            let holds = rules::holds(cf, &id);
            let meta = &cf.metadata;
            claimants.entry(id).or_default().push((
                format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default()
                ),
                holds,
            ));
        }
    }
    for bad in &resources.unreadable {
        if let Some((id, holds)) = &bad.claim {
            claimants
                .entry(id.clone())
                .or_default()
                .push((format!("{}/{}", bad.namespace, bad.name), *holds));
        }
    }

    for (cf, rule) in rules {
        let rule = match rule {
            Ok(rule) => rule,
            Err(error) => {
                snap.skip("Chatflow", &cf.metadata, error);
                continue;
            }
        };
        if let Some(id) = &rule.flowise_id
            && let Some(all) = claimants.get(&id.to_ascii_lowercase())
            && all.len() > 1
        {
            let me = format!("{}/{}", rule.namespace, rule.name);
            let holders: Vec<&str> = all
                .iter()
                .filter(|(_, holds)| *holds)
                .map(|(name, _)| name.as_str())
                .collect();
            let error = match holders.as_slice() {
                [holder] if *holder == me => None,
                [holder] => Some(InvalidSpec::HeldBy {
                    id: id.clone(),
                    holder: (*holder).to_string(),
                }),
                _ => Some(InvalidSpec::SharedFlowiseId {
                    id: id.clone(),
                    others: all
                        .iter()
                        .filter(|(name, _)| *name != me)
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            };
            if let Some(error) = error {
                snap.skip("Chatflow", &cf.metadata, error);
                continue;
            }
        }
        let ns = intern(
            &mut ns_index,
            &mut snap.namespaces,
            &mut snap.ns_chatflows,
            &rule.namespace,
        );
        let idx = u32::try_from(snap.chatflows.len()).unwrap_or(u32::MAX);
        if let Some(id) = &rule.flowise_id {
            snap.by_flowise_id.insert(id.clone(), idx);
        }
        snap.by_name
            .entry(rule.namespace.clone())
            .or_default()
            .insert(rule.name.clone(), idx);
        snap.ns_chatflows[ns as usize].push(idx);
        snap.chatflows
            .push(Arc::new(ChatflowEntry { idx, ns, rule }));
    }

    snap.chatflow_holders
        .resize_with(snap.chatflows.len(), Holders::default);
    snap.namespace_holders
        .resize_with(snap.namespaces.len(), Holders::default);
    snap.policies.resize_with(snap.chatflows.len(), Vec::new);

    for access in &resources.accesses {
        // Deleted, though a finalizer (another tool's) keeps the object: its grants end now,
        // and it is not listed (the admin API's user listing reads the listed rules).
        if access.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let rule = match AccessRule::try_from(access.as_ref()) {
            Ok(rule) => Arc::new(rule),
            Err(error) => {
                snap.skip("ChatflowAccess", &access.metadata, error);
                continue;
            }
        };
        let position = u32::try_from(snap.access_rules.len()).unwrap_or(u32::MAX);
        snap.access_rules.push(rule.clone());
        if rule.suspended {
            continue;
        }
        let grant = Grant {
            role: rule.role,
            expires_at: rule.expires_at,
            limit: rule.rate_limit.map(|rate| Limit {
                rule: position,
                rate,
            }),
            inherits_limit: rule.admin_api,
        };
        let (holders, at) = match snap.targets(&rule.namespace, &rule.chatflows, &ns_index) {
            Target::Namespace(ns) => (&mut snap.namespace_holders, vec![ns]),
            Target::Chatflows(mut ids) => {
                ids.retain(|&i| {
                    snap.chatflows
                        .get(i as usize)
                        .is_some_and(|cf| !rule.left_by_former(&cf.rule))
                });
                (&mut snap.chatflow_holders, ids)
            }
            Target::Nothing => continue,
        };
        if !at.is_empty() {
            for subject in &rule.subjects {
                snap.granted.add(subject);
            }
        }
        for i in at {
            let Some(holder) = holders.get_mut(i as usize) else {
                continue;
            };
            for subject in &rule.subjects {
                holder.grant(subject, grant);
            }
        }
    }

    for holder in snap
        .chatflow_holders
        .iter_mut()
        .chain(snap.namespace_holders.iter_mut())
    {
        holder.fold_lasting();
    }

    for policy in &resources.policies {
        // Deleted, held only by another tool's finalizer: it neither charges nor refuses, as
        // an access being deleted grants nothing.
        if policy.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let rule = match PolicyRule::try_from(policy.as_ref()) {
            Ok(rule) => Arc::new(rule),
            Err(error) => {
                let (chatflows, subjects) = rules::invalid_policy_reach(policy);
                let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
                let name = policy.metadata.name.as_deref().unwrap_or_default();
                let invalid = Arc::new(InvalidPolicy {
                    id: Arc::from(format!("{namespace}/{name}")),
                    subjects,
                    error: error.clone(),
                });
                for id in snap.chatflow_ids(namespace, &chatflows, &ns_index) {
                    snap.invalid_policies
                        .entry(id)
                        .or_default()
                        .push(invalid.clone());
                }
                snap.skip("CreditPolicy", &policy.metadata, error);
                continue;
            }
        };
        snap.prices_tokens |= rule.per_thousand_tokens > 0;
        snap.policy_rules.push(rule.clone());
        for id in snap.chatflow_ids(&rule.namespace, &rule.chatflows, &ns_index) {
            if let Some(rules) = snap.policies.get_mut(id as usize) {
                rules.push(rule.clone());
            }
        }
    }
    for object in &resources.unreadable {
        let error = InvalidSpec::Unreadable(object.error.clone());
        // A policy that does not parse would still have charged something: with
        // `FLOWGATE_INVALID_POLICIES=refuse` it stops everything in its namespace.
        if object.kind == "CreditPolicy" {
            let invalid = Arc::new(InvalidPolicy {
                id: Arc::from(format!("{}/{}", object.namespace, object.name)),
                subjects: Vec::new(),
                error: error.clone(),
            });
            for id in snap.chatflow_ids(&object.namespace, &ChatflowSelector::All, &ns_index) {
                snap.invalid_policies
                    .entry(id)
                    .or_default()
                    .push(invalid.clone());
            }
        }
        snap.invalid.push(Invalid {
            kind: object.kind,
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            error,
        });
    }
    for rules in &mut snap.policies {
        rules.sort_by(|a, b| a.id.cmp(&b.id));
    }
    for invalid in snap.invalid_policies.values_mut() {
        invalid.sort_by(|a, b| a.id.cmp(&b.id));
    }
    snap
}

enum Target {
    Namespace(u32),
    Chatflows(Vec<u32>),
    Nothing,
}

fn intern(
    index: &mut HashMap<String, u32>,
    names: &mut Vec<String>,
    members: &mut Vec<Vec<u32>>,
    ns: &str,
) -> u32 {
    if let Some(i) = index.get(ns) {
        return *i;
    }
    let i = u32::try_from(names.len()).unwrap_or(u32::MAX);
    index.insert(ns.to_string(), i);
    names.push(ns.to_string());
    members.push(Vec::new());
    i
}

impl Snapshot {
    fn skip(&mut self, kind: &'static str, meta: &kube::api::ObjectMeta, error: InvalidSpec) {
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        self.invalid.push(Invalid {
            kind,
            namespace,
            name,
            error,
        });
    }

    /// The chatflows `selector` names in `ns`.
    fn chatflow_ids(
        &self,
        ns: &str,
        selector: &ChatflowSelector,
        ns_index: &HashMap<String, u32>,
    ) -> Vec<u32> {
        match self.targets(ns, selector, ns_index) {
            Target::Namespace(ns) => self.ns_chatflows[ns as usize].clone(),
            Target::Chatflows(ids) => ids,
            Target::Nothing => Vec::new(),
        }
    }

    fn targets(
        &self,
        ns: &str,
        selector: &ChatflowSelector,
        ns_index: &HashMap<String, u32>,
    ) -> Target {
        match (selector, ns_index.get(ns)) {
            (_, None) => Target::Nothing,
            (ChatflowSelector::All, Some(ns)) => Target::Namespace(*ns),
            (ChatflowSelector::Names(names), Some(_)) => Target::Chatflows(
                names
                    .iter()
                    .filter_map(|n| self.by_name.get(ns).and_then(|m| m.get(n)).copied())
                    .collect(),
            ),
        }
    }

    /// The chatflow Flowise knows by `flowise_id`.
    pub fn chatflow_by_flowise_id(&self, flowise_id: &str) -> Option<&Arc<ChatflowEntry>> {
        let idx = match self.by_flowise_id.get(flowise_id) {
            Some(idx) => *idx,
            // Flowise ids are UUIDs; accept any case without allocating on the common path.
            None => *self.by_flowise_id.get(&flowise_id.to_ascii_lowercase())?,
        };
        self.chatflows.get(idx as usize)
    }

    /// The Chatflow object `namespace/name`.
    pub fn chatflow_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<ChatflowEntry>> {
        let idx = *self.by_name.get(namespace)?.get(name)?;
        self.chatflows.get(idx as usize)
    }

    /// Every chatflow, in compile order.
    pub fn chatflows(&self) -> &[Arc<ChatflowEntry>] {
        &self.chatflows
    }

    /// Every valid ChatflowAccess.
    pub fn access_rules(&self) -> &[Arc<AccessRule>] {
        &self.access_rules
    }

    /// Every valid CreditPolicy.
    pub fn policy_rules(&self) -> &[Arc<PolicyRule>] {
        &self.policy_rules
    }

    /// The strongest role `caller` holds on `chatflow` at `now`, if any.
    pub fn role(
        &self,
        caller: &Caller<'_>,
        chatflow: &ChatflowEntry,
        now: Timestamp,
    ) -> Option<Role> {
        self.access(caller, chatflow, now).map(|access| access.role)
    }

    /// What `caller` may do with `chatflow` at `now`: `None` without a live grant. Access is the
    /// union of the grants, so the strongest role and the most generous rate limit count: none
    /// if a grant has none, except one of the admin API's, which takes the others' limit.
    pub fn access(
        &self,
        caller: &Caller<'_>,
        chatflow: &ChatflowEntry,
        now: Timestamp,
    ) -> Option<Access> {
        let exact = self.chatflow_holders.get(chatflow.idx as usize);
        let wide = self.namespace_holders.get(chatflow.ns as usize);
        let grants = exact.into_iter().chain(wide).flat_map(|h| h.of(caller));
        let mut role: Option<Role> = None;
        let mut limit: Option<Limit> = None;
        let mut unlimited = false;
        for grant in grants.filter(|g| g.live(now)) {
            role = Some(role.map_or(grant.role, |held| held.max(grant.role)));
            match grant.limit {
                Some(other) => {
                    limit = match limit {
                        Some(held) if !other.more_than(&held) => Some(held),
                        _ => Some(other),
                    };
                }
                None => unlimited |= !grant.inherits_limit,
            }
        }
        role.map(|role| Access {
            role,
            limit: limit.filter(|_| !unlimited),
        })
    }

    /// The strongest role `caller` holds at `now` on every chatflow of `namespace`, present and
    /// future (grants of `"*"` there): `None` without one.
    pub fn namespace_role(
        &self,
        caller: &Caller<'_>,
        namespace: &str,
        now: Timestamp,
    ) -> Option<Role> {
        let ns = self.namespaces.iter().position(|n| n == namespace)?;
        self.namespace_holders
            .get(ns)?
            .of(caller)
            .filter(|grant| grant.live(now))
            .map(|grant| grant.role)
            .max()
    }

    /// Whether some CreditPolicy prices tokens: only then can two predictions in one chat
    /// shift a charge (a token-priced run's events read on another prediction's stream).
    pub fn prices_tokens(&self) -> bool {
        self.prices_tokens
    }

    /// Whether some grant names `caller`, live or not: a few lookups, to refuse a caller with no
    /// access at all before work that only access should cost (the compat route reads a body
    /// before it knows the chatflow). [`Snapshot::access`] still decides.
    pub fn grants_anything(&self, caller: &Caller<'_>) -> bool {
        self.granted.names(caller)
    }

    /// The chatflows `caller` may use at `now`, in compile order.
    pub fn visible(&self, caller: &Caller<'_>, now: Timestamp) -> Vec<&Arc<ChatflowEntry>> {
        self.chatflows
            .iter()
            .filter(|cf| self.role(caller, cf, now).is_some())
            .collect()
    }

    /// The credit policies that apply to `caller` on `chatflow`, sorted by policy id.
    pub fn policies_for<'s>(
        &'s self,
        caller: &Caller<'_>,
        chatflow: &ChatflowEntry,
    ) -> Vec<&'s Arc<PolicyRule>> {
        self.policies
            .get(chatflow.idx as usize)
            .into_iter()
            .flatten()
            .filter(|rule| {
                rule.subjects.is_empty() || rule.subjects.iter().any(|s| matches(s, caller))
            })
            .collect()
    }

    /// The first invalid CreditPolicy, by id, that would have applied to `caller` on
    /// `chatflow` had it been valid.
    pub fn invalid_policy_for(
        &self,
        caller: &Caller<'_>,
        chatflow: &ChatflowEntry,
    ) -> Option<&Arc<InvalidPolicy>> {
        if self.invalid_policies.is_empty() {
            return None;
        }
        self.invalid_policies
            .get(&chatflow.idx)?
            .iter()
            .find(|p| p.subjects.is_empty() || p.subjects.iter().any(|s| matches(s, caller)))
    }

    /// The chatflows the valid CreditPolicy `id` (`namespace/name`) applies to.
    pub fn chatflows_of_policy(&self, id: &str) -> Vec<&Arc<ChatflowEntry>> {
        self.policies
            .iter()
            .zip(&self.chatflows)
            .filter(|(rules, _)| rules.iter().any(|rule| *rule.id == *id))
            .map(|(_, cf)| cf)
            .collect()
    }

    /// Namespace of a chatflow entry.
    pub fn namespace_of(&self, chatflow: &ChatflowEntry) -> &str {
        self.namespaces
            .get(chatflow.ns as usize)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

impl PolicyRule {
    /// The credits per period `caller` has on this policy: the largest budget override naming
    /// it, else `credits`; and whether an override set it.
    pub fn credits_for(&self, caller: &Caller<'_>) -> (u64, bool) {
        self.overrides
            .iter()
            .filter(|(who, _)| who.iter().any(|s| matches(s, caller)))
            .map(|(_, credits)| *credits)
            .max()
            .map_or((self.credits, false), |credits| (credits, true))
    }
}

fn matches(subject: &SubjectRule, caller: &Caller<'_>) -> bool {
    match subject {
        SubjectRule::User(u) => caller.users.iter().any(|v| same_user(u, v)),
        SubjectRule::Group(g) => caller.groups.iter().any(|v| v == g),
        SubjectRule::ServiceAccount(sa) => caller.service_account == Some(sa.as_str()),
    }
}
