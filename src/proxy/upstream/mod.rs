//! The connection to Flowise: a pool of HTTP/1.1 connections per proxy thread ([`pool`]; TLS
//! when the URL is https), requests built from an allow-list of headers, and every call
//! bounded by a timeout.

mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;

use super::body::Joined;
use super::buffers::Held;
use super::error::ProxyError;
use crate::flowise::ApiKey;
use crate::server::Body;
use pool::{Pool, SendError};

/// How long the body of Flowise's error answer is waited for ([`Upstream::error_body`]).
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// Request headers a client may send on to Flowise. Everything else — `Authorization`,
/// cookies, `x-request-from`, `flowise-tool`, forwarding headers — is dropped.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
    // W3C trace context. The request's own `X-Request-Id` is added from `request_id`.
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Response headers passed back to the client.
const FORWARDED_RESPONSE_HEADERS: [&str; 5] = [
    "content-type",
    "cache-control",
    "x-accel-buffering",
    "content-disposition",
    // Flowise's own rate limit says when to ask again.
    "retry-after",
];

/// The Flowise upstream.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    /// Scheme and authority, where connections go.
    origin: Uri,
    /// The `Host` of every request: Flowise's authority.
    host: HeaderValue,
    base_path: String,
    default_key: Option<Arc<ApiKey>>,
    timeout: Duration,
}

impl Upstream {
    /// A pooled client for Flowise at `base`. `default_key` is sent where a chatflow is bound to
    /// a key and has none of its own.
    pub fn new(
        base: &reqwest::Url,
        default_key: Option<Arc<ApiKey>>,
        timeout: Duration,
    ) -> Result<Self, ProxyError> {
        let uri: Uri = base
            .as_str()
            .parse()
            .map_err(|e| ProxyError::NotConfigured(format!("Flowise URL: {e}")))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ProxyError::NotConfigured("Flowise URL has no host".into()))?;
        // Host and port only: a `user:password@` in the URL (reqwest's basic credentials for
        // the controller's calls) goes neither into `Host` nor anywhere else on this path. The
        // port is there only when it is not the scheme's default (the URL dropped that one).
        let host = match authority.port_u16() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_string(),
        };
        let header = HeaderValue::from_str(&host)
            .map_err(|e| ProxyError::NotConfigured(format!("Flowise URL host: {e}")))?;
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(host)
            .path_and_query("/")
            .build()
            .map_err(|e| ProxyError::NotConfigured(format!("Flowise URL: {e}")))?;
        Ok(Self {
            pool: pool(&origin)?,
            origin,
            host: header,
            base_path: uri.path().trim_end_matches('/').to_string(),
            default_key,
            timeout,
        })
    }

    /// The same upstream with a pool of its own (for another thread's runtime).
    pub fn with_own_pool(&self) -> Result<Self, ProxyError> {
        Ok(Self {
            pool: pool(&self.origin)?,
            ..self.clone()
        })
    }

    /// How long Flowise may take to start an answer, to finish a whole one, or to send the next
    /// part of a stream.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The default Flowise key as it is now, if configured.
    pub fn default_key(&self) -> Option<HeaderValue> {
        self.default_key
            .as_ref()
            .map(|key| (*key.current()).clone())
    }

    /// Builds a request to Flowise `path` with the client's allowed headers, the caller's address
    /// as the only `X-Forwarded-For`, and `key` as the only credentials.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        client_headers: &HeaderMap,
        peer: SocketAddr,
        key: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Request<Body>, ProxyError> {
        // Origin form (`/path?query`), as a request on an open connection is written.
        let uri = Uri::try_from(format!("{}{}", self.base_path, path))
            .map_err(|e| ProxyError::BadRequest(format!("cannot build the upstream URL: {e}")))?;
        let mut req = Request::new(super::buffers::whole(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        for name in &FORWARDED_REQUEST_HEADERS {
            if let Some(value) = client_headers.get(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Ok(value) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
        if let Some(id) = super::request_id::current() {
            headers.insert(super::request_id::X_REQUEST_ID, id);
        }
        if let Some(key) = key {
            headers.insert(header::AUTHORIZATION, key.clone());
        }
        Ok(req)
    }

    /// Sends `req`; the response headers must arrive within the timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        self.send_tracked(req, &AtomicBool::new(false)).await
    }

    /// [`Self::send`], `sent` turning true once the request is handed to a connection to
    /// Flowise ([`Pool::send`]): a request given up before (its client gone while a connection
    /// was being made) never reached Flowise.
    pub async fn send_tracked(
        &self,
        req: Request<Body>,
        sent: &AtomicBool,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.pool.send(req, sent)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(error @ SendError::Connect(_))) => {
                Err(ProxyError::UpstreamNotConnected(error.to_string()))
            }
            Ok(Err(SendError::Send(error))) => Err(ProxyError::UpstreamUnreachable(
                crate::telemetry::report(&error),
            )),
            Err(_) => Err(ProxyError::UpstreamTimeout),
        }
    }

    /// The body of an error answer, for its message: at most 64 KiB within [`ERROR_BODY_WAIT`],
    /// else what could not be read is left out (empty). An answer whose headers came and whose
    /// body stalls must not hold the caller's error, and its chat, for the whole upstream
    /// timeout.
    pub async fn error_body(&self, body: Incoming) -> Bytes {
        tokio::time::timeout(ERROR_BODY_WAIT, self.read_body(body, 64 * 1024, None))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// Reads a whole (non-streaming) upstream body, bounded in size and time, each frame counted
    /// in `hold` (if any) as it arrives.
    pub async fn read_body(
        &self,
        body: Incoming,
        limit: usize,
        mut hold: Option<&mut Held>,
    ) -> Result<Bytes, ProxyError> {
        let declared = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
        let read = async {
            let mut body = std::pin::pin!(http_body_util::Limited::new(body, limit));
            let mut joined = Joined::new(declared.min(limit));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ProxyError::AnswerTooLarge { limit }
                    } else {
                        ProxyError::UpstreamUnreachable(e.to_string())
                    }
                })?;
                if let Ok(data) = frame.into_data() {
                    if let Some(hold) = hold.as_deref_mut() {
                        hold.grow(data.len());
                    }
                    joined.push(data);
                }
            }
            Ok(joined.finish())
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout))
    }
}

