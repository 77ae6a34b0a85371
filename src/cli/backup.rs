//! `vigil backup`: encrypted, verified backups.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Take, verify, fetch, list and prune encrypted backups.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil backup run orders-nightly\n  vigil backup verify 01JD3Z...\n  vigil backup fetch 01JD3Z... -o orders.dump\n  vigil backup prune --dry-run"
)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BackupCommand {
    /// Back up a backup set now and verify it.
    Run {
        /// The backup set, as named in a schedule file.
        name: String,
    },
    /// Re-read a backup and check every segment and checksum.
    Verify {
        /// The backup id.
        id: String,
    },
    /// Write a backup's decrypted dump to a file or standard output.
    Fetch {
        /// The backup id.
        id: String,
        /// Where to write: a file, or `-` for standard output.
        #[arg(short, long, default_value = "-")]
        output_file: String,
    },
    /// List backups.
    List,
    /// Delete backups beyond each set's retention.
    Prune {
        /// Show what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl BackupArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "backup", arrives: "encrypted streaming backups (issue #7)" }.into())
    }
}
