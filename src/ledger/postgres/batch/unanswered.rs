//! A batch whose COMMIT went out and whose answer never came back (the connection broke, the
//! server restarted, a timeout): applied or rolled back, that connection cannot tell. Failing
//! every operation, as if it had rolled back, would leave its reservations charged for
//! predictions never forwarded when it had in fact committed; rerunning them would charge twice.
//!
//! So the writer asks on another connection. It first waits for the batch's transaction to end:
//! it locks what the batch locked (the reservations it closed, then the buckets it changed, in
//! the batch's order), which blocks while the old transaction still holds them and returns once
//! PostgreSQL has committed or rolled it back. Then one row tells which: a reservation the batch
//! created exists, or one it closed is in the state, stamped with the time, the batch wrote.
//! Applied, every caller gets the answer the batch had decided; rolled back, every operation
//! runs again. The check is tried again for up to [`CHECK_FOR`] while the database is
//! unreachable or a lock is not granted; still unknowable then, the batch fails as before, and
//! says so in the log.

use std::time::Duration;

use tokio::time::Instant;

use tokio_postgres::Client;

use super::super::pool::Pool;
use super::{Answers, Closing, Key, lock_buckets};
use crate::ledger::{LedgerError, ReserveOutcome};

/// How long the check waits for a lock the unanswered transaction may still hold (a server that
/// has not yet noticed the old connection is gone).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long the check is tried (a server restarting, a failover), its writer waiting meanwhile.
const CHECK_FOR: Duration = Duration::from_secs(60);

/// What a batch had decided and wrote, kept for the check.
pub(super) struct Unanswered {
    answers: Answers,
    /// The reservations the batch closed, in id order.
    closed: Vec<i64>,
    /// The buckets it wrote.
    buckets: Vec<(String, String, i64)>,
    /// A row the batch wrote that no other transaction writes the same way.
    marker: Option<Marker>,
}

enum Marker {
    /// A reservation the batch created.
    Created(i64),
    /// A reservation the batch moved to `state` at `at_us`.
    Closed {
        id: i64,
        state: &'static str,
        at_us: i64,
    },
}

impl Unanswered {
    /// `closed`: the applied settles and refunds as (reservation, new state, time in µs).
    pub(super) fn new<'a>(
        answers: Answers,
        closing: &[&Closing],
        closed: impl IntoIterator<Item = (i64, &'static str, i64)>,
        buckets: impl IntoIterator<Item = Key<'a>>,
    ) -> Self {
        let created = answers.0.iter().find_map(|outcome| match outcome {
            ReserveOutcome::Reserved { id, .. } => Some(Marker::Created(id.0)),
            _ => None,
        });
        let moved = closed
            .into_iter()
            .next()
            .map(|(id, state, at_us)| Marker::Closed { id, state, at_us });
        let mut ids: Vec<i64> = closing.iter().map(|c| c.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        Self {
            answers,
            closed: ids,
            buckets: buckets
                .into_iter()
                .map(|(policy, bucket, start)| (policy.to_owned(), bucket.to_owned(), start))
                .collect(),
            marker: created.or(moved),
        }
    }

    /// The batch's answers if it was applied, `None` if it was rolled back; an error if that
    /// cannot be told.
    pub(super) async fn check(self, pool: &Pool) -> Result<Option<Answers>, LedgerError> {
        let Some(marker) = &self.marker else {
            // It wrote nothing a caller's answer depends on: refusals and duplicates stand.
            return Ok(Some(self.answers));
        };
        let applied = committed(pool, marker, &self.closed, &self.buckets).await?;
        Ok(applied.then_some(self.answers))
    }
}

/// Whether the one-operation transaction (a reserve or an adjustment) that created reservation
/// `id` and changed `buckets` committed, its COMMIT having gone unanswered; an error if that
/// cannot be told. Asked as for a batch.
pub(in crate::ledger::postgres) async fn created(
    pool: &Pool,
    id: i64,
    buckets: &[(String, String, i64)],
) -> Result<bool, LedgerError> {
    committed(pool, &Marker::Created(id), &[], buckets).await
}

/// Waits for the transaction to end and asks whether it committed, tried again while that
/// cannot be told yet.
async fn committed(
    pool: &Pool,
    marker: &Marker,
    closed: &[i64],
    buckets: &[(String, String, i64)],
) -> Result<bool, LedgerError> {
    if closed.is_empty() && buckets.is_empty() {
        // Nothing to wait on (a reserve with no lines): a read now could run before the
        // old transaction ends.
        return Err(LedgerError::Corrupt(
            "the transaction locked no row to wait for its end on".into(),
        ));
    }
    let deadline = Instant::now() + CHECK_FOR;
    let mut pause = Duration::from_millis(200);
    loop {
        match ask(pool, marker, closed, buckets).await {
            Ok(applied) => return Ok(applied),
            Err(error) if error.transient() && Instant::now() + pause < deadline => {
                tracing::debug!(%error, "cannot tell yet whether a ledger transaction committed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether the transaction was applied, asked once on a connection of the pool (the broken one
/// is gone: it was marked open, so the pool closed it).
async fn ask(
    pool: &Pool,
    marker: &Marker,
    closed: &[i64],
    buckets: &[(String, String, i64)],
) -> Result<bool, LedgerError> {
    let mut conn = pool.get().await?;
    conn.open = true;
    let applied = applied(&conn.client, &conn.st, marker, closed, buckets).await?;
    conn.client.batch_execute("ROLLBACK").await?;
    conn.open = false;
    Ok(applied)
}

async fn applied(
    tx: &Client,
    st: &super::super::schema::Statements,
    marker: &Marker,
    closed: &[i64],
    buckets: &[(String, String, i64)],
) -> Result<bool, LedgerError> {
    tx.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'",
        LOCK_WAIT.as_millis()
    ))
    .await?;
    if !closed.is_empty() {
        tx.query(&st.lock_reservations, &[&closed]).await?;
    }
    lock_buckets(
        tx,
        st,
        buckets
            .iter()
            .map(|(policy, bucket, start)| (policy.as_str(), bucket.as_str(), *start))
            .collect(),
    )
    .await?;
    // READ COMMITTED: this statement sees what the old transaction committed, if it did.
    let row = match marker {
        Marker::Created(id) => {
            tx.query_one(
                "SELECT count(*) FROM reservations WHERE id = $1::int8",
                &[id],
            )
            .await?
        }
        Marker::Closed { id, state, at_us } => {
            tx.query_one(
                "SELECT count(*) FROM reservations
                 WHERE id = $1::int8 AND state = $2::text AND updated_us = $3::int8",
                &[id, state, at_us],
            )
            .await?
        }
    };
    Ok(row.try_get::<_, i64>(0)? > 0)
}
