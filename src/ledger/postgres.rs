//! PostgreSQL backend, for several proxy replicas sharing one database.
//!
//! Exactness comes from conditional writes, never from read-then-write: a reserve charges each
//! bucket with one upsert whose update only happens `WHERE used < limit AND used <= limit - amount`, in one
//! transaction, taking the bucket rows in sorted key order so that concurrent multi-line
//! requests cannot deadlock. A line that does not fit rolls the whole transaction back.
//! Serialization failures and deadlocks (which a replica sweeping concurrently can still cause)
//! are retried.
//!
//! Reserves, settles and refunds are group-committed ([`batch`]): a writer task runs everything
//! that queued while it was busy in one transaction, so a hot budget row (one caller, or a
//! `Shared` budget) costs one COMMIT per batch instead of two per request. The one-operation
//! transactions ([`alone`]) are the fallback when a batch fails before its commit.
//!
//! Connections come from a small pool ([`pool`]) whose connections prepare every statement
//! once ([`schema`]).
//!
//! What else replicas share, rate allowances and the chats with a prediction under way, runs
//! on a pool of its own ([`shared`]).

mod adjust;
mod alone;
mod batch;
mod pool;
mod rates;
mod schema;
mod shared;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use self::pool::Pool;
use self::schema::Statements;
use super::state::{self, Close};
use super::{
    AdjustOutcome, AdjustRequest, BucketBalance, Charge, CreditLedger, LedgerError, LedgerFuture,
    Limits, PolicyUsage, PrunedChunk, RateTake, ReservationId, ReservationState, ReserveOutcome,
    ReserveRequest, Resolution, SharedTurn, UsageFilter, UsageParam, UsageRecord, Window,
    buckets_query, expiry, timestamp, usage_query,
};

/// Attempts of one operation that keeps hitting serialization failures or deadlocks.
const ATTEMPTS: u32 = 8;

/// The PostgreSQL ledger. Dropping it stops the writers after their current batch.
pub(super) struct PostgresLedger {
    pool: Arc<Pool>,
    /// Rate allowances and chat turns.
    shared: shared::Shared,
    writers: batch::Writers,
}

impl PostgresLedger {
    /// Connects, and creates the schema if it is missing (safe when replicas start together).
    pub(super) async fn connect(url: &str) -> Result<Self, LedgerError> {
        let (url, tls) = tls::split(url).map_err(LedgerError::Tls)?;
        let mut config: tokio_postgres::Config = url.parse()?;
        config.ssl_mode(tls.ssl_mode());
        let pool = Arc::new(Pool::connect(config.clone(), tls.clone()).await?);
        pool.build_late_indexes();
        let writers = batch::spawn(Arc::clone(&pool));
        Ok(Self {
            pool,
            shared: shared::Shared::new(config, tls),
            writers,
        })
    }
}

