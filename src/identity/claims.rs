//! Registered-claim checks (`exp`, `nbf`, `iss`, `aud`) and the mapping of a verified token's
//! claims onto an [`Identity`]. Pure: time comes in as a number.

use jiff::Timestamp;
use serde_json::Value;

use super::token::ClaimNames;
use super::{AuthError, Identity};
use crate::config::ClaimMapping;
use crate::crd::ServiceAccountRef;

/// [`ClaimMapping`] resolved to claim slots.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) names: ClaimNames,
    user_slots: Vec<usize>,
    /// The `email` claim and `email_verified`, when `email` names users or admins.
    email: Option<(usize, usize)>,
    groups_slot: usize,
    admin_slot: usize,
    admin_value: Box<str>,
}

impl Mapping {
    pub(crate) fn new(mapping: &ClaimMapping) -> Self {
        let mut names = ClaimNames::new();
        let user_slots = mapping.user_claims.iter().map(|c| names.slot(c)).collect();
        let email = (mapping.user_claims.iter().any(|c| c == "email")
            || mapping.admin_claim == "email")
            .then(|| (names.slot("email"), names.slot("email_verified")));
        let groups_slot = names.slot(&mapping.groups_claim);
        let admin_slot = names.slot(&mapping.admin_claim);
        Self {
            names,
            user_slots,
            email,
            groups_slot,
            admin_slot,
            admin_value: mapping.admin_value.as_str().into(),
        }
    }
}

/// What a token's registered claims must satisfy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks<'a> {
    /// Seconds since the epoch.
    pub(crate) now: i64,
    pub(crate) leeway: i64,
    pub(crate) issuer: Option<&'a str>,
    pub(crate) audience: Option<&'a str>,
}

/// Checks `exp` (required, a number), `nbf`, `iss` and `aud`; returns when the token expires.
pub(crate) fn validate(
    claims: &[Option<Value>],
    checks: Checks<'_>,
) -> Result<Timestamp, AuthError> {
    let exp = match numeric_date(claims, ClaimNames::EXP)? {
        Some(exp) => exp,
        None => return Err(AuthError::MissingClaim("exp".into())),
    };
    if exp.saturating_add(checks.leeway) < checks.now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, ClaimNames::NBF)?
        && nbf > checks.now.saturating_add(checks.leeway)
    {
        return Err(AuthError::NotYetValid);
    }
    if let Some(required) = checks.issuer {
        match claim(claims, ClaimNames::ISS) {
            None => return Err(AuthError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if iss == required => {}
            Some(Value::String(_)) => return Err(AuthError::WrongIssuer),
            Some(_) => return Err(AuthError::InvalidClaim("iss".into())),
        }
    }
    if let Some(required) = checks.audience {
        let matches = |v: &Value| v.as_str() == Some(required);
        match claim(claims, ClaimNames::AUD) {
            None => return Err(AuthError::MissingClaim("aud".into())),
            Some(aud @ Value::String(_)) if matches(aud) => {}
            Some(Value::Array(auds)) if auds.iter().any(matches) => {}
            Some(Value::String(_) | Value::Array(_)) => return Err(AuthError::WrongAudience),
            Some(_) => return Err(AuthError::InvalidClaim("aud".into())),
        }
    }
    Ok(Timestamp::from_second(exp).unwrap_or(if exp < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    }))
}

fn claim(claims: &[Option<Value>], slot: usize) -> Option<&Value> {
    claims.get(slot).and_then(Option::as_ref)
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds, fractions allowed. Anything
/// else, a numeric string included, is invalid.
fn numeric_date(claims: &[Option<Value>], slot: usize) -> Result<Option<i64>, AuthError> {
    let invalid = || {
        AuthError::InvalidClaim(
            if slot == ClaimNames::EXP {
                "exp"
            } else {
                "nbf"
            }
            .into(),
        )
    };
    match claim(claims, slot) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            // Truncation is the point: fractional seconds are floored, out-of-range saturates.
            .or_else(|| n.as_f64().map(|f| f.floor() as i64))
            .map(Some)
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// The token's `iat` in whole seconds, as it says (before its signature is checked); `None`
/// without one, or one that is not a number.
pub(crate) fn issued_at(claims: &[Option<Value>]) -> Option<i64> {
    let n = claim(claims, ClaimNames::IAT)?.as_number()?;
    n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64))
}

/// Whether a token says it is a Kubernetes ServiceAccount's, before its keys are known.
pub(crate) fn looks_like_service_account(claims: &[Option<Value>]) -> bool {
    claim(claims, ClaimNames::KUBERNETES).is_some()
        || claim(claims, ClaimNames::SUB)
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with(SA_PREFIX))
}

const SA_PREFIX: &str = "system:serviceaccount:";

