//! `vigil run`: the scheduled daemon.
//!
//! One loop over a [`Timetable`]: rotations by cadence (inside their windows), sagas waiting at
//! a step (`not_before`) when their time comes, backups and drills by cron, the credential
//! check, heartbeats and the RPO watch on intervals. At start, and again after every reload or
//! takeover, the saga registry first finishes or rolls back whatever a crash left in flight;
//! then what fell due while no daemon ran runs once. Jobs run concurrently up to
//! `[daemon] concurrency`, never two on one subject.
//!
//! Who schedules: the one daemon of a SQLite state store (a lock file beside it), or the leader
//! of the daemons sharing a PostgreSQL one (`lease.rs`). A standby serves `/healthz`,
//! `/readyz`, `/metrics` and `/status` (`http.rs`) and takes over when the leader's session
//! ends.

mod http;
mod lease;
mod metrics;
pub mod status;
mod store;
mod timetable;
mod work;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertKind, Alerts, Outbox};
use crate::clock::Clock;
use crate::config::{BackupMethod, Plan};
use crate::context::Ctx;
use crate::drill::Drills;
use crate::evidence::{Kind, Ledger, NewRecord, Outcome};
use crate::rotation::Rotator;
use crate::saga::{self, Ended, SagaError};
use crate::state::{Db, Pool, StateStore};

pub use metrics::Metrics;
pub use timetable::{Job, Timetable, Trigger};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run what is due now (after the catch-up), then return: for Kubernetes CronJobs and
    /// system cron.
    pub once: bool,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon runs on this SQLite state store.
    #[error(
        "another vigil run (PID {pid}) holds {lock}; stop it first, or share a PostgreSQL state store to run replicas"
    )]
    AlreadyRunning {
        /// The PID the lock file names.
        pid: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file could not be used.
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        err: std::io::Error,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {err}; set [daemon] listen to a free address")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        err: std::io::Error,
    },
    /// The state store.
    #[error("state store: {0}")]
    State(#[from] sqlx::Error),
    /// Reading sagas.
    #[error(transparent)]
    Saga(#[from] SagaError),
    /// The evidence ledger.
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// A write of the daemon's own refused, or the state store failing under it.
    #[error(transparent)]
    Store(#[from] crate::state::StateError),
}

/// One job the daemon ran, and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRun {
    /// The job (`backup:orders`, `rotate:orders-app`, …).
    pub job: String,
    /// Whether it did what it is for.
    pub ok: bool,
    /// How it ended, in one line.
    pub outcome: String,
}

/// What a run of the daemon did: with `--once`, everything; otherwise what ran before it
/// stopped.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Sagas a crash left in flight, finished or rolled back first.
    pub resumed: Vec<JobRun>,
    /// Jobs run, in the order they ended.
    pub ran: Vec<JobRun>,
}

impl Summary {
    /// How many resumptions and jobs failed.
    pub fn failed(&self) -> usize {
        self.resumed.iter().chain(&self.ran).filter(|r| !r.ok).count()
    }
}

/// What the HTTP endpoints read while the scheduler runs.
pub struct Shared {
    /// Every metric.
    pub metrics: Metrics,
    /// Where jobs raise and clear alerts.
    alerts: Alerts,
    plan: RwLock<Arc<Plan>>,
    db: Db,
    clock: Arc<dyn Clock>,
    leading: AtomicBool,
    /// The epoch this daemon leads at (0 while it stands by).
    epoch: AtomicI64,
    /// The lead was lost and has not ended yet: no work is claimed meanwhile, so that no write
    /// of the lost lead's jobs passes under a newer epoch.
    deposed: AtomicBool,
    /// Each pgbackrest set's archive health as the RPO watch last measured it: what `/status`
    /// serves, so that no request logs in to a source database or runs pgBackRest.
    archives: std::sync::Mutex<BTreeMap<String, crate::backup::physical::ArchiveHealth>>,
}

impl Shared {
    fn plan(&self) -> Arc<Plan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs the daemon until `cancel` (SIGTERM, SIGINT) or, with `--once`, until what is due has
/// run. `reload` is the configuration file SIGHUP re-reads.
pub async fn run(
    plan: Plan,
    db: Db,
    ledger: &Ledger,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    options: Options,
) -> Result<Summary, DaemonError> {
    // Listened for before anything else, by every replica: SIGHUP's default action ends a
    // process, and a standby that never led (or a daemon still starting) must reload, not die.
    let mut hangup = hangup_signal();
    let size = crate::evidence::size(&db).await?;
    let plan = Arc::new(plan);
    let (alerts, outbox) = Alerts::new(db.clone(), clock.clone());
    let shared = Arc::new(Shared {
        metrics: Metrics::new(size),
        alerts,
        plan: RwLock::new(plan.clone()),
        db: db.clone(),
        clock: clock.clone(),
        leading: AtomicBool::new(false),
        epoch: AtomicI64::new(0),
        deposed: AtomicBool::new(false),
        archives: std::sync::Mutex::default(),
    });
    // One daemon per SQLite store, checked before anything else: a second one names the first.
    let _lock = match &plan.evidence.store {
        StateStore::Sqlite { path } => Some(lease::FileLock::acquire(path)?),
        StateStore::Postgres { .. } => None,
    };
    let server = if options.once {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(plan.daemon.listen)
            .await
            .map_err(|err| DaemonError::Listen { addr: plan.daemon.listen, err })?;
        tracing::info!(address = %plan.daemon.listen, "serving /healthz, /readyz, /metrics and /status");
        Some(tokio::spawn(http::serve(listener, shared.clone(), cancel.clone())))
    };
    let holder = format!("{}:{}", hostname(), std::process::id());
    let mut summary = Summary::default();
    // Every replica works the queue, the leader included, until the scheduling side ends.
    let working = cancel.child_token();
    let schedule = async {
        let result = match db.pool() {
            Pool::Sqlite(_) => {
                let epoch = store::next_epoch(&db, &holder, clock.now()).await?;
                let one = Replica { shared: &shared, ledger, cancel: &cancel, options: &options };
                Box::pin(one.lead(epoch, None, &mut hangup, &mut summary)).await
            }
            Pool::Postgres(pool) => {
                let replicas = Replica { shared: &shared, ledger, cancel: &cancel, options: &options };
                Box::pin(replicas.replicate(pool, holder.clone(), &mut hangup, &mut summary)).await
            }
        };
        working.cancel();
        result
    };
    // Alerts are delivered until the jobs that raise them have ended.
    let jobs_ended = CancellationToken::new();
    let jobs = async {
        // Each loop's state lives on the heap: together they are too large for a thread's stack in
        // a debug build.
        let (result, ()) = tokio::join!(schedule, Box::pin(work::work(&shared, ledger, &working, &holder)));
        jobs_ended.cancel();
        result
    };
    let (result, ()) = tokio::join!(jobs, Box::pin(deliver_alerts(&shared, ledger, outbox, &jobs_ended)));
    cancel.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result.map(|()| summary)
}

/// A daemon: of a PostgreSQL state store, leading or standing by; of a SQLite one, leading.
struct Replica<'a> {
    shared: &'a Arc<Shared>,
    ledger: &'a Ledger,
    cancel: &'a CancellationToken,
    options: &'a Options,
}

