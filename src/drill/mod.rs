//! Restore drills: the newest verified backup of a set restored into a scratch database,
//! checked, measured against the drill's RPO and RTO, and dropped.
//!
//! A drill is a saga (kind `drill.restore`, subject `drill:NAME`) of four steps, each recorded
//! before it acts and timed:
//!
//! 1. **locate**: the newest verified dump of the set, and the time its snapshot was taken;
//! 2. **restore**: the scratch database dropped if a crashed drill left it and created empty,
//!    then the backup streamed from its store, authenticated, decrypted and decompressed into
//!    the engine's own restore tool (`pg_restore`, `mariadb`);
//! 3. **check**: row counts against the manifest's, `pg_amcheck --heapallindexed` (PostgreSQL),
//!    each `check_credentials` secret's current credential logging in and running its probes,
//!    and the drill's SQL assertions; then RTO (drill start to checks done) and RPO (drill start
//!    minus the snapshot time) against the targets, which give the verdict;
//! 4. **teardown**: the scratch database dropped.
//!
//! A failed check fails the drill, not the saga: teardown still runs and the verdict says why.
//! A step that cannot complete (no verified backup, a corrupt object, a restore tool failing)
//! unwinds the saga, and undoing `restore` drops the scratch database: it never outlives its
//! drill. Every step is idempotent, so a drill killed at any point is finished or rolled back
//! by the next `vigil drill run` or `vigil drill resume`.
//!
//! A drill of an RDS set runs the same steps against a temporary instance instead (`rds.rs`),
//! and a drill of a pgbackrest set against a temporary server recovered to a point in time
//! (`physical.rs`).

mod physical;
mod rds;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backup::{BackupError, Backups, catalog};
use crate::config::{Drill, DrillRestore, Named, RdsSource, Target};
use crate::context::Ctx;
use crate::engines::dump::{DumpError, Integrity, Restore, pg_amcheck};
use crate::engines::scratch::{ScratchDb, scratch_name};
use crate::engines::{Engine, EngineError, checker};
use crate::evidence::Area;
use crate::saga::{self, Ended, SagaDef, SagaError, SagaRow, StepError, Subject};
use crate::secret::Credential;
use crate::stores::ReferenceError;

/// Why a drill command failed (a drill that ran and failed its checks is a report, not this).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// No such drill in the configuration.
    #[error("no drill named {0}; `vigil drill list` shows them")]
    UnknownDrill(String),
    /// No drill run of that id.
    #[error("no drill run {0}; `vigil drill list` shows the latest of each drill")]
    UnknownRun(String),
    /// The saga machinery failed.
    #[error(transparent)]
    Saga(#[from] SagaError),
    /// The evidence ledger could not be read.
    #[error(transparent)]
    Evidence(crate::evidence::EvidenceError),
}

/// The drill saga's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillStep {
    /// Find the newest verified backup.
    Locate,
    /// Restore it into a fresh scratch database.
    Restore,
    /// Check the restored data, and RPO and RTO.
    Check,
    /// Drop the scratch database.
    Teardown,
}

impl saga::Step for DrillStep {
    const ALL: &'static [Self] = &[Self::Locate, Self::Restore, Self::Check, Self::Teardown];

    fn name(self) -> &'static str {
        match self {
            Self::Locate => "locate",
            Self::Restore => "restore",
            Self::Check => "check",
            Self::Teardown => "teardown",
        }
    }
}

/// What a drill records: its settings when it started, then each step's findings. The
/// `drill.finished` evidence record carries it whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillData {
    /// The drill.
    pub drill: String,
    /// The backup set restored.
    pub backup_set: String,
    /// What it restores into.
    pub into: RestoreInto,
    /// When the drill started (RFC 3339): where RPO and RTO are measured from.
    pub started_at: String,
    /// The RPO target, in seconds.
    pub rpo_target_secs: u64,
    /// The RTO target, in seconds.
    pub rto_target_secs: u64,
    /// The runbook the drill exercises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// The backup restored, once located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Located>,
    /// Each step's duration, in the order they ran.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Each check's result.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// The PostgreSQL major version of a pgBackRest stanza, once located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_version: Option<String>,
    /// The newest data the restored copy holds, when measured on it (point-in-time drills);
    /// otherwise the backup's snapshot time is the recovery point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<RecoveryPoint>,
    /// The role the checks run as (PostgreSQL; `engines::checker`), named when the drill
    /// starts, so that whichever step a crash stops at knows what to drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_role: Option<String>,
    /// What is wrong with the source's WAL archiving, when something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_problem: Option<String>,
    /// RPO: drill start minus the recovery point, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_secs: Option<i64>,
    /// The recovery time: drill start to checks done, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_secs: Option<f64>,
    /// Passed or failed, and why, once the checks ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The newest data a restored copy holds, and how that was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    /// When (RFC 3339), by the source's clock.
    pub at: String,
    /// `heartbeat` or `last replayed transaction`.
    pub source: String,
}

