//! Interleaved rounds: every round runs each scenario once, in order, the direct path first, so
//! slow drift of the shared machine hits all paths alike. Ratios and differences are taken per
//! round against that round's direct figure, then summarised as median (min–max).

use std::path::Path;
use std::time::Duration;

use crate::load::{self, FixedRate, Sample, Saturation, Target};
use crate::procs;
use crate::report::{Stat, Table};
use crate::sse::{self, Streamed};

/// One path under load.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub key: &'static str,
    pub label: String,
    pub target: Target,
    /// The process whose CPU time is charged to this path (the proxy; the upstream for direct).
    pub pid: u32,
    /// The processes (by name) of a server the proxy uses on the same machine — PostgreSQL's
    /// backends for its ledger — whose CPU is shown apart.
    pub server: Option<&'static str>,
}

/// What the rounds measured for one scenario.
#[derive(Debug, Clone)]
pub struct Measured {
    pub key: &'static str,
    pub label: String,
    pub samples: Vec<Sample>,
    /// CPU microseconds the proxy process spent per request, per round.
    pub cpu_us: Vec<f64>,
    /// CPU microseconds the scenario's server processes spent per request, per round.
    pub server_cpu_us: Vec<f64>,
}

/// Runs `rounds` interleaved rounds of `wrk` over `scenarios` (direct first), after a warm-up.
pub async fn saturation(
    scenarios: &[Scenario],
    rounds: u32,
    load: Saturation,
    warmup: Duration,
    dir: &Path,
) -> anyhow::Result<Vec<Measured>> {
    let mut out = empty(scenarios);
    for scenario in scenarios.iter().filter(|_| !warmup.is_zero()) {
        let warm = Saturation {
            duration: warmup,
            ..load
        };
        run_wrk(scenario, warm, dir).await?;
    }
    for round in 0..rounds {
        for (scenario, measured) in scenarios.iter().zip(&mut out) {
            let before = procs::cpu_time(scenario.pid);
            let server_before = scenario.server.map(procs::cpu_time_of_named);
            let sample = run_wrk(scenario, load, dir).await?;
            let after = procs::cpu_time(scenario.pid);
            let per_request = |used: std::time::Duration| {
                used.as_secs_f64() * 1e6 / sample.requests.max(1) as f64
            };
            if let (Some(before), Some(after)) = (before, after) {
                measured
                    .cpu_us
                    .push(per_request(after.saturating_sub(before)));
            }
            if let (Some(server), Some(before)) = (scenario.server, server_before) {
                let after = procs::cpu_time_of_named(server);
                measured
                    .server_cpu_us
                    .push(per_request(after.saturating_sub(before)));
            }
            eprintln!(
                "  round {}/{rounds} {:<28} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms{}",
                round + 1,
                scenario.key,
                sample.rps,
                sample.p50_ms,
                sample.p99_ms,
                failures(&sample),
            );
            measured.samples.push(sample);
        }
    }
    Ok(out)
}

async fn run_wrk(scenario: &Scenario, load: Saturation, dir: &Path) -> anyhow::Result<Sample> {
    let (target, dir) = (scenario.target.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || load::wrk(&target, load, &dir)).await?
}

/// Runs `rounds` interleaved rounds of `oha` at a fixed rate over `scenarios` (direct first),
/// after an unrecorded warm-up run of each.
pub async fn fixed_rate(
    oha: &Path,
    scenarios: &[Scenario],
    rounds: u32,
    load: FixedRate,
) -> anyhow::Result<Vec<Measured>> {
    let mut out = empty(scenarios);
    let warm = FixedRate {
        duration: load.duration.min(std::time::Duration::from_secs(2)),
        ..load
    };
    for scenario in scenarios {
        let (oha, target) = (oha.to_path_buf(), scenario.target.clone());
        tokio::task::spawn_blocking(move || load::oha(&oha, &target, warm)).await??;
    }
    for round in 0..rounds {
        for (scenario, measured) in scenarios.iter().zip(&mut out) {
            let (oha, target) = (oha.to_path_buf(), scenario.target.clone());
            let sample =
                tokio::task::spawn_blocking(move || load::oha(&oha, &target, load)).await??;
            eprintln!(
                "  round {}/{rounds} {:<28} {:>6.0} req/s  p50 {:.3} ms  p99 {:.3} ms{}",
                round + 1,
                scenario.key,
                sample.rps,
                sample.p50_ms,
                sample.p99_ms,
                failures(&sample),
            );
            measured.samples.push(sample);
        }
    }
    Ok(out)
}

