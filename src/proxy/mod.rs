//! The data plane. Every request goes through one fixed pipeline, visible in [`Proxy::handle`]:
//!
//! ```text
//! route → authenticate → resolve → authorize → (reserve credits) → forward → (settle | refund)
//! ```
//!
//! Nothing reaches Flowise unless its route is on the allow-list ([`routes`]), the caller's token
//! is valid, and the index grants the caller the chatflow. Every refusal is a [`ProxyError`],
//! turned into JSON in one place ([`error`]).

mod abandon;
pub mod body;
pub mod buffers;
pub mod compat;
pub mod cors;
pub mod credits;
pub mod drain;
pub mod error;
mod forward;
pub mod forwarded;
pub mod keys;
pub mod listing;
mod lookup;
pub mod multipart;
mod prediction;
pub mod ratelimit;
mod replicas;
pub mod request_id;
pub mod routes;
pub mod session;
pub mod sse;
pub mod stream;
pub mod turns;
mod unwind;
pub mod upstream;
pub mod usage;
pub mod usage_log;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::identity::{Identity, Verifier, bearer_token};
use crate::index::watch::SnapshotHandle;
use crate::index::{Access, Caller, ChatflowEntry, Snapshot};
use crate::metrics::Metrics;
use crate::server::Body;
use compat::{compat_request, compat_response};
use credits::{Charge, Credits};
pub use error::ProxyError;
use keys::ApiKeys;
use ratelimit::RateLimiter;
use routes::Route;
use upstream::Upstream;

pub(crate) use body::read_json;
use body::read_json_body;
pub(crate) use lookup::idempotency_key;
use lookup::{
    Lookup, by_visible_name, caller, flowise_message, listed_in_flowise, log_decision,
    rate_limited, slow, usable,
};
use prediction::{Prediction, prepare, read_prediction};

/// Largest JSON request body accepted: as large as an upload, since Flowise's chat window sends
/// its images and audio in the JSON, as base64 data URLs.
pub const MAX_JSON_BODY: usize = 50 * 1024 * 1024;
/// Largest multipart (file upload) request body accepted.
pub const MAX_MULTIPART_BODY: usize = 50 * 1024 * 1024;
/// Largest non-streaming Flowise answer read back.
pub const MAX_ANSWER: usize = 32 * 1024 * 1024;

/// Everything a request needs, shared by all connections.
#[derive(Clone)]
pub struct Proxy {
    pub snapshot: SnapshotHandle,
    pub verifier: Arc<Verifier>,
    pub upstream: Upstream,
    pub keys: ApiKeys,
    pub credits: Credits,
    pub metrics: Arc<Metrics>,
    pub token_endpoint: Option<reqwest::Url>,
    /// The OAuth client flowgate presents there (`FLOWGATE_TOKEN_CLIENT_ID`); `None`: the
    /// caller's own, if any.
    pub token_client: Option<compat::TokenClient>,
    pub http: reqwest::Client,
    /// Rate limits of ChatflowAccess objects, shared by the serving threads.
    pub limiter: Arc<RateLimiter>,
    /// The admin API (`/api/admin`); `None` without a cluster (`--resources-dir`).
    pub admin: Option<Arc<crate::admin::Admin>>,
    /// Streams read on after their clients left, for their token reports.
    pub drains: drain::Drains,
    /// The chats with a prediction under way: one at a time each.
    pub turns: turns::ChatTurns,
    /// The bound on request and answer bodies held in memory, all requests together.
    pub buffers: buffers::Buffers,
    /// What browser pages of other origins may call (`FLOWGATE_CORS_ORIGINS`); `None`: none.
    pub cors: Option<cors::Cors>,
    /// Flowise's answers to `chatflows-streaming`, shared by the serving threads.
    pub streaming: listing::StreamingAnswers,
    /// Grants being asked of the token endpoint, all threads together
    /// ([`compat::TOKEN_GRANTS_AT_ONCE`]).
    pub token_grants: Arc<tokio::sync::Semaphore>,
    /// The proxies in front whose `X-Forwarded-For` names the caller ([`forwarded`]).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl Proxy {
    /// The same proxy with a Flowise connection pool of its own (one per serving thread).
    pub fn with_own_upstream(&self) -> Result<Self, ProxyError> {
        Ok(Self {
            upstream: self.upstream.with_own_pool()?,
            ..self.clone()
        })
    }

