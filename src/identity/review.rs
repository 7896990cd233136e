//! Whether the API server still accepts a ServiceAccount token (a `TokenReview`).
//!
//! The signature and `exp` say only that the cluster issued the token. Kubernetes also refuses
//! a token once its ServiceAccount is deleted (or recreated under the same name), and a
//! pod-bound token once its pod is gone; its `exp` can be a year away (the API server extends
//! kubelet tokens by default). Only the API server knows, so each ServiceAccount token is
//! reviewed when first seen and again once its review is older than the review interval
//! (`Verifier::verify`).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::crd::ServiceAccountRef;

/// What the API server said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Review {
    /// Authenticated, as the ServiceAccount the token names.
    Accepted,
    /// Not authenticated, or as someone else; the API server's reason.
    Refused(String),
    /// No answer (unreachable, timed out, an error status): nothing is known.
    Unavailable(String),
}

pub(super) struct Reviewer {
    client: kube::Client,
    audience: String,
    timeout: Duration,
}

impl Reviewer {
    pub(super) fn new(client: kube::Client, audience: String, timeout: Duration) -> Self {
        Self {
            client,
            audience,
            timeout,
        }
    }

    /// Reviews `token`, which verified locally as `account`'s.
    pub(super) async fn review(&self, token: &str, account: &ServiceAccountRef) -> Review {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &request)).await;
        match answer {
            Err(_) => Review::Unavailable(format!("no answer within {:?}", self.timeout)),
            Ok(Err(error)) => Review::Unavailable(error.to_string()),
            Ok(Ok(review)) => judge(&review, &self.audience, account),
        }
    }
}

/// The verdict of a `TokenReview` answer on a token of `account` for `audience`.
fn judge(review: &TokenReview, audience: &str, account: &ServiceAccountRef) -> Review {
    let Some(status) = &review.status else {
        return Review::Unavailable("the TokenReview has no status".into());
    };
    if status.authenticated != Some(true) {
        let reason = status.error.as_deref().unwrap_or("not authenticated");
        return Review::Refused(reason.to_string());
    }
    let expected = format!(
        "system:serviceaccount:{}:{}",
        account.namespace, account.name
    );
    let user = status.user.as_ref().and_then(|u| u.username.as_deref());
    if user != Some(expected.as_str()) {
        return Review::Refused(format!(
            "authenticated as {}, not {expected}",
            user.unwrap_or("nobody")
        ));
    }
    // An empty list means the API server's own audiences, which the request did not ask for.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Review::Refused(format!("not valid for the audience {audience}"));
    }
    Review::Accepted
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    fn account() -> ServiceAccountRef {
        ServiceAccountRef {
            namespace: "apps".into(),
            name: "chat-client".into(),
        }
    }

    fn answer(authenticated: bool, user: Option<&str>, audiences: &[&str]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                user: user.map(|u| UserInfo {
                    username: Some(u.into()),
                    ..UserInfo::default()
                }),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                error: (!authenticated)
                    .then(|| "service account apps/chat-client has been deleted".into()),
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn only_an_authenticated_review_of_the_same_account_and_audience_accepts() {
        let sa = "system:serviceaccount:apps:chat-client";
        assert_eq!(
            judge(
                &answer(true, Some(sa), &["flowgate"]),
                "flowgate",
                &account()
            ),
            Review::Accepted
        );
        assert_eq!(
            judge(&answer(false, None, &[]), "flowgate", &account()),
            Review::Refused("service account apps/chat-client has been deleted".into())
        );
        let other = judge(
            &answer(
                true,
                Some("system:serviceaccount:apps:other"),
                &["flowgate"],
            ),
            "flowgate",
            &account(),
        );
        assert!(matches!(other, Review::Refused(_)), "{other:?}");
        let audience = judge(&answer(true, Some(sa), &["api"]), "flowgate", &account());
        assert!(matches!(audience, Review::Refused(_)), "{audience:?}");
        let blank = judge(&TokenReview::default(), "flowgate", &account());
        assert!(matches!(blank, Review::Unavailable(_)), "{blank:?}");
    }
}
