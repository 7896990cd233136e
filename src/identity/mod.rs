//! Who is calling: bearer JWTs (HS256 secret, PEM public key, JWKS URL, OIDC discovery) and
//! Kubernetes ServiceAccount tokens, verified into an [`Identity`].
//!
//! ```text
//!  bearer ─▶ token::parse ─▶ route by iss ─▶ key by kid ─▶ signature ─▶ exp/nbf/iss/aud ─▶ Identity
//!            (sizes first,     (cluster       (static or      (alg from      (claims::validate,
//!             stack buffers)    issuer → SA)    ArcSwap cache)  the key)        claims::*_identity)
//! ```
//!
//! Keys are decoded once when they load. Remote keys (`remote.rs`) are read lock-free; a token
//! with an unknown `kid` triggers at most one shared fetch per cooldown, and a failed fetch keeps
//! the previous keys. Tokens that passed are remembered (`cache.rs`) until their `exp` or a
//! key-set change, so a client resending its token pays for the signature once.
//!
//! A ServiceAccount token that passed is also reviewed with the API server (`review.rs`):
//! before it is first accepted, then in the background whenever its last review is older than
//! [`VerifierOptions::review_interval`].

mod bearer;
mod cache;
mod claims;
mod error;
mod fetch;
mod key_files;
mod keys;
mod remote;
mod review;
mod select;
mod signature;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

pub use bearer::bearer_token;
pub use error::AuthError;
pub use token::{MAX_HEADER_BYTES, MAX_TOKEN_BYTES};

use crate::config::{ClaimMapping, ConfigError, JwtConfig};
use crate::crd::ServiceAccountRef;
pub use cache::Lookups;
use cache::{Cached, Epochs, ReviewRecord, TokenCache, Verdict};
use claims::Mapping;
use fetch::{Fetcher, Limits};
use key_files::KeyFiles;
use remote::{RemoteKeys, Trigger};
use review::{Next, Review, Reviewer};
use select::{Domain, Inner, ServiceAccountKeys, Step, UserKeys};

/// The task of a review requests wait for: leaves the in-flight map when dropped, whether the
/// review finished, panicked, or was dropped unpolled with its runtime (a proxy thread ending),
/// so no request joins a flight that will never answer.
struct ReviewFlight {
    verifier: Verifier,
    token: String,
}

impl Drop for ReviewFlight {
    fn drop(&mut self) {
        if let Some(keys) = &self.verifier.inner.service_accounts {
            keys.reviewer.flight_done(&self.token);
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Values of the configured user claims, in configured order, duplicates and non-strings
    /// left out (e.g. `[sub, email]`). Empty for ServiceAccounts.
    pub users: Vec<String>,
    /// Values of the groups claim. Empty for ServiceAccounts.
    pub groups: Vec<String>,
    /// Set for Kubernetes ServiceAccount tokens.
    pub service_account: Option<ServiceAccountRef>,
    /// The global admin claim matched.
    pub admin: bool,
    /// Stable subject key for the ledger and logs: `user:<first user value>` or
    /// `sa:<namespace>/<name>`.
    pub key: String,
    /// The token's `exp`.
    pub expires_at: Timestamp,
}

/// Tuning of remote key sources and the verified-token cache. The defaults suit production;
/// tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct VerifierOptions {
    /// Least time between two fetches caused by unknown `kid`s.
    pub refresh_cooldown: Duration,
    /// Period of the background refresh ([`Verifier::run_refresh`]).
    pub refresh_interval: Duration,
    /// Bound on one fetch (discovery and key set together).
    pub fetch_timeout: Duration,
    /// Bound on each fetched document.
    pub max_response_bytes: usize,
    /// Verified tokens remembered until their `exp` or a key-set change (`cache.rs`); 0 turns
    /// the cache off. Each entry holds the token (at most 8 KiB) and its identity: ~1–2 KiB for
    /// a typical token, up to ~16 KiB for one carrying hundreds of groups (10,000 such tokens
    /// would hold ~160 MiB).
    pub token_cache_capacity: usize,
    /// How often the key files (HS256 secret, PEM public key) are read again for a rotation
    /// ([`Verifier::run_refresh`]). The kubelet updates a mounted Secret within about a minute.
    pub key_file_interval: Duration,
    /// A ServiceAccount token is reviewed with the API server when first seen, and again in the
    /// background once its last review is this old (`review.rs`): a token of a deleted pod or
    /// ServiceAccount is refused this long after at most (plus one review). A token whose last
    /// acceptance is twice this old (unused meanwhile) waits for a review.
    pub review_interval: Duration,
    /// While the API server cannot be asked, a ServiceAccount token it accepted this recently is
    /// still served; an older one, or a new token, gets a 503.
    pub review_grace: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            refresh_cooldown: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
            token_cache_capacity: 10_000,
            key_file_interval: Duration::from_secs(10),
            review_interval: Duration::from_secs(30),
            review_grace: Duration::from_secs(300),
        }
    }
}