    /// Answers one request. Never fails: every error becomes its JSON answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        // From here on `peer` is the caller, as Flowise is told it.
        let peer = forwarded::client(peer, req.headers(), &self.trusted_proxies);
        let Some(cors) = &self.cors else {
            return self.clone().answer(req, peer).await;
        };
        if !cors::Cors::is_preflight(&req) {
            // tower-http takes every OPTIONS for a preflight: one that is not goes past it.
            if req.method() == Method::OPTIONS {
                return self.clone().answer(req, peer).await;
            }
            return cors.serve(self.clone(), req, peer).await;
        }
        // Answered by the CORS rules alone; one from an origin not listed gets no permission.
        let started = std::time::Instant::now();
        let resp = cors.serve(self.clone(), req, peer).await;
        let route = if resp
            .headers()
            .contains_key(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        {
            "cors_preflight"
        } else {
            "cors_preflight_refused"
        };
        self.metrics
            .observe_request(route, resp.status().as_u16(), started.elapsed());
        resp
    }

    /// [`Proxy::handle`] past the CORS rules.
    async fn answer(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let id = request_id::assign(req.headers());
        let route = routes::route(req.method(), req.uri().path());
        let label = route.as_ref().map(Route::label).unwrap_or("unknown");
        let counted = Unanswered::new(&self.metrics, label);
        let mut resp = match route {
            Ok(route) => {
                // Boxed: the routes' states make this future several KB, and unboxed every
                // layer around it (and hyper, per request) would hold and move a copy of it.
                let dispatching = Box::pin(self.dispatch(route, req, peer));
                let answering = request_id::scope(id.clone(), dispatching);
                unwind::caught(answering)
                    .await
                    .and_then(|answer| answer)
                    .unwrap_or_else(|e| self.refuse(e))
            }
            Err(e) => self.refuse(e),
        };
        resp.headers_mut().insert(request_id::X_REQUEST_ID, id);
        counted.answered(resp.status().as_u16());
        resp
    }

    fn refuse(&self, error: ProxyError) -> Response<Body> {
        if error.is_decision() {
            self.metrics.decision("deny", error.reason());
        }
        error.into_response()
    }

