//! flowgate's own account of a phase, read from `/metrics` before and after it: where a charged
//! request's time went (the reserve-latency histogram,
//! `flowgate_ledger_operation_duration_seconds{operation="reserve"}`), so a phase's added
//! latency can be split into "waiting for the ledger" and the rest; and how many tokens the
//! verified-token cache answered (`flowgate_token_cache_lookups_total`), so a row is known to
//! measure cache hits or signature checks.

use anyhow::Context;

const FAMILY: &str = "flowgate_ledger_operation_duration_seconds_bucket{";

/// Cumulative bucket counts of one histogram, by upper bound in seconds, ascending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The reserve histogram in an OpenMetrics text page; empty if flowgate does not export it
    /// (an older binary under `--flowgate`).
    pub fn reserve(page: &str) -> Self {
        let mut buckets: Vec<(f64, u64)> = page
            .lines()
            .filter(|l| l.starts_with(FAMILY) && l.contains("operation=\"reserve\""))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let count = l.rsplit(' ').next()?;
                Some((le.parse().ok()?, count.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(buckets)
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Buckets) -> Buckets {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let earlier = before.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(earlier))
                })
                .collect(),
        )
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The `q` quantile in milliseconds, interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations or above the last finite bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.0 {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return None;
                }
                let within = (n - lower.1) as f64;
                let share = if within > 0.0 {
                    (rank - lower.1 as f64) / within
                } else {
                    1.0
                };
                return Some((lower.0 + (le - lower.0) * share) * 1e3);
            }
            lower = (le, n);
        }
        None
    }

    /// `n reserves, p50 ≈ x ms, p99 ≈ y ms`, or why there is nothing to show.
    pub fn describe(&self) -> String {
        let show = |q| {
            self.quantile_ms(q)
                .map_or_else(|| "–".to_string(), |ms| format!("{ms:.2} ms"))
        };
        match self.count() {
            0 => "not exported by this flowgate binary".to_string(),
            n => format!("{n} reserves, p50 ≈ {}, p99 ≈ {}", show(0.5), show(0.99)),
        }
    }
}

/// The verified-token cache's counts; `None` when not exported (the cache is off, or an older
/// binary under `--flowgate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookups(Option<(u64, u64)>);

impl Lookups {
    const FAMILY: &str = "flowgate_token_cache_lookups_total{result=\"";

    pub fn of(page: &str) -> Self {
        let count = |result: &str| {
            let prefix = format!("{}{result}\"}} ", Self::FAMILY);
            page.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        Self(count("hit").zip(count("miss")))
    }

    /// What was counted between `before` and `self`.
    pub fn since(self, before: Lookups) -> Lookups {
        Self(self.0.map(|(hits, misses)| {
            let (h, m) = before.0.unwrap_or_default();
            (hits.saturating_sub(h), misses.saturating_sub(m))
        }))
    }

    /// `n hits, m misses (x% hits)`, or that nothing was exported.
    pub fn describe(&self) -> String {
        match self.0 {
            None => "no lookups exported (cache off, or a binary without the metric)".into(),
            Some((hits, misses)) => {
                let total = (hits + misses).max(1) as f64;
                format!(
                    "{hits} hits, {misses} misses ({:.1}% hits)",
                    hits as f64 * 100.0 / total
                )
            }
        }
    }
}

/// The reserve histogram on flowgate's `/metrics`, at its ops address.
pub async fn reserves(http: &reqwest::Client, ops: &str) -> anyhow::Result<Buckets> {
    Ok(Buckets::reserve(&page(http, ops).await?))
}

/// The token cache's counts on flowgate's `/metrics`, at its ops address.
pub async fn token_cache(http: &reqwest::Client, ops: &str) -> anyhow::Result<Lookups> {
    Ok(Lookups::of(&page(http, ops).await?))
}

async fn page(http: &reqwest::Client, ops: &str) -> anyhow::Result<String> {
    let url = format!("{ops}/metrics");
    http.get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE flowgate_ledger_operation_duration_seconds histogram
flowgate_ledger_operation_duration_seconds_sum{operation=\"reserve\"} 0.01
flowgate_ledger_operation_duration_seconds_count{operation=\"reserve\"} 10
flowgate_ledger_operation_duration_seconds_bucket{le=\"0.0001\",operation=\"reserve\"} 0
flowgate_ledger_operation_duration_seconds_bucket{le=\"0.0002\",operation=\"reserve\"} 4
flowgate_ledger_operation_duration_seconds_bucket{le=\"0.0004\",operation=\"reserve\"} 9
flowgate_ledger_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"reserve\"} 10
flowgate_ledger_operation_duration_seconds_bucket{le=\"0.0002\",operation=\"settle\"} 7
";

    #[test]
    fn the_reserve_buckets_are_read_and_interpolated() {
        let buckets = Buckets::reserve(PAGE);
        assert_eq!(buckets.count(), 10);
        // Rank 5 falls in (0.2, 0.4] ms, the first of its 5 observations there.
        let p50 = buckets.quantile_ms(0.5).expect("p50");
        assert!((p50 - 0.24).abs() < 1e-9, "{p50}");
        // Rank 9.9 is in the +Inf bucket: no finite answer.
        assert_eq!(buckets.quantile_ms(0.99), None);
    }

    #[test]
    fn token_cache_lookups_are_read_and_subtracted() {
        let page = |hits: u64, misses: u64| {
            format!(
                "# TYPE flowgate_token_cache_lookups counter\nflowgate_token_cache_lookups_total{{result=\"hit\"}} {hits}\nflowgate_token_cache_lookups_total{{result=\"miss\"}} {misses}\n"
            )
        };
        let before = Lookups::of(&page(10, 5));
        let after = Lookups::of(&page(1010, 6));
        assert_eq!(after.since(before), Lookups(Some((1000, 1))));
        assert_eq!(
            after.since(before).describe(),
            "1000 hits, 1 misses (99.9% hits)"
        );
        assert_eq!(Lookups::of(PAGE), Lookups(None));
        assert!(
            Lookups::of("")
                .describe()
                .starts_with("no lookups exported")
        );
    }

    #[test]
    fn a_phase_is_the_difference_of_two_scrapes() {
        let before = Buckets::reserve(PAGE);
        let after = Buckets::reserve(&PAGE.replace("} 9\n", "} 19\n").replace("} 10\n", "} 20\n"));
        let phase = after.since(&before);
        assert_eq!(phase.count(), 10);
        let p50 = phase.quantile_ms(0.5).expect("p50");
        assert!((p50 - 0.3).abs() < 1e-9, "{p50}");
        assert_eq!(
            Buckets::reserve("").describe(),
            "not exported by this flowgate binary"
        );
    }
}
