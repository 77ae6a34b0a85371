//! Drills of RDS sets: the newest available snapshot of the set (or the instance at its latest
//! restorable time) restored into a new temporary instance, waited for, checked through its
//! endpoint when vigil can reach it, and deleted without a final snapshot.

use std::time::Duration;

use super::{Check, DrillData, DrillSaga, Located, RestoreInto};
use crate::backup::catalog;
use crate::config::RdsSource;
use crate::engines::Endpoint;
use crate::engines::scratch::ScratchDb;
use crate::rds::{Instances as _, RdsError, Snapshots as _};
use crate::saga::StepError;

/// How often a restoring instance is asked whether it is available.
const POLL: Duration = Duration::from_secs(15);

/// The temporary instance of drill `drill`'s run `run`: `vigil-drill-`, the drill's name and
/// the run id's random part, within RDS's rules (letters, digits and single hyphens, a letter
/// first, at most 63 characters).
pub(super) fn instance_id(drill: &str, run: &str) -> String {
    let name: String =
        drill.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let name = name.split('-').filter(|part| !part.is_empty()).collect::<Vec<_>>().join("-");
    let suffix: String = run.rsplit('-').next().unwrap_or(run).chars().filter(char::is_ascii_alphanumeric).collect();
    let name = &name[..name.len().min(63 - "vigil-drill--".len() - suffix.len())];
    format!("vigil-drill-{}-{suffix}", name.trim_end_matches('-'))
}

fn rds_step(err: RdsError) -> StepError {
    if err.is_transient() { StepError::Transient(err.to_string()) } else { StepError::Failed(err.to_string()) }
}

/// The instance fields of an RDS drill's data.
fn instance(data: &DrillData) -> Result<(&str, RdsSource, &str), StepError> {
    match &data.into {
        RestoreInto::Instance { source_instance, source, instance } => Ok((source_instance, *source, instance)),
        other => Err(StepError::Failed(format!("this drill restores into {other}, not an RDS instance"))),
    }
}

impl DrillSaga<'_, '_> {
    async fn rds(&self) -> Result<crate::rds::AwsRds, StepError> {
        crate::rds::connect(self.drills.ctx().plan.aws.as_ref()).await.map_err(rds_step)
    }

    /// The newest available snapshot of the set, or the source's latest restorable time.
    pub(super) async fn rds_locate(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let (source_instance, source, _) = instance(data)?;
        let rds = self.rds().await?;
        let located = match source {
            RdsSource::Snapshot => {
                let entries = catalog::list(self.drills.ctx().db, Some(&data.backup_set)).await?;
                let Some(entry) =
                    entries.iter().find(|e| e.method == "rds_snapshot" && e.status == catalog::Status::Verified)
                else {
                    return Err(StepError::Failed(format!(
                        "no available snapshot of set {} to restore; run `vigil backup run {}` first",
                        data.backup_set, data.backup_set
                    )));
                };
                let snapshot = rds.describe(&entry.location).await.map_err(rds_step)?.ok_or_else(|| {
                    StepError::Failed(format!("snapshot {} of backup {} is gone from RDS", entry.location, entry.id))
                })?;
                if snapshot.status != "available" {
                    return Err(StepError::Failed(format!("snapshot {} is {}", entry.location, snapshot.status)));
                }
                let created = snapshot.created.map_or_else(|| entry.started_at.clone(), |t| t.to_rfc3339());
                Located {
                    backup_id: entry.id.clone(),
                    snapshot_time: created,
                    location: entry.location.clone(),
                    bytes: None,
                }
            }
            RdsSource::PointInTime => {
                let found = rds
                    .describe_instance(source_instance)
                    .await
                    .map_err(rds_step)?
                    .ok_or_else(|| StepError::Failed(format!("RDS instance {source_instance} does not exist")))?;
                let Some(latest) = found.latest_restorable_time else {
                    return Err(StepError::Failed(format!(
                        "RDS instance {source_instance} has no latest restorable time: turn on automated backups (a retention period of a day or more)"
                    )));
                };
                Located {
                    backup_id: format!("{source_instance}@{}", latest.to_rfc3339()),
                    snapshot_time: latest.to_rfc3339(),
                    location: format!("RDS instance {source_instance} at its latest restorable time"),
                    bytes: None,
                }
            }
        };
        let mut found = data.clone();
        found.backup = Some(located);
        Ok(found)
    }

