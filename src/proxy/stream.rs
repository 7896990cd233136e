//! Streaming answers pass through frame by frame, never buffered. [`Observed`] wraps the
//! upstream body: it forwards every frame as it arrives, scans Server-Sent Events for Flowise's
//! token usage on the side, and reports how the stream ended — completed, failed upstream, or
//! abandoned by the client (dropped before the end) — exactly once. What the report starts may
//! hold back the stream's end until it is done ([`Settling`]): a keyed refund lands before the
//! client sees the end, so a prompt retry with the same key finds it free.
//! A stream whose charge waits for Flowise's token report may be read on after its client left
//! ([`super::drain`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::sse::{SseScanner, StreamUsage};
use super::usage::Resume;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Flowise sent the whole answer.
    Completed,
    /// The upstream connection failed mid-stream.
    UpstreamFailed,
    /// The client went away before the end.
    ClientGone,
    /// The client went away, and the rest was read without it until flowgate stopped reading
    /// ([`super::drain`]) before the end.
    Abandoned,
}

/// What a stream reported, once it ended.
#[derive(Debug)]
pub struct StreamReport {
    pub end: StreamEnd,
    /// Tokens Flowise reported (see [`SseScanner`]), to count off the request path.
    pub usage: StreamUsage,
    /// Flowise sent an `error` event (e.g. a key-bound chatflow without its key).
    pub error_event: bool,
    /// Flowise answered ([`SseScanner::answered`]): it streamed a token, ended without an
    /// error, stopped the run when asked, or a node list brought the caller an Agentflow node's
    /// output. However the stream ends after that (an error, a stall, a reset), the answer is
    /// not taken back.
    pub answered: bool,
    /// The client went away before the end (the rest may have been read without it).
    pub client_left: bool,
}

/// Work the end of a stream waits for before the client sees it.
pub type Settling = tokio::task::JoinHandle<()>;

/// Longest a stream's end waits for its [`Settling`]: with the ledger down, a refund retries for
/// minutes, and the client has had every event.
const SETTLING_WAIT: std::time::Duration = super::credits::KEYED_REFUND_WAIT;

type OnEnd = Box<dyn FnOnce(StreamReport) -> Option<Settling> + Send + Sync>;

/// The last item of a stream, held back while its [`Settling`] runs.
type Last = Option<Result<Frame<Bytes>, std::io::Error>>;

