//! `flowgate-bench run`: set up, measure in phases, tear down, print the report.
//!
//! 1. Keys, the JWKS server, the team's resources in the API server, the upstream, HAProxy, and
//!    three flowgate processes (SQLite ledger; the same with its verified-token cache off;
//!    PostgreSQL ledger when a URL is given).
//! 2. Small index (10 ChatflowAccess): saturation rounds, with and without the token cache;
//!    apply-to-enforce.
//! 3. Bulk load (10,000 ChatflowAccess, 1,000 Chatflows): saturation rounds with and without
//!    credits; fixed-rate rounds; streaming; apply-to-enforce; memory.
//! 4. The pure index figures, then the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::Client;
use serde_json::json;

use crate::gates::{Gate, Launch, fresh_schema, wait_answering, wait_bulk_visible};
use crate::load::{FixedRate, Saturation, Target};
use crate::measure::{self, Scenario};
use crate::procs::{self, Child};
use crate::report::{Table, fmt_duration};
use crate::scrape;
use crate::tokens::{self, Keys};
use crate::workload::{self, Bulk, Plan};
use crate::{cluster, control, haproxy, index};

/// `flowgate-bench run` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// A short run that proves every part works (CI); its figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Interleaved rounds per phase [default: 5; quick: 1].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per load measurement [default: 5; quick: 1].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// wrk connections (one wrk thread).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Fixed request rate of the latency phase, requests per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// apply/delete changes timed for apply-to-enforce [default: 50; quick: 4].
    #[arg(long)]
    pub changes: Option<usize>,
    /// The flowgate binary [default: next to this one].
    #[arg(long)]
    pub flowgate: Option<PathBuf>,
    /// The oha binary.
    #[arg(long, env = "OHA", default_value = "oha")]
    pub oha: PathBuf,
    /// PostgreSQL for the PostgreSQL-ledger scenario (a fresh schema is used); unset: skipped.
    #[arg(long, env = "FLOWGATE_TEST_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// flowgate's log filter (`info` logs every decision, as in production).
    #[arg(long, default_value = "info")]
    pub flowgate_log: String,
    /// Directory for logs, keys and the SQLite ledger [default: a new one under
    /// ~/.cache/flowgate/bench, where the 3 newest runs are kept]. On a real disk: the ledger's
    /// fsyncs must mean something.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Settings {
    rounds: u32,
    saturation: Saturation,
    fixed: FixedRate,
    warmup: Duration,
    changes: usize,
    streams: usize,
    bulk: Bulk,
}

