//! HTTP/2 answers are pumped to hyper through a one-frame channel whose send has a deadline.
//!
//! Over HTTP/1 a client that stops reading fills its socket, and the connection's write limit
//! ([`super::WRITE_STALL_LIMIT`]) ends it. Over HTTP/2 a client can stop granting flow-control
//! credit to one stream while its connection stays busy (pings answered, other streams read):
//! hyper then simply stops polling that stream's body, no write waits, and nothing would ever
//! let go of the answer — its stream from Flowise, its credit reservation, its body memory. So
//! the answer is read by a task of its own, which hands each frame over with a deadline; a
//! frame the client does not take in time drops the answer, as a client that hung up does (a
//! stream is aborted in Flowise and settled). The stream itself ends with an error, if the
//! client ever asks for more.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio_util::task::TaskTracker;

use super::Body;

/// What the pump hands over: a frame, the answer's failure, or its end.
enum Piece {
    Frame(Frame<Bytes>),
    Failed(std::io::Error),
    End,
}

/// `body`, read by a task of `tasks` and handed over one frame at a time, each within `limit`.
/// An answer with nothing to send is returned as it is.
pub(super) fn paced(
    body: Body,
    limit: Duration,
    tasks: &TaskTracker,
    open: super::StreamOpen,
) -> Body {
    if body.is_end_stream() {
        return body;
    }
    let hint = body.size_hint();
    let (tx, rx) = mpsc::channel(1);
    tasks.spawn(pump(body, tx, limit));
    Body::new(Paced {
        rx,
        hint,
        ended: false,
        _open: open,
    })
}

/// Reads `body` into `tx` until its end, the client's leaving, or a frame not taken in `limit`.
/// Returning drops the body.
async fn pump(mut body: Body, tx: mpsc::Sender<Piece>, limit: Duration) {
    loop {
        // The client may leave (hyper drops the stream) while Flowise is quiet: the answer is
        // let go then, not at Flowise's next frame.
        let piece = tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => Piece::Frame(frame),
                Some(Err(error)) => Piece::Failed(error),
                None => Piece::End,
            },
            () = tx.closed() => return,
        };
        let last = !matches!(piece, Piece::Frame(_));
        match tx.send_timeout(piece, limit).await {
            Ok(()) if last => return,
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::debug!(
                    ?limit,
                    "an HTTP/2 client granted no room for its answer in time; answer dropped"
                );
                return;
            }
            Err(SendTimeoutError::Closed(_)) => return,
        }
    }
}

/// The body hyper polls: the pump's frames, then its end; an error if the pump gave up.
struct Paced {
    rx: mpsc::Receiver<Piece>,
    hint: SizeHint,
    ended: bool,
    /// Its stream counts as open while hyper holds the answer.
    _open: super::StreamOpen,
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let piece = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(match piece {
            Some(Piece::Frame(frame)) => Some(Ok(frame)),
            Some(Piece::Failed(error)) => {
                self.ended = true;
                Some(Err(error))
            }
            Some(Piece::End) => {
                self.ended = true;
                None
            }
            None => {
                self.ended = true;
                Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took no more of the answer in time",
                )))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::{Full, StreamBody};

    use crate::server::tests::Dropped;

    fn tracker() -> TaskTracker {
        TaskTracker::new()
    }

    /// A stream of a connection of its own.
    fn open() -> super::super::StreamOpen {
        std::sync::Arc::new(super::super::Streams::default()).opened()
    }

    #[tokio::test]
    async fn frames_and_the_end_pass_through_in_order() {
        let frames = futures::stream::iter(
            ["a", "b", "c"].map(|s| Ok::<_, std::io::Error>(Frame::data(Bytes::from(s)))),
        );
        let body = paced(
            StreamBody::new(frames).boxed(),
            Duration::from_secs(5),
            &tracker(),
            open(),
        );
        let whole = body.collect().await.expect("whole").to_bytes();
        assert_eq!(whole, "abc");
    }

    #[tokio::test]
    async fn an_upstream_failure_reaches_the_client_as_a_failure() {
        let frames = futures::stream::iter([
            Ok(Frame::data(Bytes::from("a"))),
            Err(std::io::Error::other("Flowise went away")),
        ]);
        let body = paced(
            StreamBody::new(frames).boxed(),
            Duration::from_secs(5),
            &tracker(),
            open(),
        );
        let error = body.collect().await.expect_err("failed");
        assert_eq!(error.to_string(), "Flowise went away");
    }

    #[tokio::test]
    async fn an_empty_answer_is_not_pumped() {
        let tasks = tracker();
        let body = paced(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
            Duration::from_secs(5),
            &tasks,
            open(),
        );
        assert!(body.is_end_stream());
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_not_taken_in_time_drops_the_answer_and_fails_the_stream() {
        let (tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let guard = Dropped(Some(tx));
        let frames = futures::stream::repeat_with(move || {
            let _held = &guard;
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x")))
        });
        let mut body = paced(
            StreamBody::new(frames).boxed(),
            Duration::from_secs(60),
            &tracker(),
            open(),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"x")));
        // Not asked for more: the pump's next frame waits in the channel, the one after it
        // until the deadline.
        tokio::time::timeout(Duration::from_secs(61), dropped)
            .await
            .expect("the answer is let go at the deadline")
            .expect("dropped, not forgotten");
        let taken = body.frame().await.expect("the frame handed over before");
        assert!(taken.is_ok());
        let error = body
            .frame()
            .await
            .expect("then a failure")
            .expect_err("failed");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_leaves_lets_go_of_a_quiet_answer_at_once() {
        let (tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let guard = Dropped(Some(tx));
        // Flowise says nothing (an LLM still thinking).
        let frames = futures::stream::pending::<Result<Frame<Bytes>, std::io::Error>>();
        let frames = futures::StreamExt::map(frames, move |frame| {
            let _held = &guard;
            frame
        });
        let tasks = tracker();
        let body = paced(
            StreamBody::new(frames).boxed(),
            Duration::from_secs(3600),
            &tasks,
            open(),
        );
        tokio::task::yield_now().await;
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("let go when the client left")
            .expect("dropped, not forgotten");
    }
}
