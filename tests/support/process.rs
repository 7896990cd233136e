//! Real `flowgate` processes in tests: a child killed (SIGKILL) and reaped when dropped, free
//! loopback ports to give it, and the binary started as the process tests start it (proxy only,
//! against a given Flowise and API server, waited for until ready).

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::gate::SECRET;

/// A child process that is killed and reaped when dropped (a failing test leaves none behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Sends SIGTERM, as Kubernetes does to a pod it stops.
    pub fn sigterm(&self) {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -TERM {}", self.0.id());
    }

    /// Waits (polling, up to `secs`) for the process to exit by itself; its exit status.
    pub async fn exited(&mut self, secs: u64, what: &str) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not exited within {secs} s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// A loopback port nothing listens on right now, for a server the test starts next.
///
/// Drawn below the kernel's ephemeral range (32768–60999 by default), above the local services
/// (Flowise 23000, etcd 23790/23800, PostgreSQL 25432, the API server 26443). A port `bind(0)`
/// gave is in the ephemeral range: free only until the next outgoing connection took it, and the
/// tests make many, so the server started on it a moment later could find it in use. Here only
/// explicit binds compete, and this process never hands out one port twice (two tests of one
/// binary drawing the same port a moment apart both found it free: "Address already in use").
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::{Mutex, PoisonError};
    const LOW: u64 = 27_000;
    const HIGH: u64 = 32_700;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..64 {
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let Ok(port) = u16::try_from(LOW + draw % (HIGH - LOW)) else {
            continue;
        };
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A flowgate process; killed when dropped.
pub struct Process {
    pub child: KillOnDrop,
    pub base: String,
    pub ops: String,
    _dir: tempfile::TempDir,
}

/// Starts the binary (proxy only) against `flowise_url` with `kubeconfig`; waits until ready.
pub async fn spawn(flowise_url: &str, kubeconfig: &std::path::Path) -> Process {
    spawn_with(flowise_url, kubeconfig, &[]).await
}

/// Like [`spawn`], with `extra_env` set.
pub async fn spawn_with(
    flowise_url: &str,
    kubeconfig: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Process {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    launch(flowise_url, kubeconfig, &ledger, dir, None, extra_env).await
}

/// Like [`spawn`], with the ledger at `ledger_url` (which may outlive the process).
pub async fn spawn_on(
    flowise_url: &str,
    kubeconfig: &std::path::Path,
    ledger_url: &str,
    dir: tempfile::TempDir,
) -> Process {
    launch(flowise_url, kubeconfig, ledger_url, dir, None, &[]).await
}

/// Like [`spawn`], logging at `info` (every decision) to the file `log`.
pub async fn spawn_logging(
    flowise_url: &str,
    kubeconfig: &std::path::Path,
    log: &std::path::Path,
) -> Process {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    launch(flowise_url, kubeconfig, &ledger, dir, Some(log), &[]).await
}

/// [`start`], then waits until `/readyz` says ready.
pub async fn launch(
    flowise_url: &str,
    kubeconfig: &std::path::Path,
    ledger_url: &str,
    dir: tempfile::TempDir,
    log: Option<&std::path::Path>,
    extra_env: &[(&str, &str)],
) -> Process {
    let process = start(flowise_url, kubeconfig, ledger_url, dir, log, extra_env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = reqwest::get(format!("{}/readyz", process.ops)).await
            && resp.status().is_success()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flowgate never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

/// Starts the binary (`run --no-controller`, the HS256 secret [`SECRET`], free ports) without
/// waiting for it; `log` gets its stderr at `info`, else errors go to the test's.
pub fn start(
    flowise_url: &str,
    kubeconfig: &std::path::Path,
    ledger_url: &str,
    dir: tempfile::TempDir,
    log: Option<&std::path::Path>,
    extra_env: &[(&str, &str)],
) -> Process {
    let secret = dir.path().join("hs256");
    std::fs::write(&secret, SECRET).expect("secret");
    let (port, ops) = (free_port(), free_port());
    let (filter, stderr) = match log {
        Some(log) => (
            "info",
            Stdio::from(std::fs::File::create(log).expect("log file")),
        ),
        None => ("error", Stdio::inherit()),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["run", "--no-controller"])
        .env("KUBECONFIG", kubeconfig)
        .env("FLOWGATE_FLOWISE_URL", flowise_url)
        .env("FLOWGATE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("FLOWGATE_OPS_ADDR", format!("127.0.0.1:{ops}"))
        .env("FLOWGATE_LEDGER_URL", ledger_url)
        .env("FLOWGATE_JWT_HS256_SECRET_FILE", &secret)
        .env("RUST_LOG", filter)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("flowgate binary starts");
    Process {
        child: KillOnDrop(child),
        base: format!("http://127.0.0.1:{port}"),
        ops: format!("http://127.0.0.1:{ops}"),
        _dir: dir,
    }
}

/// Sends SIGTERM and waits (5 s at most) until `/readyz` answers 503.
pub async fn sigterm_until_unready(process: &Process) {
    process.child.sigterm();
    let readyz = format!("{}/readyz", process.ops);
    super::eventually(5, "/readyz answers 503 once signalled", || async {
        let resp = reqwest::get(&readyz).await.ok()?;
        (resp.status() == 503).then_some(())
    })
    .await;
}

/// A prediction's status (0 when no answer came within 5 s).
pub async fn predict(base: &str, bearer: &str, id: &str) -> u16 {
    predict_with(&reqwest::Client::new(), base, bearer, id).await
}

/// [`predict`] on `http`'s connections.
pub async fn predict_with(http: &reqwest::Client, base: &str, bearer: &str, id: &str) -> u16 {
    http.post(format!("{base}/api/v1/prediction/{id}"))
        .bearer_auth(bearer)
        .json(&json!({"question": "ping"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Predicts until `base` answers `want` (20 s at most).
pub async fn eventually(base: &str, bearer: &str, id: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = predict(base, bearer, id).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