/// An empty pool of HTTP/1.1 connections to `origin` (TLS for https). A connection's task runs
/// on the runtime that opened it.
fn pool(origin: &Uri) -> Result<Arc<Pool>, ProxyError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| ProxyError::NotConfigured(format!("TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Arc::new(Pool::new(
        tls,
        origin.clone(),
        crate::flowise::IDLE_CONNECTION,
    )))
}

/// Copies the response headers a client may see.
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in FORWARDED_RESPONSE_HEADERS {
        if let Some(value) = from.get(name) {
            to.insert(HeaderName::from_static(name), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_is_the_files_at_each_request() {
        crate::telemetry::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "old\n").expect("write");
        let key = ApiKey::load(&path, "SETTING", crate::flowise::api_key_header).expect("key");
        let base = reqwest::Url::parse("http://flowise:3000").expect("url");
        let upstream =
            Upstream::new(&base, Some(key.clone()), Duration::from_secs(1)).expect("upstream");
        assert_eq!(
            upstream.default_key(),
            Some(HeaderValue::from_static("Bearer old"))
        );
        std::fs::write(&path, "new\n").expect("write");
        assert!(key.reload());
        let sent = upstream.default_key().expect("a key");
        assert_eq!(sent, HeaderValue::from_static("Bearer new"));
        assert!(sent.is_sensitive(), "kept out of logs");
    }

    /// How a test server answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Answers {
        /// At once, keeping the connection, as Node does.
        KeepAlive,
        /// At once, then closing the connection when it has been idle 100 ms, without having
        /// said so (`Connection: close`), as Node does when its keep-alive time runs out.
        HangingUpWhenIdle,
        /// The head and half the body at once, the rest 200 ms later.
        Slowly,
    }

    /// Connections a server accepted, answering every request on them as Node does (keep-alive).
    async fn counting_server() -> (reqwest::Url, Arc<std::sync::atomic::AtomicUsize>) {
        answering_server(Answers::KeepAlive).await
    }

    /// Connections a server accepted, answering every request on them as `answers` says.
    async fn answering_server(
        answers: Answers,
    ) -> (reqwest::Url, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        serve(listener, answers, usize::MAX)
    }

    /// Serves the first `accepting` connections `listener` accepts, answering every request
    /// on them as `answers` says; then accepts no more, the listener still open.
    fn serve(
        listener: tokio::net::TcpListener,
        answers: Answers,
        accepting: usize,
    ) -> (reqwest::Url, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while counter.load(Ordering::SeqCst) < accepting
                && let Ok((mut socket, _)) = listener.accept().await
            {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let idle_for = match answers {
                        Answers::HangingUpWhenIdle => Duration::from_millis(100),
                        _ => Duration::from_secs(3600),
                    };
                    while let Ok(Ok(n @ 1..)) =
                        tokio::time::timeout(idle_for, socket.read(&mut buf)).await
                    {
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\n";
                            let (now, later) = match answers {
                                Answers::Slowly => (format!("{head}o"), "k"),
                                _ => (format!("{head}ok"), ""),
                            };
                            if socket.write_all(now.as_bytes()).await.is_err() {
                                return;
                            }
                            if !later.is_empty() {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                if socket.write_all(later.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            let _open = listener;
            std::future::pending::<()>().await;
        });
        (reqwest::Url::parse(&url).expect("url"), accepted)
    }

    #[tokio::test]
    async fn a_connection_idle_nearly_as_long_as_flowise_keeps_it_is_not_reused() {
        use std::sync::atomic::Ordering;
        crate::telemetry::install_crypto_provider();
        let (base, accepted) = counting_server().await;
        let upstream = Upstream::new(&base, None, Duration::from_secs(5)).expect("upstream");
        ask(&upstream).await.expect("answer");
        ask(&upstream).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused at once");
        // Past the pool's idle time, still short of the 5 s after which Flowise closes it.
        tokio::time::sleep(crate::flowise::IDLE_CONNECTION + Duration::from_millis(300)).await;
        assert!(
            crate::flowise::IDLE_CONNECTION + Duration::from_millis(300) < Duration::from_secs(5)
        );
        ask(&upstream).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
    }

    /// A request for a page of `upstream`, from no one in particular.
    fn ping(upstream: &Upstream) -> Result<Request<Body>, ProxyError> {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        upstream.request(
            Method::GET,
            "/api/v1/ping",
            &HeaderMap::new(),
            peer,
            None,
            Bytes::new(),
        )
    }

    /// Asks `upstream` for a page and reads the answer.
    async fn ask(upstream: &Upstream) -> Result<Bytes, ProxyError> {
        let resp = upstream.send(ping(upstream)?).await?;
        upstream.read_body(resp.into_body(), 16, None).await
    }

    #[test]
    fn credentials_in_the_flowise_url_stay_out_of_the_host_and_the_pool() {
        crate::telemetry::install_crypto_provider();
        for (url, host) in [
            ("http://admin:s3cret@flowise:3000/base/", "flowise:3000"),
            (
                "https://admin:s3cret@flowise.example.com",
                "flowise.example.com",
            ),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            let base = reqwest::Url::parse(url).expect("url");
            let upstream = Upstream::new(&base, None, Duration::from_secs(1)).expect("upstream");
            let req = ping(&upstream).expect("request");
            assert_eq!(req.headers()[header::HOST], host, "{url}");
            assert!(!upstream.origin.to_string().contains("s3cret"), "{url}");
            assert!(req.uri().to_string().starts_with('/'), "origin form");
        }
    }

    #[tokio::test]
    async fn a_connection_flowise_closed_while_idle_is_not_used_again() {
        use std::sync::atomic::Ordering;
        crate::telemetry::install_crypto_provider();
        let (base, accepted) = answering_server(Answers::HangingUpWhenIdle).await;
        let upstream = Upstream::new(&base, None, Duration::from_secs(5)).expect("upstream");
        for n in 1..=3 {
            assert_eq!(ask(&upstream).await.expect("answer"), "ok");
            assert_eq!(ask(&upstream).await.expect("answer"), "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), n, "reused while open");
            // Flowise closes the idle connection, and the close reaches this side.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_a_slow_answer_has_been_read() {
        use std::sync::atomic::Ordering;
        crate::telemetry::install_crypto_provider();
        let (base, accepted) = answering_server(Answers::Slowly).await;
        let upstream = Upstream::new(&base, None, Duration::from_secs(5)).expect("upstream");
        for _ in 0..3 {
            assert_eq!(ask(&upstream).await.expect("answer"), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    }

    #[tokio::test]
    async fn a_request_waiting_for_a_new_connection_takes_one_freed_meanwhile() {
        use std::sync::atomic::Ordering;
        crate::telemetry::install_crypto_provider();
        // A Flowise that accepts one connection, then no more, with room for one waiting in its
        // queue (backlog 0): once a bystander takes that, a new connection's SYNs are dropped.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        socket.set_nonblocking(true).expect("non-blocking");
        let listener = tokio::net::TcpListener::from_std(socket.into()).expect("listener");
        let addr = listener.local_addr().expect("address");
        let (base, accepted) = serve(listener, Answers::Slowly, 1);
        let upstream = Upstream::new(&base, None, Duration::from_secs(10)).expect("upstream");
        let first = tokio::spawn({
            let upstream = upstream.clone();
            async move { ask(&upstream).await }
        });
        for _ in 0..500 {
            if accepted.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the first request connected"
        );
        let _bystander = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the queue's one place");
        // No idle connection: the second request starts a new one, which cannot be made (5 s
        // connect timeout), and takes the first's connection once its slow answer was read.
        let second = ask(&upstream).await;
        assert_eq!(second.expect("answered on the freed connection"), "ok");
        assert_eq!(first.await.expect("joined").expect("answer"), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn flowise_not_listening_is_not_connected() {
        crate::telemetry::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let base = reqwest::Url::parse(&base).expect("url");
        let upstream = Upstream::new(&base, None, Duration::from_secs(5)).expect("upstream");
        match ask(&upstream).await {
            Err(ProxyError::UpstreamNotConnected(message)) => {
                assert!(message.contains("refused"), "{message}")
            }
            other => panic!("not connected, not {other:?}"),
        }
    }
}
