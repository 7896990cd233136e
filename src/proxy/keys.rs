//! Flowise API keys of chatflows bound to one: read from the Secret named in the Chatflow's
//! `apiKeySecretRef`, cached for a minute so a rotated Secret is picked up without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::error::ProxyError;
use crate::crd::SecretKeyRef;
use crate::flowise::bearer;

const TTL: Duration = Duration::from_secs(60);

type CacheKey = (String, String, String);

/// Looks up chatflow keys in Secrets.
#[derive(Clone)]
pub struct ApiKeys {
    client: Option<Client>,
    cache: Arc<Mutex<HashMap<CacheKey, (HeaderValue, Instant)>>>,
}

impl ApiKeys {
    /// Without a client (no cluster) every `apiKeySecretRef` is unavailable.
    pub fn new(client: Option<Client>) -> Self {
        Self {
            client,
            cache: Arc::default(),
        }
    }

    /// `Bearer <key>` from the Secret, or an error saying which Secret is missing.
    pub async fn get(
        &self,
        namespace: &str,
        secret: &SecretKeyRef,
    ) -> Result<HeaderValue, ProxyError> {
        let key = (
            namespace.to_string(),
            secret.name.clone(),
            secret.key.clone(),
        );
        if let Some((value, at)) = self.lock().get(&key)
            && at.elapsed() < TTL
        {
            return Ok(value.clone());
        }
        let unavailable = |why: String| {
            ProxyError::ChatflowUnavailable(format!(
                "(API key Secret {namespace}/{}: {why})",
                secret.name
            ))
        };
        let client = self
            .client
            .clone()
            .ok_or_else(|| unavailable("no cluster to read it from".into()))?;
        let found = Api::<Secret>::namespaced(client, namespace)
            .get(&secret.name)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let raw = found
            .data
            .and_then(|mut data| data.remove(&secret.key))
            .ok_or_else(|| unavailable(format!("has no key '{}'", secret.key)))?;
        let text = String::from_utf8(raw.0).map_err(|_| unavailable("key is not UTF-8".into()))?;
        let value =
            bearer(&text).map_err(|_| unavailable("key is not a valid header value".into()))?;
        self.lock().insert(key, (value.clone(), Instant::now()));
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (HeaderValue, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
