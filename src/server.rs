//! The HTTP listeners (proxy and ops), with graceful shutdown: on cancellation they stop
//! accepting and wait for in-flight connections to finish.
//!
//! The ops listener serves on the main runtime ([`serve`]). The proxy serves thread per core
//! ([`Threads`]): one accept loop hands each connection, round robin, to one of N
//! threads, each running a current-thread runtime with its own handler (and so its own pool of
//! upstream connections). A request then lives on one thread from accept to answer — no work
//! stealing, no wake-ups across threads between the client's connection and Flowise's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry;

mod fd_limit;
mod send_deadline;

pub use fd_limit::connection_limit;

/// How long a client may take from connecting to having sent its first request's headers,
/// whatever the protocol: a connection that sends nothing, part of the HTTP/2 preface, or only
/// the handshake would otherwise be held forever (hyper times none of those).
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/1: how long a client may take to send a request's headers, and how long a kept-alive
/// connection may wait for its next request (hyper closes the connection after). Longer than
/// the idle time of the proxies usually in front (ingress-nginx and AWS load balancers keep an
/// idle upstream connection 60 s): closing first races their next request, which they answer
/// 502 without retrying a POST.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// HTTP/2: how often an idle connection is pinged, and how long the ping may go unanswered
/// before the connection is closed (a peer gone without a word).
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client's connection may take no bytes of an answer before it is closed. A client
/// that stops reading would otherwise hold its connection, the answer's stream from Flowise, and
/// its credit reservation for as long as it likes: hyper stops reading a body it cannot write,
/// so nothing else would notice. Over HTTP/2, also how long one answer's stream may take no
/// frame (a client can withhold flow-control credit from a stream and keep its connection busy).
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(60);

/// How long connections cut after the drain period may take to end (their bodies dropped).
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Response body type shared by every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How many accepted connections may wait for a busy thread before accepting pauses.
const HANDOFF_QUEUE: usize = 64;

/// Serves `handler` on `listener` until `shutdown` fires, then drains connections for at most
/// `drain` before returning.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = Connections::new(handler, Limits::DEFAULT);
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        connections.serve(stream, peer, None);
    }
    drop(listener);
    connections.drain(drain).await;
}

/// A connection accepted for a proxy thread, with its place among the open ones.
type Handed = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// Threads serving proxy connections, each with its own current-thread runtime.
pub struct Threads {
    senders: Vec<mpsc::Sender<Handed>>,
    finished: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// One per connection open ([`connection_limit`]): accepting waits for a free one.
    places: Arc<Semaphore>,
}

