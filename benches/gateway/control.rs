//! Apply-to-enforce: how long after a ChatflowAccess is applied (or deleted) through the API
//! server the proxy's decision flips. The clock starts before the API request; the proxy is
//! polled every millisecond until it answers 200 (granted) or 403 (revoked).

use std::time::{Duration, Instant};

use anyhow::bail;
use kube::Client;

use crate::cluster;
use crate::workload::Plan;

/// Longest wait for one flip before the run gives up.
const FLIP_TIMEOUT: Duration = Duration::from_secs(15);

/// Milliseconds from each change to enforcement; `changes` alternate grant and revoke.
pub async fn apply_to_enforce(
    client: &Client,
    plan: &Plan,
    gate: &str,
    probe_token: &str,
    changes: usize,
) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let url = format!("{gate}/api/v1/chatflows/{}", plan.free_id());
    let ns = plan.team_namespace();
    let probe = plan.probe_access();
    let _ = cluster::delete_access(client, &ns, "probe").await;
    wait_for(&http, &url, probe_token, 403).await?;
    let mut took = Vec::with_capacity(changes);
    for i in 0..changes {
        let grant = i % 2 == 0;
        let started = Instant::now();
        if grant {
            cluster::apply_access(client, &probe).await?;
        } else {
            cluster::delete_access(client, &ns, "probe").await?;
        }
        wait_for(&http, &url, probe_token, if grant { 200 } else { 403 }).await?;
        took.push(started.elapsed().as_secs_f64() * 1e3);
        // Let the watch settle so each change is measured on its own.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    if changes % 2 == 1 {
        cluster::delete_access(client, &ns, "probe").await?;
    }
    Ok(took)
}

async fn wait_for(http: &reqwest::Client, url: &str, token: &str, want: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + FLIP_TIMEOUT;
    loop {
        let status = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .status()
            .as_u16();
        if status == want {
            return Ok(());
        }
        if status != 200 && status != 403 {
            bail!("{url} answered {status} while waiting for {want}");
        }
        if Instant::now() > deadline {
            bail!("{url} still answers {status}, not {want}, after {FLIP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
