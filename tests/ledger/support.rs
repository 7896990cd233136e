//! Fixtures: a fresh store per test, for each backend, and request builders.

use std::sync::Arc;
use std::time::Duration;

use flowgate::config::LedgerUrl;
use flowgate::crd::policy::Period;
use flowgate::ledger::{
    self, BudgetLine, CreditLedger, ReservationId, ReserveOutcome, ReserveRequest, Window,
};
use jiff::Timestamp;

/// Where a test's ledger lives; every `open` is an independent ledger (a replica, or a restart).
pub struct Store {
    pub url: LedgerUrl,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    pub async fn open(&self) -> Arc<dyn CreditLedger> {
        ledger::open(&self.url).await.expect("ledger opens")
    }

    /// A connection to a PostgreSQL store (as an operator or another flowgate might open).
    pub async fn sql(&self) -> tokio_postgres::Client {
        let LedgerUrl::Postgres(url) = &self.url else {
            panic!("SQL is for PostgreSQL stores");
        };
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    /// Runs `sql` on a PostgreSQL store.
    pub async fn execute(&self, sql: &str) {
        self.sql().await.batch_execute(sql).await.expect("SQL runs");
    }

    /// The `bigint` the PostgreSQL query `sql` answers.
    pub async fn count(&self, sql: &str) -> i64 {
        let row = self
            .sql()
            .await
            .query_one(sql, &[])
            .await
            .expect("SQL runs");
        row.get(0)
    }

    /// Whether the usage log's chatflow index, which a PostgreSQL ledger builds in the background
    /// after it opens, exists and is valid (`None`: it does not exist).
    pub async fn chatflow_index(&self) -> Option<bool> {
        self.sql()
            .await
            .query_one(
                "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = \
                 to_regclass(quote_ident(current_schema()) || '.usage_by_chatflow'))",
                &[],
            )
            .await
            .expect("SQL runs")
            .get(0)
    }

    /// Waits until a ledger opened on this PostgreSQL store has built its chatflow index.
    pub async fn late_index_built(&self) {
        self.chatflow_index_becomes("built", |state| state == Some(true))
            .await;
    }

    /// Waits (20 s at most) until [`Store::chatflow_index`] is as `wanted` says: `what`.
    pub async fn chatflow_index_becomes(&self, what: &str, wanted: impl Fn(Option<bool>) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.chatflow_index().await;
            if wanted(state) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage_by_chatflow not {what}: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the database refuse every usage row of subject `refused`, as a database can refuse
    /// any write (a full disk, a constraint): the operation fails after its earlier writes.
    pub async fn refuse_usage_of_subject_refused(&self) {
        match &self.url {
            LedgerUrl::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open SQLite");
                conn.execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON usage WHEN NEW.subject = 'refused'
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                )
                .expect("trigger");
            }
            LedgerUrl::Postgres(_) => {
                // A trigger's lock on `usage` waits for the index build still running since the
                // ledger opened, which waits for this transaction: PostgreSQL ends one of the two
                // as a deadlock. Once built, nothing waits.
                self.late_index_built().await;
                self.sql()
                    .await
                    .batch_execute(
                        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN
                             IF NEW.subject = 'refused' THEN
                                 RAISE EXCEPTION 'refused by the test';
                             END IF;
                             RETURN NEW;
                         END $$;
                         CREATE TRIGGER refuse BEFORE INSERT ON usage
                             FOR EACH ROW EXECUTE FUNCTION refuse();",
                    )
                    .await
                    .expect("trigger");
            }
        }
    }
}

/// A SQLite file in a fresh temporary directory.
pub fn sqlite() -> Store {
    let dir = tempfile::tempdir().expect("tempdir");
    Store {
        url: LedgerUrl::Sqlite(dir.path().join("ledger.db")),
        _dir: Some(dir),
    }
}

