//! `POST /api/admin/credits/adjustments`: a global admin gives credits to (or takes them from)
//! one budget in its current period — a refund for an answer that went wrong, a one-off top-up —
//! without editing the CreditPolicy, whose spec stays what GitOps says.
//!
//! The ledger applies it in one durable write that no budget refuses ([`CreditLedger::adjust`]):
//! given credits may take `used` below 0 (more than the budget this period), taken ones past the
//! limit. It is logged in the usage log (outcome `adjusted`, an empty chatflow, the admin and
//! the reason), in the proxy's log and as a Kubernetes Event on the policy naming them too. With an
//! `Idempotency-Key` (scoped to the policy and the subject) a retried adjustment is applied once
//! (409 the second time). It lasts the period: the next period starts from an empty bucket as
//! always.

use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::models::{CreditAdjustment, CreditAdjustmentRequest, PolicyBalances, SubjectBalance};
use super::{Admin, Call};
use crate::crd::{BudgetScope, Role};
use crate::index::{Caller, ChatflowSelector, PolicyRule};
use crate::ledger::{AdjustOutcome, AdjustRequest, Limits, ReservationState, UsageFilter};
use crate::proxy::ProxyError;
use crate::proxy::usage_log::text_param;

/// Longest `reason`, in characters (as the OpenAPI document's `maxLength` counts them; an
/// Event's note, at most 1 KiB, is cut to fit).
const MAX_REASON: usize = 500;

/// Largest adjustment either way. Far beyond any real correction, and far from the ledger's
/// 64 bits however many are made.
const MAX_CREDITS: i64 = 1_000_000_000_000;

/// Longest `subject`, in bytes: a budget's subject is an identity key, `sa:` and a
/// ServiceAccount's namespace and name (up to 320 bytes), or `user:` and a claim of a token,
/// which is at most [`MAX_TOKEN_BYTES`](crate::identity::MAX_TOKEN_BYTES) long.
const MAX_SUBJECT: usize = 5 + crate::identity::MAX_TOKEN_BYTES;

