//! RDS snapshots: `CreateDBSnapshot` tagged with the vigil backup id, waited on until
//! available (within a bound), and optionally copied to another region under a KMS key. A saga
//! like a dump's: each step recorded before it acts, every step idempotent.

use std::time::Duration;

use super::catalog::{self, Entry, Status};
use super::{BackupError, BackupReport, Backups};
use crate::config::{BackupSet, RdsCopy};
use crate::evidence::{Kind, NewRecord, Outcome};
use crate::rds::{self, RdsError, Snapshots};
use crate::saga::{self, Ended, SagaDef, SagaRow, StepError, Subject};

/// The saga kind.
pub(super) const KIND_NAME: &str = "backup.rds_snapshot";
/// How long a snapshot may take to become available before the backup fails.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(2 * 3600);
/// How often its status is asked.
const POLL: Duration = Duration::from_secs(15);

/// The saga's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStep {
    /// `CreateDBSnapshot`.
    Create,
    /// Waits until it is available.
    Available,
    /// `CopyDBSnapshot` to the configured region, and waits for the copy.
    Copy,
}

impl saga::Step for SnapshotStep {
    const ALL: &'static [Self] = &[Self::Create, Self::Available, Self::Copy];

    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Available => "available",
            Self::Copy => "copy",
        }
    }
}

struct SnapshotSaga<'a> {
    backups: &'a Backups<'a>,
    instance: String,
    copy: Option<&'a RdsCopy>,
    rds: Box<dyn Snapshots>,
    /// RDS in the copy's region, when the set copies its snapshots.
    copy_rds: Option<Box<dyn Snapshots>>,
}

impl From<RdsError> for StepError {
    fn from(err: RdsError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

/// An RDS snapshot identifier for backup `id` of `set`: letters, digits and single hyphens.
fn snapshot_id(set: &str, id: &str) -> String {
    let raw = format!("vigil-{set}-{id}").to_ascii_lowercase();
    let mut out = String::new();
    for c in raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }) {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').chars().take(255).collect()
}

/// What a snapshot saga records: the backup's id and snapshot name, and the ARNs of the
/// snapshot and its copy once they exist.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SnapshotData {
    set: String,
    backup_id: String,
    snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copy_arn: Option<String>,
}

impl SnapshotSaga<'_> {
    fn tags(data: &SnapshotData) -> Vec<(String, String)> {
        vec![("vigil:backup-id".into(), data.backup_id.clone()), ("vigil:set".into(), data.set.clone())]
    }

    /// Waits until `snapshot` is available in `rds`'s region; returns its ARN.
    async fn await_available(rds: &dyn Snapshots, snapshot: &str) -> Result<String, StepError> {
        let deadline = tokio::time::Instant::now() + AVAILABLE_WITHIN;
        loop {
            let found = rds.describe(snapshot).await?;
            let status = found.as_ref().map_or("missing", |s| s.status.as_str()).to_owned();
            match status.as_str() {
                "available" => return Ok(found.map(|s| s.arn).unwrap_or_default()),
                "creating" | "copying" | "pending" => {}
                other => return Err(StepError::Failed(format!("snapshot {snapshot} is {other}, not available"))),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StepError::Failed(format!(
                    "snapshot {snapshot} was not available within {} minutes",
                    AVAILABLE_WITHIN.as_secs() / 60
                )));
            }
            tracing::info!(%snapshot, %status, "waiting for the snapshot");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl SagaDef for SnapshotSaga<'_> {
    type Step = SnapshotStep;
    type Data = SnapshotData;
    const KIND: &'static str = KIND_NAME;
    const AREA: crate::evidence::Area = crate::evidence::Area::Backup;
    const RESUME: &'static str = "vigil backup resume";

    async fn act(
        &self,
        saga: &SagaRow,
        data: &SnapshotData,
        step: SnapshotStep,
    ) -> Result<Option<SnapshotData>, StepError> {
        let (id, snapshot) = (data.backup_id.clone(), data.snapshot.clone());
        let backups = self.backups;
        match step {
            SnapshotStep::Create => {
                self.rds.create(&self.instance, &snapshot, &Self::tags(data)).await?;
                Ok(None)
            }
            SnapshotStep::Available => {
                let arn = Self::await_available(self.rds.as_ref(), &snapshot).await?;
                let now = backups.now();
                catalog::set_status(backups.ctx.db, &id, Status::Verified, None, &now).await?;
                backups
                    .ctx
                    .ledger
                    .append(NewRecord {
                        kind: Kind::SnapshotAvailable.into(),
                        subject: saga.subject.name().to_owned(),
                        outcome: Outcome::Succeeded,
                        details: serde_json::json!({ "backup_id": id, "snapshot": snapshot, "arn": arn, "instance": self.instance }),
                    })
                    .await
                    .map_err(|err| StepError::Transient(err.to_string()))?;
                Ok(Some(SnapshotData { arn: Some(arn), ..data.clone() }))
            }
            SnapshotStep::Copy => {
                let (Some(copy), Some(copy_rds)) = (self.copy, &self.copy_rds) else { return Ok(None) };
                let source = data.arn.clone().unwrap_or_else(|| snapshot.clone());
                copy_rds.copy(&source, &snapshot, copy.kms_key_id.as_deref(), &Self::tags(data)).await?;
                let arn = Self::await_available(copy_rds.as_ref(), &snapshot).await?;
                backups
                    .ctx
                    .ledger
                    .append(NewRecord {
                        kind: Kind::SnapshotCopied.into(),
                        subject: saga.subject.name().to_owned(),
                        outcome: Outcome::Succeeded,
                        details: serde_json::json!({ "backup_id": id, "region": copy.region, "arn": arn, "kms_key_id": copy.kms_key_id }),
                    })
                    .await
                    .map_err(|err| StepError::Transient(err.to_string()))?;
                Ok(Some(SnapshotData { copy_arn: Some(arn), ..data.clone() }))
            }
        }
    }

    async fn undo(&self, saga: &SagaRow, data: &SnapshotData, step: SnapshotStep) -> Result<(), StepError> {
        let (id, snapshot) = (&data.backup_id, &data.snapshot);
        match step {
            SnapshotStep::Create => {
                self.rds.delete(snapshot).await?;
                let reason = saga.error.clone().unwrap_or_else(|| "rolled back".into());
                Ok(catalog::set_status(self.backups.ctx.db, id, Status::Failed, Some(&reason), &self.backups.now())
                    .await?)
            }
            SnapshotStep::Available => Ok(()),
            SnapshotStep::Copy => match &self.copy_rds {
                Some(copy_rds) => Ok(copy_rds.delete(snapshot).await?),
                None => Ok(()),
            },
        }
    }
}

