//! `vigil status`: each secret's rotation state.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Show each secret's last rotation, next due time, and any rotation in flight or needing attention.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  vigil status\n  vigil status --output json")]
pub struct StatusArgs {}

impl StatusArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "status", arrives: "database credential rotation (issue #5)" }.into())
    }
}
