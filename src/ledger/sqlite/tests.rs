//! The SQLite backend's own tests: its pragmas, query plans, statement cache and savepoints.

use super::backup::room_for_copy;
use super::*;
use crate::ledger::{BudgetLine, Window};

/// A ledger file with the schema, in a directory that lives as long as the returned guard.
async fn created() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    drop(SqliteLedger::open(&path).await.expect("open"));
    (dir, path)
}

/// A database SQLite will not put in WAL mode (here one in memory, whose mode stays `memory`;
/// in a cluster, a filesystem without shared memory) is refused at start, not run with reads
/// that block the writer.
#[test]
fn a_database_without_wal_is_refused() {
    let error = open_writer(Path::new(":memory:")).expect_err("no WAL in memory");
    assert!(
        matches!(&error, LedgerError::NoWal { mode, .. } if mode == "memory"),
        "{error}"
    );
    assert!(error.to_string().contains("local filesystem"), "{error}");
}

#[tokio::test]
async fn the_database_is_wal_with_full_sync_and_versioned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.expect("open");
    drop(ledger);

    let conn = open_writer(&path).expect("reopen");
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("synchronous");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    let wal_kept: i64 = conn
        .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
        .expect("journal_size_limit");
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "FULL");
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(wal_kept, JOURNAL_SIZE_LIMIT, "a grown WAL is cut back");
}

