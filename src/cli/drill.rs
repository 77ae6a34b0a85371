//! `vigil drill`: restore drills.

use std::io::IsTerminal as _;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::evidence::open_ledger;
use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::clock::SystemClock;
use crate::context::Ctx;
use crate::drill::{DrillData, DrillReport, DrillRun, DrillStep, Drills, human, human_measured};
use crate::saga::Step as _;
use crate::state::Db;

/// Restore the latest backup into a scratch target, check it, and measure RPO and RTO.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil drill run orders-restore
  vigil drill run orders-restore --output json
  vigil drill list
  vigil drill show 20261130T020000Z-0a1b2c3d
  vigil drill resume

A drill restores the newest verified backup of its set into a scratch database on its scratch
target (dropped first if a previous drill left it), compares every table's row count with the
backup's manifest, runs the drill's SQL assertions, measures RTO (drill start to checks done)
and RPO (drill start minus the backup's snapshot time) against its targets, and drops the
scratch database. Every phase is recorded in the evidence ledger before it acts. Exit status: 0
when the drill passed, 1 when it failed (with the reason), 2 for a usage error.")]
pub struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DrillCommand {
    /// Run a drill now; exits 1 if it fails.
    Run {
        /// The drill, as named in a schedule file.
        name: String,
    },
    /// Finish or roll back drills a crash left in flight (their scratch databases are dropped).
    Resume,
    /// List drills and their last results.
    List,
    /// Show one drill run: phases, checks, RPO and RTO.
    Show {
        /// The drill run's id, as `vigil drill list` shows it.
        id: String,
    },
}

impl DrillArgs {
    pub(super) async fn run(&self, global: &GlobalArgs, cancel: &CancellationToken) -> anyhow::Result<Exit> {
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let ledger = open_ledger(&plan, &db).await?;
        let mut drills = Drills::new(Ctx::new(&plan, &db, &ledger, &SystemClock, cancel.child_token()));
        if global.output == OutputFormat::Human && std::io::stderr().is_terminal() && global.quiet == 0 {
            drills.progress = Some(Arc::new(|name: &str, step: DrillStep| eprintln!("drill {name}: {}…", step.name())));
        }
        let exit = self.dispatch(&drills, global.output).await;
        db.close().await;
        exit
    }

    async fn dispatch(&self, drills: &Drills<'_>, output: OutputFormat) -> anyhow::Result<Exit> {
        match &self.command {
            DrillCommand::Run { name } => {
                let report = drills.run(name).await?;
                show_reports(std::slice::from_ref(&report), output)?;
                finished(&[report])
            }
            DrillCommand::Resume => {
                let reports = drills.resume().await?;
                show_reports(&reports, output)?;
                finished(&reports)
            }
            DrillCommand::List => {
                let latest = drills.latest().await?;
                match output {
                    OutputFormat::Json => print_json(&latest)?,
                    OutputFormat::Human => {
                        let mut rows =
                            vec![["DRILL", "LAST RUN", "RESULT", "RPO", "RTO", "BACKUP"].map(String::from).to_vec()];
                        for (name, run) in &latest {
                            rows.push(match run {
                                None => vec![
                                    name.clone(),
                                    "never".into(),
                                    String::new(),
                                    String::new(),
                                    String::new(),
                                    String::new(),
                                ],
                                Some(run) => vec![
                                    name.clone(),
                                    run.id.clone(),
                                    result(run),
                                    against(run.data.rpo_secs.map(|s| s as f64), run.data.rpo_target_secs),
                                    against(run.data.rto_secs, run.data.rto_target_secs),
                                    run.data.backup.as_ref().map(|b| b.backup_id.clone()).unwrap_or_default(),
                                ],
                            });
                        }
                        print!("{}", table("", &rows));
                    }
                }
                Ok(Exit::Success)
            }
            DrillCommand::Show { id } => {
                let run = drills.show(id).await?;
                match output {
                    OutputFormat::Json => print_json(&run)?,
                    OutputFormat::Human => show_run(&run),
                }
                Ok(Exit::Success)
            }
        }
    }
}

/// `passed`, `FAILED`, or where an unfinished run stands.
fn result(run: &DrillRun) -> String {
    match run.status {
        crate::saga::Status::Done if run.passed() => "passed".into(),
        crate::saga::Status::Done => "FAILED".into(),
        crate::saga::Status::RolledBack => format!("FAILED at {}", run.step),
        other => format!("{} at {}", other.as_str(), run.step),
    }
}

/// `4m (target 15m)`.
fn against(measured: Option<f64>, target: u64) -> String {
    measured.map(|m| format!("{} (target {})", human_measured(m), human(target))).unwrap_or_default()
}

fn show_run(run: &DrillRun) {
    let data = &run.data;
    println!("drill {} run {}: {}", data.drill, run.id, result(run));
    if let Some(error) = &run.error {
        println!("  error: {error}");
    }
    print_data(data);
    if !run.evidence.is_empty() {
        let seqs: Vec<String> = run.evidence.iter().map(u64::to_string).collect();
        println!("  evidence records {} (`vigil evidence show SEQ`)", seqs.join(", "));
    }
}

fn print_data(data: &DrillData) {
    println!("  started {}, restoring set {} into {}", data.started_at, data.backup_set, data.into);
    if let Some(backup) = &data.backup {
        println!("  backup {} (snapshot {}) at {}", backup.backup_id, backup.snapshot_time, backup.location);
    }
    for phase in &data.phases {
        println!("  {:<18} {:>8.2} s", phase.phase, phase.millis as f64 / 1000.0);
    }
    for check in &data.checks {
        println!("  {} {}: {}", if check.passed { "ok  " } else { "FAIL" }, check.name, check.detail);
    }
    if let Some(rpo) = data.rpo_secs {
        println!("  RPO {}", against(Some(rpo as f64), data.rpo_target_secs));
    }
    if let Some(rto) = data.rto_secs {
        println!("  RTO {}", against(Some(rto), data.rto_target_secs));
    }
    if let Some(runbook) = &data.runbook {
        println!("  runbook {runbook}");
    }
}

fn show_reports(reports: &[DrillReport], output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => print_json(&reports),
        OutputFormat::Human => {
            for report in reports {
                let verdict = if report.passed { "passed" } else { "FAILED" };
                println!("drill {} run {}: {verdict}", report.data.drill, report.id);
                print_data(&report.data);
            }
            Ok(())
        }
    }
}

/// Exit 0 when every drill passed; else the first failure's reason, in one line.
fn finished(reports: &[DrillReport]) -> anyhow::Result<Exit> {
    match reports.iter().find(|r| !r.passed) {
        None => Ok(Exit::Success),
        Some(failed) => anyhow::bail!(
            "drill {} failed: {}",
            failed.data.drill,
            failed.reason.as_deref().unwrap_or("see `vigil drill show`")
        ),
    }
}