    /// The answer to a prediction that spent a request of `allowance`, refused later or not,
    /// telling the caller what is left of it.
    fn telling(
        &self,
        answered: Result<Response<Body>, ProxyError>,
        allowance: Option<ratelimit::Allowance>,
    ) -> Response<Body> {
        let mut resp = answered.unwrap_or_else(|e| self.refuse(e));
        if let Some(allowance) = allowance {
            allowance.write_headers(resp.headers_mut());
        }
        resp
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        match route {
            Route::Authenticate | Route::Refresh => return self.token_grant(route, req).await,
            Route::ChatflowStreaming(id) => return self.streaming_capability(&id, peer).await,
            Route::OpenApi => {
                return Ok(error::json(
                    StatusCode::OK,
                    &crate::admin::openapi::document(),
                ));
            }
            Route::Health => {
                let health = serde_json::json!({"status": "healthy", "service": "flowgate"});
                return Ok(error::json(StatusCode::OK, &health));
            }
            _ => {}
        }
        let identity = self.authenticate(&req).await?;
        let snapshot = self.snapshot.load();
        // Before the first load the index is empty: every answer would say "no such chatflow"
        // or "no access", as if for good (with --resources-dir nothing holds traffic back
        // until then; in a cluster /readyz does).
        if snapshot.compiled_at.is_none() {
            return Err(ProxyError::IndexNotReady);
        }
        let now = jiff::Timestamp::now();
        let caller = caller(&identity);
        match route {
            Route::ListChatflows => {
                // Flowise's shape needs an id: chatflows not (yet) found in Flowise are left out,
                // as are those Flowise no longer has.
                let listed = snapshot
                    .visible(&caller, now)
                    .into_iter()
                    .filter(|cf| cf.rule.flowise_id.is_some() && !cf.rule.gone_from_flowise)
                    .map(|cf| &**cf)
                    .collect();
                let list = listing::flowise_list(listed, req.uri().query())?;
                Ok(error::json(StatusCode::OK, &list))
            }
            Route::GetChatflow(id) => {
                let (cf, _) =
                    self.authorize(&snapshot, &identity, &caller, Lookup::FlowiseId(&id), now)?;
                listed_in_flowise(&cf, &id)?;
                Ok(error::json(StatusCode::OK, &listing::flowise_shape(&cf)))
            }
            Route::CompatListChatflows => {
                // Deleted in Flowise: the Python service listed what Flowise listed.
                let mut visible: Vec<&ChatflowEntry> = snapshot
                    .visible(&caller, now)
                    .into_iter()
                    .filter(|cf| !cf.rule.gone_from_flowise)
                    .map(|cf| &**cf)
                    .collect();
                listing::newest_first(&mut visible);
                let list: Vec<Value> = visible.into_iter().map(listing::compat_shape).collect();
                Ok(error::json(StatusCode::OK, &Value::Array(list)))
            }
            Route::CompatGetChatflow(id) => {
                let (cf, _) =
                    self.authorize(&snapshot, &identity, &caller, Lookup::NameOrId(&id), now)?;
                listed_in_flowise(&cf, &id)?;
                Ok(error::json(StatusCode::OK, &listing::compat_shape(&cf)))
            }
            Route::Predict(id) => {
                // Decided before the body is read, so a caller refused costs no memory...
                let lookup = Lookup::FlowiseId(&id);
                let early = self.admit(&snapshot, &identity, &caller, lookup, now)?;
                // ...and a caller already over its rate limit sends no body either.
                self.rate_refused(&snapshot, &identity, &early.0, early.1)?;
                let idempotency_key = idempotency_key(&req)?;
                // The headers go on to Flowise (the allowed ones) after the body is read.
                let (parts, body) = req.into_parts();
                let mut held = self.buffers.hold_for(&identity.key);
                let read_since = std::time::Instant::now();
                let mut prediction =
                    read_prediction(&parts.headers, body, &identity, &mut held).await?;
                prediction.held = Some(held);
                // ...and again once it has come, if the index changed meanwhile or that took
                // long (it may take minutes): its token may have expired, and a grant revoked,
                // expired or suspended meanwhile, or a policy applied meanwhile, holds for it;
                // its credits are counted in the period it is forwarded in.
                let slow = slow(read_since);
                if slow {
                    self.authenticate_headers(&parts.headers).await?;
                }
                let current = self.snapshot.load();
                let (snapshot, now, (cf, access, usable)) =
                    if Arc::ptr_eq(&current, &snapshot) && !slow {
                        (snapshot, now, early)
                    } else {
                        let now = jiff::Timestamp::now();
                        let admitted = self.admit(&current, &identity, &caller, lookup, now)?;
                        (current, now, admitted)
                    };
                prediction.turn = Some(self.turn(&snapshot, &prediction.chat_id).await?);
                let allowance = self.rate_limit(&snapshot, &identity, &cf, access).await?;
                let answered = async {
                    let key = self.forward_headers(&cf).await?;
                    let charge = self
                        .charge(&snapshot, &identity, &caller, &cf, idempotency_key, now)
                        .await?;
                    self.forward(usable, prediction, parts.headers, key, peer, charge)
                        .await
                };
                Ok(self.telling(answered.await, allowance))
            }
            Route::CompatPredict => {
                // The chatflow is named in the body: a caller no grant names is refused before
                // the body is read, and costs no memory.
                if !snapshot.grants_anything(&caller) {
                    request_id::with_current(|request_id| {
                        tracing::info!(subject = %identity.key, decision = "deny", reason = "no_grants", request_id);
                    });
                    return Err(ProxyError::NoGrants);
                }
                let idempotency_key = idempotency_key(&req)?;
                let (parts, body) = req.into_parts();
                let mut held = self.buffers.hold_for(&identity.key);
                let read_since = std::time::Instant::now();
                let body = read_json_body(&parts.headers, body, MAX_JSON_BODY, &mut held).await?;
                if slow(read_since) {
                    self.authenticate_headers(&parts.headers).await?;
                }
                let (chatflow_id, session, mut prediction) = compat_request(body, &identity)?;
                prediction.held = Some(held);
                // Decided on what holds once the body has come, which may be minutes later.
                let (snapshot, now) = (self.snapshot.load(), jiff::Timestamp::now());
                let lookup = Lookup::NameOrId(&chatflow_id);
                let (cf, access, usable) =
                    self.admit(&snapshot, &identity, &caller, lookup, now)?;
                prediction.turn = Some(self.turn(&snapshot, &prediction.chat_id).await?);
                let allowance = self.rate_limit(&snapshot, &identity, &cf, access).await?;
                let answered = async {
                    let key = self.forward_headers(&cf).await?;
                    let charge = self
                        .charge(&snapshot, &identity, &caller, &cf, idempotency_key, now)
                        .await?;
                    let remaining = charge.as_ref().and_then(|c| c.remaining);
                    let chat_id = session.unwrap_or_else(|| prediction.chat_id.clone());
                    let resp = self
                        .forward(usable, prediction, parts.headers, key, peer, charge)
                        .await?;
                    if stream::is_event_stream(resp.headers()) {
                        return Ok(resp);
                    }
                    // After the tokens of the answer, where some policy prices them.
                    let remaining = resp
                        .extensions()
                        .get::<CreditsRemaining>()
                        .map(|r| r.0)
                        .or(remaining);
                    let held = self.buffers.hold_for(&identity.key);
                    compat_response(resp, &chatflow_id, &chat_id, remaining, held).await
                };
                Ok(self.telling(answered.await, allowance))
            }
            Route::ChatbotConfig(id) => {
                let (cf, _) =
                    self.authorize(&snapshot, &identity, &caller, Lookup::FlowiseId(&id), now)?;
                let flowise_id = usable(&cf)?;
                let key = self.forward_headers(&cf).await?;
                let held = self.buffers.hold_for(&identity.key);
                listing::chatbot_config(&self.upstream, &flowise_id, key.as_ref(), peer, held).await
            }
            Route::AbortChat { id, chat_id } => {
                let (cf, _) =
                    self.authorize(&snapshot, &identity, &caller, Lookup::FlowiseId(&id), now)?;
                // A suspended chatflow's runs may still be stopped.
                let flowise_id = cf.rule.flowise_id.clone().ok_or_else(|| {
                    ProxyError::ChatflowUnavailable(format!(
                        "{}/{}",
                        cf.rule.namespace, cf.rule.name
                    ))
                })?;
                let key = self.forward_headers(&cf).await?;
                log_decision(&identity, &cf, "allow", "abort");
                let chat_id = session::bind(&identity.key, Some(&chat_id));
                abandon::stop(&self.upstream, &flowise_id, &chat_id, key.as_ref(), peer).await
            }
            Route::Credits => {
                let balances = self
                    .credits
                    .balances(&snapshot, &identity, &caller, now)
                    .await?;
                Ok(error::json(StatusCode::OK, &balances))
            }
            Route::CreditUsage => {
                let mut filter = usage_log::usage_filter(req.uri().query())?;
                filter.subject = Some(identity.key.clone());
                let mut rows = self.credits.usage(filter).await?;
                // Who adjusted a caller's budget, and the note they left, are for admins.
                for row in &mut rows {
                    row.adjusted_by = None;
                    row.reason = None;
                }
                let rows = serde_json::to_value(rows)
                    .map_err(|e| ProxyError::Internal(format!("usage rows: {e}")))?;
                Ok(error::json(StatusCode::OK, &rows))
            }
            Route::Admin(route) => {
                let call = crate::admin::Call {
                    identity: &identity,
                    caller: &caller,
                    snapshot: &snapshot,
                    now,
                    buffers: &self.buffers,
                };
                let admin = self.admin.as_ref().ok_or_else(|| {
                    ProxyError::NotConfigured(
                        "the admin API writes Kubernetes objects and is off with --resources-dir"
                            .into(),
                    )
                })?;
                admin.handle(route, req, &call).await
            }
            Route::Authenticate
            | Route::Refresh
            | Route::ChatflowStreaming(_)
            | Route::OpenApi
            | Route::Health => Err(ProxyError::NotFound {
                method: String::new(),
                path: String::new(),
            }),
        }
    }