/// Applies one adjustment; global admins only.
pub async fn adjust(
    admin: &Admin,
    req: Request<Incoming>,
    call: &Call<'_>,
) -> Result<CreditAdjustment, ProxyError> {
    if !call.identity.admin {
        return Err(ProxyError::AdminRequired);
    }
    let key = crate::proxy::idempotency_key(&req)?;
    let (body, _held) = call.read_json(req).await?;
    let request: CreditAdjustmentRequest = serde_json::from_value(body.into())
        .map_err(|e| ProxyError::BadRequest(format!("invalid adjustment: {e}")))?;
    if request.credits == 0 || request.credits.unsigned_abs() > MAX_CREDITS.unsigned_abs() {
        return Err(ProxyError::BadRequest(format!(
            "field 'credits' must be a whole number of credits from 1 to {MAX_CREDITS} either way: \
             positive gives, negative takes"
        )));
    }
    let reason = request.reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(ProxyError::BadRequest(format!(
            "field 'reason' must be at most {MAX_REASON} characters, without control characters"
        )));
    }
    let policy = find_policy(call, &request.policy)?;
    let subject = Subject::of(policy, request.subject)?;
    let window = crate::proxy::credits::window(policy, call.now)?;
    let verb = if request.credits > 0 { "gave" } else { "took" };
    let note = format!(
        "{} {verb} {} credits {} {} for the period from {}{}",
        call.identity.key,
        request.credits.unsigned_abs(),
        if request.credits > 0 { "to" } else { "from" },
        subject.key,
        window.start,
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        },
    );
    // A subject no prediction was ever charged as is most likely misspelt (best effort: a
    // failed read, or rows retention deleted, only cost the warning). Its own earlier
    // adjustments do not count.
    let unseen = match policy.scope {
        BudgetScope::Shared => false,
        BudgetScope::PerSubject => admin
            .ledger
            .usage(UsageFilter {
                subject: Some(subject.key.clone()),
                policy: Some(policy.id.to_string()),
                limit: 100,
                ..UsageFilter::default()
            })
            .await
            .is_ok_and(|rows| {
                rows.iter()
                    .all(|row| row.outcome == ReservationState::Adjusted)
            }),
    };
    let adjustment = AdjustRequest {
        policy: policy.id.to_string(),
        bucket: subject.key.clone(),
        window,
        credits: request.credits,
        idempotency_key: key,
        now: call.now,
        actor: call.identity.key.to_string(),
        reason: (!reason.is_empty()).then(|| reason.clone()),
        // An override its name tells, for a bucket this creates (else the policy's budget).
        own_limit: subject
            .overridden
            .then(|| i64::try_from(subject.credits).unwrap_or(i64::MAX)),
    };
    // In a task of its own, the write and its records together: a client that hangs up while
    // the ledger commits must not leave an adjustment without its log line, metric and Event.
    let (ledger, metrics, client) = (
        admin.ledger.clone(),
        admin.metrics.clone(),
        admin.client.clone(),
    );
    let (admin_key, subject_key, policy_rule, credits) = (
        call.identity.key.to_string(),
        subject.key.clone(),
        policy.clone(),
        request.credits,
    );
    let outcome = tokio::spawn(async move {
        let outcome = ledger.adjust(adjustment).await?;
        if let AdjustOutcome::Adjusted { used, .. } = outcome {
            tracing::info!(admin = %admin_key, policy = %policy_rule.id, subject = %subject_key, credits, used, reason, "credits adjusted");
            metrics.credits_adjusted(&policy_rule.id, credits);
            // In the background: a slow API server must not make an unkeyed client time out and
            // adjust again.
            tokio::spawn(record(client, policy_rule, note));
        }
        Ok::<_, crate::ledger::LedgerError>(outcome)
    })
    .await
    .map_err(|e| ProxyError::Internal(format!("the adjustment stopped: {e}")))?
    .map_err(|error| {
        tracing::warn!(%error, "credit adjustment failed");
        ProxyError::LedgerQueryUnavailable
    })?;
    let (id, used) = match outcome {
        AdjustOutcome::Adjusted { id, used } => (id, used),
        AdjustOutcome::Duplicate { .. } => return Err(ProxyError::DuplicateRequest),
    };
    // A budget override its name cannot tell (by email or group) is the limit its bucket was
    // just charged against, as `credits/balances` reads it.
    let own_limit = admin
        .ledger
        .buckets(&policy.id, &window, Some(&subject.key), 1)
        .await
        .inspect_err(|error| tracing::warn!(%error, "reading the adjusted bucket failed"))
        .ok()
        .and_then(|buckets| buckets.into_iter().next())
        .and_then(|bucket| bucket.own_limit);
    let credits = subject.credits_with(&limits_of(policy), own_limit);
    let warning = unseen.then(|| {
        let warning = format!(
            "no prediction was ever charged to {} on {}: flowgate names a caller \
             user:<first user claim> (sub by default) or sa:<namespace>/<name>, as the usage log \
             shows; a subject spelt otherwise has a budget no caller draws from",
            subject.key, policy.id
        );
        tracing::warn!(policy = %policy.id, subject = %subject.key, "credits adjusted for a subject never charged on the policy");
        warning
    });
    Ok(CreditAdjustment {
        warning,
        id: id.0,
        policy: policy.id.to_string(),
        subject: subject.key,
        adjusted: request.credits,
        credits,
        used,
        remaining: remaining(credits, used),
        period_start: window.start.to_string(),
        reset_at: window.end.map(|t| t.to_string()),
    })
}

/// Longest Event note the API server takes, in bytes.
const MAX_NOTE: usize = 1024;

/// Whose budget an adjustment changes.
struct Subject {
    /// The ledger's bucket: the identity key, or `*`.
    key: String,
    /// Its credits per period, as far as the key tells.
    credits: u64,
    /// A budget override naming its user or ServiceAccount set `credits`.
    overridden: bool,
}