impl Replica<'_> {
    /// Stands by until this daemon leads a PostgreSQL store, leads until the lead is lost, and
    /// stands by again, until cancelled. A standby reloads its configuration on SIGHUP (its work
    /// runs use it); a leader's era does.
    async fn replicate(
        &self,
        pool: &sqlx::PgPool,
        holder: String,
        hangup_signal: &mut Option<tokio::signal::unix::Signal>,
        summary: &mut Summary,
    ) -> Result<(), DaemonError> {
        let Self { shared, ledger, cancel, options } = *self;
        let mut candidate: Option<lease::Candidate> = None;
        while !cancel.is_cancelled() {
            let attempt = async {
                if candidate.is_none() {
                    candidate = Some(lease::Candidate::connect(pool, holder.clone()).await?);
                }
                let Some(c) = candidate.as_mut() else { return Ok(None) };
                c.try_lead(shared.clock.now()).await
            };
            match attempt.await {
                Ok(Some(epoch)) => {
                    let Some(mut c) = candidate.take() else { continue };
                    // `leading` ends the lead, whoever ends it; `lost` says it was the lease.
                    let (leading, lost) = (cancel.child_token(), CancellationToken::new());
                    let watch = watch_lead(&mut c, epoch, &leading, &lost, shared);
                    let leader = Replica { shared, ledger, cancel: &leading, options };
                    let run = Box::pin(leader.lead(epoch, Some(&lost), hangup_signal, summary));
                    let (result, ()) = tokio::join!(
                        async {
                            let result = run.await;
                            leading.cancel();
                            result
                        },
                        watch
                    );
                    // The session ends with the lead: the next leader's lock is free at once.
                    c.close().await;
                    result?;
                    if options.once {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    if options.once {
                        tracing::info!("another vigil leads this state store; it runs what is due");
                        return Ok(());
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot reach the state store to stand for leader; retrying");
                    if let Some(c) = candidate.take() {
                        c.close().await;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(STANDBY_POLL) => {}
                () = hangup(hangup_signal) => {
                    if let Some(next) = reload(shared, ledger).await {
                        *shared.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(*next);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How often a standby tries for the lead, and a leader checks it still has it: well inside
/// the 15 s a takeover may take.
const STANDBY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Cancels `leading` and `lost` once `candidate` no longer leads at `epoch` (its session
/// failed, or a newer epoch exists); ends when `leading` is cancelled otherwise.
async fn watch_lead(
    candidate: &mut lease::Candidate,
    epoch: i64,
    leading: &CancellationToken,
    lost: &CancellationToken,
    shared: &Shared,
) {
    let deposed = || {
        shared.deposed.store(true, Ordering::SeqCst);
        lost.cancel();
        leading.cancel();
    };
    loop {
        tokio::select! {
            () = leading.cancelled() => return,
            () = tokio::time::sleep(STANDBY_POLL) => {}
        }
        match tokio::time::timeout(lease::LEASE, candidate.still_leads(epoch)).await.unwrap_or(Ok(false)) {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(epoch, "a newer leader took over; this daemon stops scheduling");
                deposed();
                return;
            }
            Err(err) => {
                tracing::error!(%err, epoch, "the leader's session to the state store failed; this daemon stops scheduling");
                deposed();
                return;
            }
        }
    }
}

impl Replica<'_> {
    /// Leads: schedules and runs jobs with `epoch` until `cancel` (a signal, or the lease lost,
    /// which `lost` then says), or, with `--once`, until what is due has run. A reload that
    /// validates swaps the plan between eras (SIGHUP, `hangup`); one that does not keeps the
    /// running plan.
    async fn lead(
        &self,
        epoch: i64,
        lost: Option<&CancellationToken>,
        hangup: &mut Option<tokio::signal::unix::Signal>,
        summary: &mut Summary,
    ) -> Result<(), DaemonError> {
        let Self { shared, ledger, cancel, options } = *self;
        let stop = cancel.child_token();
        // From here on every saga write and evidence append of this process carries the epoch, and
        // is refused once a newer leader took over: a paused or partitioned daemon cannot act after.
        shared.db.fence(epoch);
        ledger.db().fence(epoch);
        shared.epoch.store(epoch, Ordering::SeqCst);
        shared.leading.store(true, Ordering::Relaxed);
        shared.metrics.leader.set(1);
        shared.metrics.epoch.set(epoch);
        tracing::info!(epoch, "leading: scheduling every job");
        note(
            ledger,
            Kind::DaemonLeading,
            Outcome::Info,
            serde_json::json!({ "epoch": epoch, "pid": std::process::id() }),
        )
        .await;
        if lost.is_some() {
            leadership_lost(shared, epoch).await;
        }
        let result = loop {
            let plan = shared.plan();
            let era = Era::new(&plan, ledger, stop.child_token(), shared, options, epoch);
            match Box::pin(era.run(&stop, hangup, summary)).await {
                Ok(EraEnd::Reload(next)) => *shared.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(*next),
                Ok(EraEnd::Stopped) => break Ok(()),
                Err(err) => break Err(err),
            }
        };
        shared.leading.store(false, Ordering::Relaxed);
        shared.epoch.store(0, Ordering::SeqCst);
        shared.metrics.leader.set(0);
        let why = if lost.is_some_and(CancellationToken::is_cancelled) { "leadership lost" } else { "stopped" };
        // Refused by the fence when a newer leader took over: the lost lead writes nothing more.
        note(ledger, Kind::DaemonStopped, Outcome::Info, serde_json::json!({ "epoch": epoch, "why": why })).await;
        stop.cancel();
        // The lead's jobs have ended: this daemon works on as a standby, its claims guarded by its
        // session.
        shared.db.unfence();
        ledger.db().unfence();
        shared.deposed.store(false, Ordering::SeqCst);
        result
    }
}

/// Posts each alert raised to every webhook of the running plan and records it in the ledger,
/// until `stop`; what is still waiting then is delivered within `shutdown_grace`.
async fn deliver_alerts(shared: &Shared, ledger: &Ledger, mut outbox: Outbox, stop: &CancellationToken) {
    // Made on the first notice: its TLS roots are memory an idle daemon without alerts needs not hold.
    let client = std::sync::OnceLock::new();
    let deliver_one = |notice: crate::alerts::Notice| {
        let client = client.get_or_init(crate::webhooks::client);
        async move {
            let plan = shared.plan();
            let stores = crate::stores::Stores::new(plan.aws.as_ref(), plan.vault.as_ref());
            let mut webhooks = Vec::new();
            for webhook in &plan.alerts {
                let url = stores.resolve(&webhook.url).await.map_err(|err| err.to_string());
                webhooks.push((webhook.clone(), url));
            }
            let deliveries = crate::alerts::deliver(client, &webhooks, &notice).await;
            for delivery in &deliveries {
                let outcome = if delivery.delivered { "delivered" } else { "failed" };
                shared.metrics.alerts_sent.get_or_create(&metrics::label("outcome", outcome)).inc();
            }
            if let Err(err) = crate::alerts::record(ledger, &notice, &deliveries).await {
                tracing::error!(%err, alert = notice.kind.as_str(), "cannot record the alert in the ledger");
            }
        }
    };
    loop {
        let notice = tokio::select! {
            notice = outbox.next() => notice,
            () = stop.cancelled() => break,
        };
        let Some(notice) = notice else { return };
        deliver_one(notice).await;
    }
    let grace = shared.plan().daemon.shutdown_grace.to_std();
    let drained = tokio::time::timeout(grace, async {
        while let Some(notice) = outbox.try_next() {
            deliver_one(notice).await;
        }
    });
    if drained.await.is_err() {
        tracing::warn!(
            "alerts still waiting at shutdown were not delivered within shutdown_grace; `vigil status` lists the alerts firing"
        );
    }
}

/// Sends a `leadership_lost` alert when the leader before `epoch` did not step down (it was
/// killed, paused past its lease, or cut off): a leader that stops records `daemon.stopped`.
async fn leadership_lost(shared: &Shared, epoch: i64) {
    let previous = epoch - 1;
    if previous < 1 {
        return;
    }
    let records =
        |kind: Kind| crate::evidence::RecordFilter { kind: Some(kind.into()), limit: 20, ..Default::default() };
    let of = |kind: Kind| {
        let filter = records(kind);
        async move {
            let found = crate::evidence::list(&shared.db, &filter).await.unwrap_or_default();
            found
                .into_iter()
                .rev()
                .find(|r| serde_json::from_str::<serde_json::Value>(&r.details).is_ok_and(|d| d["epoch"] == previous))
        }
    };
    if of(Kind::DaemonStopped).await.is_some() {
        return;
    }
    let holder = of(Kind::DaemonLeading).await.map(|r| format!(" ({}, PID {})", r.actor.host, r.actor.pid));
    let summary = format!(
        "the leader at epoch {previous}{} stopped leading without stepping down (killed, paused or cut off); {} leads at epoch {epoch}",
        holder.unwrap_or_default(),
        hostname(),
    );
    shared.alerts.event(AlertKind::LeadershipLost, "daemon", &summary);
}

/// Appends a daemon record; a failure is logged, and the daemon goes on (the jobs' own records
/// are what evidence rests on).
async fn note(ledger: &Ledger, kind: Kind, outcome: Outcome, details: serde_json::Value) {
    let record = NewRecord { kind: kind.into(), subject: "daemon".into(), outcome, details };
    if let Err(err) = ledger.append(record).await {
        tracing::error!(%err, kind = kind.as_str(), "cannot record the daemon's event in the ledger");
    }
}

/// Re-reads the configuration on SIGHUP: the plan it validates to, or none (the running plan
/// stays) when it has errors.
async fn reload(shared: &Shared, ledger: &Ledger) -> Option<Box<Plan>> {
    let running = shared.plan();
    let path = running.config_file.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path)).await;
    let metrics = &shared.metrics;
    match loaded {
        Ok(Ok(loaded)) => {
            // The state store, the ledger and the listener were opened at start.
            let new = &loaded.plan;
            if format!("{:?}", new.evidence) != format!("{:?}", running.evidence)
                || new.daemon.listen != running.daemon.listen
            {
                tracing::warn!("SIGHUP: [evidence] and [daemon] listen changes take effect at the next start");
            }
            tracing::info!(config = %running.config_file.display(), "SIGHUP: configuration valid; applying it once the jobs in flight finish");
            metrics.reloads.get_or_create(&metrics::label("outcome", "applied")).inc();
            metrics.config_ok.set(1);
            note(
                ledger,
                Kind::DaemonReload,
                Outcome::Succeeded,
                serde_json::json!({ "files": loaded.plan.schedule_files.len() + 1 }),
            )
            .await;
            Some(Box::new(loaded.plan))
        }
        Ok(Err(diagnostics)) => {
            let errors: Vec<String> = diagnostics
                .iter()
                .filter(|d| d.severity == crate::config::Severity::Error)
                .map(ToString::to_string)
                .collect();
            for error in &errors {
                tracing::error!("{error}");
            }
            tracing::error!(
                errors = errors.len(),
                "SIGHUP: the configuration has errors; the running one stays in use (`vigil config check` shows them)"
            );
            metrics.reloads.get_or_create(&metrics::label("outcome", "refused")).inc();
            metrics.config_ok.set(0);
            note(ledger, Kind::DaemonReload, Outcome::Failed, serde_json::json!({ "errors": errors.len() })).await;
            None
        }
        Err(err) => {
            tracing::error!(%err, "SIGHUP: reading the configuration failed; the running one stays in use");
            None
        }
    }
}

/// SIGHUP, as a stream; none if the signal cannot be listened for (then reloads need a restart).
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP; a configuration change needs a restart");
            None
        }
    }
}

async fn hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// How an era (one plan's run) ended.
enum EraEnd {
    /// A new configuration validated: run again with it.
    Reload(Box<Plan>),
    /// Cancelled, the lead lost, or `--once` done.
    Stopped,
}

/// How a job ended.
struct Ran {
    ok: bool,
    outcome: String,
    /// A rotation or resumed saga now waits until then.
    waiting: Option<DateTime<Utc>>,
    /// The soonest time any saga waits for, when the job looked (the waits job).
    next_wait: Option<DateTime<Utc>>,
}

impl Ran {
    fn ok(outcome: impl Into<String>) -> Self {
        Self { ok: true, outcome: outcome.into(), waiting: None, next_wait: None }
    }

    fn failed(outcome: impl Into<String>) -> Self {
        Self { ok: false, outcome: outcome.into(), waiting: None, next_wait: None }
    }
}

/// Everything that schedules jobs under one plan, and runs the light ones (backups and drills
/// are queued for any replica: `work.rs`).
struct Era<'a> {
    rotator: Rotator<'a>,
    drills: Drills<'a>,
    shared: &'a Shared,
    options: &'a Options,
    epoch: i64,
}

/// After a failed run, a job waits this long before it runs again, doubling up to an hour.
const RETRY_FIRST: chrono::Duration = chrono::Duration::minutes(1);
const RETRY_MAX: chrono::Duration = chrono::Duration::hours(1);

/// The longest the loop sleeps without looking at the clock again: a clock that jumps, a
/// saga another process left waiting, are noticed within it.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(30);

impl<'a> Era<'a> {
    fn new(
        plan: &'a Plan,
        ledger: &'a Ledger,
        cancel: CancellationToken,
        shared: &'a Shared,
        options: &'a Options,
        epoch: i64,
    ) -> Self {
        let (db, clock) = (&shared.db, shared.clock.as_ref());
        Self {
            rotator: Rotator::new(Ctx::new(plan, db, ledger, clock, cancel.clone())),
            drills: Drills::new(Ctx::new(plan, db, ledger, clock, cancel)),
            shared,
            options,
            epoch,
        }
    }

    fn plan(&self) -> &'a Plan {
        self.rotator.ctx.plan
    }

    fn db(&self) -> &'a Db {
        self.rotator.ctx.db
    }

    fn clock(&self) -> &'a dyn Clock {
        self.rotator.ctx.clock
    }

    /// Every saga kind, resumed by this era's rotator, drills and backups.
    fn registry(&self) -> saga::Registry<'_> {
        let mut registry = saga::Registry::default();
        self.rotator.register(&mut registry);
        self.drills.register(&mut registry);
        self.drills.backups().register(&mut registry);
        registry
    }

    async fn run(
        &self,
        stop: &CancellationToken,
        hangup_signal: &mut Option<tokio::signal::unix::Signal>,
        summary: &mut Summary,
    ) -> Result<EraEnd, DaemonError> {
        // Catch-up, first: what a crash or a signal left in flight (queued work's sagas, and
        // those on a subject with work queued or running, are resumed by whoever claims it).
        let queued = work::open_work(self.db()).await?;
        let left: Vec<_> = saga::in_flight(self.db())
            .await?
            .into_iter()
            .filter(|s| !queued.ids.contains(&s.id) && !queued.subjects.contains(&s.subject.to_string()))
            .collect();
        for resumed in self.registry().resume_each(left, stop).await {
            let (ok, outcome) = match &resumed.outcome {
                Ok(ended) => (!matches!(ended, Ended::RolledBack { .. } | Ended::Stuck { .. }), ended_line(ended)),
                Err(why) => (false, why.clone()),
            };
            summary.resumed.push(JobRun { job: format!("resume:{}", resumed.subject), ok, outcome });
        }
        let started = self.clock().now();
        let mut table = self.timetable(started).await?;
        let mut retry: BTreeMap<Job, (DateTime<Utc>, chrono::Duration)> = BTreeMap::new();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut ran_once: BTreeSet<Job> = BTreeSet::new();
        // With `--once`, the work this run queued, until it ends.
        let mut awaiting: Vec<String> = Vec::new();
        let mut running: FuturesUnordered<BoxFuture<'_, (Job, Ran)>> = FuturesUnordered::new();
        // Jobs that ended, waiting to be recorded.
        let mut done: VecDeque<(Job, Ran)> = VecDeque::new();
        // Everything the loop awaits, it awaits while the jobs run on: a job may hold a lock
        // (SQLite's write lock, a row) that the awaited query waits for.
        macro_rules! meanwhile {
            ($work:expr) => {
                alongside(&mut running, &mut done, $work).await
            };
        }
        let mut reload: Option<Box<Plan>> = None;
        // Whether the secrets' standing must be read again: at the start, after a rotation or
        // a resumed wait, and at every timed wake (another process may have rotated).
        let mut stale = true;
        let grace = self.plan().daemon.shutdown_grace.to_std();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            while let Some((job, ran)) = done.pop_front() {
                busy.remove(&job.claim());
                // A rotation's end, or a wait resumed, moves the secrets' standing.
                stale |= matches!(job, Job::Rotate(_) | Job::Waits);
                meanwhile!(self.finished(&mut table, &mut retry, &job, &ran));
                summary.ran.push(JobRun { job: job.to_string(), ok: ran.ok, outcome: ran.outcome });
            }
            let stopping = stop.is_cancelled() || reload.is_some();
            let now = self.clock().now();
            if !stopping {
                if stale {
                    meanwhile!(self.refresh_rotations(&mut table, started, now))?;
                    stale = false;
                }
                let due = table.due(now);
                // Backups and drills are queued for any replica; a drill's run waits in the
                // queue for a backup of its set due or running.
                for job in due.iter().filter(|job| job.queued()) {
                    if !(self.options.once && ran_once.contains(job)) {
                        if let Some(id) = meanwhile!(self.enqueue(&mut table, job, now))
                            && self.options.once
                        {
                            awaiting.push(id);
                        }
                        if self.options.once {
                            ran_once.insert(job.clone());
                        }
                    }
                }
                // Backups queued or running: what the RPO watch measures is about to change, so
                // it waits for them.
                let watch_waits = due.contains(&Job::Watch)
                    && meanwhile!(work::open_subjects(self.db(), now))?.iter().any(|s| s.starts_with("backup:"));
                for job in due.into_iter().filter(|job| !job.queued()) {
                    if running.len() >= self.plan().daemon.concurrency {
                        break;
                    }
                    let claim = job.claim();
                    let waiting_retry = retry.get(&job).is_some_and(|(at, _)| *at > now);
                    let already = self.options.once && ran_once.contains(&job);
                    let waits_for_backups = job == Job::Watch && watch_waits;
                    if waiting_retry || already || waits_for_backups || busy.contains(&claim) {
                        continue;
                    }
                    busy.insert(claim);
                    if self.options.once {
                        ran_once.insert(job.clone());
                    }
                    tracing::info!(job = %job, "running");
                    // The waits job skips the subjects the others hold at its start.
                    let held = if job == Job::Waits { busy.clone() } else { BTreeSet::new() };
                    let run = self.execute(job.clone(), held);
                    running.push(async move { (job, run.await) }.boxed());
                }
            }
            if !awaiting.is_empty() {
                for (id, job, ok, outcome) in meanwhile!(work::ended(self.db(), &awaiting))? {
                    awaiting.retain(|a| *a != id);
                    summary.ran.push(JobRun { job, ok, outcome });
                }
            }
            if running.is_empty() && done.is_empty() {
                if let Some(next) = reload.take() {
                    return Ok(EraEnd::Reload(next));
                }
                if stop.is_cancelled() {
                    return Ok(EraEnd::Stopped);
                }
                // Every job started is in `ran_once`, failed ones too.
                // And the queue is idle: work others queued, or this run's catch-up put back,
                // is done too.
                if self.options.once
                    && awaiting.is_empty()
                    && table.due(self.clock().now()).iter().all(|job| ran_once.contains(job))
                    && work::open_subjects(self.db(), self.clock().now()).await?.is_empty()
                    && done.is_empty()
                {
                    return Ok(EraEnd::Stopped);
                }
            }
            let sleep_for = table
                .next_wake()
                .map(|wake| (wake - self.clock().now()).to_std().unwrap_or_default())
                .map_or(LOOK_AGAIN, |d| d.min(LOOK_AGAIN));
            let sleep_for =
                if self.options.once { sleep_for.min(std::time::Duration::from_millis(200)) } else { sleep_for };
            if stop.is_cancelled() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            tokio::select! {
                Some(ended) = running.next(), if !running.is_empty() => done.push_back(ended),
                () = stop.cancelled(), if !stop.is_cancelled() => {}
                // `--once` polls while jobs run; only a daemon looks again for others' rotations.
                () = tokio::time::sleep(sleep_for), if !stopping => stale |= !self.options.once,
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    tracing::warn!(jobs = running.len(), "the steps in flight did not finish within shutdown_grace; they resume on the next start");
                    return Ok(EraEnd::Stopped);
                }
                () = hangup(hangup_signal), if reload.is_none() && !stop.is_cancelled() => {
                    reload = meanwhile!(self.reload());
                }
            }
        }
    }

    /// Queues `job`'s due slot for any replica and moves its next run on, in one transaction:
    /// the id of the queued run, if this slot was not queued before.
    async fn enqueue(&self, table: &mut Timetable, job: &Job, now: DateTime<Utc>) -> Option<String> {
        let slot = table.next(job)?;
        let next = table.ran(job, now)?;
        let after = match job {
            Job::Drill(name) => self.plan().drills.get(name).map(|d| format!("backup:{}", d.backup)),
            _ => None,
        };
        match work::enqueue(self.db(), self.epoch, job, slot, after.as_deref(), next, now).await {
            Ok(Ok(id)) => {
                tracing::info!(job = %job, "queued");
                id
            }
            Ok(Err(fenced)) => {
                tracing::error!(job = %job, %fenced, "not queued");
                None
            }
            Err(err) => {
                tracing::error!(job = %job, %err, "cannot queue the job; it is tried again at the next start");
                None
            }
        }
    }

    /// Re-reads the configuration; a valid one ends the era once the jobs in flight finish, an
    /// invalid one keeps this plan running.
    async fn reload(&self) -> Option<Box<Plan>> {
        reload(self.shared, self.rotator.ctx.ledger).await
    }

    /// The timetable of this plan: each job's persisted next run, or for a job never
    /// persisted, its first run from its own records.
    async fn timetable(&self, now: DateTime<Utc>) -> Result<Timetable, DaemonError> {
        let persisted = store::jobs(self.db()).await?;
        let jitter = self.plan().daemon.jitter;
        let mut table = Timetable::default();
        let mut jobs: Vec<(Job, Trigger, Option<DateTime<Utc>>)> = Vec::new();
        let backups = self.drills.backups().list(None).await.unwrap_or_default();
        let newest_backup =
            |set: &str| backups.iter().filter(|e| e.set == set).filter_map(|e| parse_time(&e.started_at)).max();
        for (name, set) in &self.plan().backups {
            let last = newest_backup(name);
            jobs.push((
                Job::Backup { set: name.clone(), kind: None },
                Trigger::Cron(Box::new(set.schedule.clone())),
                last,
            ));
            if let BackupMethod::PgBackRest(pg) = &set.method {
                for (kind, cron) in &pg.also {
                    jobs.push((
                        Job::Backup { set: name.clone(), kind: Some(*kind) },
                        Trigger::Cron(Box::new(cron.clone())),
                        last,
                    ));
                }
                if let Some(every) = pg.heartbeat {
                    jobs.push((Job::Heartbeat(name.clone()), Trigger::Every(every), None));
                }
            }
        }
        let latest = self.drills.latest().await.unwrap_or_default();
        for (name, drill) in &self.plan().drills {
            if let Some(cron) = &drill.schedule {
                let last = latest.get(name).and_then(Option::as_ref).and_then(|run| parse_time(&run.updated_at));
                jobs.push((Job::Drill(name.clone()), Trigger::Cron(Box::new(cron.clone())), last));
            }
        }
        if self.plan().secrets.values().any(|s| s.kind.db_password().is_some()) {
            jobs.push((Job::Check, Trigger::Every(self.plan().daemon.check_interval), None));
        }
        if !self.plan().backups.is_empty() {
            jobs.push((Job::Watch, Trigger::Every(self.plan().daemon.watch_interval), None));
        }
        jobs.push((Job::Verify, Trigger::Every(self.plan().daemon.verify_interval), None));
        for (job, trigger, last) in jobs {
            let name = job.to_string();
            let schedule = trigger.describe();
            let next = match persisted.get(&name) {
                Some(row) if row.schedule.is_some() && row.schedule == schedule => row.next_run,
                Some(row) if row.schedule.is_none() => {
                    // Kept from before schedules were: this one is taken as the one it came from.
                    store::save(self.db(), &name, row.next_run, None, schedule.as_deref(), now).await?;
                    row.next_run
                }
                changed => {
                    // New, or its schedule changed: planned from its own records.
                    let first = Timetable::first_run(&trigger, last, now);
                    if changed.is_some() {
                        tracing::info!(job = %name, schedule = schedule.as_deref().unwrap_or_default(), next = %first, "the job's schedule changed; its next run is planned again");
                    }
                    store::save(self.db(), &name, first, None, schedule.as_deref(), now).await?;
                    first
                }
            };
            table.add(job, trigger, next, jitter);
        }
        // Rotations and waits move by what the sagas say, not by a timetable of their own.
        for name in self.plan().secrets.keys() {
            table.add(Job::Rotate(name.clone()), Trigger::Given, DateTime::<Utc>::MAX_UTC, jitter);
        }
        table.add(Job::Waits, Trigger::Given, now, jitter);
        Ok(table)
    }

    /// Sets each secret's next rotation from its history: due at its cadence plus its jitter,
    /// moved into its window; overdue when the era started, due now.
    async fn refresh_rotations(
        &self,
        table: &mut Timetable,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), DaemonError> {
        if self.plan().secrets.is_empty() {
            return Ok(());
        }
        let states = crate::rotation::states(self.plan(), self.db(), now).await?;
        for (name, state) in states {
            let subject = format!("secret:{name}");
            let alerts = &self.shared.alerts;
            let overdue = state.standing.overdue_days();
            let overdue = (overdue > 0).then(|| {
                let due = state.standing.next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                format!("{overdue} days past due (due {due})")
            });
            alerts.settle(AlertKind::Overdue, &subject, overdue.as_deref()).await;
            alerts.settle(AlertKind::NeedsAttention, &subject, state.status.needs_attention.as_deref()).await;
            let job = Job::Rotate(name.clone());
            let spec = &self.plan().secrets[&name];
            let next = if state.standing.in_flight {
                // The waits job, or the next era's catch-up, carries it on.
                DateTime::<Utc>::MAX_UTC
            } else if state.status.last_rotated.is_none() || state.standing.next <= started {
                // Never rotated (nothing proves its age), or overdue when the era started:
                // the catch-up runs it now.
                state.standing.next.min(now)
            } else {
                state.standing.next + table.jitter(&job)
            };
            let next = match &spec.window {
                Some(window) if next != DateTime::<Utc>::MAX_UTC => window.next_open(next),
                _ => next,
            };
            table.set_next(&job, next);
        }
        Ok(())
    }

    /// Moves `job` on after it ran, persists its next run, and counts it.
    async fn finished(
        &self,
        table: &mut Timetable,
        retry: &mut BTreeMap<Job, (DateTime<Utc>, chrono::Duration)>,
        job: &Job,
        ran: &Ran,
    ) {
        let now = self.clock().now();
        if ran.ok {
            retry.remove(job);
            tracing::info!(job = %job, outcome = %ran.outcome, "done");
        } else if matches!(job, Job::Rotate(_) | Job::Waits) {
            // What these act on failed, perhaps for a while: tried again with backoff. The
            // interval jobs (checks, the watch, heartbeats) report a state, and look again at
            // their next interval.
            let wait = retry.get(job).map_or(RETRY_FIRST, |(_, last)| (*last * 2).min(RETRY_MAX));
            retry.insert(job.clone(), (now + wait, wait));
            tracing::error!(job = %job, outcome = %ran.outcome, retry_in_secs = wait.num_seconds(), "failed");
        } else {
            tracing::error!(job = %job, outcome = %ran.outcome, "failed");
        }
        if !ran.ok {
            let kind = job.to_string().split(':').next().unwrap_or_default().to_owned();
            self.shared.metrics.job_failures.get_or_create(&metrics::label("job", &kind)).inc();
        }
        let next = match job {
            Job::Waits => {
                let look = now + chrono::Duration::from_std(LOOK_AGAIN).unwrap_or_default() * 2;
                let next = ran.next_wait.map_or(look, |wait| wait.min(look));
                table.set_next(job, next);
                Some(next)
            }
            _ => table.ran(job, now),
        };
        if let Some(waiting) = ran.waiting {
            // A rotation now waiting (a JWT promote, an API key's retire): the waits job looks
            // then, or sooner.
            let sooner = table.next(&Job::Waits).map_or(waiting, |n| n.min(waiting));
            table.set_next(&Job::Waits, sooner);
        }
        if let Some(next) = next
            && !matches!(job, Job::Rotate(_) | Job::Waits)
            && let Err(err) = store::save(self.db(), &job.to_string(), next, Some((now, &ran.outcome)), None, now).await
        {
            tracing::error!(%err, job = %job, "cannot persist the job's next run; a restart may run it again");
        }
    }

    /// Runs one job.
    fn execute<'s>(&'s self, job: Job, busy: BTreeSet<String>) -> BoxFuture<'s, Ran> {
        async move {
            match &job {
                Job::Rotate(name) => self.rotate(name).await,
                Job::Backup { .. } | Job::Drill(_) => Ran::failed(format!("{job} is queued work, run by work.rs")),
                Job::Heartbeat(set) => match self.drills.backups().heartbeat(set).await {
                    Ok(at) => Ran::ok(format!("heartbeat {at}")),
                    Err(err) => Ran::failed(err.to_string()),
                },
                Job::Check => self.check().await,
                Job::Waits => self.waits(&busy).await,
                Job::Watch => self.watch().await,
                Job::Verify => self.verify().await,
            }
        }
        .boxed()
    }

    async fn rotate(&self, name: &str) -> Ran {
        let kind = self.plan().secrets.get(name).map_or("unknown", |s| s.kind.as_str());
        let counted = |outcome: &str| {
            self.shared.metrics.rotations.get_or_create(&metrics::labels(("kind", kind), ("outcome", outcome))).inc();
        };
        let ran = match self.rotator.rotate(name, false).await {
            Ok(report) => {
                let outcome = ended_name(&report.ended);
                counted(outcome);
                let mut ran = if matches!(report.ended, Ended::Done | Ended::Waiting { .. }) {
                    Ran::ok(format!("rotation {}: {}", report.rotation, ended_line(&report.ended)))
                } else {
                    Ran::failed(format!("rotation {}: {}", report.rotation, ended_line(&report.ended)))
                };
                ran.waiting = waiting_until(&report.ended);
                ran
            }
            Err(err) => {
                counted("refused");
                Ran::failed(err.to_string())
            }
        };
        let problem = (!ran.ok).then_some(ran.outcome.as_str());
        self.shared.alerts.settle(AlertKind::RotationFailed, &format!("secret:{name}"), problem).await;
        ran
    }

    async fn check(&self) -> Ran {
        match self.rotator.check().await {
            Ok(reports) => {
                for report in &reports {
                    let problem = (!report.ok).then(|| {
                        report.problem.clone().unwrap_or_else(|| "the current credential does not log in".into())
                    });
                    let subject = format!("secret:{}", report.secret);
                    self.shared.alerts.settle(AlertKind::CredentialCheckFailed, &subject, problem.as_deref()).await;
                }
                let drifted: Vec<&str> = reports.iter().filter(|r| !r.ok).map(|r| r.secret.as_str()).collect();
                self.shared.metrics.drifted.set(i64::try_from(drifted.len()).unwrap_or(i64::MAX));
                if drifted.is_empty() {
                    Ran::ok(format!("{} current credentials log in", reports.len()))
                } else {
                    Ran::failed(format!("current credentials do not log in: {}", drifted.join(", ")))
                }
            }
            Err(err) => Ran::failed(err.to_string()),
        }
    }

    /// Resumes the sagas whose wait has come, except those on a subject a job of this daemon
    /// is acting on.
    async fn waits(&self, busy: &BTreeSet<String>) -> Ran {
        let (due, next_wait) = match saga::waits(self.db(), self.clock().now()).await {
            Ok(found) => found,
            Err(err) => return Ran::failed(err.to_string()),
        };
        let registry = self.registry();
        let (mut done, mut failed, mut soonest) = (Vec::new(), Vec::new(), next_wait);
        for saga in due {
            if busy.contains(&saga.subject.to_string()) {
                continue;
            }
            let resumed = registry.resume(saga).await;
            match &resumed.outcome {
                Ok(ended @ (Ended::Done | Ended::Waiting { .. })) => {
                    if let Some(until) = waiting_until(ended) {
                        soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    }
                    done.push(format!("{} {}", resumed.subject, ended_line(ended)));
                }
                Ok(ended) => failed.push(format!("{}: {}", resumed.subject, ended_line(ended))),
                Err(why) => failed.push(format!("{}: {why}", resumed.subject)),
            }
        }
        let mut ran = if failed.is_empty() {
            Ran::ok(if done.is_empty() { "nothing waiting is due".to_owned() } else { done.join("; ") })
        } else {
            Ran::failed(failed.join("; "))
        };
        ran.next_wait = soonest;
        ran
    }

    /// Measures each backup set's recovery point against the RPO targets of the drills that
    /// restore it.
    async fn watch(&self) -> Ran {
        let metrics = &self.shared.metrics;
        let now = self.clock().now();
        let entries = match self.drills.backups().list(None).await {
            Ok(entries) => entries,
            Err(err) => return Ran::failed(err.to_string()),
        };
        let mut exceeded = Vec::new();
        for (name, set) in &self.plan().backups {
            let target = self.plan().drills.values().filter(|d| d.backup == *name).map(|d| d.rpo).min();
            let age = match &set.method {
                BackupMethod::PgBackRest(_) => match self.drills.backups().archive_health(name).await {
                    Ok(health) => {
                        let exposure = health.rpo_exposure_secs;
                        self.shared.archives.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), health);
                        exposure
                    }
                    Err(err) => {
                        tracing::warn!(set = %name, %err, "cannot read the archive's health");
                        None
                    }
                },
                // The catalog lists the newest first.
                _ => entries
                    .iter()
                    .find(|e| e.set == *name && e.status == crate::backup::catalog::Status::Verified)
                    .and_then(|e| parse_time(&e.started_at))
                    .map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
            };
            if let Some(target) = target {
                metrics.rpo_target.get_or_create(&metrics::label("set", name)).set(target.as_secs() as f64);
            }
            let problem = match age {
                Some(age) => {
                    metrics.recovery_point_age.get_or_create(&metrics::label("set", name)).set(age);
                    match target {
                        Some(target) if age > target.as_secs() as f64 => Some(format!(
                            "{name}: recovery point {} old, RPO target {}",
                            crate::drill::human_measured(age),
                            target
                        )),
                        _ => None,
                    }
                }
                None if target.is_some() => Some(format!("{name}: no verified backup")),
                None => None,
            };
            self.shared.alerts.settle(AlertKind::RpoExceeded, &format!("backup:{name}"), problem.as_deref()).await;
            exceeded.extend(problem);
        }
        if exceeded.is_empty() {
            Ran::ok("every recovery point is within its RPO target")
        } else {
            Ran::failed(format!("RPO exposure above target: {}", exceeded.join("; ")))
        }
    }
}

