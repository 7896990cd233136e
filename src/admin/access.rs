//! Writes to the admin API's own ChatflowAccess objects: one per chatflow,
//! `admin-api-<chatflow>` in the chatflow's namespace, labelled
//! `flowgate.io/managed-by=admin-api`. Every write is a read-modify-write guarded by
//! `resourceVersion` and retried on a 409 conflict, so concurrent admin calls (on any replica)
//! never lose an update. Objects without the label are never modified. The proxy enforces the
//! result through its normal watch, like any other ChatflowAccess.
//!
//! Each object is owned by its Chatflow (an `ownerReference`), so Kubernetes deletes it with the
//! Chatflow however that goes (kubectl, a GitOps prune, the admin API): the users added to one
//! Chatflow are never granted a later Chatflow of the same name.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Client, Resource};

use crate::crd::access::ASSIGNED_AT_ANNOTATION;
use crate::crd::{
    Chatflow, ChatflowAccess, ChatflowAccessSpec, LABEL_MANAGED_BY, MANAGED_BY_ADMIN_API, Role,
    Subject,
};
use crate::proxy::ProxyError;

/// How often a write is retried after losing a race.
const ATTEMPTS: usize = 10;

/// Largest admin API ChatflowAccess written, in bytes of JSON: well under etcd's default
/// request limit (1.5 MiB), which the API server reports as a 500 that never passes. Some
/// 20,000 typical emails; past it, grant a group instead.
const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// Name of the admin API's ChatflowAccess for chatflow `name`.
pub fn object_name(chatflow: &str) -> String {
    format!("admin-api-{chatflow}")
}

/// Whether a ChatflowAccess is the admin API's to change.
pub fn is_managed(access: &ChatflowAccess) -> bool {
    access
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_ADMIN_API)
}

/// The user subject for `value`.
pub fn user(value: &str) -> Subject {
    Subject {
        user: Some(value.to_string()),
        ..Subject::default()
    }
}

/// What an edit of the subjects does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Adds users (some may be listed already).
    Adds,
    Removes,
}

