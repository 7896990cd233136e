//! [`FlowiseApi`] over HTTP with reqwest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::{ApiKey, ChatflowWrite, Deletion, FlowiseApi, FlowiseChatflow, FlowiseError};

/// The most of one Flowise answer that is read. A listing carries every chatflow's flow JSON
/// (tens of kilobytes each, a few megabytes with embedded files); past this, a wrong URL or a
/// broken Flowise would otherwise be read into the controller's memory until it is killed.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// How long the client waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection.
    pub connect: Duration,
    /// For a whole request, answer included (the listing carries every flow's JSON).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// The Flowise REST API at one base URL, with the default API key.
#[derive(Clone)]
pub struct FlowiseClient {
    http: reqwest::Client,
    /// Base URL ending in `/`, so `join("api/v1/…")` keeps any path prefix.
    base: Url,
    /// The base URL as errors, logs and status show it: a password in it masked.
    shown: String,
    api_key: Option<Arc<ApiKey>>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for FlowiseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowiseClient")
            .field("base", &self.shown)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl FlowiseClient {
    /// A client for the Flowise at `base`, sending `api_key` as a bearer token when set.
    pub fn new(
        base: Url,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, FlowiseError> {
        let api_key = api_key
            .filter(|k| !k.is_empty())
            .map(|key| super::bearer(&key).map(ApiKey::fixed))
            .transpose()
            .map_err(|_| FlowiseError::ApiKey)?;
        Self::with_api_key(base, api_key, timeouts)
    }

    /// A client for the Flowise at `base`, sending `api_key` as it is at each request.
    pub fn with_api_key(
        mut base: Url,
        api_key: Option<Arc<ApiKey>>,
        timeouts: Timeouts,
    ) -> Result<Self, FlowiseError> {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // reqwest is built without a default rustls provider and panics without one installed.
        crate::telemetry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_idle_timeout(super::IDLE_CONNECTION)
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(FlowiseError::Client)?;
        Ok(Self {
            http,
            shown: super::shown(&base),
            base,
            api_key,
            timeouts,
        })
    }

    /// A client configured like `flowgate run`: its URL, and `api_key` (the key file's).
    pub fn from_config(
        config: &crate::config::Config,
        api_key: Option<Arc<ApiKey>>,
    ) -> Result<Self, FlowiseError> {
        Self::with_api_key(config.flowise_url.clone(), api_key, Timeouts::default())
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Url {
        // `path` is one of our fixed relative paths; joining it onto a base ending in `/` cannot
        // fail, but fall back to the base rather than panic.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// Sends one request and returns the status with the whole body, after checking that the
    /// body is JSON (Flowise answers unknown routes with HTML and 200).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&ChatflowWrite>,
    ) -> Result<(StatusCode, Bytes), FlowiseError> {
        let url = self.url(path);
        let mut request = self.http.request(method, url.clone());
        if let Some(key) = &self.api_key {
            request = request.header(reqwest::header::AUTHORIZATION, (*key.current()).clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e, &url))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !content_type.contains("json") {
            return Err(FlowiseError::NotJson {
                status: status.as_u16(),
                content_type,
                url: self.shown.clone(),
            });
        }
        match read_limited(response, MAX_ANSWER_BYTES).await {
            Ok(Some(bytes)) => Ok((status, bytes)),
            Ok(None) => Err(FlowiseError::TooLarge {
                limit: MAX_ANSWER_BYTES,
                url: self.shown.clone(),
            }),
            Err(e) => Err(self.transport(e, &url)),
        }
    }

    fn transport(&self, error: reqwest::Error, url: &Url) -> FlowiseError {
        let cause = FlowiseError::cause(&error);
        if error.is_connect() {
            tracing::debug!(url = %super::shown(url), %cause, "cannot connect to Flowise");
            // The base URL, not the endpoint's: the error ends up in Chatflow status, and a
            // message that changed with the endpoint (a get by id, then the listing) would make
            // every reconcile write the status anew and trigger the next one, past the backoff.
            FlowiseError::Connect {
                url: self.shown.clone(),
                cause,
                source: error,
            }
        } else if error.is_timeout() {
            FlowiseError::Timeout(self.timeouts.request)
        } else {
            FlowiseError::Http {
                cause,
                source: error,
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&ChatflowWrite>,
    ) -> Result<T, FlowiseError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(FlowiseError::from_status(
                status.as_u16(),
                error_message(&bytes),
            ));
        }
        serde_json::from_slice(&bytes).map_err(FlowiseError::Decode)
    }

    async fn list_chatflows(&self) -> Result<Vec<FlowiseChatflow>, FlowiseError> {
        self.call(Method::GET, "api/v1/chatflows", None).await
    }

    async fn get_chatflow(&self, id: &str) -> Result<Option<FlowiseChatflow>, FlowiseError> {
        match self.call(Method::GET, &chatflow_path(id), None).await {
            Ok(chatflow) => Ok(Some(chatflow)),
            // Flowise's own "Chatflow … not found in the database!": a 404 since 3.0.13, a 500
            // before. Only that says the chatflow is gone: a gateway's 404 for a route it does
            // not know, or Flowise's "Workspace … not found", says nothing about it.
            Err(FlowiseError::Status {
                status: 404 | 500,
                message,
            }) if message
                .to_ascii_lowercase()
                .contains("not found in the database") =>
            {
                Ok(None)
            }
            // Flowise refuses ids it considers malformed (e.g. a wrong UUID version nibble):
            // no chatflow can have such an id.
            Err(FlowiseError::Status {
                status: 400,
                message,
            }) if message.contains("Invalid Chatflow ID") => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn delete_chatflow(&self, id: &str) -> Result<Deletion, FlowiseError> {
        let (status, bytes) = self.send(Method::DELETE, &chatflow_path(id), None).await?;
        if status.is_success() {
            return Ok(Deletion::Deleted);
        }
        let message = error_message(&bytes);
        let said = message.to_ascii_lowercase();
        // Flowise 3.1.2 answers an unknown id with 500 "... not found in the database!"; only
        // that says the chatflow is gone: "Workspace not found" (a 404 too) deleted nothing, nor
        // did a gateway's 404 for a route it does not know.
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::INTERNAL_SERVER_ERROR
        ) && said.contains("not found in the database")
        {
            return Ok(Deletion::AlreadyGone);
        }
        // Flowise 3.1.3 checks the key's permission per flow type (agentflows:delete for an
        // Agentflow) and answers a refusal as a 500: it is the key's, not a passing failure.
        if status == StatusCode::INTERNAL_SERVER_ERROR && said.contains("do not have permission") {
            return Err(FlowiseError::Forbidden(message));
        }
        Err(FlowiseError::from_status(status.as_u16(), message))
    }
}

/// The whole body of `response`, or `None` once it is (or says it will be) longer than `limit`.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    let declared = response.content_length().unwrap_or(0);
    if usize::try_from(declared).map_or(true, |declared| declared > limit) {
        return Ok(None);
    }
    // What the answer declares is only reserved up to a few megabytes: it may not come.
    let mut body = bytes::BytesMut::with_capacity((declared as usize).min(4 << 20));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// `api/v1/chatflows/{id}`, the id percent-encoded as one path segment.
fn chatflow_path(id: &str) -> String {
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("api/v1/chatflows/{encoded}")
}

/// Flowise's message from an error body: `{"message": …}` (its usual shape) or
/// `{"error": …}` (401), else the body itself, shortened.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = parsed.as_ref().and_then(|v| {
        v.get("message")
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
    });
    field.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.chars().take(200).collect()
    })
}