impl Threads {
    /// Starts one thread per handler. After `shutdown` each drains its connections and then
    /// finishes the work its handler left in `background` (settling credits after an answer),
    /// each within `drain`. `cut` is cancelled when connections still open after the drain
    /// are cut, before their answers are dropped (so handlers can tell that from a hang-up).
    /// At most `max_connections` are open at once ([`connection_limit`]).
    pub fn start<H, F>(
        handlers: Vec<H>,
        background: &TaskTracker,
        shutdown: &CancellationToken,
        drain: Duration,
        cut: &CancellationToken,
        max_connections: usize,
    ) -> std::io::Result<Self>
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut threads = Self {
            senders: Vec::with_capacity(handlers.len()),
            finished: Vec::with_capacity(handlers.len()),
            places: Arc::new(Semaphore::new(max_connections.max(1))),
        };
        for (i, handler) in handlers.into_iter().enumerate() {
            let (tx, mut rx) = mpsc::channel::<Handed>(HANDOFF_QUEUE);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let (shutdown, background, cut) = (shutdown.clone(), background.clone(), cut.clone());
            // The thread's log lines (a decision per request) are written when it goes idle.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(telemetry::flush_thread)
                .build()?;
            std::thread::Builder::new()
                .name(format!("flowgate-proxy-{i}"))
                .spawn(move || {
                    telemetry::buffer_thread();
                    runtime.block_on(async move {
                        let mut connections = Connections::new(handler, Limits::DEFAULT);
                        connections.cut = cut;
                        loop {
                            let handed = tokio::select! {
                                handed = rx.recv() => match handed {
                                    Some(conn) => conn,
                                    None => break,
                                },
                                () = shutdown.cancelled() => break,
                            };
                            connections.adopt(handed);
                        }
                        // Connections accepted and handed over but not yet taken: closed by the
                        // drain at once (a request not read yet is not answered; the client may
                        // retry elsewhere) rather than left open until the thread ends.
                        rx.close();
                        while let Ok(handed) = rx.try_recv() {
                            connections.adopt(handed);
                        }
                        connections.drain(drain).await;
                        background.close();
                        if tokio::time::timeout(drain, background.wait())
                            .await
                            .is_err()
                        {
                            tracing::warn!(
                                ?drain,
                                "background work unfinished after the drain period"
                            );
                        }
                    });
                    // Tasks that outlived the drain are dropped with the runtime, and may log
                    // as they go: the lines are flushed after. Blocking work (a DNS lookup, a
                    // token count) gets a second, not as long as it likes.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    telemetry::flush_thread();
                    let _ = done_tx.send(());
                })?;
            threads.senders.push(tx);
            threads.finished.push(done_rx);
        }
        Ok(threads)
    }

    /// Accepts on `listener` until `shutdown` fires, handing each connection to the next
    /// thread in turn; returns once every thread has finished: false when one stopped early
    /// (and so stopped the process).
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> bool {
        let mut next = 0;
        let mut healthy = true;
        let mut warned: Option<std::time::Instant> = None;
        loop {
            // A place among the open connections first: with none, accepting waits (the kernel
            // queues new connections) until one closes.
            let place = match self.places.clone().try_acquire_owned() {
                Ok(place) => place,
                Err(_) => {
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        warned = Some(std::time::Instant::now());
                        tracing::warn!(
                            "as many client connections open as flowgate allows (from the file \
                             descriptor limit); new ones wait until one closes"
                        );
                    }
                    tokio::select! {
                        place = self.places.clone().acquire_owned() => match place {
                            Ok(place) => place,
                            Err(_) => break,
                        },
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            let Some((stream, peer)) = accept(&listener, &shutdown).await else {
                break;
            };
            if self.senders.is_empty() {
                break;
            }
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, %peer, "cannot hand a connection over");
                    continue;
                }
            };
            // Round robin: with few long-lived client connections (a load balancer's pool),
            // each thread gets its share; a hash of the peer address would not promise that. A
            // thread whose queue is full (busy for a moment) is passed over, so that one slow
            // thread does not hold up every other's connections; with every queue full, the
            // connection waits for the next thread in turn.
            let (handed, thread) = match hand_over(&self.senders, next, (stream, peer, place)) {
                Ok(handed) => handed,
                Err(conn) => tokio::select! {
                    biased;
                    // Every thread's queue full as the shutdown begins: the drain comes first.
                    () = shutdown.cancelled() => break,
                    handed = self.senders[next].send(conn) => (handed.is_ok(), next),
                },
            };
            // A thread that saw the shutdown stops taking connections: not a failure.
            if !handed && !shutdown.is_cancelled() {
                // Never expected (its tasks catch their own panics); rather than keep running
                // with a part of the proxy gone, stop the whole process so it is restarted.
                tracing::error!(thread, "a proxy thread stopped; shutting down");
                healthy = false;
                shutdown.cancel();
                break;
            }
            next = (thread + 1) % self.senders.len();
        }
        drop(listener);
        drop(self.senders);
        for done in self.finished {
            healthy &= done.await.is_ok();
        }
        healthy
    }
}

