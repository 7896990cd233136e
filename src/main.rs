//! The `flowgate` binary: parse the command line, set up logging, run, map errors to an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flowgate::config::{Config, RunArgs};
use flowgate::{crd, run, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// GitOps-managed access control and credit budgets in front of Flowise.
#[derive(Parser)]
#[command(name = "flowgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (the content of crds/).
    Crd {
        /// Write one file per kind into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Run the controller and the proxy.
    Run(Box<RunArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir } => match print_crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("flowgate crd: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let config = match Config::from_args(*args) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("flowgate: invalid configuration: {error}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(config.log_format);
            telemetry::install_crypto_provider();
            match start(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn print_crds(out_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    for (file, definition) in crd::definitions() {
        let yaml = crd::to_yaml(&definition)?;
        match &out_dir {
            Some(dir) => std::fs::write(dir.join(file), yaml)?,
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

fn start(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        run::run(config, shutdown).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt received"),
        () = term => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