    /// Flowise's `{"isStreaming": …}` for a chatflow the index knows (asked of Flowise, kept a
    /// while: [`listing::streaming_capability`]). The official SDKs ask this without
    /// credentials, so it is answered without them — and says nothing beyond whether an id (a
    /// UUID) exists and is served: a refusal names only the id, never the Chatflow, its
    /// namespace or its key's Secret.
    async fn streaming_capability(
        &self,
        id: &str,
        peer: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        let snapshot = self.snapshot.load();
        // As on every route: before the first load "no such chatflow" would be an answer for
        // good (the SDKs then stop streaming).
        if snapshot.compiled_at.is_none() {
            return Err(ProxyError::IndexNotReady);
        }
        let Some(cf) = snapshot.chatflow_by_flowise_id(id).cloned() else {
            return Err(ProxyError::ChatflowNotFound(id.to_string()));
        };
        let unavailable = |error: ProxyError| {
            tracing::info!(%error, chatflow = id, "streaming capability asked without credentials");
            ProxyError::ChatflowUnavailable(id.to_string())
        };
        let flowise_id = usable(&cf).map_err(unavailable)?;
        let key = self.forward_headers(&cf).await.map_err(unavailable)?;
        listing::streaming_capability(
            &self.upstream,
            &self.streaming,
            &flowise_id,
            key.as_ref(),
            peer,
        )
        .await
    }

