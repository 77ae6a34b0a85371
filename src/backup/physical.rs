//! Backups of method `pgbackrest`: a physical backup of the whole cluster by pgBackRest, which
//! also archives every WAL segment, so a restore can reach any point in time the archive covers.
//!
//! A saga like a dump's (kind `backup.pgbackrest`), each step recorded before it acts:
//! `backup` runs `pgbackrest backup --type=…` and records the new backup's label, type, times,
//! sizes and WAL range as the catalog entry and the `backup.written` record; `verify` runs
//! `pgbackrest verify --set=LABEL` and records `backup.verified`. A `backup` step resumed after a
//! crash first looks for a backup the crashed run finished (one the saga did not know of when it
//! began) and adopts it instead of taking another. Undoing `backup` expires the backup.
//!
//! Beside the backups, the set's **archive health** (`pg_stat_archiver`, the segments waiting to
//! be archived, the repository's newest backup) and its **heartbeat** (a row vigil writes to the
//! source, which dates any restored copy) live here.

use super::catalog::{self, Status};
use super::{BackupError, BackupReport, Backups};
use crate::clock::Clock;
use crate::config::{BackupSet, PgBackRestSet, Plan};
use crate::engines::Endpoint;
use crate::engines::archive::{self, ArchiverStatus};
use crate::engines::dump::PasswordFile;
use crate::evidence::{Kind, NewRecord, Outcome};
use crate::pgbackrest::{BackupInfo, BackupType, Info, Login, PgBackRestError, Repo};
use crate::saga::{self, Ended, SagaDef, SagaRow, StepError, Subject};
use crate::stores::{ReferenceError, Stores};

/// The saga kind.
pub(super) const KIND_NAME: &str = "backup.pgbackrest";
/// How long a backup waits for another pgBackRest process to release the stanza's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The catalog's and the report's name for the method.
pub const METHOD: &str = "pgbackrest";

/// The saga's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysicalStep {
    /// `pgbackrest backup`.
    Backup,
    /// `pgbackrest verify --set`.
    Verify,
}

impl saga::Step for PhysicalStep {
    const ALL: &'static [Self] = &[Self::Backup, Self::Verify];

    fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Verify => "verify",
        }
    }
}

/// What the saga records: the labels the repository held when it began (so a resumed step can
/// tell its own backup from an older one), and the new backup's label once taken.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct PhysicalData {
    set: String,
    backup_id: String,
    backup_type: BackupType,
    known_labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

impl From<PgBackRestError> for StepError {
    fn from(err: PgBackRestError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

struct PhysicalSaga<'a> {
    backups: &'a Backups<'a>,
    set: &'a BackupSet,
    repo: Repo,
}

/// The facts a catalog entry and the evidence carry about one pgBackRest backup.
fn facts(repo: &Repo, info: &Info, backup: &BackupInfo) -> serde_json::Value {
    let time = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    serde_json::json!({
        "method": METHOD,
        "stanza": repo.settings().stanza,
        "config_file": repo.settings().config,
        "repository": "repo1",
        "cipher": info.cipher,
        "label": backup.label,
        "type": backup.kind,
        "prior": backup.prior,
        "start": time(backup.start),
        "stop": time(backup.stop),
        "wal_start": backup.wal_start,
        "wal_stop": backup.wal_stop,
        "lsn_start": backup.lsn_start,
        "lsn_stop": backup.lsn_stop,
        "size": backup.size,
        "delta": backup.delta,
        "repo_size": backup.repo_size,
        "repo_delta": backup.repo_delta,
        "page_checksum_errors": backup.error,
        "pg_version": info.pg_version,
    })
}

impl PhysicalSaga<'_> {
    /// The set's login for pgBackRest, in a 0600 password file.
    async fn login(&self) -> Result<(String, PasswordFile), StepError> {
        let target = &self.set.target;
        let (credential, which) = match &target.value.backup_credential {
            Some(reader) => (reader, "backup_credential"),
            None => (&target.value.admin, "admin credential"),
        };
        let login = self.backups.ctx.stores.login(credential).await.map_err(|err| match err {
            ReferenceError::Store(err) if err.is_transient() => StepError::Transient(err.to_string()),
            err => StepError::Failed(format!("cannot read the {which} of {}: {err}", target.name)),
        })?;
        let scratch = self.backups.scratch_folder().await?;
        let file =
            PasswordFile::pgpass(&scratch, &login).map_err(|err| StepError::Failed(format!("{which}: {err}")))?;
        Ok((login.username.clone(), file))
    }

