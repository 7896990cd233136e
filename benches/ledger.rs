//! Reservations per second of each ledger backend, with 1, 16 and 64 concurrent callers.
//!
//!   cargo bench --bench ledger
//!
//! SQLite runs durable (WAL, synchronous=FULL, group commit) on a file under the target
//! directory (a real disk, not tmpfs). PostgreSQL runs when `FLOWGATE_TEST_POSTGRES_URL` is set
//! (`scripts/postgres.sh start`, `eval "$(scripts/postgres.sh env)"`), in a fresh schema.
//! `FLOWGATE_BENCH_SECONDS` sets the length of each measurement (default 3).
//!
//! Each caller reserves 1 credit in a loop, either in its own bucket (PerSubject) or in one
//! bucket all callers share (Shared: every reserve contends for the same row). In the
//! `Shared+settle` rows each reservation is also settled in the background as soon as it is
//! made, as the proxy does when Flowise answers: reserves then share the writer with settles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate::config::LedgerUrl;
use flowgate::crd::policy::Period;
use flowgate::ledger::{self, BudgetLine, CreditLedger, ReserveOutcome, ReserveRequest};
use jiff::Timestamp;

const CALLERS: [usize; 3] = [1, 16, 64];

#[tokio::main]
async fn main() {
    let seconds = std::env::var("FLOWGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let length = Duration::from_secs(seconds);

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench directory");
    let sqlite = ledger::open(&LedgerUrl::Sqlite(dir.path().join("bench.db")))
        .await
        .expect("SQLite ledger");
    println!("backend     callers  bucket         reservations/s   p50 ms   p99 ms   max ms");
    run("sqlite", &sqlite, length).await;
    drop(sqlite);

    match std::env::var("FLOWGATE_TEST_POSTGRES_URL") {
        Ok(url) => {
            let url = fresh_schema(&url).await;
            let postgres = ledger::open(&LedgerUrl::Postgres(url))
                .await
                .expect("PostgreSQL ledger");
            run("postgres", &postgres, length).await;
        }
        Err(_) => println!(
            "postgres    skipped: FLOWGATE_TEST_POSTGRES_URL is unset (scripts/postgres.sh start)"
        ),
    }
}

/// Whose bucket each caller charges, and whether reservations are settled.
#[derive(Clone, Copy, Debug)]
enum Mode {
    PerSubject,
    Shared,
    SharedSettle,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::PerSubject => "PerSubject",
            Mode::Shared => "Shared",
            Mode::SharedSettle => "Shared+settle",
        }
    }
}

async fn run(backend: &str, ledger: &Arc<dyn CreditLedger>, length: Duration) {
    for mode in [Mode::PerSubject, Mode::Shared, Mode::SharedSettle] {
        for callers in CALLERS {
            let policy = format!("bench/{backend}-{callers}-{mode:?}");
            let (mut latencies, elapsed) = measure(ledger, &policy, callers, mode, length).await;
            latencies.sort();
            let pct = |p: usize| {
                latencies
                    .get(latencies.len() * p / 100)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            };
            println!(
                "{backend:<11} {callers:>7}  {:<13} {:>13.0} {:>8.2} {:>8.2} {:>8.2}",
                mode.label(),
                latencies.len() as f64 / elapsed.as_secs_f64(),
                pct(50),
                pct(99),
                latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            );
        }
    }
}

/// Runs `callers` loops of reserves for `length`; returns every reserve's latency and how long
/// the run took until the last caller finished.
async fn measure(
    ledger: &Arc<dyn CreditLedger>,
    policy: &str,
    callers: usize,
    mode: Mode,
    length: Duration,
) -> (Vec<Duration>, Duration) {
    let now = Timestamp::now();
    let started = Instant::now();
    let window = ledger::window(Period::Monthly, "UTC", now).expect("window");
    let deadline = Instant::now() + length;
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let ledger = ledger.clone();
            let subject = format!("user-{caller}");
            let line = BudgetLine {
                policy: policy.to_string(),
                bucket: match mode {
                    Mode::PerSubject => subject.clone(),
                    Mode::Shared | Mode::SharedSettle => "*".into(),
                },
                limit: u64::MAX,
                window,
                amount: 1,
            };
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut settles = Vec::new();
                while Instant::now() < deadline {
                    let request = ReserveRequest {
                        subject: subject.clone(),
                        chatflow: "bench/chatflow".into(),
                        idempotency_key: None,
                        lines: vec![line.clone()],
                        now,
                        ttl: Duration::from_secs(60),
                    };
                    let started = Instant::now();
                    let outcome = ledger.reserve(request).await.expect("reserve");
                    latencies.push(started.elapsed());
                    let ReserveOutcome::Reserved { id, .. } = outcome else {
                        panic!("not reserved: {outcome:?}");
                    };
                    if let Mode::SharedSettle = mode {
                        let ledger = ledger.clone();
                        settles.push(tokio::spawn(async move {
                            ledger.settle(id, &[1], 0, now).await.expect("settle");
                        }));
                    }
                }
                for settle in settles {
                    settle.await.expect("settle task");
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("caller"));
    }
    (all, started.elapsed())
}

async fn fresh_schema(base: &str) -> String {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect to FLOWGATE_TEST_POSTGRES_URL");
    tokio::spawn(connection);
    // A schema of this run's own: concurrent runs (another checkout, CI) never share one.
    let schema = format!(
        "bench_{}_{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    );
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("bench schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}
