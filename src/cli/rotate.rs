//! `vigil rotate`: rotate credentials now, resume interrupted rotations, check for drift.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::evidence::open_ledger;
use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::clock::SystemClock;
use crate::context::Ctx;
use crate::rotation::{RotationReport, Rotator};
use crate::saga::Ended;
use crate::state::Db;

/// Rotate a credential now, finish interrupted rotations, or check current credentials.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil rotate orders-app
  vigil rotate --all-due
  vigil rotate --resume
  vigil rotate --check --output json
  vigil rotate --check --watch 10m --interval 200ms

Each rotation is a saga recorded in the state store and the evidence ledger before each step
acts: database passwords run AWS's four steps (create, set, test, finish); API keys create,
test, finish, then retire the old key after the overlap; JWT keys generate, publish, promote
once verifiers have the new key, then retire the old one once its tokens have expired. A
rotation waiting for such a time exits 0 and says until when; --resume runs the steps that are
due, and finishes or rolls back what a crash left in flight. Exits 1 if any rotation did not
complete.")]
pub struct RotateArgs {
    /// The secret to rotate, as named in a schedule file.
    #[arg(required_unless_present_any = ["all_due", "resume", "check"])]
    name: Option<String>,
    /// Rotate every secret whose cadence has run out.
    #[arg(long, conflicts_with = "name")]
    all_due: bool,
    /// Run waiting steps that are due (retiring old keys, promoting published JWT keys), and
    /// finish or roll back every rotation left part-way by a crash.
    #[arg(long, conflicts_with_all = ["name", "all_due"])]
    resume: bool,
    /// Log in with each current credential and report any changed out of band.
    #[arg(long, conflicts_with_all = ["name", "all_due", "resume"])]
    check: bool,
    /// Rotate even if an alternating pair flipped less than min_flip_interval ago (recorded).
    #[arg(long, requires = "name")]
    force: bool,
    /// With --check: keep probing like an application for this long (e.g. 30s, 5m), re-reading
    /// each current credential and logging in every --interval; exits 1 if any login failed.
    #[arg(long, requires = "check", value_name = "DURATION")]
    watch: Option<crate::schedule::Duration>,
    /// With --watch: the time between probes.
    #[arg(long, requires = "watch", default_value = "50ms", value_parser = parse_interval)]
    interval: std::time::Duration,
}

/// Probe intervals go below a second, which configuration durations do not.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    match text.strip_suffix("ms") {
        Some(ms) => ms
            .parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("`{text}` is not a number of milliseconds")),
        None => text.parse::<crate::schedule::Duration>().map(|d| d.to_std()).map_err(|err| err.to_string()),
    }
}

#[derive(Serialize)]
struct Failure {
    secret: String,
    error: String,
}

#[derive(Serialize)]
struct Results {
    rotations: Vec<RotationReport>,
    refused: Vec<Failure>,
}

impl RotateArgs {
    pub(super) async fn run(&self, global: &GlobalArgs, cancel: &CancellationToken) -> anyhow::Result<Exit> {
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let ledger = open_ledger(&plan, &db).await?;
        let rotator = Rotator::new(Ctx::new(&plan, &db, &ledger, &SystemClock, cancel.child_token()));
        let exit = self.dispatch(&rotator, global.output).await;
        db.close().await;
        exit
    }

    async fn dispatch(&self, rotator: &Rotator<'_>, output: OutputFormat) -> anyhow::Result<Exit> {
        if let Some(duration) = self.watch {
            let reports = rotator.watch(duration.to_std(), self.interval).await?;
            match output {
                OutputFormat::Json => print_json(&reports)?,
                OutputFormat::Human => {
                    let mut rows = vec![["SECRET", "LOGINS", "FAILED", "LAST FAILURE"].map(String::from).to_vec()];
                    for r in &reports {
                        rows.push(vec![
                            r.secret.clone(),
                            r.attempts.to_string(),
                            r.failures.to_string(),
                            r.last_failure.clone().unwrap_or_default(),
                        ]);
                    }
                    print!("{}", table("", &rows));
                }
            }
            let failed: u32 = reports.iter().map(|r| r.failures).sum();
            if failed > 0 {
                anyhow::bail!("{failed} login(s) with the current credential failed while watching");
            }
            return Ok(Exit::Success);
        }
        if self.check {
            let reports = rotator.check().await?;
            match output {
                OutputFormat::Json => print_json(&reports)?,
                OutputFormat::Human => {
                    let mut rows = vec![vec!["SECRET".to_owned(), "CURRENT LOGS IN".to_owned(), "PROBLEM".to_owned()]];
                    for r in &reports {
                        rows.push(vec![
                            r.secret.clone(),
                            if r.ok { "yes" } else { "NO" }.into(),
                            r.problem.clone().unwrap_or_default(),
                        ]);
                    }
                    print!("{}", table("", &rows));
                }
            }
            let drifted = reports.iter().filter(|r| !r.ok).count();
            if drifted > 0 {
                anyhow::bail!(
                    "{drifted} current credential(s) do not log in: changed out of band? `vigil rotate NAME` sets a fresh one"
                );
            }
            return Ok(Exit::Success);
        }
        let mut results = Results { rotations: Vec::new(), refused: Vec::new() };
        if self.resume {
            results.rotations = rotator.resume().await?;
        } else {
            let names = match &self.name {
                Some(name) => vec![name.clone()],
                None => rotator.due().await?,
            };
            for name in names {
                if rotator.ctx.cancel.is_cancelled() {
                    break;
                }
                match rotator.rotate(&name, self.force).await {
                    Ok(report) => results.rotations.push(report),
                    // One named secret: its refusal is the command's error.
                    Err(err) if self.name.is_some() => return Err(err.into()),
                    Err(err) => results.refused.push(Failure { secret: name, error: err.to_string() }),
                }
            }
        }
        match output {
            OutputFormat::Json => print_json(&results)?,
            OutputFormat::Human => {
                if results.rotations.is_empty() && results.refused.is_empty() {
                    println!("nothing to do");
                }
                for r in &results.rotations {
                    let is_password =
                        rotator.ctx.plan.secrets.get(&r.secret).is_some_and(|s| s.kind.db_password().is_some());
                    let credential = if is_password { format!("user {}", r.user) } else { format!("key {}", r.user) };
                    match &r.ended {
                        Ended::Done => println!("{}: rotated {credential} (rotation {})", r.secret, r.rotation),
                        Ended::RolledBack { step, reason } => {
                            println!("{}: rolled back at {step} (rotation {}): {reason}", r.secret, r.rotation)
                        }
                        Ended::Waiting { step, until } => {
                            println!(
                                "{}: new {credential}, waiting to {step} until {until} (rotation {})",
                                r.secret, r.rotation
                            )
                        }
                        Ended::Stuck { step, reason } => {
                            println!("{}: STUCK undoing {step} (rotation {}): {reason}", r.secret, r.rotation)
                        }
                    }
                }
                for f in &results.refused {
                    println!("{}: not rotated: {}", f.secret, f.error);
                }
            }
        }
        let failed = results
            .rotations
            .iter()
            .filter(|r| matches!(r.ended, Ended::RolledBack { .. } | Ended::Stuck { .. }))
            .count()
            + results.refused.len();
        if failed > 0 {
            anyhow::bail!("{failed} rotation(s) did not complete; `vigil status` shows what needs attention");
        }
        Ok(Exit::Success)
    }
}