    /// The backup this saga took: the newest one the repository did not hold when it began.
    fn own<'i>(info: &'i Info, data: &PhysicalData) -> Option<&'i BackupInfo> {
        info.backups.iter().rev().find(|b| !data.known_labels.contains(&b.label))
    }

    async fn backup(&self, saga: &SagaRow, data: &PhysicalData) -> Result<PhysicalData, StepError> {
        let backups = self.backups;
        let before = self.repo.info().await?;
        let info = match Self::own(&before, data) {
            Some(adopted) => {
                tracing::info!(set = %data.set, label = %adopted.label, "adopting the backup a crashed run finished");
                before
            }
            None => {
                let (user, passfile) = self.login().await?;
                let login = Login { user: &user, passfile: passfile.path() };
                // Another backup of the stanza holds its lock (a full overrunning into the next
                // incremental's slot): wait for it, within a bound, rather than fail.
                let deadline = tokio::time::Instant::now() + LOCK_WAIT;
                loop {
                    // Asked before each try: a run woken after another took its saga over (and
                    // perhaps took the backup) starts no second one, nor one after a stop.
                    backups.ctx.db.check_fence().await?;
                    if backups.ctx.cancel.is_cancelled() {
                        return Err(StepError::Cancelled("stopped while waiting for the stanza's lock".into()));
                    }
                    match self.repo.backup(data.backup_type, login).await {
                        Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                            tracing::info!(set = %data.set, "another pgBackRest process holds the stanza's lock; waiting");
                            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        }
                        done => break done?,
                    }
                }
                self.repo.info().await?
            }
        };
        let Some(taken) = Self::own(&info, data) else {
            return Err(StepError::Failed(format!(
                "pgbackrest backup succeeded but `pgbackrest info` shows no new backup of stanza {}",
                self.repo.settings().stanza
            )));
        };
        let facts = facts(&self.repo, &info, taken);
        let location = format!("pgbackrest:{}/{}", self.repo.settings().stanza, taken.label);
        let manifest = crate::evidence::canonical_json(&facts);
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest.as_bytes()));
        let now = backups.now();
        catalog::located(backups.ctx.db, &data.backup_id, &location).await?;
        catalog::written(backups.ctx.db, &data.backup_id, &manifest, &sha, taken.repo_delta, &now).await?;
        let mut details = facts;
        details["backup_id"] = data.backup_id.clone().into();
        backups
            .ctx
            .ledger
            .append(NewRecord {
                kind: Kind::BackupWritten.into(),
                subject: saga.subject.name().to_owned(),
                outcome: Outcome::Succeeded,
                details,
            })
            .await
            .map_err(|err| StepError::Transient(err.to_string()))?;
        Ok(PhysicalData { label: Some(taken.label.clone()), ..data.clone() })
    }

    async fn verify(&self, saga: &SagaRow, data: &PhysicalData) -> Result<(), StepError> {
        let label = label(data)?;
        self.repo.verify(label).await?;
        let info = self.repo.info().await?;
        let backup = info.backup(label).ok_or_else(|| {
            StepError::Failed(format!("backup {label} left the repository while it was verified (expired?)"))
        })?;
        let mut details = facts(&self.repo, &info, backup);
        details["backup_id"] = data.backup_id.clone().into();
        details["archive_min"] = info.archive_min.clone().into();
        details["archive_max"] = info.archive_max.clone().into();
        details["checks"] =
            serde_json::json!(["pgbackrest verify: every file's checksum, and the WAL the backup needs"]);
        let now = self.backups.now();
        catalog::set_status(self.backups.ctx.db, &data.backup_id, Status::Verified, None, &now).await?;
        self.backups
            .ctx
            .ledger
            .append(NewRecord {
                kind: Kind::BackupVerified.into(),
                subject: saga.subject.name().to_owned(),
                outcome: Outcome::Succeeded,
                details,
            })
            .await
            .map(drop)
            .map_err(|err| StepError::Transient(err.to_string()))
    }
}

fn label(data: &PhysicalData) -> Result<&str, StepError> {
    data.label
        .as_deref()
        .ok_or_else(|| StepError::Failed("the saga names no backup label: backup recorded none".into()))
}

impl SagaDef for PhysicalSaga<'_> {
    type Step = PhysicalStep;
    type Data = PhysicalData;
    const KIND: &'static str = KIND_NAME;
    const AREA: crate::evidence::Area = crate::evidence::Area::Backup;
    const RESUME: &'static str = "vigil backup resume";

    async fn act(
        &self,
        saga: &SagaRow,
        data: &PhysicalData,
        step: PhysicalStep,
    ) -> Result<Option<PhysicalData>, StepError> {
        match step {
            PhysicalStep::Backup => Ok(Some(self.backup(saga, data).await?)),
            PhysicalStep::Verify => self.verify(saga, data).await.map(|()| None),
        }
    }

    async fn undo(&self, saga: &SagaRow, data: &PhysicalData, step: PhysicalStep) -> Result<(), StepError> {
        match step {
            PhysicalStep::Backup => {
                if let Some(label) = &data.label {
                    self.repo.expire(label).await?;
                }
                let reason = saga.error.clone().unwrap_or_else(|| "rolled back".into());
                Ok(catalog::set_status(
                    self.backups.ctx.db,
                    &data.backup_id,
                    Status::Failed,
                    Some(&reason),
                    &self.backups.now(),
                )
                .await?)
            }
            PhysicalStep::Verify => Ok(()),
        }
    }
}