/// What a drill restores into: a scratch database, a temporary RDS instance, or a temporary
/// PostgreSQL server. Named when the
/// drill starts, so that a crash at any step knows what to drop or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RestoreInto {
    /// A dump restored into `database` on the scratch target.
    Database {
        /// The scratch target.
        scratch_target: String,
        /// The scratch database on it.
        database: String,
    },
    /// An RDS set restored into the new instance `instance`.
    Instance {
        /// The instance backed up.
        source_instance: String,
        /// From its newest snapshot, or its latest restorable time.
        source: RdsSource,
        /// The temporary instance.
        instance: String,
    },
    /// A pgBackRest stanza restored into a temporary server in `folder`.
    Cluster {
        /// The stanza.
        stanza: String,
        /// The drill's folder: data directory, socket, log.
        folder: std::path::PathBuf,
        /// The time recovered to (RFC 3339), fixed when the drill started; the end of the
        /// archive when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_time: Option<String>,
    },
}

impl Default for RestoreInto {
    fn default() -> Self {
        Self::Database { scratch_target: String::new(), database: String::new() }
    }
}

impl std::fmt::Display for RestoreInto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Database { scratch_target, database } => write!(f, "database {database} on {scratch_target}"),
            Self::Instance { instance, .. } => write!(f, "temporary RDS instance {instance}"),
            Self::Cluster { folder, .. } => write!(f, "a temporary PostgreSQL server in {}", folder.display()),
        }
    }
}

/// The backup a drill restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// Its id.
    pub backup_id: String,
    /// When its snapshot was taken (RFC 3339), by the source server's clock.
    pub snapshot_time: String,
    /// Where it is stored.
    pub location: String,
    /// Its size as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// How long a step took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The step.
    pub phase: String,
    /// Its duration, in milliseconds.
    pub millis: u64,
}

/// One named check of the restored data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `row_counts`, `assertion 1`, …
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Whether it ran at all; one that could not run never passes, and says why.
    #[serde(default = "ran_by_default")]
    pub ran: bool,
    /// What was found, or why it did not run.
    pub detail: String,
}

fn ran_by_default() -> bool {
    true
}

impl Check {
    /// A check that ran.
    fn ran(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self { name: name.into(), passed, ran: true, detail: detail.into() }
    }

    /// A check that could not run, and why.
    fn not_run(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self { name: name.into(), passed: false, ran: false, detail: why.into() }
    }
}

/// A drill's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether every check passed and RPO and RTO met their targets.
    pub passed: bool,
    /// Why not, one line each.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// What `vigil drill run` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The drill run's id (the saga id).
    pub id: String,
    /// How the saga ended.
    pub ended: Ended,
    /// Whether the drill passed.
    pub passed: bool,
    /// Why it failed, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Everything it recorded.
    pub data: DrillData,
}

impl DrillReport {
    fn of(saga: &SagaRow, ended: Ended) -> Result<Self, DrillError> {
        let data: DrillData = saga.decode()?;
        let (passed, reason) = match (&ended, &data.verdict) {
            (Ended::Done, Some(verdict)) => (verdict.passed, (!verdict.passed).then(|| verdict.reasons.join("; "))),
            (Ended::Done, None) => (false, Some("the drill finished without a verdict".to_owned())),
            (Ended::RolledBack { step, reason }, _) => (false, Some(format!("{step}: {reason}"))),
            (Ended::Stuck { step, reason }, _) => (
                false,
                Some(format!("{step}: {reason}; what it restored into may be left: `vigil drill show` names it")),
            ),
            (Ended::Waiting { step, .. }, _) => (false, Some(format!("waiting at {step}"))),
        };
        Ok(Self { id: saga.id.clone(), ended, passed, reason, data })
    }
}

/// Called as each step starts: the drill, and the step.
pub type Progress = Arc<dyn Fn(&str, DrillStep) + Send + Sync>;

/// Drills, for one run of a command or the daemon.
pub struct Drills<'a> {
    /// Reads the backups drills restore; its context is the drills' own.
    backups: Backups<'a>,
    /// Told of each step as it starts.
    pub progress: Option<Progress>,
}

impl saga::Resume for Drills<'_> {
    fn resume(&self, saga: SagaRow) -> futures_util::future::BoxFuture<'_, Result<Ended, String>> {
        use futures_util::FutureExt as _;
        async move { self.resume_one(saga).await.map(|report| report.ended).map_err(|err| err.to_string()) }.boxed()
    }
}

impl<'a> Drills<'a> {
    /// Drills running with `ctx`.
    pub fn new(ctx: Ctx<'a>) -> Self {
        Self { backups: Backups::new(ctx), progress: None }
    }