/// Applies `edit` to the subjects of the admin API's ChatflowAccess for `namespace/chatflow`,
/// creating, replacing or (when no subject is left) deleting it. `edit` may run more than once
/// (once per attempt) and must be pure.
pub async fn edit_subjects<R>(
    client: &Client,
    namespace: &str,
    chatflow: &str,
    kind: Edit,
    edit: impl Fn(&mut Vec<Subject>) -> R,
) -> Result<R, ProxyError> {
    let api: Api<ChatflowAccess> = Api::namespaced(client.clone(), namespace);
    let name = object_name(chatflow);
    if name.len() > 253 {
        return Err(ProxyError::Conflict(format!(
            "chatflow name '{chatflow}' is too long for the admin API's ChatflowAccess \
             ({name}: over 253 characters); grant its users with a ChatflowAccess of your own"
        )));
    }
    // The owner, as it is now: the grants are written for this Chatflow, not a former one.
    let owner = owner_of(client, namespace, chatflow).await?;
    for _ in 0..ATTEMPTS {
        let current = api.get_opt(&name).await.map_err(kube_error)?;
        let Some(mut access) = current else {
            let mut subjects = Vec::new();
            let result = edit(&mut subjects);
            if subjects.is_empty() {
                return Ok(result);
            }
            let mut created = new_object(&name, chatflow, subjects, Some(owner.clone()));
            stamp_assigned(
                &mut created.metadata,
                &created.spec.subjects,
                &[],
                jiff::Timestamp::now(),
            );
            fits(&created, namespace)?;
            match api.create(&PostParams::default(), &created).await {
                Ok(_) => return Ok(result),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(kube_error(e)),
            }
        };
        check_own(&access, namespace, chatflow)?;
        // Left by a former Chatflow of this name, not yet collected by Kubernetes: its users
        // were never granted this one.
        let former = owned_by_another(&access, &owner);
        let before = if former {
            Vec::new()
        } else {
            access.spec.subjects.clone()
        };
        let mut subjects = before.clone();
        let result = edit(&mut subjects);
        // Only what the admin API writes is added to: a copy of a GitOps object that kept the
        // label could grant Admin to whoever is added, and a suspended or expiring one would
        // answer "added" (or "already has access") to users it does not let in.
        let adds = kind == Edit::Adds || {
            let before: std::collections::HashSet<&Subject> = before.iter().collect();
            subjects.iter().any(|s| !before.contains(s))
        };
        // Being deleted, another tool's finalizer keeping it: it grants no one, and who would
        // be added into it would go with it. (A removal is written as before.)
        if adds && access.metadata.deletion_timestamp.is_some() {
            return Err(ProxyError::Conflict(format!(
                "ChatflowAccess {namespace}/{name} is being deleted (a finalizer keeps it) and \
                 grants no one meanwhile; try again once it is gone"
            )));
        }
        if adds && !former && !grants_plainly(&access) {
            return Err(ProxyError::Conflict(format!(
                "ChatflowAccess {namespace}/{name} carries the label \
                 {LABEL_MANAGED_BY}={MANAGED_BY_ADMIN_API} but is suspended, expires or grants \
                 more than role User, or limits its rate; the admin API adds no one to it"
            )));
        }
        if subjects == before && !former {
            // Unchanged; an object from before owner references gets its owner on its next write.
            return Ok(result);
        }
        let written = if subjects.is_empty() {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: access.metadata.resource_version.clone(),
                    uid: access.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            api.delete(&name, &params).await.map(|_| ())
        } else {
            if former {
                access.spec = new_object(&name, chatflow, Vec::new(), None).spec;
                // Nor were they assigned it.
                if let Some(annotations) = access.metadata.annotations.as_mut() {
                    annotations.remove(ASSIGNED_AT_ANNOTATION);
                }
            }
            access.spec.subjects = subjects;
            stamp_assigned(
                &mut access.metadata,
                &access.spec.subjects,
                &before,
                jiff::Timestamp::now(),
            );
            let mut owners = access.metadata.owner_references.take().unwrap_or_default();
            owners.retain(|theirs| !same_kind(theirs, &owner));
            owners.push(owner.clone());
            access.metadata.owner_references = Some(owners);
            fits(&access, namespace)?;
            // `replace` sends metadata.resourceVersion: a concurrent write makes it fail with 409.
            api.replace(&name, &PostParams::default(), &access)
                .await
                .map(|_| ())
        };
        match written {
            Ok(()) => return Ok(result),
            Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
            Err(e) => return Err(kube_error(e)),
        }
    }
    // Others kept writing it: worth retrying, as an API server that did not answer is.
    Err(ProxyError::Kubernetes(format!(
        "ChatflowAccess {namespace}/{name} kept changing while being written; try again"
    )))
}

/// Most bytes of [`ASSIGNED_AT_ANNOTATION`]: Kubernetes refuses an object whose annotations
/// pass 256 KiB. Past it (a few thousand users on one chatflow) the newest times are left out,
/// and the listing shows those users the object's creation time.
const MAX_ASSIGNED_BYTES: usize = 128 * 1024;

/// Records in [`ASSIGNED_AT_ANNOTATION`] when each user of `subjects` was added: the time it
/// has for one; for one the object held `before` without a time (written before the
/// annotation), the object's creation, as the listing showed; `now` for one just added. Users
/// no longer there are left out.
fn stamp_assigned(
    meta: &mut ObjectMeta,
    subjects: &[Subject],
    before: &[Subject],
    now: jiff::Timestamp,
) {
    let known = crate::crd::access::assigned_at(meta);
    // The object's creation stands for the users it held before any time was recorded (an
    // object written before the annotation was): not for those left out of a full one, which
    // would then sort first and push the newest recorded times out at every write.
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .filter(|_| known.is_empty());
    let held: std::collections::HashSet<&str> =
        before.iter().filter_map(|b| b.user.as_deref()).collect();
    let mut times: Vec<(&str, jiff::Timestamp)> = subjects
        .iter()
        .filter_map(|s| s.user.as_deref())
        .filter_map(|user| {
            let at = match known.get(user) {
                Some(at) => *at,
                None if held.contains(user) => match created {
                    Some(created) => created,
                    // Left out of a full annotation: stays out.
                    None if !known.is_empty() => return None,
                    None => now,
                },
                None => now,
            };
            // Whole seconds, as Kubernetes writes its own times.
            Some((
                user,
                jiff::Timestamp::from_second(at.as_second()).unwrap_or(at),
            ))
        })
        .collect();
    // Oldest first, so that what does not fit is the newest, and what was kept stays kept.
    times.sort_by_key(|&(user, at)| (at, user));
    let mut kept = BTreeMap::new();
    let mut bytes = 2;
    for (user, at) in times {
        let at = at.to_string();
        // `"user":"time",`, escapes aside (an address has few).
        bytes += user.len() + at.len() + 6;
        if bytes > MAX_ASSIGNED_BYTES {
            break;
        }
        kept.insert(user, at);
    }
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    match serde_json::to_string(&kept) {
        // (Well under Kubernetes' limit still if quotes in addresses made escapes.)
        Ok(json) if !kept.is_empty() && json.len() <= MAX_ASSIGNED_BYTES * 5 / 4 => {
            annotations.insert(ASSIGNED_AT_ANNOTATION.to_string(), json);
        }
        _ => {
            annotations.remove(ASSIGNED_AT_ANNOTATION);
        }
    }
    if annotations.is_empty() {
        meta.annotations = None;
    }
}

