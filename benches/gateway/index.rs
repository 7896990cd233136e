//! The pure index figures: how long [`flowgate::index::compile`] takes, and what one request's
//! decision costs (find the chatflow by Flowise id, `Snapshot::role`, `Snapshot::policies_for`),
//! with the team's 10 ChatflowAccess objects and with the bulk load on top.

use std::hint::black_box;
use std::time::{Duration, Instant};

use flowgate::index::{Resources, Snapshot, compile};

use crate::decide::{self, Asking, bulk_callers, resources};
use crate::report::{Stat, fmt_duration};
use crate::workload::{Bulk, Plan};

/// Figures for one index size.
pub struct Figures {
    pub label: String,
    pub chatflows: usize,
    pub accesses: usize,
    pub compile: Stat,
    /// Nanoseconds per decision.
    pub decision_ns: Stat,
    /// Nanoseconds per decision over many callers, each on a chatflow of its own (bulk only).
    pub spread_ns: Option<Stat>,
    /// How many callers `spread_ns` took in turn.
    pub spread_callers: usize,
    /// ChatflowAccess objects in the measured chatflow's namespace.
    pub team_accesses: usize,
}

/// Measures the team-only index and the team + bulk index.
pub fn measure(quick: bool) -> Vec<Figures> {
    let bulk = if quick { Bulk::QUICK } else { Bulk::FULL };
    let plan = Plan::new(bulk);
    let small = resources(plan.team());
    let mut all = plan.team();
    all.extend(plan.bulk());
    let large = resources(all);
    [("10 access objects", small), ("bulk load", large)]
        .into_iter()
        .map(|(label, res)| figures(label, &plan, &res, quick))
        .collect()
}

fn figures(label: &str, plan: &Plan, res: &Resources, quick: bool) -> Figures {
    let compiles = if quick { 2 } else { 15 };
    let samples: Vec<f64> = (0..compiles)
        .map(|_| {
            let started = Instant::now();
            let snap = compile(black_box(res));
            let took = started.elapsed();
            drop(black_box(snap));
            took.as_secs_f64()
        })
        .collect();
    let snap = compile(res);
    let iterations = if quick { 20_000 } else { 1_000_000 };
    let rounds = if quick { 3 } else { 9 };
    let bench_user = [decide::bench_user(plan)];
    let decision: Vec<f64> = (0..rounds)
        .map(|_| decision_ns(&snap, &bench_user, iterations))
        .collect();
    // The same decision for many callers in turn, each on its own chatflow: what one caller's
    // loop repeated from the caches hides.
    let spread = bulk_callers(plan);
    let spread_ns = (res.accesses.len() > plan.bulk.total_accesses()).then(|| {
        Stat::of(
            &(0..rounds)
                .map(|_| decision_ns(&snap, &spread, iterations))
                .collect::<Vec<_>>(),
        )
    });
    Figures {
        label: format!(
            "{label} ({} ChatflowAccess, {} Chatflows)",
            res.accesses.len(),
            res.chatflows.len()
        ),
        chatflows: res.chatflows.len(),
        accesses: res.accesses.len(),
        compile: Stat::of(&samples),
        decision_ns: Stat::of(&decision),
        spread_ns,
        spread_callers: spread.len(),
        team_accesses: res
            .accesses
            .iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(plan.team_namespace().as_str()))
            .count(),
    }
}

/// Mean nanoseconds of one request's decision over `iterations`, taking `asking` in turn.
fn decision_ns(snap: &Snapshot, asking: &[Asking], iterations: u32) -> f64 {
    let now = jiff::Timestamp::now();
    let mut turn = asking.iter().cycle();
    let started = Instant::now();
    for _ in 0..iterations {
        let Some(asking) = turn.next() else {
            break;
        };
        decide::decide(snap, asking, now);
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

/// The index figures as a Markdown table.
pub fn table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| index | compile (median, min–max) | decision per request (median, min–max) |\n|---|---|---|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} ({}–{}) | {:.0} ns ({:.0}–{:.0}) |\n",
            f.label,
            fmt_duration(Duration::from_secs_f64(f.compile.median)),
            fmt_duration(Duration::from_secs_f64(f.compile.min)),
            fmt_duration(Duration::from_secs_f64(f.compile.max)),
            f.decision_ns.median,
            f.decision_ns.min,
            f.decision_ns.max,
        ));
    }
    if let [small, large] = figures {
        out.push_str(&format!(
            "\nDecision time of the bench user on `paid`, {} vs {} access objects (of them {} on `paid`'s namespace): {:.2}× ({} Chatflows in the larger index).\n",
            large.accesses,
            small.accesses,
            large.team_accesses,
            large.decision_ns.median / small.decision_ns.median,
            large.chatflows,
        ));
        if let Some(spread) = &large.spread_ns {
            out.push_str(&format!(
                "The same decision in the larger index for {} different callers in turn, each on its own chatflow: {:.0} ns ({:.0}–{:.0}).\n",
                large.spread_callers, spread.median, spread.min, spread.max,
            ));
        }
    }
    out
}
