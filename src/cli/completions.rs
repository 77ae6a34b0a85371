//! `vigil completions`: shell completion scripts.

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Exit};

/// Print a shell completion script.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil completions bash > /etc/bash_completion.d/vigil\n  vigil completions zsh > \"${fpath[1]}/_vigil\""
)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionsArgs {
    pub(super) fn run(&self) -> anyhow::Result<Exit> {
        clap_complete::generate(self.shell, &mut Cli::command(), "vigil", &mut std::io::stdout());
        Ok(Exit::Success)
    }
}
