//! One bound on the bodies all requests hold in memory together.
//!
//! A prediction's body is read whole before it is forwarded (it is rewritten to bind the chat),
//! and a JSON answer is read whole before it is passed back (its tokens are counted). Each has
//! its own size limit; [`Buffers`] bounds them together, so many large requests at once cannot
//! take the process past its memory limit.
//!
//! - A request body counts as its bytes arrive: [`REQUEST_WEIGHT`] times its size (the body as
//!   read and as rewritten for Flowise), plus its parsed JSON values (`body.rs`), until it is
//!   encoded for Flowise; then the encoded body's allocation, until the last of it is written to
//!   Flowise's connection. One that does not fit is refused with 503 `overloaded` before anything
//!   is charged or sent; one that could never fit (more than half the budget) with 413. A
//!   declared length is only checked, not counted, so a client that declares much and sends
//!   little holds nothing.
//! - A JSON answer counts as it is read from Flowise, until the last of it is written to the
//!   client's connection. It is never refused — Flowise has run it, and it may be charged — but
//!   it counts: while answers fill the budget, new request bodies are refused.
//!
//! A counted body is handed on as [`Bytes`] that own their hold ([`owning`]), so the count ends
//! when the memory is freed, wherever the last reference is (hyper's write queue included). The
//! kernel's socket buffers are not counted.
//!
//! The count is the gauge `flowgate_body_buffer_bytes` itself, so exporting it costs nothing.

use std::sync::atomic::Ordering;

use bytes::Bytes;
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

/// `data` as [`Bytes`] that count in `held` until the last reference to them is dropped.
pub fn owning<T>(data: T, held: Held) -> Bytes
where
    T: AsRef<[u8]> + Send + 'static,
{
    Bytes::from_owner(Owned { data, _held: held })
}

/// The owner behind [`owning`]'s bytes.
struct Owned<T> {
    data: T,
    _held: Held,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Owned<T> {
    fn as_ref(&self) -> &[u8] {
        self.data.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn bytes_count_until_their_last_reference_is_dropped() {
        let buffers = budget(100);
        let mut held = buffers.hold();
        held.grow(40);
        let bytes = owning(vec![b'x'; 40], held);
        let tail = bytes.slice(30..);
        drop(bytes);
        assert_eq!(buffers.in_use(), 40, "a slice keeps the whole allocation");
        assert_eq!(&tail[..], &[b'x'; 10]);
        drop(tail);
        assert_eq!(buffers.in_use(), 0);
    }
}
