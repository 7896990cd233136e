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
    /// Reviews requests wait for, in flight, by token.
    flights: Mutex<HashMap<Box<str>, Flight>>,
    /// Told each review's outcome (a metric), once set.
    observer: OnceLock<ReviewObserver>,
    outage: Mutex<Outage>,
}

/// The API server could not be asked: until `until`, no review is sent (each is answered
/// `Unavailable` at once), then one probe at a time, backing off from [`FIRST_BACKOFF`] to
/// [`LONGEST_BACKOFF`]. Each token's own retry (a second after its failure) would otherwise
/// make an outage cost a review per second per token in use, on an API server shedding load.
#[derive(Default)]
struct Outage {
    failures: u32,
    until: Option<std::time::Instant>,
    probing: bool,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// Ends a probe however it ends (dropped included), so that the next can start.
struct Probe<'a>(&'a Mutex<Outage>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .probing = false;
    }
}

/// Told the outcome of each review: `accepted`, `refused` or `unavailable`.
pub(super) type ReviewObserver = Box<dyn Fn(&'static str) + Send + Sync>;

/// The outcome of a review requests wait for, shared by every one of them.
pub(super) type Flight = Shared<BoxFuture<'static, Result<Identity, AuthError>>>;

impl Reviewer {
    pub(super) fn new(client: kube::Client, audience: String, timeout: Duration) -> Self {
        Self {
            client,
            audience,
            timeout,
            sent: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
            outage: Mutex::default(),
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

    /// The review of `token` in flight that requests wait for, or a new one made by `flight`
    /// (then `true`: the caller must start it). Requests that need a review of one token
    /// together (a client's burst on a new token or after a pause, or every caller after the
    /// cluster's keys change) wait for one review, not one each.
    pub(super) fn flight(&self, token: &str, flight: impl FnOnce() -> Flight) -> (Flight, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(token) {
            return (flight.clone(), false);
        }
        let flight = flight();
        flights.insert(token.into(), flight.clone());
        (flight, true)
    }

    /// `token`'s review is over: the next request that needs one starts another.
    pub(super) fn flight_done(&self, token: &str) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// Reviews `token`, which verified locally as `account`'s: `Unavailable` without asking
    /// while the API server is known to be unreachable ([`Outage`]).
    pub(super) async fn review(&self, token: &str, account: &ServiceAccountRef) -> Review {
        let _probe = {
            let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            match outage.until {
                None => None,
                Some(until) if std::time::Instant::now() < until || outage.probing => {
                    return Review::Unavailable(
                        "the API server could not be asked lately; asking again shortly".into(),
                    );
                }
                Some(_) => {
                    outage.probing = true;
                    Some(Probe(&self.outage))
                }
            }
        };
        let (review, answered) = self.ask(token, account).await;
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        // Only no answer at all moves it: an answer that is no verdict on one token (an error
        // its authenticator gave) says nothing of the others.
        if !answered {
            outage.failures = outage.failures.saturating_add(1);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << (outage.failures - 1).min(8))
                .min(LONGEST_BACKOFF);
            outage.until = Some(std::time::Instant::now() + backoff);
        } else {
            *outage = Outage::default();
        }
        review
    }

    /// The review, and whether the API server answered it.
    async fn ask(&self, token: &str, account: &ServiceAccountRef) -> (Review, bool) {
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
        let (review, answered) = match answer {
            Err(_) => (
                Review::Unavailable(format!("no answer within {:?}", self.timeout)),
                false,
            ),
            // An error status (a 5xx, a 429, a 403 for missing RBAC) is no answer on the token.
            Ok(Err(error)) => (Review::Unavailable(error.to_string()), false),
            Ok(Ok(review)) => (judge(&review, &self.audience, account), true),
        };
        if let Some(observer) = self.observer.get() {
            observer(match review {
                Review::Accepted => "accepted",
                Review::Refused(_) => "refused",
                Review::Unavailable(_) => "unavailable",
            });
        }
        (review, answered)
    }
}

/// What a request with a cached ServiceAccount token does ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Accepted recently enough: served.
    Serve,
    /// Served, and this request starts the due review (stamped) in the background.
    ServeAndReview(u64),
    /// Only a review now can accept it: this request waits for one, the review in flight or
    /// one it starts (stamped with its claim, if it has it). When the API server cannot be
    /// asked, `outage_served` says the old acceptance is served all the same.
    Review {
        claim: Option<u64>,
        outage_served: bool,
    },
    /// Refused lately, and another request is asking again.
    Refuse(String),
    /// The API server could not be asked lately, and another request is asking again.
    Unavailable,
}

/// What to do with a request whose token has `claim` at `now`. An acceptance is served
/// without waiting for `fresh` seconds: a token in use is reviewed in the background when due,
/// and stays fresher than that. An older one (a token unused for a while, whose
/// ServiceAccount or pod may be gone since) waits for a review, unless the API server could
/// not be asked lately: then it is served for `grace` seconds, as a review that fails now is.
pub(super) fn decide(claim: Claim, now: i64, fresh: i64, grace: i64) -> Next {
    let within = |at: i64, secs: i64| now <= at.saturating_add(secs);
    match (claim.verdict, claim.seq) {
        (Verdict::Accepted { at, failing }, seq)
            if within(at, fresh) || (failing && within(at, grace)) =>
        {
            match seq {
                Some(seq) => Next::ServeAndReview(seq),
                None => Next::Serve,
            }
        }
        (Verdict::Accepted { at, failing: false }, claim) => Next::Review {
            claim,
            outage_served: within(at, grace),
        },
        (_, Some(seq)) => Next::Review {
            claim: Some(seq),
            outage_served: false,
        },
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
        let reason = status.error.as_deref().unwrap_or_default();
        // The API server answers any failure of its authenticators this way, a lookup it could
        // not make (etcd timing out) included: only what says the token is no good refuses.
        return if reason.is_empty() {
            Review::Refused("not authenticated".into())
        } else if revoked(reason) {
            Review::Refused(reason.to_string())
        } else {
            Review::Unavailable(reason.to_string())
        };
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

/// Whether a review's error says the token is no good: its ServiceAccount, pod, secret or node
/// is gone or another one now (`serviceaccounts "x" not found`, `... UID (...) does not match
/// claim`, `... has been deleted`, `token has been invalidated`), it expired, or no
/// authenticator took it (`invalid bearer token`).
fn revoked(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "not found",
        "does not match",
        "deleted",
        "invalidated",
        "expired",
        "invalid",
        "not valid",
    ]
    .iter()
    .any(|says| error.contains(says))
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
        let (fresh, grace) = (60, 300);
        let review = |claim, outage_served| Next::Review {
            claim,
            outage_served,
        };
        // A fresh acceptance is served; a due review goes along in the background.
        assert_eq!(
            decide(claim(accepted(100, false), None), 160, fresh, grace),
            Next::Serve
        );
        let due = claim(accepted(100, false), Some(7));
        assert_eq!(decide(due, 160, fresh, grace), Next::ServeAndReview(7));
        // An older one (the token went unused) waits for a review, the claimed one or the one
        // in flight; served without it within the grace only if the API server cannot answer.
        let idle = claim(accepted(100, false), Some(8));
        assert_eq!(decide(idle, 161, fresh, grace), review(Some(8), true));
        let joining = claim(accepted(100, false), None);
        assert_eq!(decide(joining, 400, fresh, grace), review(None, true));
        let old = claim(accepted(100, false), None);
        assert_eq!(decide(old, 401, fresh, grace), review(None, false));
        // While the API server fails, an acceptance is served for the grace without waiting;
        // past it, only a review accepts, and another request's is answered 503 at once.
        assert_eq!(
            decide(claim(accepted(100, true), None), 400, fresh, grace),
            Next::Serve
        );
        let failing = claim(accepted(100, true), Some(9));
        assert_eq!(decide(failing, 400, fresh, grace), Next::ServeAndReview(9));
        let outage = claim(accepted(100, true), Some(10));
        assert_eq!(decide(outage, 401, fresh, grace), review(Some(10), false));
        let outage = claim(accepted(100, true), None);
        assert_eq!(decide(outage, 401, fresh, grace), Next::Unavailable);
        // A refusal or an outage is answered at once until its review is due.
        let refused = Verdict::Refused("pod deleted".into());
        assert_eq!(
            decide(claim(refused.clone(), None), 401, fresh, grace),
            Next::Refuse("pod deleted".into())
        );
        let again = claim(refused, Some(11));
        assert_eq!(decide(again, 401, fresh, grace), review(Some(11), false));
        let down = claim(Verdict::Unavailable, None);
        assert_eq!(decide(down, 401, fresh, grace), Next::Unavailable);
        let retry = claim(Verdict::Unavailable, Some(12));
        assert_eq!(decide(retry, 401, fresh, grace), review(Some(12), false));
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

    #[test]
    fn a_review_the_api_server_could_not_make_is_no_refusal() {
        let failed = |error: Option<&str>| {
            let mut review = answer(false, None, &[]);
            if let Some(status) = review.status.as_mut() {
                status.error = error.map(str::to_string);
            }
            judge(&review, "flowgate", &account())
        };
        for gone in [
            "serviceaccounts \"chat-client\" not found",
            "service account UID (1) does not match claim (2)",
            "token has been invalidated",
            "[invalid bearer token, service account token has expired]",
        ] {
            assert!(matches!(failed(Some(gone)), Review::Refused(_)), "{gone}");
        }
        assert!(matches!(failed(None), Review::Refused(_)));
        for passing in [
            "etcdserver: request timed out",
            "context deadline exceeded",
            "Timeout: request did not complete within requested timeout",
        ] {
            assert!(
                matches!(failed(Some(passing)), Review::Unavailable(_)),
                "{passing}"
            );
        }
    }
}
