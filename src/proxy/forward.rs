//! The upstream leg of a prediction: forwarded to Flowise, and its charge settled or refunded
//! by how Flowise answered — a JSON answer read whole, a stream watched as it passes
//! ([`super::stream`]), a failure refunded.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::abandon::{self, InFlight};
use super::credits::{self, Charge};
use super::prediction::Prediction;
use super::stream::{self, Observed, StreamEnd};
use super::{
    CreditsRemaining, MAX_ANSWER, Proxy, ProxyError, buffers, flowise_message, upstream, usage,
};
use crate::server::Body;

impl Proxy {
    /// Forwards a prediction and settles or refunds its charge by how Flowise answered. A client
    /// gone before the answer gets Flowise's run aborted and the flat cost charged ([`InFlight`]).
    pub(super) async fn forward(
        &self,
        flowise_id: String,
        prediction: Prediction,
        mut client_headers: hyper::HeaderMap,
        key: Option<HeaderValue>,
        peer: SocketAddr,
        charge: Option<Charge>,
    ) -> Result<Response<Body>, ProxyError> {
        let resume = prediction.resume;
        let caller = prediction.caller;
        // The answer counts in the same caller's share as the question.
        let answer_held = prediction.held.as_ref().map(buffers::Held::sibling);
        let (body, content_type) = prediction.body.encode(prediction.held);
        client_headers.insert(CONTENT_TYPE, content_type);
        let path = format!("/api/v1/prediction/{flowise_id}");
        let mut flight = InFlight::new(
            &self.upstream,
            &self.credits,
            flowise_id,
            prediction.chat_id,
            key,
            peer,
            charge,
        )
        .holding(prediction.turn);
        let req = match self.upstream.request(
            Method::POST,
            &path,
            &client_headers,
            peer,
            flight.key(),
            body,
        ) {
            Ok(req) => req,
            Err(error) => {
                flight.refund().await;
                return Err(error);
            }
        };
        let upstream = match self.upstream.send_tracked(req, flight.sent()).await {
            Ok(resp) => resp,
            Err(error) => {
                self.metrics.upstream_error(error.reason());
                flight.failed(&error).await;
                return Err(error);
            }
        };
        let status = upstream.status();
        // Flowise refusing flowgate's key is flowgate's configuration, not the caller's token:
        // passed through, it would read as the caller's 401.
        let key_refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        // A gateway in front of Flowise that gave up on it (an ingress's 504 after its read
        // timeout): the run may still be going. It is aborted, as after flowgate's own timeout,
        // so that it does not run on free and the chat's next run is not mixed with it.
        // Refunded (and aborted) before the body is read, as every failure is: a client gone
        // meanwhile is not charged.
        if matches!(status.as_u16(), 502..=504) {
            let timeout = status == StatusCode::GATEWAY_TIMEOUT;
            let failure = match timeout {
                true => ProxyError::UpstreamTimeout,
                false => ProxyError::UpstreamUnreachable(String::new()),
            };
            self.metrics.upstream_error("status_5xx");
            flight.failed(&failure).await;
            if timeout {
                return Err(failure);
            }
            let body = self.upstream.error_body(upstream.into_body()).await;
            return Err(ProxyError::UpstreamUnreachable(flowise_message(
                status, &body,
            )));
        }
        if status.is_server_error() || key_refused {
            flight.refund().await;
            let body = self.upstream.error_body(upstream.into_body()).await;
            let message = flowise_message(status, &body);
            // Flowise 3 answers a chatflow bound to an API key, called with another key or
            // none, with a 500 "Error: predictionsServices.buildChatflow - Unauthorized" (its
            // wrap of any failure of the run: only this whole message is the key's).
            let key_refused = key_refused
                || (status == StatusCode::INTERNAL_SERVER_ERROR
                    && message
                        .trim_end()
                        .ends_with(": Error: predictionsServices.buildChatflow - Unauthorized"));
            if !key_refused {
                self.metrics.upstream_error("status_5xx");
                return Err(ProxyError::Upstream(message));
            }
            self.metrics.upstream_error("status_auth");
            return Err(ProxyError::Upstream(format!(
                "Flowise refused flowgate's credentials for this chatflow (check the Chatflow's \
                 apiKeySecretRef or FLOWGATE_FLOWISE_API_KEY_FILE): {message}"
            )));
        }
        // Flowise refused the prediction (a 4xx): refunded before its answer is read, so that a
        // client gone meanwhile is not charged for it either.
        if !status.is_success() {
            flight.refund().await;
        }
        let (parts, incoming) = upstream.into_parts();
        let mut resp = Response::builder().status(parts.status);
        if let Some(headers) = resp.headers_mut() {
            upstream::copy_response_headers(&parts.headers, headers);
        }
        // What Flowise sent decides, not what the client asked: Flowise answers a chatflow it
        // cannot stream with JSON, and such an answer must be settled like any other.
        if status.is_success() && stream::is_event_stream(&parts.headers) {
            let (abort, charge) = flight.streaming();
            if let Some(headers) = resp.headers_mut()
                && let Some(left) = charge.as_ref().and_then(|c| c.remaining)
            {
                headers.insert(credits::X_CREDITS_REMAINING, HeaderValue::from(left));
            }
            // Tokens priced: the run's report comes after its last token, so a client that
            // leaves mid-stream leaves the rest to be read for it ([`drain`]).
            let drain = charge.as_ref().is_some_and(Charge::counts_tokens);
            let credits = self.credits.clone();
            // An answer is charged once it reached the caller, whatever follows it: an error
            // after the first token (a later Agentflow node failing) does not refund the tokens.
            let metrics = self.metrics.clone();
            // Where no policy prices tokens, the scanner keeps no node list (megabytes each).
            let counted = drain.then(|| resume.clone());
            let stall = self.upstream.timeout();
            let observed = Observed::new(incoming, counted, move |report| {
                let answered = report.answered;
                if report.error_event {
                    tracing::warn!(answered, "Flowise sent an error event in a streamed answer");
                }
                // Failures after the 200's head: most of a streaming client's failures in
                // Flowise (an LLM's error event, a stall, a broken connection) show only here.
                if report.end == StreamEnd::UpstreamFailed {
                    metrics.upstream_error("stream_failed");
                } else if report.error_event {
                    metrics.upstream_error("stream_error_event");
                }
                if report.client_left {
                    metrics.stream_hangup(match report.end {
                        StreamEnd::ClientGone => "aborted",
                        StreamEnd::Abandoned => "stopped",
                        StreamEnd::Completed | StreamEnd::UpstreamFailed => "read_to_end",
                    });
                }
                // Flowise may still be running it: asked to stop, and the chat's turn waits for
                // that (dropped unused, the callback ends the turn at once).
                let gone = matches!(report.end, StreamEnd::ClientGone | StreamEnd::Abandoned);
                let failed = report.end == StreamEnd::UpstreamFailed;
                let aborting = (gone || failed).then(abort);
                // A client gone before the answer is charged the run it started (Flowise may
                // still be running it), unless Flowise had already failed it: how long the
                // client stayed for the end does not decide a refund.
                // A shutdown cutting it is flowgate's doing: refunded unless answered.
                let hung_up = gone && !credits.cut_by_shutdown();
                let settling = match charge {
                    Some(charge) if answered || (hung_up && !report.error_event) => {
                        credits.settle_stream(charge, report.usage);
                        None
                    }
                    // A keyed refund lands before the stream's end reaches the client.
                    Some(charge) => credits.refund_held(charge),
                    None => None,
                };
                // A stream flowgate cut (Flowise stalled, its connection broke) ends for the
                // client once the abort freed the chat (at most `ABORT_WAIT`), as a timed-out
                // JSON answer does: a prompt retry finds the chat free, not 409.
                match (aborting.filter(|_| failed), settling) {
                    (None, settling) => settling,
                    (Some(abort), None) => Some(tokio::spawn(abandon::within_abort_wait(abort))),
                    (Some(abort), Some(settling)) => Some(tokio::spawn(async move {
                        abandon::within_abort_wait(abort).await;
                        let _ = settling.await;
                    })),
                }
            })
            .stalls_after(stall);
            // The node lists a token-priced stream keeps count in the caller's share of the
            // body memory, as its JSON answer would.
            let observed = if drain {
                observed.counting_in(answer_held.unwrap_or_else(|| self.buffers.hold()))
            } else {
                observed
            };
            let body = if drain {
                self.drains.wrap(observed, &caller).boxed()
            } else {
                observed.boxed()
            };
            return resp
                .body(body)
                .map_err(|e| ProxyError::Internal(e.to_string()));
        }
        // Counted as it arrives, until the last of it is written to the client's connection;
        // never refused, it is already paid for.
        let mut held = answer_held.unwrap_or_else(|| self.buffers.hold());
        let answer = match self
            .upstream
            .read_body(incoming, MAX_ANSWER, Some(&mut held))
            .await
        {
            Ok(answer) => answer,
            // Flowise ran it and answered: what was held is due (its tokens are in the part not
            // read; the flat cost alone would make them free).
            Err(error @ ProxyError::AnswerTooLarge { .. }) => {
                self.metrics.upstream_error(error.reason());
                if let Some(charge) = flight.answered() {
                    self.credits.settle_held(charge);
                }
                return Err(error);
            }
            Err(error) => {
                self.metrics.upstream_error(error.reason());
                flight.failed(&error).await;
                return Err(error);
            }
        };
        // A refused prediction's charge is gone already.
        if let Some(charge) = flight.answered() {
            let tokens = if charge.counts_tokens() {
                usage::json_answer_tokens(&answer, &resume)
            } else {
                0
            };
            if let Some(left) = charge.remaining_after(tokens) {
                resp = resp
                    .header(credits::X_CREDITS_REMAINING, left)
                    .extension(CreditsRemaining(left));
            }
            self.credits.settle(charge, tokens);
        }
        resp.body(buffers::whole(buffers::owning(answer, held)))
            .map_err(|e| ProxyError::Internal(e.to_string()))
    }
}
