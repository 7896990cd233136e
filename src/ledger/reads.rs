//! What the API reads back from the ledger: a policy's buckets in one window, and the usage
//! log. The queries are written once for both backends; each spells its own placeholders.

use jiff::Timestamp;

use super::{ReservationId, ReservationState};

/// One bucket of a policy in one window ([`super::CreditLedger::buckets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketBalance {
    /// The subject, or `*` for a `Shared` policy.
    pub bucket: String,
    pub used: i64,
    /// The limit its last reserve was charged against, when that was a budget override.
    pub own_limit: Option<i64>,
}

/// The query of [`super::CreditLedger::buckets`]; `param(n)` spells the n-th placeholder, and
/// `bytewise` sorts buckets in byte order (PostgreSQL sorts text by its collation). With a
/// bucket: `(policy, window start, bucket, limit)`, else `(policy, window start, limit)`.
pub(super) fn buckets_query(
    one: bool,
    param: impl Fn(usize, &str) -> String,
    bytewise: &str,
) -> String {
    let (filter, limit) = if one {
        (
            format!(" AND bucket = {}", param(3, "text")),
            param(4, "int8"),
        )
    } else {
        (String::new(), param(3, "int8"))
    };
    format!(
        "SELECT bucket, used, own_limit FROM buckets
         WHERE policy = {} AND window_start = {}{filter}
         ORDER BY used DESC, {bytewise} LIMIT {limit}",
        param(1, "text"),
        param(2, "int8"),
    )
}

/// Which usage log rows to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    pub subject: Option<String>,
    pub policy: Option<String>,
    /// The chatflow, as `namespace/name`.
    pub chatflow: Option<String>,
    /// Only rows at or after this time.
    pub since: Option<Timestamp>,
    /// Only rows after this one in the log's order (newest first): the [`UsageRecord::id`] of
    /// the last row of the previous page. A row retention deleted matches nothing.
    pub before: Option<i64>,
    /// At most this many rows (the newest).
    pub limit: u32,
}

impl Default for UsageFilter {
    fn default() -> Self {
        Self {
            subject: None,
            policy: None,
            chatflow: None,
            since: None,
            before: None,
            limit: 100,
        }
    }
}

/// One budget line of a settle, refund, expiry or final-cost reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The row's own id, unique in the log (the cursor of [`UsageFilter::before`]).
    pub id: i64,
    pub time: Timestamp,
    pub reservation: ReservationId,
    pub subject: String,
    pub chatflow: String,
    pub policy: String,
    /// Change of the charge recorded by the log (see "Usage log" in the `ledger` module's
    /// documentation).
    pub credits: i64,
    /// Tokens Flowise reported (settle only).
    pub tokens: u64,
    /// The state the event moved the reservation to: `Settled`, `Refunded`, `Expired`,
    /// `Charged` or `Adjusted`.
    pub outcome: ReservationState,
    /// An adjustment's: who made it (an identity key).
    pub adjusted_by: Option<String>,
    /// An adjustment's: why, as its admin said.
    pub reason: Option<String>,
}

/// A value bound to the usage query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UsageParam {
    Text(String),
    Int(i64),
}

/// The usage log query for `filter`, with only the conditions it sets, and its parameters.
/// `param(n, kind)` spells the n-th placeholder (1-based) of type `kind` (`text` or `int8`) in
/// the backend's dialect.
///
/// Only the conditions it sets, so that each backend's planner picks the index that matches
/// (`usage_by_subject`, `usage_by_policy`, `usage_by_chatflow` (on PostgreSQL built after start), else `usage_by_time`): written once for every filter
/// as `(?1 IS NULL OR subject = ?1)`, SQLite walked the whole time index backwards for every
/// query, a subject's included (a test checks the plans).
pub(super) fn usage_query(
    filter: &UsageFilter,
    param: impl Fn(usize, &str) -> String,
) -> (String, Vec<UsageParam>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut bind = |value: UsageParam| {
        let kind = match value {
            UsageParam::Text(_) => "text",
            UsageParam::Int(_) => "int8",
        };
        params.push(value);
        param(params.len(), kind)
    };
    for (column, value) in [
        ("subject", &filter.subject),
        ("policy", &filter.policy),
        ("chatflow", &filter.chatflow),
    ] {
        if let Some(value) = value {
            // Beside a subject, a policy or chatflow is checked on the subject's rows, never the
            // index the planner walks: SQLite picks the index created last among equal
            // conditions, and would walk a busy policy's whole history looking for one
            // caller's rows. `|| ''` keeps the column out of any index, in both dialects.
            let keep_off_index = column != "subject" && filter.subject.is_some();
            let column = if keep_off_index {
                format!("{column} || ''")
            } else {
                column.to_string()
            };
            conditions.push(format!(
                "{column} = {}",
                bind(UsageParam::Text(value.clone()))
            ));
        }
    }
    if let Some(since) = filter.since {
        let since = bind(UsageParam::Int(since.as_microsecond()));
        conditions.push(format!("time_us >= {since}"));
    }
    if let Some(before) = filter.before {
        let id = bind(UsageParam::Int(before));
        let at = format!("(SELECT time_us FROM usage WHERE id = {id})");
        // Expanded rather than a row comparison, so that the time bound is an index range.
        conditions.push(format!("time_us <= {at} AND (time_us < {at} OR id < {id})"));
    }
    let limit = bind(UsageParam::Int(i64::from(filter.limit)));
    // An adjustment's who and why from its own table: one primary-key look-up per row read.
    let mut sql = String::from(
        "SELECT id, time_us, usage.reservation_id, subject, chatflow, policy, credits, tokens, \
         outcome, adjustments.actor, adjustments.reason \
         FROM usage LEFT JOIN adjustments ON adjustments.reservation_id = usage.reservation_id",
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY time_us DESC, id DESC LIMIT {limit}"));
    (sql, params)
}
