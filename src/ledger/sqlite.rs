//! Embedded SQLite backend, the default: one file, WAL, `synchronous=FULL`.
//!
//! **Group commit.** One writer thread owns the read-write connection and takes operations from
//! a channel. It blocks for the first one, drains whatever else is queued (up to
//! [`MAX_BATCH`]) into ONE `BEGIN IMMEDIATE` transaction, runs each operation in its own
//! savepoint (a failing operation rolls back alone), commits once — one WAL fsync for the whole
//! batch — and only then answers every caller. A single writer running every check inside the
//! transaction keeps the budgets exact; answering after the commit keeps them durable; the
//! batch makes that cost one fsync per burst instead of one per request.
//!
//! Reads (`balance`, `policy_usage`, `usage`) use a second connection on the blocking pool; WAL
//! lets them run while the writer commits.

mod backup;
mod file_watch;
mod ops;

pub(super) use backup::backup;
use file_watch::FileWatch;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::state::Close;
use super::{
    AdjustOutcome, AdjustRequest, BucketBalance, CreditLedger, LedgerError, LedgerFuture, Limits,
    PolicyUsage, PrunedChunk, ReservationId, ReservationState, ReserveOutcome, ReserveRequest,
    Resolution, UsageFilter, UsageParam, UsageRecord, Window, buckets_query, timestamp,
    usage_query,
};

/// The schema this code writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Longest a read may run on the one read connection before SQLite is told to stop it
/// ([`LedgerError::ReadTimeout`]): every read waits for the one before, so a caller's query that
/// walks a long history (its own rows, looking for a policy it was never charged on) must not
/// hold up the others for long. The usage log's filters are indexed; a read that needs this
/// long is one that walks rows it does not return.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// SQLite's virtual-machine steps between two looks at the clock during a read.
const READ_CLOCK_STEPS: std::ffi::c_int = 10_000;

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 256;

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE buckets (
    policy       TEXT    NOT NULL,
    bucket       TEXT    NOT NULL,
    window_start INTEGER NOT NULL, -- microseconds since the epoch
    used         INTEGER NOT NULL,
    own_limit    INTEGER,          -- a budget override's limit, from the last reserve
    PRIMARY KEY (policy, bucket, window_start)
) WITHOUT ROWID;
CREATE INDEX buckets_by_window ON buckets (policy, window_start);
CREATE INDEX buckets_by_start ON buckets (window_start);

