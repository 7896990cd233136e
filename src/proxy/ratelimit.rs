//! Request rate limits (`ChatflowAccess.spec.rateLimit`), shared by the replicas of a
//! PostgreSQL ledger, else counted in this process.
//!
//! Each (ChatflowAccess, subject) pair has an allowance of `requests` per `per` that refills
//! steadily, and may be spent at once: the generic cell rate algorithm (GCRA), which keeps one
//! instant per pair — when its allowance will be whole again, the "theoretical arrival time".
//! A request is allowed when that instant is at most `per − per/requests` ahead of now, and moves
//! it `per/requests` further. No timer, no counter reset, no per-window buckets.
//!
//! On a PostgreSQL ledger the instant is a row every replica updates in one statement
//! ([`CreditLedger::take_rate`]), so behind N replicas a caller gets the rate once, at the
//! cost of a round trip per limited request (shared by the requests that queued meanwhile: one
//! statement takes them all). While the database cannot be asked, each replica
//! counts on its own, as it does on SQLite (one replica): in sharded maps shared by every proxy
//! thread, which hold, for every pair the database answered for, where the database last said
//! it stood — so a replica cut off goes on from the shared allowance, not from a full one. A pair whose instant has passed is the same as a pair never seen, so a shard drops
//! those entries when it grows (and the ledger's sweep deletes such rows); memory is bounded by
//! the callers active within the longest period (an hour).
//!
//! Every answer under a limit tells the caller where it stands, in the `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` headers of draft-ietf-httpapi-ratelimit-headers
//! (the form Kong and Envoy send): the allowance, what is left of it now, and the seconds until
//! it grows by one request. The allowance refills one request at a time, so that is the moment
//! a caller with nothing left may send again: on a 429 it is the `Retry-After`, as the draft
//! asks when both are sent.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

use crate::crd::RateLimit;
use crate::ledger::CreditLedger;

use super::replicas::Replicas;

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const SHARDS: usize = 16;
/// A shard first drops passed entries when it holds this many.
const PRUNE_FROM: usize = 1024;

pub struct RateLimiter {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Where replicas share allowances ([`CreditLedger::take_rate`]).
    shared: Replicas,
}

#[derive(Default)]
struct Shard {
    /// By key hash: when the key's allowance is whole again, and the interval of one request
    /// of the rule it was counted under ([`rescaled`]).
    full_at: HashMap<u64, (Instant, Duration)>,
    prune_at: usize,
}

impl Shard {
    /// Drops the keys whose allowance is whole again (the same as never seen).
    fn prune(&mut self, now: Instant) {
        self.full_at.retain(|_, (at, _)| *at > now);
        self.prune_at = PRUNE_FROM.max(self.full_at.len() * 2);
    }
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
            shared: Replicas::alone(),
        }
    }
}

/// Where a caller stands under one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub rate: RateLimit,
    /// Requests that may follow at once.
    pub remaining: u32,
    /// Until one more request may follow.
    pub next_in: Duration,
}

impl Allowance {
    /// What is left when the key's instant is `ahead` of now: each request moves the instant
    /// one `interval` on, and it is one period ahead at most (an instant kept from before the
    /// rule's period was shortened counts as one period ahead: see [`RateLimiter::check`]).
    fn at(rate: RateLimit, interval: Duration, ahead: Duration) -> Self {
        let per = rate.per.duration();
        let ahead = ahead.min(per);
        let room = (per - ahead).as_nanos();
        let interval = interval.as_nanos().max(1);
        // `interval` is rounded down: with a very large `requests` the room could hold one more.
        let remaining = (room / interval).min(u128::from(rate.requests.saturating_sub(1)));
        let until_next = interval - room % interval;
        Self {
            rate,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            next_in: Duration::from_nanos(u64::try_from(until_next).unwrap_or(u64::MAX)),
        }
    }

    /// `RateLimit-Limit: 30, 30;w=60`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until
    /// one more request, rounded up).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let requests = self.rate.requests;
        let window = self.rate.per.duration().as_secs();
        if let Ok(limit) = HeaderValue::try_from(format!("{requests}, {requests};w={window}")) {
            headers.insert(RATELIMIT_LIMIT, limit);
        }
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(whole_secs(self.next_in)));
    }
}

