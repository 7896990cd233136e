//! Walks the ledger's prune calls to the end: everything older than a cutoff, a chunk at a time,
//! with a pause between chunks so that a large backlog (retention turned on for a ledger that
//! has grown for months) never stands long between the writer and the requests waiting on it.

use std::time::Duration;

use jiff::Timestamp;

use super::{CreditLedger, LONGEST_WINDOW, LedgerError, LedgerFuture, ReservationId};

/// Rows one prune call may delete.
pub const CHUNK: u32 = 1_000;

/// Time left to other writes between two chunks.
pub const PAUSE: Duration = Duration::from_millis(10);

/// What [`prune`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub reservations: u64,
    pub usage: u64,
    pub buckets: u64,
}

/// Deletes every closed reservation last changed before `before`, every usage row older than
/// it and every bucket whose window had ended by then (it started [`LONGEST_WINDOW`] earlier;
/// `Never` windows stay), `chunk` rows per call, sleeping `pause` between calls. Stops at the
/// first error: what was deleted before it stays deleted, and the next run starts over from the
/// oldest rows.
pub async fn prune(
    ledger: &dyn CreditLedger,
    before: Timestamp,
    chunk: u32,
    pause: Duration,
) -> Result<Pruned, LedgerError> {
    let mut pruned = Pruned::default();
    let mut after = ReservationId(0);
    loop {
        let step = ledger.prune_reservations(before, after, chunk).await?;
        pruned.reservations += step.deleted;
        let Some(next) = step.next else { break };
        after = next;
        tokio::time::sleep(pause).await;
    }
    pruned.usage = drain(chunk, pause, || ledger.prune_usage(before, chunk)).await?;
    if let Ok(ended) = before.checked_sub(LONGEST_WINDOW) {
        pruned.buckets = drain(chunk, pause, || ledger.prune_buckets(ended, chunk)).await?;
    }
    Ok(pruned)
}

/// Calls `delete` until it deletes fewer than a `chunk`, sleeping `pause` in between; how many
/// rows it deleted in all.
async fn drain<'a>(
    chunk: u32,
    pause: Duration,
    mut delete: impl FnMut() -> LedgerFuture<'a, u64>,
) -> Result<u64, LedgerError> {
    let mut total = 0;
    loop {
        let deleted = delete().await?;
        total += deleted;
        if deleted < u64::from(chunk) {
            return Ok(total);
        }
        tokio::time::sleep(pause).await;
    }
}
