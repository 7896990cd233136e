//! Flowise API keys of chatflows bound to one: read from the Secret named in the Chatflow's
//! `apiKeySecretRef`, and read again a minute later so a rotated Secret is picked up without a
//! restart.
//!
//! One read per key at a time: requests that find no key yet wait for the read in flight, and
//! once a key is a minute old it keeps being used while one read in the background replaces it.
//! A Secret that cannot be read is asked for again after [`MISSING_TTL`], not on every request:
//! a typo in a busy chatflow's `apiKeySecretRef` must not turn its traffic into GETs on the API
//! server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hyper::header::HeaderValue;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::time::Instant;

use super::error::ProxyError;
use crate::crd::SecretKeyRef;
use crate::flowise::bearer;

/// How long a key is used before it is read again.
const TTL: Duration = Duration::from_secs(60);
/// How long a Secret that could not be read is answered from that failure.
const MISSING_TTL: Duration = Duration::from_secs(5);

/// Namespace, Secret name, key.
type CacheKey = (String, String, String);
/// The header, or why the Secret gives none.
type Read = Shared<BoxFuture<'static, Result<HeaderValue, Unread>>>;
type Fetch = Arc<dyn Fn(CacheKey) -> BoxFuture<'static, Result<HeaderValue, Unread>> + Send + Sync>;

/// Why a read found no key.
#[derive(Debug, Clone)]
struct Unread {
    why: String,
    /// The API server failed, not the Secret: a key read before is used on meanwhile.
    transient: bool,
}

impl Unread {
    fn gone(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            transient: false,
        }
    }
}

struct Entry {
    /// The latest read, finished or in flight.
    read: Read,
    started: Instant,
    /// The key of the read before, used while `read` is in flight.
    previous: Option<HeaderValue>,
}

/// Looks up chatflow keys in Secrets.
#[derive(Clone)]
pub struct ApiKeys {
    fetch: Fetch,
    cache: Arc<Mutex<HashMap<CacheKey, Entry>>>,
}

impl ApiKeys {
    /// Without a client (no cluster) every `apiKeySecretRef` is unavailable.
    pub fn new(client: Option<Client>) -> Self {
        Self::with_fetch(Arc::new(move |key| fetch(client.clone(), key).boxed()))
    }

    fn with_fetch(fetch: Fetch) -> Self {
        Self {
            fetch,
            cache: Arc::default(),
        }
    }

    /// `Bearer <key>` from the Secret, or an error saying which Secret is missing.
    pub async fn get(
        &self,
        namespace: &str,
        secret: &SecretKeyRef,
    ) -> Result<HeaderValue, ProxyError> {
        let unavailable = |why: String| {
            ProxyError::ChatflowUnavailable(format!(
                "(API key Secret {namespace}/{}: {why})",
                secret.name
            ))
        };
        let read = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache
                .entry(cache_key(namespace, secret))
                .or_insert_with_key(|key| Entry {
                    read: self.start(key.clone()),
                    started: Instant::now(),
                    previous: None,
                });
            let age = entry.started.elapsed();
            let read_again = match entry.read.peek() {
                None => false,
                Some(Ok(value)) if age < TTL => return Ok(value.clone()),
                // Expired: used on while it is read again.
                Some(Ok(value)) => {
                    entry.previous = Some(value.clone());
                    true
                }
                // The API server failing is no reason to stop using a key it gave before.
                Some(Err(unread)) if unread.transient && entry.previous.is_some() => {
                    age >= MISSING_TTL
                }
                Some(Err(unread)) if age < MISSING_TTL => {
                    return Err(unavailable(unread.why.clone()));
                }
                // Gone (or never there): the next read is waited for.
                Some(Err(_)) => {
                    entry.previous = None;
                    true
                }
            };
            if read_again {
                entry.read = self.start(cache_key(namespace, secret));
                entry.started = Instant::now();
            }
            if let Some(previous) = &entry.previous {
                return Ok(previous.clone());
            }
            entry.read.clone()
        };
        read.await.map_err(|unread| unavailable(unread.why))
    }

    /// A read of `key`, driven to its end by a task of its own: whoever waits for it or not,
    /// its result is there to [`Shared::peek`] at.
    fn start(&self, key: CacheKey) -> Read {
        let read = (self.fetch)(key).shared();
        tokio::spawn(read.clone());
        read
    }
}

fn cache_key(namespace: &str, secret: &SecretKeyRef) -> CacheKey {
    (
        namespace.to_string(),
        secret.name.clone(),
        secret.key.clone(),
    )
}

