//! The Python "Flowise proxy service" routes this proxy replaces: `/chat/predict` (its request and
//! consolidated answer), `/chat/authenticate` and `/chat/refresh` (forwarded as OAuth password and
//! refresh-token grants to `FLOWGATE_TOKEN_ENDPOINT_URL`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::buffers::{Held, owning};
use super::error::{self, ProxyError};
use super::routes::Route;
use super::{Prediction, Proxy, flowise_message, prepare, read_json};
use crate::identity::Identity;
use crate::secret_file::SecretFile;
use crate::server::Body;

/// The caller `/chat/authenticate` and `/chat/refresh` bodies count as in the body memory
/// (not an identity key: those start `user:` or `sa:`).
const TOKEN_GRANTS: &str = "token grants";

/// The largest `/chat/authenticate` or `/chat/refresh` body.
const MAX_GRANT: usize = 16 * 1024;

/// Most grants asked of the token endpoint at once; past it, 503 `token_endpoint_busy` at once.
/// Anyone may call these routes: a password-guessing loop would otherwise hold a connection to
/// the identity provider per guess (15 s each when it is slow), without bound.
pub const TOKEN_GRANTS_AT_ONCE: usize = 64;

/// The OAuth client flowgate presents at the token endpoint, in place of whatever client the
/// caller names: a confidential client's secret stays on the server.
#[derive(Clone)]
pub struct TokenClient {
    pub id: String,
    /// `None`: a public client, named by `client_id` in the form. Read again when its file
    /// changes.
    pub secret: Option<Arc<SecretFile<String>>>,
    /// The secret goes in the form with the id (client_secret_post), not as HTTP Basic
    /// (client_secret_basic, RFC 6749 §2.3.1, the one every token endpoint must take).
    pub secret_in_form: bool,
}

