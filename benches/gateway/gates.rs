//! The flowgate processes under test: how each is started, and waits for what it serves.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::load::Target;
use crate::procs::{self, Child};
use crate::tokens::Keys;
use crate::workload::Plan;

/// A flowgate child process and its addresses.
pub struct Gate {
    pub child: Child,
    pub base: String,
    /// The ops address (`/metrics`), as a URL.
    pub ops: String,
}

/// What every flowgate of a run shares: the binary, the run directory, the upstream, the keys.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub dir: &'a Path,
    pub upstream: &'a str,
    pub jwks: &'a str,
    pub keys: &'a Keys,
    /// `RUST_LOG`.
    pub log: &'a str,
}

impl Launch<'_> {
    /// Starts flowgate `name` (proxy only) keeping credits at `ledger`, with `env` on top of the
    /// shared settings, and waits until it listens.
    pub fn start(&self, name: &str, ledger: &str, env: &[(&str, &str)]) -> anyhow::Result<Gate> {
        let (listen, ops) = (procs::free_port()?, procs::free_port()?);
        let mut command = Command::new(self.binary);
        command.env_clear();
        for keep in ["PATH", "HOME", "KUBECONFIG"] {
            if let Some(value) = std::env::var_os(keep) {
                command.env(keep, value);
            }
        }
        command
            .arg("run")
            .env("RUST_LOG", self.log)
            .env("FLOWGATE_NO_CONTROLLER", "true")
            .env("FLOWGATE_FLOWISE_URL", self.upstream)
            .env("FLOWGATE_LISTEN_ADDR", listen.to_string())
            .env("FLOWGATE_OPS_ADDR", ops.to_string())
            .env("FLOWGATE_LEDGER_URL", ledger)
            .env("FLOWGATE_JWT_HS256_SECRET_FILE", &self.keys.hs256_file)
            .env("FLOWGATE_JWKS_URL", self.jwks)
            .envs(env.iter().copied());
        let mut child = Child::spawn(name, command, self.dir)?;
        procs::wait_listening(&mut child, listen, Duration::from_secs(30))?;
        Ok(Gate {
            child,
            base: format!("http://{listen}"),
            ops: format!("http://{ops}"),
        })
    }
}

/// A fresh schema for this run's PostgreSQL ledger; the URL selecting it.
pub async fn fresh_schema(base: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .context("connecting to FLOWGATE_TEST_POSTGRES_URL")?;
    tokio::spawn(connection);
    client
        .batch_execute("DROP SCHEMA IF EXISTS flowgate_bench CASCADE; CREATE SCHEMA flowgate_bench")
        .await?;
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{base}{separator}options=-csearch_path%3Dflowgate_bench"
    ))
}

/// Waits until `target` answers 200 (flowgate has synced the resources and fetched the keys).
pub async fn wait_answering(target: &Target) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http
            .post(&target.url)
            .bearer_auth(&target.token)
            .header("content-type", "application/json")
            .body(target.body.clone())
            .send()
            .await;
        let status = match answer {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => format!(
                "{} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("{} does not answer 200 after 30 s: {status}", target.url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `gate` grants the last ChatflowAccess of every bulk namespace, and the last of
/// those added to the team namespace.
pub async fn wait_bulk_visible(gate: &mut Gate, plan: &Plan, keys: &Keys) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let bulk = plan.bulk;
    let deadline = Instant::now() + Duration::from_secs(300);
    let j = bulk.accesses - 1;
    let last_of_each = (0..bulk.namespaces).map(|k| {
        (
            format!("user-{k}-{j}@example.com"),
            plan.bulk_flowise_id(k, j % bulk.chatflows),
        )
    });
    let last_of_team = (bulk.team > 0).then(|| {
        (
            format!("team-user-{}@example.com", bulk.team - 1),
            plan.paid_id(),
        )
    });
    for (user, id) in last_of_each.chain(last_of_team) {
        let token = keys.hs256(&user, json!({}))?;
        let url = format!("{}/api/v1/chatflows/{id}", gate.base);
        loop {
            let status = http.get(&url).bearer_auth(&token).send().await?.status();
            if status.is_success() {
                break;
            }
            gate.child.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} does not serve the bulk objects after 300 s ({url}: {status})",
                    gate.child.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