    /// What they run with.
    pub fn ctx(&self) -> &Ctx<'a> {
        &self.backups.ctx
    }

    /// The backups they restore, sharing their context: the daemon backs up through them too.
    pub fn backups(&self) -> &Backups<'a> {
        &self.backups
    }

    fn drill(&self, name: &str) -> Result<&'a Drill, DrillError> {
        self.ctx().plan.drills.get(name).ok_or_else(|| DrillError::UnknownDrill(name.to_owned()))
    }

    /// Runs drill `name` now, first finishing one of the same drill a crash left in flight.
    pub async fn run(&self, name: &str) -> Result<DrillReport, DrillError> {
        self.run_as(name, &crate::clock::sortable_id(self.ctx().clock)).await
    }

    /// Runs drill `name` as run (and saga) `id`, which the daemon's queued work names before
    /// it starts; a run of the drill a crash left in flight is finished first.
    pub async fn run_as(&self, name: &str, id: &str) -> Result<DrillReport, DrillError> {
        let drill = self.drill(name)?;
        for saga in saga::in_flight(self.ctx().db).await? {
            if saga.subject == Subject::Drill(name.to_owned()) {
                tracing::info!(drill = %name, run = %saga.id, step = %saga.step, "finishing a drill left in flight first");
                self.resume_one(saga).await?;
            }
        }
        let def = DrillSaga { drills: self, name };
        let started_at = self.ctx().clock.now();
        let data = DrillData {
            drill: name.to_owned(),
            backup_set: drill.backup.clone(),
            into: match &drill.restore {
                DrillRestore::Dump { scratch, .. } => {
                    RestoreInto::Database { scratch_target: scratch.clone(), database: scratch_name(name, id) }
                }
                DrillRestore::Rds { instance, source } => RestoreInto::Instance {
                    source_instance: instance.clone(),
                    source: *source,
                    instance: rds::instance_id(name, id),
                },
                DrillRestore::PgBackRest { target, scratch_dir, .. } => RestoreInto::Cluster {
                    stanza: match self.ctx().plan.backups.get(&drill.backup).map(|set| &set.method) {
                        Some(crate::config::BackupMethod::PgBackRest(pg)) => pg.repo.stanza.clone(),
                        _ => String::new(),
                    },
                    folder: scratch_dir
                        .clone()
                        .unwrap_or_else(|| self.ctx().plan.controller.data_dir.join("drills"))
                        .join(format!("{name}-{}", crate::engines::scratch::run_suffix(id))),
                    target_time: target
                        .resolve(started_at)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                },
            },
            started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            rpo_target_secs: drill.rpo.as_secs(),
            rto_target_secs: drill.rto.as_secs(),
            runbook: drill.runbook.as_ref().map(|p| p.display().to_string()),
            check_role: Some(checker::random_name()),
            ..DrillData::default()
        };
        let (saga, ended) = self.ctx().executor().start(&def, id, &Subject::Drill(name.to_owned()), data).await?;
        DrillReport::of(&saga, ended)
    }

    /// Finishes or rolls back every drill a crash left in flight.
    pub async fn resume(&self) -> Result<Vec<DrillReport>, DrillError> {
        let mut reports = Vec::new();
        for saga in saga::in_flight(self.ctx().db).await? {
            if self.ctx().cancel.is_cancelled() {
                break;
            }
            if matches!(saga.subject, Subject::Drill(_)) {
                reports.push(self.resume_one(saga).await?);
            }
        }
        Ok(reports)
    }

    /// Resumes drill run `saga` to its end: for the daemon's queued work too.
    pub async fn resume_one(&self, saga: SagaRow) -> Result<DrillReport, DrillError> {
        let name = saga.subject.name().to_owned();
        let def = DrillSaga { drills: self, name: &name };
        tracing::info!(drill = %name, run = %saga.id, step = %saga.step, "resuming a drill left in flight");
        let (saga, ended) = self.ctx().executor().run(&def, saga).await?;
        DrillReport::of(&saga, ended)
    }

    /// Registers the drill kind with `registry`, resumed by these drills.
    pub fn register<'r>(&'r self, registry: &mut saga::Registry<'r>) {
        registry.register(KIND, self);
    }

    /// The latest run of each configured drill (`None` for a drill never run), by name.
    pub async fn latest(&self) -> Result<BTreeMap<String, Option<DrillRun>>, DrillError> {
        let mut latest = BTreeMap::new();
        for name in self.ctx().plan.drills.keys() {
            let newest = saga::newest(self.ctx().db, KIND, &Subject::Drill(name.clone())).await?;
            latest.insert(name.clone(), newest.as_ref().map(DrillRun::of).transpose()?);
        }
        Ok(latest)
    }

    /// Drill run `id`, with the sequence numbers of its evidence records.
    pub async fn show(&self, id: &str) -> Result<DrillRun, DrillError> {
        let saga = saga::get(self.ctx().db, id).await?.filter(|s| s.kind == KIND);
        let mut run = DrillRun::of(&saga.ok_or_else(|| DrillError::UnknownRun(id.to_owned()))?)?;
        let filter = crate::evidence::RecordFilter {
            subject: Some(run.data.drill.clone()),
            since: Some(run.data.started_at.clone()),
            limit: 10_000,
            ..Default::default()
        };
        let records = crate::evidence::list(self.ctx().db, &filter).await.map_err(DrillError::Evidence)?;
        let ours = |details: &str| {
            serde_json::from_str::<serde_json::Value>(details).is_ok_and(|d| d["saga"].as_str() == Some(id))
        };
        run.evidence = records.iter().filter(|r| ours(&r.details)).map(|r| r.seq).collect();
        Ok(run)
    }
}

