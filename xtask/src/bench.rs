//! `cargo xtask bench NAME`: a benchmark built in release mode, run with the services up, each
//! printing its figures beside a baseline measured in the same run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::{cargo, services};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    name: Bench,
    /// Arguments for the benchmark itself, e.g. `-- --verify-records 100000`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    bench_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// Evidence ledger: append throughput on SQLite and PostgreSQL, verification of 1M records.
    Ledger,
    /// Database password rotation: 1,000 PostgreSQL secrets, alternating users, AWS Secrets Manager.
    Rotation,
    /// Backups of a ~1 GiB PostgreSQL database to the local store and S3, against `pg_dump -Fc`
    /// and a shell pipeline; peak RSS.
    Backup,
    /// A restore drill of the same database against bare `pg_restore` (1 job and `-j 2`), each
    /// phase's share; peak RSS.
    Drill,
    /// `vigil run` with 100 secrets, idling: time to /readyz, peak and steady RSS, CPU, against
    /// a bare tokio + axum server.
    Daemon,
    /// A year of a fleet (~950,000 records): `vigil report export` against reading the records
    /// into JSON lines, and `vigil evidence verify --bundle` against `sha256sum` of the bundle.
    Report,
}

impl BenchArgs {
    pub fn run(self, root: &Path) -> anyhow::Result<ExitCode> {
        services::up(root)?;
        let ctx = services::Context::new(root)?;
        let name = match self.name {
            Bench::Ledger => "ledger",
            Bench::Rotation => "rotation",
            Bench::Backup => "backup",
            Bench::Drill => "drill",
            Bench::Daemon => "daemon",
            Bench::Report => "report",
        };
        let mut bench = cargo();
        bench
            .current_dir(root)
            .args(["bench", "--quiet", "--package", "vigil", "--bench", name, "--"])
            .args(&self.bench_args)
            .env("VIGIL_SERVICES_FILE", ctx.state_file());
        if let Bench::Backup = self.name {
            bench.env("VIGIL_BENCH_AWS", services::backup_bench_tools(&ctx)?);
        }
        let status = bench.status().context("run cargo bench")?;
        Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}
