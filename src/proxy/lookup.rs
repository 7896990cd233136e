//! The small decisions of the request pipeline: the caller as the index matches it, a chatflow
//! looked up by id or by a name the caller can see, whether it may be used now, and how a
//! decision is logged.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::Value;

use super::{ProxyError, ratelimit, request_id};
use crate::identity::Identity;
use crate::index::{AccessRule, Caller, ChatflowEntry, Snapshot};

#[derive(Clone, Copy)]
pub(super) enum Lookup<'a> {
    FlowiseId(&'a str),
    NameOrId(&'a str),
}

pub(super) fn caller(identity: &Identity) -> Caller<'_> {
    Caller {
        users: &identity.users,
        groups: &identity.groups,
        service_account: identity
            .service_account
            .as_ref()
            .and_then(|_| identity.key.strip_prefix("sa:")),
    }
}

/// A 429 for `identity` over `rule`'s rate limit, logged.
pub(super) fn rate_limited(
    identity: &Identity,
    cf: &ChatflowEntry,
    rule: &AccessRule,
    ratelimit::Refused(allowance): ratelimit::Refused,
) -> ProxyError {
    log_decision(identity, cf, "deny", "rate_limited");
    ProxyError::RateLimited {
        access: format!("{}/{}", rule.namespace, rule.name),
        retry_after: ratelimit::whole_secs(allowance.next_in),
        allowance,
    }
}

pub(super) fn log_decision(identity: &Identity, cf: &ChatflowEntry, decision: &str, reason: &str) {
    request_id::with_current(|request_id| {
        tracing::info!(
            subject = %identity.key,
            chatflow = %format_args!("{}/{}", cf.rule.namespace, cf.rule.name),
            decision,
            reason,
            request_id,
        );
    });
}

/// A chatflow named by its Chatflow name among those the caller may use. One the caller may not
/// use is not found (404), as an unknown name is: names are guessable, and a 403 would tell a
/// stranger which exist in other namespaces.
pub(super) fn by_visible_name(
    snapshot: &Snapshot,
    caller: &Caller<'_>,
    name: &str,
    now: jiff::Timestamp,
) -> Result<Option<Arc<ChatflowEntry>>, ProxyError> {
    let matches: Vec<_> = snapshot
        .chatflows()
        .iter()
        .filter(|cf| cf.rule.name == name && snapshot.role(caller, cf, now).is_some())
        .collect();
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        _ => Err(ProxyError::Ambiguous(name.to_string())),
    }
}

/// The Flowise id to forward to, if the chatflow may be used now.
/// A body read since `since` took long enough for its token and grant to be checked again
/// (they may have expired, been revoked, or its ServiceAccount deleted, meanwhile).
pub(super) fn slow(since: std::time::Instant) -> bool {
    since.elapsed() > std::time::Duration::from_secs(1)
}

/// A chatflow the caller may see, unless Flowise no longer has it (deleted in Flowise: the
/// Chatflow object stays, `NotFoundInFlowise`): 404, as Flowise answers.
pub(super) fn listed_in_flowise(cf: &ChatflowEntry, id: &str) -> Result<(), ProxyError> {
    if cf.rule.gone_from_flowise {
        return Err(ProxyError::ChatflowNotFound(id.to_string()));
    }
    Ok(())
}

/// A chatflow the controller last found missing from Flowise (`NotFoundInFlowise`) is a 404, as
/// Flowise itself answers for it, not a 503 `chatflow_unavailable` that tells clients to retry
/// (it may come back: a definition created again, a name adopted once Flowise has it).
pub(super) fn usable(cf: &ChatflowEntry) -> Result<String, ProxyError> {
    let name = || format!("{}/{}", cf.rule.namespace, cf.rule.name);
    if cf.rule.suspended {
        return Err(ProxyError::Suspended(name()));
    }
    if cf.rule.gone_from_flowise {
        return Err(ProxyError::ChatflowNotFound(
            cf.rule.flowise_id.clone().unwrap_or_else(name),
        ));
    }
    match (&cf.rule.flowise_id, cf.rule.ready) {
        (Some(id), true) => Ok(id.clone()),
        _ => Err(ProxyError::ChatflowUnavailable(name())),
    }
}

/// The `Idempotency-Key` header, if any: a retried request with the same key is charged once.
pub(crate) fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_string())),
            _ => Err(ProxyError::BadRequest(
                "Idempotency-Key must be 1-255 visible ASCII characters".into(),
            )),
        },
    }
}

/// Flowise's own error message from an error answer, for our JSON error.
pub(super) fn flowise_message(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or(v.get("error")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    format!("{status}: {message}")
}