CREATE TABLE reservations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subject         TEXT    NOT NULL,
    chatflow        TEXT    NOT NULL,
    idempotency_key TEXT,
    state           TEXT    NOT NULL,
    created_us      INTEGER NOT NULL,
    expires_us      INTEGER NOT NULL,
    updated_us      INTEGER NOT NULL,
    tokens          INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX reservations_by_key ON reservations (subject, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state <> 'refunded';
CREATE INDEX reservations_open ON reservations (expires_us) WHERE state = 'reserved';

CREATE TABLE reservation_lines (
    reservation_id INTEGER NOT NULL,
    idx            INTEGER NOT NULL,
    policy         TEXT    NOT NULL,
    bucket         TEXT    NOT NULL,
    window_start   INTEGER NOT NULL,
    amount         INTEGER NOT NULL, -- what the line holds now
    PRIMARY KEY (reservation_id, idx)
) WITHOUT ROWID;

CREATE TABLE usage (
    id             INTEGER PRIMARY KEY,
    time_us        INTEGER NOT NULL,
    reservation_id INTEGER NOT NULL,
    subject        TEXT    NOT NULL,
    chatflow       TEXT    NOT NULL,
    policy         TEXT    NOT NULL,
    credits        INTEGER NOT NULL,
    tokens         INTEGER NOT NULL,
    outcome        TEXT    NOT NULL
);
CREATE INDEX usage_by_time ON usage (time_us);
CREATE INDEX usage_by_subject ON usage (subject, time_us);
CREATE INDEX usage_by_policy ON usage (policy, time_us);
CREATE INDEX usage_by_chatflow ON usage (chatflow, time_us);

CREATE TABLE adjustments (
    reservation_id INTEGER PRIMARY KEY, -- the adjustment's reservation and usage row
    actor          TEXT    NOT NULL,
    reason         TEXT
);
";

/// Added after schema version 1 was released, without a new version (older flowgates ignore
/// them): the index retention finds past windows' buckets by, the one a chatflow's usage is
/// read by (a chatflow admin's usage query always names the chatflow: without it, SQLite walked
/// the whole log for a quiet one, holding the reader), and (in `migrate`) the column a bucket
/// keeps a budget override's limit in; and the table adjustments' who and why are kept in.
const LATER_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS buckets_by_start ON buckets (window_start);
CREATE INDEX IF NOT EXISTS usage_by_chatflow ON usage (chatflow, time_us);
CREATE TABLE IF NOT EXISTS adjustments (
    reservation_id INTEGER PRIMARY KEY,
    actor          TEXT    NOT NULL,
    reason         TEXT
);
";

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// An operation for the writer thread.
enum Op {
    Reserve(ReserveRequest, Reply<ReserveOutcome>),
    Adjust(AdjustRequest, Reply<AdjustOutcome>),
    Close(ReservationId, Close, Timestamp, Reply<Resolution>),
    Sweep(Timestamp, Reply<u64>),
    PruneReservations(Timestamp, ReservationId, u32, Reply<PrunedChunk>),
    /// A chunked delete of retention: [`ops::PRUNE_USAGE`] or [`ops::PRUNE_BUCKETS`].
    DeleteChunk(&'static str, Timestamp, u32, Reply<u64>),
}

/// An operation's result, held until the batch is committed.
enum Answer {
    Reserve(Reply<ReserveOutcome>, Result<ReserveOutcome, LedgerError>),
    Adjust(Reply<AdjustOutcome>, Result<AdjustOutcome, LedgerError>),
    Close(Reply<Resolution>, Result<Resolution, LedgerError>),
    /// A sweep's or a usage prune's row count.
    Count(Reply<u64>, Result<u64, LedgerError>),
    Pruned(Reply<PrunedChunk>, Result<PrunedChunk, LedgerError>),
}

/// The SQLite ledger. Dropping it stops the writer thread after its current batch.
pub(super) struct SqliteLedger {
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    /// [`READ_LIMIT`], shorter in a test.
    read_limit: Duration,
}

impl SqliteLedger {
    /// Opens `path`, creating the file and schema if needed.
    pub(super) async fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::open_with(path, commit_batch).await
    }

    /// [`Self::open`], committing each batch with `commit` (a test's, to fail one).
    async fn open_with(
        path: &Path,
        commit: impl Fn(&mut Connection, Vec<Op>) -> Vec<Answer> + Send + 'static,
    ) -> Result<Self, LedgerError> {
        let (ops, queue) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || match open_writer(&writer_path) {
                Ok(conn) => {
                    // The receiver only goes away if `open` was cancelled; then so are we.
                    if ready.send(Ok(())).is_ok() {
                        run_writer(conn, queue, commit, &writer_path);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(LedgerError::Spawn)?;
        started.await.map_err(|_| LedgerError::Stopped)??;

        let reader_path = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || open_reader(&reader_path))
            .await
            .map_err(|_| LedgerError::Stopped)??;
        Ok(Self {
            ops: Some(ops),
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            read_limit: READ_LIMIT,
        })
    }

    /// Queues an operation for the writer and waits for its committed answer.
    fn write<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> LedgerFuture<'_, T> {
        let (reply, answer) = oneshot::channel();
        let queued = self
            .ops
            .as_ref()
            .is_some_and(|ops| ops.send(op(reply)).is_ok());
        let writer_running = || self.writer.as_ref().is_some_and(|w| !w.is_finished());
        Box::pin(async move {
            if !queued {
                return Err(LedgerError::Stopped);
            }
            match answer.await {
                Ok(answer) => answer,
                // Unanswered by a writer still running: its batch failed on a panic (and was
                // rolled back); a retry meets the next batch.
                Err(_) if writer_running() => Err(LedgerError::Commit {
                    message: "the ledger writer failed on this batch (see its log)".into(),
                    transient: true,
                }),
                Err(_) => Err(LedgerError::Stopped),
            }
        })
    }

    /// Runs a query on the read connection, off the async threads, stopped past the read limit.
    fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> LedgerFuture<'_, T> {
        let (reader, limit) = (self.reader.clone(), self.read_limit);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
                // Each read puts in its own deadline (the connection is only ever read here).
                let deadline = std::time::Instant::now() + limit;
                let limited = || {
                    conn.progress_handler(
                        READ_CLOCK_STEPS,
                        Some(move || std::time::Instant::now() >= deadline),
                    )?;
                    query(&conn)
                };
                limited().map_err(|error| match error {
                    LedgerError::Sqlite(e)
                        if e.sqlite_error_code()
                            == Some(rusqlite::ErrorCode::OperationInterrupted) =>
                    {
                        LedgerError::ReadTimeout(limit)
                    }
                    other => other,
                })
            })
            .await
            .map_err(|_| LedgerError::Stopped)?
        })
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop once the current batch is committed.
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl CreditLedger for SqliteLedger {
    fn reserve(&self, request: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome> {
        self.write(|reply| Op::Reserve(request, reply))
    }

    fn adjust(&self, request: AdjustRequest) -> LedgerFuture<'_, AdjustOutcome> {
        self.write(|reply| Op::Adjust(request, reply))
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
        self.write(|reply| Op::Close(id, close, now, reply))
    }

    fn refund(&self, id: ReservationId, now: Timestamp) -> LedgerFuture<'_, Resolution> {
        self.write(|reply| Op::Close(id, Close::Refund, now, reply))
    }

    fn sweep(&self, now: Timestamp) -> LedgerFuture<'_, u64> {
        self.write(|reply| Op::Sweep(now, reply))
    }

    fn prune_reservations(
        &self,
        before: Timestamp,
        after: ReservationId,
        chunk: u32,
    ) -> LedgerFuture<'_, PrunedChunk> {
        self.write(|reply| Op::PruneReservations(before, after, chunk, reply))
    }

    fn prune_usage(&self, before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        self.write(|reply| Op::DeleteChunk(ops::PRUNE_USAGE, before, chunk, reply))
    }

    fn prune_buckets(&self, started_before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64> {
        self.write(|reply| Op::DeleteChunk(ops::PRUNE_BUCKETS, started_before, chunk, reply))
    }

    fn balance<'a>(
        &'a self,
        policy: &'a str,
        bucket: &'a str,
        window: &'a Window,
    ) -> LedgerFuture<'a, i64> {
        let key = (
            policy.to_string(),
            bucket.to_string(),
            window.start.as_microsecond(),
        );
        self.read(move |conn| {
            let used = conn
                .prepare_cached(
                    "SELECT used FROM buckets WHERE policy = ?1 AND bucket = ?2 AND window_start = ?3",
                )?
                .query_row(params![key.0, key.1, key.2], |row| row.get(0))
                .optional()?;
            Ok(used.unwrap_or(0))
        })
    }

    fn policy_usage<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        limits: Limits,
    ) -> LedgerFuture<'a, PolicyUsage> {
        let policy = policy.to_string();
        let start = window.start.as_microsecond();
        self.read(move |conn| {
            // Summed here, saturating: SQLite's SUM fails with "integer overflow" past 2^63 - 1
            // (buckets saturated by a settle of absurd token counts), and would fail every read
            // of the policy.
            let mut statement = conn.prepare_cached(
                "SELECT used, own_limit FROM buckets WHERE policy = ?1 AND window_start = ?2",
            )?;
            let mut rows = statement.query(params![policy, start])?;
            let mut usage = PolicyUsage {
                credits_used: 0,
                buckets_exhausted: 0,
            };
            while let Some(row) = rows.next()? {
                let (used, own_limit): (i64, Option<i64>) = (row.get(0)?, row.get(1)?);
                usage.credits_used = usage.credits_used.saturating_add(used);
                let limit = i64::try_from(limits.of_bucket(own_limit)).unwrap_or(i64::MAX);
                usage.buckets_exhausted += u64::from(used >= limit);
            }
            Ok(usage)
        })
    }

    fn buckets<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        bucket: Option<&'a str>,
        limit: u32,
    ) -> LedgerFuture<'a, Vec<BucketBalance>> {
        let (policy, bucket) = (policy.to_string(), bucket.map(str::to_string));
        let start = window.start.as_microsecond();
        self.read(move |conn| {
            let sql = buckets_query(bucket.is_some(), |n, _| format!("?{n}"), "bucket");
            let mut query = conn.prepare_cached(&sql)?;
            let row = |row: &rusqlite::Row<'_>| {
                Ok(BucketBalance {
                    bucket: row.get(0)?,
                    used: row.get(1)?,
                    own_limit: row.get(2)?,
                })
            };
            let rows = match &bucket {
                Some(bucket) => query
                    .query_map(params![policy, start, bucket, limit], row)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => query
                    .query_map(params![policy, start, limit], row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(rows)
        })
    }

    fn usage(&self, filter: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>> {
        self.read(move |conn| {
            let (sql, params) = usage_query(&filter, |n, _| format!("?{n}"));
            let mut query = conn.prepare_cached(&sql)?;
            let rows = query.query_map(rusqlite::params_from_iter(params), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, String>(8)?,
                    row.get::<_, Option<String>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })?;
            rows.map(|row| {
                let (
                    id,
                    time,
                    reservation,
                    subject,
                    chatflow,
                    policy,
                    credits,
                    tokens,
                    outcome,
                    adjusted_by,
                    reason,
                ) = row?;
                Ok(UsageRecord {
                    id,
                    time: timestamp(time)?,
                    reservation: ReservationId(reservation),
                    subject,
                    chatflow,
                    policy,
                    credits,
                    tokens: u64::try_from(tokens)
                        .map_err(|_| LedgerError::Corrupt(format!("tokens {tokens}")))?,
                    outcome: ReservationState::parse(&outcome)?,
                    adjusted_by,
                    reason,
                })
            })
            .collect()
        })
    }
}

