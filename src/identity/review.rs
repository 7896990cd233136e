//! Whether the API server still accepts a ServiceAccount token (a `TokenReview`).
//!
//! The signature and `exp` say only that the cluster issued the token. Kubernetes also refuses
//! a token once its ServiceAccount is deleted (or recreated under the same name), and a
//! pod-bound token once its pod is gone; its `exp` can be a year away (the API server extends
//! kubelet tokens by default). Only the API server knows, so each ServiceAccount token is
//! reviewed when first seen and again once its review is older than the review interval
//! (`Verifier::verify`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::cache::{Claim, Verdict};
use super::{AuthError, Identity};
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
    /// Reviews sent so far.
    sent: AtomicU64,
    /// First reviews in flight, by token.
    first: Mutex<HashMap<Box<str>, FirstReview>>,
    /// Told each review's outcome (a metric), once set.
    observer: OnceLock<ReviewObserver>,
}

/// Told the outcome of each review: `accepted`, `refused` or `unavailable`.
pub(super) type ReviewObserver = Box<dyn Fn(&'static str) + Send + Sync>;

/// The outcome of a first review, shared by every request waiting for it.
pub(super) type FirstReview = Shared<BoxFuture<'static, Result<Identity, AuthError>>>;

impl Reviewer {
    pub(super) fn new(client: kube::Client, audience: String, timeout: Duration) -> Self {
        Self {
            client,
            audience,
            timeout,
            sent: AtomicU64::new(0),
            first: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
        }
    }

    /// Tells `observer` the outcome of every review from now on; the first observer set stays.
    pub(super) fn observe(&self, observer: ReviewObserver) {
        let _ = self.observer.set(observer);
    }

    /// How many reviews this reviewer has sent.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The first review of `token` in flight, or a new one made by `flight` (then `true`: the
    /// caller must start it). Requests that see a new token together (a client's burst, or every
    /// caller after the cluster's keys change) wait for one review, not one each.
    pub(super) fn first_review(
        &self,
        token: &str,
        flight: impl FnOnce() -> FirstReview,
    ) -> (FirstReview, bool) {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = first.get(token) {
            return (flight.clone(), false);
        }
        let flight = flight();
        first.insert(token.into(), flight.clone());
        (flight, true)
    }

    /// `token`'s first review is over: the next request that finds it uncached starts another.
    pub(super) fn first_done(&self, token: &str) {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// Reviews `token`, which verified locally as `account`'s.
    pub(super) async fn review(&self, token: &str, account: &ServiceAccountRef) -> Review {
        self.sent.fetch_add(1, Ordering::Relaxed);
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
        let review = match answer {
            Err(_) => Review::Unavailable(format!("no answer within {:?}", self.timeout)),
            Ok(Err(error)) => Review::Unavailable(error.to_string()),
            Ok(Ok(review)) => judge(&review, &self.audience, account),
        };
        if let Some(observer) = self.observer.get() {
            observer(match review {
                Review::Accepted => "accepted",
                Review::Refused(_) => "refused",
                Review::Unavailable(_) => "unavailable",
            });
        }
        review
    }
}

/// What a request with a cached ServiceAccount token does ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Accepted recently enough: served.
    Serve,
    /// Served, and this request starts the due review (stamped) in the background.
    ServeAndReview(u64),
    /// Only a review now can accept it: this request sends the claimed review and waits.
    Review(u64),
    /// As `Review`, but another request holds the claim: this one sends a review of its own,
    /// because nothing is known to be wrong (an acceptance that only grew old).
    ReviewUnclaimed,
    /// Refused lately, and another request is asking again.
    Refuse(String),
    /// The API server could not be asked lately, and another request is asking again.
    Unavailable,
}

/// What to do with a request whose token has `claim` at `now`, when an acceptance is served
/// for `grace` seconds without a fresh one.
pub(super) fn decide(claim: Claim, now: i64, grace: i64) -> Next {
    match (claim.verdict, claim.seq) {
        (Verdict::Accepted { at, .. }, seq) if now <= at.saturating_add(grace) => match seq {
            Some(seq) => Next::ServeAndReview(seq),
            None => Next::Serve,
        },
        (_, Some(seq)) => Next::Review(seq),
        (Verdict::Accepted { failing: false, .. }, None) => Next::ReviewUnclaimed,
        (Verdict::Accepted { failing: true, .. } | Verdict::Unavailable, None) => Next::Unavailable,
        (Verdict::Refused(reason), None) => Next::Refuse(reason),
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
    fn a_cached_verdict_decides_whether_the_request_waits_for_a_review() {
        let claim = |verdict: Verdict, seq| Claim { verdict, seq };
        let accepted = |at, failing| Verdict::Accepted { at, failing };
        let grace = 300;
        // Within the grace, an acceptance is served, failing or not; a due review goes along.
        assert_eq!(
            decide(claim(accepted(100, false), None), 400, grace),
            Next::Serve
        );
        assert_eq!(
            decide(claim(accepted(100, true), None), 400, grace),
            Next::Serve
        );
        let due = claim(accepted(100, false), Some(7));
        assert_eq!(decide(due, 400, grace), Next::ServeAndReview(7));
        // Past it, only a fresh review accepts.
        let old = claim(accepted(100, false), Some(8));
        assert_eq!(decide(old, 401, grace), Next::Review(8));
        // Another request is already asking: an idle client's old acceptance asks again too,
        // one whose last review failed is answered 503 at once.
        let idle = claim(accepted(100, false), None);
        assert_eq!(decide(idle, 401, grace), Next::ReviewUnclaimed);
        let outage = claim(accepted(100, true), None);
        assert_eq!(decide(outage, 401, grace), Next::Unavailable);
        // A refusal or an outage is answered at once until its review is due.
        let refused = Verdict::Refused("pod deleted".into());
        assert_eq!(
            decide(claim(refused.clone(), None), 401, grace),
            Next::Refuse("pod deleted".into())
        );
        assert_eq!(decide(claim(refused, Some(9)), 401, grace), Next::Review(9));
        let down = claim(Verdict::Unavailable, None);
        assert_eq!(decide(down, 401, grace), Next::Unavailable);
        let retry = claim(Verdict::Unavailable, Some(10));
        assert_eq!(decide(retry, 401, grace), Next::Review(10));
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
