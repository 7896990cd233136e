//! A prediction on its way through Flowise, and what happens when its client goes away first.
//!
//! A client that hangs up before the answer (closes the connection, times out) makes hyper drop
//! the request's future wherever it waits: for Flowise's response headers or its JSON body. The
//! prediction then still runs in Flowise, and its charge would stay reserved until the sweep
//! charges it, 15 minutes later. [`InFlight`] is armed for that time: dropped while armed, it asks
//! Flowise to abort the run and settles the charge at once at its flat cost (the tokens are
//! never known); dropped by a request that panicked, it refunds ([`super::unwind`]). A hang-up
//! mid-stream is the stream's to handle ([`super::stream`]): aborted as here, or, once the answer
//! started and a policy prices tokens, read on for Flowise's report ([`super::drain`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};

use super::credits::{Charge, Credits};
use super::error::{self, ProxyError};
use super::session;
use super::turns::Turn;
use super::upstream::Upstream;
use tokio_util::task::TaskTracker;

/// A forwarded prediction until Flowise answered it (or failed).
pub(super) struct InFlight<'a> {
    upstream: &'a Upstream,
    credits: &'a Credits,
    flowise_id: String,
    chat_id: String,
    key: Option<HeaderValue>,
    peer: SocketAddr,
    charge: Option<Charge>,
    armed: bool,
    /// The request was handed to a connection to Flowise ([`Upstream::send_tracked`]).
    sent: AtomicBool,
    /// The chat's turn: released when the prediction is done with, or once Flowise answered the
    /// abort of its run (an abort still on its way would stop the chat's next run).
    turn: Option<Turn>,
}

impl<'a> InFlight<'a> {
    pub(super) fn new(
        upstream: &'a Upstream,
        credits: &'a Credits,
        flowise_id: String,
        chat_id: String,
        key: Option<HeaderValue>,
        peer: SocketAddr,
        charge: Option<Charge>,
    ) -> Self {
        Self {
            upstream,
            credits,
            flowise_id,
            chat_id,
            key,
            peer,
            charge,
            armed: true,
            sent: AtomicBool::new(false),
            turn: None,
        }
    }

    /// Turns true once the request is on its way to Flowise, for [`Upstream::send_tracked`].
    pub(super) fn sent(&self) -> &AtomicBool {
        &self.sent
    }

    /// The flight holds its chat's `turn` until it is done with.
    pub(super) fn holding(mut self, turn: Option<Turn>) -> Self {
        self.turn = turn;
        self
    }

    pub(super) fn key(&self) -> Option<&HeaderValue> {
        self.key.as_ref()
    }

    /// Flowise failed before answering: the charge is refunded (before the error answer when
    /// the request is keyed, see [`Credits::refund_now`]).
    pub(super) async fn refund(&mut self) {
        self.armed = false;
        if let Some(charge) = self.charge.take() {
            self.credits.refund_now(charge).await;
        }
    }

    /// Flowise failed with `error` before its answer was whole: refunded. Unless the request
    /// never reached Flowise (no connection), the run may still be going (a timeout, a
    /// connection cut after the request went out): Flowise is asked to stop it, so that no one's
    /// work goes uncharged and the chat's next run is not mixed with it; the chat's turn waits
    /// for that. The error answer also waits for the abort, so a prompt retry finds the chat
    /// free. Both run in tasks of their own: a client gone meanwhile cancels neither.
    pub(super) async fn failed(&mut self, error: &super::ProxyError) {
        if matches!(error, super::ProxyError::UpstreamNotConnected(_))
            || !self.sent.load(Ordering::Relaxed)
        {
            self.refund().await;
            return;
        }
        tracing::debug!(chat_id = %self.chat_id, %error, "Flowise failed; aborting the run");
        let abort = self.take_abort().spawn();
        self.refund().await;
        within_abort_wait(abort).await;
    }

    /// Flowise answered: the charge, for the caller to settle.
    pub(super) fn answered(&mut self) -> Option<Charge> {
        self.armed = false;
        self.charge.take()
    }

    /// Flowise streams its answer: the stream watches it from here, with a callback that asks
    /// Flowise to abort (its task ends once the chat's turn is free) and the charge.
    pub(super) fn streaming(
        mut self,
    ) -> (
        impl FnOnce() -> tokio::task::JoinHandle<()> + Send + Sync + 'static,
        Option<Charge>,
    ) {
        self.armed = false;
        let abort = self.take_abort();
        (move || abort.spawn(), self.charge.take())
    }

