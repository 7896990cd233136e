//! `flowgate-bench`: the harness behind `scripts/bench`.
//!
//! ```text
//!   flowgate-bench run [--quick]   the whole benchmark: starts what it needs, prints the table
//!   flowgate-bench upstream        a Flowise-like upstream (JSON prediction and SSE)
//!   flowgate-bench passthrough     flowgate's proxy threads and Flowise client, no auth
//!   flowgate-bench index           the pure index figures (compile time, decision time)
//! ```
//!
//! `run` plays the controller (it writes Chatflow status itself, so flowgate runs with
//! `--no-controller`), mints the tokens, starts the upstream, flowgate (one process per ledger)
//! and HAProxy as child processes, drives `wrk` (saturation) and `oha` (fixed rate), and removes
//! what it created. Every figure is a ratio or a difference against the direct path measured in
//! the same run, in interleaved rounds.

mod cluster;
mod control;
mod decide;
mod gates;
mod haproxy;
mod index;
mod load;
mod measure;
mod passthrough;
mod procs;
mod report;
mod run;
mod scrape;
mod sse;
mod tokens;
mod upstream;
mod workload;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// flowgate's allocator (`src/main.rs`): the pass-through row measures flowgate's transport as
/// it ships. (Since session 43; the upstream, this binary too, allocates with it as well.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flowgate-bench",
    about = "Benchmark harness for flowgate (see scripts/bench)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every scenario and prints the table.
    Run(run::Options),
    /// Serves Flowise-shaped answers: JSON predictions, or SSE when the body asks to stream.
    Upstream(upstream::Options),
    /// flowgate's transport alone (its proxy threads and Flowise client), forwarding every
    /// request unauthenticated: the pass-through row. Prints its address.
    Passthrough(passthrough::Options),
    /// Compile time and per-request decision time of the index, 10 vs 10,000 access objects.
    Index {
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fewer iterations (a proof that it works, not a measurement).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Upstream(options) => upstream::serve(options),
        Command::Passthrough(options) => {
            flowgate::telemetry::install_crypto_provider();
            passthrough::serve(options)
        }
        Command::Index { out, quick } => {
            let table = index::table(&index::measure(quick));
            print!("{table}");
            if let Some(out) = out {
                std::fs::write(out, table)?;
            }
            Ok(())
        }
        Command::Run(options) => {
            flowgate::telemetry::install_crypto_provider();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(options))
        }
    }
}
