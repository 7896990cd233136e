//! Load generators: `wrk` (Debian) for saturation throughput, `oha` (crates.io) for a fixed
//! request rate with latency correction (no coordinated omission). Both send the same request:
//! `POST` with a bearer token and a small JSON prediction body.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Where to send load, and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: String,
    pub body: String,
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Answers that were not 2xx, plus socket errors and timeouts.
    pub failures: u64,
}

/// `wrk` settings for saturation (`duration` is rounded up to whole seconds).
#[derive(Debug, Clone, Copy)]
pub struct Saturation {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

/// Runs `wrk` against `target` (blocking).
pub fn wrk(target: &Target, load: Saturation, dir: &Path) -> anyhow::Result<Sample> {
    let script = lua_script(target, dir)?;
    let out = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        // wrk takes whole seconds.
        .arg(format!(
            "-d{}s",
            load.duration.as_secs_f64().ceil().max(1.0)
        ))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(&target.url)
        .output()
        .context("running wrk (Debian package `wrk`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn lua_script(target: &Target, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!(
        "wrk-{:x}.lua",
        fxhash(&(target.url.clone() + &target.token))
    ));
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
        lua_string(&target.body),
        target.token
    );
    std::fs::write(&path, script)?;
    Ok(path)
}

fn lua_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn parse_wrk(text: &str) -> Option<Sample> {
    let mut sample = Sample::default();
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some(rest) = line.strip_prefix("50%") {
                sample.p50_ms = wrk_duration_ms(rest.trim())?;
            } else if let Some(rest) = line.strip_prefix("99%") {
                sample.p99_ms = wrk_duration_ms(rest.trim())?;
                in_distribution = false;
            }
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            sample.rps = rest.trim().parse().ok()?;
        }
        if line.contains(" requests in ") {
            sample.requests = line.split_whitespace().next()?.parse().ok()?;
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            sample.failures += rest.trim().parse::<u64>().ok()?;
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                sample.failures += part.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
    }
    (sample.rps > 0.0).then_some(sample)
}

/// `130.00us`, `1.20ms`, `2.00s` → milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// `oha` settings for a fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct FixedRate {
    pub rate: u32,
    pub connections: u32,
    pub duration: Duration,
}

/// Runs `oha` at a fixed rate with latency correction against `target` (blocking).
pub fn oha(oha: &Path, target: &Target, load: FixedRate) -> anyhow::Result<Sample> {
    let out = Command::new(oha)
        .arg("--no-tui")
        .args(["--output-format", "json"])
        .arg("-w")
        .args(["-z", &format!("{}ms", load.duration.as_millis())])
        .args(["-q", &load.rate.to_string()])
        .arg("--latency-correction")
        .args(["-c", &load.connections.to_string()])
        .args(["-m", "POST"])
        .args(["-T", "application/json"])
        .args(["-H", &format!("Authorization: Bearer {}", target.token)])
        .args(["-d", &target.body])
        .arg(&target.url)
        .output()
        .with_context(|| format!("running {}", oha.display()))?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: Value = serde_json::from_slice(&out.stdout).context("oha's JSON output")?;
    let latency = &json["metrics"]["latency_ms"];
    let statuses = json["statusCodeDistribution"]
        .as_object()
        .context("statusCodeDistribution")?;
    let count = |ok: bool| -> u64 {
        statuses
            .iter()
            .filter(|(code, _)| code.starts_with('2') == ok)
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    };
    let errors: u64 = json["errorDistribution"]
        .as_object()
        .map(|e| e.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Ok(Sample {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: latency["p50"].as_f64().context("p50")?,
        p99_ms: latency["p99"].as_f64().context("p99")?,
        requests: count(true) + count(false),
        failures: count(false) + errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 1s test @ http://127.0.0.1:1/x
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   143.59us   50.00us   2.00ms   90.00%
  Latency Distribution
     50%  130.00us
     75%  150.00us
     90%  180.00us
     99%    1.20ms
  27500 requests in 1.00s, 10.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 10
Requests/sec:  27500.00
Transfer/sec:     20.00MB
";
        let s = parse_wrk(text).expect("parses");
        assert_eq!(s.requests, 27500);
        assert_eq!(s.failures, 13);
        assert!((s.p50_ms - 0.13).abs() < 1e-9 && (s.p99_ms - 1.2).abs() < 1e-9);
        assert!((s.rps - 27500.0).abs() < 1e-9);
    }
}
