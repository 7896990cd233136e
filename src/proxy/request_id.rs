//! `X-Request-Id`: one id per request, in the decision log line, sent to Flowise and returned
//! to the caller, so a caller's report, flowgate's log and Flowise's can be matched.
//!
//! A caller's own id is kept when it is plausible (1–128 visible ASCII characters, as set by
//! an ingress or a client library); anything else is replaced by a fresh one.

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

/// The header, in requests to Flowise and in every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied id kept.
const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The id of the request being answered, for its log lines.
    static CURRENT: HeaderValue;
}

/// The request's id: the caller's when plausible, otherwise a fresh one.
pub fn assign(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID).filter(|id| plausible(id)) {
        Some(id) => id.clone(),
        None => fresh(),
    }
}

/// The current request's id, for a request to Flowise made on its behalf.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Runs `work` with `id` as the current request's id.
pub fn scope<F: std::future::Future>(id: HeaderValue, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, work)
}

/// Calls `f` with the current request's id (empty outside a request).
pub fn with_current<T>(f: impl FnOnce(&str) -> T) -> T {
    let current = CURRENT.try_with(HeaderValue::clone).ok();
    f(current
        .as_ref()
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default())
}

fn plausible(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// 32 lowercase hex digits (a random UUID without dashes).
fn fresh() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plausible_caller_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("ingress-7f3a:42"));
        assert_eq!(assign(&headers), "ingress-7f3a:42");

        for bad in [String::new(), "has space".into(), "x".repeat(MAX_LEN + 1)] {
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(&bad).expect("header"));
            let id = assign(&headers);
            assert_eq!(id.len(), 32, "{bad:?} replaced by a fresh id");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn fresh_ids_differ() {
        let none = HeaderMap::new();
        assert_ne!(assign(&none), assign(&none));
    }

    #[tokio::test]
    async fn the_current_id_is_seen_inside_its_scope_only() {
        let id = HeaderValue::from_static("req-1");
        let inside = scope(id, async { (with_current(str::to_string), current()) }).await;
        assert_eq!(inside.0, "req-1");
        assert_eq!(inside.1, Some(HeaderValue::from_static("req-1")));
        assert_eq!(with_current(str::to_string), "");
        assert_eq!(current(), None);
    }
}
