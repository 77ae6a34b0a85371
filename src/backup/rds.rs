//! RDS snapshots: `CreateDBSnapshot` tagged with the vigil backup id, waited on until
//! available (within a bound), and optionally copied to another region under a KMS key. A saga
//! like a dump's: each step recorded before it acts, every step idempotent.

use std::time::Duration;

use aws_sdk_rds::types::Tag;

use super::catalog::{self, Entry, Status};
use super::{BackupError, BackupReport, Backups};
use crate::aws::{SdkFailure, sdk_failure};
use crate::config::{BackupSet, RdsCopy};
use crate::evidence::{Kind, NewRecord, Outcome};
use crate::saga::{self, Ended, SagaDef, SagaRow, StepError, Subject};

/// The saga kind.
pub(super) const KIND_NAME: &str = "backup.rds_snapshot";
/// How long a snapshot may take to become available before the backup fails.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(2 * 3600);
/// How often its status is asked.
const POLL: Duration = Duration::from_secs(15);

/// Why an RDS call failed.
#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// `[aws]` is missing.
    #[error("rds targets need an [aws] section in vigil.toml")]
    NotConfigured,
    /// The AWS credentials could not be read.
    #[error("cannot read AWS credentials: {0}")]
    Credentials(String),
    /// RDS refused or failed.
    #[error("RDS could not {what}: {reason}")]
    Failed {
        /// What was asked.
        what: &'static str,
        /// Its words.
        reason: String,
    },
}

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
    client: aws_sdk_rds::Client,
    copy_client: Option<aws_sdk_rds::Client>,
}

fn step_error<E, R>(what: &str, err: &aws_sdk_rds::error::SdkError<E, R>) -> StepError
where
    E: aws_sdk_rds::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match sdk_failure(err) {
        SdkFailure::Transient(reason) => StepError::Transient(format!("RDS could not {what}: {reason}")),
        SdkFailure::NotFound(reason) | SdkFailure::Refused(reason) => {
            StepError::Failed(format!("RDS could not {what}: {reason}"))
        }
    }
}

