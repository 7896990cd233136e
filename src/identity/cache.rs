//! Tokens already verified, so a client that sends the same token on every request pays for
//! the signature once. RS256 and ES256 verification cost 150–300 µs of CPU each with the
//! RustCrypto backend; a hit costs a hash of the token and a clone of its [`Identity`].
//!
//! Only tokens whose signature and claims passed are stored, keyed by the whole token. An entry is
//! served while the token's `exp` (plus leeway) has not passed and the key sets are unchanged
//! since it was verified (the `epoch` moves whenever a key set changes, so a key removed from a
//! JWKS stops its tokens at once). Bounded: sharded maps with a fixed capacity each; a full
//! shard drops expired entries, then an arbitrary one.
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
    /// Accepted by the review sent at this Unix second.
    Accepted { at: i64 },
    /// Refused, for this reason.
    Refused(String),
    /// The API server could not be asked, and no acceptance was at hand.
    Unavailable,
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

pub(crate) struct TokenCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    reviews: AtomicU64,
}

struct Entry {
    identity: Identity,
    /// For ServiceAccount tokens.
    review: Option<ReviewRecord>,
    /// Key-set epoch the token was verified in.
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
        })
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

    /// The identity of `token` if it was verified in `epoch` and is still valid at `now`.
    pub(crate) fn get(&self, token: &str, epoch: u64, now: i64) -> Option<Cached> {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(token)?;
        if entry.epoch == epoch && now <= entry.valid_until {
            return Some(Cached {
                identity: entry.identity.clone(),
                verdict: entry.review.as_ref().map(|r| r.verdict.clone()),
            });
        }
        shard.remove(token);
        None
    }

    /// The stamp of a review about to be sent for a token the cache has no verdict on.
    pub(crate) fn next_review(&self) -> u64 {
        self.reviews.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// When `token`'s next review is due at `now`: a stamp for it, and nobody else gets one for
    /// `hold` seconds (or until its verdict is recorded). Concurrent requests with the same
    /// token send one review, not one each.
    pub(crate) fn claim_review(&self, token: &str, now: i64, hold: i64) -> Option<u64> {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let review = shard.get_mut(token)?.review.as_mut()?;
        if now < review.due {
            return None;
        }
        review.due = now.saturating_add(hold);
        Some(self.next_review())
    }

    /// Records a review's verdict. A review sent before the one that gave the current verdict
    /// changes nothing, and `Unavailable` does not replace an acceptance (its due time stays as
    /// claimed).
    pub(crate) fn record(
        &self,
        token: &str,
        identity: &Identity,
        epoch: u64,
        leeway: i64,
        review: ReviewRecord,
    ) {
        let (seq, unavailable) = (review.seq, review.verdict == Verdict::Unavailable);
        let entry = self.entry(identity, epoch, leeway, Some(review));
        self.put(token, entry, |current| {
            match current.and_then(|e| e.review.as_ref()) {
                None => true,
                Some(current) => {
                    current.seq < seq
                        && !(unavailable && matches!(current.verdict, Verdict::Accepted { .. }))
                }
            }
        });
    }

    /// Remembers a verified token that needs no review (a user's).
    pub(crate) fn insert(&self, token: &str, identity: &Identity, epoch: u64, leeway: i64) {
        self.put(token, self.entry(identity, epoch, leeway, None), |_| true);
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

    /// Stores `entry` if `replace` agrees, given the entry there now (checked under the same
    /// lock as the write).
    fn put(&self, token: &str, entry: Entry, replace: impl FnOnce(Option<&Entry>) -> bool) {
        let epoch = entry.epoch;
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !replace(shard.get(token)) {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(token) {
            let now = jiff::Timestamp::now().as_second();
            // Entries of a newer key set are kept: this insert may come from a verification
            // that started before the keys changed.
            shard.retain(|_, e| e.epoch >= epoch && now <= e.valid_until);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
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

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

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
        cache.insert("t.o.k", &identity(1000), 1, 30);
        assert_eq!(
            cache.get("t.o.k", 1, 1030).map(|c| c.identity),
            Some(identity(1000))
        );
        assert_eq!(cache.get("t.o.k", 1, 1031), None);
        assert_eq!(cache.len(), 0, "an expired entry is dropped");
    }

    #[test]
    fn a_key_set_change_invalidates_cached_tokens() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), 1, 0);
        assert_eq!(cache.get("t.o.k", 2, 0), None);
        assert_eq!(cache.get("t.o.k", 1, 0), None, "gone, not just hidden");
    }

    fn record(seq: u64, verdict: Verdict, due: i64) -> ReviewRecord {
        ReviewRecord { verdict, seq, due }
    }

    #[test]
    fn a_due_review_is_handed_out_once_per_hold() {
        let cache = TokenCache::new(100).expect("enabled");
        let accepted = Verdict::Accepted { at: 100 };
        let first = cache.next_review();
        cache.record(
            "s.a.t",
            &identity(1000),
            1,
            0,
            record(first, accepted.clone(), 130),
        );
        cache.insert("u.s.r", &identity(1000), 1, 0);
        let verdict = |now| cache.get("s.a.t", 1, now).and_then(|c| c.verdict);
        assert_eq!(verdict(129), Some(accepted.clone()));
        assert_eq!(cache.claim_review("s.a.t", 129, 5), None, "not due yet");
        let second = cache.claim_review("s.a.t", 130, 5).expect("due");
        assert!(second > first);
        assert_eq!(
            cache.claim_review("s.a.t", 134, 5),
            None,
            "claimed until 135"
        );
        assert!(
            cache.claim_review("s.a.t", 135, 5).is_some(),
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
        let (older, newer) = (cache.next_review(), cache.next_review());
        let refused = Verdict::Refused("pod deleted".into());
        let accepted_before = Verdict::Accepted { at: 99 };
        cache.record(
            "s.a.t",
            &identity(1000),
            1,
            0,
            record(newer, refused.clone(), 105),
        );
        cache.record(
            "s.a.t",
            &identity(1000),
            1,
            0,
            record(older, accepted_before, 130),
        );
        let verdict = || cache.get("s.a.t", 1, 101).and_then(|c| c.verdict);
        assert_eq!(verdict(), Some(refused));

        // An outage does not undo an acceptance; a later acceptance replaces a refusal.
        let accepted = Verdict::Accepted { at: 110 };
        let later = record(cache.next_review(), accepted.clone(), 140);
        cache.record("s.a.t", &identity(1000), 1, 0, later);
        let outage = record(cache.next_review(), Verdict::Unavailable, 115);
        cache.record("s.a.t", &identity(1000), 1, 0, outage);
        assert_eq!(verdict(), Some(accepted));
    }

    #[test]
    fn only_the_exact_token_hits() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), 1, 0);
        assert_eq!(cache.get("t.o.", 1, 0), None);
        assert_eq!(cache.get("t.o.kk", 1, 0), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(SHARDS * 2).expect("enabled");
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), &identity(10_000_000_000), 1, 0);
        }
        assert!(cache.len() <= SHARDS * 2, "{} entries", cache.len());
        assert!(TokenCache::new(0).is_none());
    }
}