impl Subject {
    fn of(policy: &PolicyRule, named: Option<String>) -> Result<Self, ProxyError> {
        let named = named.filter(|s| !s.is_empty());
        match (policy.scope, named) {
            (BudgetScope::Shared, None) => Ok(Self {
                key: "*".into(),
                credits: policy.credits,
                overridden: false,
            }),
            (BudgetScope::Shared, Some(s)) if s == "*" => Ok(Self {
                key: s,
                credits: policy.credits,
                overridden: false,
            }),
            (BudgetScope::Shared, Some(_)) => Err(ProxyError::BadRequest(format!(
                "CreditPolicy {} is Shared: its subjects draw from one budget, so leave 'subject' out",
                policy.id
            ))),
            (BudgetScope::PerSubject, None) => Err(ProxyError::BadRequest(format!(
                "CreditPolicy {} gives each subject its own budget: name it in 'subject' \
                 (user:<first user claim> or sa:<namespace>/<name>, as the usage log shows)",
                policy.id
            ))),
            (BudgetScope::PerSubject, Some(key))
                if key.len() > MAX_SUBJECT || key.chars().any(char::is_control) =>
            {
                Err(ProxyError::BadRequest(format!(
                    "field 'subject' must be at most {MAX_SUBJECT} bytes, without control \
                     characters"
                )))
            }
            (BudgetScope::PerSubject, Some(key)) => {
                let users;
                let caller = if let Some(user) = key.strip_prefix("user:")
                    && !user.is_empty()
                {
                    users = [user.to_string()];
                    Caller {
                        users: &users,
                        ..Caller::default()
                    }
                } else if let Some(account) = key.strip_prefix("sa:")
                    && account.split_once('/').is_some_and(|(ns, name)| {
                        !ns.is_empty() && !name.is_empty() && !name.contains('/')
                    })
                {
                    Caller {
                        service_account: Some(account),
                        ..Caller::default()
                    }
                } else {
                    return Err(ProxyError::BadRequest(
                        "field 'subject' must be user:<first user claim> or \
                         sa:<namespace>/<name>, as the usage log shows"
                            .into(),
                    ));
                };
                let (credits, overridden) = policy.credits_for(&caller);
                Ok(Self {
                    key,
                    credits,
                    overridden,
                })
            }
        }
    }
}

impl Subject {
    /// Its credits per period, its bucket holding `own_limit`: the largest override applies
    /// (as the proxy picks it), so an override its name tells (the current spec's) or, if
    /// larger, the limit its last prediction was charged against while the spec still has an
    /// override of that many (one by email or group, which the name cannot tell; not one since
    /// lowered); without one its name tells, that limit or the policy's.
    fn credits_with(&self, limits: &Limits, own_limit: Option<i64>) -> u64 {
        if self.overridden {
            limits
                .own(own_limit)
                .filter(|own| *own > self.credits)
                .unwrap_or(self.credits)
        } else {
            limits.of_bucket(own_limit)
        }
    }
}

/// The policy's limits as its spec has them now.
fn limits_of(policy: &PolicyRule) -> Limits {
    Limits {
        credits: policy.credits,
        overrides: policy.override_credits(),
    }
}

/// A Normal Event on the policy: who changed whose budget, by how much, and why. Best effort:
/// the ledger and the log already hold the adjustment.
async fn record(client: kube::Client, policy: Arc<PolicyRule>, mut note: String) {
    // The API server refuses a note over 1 KiB; the admin's key is as long as its claim.
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "flowgate-proxy".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("flowgate.io/v1alpha1".into()),
        kind: Some("CreditPolicy".into()),
        name: Some(policy.name.clone()),
        namespace: Some(policy.namespace.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "CreditsAdjusted".into(),
        note: Some(note),
        action: "Adjust".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(%error, policy = %policy.id, "could not publish the CreditsAdjusted Event");
    }
}

/// Most subjects one balances request lists.
const MAX_BALANCES: u32 = 1000;

