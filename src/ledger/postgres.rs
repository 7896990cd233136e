//! PostgreSQL backend, for several proxy replicas sharing one database.
//!
//! Exactness comes from conditional writes, never from read-then-write: a reserve charges each
//! bucket with one upsert whose update only happens `WHERE used <= limit - amount`, in one
//! transaction, taking the bucket rows in sorted key order so that concurrent multi-line
//! requests cannot deadlock. A line that does not fit rolls the whole transaction back.
//! Serialization failures and deadlocks (which a replica sweeping concurrently can still cause)
//! are retried.
//!
//! Connections come from a small pool written here (a semaphore and a stack of idle clients,
//! each with its statements prepared once): a few dozen lines against a new dependency.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::state::{self, Close, HeldLine};
use super::{
    Charge, CreditLedger, LedgerError, LedgerFuture, PolicyUsage, ReservationId, ReservationState,
    ReserveOutcome, ReserveRequest, Resolution, UsageFilter, UsageRecord, Window, expiry,
    timestamp,
};

/// Connections per ledger (per replica).
const POOL_SIZE: usize = 8;
/// Used when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one operation that keeps hitting serialization failures or deadlocks.
const ATTEMPTS: u32 = 8;
/// Serializes schema creation between replicas starting together ("flowgate" in ASCII).
const SCHEMA_LOCK: i64 = 0x666c_6f77_6761_7465;
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_schema (version integer PRIMARY KEY);
CREATE TABLE IF NOT EXISTS buckets (
    policy       text   NOT NULL,
    bucket       text   NOT NULL,
    window_start bigint NOT NULL, -- microseconds since the epoch
    used         bigint NOT NULL,
    PRIMARY KEY (policy, bucket, window_start)
);
CREATE INDEX IF NOT EXISTS buckets_by_window ON buckets (policy, window_start);
CREATE TABLE IF NOT EXISTS reservations (
    id              bigserial PRIMARY KEY,
    subject         text   NOT NULL,
    chatflow        text   NOT NULL,
    idempotency_key text,
    state           text   NOT NULL,
    created_us      bigint NOT NULL,
    expires_us      bigint NOT NULL,
    updated_us      bigint NOT NULL,
    tokens          bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS reservations_by_key ON reservations (subject, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state <> 'refunded';
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (expires_us)
    WHERE state = 'reserved';
CREATE TABLE IF NOT EXISTS reservation_lines (
    reservation_id bigint  NOT NULL,
    idx            integer NOT NULL,
    policy         text    NOT NULL,
    bucket         text    NOT NULL,
    window_start   bigint  NOT NULL,
    amount         bigint  NOT NULL, -- what the line holds now
    PRIMARY KEY (reservation_id, idx)
);
CREATE TABLE IF NOT EXISTS usage (
    id             bigserial PRIMARY KEY,
    time_us        bigint NOT NULL,
    reservation_id bigint NOT NULL,
    subject        text   NOT NULL,
    chatflow       text   NOT NULL,
    policy         text   NOT NULL,
    credits        bigint NOT NULL,
    tokens         bigint NOT NULL,
    outcome        text   NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time_us);
CREATE INDEX IF NOT EXISTS usage_by_subject ON usage (subject, time_us);
CREATE INDEX IF NOT EXISTS usage_by_policy ON usage (policy, time_us);
";

/// The PostgreSQL ledger.
pub(super) struct PostgresLedger {
    pool: Pool,
}

impl PostgresLedger {
    /// Connects, and creates the schema if it is missing (safe when replicas start together).
    pub(super) async fn connect(url: &str) -> Result<Self, LedgerError> {
        let mut config: Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("flowgate-ledger");
        }
        let mut client = open_client(&config).await?;
        create_schema(&mut client).await?;
        let first = Conn::prepare(client).await?;
        Ok(Self {
            pool: Pool {
                config,
                idle: Mutex::new(vec![first]),
                permits: Semaphore::new(POOL_SIZE),
            },
        })
    }
}

impl CreditLedger for PostgresLedger {
    fn reserve(&self, request: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome> {
        Box::pin(async move {
            let charges = request
                .lines
                .iter()
                .map(Charge::of)
                .collect::<Result<Vec<_>, _>>()?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut conn = self.pool.get().await?;
                match conn.reserve(&request, &charges).await {
                    Ok(Some(outcome)) => return Ok(outcome),
                    // The key's holder was refunded between our insert and our look-up.
                    Ok(None) if attempt < ATTEMPTS => {}
                    Ok(None) => return Err(LedgerError::Corrupt("idempotency key race".into())),
                    Err(e) if attempt < ATTEMPTS && retryable(&e) => backoff(attempt).await,
                    Err(e) => return Err(e),
                }
            }
        })
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
        Box::pin(async move { self.close(id, close, now).await })
    }

    fn refund(&self, id: ReservationId, now: Timestamp) -> LedgerFuture<'_, Resolution> {
        Box::pin(self.close(id, Close::Refund, now))
    }

    fn sweep(&self, now: Timestamp) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let now = now.as_microsecond();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let conn = self.pool.get().await?;
                match conn.client.query_one(&conn.st.sweep, &[&now]).await {
                    Ok(row) => return Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0)),
                    Err(e) => {
                        let e = LedgerError::from(e);
                        if attempt < ATTEMPTS && retryable(&e) {
                            backoff(attempt).await;
                        } else {
                            return Err(e);
                        }
                    }
                }
            }
        })
    }

    fn balance<'a>(
        &'a self,
        policy: &'a str,
        bucket: &'a str,
        window: &'a Window,
    ) -> LedgerFuture<'a, i64> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let start = window.start.as_microsecond();
            let row = conn
                .client
                .query_opt(&conn.st.used_of, &[&policy, &bucket, &start])
                .await?;
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
        limit: u64,
    ) -> LedgerFuture<'a, PolicyUsage> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let start = window.start.as_microsecond();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let row = conn
                .client
                .query_one(&conn.st.policy_usage, &[&policy, &start, &limit])
                .await?;
            Ok(PolicyUsage {
                credits_used: row.try_get(0)?,
                buckets_exhausted: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
            })
        })
    }

    fn usage(&self, filter: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let since = filter.since.map_or(i64::MIN, |t| t.as_microsecond());
            let limit = i64::from(filter.limit);
            let rows = conn
                .client
                .query(
                    &conn.st.usage,
                    &[&filter.subject, &filter.policy, &since, &limit],
                )
                .await?;
            rows.iter().map(usage_record).collect()
        })
    }
}

