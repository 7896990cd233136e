//! Key selection and verification of one parsed token: route it (cluster issuer → the
//! ServiceAccount keys), pick the key by `kid` (or the static key of its algorithm family),
//! check the signature with the algorithm the key allows, then the registered claims.
//!
//! A pass ([`Inner::attempt`]) is synchronous: it either decides, or asks the caller to refresh
//! a key source and run it again ([`Step::Refresh`]). So no key snapshot is held across an await.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use jiff::Timestamp;

use super::cache::TokenCache;
use super::claims::{self, Checks, Mapping};
use super::key_files::KeyFiles;
use super::keys::{self, Lookup, VerifyingKey};
use super::remote::{RemoteKeys, Trigger};
use super::signature::{self, Checked};
use super::token::{ClaimNames, Parsed};
use super::{AuthError, VerifierOptions};

/// Most remote keys a token no key is named for is checked against: a rotation lists two or
/// three, and each costs an unauthenticated caller's token a signature check.
const UNNAMED_CANDIDATES: usize = 3;

/// Everything a [`super::Verifier`] shares between its clones.
pub(super) struct Inner {
    pub(super) mapping: Mapping,
    pub(super) leeway: i64,
    pub(super) users: UserKeys,
    pub(super) service_accounts: Option<ServiceAccountKeys>,
    pub(super) options: VerifierOptions,
    pub(super) cache: Option<TokenCache>,
    /// Moves whenever a key set for callers' own tokens changes (a key file, a JWKS or OIDC
    /// source); invalidates their cached tokens.
    pub(super) key_epoch: Arc<AtomicU64>,
    /// Moves whenever the cluster's key set changes; invalidates cached ServiceAccount tokens.
    pub(super) service_account_epoch: Arc<AtomicU64>,
}

/// Keys for callers' own JWTs.
pub(super) struct UserKeys {
    pub(super) static_keys: KeyFiles,
    pub(super) remote: Vec<Arc<RemoteKeys>>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
}

/// The cluster's ServiceAccount issuer.
pub(super) struct ServiceAccountKeys {
    pub(super) remote: Arc<RemoteKeys>,
    pub(super) audience: String,
    pub(super) reviewer: super::review::Reviewer,
}

/// Which keys a token is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) enum Domain {
    Users,
    ServiceAccounts,
}

/// One pass of key selection and verification.
pub(super) enum Step {
    Verified(Domain, Timestamp),
    Failed(AuthError),
    /// The keys of this domain should be refreshed, then try again.
    Refresh(Domain),
}

impl Inner {
    pub(super) fn remotes(&self) -> impl Iterator<Item = &Arc<RemoteKeys>> {
        let service_accounts = self.service_accounts.as_ref().map(|sa| &sa.remote);
        self.users.remote.iter().chain(service_accounts)
    }

    pub(super) async fn refresh(&self, domain: Domain, trigger: Trigger) {
        match domain {
            Domain::Users => {
                futures::future::join_all(self.users.remote.iter().map(|r| r.refresh(trigger)))
                    .await;
            }
            Domain::ServiceAccounts => {
                if let Some(sa) = &self.service_accounts {
                    sa.remote.refresh(trigger).await;
                }
            }
        }
    }

    /// Routes the token: a ServiceAccount token (its `iss` is the cluster issuer) to the
    /// cluster's keys, everything else to the callers' keys.
    pub(super) fn attempt(&self, token: &Parsed<'_>, now: Timestamp, refreshed: bool) -> Step {
        if let Some(sa) = &self.service_accounts {
            let snapshot = sa.remote.current();
            match snapshot.as_deref() {
                Some(keys)
                    if keys.issuer.is_some() && token_issuer(token) == keys.issuer.as_deref() =>
                {
                    let checks = self.checks(now, keys.issuer.as_deref(), Some(&sa.audience));
                    return match keys::lookup(&keys.keys, token.kid.as_deref(), token.alg) {
                        Lookup::Found(key) => {
                            self.check(token, key, checks, Domain::ServiceAccounts)
                        }
                        Lookup::WrongAlgorithm => Step::Failed(AuthError::AlgorithmMismatch),
                        Lookup::NotFound if refreshed => Step::Failed(not_fetched_yet(
                            token,
                            &sa.remote,
                            now,
                            AuthError::UnknownKey,
                        )),
                        Lookup::NotFound => Step::Refresh(Domain::ServiceAccounts),
                    };
                }
                None if claims::looks_like_service_account(&token.claims) => {
                    return if refreshed {
                        Step::Failed(AuthError::KeysUnavailable)
                    } else {
                        Step::Refresh(Domain::ServiceAccounts)
                    };
                }
                _ => {}
            }
        }
        self.attempt_user(token, now, refreshed)
    }