impl rusqlite::ToSql for UsageParam {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(text) => text.to_sql(),
            Self::Int(n) => n.to_sql(),
        }
    }
}

/// Busy or locked, and the failures of the disk under the database (full, an I/O error, a file
/// that cannot be opened): each passes once the disk is mended, and a settle or refund that met
/// one is retried until then instead of being given up (PostgreSQL's class 53 is the same).
pub(super) fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::CannotOpen
        )
    )
}

/// Bytes of WAL kept after a checkpoint resets it.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

fn open_writer(path: &Path) -> Result<Connection, LedgerError> {
    // An empty file where the ledger should be: a backup that failed, or a restore gone wrong.
    let was_empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL: a commit is on disk (WAL fsynced) before the writer answers anyone.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A WAL that grew while a reader held it (a backup's long read) is cut back to this at the
    // next reset, not kept at its peak on a volume that has to fit the backup's copy too.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    if migrate(&mut conn)? {
        if was_empty {
            tracing::warn!(path = %path.display(), "the ledger file was empty: created a NEW ledger, every balance at zero (if it was restored from a backup, that backup is empty)");
        } else {
            tracing::info!(path = %path.display(), "created a new ledger");
        }
    }
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Creates the schema in an empty database (true when it did); refuses one written by a newer
/// flowgate.
fn migrate(conn: &mut Connection) -> Result<bool, LedgerError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            return Ok(true);
        }
        SCHEMA_VERSION => {
            // Added after version 1 was released, without a version: older flowgates ignore it.
            tx.execute_batch(LATER_INDEXES)?;
            let has_own_limit: bool = tx.query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('buckets') WHERE name = 'own_limit'",
                [],
                |row| row.get(0),
            )?;
            if !has_own_limit {
                tx.execute_batch("ALTER TABLE buckets ADD COLUMN own_limit INTEGER")?;
            }
        }
        found if found > SCHEMA_VERSION => {
            return Err(LedgerError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        found => return Err(LedgerError::Corrupt(format!("schema version {found}"))),
    }
    tx.commit()?;
    Ok(false)
}