/// A request over the rate: nothing remains, and `next_in` is the wait (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub Allowance);

impl RateLimiter {
    /// A limiter that shares allowances through `ledger` where it can (PostgreSQL).
    pub fn shared(ledger: Arc<dyn CreditLedger>) -> Self {
        Self {
            shared: Replicas::sharing(
                ledger,
                "shared rate allowances unavailable: each replica counts its own",
            ),
            ..Self::default()
        }
    }

    /// Spends one request of `subject`'s allowance under the ChatflowAccess `access`
    /// (`namespace`, `name`) at `rate`: across replicas where the ledger shares allowances,
    /// else (or while it cannot be asked) in this process.
    pub async fn take(
        &self,
        access: (&str, &str),
        subject: &str,
        rate: RateLimit,
    ) -> Result<Allowance, Refused> {
        let per = rate.per.duration();
        let interval = interval(rate);
        let key = shared_key(access, subject);
        let burst = per.saturating_sub(interval);
        // Before the ask: the database's `now` is later, so the instant noted from its answer
        // lags behind the database's, never leads it (an early refusal, `refusal`, relies on it).
        let asked = Instant::now();
        let shared = self
            .shared
            .ask(|ledger| ledger.take_rate(&key, interval, burst))
            .await;
        let local = local_key(access, subject);
        match shared {
            Some(take) => {
                self.remember(local, take.ahead, asked, interval);
                let allowance = Allowance::at(rate, interval, take.ahead);
                match take.admitted {
                    true => Ok(allowance),
                    false => Err(Refused(allowance)),
                }
            }
            None => self.check(local, rate, Instant::now()),
        }
    }

    /// The refusal [`Self::take`] would give `subject` under `rate` now, by what this replica
    /// knows, without spending anything: a prediction sure to be refused is refused before its
    /// body is read. (On a shared ledger the instant noted at the last take only lags behind
    /// the database's, which other replicas' takes move on, never back.) `None` when `take`
    /// may admit it: it decides.
    pub fn refusal(&self, access: (&str, &str), subject: &str, rate: RateLimit) -> Option<Refused> {
        let per = rate.per.duration();
        let interval = interval(rate);
        let burst = per.saturating_sub(interval);
        let (hash, shard) = self.shard(local_key(access, subject));
        let stored = *shard.full_at.get(&hash)?;
        drop(shard);
        let now = Instant::now();
        let ahead = rescaled(Some(stored), now, interval, per) - now;
        (ahead > burst).then(|| Refused(Allowance::at(rate, interval, ahead)))
    }

    /// `key`'s hash and its shard, locked.
    fn shard(&self, key: impl Hash) -> (u64, std::sync::MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        let shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (hash, shard)
    }

    /// Notes where the database said `key` stands (its instant `ahead` of `now`, counted in
    /// requests of `interval`), for when this replica counts on its own.
    fn remember(&self, key: impl Hash, ahead: Duration, now: Instant, interval: Duration) {
        let (hash, mut shard) = self.shard(key);
        shard.full_at.insert(hash, (now + ahead, interval));
        if shard.full_at.len() >= shard.prune_at {
            shard.prune(now);
        }
    }

