//! Request rate limits (`ChatflowAccess.spec.rateLimit`), counted in this process.
//!
//! Each (ChatflowAccess, subject) pair has an allowance of `requests` per `per` that refills
//! steadily, and may be spent at once: the generic cell rate algorithm (GCRA), which keeps one
//! instant per pair — when its allowance will be whole again, the "theoretical arrival time".
//! A request is allowed when that instant is at most `per − per/requests` ahead of now, and moves
//! it `per/requests` further. No timer, no counter reset, no per-window buckets.
//!
//! The state lives in sharded maps shared by every proxy thread. A pair whose instant has passed
//! is the same as a pair never seen, so a shard drops those entries when it grows; memory is
//! bounded by the callers active within the longest period (an hour). Replicas count on their
//! own: behind N replicas a caller gets up to N times the rate. Exact budgets across replicas
//! are what CreditPolicy (an `Hourly` period) is for.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::crd::RateLimit;

const SHARDS: usize = 16;
/// A shard first drops passed entries when it holds this many.
const PRUNE_FROM: usize = 1024;

pub struct RateLimiter {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Default)]
struct Shard {
    /// By key hash: when the key's allowance is whole again.
    full_at: HashMap<u64, Instant>,
    prune_at: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        full_at: HashMap::new(),
                        prune_at: PRUNE_FROM,
                    })
                })
                .collect(),
        }
    }
}

impl RateLimiter {
    /// Spends one request of `key`'s allowance under `rate` at `now`, or says how long until
    /// one is available again.
    pub fn check(&self, key: impl Hash, rate: RateLimit, now: Instant) -> Result<(), Duration> {
        let per = rate.per.duration();
        let interval = per / rate.requests.max(1);
        let burst = per.saturating_sub(interval);
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let full_at = shard.full_at.get(&hash).map_or(now, |at| (*at).max(now));
        let ahead = full_at - now;
        if ahead > burst {
            return Err(ahead - burst);
        }
        shard.full_at.insert(hash, full_at + interval);
        if shard.full_at.len() >= shard.prune_at {
            shard.full_at.retain(|_, at| *at > now);
            shard.prune_at = PRUNE_FROM.max(shard.full_at.len() * 2);
        }
        Ok(())
    }

    /// Keys held, over all shards (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .full_at
                    .len()
            })
            .sum()
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RatePeriod;

    fn rate(requests: u32, per: RatePeriod) -> RateLimit {
        RateLimit { requests, per }
    }

    #[test]
    fn a_burst_of_the_whole_allowance_then_one_per_interval() {
        let limiter = RateLimiter::default();
        let three = rate(3, RatePeriod::Minute);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("alice", three, t0), Ok(()));
        }
        assert_eq!(
            limiter.check("alice", three, t0),
            Err(Duration::from_secs(20)),
            "the fourth waits for one interval (60 s / 3)"
        );
        // A refused request spends nothing: still 20 s, and 19 s a second later.
        assert_eq!(
            limiter.check("alice", three, t0),
            Err(Duration::from_secs(20))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            limiter.check("alice", three, t1),
            Err(Duration::from_secs(19))
        );
        // After one interval exactly one more is allowed.
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(limiter.check("alice", three, t20), Ok(()));
        assert!(limiter.check("alice", three, t20).is_err());
        // After a whole period idle, the whole burst again.
        let later = t20 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check("alice", three, later), Ok(()));
        }
        assert!(limiter.check("alice", three, later).is_err());
    }

    #[test]
    fn keys_are_counted_apart() {
        let limiter = RateLimiter::default();
        let one = rate(1, RatePeriod::Hour);
        let now = Instant::now();
        assert_eq!(limiter.check(("team/a", "user:alice"), one, now), Ok(()));
        assert_eq!(limiter.check(("team/a", "user:bob"), one, now), Ok(()));
        assert_eq!(limiter.check(("team/b", "user:alice"), one, now), Ok(()));
        assert_eq!(
            limiter.check(("team/a", "user:alice"), one, now),
            Err(Duration::from_secs(3600))
        );
    }

    #[test]
    fn a_steady_caller_at_the_rate_is_never_refused() {
        let limiter = RateLimiter::default();
        let ten = rate(10, RatePeriod::Second);
        let t0 = Instant::now();
        let refused = (0..1000)
            .filter(|i| {
                let now = t0 + Duration::from_millis(100) * *i;
                limiter.check("steady", ten, now).is_err()
            })
            .count();
        assert_eq!(refused, 0);
        // Twice the rate: about half refused, after the first burst.
        let allowed = (0..1000)
            .filter(|i| {
                let now = t0 + Duration::from_secs(200) + Duration::from_millis(50) * *i;
                limiter.check("twice", ten, now).is_ok()
            })
            .count();
        assert!((500..=510).contains(&allowed), "{allowed}");
    }

    #[test]
    fn passed_entries_are_dropped_as_a_shard_grows() {
        let limiter = RateLimiter::default();
        let one = rate(1, RatePeriod::Second);
        let t0 = Instant::now();
        for i in 0..(SHARDS * PRUNE_FROM) {
            assert_eq!(limiter.check(i, one, t0), Ok(()));
        }
        let later = t0 + Duration::from_secs(2);
        for i in 0..(SHARDS * PRUNE_FROM) {
            assert_eq!(limiter.check(("later", i), one, later), Ok(()));
        }
        assert!(
            limiter.len() < 2 * SHARDS * PRUNE_FROM,
            "the first round's entries went: {}",
            limiter.len()
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(20)), 20);
        assert_eq!(retry_after_secs(Duration::from_millis(20_001)), 21);
    }
}
