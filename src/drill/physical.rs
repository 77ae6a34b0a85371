//! Drills of pgbackrest sets: the stanza restored by `pgbackrest restore` into a scratch data
//! directory (to the end of the archive, or to the drill's target time), a temporary PostgreSQL
//! server started on it, recovery awaited until the server is promoted, the checks run, and the
//! server stopped and its folder removed (`engines::server`).
//!
//! The recovery point is measured, not assumed: the newest heartbeat row the restored copy holds
//! (vigil writes one to the source on the set's `heartbeat` interval), else the commit time of the
//! last transaction recovery replayed. RPO is the drill's start minus that point. When RPO misses
//! its target, the verdict names the source's archive failure if archiving is failing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Check, DrillData, DrillSaga, Located, Phase, RecoveryPoint, RestoreInto};
use crate::config::{BackupMethod, DrillRestore, PgBackRestSet};
use crate::engines::Engine;
use crate::engines::archive;
use crate::engines::scratch::ScratchDb;
use crate::engines::server::{ServerError, TempServer, default_bin_dir};
use crate::pgbackrest::RecoveryTarget;
use crate::saga::StepError;
use crate::secret::Credential;

/// The longest a restored server may take to finish recovery, beyond the drill's RTO target:
/// past that the drill has failed its RTO anyway, and waiting longer only holds the folder.
const RECOVERY_GRACE: Duration = Duration::from_secs(60);

impl From<ServerError> for StepError {
    fn from(err: ServerError) -> Self {
        Self::Failed(err.to_string())
    }
}

/// The cluster fields of a pgBackRest drill's data.
fn cluster(data: &DrillData) -> Result<(&str, &PathBuf, Option<&str>), StepError> {
    match &data.into {
        RestoreInto::Cluster { stanza, folder, target_time } => Ok((stanza, folder, target_time.as_deref())),
        other => Err(StepError::Failed(format!("this drill restores into {other}, not a temporary server"))),
    }
}

impl DrillSaga<'_, '_> {
    /// The drill's pgbackrest set, as configured now.
    fn physical_set(&self, data: &DrillData) -> Result<&PgBackRestSet, StepError> {
        match &self.set(data)?.method {
            BackupMethod::PgBackRest(pg) => Ok(pg),
            _ => Err(StepError::Failed(format!(
                "backup set {} is no longer a pgbackrest set, but this drill began as a point-in-time restore; run it again",
                data.backup_set
            ))),
        }
    }

    /// The temporary server of the drill, with the binaries of the stanza's PostgreSQL version.
    fn server(&self, data: &DrillData, version: &str) -> Result<TempServer, StepError> {
        let (_, folder, _) = cluster(data)?;
        let bin = match &self.drill()?.restore {
            DrillRestore::PgBackRest { postgres_bin: Some(bin), .. } => bin.clone(),
            _ => default_bin_dir(version),
        };
        Ok(TempServer::new(bin, folder.clone(), version.to_owned()))
    }

    /// The backup pgBackRest restores from: the newest, or the newest that ended before the
    /// target time (pgBackRest chooses the same one).
    pub(super) async fn physical_locate(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let (stanza, _, target_time) = cluster(data)?;
        let pg = self.physical_set(data)?;
        let info = self.drills.backups.repo(pg).await?.info().await?;
        let target = target_time.map(super::parse_time).transpose()?;
        let chosen = info.backups.iter().rev().find(|b| target.is_none_or(|t| b.stop < t.timestamp()));
        let Some(backup) = chosen else {
            let why = match target_time {
                Some(at) => format!("no backup of stanza {stanza} ended before the target time {at}"),
                None => format!("stanza {stanza} holds no backup"),
            };
            return Err(StepError::Failed(format!("{why}; run `vigil backup run {}` first", data.backup_set)));
        };
        let stop = chrono::DateTime::from_timestamp(backup.stop, 0).unwrap_or_default();
        let mut found = data.clone();
        found.backup = Some(Located {
            backup_id: backup.label.clone(),
            snapshot_time: stop.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            location: format!("pgbackrest:{stanza}/{}", backup.label),
            bytes: Some(backup.repo_size),
        });
        found.pg_version = info.pg_version.clone();
        Ok(found)
    }

    fn version(data: &DrillData) -> Result<&str, StepError> {
        data.pg_version.as_deref().ok_or_else(|| StepError::Failed("locate recorded no PostgreSQL version".into()))
    }

    /// Restores the stanza into the drill's folder and starts a server on it, waiting until
    /// recovery ends. A retried step starts over from an empty folder.
    pub(super) async fn physical_restore(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let (_, _, target_time) = cluster(data)?;
        let pg = self.physical_set(data)?;
        let repo = self.drills.backups.repo(pg).await?;
        let server = self.server(data, Self::version(data)?)?;
        // Asked right before the folder is emptied: a run woken after another took it over
        // stops no server and removes nothing.
        self.drills.ctx().db.check_fence().await?;
        server.stop().await?;
        server.prepare()?;
        let target = match target_time {
            Some(at) => RecoveryTarget::Time(super::parse_time(at)?),
            None => RecoveryTarget::Latest,
        };
        let clock = Instant::now();
        repo.restore(&server.data_dir(), target).await?;
        let restored = clock.elapsed();
        let drill = self.drill()?;
        let user = self.source_admin(data).await?.username;
        let mut started = server.start(&self.password_roles(drill, data), &repo.server_env())?;
        let within = Duration::from_secs(data.rto_target_secs) + RECOVERY_GRACE;
        server.await_promoted(&mut started, &user, within).await.map_err(|err| match (&err, target) {
            (ServerError::Recovery { log, .. }, RecoveryTarget::Time(at))
                if log.contains("recovery ended before configured recovery target was reached") =>
            {
                StepError::Failed(format!(
                    "the archive ends before the target time {}: no transaction committed after it has been archived yet ({err})",
                    at.to_rfc3339()
                ))
            }
            _ => StepError::from(err),
        })?;
        let mut restored_data = data.clone();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        restored_data.phases.retain(|p| !p.phase.starts_with("restore."));
        restored_data.phases.push(Phase { phase: "restore.pgbackrest".into(), millis: millis(restored) });
        restored_data
            .phases
            .push(Phase { phase: "restore.recovery".into(), millis: millis(clock.elapsed() - restored) });
        Ok(restored_data)
    }