/// A fresh schema named after the test in the database of `FLOWGATE_TEST_POSTGRES_URL`.
pub async fn postgres(test: &str) -> Store {
    let Ok(base) = std::env::var("FLOWGATE_TEST_POSTGRES_URL") else {
        panic!(
            "FLOWGATE_TEST_POSTGRES_URL is not set: the PostgreSQL ledger tests need a server. \
             Run `scripts/postgres.sh start` and `eval \"$(scripts/postgres.sh env)\"`, \
             then run the tests again."
        );
    };
    let schema = schema_name(test);
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to FLOWGATE_TEST_POSTGRES_URL={base} ({e}); run `scripts/postgres.sh start`")
        });
    tokio::spawn(connection);
    // A ledger opened on the schema before may still be building its late index there (in
    // the background, concurrently): dropping the schema meanwhile can meet "tuple
    // concurrently updated"; the next try finds the build gone.
    let fresh = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    for attempt in 1.. {
        match client.batch_execute(&fresh).await {
            Ok(()) => break,
            Err(error) if attempt < 20 => {
                eprintln!("fresh schema {schema}, attempt {attempt}: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => panic!("fresh schema {schema}: {error}"),
        }
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    Store {
        url: LedgerUrl::Postgres(format!("{base}{separator}options=-csearch_path%3D{schema}")),
        _dir: None,
    }
}

/// A valid, short, deterministic schema name: a rerun replaces the previous run's schema.
fn schema_name(test: &str) -> String {
    let hash = test.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let short: String = test.chars().take(40).collect();
    format!("t_{short}_{:08x}", hash as u32)
}

/// The instant most scenarios happen at: Monday 2026-05-04 10:00 UTC.
pub fn now() -> Timestamp {
    at("2026-05-04T10:00:00Z")
}

pub fn at(instant: &str) -> Timestamp {
    instant.parse().expect("test instant")
}

pub fn monthly_utc(now: Timestamp) -> Window {
    ledger::window(Period::Monthly, "UTC", now).expect("window")
}

/// A line of a Monthly UTC budget in the window of [`now`].
pub fn line(policy: &str, bucket: &str, limit: u64, amount: u64) -> BudgetLine {
    BudgetLine {
        policy: policy.into(),
        bucket: bucket.into(),
        limit,
        own_limit: false,
        window: monthly_utc(now()),
        amount,
    }
}

/// A request by `subject` at [`now`] with a one-minute ttl.
pub fn request(subject: &str, lines: Vec<BudgetLine>) -> ReserveRequest {
    ReserveRequest {
        subject: subject.into(),
        chatflow: "team-a/support-bot".into(),
        idempotency_key: None,
        lines,
        now: now(),
        ttl: Duration::from_secs(60),
        final_cost: false,
    }
}

pub trait OutcomeExt {
    fn id(&self) -> ReservationId;
}

impl OutcomeExt for ReserveOutcome {
    /// The id of a `Reserved` outcome; anything else fails the test.
    fn id(&self) -> ReservationId {
        match self {
            ReserveOutcome::Reserved { id, .. } => *id,
            other => panic!("expected Reserved, got {other:?}"),
        }
    }
}

/// The used credits of a bucket in the window of [`now`].
pub async fn used(ledger: &dyn CreditLedger, policy: &str, bucket: &str) -> i64 {
    ledger
        .balance(policy, bucket, &monthly_utc(now()))
        .await
        .expect("balance")
}

/// The whole usage log (up to 1,000 rows), newest first.
pub async fn whole_log(ledger: &dyn CreditLedger) -> Vec<ledger::UsageRecord> {
    ledger
        .usage(ledger::UsageFilter {
            limit: 1000,
            ..ledger::UsageFilter::default()
        })
        .await
        .expect("usage")
}

/// Runs `n` reserves at once and returns their outcomes.
pub async fn concurrently(
    ledger: &Arc<dyn CreditLedger>,
    n: usize,
    make: impl Fn(usize) -> ReserveRequest,
) -> Vec<ReserveOutcome> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (ledger, req) = (ledger.clone(), make(i));
            tokio::spawn(async move { ledger.reserve(req).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("reserve"));
    }
    outcomes
}

/// Opens the ledger at `url`, and reserves and takes a rate allowance on it (each pool opens
/// its own connections).
pub async fn opens_and_charges(url: &LedgerUrl) {
    let ledger = ledger::open(url)
        .await
        .unwrap_or_else(|e| panic!("{url:?} opens: {e}"));
    let outcome = ledger
        .reserve(request("alice", vec![line(crate::POLICY, "alice", 10, 1)]))
        .await
        .expect("reserve");
    assert!(
        matches!(outcome, ReserveOutcome::Reserved { .. }),
        "{outcome:?}"
    );
    assert_eq!(used(&*ledger, crate::POLICY, "alice").await, 1);
    let take = ledger
        .take_rate("tls", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("the shared pool connects too")
        .expect("PostgreSQL shares allowances");
    assert!(take.admitted);
}