/// Whether an answer is a Server-Sent Events stream (`Content-Type: text/event-stream`).
pub fn is_event_stream(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// An upstream body passed through unchanged while being watched.
pub struct Observed<B> {
    inner: B,
    scanner: SseScanner,
    on_end: Option<OnEnd>,
    /// The end, waiting for its settling, at most until the deadline.
    held: Option<Held>,
    /// The client went away and the stream is read on without it.
    client_left: bool,
    /// How long Flowise may send nothing before the stream counts as failed.
    stall: Option<Stall>,
    /// The stream failed upstream and its [`failure_event`] went out: nothing follows.
    closed: bool,
    /// Inside `poll_frame`: dropped so, the poll panicked (hyper's connection task died with
    /// it), which is flowgate's failure, not a client gone.
    polling: bool,
}

/// The watch for a stream Flowise stopped sending events on (its `:heartbeat` comments do not
/// count): the timer is moved only when it fires (an event just records its time), so a fast
/// stream costs a clock read per frame.
struct Stall {
    limit: std::time::Duration,
    last_event: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Stall {
    /// Whether Flowise has sent no event for the whole limit; if not, the timer is set for when
    /// it will have (and wakes `cx` then).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_event + self.limit;
            if due <= tokio::time::Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

struct Held {
    settling: Settling,
    deadline: Pin<Box<tokio::time::Sleep>>,
    last: Last,
}

impl<B> Observed<B> {
    /// Wraps `inner`, the stream of a prediction that continues `resume` (`None`: nobody
    /// prices its tokens, which are not counted); `on_end` runs once when the stream ends or is
    /// dropped, and the end reaches the client once what it returns is done.
    pub fn new(
        inner: B,
        resume: Option<Resume>,
        on_end: impl FnOnce(StreamReport) -> Option<Settling> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            scanner: resume.map_or_else(SseScanner::uncounted, SseScanner::resuming),
            on_end: Some(Box::new(on_end)),
            held: None,
            client_left: false,
            stall: None,
            closed: false,
            polling: false,
        }
    }

    /// Fails the stream once Flowise has sent no event for `limit` (a hung run would otherwise
    /// hold its client, its connection and its reservation for ever).
    pub fn stalls_after(mut self, limit: std::time::Duration) -> Self {
        let now = tokio::time::Instant::now();
        self.stall = Some(Stall {
            limit,
            last_event: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        });
        self
    }

    /// Counts what its scanner keeps in `memory` ([`SseScanner::counting_in`]).
    pub fn counting_in(mut self, memory: super::buffers::Held) -> Self {
        self.scanner = std::mem::take(&mut self.scanner).counting_in(memory);
        self
    }

    /// The client went away; the stream is read on without it.
    pub(super) fn left(&mut self) {
        self.client_left = true;
    }

    /// Whether the end was reported (the stream ended, or failed).
    pub(super) fn reported(&self) -> bool {
        self.on_end.is_none()
    }

    /// Whether Flowise began to answer: it streamed a token, ended without an error, or
    /// stopped the run when asked ([`SseScanner::answering`]).
    pub(super) fn answering(&self) -> bool {
        self.scanner.answering()
    }

    /// Whether a poll of it never returned: it panicked, and the stream failed on flowgate's side.
    pub(super) fn panicked(&self) -> bool {
        self.polling
    }

    /// Reports the stream [`StreamEnd::Abandoned`] unless it already reported its end.
    pub(super) fn abandon(&mut self) {
        let _ = self.finish(StreamEnd::Abandoned);
    }

    fn finish(&mut self, end: StreamEnd) -> Option<Settling> {
        let on_end = self.on_end.take()?;
        if end == StreamEnd::Completed {
            self.scanner.finish();
        } else {
            // Cut before its end: the text since Flowise's last report was never reported.
            self.scanner.cut();
        }
        on_end(StreamReport {
            end,
            error_event: self.scanner.failed(),
            answered: self.scanner.answered(),
            usage: self.scanner.take_usage(),
            client_left: self.client_left
                || matches!(end, StreamEnd::ClientGone | StreamEnd::Abandoned),
        })
    }

    /// Ends the stream with `last`, once the settling `finish` started (if any) is done.
    fn end(&mut self, end: StreamEnd, last: Last, cx: &mut Context<'_>) -> Poll<Last> {
        match self.finish(end) {
            None => Poll::Ready(last),
            Some(settling) => {
                self.held = Some(Held {
                    settling,
                    deadline: Box::pin(tokio::time::sleep(SETTLING_WAIT)),
                    last,
                });
                self.release(cx)
            }
        }
    }

    /// Ends a stream Flowise failed with its [`failure_event`], saying `what` happened.
    fn fail(&mut self, what: &str, cx: &mut Context<'_>) -> Poll<Last> {
        self.closed = true;
        let lead = self.scanner.unfinished_event_end();
        let last = Some(Ok(failure_event(lead, what)));
        self.end(StreamEnd::UpstreamFailed, last, cx)
    }

    fn release(&mut self, cx: &mut Context<'_>) -> Poll<Last> {
        let Some(held) = self.held.as_mut() else {
            return Poll::Ready(None);
        };
        // The task logs its own failure; either way the end goes out, at the latest at the
        // deadline (the settling then runs on by itself).
        if Pin::new(&mut held.settling).poll(cx).is_pending() {
            std::task::ready!(held.deadline.as_mut().poll(cx));
            tracing::warn!(
                ?SETTLING_WAIT,
                "a stream's end went out before its refund landed"
            );
        }
        Poll::Ready(self.held.take().and_then(|held| held.last))
    }
}

/// The last event of a stream Flowise failed: an `error` event in Flowise's own form, as Flowise
/// sends when a run fails, so a client reads it as it reads Flowise's own failures (and never as
/// a whole answer: no `end` event follows). `lead` first ends the event the failure cut short,
/// if it did ([`SseScanner::unfinished_event_end`]).
fn failure_event(lead: &str, what: &str) -> Frame<Bytes> {
    let message = serde_json::Value::String(format!("flowgate: {what}"));
    let event = format!("{lead}message:\ndata:{{\"event\":\"error\",\"data\":{message}}}\n\n");
    Frame::data(Bytes::from(event))
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // A poll that never returned panicked: the stream failed on flowgate's side, and is
        // charged (or refunded) as one Flowise broke off, not as one its client left.
        let end = if self.polling {
            tracing::error!("flowgate failed while streaming an answer; the stream is cut");
            StreamEnd::UpstreamFailed
        } else {
            StreamEnd::ClientGone
        };
        // A settling started here runs on by itself: no one waits for this end.
        let _ = self.finish(end);
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polling = true;
        let polled = self.as_mut().poll_watched(cx);
        self.polling = false;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.closed || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.held.is_some() {
            // The held last frame is no longer counted by the inner body.
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

impl<B> Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// [`Body::poll_frame`], watched.
    fn poll_watched(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.held.is_some() {
            return self.release(cx);
        }
        if self.closed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let content = frame.data_ref().is_some_and(|data| self.scanner.feed(data));
                // Only an event restarts the stall clock: Flowise writes `:heartbeat` to every
                // open stream, a run hung inside it included.
                if content && let Some(stall) = self.stall.as_mut() {
                    stall.last_event = tokio::time::Instant::now();
                }
                // A body of known length is not polled past its last byte: hyper drops it then,
                // which must not read as a client gone. Its last frame is the end.
                if self.inner.is_end_stream() {
                    return self.end(StreamEnd::Completed, Some(Ok(frame)), cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "the stream from Flowise broke off");
                self.fail(&format!("the stream from Flowise broke off: {error}"), cx)
            }
            Poll::Ready(None) => self.end(StreamEnd::Completed, None, cx),
            Poll::Pending => {
                let Some(limit) = self
                    .stall
                    .as_mut()
                    .and_then(|stall| stall.expired(cx).then_some(stall.limit))
                else {
                    return Poll::Pending;
                };
                tracing::warn!(
                    ?limit,
                    "Flowise sent no event for too long; the stream is cut"
                );
                self.fail(&format!("Flowise sent no event for {limit:?}"), cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, StreamBody};

    fn chunks(
        parts: Vec<Result<&'static str, std::io::Error>>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        StreamBody::new(futures::stream::iter(
            parts
                .into_iter()
                .map(|p| p.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))),
        ))
    }

    /// A report as a test compares it: its tokens counted.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        end: StreamEnd,
        tokens: u64,
        error_event: bool,
        answered: bool,
    }

    fn recorder() -> (
        Arc<Mutex<Vec<Seen>>>,
        impl FnOnce(StreamReport) -> Option<Settling> + Send + Sync + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |r: StreamReport| {
            sink.lock().expect("lock").push(Seen {
                end: r.end,
                tokens: r.usage.tokens(),
                error_event: r.error_event,
                answered: r.answered,
            });
            None
        })
    }

    #[tokio::test]
    async fn frames_pass_through_unchanged_and_the_end_is_reported_once() {
        let (seen, on_end) = recorder();
        let body = Observed::new(
            chunks(vec![
                Ok(
                    "message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":7}}\n\n",
                ),
                Ok("x"),
            ]),
            Some(Resume::New),
            on_end,
        );
        let bytes = body.collect().await.expect("collects").to_bytes();
        assert!(bytes.ends_with(b"x"));
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(
            reports,
            vec![Seen {
                end: StreamEnd::Completed,
                tokens: 7,
                error_event: false,
                answered: false
            }]
        );
    }

    #[tokio::test]
    async fn a_body_of_known_length_served_by_hyper_is_reported_completed() {
        // hyper stops polling a body whose `is_end_stream` says so; the end must still be seen.
        let (seen, on_end) = recorder();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let on_end = Arc::new(Mutex::new(Some(on_end)));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = hyper::service::service_fn(move |_req| {
                let on_end = on_end.lock().expect("lock").take().expect("one request");
                let body = http_body_util::Full::new(Bytes::from_static(
                    b"message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n",
                ));
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Observed::new(
                        body,
                        Some(Resume::New),
                        on_end,
                    )))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::new(http_body_util::Empty::<Bytes>::new());
        let resp = sender.send_request(req).await.expect("answer");
        assert!(resp.headers().contains_key(hyper::header::CONTENT_LENGTH));
        resp.into_body().collect().await.expect("body");
        // The server reports once it is done with the body; give it a moment.
        for _ in 0..100 {
            if !seen.lock().expect("lock").is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].end, StreamEnd::Completed);
        assert!(reports[0].answered);
    }

    /// A poll that panics is flowgate's failure: the body dropped after it (as tokio drops a
    /// task that panicked, the panic already caught) reports the stream failed, not its client
    /// gone, which would charge it.
    #[tokio::test]
    async fn a_stream_dropped_by_a_panic_in_its_poll_reports_a_failure() {
        let (seen, on_end) = recorder();
        let panicking = StreamBody::new(futures::stream::poll_fn(
            |_| -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> { panic!("a bug") },
        ));
        let mut body = Observed::new(panicking, Some(Resume::New), on_end);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = Pin::new(&mut body).poll_frame(&mut cx);
        }));
        assert!(caught.is_err(), "the poll panicked");
        drop(body);
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].end, StreamEnd::UpstreamFailed);
        // Dropped between polls, it is the client that left.
        let (seen, on_end) = recorder();
        let mut body = Observed::new(chunks(vec![Ok("a"), Ok("b")]), Some(Resume::New), on_end);
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::ClientGone);
    }

    #[tokio::test]
    async fn the_end_waits_for_the_settling_it_started() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut body = Observed::new(chunks(vec![Ok("a")]), Some(Resume::New), move |_| {
            Some(tokio::spawn(async move {
                let _ = released.await;
            }))
        });
        assert!(body.frame().await.is_some(), "the frame passes at once");
        let mut end = Box::pin(body.frame());
        assert!(
            futures::poll!(&mut end).is_pending(),
            "the end waits for the settling"
        );
        release.send(()).expect("settling waits");
        assert!(end.await.is_none(), "then the stream ends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_waits_for_its_settling_at_most_a_few_seconds() {
        let mut body = Observed::new(chunks(vec![]), Some(Resume::New), move |_| {
            Some(tokio::spawn(std::future::pending::<()>()))
        });
        let started = tokio::time::Instant::now();
        assert!(body.frame().await.is_none(), "the stream ends regardless");
        assert_eq!(started.elapsed(), SETTLING_WAIT);
    }

    #[tokio::test]
    async fn an_agentflow_cut_after_its_text_is_charged_that_text() {
        let (seen, on_end) = recorder();
        let mut body = Observed::new(
            chunks(vec![
                Ok("message:\ndata:{\"event\":\"agentFlowEvent\",\"data\":\"INPROGRESS\"}\n\n"),
                Ok("message:\ndata:{\"event\":\"token\",\"data\":\"four score\"}\n\n"),
                Ok(
                    "message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":7}}\n\n",
                ),
            ]),
            Some(Resume::New),
            on_end,
        );
        for _ in 0..2 {
            assert!(body.frame().await.is_some());
        }
        // Gone before the report: 10 bytes of text, 3 tokens.
        drop(body);
        let seen = seen.lock().expect("lock");
        assert_eq!((seen[0].end, seen[0].tokens), (StreamEnd::ClientGone, 3));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_reported() {
        let (seen, on_end) = recorder();
        let mut body = Observed::new(chunks(vec![Ok("a"), Ok("b")]), Some(Resume::New), on_end);
        let first = body.frame().await;
        assert!(first.is_some());
        drop(body);
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::ClientGone);
    }

    /// Frames sent `gaps` apart (each gap before its frame), then a stream that never ends.
    fn paced(
        gaps: Vec<std::time::Duration>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        paced_frames(
            gaps.into_iter()
                .map(|gap| (gap, &b"data:x\n\n"[..]))
                .collect(),
        )
    }

    /// Each frame after its gap, then a stream that never ends.
    fn paced_frames(
        frames: Vec<(std::time::Duration, &'static [u8])>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames = futures::stream::unfold(frames.into_iter(), |mut frames| async move {
            let (gap, frame) = frames.next()?;
            tokio::time::sleep(gap).await;
            Some((Ok(Frame::data(Bytes::from_static(frame))), frames))
        });
        StreamBody::new(Box::pin(futures::StreamExt::chain(
            frames,
            futures::stream::pending(),
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_flowise_stops_sending_fails_after_the_stall_limit() {
        let (seen, on_end) = recorder();
        let limit = std::time::Duration::from_secs(300);
        // Steady frames, each just inside the limit, then silence.
        let gaps = vec![limit - std::time::Duration::from_secs(1); 3];
        let mut body = Observed::new(paced(gaps), Some(Resume::New), on_end).stalls_after(limit);
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(
                matches!(body.frame().await, Some(Ok(_))),
                "a frame in time passes"
            );
        }
        let last_sent = started.elapsed();
        let last = body.frame().await;
        let event = last_event(last);
        assert!(
            event.contains("Flowise sent no event for 300s"),
            "the silence ends in an error event saying so: {event}"
        );
        assert!(body.frame().await.is_none(), "and nothing after it");
        assert_eq!(
            started.elapsed() - last_sent,
            limit,
            "measured from the last frame"
        );
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].end, StreamEnd::UpstreamFailed);
    }

    /// A run hung inside Flowise: its stream stays open, and Flowise writes `:heartbeat` to it
    /// every 30 s. The stall clock runs from the last event, not the last comment.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_do_not_keep_a_silent_run_open() {
        let (seen, on_end) = recorder();
        let limit = std::time::Duration::from_secs(300);
        let second = std::time::Duration::from_secs(1);
        let mut frames = vec![(second, &b"message:\ndata:{\"event\":\"start\"}\n\n"[..])];
        frames.extend(std::iter::repeat_n(
            (29 * second, &b":heartbeat\n\n"[..]),
            20,
        ));
        let mut body =
            Observed::new(paced_frames(frames), Some(Resume::New), on_end).stalls_after(limit);
        assert!(matches!(body.frame().await, Some(Ok(_))), "the event");
        let event_at = tokio::time::Instant::now();
        let mut heartbeats = 0;
        let last = loop {
            let frame = body.frame().await;
            match frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                Some(data) if data.starts_with(b":heartbeat") => heartbeats += 1,
                _ => break frame,
            }
        };
        assert!(
            last_event(last).contains("Flowise sent no event for 300s"),
            "the silence ends in an error event"
        );
        assert_eq!(event_at.elapsed(), limit, "measured from the event");
        assert_eq!(heartbeats, 10, "the heartbeats before it passed through");
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::UpstreamFailed);
    }

    #[tokio::test]
    async fn an_upstream_failure_is_reported() {
        let (seen, on_end) = recorder();
        let body = Observed::new(
            chunks(vec![
                Ok("message:\ndata:{\"event\":\"token\",\"da"),
                Err(std::io::Error::other("reset")),
            ]),
            Some(Resume::New),
            on_end,
        );
        let text = body.collect().await.expect("ends cleanly").to_bytes();
        let text = String::from_utf8_lossy(&text);
        // The half-sent event is ended first, then the error event follows whole.
        let (cut, last) = text.split_once("\n\n").expect("the cut event is ended");
        assert_eq!(cut, "message:\ndata:{\"event\":\"token\",\"da");
        assert_eq!(
            last,
            "message:\ndata:{\"event\":\"error\",\
             \"data\":\"flowgate: the stream from Flowise broke off: reset\"}\n\n"
        );
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::UpstreamFailed);
    }

    #[tokio::test]
    async fn a_failure_at_an_events_end_adds_no_blank_line() {
        // A blank line is an empty event to Flowise's chat embed, which fails to parse it.
        let (_, on_end) = recorder();
        let token = "message:\ndata:{\"event\":\"token\",\"data\":\"Hi\"}\n\n";
        let body = Observed::new(
            chunks(vec![Ok(token), Err(std::io::Error::other("reset"))]),
            Some(Resume::New),
            on_end,
        );
        let text = body.collect().await.expect("ends cleanly").to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(
            text.strip_prefix(token),
            Some(
                "message:\ndata:{\"event\":\"error\",\
                 \"data\":\"flowgate: the stream from Flowise broke off: reset\"}\n\n"
            ),
            "{text:?}"
        );
    }

    /// The text of the data frame `frame` is, which must be an error event.
    fn last_event(frame: Option<Result<Frame<Bytes>, std::io::Error>>) -> String {
        let data = frame
            .and_then(Result::ok)
            .and_then(|frame| frame.into_data().ok())
            .expect("a data frame");
        let text = String::from_utf8_lossy(&data).into_owned();
        assert!(text.contains("\"event\":\"error\""), "{text}");
        text
    }
}