impl Proxy {
    pub(super) async fn token_grant(
        &self,
        route: Route,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let endpoint = self.token_endpoint.clone().ok_or_else(|| {
            ProxyError::NotConfigured(
                "token endpoint not configured: set FLOWGATE_TOKEN_ENDPOINT_URL to enable /chat/authenticate and /chat/refresh".into(),
            )
        })?;
        // Counted in the body memory, all of them as one caller (held to half of it): anyone
        // may send this one, without a token. A grant is a name and a password, or a refresh
        // token (a few KiB at most): a small limit keeps slow senders from filling that share.
        let mut held = self.buffers.hold_for(TOKEN_GRANTS);
        let body = read_json(req, MAX_GRANT, &mut held).await?;
        let field = |name: &str| {
            body.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ProxyError::BadRequest(format!("field '{name}' is required")))
        };
        let form: Vec<(&str, String)> = match route {
            Route::Authenticate => vec![
                ("grant_type", "password".into()),
                ("username", field("username")?),
                ("password", field("password")?),
            ],
            _ => vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", field("refresh_token")?),
            ],
        };
        // With a configured client, the caller's own client fields are ignored.
        let passed: &[&str] = match self.token_client {
            Some(_) => &["scope"],
            None => &["client_id", "client_secret", "scope"],
        };
        let mut extra: Vec<(&str, String)> = passed
            .iter()
            .filter_map(|&k| {
                body.get(k)
                    .and_then(Value::as_str)
                    .map(|v| (k, v.to_string()))
            })
            .collect();
        let mut params = form;
        params.append(&mut extra);
        let mut request = self.http.post(endpoint);
        match &self.token_client {
            Some(TokenClient {
                id,
                secret: Some(secret),
                secret_in_form: true,
            }) => {
                params.push(("client_id", id.clone()));
                params.push(("client_secret", (*secret.current()).clone()));
            }
            Some(TokenClient {
                id,
                secret: Some(secret),
                secret_in_form: false,
            }) => {
                // Each form-encoded first (RFC 6749 §2.3.1): an id or secret may hold `:`.
                let encode =
                    |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
                request = request.basic_auth(encode(id), Some(encode(&secret.current())));
            }
            Some(TokenClient {
                id, secret: None, ..
            }) => params.push(("client_id", id.clone())),
            None => {}
        }
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        // Taken for the call alone, once the caller's body is in: one slow to send it holds
        // no place of the others'.
        let _asking = self
            .token_grants
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::TokenEndpointBusy(None))?;
        let answer = request
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ProxyError::TokenEndpointTimeout
                } else {
                    unreachable_endpoint(e)
                }
            })?;
        let status = answer.status();
        let retry_after = answer.headers().get(RETRY_AFTER).cloned();
        let bytes = token_answer(answer).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
        if status.is_success() {
            // A login page or an app's index.html answering 200 is not a token: the caller
            // would send `Bearer null` next.
            let Some(access_token) = value
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            else {
                return Err(ProxyError::TokenEndpoint(format!(
                    "it answered {status} without an access_token"
                )));
            };
            // The Python service always said `bearer`; providers say `Bearer` (the type is
            // case-insensitive, RFC 6749 section 5.1). Another type passes as it is.
            let token_type = match value.get("token_type") {
                Some(Value::String(t)) if !t.eq_ignore_ascii_case("bearer") => json!(t),
                _ => json!("bearer"),
            };
            let mut out = json!({
                "access_token": access_token,
                "token_type": token_type,
            });
            if let Some(token) = value.get("refresh_token").and_then(Value::as_str) {
                out["refresh_token"] = json!(token);
            }
            // A whole number of seconds, as documented; some providers (Azure AD v1) write it
            // as a string. One that is neither is left out.
            let expires_in = match value.get("expires_in") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            if let Some(seconds) = expires_in {
                out["expires_in"] = json!(seconds);
            }
            // A provider that does not rotate refresh tokens returns none: the one sent stays
            // valid (RFC 6749 section 6), and the Python service always answered one.
            if route == Route::Refresh && out.get("refresh_token").is_none() {
                let sent = params.iter().find(|(k, _)| *k == "refresh_token");
                if let Some((_, token)) = sent {
                    out["refresh_token"] = json!(token);
                }
            }
            // Tokens are not for caches (RFC 6749 §5.1): not a CDN's, not an ingress's.
            let mut answer = error::json(StatusCode::OK, &out);
            let headers = answer.headers_mut();
            headers.insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            headers.insert(
                hyper::header::PRAGMA,
                hyper::header::HeaderValue::from_static("no-cache"),
            );
            Ok(answer)
        } else if let Some(error) = value
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| configuration_error(e, self.token_client.is_some()))
        {
            // The client's registration or flowgate's configuration, not the caller's
            // credentials: answered as the caller's 401, nobody would look at the settings.
            Err(ProxyError::TokenEndpoint(format!(
                "it refused the grant with {error}: check the client it is for \
                 (FLOWGATE_TOKEN_CLIENT_ID, FLOWGATE_TOKEN_CLIENT_SECRET_FILE, \
                 FLOWGATE_TOKEN_CLIENT_AUTH) and its registration"
            )))
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Err(ProxyError::TokenEndpointBusy(retry_after))
        } else if status == StatusCode::UNAUTHORIZED
            || (matches!(status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN)
                && value.get("error").is_some_and(Value::is_string))
        {
            // An OAuth error (RFC 6749 §5.2: a 400, some providers' 403) or a 401: the caller's
            // credentials. Any other 4xx (a 404 or 405 of a mistyped URL, whatever its body says,
            // as Keycloak's `{"error":"Realm does not exist"}`; an ingress's HTML page) is the
            // endpoint's. The provider's own words ("User not found", "Account is disabled")
            // are logged, not answered: anyone may ask these routes, and would learn which
            // accounts exist. The Python service answered as plainly.
            let said = value
                .get("error_description")
                .or(value.get("error"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            tracing::debug!(%status, said, "the token endpoint refused the grant");
            Err(ProxyError::InvalidToken {
                reason: "token_endpoint_refused",
                detail: match route {
                    Route::Authenticate => "authentication failed",
                    _ => "the refresh token is invalid or expired",
                }
                .to_string(),
            })
        } else {
            Err(ProxyError::TokenEndpoint(format!("it answered {status}")))
        }
    }
}

/// Most of a token endpoint's answer flowgate reads: tokens and an error are a few KiB.
const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;

/// The token endpoint could not be reached or read: logged with its cause for the operator, and
/// answered without it (anyone may ask these routes; the URL, or a certificate's names, tell
/// an internal host's).
fn unreachable_endpoint(error: reqwest::Error) -> ProxyError {
    tracing::warn!(error = %crate::telemetry::report(&error), "the token endpoint failed");
    ProxyError::TokenEndpoint("it could not be reached or read (flowgate's log says why)".into())
}