impl Era<'_> {
    /// Verifies the whole evidence ledger, from the pinned key when one is configured, else from
    /// the signing key the daemon holds (never the key the database's genesis record names).
    async fn verify(&self) -> Ran {
        let trust = match &self.plan().evidence.trusted_vkey {
            Some(vkey) => match crate::evidence::NoteVerifier::parse(vkey) {
                Ok(key) => crate::evidence::Trust::Pinned(Box::new(key)),
                Err(err) => return Ran::failed(format!("evidence.trusted_vkey: {err}")),
            },
            None => crate::evidence::Trust::Configured(Box::new(self.rotator.ctx.ledger.verifier())),
        };
        match crate::evidence::verify(self.db(), trust).await {
            Ok(verification) => {
                let problem = verification.problem.as_ref().map(|p| format!("record {}: {}", p.seq, p.what));
                self.shared.alerts.settle(AlertKind::EvidenceVerificationFailed, "evidence", problem.as_deref()).await;
                match problem {
                    None => Ran::ok(format!(
                        "{} records verified, {} checkpoints",
                        verification.records, verification.checkpoints_verified
                    )),
                    Some(problem) => Ran::failed(format!("the evidence ledger does not verify: {problem}")),
                }
            }
            Err(err) => Ran::failed(err.to_string()),
        }
    }
}

