//! flowgate's transport alone: its proxy threads (`server::Threads`, one current-thread runtime
//! per core, the same connection limits) and its Flowise client (`proxy::upstream`, the same
//! per-thread connection pool and header hygiene), with nothing between them — no token, no
//! index, no body parsing, no ledger. The "flowgate pass-through (no auth)" row: what flowgate
//! pays to carry a request at all, beside HAProxy's pass-through, so the rest of flowgate's
//! rows read as the price of what it decides.
//!
//! flowgate itself has no unauthenticated forward (nothing reaches Flowise unless a caller is
//! allowed), so this runs flowgate's library parts in the harness's own process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flowgate::proxy::upstream::{Upstream, copy_response_headers};
use flowgate::server::{self, Body};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(clap::Args, Clone)]
pub struct Options {
    /// The upstream to forward to.
    #[arg(long)]
    pub upstream: reqwest::Url,
    /// Proxy threads (flowgate's `FLOWGATE_PROXY_THREADS`; default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Listens on a free port, prints it, and forwards every request until killed.
pub fn serve(options: Options) -> anyhow::Result<()> {
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let upstream = Upstream::new(&options.upstream, None, Duration::from_secs(60))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let handlers = (0..threads)
            .map(|_| {
                let upstream = Arc::new(upstream.with_own_pool()?);
                Ok(move |req, peer| forward(upstream.clone(), req, peer))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (background, shutdown, cut) = (
            TaskTracker::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let threads = server::Threads::start(
            handlers,
            &background,
            &shutdown,
            Duration::ZERO,
            &cut,
            server::connection_limit(),
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        threads.serve(listener, shutdown).await;
        Ok(())
    })
}

/// The request's method, path, allowed headers and whole body to the upstream; its answer
/// streamed back with the headers a client may see.
async fn forward(
    upstream: Arc<Upstream>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return refused(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let sent = match upstream.request(parts.method, path, &parts.headers, peer, None, body) {
        Ok(request) => upstream.send(request).await,
        Err(error) => Err(error),
    };
    match sent {
        Ok(answer) => {
            let (from, body) = answer.into_parts();
            let mut response = Response::new(body.map_err(std::io::Error::other).boxed());
            *response.status_mut() = from.status;
            copy_response_headers(&from.headers, response.headers_mut());
            response
        }
        Err(error) => error.into_response(),
    }
}

fn refused(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
