//! Where remote keys come from: a JWKS URL, an OIDC issuer's discovery document, or the
//! Kubernetes API server's ServiceAccount issuer. Every fetch is bounded in time and size.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::Deserialize;

use super::keys::{VerifyingKey, parse_jwks};

/// What one fetch returned.
pub(crate) struct Fetched {
    pub(crate) keys: Vec<VerifyingKey>,
    /// The issuer named by a discovery document, when there was one.
    pub(crate) issuer: Option<String>,
}

/// Why a key fetch failed. The previous keys stay in use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{url}: {problem}")]
    Invalid { url: String, problem: String },
}

/// `Accept` of a discovery document.
const JSON: &str = "application/json";
/// `Accept` of a key set (the API server answers 406 to plain `application/json`).
const JWK_SET: &str = "application/jwk-set+json, application/json";

/// Limits applied to every fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
}

/// A source of remote keys. An enum rather than a trait object: the set is closed, and the
/// cache ([`super::remote::RemoteKeys`]) treats them all alike.
pub(crate) enum Fetcher {
    /// A JWKS document at a URL.
    Jwks { http: reqwest::Client, url: Url },
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Oidc { http: reqwest::Client, issuer: Url },
    /// The API server's `/.well-known/openid-configuration` and `/openid/v1/jwks`, read through
    /// the Kubernetes client (the issuer URL itself is usually not reachable).
    Kubernetes { client: kube::Client },
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
}

impl Fetcher {
    /// Human-readable name of the source, for logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Jwks { url, .. } => format!("JWKS {url}"),
            Self::Oidc { issuer, .. } => format!("OIDC issuer {issuer}"),
            Self::Kubernetes { .. } => "Kubernetes ServiceAccount issuer".to_string(),
        }
    }

    pub(crate) async fn fetch(&self, limits: Limits) -> Result<Fetched, KeyFetchError> {
        tokio::time::timeout(limits.timeout, self.fetch_unbounded(limits))
            .await
            .map_err(|_| KeyFetchError::Timeout(limits.timeout))?
    }

    async fn fetch_unbounded(&self, limits: Limits) -> Result<Fetched, KeyFetchError> {
        match self {
            Self::Jwks { http, url } => {
                let body = get(http, url, JWK_SET, limits.max_bytes).await?;
                Ok(Fetched {
                    keys: jwks(url.as_str(), &body)?,
                    issuer: None,
                })
            }
            Self::Oidc { http, issuer } => {
                let base = issuer.as_str().trim_end_matches('/');
                let discovery_url = format!("{base}/.well-known/openid-configuration");
                let discovery_url =
                    Url::parse(&discovery_url).map_err(|e| invalid(&discovery_url, e))?;
                let body = get(http, &discovery_url, JSON, limits.max_bytes).await?;
                let doc: Discovery =
                    serde_json::from_slice(&body).map_err(|e| invalid(&discovery_url, e))?;
                // OpenID Connect Discovery §4.3: the document must name the issuer we asked.
                if doc.issuer.trim_end_matches('/') != base {
                    return Err(invalid(
                        &discovery_url,
                        format!("names issuer {:?}, expected {base:?}", doc.issuer),
                    ));
                }
                let jwks_url = doc
                    .jwks_uri
                    .as_deref()
                    .ok_or_else(|| invalid(&discovery_url, "no jwks_uri"))
                    .and_then(|raw| Url::parse(raw).map_err(|e| invalid(&discovery_url, e)))?;
                if !jwks_url_allowed(&discovery_url, &jwks_url) {
                    return Err(invalid(
                        &discovery_url,
                        format!("jwks_uri {jwks_url} is not https like the issuer"),
                    ));
                }
                let body = get(http, &jwks_url, JWK_SET, limits.max_bytes).await?;
                Ok(Fetched {
                    keys: jwks(jwks_url.as_str(), &body)?,
                    issuer: Some(doc.issuer),
                })
            }
            Self::Kubernetes { client } => {
                const DISCOVERY: &str = "/.well-known/openid-configuration";
                const JWKS: &str = "/openid/v1/jwks";
                let body = kube_get(client, DISCOVERY, JSON, limits.max_bytes).await?;
                let doc: Discovery =
                    serde_json::from_slice(&body).map_err(|e| invalid(DISCOVERY, e))?;
                if doc.issuer.is_empty() {
                    return Err(invalid(DISCOVERY, "empty issuer"));
                }
                let body = kube_get(client, JWKS, JWK_SET, limits.max_bytes).await?;
                Ok(Fetched {
                    keys: jwks(JWKS, &body)?,
                    issuer: Some(doc.issuer),
                })
            }
        }
    }
}