/// A drill run as the state database keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRun {
    /// Its id.
    pub id: String,
    /// `running`, `unwinding`, `done`, `rolled_back` or `stuck`.
    pub status: saga::Status,
    /// The step it is at, or ended at.
    pub step: String,
    /// Why it unwound, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it last changed.
    pub updated_at: String,
    /// What it recorded.
    pub data: DrillData,
    /// The sequence numbers of its evidence records (filled by `show`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<u64>,
}

impl DrillRun {
    fn of(saga: &SagaRow) -> Result<Self, DrillError> {
        Ok(Self {
            id: saga.id.clone(),
            status: saga.status,
            step: saga.step.clone(),
            error: saga.error.clone(),
            updated_at: saga.updated_at.clone(),
            data: saga.decode()?,
            evidence: Vec::new(),
        })
    }

    /// Whether the run passed: finished, with a passing verdict.
    pub fn passed(&self) -> bool {
        self.status == saga::Status::Done && self.data.verdict.as_ref().is_some_and(|v| v.passed)
    }
}

/// The saga kind of a restore drill.
const KIND: &str = "drill.restore";

/// One drill's saga.
struct DrillSaga<'d, 'a> {
    drills: &'d Drills<'a>,
    name: &'d str,
}

impl From<BackupError> for StepError {
    fn from(err: BackupError) -> Self {
        let transient = match &err {
            BackupError::Store(err) => err.is_transient(),
            BackupError::Key(err) => err.is_transient(),
            _ => false,
        };
        if transient { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

fn engine_step(err: EngineError) -> StepError {
    if err.is_transient() { StepError::Transient(err.to_string()) } else { StepError::Failed(err.to_string()) }
}

impl DrillSaga<'_, '_> {
    fn drill(&self) -> Result<&Drill, StepError> {
        self.drills.drill(self.name).map_err(|err| StepError::Failed(err.to_string()))
    }

    fn target(&self, name: &str) -> Result<Named<Target>, StepError> {
        let target = self
            .drills
            .ctx()
            .plan
            .targets
            .get(name)
            .ok_or_else(|| StepError::Failed(format!("target {name} is no longer configured")))?;
        Ok(Named { name: name.to_owned(), value: target.clone() })
    }

    /// `target`'s admin credential.
    async fn admin(&self, target: &Named<Target>) -> Result<Credential, StepError> {
        self.drills.ctx().stores.login(&target.value.admin).await.map_err(|err| match err {
            ReferenceError::Store(err) if err.is_transient() => StepError::Transient(err.to_string()),
            err => StepError::Failed(format!("cannot read the admin credential of {}: {err}", target.name)),
        })
    }

    /// The scratch database, administered with the scratch target's admin credential.
    async fn scratch(&self, data: &DrillData) -> Result<ScratchDb, StepError> {
        let RestoreInto::Database { scratch_target, database } = &data.into else {
            return Err(StepError::Failed(format!(
                "drill {} restores into an RDS instance, not a database",
                data.drill
            )));
        };
        let target = self.target(scratch_target)?;
        let admin = self.admin(&target).await?;
        Ok(ScratchDb::new(target.value.engine, target.value.endpoint(), admin, database.clone()))
    }

    /// Drops the scratch database (and then the checking role, which could read only it) or
    /// deletes the temporary instance; idempotent. A temporary server's checking role goes
    /// with the cluster.
    async fn remove(&self, data: &DrillData) -> Result<(), StepError> {
        match data.into {
            RestoreInto::Database { .. } => {
                let scratch = self.scratch(data).await?;
                scratch.drop().await.map_err(engine_step)?;
                match scratch.engine() {
                    Engine::Postgres => scratch.drop_checker(&check_role(data)).await.map_err(engine_step),
                    Engine::Mysql => Ok(()),
                }
            }
            RestoreInto::Instance { .. } => self.rds_delete(data).await,
            RestoreInto::Cluster { .. } => self.physical_remove(data).await,
        }
    }

    /// This process's private folder for the tools' password files.
    async fn folder(&self) -> Result<std::path::PathBuf, StepError> {
        self.drills.backups.scratch_folder().await
    }

    /// `pg_amcheck --heapallindexed` on the restored database (PostgreSQL only).
    async fn integrity(&self, scratch: &ScratchDb) -> Result<Option<Check>, StepError> {
        if scratch.engine() != Engine::Postgres {
            return Ok(None);
        }
        let name = "pg_amcheck".to_owned();
        if let Err(err) = scratch.ensure_amcheck().await {
            if err.is_transient() {
                return Err(engine_step(err));
            }
            let detail = format!(
                "{err}; the amcheck extension is not trusted: create it once in template1 as a superuser, so every scratch database has it"
            );
            return Ok(Some(Check::ran(name, false, detail)));
        }
        let folder = self.folder().await?;
        let (endpoint, admin) = (scratch.endpoint(), scratch.admin().clone());
        let found = tokio::task::spawn_blocking(move || pg_amcheck(&endpoint, &admin, &folder))
            .await
            .map_err(|err| StepError::Failed(format!("pg_amcheck stopped unexpectedly: {err}")))?;
        Ok(Some(match found {
            Ok(Integrity::Clean(detail)) => Check::ran(name, true, detail),
            Ok(Integrity::Corrupt(found)) => Check::ran(name, false, format!("corruption: {found}")),
            Err(err) => Check::ran(name, false, err.to_string()),
        }))
    }

    /// Each `check_credentials` secret's current credential logs in to the restored database
    /// and runs the secret's probes.
    async fn credentials(&self, drill: &Drill, scratch: &ScratchDb) -> Result<Vec<Check>, StepError> {
        let mut checks = Vec::new();
        for name in &drill.check_credentials {
            let check = format!("credential {name}");
            let Some(spec) = self.drills.ctx().plan.secrets.get(name) else {
                checks.push(Check::ran(check, false, format!("secret {name} is no longer configured")));
                continue;
            };
            let probes = spec.kind.db_password().map(|db| db.probes.clone()).unwrap_or_default();
            let credential = match crate::rotation::current_credential(&self.drills.ctx().stores, spec).await {
                Ok(credential) => credential,
                Err(err) => {
                    checks.push(Check::ran(check, false, format!("cannot read it: {err}")));
                    continue;
                }
            };
            if scratch.engine() == Engine::Postgres {
                // The scratch database refuses PUBLIC: the application's role is let in by name.
                scratch.grant_connect(&credential.username).await.map_err(engine_step)?;
            }
            let engine = crate::engines::connect(scratch.engine(), scratch.endpoint(), scratch.admin().clone());
            let detail = match engine.test_login(&credential, &probes).await {
                Ok(()) => Ok(format!(
                    "{} logged in to {} and ran {} probe(s)",
                    credential.username,
                    scratch.name(),
                    probes.len()
                )),
                Err(err) if err.is_transient() => return Err(engine_step(err)),
                Err(err) => Err(err.to_string()),
            };
            checks.push(match detail {
                Ok(detail) => Check::ran(check, true, detail),
                Err(detail) => Check::ran(check, false, detail),
            });
        }
        Ok(checks)
    }

    fn timed(data: &DrillData, step: DrillStep, started: Instant) -> DrillData {
        let mut data = data.clone();
        let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        data.phases.retain(|p| p.phase != saga::Step::name(step));
        data.phases.push(Phase { phase: saga::Step::name(step).to_owned(), millis });
        data
    }

    /// The drill's backup set, as configured now.
    fn set(&self, data: &DrillData) -> Result<&crate::config::BackupSet, StepError> {
        self.drills
            .ctx()
            .plan
            .backups
            .get(&data.backup_set)
            .ok_or_else(|| StepError::Failed(format!("backup set {} is no longer configured", data.backup_set)))
    }

    async fn locate(&self, data: &DrillData) -> Result<DrillData, StepError> {
        if !matches!(self.set(data)?.method, crate::config::BackupMethod::Dump { .. }) {
            return Err(StepError::Failed(format!(
                "backup set {} now takes RDS snapshots, but this drill began as a restore of a dump; run it again",
                data.backup_set
            )));
        }
        let entries = catalog::list(self.drills.ctx().db, Some(&data.backup_set)).await?;
        let Some(entry) = entries.iter().find(|e| e.method == "dump" && e.status == catalog::Status::Verified) else {
            return Err(StepError::Failed(format!(
                "no verified backup of set {} to restore; run `vigil backup run {}` first",
                data.backup_set, data.backup_set
            )));
        };
        let manifest = self.drills.backups.manifest(&entry.id).await?;
        // The scratch target is reached before anything is made on it: one that cannot be (a
        // wrong database name, a refused login) ends the drill here, rolled back, rather than
        // after a restore whose undo could not connect either.
        self.scratch(data).await?.reach().await.map_err(engine_step)?;
        let mut found = data.clone();
        found.backup = Some(Located {
            backup_id: entry.id.clone(),
            snapshot_time: manifest.consistency.snapshot_time,
            location: entry.location.clone(),
            bytes: entry.bytes,
        });
        Ok(found)
    }

    async fn restore(&self, data: &DrillData) -> Result<(), StepError> {
        let located = located(data)?;
        let scratch = self.scratch(data).await?;
        // Asked right before the scratch database is dropped and made again: a run woken after
        // another took it over acts on nothing.
        self.drills.ctx().db.check_fence().await?;
        scratch.recreate().await.map_err(engine_step)?;
        let folder = self.folder().await?;
        let (jobs, grants) = match self.drill()?.restore {
            DrillRestore::Dump { jobs, grants, .. } => (jobs, grants),
            DrillRestore::Rds { .. } | DrillRestore::PgBackRest { .. } => (1, false),
        };
        if jobs > 1 {
            return self.restore_parallel(&scratch, located, &folder, jobs, grants).await;
        }
        let (sink, restore) = Restore::start(scratch.engine(), &scratch.endpoint(), scratch.admin(), &folder, grants)
            .map_err(|err| StepError::Failed(err.to_string()))?;
        let fetched = self.drills.backups.fetch(&located.backup_id, sink).await;
        // The sink is closed once fetch returns: the tool sees the end of its input and exits.
        let finished = tokio::task::spawn_blocking(move || restore.finish())
            .await
            .map_err(|err| StepError::Failed(format!("the restore tool stopped unexpectedly: {err}")))?;
        match (fetched, finished) {
            (Ok(_), Ok(())) => Ok(()),
            // The tool's own words explain a broken pipe better than the pipe does.
            (Err(BackupError::Output(_)), Err(err @ DumpError::Failed { .. })) | (Ok(_), Err(err)) => {
                Err(StepError::Failed(format!("restore into {} failed: {err}", scratch.name())))
            }
            (Err(err), _) => Err(unreadable(located, err)),
        }
    }

    /// `restore_jobs` above 1: the authenticated dump staged to a 0600 file in this process's
    /// private folder (removed when done; a crash leaves it to that folder's sweep at the next
    /// start), then `pg_restore -j`.
    async fn restore_parallel(
        &self,
        scratch: &ScratchDb,
        located: &Located,
        folder: &std::path::Path,
        jobs: u32,
        grants: bool,
    ) -> Result<(), StepError> {
        let staged = Staged(folder.join(format!("drill-{}.dump", scratch.name())));
        // A retried step finds its own earlier attempt's file: start over.
        let _ = std::fs::remove_file(&staged.0);
        let file = crate::secret::create_private(&staged.0)
            .map_err(|err| StepError::Failed(format!("cannot stage the dump at {}: {err}", staged.0.display())))?;
        let sink = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
        self.drills.backups.fetch(&located.backup_id, sink).await.map_err(|err| unreadable(located, err))?;
        let restore = Restore::start_parallel(&scratch.endpoint(), scratch.admin(), folder, &staged.0, jobs, grants)
            .map_err(|err| StepError::Failed(err.to_string()))?;
        tokio::task::spawn_blocking(move || restore.finish())
            .await
            .map_err(|err| StepError::Failed(format!("the restore tool stopped unexpectedly: {err}")))?
            .map_err(|err| StepError::Failed(format!("restore into {} failed: {err}", scratch.name())))
    }

    async fn check(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let located = located(data)?;
        let drill = self.drill()?;
        let scratch = self.scratch(data).await?;
        let manifest = self.drills.backups.manifest(&located.backup_id).await?;
        let mut checks = Vec::new();

        // MariaDB names a table by its database, which differs between source and scratch.
        let by_table = |counts: BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            match scratch.engine() {
                Engine::Postgres => counts,
                Engine::Mysql => counts
                    .into_iter()
                    .map(|(key, n)| (key.split_once('.').map_or(key.clone(), |(_, table)| table.to_owned()), n))
                    .collect(),
            }
        };
        let reader = self.reader(&scratch, data).await?;
        let restored = by_table(scratch.count_rows(&reader).await.map_err(engine_step)?);
        let expected = &by_table(manifest.consistency.row_counts.clone());
        let differing: Vec<String> = expected
            .keys()
            .chain(restored.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|table| expected.get(*table) != restored.get(*table))
            .map(|table| {
                let show = |n: Option<&u64>| n.map_or_else(|| "missing".to_owned(), u64::to_string);
                format!("{table}: backup {}, restored {}", show(expected.get(table)), show(restored.get(table)))
            })
            .collect();
        let detail = if differing.is_empty() {
            format!("{} tables, {} rows, as the backup counted", restored.len(), restored.values().sum::<u64>())
        } else {
            differing.join("; ")
        };
        checks.push(Check::ran("row_counts", differing.is_empty(), detail));

        checks.extend(self.integrity(&scratch).await?);
        checks.extend(self.queries(drill, &scratch, &reader).await?);
        Ok(self.verdict(data, checks))
    }

    /// Who reads the restored data for the checks: on PostgreSQL the drill's checking role,
    /// made ready now by the admin of `scratch`; on MariaDB the scratch admin, whose grants
    /// reach only drills' databases (MariaDB has no `search_path`; vigil's own statements name
    /// the database).
    async fn reader(&self, scratch: &ScratchDb, data: &DrillData) -> Result<Credential, StepError> {
        match scratch.engine() {
            Engine::Postgres => scratch.make_checker(&check_role(data)).await.map_err(engine_step),
            Engine::Mysql => Ok(scratch.admin().clone()),
        }
    }

    /// The checks any restored database gets: `check_credentials` and the SQL assertions, the
    /// latter run as `reader`.
    async fn queries(&self, drill: &Drill, scratch: &ScratchDb, reader: &Credential) -> Result<Vec<Check>, StepError> {
        let mut checks = self.credentials(drill, scratch).await?;
        for (i, assertion) in drill.assertions.iter().enumerate() {
            let name = format!("assertion {}", i + 1);
            let check = match scratch.first_value(reader, &assertion.sql).await {
                Ok(value) => {
                    let got = value.unwrap_or_else(|| "NULL".to_owned());
                    let detail = format!("{} returned {got:?}, expected {:?}", assertion.sql, assertion.expect);
                    Check::ran(name, got == assertion.expect, detail)
                }
                Err(err) if err.is_transient() => return Err(engine_step(err)),
                Err(err) => Check::ran(name, false, format!("{} failed: {err}", assertion.sql)),
            };
            checks.push(check);
        }
        Ok(checks)
    }

    /// The drill's data with `checks`, RTO (now, minus its start) and RPO (its start, minus the
    /// restored point) against the targets, and the verdict they give.
    fn verdict(&self, data: &DrillData, checks: Vec<Check>) -> DrillData {
        let mut checked = data.clone();
        let now = self.drills.ctx().clock.now();
        let Some(located) = data.backup.as_ref() else {
            checked.verdict = Some(Verdict { passed: false, reasons: vec!["locate recorded no backup".into()] });
            return checked;
        };
        let started = parse_time(&data.started_at).unwrap_or(now);
        let rto = (now - started).num_milliseconds() as f64 / 1000.0;
        let point = data.recovery_point.as_ref().map_or(&located.snapshot_time, |p| &p.at);
        let rpo = parse_time(point).map(|point| (started - point).num_seconds()).ok();
        let mut reasons: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} {}: {}", c.name, if c.ran { "failed" } else { "not run" }, c.detail))
            .collect();
        match rpo {
            Some(rpo) if rpo > i64::try_from(data.rpo_target_secs).unwrap_or(i64::MAX) => {
                let what = match &data.recovery_point {
                    Some(point) => format!("the restored copy's newest data ({}) is from {}", point.source, point.at),
                    None => format!("the newest verified backup ({}) is that old", located.backup_id),
                };
                let cause = data.archive_problem.as_ref().map(|p| format!("; {p}")).unwrap_or_default();
                reasons.push(format!(
                    "RPO {} exceeds the target {}: {what}{cause}",
                    human(rpo.unsigned_abs()),
                    human(data.rpo_target_secs)
                ));
            }
            Some(_) => {}
            None => reasons.push(format!("the recovery point {point:?} does not parse")),
        }
        if rto > data.rto_target_secs as f64 {
            reasons.push(format!("RTO {} exceeds the target {}", human_measured(rto), human(data.rto_target_secs)));
        }
        checked.checks = checks;
        checked.rpo_secs = rpo;
        checked.rto_secs = Some(rto);
        checked.verdict = Some(Verdict { passed: reasons.is_empty(), reasons });
        checked
    }
}

/// Why the backup a drill restores could not be read; a store or key service failing for now is
/// retried.
fn unreadable(located: &Located, err: BackupError) -> StepError {
    match StepError::from(err) {
        StepError::Transient(why) => {
            StepError::Transient(format!("backup {} could not be read: {why}", located.backup_id))
        }
        other => StepError::Failed(format!("backup {} could not be read: {other}", located.backup_id)),
    }
}

/// A staged dump, removed when dropped.
struct Staged(std::path::PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The drill run's checking role: the one it named when it started, or for a run that began
/// before vigil named one, a name derived from the run.
fn check_role(data: &DrillData) -> String {
    data.check_role.clone().unwrap_or_else(|| checker::derived_name(&format!("{}@{}", data.drill, data.started_at)))
}

fn located(data: &DrillData) -> Result<&Located, StepError> {
    data.backup
        .as_ref()
        .ok_or_else(|| StepError::Failed("the drill's row names no backup: locate did not record one".into()))
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, StepError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|err| StepError::Failed(format!("time {text:?} does not parse: {err}")))
}

/// `42s`, `15m`, `1h`, `3h 5m`, `2d 4h`: a duration for a person.
pub fn human(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3_600 => format!("{m}m"),
        s if s < 172_800 && m == 0 => format!("{}h", s / 3_600),
        s if s < 172_800 => format!("{}h {m}m", s / 3_600),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// A measured time: tenths of a second under two minutes (a drill's RTO often is), else as
/// [`human`].
pub fn human_measured(secs: f64) -> String {
    if secs < 120.0 { format!("{secs:.1}s") } else { human(secs as u64) }
}

impl SagaDef for DrillSaga<'_, '_> {
    type Step = DrillStep;
    type Data = DrillData;
    const KIND: &'static str = KIND;
    const AREA: Area = Area::Drill;
    const RESUME: &'static str = "vigil drill resume";

    async fn act(&self, _saga: &SagaRow, data: &DrillData, step: DrillStep) -> Result<Option<DrillData>, StepError> {
        if let Some(progress) = &self.drills.progress {
            progress(self.name, step);
        }
        let started = Instant::now();
        let data = match (step, &data.into) {
            (DrillStep::Locate, RestoreInto::Database { .. }) => self.locate(data).await?,
            (DrillStep::Locate, RestoreInto::Instance { .. }) => self.rds_locate(data).await?,
            (DrillStep::Locate, RestoreInto::Cluster { .. }) => self.physical_locate(data).await?,
            (DrillStep::Restore, RestoreInto::Database { .. }) => {
                self.restore(data).await?;
                data.clone()
            }
            (DrillStep::Restore, RestoreInto::Instance { .. }) => {
                self.rds_restore(data).await?;
                data.clone()
            }
            (DrillStep::Restore, RestoreInto::Cluster { .. }) => self.physical_restore(data).await?,
            (DrillStep::Check, RestoreInto::Database { .. }) => self.check(data).await?,
            (DrillStep::Check, RestoreInto::Instance { .. }) => self.rds_check(data).await?,
            (DrillStep::Check, RestoreInto::Cluster { .. }) => self.physical_check(data).await?,
            (DrillStep::Teardown, _) => {
                self.remove(data).await?;
                data.clone()
            }
        };
        Ok(Some(Self::timed(&data, step, started)))
    }

    fn finished_outcome(&self, data: &DrillData) -> crate::evidence::Outcome {
        let passed = data.verdict.as_ref().is_some_and(|v| v.passed);
        if passed { crate::evidence::Outcome::Succeeded } else { crate::evidence::Outcome::Failed }
    }

    async fn undo(&self, _saga: &SagaRow, data: &DrillData, step: DrillStep) -> Result<(), StepError> {
        match step {
            DrillStep::Restore => self.remove(data).await,
            DrillStep::Locate | DrillStep::Check | DrillStep::Teardown => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(15 * 60), "15m");
        assert_eq!(human(3_600), "1h");
        assert_eq!(human(3 * 3_600 + 300), "3h 5m");
        assert_eq!(human(2 * 86_400), "2d");
        assert_eq!(human(2 * 86_400 + 4 * 3_600), "2d 4h");
        assert_eq!(human_measured(0.74), "0.7s");
        assert_eq!(human_measured(4000.0), "1h 6m");
    }

    #[test]
    fn a_report_fails_with_the_verdict_s_reasons_or_the_step_that_unwound() {
        let saga = |verdict: Option<Verdict>| SagaRow {
            id: "d1".into(),
            kind: KIND.into(),
            subject: Subject::Drill("orders".into()),
            step: "teardown".into(),
            status: saga::Status::Done,
            data: serde_json::to_value(DrillData { verdict, ..DrillData::default() }).unwrap(),
            failed_step: None,
            error: None,
            started_at: String::new(),
            updated_at: String::new(),
            waiting_until: None,
        };
        let passed = DrillReport::of(&saga(Some(Verdict { passed: true, reasons: vec![] })), Ended::Done).unwrap();
        assert!(passed.passed && passed.reason.is_none());
        let failed = Verdict { passed: false, reasons: vec!["RPO 2d 0h exceeds the target 15m".into()] };
        let failed = DrillReport::of(&saga(Some(failed)), Ended::Done).unwrap();
        assert_eq!(failed.reason.as_deref(), Some("RPO 2d 0h exceeds the target 15m"));
        let unwound = Ended::RolledBack { step: "locate".into(), reason: "no verified backup".into() };
        let unwound = DrillReport::of(&saga(None), unwound).unwrap();
        assert!(!unwound.passed);
        assert_eq!(unwound.reason.as_deref(), Some("locate: no verified backup"));
    }
}
