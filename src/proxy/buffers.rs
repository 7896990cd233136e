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
//!   Flowise's connection. One caller's request bodies may count at most half the budget
//!   together (429 `body_memory_share` past it), so one caller cannot take all of it. A body that
//!   does not fit beside everyone's is refused with 503 `overloaded`, one that could never fit
//!   (more than half the budget) with 413, before anything is charged or sent. A declared length
//!   is only checked, not counted, so a client that declares much and sends little holds
//!   nothing.
//! - A JSON answer counts as it is read from Flowise, until the last of it is written to the
//!   client's connection, in the budget and in its caller's share. It is never refused — Flowise
//!   has run it, and it may be charged — but it counts: while answers fill the budget, or a
//!   caller's share, new request bodies (that caller's) are refused.
//!
//! A counted body is handed on as [`Bytes`] that own their hold ([`owning`]), so the count ends
//! when the memory is freed, wherever the last reference is. hyper copies what it writes into a
//! buffer of its own per connection (a message's head and body go out in one `write`), so a
//! whole body goes to it in slices of [`FRAME`] bytes ([`whole`]): the buffer stays, counted,
//! until its last slice is copied, and hyper's copy is bounded by its buffer's limit (~400 KiB a
//! connection), which is not counted, as the kernel's socket buffers are not.
//!
//! The count is the gauge `flowgate_body_buffer_bytes` itself, so exporting it costs nothing.

use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;

/// What a request body counts per byte: the body as read, and as rewritten for Flowise.
pub const REQUEST_WEIGHT: usize = 2;

/// Callers' shares are counted in this many slots, by a fixed hash of the caller: two callers in
/// one slot share its half. By chance that is rare while few callers hold large bodies at once;
/// a caller who can choose its identity's key could aim at another's slot (see docs/install.md).
const SLOTS: usize = 4096;

/// The budget, shared by every serving thread.
#[derive(Clone, Debug)]
pub struct Buffers(Arc<Budget>);

struct Budget {
    /// Bytes held now: the gauge `flowgate_body_buffer_bytes`.
    held: Gauge,
    limit: i64,
    /// Request bytes held now by the callers of each slot; at most half the budget each.
    callers: Box<[AtomicI64]>,
}

/// Why bytes could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// They do not fit now; they may once others are let go.
    Full,
    /// The caller's own bodies would take more than half the budget; they may once the caller's
    /// other requests are done.
    CallerFull,
    /// They are more than half the budget: they could never fit beside another caller's share.
    TooLarge,
}

impl Buffers {
    /// A budget of `limit` bytes, counted in `held` (a gauge of bytes held now).
    pub fn new(limit: usize, held: Gauge) -> Self {
        Self(Arc::new(Budget {
            held,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            callers: (0..SLOTS).map(|_| AtomicI64::new(0)).collect(),
        }))
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        usize::try_from(self.0.limit).unwrap_or(usize::MAX)
    }

    /// Bytes held now, by every request.
    pub fn in_use(&self) -> usize {
        usize::try_from(self.0.held.get()).unwrap_or(0)
    }

    /// An empty hold, to grow as an answer is read (never refused, no caller's share).
    pub fn hold(&self) -> Held {
        Held {
            budget: self.0.clone(),
            bytes: 0,
            slot: None,
        }
    }

    /// An empty hold for a request body of `caller` (an identity's key), which may take at most
    /// half the budget with the caller's other bodies.
    pub fn hold_for(&self, caller: &str) -> Held {
        let hash = foldhash::fast::FixedState::default().hash_one(caller);
        Held {
            budget: self.0.clone(),
            bytes: 0,
            slot: Some((hash % SLOTS as u64) as usize),
        }
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("held", &self.held.get())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// What one caller's request bodies may hold together.
    fn share(&self) -> i64 {
        self.limit / 2
    }

    fn slot(&self, slot: Option<usize>) -> Option<&AtomicI64> {
        slot.and_then(|slot| self.callers.get(slot))
    }
}

/// Bytes one request holds; let go when it is dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: i64,
    /// The caller's slot, for a request body's hold.
    slot: Option<usize>,
}

/// Adds `more` to `counter` if the total stays within `limit`.
fn add_within(counter: &AtomicI64, more: i64, limit: i64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(more).filter(|&total| total <= limit)
        })
        .is_ok()
}

impl Held {
    /// The most this hold may ever count.
    fn ceiling(&self) -> i64 {
        if self.slot.is_some() {
            self.budget.share()
        } else {
            self.budget.limit
        }
    }

    /// Counts `more` bytes if they fit in what the budget, and the caller's share, have left.
    pub fn try_grow(&mut self, more: usize) -> Result<(), Refused> {
        let more = i64::try_from(more).map_err(|_| Refused::TooLarge)?;
        if self.bytes.saturating_add(more) > self.ceiling() {
            return Err(Refused::TooLarge);
        }
        let caller = self.budget.slot(self.slot);
        if let Some(caller) = caller
            && !add_within(caller, more, self.budget.share())
        {
            return Err(Refused::CallerFull);
        }
        if !add_within(self.budget.held.inner(), more, self.budget.limit) {
            if let Some(caller) = caller {
                caller.fetch_sub(more, Ordering::AcqRel);
            }
            return Err(Refused::Full);
        }
        self.bytes += more;
        Ok(())
    }