impl FlowiseApi for FlowiseClient {
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
        self.list_chatflows().boxed()
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
        self.get_chatflow(id).boxed()
    }

    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        self.call(Method::POST, "api/v1/chatflows", Some(chatflow))
            .boxed()
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        async move {
            self.call(Method::PUT, &chatflow_path(id), Some(changes))
                .await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
        self.delete_chatflow(id).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_with_a_path_keeps_it() {
        let client = FlowiseClient::new(
            Url::parse("http://flowise:3000/prefix").expect("url"),
            Some(String::new()),
            Timeouts::default(),
        )
        .expect("client");
        assert_eq!(
            client.url("api/v1/chatflows").as_str(),
            "http://flowise:3000/prefix/api/v1/chatflows"
        );
        assert!(client.api_key.is_none(), "an empty key is no key");
    }

    #[tokio::test]
    async fn a_connection_error_names_the_base_url_whatever_the_endpoint() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/", closed.local_addr().expect("addr"));
        drop(closed);
        let client = FlowiseClient::new(Url::parse(&base).expect("url"), None, Timeouts::default())
            .expect("client");
        let by_id = client.get("3f1c2a7e-0000-4000-8000-000000000001").await;
        let listing = client.list().await;
        let (Err(by_id), Err(listing)) = (by_id, listing) else {
            panic!("nothing listens there")
        };
        assert!(matches!(by_id, FlowiseError::Connect { .. }), "{by_id}");
        assert_eq!(by_id.to_string(), listing.to_string());
        assert!(by_id.to_string().contains(&base), "{by_id}");
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(chatflow_path("ab-12"), "api/v1/chatflows/ab-12");
        assert_eq!(chatflow_path("../x"), "api/v1/chatflows/..%2Fx");
    }

    /// Serves one answer of `head` (status line and headers) followed by `chunks` chunks of
    /// 64 KiB, chunked; returns its URL.
    async fn serve_once(head: &'static str, chunks: usize) -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            for _ in 0..chunks {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        });
        url
    }

    #[tokio::test]
    async fn an_answer_is_read_up_to_the_limit_and_no_further() {
        const CHUNKED: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                               transfer-encoding: chunked\r\n\r\n";
        crate::telemetry::install_crypto_provider();
        let limit = 4 * 0x10000;
        let fits = reqwest::get(serve_once(CHUNKED, 4).await)
            .await
            .expect("answer");
        let body = read_limited(fits, limit).await.expect("read");
        assert_eq!(
            body.map(|b| b.len()),
            Some(limit),
            "all of it, up to the limit"
        );
        // Longer: read only up to the limit.
        let longer = reqwest::get(serve_once(CHUNKED, 64).await)
            .await
            .expect("answer");
        assert!(read_limited(longer, limit).await.expect("read").is_none());
        // Declared too long: not read at all.
        let declared = reqwest::get(
            serve_once(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n",
                0,
            )
            .await,
        )
        .await
        .expect("answer");
        assert!(read_limited(declared, limit).await.expect("read").is_none());
    }

    #[test]
    fn error_messages_come_from_either_shape() {
        assert_eq!(
            error_message(br#"{"statusCode":404,"success":false,"message":"Chatflow x not found in the database!","stack":{}}"#),
            "Chatflow x not found in the database!"
        );
        assert_eq!(
            error_message(br#"{"error":"Unauthorized Access"}"#),
            "Unauthorized Access"
        );
        assert_eq!(error_message(b"oops"), "oops");
    }
}
