//! The cache of one remote key source.
//!
//! Requests read the current [`KeySnapshot`] lock-free from an `ArcSwap`. A refresh is one
//! spawned fetch shared by everyone who asks while it runs; an on-demand refresh (an unknown
//! `kid`) starts at most once per cooldown, so a flood of random `kid`s costs one fetch. A failed
//! fetch keeps the previous keys. The small mutex only guards the in-flight handle and the time
//! of the last attempt; it is never held across an await.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::fetch::{Fetcher, KeyFetchError, Limits};
use super::keys::{VerifyingKey, same_keys};

/// The keys of one source as last fetched.
#[derive(Debug)]
pub(crate) struct KeySnapshot {
    pub(crate) keys: Vec<VerifyingKey>,
    /// The issuer a discovery document named (OIDC, Kubernetes).
    pub(crate) issuer: Option<String>,
}

/// How a refresh was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A token needs a key that is not there: subject to the cooldown.
    OnDemand,
    /// Start-up or the periodic refresh: always fetches (or joins the fetch in flight), and does
    /// not start the cooldown.
    Scheduled,
}

type InFlight = Shared<BoxFuture<'static, bool>>;

/// How far ahead of this clock a token's `iat` may be and still count (see
/// [`RemoteKeys::older_than`]).
const FUTURE_IAT: i64 = 60;

#[derive(Default)]
struct Flight {
    in_flight: Option<InFlight>,
    last_attempt: Option<Instant>,
}

pub(crate) struct RemoteKeys {
    fetcher: Fetcher,
    limits: Limits,
    cooldown: Duration,
    current: ArcSwapOption<KeySnapshot>,
    flight: Mutex<Flight>,
    fetches: AtomicU64,
    /// The last fetch failed: a key these keys lack may be one the source has added since.
    stale: AtomicBool,
    /// When the last fetch that succeeded started (Unix seconds; 0: never).
    fetched_at: AtomicI64,
    /// The epoch of this source's kind (callers' sources share one, the cluster's has its
    /// own); moved whenever this source's keys change (see [`super::cache`]).
    epoch: Arc<AtomicU64>,
}

impl RemoteKeys {
    pub(crate) fn new(
        fetcher: Fetcher,
        limits: Limits,
        cooldown: Duration,
        epoch: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            fetcher,
            limits,
            cooldown,
            current: ArcSwapOption::empty(),
            flight: Mutex::new(Flight::default()),
            fetches: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            fetched_at: AtomicI64::new(0),
            epoch,
        })
    }

    /// The keys now; `None` until a fetch has succeeded once.
    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<KeySnapshot>>> {
        self.current.load()
    }

    pub(crate) fn loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The last fetch failed, so a key missing here is not known to be unknown to the source
    /// (a key added while it was unreachable).
    pub(crate) fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether a token issued at `issued_at` (Unix seconds) is newer than these keys: its key
    /// may be one the source published since they were fetched (a provider that signs with a new
    /// key at once), which a refresh held back by the cooldown has not seen. A time more than
    /// [`FUTURE_IAT`] ahead is not taken for newer: nobody's clock is that far off.
    pub(crate) fn older_than(&self, issued_at: i64, now: i64) -> bool {
        issued_at > self.fetched_at.load(Ordering::Relaxed)
            && issued_at <= now.saturating_add(FUTURE_IAT)
    }

    /// How many fetches were started.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches new keys, or waits for the fetch in flight; `OnDemand` within the cooldown of
    /// the last attempt returns at once. True when keys are loaded afterwards.
    pub(crate) async fn refresh(self: &Arc<Self>, trigger: Trigger) -> bool {
        let Some(flight) = self.join_or_start(trigger) else {
            return self.loaded();
        };
        flight.await
    }

    fn join_or_start(self: &Arc<Self>, trigger: Trigger) -> Option<InFlight> {
        let mut flight = self.flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(in_flight) = &flight.in_flight {
            return Some(in_flight.clone());
        }
        let now = Instant::now();
        if trigger == Trigger::OnDemand
            && flight
                .last_attempt
                .is_some_and(|at| now.saturating_duration_since(at) < self.cooldown)
        {
            return None;
        }
        // Only fetches a token asked for start the cooldown: a scheduled refresh just before a
        // key rotation must not keep the new key out for the cooldown.
        if trigger == Trigger::OnDemand {
            flight.last_attempt = Some(now);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        // Spawned, so the fetch completes even if every waiting request goes away.
        let task = tokio::spawn(Arc::clone(self).fetch_and_store());
        let shared = task.map(|done| done.unwrap_or(false)).boxed().shared();
        flight.in_flight = Some(shared.clone());
        Some(shared)
    }

    async fn fetch_and_store(self: Arc<Self>) -> bool {
        // Ends the flight however the fetch ends (even by a panic), so the next refresh can start.
        let _end = EndFlight(&self);
        let started = jiff::Timestamp::now().as_second();
        let fetched = self.fetcher.fetch(self.limits).await;
        self.stale.store(fetched.is_err(), Ordering::Relaxed);
        match fetched {
            Ok(fetched) => {
                tracing::debug!(
                    source = %self.fetcher.describe(),
                    keys = fetched.keys.len(),
                    "verification keys refreshed"
                );
                let fresh = Arc::new(KeySnapshot {
                    keys: fetched.keys,
                    issuer: fetched.issuer,
                });
                let previous = self.current.swap(Some(fresh.clone()));
                self.fetched_at.fetch_max(started, Ordering::Relaxed);
                let unchanged = previous
                    .is_some_and(|p| p.issuer == fresh.issuer && same_keys(&p.keys, &fresh.keys));
                if !unchanged {
                    // After the store: whoever sees the new epoch also sees the new keys.
                    self.epoch.fetch_add(1, Ordering::Release);
                }
                true
            }
            Err(error) => {
                self.log_failure(&error);
                self.loaded()
            }
        }
    }

    fn log_failure(&self, error: &KeyFetchError) {
        let source = self.fetcher.describe();
        if self.loaded() {
            tracing::warn!(%source, %error, "key refresh failed; keeping the previous keys");
        } else {
            tracing::warn!(%source, %error, "key fetch failed; no keys from this source yet");
        }
    }
}

struct EndFlight<'a>(&'a RemoteKeys);

impl Drop for EndFlight<'_> {
    fn drop(&mut self) {
        self.0
            .flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight = None;
    }
}