    /// Spends one request of `key`'s allowance under `rate` at `now` and says what is left, or
    /// says how long until one is available again.
    pub fn check(
        &self,
        key: impl Hash,
        rate: RateLimit,
        now: Instant,
    ) -> Result<Allowance, Refused> {
        let per = rate.per.duration();
        let interval = interval(rate);
        let burst = per.saturating_sub(interval);
        let (hash, mut shard) = self.shard(key);
        let stored = shard.full_at.get(&hash).copied();
        let full_at = rescaled(stored, now, interval, per);
        if stored.is_some_and(|(at, every)| at > full_at || every != interval) {
            // Kept so, refused or not: it drains under the new rule from here.
            shard.full_at.insert(hash, (full_at, interval));
        }
        let ahead = full_at - now;
        if ahead > burst {
            return Err(Refused(Allowance::at(rate, interval, ahead)));
        }
        shard.full_at.insert(hash, (full_at + interval, interval));
        if shard.full_at.len() >= shard.prune_at {
            shard.prune(now);
        }
        drop(shard);
        Ok(Allowance::at(rate, interval, ahead + interval))
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

/// The key of `subject`'s allowance under `access` where replicas share it: a primary key in
/// PostgreSQL, whose index refuses a row past about 2.7 KB, and one statement takes every
/// replica's keys at once. A subject that long (a token's claim is the caller's to choose) is
/// kept as its digest, so it cannot fail everyone's takes.
/// The key of `subject`'s allowance under rule `access` in this replica's own maps.
fn local_key<'a>(access: (&'a str, &'a str), subject: &'a str) -> (&'a str, &'a str, &'a str) {
    (access.0, access.1, subject)
}

/// When a key's allowance is whole again, as of `now`, under a rule of `interval` a request and
/// period `per`, from what is stored for it: an instant, and the interval it was counted in.
/// The key is the rule and the caller, not the rate, so after an edit what was spent counts as
/// as many requests under the new rule (the time ahead scaled by the intervals' ratio: 60 sent
/// under 60 a minute are 60 under 60 an hour, not one minute's worth), and at most one period
/// ahead (10 per hour spent, the rule now 10 per minute: spent, not the hour's wait).
fn rescaled(
    stored: Option<(Instant, Duration)>,
    now: Instant,
    interval: Duration,
    per: Duration,
) -> Instant {
    let Some((at, every)) = stored else {
        return now;
    };
    let ahead = at.saturating_duration_since(now);
    let ahead = if every == interval || every.is_zero() {
        ahead
    } else {
        let scaled = ahead.as_nanos() * interval.as_nanos() / every.as_nanos();
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    };
    now + ahead.min(per)
}

fn shared_key(access: (&str, &str), subject: &str) -> String {
    const LONGEST: usize = 512;
    if subject.len() <= LONGEST {
        format!("{}/{} {subject}", access.0, access.1)
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(subject.as_bytes());
        format!("{}/{} sha256:{digest:x}", access.0, access.1)
    }
}

/// The time one request of `rate` takes: at least a nanosecond (`requests` over a billion a
/// `Second` would divide to none, and nothing would be limited).
fn interval(rate: RateLimit) -> Duration {
    (rate.per.duration() / rate.requests.max(1)).max(Duration::from_nanos(1))
}

/// `Retry-After` (or `RateLimit-Reset`) seconds for a wait: rounded up, at least 1.
pub fn whole_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RatePeriod;

    #[test]
    fn a_rate_past_a_billion_a_second_is_still_a_limit() {
        // Divided down to no time at all, each request would cost nothing: no limit.
        let huge = rate(u32::MAX, RatePeriod::Second);
        assert_eq!(interval(huge), Duration::from_nanos(1));
        assert_eq!(
            interval(rate(3, RatePeriod::Second)),
            Duration::from_nanos(333_333_333)
        );
    }

    #[test]
    fn a_long_subject_is_shared_as_its_digest() {
        let short = shared_key(("team", "bots"), "user:alice");
        assert_eq!(short, "team/bots user:alice");
        let long = |c: char| {
            shared_key(
                ("team", "bots"),
                &format!("user:{}", c.to_string().repeat(3000)),
            )
        };
        assert!(long('a').len() < 100, "{}", long('a'));
        assert!(long('a').starts_with("team/bots sha256:"));
        assert_ne!(long('a'), long('b'));
        assert_eq!(long('a'), long('a'));
    }

    fn rate(requests: u32, per: RatePeriod) -> RateLimit {
        RateLimit { requests, per }
    }