    /// A token with a `kid` is checked against the remote key of that `kid`; without one (or
    /// when no remote key has it, after a refresh) against the static key of its algorithm
    /// family, then the remote keys no `kid` names ([`Self::attempt_unnamed`]).
    fn attempt_user(&self, token: &Parsed<'_>, now: Timestamp, refreshed: bool) -> Step {
        let users = &self.users;
        let (kid, alg) = (token.kid.as_deref(), token.alg);
        if kid.is_some() {
            for remote in &users.remote {
                let snapshot = remote.current();
                let Some(keys) = snapshot.as_deref() else {
                    continue;
                };
                match keys::lookup(&keys.keys, kid, alg) {
                    Lookup::Found(key) => {
                        let checks = self.user_checks(now, keys.issuer.as_deref());
                        let step = self.check(token, key, checks, Domain::Users);
                        // A provider that keeps the `kid` through a rotation: the key under it
                        // may have changed since it was fetched. After the refresh, as for an
                        // unknown `kid`: not fetched yet is a 503.
                        if !matches!(step, Step::Failed(AuthError::BadSignature)) {
                            return step;
                        }
                        return if refreshed {
                            Step::Failed(not_fetched_yet(
                                token,
                                remote,
                                now,
                                AuthError::BadSignature,
                            ))
                        } else {
                            Step::Refresh(Domain::Users)
                        };
                    }
                    Lookup::WrongAlgorithm => return Step::Failed(AuthError::AlgorithmMismatch),
                    Lookup::NotFound => {}
                }
            }
        }
        let mut static_refusal = None;
        if kid.is_none() || users.remote.is_empty() || refreshed {
            let family = alg.family();
            let static_keys = users.static_keys.current();
            if let Some(key) = static_keys.iter().find(|k| k.key.family() == family) {
                let checks = self.user_checks(now, None);
                let step = self.check(token, key, checks, Domain::Users);
                // A token the static key did not sign (or could not: another curve) may still be
                // signed by a remote key (a provider that sends no `kid`, or names no key).
                let other_key = matches!(
                    step,
                    Step::Failed(AuthError::BadSignature | AuthError::AlgorithmMismatch)
                ) && !users.remote.is_empty();
                if !other_key {
                    return step;
                }
                static_refusal = Some(step);
            }
        }
        // Every remote key refusing the signature is, before a refresh, a reason to fetch them
        // again: a provider that names no key signs with a new one as it publishes it.
        let mut unnamed_refusal = None;
        if (kid.is_none() || refreshed)
            && let Some(step) = self.attempt_unnamed(token, now)
        {
            if !matches!(step, Step::Failed(AuthError::BadSignature)) {
                return step;
            }
            unnamed_refusal = Some(step);
        }
        if users.remote.is_empty() {
            return Step::Failed(if !users.static_keys.any() {
                AuthError::UnknownKey
            } else {
                AuthError::AlgorithmMismatch
            });
        }
        let all_loaded = users.remote.iter().all(|r| r.loaded());
        if !refreshed && (kid.is_some() || !all_loaded || unnamed_refusal.is_some()) {
            return Step::Refresh(Domain::Users);
        }
        // The static key's refusal is the answer once the remote keys could be tried. Before
        // they ever loaded, while a source cannot be fetched, or when the token is newer than
        // its keys and the cooldown held the refresh back, a key added to it may have signed
        // the token: not known yet is a 503, not a refusal that makes clients drop a good token.
        if !users.remote.iter().any(|r| r.loaded()) || users.remote.iter().any(|r| r.stale()) {
            Step::Failed(AuthError::KeysUnavailable)
        } else if (kid.is_some() || unnamed_refusal.is_some())
            && users.remote.iter().any(|r| newer_than(token, r, now))
        {
            Step::Failed(AuthError::KeyNotFetchedYet)
        } else {
            unnamed_refusal
                .or(static_refusal)
                .unwrap_or(Step::Failed(AuthError::UnknownKey))
        }
    }

