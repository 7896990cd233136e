//! `flowgate ledger backup`, the real binary: a consistent copy of a SQLite ledger taken while
//! it is being written, to a file or to stdout, and clear refusals.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowgate::config::LedgerUrl;
use flowgate::crd::policy::Period;
use flowgate::ledger::{self, BudgetLine, CreditLedger, ReserveRequest, UsageFilter};
use jiff::Timestamp;

const POLICY: &str = "team/monthly";

fn backup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["ledger", "backup"])
        .args(args)
        .env_remove("FLOWGATE_LEDGER_URL")
        .output()
        .expect("flowgate runs")
}

/// Whether the ledger at `path` is whole: every final charge in its bucket is in its usage log.
async fn charged_and_logged(path: &std::path::Path) -> (i64, i64) {
    let copy = ledger::open(&LedgerUrl::Sqlite(path.to_path_buf()))
        .await
        .expect("the copy opens as a ledger");
    let window = ledger::window(Period::Never, "UTC", Timestamp::now()).expect("window");
    let used = copy.balance(POLICY, "*", &window).await.expect("balance");
    let logged: i64 = copy
        .usage(UsageFilter {
            limit: 1_000_000,
            ..UsageFilter::default()
        })
        .await
        .expect("usage")
        .iter()
        .map(|row| row.credits)
        .sum();
    (used, logged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_charging_is_a_consistent_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", path.display());
    let live: Arc<dyn CreditLedger> = ledger::open(&LedgerUrl::Sqlite(path.clone()))
        .await
        .expect("ledger");
    let window = ledger::window(Period::Never, "UTC", Timestamp::now()).expect("window");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|n| {
            let (live, stop) = (live.clone(), stop.clone());
            tokio::spawn(async move {
                let mut charged = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = ReserveRequest {
                        subject: format!("user-{n}"),
                        chatflow: "team/bot".into(),
                        idempotency_key: None,
                        lines: vec![BudgetLine {
                            policy: POLICY.into(),
                            bucket: "*".into(),
                            limit: u64::MAX,
                            own_limit: false,
                            window,
                            amount: 3,
                        }],
                        now: Timestamp::now(),
                        ttl: Duration::from_secs(900),
                        final_cost: true,
                    };
                    live.reserve(request).await.expect("reserve");
                    charged += 3;
                }
                charged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let to_file = dir.path().join("copy.db");
    let to_stdout = dir.path().join("stdout.db");
    let (file_run, stdout_run) = {
        let (url2, to_file2) = (url.clone(), to_file.clone());
        let file_run = tokio::task::spawn_blocking(move || {
            backup(&["--ledger-url", &url2, to_file2.to_str().expect("utf-8")])
        });
        let url3 = url.clone();
        let stdout_run = tokio::task::spawn_blocking(move || backup(&["--ledger-url", &url3, "-"]));
        (
            file_run.await.expect("task"),
            stdout_run.await.expect("task"),
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for writer in writers {
        total += writer.await.expect("writer");
    }
    assert!(
        file_run.status.success(),
        "{}",
        String::from_utf8_lossy(&file_run.stderr)
    );
    assert!(
        stdout_run.status.success(),
        "{}",
        String::from_utf8_lossy(&stdout_run.stderr)
    );
    std::fs::write(&to_stdout, &stdout_run.stdout).expect("write the streamed copy");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".backup-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the stdout scratch file is removed: {leftovers:?}"
    );

    let live_used = live.balance(POLICY, "*", &window).await.expect("balance");
    assert_eq!(live_used, total);
    for copy in [&to_file, &to_stdout] {
        let (used, logged) = charged_and_logged(copy).await;
        assert!(
            used > 0,
            "{}: the copy holds the charges before it",
            copy.display()
        );
        assert!(used < live_used, "and not those after it");
        assert_eq!(
            used,
            logged,
            "{}: one snapshot, bucket and log",
            copy.display()
        );
    }

    // Also with no flowgate running on it.
    drop(live);
    let cold = dir.path().join("cold.db");
    let run = backup(&["--ledger-url", &url, cold.to_str().expect("utf-8")]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(charged_and_logged(&cold).await, (total, total));
}

#[tokio::test]
async fn a_backup_refuses_what_it_cannot_do_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_ledger = dir.path().join("empty.db");
    std::fs::write(&not_a_ledger, b"").expect("an empty SQLite file");
    let real = dir.path().join("ledger.db");
    drop(
        ledger::open(&LedgerUrl::Sqlite(real.clone()))
            .await
            .expect("ledger"),
    );
    let dest = dir.path().join("copy.db");
    std::fs::write(&dest, b"keep me").expect("existing file");
    for (args, says) in [
        (
            vec![
                "--ledger-url".to_string(),
                format!("sqlite://{}", real.display()),
                dest.display().to_string(),
            ],
            "already exists: a backup never overwrites a file",
        ),
        (
            vec![
                "--ledger-url".to_string(),
                "postgres://flowgate@db/ledger".to_string(),
                "x.db".to_string(),
            ],
            "pg_dump",
        ),
        (
            vec![
                "--ledger-url".to_string(),
                format!("sqlite://{}", not_a_ledger.display()),
                dir.path().join("new.db").display().to_string(),
            ],
            "not a flowgate ledger",
        ),
        (
            vec![
                "--ledger-url".to_string(),
                "mysql://x".to_string(),
                "x.db".to_string(),
            ],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            vec![
                "--ledger-url".to_string(),
                format!("sqlite://{}", real.display()),
                "file:copy.db".to_string(),
            ],
            "which SQLite reads as a URI",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = backup(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&dest).expect("still there"), b"keep me");
}

/// A copy that fails partway (the disk full; here, a file size limit) leaves nothing: what it
/// wrote would open as a new, empty ledger, every balance back to zero.
#[tokio::test]
async fn a_backup_that_fails_partway_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("ledger.db");
    drop(
        ledger::open(&LedgerUrl::Sqlite(real.clone()))
            .await
            .expect("ledger"),
    );
    // Some history, so that the copy is larger than the limit below.
    let db = rusqlite::Connection::open(&real).expect("open");
    db.execute_batch(
        "CREATE TABLE history (line TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO history SELECT printf('%.1000c', 'x') FROM n;",
    )
    .expect("history");
    drop(db);
    let dest = dir.path().join("copy.db");
    // Writes past 64 KiB fail with EFBIG (SIGXFSZ ignored, as the shell passes it on to exec):
    // room for the ledger's shared-memory file (32 KiB), not for the 200 KiB copy.
    let run = Command::new("bash")
        .args([
            "-c",
            r#"trap '' XFSZ; ulimit -f 64; exec "$0" ledger backup --ledger-url "$1" "$2""#,
            env!("CARGO_BIN_EXE_flowgate"),
            &format!("sqlite://{}", real.display()),
            &dest.display().to_string(),
        ])
        .env_remove("FLOWGATE_LEDGER_URL")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the copy cannot fit: {stderr}");
    assert!(
        !dest.exists(),
        "a failed copy is removed ({} bytes left): {stderr}",
        std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0)
    );
}