    #[test]
    fn a_burst_of_the_whole_allowance_then_one_per_interval() {
        let limiter = RateLimiter::default();
        let three = rate(3, RatePeriod::Minute);
        let t0 = Instant::now();
        let left = |remaining, next_in| Allowance {
            rate: three,
            remaining,
            next_in: Duration::from_secs(next_in),
        };
        // Each spends one interval (60 s / 3) of the allowance, which refills one per interval.
        for remaining in [2, 1, 0] {
            assert_eq!(limiter.check("alice", three, t0), Ok(left(remaining, 20)));
        }
        assert_eq!(
            limiter.check("alice", three, t0),
            Err(Refused(left(0, 20))),
            "the fourth waits for one interval"
        );
        // A refused request spends nothing: still 20 s, and 19 s a second later.
        assert_eq!(limiter.check("alice", three, t0), Err(Refused(left(0, 20))));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check("alice", three, t1), Err(Refused(left(0, 19))));
        // 5 s into the first request's interval a second leaves one; the first refills in 15 s.
        let t5 = t0 + Duration::from_secs(5);
        let mut fresh = RateLimiter::default();
        fresh.check("bob", three, t0).expect("first");
        assert_eq!(fresh.check("bob", three, t5), Ok(left(1, 15)));
        fresh = RateLimiter::default();
        fresh.check("carol", three, t0).expect("first");
        assert_eq!(
            fresh.check("carol", three, t0 + Duration::from_secs(25)),
            Ok(left(2, 20)),
            "the first request's interval passed: the allowance is whole again, less this one"
        );
        // After one interval exactly one more is allowed, and it is the last for now.
        let t20 = t0 + Duration::from_secs(20);
        let allowed = limiter.check("alice", three, t20).map(|a| a.remaining);
        assert_eq!(allowed, Ok(0));
        assert!(limiter.check("alice", three, t20).is_err());
        // Half an interval later still nothing; after a whole period idle, the whole burst.
        let t30 = t20 + Duration::from_secs(10);
        assert!(limiter.check("alice", three, t30).is_err());
        let later = t20 + Duration::from_secs(60);
        for remaining in [2, 1, 0] {
            let allowed = limiter.check("alice", three, later).map(|a| a.remaining);
            assert_eq!(allowed, Ok(remaining));
        }
        assert!(limiter.check("alice", three, later).is_err());
    }

    #[test]
    fn counting_alone_goes_on_from_where_the_shared_allowance_stood() {
        let limiter = RateLimiter::default();
        let three = rate(3, RatePeriod::Minute);
        let now = Instant::now();
        // The database last said the caller's instant is a minute ahead: all three spent.
        limiter.remember(
            "caller",
            Duration::from_secs(60),
            now,
            Duration::from_secs(20),
        );
        let Refused(allowance) = limiter.check("caller", three, now).expect_err("none left");
        assert_eq!(allowance.remaining, 0);
        assert_eq!(allowance.next_in, Duration::from_secs(20));
        // One interval (20 s) on, one more; another caller was never held back.
        assert!(
            limiter
                .check("caller", three, now + Duration::from_secs(20))
                .is_ok()
        );
        assert!(limiter.check("another", three, now).is_ok());
    }

    #[test]
    fn keys_are_counted_apart() {
        let limiter = RateLimiter::default();
        let one = rate(1, RatePeriod::Hour);
        let now = Instant::now();
        assert!(limiter.check(("team/a", "user:alice"), one, now).is_ok());
        assert!(limiter.check(("team/a", "user:bob"), one, now).is_ok());
        assert!(limiter.check(("team/b", "user:alice"), one, now).is_ok());
        let wait = limiter
            .check(("team/a", "user:alice"), one, now)
            .map_err(|r| r.0.next_in);
        assert_eq!(wait, Err(Duration::from_secs(3600)));
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
            assert!(limiter.check(i, one, t0).is_ok());
        }
        let later = t0 + Duration::from_secs(2);
        for i in 0..(SHARDS * PRUNE_FROM) {
            assert!(limiter.check(("later", i), one, later).is_ok());
        }
        assert!(
            limiter.len() < 2 * SHARDS * PRUNE_FROM,
            "the first round's entries went: {}",
            limiter.len()
        );
    }

    #[test]
    fn an_allowance_whose_interval_does_not_divide_the_period() {
        // 1 s / 3 is 333,333,333 ns: the third request must still leave 0, not wrap.
        let limiter = RateLimiter::default();
        let three = rate(3, RatePeriod::Second);
        let now = Instant::now();
        let left: Vec<_> = (0..3)
            .map(|_| limiter.check("k", three, now).map(|a| a.remaining))
            .collect();
        assert_eq!(left, [Ok(2), Ok(1), Ok(0)]);
        assert!(limiter.check("k", three, now).is_err());
    }

    #[test]
    fn a_shortened_period_starts_spent_under_the_new_rule_not_the_old_wait() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        let hourly = rate(10, RatePeriod::Hour);
        for _ in 0..10 {
            assert!(limiter.check("k", hourly, now).is_ok());
        }
        // The rule becomes 10 per minute: spent under it, one more request in 6 s (not the
        // 59 min the hour's instant would make it).
        let minutely = rate(10, RatePeriod::Minute);
        let refused = limiter.check("k", minutely, now);
        let expected = Allowance {
            rate: minutely,
            remaining: 0,
            next_in: Duration::from_secs(6),
        };
        assert_eq!(refused, Err(Refused(expected)));
        let later = now + Duration::from_secs(6);
        assert!(limiter.check("k", minutely, later).is_ok());
    }

    /// After a rule's rate changes, what the caller spent counts as that many requests under
    /// the new one: tightened, no more than it allows; loosened, the rest of it at once.
    #[test]
    fn an_edited_rate_counts_the_requests_spent_not_the_time() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        let (minutely, hourly) = (rate(60, RatePeriod::Minute), rate(60, RatePeriod::Hour));
        for _ in 0..60 {
            assert!(limiter.check("tightened", minutely, now).is_ok());
        }
        let refused = limiter
            .check("tightened", hourly, now)
            .expect_err("60 of 60 spent");
        assert_eq!(refused.0.remaining, 0);
        let (sparse, busy) = (rate(1, RatePeriod::Hour), rate(60, RatePeriod::Minute));
        assert!(limiter.check("loosened", sparse, now).is_ok());
        let admitted = limiter.check("loosened", busy, now).expect("1 of 60 spent");
        assert_eq!(admitted.remaining, 58);
    }

    #[tokio::test]
    async fn a_refusal_is_known_without_spending() {
        let limiter = RateLimiter::default();
        let two = rate(2, RatePeriod::Minute);
        let access = ("team", "limited");
        assert_eq!(limiter.refusal(access, "bob", two), None, "never seen");
        for _ in 0..2 {
            assert_eq!(limiter.refusal(access, "bob", two), None);
            assert!(limiter.take(access, "bob", two).await.is_ok());
        }
        // Spent: refused, and asking again spends nothing more (the wait stays one interval).
        for _ in 0..3 {
            let Some(Refused(allowance)) = limiter.refusal(access, "bob", two) else {
                panic!("spent");
            };
            assert!(
                allowance.next_in <= Duration::from_secs(30),
                "{allowance:?}"
            );
        }
        assert!(limiter.take(access, "bob", two).await.is_err());
        assert_eq!(
            limiter.refusal(access, "alice", two),
            None,
            "another caller"
        );
    }

    #[test]
    fn remaining_never_passes_the_limit_when_the_interval_rounds_down() {
        // 1 s / 999,999 rounds down to 1,000 ns, so a period holds 1,000,000 of them.
        let limiter = RateLimiter::default();
        let many = rate(999_999, RatePeriod::Second);
        let first = limiter
            .check("k", many, Instant::now())
            .map(|a| a.remaining);
        assert_eq!(first, Ok(999_998));
    }

    #[test]
    fn the_headers_say_limit_window_remaining_and_reset() {
        let allowance = Allowance {
            rate: rate(30, RatePeriod::Minute),
            remaining: 7,
            next_in: Duration::from_millis(1_001),
        };
        let mut headers = HeaderMap::new();
        allowance.write_headers(&mut headers);
        let value = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(value(RATELIMIT_LIMIT), Some("30, 30;w=60"));
        assert_eq!(value(RATELIMIT_REMAINING), Some("7"));
        assert_eq!(value(RATELIMIT_RESET), Some("2"));
    }

    #[test]
    fn whole_secs_round_up() {
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::ZERO), 1);
        assert_eq!(whole_secs(Duration::from_secs(20)), 20);
        assert_eq!(whole_secs(Duration::from_millis(20_001)), 21);
    }
}