fn code<E, R>(err: &aws_sdk_rds::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_rds::error::ProvideErrorMetadata,
{
    err.as_service_error().and_then(aws_sdk_rds::error::ProvideErrorMetadata::code)
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
    fn tags(data: &SnapshotData) -> Vec<Tag> {
        vec![
            Tag::builder().key("vigil:backup-id").value(&data.backup_id).build(),
            Tag::builder().key("vigil:set").value(&data.set).build(),
        ]
    }

    /// Waits until `snapshot` is available in `client`'s region; returns its ARN.
    async fn await_available(&self, client: &aws_sdk_rds::Client, snapshot: &str) -> Result<String, StepError> {
        let deadline = tokio::time::Instant::now() + AVAILABLE_WITHIN;
        loop {
            let out = client
                .describe_db_snapshots()
                .db_snapshot_identifier(snapshot)
                .send()
                .await
                .map_err(|err| step_error("describe the snapshot", &err))?;
            let found = out.db_snapshots().first().cloned();
            let status = found.as_ref().and_then(|s| s.status()).unwrap_or("missing").to_owned();
            match status.as_str() {
                "available" => return Ok(found.and_then(|s| s.db_snapshot_arn).unwrap_or_default()),
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

    async fn delete(client: &aws_sdk_rds::Client, snapshot: &str) -> Result<(), StepError> {
        match client.delete_db_snapshot().db_snapshot_identifier(snapshot).send().await {
            Ok(_) => Ok(()),
            Err(err) if code(&err) == Some("DBSnapshotNotFound") => Ok(()),
            Err(err) => Err(step_error("delete the snapshot", &err)),
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
                let created = self
                    .client
                    .create_db_snapshot()
                    .db_instance_identifier(&self.instance)
                    .db_snapshot_identifier(&snapshot)
                    .set_tags(Some(Self::tags(data)))
                    .send()
                    .await;
                match created {
                    // Created by this saga before a crash: the same snapshot.
                    Err(err) if code(&err) == Some("DBSnapshotAlreadyExists") => {}
                    other => drop(other.map_err(|err| step_error("create the snapshot", &err))?),
                }
                Ok(None)
            }
            SnapshotStep::Available => {
                let arn = self.await_available(&self.client, &snapshot).await?;
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
                let (Some(copy), Some(client)) = (self.copy, &self.copy_client) else { return Ok(None) };
                let source = data.arn.clone().unwrap_or_else(|| snapshot.clone());
                let copied = client
                    .copy_db_snapshot()
                    .source_db_snapshot_identifier(source)
                    .target_db_snapshot_identifier(&snapshot)
                    .set_kms_key_id(copy.kms_key_id.clone())
                    .set_tags(Some(Self::tags(data)))
                    .send()
                    .await;
                match copied {
                    Err(err) if code(&err) == Some("DBSnapshotAlreadyExists") => {}
                    other => drop(other.map_err(|err| step_error("copy the snapshot", &err))?),
                }
                let arn = self.await_available(client, &snapshot).await?;
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
                Self::delete(&self.client, snapshot).await?;
                let reason = saga.error.clone().unwrap_or_else(|| "rolled back".into());
                Ok(catalog::set_status(self.backups.ctx.db, id, Status::Failed, Some(&reason), &self.backups.now())
                    .await?)
            }
            SnapshotStep::Available => Ok(()),
            SnapshotStep::Copy => match &self.copy_client {
                Some(client) => Self::delete(client, snapshot).await,
                None => Ok(()),
            },
        }
    }
}

async fn clients(
    backups: &Backups<'_>,
    copy: Option<&RdsCopy>,
) -> Result<(aws_sdk_rds::Client, Option<aws_sdk_rds::Client>), RdsError> {
    let aws = backups.ctx.plan.aws.as_ref().ok_or(RdsError::NotConfigured)?;
    let sdk = crate::aws::sdk_config(aws).await.map_err(|err| RdsError::Credentials(err.to_string()))?;
    let copy_client = copy.map(|copy| {
        let config = aws_sdk_rds::config::Builder::from(&sdk)
            .region(aws_sdk_rds::config::Region::new(copy.region.clone()))
            .build();
        aws_sdk_rds::Client::from_conf(config)
    });
    Ok((aws_sdk_rds::Client::new(&sdk), copy_client))
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
    let (client, copy_client) = clients(backups, copy).await?;
    let snapshot = snapshot_id(name, id);
    let started =
        catalog::Started { id, set: name, target: &set.target.name, method: "rds_snapshot", location: &snapshot };
    catalog::started(backups.ctx.db, &started, &backups.now()).await?;
    let def = SnapshotSaga { backups, instance: instance.to_owned(), copy, client, copy_client };
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
    let (client, copy_client) = clients(backups, copy.as_ref()).await?;
    let def = SnapshotSaga { backups, instance: instance.clone(), copy: copy.as_ref(), client, copy_client };
    let (saga, ended) = backups.executor().run(&def, saga).await?;
    report(&name, &saga, ended)
}

/// Deletes a pruned snapshot (and its copy).
pub(super) async fn delete(backups: &Backups<'_>, entry: &Entry) -> Result<(), BackupError> {
    let set = backups.set(&entry.set)?;
    let copy = match &set.method {
        crate::config::BackupMethod::RdsSnapshot { copy, .. } => copy.as_ref(),
        crate::config::BackupMethod::Dump { .. } => None,
    };
    let (client, copy_client) = clients(backups, copy).await?;
    let failed = |err: StepError| RdsError::Failed { what: "delete the snapshot", reason: err.to_string() };
    SnapshotSaga::delete(&client, &entry.location).await.map_err(failed)?;
    if let Some(client) = copy_client {
        SnapshotSaga::delete(&client, &entry.location).await.map_err(failed)?;
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