    /// The roles asked for a password on the temporary server: those whose credentials the
    /// drill checks, and its checking role (everyone else logs in over the private socket).
    fn password_roles(&self, drill: &crate::config::Drill, data: &DrillData) -> Vec<String> {
        drill
            .check_credentials
            .iter()
            .filter_map(|name| self.drills.ctx().plan.secrets.get(name))
            .filter_map(|spec| spec.kind.db_password().map(|db| db.username.clone()))
            .chain([super::check_role(data)])
            .collect()
    }

    /// The set's target admin credential: its user name exists in the restored cluster.
    async fn source_admin(&self, data: &DrillData) -> Result<Credential, StepError> {
        self.admin(&self.set(data)?.target).await
    }

    /// Checks the restored cluster: amcheck, the credentials and assertions of every drill, and
    /// the heartbeat; the recovery point it reached gives RPO. The bootstrap superuser only
    /// makes the checking role ready and runs pg_amcheck; everything read from the copy
    /// (assertions, the heartbeat, the last replayed transaction) is read as that role, since
    /// the copy's objects are the source's roles' and the server runs as vigil's account.
    pub(super) async fn physical_check(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let set = self.set(data)?;
        let pg = self.physical_set(data)?;
        let drill = self.drill()?;
        let server = self.server(data, Self::version(data)?)?;
        let admin = self.source_admin(data).await?;
        let engine_step = |err: crate::engines::EngineError| StepError::Failed(err.to_string());
        let trusted = |username: String| Credential { username, password: secrecy::SecretString::from(String::new()) };
        let superuser =
            archive::bootstrap_superuser(&server.endpoint(Some("postgres".into())), &trusted(admin.username.clone()))
                .await
                .map_err(engine_step)?;
        let database = set.target.value.database.clone().unwrap_or_else(|| "postgres".into());
        let as_super = trusted(superuser);
        let endpoint = server.endpoint(Some(database.clone()));
        let scratch = ScratchDb::new(Engine::Postgres, server.endpoint(None), as_super.clone(), database);

        let reader = self.reader(&scratch, data).await?;
        let mut checks = Vec::new();
        checks.extend(self.integrity(&scratch).await?);
        checks.extend(self.queries(drill, &scratch, &reader).await?);
        let beat = archive::last_beat(&endpoint, &reader, &data.backup_set).await.map_err(engine_step)?;
        let point = match (&beat, pg.heartbeat) {
            (Some((at, table)), _) => {
                let detail = format!("the restored copy's newest heartbeat is {at} ({table})");
                checks.push(Check::ran("heartbeat", true, detail));
                Some(RecoveryPoint { at: at.clone(), source: "heartbeat".into() })
            }
            (None, Some(interval)) => {
                checks.push(Check::ran(
                    "heartbeat",
                    false,
                    format!("the set beats every {interval}, but the restored copy holds no heartbeat row: `vigil backup heartbeat {}` writes one", data.backup_set),
                ));
                None
            }
            (None, None) => None,
        };
        let point = match point {
            Some(point) => Some(point),
            None => archive::last_replayed(&endpoint, &reader)
                .await
                .map_err(engine_step)?
                .map(|at| RecoveryPoint { at, source: "last replayed transaction".into() }),
        };
        let mut checked = data.clone();
        // Read only when it could explain a missed RPO (a failing archive is the usual reason):
        // a passing drill spends no connection to the source nor a `pgbackrest info` on it.
        let started = super::parse_time(&data.started_at)?;
        let missed = point
            .as_ref()
            .and_then(|p| super::parse_time(&p.at).ok())
            .is_none_or(|at| (started - at).num_seconds() > i64::try_from(data.rpo_target_secs).unwrap_or(i64::MAX));
        if missed {
            checked.archive_problem = match self.drills.backups.archive_health(&data.backup_set).await {
                Ok(health) => health.failure(),
                Err(err) => Some(format!("the source's archive health could not be read: {err}")),
            };
        }
        checked.recovery_point = point;
        Ok(self.verdict(&checked, checks))
    }

    /// Stops the temporary server and removes its folder; idempotent.
    pub(super) async fn physical_remove(&self, data: &DrillData) -> Result<(), StepError> {
        let (_, folder, _) = cluster(data)?;
        // No binary is needed to stop or remove: a version is only a label here.
        let server = TempServer::new(PathBuf::new(), folder.clone(), data.pg_version.clone().unwrap_or_default());
        server.stop().await?;
        server.remove()?;
        Ok(())
    }
}
