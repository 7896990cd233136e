//! Streams read to their end after their client went away, so that a run whose tokens are priced
//! is charged what Flowise reports for it.
//!
//! Flowise reports a run's tokens after its last token (`usageMetadata`, the last node list). A
//! client that reads the answer and hangs up before the report would otherwise be charged only
//! the flat cost: the report never comes, and the abort a hang-up normally sends stops the run.
//! A [`Draining`] stream dropped once the answer has started hands the stream to a task that
//! reads the rest (passing nothing on), and the stream's end is reported as if the client had
//! stayed. The run is not aborted.
//!
//! What that may cost is bounded ([`Drains`]): a number of streams read at once, and fewer for
//! one caller (so that one caller leaving many streams cannot take every reading from the
//! others), a time per stream, and a grace period once the process is shutting down. A stream
//! left when as many are read already, for everyone or for its caller, or once the shutdown
//! began, is not read on: its client is reported gone, so
//! Flowise is asked to abort it and it is charged what was reported. A reading that stops at its
//! limit or at the end of the grace reports [`super::stream::StreamEnd::Abandoned`]: charged
//! what was reported, and aborted. (The chat's turn, [`super::turns`], is held meanwhile, so
//! the abort cannot reach a newer run in the chat.)

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stream::Observed;

/// Streams read without their clients at once, per process. Each holds a Flowise connection and
/// what its scanner keeps (the last Agentflow node list, up to `MAX_ANSWER`).
pub const MAX_DRAINS: usize = 256;

/// Streams of one caller read without it at once.
pub const MAX_DRAINS_PER_CALLER: usize = MAX_DRAINS / 8;

/// The bounds of reading streams without their clients, shared by the proxy's threads.
#[derive(Clone)]
pub struct Drains {
    permits: Arc<Semaphore>,
    /// Readings under way by caller (identity key); a caller with none has no entry.
    callers: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    /// Longest a stream is read after its client left.
    limit: Duration,
    /// How long readings under way go on once `shutdown` fired (none starts after it).
    grace: Duration,
    shutdown: CancellationToken,
    /// Where the readings run: a shutdown waits for them with the proxy's other background work.
    background: TaskTracker,
}

impl Drains {
    /// At most [`MAX_DRAINS`] at once, each for at most `limit` and until `grace` after
    /// `shutdown` fired; run as `background` work.
    pub fn new(
        limit: Duration,
        grace: Duration,
        shutdown: CancellationToken,
        background: TaskTracker,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_DRAINS)),
            callers: Arc::default(),
            limit,
            grace,
            shutdown,
            background,
        }
    }

    /// Wraps `body`, a stream of `caller` (its identity key) whose charge needs Flowise's token
    /// report.
    pub fn wrap<B>(&self, body: Observed<B>, caller: &str) -> Draining<B>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        Draining {
            body: Some(body),
            drains: self.clone(),
            caller: Arc::from(caller),
        }
    }

    /// One of `caller`'s readings, if it has fewer than [`MAX_DRAINS_PER_CALLER`].
    fn caller_slot(&self, caller: &Arc<str>) -> Option<CallerSlot> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let held = callers.entry(caller.clone()).or_default();
        if *held >= MAX_DRAINS_PER_CALLER {
            return None;
        }
        *held += 1;
        Some(CallerSlot {
            callers: self.callers.clone(),
            caller: caller.clone(),
        })
    }

    /// Readings under way.
    pub fn running(&self) -> usize {
        MAX_DRAINS - self.permits.available_permits()
    }
}

/// One reading of one caller; given back when the reading ends.
struct CallerSlot {
    callers: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    caller: Arc<str>,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = callers.get_mut(&self.caller) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                callers.remove(&self.caller);
            }
        }
    }
}

/// An [`Observed`] stream read to its end when its client goes away after the answer started.
pub struct Draining<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    body: Option<Observed<B>>,
    drains: Drains,
    /// Whose stream it is.
    caller: Arc<str>,
}