fn failures(sample: &Sample) -> String {
    if sample.failures == 0 {
        String::new()
    } else {
        format!("  FAILED {}", sample.failures)
    }
}

fn empty(scenarios: &[Scenario]) -> Vec<Measured> {
    scenarios
        .iter()
        .map(|s| Measured {
            key: s.key,
            label: s.label.clone(),
            samples: Vec::new(),
            cpu_us: Vec::new(),
            server_cpu_us: Vec::new(),
        })
        .collect()
}

/// Per-round `f(scenario sample, reference sample)` against the scenario `reference`.
fn per_round(
    rows: &[Measured],
    row: &Measured,
    reference: &str,
    f: impl Fn(&Sample, &Sample) -> f64,
) -> Option<Stat> {
    let reference = rows.iter().find(|r| r.key == reference)?;
    let values: Vec<f64> = row
        .samples
        .iter()
        .zip(&reference.samples)
        .map(|(s, r)| f(s, r))
        .collect();
    Some(Stat::of(&values))
}

/// The saturation table: throughput with ratios to direct and to HAProxy, latency, CPU.
pub fn saturation_table(rows: &[Measured]) -> String {
    let mut table = Table::new(&[
        "path",
        "req/s, median (min–max)",
        "× direct",
        "× HAProxy HS256",
        "× HAProxy RS256",
        "p50 ms",
        "p99 ms",
        "CPU µs/req: the proxy (direct: the upstream)",
        "CPU µs/req: its database server",
        "failed",
    ]);
    let ratio = |row: &Measured, reference: &str| {
        per_round(rows, row, reference, |s, r| s.rps / r.rps)
            .filter(|_| row.key != reference)
            .map_or("–".into(), |s| s.show(2))
    };
    for row in rows {
        let rps: Vec<f64> = row.samples.iter().map(|s| s.rps).collect();
        let p50: Vec<f64> = row.samples.iter().map(|s| s.p50_ms).collect();
        let p99: Vec<f64> = row.samples.iter().map(|s| s.p99_ms).collect();
        let failed: u64 = row.samples.iter().map(|s| s.failures).sum();
        table.row(vec![
            row.label.clone(),
            Stat::of(&rps).show(0),
            ratio(row, "direct"),
            ratio(row, "haproxy-hs256"),
            ratio(row, "haproxy-rs256"),
            format!("{:.3}", Stat::of(&p50).median),
            format!("{:.3}", Stat::of(&p99).median),
            format!("{:.1}", Stat::of(&row.cpu_us).median),
            if row.server_cpu_us.is_empty() {
                "–".into()
            } else {
                format!("{:.1}", Stat::of(&row.server_cpu_us).median)
            },
            failed.to_string(),
        ]);
    }
    table.render()
}