impl CreditLedger for PostgresLedger {
    fn reserve(&self, request: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let now = request.now;
            self.writers
                .queue
                .send(batch::Op::Reserve(request, reply))
                .await
                .map_err(|_| LedgerError::Stopped)?;
            let mut unread = Unread {
                answer: Some(answer),
                ops: &self.writers.queue,
                now,
            };
            let answer = unread.answer.as_mut().ok_or(LedgerError::Stopped)?;
            let outcome = answer.await.map_err(|_| LedgerError::Stopped)?;
            unread.answer = None;
            outcome
        })
    }

    fn refunds_dropped_reserves(&self) -> bool {
        true
    }

    fn adjust(&self, request: AdjustRequest) -> LedgerFuture<'_, AdjustOutcome> {
        Box::pin(async move { alone::adjust(&self.pool, &request).await })
    }

    fn settle<'a>(
        &'a self,
        id: ReservationId,
        actual: &'a [u64],
        tokens: u64,
        now: Timestamp,
    ) -> LedgerFuture<'a, Resolution> {
        let close = Close::Settle {
            actual: actual.to_vec(),
            tokens,
        };
        Box::pin(self.write(move |reply| batch::Op::Close(id, close, now, reply)))
    }

    fn refund(&self, id: ReservationId, now: Timestamp) -> LedgerFuture<'_, Resolution> {
        Box::pin(self.write(move |reply| batch::Op::Close(id, Close::Refund, now, reply)))
    }

    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: Duration,
    ) -> LedgerFuture<'a, Option<RateTake>> {
        Box::pin(async move { Ok(Some(self.shared.take_rate(key, interval, burst).await?)) })
    }

    fn begin_turn<'a>(&'a self, chat: &'a str) -> LedgerFuture<'a, Option<SharedTurn>> {
        Box::pin(async move { Ok(Some(self.shared.begin_turn(chat).await?)) })
    }

    fn end_turn(&self, turn: u64) {
        self.shared.end_turn(turn);
    }

    fn close(&self, limit: Duration) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if !self.writers.drained(limit).await {
                tracing::warn!(?limit, "ledger operations still queued at shutdown");
            }
            self.shared.end_all_turns().await
        })
    }

    fn sweep(&self, now: Timestamp) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let now = now.as_microsecond();
            // Passed allowances are keys never seen, and passed leases turns ended: rows of
            // callers gone quiet, and of replicas gone, go with the sweep.
            let conn = self.pool.get().await?;
            if let Err(error) = conn.client.execute(&conn.st.prune_shared, &[]).await {
                tracing::warn!(%error, "pruning passed rate allowances and chat turns failed");
            }
            drop(conn);
            let row = self.retried(|st| &st.sweep, &[&now]).await?;
            Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
        })
    }

    fn prune_reservations(
        &self,
        before: Timestamp,
        after: ReservationId,
        chunk: u32,
    ) -> LedgerFuture<'_, PrunedChunk> {
        Box::pin(async move {
            let before = before.as_microsecond();
            let row = self
                .retried(
                    |st| &st.prune_reservations,
                    &[&after.0, &before, &i64::from(chunk)],
                )
                .await?;
            let count = |i| -> Result<u64, LedgerError> {
                Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
            };
            Ok(PrunedChunk::of(
                count(0)?,
                count(1)?,
                chunk,
                row.try_get(2)?,
                row.try_get(3)?,
                before,
            ))
        })
    }

    fn prune_usage(&self, before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        Box::pin(self.delete_chunk(|st| &st.prune_usage, before, chunk))
    }

    fn prune_buckets(&self, started_before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        Box::pin(self.delete_chunk(|st| &st.prune_buckets, started_before, chunk))
    }

    fn balance<'a>(
        &'a self,
        policy: &'a str,
        bucket: &'a str,
        window: &'a Window,
    ) -> LedgerFuture<'a, i64> {
        Box::pin(async move {
            let mut conn = self.pool.get_for_read().await?;
            let start = window.start.as_microsecond();
            let row = pool::read(
                conn.client
                    .query_opt(&conn.st.used_of, &[&policy, &bucket, &start]),
            )
            .await?;
            conn.open = false;
            Ok(match row {
                Some(row) => row.try_get(0)?,
                None => 0,
            })
        })
    }

    fn policy_usage<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        limits: Limits,
    ) -> LedgerFuture<'a, PolicyUsage> {
        Box::pin(async move {
            let mut conn = self.pool.get_for_read().await?;
            let start = window.start.as_microsecond();
            let limit = i64::try_from(limits.credits).unwrap_or(i64::MAX);
            let overrides: Vec<i64> = limits
                .overrides
                .iter()
                .map(|c| i64::try_from(*c).unwrap_or(i64::MAX))
                .collect();
            let row = pool::read(conn.client.query_one(
                &conn.st.policy_usage,
                &[&policy, &start, &limit, &overrides],
            ))
            .await?;
            conn.open = false;
            Ok(PolicyUsage {
                credits_used: row.try_get(0)?,
                buckets_exhausted: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
            })
        })
    }

    fn buckets<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        bucket: Option<&'a str>,
        limit: u32,
    ) -> LedgerFuture<'a, Vec<BucketBalance>> {
        Box::pin(async move {
            let mut conn = self.pool.get_for_read().await?;
            let start = window.start.as_microsecond();
            let limit = i64::from(limit);
            let sql = buckets_query(
                bucket.is_some(),
                |n, kind| format!("${n}::{kind}"),
                "bucket COLLATE \"C\"",
            );
            let rows = match bucket {
                Some(bucket) => {
                    pool::read(conn.client.query(&sql, &[&policy, &start, &bucket, &limit])).await?
                }
                None => pool::read(conn.client.query(&sql, &[&policy, &start, &limit])).await?,
            };
            conn.open = false;
            rows.iter()
                .map(|row| {
                    Ok(BucketBalance {
                        bucket: row.try_get(0)?,
                        used: row.try_get(1)?,
                        own_limit: row.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn usage(&self, filter: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>> {
        Box::pin(async move {
            let mut conn = self.pool.get_for_read().await?;
            let (sql, params) = usage_query(&filter, |n, kind| format!("${n}::{kind}"));
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| match p {
                    UsageParam::Text(text) => text as &(dyn tokio_postgres::types::ToSql + Sync),
                    UsageParam::Int(n) => n,
                })
                .collect();
            // Prepared per call: each filter has its own plan (see `usage_query`).
            let rows = pool::read(conn.client.query(&sql, &params)).await?;
            conn.open = false;
            rows.iter().map(usage_record).collect()
        })
    }
}

impl PostgresLedger {
    /// Runs a one-row statement on a pooled connection in its own transaction, retried on
    /// serialization failures and deadlocks.
    async fn retried(
        &self,
        statement: impl Fn(&Statements) -> &tokio_postgres::Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row, LedgerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.pool.get().await?;
            match conn.client.query_one(statement(&conn.st), params).await {
                Ok(row) => return Ok(row),
                Err(e) => retry_or_fail(attempt, e.into()).await?,
            }
        }
    }

    /// Runs a chunked delete (`$1`: a time bound, `$2`: the chunk) in its own transaction,
    /// retried like [`Self::retried`]; how many rows it deleted.
    async fn delete_chunk(
        &self,
        statement: impl Fn(&Statements) -> &tokio_postgres::Statement,
        bound: Timestamp,
        chunk: u32,
    ) -> Result<u64, LedgerError> {
        let (bound, chunk) = (bound.as_microsecond(), i64::from(chunk));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.pool.get().await?;
            match conn
                .client
                .execute(statement(&conn.st), &[&bound, &chunk])
                .await
            {
                Ok(deleted) => return Ok(deleted),
                Err(e) => retry_or_fail(attempt, e.into()).await?,
            }
        }
    }

    /// Queues `op` for the writers and waits for its answer.
    async fn write<T>(
        &self,
        op: impl FnOnce(batch::Reply<T>) -> batch::Op,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writers
            .queue
            .send(op(reply))
            .await
            .map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// A reserve's answer not read yet. Dropped so (its caller went away), an answer already sent is
/// refunded; one not sent yet finds the answer closed, and the writer does not reserve, or
/// refunds ([`batch`]).
struct Unread<'a> {
    answer: Option<tokio::sync::oneshot::Receiver<Result<ReserveOutcome, LedgerError>>>,
    ops: &'a tokio::sync::mpsc::Sender<batch::Op>,
    now: jiff::Timestamp,
}

impl Drop for Unread<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        answer.close();
        if let Ok(Ok(ReserveOutcome::Reserved { id, .. })) = answer.try_recv() {
            batch::refund_abandoned(&self.ops.downgrade(), id, self.now);
        }
    }
}

/// Inserts one reservation and its lines; its id, or `None` if its idempotency key is taken.
/// (The batch inserts reservations without a key many at a time.)
async fn insert_reservation(
    tx: &impl GenericClient,
    st: &Statements,
    request: &ReserveRequest,
    charges: &[Charge<'_>],
) -> Result<Option<i64>, LedgerError> {
    let idx: Vec<i32> = (0..).take(charges.len()).collect();
    let policies: Vec<&str> = charges.iter().map(|c| c.policy).collect();
    let buckets: Vec<&str> = charges.iter().map(|c| c.bucket).collect();
    let starts: Vec<i64> = charges.iter().map(|c| c.window_start).collect();
    let amounts: Vec<i64> = charges.iter().map(|c| c.amount).collect();
    let row = tx
        .query_opt(
            &st.insert_reservation,
            &[
                &request.subject,
                &request.chatflow,
                &request.idempotency_key,
                &request.now.as_microsecond(),
                &expiry(request.now, request.ttl),
                &idx,
                &policies,
                &buckets,
                &starts,
                &amounts,
                &request.initial_state().as_str(),
            ],
        )
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

fn exhausted(
    request: &ReserveRequest,
    charges: &[Charge<'_>],
    i: usize,
    used: i64,
) -> ReserveOutcome {
    let line = &request.lines[i];
    ReserveOutcome::Exhausted {
        policy: line.policy.clone(),
        remaining: charges[i].remaining(used),
        reset_at: line.window.end,
    }
}

/// What memory decided for one request.
pub(super) enum Plan {
    /// Fits: the bucket `used` after each line, in request order.
    Fits(Vec<i64>),
    Refused(ReserveOutcome),
}

/// Whether `charges` fit buckets holding `used`, line by line in request order: the one
/// decision both the batch (in memory, rows locked) and the one-operation path (after a
/// refused charge) make.
pub(super) fn plan(
    request: &ReserveRequest,
    charges: &[Charge<'_>],
    used: &HashMap<(&str, &str, i64), i64>,
) -> Plan {
    let mut planned: HashMap<(&str, &str, i64), i64> = HashMap::new();
    let mut after = Vec::with_capacity(charges.len());
    for (i, charge) in charges.iter().enumerate() {
        let now = planned
            .get(&charge.key())
            .or_else(|| used.get(&charge.key()))
            .copied()
            .unwrap_or(0);
        if !charge.fits(now) {
            return Plan::Refused(exhausted(request, charges, i, now));
        }
        planned.insert(charge.key(), now + charge.amount);
        after.push(now + charge.amount);
    }
    Plan::Fits(after)
}

/// Indexes of `keys` in sorted key order: every transaction takes bucket rows in this order.
fn lock_order<'k>(keys: impl Iterator<Item = (&'k str, &'k str, i64)>) -> Vec<usize> {
    let mut keyed: Vec<_> = keys.enumerate().map(|(i, key)| (key, i)).collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| i).collect()
}

fn usage_record(row: &Row) -> Result<UsageRecord, LedgerError> {
    let tokens: i64 = row.try_get(7)?;
    Ok(UsageRecord {
        id: row.try_get(0)?,
        time: timestamp(row.try_get(1)?)?,
        reservation: ReservationId(row.try_get(2)?),
        subject: row.try_get(3)?,
        chatflow: row.try_get(4)?,
        policy: row.try_get(5)?,
        credits: row.try_get(6)?,
        tokens: u64::try_from(tokens)
            .map_err(|_| LedgerError::Corrupt(format!("tokens {tokens}")))?,
        outcome: ReservationState::parse(row.try_get(8)?)?,
        adjusted_by: row.try_get(9)?,
        reason: row.try_get(10)?,
    })
}

/// Connection-level failures and overload: worth retrying later. Also a statement or lock
/// timeout (a hot row, a role's `statement_timeout`) and a read-only server (a failover under
/// way). Not a certificate the TLS handshake refused: that needs a configuration change.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => ["08", "40", "53", "57P", "57014", "55P03", "25006"]
            .iter()
            .any(|class| code.code().starts_with(class)),
        None => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                !io.get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
            }),
    }
}

/// Failures of a transaction that rolled back as a whole and may simply run again.
fn retryable(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Postgres(e)
        if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
}

/// Waits before another attempt if `e` is worth retrying and attempts are left; else `e`.
async fn retry_or_fail(attempt: u32, e: LedgerError) -> Result<(), LedgerError> {
    if attempt < ATTEMPTS && retryable(&e) {
        backoff(attempt).await;
        Ok(())
    } else {
        Err(e)
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(2 << attempt.min(6))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_locked_in_key_order_whatever_the_request_order() {
        let keys = [("ns/b", "*", 0), ("ns/a", "zoe", 5), ("ns/a", "alice", 5)];
        assert_eq!(lock_order(keys.into_iter()), vec![2, 1, 0]);
    }
}