/// A backup's copy must fit beside what the volume needs to keep working.
#[test]
fn a_backup_needs_room_for_its_copy_and_some() {
    let dir = Path::new("/var/lib/flowgate");
    let mib = 1u64 << 20;
    assert!(room_for_copy(dir, 100 * mib, 200 * mib).is_ok());
    let error = room_for_copy(dir, 100 * mib, 150 * mib).expect_err("no margin");
    assert!(
        matches!(
            error,
            LedgerError::BackupNoRoom {
                needed_mib: 164,
                available_mib: 150,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("/var/lib/flowgate"), "{error}");
}

/// The steps of `statement`'s query plan, its `?` parameters bound to 0.
fn plan(conn: &Connection, statement: &str) -> Vec<String> {
    let mut plan = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
        .expect("explain");
    let zeros = vec![0i64; plan.parameter_count()];
    plan.query_map(rusqlite::params_from_iter(zeros), |row| {
        row.get::<_, String>(3)
    })
    .expect("plan")
    .collect::<Result<_, _>>()
    .expect("plan rows")
}

/// Whether a step reads a table or index from end to end (a subquery's own bounded result
/// may be scanned).
fn scans_a_table(step: &str) -> bool {
    step.starts_with("SCAN") && !step.starts_with("SCAN (subquery")
}

/// Asserts that `statement`'s plan reads through `index` (a plan step names it) and reads no
/// table from end to end.
fn assert_reads_through(conn: &Connection, statement: &str, index: &str) {
    let steps = plan(conn, statement);
    assert!(
        steps.iter().any(|s| s.contains(index)),
        "{statement} does not use {index}: {steps:?}"
    );
    assert!(
        !steps.iter().any(|s| scans_a_table(s)),
        "{statement} scans: {steps:?}"
    );
}

/// The sweep runs every 30 s on the writer, whose table of reservations only grows: it must
/// find expired reservations through the index of open ones, never by a scan.
#[tokio::test]
async fn the_sweep_reads_only_open_reservations() {
    let (_dir, path) = created().await;
    let conn = open_writer(&path).expect("reopen");
    for statement in [ops::SWEEP_USAGE, ops::SWEEP_STATE] {
        assert_reads_through(&conn, statement, "reservations_open");
    }
}

/// Pruning runs on the writer too, a chunk per call: each statement must reach its chunk
/// through the primary key or the time index, never by reading a whole table.
#[tokio::test]
async fn pruning_reads_only_its_chunk() {
    let (_dir, path) = created().await;
    let conn = open_writer(&path).expect("reopen");
    for (statement, uses) in [
        (ops::PRUNE_CHUNK, "INTEGER PRIMARY KEY (rowid>?)"),
        (ops::PRUNE_LINES, "PRIMARY KEY (reservation_id=?)"),
        (
            ops::PRUNE_RESERVATIONS,
            "INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
        ),
        (ops::PRUNE_USAGE, "usage_by_time (time_us<?)"),
        (
            ops::PRUNE_BUCKETS,
            "buckets_by_start (window_start>? AND window_start<?)",
        ),
    ] {
        assert_reads_through(&conn, statement, uses);
    }
}

/// A reserve and a settle run a dozen statements on the writer, savepoints included; each
/// must be compiled once, not at every call (`ORDER BY` on the held lines made SQLite
/// re-prepare it each time; rusqlite's `Savepoint` parses its SQL anew each time).
#[tokio::test]
async fn the_hot_statements_are_compiled_once() {
    let (_dir, path) = created().await;
    let mut conn = open_writer(&path).expect("reopen");
    let now = Timestamp::now();
    for n in 0..20 {
        let request = ReserveRequest {
            subject: format!("user-{n}"),
            chatflow: "team/bot".into(),
            idempotency_key: Some(format!("key-{n}")),
            lines: vec![BudgetLine {
                policy: "team/monthly".into(),
                bucket: "*".into(),
                limit: 1_000,
                own_limit: false,
                window: Window {
                    start: now,
                    end: None,
                },
                amount: 2,
            }],
            now,
            final_cost: n % 2 == 0,
            ttl: Duration::from_secs(900),
        };
        let (reply, mut reserved) = oneshot::channel();
        commit_batch(&mut conn, vec![Op::Reserve(request, reply)])
            .into_iter()
            .for_each(Answer::send);
        let Ok(Ok(ReserveOutcome::Reserved { id, .. })) = reserved.try_recv() else {
            panic!("not reserved");
        };
        let settle = Close::Settle {
            actual: vec![3],
            tokens: 10,
        };
        let (reply, mut settled) = oneshot::channel();
        commit_batch(&mut conn, vec![Op::Close(id, settle, now, reply)])
            .into_iter()
            .for_each(Answer::send);
        settled.try_recv().expect("answered").expect("settled");
    }
    for statement in ops::HOT.into_iter().chain([SAVEPOINT, RELEASE]) {
        let cached = conn.prepare_cached(statement).expect("cached");
        assert_eq!(
            cached.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "re-prepared: {statement}"
        );
        assert!(
            cached.get_status(rusqlite::StatementStatus::Run) >= 20,
            "not run by a reserve and a settle: {statement}"
        );
    }
}

#[tokio::test]
async fn a_database_from_a_newer_flowgate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
        .expect("prepare newer db");
    let err = SqliteLedger::open(&path)
        .await
        .err()
        .expect("newer schema refused");
    assert!(
        matches!(err, LedgerError::SchemaTooNew { found: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_directory_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = SqliteLedger::open(&dir.path().join("no/such/dir/ledger.db"))
        .await
        .err()
        .expect("cannot create file");
    assert_eq!(err.reason(), "SqliteError");
}

/// A reserve of 10 credits from the one bucket of `team/pool` (a limit of 1,000).
fn reserve_request(subject: &str, final_cost: bool, now: Timestamp) -> ReserveRequest {
    ReserveRequest {
        subject: subject.into(),
        chatflow: "team/bot".into(),
        idempotency_key: None,
        lines: vec![BudgetLine {
            policy: "team/pool".into(),
            bucket: "*".into(),
            limit: 1_000,
            own_limit: false,
            window: Window {
                start: now,
                end: None,
            },
            amount: 10,
        }],
        now,
        ttl: Duration::from_secs(900),
        final_cost,
    }
}

/// The writer's connection to a new ledger whose usage row of `subject` a trigger refuses with
/// `RAISE(raise)`, and the directory that lives as long as it is needed.
async fn raising(subject: &str, raise: &str) -> (tempfile::TempDir, Connection) {
    let (dir, path) = created().await;
    let conn = open_writer(&path).expect("reopen");
    conn.execute_batch(&format!(
        "CREATE TRIGGER raising BEFORE INSERT ON usage WHEN NEW.subject = '{subject}'
         BEGIN SELECT RAISE({raise}); END;"
    ))
    .expect("trigger");
    (dir, conn)
}

/// Commits one batch of final-cost reserves, one for each of `subjects`; their answers.
fn reserve_batch(
    conn: &mut Connection,
    subjects: &[&str],
    now: Timestamp,
) -> Vec<Result<ReserveOutcome, LedgerError>> {
    let (batch, mut replies): (Vec<Op>, Vec<_>) = subjects
        .iter()
        .map(|subject| {
            let (reply, answer) = oneshot::channel();
            (
                Op::Reserve(reserve_request(subject, true, now), reply),
                answer,
            )
        })
        .unzip();
    commit_batch(conn, batch).into_iter().for_each(Answer::send);
    replies
        .iter_mut()
        .map(|answer| answer.try_recv().expect("answered"))
        .collect()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).expect(sql)
}

/// A batch's operations commit together, but one that fails after it has written (here: a
/// trigger refuses its usage row) is rolled back alone to its savepoint — its reservation,
/// bucket charge and held line, or its settle's bucket and line changes — while the operations
/// before and after it in the same transaction are kept.
#[tokio::test]
async fn an_operation_failing_after_its_writes_is_rolled_back_alone() {
    let (_dir, mut conn) = raising("refused", "ABORT, 'refused by the test'").await;
    let now = Timestamp::now();
    let reserve = |subject: &str, final_cost: bool| reserve_request(subject, final_cost, now);
    let used = |conn: &Connection| count(conn, "SELECT used FROM buckets");

    // Three final-cost reserves in one batch; the middle one fails at its usage row.
    let outcomes: Vec<_> = reserve_batch(&mut conn, &["kept-1", "refused", "kept-2"], now)
        .iter()
        .map(Result::is_ok)
        .collect();
    assert_eq!(outcomes, [true, false, true]);
    assert_eq!(
        used(&conn),
        20,
        "the refused reserve's charge is rolled back"
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM reservations"), 2);
    assert_eq!(count(&conn, "SELECT count(*) FROM reservation_lines"), 2);
    assert_eq!(count(&conn, "SELECT count(*) FROM usage"), 2);

    // A held reservation of the refused subject: its settle fails after adjusting the bucket
    // and re-holding the line, between two settles that succeed.
    let mut held = Vec::new();
    for subject in ["kept-3", "refused", "kept-4"] {
        let (reply, mut answer) = oneshot::channel();
        commit_batch(&mut conn, vec![Op::Reserve(reserve(subject, false), reply)])
            .into_iter()
            .for_each(Answer::send);
        let Ok(Ok(ReserveOutcome::Reserved { id, .. })) = answer.try_recv() else {
            panic!("not reserved");
        };
        held.push(id);
    }
    assert_eq!(used(&conn), 50);
    let mut replies = Vec::new();
    let batch = held
        .iter()
        .map(|&id| {
            let (reply, answer) = oneshot::channel();
            replies.push(answer);
            let settle = Close::Settle {
                actual: vec![25],
                tokens: 0,
            };
            Op::Close(id, settle, now, reply)
        })
        .collect();
    commit_batch(&mut conn, batch)
        .into_iter()
        .for_each(Answer::send);
    let outcomes: Vec<_> = replies
        .iter_mut()
        .map(|answer| answer.try_recv().expect("answered").is_ok())
        .collect();
    assert_eq!(outcomes, [true, false, true]);
    assert_eq!(
        used(&conn),
        50 + 2 * 15,
        "only the two kept settles moved the bucket"
    );
    let refused = held[1].0;
    assert_eq!(
        count(
            &conn,
            &format!("SELECT amount FROM reservation_lines WHERE reservation_id = {refused}")
        ),
        10,
        "the refused settle's line still holds the reserved amount"
    );
    let state: String = conn
        .query_row(
            "SELECT state FROM reservations WHERE id = ?1",
            [refused],
            |row| row.get(0),
        )
        .expect("state");
    assert_eq!(state, "reserved");
}

/// On a full disk or an I/O error SQLite may roll back the whole transaction, the failing
/// operation's savepoint with it (here a trigger's `RAISE(ROLLBACK)` does what such an error
/// would). Nothing of the batch is then kept, and every operation in it, the ones before the
/// failure included, is told so with an error worth retrying: a settle or refund that gave up
/// would leave its credits charged.
#[tokio::test]
async fn a_transaction_sqlite_rolled_back_itself_fails_its_whole_batch_as_worth_retrying() {
    let (_dir, mut conn) = raising("gone", "ROLLBACK, 'the transaction is gone'").await;
    let subjects = ["before", "gone", "after"];
    let outcomes = reserve_batch(&mut conn, &subjects, Timestamp::now());
    for (subject, outcome) in subjects.iter().zip(outcomes) {
        let error = outcome.expect_err("nothing of the batch is kept");
        assert!(error.transient(), "{subject}: {error}");
    }
    assert!(conn.is_autocommit(), "no transaction is left open");
    assert_eq!(count(&conn, "SELECT count(*) FROM reservations"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM buckets"), 0);
}

/// Each usage query reaches its rows through the index of its filter (a subject's rows through
/// `usage_by_subject`, a cursor as a range of it), never by walking the whole log.
#[tokio::test]
async fn usage_queries_use_the_index_of_their_filter() {
    let (_dir, path) = created().await;
    let conn = open_writer(&path).expect("reopen");
    let text = |s: &str| Some(s.to_string());
    let since = Some(Timestamp::UNIX_EPOCH);
    for (filter, index) in [
        (UsageFilter::default(), "usage_by_time"),
        (
            UsageFilter {
                since,
                ..UsageFilter::default()
            },
            "usage_by_time (time_us>?)",
        ),
        (
            UsageFilter {
                before: Some(7),
                ..UsageFilter::default()
            },
            "usage_by_time (time_us<?)",
        ),
        (
            UsageFilter {
                subject: text("user:alice"),
                ..UsageFilter::default()
            },
            "usage_by_subject (subject=?)",
        ),
        (
            UsageFilter {
                subject: text("user:alice"),
                since,
                before: Some(7),
                ..UsageFilter::default()
            },
            "usage_by_subject (subject=? AND time_us>? AND time_us<?)",
        ),
        (
            UsageFilter {
                policy: text("team/monthly"),
                ..UsageFilter::default()
            },
            "usage_by_policy (policy=?)",
        ),
        (
            UsageFilter {
                policy: text("team/monthly"),
                chatflow: text("team/bot"),
                ..UsageFilter::default()
            },
            "usage_by_chatflow (chatflow=?)",
        ),
        // A caller reading its own rows of one policy or chatflow: its own rows are walked, not
        // the policy's or chatflow's whole history (`GET /credits/usage?policy=...`).
        (
            UsageFilter {
                subject: text("user:alice"),
                policy: text("team/monthly"),
                ..UsageFilter::default()
            },
            "usage_by_subject (subject=?)",
        ),
        (
            UsageFilter {
                subject: text("user:alice"),
                chatflow: text("team/bot"),
                policy: text("team/monthly"),
                since,
                ..UsageFilter::default()
            },
            "usage_by_subject (subject=? AND time_us>?)",
        ),
    ] {
        let (sql, _) = usage_query(&filter, |n, _| format!("?{n}"));
        let steps = plan(&conn, &sql);
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("SEARCH usage USING") || s.starts_with("SCAN usage USING"))
                && steps.iter().any(|s| s.contains(index)),
            "{filter:?} does not use {index}: {steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "{filter:?} sorts instead of reading in index order: {steps:?}"
        );
    }
}

/// `buckets.own_limit` came after schema version 1 was released too: a ledger created before it
/// gets the column when flowgate opens it, and keeps its buckets.
#[tokio::test]
async fn a_ledger_from_before_own_limits_gets_the_column() {
    let (_dir, path) = created().await;
    let has_column = |conn: &Connection| -> bool {
        conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('buckets') WHERE name = 'own_limit'",
            [],
            |row| row.get(0),
        )
        .expect("table_info")
    };
    let conn = Connection::open(&path).expect("open");
    assert!(has_column(&conn));
    conn.execute_batch(
        "ALTER TABLE buckets DROP COLUMN own_limit;
         INSERT INTO buckets (policy, bucket, window_start, used) VALUES ('ns/p', 'alice', 0, 3);",
    )
    .expect("as a version-1 ledger had it");
    assert!(!has_column(&conn));
    drop(conn);
    drop(SqliteLedger::open(&path).await.expect("reopen"));
    let conn = Connection::open(&path).expect("open");
    assert!(has_column(&conn));
    let used: i64 = conn
        .query_row(
            "SELECT used FROM buckets WHERE bucket = 'alice'",
            [],
            |row| row.get(0),
        )
        .expect("the bucket kept");
    assert_eq!(used, 3);
}

/// `buckets_by_start`, `usage_by_chatflow` and the `adjustments` table came after schema
/// version 1 was released: a ledger created before them gets them when flowgate opens it.
#[tokio::test]
async fn a_ledger_from_before_the_later_indexes_gets_them() {
    let (_dir, path) = created().await;
    let later = |conn: &Connection| -> i64 {
        count(
            conn,
            "SELECT count(*) FROM sqlite_master \
             WHERE name IN ('buckets_by_start', 'usage_by_chatflow', 'adjustments')",
        )
    };
    let conn = Connection::open(&path).expect("open");
    assert_eq!(later(&conn), 3);
    conn.execute_batch(
        "DROP INDEX buckets_by_start; DROP INDEX usage_by_chatflow; DROP TABLE adjustments",
    )
    .expect("as a version-1 ledger had it");
    assert_eq!(later(&conn), 0);
    drop(conn);
    drop(SqliteLedger::open(&path).await.expect("reopen"));
    assert_eq!(later(&Connection::open(&path).expect("open")), 3);
}

#[test]
fn a_full_disk_or_an_io_error_is_worth_retrying_and_a_constraint_is_not() {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch("CREATE TABLE t (x BLOB); PRAGMA max_page_count = 2;")
        .expect("table");
    // A database that may not grow fails as a full disk does: SQLITE_FULL.
    let full = conn
        .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
        .expect_err("no room");
    assert_eq!(
        full.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull)
    );
    assert!(is_transient(&full));
    assert!(BatchFailure::from(&full).error().transient());
    let io = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
        None,
    );
    assert!(is_transient(&io));
    let constraint = conn
        .execute("INSERT INTO nowhere VALUES (1)", [])
        .expect_err("no such table");
    assert!(!is_transient(&constraint));
}

/// A batch that panics is rolled back, its callers are told to retry, and the writer goes on.
#[tokio::test]
async fn the_writer_survives_a_batch_that_panics() {
    use crate::ledger::CreditLedger;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let first = std::sync::atomic::AtomicBool::new(true);
    let ledger = SqliteLedger::open_with(&path, move |conn, batch| {
        if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            // Writes of its own, then a panic before the commit.
            let tx = conn.transaction().expect("transaction");
            tx.execute_batch(
                "INSERT INTO buckets (policy, bucket, window_start, used) \
                 VALUES ('team/pool', '*', 0, 5)",
            )
            .expect("a write");
            panic!("the first batch fails after its writes");
        }
        commit_batch(conn, batch)
    })
    .await
    .expect("open");
    let now = Timestamp::now();
    let failed = ledger.reserve(reserve_request("alice", false, now)).await;
    assert!(
        matches!(&failed, Err(e) if e.transient()),
        "a retry may succeed: {failed:?}"
    );
    let window = Window {
        start: now,
        end: None,
    };
    let used = ledger.balance("team/pool", "*", &window).await;
    assert_eq!(used.expect("balance"), 0, "rolled back");
    let retried = ledger.reserve(reserve_request("alice", false, now)).await;
    assert!(
        matches!(retried, Ok(ReserveOutcome::Reserved { .. })),
        "{retried:?}"
    );
    let used = ledger.balance("team/pool", "*", &window).await;
    assert_eq!(used.expect("balance"), 10);
}