/// Awaits `work` while the futures in `running` go on, keeping those that end in `done`: a
/// loop that awaited its own queries while its jobs stood still would wait forever for a lock
/// one of them holds.
async fn alongside<'f, I, T>(
    running: &mut FuturesUnordered<BoxFuture<'f, I>>,
    done: &mut VecDeque<I>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(ended) = running.next(), if !running.is_empty() => done.push_back(ended),
        }
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|at| at.to_utc())
}

fn waiting_until(ended: &Ended) -> Option<DateTime<Utc>> {
    match ended {
        Ended::Waiting { until, .. } => parse_time(until),
        _ => None,
    }
}

fn ended_name(ended: &Ended) -> &'static str {
    match ended {
        Ended::Done => "done",
        Ended::Waiting { .. } => "waiting",
        Ended::RolledBack { .. } => "rolled_back",
        Ended::Stuck { .. } => "stuck",
    }
}

fn ended_line(ended: &Ended) -> String {
    match ended {
        Ended::Done => "done".into(),
        Ended::Waiting { step, until } => format!("waiting to {step} until {until}"),
        Ended::RolledBack { step, reason } => format!("rolled back at {step}: {reason}"),
        Ended::Stuck { step, reason } => format!("stuck undoing {step}: {reason}"),
    }
}
