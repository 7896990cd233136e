//! The real flowgate binary under faults: the API server unreachable under steady load (decisions
//! keep coming from the last snapshot), `kill -9` under load followed by a restart on the same
//! ledger (no charge lost, none doubled), and the decision log complete both when idle and at
//! exit. Starting and stopping: tests/process_signals.rs.

mod support;

use std::time::Duration;

use serde_json::json;

use support::FlowiseGate;
use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::credits_used;
use support::process::{eventually, predict_with, spawn, spawn_logging, spawn_on};
use support::team::Team;

/// Sends predictions at `rate` per second for `secs`; returns (sent, statuses other than 200).
async fn steady(base: &str, bearer: &str, id: &str, rate: u64, secs: u64) -> (usize, Vec<u16>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate));
    let mut all = Vec::new();
    let http = reqwest::Client::new();
    for _ in 0..rate * secs {
        tick.tick().await;
        let (base, bearer, id) = (base.to_string(), bearer.to_string(), id.to_string());
        let http = http.clone();
        all.push(tokio::spawn(async move {
            predict_with(&http, &base, &bearer, &id).await
        }));
    }
    let mut bad = Vec::new();
    for handle in all {
        let status = handle.await.unwrap_or(0);
        if status != 200 {
            bad.push(status);
        }
    }
    ((rate * secs) as usize, bad)
}

/// A relay to the test's API server, and a kubeconfig (in the directory returned) that reaches
/// the API server through it.
async fn relayed_api_server() -> (FlowiseGate, std::path::PathBuf, tempfile::TempDir) {
    let kubeconfig_path = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
    let kubeconfig = std::fs::read_to_string(&kubeconfig_path).expect("kubeconfig");
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("a server line")
        .to_string();
    let relay = FlowiseGate::open_to(&server).await;
    let relayed_addr = relay.url().trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let relayed = dir.path().join("kubeconfig");
    std::fs::write(
        &relayed,
        kubeconfig.replace(
            &format!("server: https://{server}"),
            &format!("server: https://{relayed_addr}"),
        ),
    )
    .expect("write kubeconfig");
    (relay, relayed, dir)
}

#[tokio::test]
async fn an_unreachable_api_server_does_not_stop_decisions() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let team = Team::with_fake_flowise("process-apiserver").await;
        let (relay, relayed, _dir) = relayed_api_server().await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = spawn(&fake.url, &relayed).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        relay.close();
        // The 60 s of outage under steady load at 20 req/s.
        let (sent, bad) = steady(&gate.base, &alice, &id, 20, 60).await;
        assert!(bad.is_empty(), "{} of {sent} failed: {bad:?}", bad.len());
        eprintln!("{sent} predictions answered during the API server outage");
        // ... while the failed watches are counted, for the alert on a stale index.
        let metrics = reqwest::get(format!("{}/metrics", gate.ops))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let failed: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("flowgate_index_watch_errors_total{kind=\"ChatflowAccess\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(failed >= 1.0, "watch errors counted: {metrics}");

        relay.reopen().await;
        // The watch comes back: a revocation made now takes effect.
        let api: kube::Api<flowgate::crd::ChatflowAccess> =
            kube::Api::namespaced(team.client.clone(), &team.ns);
        api.delete("support-team", &Default::default())
            .await
            .expect("revoke");
        eventually(&gate.base, &alice, &id, 403).await;
        team.cleanup().await;
    })
    .await
    .expect("bounded to 180 s");
}

/// The API server's connections go silent without a word (the API server frozen, or replaced
/// behind a route that still takes the packets): the index's watches are found dead and made
/// again on new connections, so a grant deleted meanwhile is enforced within about a minute,
/// not the five minutes of kube-runtime's default watch nor the kernel's fifteen.
#[tokio::test]
async fn watches_on_connections_gone_silent_are_made_again() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let team = Team::with_fake_flowise("process-silent").await;
        let (relay, relayed, _dir) = relayed_api_server().await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = spawn(&fake.url, &relayed).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;
        // Healthy watches on a quiet API server are no trouble, past the client's 45 s wait for
        // an answer: the server ends each watch within 30 s, and a new one begins.
        tokio::time::sleep(Duration::from_secs(50)).await;
        for kind in ["Chatflow", "ChatflowAccess", "CreditPolicy"] {
            let series = format!("flowgate_index_watch_errors_total{{kind=\"{kind}\"}}");
            let errors = support::metric(&gate.ops, &series).await.unwrap_or(0.0);
            assert_eq!(errors, 0.0, "{series}");
        }

        relay.freeze();
        let frozen = tokio::time::Instant::now();
        let api: kube::Api<flowgate::crd::ChatflowAccess> =
            kube::Api::namespaced(team.client.clone(), &team.ns);
        api.delete("support-team", &Default::default())
            .await
            .expect("revoke");
        let deadline = frozen + Duration::from_secs(120);
        while support::process::predict(&gate.base, &alice, &id).await != 403 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the deleted grant still allows after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "enforced {:?} after the connections went silent",
            frozen.elapsed()
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 180 s");
}