/// The fixed-rate table: latency and what each path adds to the direct path's. A path that
/// fell short of `rate` (below 99 % of it) in any round is marked: oha then drops the requests
/// that waited longest, and its latencies read low.
pub fn fixed_rate_table(rows: &[Measured], rate: u32) -> String {
    let mut table = Table::new(&[
        "path",
        "achieved req/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms, median (min…max)",
        "added p99 ms, median (min…max)",
        "failed",
    ]);
    for row in rows {
        let stat = |f: fn(&Sample) -> f64| Stat::of(&row.samples.iter().map(f).collect::<Vec<_>>());
        let added = |f: fn(&Sample) -> f64| {
            per_round(rows, row, "direct", |s, r| f(s) - f(r))
                .filter(|_| row.key != "direct")
                .map_or("–".into(), |s| s.show_signed(3))
        };
        let failed: u64 = row.samples.iter().map(|s| s.failures).sum();
        let short = row
            .samples
            .iter()
            .filter(|s| s.rps < 0.99 * f64::from(rate))
            .count();
        let label = if short == 0 {
            row.label.clone()
        } else {
            format!(
                "{} — **below the rate in {short} of {} rounds: latencies read low**",
                row.label,
                row.samples.len()
            )
        };
        table.row(vec![
            label,
            format!("{:.0}", stat(|s| s.rps).median),
            stat(|s| s.p50_ms).show(3),
            stat(|s| s.p99_ms).show(3),
            added(|s| s.p50_ms),
            added(|s| s.p99_ms),
            failed.to_string(),
        ]);
    }
    table.render()
}

/// Streams `count` predictions straight to the upstream and through each of `paths`,
/// interleaved (direct, then each path, `count` times): what each path streamed, direct first.
pub async fn streaming(
    direct: &Target,
    paths: &[&Target],
    count: usize,
) -> anyhow::Result<Vec<Vec<Streamed>>> {
    let http = reqwest::Client::new();
    let targets: Vec<&Target> = std::iter::once(direct)
        .chain(paths.iter().copied())
        .collect();
    // Warm every connection pool.
    for target in &targets {
        sse::stream_once(&http, target).await?;
    }
    let mut streamed = vec![Vec::with_capacity(count); targets.len()];
    for _ in 0..count {
        for (target, out) in targets.iter().zip(&mut streamed) {
            out.push(sse::stream_once(&http, target).await?);
        }
    }
    Ok(streamed)
}

/// The streaming table: first-event time and per-event delay, and what each path adds to the
/// direct streams measured beside it. `paths`: a label and its streams, in `direct`'s order.
pub fn streaming_table(direct: &[Streamed], paths: &[(&str, &[Streamed])]) -> String {
    let first = |s: &[Streamed]| Stat::of(&s.iter().map(|x| x.first_event_ms).collect::<Vec<_>>());
    let delays = |s: &[Streamed]| {
        let mut all: Vec<f64> = s.iter().flat_map(|x| x.event_delays_ms.clone()).collect();
        all.sort_by(f64::total_cmp);
        all
    };
    let events = |s: &[Streamed]| s.iter().map(|x| x.event_delays_ms.len()).sum::<usize>();
    let batched = |s: &[Streamed]| s.iter().map(|x| x.batched).sum::<usize>();
    let dd = delays(direct);
    let mut table = Table::new(&[
        "path",
        "streams",
        "first event ms, median (min–max)",
        "added first event ms",
        "event delay p50 / p99 ms",
        "added event delay p50 / p99 ms",
        "events batched",
    ]);
    let pct = |v: &[f64], p| crate::report::percentile(v, p);
    table.row(vec![
        "direct".into(),
        direct.len().to_string(),
        first(direct).show(3),
        "–".into(),
        format!("{:.3} / {:.3}", pct(&dd, 50.0), pct(&dd, 99.0)),
        "–".into(),
        format!("{} of {}", batched(direct), events(direct)),
    ]);
    for (label, via) in paths {
        let added_first: Vec<f64> = via
            .iter()
            .zip(direct)
            .map(|(v, d)| v.first_event_ms - d.first_event_ms)
            .collect();
        let vd = delays(via);
        table.row(vec![
            (*label).into(),
            via.len().to_string(),
            first(via).show(3),
            Stat::of(&added_first).show_signed(3),
            format!("{:.3} / {:.3}", pct(&vd, 50.0), pct(&vd, 99.0)),
            format!(
                "{:+.3} / {:+.3}",
                pct(&vd, 50.0) - pct(&dd, 50.0),
                pct(&vd, 99.0) - pct(&dd, 99.0)
            ),
            format!("{} of {}", batched(via), events(via)),
        ]);
    }
    table.render()
}
