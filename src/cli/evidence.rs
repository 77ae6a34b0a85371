//! `vigil evidence`: the signed, hash-chained evidence ledger.

use super::{Exit, GlobalArgs, NotYetAvailable};

/// Read, verify, checkpoint and prove records of the evidence ledger.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil evidence list --kind rotation.step\n  vigil evidence verify\n  vigil evidence pubkey --vkey"
)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    command: EvidenceCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EvidenceCommand {
    /// List records.
    List,
    /// Show one record.
    Show {
        /// The record's sequence number.
        seq: u64,
    },
    /// Check every hash link, checkpoint signature and root.
    Verify,
    /// Sign and print a checkpoint now.
    Checkpoint,
    /// Print a record's inclusion proof.
    Prove {
        /// The record's sequence number.
        seq: u64,
    },
    /// Print the ledger's public key.
    Pubkey,
}

impl EvidenceArgs {
    pub(super) async fn run(&self, _global: &GlobalArgs) -> anyhow::Result<Exit> {
        Err(NotYetAvailable { command: "evidence", arrives: "the evidence ledger (issue #4)" }.into())
    }
}
