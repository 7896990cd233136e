//! Every reason a request is refused, and the one function that turns it into an HTTP answer:
//! JSON `{"error": {"code": "...", "message": "..."}}` with the right status.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::credits::X_CREDITS_REMAINING;
use super::ratelimit::Allowance;
use crate::server::Body;

/// Why the proxy did not forward a request (or why forwarding failed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The `Allow` header: the methods the path answers (RFC 9110 requires it on a 405).
        allow: &'static str,
    },
    #[error("a bearer token is required")]
    Unauthenticated { reason: &'static str },
    #[error("the token is not valid: {detail}")]
    InvalidToken {
        reason: &'static str,
        detail: String,
    },
    #[error("the identity keys could not be loaded; try again")]
    KeysUnavailable,
    /// The caller's token names a key flowgate may not have fetched yet ([`AuthError::KeyNotFetchedYet`]
    /// (crate::identity::AuthError::KeyNotFetchedYet)): answered as `keys_unavailable`, counted
    /// apart (anyone can send one; it is no outage).
    #[error("the token's key may be newer than flowgate's copy of the key set; try again shortly")]
    KeyNotFetchedYet,
    #[error("flowgate has not loaded its chatflows and grants yet; try again")]
    IndexNotReady,
    #[error(
        "the Kubernetes API server could not be asked whether it still accepts the ServiceAccount token; try again"
    )]
    TokenReviewUnavailable,
    #[error("chatflow {0} not found")]
    ChatflowNotFound(String),
    #[error("no access to chatflow {0}")]
    Forbidden(String),
    #[error("no ChatflowAccess grants this caller any chatflow")]
    NoGrants,
    #[error("chatflow {0} is suspended")]
    Suspended(String),
    #[error("admin rights are required")]
    AdminRequired,
    #[error("chatflow {0} is not available in Flowise right now")]
    ChatflowUnavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(
        "the request body's JSON has more values than flowgate may hold in memory \
         (FLOWGATE_BODY_MEMORY)"
    )]
    TooManyValues,
    #[error("the request body was not received in time")]
    RequestTimeout,
    #[error("the request names chatflow '{0}' ambiguously; use its Flowise id")]
    Ambiguous(String),
    #[error(
        "insufficient credits on policy {policy}: {remaining} left, resets {}",
        reset.as_deref().unwrap_or("never")
    )]
    InsufficientCredits {
        policy: String,
        remaining: i64,
        /// When the budget's period ends (`resetAt`, as `GET /credits` says it); `None` for a
        /// `Never` period.
        reset: Option<String>,
        /// Seconds until the budget resets (`Retry-After`); `None` for a `Never` period.
        retry_after: Option<u64>,
    },
    #[error("rate limit of {access} reached; retry in {retry_after} s")]
    RateLimited {
        /// `namespace/name` of the ChatflowAccess whose limit applies.
        access: String,
        /// Seconds until a request is allowed again (`Retry-After`).
        retry_after: u64,
        /// Nothing left, and when one more request is (`RateLimit-*`).
        allowance: Allowance,
    },
    #[error("a request with this Idempotency-Key is already in progress or done")]
    DuplicateRequest,
    #[error("this chat is still answering an earlier question: send the next one once it ended")]
    ChatBusy,
    #[error(
        "CreditPolicy {policy} applies to this request and is invalid ({problem}): predictions \
         it would charge are refused until it is fixed"
    )]
    PolicyInvalid { policy: String, problem: String },
    #[error("the credits ledger is unavailable")]
    LedgerUnavailable,
    /// As `LedgerUnavailable` (the same answer), for a call that charges no prediction: a
    /// balance, the usage log, an admin's adjustment. Not an access decision.
    #[error("the credits ledger is unavailable")]
    LedgerQueryUnavailable,
    #[error(
        "flowgate holds as many request and answer bodies in memory as FLOWGATE_BODY_MEMORY \
         allows; retry shortly"
    )]
    Overloaded,
    #[error(
        "this caller's request bodies held in memory would pass half of FLOWGATE_BODY_MEMORY; \
         send the next once earlier ones are done"
    )]
    BodyShareFull,
    #[error("{0}")]
    NotConfigured(String),
    #[error("Flowise answered with an error: {0}")]
    Upstream(String),
    #[error("Flowise could not be reached: {0}")]
    UpstreamUnreachable(String),
    /// As `UpstreamUnreachable`, before the request went out (no connection).
    #[error("Flowise could not be reached: {0}")]
    UpstreamNotConnected(String),
    #[error("Flowise did not answer in time")]
    UpstreamTimeout,
    /// Flowise refused the request itself with a 4xx (its own rate limit, a chatflow it no
    /// longer has, input it rejects) on a route that answers in flowgate's shape: its status
    /// (and `Retry-After`) passed on.
    #[error("Flowise refused the request: {message}")]
    UpstreamRefused {
        status: StatusCode,
        message: String,
        retry_after: Option<HeaderValue>,
    },
    /// The token endpoint (`/chat/authenticate`, `/chat/refresh`) failed, not the caller's
    /// credentials: it could not be reached, answered with an error or without a token.
    #[error("the token endpoint failed: {0}")]
    TokenEndpoint(String),
    #[error("the token endpoint did not answer in time")]
    TokenEndpointTimeout,
    /// The token endpoint is limiting requests (429, with its `Retry-After` if it gave one), or
    /// flowgate is already asking it as many grants as it may at once: not a wrong password.
    #[error("the token endpoint is limiting requests; retry shortly")]
    TokenEndpointBusy(Option<HeaderValue>),
    /// Flowise answered, more than flowgate holds of a whole (non-streaming) answer.
    #[error("Flowise's answer is larger than {limit} bytes; ask for a streamed answer")]
    AnswerTooLarge { limit: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFoundDetail(String),
    #[error("Kubernetes API error: {0}")]
    Kubernetes(String),
    /// The API server refused a write for good (invalid, too large, denied by an admission
    /// webhook or by RBAC): asking again changes nothing.
    #[error("the Kubernetes API server refused the change: {0}")]
    KubernetesRefused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// HTTP status and stable code (also the `reason` label of the decision metric, unless
    /// [`ProxyError::reason`] is finer).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ProxyError::*;
        match self {
            NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            InvalidToken { .. } => (StatusCode::UNAUTHORIZED, "invalid_token"),
            KeysUnavailable | KeyNotFetchedYet => {
                (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable")
            }
            IndexNotReady => (StatusCode::SERVICE_UNAVAILABLE, "index_not_ready"),
            TokenReviewUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "token_review_unavailable"),
            ChatflowNotFound(_) => (StatusCode::NOT_FOUND, "chatflow_not_found"),
            Forbidden(_) | NoGrants => (StatusCode::FORBIDDEN, "forbidden"),
            Suspended(_) => (StatusCode::FORBIDDEN, "chatflow_suspended"),
            AdminRequired => (StatusCode::FORBIDDEN, "admin_required"),
            ChatflowUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "chatflow_unavailable"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PayloadTooLarge { .. } | TooManyValues => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Ambiguous(_) => (StatusCode::CONFLICT, "ambiguous_chatflow"),
            InsufficientCredits { .. } => (StatusCode::PAYMENT_REQUIRED, "insufficient_credits"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            DuplicateRequest => (StatusCode::CONFLICT, "duplicate_request"),
            ChatBusy => (StatusCode::CONFLICT, "chat_busy"),
            LedgerUnavailable | LedgerQueryUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable")
            }
            PolicyInvalid { .. } => (StatusCode::SERVICE_UNAVAILABLE, "policy_invalid"),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            BodyShareFull => (StatusCode::TOO_MANY_REQUESTS, "body_memory_share"),
            NotConfigured(_) => (StatusCode::NOT_FOUND, "not_configured"),
            Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            UpstreamUnreachable(_) | UpstreamNotConnected(_) => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable")
            }
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            UpstreamRefused { status, .. } => (*status, "upstream_refused"),
            TokenEndpoint(_) => (StatusCode::BAD_GATEWAY, "token_endpoint_error"),
            TokenEndpointTimeout => (StatusCode::GATEWAY_TIMEOUT, "token_endpoint_timeout"),
            TokenEndpointBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "token_endpoint_busy"),
            AnswerTooLarge { .. } => (StatusCode::BAD_GATEWAY, "answer_too_large"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            NotFoundDetail(_) => (StatusCode::NOT_FOUND, "not_found"),
            Kubernetes(_) => (StatusCode::SERVICE_UNAVAILABLE, "kubernetes_unavailable"),
            // Not 409: the Python service's 409 means "already so", which its clients take for
            // success; a write the API server refused did not happen.
            KubernetesRefused(_) => (StatusCode::BAD_GATEWAY, "kubernetes_refused"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Finer reason for logs and metrics where the code is shared (token problems, a caller no
    /// grant names).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated { reason } | Self::InvalidToken { reason, .. } => reason,
            Self::NoGrants => "no_grants",
            Self::KeyNotFetchedYet => "key_not_fetched_yet",
            other => other.status_and_code().1,
        }
    }

    /// Whether this refusal is an access decision (`flowgate_proxy_decisions_total`): who
    /// the caller is, whether they may, what they may spend, or what that could not be decided
    /// without. Not: a request that is malformed or unrouted, Flowise's failures (counted in
    /// `flowgate_upstream_errors_total`), or errors of the admin API's writes and the ledger's
    /// reads.
    pub fn is_decision(&self) -> bool {
        use ProxyError::*;
        match self {
            Unauthenticated { .. }
            | InvalidToken { .. }
            | KeysUnavailable
            | KeyNotFetchedYet
            | IndexNotReady
            | TokenReviewUnavailable
            | ChatflowNotFound(_)
            | Forbidden(_)
            | NoGrants
            | Suspended(_)
            | AdminRequired
            | ChatflowUnavailable(_)
            | InsufficientCredits { .. }
            | RateLimited { .. }
            | DuplicateRequest
            | ChatBusy
            | LedgerUnavailable
            | PolicyInvalid { .. }
            | Overloaded
            | BodyShareFull => true,
            NotFound { .. }
            | MethodNotAllowed { .. }
            | BadRequest(_)
            | PayloadTooLarge { .. }
            | TooManyValues
            | RequestTimeout
            | Ambiguous(_)
            | LedgerQueryUnavailable
            | NotConfigured(_)
            | Upstream(_)
            | UpstreamUnreachable(_)
            | UpstreamNotConnected(_)
            | UpstreamTimeout
            | UpstreamRefused { .. }
            | TokenEndpoint(_)
            | TokenEndpointTimeout
            | TokenEndpointBusy(_)
            | AnswerTooLarge { .. }
            | Conflict(_)
            | NotFoundDetail(_)
            | Kubernetes(_)
            | KubernetesRefused(_)
            | Internal(_) => false,
        }
    }

    /// The JSON error answer.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let mut error = serde_json::json!({"code": code, "message": self.to_string()});
        if let Self::InsufficientCredits {
            policy,
            remaining,
            reset,
            ..
        } = &self
        {
            error["policy"] = serde_json::json!(policy);
            error["remaining"] = serde_json::json!(remaining);
            error["resetAt"] = serde_json::json!(reset);
        }
        if let Self::RateLimited {
            access,
            retry_after,
            ..
        } = &self
        {
            error["access"] = serde_json::json!(access);
            error["retryAfter"] = serde_json::json!(retry_after);
        }
        if let Self::PolicyInvalid { policy, .. } = &self {
            error["policy"] = serde_json::json!(policy);
        }
        let mut resp = json(status, &serde_json::json!({ "error": error }));
        match self {
            Self::Unauthenticated { .. } | Self::InvalidToken { .. } => {
                resp.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Bearer realm=\"flowgate\""),
                );
            }
            Self::MethodNotAllowed { allow, .. } => {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::KeysUnavailable
            | Self::KeyNotFetchedYet
            | Self::IndexNotReady
            | Self::TokenReviewUnavailable
            | Self::LedgerUnavailable
            | Self::LedgerQueryUnavailable
            | Self::ChatBusy => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TokenEndpointBusy(retry_after) => {
                let retry_after = retry_after
                    .clone()
                    .unwrap_or_else(|| HeaderValue::from_static("1"));
                resp.headers_mut().insert(RETRY_AFTER, retry_after);
            }
            Self::RateLimited {
                retry_after,
                allowance,
                ..
            } => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after));
                allowance.write_headers(resp.headers_mut());
            }
            Self::InsufficientCredits {
                remaining,
                retry_after,
                ..
            } => {
                let remaining = u64::try_from(remaining).unwrap_or(0);
                resp.headers_mut()
                    .insert(X_CREDITS_REMAINING, HeaderValue::from(remaining));
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(secs));
                }
            }
            Self::UpstreamRefused {
                retry_after: Some(wait),
                ..
            } => {
                resp.headers_mut().insert(RETRY_AFTER, wait);
            }
            // The rest of the body may still arrive: this connection cannot carry another request.
            Self::RequestTimeout => {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Self::Overloaded | Self::BodyShareFull => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // Refused before the rest of the body was read.
            Self::PayloadTooLarge { .. } => {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_json_with_code_and_message() {
        let resp = ProxyError::InsufficientCredits {
            policy: "team-a/monthly".into(),
            remaining: 0,
            reset: Some("2026-12-01T00:00:00+01:00".into()),
            retry_after: Some(3600),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(resp.headers()[RETRY_AFTER], "3600");
        assert_eq!(resp.headers()[X_CREDITS_REMAINING], "0");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["error"]["code"], "insufficient_credits");
        assert_eq!(value["error"]["policy"], "team-a/monthly");
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("team-a/monthly"))
        );
        assert_eq!(value["error"]["resetAt"], "2026-12-01T00:00:00+01:00");
    }

    /// A budget that never resets says so as `GET /credits` does: `resetAt` null, and no
    /// `Retry-After`.
    #[tokio::test]
    async fn a_budget_that_never_resets_has_no_reset_time() {
        let resp = ProxyError::InsufficientCredits {
            policy: "team-a/lifetime".into(),
            remaining: 0,
            reset: None,
            retry_after: None,
        }
        .into_response();
        assert!(resp.headers().get(RETRY_AFTER).is_none());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value["error"]["resetAt"],
            serde_json::Value::Null,
            "{value}"
        );
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("resets never")),
            "{value}"
        );
    }

    /// A token whose key may be newer than the key set is answered as any missing key is (try
    /// again), and counted apart: anyone can send one, so it must not fire the outage alert on
    /// `keys_unavailable`.
    #[tokio::test]
    async fn a_key_not_fetched_yet_is_a_503_counted_apart() {
        let error = ProxyError::KeyNotFetchedYet;
        assert!(error.is_decision());
        assert_eq!(error.reason(), "key_not_fetched_yet");
        let resp = error.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["error"]["code"], "keys_unavailable");
    }

    #[test]
    fn token_errors_are_401_and_ledger_errors_fail_closed() {
        let bad = ProxyError::InvalidToken {
            reason: "expired",
            detail: "exp".into(),
        };
        assert_eq!(bad.status_and_code().0, StatusCode::UNAUTHORIZED);
        assert_eq!(bad.reason(), "expired");
        assert_eq!(
            ProxyError::LedgerUnavailable.status_and_code().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ProxyError::UpstreamTimeout.status_and_code().0,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
