//! `cargo xtask test`: formatting and lint checks, services up, every test (ignored ones included),
//! services down, and the tests' exit code.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::{cargo, services};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Leave the services running afterwards (for rerunning single tests by hand).
    #[arg(long)]
    keep_services: bool,
    /// Extra arguments for the test runner, e.g. a test name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    runner_args: Vec<String>,
}

impl TestArgs {
    pub fn run(self, root: &Path) -> anyhow::Result<ExitCode> {
        // Ctrl-C reaches the test runner too (same process group) and ends it; xtask itself
        // stays alive to stop the services.
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("install the Ctrl-C handler")?;

        let mut fmt = cargo();
        fmt.current_dir(root).args(["fmt", "--all", "--", "--check"]);
        match fmt.status() {
            Ok(status) if status.success() => {}
            Ok(_) => anyhow::bail!("code is not formatted: run `cargo fmt --all`"),
            Err(err) => anyhow::bail!("cannot run rustfmt ({err}); install it with `rustup component add rustfmt`"),
        }

        let mut clippy = cargo();
        clippy.current_dir(root).args(["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"]);
        if !clippy.status().context("run cargo clippy")?.success() {
            anyhow::bail!("cargo clippy found problems (above)");
        }

        let started = services::up(root);
        let outcome = started.and_then(|_| {
            if interrupted.load(Ordering::SeqCst) {
                anyhow::bail!("interrupted while the services started");
            }
            let ctx = services::Context::new(root)?;
            let status = runner(root, &self.runner_args)
                .env("VIGIL_SERVICES_FILE", ctx.state_file())
                .status()
                .context("start the test runner")?;
            Ok(status)
        });
        if self.keep_services && !interrupted.load(Ordering::SeqCst) {
            eprintln!("services left running; `cargo xtask services down` stops them");
        } else if let Err(err) = services::down(root) {
            eprintln!("xtask: warning: {err:#}");
        }
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("interrupted");
            return Ok(ExitCode::from(130));
        }
        let status = outcome?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        })
    }
}

/// Crash points compiled in, for the crash-safety tests; never in release builds.
const FEATURES: [&str; 2] = ["--features", "vigil/failpoints"];

/// nextest when installed (one process per test, all of the workspace's tests), else cargo test.
fn runner(root: &Path, extra: &[String]) -> Command {
    let has_nextest = cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut command = cargo();
    command.current_dir(root);
    if has_nextest {
        command
            .args(["nextest", "run", "--workspace", "--run-ignored", "all", "--no-fail-fast"])
            .args(FEATURES)
            .args(extra);
    } else {
        command
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(FEATURES)
            .arg("--")
            .arg("--include-ignored")
            .args(extra);
    }
    command
}
