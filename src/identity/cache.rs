//! Tokens already verified, so a client that sends the same token on every request pays for
//! the signature once. RS256 and ES256 verification cost 150–300 µs of CPU each with the
//! RustCrypto backend; a hit costs a hash of the token and a clone of its [`Identity`].
//!
//! Only tokens whose signature and claims passed are stored, keyed by the whole token. An entry is
//! served while the token's `exp` (plus leeway) has not passed and the key sets are unchanged
//! since it was verified (the `epoch` moves whenever a key set changes, so a key removed from a
//! JWKS stops its tokens at once; a ServiceAccount token verified again keeps its verdict).
//! Bounded: sharded maps with a fixed capacity each; a full
//! shard drops expired entries, then a user token's, then the ServiceAccount token accepted
//! longest ago.
//!
//! A ServiceAccount token's entry also holds the API server's last verdict on it
//! ([`Verdict`]), stamped with the order its review was sent in, so a slow review never
//! overwrites a newer one; the verifier decides what a verdict is worth and when to ask again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::Identity;

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<Box<str>, Entry>>;

/// The key-set epochs a verification started in: one for callers' own keys (key files, JWKS,
/// OIDC), one for the cluster's. A ServiceAccount token's entry follows only the cluster's, so
/// a rotated user key does not throw away its review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Epochs {
    pub(crate) users: u64,
    pub(crate) service_accounts: u64,
}

impl Epochs {
    /// The epoch `entry` is checked against.
    fn of(&self, entry: &Entry) -> u64 {
        match entry.review {
            Some(_) => self.service_accounts,
            None => self.users,
        }
    }
}

/// A cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) identity: Identity,
    /// For ServiceAccount tokens: the API server's last verdict.
    pub(crate) verdict: Option<Verdict>,
}

/// What the API server last said of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accepted by the review sent at Unix second `at`; `failing` when a review after it could
    /// not be made (the API server could not be asked).
    Accepted { at: i64, failing: bool },
    /// Refused, for this reason.
    Refused(String),
    /// The API server could not be asked, and no acceptance was at hand.
    Unavailable,
}

/// A cached ServiceAccount token's verdict, read under the same lock as the claim on its next
/// review ([`TokenCache::claim_review`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) verdict: Verdict,
    /// The stamp of the review this caller is to send; `None` when it is not due, or another
    /// caller is sending it.
    pub(crate) seq: Option<u64>,
}

/// A verdict and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReviewRecord {
    pub(crate) verdict: Verdict,
    /// Order in which the review was sent ([`TokenCache::next_review`]).
    pub(crate) seq: u64,
    /// Unix second from which [`TokenCache::claim_review`] hands out the next review.
    pub(crate) due: i64,
}

/// How many token lookups the cache answered ([`TokenCache::lookups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lookups {
    pub hits: u64,
    pub misses: u64,
}

pub(crate) struct TokenCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    reviews: AtomicU64,
    /// Lookups answered from the cache, and not ([`Self::count`]).
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Entry {
    identity: Identity,
    /// For ServiceAccount tokens.
    review: Option<ReviewRecord>,
    /// Key-set epoch the token was verified in ([`Epochs`]: the cluster's for ServiceAccount
    /// tokens).
    epoch: u64,
    /// `exp` plus leeway, in seconds.
    valid_until: i64,
}

