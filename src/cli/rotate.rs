//! `vigil rotate`: rotate credentials now, resume interrupted rotations, check for drift.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Rotate a credential now, finish interrupted rotations, or check current credentials.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil rotate orders-app\n  vigil rotate --all-due\n  vigil rotate --resume\n  vigil rotate --check --output json"
)]
pub struct RotateArgs {
    /// The secret to rotate, as named in a schedule file.
    #[arg(required_unless_present_any = ["all_due", "resume", "check"])]
    name: Option<String>,
    /// Rotate every secret whose cadence has run out.
    #[arg(long, conflicts_with = "name")]
    all_due: bool,
    /// Finish or roll back every rotation left part-way by a crash.
    #[arg(long, conflicts_with_all = ["name", "all_due"])]
    resume: bool,
    /// Log in with each current credential and report any changed out of band.
    #[arg(long, conflicts_with_all = ["name", "all_due", "resume"])]
    check: bool,
    /// Rotate even if an alternating pair flipped less than min_flip_interval ago (recorded).
    #[arg(long, requires = "name")]
    force: bool,
}

impl RotateArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "rotate", arrives: "database credential rotation (issue #5)" }.into())
    }
}
