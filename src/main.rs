//! The `flowgate` binary: parse the command line, set up logging, run, map errors to an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flowgate::config::{Config, LedgerUrl, RunArgs};
use flowgate::{check, crd, ledger, run, telemetry};

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
    /// Check the flowgate resources in YAML files before they are applied (for CI): what the
    /// API server would drop or the controller refuse. Exit status 1 on an error.
    Check {
        /// Files, or directories searched recursively for *.yaml and *.yml.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Run the controller and the proxy.
    Run(Box<RunArgs>),
    /// Work with the credits ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Copy the SQLite ledger consistently while flowgate runs, to a new file or to stdout
    /// (`-`), e.g. `kubectl exec deploy/flowgate -- /flowgate ledger backup - > ledger.db`.
    Backup {
        /// The ledger, as `flowgate run` takes it.
        #[arg(
            long,
            env = "FLOWGATE_LEDGER_URL",
            hide_env_values = true,
            default_value = "sqlite://./flowgate-ledger.db"
        )]
        ledger_url: String,
        /// A file that does not exist yet, or `-` for stdout.
        dest: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir } => match print_crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("flowgate crd: {}", telemetry::report(error.as_ref()));
                ExitCode::FAILURE
            }
        },
        Command::Check { paths } => {
            let report = check::check(&paths);
            let mut text = String::new();
            for finding in &report.findings {
                text.push_str(&format!("{finding}\n"));
            }
            let count =
                |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            text.push_str(&format!(
                "{}, {}: {}, {}\n",
                count(report.files, "file"),
                count(report.objects, "flowgate object"),
                count(report.errors(), "error"),
                count(report.warnings(), "warning")
            ));
            if let Err(error) = to_stdout(&text) {
                eprintln!("flowgate check: {error}");
                return ExitCode::FAILURE;
            }
            if report.errors() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Ledger {
            command: LedgerCommand::Backup { ledger_url, dest },
        } => match backup(&ledger_url, &dest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!(
                    "flowgate ledger backup: {}",
                    telemetry::report(error.as_ref())
                );
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
            if let Err(error) = telemetry::init(config.log_format) {
                eprintln!("flowgate: invalid configuration: {error}");
                return ExitCode::from(2);
            }
            telemetry::install_crypto_provider();
            match start(config) {
                Ok(()) => ExitCode::SUCCESS,
                // A setting found unusable at start (an unreadable file, no key source, …):
                // the same answer as one refused while parsing.
                Err(error) if matches!(error.downcast_ref(), Some(run::RunError::Config(_))) => {
                    eprintln!("flowgate: invalid configuration: {error}");
                    ExitCode::from(2)
                }
                Err(error) => {
                    tracing::error!("{}", telemetry::report(error.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes `text` to standard output. A reader that stopped reading (`| head`) is not an error:
/// Rust ignores SIGPIPE, and `print!` would panic there.
fn to_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn print_crds(out_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (file, definition) in crd::definitions() {
        let yaml = crd::to_yaml(&definition)?;
        match &out_dir {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => to_stdout(&yaml).context("writing to standard output")?,
        }
    }
    Ok(())
}

/// `flowgate ledger backup`: to `dest`, or for `-` to a file beside the ledger (the one place
/// known to be writable in the container) that is streamed to stdout and removed.
fn backup(ledger_url: &str, dest: &std::path::Path) -> anyhow::Result<()> {
    let url = LedgerUrl::parse(ledger_url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = match &url {
        LedgerUrl::Sqlite(path) if dest == std::path::Path::new("-") => path,
        _ => return Ok(runtime.block_on(ledger::backup(&url, dest))?),
    };
    let scratch = path.with_file_name(format!(
        ".{}.backup-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("ledger"),
        std::process::id()
    ));
    let copied = runtime
        .block_on(ledger::backup(&url, &scratch))
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let mut file = std::fs::File::open(&scratch)?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut file, &mut out)?;
            // Its last bytes too, with their error: a copy cut short must not exit 0.
            std::io::Write::flush(&mut out)?;
            Ok(())
        });
    let _ = std::fs::remove_file(&scratch);
    copied
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

/// Cancels `shutdown` on SIGTERM or Ctrl-C; a second one ends the process at once (the drain,
/// the settles still running and the Lease's release cut short), as `kill -9` would but with a
/// line in the log.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut signals = Signals::new();
    let first = signals.next().await;
    tracing::info!("{first} received; shutting down");
    shutdown.cancel();
    let second = signals.next().await;
    tracing::warn!("{second} received again; exiting without finishing the shutdown");
    std::process::exit(if second == "SIGTERM" { 143 } else { 130 });
}

/// SIGTERM and Ctrl-C, as often as they come.
struct Signals {
    /// `None` where SIGTERM cannot be listened for: Ctrl-C alone then.
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGTERM"))
            .ok();
        Self {
            #[cfg(unix)]
            term,
        }
    }

    /// The next one's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        let term = async {
            match &mut self.term {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupt",
            _ = term => "SIGTERM",
        }
    }
}