/// The writer loop: one transaction per batch of queued operations, until the channel closes.
/// A batch that panics is rolled back as it unwinds and its callers get a transient error (see
/// [`SqliteLedger::write`]); the writer goes on, rather than leave every later charge refused
/// and every settle and refund lost until someone restarts the process.
fn run_writer(
    mut conn: Connection,
    queue: mpsc::Receiver<Op>,
    commit: impl Fn(&mut Connection, Vec<Op>) -> Vec<Answer>,
    path: &Path,
) {
    let mut file = FileWatch::new(path);
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        if let Some(failure) = file.moved(&conn) {
            batch.into_iter().for_each(|op| op.fail(&failure).send());
            continue;
        }
        let batch_size = batch.len();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&mut conn, batch))) {
            Ok(answers) => answers.into_iter().for_each(Answer::send),
            Err(panic) => {
                let message = crate::telemetry::panic_message(&*panic);
                tracing::error!(
                    panic = message,
                    batch_size,
                    "the ledger writer panicked on a batch: rolled back, its callers told to retry"
                );
            }
        }
    }
    // At the end too: replaced while the writer waited for work, the old file's write-ahead log
    // must be emptied before the connection closes and leaves it for the next start.
    let _ = file.moved(&conn);
}

fn commit_batch(conn: &mut Connection, batch: Vec<Op>) -> Vec<Answer> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = BatchFailure::from(&e);
            return batch.into_iter().map(|op| op.fail(&e)).collect();
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    for op in ops.by_ref() {
        let (answer, broken) = op.apply(&tx);
        answers.push(answer);
        if let Some(e) = broken {
            // A savepoint could not be opened, released or rolled back: what the batch holds is
            // unknown, so none of it is kept (dropping `tx` rolls it back).
            return answers
                .into_iter()
                .map(|a| a.fail(&e))
                .chain(ops.map(|op| op.fail(&e)))
                .collect();
        }
    }
    match tx.commit() {
        Ok(()) => answers,
        Err(e) => {
            let e = BatchFailure::from(&e);
            answers.into_iter().map(|a| a.fail(&e)).collect()
        }
    }
}