    /// The abort of this chat's run, built from what the flight holds (taken out of it).
    fn take_abort(&mut self) -> Abort {
        Abort {
            upstream: self.upstream.clone(),
            flowise_id: std::mem::take(&mut self.flowise_id),
            chat_id: std::mem::take(&mut self.chat_id),
            key: self.key.take(),
            peer: self.peer,
            turn: self.turn.take(),
            background: self.credits.background().clone(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Still connecting (Flowise slow to accept, or not at all): it never had the request,
        // so there is no run to stop or charge, as when the connection fails.
        if !self.sent.load(Ordering::Relaxed) {
            tracing::debug!(chat_id = %self.chat_id, "client gone before the request reached Flowise");
            if let Some(charge) = self.charge.take() {
                self.credits.refund(charge);
            }
            return;
        }
        self.take_abort().spawn();
        let Some(charge) = self.charge.take() else {
            return;
        };
        // flowgate's own failure, or its shutdown cutting the connection: not the caller's
        // hang-up.
        if super::unwind::unwinding() || self.credits.cut_by_shutdown() {
            self.credits.refund(charge);
            return;
        }
        tracing::debug!(chat_id = %self.chat_id, "client gone before Flowise answered");
        self.credits.settle(charge, 0);
    }
}

/// How long a chat stays busy after Flowise answered the abort of its run.
const RUN_UNWIND: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest an abort request is waited for (and its chat kept busy).
const ABORT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the error answer of a run Flowise failed (a 504, a cut stream) waits for Flowise to
/// confirm its abort (and the run to unwind, [`RUN_UNWIND`]).
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits for an abort's task (the chat's turn is free once it ends), at most [`ABORT_WAIT`]: it
/// runs on by itself after that.
pub(super) async fn within_abort_wait(abort: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(ABORT_WAIT, abort).await.is_err() {
        tracing::warn!(?ABORT_WAIT, "Flowise did not confirm the abort in time");
    }
}

/// A request asking Flowise to stop generating for `chat_id` on `flowise_id`, with the chat's
/// turn, which ends a moment after Flowise answered.
pub(super) struct Abort {
    upstream: Upstream,
    flowise_id: String,
    chat_id: String,
    key: Option<HeaderValue>,
    peer: SocketAddr,
    turn: Option<Turn>,
    /// Where it runs: a shutdown waits for it with the proxy's other background work.
    background: TaskTracker,
}

impl Abort {
    /// Sends it in a task of its own.
    pub(super) fn spawn(self) -> tokio::task::JoinHandle<()> {
        let background = self.background.clone();
        background.spawn(self.send())
    }

    async fn send(self) {
        let Self {
            upstream,
            flowise_id,
            chat_id,
            key,
            peer,
            turn,
            background: _,
        } = self;
        let path = session::abort_path(&flowise_id, &chat_id);
        let headers = hyper::HeaderMap::new();
        let req = match upstream.request(
            Method::PUT,
            &path,
            &headers,
            peer,
            key.as_ref(),
            Bytes::new(),
        ) {
            Ok(req) => req,
            Err(error) => {
                tracing::warn!(%error, "cannot build the abort request");
                return;
            }
        };
        // Bounded on its own: the chat's turn waits for it.
        match tokio::time::timeout(ABORT_LIMIT, upstream.send(req)).await {
            Ok(Ok(resp)) => {
                tracing::debug!(status = %resp.status(), %chat_id, "asked Flowise to abort");
                // Flowise answers once it signalled the run, which then still unwinds (and ends
                // the chat's stream on its way out): the turn waits a moment longer. Not after a
                // refusal (a gateway's 502 with Flowise down): no run was stopped.
                if turn.is_some() && resp.status().is_success() {
                    tokio::time::sleep(RUN_UNWIND).await;
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, %chat_id, "abort request failed"),
            Err(_) => tracing::warn!(?ABORT_LIMIT, %chat_id, "Flowise did not answer an abort"),
        }
        drop(turn);
    }
}

/// A caller's own "stop generating" (`PUT /api/v1/chatmessage/abort/{id}/{chatId}`, as Flowise's
/// chat window and embed send it): Flowise is asked to abort the run of `chat_id`, already bound
/// to the caller ([`session::bind`]), so a caller can stop only its own chats. The run's stream
/// then ends, and is charged for what Flowise reported of it.
pub(super) async fn stop(
    upstream: &Upstream,
    flowise_id: &str,
    chat_id: &str,
    key: Option<&HeaderValue>,
    peer: SocketAddr,
) -> Result<Response<crate::server::Body>, ProxyError> {
    let path = session::abort_path(flowise_id, chat_id);
    let req = upstream.request(
        Method::PUT,
        &path,
        &hyper::HeaderMap::new(),
        peer,
        key,
        Bytes::new(),
    )?;
    let resp = tokio::time::timeout(ABORT_LIMIT, upstream.send(req))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)??;
    let status = resp.status();
    if !status.is_success() {
        let body = upstream.error_body(resp.into_body()).await;
        return Err(ProxyError::Upstream(super::flowise_message(status, &body)));
    }
    tracing::debug!(%chat_id, "the caller asked Flowise to abort");
    Ok(error::json(
        StatusCode::OK,
        &serde_json::json!({"status": 200, "message": "Chat message aborted"}),
    ))
}