impl PostgresLedger {
    async fn close(
        &self,
        id: ReservationId,
        how: Close,
        now: Timestamp,
    ) -> Result<Resolution, LedgerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get().await?;
            match conn.close(id, &how, now).await {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => backoff(attempt).await,
                result => return result,
            }
        }
    }
}

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    st: Statements,
}

impl Conn {
    async fn prepare(client: Client) -> Result<Self, LedgerError> {
        let st = Statements::prepare(&client).await?;
        Ok(Self { client, st })
    }

    /// One attempt; `None` asks for another.
    async fn reserve(
        &mut self,
        request: &ReserveRequest,
        charges: &[Charge<'_>],
    ) -> Result<Option<ReserveOutcome>, LedgerError> {
        let st = &self.st;
        let tx = self.client.transaction().await?;
        let now = request.now.as_microsecond();
        let expires = expiry(request.now, request.ttl);
        let idx: Vec<i32> = (0..).take(charges.len()).collect();
        let policies: Vec<&str> = charges.iter().map(|c| c.policy).collect();
        let buckets: Vec<&str> = charges.iter().map(|c| c.bucket).collect();
        let starts: Vec<i64> = charges.iter().map(|c| c.window_start).collect();
        let amounts: Vec<i64> = charges.iter().map(|c| c.amount).collect();
        let inserted = tx
            .query_opt(
                &st.insert_reservation,
                &[
                    &request.subject,
                    &request.chatflow,
                    &request.idempotency_key,
                    &now,
                    &expires,
                    &idx,
                    &policies,
                    &buckets,
                    &starts,
                    &amounts,
                ],
            )
            .await?;
        let id: i64 = match (inserted, &request.idempotency_key) {
            (Some(row), _) => row.try_get(0)?,
            // ON CONFLICT DO NOTHING: the key belongs to a reservation that is not refunded
            // (it waited for that reservation's transaction to commit first).
            (None, Some(key)) => {
                let existing = tx.query_opt(&st.find_key, &[&request.subject, key]).await?;
                tx.rollback().await?;
                return match existing {
                    Some(row) => Ok(Some(ReserveOutcome::Duplicate {
                        id: ReservationId(row.try_get(0)?),
                        state: ReservationState::parse(row.try_get(1)?)?,
                    })),
                    None => Ok(None),
                };
            }
            (None, None) => return Err(LedgerError::Corrupt("reservation not inserted".into())),
        };

        // The bucket rows are the contended ones: charge them last, to hold their locks only
        // until the commit.
        let mut used_after = vec![0; charges.len()];
        for i in lock_order(charges.iter().map(Charge::key)) {
            let charge = &charges[i];
            let charged = if charge.fits(0) {
                tx.query_opt(
                    &st.charge,
                    &[
                        &charge.policy,
                        &charge.bucket,
                        &charge.window_start,
                        &charge.amount,
                        &charge.limit,
                    ],
                )
                .await?
            } else {
                None
            };
            match charged {
                Some(row) => used_after[i] = row.try_get(0)?,
                None => {
                    tx.rollback().await?;
                    return self.exhausted(request, charges, i).await.map(Some);
                }
            }
        }
        tx.commit().await?;
        Ok(Some(ReserveOutcome::Reserved {
            id: ReservationId(id),
            remaining: charges
                .iter()
                .zip(used_after)
                .map(|(charge, used)| (charge.policy.to_string(), charge.remaining(used)))
                .collect(),
        }))
    }

    /// After a rollback: names the first line in request order that does not fit now, or the
    /// line that failed if the buckets changed in between.
    async fn exhausted(
        &self,
        request: &ReserveRequest,
        charges: &[Charge<'_>],
        failed: usize,
    ) -> Result<ReserveOutcome, LedgerError> {
        let mut planned = std::collections::HashMap::new();
        let mut failed_used = 0;
        for (i, charge) in charges.iter().enumerate() {
            let used = match planned.get(&charge.key()) {
                Some(&used) => used,
                None => self.used(charge).await?,
            };
            if i == failed {
                failed_used = used;
            }
            if !charge.fits(used) {
                return Ok(exhausted(request, charges, i, used));
            }
            planned.insert(charge.key(), used + charge.amount);
        }
        Ok(exhausted(request, charges, failed, failed_used))
    }

    async fn used(&self, charge: &Charge<'_>) -> Result<i64, LedgerError> {
        let row = self
            .client
            .query_opt(
                &self.st.used_of,
                &[&charge.policy, &charge.bucket, &charge.window_start],
            )
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }

    async fn close(
        &mut self,
        id: ReservationId,
        how: &Close,
        now: Timestamp,
    ) -> Result<Resolution, LedgerError> {
        let st = &self.st;
        let tx = self.client.transaction().await?;
        let row = tx
            .query_opt(&st.lock_reservation, &[&id.0])
            .await?
            .ok_or(LedgerError::UnknownReservation(id))?;
        let state = ReservationState::parse(row.try_get(0)?)?;
        let subject: &str = row.try_get(1)?;
        let chatflow: &str = row.try_get(2)?;
        let lines = tx
            .query(&st.lines_of, &[&id.0])
            .await?
            .iter()
            .map(|row| {
                Ok(HeldLine {
                    idx: row.try_get(0)?,
                    policy: row.try_get(1)?,
                    bucket: row.try_get(2)?,
                    window_start: row.try_get(3)?,
                    amount: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let held: Vec<i64> = lines.iter().map(|line| line.amount).collect();
        let Some(change) = state::close(id, state, &held, how)? else {
            tx.rollback().await?;
            return Ok(Resolution {
                state,
                applied: false,
            });
        };

        let keys = lines
            .iter()
            .map(|l| (l.policy.as_str(), l.bucket.as_str(), l.window_start));
        for i in lock_order(keys) {
            if change.bucket_delta[i] != 0 {
                let line = &lines[i];
                tx.execute(
                    &st.adjust,
                    &[
                        &line.policy,
                        &line.bucket,
                        &line.window_start,
                        &change.bucket_delta[i],
                    ],
                )
                .await?;
            }
        }
        let now = now.as_microsecond();
        let idx: Vec<i32> = lines.iter().map(|line| line.idx).collect();
        let policies: Vec<&str> = lines.iter().map(|line| line.policy.as_str()).collect();
        let outcome = change.state.as_str();
        tx.execute(&st.rehold, &[&id.0, &idx, &change.held]).await?;
        tx.execute(
            &st.log,
            &[
                &now,
                &id.0,
                &subject,
                &chatflow,
                &change.tokens,
                &outcome,
                &policies,
                &change.logged,
            ],
        )
        .await?;
        tx.execute(&st.finish, &[&id.0, &outcome, &change.tokens, &now])
            .await?;
        tx.commit().await?;
        Ok(Resolution {
            state: change.state,
            applied: true,
        })
    }
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

/// Indexes of `keys` in sorted key order: every transaction takes bucket rows in this order.
fn lock_order<'k>(keys: impl Iterator<Item = (&'k str, &'k str, i64)>) -> Vec<usize> {
    let mut keyed: Vec<_> = keys.enumerate().map(|(i, key)| (key, i)).collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| i).collect()
}

fn usage_record(row: &Row) -> Result<UsageRecord, LedgerError> {
    let tokens: i64 = row.try_get(6)?;
    Ok(UsageRecord {
        time: timestamp(row.try_get(0)?)?,
        reservation: ReservationId(row.try_get(1)?),
        subject: row.try_get(2)?,
        chatflow: row.try_get(3)?,
        policy: row.try_get(4)?,
        credits: row.try_get(5)?,
        tokens: u64::try_from(tokens)
            .map_err(|_| LedgerError::Corrupt(format!("tokens {tokens}")))?,
        outcome: ReservationState::parse(row.try_get(7)?)?,
    })
}

/// Connection-level failures and overload: worth retrying later.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => ["08", "40", "53", "57P"]
            .iter()
            .any(|class| code.code().starts_with(class)),
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Failures of a transaction that rolled back as a whole and may simply run again.
fn retryable(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Postgres(e)
        if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(2 << attempt.min(6))).await;
}

async fn open_client(config: &Config) -> Result<Client, LedgerError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "ledger PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Creates the tables if needed under an advisory lock, so replicas starting together do not
/// race on `CREATE … IF NOT EXISTS`; refuses a schema written by a newer flowgate.
async fn create_schema(client: &mut Client) -> Result<(), LedgerError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM ledger_schema", &[])
        .await?
        .try_get(0)?;
    match found {
        None => {
            tx.execute(
                "INSERT INTO ledger_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(found) if found > SCHEMA_VERSION => {
            return Err(LedgerError::SchemaTooNew {
                found: found.into(),
                known: SCHEMA_VERSION.into(),
            });
        }
        Some(found) => return Err(LedgerError::Corrupt(format!("schema version {found}"))),
    }
    tx.commit().await?;
    Ok(())
}

/// A fixed set of connections, created on demand and reused.
struct Pool {
    config: Config,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

impl Pool {
    async fn get(&self) -> Result<Pooled<'_>, LedgerError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| LedgerError::Stopped)?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|conn| !conn.client.is_closed());
            idle.pop()
        };
        let conn = match idle {
            Some(conn) => conn,
            None => Conn::prepare(open_client(&self.config).await?).await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }
}

/// A connection lent out; it goes back to the pool when dropped (a transaction left open by a
/// cancelled future is rolled back first, as tokio-postgres queues the ROLLBACK).
struct Pooled<'p> {
    conn: Option<Conn>,
    pool: &'p Pool,
    _permit: SemaphorePermit<'p>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Only `drop` takes the connection out.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|c| !c.client.is_closed()) {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.push(conn);
        }
    }
}

/// Every statement, prepared once per connection.
struct Statements {
    insert_reservation: Statement,
    find_key: Statement,
    charge: Statement,
    used_of: Statement,
    lock_reservation: Statement,
    lines_of: Statement,
    adjust: Statement,
    rehold: Statement,
    log: Statement,
    finish: Statement,
    sweep: Statement,
    policy_usage: Statement,
    usage: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let (insert_reservation, find_key, charge, used_of, lock_reservation, lines_of) =
            futures::try_join!(
            // The reservation and its lines, in one round trip.
            client.prepare(
                "WITH reservation AS (
                     INSERT INTO reservations (subject, chatflow, idempotency_key, state,
                                               created_us, expires_us, updated_us)
                     VALUES ($1::text, $2::text, $3::text, 'reserved', $4::int8, $5::int8, $4::int8)
                     ON CONFLICT (subject, idempotency_key)
                         WHERE idempotency_key IS NOT NULL AND state <> 'refunded'
                     DO NOTHING
                     RETURNING id
                 ), held AS (
                     INSERT INTO reservation_lines
                         (reservation_id, idx, policy, bucket, window_start, amount)
                     SELECT reservation.id, line.*
                     FROM reservation,
                          unnest($6::int4[], $7::text[], $8::text[], $9::int8[], $10::int8[]) AS line
                 )
                 SELECT id FROM reservation"
            ),
            client.prepare(
                "SELECT id, state FROM reservations
                 WHERE subject = $1::text AND idempotency_key = $2::text AND state <> 'refunded'"
            ),
            // The row is locked even when the WHERE refuses the update: the check is exact.
            client.prepare(
                "INSERT INTO buckets AS b (policy, bucket, window_start, used)
                 VALUES ($1::text, $2::text, $3::int8, $4::int8)
                 ON CONFLICT (policy, bucket, window_start)
                 DO UPDATE SET used = b.used + EXCLUDED.used
                     WHERE b.used <= $5::int8 - EXCLUDED.used
                 RETURNING used"
            ),
            client.prepare(
                "SELECT used FROM buckets
                 WHERE policy = $1::text AND bucket = $2::text AND window_start = $3::int8"
            ),
            client.prepare(
                "SELECT state, subject, chatflow FROM reservations WHERE id = $1::int8 FOR UPDATE"
            ),
            client.prepare(
                "SELECT idx, policy, bucket, window_start, amount FROM reservation_lines
                 WHERE reservation_id = $1::int8 ORDER BY idx"
            ),
        )?;
        let (adjust, rehold, log, finish, sweep, policy_usage, usage) = futures::try_join!(
            client.prepare(
                "UPDATE buckets SET used = used + $4::int8
                 WHERE policy = $1::text AND bucket = $2::text AND window_start = $3::int8"
            ),
            client.prepare(
                "UPDATE reservation_lines SET amount = u.amount
                 FROM unnest($2::int4[], $3::int8[]) AS u (idx, amount)
                 WHERE reservation_id = $1::int8 AND reservation_lines.idx = u.idx"
            ),
            client.prepare(
                "INSERT INTO usage
                     (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
                 SELECT $1::int8, $2::int8, $3::text, $4::text, u.policy, u.credits, $5::int8, $6::text
                 FROM unnest($7::text[], $8::int8[]) WITH ORDINALITY AS u (policy, credits, n)
                 ORDER BY u.n"
            ),
            client.prepare(
                "UPDATE reservations SET state = $2::text, tokens = $3::int8, updated_us = $4::int8
                 WHERE id = $1::int8"
            ),
            client.prepare(
                "WITH expired AS (
                     UPDATE reservations SET state = 'expired', updated_us = $1::int8
                     WHERE state = 'reserved' AND expires_us <= $1::int8
                     RETURNING id, subject, chatflow
                 ), logged AS (
                     INSERT INTO usage
                         (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
                     SELECT $1::int8, e.id, e.subject, e.chatflow, l.policy, l.amount, 0, 'expired'
                     FROM expired e JOIN reservation_lines l ON l.reservation_id = e.id
                     ORDER BY e.id, l.idx
                 )
                 SELECT count(*) FROM expired"
            ),
            client.prepare(
                "SELECT COALESCE(SUM(used), 0)::int8, COUNT(*) FILTER (WHERE used >= $3::int8)
                 FROM buckets WHERE policy = $1::text AND window_start = $2::int8"
            ),
            client.prepare(
                "SELECT time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome
                 FROM usage
                 WHERE ($1::text IS NULL OR subject = $1::text)
                   AND ($2::text IS NULL OR policy = $2::text)
                   AND time_us >= $3::int8
                 ORDER BY time_us DESC, id DESC
                 LIMIT $4::int8"
            ),
        )?;
        Ok(Self {
            insert_reservation,
            find_key,
            charge,
            used_of,
            lock_reservation,
            lines_of,
            adjust,
            rehold,
            log,
            finish,
            sweep,
            policy_usage,
            usage,
        })
    }
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
