//! The command line: arguments, dispatch, output and exit codes.
//!
//! This is the only module that prints and the only user of `anyhow`: the modules below
//! return typed errors, and here each becomes one line on standard error and an exit code.

mod backup;
mod completions;
mod config;
mod drill;
mod evidence;
mod jwks;
mod output;
mod report;
mod rotate;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use output::OutputFormat;

use crate::telemetry::{self, LogFormat};

/// Parses the command line, runs the command, and says how it ended.
/// Keeps credentials out of core files: no core dumps (`RLIMIT_CORE` 0) and not dumpable, which
/// also keeps other processes of the same user from attaching to vigil or reading its memory.
fn harden() {
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct it is given; prctl takes plain integers. Neither
    // touches memory Rust owns, and a failure only leaves the defaults, which is reported.
    let (limited, undumpable) =
        unsafe { (libc::setrlimit(libc::RLIMIT_CORE, &none), libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)) };
    if limited != 0 || undumpable != 0 {
        eprintln!("vigil: warning: cannot disable core dumps: {}", std::io::Error::last_os_error());
    }
}

pub fn main() -> ExitCode {
    harden();
    let cli = Cli::parse();
    let verbosity = i8::try_from(i16::from(cli.global.verbose) - i16::from(cli.global.quiet)).unwrap_or(0);
    telemetry::init(cli.global.log_format, verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vigil: error: cannot start the async runtime: {err}");
            return Exit::Failure.into();
        }
    };
    // The daemon stops its own way: no new job, the steps in flight finish within its
    // shutdown_grace, and it exits 0.
    let daemon = matches!(cli.command, Command::Run(_));
    let exit = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let command = cli.command.run(&cli.global, &cancel);
        tokio::pin!(command);
        tokio::select! {
            result = &mut command => result.unwrap_or_else(|err| report(&err)),
            () = shutdown_signal(), if daemon => {
                cancel.cancel();
                tracing::info!("stopping: no new job starts; the steps in flight finish and are recorded");
                tokio::select! {
                    result = &mut command => result.unwrap_or_else(|err| report(&err)),
                    () = shutdown_signal() => {
                        eprintln!("vigil: stopped at once; the steps in flight resume on the next start");
                        Exit::Interrupted
                    }
                }
            }
            () = shutdown_signal(), if !daemon => {
                // The step in flight finishes and is recorded; no new one starts. A second
                // signal, or the grace period running out, stops at once: what is left is
                // recorded as in flight and resumes on the next run.
                cancel.cancel();
                eprintln!(
                    "vigil: interrupted; finishing the step in flight (up to {} s; interrupt again to stop now)",
                    SHUTDOWN_GRACE.as_secs()
                );
                tokio::select! {
                    result = &mut command => {
                        if let Err(err) = result {
                            eprintln!("vigil: {err:#}");
                        }
                    }
                    () = shutdown_signal() => eprintln!("vigil: stopped; the step in flight resumes on the next run"),
                    () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                        eprintln!("vigil: the step in flight did not finish in time; it resumes on the next run");
                    }
                }
                Exit::Interrupted
            }
        }
    });
    exit.into()
}

/// How long an interrupted command may take to finish its step in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops vigil gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Prints a failed command's error chain on one line.
fn report(err: &anyhow::Error) -> Exit {
    eprintln!("vigil: error: {err:#}");
    Exit::Failure
}

/// How vigil ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Success = 0,
    /// The command ran and failed, or found problems (bad configuration, failed verification).
    Failure = 1,
    /// Stopped by Ctrl-C.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Loads the configuration for a command that acts on it: the diagnostics go to stderr and the
/// command fails with one line pointing at `vigil config check`.
fn load_plan(global: &GlobalArgs) -> anyhow::Result<crate::config::Plan> {
    match crate::config::load(&global.config) {
        Ok(loaded) => {
            // Advice is `vigil config check`'s to give; hazards are repeated by every command.
            for warning in loaded.warnings.iter().filter(|w| !w.advice) {
                tracing::warn!("{warning}");
            }
            Ok(loaded.plan)
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            let errors = diagnostics.iter().filter(|d| d.severity == crate::config::Severity::Error).count();
            anyhow::bail!(
                "{} has {errors} configuration error{}; `vigil config check` shows them",
                global.config.display(),
                if errors == 1 { "" } else { "s" }
            )
        }
    }
}

/// vigil rotates credentials, backs up databases, drills restores, and proves all of it.
///
/// vigil rotates database passwords, API keys and JWT signing keys without locking
/// applications out; streams encrypted, verified backups; restores them in drills that
/// measure RPO and RTO; and records every action in a signed, hash-chained evidence ledger.
///
/// Configuration is `vigil.toml` (controller settings) plus the schedule files in the
/// folder it names (default `schedules/` beside it). Start with `vigil config check`.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// The controller configuration file.
    #[arg(long, global = true, env = "VIGIL_CONFIG", default_value = "vigil.toml", value_name = "PATH")]
    config: PathBuf,
    /// How results are printed on standard output.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// How log lines are printed on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// More log detail: -v debug, -vv trace. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log detail: -q warnings only, -qq errors only, -qqq none.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunArgs),
    Rotate(rotate::RotateArgs),
    Backup(backup::BackupArgs),
    Drill(drill::DrillArgs),
    Report(report::ReportArgs),
    Evidence(evidence::EvidenceArgs),
    Jwks(jwks::JwksArgs),
    Config(config::ConfigArgs),
    Status(status::StatusArgs),
    Completions(completions::CompletionsArgs),
}

impl Command {
    async fn run(&self, global: &GlobalArgs, cancel: &CancellationToken) -> anyhow::Result<Exit> {
        match self {
            Self::Run(args) => args.run(global, cancel).await,
            Self::Rotate(args) => args.run(global, cancel).await,
            Self::Backup(args) => args.run(global, cancel).await,
            Self::Drill(args) => args.run(global, cancel).await,
            Self::Report(args) => args.run(global).await,
            Self::Evidence(args) => args.run(global).await,
            Self::Jwks(args) => args.run(global).await,
            Self::Config(args) => args.run(global),
            Self::Status(args) => args.run(global).await,
            Self::Completions(args) => args.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every `vigil …` command a runbook shows (in inline code, up to a pipe or redirection)
    /// parses with this command line: a person following a runbook in an incident never meets
    /// a flag that was renamed.
    #[test]
    fn every_vigil_command_in_the_runbooks_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
        let mut seen = 0;
        let mut wrong = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Inline code is every other piece between backticks.
            for code in text.split('`').skip(1).step_by(2) {
                let Some(command) = code.trim().strip_prefix("vigil ") else { continue };
                let command = command.split(['|', '>', '<']).next().unwrap_or_default();
                let args = std::iter::once("vigil").chain(command.split_whitespace());
                seen += 1;
                if let Err(err) = Cli::try_parse_from(args) {
                    let reason = err.to_string().lines().next().unwrap_or_default().to_owned();
                    wrong.push(format!("{}: `vigil {command}`: {reason}", path.display()));
                }
            }
        }
        assert!(seen >= 20, "only {seen} commands found in the runbooks");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_subcommand_explains_itself_with_an_example() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(!about.is_empty(), "`vigil {}` has no help text", sub.get_name());
            let long = sub.get_after_long_help().or(sub.get_after_help()).map(ToString::to_string).unwrap_or_default();
            assert!(long.contains("vigil "), "`vigil {}` --help shows no example", sub.get_name());
        }
    }
}
