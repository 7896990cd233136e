//! Tokens already verified, so a client that sends the same token on every request pays for
//! the signature once. RS256 and ES256 verification cost 150–300 µs of CPU each with the
//! RustCrypto backend; a hit costs a hash of the token and a clone of its [`Identity`].
//!
//! Only tokens that passed every check are stored, keyed by the whole token. An entry is
//! served while the token's `exp` (plus leeway) has not passed and the key sets are unchanged
//! since it was verified (the `epoch` moves whenever a key set changes, so a key removed from a
//! JWKS stops its tokens at once). Bounded: sharded maps with a fixed capacity each; a full
//! shard drops expired entries, then an arbitrary one.
//!
//! A ServiceAccount token's entry also records when the API server last accepted it
//! ([`Cached::reviewed_at`]); the verifier decides when that is too old.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::Identity;

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<Box<str>, Entry>>;

/// A cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) identity: Identity,
    /// For ServiceAccount tokens: the Unix second the API server last accepted the token.
    pub(crate) reviewed_at: Option<i64>,
    /// The API server refused the token lately ([`TokenCache::refuse`]).
    pub(crate) refused: bool,
}

/// When the API server last accepted a ServiceAccount token, and when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reviewed {
    /// Unix second of the acceptance.
    pub(crate) at: i64,
    /// Unix second from which [`TokenCache::claim_review`] hands out the next review.
    pub(crate) due: i64,
}

pub(crate) struct TokenCache {
    shards: Box<[Shard]>,
    per_shard: usize,
}

struct Entry {
    identity: Identity,
    /// For ServiceAccount tokens: the API server's last acceptance.
    reviewed: Option<Reviewed>,
    /// The API server refused the token: remembered briefly, so a refused token sent again and
    /// again does not cost a `TokenReview` each time.
    refused: bool,
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
                reviewed_at: entry.reviewed.map(|r| r.at),
                refused: entry.refused,
            });
        }
        shard.remove(token);
        None
    }

    /// True, once per `retry` seconds, when `token`'s review is due at `now`: the caller reviews
    /// it. Concurrent requests with the same token start one review, not one each.
    pub(crate) fn claim_review(&self, token: &str, now: i64, retry: i64) -> bool {
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get_mut(token).and_then(|e| e.reviewed.as_mut()) {
            Some(reviewed) if now >= reviewed.due => {
                reviewed.due = now.saturating_add(retry);
                true
            }
            _ => false,
        }
    }

    /// Remembers until `until` (a Unix second) that the API server refused `token`.
    pub(crate) fn refuse(&self, token: &str, identity: &Identity, epoch: u64, until: i64) {
        self.put(
            token,
            Entry {
                identity: identity.clone(),
                reviewed: None,
                refused: true,
                epoch,
                valid_until: until.min(identity.expires_at.as_second()),
            },
        );
    }

    pub(crate) fn insert(
        &self,
        token: &str,
        identity: &Identity,
        epoch: u64,
        leeway: i64,
        reviewed: Option<Reviewed>,
    ) {
        let entry = Entry {
            identity: identity.clone(),
            reviewed,
            refused: false,
            epoch,
            valid_until: identity.expires_at.as_second().saturating_add(leeway),
        };
        self.put(token, entry);
    }

    fn put(&self, token: &str, entry: Entry) {
        let epoch = entry.epoch;
        let mut shard = self
            .shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        cache.insert("t.o.k", &identity(1000), 1, 30, None);
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
        cache.insert("t.o.k", &identity(1000), 1, 0, None);
        assert_eq!(cache.get("t.o.k", 2, 0), None);
        assert_eq!(cache.get("t.o.k", 1, 0), None, "gone, not just hidden");
    }

    #[test]
    fn a_due_review_is_handed_out_once_per_retry() {
        let cache = TokenCache::new(100).expect("enabled");
        let reviewed = Reviewed { at: 100, due: 130 };
        cache.insert("s.a.t", &identity(1000), 1, 0, Some(reviewed));
        cache.insert("u.s.r", &identity(1000), 1, 0, None);
        assert_eq!(
            cache.get("s.a.t", 1, 129).and_then(|c| c.reviewed_at),
            Some(100)
        );
        assert!(!cache.claim_review("s.a.t", 129, 5), "not due yet");
        assert!(cache.claim_review("s.a.t", 130, 5));
        assert!(!cache.claim_review("s.a.t", 134, 5), "claimed until 135");
        assert!(
            cache.claim_review("s.a.t", 135, 5),
            "the claimed review never landed"
        );
        assert!(
            !cache.claim_review("u.s.r", 200, 5),
            "user tokens are never reviewed"
        );
        assert!(
            !cache.claim_review("n.o.t", 200, 5),
            "nor tokens not in the cache"
        );
        cache.refuse("s.a.t", &identity(1000), 1, 140);
        assert!(cache.get("s.a.t", 1, 140).is_some_and(|c| c.refused));
        assert!(
            !cache.claim_review("s.a.t", 140, 5),
            "a refusal is not reviewed"
        );
        assert_eq!(
            cache.get("s.a.t", 1, 141),
            None,
            "a refusal is remembered until its end"
        );
    }

    #[test]
    fn only_the_exact_token_hits() {
        let cache = TokenCache::new(100).expect("enabled");
        cache.insert("t.o.k", &identity(1000), 1, 0, None);
        assert_eq!(cache.get("t.o.", 1, 0), None);
        assert_eq!(cache.get("t.o.kk", 1, 0), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(SHARDS * 2).expect("enabled");
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), &identity(10_000_000_000), 1, 0, None);
        }
        assert!(cache.len() <= SHARDS * 2, "{} entries", cache.len());
        assert!(TokenCache::new(0).is_none());
    }
}