impl Backups<'_> {
    /// The set's stanza, with its passphrase read.
    pub async fn repo(&self, pg: &PgBackRestSet) -> Result<Repo, BackupError> {
        repo(&self.ctx.stores, pg).await
    }

    /// This process's private folder (0700) for password files and staged dumps.
    pub(crate) async fn scratch_folder(&self) -> Result<std::path::PathBuf, StepError> {
        let data_dir = self.ctx.plan.controller.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::secret::scratch_dir(&data_dir))
            .await
            .map_err(|err| StepError::Failed(format!("preparing the scratch folder stopped: {err}")))?
            .map_err(|err| StepError::Failed(format!("cannot prepare the scratch folder: {err}")))
    }
}

/// Backs up pgBackRest set `name` now.
pub(super) async fn run(
    backups: &Backups<'_>,
    name: &str,
    set: &BackupSet,
    pg: &PgBackRestSet,
    id: &str,
    kind: Option<BackupType>,
) -> Result<BackupReport, BackupError> {
    let repo = backups.repo(pg).await?;
    let known_labels = repo.info().await?.backups.into_iter().map(|b| b.label).collect();
    let location = format!("pgbackrest:{}", pg.repo.stanza);
    let started = catalog::Started { id, set: name, target: &set.target.name, method: METHOD, location: &location };
    catalog::started(backups.ctx.db, &started, &backups.now()).await?;
    let def = PhysicalSaga { backups, set, repo };
    let data = PhysicalData {
        set: name.to_owned(),
        backup_id: id.to_owned(),
        backup_type: kind.unwrap_or(pg.backup_type),
        known_labels,
        label: None,
    };
    let (saga, ended) = backups.executor().start(&def, id, &Subject::Backup(name.to_owned()), data).await?;
    report(backups, name, &saga, ended).await
}

async fn report(backups: &Backups<'_>, name: &str, saga: &SagaRow, ended: Ended) -> Result<BackupReport, BackupError> {
    let data: PhysicalData = saga.decode()?;
    let entry = catalog::get(backups.ctx.db, &data.backup_id).await?;
    Ok(BackupReport {
        set: name.to_owned(),
        method: METHOD,
        location: entry.as_ref().map(|e| e.location.clone()).unwrap_or_default(),
        bytes: entry.as_ref().and_then(|e| e.bytes),
        verified: entry.is_some_and(|e| e.status == Status::Verified),
        backup_id: data.backup_id,
        ended,
    })
}

/// Resumes a pgBackRest saga a crash left in flight.
pub(super) async fn resume(backups: &Backups<'_>, saga: SagaRow) -> Result<BackupReport, BackupError> {
    let name = saga.subject.name().to_owned();
    let set = backups.set(&name)?;
    let crate::config::BackupMethod::PgBackRest(pg) = &set.method else {
        return Err(BackupError::UnknownSet(name));
    };
    let def = PhysicalSaga { backups, set, repo: backups.repo(pg).await? };
    let (saga, ended) = backups.executor().run(&def, saga).await?;
    report(backups, &name, &saga, ended).await
}

/// The stanza of `pg`, with its passphrase read through `stores`.
pub async fn repo(stores: &Stores<'_>, pg: &PgBackRestSet) -> Result<Repo, BackupError> {
    let pass = match &pg.cipher_pass {
        None => None,
        Some(reference) => Some(stores.resolve(reference).await.map_err(|err| BackupError::Admin {
            target: format!("cipher_pass of stanza {}", pg.repo.stanza),
            why: err.to_string(),
        })?),
    };
    Ok(Repo::new(pg.repo.clone(), pass))
}