    /// Restores into the temporary instance (again after a crash: one of that name is the same
    /// restore) and waits until it is available, for as long as the RTO target allows.
    pub(super) async fn rds_restore(&self, data: &DrillData) -> Result<(), StepError> {
        let (source_instance, source, instance) = instance(data)?;
        let located = super::located(data)?;
        let rds = self.rds().await?;
        let tags = [("vigil:drill".to_owned(), data.drill.clone()), ("vigil:temporary".to_owned(), "true".to_owned())];
        match source {
            RdsSource::Snapshot => rds.restore_snapshot(&located.location, instance, &tags).await,
            RdsSource::PointInTime => rds.restore_latest(source_instance, instance, &tags).await,
        }
        .map_err(rds_step)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(data.rto_target_secs.max(60));
        loop {
            let status = rds.describe_instance(instance).await.map_err(rds_step)?.map(|i| i.status);
            match status.as_deref() {
                Some("available") => return Ok(()),
                Some("failed" | "incompatible-restore" | "incompatible-parameters" | "storage-full") => {
                    return Err(StepError::Failed(format!(
                        "RDS instance {instance} is {}",
                        status.unwrap_or_default()
                    )));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(StepError::Failed(format!(
                        "RDS instance {instance} was not available within the RTO target ({}s)",
                        data.rto_target_secs
                    )));
                }
                _ => {}
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.drills.ctx().cancel.cancelled() => {
                    return Err(StepError::Cancelled(format!("waiting for RDS instance {instance}")));
                }
            }
        }
    }

    /// The drill's credential checks and assertions through the restored instance's endpoint,
    /// as the backed-up target's admin; each reported as not run, saying why, when vigil cannot
    /// reach it. RDS keeps no row counts to compare with.
    pub(super) async fn rds_check(&self, data: &DrillData) -> Result<DrillData, StepError> {
        let (_, _, instance) = instance(data)?;
        let drill = self.drill()?;
        let set = self.set(data)?;
        let target = &set.target;
        let rds = self.rds().await?;
        let endpoint = rds.describe_instance(instance).await.map_err(rds_step)?.and_then(|i| i.endpoint);
        let reachable = match &endpoint {
            None => Err(format!("RDS reports no endpoint for {instance}")),
            Some((host, port)) => {
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                let resolved = tokio::time::timeout(Duration::from_secs(5), lookup).await;
                match resolved.ok().and_then(Result::ok).map(|mut found| found.next()) {
                    Some(Some(_)) => Ok((host.clone(), *port)),
                    _ => Err(format!("the endpoint {host}:{port} of {instance} does not resolve from here")),
                }
            }
        };
        let checks = match reachable {
            Err(why) => {
                let why = format!("{why}, so its data was not checked");
                let mut checks = vec![Check::not_run("data", why.clone())];
                checks.extend(
                    drill
                        .check_credentials
                        .iter()
                        .map(|name| Check::not_run(format!("credential {name}"), why.clone())),
                );
                checks.extend(
                    (1..=drill.assertions.len()).map(|i| Check::not_run(format!("assertion {i}"), why.clone())),
                );
                checks
            }
            Ok((host, port)) => {
                let admin = self.admin(target).await?;
                let database = target.value.database.clone().unwrap_or_else(|| "postgres".into());
                let server = Endpoint { host, port, database: Some(database.clone()), tls: target.value.tls.clone() };
                let restored = ScratchDb::new(target.value.engine, server, admin, database);
                // The checking role goes with the temporary instance.
                let reader = self.reader(&restored, data).await?;
                self.queries(drill, &restored, &reader).await?
            }
        };
        Ok(self.verdict(data, checks))
    }

    /// Deletes the temporary instance, without a final snapshot; one gone already is fine.
    pub(super) async fn rds_delete(&self, data: &DrillData) -> Result<(), StepError> {
        let (_, _, instance) = instance(data)?;
        self.rds().await?.delete_instance(instance).await.map_err(rds_step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_instance_ids_follow_rds_rules() {
        assert_eq!(instance_id("orders-restore", "20261130T021200Z-0a1b2c3d"), "vigil-drill-orders-restore-0a1b2c3d");
        assert_eq!(instance_id("a__b--c", "x-ff"), "vigil-drill-a-b-c-ff");
        let long = instance_id(&"x".repeat(63), "20261130T021200Z-0a1b2c3d");
        assert!(long.len() <= 63 && !long.contains("--") && long.ends_with("-0a1b2c3d"), "{long}");
    }
}