/// The identity of a verified user token: user claims in configured order, groups, admin.
pub(crate) fn user_identity(
    mut claims: Vec<Option<Value>>,
    mapping: &Mapping,
    expires_at: Timestamp,
) -> Result<Identity, AuthError> {
    let mut users = Vec::with_capacity(mapping.user_slots.len());
    // An address the provider says it has not verified names no one: with some providers a
    // user can set any address, someone else's included.
    // Without `email_verified` the provider says nothing, and the address counts.
    let unverified = mapping.email.and_then(|(email, verified)| {
        let said_no = match claim(&claims, verified) {
            Some(Value::Bool(verified)) => !verified,
            // Some providers (Amazon Cognito) send it as a string.
            Some(Value::String(verified)) => verified != "true",
            _ => false,
        };
        said_no.then_some(email)
    });
    for &slot in &mapping.user_slots {
        if Some(slot) == unverified {
            continue;
        }
        // A value with a control character names no one: no provider's ids have one, and
        // the ledger (PostgreSQL refuses a NUL in text) keys budgets and limits by it. Nor does
        // one past [`MAX_USER_VALUE`]: PostgreSQL cannot index the key.
        if let Some(Value::String(s)) = claims.get(slot).and_then(Option::as_ref)
            && !s.is_empty()
            && s.len() <= MAX_USER_VALUE
            && !s.contains(char::is_control)
            && !users.contains(s)
        {
            users.push(s.clone());
        }
    }
    // An address also in lower case, as access rules compare addresses (`user_key`); after the
    // values as given, so that the first (the ledger's subject key) stays what it was.
    for i in 0..users.len() {
        if let std::borrow::Cow::Owned(lower) = crate::crd::access::user_key(&users[i])
            && !users.contains(&lower)
        {
            users.push(lower);
        }
    }
    let Some(first) = users.first() else {
        let first_claim = mapping
            .user_slots
            .first()
            .map_or("", |&s| mapping.names.name(s));
        return Err(AuthError::MissingClaim(first_claim.to_string()));
    };
    let key = format!("user:{first}");
    // Nor does it make an admin (`FLOWGATE_ADMIN_CLAIM=email=ops@example.com`).
    let admin = Some(mapping.admin_slot) != unverified
        && is_admin(claim(&claims, mapping.admin_slot), &mapping.admin_value);
    let groups = groups(claims.get_mut(mapping.groups_slot).and_then(Option::take));
    Ok(Identity {
        users,
        groups,
        service_account: None,
        admin,
        key,
        expires_at,
    })
}

/// The longest user value that names someone, in bytes. OIDC's `sub` is at most 255 ASCII
/// characters and an address 254; the ledger keys budgets by the first value, and PostgreSQL
/// refuses an index entry over 2,704 bytes, so a key past it could never be charged there.
const MAX_USER_VALUE: usize = 1024;

/// A groups claim: an array of strings, or one string (Keycloak/Azure style). Other values and
/// non-string members are ignored.
fn groups(value: Option<Value>) -> Vec<String> {
    match value {
        Some(Value::String(group)) if !group.is_empty() => vec![group],
        Some(Value::Array(values)) => values
            .into_iter()
            .filter_map(|v| match v {
                Value::String(group) if !group.is_empty() => Some(group),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The admin claim equals the configured value, or is an array containing it. Booleans and
/// numbers compare by their JSON text (`is_admin=true`).
fn is_admin(value: Option<&Value>, expected: &str) -> bool {
    let scalar = |v: &Value| match v {
        // An address whatever its case, as access rules compare them.
        Value::String(s) => crate::crd::access::same_user(expected, s),
        Value::Bool(b) => expected == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == expected,
        _ => false,
    };
    match value {
        Some(Value::Array(values)) => values.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}

/// The identity of a verified ServiceAccount token, from `sub`
/// (`system:serviceaccount:<ns>:<name>`) and/or the `kubernetes.io` claim; both must agree.
pub(crate) fn service_account_identity(
    claims: &[Option<Value>],
    expires_at: Timestamp,
) -> Result<Identity, AuthError> {
    let from_sub = match claim(claims, ClaimNames::SUB) {
        None => None,
        Some(sub) => Some(
            sub.as_str()
                .and_then(parse_service_account_sub)
                .ok_or_else(|| AuthError::InvalidClaim("sub".into()))?,
        ),
    };
    let from_kubernetes = match claim(claims, ClaimNames::KUBERNETES) {
        None => None,
        Some(k) => Some(
            kubernetes_claim(k).ok_or_else(|| AuthError::InvalidClaim("kubernetes.io".into()))?,
        ),
    };
    let account = match (from_sub, from_kubernetes) {
        (Some(a), Some(b)) if a != b => return Err(AuthError::InvalidClaim("sub".into())),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(AuthError::MissingClaim("sub".into())),
    };
    Ok(Identity {
        users: Vec::new(),
        groups: Vec::new(),
        key: format!("sa:{}/{}", account.namespace, account.name),
        service_account: Some(account),
        admin: false,
        expires_at,
    })
}

fn parse_service_account_sub(sub: &str) -> Option<ServiceAccountRef> {
    let (namespace, name) = sub.strip_prefix(SA_PREFIX)?.split_once(':')?;
    account(namespace, name)
}

fn kubernetes_claim(claim: &Value) -> Option<ServiceAccountRef> {
    let namespace = claim.get("namespace")?.as_str()?;
    let name = claim.get("serviceaccount")?.get("name")?.as_str()?;
    account(namespace, name)
}

fn account(namespace: &str, name: &str) -> Option<ServiceAccountRef> {
    let valid = |s: &str| !s.is_empty() && !s.contains([':', '/']);
    (valid(namespace) && valid(name)).then(|| ServiceAccountRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests;