/// `GET /api/admin/credits/balances?policy=…[&subject=…][&limit=…]`: a policy's budgets in its
/// current period, the most used first — who is close to the limit, who needs a top-up. For a
/// global admin, and for whoever administers (`role: Admin`) every chatflow the policy applies
/// to: a team's admins read their team's budgets (only a global admin changes them).
pub async fn balances(
    admin: &Admin,
    query: Option<&str>,
    call: &Call<'_>,
) -> Result<PolicyBalances, ProxyError> {
    let (mut policy_id, mut subject, mut limit) = (None, None, 100);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "policy" => policy_id = Some(text_param("policy", value)?),
            "subject" if value.is_empty() => {
                return Err(ProxyError::BadRequest(
                    "query parameter 'subject' must not be empty".into(),
                ));
            }
            "subject" => subject = Some(text_param("subject", value)?),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BALANCES).contains(n))
                    .ok_or_else(|| {
                        ProxyError::BadRequest(format!(
                            "query parameter 'limit' must be a whole number from 1 to {MAX_BALANCES}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    let policy_id = policy_id.ok_or_else(|| {
        ProxyError::BadRequest("query parameter 'policy' (namespace/name) is required".into())
    })?;
    let policy = match find_policy(call, &policy_id) {
        Ok(policy) => policy,
        // Anyone else learns nothing about which policies exist.
        Err(error) if call.identity.admin => return Err(error),
        Err(_) => return Err(ProxyError::AdminRequired),
    };
    if !call.identity.admin && !administers_policy(call, policy) {
        return Err(ProxyError::AdminRequired);
    }
    let window = crate::proxy::credits::window(policy, call.now)?;
    let unavailable = |error: crate::ledger::LedgerError| {
        tracing::error!(%error, "reading credit balances failed");
        ProxyError::LedgerQueryUnavailable
    };
    let buckets = admin
        .ledger
        .buckets(&policy.id, &window, subject.as_deref(), limit)
        .await
        .map_err(unavailable)?;
    let limits = limits_of(policy);
    let usage = admin
        .ledger
        .policy_usage(&policy.id, &window, limits.clone())
        .await
        .map_err(unavailable)?;
    let mut balances: Vec<SubjectBalance> = buckets
        .into_iter()
        .map(|bucket| {
            let credits = match Subject::of(policy, Some(bucket.bucket.clone())) {
                Ok(named) => named.credits_with(&limits, bucket.own_limit),
                Err(_) => limits.of_bucket(bucket.own_limit),
            };
            SubjectBalance {
                remaining: remaining(credits, bucket.used),
                subject: bucket.bucket,
                credits,
                used: bucket.used,
            }
        })
        .collect();
    // A subject asked for by name that has not been charged this period has it all.
    if let Some(subject) = subject
        && balances.is_empty()
    {
        let credits = Subject::of(policy, Some(subject.clone()))?.credits;
        balances.push(SubjectBalance {
            subject,
            credits,
            used: 0,
            remaining: remaining(credits, 0),
        });
    }
    Ok(PolicyBalances {
        policy: policy.id.to_string(),
        scope: scope_name(policy.scope).into(),
        period: format!("{:?}", policy.period),
        time_zone: policy.time_zone_name.clone(),
        credits: policy.credits,
        period_start: window.start.to_string(),
        reset_at: window.end.map(|t| t.to_string()),
        credits_used: usage.credits_used,
        subjects_exhausted: usage.buckets_exhausted,
        balances,
    })
}

/// Whether the caller administers every chatflow `policy` charges, whose users' usage its
/// buckets hold: each one it names, all of them Chatflows the index serves (one missing now —
/// not created yet, invalid, in conflict — may come back); for `"*"` every chatflow of its
/// namespace, by an Admin grant of `"*"` there or of each one, while none of the namespace's
/// Chatflows is skipped as invalid.
fn administers_policy(call: &Call<'_>, policy: &PolicyRule) -> bool {
    let snapshot = call.snapshot;
    match &policy.chatflows {
        ChatflowSelector::All => {
            let ns = policy.namespace.as_str();
            let wide = snapshot.namespace_role(call.caller, ns, call.now) == Some(Role::Admin);
            let each = || {
                let mut theirs = snapshot
                    .chatflows()
                    .iter()
                    .filter(|cf| cf.rule.namespace == ns)
                    .peekable();
                theirs.peek().is_some()
                    && theirs.all(|cf| call.administers(cf))
                    && !snapshot
                        .invalid
                        .iter()
                        .any(|i| i.kind == "Chatflow" && i.namespace == ns)
            };
            wide || each()
        }
        ChatflowSelector::Names(names) => {
            !names.is_empty()
                && names.iter().all(|name| {
                    call.snapshot
                        .chatflow_by_name(&policy.namespace, name)
                        .is_some_and(|cf| call.administers(cf))
                })
        }
    }
}

/// The valid CreditPolicy `namespace/name`; 404 when the index does not hold it.
fn find_policy<'s>(call: &'s Call<'_>, id: &str) -> Result<&'s Arc<PolicyRule>, ProxyError> {
    call.snapshot
        .policy_rules()
        .iter()
        .find(|p| *p.id == *id)
        .ok_or_else(|| {
            ProxyError::NotFoundDetail(format!("no valid CreditPolicy {id} (namespace/name)"))
        })
}

fn remaining(credits: u64, used: i64) -> i64 {
    i64::try_from(credits)
        .unwrap_or(i64::MAX)
        .saturating_sub(used)
        .max(0)
}

fn scope_name(scope: BudgetScope) -> &'static str {
    match scope {
        BudgetScope::PerSubject => "PerSubject",
        BudgetScope::Shared => "Shared",
    }
}