/// Verifies bearer tokens. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

/// How long a refused ServiceAccount token is answered 401 at once before the API server is
/// asked again (so a refused token sent in a loop costs one review per this long).
const REFUSAL_MEMORY: Duration = Duration::from_secs(5);

/// How long a ServiceAccount token the API server could not be asked about, and that has no
/// recent acceptance, is answered 503 at once (so requests do not each wait for a timeout).
const OUTAGE_MEMORY: Duration = Duration::from_secs(1);

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

const NO_KEY_SOURCE: &str = "FLOWGATE_JWT_HS256_SECRET_FILE/FLOWGATE_JWT_PUBLIC_KEY_FILE/\
                             FLOWGATE_JWKS_URL/FLOWGATE_OIDC_ISSUER_URL/\
                             FLOWGATE_SERVICE_ACCOUNT_AUDIENCE";

impl Verifier {
    /// Reads the static keys and sets up the remote sources (fetched lazily, or by
    /// [`Verifier::refresh`] / [`Verifier::run_refresh`]). `kube` is needed for
    /// ServiceAccount tokens.
    pub fn new(
        config: &JwtConfig,
        mapping: &ClaimMapping,
        kube: Option<kube::Client>,
    ) -> Result<Self, ConfigError> {
        Self::with_options(config, mapping, kube, VerifierOptions::default())
    }

    /// [`Verifier::new`] with non-default [`VerifierOptions`].
    pub fn with_options(
        config: &JwtConfig,
        mapping: &ClaimMapping,
        kube: Option<kube::Client>,
        options: VerifierOptions,
    ) -> Result<Self, ConfigError> {
        let static_keys = KeyFiles::load(config)?;

        let limits = Limits {
            timeout: options.fetch_timeout,
            max_bytes: options.max_response_bytes,
        };
        let key_epoch = Arc::new(AtomicU64::new(0));
        let service_account_epoch = Arc::new(AtomicU64::new(0));
        let remote =
            |fetcher| RemoteKeys::new(fetcher, limits, options.refresh_cooldown, key_epoch.clone());
        let mut remote_keys = Vec::new();
        if config.jwks_url.is_some() || config.oidc_issuer_url.is_some() {
            let http = http_client(&options)?;
            if let Some(url) = &config.jwks_url {
                let (http, url) = (http.clone(), url.clone());
                remote_keys.push(remote(Fetcher::Jwks { http, url }));
            }
            if let Some(issuer) = &config.oidc_issuer_url {
                let issuer = issuer.clone();
                remote_keys.push(remote(Fetcher::Oidc { http, issuer }));
            }
        }

        let service_accounts = match (&config.service_account_audience, kube) {
            (None, _) => None,
            (Some(audience), Some(client)) => Some(ServiceAccountKeys {
                reviewer: Reviewer::new(client.clone(), audience.clone(), options.fetch_timeout),
                remote: RemoteKeys::new(
                    Fetcher::Kubernetes { client },
                    limits,
                    options.refresh_cooldown,
                    service_account_epoch.clone(),
                ),
                audience: audience.clone(),
            }),
            (Some(_), None) => {
                return Err(ConfigError {
                    setting: "FLOWGATE_SERVICE_ACCOUNT_AUDIENCE",
                    problem: "ServiceAccount tokens need a Kubernetes API connection".into(),
                });
            }
        };

        if !static_keys.any() && remote_keys.is_empty() && service_accounts.is_none() {
            return Err(ConfigError {
                setting: NO_KEY_SOURCE,
                problem: "none is set, so no token could be verified".into(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                mapping: Mapping::new(mapping),
                leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
                users: UserKeys {
                    static_keys,
                    remote: remote_keys,
                    issuer: config.issuer.clone(),
                    audience: config.audience.clone(),
                },
                service_accounts,
                cache: TokenCache::new(options.token_cache_capacity),
                key_epoch,
                service_account_epoch,
                options,
            }),
        })
    }