    /// A token no key is named for: without a `kid` (a provider that sends none), or with one
    /// no remote key has, where keys carry no `kid`. Checked against the remote keys for its
    /// algorithm (without a `kid`, for a token with one), the first [`UNNAMED_CANDIDATES`]:
    /// during a rotation a provider lists the old key and the new. `None` when there is no
    /// such key; else the first outcome other than a bad signature.
    fn attempt_unnamed(&self, token: &Parsed<'_>, now: Timestamp) -> Option<Step> {
        let named = token.kid.is_some();
        let mut outcome = None;
        let mut tried = 0;
        for remote in &self.users.remote {
            let snapshot = remote.current();
            let Some(keys) = snapshot.as_deref() else {
                continue;
            };
            let candidates = keys
                .keys
                .iter()
                .filter(|k| k.algorithms.contains(token.alg) && !(named && k.kid.is_some()));
            for key in candidates {
                if tried == UNNAMED_CANDIDATES {
                    return outcome;
                }
                tried += 1;
                let checks = self.user_checks(now, keys.issuer.as_deref());
                let step = self.check(token, key, checks, Domain::Users);
                if !matches!(step, Step::Failed(AuthError::BadSignature)) {
                    return Some(step);
                }
                outcome = Some(step);
            }
        }
        outcome
    }

    /// The configured issuer, else the one a discovery document named, and the audience.
    fn user_checks<'a>(&'a self, now: Timestamp, discovered_issuer: Option<&'a str>) -> Checks<'a> {
        let users = &self.users;
        let issuer = users.issuer.as_deref().or(discovered_issuer);
        self.checks(now, issuer, users.audience.as_deref())
    }

    fn checks<'a>(
        &self,
        now: Timestamp,
        issuer: Option<&'a str>,
        audience: Option<&'a str>,
    ) -> Checks<'a> {
        Checks {
            now: now.as_second(),
            leeway: self.leeway,
            issuer,
            audience,
        }
    }

    /// Signature with the algorithm the key allows, then the registered claims.
    fn check(
        &self,
        token: &Parsed<'_>,
        key: &VerifyingKey,
        checks: Checks<'_>,
        domain: Domain,
    ) -> Step {
        if !key.algorithms.contains(token.alg) {
            return Step::Failed(AuthError::AlgorithmMismatch);
        }
        match signature::verify(
            token.signature,
            token.signed.as_bytes(),
            &key.key,
            token.alg,
        ) {
            Checked::Valid => {}
            Checked::Invalid => return Step::Failed(AuthError::BadSignature),
            Checked::NotBase64 => {
                return Step::Failed(AuthError::Malformed("signature is not base64url"));
            }
        }
        match claims::validate(&token.claims, checks) {
            Ok(expires_at) => Step::Verified(domain, expires_at),
            Err(error) => Step::Failed(error),
        }
    }
}

/// Whether `token` says it was issued after `remote`'s keys were fetched ([`RemoteKeys::older_than`]).
/// After a refresh, a token `remote`'s keys did not verify: 503 while they cannot be fetched,
/// or when the token is newer than them (a key published since, the cooldown holding the fetch
/// back); else `refusal`.
fn not_fetched_yet(
    token: &Parsed<'_>,
    remote: &RemoteKeys,
    now: Timestamp,
    refusal: AuthError,
) -> AuthError {
    if remote.stale() {
        AuthError::KeysUnavailable
    } else if newer_than(token, remote, now) {
        AuthError::KeyNotFetchedYet
    } else {
        refusal
    }
}

fn newer_than(token: &Parsed<'_>, remote: &RemoteKeys, now: Timestamp) -> bool {
    claims::issued_at(&token.claims).is_some_and(|iat| remote.older_than(iat, now.as_second()))
}

fn token_issuer<'t>(token: &'t Parsed<'_>) -> Option<&'t str> {
    token
        .claims
        .get(ClaimNames::ISS)
        .and_then(Option::as_ref)
        .and_then(serde_json::Value::as_str)
}
