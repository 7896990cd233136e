//! `kill -9` of a process holding reservations loses none of them.

use super::*;

const CHILD_ENV: &str = "FLOWGATE_LEDGER_CRASH_CHILD_DB";
const RESERVATIONS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_charges_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let store = crate::support::sqlite();
    let flowgate::config::LedgerUrl::Sqlite(path) = &store.url else {
        unreachable!("a SQLite store")
    };
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sqlite_crash::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let reported = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "reserved")
    })
    .await
    .expect("reader");
    assert!(reported, "the child reported its reservations");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let ledger = store.open().await;
    assert_eq!(used(&*ledger, POLICY, "*").await, RESERVATIONS as i64);
}

/// Run by `reserved_charges_survive_kill_9` in a child process, which it then kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process for reserved_charges_survive_kill_9"]
async fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let ledger = ledger::open(&flowgate::config::LedgerUrl::Sqlite(path.into()))
        .await
        .expect("open");
    concurrently(&ledger, RESERVATIONS, |i| {
        request(&format!("user-{i}"), vec![line(POLICY, "*", 1000, 1)])
    })
    .await;
    println!("reserved");
    tokio::time::sleep(Duration::from_secs(600)).await;
}
