//! Reservations per second of each ledger backend, with 1, 16 and 64 concurrent callers.
//!
//!   cargo bench --bench ledger
//!
//! SQLite runs durable (WAL, synchronous=FULL, group commit) on a file under the target
//! directory (a real disk, not tmpfs). PostgreSQL runs when `FLOWGATE_TEST_POSTGRES_URL` is set
//! (`scripts/postgres.sh start`, `eval "$(scripts/postgres.sh env)"`), in a fresh schema.
//! `FLOWGATE_BENCH_SECONDS` sets the length of each measurement (default 3; 1 when `cargo test`
//! runs it as a smoke test).
//!
//! Each caller reserves 1 credit in a loop, either in its own bucket (PerSubject) or in one
//! bucket all callers share (Shared: every reserve contends for the same row). In the
//! `Shared+settle` rows each reservation is also settled in the background as soon as it is
//! made, as the proxy does when Flowise answers: reserves then share the writer with settles.
//!
//! The `while pruning` row is `Shared, final` with 16 callers again, while a retention prune
//! (chunks of 1,000 rows, 10 ms apart, as the sweeper runs it) deletes every reservation the rows
//! before it closed and their usage rows; the line after it says how many and how fast.
//!
//! The paced rows are one caller that waits 5 or 50 ms between reserves, as a gateway at low
//! load does: the writer thread and the disk go idle in between, and waking them costs more
//! than a reserve under load. Beside them, the same pacing for a bare 4 KiB `fdatasync` in the
//! SQLite directory: the part of a paced reserve that is the disk's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate::config::LedgerUrl;
use flowgate::crd::policy::Period;
use flowgate::ledger::{self, BudgetLine, CreditLedger, ReserveOutcome, ReserveRequest};
use jiff::Timestamp;

const CALLERS: [usize; 3] = [1, 16, 64];
/// Gaps between one caller's reserves in the paced rows.
const PACES: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(50)];

#[tokio::main]
async fn main() {
    let seconds = std::env::var("FLOWGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        // `cargo test --all-targets` runs this as a smoke test, without `--bench`: 1 s per row.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            3
        } else {
            1
        });
    let length = Duration::from_secs(seconds);

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench directory");
    let sqlite = ledger::open(&LedgerUrl::Sqlite(dir.path().join("bench.db")))
        .await
        .expect("SQLite ledger");
    println!("backend     callers  bucket         reservations/s   p50 ms   p99 ms   max ms");
    run("sqlite", &sqlite, length).await;
    drop(sqlite);
    let sync_file = dir.path().join("fdatasync.bin");
    for pace in std::iter::once(None).chain(PACES.map(Some)) {
        let file = sync_file.clone();
        let (latencies, elapsed) =
            tokio::task::spawn_blocking(move || fdatasyncs(&file, pace, length))
                .await
                .expect("fdatasync task");
        let label = pace.map_or("back to back".to_string(), |p| Mode::Paced(p).label());
        print_row("fdatasync", 1, &label, latencies, elapsed);
    }

    match std::env::var("FLOWGATE_TEST_POSTGRES_URL") {
        Ok(url) => {
            let (admin, schema, url) = fresh_schema(&url).await;
            let postgres = ledger::open(&LedgerUrl::Postgres(url))
                .await
                .expect("PostgreSQL ledger");
            run("postgres", &postgres, length).await;
            drop(postgres);
            admin
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .expect("drop the bench schema");
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
    /// Shared, each reserve a final cost (charged and logged at once, nothing to settle): what
    /// the proxy does for a policy without token pricing.
    SharedFinal,
    /// PerSubject, waiting this long after each reserve.
    Paced(Duration),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::PerSubject => "PerSubject".into(),
            Mode::Shared => "Shared".into(),
            Mode::SharedSettle => "Shared+settle".into(),
            Mode::SharedFinal => "Shared, final".into(),
            Mode::Paced(gap) => format!("paced {} ms", gap.as_millis()),
        }
    }
}

async fn run(backend: &str, ledger: &Arc<dyn CreditLedger>, length: Duration) {
    let loaded = [
        Mode::PerSubject,
        Mode::Shared,
        Mode::SharedSettle,
        Mode::SharedFinal,
    ]
    .into_iter()
    .flat_map(|mode| CALLERS.map(|callers| (mode, callers)));
    let paced = PACES.map(|gap| (Mode::Paced(gap), 1));
    for (mode, callers) in loaded.chain(paced) {
        let policy = format!("bench/{backend}-{callers}-{mode:?}");
        let (latencies, elapsed) = measure(ledger, &policy, callers, mode, length).await;
        print_row(backend, callers, &mode.label(), latencies, elapsed);
    }
    prune_under_load(backend, ledger, length).await;
}