impl Settings {
    fn from(options: &Options) -> Self {
        let quick = options.quick;
        let seconds = options.seconds.unwrap_or(if quick { 1.0 } else { 5.0 });
        let duration = Duration::from_secs_f64(seconds);
        Self {
            rounds: options.rounds.unwrap_or(if quick { 1 } else { 5 }),
            saturation: Saturation {
                threads: 1,
                connections: options.connections,
                duration,
            },
            fixed: FixedRate {
                rate: options.rate,
                connections: 8,
                duration,
            },
            warmup: if quick {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            },
            changes: options.changes.unwrap_or(if quick { 4 } else { 50 }),
            streams: if quick { 2 } else { 20 },
            bulk: if quick { Bulk::QUICK } else { Bulk::FULL },
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from(&options);
    let dir = run_dir(&options)?;
    let flowgate = match &options.flowgate {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("flowgate"),
    };
    for tool in ["wrk", "haproxy", "openssl"] {
        procs::which(tool).with_context(|| format!("`{tool}` is not installed"))?;
    }
    let oha = procs::which(&options.oha.to_string_lossy())
        .with_context(|| format!("oha not found at {}", options.oha.display()))?;
    anyhow::ensure!(
        flowgate.is_file(),
        "no flowgate binary at {}",
        flowgate.display()
    );
    eprintln!("run directory: {}", dir.display());

    let client = Client::try_default()
        .await
        .context("KUBECONFIG must name the local API server (scripts/local-cluster.sh env)")?;
    let plan = Plan::new(settings.bulk);
    cluster::install_crds(&client).await?;
    let stale = cluster::remove_leftovers(&client).await?;
    if stale > 0 {
        eprintln!("cleared objects of earlier runs in {stale} namespaces");
    }
    let result = measure_all(&options, &settings, &plan, &client, &dir, &flowgate, &oha).await;
    eprintln!("removing the run's objects from the API server");
    let cleanup = cluster::remove(&client, &plan.namespaces()).await;
    let mut report = result?;
    cleanup?;
    report.push_str(&format!(
        "\nWhole run: {:.0} s ({} mode). Logs: {}\n",
        started.elapsed().as_secs_f64(),
        if options.quick { "quick" } else { "full" },
        dir.display()
    ));
    print!("{report}");
    if let Some(out) = &options.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

/// Run directories kept under `~/.cache/flowgate/bench`, this one included (each holds
/// 0.2–0.6 GB of logs and ledger).
const KEPT_RUNS: usize = 3;

fn run_dir(options: &Options) -> anyhow::Result<PathBuf> {
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME")?;
            let runs = Path::new(&home).join(".cache/flowgate/bench");
            prune_runs(&runs, KEPT_RUNS - 1);
            let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
            runs.join(stamp)
        }
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes all but the `keep` newest run directories (named by their start time) in `runs`.
fn prune_runs(runs: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let old = dirs.len().saturating_sub(keep);
    for dir in &dirs[..old] {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            eprintln!("could not remove the old run {}: {error}", dir.display());
        }
    }
}

async fn measure_all(
    options: &Options,
    settings: &Settings,
    plan: &Plan,
    client: &Client,
    dir: &Path,
    flowgate: &Path,
    oha: &Path,
) -> anyhow::Result<String> {
    let keys = Keys::generate(dir)?;
    let jwks = tokens::serve_jwks(&keys.jwks).await?;
    let namespaces = plan.namespaces();
    cluster::create_namespaces(client, &namespaces).await?;
    cluster::create(client, plan.team()).await?;

    let (upstream, upstream_addr) = start_upstream(dir, options.quick)?;
    let mut peer = haproxy::start(dir, &keys, upstream_addr)?;
    let upstream_url = format!("http://{upstream_addr}");
    let (transport, transport_addr) = start_passthrough(dir, &upstream_url)?;
    let jwks_url = format!("http://{jwks}/jwks.json");
    let launch = Launch {
        binary: flowgate,
        dir,
        upstream: &upstream_url,
        jwks: &jwks_url,
        keys: &keys,
        log: &options.flowgate_log,
    };
    let sqlite = |file: &str| format!("sqlite://{}", dir.join(file).display());
    let mut sqlite_gate = launch.start("flowgate-sqlite", &sqlite("ledger.db"), &[])?;
    // Every token verified: what a caller minting a token per request costs, and the fair
    // match for HAProxy, which has no such cache.
    let mut uncached_gate = launch.start(
        "flowgate-uncached",
        &sqlite("ledger-uncached.db"),
        &[("FLOWGATE_TOKEN_CACHE_SIZE", "0")],
    )?;
    let mut pg_gate = match &options.postgres_url {
        Some(url) => {
            let url = fresh_schema(url).await?;
            Some(launch.start("flowgate-postgres", &url, &[])?)
        }
        None => {
            eprintln!("FLOWGATE_TEST_POSTGRES_URL is unset: skipping the PostgreSQL ledger");
            None
        }
    };

    let user_claims = json!({"email": workload::USER_EMAIL, "groups": [workload::GROUP]});
    let hs = keys.hs256(workload::USER, user_claims.clone())?;
    let rs = keys.rs256(workload::USER, user_claims)?;
    let probe = keys.hs256(workload::PROBE_USER, json!({}))?;
    let body = r#"{"question":"hello"}"#.to_string();
    let target = |base: &str, id: &str, token: &str| Target {
        url: format!("{base}/api/v1/prediction/{id}"),
        token: token.to_string(),
        body: body.clone(),
    };
    let (free, paid) = (plan.free_id(), plan.paid_id());
    let haproxy_pid = peer.child.pid();
    let scenario = |key, label: &str, target: Target, pid| Scenario {
        key,
        label: label.to_string(),
        target,
        pid,
        server: None,
    };
    let direct = scenario(
        "direct",
        "direct → upstream",
        target(&upstream_url, &free, &rs),
        upstream.pid(),
    );
    let ha_plain = scenario(
        "haproxy-plain",
        "HAProxy pass-through (no auth)",
        target(&format!("http://{}", peer.plain), &free, &rs),
        haproxy_pid,
    );
    let fg_plain = scenario(
        "flowgate-plain",
        "flowgate pass-through (no auth: its proxy threads and Flowise client alone)",
        target(&format!("http://{transport_addr}"), &free, &rs),
        transport.pid(),
    );
    let ha_hs = scenario(
        "haproxy-hs256",
        "HAProxy jwt_verify HS256 + exp",
        target(&format!("http://{}", peer.hs256), &free, &hs),
        haproxy_pid,
    );
    let ha_rs = scenario(
        "haproxy-rs256",
        "HAProxy jwt_verify RS256 + exp",
        target(&format!("http://{}", peer.rs256), &free, &rs),
        haproxy_pid,
    );
    let sq = &sqlite_gate;
    let fg_hs = scenario(
        "flowgate-hs256",
        "flowgate HS256 + access (token cache on)",
        target(&sq.base, &free, &hs),
        sq.child.pid(),
    );
    let fg_rs = scenario(
        "flowgate-rs256",
        "flowgate RS256 (JWKS) + access (token cache on)",
        target(&sq.base, &free, &rs),
        sq.child.pid(),
    );
    let un = &uncached_gate;
    let fg_hs_uncached = scenario(
        "flowgate-hs256-uncached",
        "flowgate HS256 + access, token cache off",
        target(&un.base, &free, &hs),
        un.child.pid(),
    );
    let fg_rs_uncached = scenario(
        "flowgate-rs256-uncached",
        "flowgate RS256 (JWKS) + access, token cache off",
        target(&un.base, &free, &rs),
        un.child.pid(),
    );
    let fg_sqlite = scenario(
        "flowgate-sqlite",
        "flowgate RS256 + access + SQLite credits (token cache on)",
        target(&sq.base, &paid, &rs),
        sq.child.pid(),
    );
    let fg_pg = pg_gate.as_ref().map(|g| Scenario {
        server: Some("postgres"),
        ..scenario(
            "flowgate-postgres",
            "flowgate RS256 + access + PostgreSQL credits (token cache on)",
            target(&g.base, &paid, &rs),
            g.child.pid(),
        )
    });

    let all: Vec<&Scenario> = [
        &direct,
        &ha_plain,
        &fg_plain,
        &ha_hs,
        &ha_rs,
        &fg_hs,
        &fg_rs,
        &fg_hs_uncached,
        &fg_rs_uncached,
        &fg_sqlite,
    ]
    .into_iter()
    .chain(fg_pg.as_ref())
    .collect();
    for s in &all {
        wait_answering(&s.target)
            .await
            .with_context(|| format!("scenario {}", s.key))?;
    }
    let mut report = header(options, settings, dir)?;

    // Phase A: the team's 10 ChatflowAccess objects.
    eprintln!(
        "phase A: saturation, {} ChatflowAccess",
        workload::TEAM_ACCESSES
    );
    let small_memory = memory(&sqlite_gate.child);
    let phase_a = [
        direct.clone(),
        ha_plain,
        fg_plain,
        ha_hs.clone(),
        ha_rs.clone(),
        fg_hs.clone(),
        fg_rs.clone(),
        fg_hs_uncached.clone(),
        fg_rs_uncached.clone(),
    ];
    let http = reqwest::Client::new();
    let lookups_before = scrape::token_cache(&http, &sqlite_gate.ops).await?;
    let rows_a = measure::saturation(
        &phase_a,
        settings.rounds,
        settings.saturation,
        settings.warmup,
        dir,
    )
    .await?;
    let lookups_a = scrape::token_cache(&http, &sqlite_gate.ops)
        .await?
        .since(lookups_before);
    let uncached_lookups = scrape::token_cache(&http, &uncached_gate.ops).await?;
    eprintln!("phase A: apply-to-enforce");
    let enforce_small =
        control::apply_to_enforce(client, plan, &sqlite_gate.base, &probe, settings.changes)
            .await?;

    // Bulk load.
    eprintln!(
        "loading {} ChatflowAccess and {} Chatflows",
        plan.bulk.total_accesses(),
        plan.bulk.total_chatflows()
    );
    let load_started = Instant::now();
    cluster::create(client, plan.bulk()).await?;
    let api_load = load_started.elapsed();
    let mut gates: Vec<&mut Gate> = vec![&mut sqlite_gate, &mut uncached_gate];
    if let Some(g) = pg_gate.as_mut() {
        gates.push(g);
    }
    for gate in gates {
        wait_bulk_visible(gate, plan, &keys).await?;
    }
    let visible = load_started.elapsed();
    let bulk_memory = memory(&sqlite_gate.child);

    // Phase B: bulk index, with and without credits; each HAProxy row beside flowgate's with
    // the same algorithm and every token verified (HAProxy has no cache), and with the cache on.
    eprintln!("phase B: saturation, bulk index");
    let phase_b: Vec<Scenario> = [
        direct.clone(),
        ha_hs.clone(),
        ha_rs.clone(),
        fg_hs,
        fg_rs.clone(),
        fg_hs_uncached,
        fg_rs_uncached,
        fg_sqlite.clone(),
    ]
    .into_iter()
    .chain(fg_pg.clone())
    .collect();
    let charged_before = reserves_of(&http, &sqlite_gate, pg_gate.as_ref()).await?;
    let rows_b = measure::saturation(
        &phase_b,
        settings.rounds,
        settings.saturation,
        settings.warmup,
        dir,
    )
    .await?;
    let charged_after = reserves_of(&http, &sqlite_gate, pg_gate.as_ref()).await?;
    drop(uncached_gate);
    // Every answer a credits row counted was charged: a policy that did not apply would have
    // it measure the path without credits, answered 200 all the same.
    let uncharged = charged(
        &rows_b,
        "flowgate-sqlite",
        charged_before.0,
        charged_after.0,
    )
    .into_iter()
    .chain(charged(
        &rows_b,
        "flowgate-postgres",
        charged_before.1,
        charged_after.1,
    ))
    .collect::<Vec<_>>();
    eprintln!("phase B: fixed rate {} req/s", settings.fixed.rate);
    let fixed: Vec<Scenario> = [
        direct.clone(),
        ha_rs.clone(),
        fg_rs.clone(),
        fg_sqlite.clone(),
    ]
    .into_iter()
    .chain(fg_pg.clone())
    .collect();
    let ops = sqlite_gate.ops.clone();
    let reserves = || scrape::reserves(&http, &ops);
    let pg_ops = pg_gate.as_ref().map(|g| g.ops.clone());
    let pg_reserves = async || match &pg_ops {
        Some(ops) => scrape::reserves(&http, ops).await.map(Some),
        None => Ok(None),
    };
    let before_fixed = reserves().await?;
    let before_fixed_pg = pg_reserves().await?;
    let rows_fixed = measure::fixed_rate(oha, &fixed, settings.rounds, settings.fixed).await?;
    let after_fixed = reserves().await?;
    let after_fixed_pg = pg_reserves().await?;
    eprintln!("phase B: streaming");
    let streaming_body = r#"{"question":"hello","streaming":true}"#.to_string();
    let stream_direct = Target {
        body: streaming_body.clone(),
        ..direct.target.clone()
    };
    let stream_free = Target {
        body: streaming_body.clone(),
        ..fg_rs.target.clone()
    };
    let stream_paid = Target {
        body: streaming_body,
        ..fg_sqlite.target.clone()
    };
    let streamed = measure::streaming(
        &stream_direct,
        &[&stream_free, &stream_paid],
        settings.streams,
    )
    .await?;
    let after_streams = reserves().await?;
    eprintln!("phase B: apply-to-enforce");
    let enforce_bulk =
        control::apply_to_enforce(client, plan, &sqlite_gate.base, &probe, settings.changes)
            .await?;
    let after_memory = memory(&sqlite_gate.child);
    peer.child.check_alive()?;
    sqlite_gate.child.check_alive()?;

    eprintln!("pure index figures");
    let figures = tokio::task::spawn_blocking({
        let quick = options.quick;
        move || index::measure(quick)
    })
    .await?;

    report.push_str(&format!(
        "\n### Saturation, {} ChatflowAccess in the index\n\nwrk, 1 thread, {} connections, {} rounds × {}, interleaved. Ratios are medians of per-round ratios (min–max).\n\n",
        workload::TEAM_ACCESSES,
        settings.saturation.connections,
        settings.rounds,
        fmt_duration(settings.saturation.duration),
    ));
    report.push_str(&measure::saturation_table(&rows_a));
    report.push_str(&format!(
        "\nThe token cache of the flowgate with it on, over these rounds: {}. With it off: {}.\n",
        lookups_a.describe(),
        uncached_lookups.describe(),
    ));
    report.push_str(&format!(
        "\n### Saturation, {} ChatflowAccess + {} Chatflows in the index\n\n",
        plan.bulk.total_accesses() + workload::TEAM_ACCESSES,
        plan.bulk.total_chatflows() + 2,
    ));
    report.push_str(&measure::saturation_table(&rows_b));
    if uncharged.is_empty() {
        report.push_str(
            "\nEvery answer the credits rows counted was charged (the ledger's reserves over the phase ≥ the answers).\n",
        );
    } else {
        report.push_str(&format!(
            "\n**Fewer reserves than answers: {} — those rows did not measure the credits path.**\n",
            uncharged.join("; ")
        ));
    }
    report.push_str(&format!(
        "\n### Fixed rate {} req/s, bulk index\n\noha, {} connections, `--latency-correction`, {} rounds × {}, interleaved. Added = path − direct in the same round.\n\n",
        settings.fixed.rate,
        settings.fixed.connections,
        settings.rounds,
        fmt_duration(settings.fixed.duration),
    ));
    report.push_str(&measure::fixed_rate_table(&rows_fixed, settings.fixed.rate));
    report.push_str(&format!(
        "\nThe SQLite flowgate's own reserve latency over its fixed-rate rounds (`flowgate_ledger_operation_duration_seconds`, bucket-interpolated): {}.\n",
        after_fixed.since(&before_fixed).describe(),
    ));
    if let (Some(after), Some(before)) = (&after_fixed_pg, &before_fixed_pg) {
        report.push_str(&format!(
            "The PostgreSQL flowgate's, the same way: {}.\n",
            after.since(before).describe(),
        ));
    }
    report.push_str(&format!(
        "\n### Streaming (SSE), bulk index\n\n{} streams per path, interleaved; the upstream sends {} events {} apart, each stamped with its send time.\n\n",
        settings.streams,
        if options.quick { 5 } else { 20 },
        if options.quick { "5 ms" } else { "10 ms" },
    ));
    let [streams_direct, streams_free, streams_paid] = &streamed[..] else {
        anyhow::bail!("streamed {} paths, not 3", streamed.len());
    };
    report.push_str(&measure::streaming_table(
        streams_direct,
        &[
            ("flowgate RS256 + access", streams_free),
            ("flowgate RS256 + access + SQLite credits", streams_paid),
        ],
    ));
    report.push_str(&format!(
        "\nOf the added first-event time with credits, the reserve (on disk before the request is forwarded): {}.\n",
        after_streams.since(&after_fixed).describe(),
    ));
    report.push_str("\n### Control plane\n\n");
    let mut table = Table::new(&["figure", "10 ChatflowAccess", "bulk index"]);
    let enforce = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            crate::report::percentile(&sorted, 50.0),
            crate::report::percentile(&sorted, 99.0),
            sorted.last().copied().unwrap_or(f64::NAN),
            sorted.len()
        )
    };
    table.row(vec![
        "apply/delete → enforced".into(),
        enforce(&enforce_small),
        enforce(&enforce_bulk),
    ]);
    table.row(vec![
        "flowgate RSS (idle / after all load, peak)".into(),
        format!("{} MB", mb(small_memory.map(|m| m.0))),
        format!(
            "{} MB / {} MB, peak {} MB",
            mb(bulk_memory.map(|m| m.0)),
            mb(after_memory.map(|m| m.0)),
            mb(after_memory.map(|m| m.1))
        ),
    ]);
    table.row(vec![
        "bulk load: API server accepted / flowgate serves it".into(),
        "–".into(),
        format!("{} / {}", fmt_duration(api_load), fmt_duration(visible)),
    ]);
    report.push_str(&table.render());
    report.push_str("\n### Index (pure, in-process)\n\n");
    report.push_str(&index::table(&figures));
    report.push_str(&failures_note(&[&rows_a, &rows_b, &rows_fixed]));
    Ok(report)
}

