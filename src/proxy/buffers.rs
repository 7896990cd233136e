//! One bound on the bodies all requests hold in memory together.
//!
//! A prediction's body is read whole before it is forwarded (it is rewritten to bind the chat),
//! and a JSON answer is read whole before it is passed back (its tokens are counted). Each has
//! its own size limit; [`Buffers`] bounds them together, so many large requests at once cannot
//! take the process past its memory limit.
//!
//! - A request body counts as its bytes arrive: [`REQUEST_WEIGHT`] times its size (the body as
//!   read and as rewritten for Flowise), plus its parsed JSON values (`body.rs`), until it is
//!   encoded for Flowise; then its encoded size, until Flowise's connection took the last of it.
//!   One that does not fit is refused with 503 `overloaded` before anything is charged or sent;
//!   one that could never fit (more than half the budget) with 413. A declared length is only
//!   checked, not counted, so a client that declares much and sends little holds nothing.
//! - An answer counts its size from when it has been read until all of it is handed to the
//!   client's connection (which then holds at most its write buffer). It is never refused —
//!   Flowise has run it, and it may be charged — but it counts: while answers fill the budget,
//!   new request bodies are refused.
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

/// How much of a counted body is handed out per frame: the hold ends with the last one.
const CHUNK: usize = 64 * 1024;

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

    /// Whether `more` bytes would fit now, without counting them.
    pub fn check(&self, more: usize) -> Result<(), Refused> {
        let more = i64::try_from(more).map_err(|_| Refused::TooLarge)?;
        if self.bytes.saturating_add(more) > self.budget.limit {
            return Err(Refused::TooLarge);
        }
        if self.budget.held.get().saturating_add(more) > self.budget.limit {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Counts `more` bytes whether they fit or not (bytes already read).
    pub fn grow(&mut self, more: usize) {
        let more = i64::try_from(more).unwrap_or(i64::MAX);
        self.budget.held.inc_by(more);
        self.bytes = self.bytes.saturating_add(more);
    }

    /// Counts only `bytes` from now on, if that is less (what is left once a body was encoded).
    pub fn shrink_to(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes < self.bytes {
            self.budget.held.dec_by(self.bytes - bytes);
            self.bytes = bytes;
        }
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

/// A whole body handed out in frames of [`CHUNK`], holding its bytes until the last frame is
/// taken (the connection's writer then holds at most its buffer) or the body is dropped.
pub struct HeldBytes {
    data: Bytes,
    held: Option<Held>,
}

impl HeldBytes {
    pub fn new(data: Bytes, held: Option<Held>) -> Self {
        Self { data, held }
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
        if this.data.is_empty() {
            this.held = None;
            return Poll::Ready(None);
        }
        let frame = this.data.split_to(this.data.len().min(CHUNK));
        if this.data.is_empty() {
            // The last of it: the writer's buffer has it now.
            this.held = None;
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
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

    #[test]
    fn a_check_counts_nothing() {
        let buffers = budget(100);
        let mut a = buffers.hold();
        a.try_grow(60).expect("fits");
        assert_eq!(a.check(40), Ok(()));
        // Past the budget with what this hold already has: it could never fit.
        assert_eq!(a.check(41), Err(Refused::TooLarge));
        // Another hold could, once `a` is gone.
        assert_eq!(buffers.hold().check(41), Err(Refused::Full));
        assert_eq!(buffers.hold().check(101), Err(Refused::TooLarge));
        assert_eq!(buffers.in_use(), 60);
    }

    #[test]
    fn a_hold_shrinks_to_what_is_left() {
        let buffers = budget(100);
        let mut a = buffers.hold();
        a.try_grow(80).expect("fits");
        a.shrink_to(30);
        assert_eq!((a.bytes(), buffers.in_use()), (30, 30));
        a.shrink_to(50);
        assert_eq!(buffers.in_use(), 30, "never grows");
        drop(a);
        assert_eq!(buffers.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_its_last_frame_is_taken() {
        let buffers = budget(1 << 20);
        let size = 2 * CHUNK + 10;
        let mut held = buffers.hold();
        held.grow(size);
        let mut body = HeldBytes::new(Bytes::from(vec![b'x'; size]), Some(held));
        assert_eq!(body.size_hint().exact(), Some(size as u64));
        for _ in 0..2 {
            let frame = body.frame().await.expect("a frame").expect("data");
            assert_eq!(frame.into_data().expect("data").len(), CHUNK);
            assert_eq!(buffers.in_use(), size, "held while frames are left");
        }
        let last = body.frame().await.expect("a frame").expect("data");
        assert_eq!(last.into_data().expect("data").len(), 10);
        assert_eq!(buffers.in_use(), 0, "let go with the last frame");
        assert!(body.is_end_stream() && body.frame().await.is_none());

        let mut held = buffers.hold();
        held.grow(size);
        let mut body = HeldBytes::new(Bytes::from(vec![b'x'; size]), Some(held));
        let _ = body.frame().await;
        drop(body);
        assert_eq!(buffers.in_use(), 0, "a client gone before reading it all");

        let empty = HeldBytes::new(Bytes::new(), None);
        assert!(empty.is_end_stream());
        assert_eq!(empty.collect().await.expect("read").to_bytes().len(), 0);
    }
}