/// A token endpoint's answer, read up to [`TOKEN_ANSWER_LIMIT`] (anyone may ask these routes).
async fn token_answer(mut answer: reqwest::Response) -> Result<Vec<u8>, ProxyError> {
    let unreachable = unreachable_endpoint;
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(unreachable)? {
        if bytes.len() + chunk.len() > TOKEN_ANSWER_LIMIT {
            return Err(ProxyError::TokenEndpoint(format!(
                "its answer is over {} KiB",
                TOKEN_ANSWER_LIMIT / 1024
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Whether an OAuth error answer (RFC 6749 §5.2) is about the client, not the caller: a client
/// not allowed the grant, a grant the server does not take, and, where flowgate presents its
/// own client, that client refused.
fn configuration_error(error: &str, own_client: bool) -> bool {
    matches!(error, "unauthorized_client" | "unsupported_grant_type")
        || (own_client && error == "invalid_client")
}

/// The Python service's `{chatflow_id, question|message, sessionId?, overrideConfig?, streaming?}`:
/// the chatflow, the session id the client sent (answered back as it was sent, as that service
/// did; it binds to the same chat each time) and the prediction for Flowise. Its fields are
/// moved, not copied: the rest of the body is dropped here.
pub(super) fn compat_request(
    mut body: serde_json::Map<String, Value>,
    identity: &Identity,
) -> Result<(String, Option<String>, Prediction), ProxyError> {
    let chatflow_id = match body.remove("chatflow_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => {
            return Err(ProxyError::BadRequest(
                "field 'chatflow_id' is required".into(),
            ));
        }
    };
    // `message` stands in for a `question` that is absent or null; either of another type is
    // refused, as the Python service's model refused it, not skipped.
    let text = |field: &str, value: Option<Value>| match value {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(ProxyError::BadRequest(format!(
            "field '{field}' must be a string"
        ))),
    };
    let question = text("question", body.remove("question"))?;
    let message = text("message", body.remove("message"))?;
    let question = match (question, message) {
        (Some(q), _) | (None, Some(q)) => q,
        _ => {
            return Err(ProxyError::BadRequest(
                "field 'question' (or 'message') is required".into(),
            ));
        }
    };
    let mut forward = serde_json::Map::new();
    forward.insert("question".into(), Value::String(question));
    if let Some(config) = body.remove("overrideConfig") {
        if !config.is_object() && !config.is_null() {
            return Err(ProxyError::BadRequest(
                "'overrideConfig' must be an object".into(),
            ));
        }
        forward.insert("overrideConfig".into(), config);
    }
    let session = match text("sessionId", body.remove("sessionId"))? {
        Some(session) if !session.trim().is_empty() => {
            forward.insert("chatId".into(), Value::String(session.clone()));
            Some(session)
        }
        _ => None,
    };
    if let Some(streaming) = body.remove("streaming") {
        forward.insert("streaming".into(), streaming);
    }
    Ok((chatflow_id, session, prepare(forward, identity)?))
}

/// The Python service's consolidated answer around Flowise's, counted in `held` as the answer
/// it replaces was. Flowise's answer, gathered into one buffer (its slices' own counts end as
/// they are gathered), counts in `held` by its size until the new answer is built; its parsed
/// tree is not counted beyond that.
pub(super) async fn compat_response(
    resp: Response<Body>,
    chatflow_id: &str,
    chat_id: &str,
    credits_remaining: Option<u64>,
    mut held: Held,
) -> Result<Response<Body>, ProxyError> {
    let status = resp.status();
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    held.grow(
        usize::try_from(hyper::body::Body::size_hint(resp.body()).lower()).unwrap_or(usize::MAX),
    );
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ProxyError::Upstream(e.to_string()))?
        .to_bytes();
    // Flowise's own refusal (its rate limit, a chatflow it no longer has) keeps its status, as
    // on `/api/v1/prediction`: a client backs off a 429 and does not retry a 404.
    if status.is_client_error() {
        return Err(ProxyError::UpstreamRefused {
            status,
            message: flowise_message(status, &bytes),
            retry_after,
        });
    }
    if !status.is_success() {
        return Err(ProxyError::Upstream(flowise_message(status, &bytes)));
    }
    let result: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    drop(bytes);
    let answer = json!({"result": result, "credits_remaining": credits_remaining, "chatflow_id": chatflow_id, "session_id": chat_id});
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    drop(answer);
    held.shrink_to(0);
    held.grow(body.capacity());
    let mut resp = Response::new(super::buffers::whole(owning(body, held)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(left) = credits_remaining {
        resp.headers_mut()
            .insert(super::credits::X_CREDITS_REMAINING, HeaderValue::from(left));
    }
    Ok(resp)
}