/// `conn` handed to the first thread from `first` on with room in its queue: whether it took it
/// (not if it stopped), and which; `conn` back when every queue is full.
fn hand_over<T>(senders: &[mpsc::Sender<T>], first: usize, conn: T) -> Result<(bool, usize), T> {
    let mut conn = conn;
    for offset in 0..senders.len() {
        let thread = (first + offset) % senders.len();
        match senders[thread].try_send(conn) {
            Ok(()) => return Ok((true, thread)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok((false, thread)),
            Err(mpsc::error::TrySendError::Full(back)) => conn = back,
        }
    }
    Err(conn)
}

/// The next connection, or `None` once `shutdown` fires.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.cancelled() => return None,
        }
    }
}

/// A connection's time limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// [`WRITE_STALL_LIMIT`].
    write_stall: Duration,
    /// [`FIRST_REQUEST_TIMEOUT`].
    first_request: Duration,
    /// [`HEADER_READ_TIMEOUT`]: also how long an HTTP/2 connection may stay without a stream.
    header_read: Duration,
}

impl Limits {
    const DEFAULT: Self = Self {
        write_stall: WRITE_STALL_LIMIT,
        first_request: FIRST_REQUEST_TIMEOUT,
        header_read: HEADER_READ_TIMEOUT,
    };
}

/// The streams an HTTP/2 connection has open, and since when it has had none. hyper closes an
/// idle HTTP/1 connection (its header timer runs between requests too) but never an HTTP/2 one
/// (its pings are answered by any client on its own), which would hold its place among the
/// open connections ([`connection_limit`]) for ever.
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    /// When the last stream ended, in milliseconds since `epoch`.
    idle_since_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<tokio::time::Instant>,
}

