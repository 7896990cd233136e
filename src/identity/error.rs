//! Why a bearer token was not accepted: one variant per reason, each with a stable [`reason`].
//!
//! [`reason`]: AuthError::reason

/// Why a token did not yield an [`Identity`](super::Identity).
///
/// Every variant is a 401 for the caller except [`AuthError::KeysUnavailable`] and
/// [`AuthError::ReviewUnavailable`], which are transient (503): nothing can be decided yet. The
/// proxy maps them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or an empty token.
    #[error("no bearer token")]
    Missing,
    /// Not `Bearer <token>`, not three base64url segments, not JSON objects, ….
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token (or its header segment) exceeds the size limit; nothing was decoded.
    #[error("token larger than the limit")]
    TooLarge,
    /// The header's `alg` is `none` or not a signature algorithm flowgate knows.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    /// The header's `alg` is not one the key is for (e.g. `HS256` against an RSA public key).
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    /// No configured or fetched key matches the token's `kid`.
    #[error("no key matches the token")]
    UnknownKey,
    /// The signature does not verify with the key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` (plus leeway) is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the required issuer.
    #[error("token issued by an unexpected issuer")]
    WrongIssuer,
    /// `aud` does not contain the required audience.
    #[error("token meant for another audience")]
    WrongAudience,
    /// A required claim is absent (`exp`, `iss`, `aud`, or every user claim).
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// A claim has the wrong type or shape (a string `exp`, a `sub` that is not a
    /// ServiceAccount's, …).
    #[error("token has an invalid {0} claim")]
    InvalidClaim(String),
    /// No key could be loaded yet from the key sources the token needs, or the token names a
    /// key those keys lack while a source cannot be fetched (it may have added it). Transient.
    #[error("verification keys are not available yet")]
    KeysUnavailable,
    /// The token names a key the sources lack, and was issued after they were last fetched,
    /// within the cooldown that holds back another fetch: it may be signed by a key published
    /// since. Transient; told apart from [`AuthError::KeysUnavailable`] because anyone can
    /// send such a token (its `iat` is not checked before its key is known), so it must not
    /// read as an outage.
    #[error("the token's key may be newer than the verification keys; try again shortly")]
    KeyNotFetchedYet,
    /// The API server no longer accepts this ServiceAccount token (its ServiceAccount or pod is
    /// gone); its reason.
    #[error("the Kubernetes API server refused the ServiceAccount token: {0}")]
    Revoked(String),
    /// The API server could not be asked whether it still accepts this ServiceAccount token,
    /// and no recent answer is at hand. Transient.
    #[error("the ServiceAccount token could not be reviewed with the Kubernetes API server")]
    ReviewUnavailable,
}

impl AuthError {
    /// Stable, low-cardinality name for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::TooLarge => "too_large",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::KeysUnavailable => "keys_unavailable",
            Self::KeyNotFetchedYet => "key_not_fetched_yet",
            Self::Revoked(_) => "revoked",
            Self::ReviewUnavailable => "review_unavailable",
        }
    }

    /// True when trying again later may succeed without a new token.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::KeysUnavailable | Self::KeyNotFetchedYet | Self::ReviewUnavailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::TooLarge,
            AuthError::UnsupportedAlgorithm,
            AuthError::AlgorithmMismatch,
            AuthError::UnknownKey,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingClaim("exp".into()),
            AuthError::InvalidClaim("exp".into()),
            AuthError::KeysUnavailable,
            AuthError::KeyNotFetchedYet,
            AuthError::Revoked("gone".into()),
            AuthError::ReviewUnavailable,
        ];
        let mut reasons: Vec<_> = all.iter().map(AuthError::reason).collect();
        assert!(
            reasons
                .iter()
                .all(|r| r.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
        let transient: Vec<_> = all.iter().filter(|e| e.is_transient()).collect();
        assert_eq!(
            transient,
            [
                &AuthError::KeysUnavailable,
                &AuthError::KeyNotFetchedYet,
                &AuthError::ReviewUnavailable
            ]
        );
    }
}
