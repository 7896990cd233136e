//! What the replicas of a PostgreSQL ledger share besides budgets (rate allowances, chat turns),
//! and what each replica does while the database cannot be asked: keeps its own, as it does on
//! SQLite (one replica). A slow database must not hold every request, so an ask is bounded, and
//! after a failure a replica keeps its own for a few seconds before asking again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::ledger::{CreditLedger, LedgerFuture};

/// Longest a request waits for the shared state before its replica keeps its own.
const SHARED_WAIT: Duration = Duration::from_secs(1);
/// How long a replica keeps its own after the shared state failed it, before asking again
/// (milliseconds).
const LOCAL_AFTER_FAILURE_MS: u64 = 5_000;
/// Least time between two warnings of one kind (seconds).
const WARN_EVERY_SECS: i64 = 10;

/// One kind of shared state.
pub struct Replicas {
    ledger: Option<Arc<dyn CreditLedger>>,
    /// Logged when the ledger fails an ask: what the replica does instead.
    alone: &'static str,
    /// When the last failure was logged (seconds since the epoch).
    warned_at: AtomicI64,
    /// Until when (milliseconds after `started`) the ledger is not asked after a failure.
    local_until: AtomicU64,
    /// The monotonic clock `local_until` counts from.
    started: Instant,
}

impl Replicas {
    /// This replica alone: nothing is asked.
    pub fn alone() -> Self {
        Self::new(None, "")
    }

    /// Shared through `ledger` where it shares (PostgreSQL); `alone` says what a replica does
    /// while it cannot be asked.
    pub fn sharing(ledger: Arc<dyn CreditLedger>, alone: &'static str) -> Self {
        Self::new(Some(ledger), alone)
    }

    fn new(ledger: Option<Arc<dyn CreditLedger>>, alone: &'static str) -> Self {
        Self {
            ledger,
            alone,
            warned_at: AtomicI64::new(0),
            local_until: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The ledger's answer to `ask`, within [`SHARED_WAIT`]; `None` when this replica is on its
    /// own: the ledger does not share, or failed this ask or one in the last few seconds.
    pub async fn ask<'a, T>(
        &'a self,
        ask: impl FnOnce(&'a dyn CreditLedger) -> LedgerFuture<'a, Option<T>>,
    ) -> Option<T> {
        let ledger = self.ledger.as_deref()?;
        if self.millis() < self.local_until.load(Ordering::Relaxed) {
            return None;
        }
        let error = match tokio::time::timeout(SHARED_WAIT, ask(ledger)).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} s", SHARED_WAIT.as_secs()),
        };
        self.local_until
            .store(self.millis() + LOCAL_AFTER_FAILURE_MS, Ordering::Relaxed);
        let now = Timestamp::now().as_second();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_SECS
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%error, "{}", self.alone);
        }
        None
    }

    /// The ledger asked, where there is one.
    pub fn ledger(&self) -> Option<&Arc<dyn CreditLedger>> {
        self.ledger.as_ref()
    }

    /// Milliseconds since this was made, on the monotonic clock.
    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