const SAVEPOINT: &str = "SAVEPOINT op";
const RELEASE: &str = "RELEASE op";

/// Runs `f` in a savepoint: its writes are kept only if it succeeds. The outer error is the
/// savepoint's own failure, after which the transaction must not be committed.
///
/// The savepoint statements are prepared once: rusqlite's `Savepoint` parses its SQL anew each
/// time, four parses per request.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
) -> Result<Result<T, LedgerError>, BatchFailure> {
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
    run(SAVEPOINT).map_err(|e| BatchFailure::from(&e))?;
    let out = f(conn);
    if let Err(error) = &out
        && let Err(rollback) = run("ROLLBACK TO op")
    {
        return Err(rolled_back(conn, error, &rollback));
    }
    run(RELEASE).map_err(|e| BatchFailure::from(&e))?;
    Ok(out)
}

/// The batch's failure when an operation's savepoint could not be rolled back to. On a full
/// disk or an I/O error SQLite may roll back the whole transaction itself, savepoint and all:
/// then nothing of the batch is kept, and every operation in it is worth retrying (a settle or
/// refund given up here would leave its credits charged). Otherwise what the transaction holds
/// is unknown, and the rollback's own error decides.
fn rolled_back(conn: &Connection, error: &LedgerError, rollback: &rusqlite::Error) -> BatchFailure {
    BatchFailure {
        message: format!("{error} (and the rollback to its savepoint failed: {rollback})"),
        transient: conn.is_autocommit() || is_transient(rollback),
    }
}

