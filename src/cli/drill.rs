//! `vigil drill`: restore drills.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Restore the latest backup into a scratch target, check it, and measure RPO and RTO.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  vigil drill run orders-restore\n  vigil drill list")]
pub struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DrillCommand {
    /// Run a drill now.
    Run {
        /// The drill, as named in a schedule file.
        name: String,
    },
    /// List drills and their last results.
    List,
}

impl DrillArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "drill", arrives: "restore drills, after backups" }.into())
    }
}
