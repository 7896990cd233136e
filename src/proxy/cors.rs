//! Browsers calling flowgate from another origin (`FLOWGATE_CORS_ORIGINS`): preflight requests
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered here, without
//! authentication and without reaching Flowise, and every answer to an allowed origin — errors
//! included, so a page can read them — says so. Off by default.
//!
//! Callers send their token in `Authorization`, never a cookie, so no credentials mode is
//! offered: a page that may call flowgate still needs the user's token to do anything.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderName};
use hyper::{Method, Request, Response};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;

use super::Proxy;
use crate::config::CorsOrigins;
use crate::server::Body;

/// How long a browser may reuse a preflight's answer (browsers cap it: Chromium at 2 h).
const MAX_AGE: Duration = Duration::from_secs(3600);

/// The CORS rules of the proxy.
#[derive(Clone, Debug)]
pub struct Cors(CorsLayer);

impl Cors {
    /// The rules for `origins`.
    pub fn new(origins: &CorsOrigins) -> Self {
        let allow_origin = match origins {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        Self(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                // Whatever a page asks to send, as the Python service allowed: flowgate passes
                // on only its allow-list of headers to Flowise anyway.
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers([
                    HeaderName::from_static("x-request-id"),
                    header::RETRY_AFTER,
                    header::WWW_AUTHENTICATE,
                    header::CONTENT_DISPOSITION,
                    super::credits::X_CREDITS_REMAINING,
                    super::ratelimit::RATELIMIT_LIMIT,
                    super::ratelimit::RATELIMIT_REMAINING,
                    super::ratelimit::RATELIMIT_RESET,
                ])
                .max_age(MAX_AGE),
        )
    }

    /// Whether `req` is a preflight: these rules answer it alone.
    pub(super) fn is_preflight(req: &Request<Incoming>) -> bool {
        req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ORIGIN)
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// `req` answered by `proxy` under these rules.
    pub(super) async fn serve(
        &self,
        proxy: Arc<Proxy>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let mut service = self.0.layer(Answer { proxy, peer });
        let answered = async {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(req).await
        };
        match answered.await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// The proxy as the service the CORS layer wraps, for one request.
struct Answer {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
}

impl Service<Request<Incoming>> for Answer {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (proxy, peer) = (self.proxy.clone(), self.peer);
        Box::pin(async move { Ok(proxy.answer(req, peer).await) })
    }
}