/// `Shared, final` with 16 callers while a prune deletes what the rows before closed.
async fn prune_under_load(backend: &str, ledger: &Arc<dyn CreditLedger>, length: Duration) {
    // Everything closed so far is older than the cutoff; what the callers write now is not.
    let cutoff = Timestamp::now();
    let pruning = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let pruned = ledger::retention::prune(
                &*ledger,
                cutoff,
                ledger::retention::CHUNK,
                ledger::retention::PAUSE,
            )
            .await
            .expect("prune");
            (pruned, started.elapsed())
        })
    };
    let policy = format!("bench/{backend}-prune");
    let (latencies, elapsed) = measure(ledger, &policy, 16, Mode::SharedFinal, length).await;
    print_row(backend, 16, "while pruning", latencies, elapsed);
    let (pruned, took) = pruning.await.expect("prune task");
    let rows = pruned.reservations + pruned.usage;
    println!(
        "{backend:<11} pruned {} reservations and {} usage rows in {:.2} s ({:.0} rows/s)",
        pruned.reservations,
        pruned.usage,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
    );
}

fn print_row(
    backend: &str,
    callers: usize,
    label: &str,
    mut latencies: Vec<Duration>,
    elapsed: Duration,
) {
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{backend:<11} {callers:>7}  {label:<13} {:>13.0} {:>8.2} {:>8.2} {:>8.2}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(50),
        pct(99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
}

/// Overwrites 4 KiB of a 1 MiB file and `fdatasync`s it in a loop for `length`, waiting `pace` after each.
fn fdatasyncs(
    path: &std::path::Path,
    pace: Option<Duration>,
    length: Duration,
) -> (Vec<Duration>, Duration) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("fdatasync file");
    let page = [0x5au8; 4096];
    // Allocated up front: the loop measures overwrites, as SQLite's reused WAL pages are.
    for offset in (0..256u64).map(|i| i * 4096) {
        file.write_all_at(&page, offset).expect("write");
    }
    file.sync_all().expect("fsync");
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < length {
        let offset = (latencies.len() % 256) as u64 * 4096;
        file.write_all_at(&page, offset).expect("write");
        let synced = Instant::now();
        file.sync_data().expect("fdatasync");
        latencies.push(synced.elapsed());
        if let Some(gap) = pace {
            std::thread::sleep(gap);
        }
    }
    (latencies, started.elapsed())
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
                    Mode::PerSubject | Mode::Paced(_) => subject.clone(),
                    Mode::Shared | Mode::SharedSettle | Mode::SharedFinal => "*".into(),
                },
                limit: u64::MAX,
                own_limit: false,
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
                        final_cost: matches!(mode, Mode::SharedFinal),
                    };
                    let started = Instant::now();
                    let outcome = ledger.reserve(request).await.expect("reserve");
                    latencies.push(started.elapsed());
                    let ReserveOutcome::Reserved { id, .. } = outcome else {
                        panic!("not reserved: {outcome:?}");
                    };
                    if let Mode::Paced(gap) = mode {
                        tokio::time::sleep(gap).await;
                    }
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

/// A schema of this run's own (concurrent runs — another checkout, CI — never share one), and a
/// connection to drop it with when the run ends. Schemas that crashed runs left behind more than
/// an hour ago are dropped first: every `cargo test` runs this bench, so they would pile up.
async fn fresh_schema(base: &str) -> (tokio_postgres::Client, String, String) {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect to FLOWGATE_TEST_POSTGRES_URL");
    tokio::spawn(connection);
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let stale = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'",
            &[],
        )
        .await
        .expect("list bench schemas");
    for row in stale {
        let name: String = row.get(0);
        let started_ms = name
            .rsplit('_')
            .next()
            .and_then(|ms| ms.parse::<i64>().ok());
        if started_ms.is_some_and(|ms| now_ms - ms > 3_600_000) {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await
                .expect("drop a stale bench schema");
        }
    }
    let schema = format!("bench_{}_{now_ms}", std::process::id());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("bench schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
    (client, schema, url)
}
