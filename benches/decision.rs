//! The pure access decision under Criterion: one request's lookup of its chatflow, role and
//! credit policies in a compiled index (no I/O), with the team's 10 ChatflowAccess objects and
//! with the harness's bulk load on top (1,000 Chatflows, 10,000 more ChatflowAccess, 1,000 of
//! them on the measured chatflows), and the index's compile time at both sizes.
//!
//!   cargo bench --bench decision
//!
//! The index is the one `scripts/bench` loads into the API server (`benches/gateway/workload.rs`)
//! and the decision the one `flowgate-bench index` times in a hand loop (`decide.rs`). Under
//! `cargo test --all-targets` Criterion runs each function once, as a smoke test.

#[allow(
    dead_code,
    reason = "the harness's whole workload; this bench uses its plan and callers only"
)]
#[path = "gateway/workload.rs"]
mod workload;

#[path = "gateway/decide.rs"]
mod decide;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flowgate::index::compile;

use crate::decide::{bench_user, bulk_callers, decide, resources};
use crate::workload::{Bulk, Plan};

fn decision(c: &mut Criterion) {
    let plan = Plan::new(Bulk::FULL);
    let team = resources(plan.team());
    let mut objects = plan.team();
    objects.extend(plan.bulk());
    let all = resources(objects);
    let large_label = format!("{} ChatflowAccess", all.accesses.len());
    let (small, large) = (compile(&team), compile(&all));
    let user = bench_user(&plan);
    let callers = bulk_callers(&plan);
    let now = jiff::Timestamp::now();

    let mut group = c.benchmark_group("decision");
    group.bench_function(format!("{} ChatflowAccess", team.accesses.len()), |b| {
        b.iter(|| decide(&small, &user, now));
    });
    group.bench_function(&large_label, |b| b.iter(|| decide(&large, &user, now)));
    group.bench_function(
        format!("{large_label}, {} callers in turn", callers.len()),
        |b| {
            let mut turn = callers.iter().cycle();
            b.iter(|| {
                if let Some(asking) = turn.next() {
                    decide(&large, asking, now);
                }
            });
        },
    );
    group.finish();

    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function(format!("{} ChatflowAccess", team.accesses.len()), |b| {
        b.iter(|| compile(black_box(&team)));
    });
    group.bench_function(&large_label, |b| b.iter(|| compile(black_box(&all))));
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