    /// Whether `more` bytes would fit now, without counting them.
    pub fn check(&self, more: usize) -> Result<(), Refused> {
        let more = i64::try_from(more).map_err(|_| Refused::TooLarge)?;
        if self.bytes.saturating_add(more) > self.ceiling() {
            return Err(Refused::TooLarge);
        }
        if let Some(caller) = self.budget.slot(self.slot)
            && caller.load(Ordering::Acquire).saturating_add(more) > self.budget.share()
        {
            return Err(Refused::CallerFull);
        }
        if self.budget.held.get().saturating_add(more) > self.budget.limit {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Counts `more` bytes whether they fit or not (an answer already read).
    pub fn grow(&mut self, more: usize) {
        let more = i64::try_from(more).unwrap_or(i64::MAX);
        self.budget.held.inc_by(more);
        if let Some(caller) = self.budget.slot(self.slot) {
            caller.fetch_add(more, Ordering::AcqRel);
        }
        self.bytes = self.bytes.saturating_add(more);
    }

    /// Counts only `bytes` from now on, if that is less (what is left once a body was encoded).
    pub fn shrink_to(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes < self.bytes {
            self.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// A new, empty hold for the same caller (for the answer to the body this one holds).
    pub fn sibling(&self) -> Held {
        Held {
            budget: self.budget.clone(),
            bytes: 0,
            slot: self.slot,
        }
    }

    /// The bytes this hold counts.
    pub fn bytes(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(0)
    }

    /// The most this hold may ever count: half the budget for a request body (a caller's
    /// share), the whole budget for an answer.
    pub fn ceiling_bytes(&self) -> usize {
        usize::try_from(self.ceiling()).unwrap_or(usize::MAX)
    }

    fn release(&self, bytes: i64) {
        self.budget.held.dec_by(bytes);
        if let Some(caller) = self.budget.slot(self.slot) {
            caller.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes != 0 {
            self.release(self.bytes);
        }
    }
}

/// The largest slice of a whole body handed to hyper at a time ([`whole`]).
pub const FRAME: usize = 64 * 1024;

/// `bytes` as a body of slices of at most [`FRAME`] bytes, its length declared: hyper copies
/// each into its write buffer as there is room, so a body counted with [`owning`] stays counted
/// until the last of it is copied. (Handed whole, all of it would be copied at once and let go
/// of: held in memory, counted nowhere.)
pub fn whole(bytes: Bytes) -> crate::server::Body {
    Whole { rest: bytes }.boxed()
}

struct Whole {
    rest: Bytes,
}

impl hyper::body::Body for Whole {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(FRAME);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(u64::try_from(self.rest.len()).unwrap_or(u64::MAX))
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
    fn one_caller_holds_at_most_half_the_budget() {
        let buffers = budget(100);
        let mut alice = buffers.hold_for("user:alice-sub");
        alice.try_grow(40).expect("fits");
        let mut again = buffers.hold_for("user:alice-sub");
        assert_eq!(again.check(11), Err(Refused::CallerFull));
        assert_eq!(again.try_grow(11), Err(Refused::CallerFull));
        assert_eq!(
            again.try_grow(51),
            Err(Refused::TooLarge),
            "more than a share"
        );
        again.try_grow(10).expect("the rest of her half");
        let mut bob = buffers.hold_for("user:bob-sub");
        bob.try_grow(50).expect("his half");
        assert_eq!(buffers.in_use(), 100);
        // The budget is full: refused, and Carol's share keeps nothing of the attempt.
        let mut carol = buffers.hold_for("user:carol-sub");
        assert_eq!(carol.try_grow(1), Err(Refused::Full));
        drop(bob);
        carol.try_grow(50).expect("her whole half once Bob is done");
        // Answers count in the budget, not in a share.
        drop(carol);
        let mut answer = buffers.hold();
        answer.grow(40);
        assert_eq!(
            again.try_grow(1),
            Err(Refused::CallerFull),
            "Alice's share is full"
        );
        drop((alice, answer));
        again.shrink_to(5);
        let mut more = buffers.hold_for("user:alice-sub");
        more.try_grow(45)
            .expect("her share, less what she still holds");
        drop((again, more));
        assert_eq!(buffers.in_use(), 0);
        buffers
            .hold_for("user:alice-sub")
            .try_grow(50)
            .expect("her share let go");
        // An answer to her counts in her share: her next body waits for it, Bob's does not.
        let mut answer = buffers.hold_for("user:alice-sub").sibling();
        answer.grow(50);
        let error = buffers.hold_for("user:alice-sub").try_grow(1);
        assert_eq!(error, Err(Refused::CallerFull));
        buffers
            .hold_for("user:bob-sub")
            .try_grow(50)
            .expect("his half");
        drop(answer);
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