/// Why a batch was not committed, given to each of its operations.
#[derive(Debug)]
struct BatchFailure {
    message: String,
    transient: bool,
}

impl BatchFailure {
    fn error(&self) -> LedgerError {
        LedgerError::Commit {
            message: self.message.clone(),
            transient: self.transient,
        }
    }
}

impl From<&rusqlite::Error> for BatchFailure {
    fn from(e: &rusqlite::Error) -> Self {
        Self {
            message: e.to_string(),
            transient: is_transient(e),
        }
    }
}

impl Op {
    /// Applies the operation in its own savepoint. With its answer comes the savepoint's own
    /// failure, if it had one.
    fn apply(self, conn: &Connection) -> (Answer, Option<BatchFailure>) {
        fn answer<T>(
            reply: Reply<T>,
            out: Result<Result<T, LedgerError>, BatchFailure>,
            wrap: fn(Reply<T>, Result<T, LedgerError>) -> Answer,
        ) -> (Answer, Option<BatchFailure>) {
            match out {
                Ok(result) => (wrap(reply, result), None),
                Err(e) => (wrap(reply, Err(e.error())), Some(e)),
            }
        }
        match self {
            Op::Reserve(request, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::reserve(c, &request)),
                Answer::Reserve,
            ),
            Op::Adjust(request, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::adjust(c, &request)),
                Answer::Adjust,
            ),
            Op::Close(id, how, now, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::close(c, id, &how, now)),
                Answer::Close,
            ),
            Op::Sweep(now, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::sweep(c, now)),
                Answer::Count,
            ),
            Op::PruneReservations(before, after, chunk, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::prune_reservations(c, before, after, chunk)),
                Answer::Pruned,
            ),
            Op::DeleteChunk(statement, bound, chunk, reply) => answer(
                reply,
                in_savepoint(conn, |c| ops::delete_chunk(c, statement, bound, chunk)),
                Answer::Count,
            ),
        }
    }

    fn fail(self, e: &BatchFailure) -> Answer {
        match self {
            Op::Reserve(_, reply) => Answer::Reserve(reply, Err(e.error())),
            Op::Adjust(_, reply) => Answer::Adjust(reply, Err(e.error())),
            Op::Close(.., reply) => Answer::Close(reply, Err(e.error())),
            Op::Sweep(_, reply) | Op::DeleteChunk(.., reply) => {
                Answer::Count(reply, Err(e.error()))
            }
            Op::PruneReservations(.., reply) => Answer::Pruned(reply, Err(e.error())),
        }
    }
}

impl Answer {
    /// The batch was not committed: what succeeded in it failed after all.
    fn fail(self, e: &BatchFailure) -> Answer {
        match self {
            Answer::Reserve(reply, r) => Answer::Reserve(reply, r.and(Err(e.error()))),
            Answer::Adjust(reply, r) => Answer::Adjust(reply, r.and(Err(e.error()))),
            Answer::Close(reply, r) => Answer::Close(reply, r.and(Err(e.error()))),
            Answer::Count(reply, r) => Answer::Count(reply, r.and(Err(e.error()))),
            Answer::Pruned(reply, r) => Answer::Pruned(reply, r.and(Err(e.error()))),
        }
    }

    fn send(self) {
        // A caller that stopped waiting has nothing to learn; the commit stands.
        let _ = match self {
            Answer::Reserve(reply, r) => reply.send(r).map_err(drop),
            Answer::Adjust(reply, r) => reply.send(r).map_err(drop),
            Answer::Close(reply, r) => reply.send(r).map_err(drop),
            Answer::Count(reply, r) => reply.send(r).map_err(drop),
            Answer::Pruned(reply, r) => reply.send(r).map_err(drop),
        };
    }
}

#[cfg(test)]
mod tests;