/// The header in the Secret, or why there is none.
async fn fetch(
    client: Option<Client>,
    (namespace, name, key): CacheKey,
) -> Result<HeaderValue, Unread> {
    let client = client.ok_or_else(|| Unread::gone("no cluster to read it from"))?;
    let found = Api::<Secret>::namespaced(client, &namespace)
        .get(&name)
        .await
        .map_err(|e| Unread {
            transient: !matches!(&e, kube::Error::Api(status) if status.code == 404),
            why: e.to_string(),
        })?;
    let raw = found
        .data
        .and_then(|mut data| data.remove(&key))
        .ok_or_else(|| Unread::gone(format!("has no key '{key}'")))?;
    let text = String::from_utf8(raw.0).map_err(|_| Unread::gone("key is not UTF-8"))?;
    bearer(&text).map_err(|_| Unread::gone("key is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Keys whose reads take 100 ms and answer what `answer` says for the n-th read (from 1):
    /// a key, or a failure (`blip` for one of the API server's).
    fn keys(answer: fn(u32) -> Result<&'static str, &'static str>) -> (ApiKeys, Arc<AtomicU32>) {
        let reads = Arc::new(AtomicU32::new(0));
        let counted = reads.clone();
        let keys = ApiKeys::with_fetch(Arc::new(move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match answer(n) {
                    Ok(key) => bearer(key).map_err(|e| Unread::gone(e.to_string())),
                    Err(why) => Err(Unread {
                        why: why.to_string(),
                        transient: why == "blip",
                    }),
                }
            }
            .boxed()
        }));
        (keys, reads)
    }

    fn secret() -> SecretKeyRef {
        SecretKeyRef {
            name: "flowise-key".into(),
            key: "apiKey".into(),
        }
    }

    async fn get(keys: &ApiKeys) -> Result<String, String> {
        keys.get("team-a", &secret())
            .await
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .map_err(|e| e.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_find_no_key_yet_share_one_read() {
        let (keys, reads) = keys(|_| Ok("k1"));
        let all = futures::future::join_all((0..20).map(|_| get(&keys))).await;
        assert!(
            all.iter().all(|r| r.as_deref() == Ok("Bearer k1")),
            "{all:?}"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k1"));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "cached");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_key_serves_while_one_read_replaces_it() {
        let (keys, reads) = keys(|n| Ok(if n == 1 { "old" } else { "rotated" }));
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer old"));
        tokio::time::advance(TTL).await;
        let during = futures::future::join_all((0..5).map(|_| get(&keys))).await;
        assert!(
            during.iter().all(|r| r.as_deref() == Ok("Bearer old")),
            "no request waits for the read: {during:?}"
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "one read in the background"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer rotated"));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_secret_is_asked_for_again_only_after_a_while() {
        let (keys, reads) = keys(|n| {
            if n < 3 {
                Err("secrets \"flowise-key\" not found")
            } else {
                Ok("k")
            }
        });
        let missing = get(&keys).await.expect_err("missing");
        assert!(
            missing.contains("team-a/flowise-key") && missing.contains("not found"),
            "{missing}"
        );
        for _ in 0..10 {
            assert!(get(&keys).await.is_err());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "answered from the failure");
        tokio::time::advance(MISSING_TTL).await;
        assert!(get(&keys).await.is_err(), "read again, still missing");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        tokio::time::advance(MISSING_TTL).await;
        assert_eq!(
            get(&keys).await.as_deref(),
            Ok("Bearer k"),
            "created meanwhile"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_secret_stops_serving_its_key() {
        let (keys, _) = keys(|n| if n == 1 { Ok("k") } else { Err("not found") });
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k"));
        tokio::time::advance(TTL).await;
        assert_eq!(
            get(&keys).await.as_deref(),
            Ok("Bearer k"),
            "while it is read again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(&keys).await.is_err(), "the read found it gone");
    }

    #[tokio::test(start_paused = true)]
    async fn the_api_server_failing_keeps_the_last_key() {
        let (keys, reads) = keys(|n| match n {
            1 => Ok("k"),
            2 | 3 => Err("blip"),
            _ => Ok("k2"),
        });
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k"));
        tokio::time::advance(TTL).await;
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            get(&keys).await.as_deref(),
            Ok("Bearer k"),
            "failed read: kept"
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "asked again only after a while"
        );
        tokio::time::advance(MISSING_TTL).await;
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        tokio::time::advance(MISSING_TTL).await;
        get(&keys).await.expect("kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(&keys).await.as_deref(), Ok("Bearer k2"));

        // Never read: a failure is the answer, whatever its kind.
        let (fresh, _) = self::keys(|_| Err("blip"));
        assert!(get(&fresh).await.is_err());
    }
}