/// RDS in the set's region, and in the copy's when it copies.
async fn clients(
    backups: &Backups<'_>,
    copy: Option<&RdsCopy>,
) -> Result<(Box<dyn Snapshots>, Option<Box<dyn Snapshots>>), RdsError> {
    let home = rds::connect(backups.ctx.plan.aws.as_ref()).await?;
    let copies = copy.map(|copy| Box::new(home.in_region(&copy.region)) as Box<dyn Snapshots>);
    Ok((Box::new(home), copies))
}

/// Snapshots set `name` now.
pub(super) async fn run(
    backups: &Backups<'_>,
    name: &str,
    set: &BackupSet,
    id: &str,
    instance: &str,
    copy: Option<&RdsCopy>,
) -> Result<BackupReport, BackupError> {
    let (rds, copy_rds) = clients(backups, copy).await?;
    let snapshot = snapshot_id(name, id);
    let started =
        catalog::Started { id, set: name, target: &set.target.name, method: "rds_snapshot", location: &snapshot };
    catalog::started(backups.ctx.db, &started, &backups.now()).await?;
    let def = SnapshotSaga { backups, instance: instance.to_owned(), copy, rds, copy_rds };
    let data = SnapshotData { set: name.to_owned(), backup_id: id.to_owned(), snapshot, arn: None, copy_arn: None };
    let (saga, ended) = backups.executor().start(&def, id, &Subject::Backup(name.to_owned()), data).await?;
    report(name, &saga, ended)
}

fn report(name: &str, saga: &SagaRow, ended: Ended) -> Result<BackupReport, BackupError> {
    let data: SnapshotData = saga.decode()?;
    Ok(BackupReport {
        set: name.to_owned(),
        backup_id: data.backup_id,
        method: "rds_snapshot",
        location: data.arn.unwrap_or(data.snapshot),
        bytes: None,
        verified: ended == Ended::Done,
        ended,
    })
}

/// Resumes a snapshot saga a crash left in flight.
pub(super) async fn resume(backups: &Backups<'_>, saga: SagaRow) -> Result<BackupReport, BackupError> {
    let name = saga.subject.name().to_owned();
    let set = backups.set(&name)?;
    let crate::config::BackupMethod::RdsSnapshot { instance, copy } = &set.method else {
        return Err(BackupError::UnknownSet(name));
    };
    let (rds, copy_rds) = clients(backups, copy.as_ref()).await?;
    let def = SnapshotSaga { backups, instance: instance.clone(), copy: copy.as_ref(), rds, copy_rds };
    let (saga, ended) = backups.executor().run(&def, saga).await?;
    report(&name, &saga, ended)
}

/// Deletes a pruned snapshot (and its copy).
pub(super) async fn delete(backups: &Backups<'_>, entry: &Entry) -> Result<(), BackupError> {
    let set = backups.set(&entry.set)?;
    let copy = match &set.method {
        crate::config::BackupMethod::RdsSnapshot { copy, .. } => copy.as_ref(),
        crate::config::BackupMethod::Dump { .. } | crate::config::BackupMethod::PgBackRest(_) => None,
    };
    let (rds, copy_rds) = clients(backups, copy).await?;
    rds.delete(&entry.location).await?;
    // The snapshot is gone, so the backup is: a copy that cannot be deleted now is named and
    // left over, not a reason to call the backup verified again.
    if let Some(copy_rds) = copy_rds
        && let Err(err) = copy_rds.delete(&entry.location).await
    {
        tracing::warn!(%err, backup = %entry.id, "the pruned backup's snapshot is deleted, but its copy in the other region is left over");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_valid_rds_identifiers() {
        assert_eq!(
            snapshot_id("orders_nightly", "20261124T020000Z-00ff00ff"),
            "vigil-orders-nightly-20261124t020000z-00ff00ff"
        );
        assert_eq!(snapshot_id("a--b_", "X"), "vigil-a-b-x");
    }
}
