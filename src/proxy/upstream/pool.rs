//! One proxy thread's keep-alive connections to Flowise (HTTP/1.1, TLS when the URL is https).
//!
//! hyper-util's pooled client did this before, for any number of hosts and protocols: per
//! request it cloned the URI and the connector, hashed the host into a map behind a lock, raced
//! a checkout against a lazy connect, and rewrote the URI into origin form. Flowise is one
//! host, reached over HTTP/1.1 from one thread, so this pool is a stack of idle connections:
//! the one used last is used next (the least likely to have been closed by Flowise meanwhile),
//! and one idle longer than [`crate::flowise::IDLE_CONNECTION`] is closed, not used, since
//! Flowise (Node) closes its side after 5 s and a request written as it does would fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

use crate::server::Body;

/// Idle connections kept at most; more are closed when their request ends.
const MAX_IDLE: usize = 256;

/// How long a connection made for a request that took a freed one may take to be made (TCP,
/// TLS and HTTP handshakes); a request's own connect is bounded by the request's timeout.
const BACKGROUND_CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Why a request could not be sent, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made, or a new one closed before the request was written: the
    /// request never went out.
    #[error("{0}")]
    Connect(String),
    /// The connection failed while the request was written or its answer awaited.
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

/// The idle connections to one Flowise, and how to make more.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Scheme and authority: where a new connection goes.
    origin: Uri,
    idle: Mutex<Vec<Idle>>,
    idle_for: Duration,
    /// Told each time a connection is kept: a request waiting for a new one may take it.
    kept: Notify,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, origin: Uri, idle_for: Duration) -> Self {
        Self {
            connector,
            origin,
            idle: Mutex::new(Vec::new()),
            idle_for,
            kept: Notify::new(),
        }
    }

    /// Sends `req` (origin form, with its `Host`) on an idle connection, or a new one, or one
    /// freed while the new one is being made ([`Pool::connect_or_freed`]). A request an idle
    /// connection gave back unsent (Flowise had closed it) goes out on the next one; a new
    /// connection's failure is the caller's.
    /// `sent` turns true once the request is handed to a connection to be written (false again
    /// when it comes back unsent): until then Flowise cannot have it.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
        sent: &AtomicBool,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => self.connect_or_freed().await?,
            };
            sent.store(true, Ordering::Relaxed);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(sender);
                    return Ok(resp);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        sent.store(false, Ordering::Relaxed);
                        req = unsent;
                    }
                    // A new connection that closed before the request was written.
                    Some(_) => return Err(SendError::Connect(error.into_error().to_string())),
                    None => return Err(SendError::Send(error.into_error())),
                },
            }
        }
    }

    /// The newest idle connection still fresh and ready. Older ones are fresh only if it is.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) >= self.idle_for {
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// A new connection, or one another request frees meanwhile (`true`), whichever comes
    /// first: a connection can take long to make (a remote Flowise, TLS, lost SYNs) while a
    /// request on an open one ends. The connection being made then is kept for later.
    async fn connect_or_freed(self: &Arc<Self>) -> Result<(SendRequest<Body>, bool), SendError> {
        let mut connect = Box::pin(Arc::clone(self).connect());
        loop {
            let kept = self.kept.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(sender) = self.checkout() {
                let pool = Arc::clone(self);
                tokio::spawn(async move {
                    let made = tokio::time::timeout(BACKGROUND_CONNECT_LIMIT, connect).await;
                    if let Ok(Ok(sender)) = made {
                        pool.keep(sender);
                    }
                });
                return Ok((sender, true));
            }
            tokio::select! {
                made = &mut connect => return made.map(|sender| (sender, false)),
                () = &mut kept => {}
            }
        }
    }

    async fn connect(self: Arc<Self>) -> Result<SendRequest<Body>, SendError> {
        let mut connector = self.connector.clone();
        let io = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(self.origin.clone()).await
        }
        .await
        .map_err(|e| SendError::Connect(crate::telemetry::report(&*e)))?;
        let (mut sender, connection) = http1::Builder::new()
            // A request's head and body copied into one buffer and sent in one `write`, not a
            // `writev` of the pieces: cheaper for the small bodies of predictions (with the
            // server side's, ~6 % less CPU per request, docs/benchmarks.md).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(crate::telemetry::report(&e)))?;
        // The connection's task runs on this thread's runtime, and ends when the connection
        // closes: Flowise closed it, or its sender is dropped while it is idle.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a connection to Flowise failed");
            }
        });
        // Not ready means closed before any request was handed over: none went out.
        sender
            .ready()
            .await
            .map_err(|e| SendError::Connect(crate::telemetry::report(&e)))?;
        Ok(sender)
    }

    /// Keeps `sender` for the next request once its connection is free again: at once when its
    /// answer has come whole, else when the answer's body has been read (a task waits for it).
    fn give_back(self: &Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.is_ready() {
            self.keep(sender);
        } else if !sender.is_closed() {
            let pool: Weak<Self> = Arc::downgrade(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.keep(sender);
                }
            });
        }
    }

    fn keep(&self, sender: SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Oldest first: those idle too long are a prefix, closed here.
        let stale = idle.partition_point(|entry| now.duration_since(entry.since) >= self.idle_for);
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
            drop(idle);
            self.kept.notify_one();
        }
    }
}