    /// Verifies a bearer token (as returned by [`bearer_token`]) and maps its claims. A token
    /// verified before is answered from the cache while it is unexpired and the keys unchanged.
    /// A ServiceAccount token is also reviewed with the API server (`review.rs`).
    pub async fn verify(&self, bearer: &str) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        if bearer.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        // Read before any key is: an entry is never newer than the keys it was verified with.
        let epochs = Epochs {
            users: inner.key_epoch.load(Ordering::Acquire),
            service_accounts: inner.service_account_epoch.load(Ordering::Acquire),
        };
        let now = Timestamp::now().as_second();
        let cached = inner.cache.as_ref().and_then(|cache| {
            let cached = cache.get(bearer, epochs, now);
            cache.count(cached.is_some());
            cached
        });
        let Some(Cached { identity, verdict }) = cached else {
            let identity = self.verify_uncached(bearer).await?;
            if identity.service_account.is_some() {
                // Verified again after the cluster's keys changed: its last verdict stands.
                if let Some(cache) = &inner.cache
                    && cache.restamp(bearer, epochs, now)
                {
                    return self.as_reviewed(bearer, identity, epochs, now).await;
                }
                return self
                    .shared_review(bearer, identity, epochs, None, true)
                    .await;
            }
            if let Some(cache) = &inner.cache {
                cache.insert(bearer, &identity, epochs, inner.leeway);
            }
            return Ok(identity);
        };
        if verdict.is_none() {
            return Ok(identity);
        }
        self.as_reviewed(bearer, identity, epochs, now).await
    }

    /// A ServiceAccount token verified as `identity`, with a verdict in the cache: served,
    /// reviewed again, or refused as that verdict and its age decide.
    async fn as_reviewed(
        &self,
        bearer: &str,
        identity: Identity,
        epochs: Epochs,
        now: i64,
    ) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        // Its verdict and, when due, the claim on its next review, read under one lock.
        let hold = secs(inner.options.fetch_timeout).saturating_add(1);
        let claim = inner
            .cache
            .as_ref()
            .and_then(|c| c.claim_review(bearer, now, hold));
        let Some(claim) = claim else {
            // Evicted since: as on first sight.
            return self
                .shared_review(bearer, identity, epochs, None, true)
                .await;
        };
        let fresh = secs(inner.options.review_interval).saturating_mul(2);
        match review::decide(claim, now, fresh, secs(inner.options.review_grace)) {
            Next::Serve => Ok(identity),
            Next::ServeAndReview(seq) => {
                let (verifier, token) = (self.clone(), bearer.to_string());
                let reviewed = identity.clone();
                tokio::spawn(async move {
                    // The verdict lands in the cache; this request does not wait for it.
                    let _ = verifier.review(&token, reviewed, epochs, seq, false).await;
                });
                Ok(identity)
            }
            Next::Review {
                claim,
                outage_served,
            } => {
                let served = identity.clone();
                match self
                    .shared_review(bearer, identity, epochs, claim, false)
                    .await
                {
                    Err(AuthError::ReviewUnavailable) if outage_served => Ok(served),
                    reviewed => reviewed,
                }
            }
            Next::Refuse(reason) => Err(AuthError::Revoked(reason)),
            Next::Unavailable => Err(AuthError::ReviewUnavailable),
        }
    }

    /// A review of `bearer`, a ServiceAccount token verified locally as `identity`, that the
    /// request waits for: one review, shared by every request that needs one while it is in
    /// flight (`first`: the token is not in the cache; else its acceptance is too old), stamped
    /// with `claim` if this request starts it and holds one. It runs as a task of its own, so
    /// it records its verdict even when every request waiting for it is gone.
    async fn shared_review(
        &self,
        bearer: &str,
        identity: Identity,
        epochs: Epochs,
        claim: Option<u64>,
        first: bool,
    ) -> Result<Identity, AuthError> {
        let Some(keys) = &self.inner.service_accounts else {
            // A ServiceAccount identity comes only from the ServiceAccount keys.
            return Err(AuthError::ReviewUnavailable);
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (flight, start) = keys.reviewer.flight(bearer, || {
            // No answer (the review's task was dropped) is a review that could not be sent.
            let answered = answered.map(|r| r.unwrap_or(Err(AuthError::ReviewUnavailable)));
            answered.boxed().shared()
        });
        if start {
            // Spawned outside the map's lock: a task dropped at once (its runtime shutting
            // down) takes the lock to leave the map.
            let seq = claim
                .unwrap_or_else(|| self.inner.cache.as_ref().map_or(0, TokenCache::next_review));
            let flight = ReviewFlight {
                verifier: self.clone(),
                token: bearer.to_string(),
            };
            tokio::spawn(async move {
                let ReviewFlight { verifier, token } = &flight;
                let result = verifier.review(token, identity, epochs, seq, first).await;
                drop(flight);
                let _ = answer.send(result);
            });
        }
        flight.await
    }

    /// Tells `observer` the outcome of every TokenReview from now on (`accepted`, `refused`,
    /// `unavailable`): the process's metrics. Only the first observer set is kept.
    pub fn observe_reviews(&self, observer: impl Fn(&'static str) + Send + Sync + 'static) {
        if let Some(keys) = &self.inner.service_accounts {
            keys.reviewer.observe(Box::new(observer));
        }
    }

    /// Reads how many tokens the verified-token cache answered, and not (`None` with the cache
    /// off, or once the verifier is gone). It does not keep the verifier alive: the metrics
    /// hold it, and the verifier's review observer holds the metrics.
    pub fn token_cache_lookups(&self) -> impl Fn() -> Option<Lookups> + Send + Sync + 'static {
        let inner = Arc::downgrade(&self.inner);
        move || inner.upgrade()?.cache.as_ref().map(TokenCache::lookups)
    }

    /// How many TokenReviews this verifier has sent (0 without ServiceAccount tokens).
    pub fn token_reviews_sent(&self) -> u64 {
        self.inner
            .service_accounts
            .as_ref()
            .map_or(0, |keys| keys.reviewer.sent())
    }

    /// Asks the API server whether it still accepts `bearer`, a ServiceAccount token verified
    /// locally as `identity`, and records the verdict in the cache, stamped `seq` (a new entry
    /// only when `first`: see [`TokenCache::record`]).
    async fn review(
        &self,
        bearer: &str,
        identity: Identity,
        epochs: Epochs,
        seq: u64,
        first: bool,
    ) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        let (Some(keys), Some(account)) = (&inner.service_accounts, &identity.service_account)
        else {
            // A ServiceAccount identity comes only from the ServiceAccount keys.
            return Err(AuthError::ReviewUnavailable);
        };
        let sent = Timestamp::now().as_second();
        let review = keys.reviewer.review(bearer, account).await;
        let answered = Timestamp::now().as_second();
        let (verdict, due, result) = match review {
            Review::Accepted => {
                let due = sent.saturating_add(secs(inner.options.review_interval));
                let verdict = Verdict::Accepted {
                    at: sent,
                    failing: false,
                };
                (verdict, due, Ok(()))
            }
            Review::Refused(reason) => {
                tracing::info!(account = %identity.key, %reason, "ServiceAccount token refused by the API server");
                let due = answered.saturating_add(secs(REFUSAL_MEMORY));
                (
                    Verdict::Refused(reason.clone()),
                    due,
                    Err(AuthError::Revoked(reason)),
                )
            }
            Review::Unavailable(error) => {
                tracing::warn!(account = %identity.key, %error, "cannot review a ServiceAccount token");
                let due = answered.saturating_add(secs(OUTAGE_MEMORY));
                (Verdict::Unavailable, due, Err(AuthError::ReviewUnavailable))
            }
        };
        if let Some(cache) = &inner.cache {
            let record = ReviewRecord { verdict, seq, due };
            // An outage does not undo a refusal: still refused (401), not a 503 to retry on.
            if let Some(reason) =
                cache.record(bearer, &identity, epochs, inner.leeway, record, first)
            {
                return Err(AuthError::Revoked(reason));
            }
        }
        result.map(|()| identity)
    }

    async fn verify_uncached(&self, bearer: &str) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        let token = token::parse(bearer, &inner.mapping.names)?;
        let step = match inner.attempt(&token, Timestamp::now(), false) {
            Step::Refresh(domain) => {
                inner.refresh(domain, Trigger::OnDemand).await;
                inner.attempt(&token, Timestamp::now(), true)
            }
            step => step,
        };
        match step {
            Step::Verified(Domain::Users, expires_at) => {
                claims::user_identity(token.claims, &inner.mapping, expires_at)
            }
            Step::Verified(Domain::ServiceAccounts, expires_at) => {
                claims::service_account_identity(&token.claims, expires_at)
            }
            Step::Failed(error) => Err(error),
            Step::Refresh(_) => Err(AuthError::UnknownKey),
        }
    }

    /// Fetches every remote key source now (or joins the fetch in flight). True when every
    /// source has keys, from this fetch or an earlier one.
    pub async fn refresh(&self) -> bool {
        let inner = &*self.inner;
        inner.refresh(Domain::Users, Trigger::Scheduled).await;
        inner
            .refresh(Domain::ServiceAccounts, Trigger::Scheduled)
            .await;
        self.keys_loaded()
    }

    /// Every remote key source has been loaded at least once (for readiness).
    pub fn keys_loaded(&self) -> bool {
        self.inner.remotes().all(|r| r.loaded())
    }

    /// Key fetches started since start-up, over all sources.
    pub fn key_fetches(&self) -> u64 {
        self.inner.remotes().map(|r| r.fetches()).sum()
    }

    /// Reads the key files again; true when a key changed. Tokens verified with the old keys
    /// are forgotten, so one signed by a rotated-out secret is refused from now on.
    pub fn reload_key_files(&self) -> bool {
        let inner = &*self.inner;
        let changed = inner.users.static_keys.reload();
        if changed {
            inner.key_epoch.fetch_add(1, Ordering::Release);
        }
        changed
    }

    /// Until `shutdown`: refreshes the remote keys every `refresh_interval` (every
    /// `refresh_cooldown` while a source has never loaded), and reads the key files again every
    /// `key_file_interval`. Returns at once when there is neither.
    pub async fn run_refresh(self, shutdown: CancellationToken) {
        let remote = self.inner.remotes().next().is_some();
        let files = self.inner.users.static_keys.any();
        if !remote && !files {
            return;
        }
        let options = self.inner.options;
        let mut next_fetch = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if remote && now >= next_fetch {
                let wait = if self.refresh().await {
                    options.refresh_interval
                } else {
                    options.refresh_cooldown.min(options.refresh_interval)
                };
                next_fetch = tokio::time::Instant::now() + wait;
            }
            if files {
                self.reload_key_files();
            }
            let wake = match (remote, files) {
                (true, true) => next_fetch.min(now + options.key_file_interval),
                (true, false) => next_fetch,
                _ => now + options.key_file_interval,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Verifier")
            .field("static_keys", &*inner.users.static_keys.current())
            .field("remote_sources", &inner.users.remote.len())
            .field("service_accounts", &inner.service_accounts.is_some())
            .finish_non_exhaustive()
    }
}

fn http_client(options: &VerifierOptions) -> Result<reqwest::Client, ConfigError> {
    // reqwest is built without a default TLS provider; building a client without one panics.
    crate::telemetry::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(options.fetch_timeout)
        .connect_timeout(options.fetch_timeout)
        .redirect(reqwest::redirect::Policy::custom(
            |attempt| match fetch::redirect_refusal(attempt.previous(), attempt.url()) {
                Some(why) => attempt.error(why),
                None => attempt.follow(),
            },
        ))
        .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError {
            setting: "FLOWGATE_JWKS_URL/FLOWGATE_OIDC_ISSUER_URL",
            problem: format!("cannot build the HTTP client: {e}"),
        })
}