    async fn authenticate(&self, req: &Request<Incoming>) -> Result<Identity, ProxyError> {
        self.authenticate_headers(req.headers()).await
    }

    async fn authenticate_headers(
        &self,
        headers: &hyper::HeaderMap,
    ) -> Result<Identity, ProxyError> {
        // More than one Authorization header is ambiguous (proxies and servers disagree on which
        // one counts): refuse it rather than pick one.
        let mut authorizations = headers.get_all(hyper::header::AUTHORIZATION).iter();
        let first = authorizations.next();
        if authorizations.next().is_some() {
            return Err(ProxyError::InvalidToken {
                reason: "malformed",
                detail: "more than one Authorization header".into(),
            });
        }
        let token =
            bearer_token(first).map_err(|e| ProxyError::Unauthenticated { reason: e.reason() })?;
        self.verifier.verify(token).await.map_err(|e| {
            if e == crate::identity::AuthError::ReviewUnavailable {
                ProxyError::TokenReviewUnavailable
            } else if e == crate::identity::AuthError::KeyNotFetchedYet {
                ProxyError::KeyNotFetchedYet
            } else if e.is_transient() {
                ProxyError::KeysUnavailable
            } else {
                ProxyError::InvalidToken {
                    reason: e.reason(),
                    detail: e.to_string(),
                }
            }
        })
    }

    /// Resolves the chatflow and checks the caller may use it.
    fn authorize(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        lookup: Lookup<'_>,
        now: jiff::Timestamp,
    ) -> Result<(Arc<ChatflowEntry>, Access), ProxyError> {
        let id = match lookup {
            Lookup::FlowiseId(id) | Lookup::NameOrId(id) => id,
        };
        let cf = match lookup {
            Lookup::FlowiseId(id) => snapshot.chatflow_by_flowise_id(id).cloned(),
            Lookup::NameOrId(id) => match snapshot.chatflow_by_flowise_id(id) {
                Some(cf) => Some(cf.clone()),
                // A Flowise id (a hyphenated UUID) is never looked up as a name: a Chatflow of another namespace
                // named like it would receive the questions meant for that chatflow whenever
                // the index has no chatflow of that id (none yet, or its holder mid-change).
                None if id.len() == 36 && uuid::Uuid::try_parse(id).is_ok() => None,
                None => by_visible_name(snapshot, caller, id, now)?,
            },
        };
        let Some(cf) = cf else {
            request_id::with_current(|request_id| {
                tracing::info!(subject = %identity.key, chatflow = id, decision = "deny", reason = "chatflow_not_found", request_id);
            });
            return Err(ProxyError::ChatflowNotFound(id.to_string()));
        };
        let Some(access) = snapshot.access(caller, &cf, now) else {
            log_decision(identity, &cf, "deny", "forbidden");
            // Named as the caller named it: where it lives is not for the caller to learn.
            return Err(ProxyError::Forbidden(id.to_string()));
        };
        Ok((cf, access))
    }

    /// The chatflow a prediction may go to, the access that allows it and the Flowise id to
    /// send it to: granted, not suspended, Ready, and under no invalid CreditPolicy.
    fn admit(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        lookup: Lookup<'_>,
        now: jiff::Timestamp,
    ) -> Result<(Arc<ChatflowEntry>, Access, String), ProxyError> {
        let (cf, access) = self.authorize(snapshot, identity, caller, lookup, now)?;
        let usable = usable(&cf)?;
        self.refuse_invalid(snapshot, identity, caller, &cf)?;
        Ok((cf, access, usable))
    }