/// Refuses an object too large to store: 409, naming what to do instead.
fn fits(access: &ChatflowAccess, namespace: &str) -> Result<(), ProxyError> {
    let size = serde_json::to_vec(access).map_or(usize::MAX, |json| json.len());
    if size > MAX_OBJECT_BYTES {
        let name = access.metadata.name.as_deref().unwrap_or_default();
        return Err(ProxyError::Conflict(format!(
            "ChatflowAccess {namespace}/{name} would be {size} bytes with these users, over the \
             {MAX_OBJECT_BYTES} the admin API writes to one object; grant them with a group \
             (a ChatflowAccess of your own naming an IdP group) instead"
        )));
    }
    Ok(())
}

/// A ChatflowAccess the admin API may change: labelled as its own, and for this one chatflow
/// alone (a removal from an object granting other chatflows too would take them away as well,
/// from an admin of this one only).
pub fn check_own(
    access: &ChatflowAccess,
    namespace: &str,
    chatflow: &str,
) -> Result<(), ProxyError> {
    let name = access.metadata.name.as_deref().unwrap_or_default();
    if !is_managed(access) {
        return Err(ProxyError::Conflict(format!(
            "ChatflowAccess {namespace}/{name} exists without the label \
             {LABEL_MANAGED_BY}={MANAGED_BY_ADMIN_API}; the admin API does not modify it"
        )));
    }
    if access.spec.chatflows != [chatflow] {
        return Err(ProxyError::Conflict(format!(
            "ChatflowAccess {namespace}/{name} carries the label \
             {LABEL_MANAGED_BY}={MANAGED_BY_ADMIN_API} but names other chatflows than \
             {chatflow}; the admin API does not modify it"
        )));
    }
    Ok(())
}

/// What the admin API writes: role User, not suspended, no expiry, no rate limit of its own.
fn grants_plainly(access: &ChatflowAccess) -> bool {
    let spec = &access.spec;
    spec.role == Role::User
        && !spec.suspended
        && spec.expires_at.is_none()
        && spec.rate_limit.is_none()
}

/// The owner reference to Chatflow `namespace/chatflow` as it is now; 404 when it is gone.
async fn owner_of(
    client: &Client,
    namespace: &str,
    chatflow: &str,
) -> Result<OwnerReference, ProxyError> {
    let api: Api<Chatflow> = Api::namespaced(client.clone(), namespace);
    let gone =
        || ProxyError::NotFoundDetail(format!("Chatflow {namespace}/{chatflow} no longer exists"));
    let found = api
        .get_opt(chatflow)
        .await
        .map_err(kube_error)?
        .ok_or_else(gone)?;
    if found.metadata.deletion_timestamp.is_some() {
        return Err(gone());
    }
    found
        .controller_owner_ref(&())
        .map(|mut owner| {
            // An owner, not a controller: the Chatflow's controller does not manage the object.
            owner.controller = None;
            owner.block_owner_deletion = None;
            owner
        })
        .ok_or_else(gone)
}

/// Whether `access` is owned by another Chatflow (another uid) than `owner`.
fn owned_by_another(access: &ChatflowAccess, owner: &OwnerReference) -> bool {
    access
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|theirs| same_kind(theirs, owner) && theirs.uid != owner.uid)
}