/// A ledger with one charge (alice's 10), whose file another ledger's was then moved over (a
/// restore into the running pod); its directory, and when the charge was made.
async fn replaced_underneath() -> (SqliteLedger, tempfile::TempDir, Timestamp) {
    use crate::ledger::CreditLedger;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.expect("open");
    let now = Timestamp::now();
    let reserved = ledger.reserve(reserve_request("alice", false, now)).await;
    assert!(
        matches!(reserved, Ok(ReserveOutcome::Reserved { .. })),
        "{reserved:?}"
    );
    let other = dir.path().join("restored.db");
    drop(SqliteLedger::open(&other).await.expect("another ledger"));
    std::fs::rename(&other, &path).expect("replace");
    (ledger, dir, now)
}

/// Closes `ledger` and opens what is now at its path, as a restart does: it must be the file
/// moved there, untouched (the old one's write-ahead log, which SQLite leaves beside a moved
/// database it closes, emptied, not replayed onto it).
async fn restart_finds_the_restored_ledger(ledger: SqliteLedger, dir: &Path, now: Timestamp) {
    use crate::ledger::CreditLedger;
    ledger.close(Duration::from_secs(5)).await.expect("closed");
    drop(ledger);
    let path = dir.join("ledger.db");
    let restarted = SqliteLedger::open(&path).await.expect("reopen");
    let window = Window {
        start: now,
        end: None,
    };
    let used = restarted.balance("team/pool", "*", &window).await;
    assert_eq!(
        used.expect("balance"),
        0,
        "the restored ledger's, untouched"
    );
    let conn = Connection::open(&path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// A ledger file removed or replaced underneath is never written again: a charge is refused, for
/// good, rather than committed into a file nothing will read.
#[tokio::test]
async fn a_ledger_file_replaced_underneath_fails_every_write() {
    use crate::ledger::CreditLedger;
    let (ledger, dir, now) = replaced_underneath().await;
    for _ in 0..2 {
        let refused = ledger.reserve(reserve_request("alice", false, now)).await;
        assert!(
            matches!(&refused, Err(e) if !e.transient() && e.to_string().contains("replaced")),
            "{refused:?}"
        );
    }
    restart_finds_the_restored_ledger(ledger, dir.path(), now).await;
}

/// Replaced while the writer had nothing to do and closed before anything else was written:
/// the old file's write-ahead log is still emptied at close, not replayed at the next start.
#[tokio::test]
async fn a_ledger_file_replaced_while_idle_is_not_replayed_after_a_restart() {
    let (ledger, dir, now) = replaced_underneath().await;
    restart_finds_the_restored_ledger(ledger, dir.path(), now).await;
}

/// A read that walks more rows than it can in the read limit (a caller's long history, looking
/// for a policy it was never charged on) is stopped with `ReadTimeout`, and the read connection
/// answers the next read as before.
#[tokio::test]
async fn a_read_past_its_limit_is_stopped_and_the_reader_goes_on() {
    let (_dir, path) = created().await;
    let mut conn = open_writer(&path).expect("reopen");
    let tx = conn.transaction().expect("begin");
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy, credits, tokens,
                            outcome)
         SELECT i, i, 'user:heavy', 'team/bot', 'team/monthly', 1, 0, 'charged' FROM n",
        [],
    )
    .expect("history");
    tx.commit().expect("commit");
    drop(conn);

    let mut ledger = SqliteLedger::open(&path).await.expect("open");
    let nowhere = || UsageFilter {
        subject: Some("user:heavy".into()),
        policy: Some("team/never-charged".into()),
        ..UsageFilter::default()
    };
    ledger.read_limit = Duration::ZERO;
    let error = ledger.usage(nowhere()).await.expect_err("past the limit");
    assert!(
        matches!(error, LedgerError::ReadTimeout(limit) if limit == Duration::ZERO),
        "{error}"
    );
    assert!(error.transient(), "worth asking again");

    ledger.read_limit = READ_LIMIT;
    assert_eq!(ledger.usage(nowhere()).await.expect("within the limit"), []);
    let newest = UsageFilter {
        subject: Some("user:heavy".into()),
        limit: 1,
        ..UsageFilter::default()
    };
    let rows = ledger.usage(newest).await.expect("the newest row");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [200000]);
}