fn invalid(url: impl ToString, problem: impl ToString) -> KeyFetchError {
    KeyFetchError::Invalid {
        url: url.to_string(),
        problem: problem.to_string(),
    }
}

fn jwks(url: &str, body: &[u8]) -> Result<Vec<VerifyingKey>, KeyFetchError> {
    parse_jwks(body).map_err(|problem| invalid(url, problem))
}

/// GET `url`, refusing non-2xx answers and bodies over `limit` bytes (read incrementally).
async fn get(
    http: &reqwest::Client,
    url: &Url,
    accept: &str,
    limit: usize,
) -> Result<Vec<u8>, KeyFetchError> {
    let too_large = || KeyFetchError::TooLarge {
        url: url.to_string(),
        limit,
    };
    let mut response = http.get(url.clone()).header(ACCEPT, accept).send().await?;
    if !response.status().is_success() {
        return Err(KeyFetchError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GET `path` from the API server through the client (its credentials and CA).
async fn kube_get(
    client: &kube::Client,
    path: &str,
    accept: &str,
    limit: usize,
) -> Result<Vec<u8>, KeyFetchError> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(kube::client::Body::empty())
        .map_err(|e| invalid(path, e))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| KeyFetchError::Kube(Box::new(e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(KeyFetchError::Status {
            url: path.to_string(),
            status: status.as_u16(),
        });
    }
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                KeyFetchError::TooLarge {
                    url: path.to_string(),
                    limit,
                }
            } else {
                KeyFetchError::Kube(e)
            }
        })?;
    Ok(body.to_bytes().to_vec())
}

/// Why a key fetch must not follow a redirect from `previous` (the URLs so far, the first one
/// included) to `next`: more than 3 redirects, or from https to plain http, where anyone on
/// the path could replace the keys.
pub(super) fn redirect_refusal(previous: &[Url], next: &Url) -> Option<&'static str> {
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https" {
        Some("redirect from https to plain http refused")
    } else if previous.len() > 3 {
        Some("more than 3 redirects")
    } else {
        None
    }
}

/// Whether discovery at `discovery` may send us to `jwks` for keys: http(s), and https when
/// discovery was (a plain-http jwks_uri would let anyone on the path hand us signing keys).
fn jwks_url_allowed(discovery: &Url, jwks: &Url) -> bool {
    match jwks.scheme() {
        "https" => true,
        "http" => discovery.scheme() == "http",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Url {
        Url::parse(raw).expect("url")
    }

    #[test]
    fn redirects_never_leave_https_and_stop_after_three() {
        let https = url("https://id.example.com/jwks");
        let http = url("http://id.example.com/jwks");
        assert_eq!(redirect_refusal(std::slice::from_ref(&https), &https), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&http), &https), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&http), &http), None);
        assert!(redirect_refusal(std::slice::from_ref(&https), &http).is_some());
        assert!(redirect_refusal(&[https.clone(), http.clone()], &http).is_some());
        assert!(
            redirect_refusal(
                &[http.clone(), http.clone(), http.clone(), http.clone()],
                &http
            )
            .is_some()
        );
    }

    #[test]
    fn discovery_over_https_only_points_to_https_keys() {
        let (https, http) = (url("https://id.example.com/"), url("http://id.local/"));
        assert!(jwks_url_allowed(
            &https,
            &url("https://keys.example.com/jwks")
        ));
        assert!(!jwks_url_allowed(
            &https,
            &url("http://keys.example.com/jwks")
        ));
        assert!(jwks_url_allowed(&http, &url("http://id.local/jwks")));
        assert!(!jwks_url_allowed(&http, &url("ftp://id.local/jwks")));
    }
}
