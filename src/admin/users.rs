//! Users of a chatflow: list them from the index, add and remove them through the admin API's
//! own ChatflowAccess ([`super::access`]).

use std::collections::BTreeMap;

use kube::Client;

use super::Call;
use super::access::{self, Edit, edit_subjects, object_name};
use super::models::{ChatflowUser, MessageResponse, UserChatflowResponse};
use crate::crd::Role;
use crate::crd::access::{is_address, same_user, user_key};
use crate::index::{AccessRule, ChatflowEntry, ChatflowSelector, SubjectRule};
use crate::proxy::ProxyError;

/// How the entries of an add name their users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Id,
    Email,
}

/// The access rules that cover `cf`.
fn rules_for<'s>(
    call: &'s Call<'_>,
    cf: &'s ChatflowEntry,
) -> impl Iterator<Item = &'s AccessRule> {
    call.snapshot
        .access_rules()
        .iter()
        .map(AsRef::as_ref)
        .filter(move |rule| {
            rule.namespace == cf.rule.namespace
                && match &rule.chatflows {
                    ChatflowSelector::All => true,
                    ChatflowSelector::Names(names) => {
                        names.contains(&cf.rule.name) && !rule.left_by_former(&cf.rule)
                    }
                }
        })
}

fn names_user(rule: &AccessRule, user: &str) -> bool {
    rule.subjects
        .iter()
        .any(|s| matches!(s, SubjectRule::User(u) if same_user(u, user)))
}

/// Every user subject granted `cf`, with the strongest role and the objects that grant it. An
/// address written in several cases is one user, shown as first met.
pub fn list(call: &Call<'_>, cf: &ChatflowEntry) -> Vec<ChatflowUser> {
    let mut users: BTreeMap<String, ChatflowUser> = BTreeMap::new();
    for rule in rules_for(call, cf) {
        let active = !rule.suspended && rule.expires_at.is_none_or(|at| call.now < at);
        for subject in &rule.subjects {
            let SubjectRule::User(value) = subject else {
                continue;
            };
            let key = user_key(value).into_owned();
            let entry = users.entry(key).or_insert_with(|| ChatflowUser {
                user_id: value.clone(),
                username: value.clone(),
                email: is_address(value).then(|| value.clone()),
                role: "User".into(),
                assigned_at: None,
                is_active_in_chatflow: false,
                granted_by: Vec::new(),
            });
            // The earliest grant still standing is when the user was assigned: by the admin
            // API's record of when it added them, else when the granting object was created.
            if let Some(at) = rule.assigned.get(value).copied().or(rule.created) {
                let earlier = entry
                    .assigned_at
                    .as_ref()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok());
                if earlier.is_none_or(|earlier| at < earlier) {
                    entry.assigned_at = Some(at.to_string());
                }
            }
            if active {
                entry.is_active_in_chatflow = true;
                if rule.role == Role::Admin {
                    entry.role = "Admin".into();
                }
            }
            entry
                .granted_by
                .push(format!("{}/{}", rule.namespace, rule.name));
        }
    }
    users.into_values().collect()
}