/// The archive health of pgBackRest set `name`: the source's archiver and the repository.
/// Nothing failing to answer stops it: what could not be read is said in `problems`. It only
/// reads, and needs no ledger, so `vigil status` writes nothing.
pub async fn archive_health(
    plan: &Plan,
    stores: &Stores<'_>,
    clock: &dyn Clock,
    name: &str,
) -> Result<ArchiveHealth, BackupError> {
    let set = plan.backups.get(name).ok_or_else(|| BackupError::UnknownSet(name.to_owned()))?;
    let crate::config::BackupMethod::PgBackRest(pg) = &set.method else {
        return Err(BackupError::NotPhysical(name.to_owned()));
    };
    let mut health = ArchiveHealth {
        set: name.to_owned(),
        stanza: pg.repo.stanza.clone(),
        archiver: None,
        archiver_error: None,
        repository: None,
        archive_max: None,
        newest_backup: None,
        newest_backup_age_secs: None,
        rpo_exposure_secs: None,
        problems: Vec::new(),
    };
    let archiver = match source(stores, set).await {
        Ok((credential, endpoint)) => {
            archive::archiver_status(&endpoint, &credential).await.map_err(|err| err.to_string())
        }
        Err(err) => Err(err),
    };
    match archiver {
        Ok(archiver) => {
            if archiver.archive_mode == "off" {
                health.problems.push("archive_mode is off on the source: nothing is archived".into());
            }
            health.rpo_exposure_secs = Some(archiver.oldest_waiting_secs + archiver.archive_timeout_secs as f64);
            health.archiver = Some(archiver);
            if let Some(failure) = health.failure() {
                health.problems.push(failure);
            }
        }
        Err(err) => {
            health.problems.push(format!("cannot read the source's archiver: {err}"));
            health.archiver_error = Some(err);
        }
    }
    match repo(stores, pg).await?.info().await {
        Ok(info) => {
            if info.status != "ok" {
                health.problems.push(format!("stanza {}: {}", pg.repo.stanza, info.status));
            }
            if let Some(newest) = info.backups.last() {
                health.newest_backup = Some(newest.label.clone());
                health.newest_backup_age_secs = Some(clock.now().timestamp() - newest.stop);
            } else {
                health.problems.push(format!("stanza {} holds no backup yet", pg.repo.stanza));
            }
            health.archive_max = info.archive_max.clone();
            health.repository = Some(info.status);
        }
        Err(err) => health.problems.push(err.to_string()),
    }
    Ok(health)
}

/// The set's target and the credential vigil reads it with (`backup_credential`, else admin).
async fn source(stores: &Stores<'_>, set: &BackupSet) -> Result<(crate::secret::Credential, Endpoint), String> {
    let target = &set.target.value;
    let reference = target.backup_credential.as_ref().unwrap_or(&target.admin);
    let credential = stores.login(reference).await.map_err(|err| err.to_string())?;
    Ok((credential, target.endpoint()))
}

/// A pgBackRest set's archiving, as `vigil status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveHealth {
    /// The set.
    pub set: String,
    /// Its stanza.
    pub stanza: String,
    /// The source's archiver, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver: Option<ArchiverStatus>,
    /// Why the source could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver_error: Option<String>,
    /// The repository's status (`ok`, or pgBackRest's reason), when `info` ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The newest WAL segment in the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_max: Option<String>,
    /// The newest backup's label and age, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_backup: Option<String>,
    /// Its age, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_backup_age_secs: Option<i64>,
    /// How much committed data a restore now would lose at most, in seconds: the oldest
    /// segment still waiting to be archived, plus up to `archive_timeout` for the segment
    /// being written. `None` when the source could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_exposure_secs: Option<f64>,
    /// What is wrong, one line each; empty when archiving is healthy.
    pub problems: Vec<String>,
}

impl ArchiveHealth {
    /// The archive failure a drill's failed RPO should name, if archiving is failing.
    pub fn failure(&self) -> Option<String> {
        let archiver = self.archiver.as_ref()?;
        archiver.failing.then(|| {
            format!(
                "WAL archiving of set {} is failing: {} failed attempt(s), the last for {} at {}; {} segment(s) waiting, the oldest for {:.0}s",
                self.set,
                archiver.failed_count,
                archiver.last_failed_wal.as_deref().unwrap_or("?"),
                archiver.last_failed_at.as_deref().unwrap_or("?"),
                archiver.waiting_segments,
                archiver.oldest_waiting_secs
            )
        })
    }
}

impl Backups<'_> {
    /// The archive health of pgBackRest set `name` (see [`archive_health`]).
    pub async fn archive_health(&self, name: &str) -> Result<ArchiveHealth, BackupError> {
        archive_health(self.ctx.plan, &self.ctx.stores, self.ctx.clock, name).await
    }

    /// Writes the heartbeat row of pgBackRest set `name` on its source, as the target's admin
    /// (it creates a table); returns the time written, by the source's clock.
    pub async fn heartbeat(&self, name: &str) -> Result<String, BackupError> {
        let set = self.set(name)?;
        if !matches!(set.method, crate::config::BackupMethod::PgBackRest(_)) {
            return Err(BackupError::NotPhysical(name.to_owned()));
        }
        let target = &set.target.value;
        let admin = self
            .ctx
            .stores
            .login(&target.admin)
            .await
            .map_err(|err| BackupError::Admin { target: set.target.name.clone(), why: err.to_string() })?;
        archive::beat(&target.endpoint(), &admin, name).await.map_err(BackupError::Engine)
    }
}