impl Streams {
    fn now_ms(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(tokio::time::Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A stream opened: open until the guard is dropped (with its answer's body).
    fn opened(self: &Arc<Self>) -> StreamOpen {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamOpen(self.clone())
    }

    /// Resolves once the connection has had no stream for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let wait = if self.open.load(Ordering::Acquire) > 0 {
                limit
            } else {
                let idle = self
                    .now_ms()
                    .saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
                match limit.checked_sub(Duration::from_millis(idle)) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One open HTTP/2 stream ([`Streams::opened`]).
struct StreamOpen(Arc<Streams>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let streams = &self.0;
        streams
            .idle_since_ms
            .store(streams.now_ms(), Ordering::Release);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where hyper runs an HTTP/2 connection's streams (each request's handler is a task of its
/// own there): among the connections' tasks, so that the drain waits for them too. Cut at
/// shutdown, a stream's handler still runs the refund and abort its end starts, before the
/// runtime goes.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Why a connection's watcher closes it.
enum Quiet {
    /// No request within [`FIRST_REQUEST_TIMEOUT`].
    NoRequest,
    /// HTTP/2, no stream open for the keep-alive limit.
    Idle,
}

/// The connections one runtime serves, watched for graceful shutdown.
struct Connections<H> {
    handler: H,
    builder: auto::Builder<Tracked>,
    /// Cancelled at shutdown: each connection is asked to finish (HTTP/1: after the request in
    /// hand; HTTP/2: a GOAWAY, its open streams answered).
    draining: CancellationToken,
    limits: Limits,
    /// The connections' tasks, and what ends those still open after the drain period.
    tasks: TaskTracker,
    cut: CancellationToken,
}

impl<H, F> Connections<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    fn new(handler: H, limits: Limits) -> Self {
        let tasks = TaskTracker::new();
        let mut builder = auto::Builder::new(Tracked(tasks.clone()));
        // Without a timer hyper never times out a client that sends its headers slowly (or
        // never finishes them): each such connection would hold its task and buffer forever.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            // An answer's head and body in one buffer, one `write` (see `proxy::upstream::pool`).
            .writev(false);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(HTTP2_PING_INTERVAL)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT);
        Self {
            handler,
            builder,
            draining: CancellationToken::new(),
            limits,
            tasks,
            cut: CancellationToken::new(),
        }
    }

    /// Serves one connection in a task of the current runtime, holding its `place` (if it has
    /// one) until it ends.
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr, place: Option<OwnedSemaphorePermit>) {
        let handler = self.handler.clone();
        let asked = Arc::new(AtomicBool::new(false));
        let first = asked.clone();
        let streams = Arc::new(Streams::default());
        let (h2_streams, h2_seen) = (streams.clone(), Arc::new(AtomicBool::new(false)));
        let h2_asked = h2_seen.clone();
        let (tasks, write_stall) = (self.tasks.clone(), self.limits.write_stall);
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            first.store(true, Ordering::Relaxed);
            // An HTTP/2 stream the client grants no room is not a stalled write: its answer
            // gets a deadline of its own (see `send_deadline`). Its stream is counted open
            // until its answer is let go.
            let h2 = (req.version() == hyper::Version::HTTP_2).then(|| {
                h2_seen.store(true, Ordering::Relaxed);
                (tasks.clone(), h2_streams.opened())
            });
            async move {
                let answer = handler(req, peer).await;
                Ok::<_, Infallible>(match h2 {
                    Some((tasks, open)) => {
                        answer.map(|body| send_deadline::paced(body, write_stall, &tasks, open))
                    }
                    None => answer,
                })
            }
        });
        // No request within the limit: closed, whatever stage the connection is stuck in. An
        // HTTP/2 one with no stream open for the keep-alive limit is closed too, gracefully (a
        // GOAWAY names the last stream taken: one the client sent after it is safe to send
        // again).
        let asked_yet = asked.clone();
        let (first_request, idle_limit) = (self.limits.first_request, self.limits.header_read);
        let silent = async move {
            tokio::time::sleep(first_request).await;
            if !asked.load(Ordering::Relaxed) {
                return Quiet::NoRequest;
            }
            if !h2_asked.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            streams.idle_for(idle_limit).await;
            Quiet::Idle
        };
        // A write that waits too long fails the connection; its answer's body is dropped, as
        // for a client that hung up (a stream is aborted in Flowise and settled).
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(self.limits.write_stall));
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(Box::pin(stream)), service);
        let conn = conn.into_owned();
        let (cut, draining) = (self.cut.clone(), self.draining.clone());
        self.tasks.spawn(async move {
            let _place = place;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                result = conn.as_mut() => Some(result),
                quiet = silent => match quiet {
                    Quiet::NoRequest => {
                        tracing::debug!(%peer, ?first_request, "no request on a new connection; closed");
                        return;
                    }
                    Quiet::Idle => {
                        tracing::debug!(%peer, "an HTTP/2 connection without a stream for the keep-alive limit; closing");
                        conn.as_mut().graceful_shutdown();
                        None
                    }
                },
                () = draining.cancelled() => {
                    // One that never asked (its headers or preface stalled) has nothing to
                    // finish: closed at once, as a connection still queued is.
                    if !asked_yet.load(Ordering::Relaxed) {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    None
                }
                () = cut.cancelled() => return,
            };
            let result = match ended {
                Some(result) => result,
                None => tokio::select! {
                    result = conn => result,
                    () = cut.cancelled() => return,
                },
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }

    /// Serves a connection another thread accepted.
    fn adopt(&mut self, (stream, peer, place): Handed) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.serve(stream, peer, Some(place)),
            Err(error) => tracing::warn!(%error, %peer, "cannot adopt a connection"),
        }
    }

    /// Asks every connection to finish and waits at most `drain` for them.
    /// Those still open then are cut: each answer's body is dropped as for a client that hung
    /// up, so a stream is aborted in Flowise and settled, in background work started now, while
    /// the runtime still runs it (dropped with the runtime instead, it would start nothing).
    async fn drain(self, drain: Duration) {
        self.draining.cancel();
        self.tasks.close();
        tokio::select! {
            () = self.tasks.wait() => return,
            () = tokio::time::sleep(drain) => {
                tracing::warn!(?drain, "connections still open after the drain period; cutting them");
                self.cut.cancel();
            }
        }
        if tokio::time::timeout(CUT_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections not ended after being cut");
        }
    }
}

#[cfg(test)]
mod tests;
