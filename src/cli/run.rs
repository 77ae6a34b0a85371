//! `vigil run`: the scheduled daemon.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Run the daemon: rotate, back up and drill on the schedules in `schedules/`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:\n  vigil --config /etc/vigil/vigil.toml run")]
pub struct RunArgs {}

impl RunArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "run", arrives: "the daemon, after drills" }.into())
    }
}