fn same_kind(a: &OwnerReference, b: &OwnerReference) -> bool {
    a.kind == b.kind && a.api_version.split('/').next() == b.api_version.split('/').next()
}

fn new_object(
    name: &str,
    chatflow: &str,
    subjects: Vec<Subject>,
    owner: Option<OwnerReference>,
) -> ChatflowAccess {
    ChatflowAccess {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGED_BY_ADMIN_API.to_string(),
            )])),
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: ChatflowAccessSpec {
            chatflows: vec![chatflow.to_string()],
            subjects,
            role: Role::User,
            expires_at: None,
            suspended: false,
            rate_limit: None,
        },
        status: None,
    }
}

/// etcd's refusal of an object over its request limit (1.5 MiB by default), which the API
/// server passes on as a 500 (kubernetes#112152): no retry helps.
fn too_large_for_etcd(status: &kube::core::Status) -> bool {
    status.code == 500 && status.message.contains("request is too large")
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A Kubernetes failure as the proxy's error: 503 for what may pass (the API server down,
/// overloaded, throttling), 502 `kubernetes_refused` for what a retry cannot change — a 4xx
/// such as an invalid or too large object, an admission webhook's or RBAC's denial.
pub fn kube_error(e: kube::Error) -> ProxyError {
    match e {
        // Not 401 (flowgate's own token, refreshed soon), 409 (a race, lost too often), 408
        // and 429 (load): those may pass.
        kube::Error::Api(status)
            if (400..500).contains(&status.code)
                && ![401, 408, 409, 429].contains(&status.code)
                || too_large_for_etcd(&status) =>
        {
            ProxyError::KubernetesRefused(format!(
                "{} ({}): {}",
                status.reason, status.code, status.message
            ))
        }
        // An object the API server stored that flowgate cannot read (from before a CRD bound):
        // no retry helps until someone fixes it.
        kube::Error::SerdeError(error) => ProxyError::KubernetesRefused(format!(
            "an object this needs cannot be read (stored before its CRD had the bound it \
             breaks?); its status or Events name the field: {error}"
        )),
        other => ProxyError::Kubernetes(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("{reason} by the API server"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn each_user_keeps_the_time_it_was_added() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().expect("time");
        let created = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
            "2026-01-01T00:00:00Z",
        )));
        // An object written before the annotation: its users were there at its creation.
        let mut access = new_object("admin-api-x", "x", vec![user("a@x.io")], None);
        access.metadata.creation_timestamp = created;
        let before = access.spec.subjects.clone();
        access.spec.subjects.push(user("b@x.io"));
        let at_b = t("2026-03-01T10:00:00.75Z");
        stamp_assigned(&mut access.metadata, &access.spec.subjects, &before, at_b);
        let times = crate::crd::access::assigned_at(&access.metadata);
        assert_eq!(times["a@x.io"], t("2026-01-01T00:00:00Z"));
        assert_eq!(times["b@x.io"], t("2026-03-01T10:00:00Z"), "whole seconds");
        // Later: c added, a removed; b keeps its time.
        let before = access.spec.subjects.clone();
        access.spec.subjects = vec![user("b@x.io"), user("c@x.io")];
        let at_c = t("2026-04-01T00:00:00Z");
        stamp_assigned(&mut access.metadata, &access.spec.subjects, &before, at_c);
        let times = crate::crd::access::assigned_at(&access.metadata);
        assert_eq!(times.len(), 2);
        assert_eq!(times["b@x.io"], t("2026-03-01T10:00:00Z"));
        assert_eq!(times["c@x.io"], at_c);
        // Too many to record: the oldest times are kept, within the annotation's budget.
        let mut many = access.spec.subjects.clone();
        many.extend((0..4_000).map(|i| user(&format!("someone-{i}@example.com"))));
        let later = t("2026-05-01T00:00:00Z");
        stamp_assigned(&mut access.metadata, &many, &access.spec.subjects, later);
        let json =
            &access.metadata.annotations.as_ref().expect("annotations")[ASSIGNED_AT_ANNOTATION];
        assert!(json.len() <= MAX_ASSIGNED_BYTES, "{}", json.len());
        let times = crate::crd::access::assigned_at(&access.metadata);
        assert!(
            times.len() > 2_000 && times.len() < 4_002,
            "{}",
            times.len()
        );
        assert_eq!(
            times["b@x.io"],
            t("2026-03-01T10:00:00Z"),
            "the oldest stay"
        );
        assert_eq!(times["c@x.io"], at_c);
        // A later write: those left out stay out, those kept keep their times (none left out
        // turns into the object's creation, sorting first and pushing the kept out).
        let kept = times;
        let before = many.clone();
        many.push(user("late@example.com"));
        stamp_assigned(
            &mut access.metadata,
            &many,
            &before,
            t("2026-06-01T00:00:00Z"),
        );
        let times = crate::crd::access::assigned_at(&access.metadata);
        let lost = kept
            .iter()
            .filter(|&(user, at)| times.get(user) != Some(at));
        assert_eq!(lost.count(), 0, "every time kept stays kept");
        // A hand-edited entry that is not a time loses only itself.
        let mut edited = new_object("admin-api-x", "x", vec![], None);
        edited.metadata.annotations = Some(BTreeMap::from([(
            ASSIGNED_AT_ANNOTATION.to_string(),
            r#"{"a@x.io":"2026-01-01T00:00:00Z","b@x.io":null,"c@x.io":"soon"}"#.to_string(),
        )]));
        let times = crate::crd::access::assigned_at(&edited.metadata);
        assert_eq!(times.len(), 1);
        assert_eq!(times["a@x.io"], t("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn an_object_past_the_size_limit_is_refused_before_it_is_written() {
        let few = new_object("admin-api-x", "x", vec![user("a@example.com")], None);
        assert!(fits(&few, "t").is_ok());
        let many: Vec<Subject> = (0..40_000)
            .map(|i| user(&format!("someone-{i}@example.com")))
            .collect();
        let error = fits(&new_object("admin-api-x", "x", many, None), "t").expect_err("too large");
        assert_eq!(error.status_and_code().0, hyper::StatusCode::CONFLICT);
        assert!(error.to_string().contains("group"), "{error}");
        // etcd's own refusal, should one get through: refused, not worth retrying.
        let etcd = api_error(500, "InternalError");
        assert_eq!(
            kube_error(etcd).status_and_code().1,
            "kubernetes_unavailable"
        );
        let etcd = kube::Error::Api(
            kube::core::Status::failure("etcdserver: request is too large", "InternalError")
                .with_code(500)
                .boxed(),
        );
        assert_eq!(kube_error(etcd).status_and_code().1, "kubernetes_refused");
    }

    #[test]
    fn a_refusal_a_retry_cannot_change_is_refused_and_the_rest_unavailable() {
        for (code, reason) in [
            (400, "BadRequest"),
            (403, "Forbidden"),
            (413, "RequestEntityTooLarge"),
            (422, "Invalid"),
        ] {
            let error = kube_error(api_error(code, reason));
            assert_eq!(
                error.status_and_code(),
                (hyper::StatusCode::BAD_GATEWAY, "kubernetes_refused"),
                "{code}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("{reason} by the API server")),
                "{message}"
            );
        }
        for (code, reason) in [
            (401, "Unauthorized"),
            (408, "Timeout"),
            (409, "Conflict"),
            (429, "TooManyRequests"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
        ] {
            let error = kube_error(api_error(code, reason));
            assert_eq!(
                error.status_and_code().1,
                "kubernetes_unavailable",
                "{code}"
            );
        }
    }

    #[test]
    fn an_object_that_cannot_be_read_is_refused_not_a_retry() {
        let unreadable = serde_json::from_str::<u32>("-5").expect_err("not a u32");
        let error = kube_error(kube::Error::SerdeError(unreadable));
        assert_eq!(error.status_and_code().1, "kubernetes_refused");
        assert!(error.to_string().contains("cannot be read"), "{error}");
    }

    #[test]
    fn new_objects_carry_the_label_and_name_one_chatflow() {
        let access = new_object("admin-api-bot", "bot", vec![user("a@b.c")], None);
        assert!(is_managed(&access));
        assert_eq!(access.spec.chatflows, vec!["bot".to_string()]);
        assert_eq!(access.spec.role, Role::User);
    }
}