impl<B> Drop for Draining<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        // Dropped here instead, an unreported body reports its client gone: Flowise is asked to
        // abort the run. So it goes before any token (the client had nothing of the answer),
        // once the shutdown began (its grace counts from then), without a runtime, and past the
        // limit of readings at once. One whose poll panicked is flowgate's failure, never read on:
        // it reports so as it drops.
        if body.reported()
            || !body.answering()
            || body.panicked()
            || self.drains.shutdown.is_cancelled()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = self.drains.permits.clone().try_acquire_owned() else {
            tracing::warn!(
                MAX_DRAINS,
                "too many streams read without their clients; aborting this one"
            );
            return;
        };
        let Some(slot) = self.drains.caller_slot(&self.caller) else {
            // Debug, not warn: this is the abuse case, and every hang-up would log (the
            // hang-ups metric counts it as aborted).
            tracing::debug!(
                MAX_DRAINS_PER_CALLER,
                caller = %self.caller,
                "too many of one caller's streams read without it; aborting this one"
            );
            return;
        };
        tracing::debug!("client gone mid-stream; reading the rest for Flowise's token report");
        let mut body = body;
        body.left();
        let drains = &self.drains;
        runtime.spawn(drains.background.track_future(drain(
            body,
            drains.limit,
            drains.grace,
            drains.shutdown.clone(),
            // The caller's slot goes back before the global one: a reading that takes the
            // freed permit must not find this caller still counted.
            (slot, permit),
        )));
    }
}

/// Reads `body` to its end, or until `limit` passed or `grace` after `shutdown`; the body reports
/// how it ended.
async fn drain<B>(
    mut body: Observed<B>,
    limit: Duration,
    grace: Duration,
    shutdown: CancellationToken,
    _held: (CallerSlot, OwnedSemaphorePermit),
) where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let rest = async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    };
    let stopping = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        biased;
        () = rest => return,
        () = tokio::time::sleep(limit) => tracing::warn!(
            ?limit,
            "Flowise did not end a stream its client left within the limit; aborting it"
        ),
        () = stopping => tracing::warn!(
            "shutting down before Flowise ended a stream its client left; aborting it"
        ),
    }
    body.abandon();
}