/// Decision lines in a log file (`decision="allow"` and the like).
fn decisions(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .expect("log readable")
        .lines()
        .filter(|line| line.contains(" decision="))
        .count()
}

#[tokio::test]
async fn every_decision_is_logged_when_idle_and_before_exit() {
    // Proxy threads hold their log lines until they go idle; a line must never wait for traffic.
    tokio::time::timeout(Duration::from_secs(60), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let team = Team::with_fake_flowise("process-logs").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("flowgate.log");
        let mut gate = spawn_logging(&fake.url, std::path::Path::new(&kubeconfig), &log).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        // One request on an idle proxy: its line appears without any further traffic.
        let before = decisions(&log);
        let answer = reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .json(&json!({"question": "ping"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), 200);
        let answered_id = answer.headers()["x-request-id"]
            .to_str()
            .expect("text")
            .to_string();
        support::eventually(5, "the decision line of an idle proxy", || async {
            (decisions(&log) != before).then_some(())
        })
        .await;
        assert_eq!(decisions(&log), before + 1);
        // The line names the request by the id its answer carried.
        let text = std::fs::read_to_string(&log).expect("log readable");
        let line = text
            .lines()
            .rfind(|l| l.contains(" decision="))
            .expect("a decision line");
        let request_id = line
            .split_once("request_id=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(request_id, _)| request_id);
        assert_eq!(request_id, Some(answered_id.as_str()), "{line}");
        assert!(
            request_id.is_some_and(|r| r.len() == 32 && r.bytes().all(|b| b.is_ascii_hexdigit())),
            "{line}"
        );

        // A burst, then SIGTERM at once: every line is in the log when the process has exited.
        let before = decisions(&log);
        let http = reqwest::Client::new();
        let burst = (0..400).map(|_| predict_with(&http, &gate.base, &alice, &id));
        let statuses = futures::future::join_all(burst).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        gate.child.sigterm();
        gate.child.exited(20, "flowgate after SIGTERM").await;
        assert_eq!(decisions(&log), before + 400);
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Steady load with periodic ChatflowAccess changes: zero errors and flat memory. The test
/// command runs one minute (`FLOWGATE_SOAK_SECS` overrides it; `scripts/soak.sh` runs ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_with_access_changes_has_no_errors_and_flat_memory() {
    let secs: u64 = std::env::var("FLOWGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    tokio::time::timeout(Duration::from_secs(secs + 90), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let team = Team::with_fake_flowise("process-soak").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 3 }).await;
        let gate = spawn(&fake.url, std::path::Path::new(&kubeconfig)).await;
        let pid = gate.child.id();
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        let rate = 50u64;
        let load = {
            let (base, alice, id) = (gate.base.clone(), alice.clone(), id.clone());
            tokio::spawn(async move { steady(&base, &alice, &id, rate, secs).await })
        };
        // Every 5 s: grant and revoke other subjects (Alice's own grant stays), and sample RSS.
        let mut samples = Vec::new();
        let mut changes = 0;
        let started = tokio::time::Instant::now();
        let mut round = 0;
        while started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            round += 1;
            let name = format!("churn-{round}");
            team.grant(&name, json!([{"user": format!("bob{round}@example.com")}]))
                .await;
            changes += 1;
            if round > 1 {
                let api: kube::Api<flowgate::crd::ChatflowAccess> =
                    kube::Api::namespaced(team.client.clone(), &team.ns);
                api.delete(&format!("churn-{}", round - 1), &Default::default())
                    .await
                    .expect("revoke");
                changes += 1;
            }
            samples.push(rss_kib(pid));
        }
        let (sent, bad) = load.await.expect("load task");
        eprintln!(
            "soak: {sent} predictions over {secs} s, {changes} access changes, RSS KiB {samples:?}"
        );
        assert!(bad.is_empty(), "{} of {sent} failed: {bad:?}", bad.len());
        assert_eq!(fake.predictions() as usize, sent + 1);
        // Flat memory: after the first sample (warm-up), growth stays under 25 % + 8 MiB.
        let warm = samples.get(1).copied().unwrap_or(samples[0]);
        let last = *samples.last().expect("samples");
        assert!(
            last <= warm + warm / 4 + 8 * 1024,
            "RSS grew from {warm} KiB to {last} KiB: {samples:?}"
        );
        team.cleanup().await;
    })
    .await
    .expect("soak bounded");
}

/// One prediction with its own question and Idempotency-Key; the status, or None when the
/// connection failed (the process was killed under it).
async fn keyed_predict(
    http: &reqwest::Client,
    base: &str,
    bearer: &str,
    id: &str,
    key: &str,
) -> Option<u16> {
    http.post(format!("{base}/api/v1/prediction/{id}"))
        .bearer_auth(bearer)
        .header("Idempotency-Key", key)
        .json(&json!({"question": key}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

const CRASH_REQUESTS: usize = 200;
const CRASH_BUDGET: i64 = 50;

/// Where the crash scenario keeps its ledger, and how it reads the charged reservations back.
enum CrashLedger {
    Sqlite(tempfile::TempDir),
    /// flowgate's URL, and the test's own (flowgate's may need TLS the test does not speak).
    Postgres {
        url: String,
        sql: String,
    },
}

impl CrashLedger {
    fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("ledger.db").display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }

    /// Idempotency keys starting with `prefix` whose reservation is charged (not refunded).
    async fn charged(&self, prefix: &str) -> std::collections::BTreeSet<String> {
        const QUERY: &str = "SELECT idempotency_key FROM reservations \
                             WHERE state <> 'refunded' AND idempotency_key LIKE $1";
        let pattern = format!("{prefix}%");
        match self {
            Self::Sqlite(dir) => {
                let db = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("open");
                let mut rows = db.prepare(QUERY).expect("query");
                rows.query_map([&pattern], |row| row.get::<_, String>(0))
                    .expect("rows")
                    .collect::<Result<_, _>>()
                    .expect("keys")
            }
            Self::Postgres { sql, .. } => {
                let (client, connection) = tokio_postgres::connect(sql, tokio_postgres::NoTls)
                    .await
                    .expect("connect to PostgreSQL");
                tokio::spawn(connection);
                client
                    .query(QUERY, &[&pattern])
                    .await
                    .expect("query")
                    .iter()
                    .map(|row| row.get::<_, String>(0))
                    .collect()
            }
        }
    }
}

/// The crash criterion: 200 predictions against a budget of 50, `kill -9` of the
/// flowgate in the middle, a restart on the same ledger, clients retrying what failed with the
/// same Idempotency-Key. Flowise (a counting fake) is the witness: a charge exists for every
/// request it received, it never receives one twice, the budget is spent exactly, and a charge
/// without an answer can only belong to a request that was in flight in the killed process
/// (reserved, not yet forwarded — the window no proxy can close; see `ledger` module docs).
async fn kill_9_under_load_then_restart(prefix: &str, ledger: CrashLedger) {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
    let kubeconfig = std::path::Path::new(&kubeconfig);
    let team = Team::with_fake_flowise(prefix).await;
    team.policy(
        "budget",
        json!({"chatflows": ["*"], "budget": {"credits": CRASH_BUDGET, "period": "Never"},
               "cost": {"perPrediction": 1}}),
    )
    .await;
    let policy = format!("{}/budget", team.ns);
    let fake = FakeFlowise::start(Mode::Slow {
        delay: Duration::from_millis(100),
    })
    .await;
    let url = ledger.url();
    let tempdir = || tempfile::tempdir().expect("temp dir");
    let mut first = spawn_on(&fake.url, kubeconfig, &url, tempdir()).await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    let indexed = |base: String| {
        let (alice, policy) = (alice.clone(), policy.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while credits_used(&base, &alice, &policy).await.is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "policy never indexed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    indexed(first.base.clone()).await;

    // Load: keyed predictions at 100/s; kill -9 once Flowise has received 25.
    let keys: Vec<String> = (0..CRASH_REQUESTS)
        .map(|i| format!("{}-{i}", team.ns))
        .collect();
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut first_attempts = Vec::new();
    for key in &keys {
        tick.tick().await;
        let (http, base, alice, id) = (http.clone(), first.base.clone(), alice.clone(), id.clone());
        let key = key.clone();
        first_attempts.push(tokio::spawn(async move {
            let status = keyed_predict(&http, &base, &alice, &id, &key).await;
            (key, status)
        }));
        if fake.predictions() >= 25 {
            break;
        }
    }
    let sent_before_kill = first_attempts.len();
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    let mut outcomes: std::collections::BTreeMap<String, Option<u16>> =
        keys.iter().map(|k| (k.clone(), None)).collect();
    for handle in first_attempts {
        let (key, status) = handle.await.expect("client task");
        outcomes.insert(key, status);
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    // Sent to the killed process and never answered: the only requests that may end up charged
    // without reaching Flowise. (Keys after them were never sent before the kill.)
    let in_flight: std::collections::BTreeSet<&String> = keys[..sent_before_kill]
        .iter()
        .filter(|k| failed.contains(*k))
        .collect();

    // Restart on the same ledger; every client whose request failed (or was never sent) retries.
    let second = spawn_on(&fake.url, kubeconfig, &url, tempdir()).await;
    indexed(second.base.clone()).await;
    for key in &failed {
        let status = keyed_predict(&http, &second.base, &alice, &id, key).await;
        outcomes.insert(key.clone(), status);
    }
    let count = |want: u16| outcomes.values().filter(|s| **s == Some(want)).count();
    let (answered, duplicates, refused) = (count(200), count(409), count(402));
    assert_eq!(
        answered + duplicates + refused,
        CRASH_REQUESTS,
        "every request ends answered, refused as already charged, or out of credits: {outcomes:?}"
    );

    // The witness: what Flowise received, by question (= key).
    let received: Vec<String> = fake
        .bodies
        .lock()
        .expect("bodies")
        .iter()
        .filter_map(|b| b["question"].as_str().map(str::to_string))
        .collect();
    let received_set: std::collections::BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(
        received.len(),
        received_set.len(),
        "Flowise received a request twice"
    );

    let charged = ledger.charged(&format!("{}-", team.ns)).await;
    let total = credits_used(&second.base, &alice, &policy)
        .await
        .expect("balance");
    assert_eq!(
        total,
        charged.len() as i64,
        "the bucket agrees with the reservations"
    );
    assert_eq!(
        total, CRASH_BUDGET,
        "the budget is spent exactly, never overspent"
    );
    let lost: Vec<_> = received_set.difference(&charged).collect();
    assert!(
        lost.is_empty(),
        "answered by Flowise but never charged: {lost:?}"
    );
    let unanswered: Vec<_> = charged.difference(&received_set).collect();
    assert!(
        unanswered.iter().all(|k| in_flight.contains(*k)),
        "charged without reaching Flowise, yet not in flight at the kill: {unanswered:?}"
    );
    eprintln!(
        "{prefix}: kill -9 after {sent_before_kill} requests sent ({} in flight, {} failed or \
         unsent, retried after restart): {answered} answered, {duplicates} retries refused as already charged, \
         {refused} out of credits; Flowise received {}, ledger charged {total}, charged but never \
         forwarded {}",
        in_flight.len(),
        failed.len(),
        received_set.len(),
        unanswered.len()
    );
    drop(second);
    team.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_sqlite_loses_no_charge_and_doubles_none() {
    let ledger = CrashLedger::Sqlite(tempfile::tempdir().expect("temp dir"));
    tokio::time::timeout(
        Duration::from_secs(120),
        kill_9_under_load_then_restart("process-kill9-sqlite", ledger),
    )
    .await
    .expect("bounded to 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_postgres_loses_no_charge_and_doubles_none() {
    let pg = std::env::var("FLOWGATE_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !pg.is_empty(),
        "FLOWGATE_TEST_POSTGRES_URL is not set: run scripts/test.sh, or `scripts/postgres.sh start && eval \"$(scripts/postgres.sh env)\"`"
    );
    // flowgate reaches the server over TLS, verified against the test CA, as a role the server
    // refuses without TLS (see scripts/postgres.sh): the binary's ledger, restart included, on
    // the path production takes.
    let tls = std::env::var("FLOWGATE_TEST_POSTGRES_TLS").expect("FLOWGATE_TEST_POSTGRES_TLS set");
    let config: tokio_postgres::Config = pg.parse().expect("the test URL parses");
    let (port, db) = (
        config.get_ports()[0],
        config.get_dbname().expect("a database"),
    );
    let url = format!(
        "postgres://flowgate_tls@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={tls}/ca.crt"
    );
    let ledger = CrashLedger::Postgres { url, sql: pg };
    tokio::time::timeout(
        Duration::from_secs(120),
        kill_9_under_load_then_restart("process-kill9-pg", ledger),
    )
    .await
    .expect("bounded to 120 s");
}