impl TokenCache {
    /// `None` when `capacity` is zero (no caching).
    pub(crate) fn new(capacity: usize) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Some(Self {
            shards,
            per_shard: capacity.div_ceil(SHARDS),
            reviews: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Counts one lookup of a token, answered from the cache (`hit`) or not.
    pub(crate) fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups so far: answered from the cache, and not.
    pub(crate) fn lookups(&self) -> Lookups {
        Lookups {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The shard of a token, from the six bits of the next-to-last character of its signature,
    /// as good as random for the signed tokens stored here. (Not the last character: it carries
    /// only the leftover bits, 2 for 256-byte RS256 and 64-byte ES256 and EdDSA signatures; nor
    /// the character's ASCII code, which is not uniform modulo 16.)
    fn shard(&self, token: &str) -> &Shard {
        let bytes = token.as_bytes();
        let sextet = match bytes.len().checked_sub(2).and_then(|i| bytes.get(i)) {
            Some(b @ b'A'..=b'Z') => b - b'A',
            Some(b @ b'a'..=b'z') => b - b'a' + 26,
            Some(b @ b'0'..=b'9') => b - b'0' + 52,
            Some(b'-') => 62,
            _ => 63,
        };
        &self.shards[usize::from(sextet) % self.shards.len()]
    }

    /// The identity of `token` if it was verified in the current `epochs` and is still valid
    /// at `now`.
    pub(crate) fn get(&self, token: &str, epochs: Epochs, now: i64) -> Option<Cached> {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(token)?;
        if now > entry.valid_until {
            shard.remove(token);
            return None;
        }
        if entry.epoch == epochs.of(entry) {
            return Some(Cached {
                identity: entry.identity.clone(),
                verdict: entry.review.as_ref().map(|r| r.verdict.clone()),
            });
        }
        // Verified under keys that have changed since: the token is checked again. A
        // ServiceAccount token's review history is kept for [`Self::restamp`]: the API
        // server's verdict does not depend on the keys that checked the signature.
        if entry.review.is_none() {
            shard.remove(token);
        }
        None
    }

    /// A ServiceAccount token verified again under the keys of `epochs`: its entry, verdict and
    /// all, counts as verified in them. False when there is none to keep (never reviewed,
    /// evicted, expired).
    pub(crate) fn restamp(&self, token: &str, epochs: Epochs, now: i64) -> bool {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get_mut(token) {
            Some(entry) if entry.review.is_some() && now <= entry.valid_until => {
                entry.epoch = entry.epoch.max(epochs.service_accounts);
                true
            }
            _ => false,
        }
    }

    /// The stamp of a review about to be sent for a token the cache has no verdict on.
    pub(crate) fn next_review(&self) -> u64 {
        self.reviews.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `token`'s verdict, and when its next review is due at `now`, a stamp for it: nobody else
    /// gets one for `hold` seconds (or until a verdict is recorded), so concurrent requests with
    /// the same token send one review, not one each. `None` when the cache holds no verdict.
    pub(crate) fn claim_review(&self, token: &str, now: i64, hold: i64) -> Option<Claim> {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let review = shard.get_mut(token)?.review.as_mut()?;
        let seq = (now >= review.due).then(|| {
            review.due = now.saturating_add(hold);
            self.next_review()
        });
        Some(Claim {
            verdict: review.verdict.clone(),
            seq,
        })
    }

    /// Records a review's verdict. A review sent before the one that gave the current verdict
    /// changes nothing; `Unavailable` over an acceptance only marks it `failing`, over a refusal
    /// keeps the refusal (a revoked token's holder is told so, not to retry), and is retried
    /// from `due`. Without an entry (evicted, or expired) a verdict is stored only when
    /// `create` (a first review): a stale claimed review must not bring back an evicted one.
    /// Returns the refusal an `Unavailable` verdict left standing, if any.
    pub(crate) fn record(
        &self,
        token: &str,
        identity: &Identity,
        epochs: Epochs,
        leeway: i64,
        review: ReviewRecord,
        create: bool,
    ) -> Option<String> {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get_mut(token).and_then(|e| e.review.as_mut()) {
            None if !create => return None,
            None => {}
            Some(current) if current.seq >= review.seq => return None,
            Some(current)
                if matches!(review.verdict, Verdict::Unavailable)
                    && !matches!(current.verdict, Verdict::Unavailable) =>
            {
                current.seq = review.seq;
                current.due = review.due;
                return match &mut current.verdict {
                    Verdict::Accepted { failing, .. } => {
                        *failing = true;
                        None
                    }
                    Verdict::Refused(reason) => Some(reason.clone()),
                    Verdict::Unavailable => None,
                };
            }
            Some(_) => {}
        }
        let entry = self.entry(identity, epochs.service_accounts, leeway, Some(review));
        self.put_locked(&mut shard, token, entry, epochs);
        None
    }

    /// Remembers a verified token that needs no review (a user's).
    pub(crate) fn insert(&self, token: &str, identity: &Identity, epochs: Epochs, leeway: i64) {
        let entry = self.entry(identity, epochs.users, leeway, None);
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.put_locked(&mut shard, token, entry, epochs);
    }

    fn entry(
        &self,
        identity: &Identity,
        epoch: u64,
        leeway: i64,
        review: Option<ReviewRecord>,
    ) -> Entry {
        Entry {
            identity: identity.clone(),
            review,
            epoch,
            valid_until: identity.expires_at.as_second().saturating_add(leeway),
        }
    }

    /// Stores `entry`, verified in `epochs`, making room in its (locked) shard when it is full.
    fn put_locked(
        &self,
        shard: &mut HashMap<Box<str>, Entry>,
        token: &str,
        entry: Entry,
        epochs: Epochs,
    ) {
        if shard.len() >= self.per_shard && !shard.contains_key(token) {
            let now = jiff::Timestamp::now().as_second();
            // Entries of a newer key set are kept: this insert may come from a verification
            // that started before the keys changed.
            shard.retain(|_, e| e.epoch >= epochs.of(e) && now <= e.valid_until);
            if shard.len() >= self.per_shard {
                // Room for an eighth of the shard at once: a full cache of tokens seen once
                // (each verified, stored, never asked again) pays the two scans above once per
                // that many inserts, not at every one (+2-3 us a request at 10,000 entries).
                for victim in least_worth(shard, (self.per_shard / 8).max(1)) {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(token.into(), entry);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The entries a full shard gives up: up to `n` users' tokens, else one other. A user token costs a signature check to verify again; a
/// ServiceAccount token a review its next request waits for (a 503 while the API server cannot
/// be asked): users' go first, then a refusal or an outage, then the acceptance longest ago.
fn least_worth(shard: &HashMap<Box<str>, Entry>, n: usize) -> Vec<Box<str>> {
    let mut ranked: Vec<_> = shard
        .iter()
        .map(|(token, e)| {
            let rank = match &e.review {
                None => (0, 0),
                Some(ReviewRecord {
                    verdict: Verdict::Refused(_) | Verdict::Unavailable,
                    ..
                }) => (1, 0),
                Some(ReviewRecord {
                    verdict: Verdict::Accepted { at, .. },
                    ..
                }) => (2, *at),
            };
            (rank, token)
        })
        .collect();
    let n = n.min(ranked.len());
    if n == 0 {
        return Vec::new();
    }
    // The n least worth first, in no order among themselves.
    ranked.select_nth_unstable_by_key(n - 1, |(rank, _)| *rank);
    // Only users' tokens go by the batch (a signature check brings one back); a ServiceAccount
    // token, whose next request waits for a review, goes one at a time, the least worth.
    let users: Vec<Box<str>> = ranked[..n]
        .iter()
        .filter(|(rank, _)| rank.0 == 0)
        .map(|(_, token)| (*token).clone())
        .collect();
    if !users.is_empty() {
        return users;
    }
    ranked[..n]
        .iter()
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, token)| (*token).clone())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    const E1: Epochs = Epochs {
        users: 1,
        service_accounts: 1,
    };

    fn identity(exp: i64) -> Identity {
        Identity {
            users: vec!["alice".into()],
            groups: vec![],
            service_account: None,
            admin: false,
            key: "user:alice".into(),
            expires_at: Timestamp::from_second(exp).expect("valid"),
        }
    }

    /// Compact tokens with signatures of `len` pseudo-random bytes.
    fn tokens(len: usize, count: u32) -> Vec<String> {
        use base64::Engine;
        use sha2::Digest;
        (0..count)
            .map(|i| {
                let signature: Vec<u8> = (0_u32..)
                    .flat_map(|block| sha2::Sha256::digest(format!("{i}/{block}")))
                    .take(len)
                    .collect();
                let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
                format!("h.p.{encoded}")
            })
            .collect()
    }

    #[test]
    fn tokens_of_every_signature_size_spread_over_all_shards() {
        // HS256 (32 bytes), ES256/EdDSA (64), RS256 (256), RS512 with a 4096-bit key (512).
        for len in [32, 64, 256, 512] {
            let cache = TokenCache::new(16_000).expect("enabled");
            let mut per_shard = [0_u32; SHARDS];
            for token in tokens(len, 1_600) {
                let shard = cache.shard(&token) as *const Shard;
                let index = cache
                    .shards
                    .iter()
                    .position(|s| std::ptr::eq(s, shard))
                    .expect("a shard of this cache");
                per_shard[index] += 1;
            }
            // 100 per shard on average; the old last-byte choice put RS256 in two shards.
            assert!(
                per_shard.iter().all(|&n| n >= 50),
                "{len}-byte signatures: {per_shard:?}"
            );
        }
    }

    #[test]
    fn a_cached_token_is_served_until_exp_plus_leeway() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), E1, 30);
        assert_eq!(
            cache.get("t.o.k", E1, 1030).map(|c| c.identity),
            Some(identity(1000))
        );
        assert_eq!(cache.get("t.o.k", E1, 1031), None);
        assert_eq!(cache.len(), 0, "an expired entry is dropped");
    }

    /// A full shard gives up a user token before a reviewed ServiceAccount token, and of those
    /// the one accepted longest ago.
    #[test]
    fn a_full_cache_keeps_reviewed_service_account_tokens_longest() {
        // A full shard first drops what has expired by the clock: these expire in 2096.
        const LATER: i64 = 4_000_000_000;
        // Three entries per shard; five tokens of one shard.
        let cache = TokenCache::new(SHARDS * 3).expect("enabled");
        let all = tokens(64, 4_000);
        let shard = cache.shard(&all[0]) as *const Shard;
        let same: Vec<&String> = all
            .iter()
            .filter(|t| std::ptr::eq(cache.shard(t), shard))
            .take(5)
            .collect();
        let accepted = |at| ReviewRecord {
            verdict: Verdict::Accepted { at, failing: false },
            seq: 1,
            due: 2_000,
        };
        let [old_sa, new_sa, user, next, last] = same[..] else {
            panic!("five tokens of one shard");
        };
        // The service accounts' first: an arbitrary victim would be one of them.
        cache.record(old_sa, &identity(LATER), E1, 0, accepted(100), true);
        cache.record(new_sa, &identity(LATER), E1, 0, accepted(200), true);
        cache.insert(user, &identity(LATER), E1, 0);
        cache.insert(next, &identity(LATER), E1, 0);
        assert!(
            cache.get(user, E1, 0).is_none(),
            "the user token went first"
        );
        assert!(cache.get(old_sa, E1, 0).is_some() && cache.get(new_sa, E1, 0).is_some());
        cache.insert(last, &identity(LATER), E1, 0);
        assert!(
            cache.get(next, E1, 0).is_none(),
            "then the other user token"
        );
        assert!(cache.get(old_sa, E1, 0).is_some());
        cache.record(user, &identity(LATER), E1, 0, accepted(300), true);
        assert!(cache.get(last, E1, 0).is_none(), "and the last user token");
        cache.record(next, &identity(LATER), E1, 0, accepted(400), true);
        assert!(
            cache.get(old_sa, E1, 0).is_none(),
            "then the acceptance longest ago"
        );
        assert!(cache.get(new_sa, E1, 0).is_some());
    }

    #[test]
    fn a_key_set_change_invalidates_cached_tokens() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), E1, 0);
        assert_eq!(cache.get("t.o.k", Epochs { users: 2, ..E1 }, 0), None);
        assert_eq!(cache.get("t.o.k", E1, 0), None, "gone, not just hidden");
    }

    /// Records `verdict` for the token `s.a.t` under stamp `seq`, next due at `due`.
    fn put(
        cache: &TokenCache,
        seq: u64,
        verdict: Verdict,
        due: i64,
        create: bool,
    ) -> Option<String> {
        let review = ReviewRecord { verdict, seq, due };
        cache.record("s.a.t", &identity(1000), E1, 0, review, create)
    }

    const ACCEPTED: Verdict = Verdict::Accepted {
        at: 100,
        failing: false,
    };

    #[test]
    fn a_due_review_is_handed_out_once_per_hold() {
        let cache = TokenCache::new(100).expect("enabled");
        let first = cache.next_review();
        put(&cache, first, ACCEPTED, 130, true);
        cache.insert("u.s.r", &identity(1000), E1, 0);
        let claim = |now| cache.claim_review("s.a.t", now, 5);
        assert_eq!(
            claim(129),
            Some(Claim {
                verdict: ACCEPTED,
                seq: None
            }),
            "not due yet"
        );
        let second = claim(130).and_then(|c| c.seq).expect("due");
        assert!(second > first);
        assert_eq!(claim(134).and_then(|c| c.seq), None, "claimed until 135");
        assert!(
            claim(135).and_then(|c| c.seq).is_some(),
            "the claimed review never landed"
        );
        assert_eq!(
            cache.claim_review("u.s.r", 200, 5),
            None,
            "user tokens are never reviewed"
        );
        assert_eq!(
            cache.claim_review("n.o.t", 200, 5),
            None,
            "nor tokens not in the cache"
        );
    }

    #[test]
    fn a_slower_older_review_never_overwrites_a_newer_verdict() {
        let cache = TokenCache::new(100).expect("enabled");
        let verdict = || cache.get("s.a.t", E1, 101).and_then(|c| c.verdict);
        let (older, newer) = (cache.next_review(), cache.next_review());
        let refused = Verdict::Refused("pod deleted".into());
        put(&cache, newer, refused.clone(), 105, true);
        put(&cache, older, ACCEPTED, 130, false);
        assert_eq!(verdict(), Some(refused));

        // A later acceptance replaces a refusal; an outage after it only marks it failing.
        put(&cache, cache.next_review(), ACCEPTED, 140, false);
        assert_eq!(verdict(), Some(ACCEPTED));
        put(
            &cache,
            cache.next_review(),
            Verdict::Unavailable,
            115,
            false,
        );
        let failing = Verdict::Accepted {
            at: 100,
            failing: true,
        };
        assert_eq!(verdict(), Some(failing));
        put(&cache, cache.next_review(), ACCEPTED, 150, false);
        assert_eq!(verdict(), Some(ACCEPTED), "a success ends the failing mark");

        // An outage after a refusal keeps the refusal: a 401, not a 503 to retry on.
        let refused = Verdict::Refused("pod deleted".into());
        put(&cache, cache.next_review(), refused.clone(), 160, false);
        let outage = cache.next_review();
        assert_eq!(
            put(&cache, outage, Verdict::Unavailable, 170, false),
            Some("pod deleted".into()),
            "the refusal standing, for the request that asked"
        );
        assert_eq!(verdict(), Some(refused));
        assert_eq!(
            cache.claim_review("s.a.t", 169, 5).and_then(|c| c.seq),
            None,
            "retried from the outage's due time"
        );
        assert!(cache.claim_review("s.a.t", 170, 5).and_then(|c| c.seq) > Some(outage));
    }

    #[test]
    fn only_a_first_review_creates_an_entry() {
        let cache = TokenCache::new(100).expect("enabled");
        // A claimed review landing after its entry was evicted does not bring it back.
        put(&cache, cache.next_review(), ACCEPTED, 130, false);
        assert_eq!(cache.get("s.a.t", E1, 101), None);
        put(&cache, cache.next_review(), ACCEPTED, 130, true);
        assert!(cache.get("s.a.t", E1, 101).is_some());
    }

    #[test]
    fn a_key_change_of_one_kind_keeps_the_other_kind_s_entries() {
        let cache = TokenCache::new(100).expect("enabled");
        put(&cache, cache.next_review(), ACCEPTED, 130, true);
        cache.insert("u.s.r", &identity(1000), E1, 0);
        let user_keys_rotated = Epochs { users: 2, ..E1 };
        assert!(cache.get("s.a.t", user_keys_rotated, 101).is_some());
        assert_eq!(cache.get("u.s.r", user_keys_rotated, 101), None);
        let cluster_keys_rotated = Epochs {
            service_accounts: 2,
            ..user_keys_rotated
        };
        assert_eq!(cache.get("s.a.t", cluster_keys_rotated, 101), None);
    }

    #[test]
    fn only_the_exact_token_hits() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), E1, 0);
        assert_eq!(cache.get("t.o.", E1, 0), None);
        assert_eq!(cache.get("t.o.kk", E1, 0), None);
    }

    /// A full shard makes room for an eighth of itself at once, so that tokens seen once each
    /// do not cost a scan of the shard at every insert.
    #[test]
    fn a_full_shard_makes_room_for_an_eighth_at_once() {
        let cache = TokenCache::new(SHARDS * 16).expect("enabled");
        let all = tokens(64, 40_000);
        let shard = cache.shard(&all[0]) as *const Shard;
        let same: Vec<&String> = all
            .iter()
            .filter(|t| std::ptr::eq(cache.shard(t), shard))
            .take(17)
            .collect();
        assert_eq!(same.len(), 17, "17 tokens of one shard");
        for token in &same {
            cache.insert(token, &identity(4_000_000_000), E1, 0);
        }
        let held = same
            .iter()
            .filter(|t| cache.get(t, E1, 0).is_some())
            .count();
        assert_eq!(held, 16 - 2 + 1, "two made room for the seventeenth");
        assert!(cache.get(same[16], E1, 0).is_some(), "the newest is kept");
        // A shard of reviewed ServiceAccount tokens gives up one, the acceptance longest ago,
        // not an eighth: each would wait for a review at its next request.
        let cache = TokenCache::new(SHARDS * 16).expect("enabled");
        for (at, token) in (1_i64..).zip(&same[..16]) {
            let accepted = ReviewRecord {
                verdict: Verdict::Accepted { at, failing: false },
                seq: 1,
                due: 2_000,
            };
            cache.record(token, &identity(4_000_000_000), E1, 0, accepted, true);
        }
        cache.insert(same[16], &identity(4_000_000_000), E1, 0);
        let kept: Vec<bool> = same.iter().map(|t| cache.get(t, E1, 0).is_some()).collect();
        assert!(!kept[0], "the acceptance longest ago went");
        assert!(kept[1..].iter().all(|k| *k), "and only it: {kept:?}");
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(SHARDS * 2).expect("enabled");
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), &identity(10_000_000_000), E1, 0);
        }
        assert!(cache.len() <= SHARDS * 2, "{} entries", cache.len());
        assert!(TokenCache::new(0).is_none());
    }
}