impl<B> Body for Draining<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use http_body_util::StreamBody;

    use crate::proxy::stream::{Settling, StreamEnd, StreamReport};
    use crate::proxy::usage::Resume;

    type Sender = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

    /// A body whose frames the test sends when it chooses.
    fn fed() -> (
        Sender,
        impl Body<Data = Bytes, Error = std::io::Error> + Send + Unpin + 'static,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, StreamBody::new(rx))
    }

    fn event(line: &str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from(format!(
            "message:\ndata:{line}\n\n"
        ))))
    }

    const TOKEN: &str = r#"{"event":"token","data":"Hi"}"#;

    /// How a stream reported its end: its end and tokens.
    type Seen = Arc<Mutex<Vec<(StreamEnd, u64)>>>;

    fn recorder() -> (
        Seen,
        impl FnOnce(StreamReport) -> Option<Settling> + Send + Sync + 'static,
    ) {
        let seen = Seen::default();
        let sink = seen.clone();
        (seen, move |r: StreamReport| {
            sink.lock().expect("lock").push((r.end, r.usage.tokens()));
            None
        })
    }

    fn seen(seen: &Seen) -> Vec<(StreamEnd, u64)> {
        seen.lock().expect("lock").clone()
    }

    async fn reported(seen: &Seen) -> (StreamEnd, u64) {
        loop {
            if let Some(first) = self::seen(seen).first() {
                return *first;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn drains(limit: Duration) -> (Drains, CancellationToken) {
        let shutdown = CancellationToken::new();
        let drains = Drains::new(
            limit,
            Duration::from_secs(20),
            shutdown.clone(),
            TaskTracker::new(),
        );
        (drains, shutdown)
    }

    /// A stream whose client read `first` and left; its sender, to send what Flowise sends next.
    async fn left_after(drains: &Drains, first: &str) -> (Sender, Seen, tokio::time::Instant) {
        left_by(drains, "user:alice", first).await
    }

    /// [`left_after`], for `caller`'s stream.
    async fn left_by(
        drains: &Drains,
        caller: &str,
        first: &str,
    ) -> (Sender, Seen, tokio::time::Instant) {
        let (seen, on_end) = recorder();
        let (tx, inner) = fed();
        let mut body = drains.wrap(Observed::new(inner, Some(Resume::New), on_end), caller);
        tx.unbounded_send(event(first)).expect("send");
        assert!(body.frame().await.is_some(), "the client reads an event");
        drop(body);
        (tx, seen, tokio::time::Instant::now())
    }

    #[tokio::test]
    async fn a_stream_its_client_left_is_read_to_the_end_for_its_report() {
        let (drains, _) = drains(Duration::from_secs(60));
        let (tx, seen, _) = left_after(&drains, TOKEN).await;
        assert!(self::seen(&seen).is_empty(), "not reported yet");
        assert_eq!(drains.running(), 1);
        // The rest arrives after the client left: the report counts it.
        tx.unbounded_send(event(
            r#"{"event":"usageMetadata","data":{"total_tokens":7}}"#,
        ))
        .expect("the drain still reads");
        tx.unbounded_send(event(r#"{"event":"end","data":"[DONE]"}"#))
            .expect("send");
        drop(tx);
        let report = tokio::time::timeout(Duration::from_secs(10), reported(&seen))
            .await
            .expect("reported once drained");
        assert_eq!(report, (StreamEnd::Completed, 7));
        drains.background.close();
        drains.background.wait().await;
        assert_eq!(drains.running(), 0, "the reading let its permit go");
    }

    /// A poll that panicked after the answer began is flowgate's failure: the body is not read
    /// on as if its client had left, and reports the stream failed.
    #[tokio::test]
    async fn a_stream_whose_poll_panicked_is_not_read_on() {
        let (drains, _) = drains(Duration::from_secs(60));
        let (seen, on_end) = recorder();
        let mut sent = false;
        let inner = StreamBody::new(futures::stream::poll_fn(move |_| {
            assert!(!sent, "a bug");
            sent = true;
            std::task::Poll::Ready(Some(event(TOKEN)))
        }));
        let mut body = drains.wrap(Observed::new(inner, Some(Resume::New), on_end), "user:a");
        assert!(body.frame().await.is_some(), "the client reads a token");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let _ = std::pin::Pin::new(&mut body).poll_frame(&mut cx);
        }));
        assert!(panicked.is_err());
        drop(body);
        assert_eq!(self::seen(&seen), vec![(StreamEnd::UpstreamFailed, 0)]);
        assert!(drains.background.is_empty(), "nothing read on");
    }

    #[tokio::test]
    async fn a_stream_left_before_any_token_is_not_read_on() {
        let (drains, _) = drains(Duration::from_secs(60));
        let (_tx, seen, _) = left_after(&drains, r#"{"event":"start","data":""}"#).await;
        assert_eq!(self::seen(&seen), vec![(StreamEnd::ClientGone, 0)]);
        assert!(drains.background.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_past_its_limit_is_abandoned_with_what_was_reported() {
        let limit = Duration::from_secs(30);
        let (drains, _) = drains(limit);
        let (tx, seen, left) = left_after(&drains, TOKEN).await;
        tx.unbounded_send(event(
            r#"{"event":"agentFlowExecutedData","data":[{"data":{"output":{"usageMetadata":{"total_tokens":3}}}}]}"#,
        ))
        .expect("send");
        let report = reported(&seen).await;
        assert_eq!(report, (StreamEnd::Abandoned, 3));
        assert!(left.elapsed() >= limit, "{:?}", left.elapsed());
        assert!(
            tx.unbounded_send(event("{}")).is_err(),
            "the upstream body is let go"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_stops_the_readings_after_its_grace() {
        let (drains, shutdown) = drains(Duration::from_secs(300));
        let (_tx, seen, _) = left_after(&drains, TOKEN).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(self::seen(&seen).is_empty(), "read on until the shutdown");
        let stopping = tokio::time::Instant::now();
        shutdown.cancel();
        assert_eq!(reported(&seen).await, (StreamEnd::Abandoned, 0));
        let stopped = stopping.elapsed();
        assert!(
            drains.grace <= stopped && stopped < drains.grace + Duration::from_secs(1),
            "{stopped:?}"
        );
    }

    #[tokio::test]
    async fn no_reading_starts_once_the_shutdown_began() {
        let (drains, shutdown) = drains(Duration::from_secs(300));
        shutdown.cancel();
        let (_tx, seen, _) = left_after(&drains, TOKEN).await;
        assert_eq!(self::seen(&seen), vec![(StreamEnd::ClientGone, 0)]);
        assert!(drains.background.is_empty());
    }

    #[tokio::test]
    async fn past_the_limit_of_readings_a_stream_is_not_read_on() {
        let (drains, _) = drains(Duration::from_secs(60));
        let mut open = Vec::new();
        for i in 0..MAX_DRAINS {
            open.push(left_by(&drains, &format!("user:{i}"), TOKEN).await);
        }
        assert_eq!(drains.running(), MAX_DRAINS);
        let (_tx, seen, _) = left_after(&drains, TOKEN).await;
        assert_eq!(self::seen(&seen), vec![(StreamEnd::ClientGone, 0)]);
        assert!(open.iter().all(|(_, seen, _)| self::seen(seen).is_empty()));
    }

    #[tokio::test]
    async fn one_caller_takes_at_most_its_share_of_the_readings() {
        let (drains, _) = drains(Duration::from_secs(60));
        let mut open = Vec::new();
        for _ in 0..MAX_DRAINS_PER_CALLER {
            open.push(left_after(&drains, TOKEN).await);
        }
        assert_eq!(drains.running(), MAX_DRAINS_PER_CALLER);
        // Alice's next is not read on; bob's is.
        let (_tx, seen, _) = left_after(&drains, TOKEN).await;
        assert_eq!(self::seen(&seen), vec![(StreamEnd::ClientGone, 0)]);
        let (_bob, bob_seen, _) = left_by(&drains, "user:bob", TOKEN).await;
        assert!(self::seen(&bob_seen).is_empty(), "bob's is read on");
        assert_eq!(drains.running(), MAX_DRAINS_PER_CALLER + 1);
        // One of alice's ends: her slot is free again.
        let (tx, first_seen, _) = open.remove(0);
        drop(tx);
        reported(&first_seen).await;
        let freed = async {
            while drains.running() != MAX_DRAINS_PER_CALLER {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the ended reading gives its slots back");
        let (_again, again_seen, _) = left_after(&drains, TOKEN).await;
        assert!(self::seen(&again_seen).is_empty(), "read on again");
    }

    #[test]
    fn without_a_runtime_a_stream_its_client_left_is_reported_at_once() {
        let (drains, _) = drains(Duration::from_secs(60));
        let (seen, on_end) = recorder();
        let (tx, inner) = fed();
        tx.unbounded_send(event(TOKEN)).expect("send");
        let mut body = drains.wrap(
            Observed::new(inner, Some(Resume::New), on_end),
            "user:alice",
        );
        let first = futures::executor::block_on(body.frame());
        assert!(first.is_some());
        drop(body);
        assert_eq!(self::seen(&seen), vec![(StreamEnd::ClientGone, 0)]);
    }

    #[tokio::test]
    async fn a_stream_that_ended_is_reported_once_and_not_read_on() {
        let (drains, _) = drains(Duration::from_secs(60));
        let (seen, on_end) = recorder();
        let (tx, inner) = fed();
        tx.unbounded_send(event(TOKEN)).expect("send");
        drop(tx);
        let body = drains.wrap(
            Observed::new(inner, Some(Resume::New), on_end),
            "user:alice",
        );
        assert!(body.collect().await.is_ok());
        assert_eq!(self::seen(&seen), vec![(StreamEnd::Completed, 0)]);
        assert!(drains.background.is_empty());
    }
}
