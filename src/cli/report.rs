//! `vigil report`: compliance reports.

use std::path::PathBuf;

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Export a compliance report that an auditor verifies offline.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:\n  vigil report export --since 2026-01-01 -o q1-report/")]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReportCommand {
    /// Write the report bundle: evidence, checkpoints, the public key and a summary.
    Export {
        /// The first day covered (RFC 3339 date).
        #[arg(long)]
        since: Option<String>,
        /// The folder to write the bundle into.
        #[arg(short, long)]
        output_dir: Option<PathBuf>,
    },
}

impl ReportArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "report", arrives: "compliance reports, after the daemon" }.into())
    }
}