/// The reserves the SQLite flowgate's ledger and the PostgreSQL one's (if any) have counted.
async fn reserves_of(
    http: &reqwest::Client,
    sqlite: &Gate,
    postgres: Option<&Gate>,
) -> anyhow::Result<(u64, Option<u64>)> {
    let sqlite = scrape::reserves(http, &sqlite.ops).await?.count();
    let postgres = match postgres {
        Some(gate) => Some(scrape::reserves(http, &gate.ops).await?.count()),
        None => None,
    };
    Ok((sqlite, postgres))
}

/// `key`'s answers and the reserves counted meanwhile, when fewer reserves than answers.
fn charged(
    rows: &[measure::Measured],
    key: &str,
    before: impl Into<Option<u64>>,
    after: impl Into<Option<u64>>,
) -> Option<String> {
    let (before, after) = (before.into()?, after.into()?);
    let answered: u64 = rows
        .iter()
        .find(|r| r.key == key)?
        .samples
        .iter()
        .map(|s| s.requests)
        .sum();
    let reserved = after.saturating_sub(before);
    (reserved < answered).then(|| format!("{key}: {reserved} reserves, {answered} answers"))
}

fn mb(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn memory(child: &Child) -> Option<(u64, u64)> {
    child.memory_kib()
}

fn failures_note(phases: &[&Vec<measure::Measured>]) -> String {
    let failed: Vec<String> = phases
        .iter()
        .flat_map(|rows| rows.iter())
        .filter(|r| r.samples.iter().any(|s| s.failures > 0))
        .map(|r| r.key.to_string())
        .collect();
    if failed.is_empty() {
        "\nEvery request of every load run was answered 2xx.\n".into()
    } else {
        format!(
            "\n**Requests failed in: {}** — those figures are not valid.\n",
            failed.join(", ")
        )
    }
}

fn header(options: &Options, settings: &Settings, dir: &Path) -> anyhow::Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fs = Command::new("df")
        .args(["--output=fstype", &dir.display().to_string()])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(str::trim).map(String::from))
        .unwrap_or_else(|| "?".into());
    let haproxy = version(Command::new("haproxy").arg("-v"));
    let wrk = version(Command::new("wrk").arg("-v"));
    let oha = version(Command::new(&options.oha).arg("--version"));
    Ok(format!(
        "## flowgate benchmark ({mode})\n\n{date}; {cores} × {cpu}; load average at start {load}; run directory on {fs}.\n{haproxy}; {wrk}; {oha}; flowgate logs at `{log}`.\n{rounds} rounds per phase.\n",
        mode = if options.quick {
            "quick: proves the harness works, figures mean nothing"
        } else {
            "full"
        },
        date = jiff::Zoned::now().strftime("%Y-%m-%d %H:%M %Z"),
        load = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        log = options.flowgate_log,
        rounds = settings.rounds,
    ))
}

fn version(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// flowgate's transport alone in front of the upstream (`passthrough.rs`).
fn start_passthrough(dir: &Path, upstream: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["passthrough", "--upstream", upstream]);
    Child::spawn_printing_addr("flowgate-passthrough", command, dir)
}

/// Starts the upstream (this binary, `upstream` subcommand).
fn start_upstream(dir: &Path, quick: bool) -> anyhow::Result<(Child, SocketAddr)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["upstream", "--print-addr"]);
    if quick {
        command.args(["--sse-events", "5", "--sse-gap-ms", "5"]);
    }
    Child::spawn_printing_addr("upstream", command, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_runs_are_kept() {
        let runs = tempfile::tempdir().expect("tempdir");
        for stamp in [
            "20261122-101500",
            "20261122-091500",
            "20261121-235959",
            "20261122-214533",
        ] {
            std::fs::create_dir(runs.path().join(stamp)).expect("run dir");
        }
        std::fs::write(runs.path().join("notes.txt"), "kept").expect("a file");
        prune_runs(runs.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(runs.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["20261122-101500", "20261122-214533", "notes.txt"]);
    }
}
