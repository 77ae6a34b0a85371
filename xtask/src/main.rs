//! Project automation for vigil, in the cargo-xtask pattern: `cargo xtask <command>`.
//!
//! - `services up|down|env|status`: the real services the tests and the demo talk to.
//! - `test`: the whole suite with the services up, the README's test command.
//! - `demo`: the whole product as it stands, end to end on the local stack.
//! - `bench NAME`: a benchmark beside its same-run baseline.

mod bench;
mod demo;
mod services;
mod test;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project automation for vigil")]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop and describe the local services (moto, OpenBao, PostgreSQL, MariaDB).
    Services(services::ServicesArgs),
    /// Run the whole test suite, services included (the README's test command).
    Test(test::TestArgs),
    /// Show the whole product end to end on the local stack.
    Demo(demo::DemoArgs),
    /// Run a benchmark against its baseline, in release mode.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let root = project_root();
    let result = match flags.command {
        Command::Services(args) => args.run(&root),
        Command::Test(args) => args.run(&root),
        Command::Demo(args) => args.run(&root),
        Command::Bench(args) => args.run(&root),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root, found from this crate's manifest rather than the caller's folder.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one folder below the workspace root").to_owned()
}

/// `cargo`, as the one that runs this xtask.
fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