/// Adds each entry as a user subject; one answer per entry, in order.
pub async fn add(
    client: &Client,
    call: &Call<'_>,
    cf: &ChatflowEntry,
    entries: &[String],
    kind: Kind,
) -> Result<Vec<UserChatflowResponse>, ProxyError> {
    let checked: Vec<Result<String, UserChatflowResponse>> =
        entries.iter().map(|e| check(e, kind)).collect();
    // "Never seen": no ChatflowAccess of the chatflow's namespace names the value. Only there:
    // a chatflow's admin learns nothing of the grants of other teams' namespaces. (One set of
    // keys, not a walk of every object's subjects per entry: a bulk add of 1,000 into a
    // namespace of tens of thousands of users runs on a proxy thread.)
    let seen: std::collections::HashSet<String> = if kind == Kind::Email {
        call.snapshot
            .access_rules()
            .iter()
            .filter(|rule| rule.namespace == cf.rule.namespace)
            .flat_map(|rule| &rule.subjects)
            .filter_map(|s| match s {
                SubjectRule::User(u) => Some(user_key(u).into_owned()),
                _ => None,
            })
            .collect()
    } else {
        std::collections::HashSet::new()
    };
    let known = |value: &str| seen.contains(user_key(value).as_ref());
    let flow = cf.rule.name.clone();
    let (answers, granted) = edit_subjects(
        client,
        &cf.rule.namespace,
        &cf.rule.name,
        Edit::Adds,
        |subjects| {
            let mut granted = Vec::new();
            let mut held: std::collections::HashSet<String> = subjects
                .iter()
                .filter_map(|s| s.user.as_deref())
                .map(|u| user_key(u).into_owned())
                .collect();
            let answers = checked
                .iter()
                .map(|entry| match entry {
                    Err(answer) => answer.clone(),
                    Ok(value) if !held.insert(user_key(value).into_owned()) => {
                        UserChatflowResponse::success(
                            value,
                            format!("User {value} already has access to chatflow {flow}."),
                        )
                    }
                    Ok(value) => {
                        subjects.push(access::user(value));
                        granted.push(value.clone());
                        let message = if kind == Kind::Email && !known(value) {
                            format!("New user {value} created and added to chatflow {flow}.")
                        } else {
                            format!("User {value} successfully added to chatflow {flow}.")
                        };
                        UserChatflowResponse::success(value, message)
                    }
                })
                .collect();
            (answers, granted)
        },
    )
    .await?;
    // Only what was written: not an entry refused, nor one that already had access.
    if !granted.is_empty() {
        super::audit(call, cf, "users granted", &granted);
    }
    Ok(answers)
}

/// The subject value of an entry, or its error answer.
fn check(entry: &str, kind: Kind) -> Result<String, UserChatflowResponse> {
    let value = entry.trim();
    match kind {
        Kind::Email if !is_address(value) => Err(UserChatflowResponse::error(
            None,
            entry,
            format!("Failed to process user {entry}: not a valid email address."),
        )),
        Kind::Id
            if value.is_empty() || value.len() > 512 || value.chars().any(char::is_control) =>
        {
            Err(UserChatflowResponse::error(
                None,
                entry,
                "User id must be 1-512 characters without control characters.".into(),
            ))
        }
        _ => Ok(value.to_string()),
    }
}

/// Removes the admin API's grant of `user` on `cf`.
pub async fn remove(
    client: &Client,
    call: &Call<'_>,
    cf: &ChatflowEntry,
    user: &str,
) -> Result<MessageResponse, ProxyError> {
    let removed = edit_subjects(
        client,
        &cf.rule.namespace,
        &cf.rule.name,
        Edit::Removes,
        |subjects| {
            let before = subjects.len();
            subjects.retain(|s| !s.user.as_deref().is_some_and(|u| same_user(u, user)));
            before != subjects.len()
        },
    )
    .await?;
    if removed {
        super::audit(call, cf, "user revoked", &[user.to_string()]);
    }
    let own = object_name(&cf.rule.name);
    let others: Vec<String> = rules_for(call, cf)
        .filter(|rule| rule.name != own && names_user(rule, user))
        .map(|rule| format!("{}/{}", rule.namespace, rule.name))
        .collect();
    match (removed, others.is_empty()) {
        (true, true) => Ok(MessageResponse {
            message: format!(
                "User {user} access to chatflow {} successfully revoked. A grant naming the \
                 same person by another identifier (an id for an email, or the reverse) is a \
                 grant of its own, untouched.",
                cf.rule.name
            ),
        }),
        (true, false) => Ok(MessageResponse {
            message: format!(
                "User {user} admin-api access to chatflow {} revoked; still granted by ChatflowAccess {} (not managed by the admin API).",
                cf.rule.name,
                others.join(", ")
            ),
        }),
        (false, false) => Err(ProxyError::Conflict(format!(
            "user {user} is granted chatflow {} by ChatflowAccess {}, which the admin API does not manage; change it there",
            cf.rule.name,
            others.join(", ")
        ))),
        (false, true) => Err(ProxyError::NotFoundDetail(format!(
            "user {user} has no access to chatflow {} through the admin API under this \
             identifier (a grant naming the same person by another one is a grant of its own)",
            cf.rule.name
        ))),
    }
}