    /// The turn of the prediction's chat: across replicas where they share turns while some
    /// policy prices tokens (only then can two predictions in one chat shift a charge).
    async fn turn(&self, snapshot: &Snapshot, chat_id: &str) -> Result<turns::Turn, ProxyError> {
        self.turns.begin(chat_id, snapshot.prices_tokens()).await
    }

    /// Spends one request of the caller's allowance under the rate limit of its access, if any,
    /// and says what is left of it.
    async fn rate_limit(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        cf: &ChatflowEntry,
        access: Access,
    ) -> Result<Option<ratelimit::Allowance>, ProxyError> {
        let Some(limit) = access.limit else {
            return Ok(None);
        };
        let Some(rule) = snapshot.access_rules().get(limit.rule as usize) else {
            return Ok(None);
        };
        let access = (rule.namespace.as_str(), rule.name.as_str());
        match self.limiter.take(access, &identity.key, limit.rate).await {
            Ok(allowance) => Ok(Some(allowance)),
            Err(refused) => Err(rate_limited(identity, cf, rule, refused)),
        }
    }

    /// [`Self::rate_limit`]'s refusal when this replica already knows it, spending nothing.
    fn rate_refused(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        cf: &ChatflowEntry,
        access: Access,
    ) -> Result<(), ProxyError> {
        let Some(limit) = access.limit else {
            return Ok(());
        };
        let Some(rule) = snapshot.access_rules().get(limit.rule as usize) else {
            return Ok(());
        };
        let access = (rule.namespace.as_str(), rule.name.as_str());
        match self.limiter.refusal(access, &identity.key, limit.rate) {
            Some(refused) => Err(rate_limited(identity, cf, rule, refused)),
            None => Ok(()),
        }
    }

    /// The Flowise credentials for `cf`: its own key, the default key where Flowise binds the
    /// chatflow to one, or none (Flowise checks keys with a slow hash: send none where not needed).
    async fn forward_headers(&self, cf: &ChatflowEntry) -> Result<Option<HeaderValue>, ProxyError> {
        if let Some(secret) = &cf.rule.api_key {
            return self.keys.get(&cf.rule.namespace, secret).await.map(Some);
        }
        Ok(if cf.rule.api_key_bound {
            self.upstream.default_key()
        } else {
            None
        })
    }

    /// [`Credits::refuse_invalid`], with the decision logged.
    fn refuse_invalid(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        cf: &ChatflowEntry,
    ) -> Result<(), ProxyError> {
        self.credits
            .refuse_invalid(snapshot, caller, cf)
            .inspect_err(|error| log_decision(identity, cf, "deny", error.reason()))
    }

    /// Reserves credits for an allowed prediction and logs the decision once.
    async fn charge(
        &self,
        snapshot: &Snapshot,
        identity: &Identity,
        caller: &Caller<'_>,
        cf: &ChatflowEntry,
        idempotency_key: Option<String>,
        now: jiff::Timestamp,
    ) -> Result<Option<Charge>, ProxyError> {
        match self
            .credits
            .reserve(snapshot, identity, caller, cf, idempotency_key, now)
            .await
        {
            Ok(charge) => {
                log_decision(identity, cf, "allow", "granted");
                self.metrics.decision("allow", "granted");
                Ok(charge)
            }
            Err(error) => {
                log_decision(identity, cf, "deny", error.reason());
                Err(error)
            }
        }
    }
}

/// Counts a request in `flowgate_proxy_requests_total` and the latency histogram once it is
/// answered, or, when hyper drops it unanswered because the client went away, as status 499
/// (nginx's "client closed request"): a Flowise that hangs until clients give up shows there.
struct Unanswered<'a> {
    metrics: &'a Metrics,
    route: &'static str,
    started: std::time::Instant,
    answered: bool,
}

impl<'a> Unanswered<'a> {
    fn new(metrics: &'a Metrics, route: &'static str) -> Self {
        Self {
            metrics,
            route,
            started: std::time::Instant::now(),
            answered: false,
        }
    }

    fn answered(mut self, status: u16) {
        self.answered = true;
        let elapsed = self.started.elapsed();
        self.metrics.observe_request(self.route, status, elapsed);
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let elapsed = self.started.elapsed();
            self.metrics.observe_request(self.route, 499, elapsed);
        }
    }
}

/// The caller's smallest remaining balance once a JSON answer is settled (its tokens counted),
/// for the compat route's `credits_remaining`.
#[derive(Debug, Clone, Copy)]
struct CreditsRemaining(u64);
