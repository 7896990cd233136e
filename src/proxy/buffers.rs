//! One bound on the bodies all requests hold in memory together.
//!
//! A prediction's body is read whole before it is forwarded (it is rewritten to bind the chat),
//! and a JSON answer is read whole before it is passed back (its tokens are counted). Each has
//! its own size limit; [`Buffers`] bounds them together, so many large requests at once cannot
//! take the process past its memory limit.
//!
//! - A request body counts [`REQUEST_WEIGHT`] times its size (the body as read and as rewritten
//!   for Flowise) from its first bytes until Flowise has answered. One that does not fit is
//!   refused with 503 `overloaded` before anything is charged or sent; one that could never fit
//!   (larger than the whole budget) with 413.
//! - An answer counts its size from when it has been read until the client has read it. It is
//!   never refused — Flowise has run it, and it may be charged — but it counts: while answers
//!   fill the budget, new request bodies are refused.
//!
//! The count is the gauge `flowgate_body_buffer_bytes` itself, so exporting it costs nothing.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;

/// What a request body counts per byte: the body as read, and as rewritten for Flowise.
pub const REQUEST_WEIGHT: usize = 2;

/// The budget, shared by every serving thread.
#[derive(Clone, Debug)]
pub struct Buffers {
    held: Gauge,
    limit: i64,
}

/// Why bytes could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// They do not fit now; they may once others are let go.
    Full,
    /// They are more than the whole budget.
    TooLarge,
}

impl Buffers {
    /// A budget of `limit` bytes, counted in `held` (a gauge of bytes held now).
    pub fn new(limit: usize, held: Gauge) -> Self {
        Self {
            held,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(usize::MAX)
    }

    /// Bytes held now, by every request.
    pub fn in_use(&self) -> usize {
        usize::try_from(self.held.get()).unwrap_or(0)
    }

    /// An empty hold, to grow as a body is read.
    pub fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes one request holds; let go when it is dropped.
#[derive(Debug)]
pub struct Held {
    budget: Buffers,
    bytes: i64,
}

impl Held {
    /// Counts `more` bytes if they fit in what the budget has left.
    pub fn try_grow(&mut self, more: usize) -> Result<(), Refused> {
        let more = i64::try_from(more).map_err(|_| Refused::TooLarge)?;
        if self.bytes.saturating_add(more) > self.budget.limit {
            return Err(Refused::TooLarge);
        }
        let limit = self.budget.limit;
        self.budget
            .held
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&total| total <= limit)
            })
            .map_err(|_| Refused::Full)?;
        self.bytes += more;
        Ok(())
    }

    /// Counts `more` bytes whether they fit or not (bytes already read).
    pub fn grow(&mut self, more: usize) {
        let more = i64::try_from(more).unwrap_or(i64::MAX);
        self.budget.held.inc_by(more);
        self.bytes = self.bytes.saturating_add(more);
    }

    /// The bytes this hold counts.
    pub fn bytes(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(0)
    }

    /// The whole budget's size.
    pub fn budget_limit(&self) -> usize {
        self.budget.limit()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes != 0 {
            self.budget.held.dec_by(self.bytes);
        }
    }
}

/// A whole answer in one frame, holding its bytes in the budget until it is read or dropped.
pub struct HeldBytes {
    data: Option<Bytes>,
    held: Option<Held>,
}

impl HeldBytes {
    pub fn new(data: Bytes, held: Held) -> Self {
        Self {
            data: Some(data).filter(|d| !d.is_empty()),
            held: Some(held),
        }
    }
}

impl Body for HeldBytes {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = this.data.take().map(|data| Ok(Frame::data(data)));
        // Handed to the connection's writer: no longer ours to count.
        this.held = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn budget(limit: usize) -> Buffers {
        Buffers::new(limit, Gauge::default())
    }

    #[test]
    fn bytes_that_fit_are_counted_until_their_hold_is_dropped() {
        let buffers = budget(100);
        let mut a = buffers.hold();
        a.try_grow(60).expect("fits");
        a.try_grow(20).expect("fits");
        assert_eq!((a.bytes(), buffers.in_use()), (80, 80));
        let mut b = buffers.hold();
        assert_eq!(b.try_grow(21), Err(Refused::Full));
        b.try_grow(20).expect("the rest fits");
        assert_eq!(buffers.in_use(), 100);
        drop(a);
        assert_eq!(buffers.in_use(), 20);
        b.try_grow(70).expect("room again");
        drop(b);
        assert_eq!(buffers.in_use(), 0);
    }

    #[test]
    fn more_than_the_whole_budget_is_too_large_not_full() {
        let buffers = budget(100);
        let mut a = buffers.hold();
        assert_eq!(a.try_grow(101), Err(Refused::TooLarge));
        a.try_grow(50).expect("fits");
        assert_eq!(a.try_grow(51), Err(Refused::TooLarge));
        assert_eq!(a.try_grow(usize::MAX), Err(Refused::TooLarge));
        assert_eq!(buffers.in_use(), 50);
    }

    #[test]
    fn answers_count_past_the_budget_and_keep_new_bodies_out() {
        let buffers = budget(100);
        let mut answer = buffers.hold();
        answer.grow(150);
        assert_eq!(buffers.in_use(), 150);
        let mut request = buffers.hold();
        assert_eq!(request.try_grow(1), Err(Refused::Full));
        drop(answer);
        request.try_grow(100).expect("room once the answer is gone");
        assert_eq!(buffers.in_use(), 100);
    }

    #[tokio::test]
    async fn an_answer_body_lets_go_of_its_bytes_once_it_is_read() {
        let buffers = budget(100);
        let mut held = buffers.hold();
        held.grow(5);
        let body = HeldBytes::new(Bytes::from_static(b"hello"), held);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(buffers.in_use(), 5);
        let read = body.collect().await.expect("read").to_bytes();
        assert_eq!(&read[..], b"hello");
        assert_eq!(buffers.in_use(), 0);

        let mut held = buffers.hold();
        held.grow(7);
        drop(HeldBytes::new(Bytes::from_static(b"dropped"), held));
        assert_eq!(buffers.in_use(), 0, "a client gone before reading");
    }
}
