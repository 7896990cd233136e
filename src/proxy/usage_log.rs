//! The credits usage log as the HTTP API reads it: the query of `GET /credits/usage` (the
//! caller's own rows) and `GET /api/admin/credits/usage`, and the rows as the API shows them.

use super::error::ProxyError;
use crate::admin::models::CreditUsageRecord;
use crate::ledger::{CreditLedger, UsageFilter};

/// Most usage rows one request returns.
pub const MAX_USAGE_ROWS: u32 = 1000;

/// `subject`, `policy`, `chatflow` (exact), `since` (RFC 3339), `before` (a row id: the next
/// page) and `limit` (1–1000, default 100) of `GET /api/admin/credits/usage` and
/// `GET /credits/usage`; a bad value is a 400 naming its parameter. Each route then decides
/// whose rows and which chatflows the caller may read.
pub fn usage_filter(query: Option<&str>) -> Result<UsageFilter, ProxyError> {
    let mut filter = UsageFilter::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "subject" => filter.subject = Some(text_param("subject", value)?),
            "policy" => filter.policy = Some(text_param("policy", value)?),
            "chatflow" => filter.chatflow = Some(text_param("chatflow", value)?),
            "before" => {
                filter.before = Some(value.parse().map_err(|_| {
                    ProxyError::BadRequest(
                        "query parameter 'before' must be the id of a usage row".into(),
                    )
                })?);
            }
            "since" => {
                filter.since = Some(value.parse().map_err(|_| {
                    ProxyError::BadRequest(
                        "query parameter 'since' must be an RFC 3339 time, like 2026-11-01T00:00:00Z"
                            .into(),
                    )
                })?);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_USAGE_ROWS).contains(n))
                    .ok_or_else(|| {
                        ProxyError::BadRequest(format!(
                            "query parameter 'limit' must be a whole number from 1 to {MAX_USAGE_ROWS}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    Ok(filter)
}

/// A query parameter compared with the ledger's text: no subject, policy or chatflow holds a
/// control character, and PostgreSQL refuses a NUL outright (which would be a 503 and a
/// dropped connection, not the caller's 400).
pub fn text_param(key: &str, value: std::borrow::Cow<'_, str>) -> Result<String, ProxyError> {
    if value.contains(char::is_control) {
        return Err(ProxyError::BadRequest(format!(
            "query parameter '{key}' must not contain control characters"
        )));
    }
    Ok(value.into_owned())
}

/// The usage log rows `filter` selects, as the API shows them; a ledger error is a 503.
pub async fn usage_records(
    ledger: &dyn CreditLedger,
    filter: UsageFilter,
) -> Result<Vec<CreditUsageRecord>, ProxyError> {
    let rows = ledger.usage(filter).await.map_err(|error| {
        tracing::error!(%error, "reading the credits usage log failed");
        ProxyError::LedgerQueryUnavailable
    })?;
    Ok(rows.into_iter().map(Into::into).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_a_text_parameter_are_refused() {
        for query in ["policy=%00", "subject=user%3Aa%0Ab", "chatflow=ns%2Fbot%7F"] {
            let Err(ProxyError::BadRequest(message)) = usage_filter(Some(query)) else {
                panic!("{query} is accepted");
            };
            let key = query.split('=').next().unwrap_or_default();
            assert!(message.contains(&format!("'{key}'")), "{message}");
        }
    }

    #[test]
    fn the_usage_filter_reads_its_parameters_and_names_a_bad_one() {
        let filter = usage_filter(Some(
            "subject=user%3Aalice%40example.com&policy=team-a/monthly&chatflow=team-a%2Fbot&since=2026-11-01T00:00:00Z&before=42&limit=5&other=x",
        ))
        .expect("valid");
        assert_eq!(filter.chatflow.as_deref(), Some("team-a/bot"));
        assert_eq!(filter.subject.as_deref(), Some("user:alice@example.com"));
        assert_eq!(filter.policy.as_deref(), Some("team-a/monthly"));
        assert_eq!(
            filter.since,
            Some("2026-11-01T00:00:00Z".parse().expect("time"))
        );
        assert_eq!(filter.limit, 5);
        assert_eq!(filter.before, Some(42));
        assert_eq!(usage_filter(None).expect("empty").limit, 100);

        for (query, named) in [
            ("since=yesterday", "since"),
            ("before=last", "before"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=", "limit"),
        ] {
            match usage_filter(Some(query)) {
                Err(ProxyError::BadRequest(message)) => {
                    assert!(message.contains(named), "{query}: {message}");
                }
                other => panic!("{query}: {:?}", other.map(|f| f.limit)),
            }
        }
    }
}
