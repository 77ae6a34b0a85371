//! `vigil run`: the scheduled daemon.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::evidence::open_ledger;
use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::clock::SystemClock;
use crate::daemon::{self, Options};
use crate::state::Db;

/// Run the daemon: rotate, back up and drill on the schedules in `schedules/`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil --config /etc/vigil/vigil.toml run
  vigil run --once
  curl -s http://127.0.0.1:9746/metrics

At start, every saga a crash or a signal left in flight is finished or rolled back; then what
fell due while no daemon ran runs once (not once per missed slot). From then on: rotations when
their cadence runs out (inside their window), waiting steps (API-key retire, JWT promote and
retire) when due, backups and drills by their cron schedules, the credential check, heartbeats
and the RPO watch on their intervals ([daemon] in vigil.toml). Serves /healthz, /readyz,
/metrics and /status on [daemon] listen (127.0.0.1:9746 by default).

SIGHUP re-reads the configuration: a valid one applies once the jobs in flight finish; one with
errors is logged and the running one stays. SIGTERM or Ctrl-C: no new job starts, the steps in
flight finish and are recorded (up to [daemon] shutdown_grace, default 30s), exit 0.

With a SQLite state store, one daemon runs per store; a second exits naming the first's PID.
With a PostgreSQL one, replicas elect one leader, which schedules; every replica runs the
backups and drills it queues. A leader whose session ends (killed, or silent for 10 s) is
replaced within seconds, and its writes are refused from then on.

--once runs what is due now and exits: 0 when everything succeeded, 1 otherwise.")]
pub struct RunArgs {
    /// Run what is due now (after the catch-up), then exit: for Kubernetes CronJobs and cron.
    #[arg(long)]
    once: bool,
}

impl RunArgs {
    pub(super) async fn run(&self, global: &GlobalArgs, cancel: &CancellationToken) -> anyhow::Result<Exit> {
        // SIGHUP's default action ends a process: taken over before the configuration is read
        // and the state store opened, so a reload sent to a daemon still starting is not its
        // end (the daemon listens for the next ones itself).
        let _starting = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let ledger = open_ledger(&plan, &db).await?;
        let options = Options { once: self.once };
        let result = daemon::run(plan, db.clone(), &ledger, Arc::new(SystemClock), cancel.clone(), options).await;
        db.close().await;
        let summary = result?;
        if self.once {
            match global.output {
                OutputFormat::Json => print_json(&summary)?,
                OutputFormat::Human => {
                    let mut rows = vec![["JOB", "OK", "OUTCOME"].map(String::from).to_vec()];
                    for run in summary.resumed.iter().chain(&summary.ran) {
                        rows.push(vec![run.job.clone(), if run.ok { "yes" } else { "NO" }.into(), run.outcome.clone()]);
                    }
                    if rows.len() == 1 {
                        println!("nothing was due");
                    } else {
                        print!("{}", table("", &rows));
                    }
                }
            }
            let failed = summary.failed();
            if failed > 0 {
                anyhow::bail!("{failed} job(s) failed; the daemon's log and `vigil status` say why");
            }
        }
        Ok(Exit::Success)
    }
}
