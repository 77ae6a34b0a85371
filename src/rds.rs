//! Amazon RDS behind two small traits: DB snapshots (create, describe, copy into another
//! region, delete), which backups take, and DB instances (restore from a snapshot or to the
//! latest restorable time, describe, delete), which restore drills of RDS sets restore into. RDS knows nothing of backups, sagas or evidence; every call is idempotent
//! (a snapshot that exists already, or is gone already, is success).

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use crate::aws::{AwsSettings, SdkFailure, sdk_failure};

/// Why an RDS call failed.
#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// `[aws]` is missing.
    #[error("rds targets need an [aws] section in vigil.toml")]
    NotConfigured,
    /// The AWS credentials could not be read.
    #[error("cannot read AWS credentials: {0}")]
    Credentials(String),
    /// Throttled, unreachable or a 5xx: retrying may pass.
    #[error("RDS could not {what} for now: {reason}")]
    Transient {
        /// What was asked.
        what: &'static str,
        /// Its words.
        reason: String,
    },
    /// RDS refused or failed.
    #[error("RDS could not {what}: {reason}")]
    Failed {
        /// What was asked.
        what: &'static str,
        /// Its words.
        reason: String,
    },
}

impl RdsError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// A snapshot as RDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `creating`, `available`, `copying`, `failed`, …
    pub status: String,
    /// Its ARN.
    pub arn: String,
    /// When RDS took it.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

/// DB snapshots in one region.
pub trait Snapshots: Send + Sync {
    /// Snapshots `instance` as `snapshot`, tagged; one of that name already is success.
    fn create<'a>(
        &'a self,
        instance: &'a str,
        snapshot: &'a str,
        tags: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>>;

    /// The snapshot named `snapshot`, if there is one.
    fn describe<'a>(&'a self, snapshot: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>, RdsError>>;

    /// Copies `source` (an ARN, from any region) into this region as `snapshot`, encrypted under
    /// `kms_key_id` when given, tagged; one of that name already is success.
    fn copy<'a>(
        &'a self,
        source: &'a str,
        snapshot: &'a str,
        kms_key_id: Option<&'a str>,
        tags: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>>;

    /// Deletes `snapshot`; one that is gone already is success.
    fn delete<'a>(&'a self, snapshot: &'a str) -> BoxFuture<'a, Result<(), RdsError>>;
}

/// A DB instance as RDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `creating`, `available`, `deleting`, …
    pub status: String,
    /// Where it listens, once it does.
    pub endpoint: Option<(String, u16)>,
    /// The newest time it can be restored to, for instances with automated backups.
    pub latest_restorable_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// DB instances in one region: what restore drills of RDS sets restore into and delete.
pub trait Instances: Send + Sync {
    /// Restores `snapshot` into a new instance `instance`, tagged; one of that name already is
    /// success (a restore a crash interrupted).
    fn restore_snapshot<'a>(
        &'a self,
        snapshot: &'a str,
        instance: &'a str,
        tags: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>>;

    /// Restores `source` as of its latest restorable time into a new instance `instance`,
    /// tagged; one of that name already is success.
    fn restore_latest<'a>(
        &'a self,
        source: &'a str,
        instance: &'a str,
        tags: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>>;

    /// The instance named `instance`, if there is one.
    fn describe_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Option<Instance>, RdsError>>;

    /// Deletes `instance` without a final snapshot; one that is gone already is success.
    fn delete_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), RdsError>>;
}

/// RDS through the AWS SDK.
pub struct AwsRds {
    client: aws_sdk_rds::Client,
}

impl AwsRds {
    /// The same account's RDS in `region` (where copies go), built from this client's
    /// configuration: the credentials are not read again.
    pub fn in_region(&self, region: &str) -> Self {
        let config = self.client.config().to_builder().region(aws_sdk_rds::config::Region::new(region.to_owned()));
        Self { client: aws_sdk_rds::Client::from_conf(config.build()) }
    }
}

/// RDS in the region of `aws`.
pub async fn connect(aws: Option<&AwsSettings>) -> Result<AwsRds, RdsError> {
    let aws = aws.ok_or(RdsError::NotConfigured)?;
    let sdk = crate::aws::sdk_config(aws).await.map_err(|err| RdsError::Credentials(err.to_string()))?;
    Ok(AwsRds { client: aws_sdk_rds::Client::new(&sdk) })
}

fn error<E, R>(what: &'static str, err: &aws_sdk_rds::error::SdkError<E, R>) -> RdsError
where
    E: aws_sdk_rds::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match sdk_failure(err) {
        SdkFailure::Transient(reason) => RdsError::Transient { what, reason },
        SdkFailure::NotFound(reason) | SdkFailure::Refused(reason) => RdsError::Failed { what, reason },
    }
}

fn code<E, R>(err: &aws_sdk_rds::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_rds::error::ProvideErrorMetadata,
{
    err.as_service_error().and_then(aws_sdk_rds::error::ProvideErrorMetadata::code)
}

/// `result` as success or `what`'s error, with the error whose code is `benign` taken as
/// success: a create that finds its thing already there (made before a crash), or a delete
/// that finds it already gone, is what an idempotent call needs.
fn tolerating<T, E, R>(
    result: Result<T, aws_sdk_rds::error::SdkError<E, R>>,
    benign: &str,
    what: &'static str,
) -> Result<(), RdsError>
where
    E: aws_sdk_rds::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match result {
        Err(err) if code(&err) == Some(benign) => Ok(()),
        other => other.map(drop).map_err(|err| error(what, &err)),
    }
}

fn tags(tags: &[(String, String)]) -> Vec<aws_sdk_rds::types::Tag> {
    tags.iter().map(|(key, value)| aws_sdk_rds::types::Tag::builder().key(key).value(value).build()).collect()
}

impl Snapshots for AwsRds {
    fn create<'a>(
        &'a self,
        instance: &'a str,
        snapshot: &'a str,
        tagged: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client
                    .create_db_snapshot()
                    .db_instance_identifier(instance)
                    .db_snapshot_identifier(snapshot)
                    .set_tags(Some(tags(tagged)))
                    .send()
                    .await,
                "DBSnapshotAlreadyExists",
                "create the snapshot",
            )
        }
        .boxed()
    }

    fn describe<'a>(&'a self, snapshot: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>, RdsError>> {
        async move {
            let described = self.client.describe_db_snapshots().db_snapshot_identifier(snapshot).send().await;
            let out = match described {
                Err(err) if code(&err) == Some("DBSnapshotNotFound") => return Ok(None),
                other => other.map_err(|err| error("describe the snapshot", &err))?,
            };
            Ok(out.db_snapshots().first().map(|found| Snapshot {
                status: found.status().unwrap_or("unknown").to_owned(),
                arn: found.db_snapshot_arn().unwrap_or_default().to_owned(),
                created: found
                    .snapshot_create_time()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            }))
        }
        .boxed()
    }

    fn copy<'a>(
        &'a self,
        source: &'a str,
        snapshot: &'a str,
        kms_key_id: Option<&'a str>,
        tagged: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client
                    .copy_db_snapshot()
                    .source_db_snapshot_identifier(source)
                    .target_db_snapshot_identifier(snapshot)
                    .set_kms_key_id(kms_key_id.map(str::to_owned))
                    .set_tags(Some(tags(tagged)))
                    .send()
                    .await,
                "DBSnapshotAlreadyExists",
                "copy the snapshot",
            )
        }
        .boxed()
    }

    fn delete<'a>(&'a self, snapshot: &'a str) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client.delete_db_snapshot().db_snapshot_identifier(snapshot).send().await,
                "DBSnapshotNotFound",
                "delete the snapshot",
            )
        }
        .boxed()
    }
}

impl Instances for AwsRds {
    fn restore_snapshot<'a>(
        &'a self,
        snapshot: &'a str,
        instance: &'a str,
        tagged: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client
                    .restore_db_instance_from_db_snapshot()
                    .db_snapshot_identifier(snapshot)
                    .db_instance_identifier(instance)
                    .set_tags(Some(tags(tagged)))
                    .send()
                    .await,
                "DBInstanceAlreadyExists",
                "restore the snapshot",
            )
        }
        .boxed()
    }

    fn restore_latest<'a>(
        &'a self,
        source: &'a str,
        instance: &'a str,
        tagged: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client
                    .restore_db_instance_to_point_in_time()
                    .source_db_instance_identifier(source)
                    .target_db_instance_identifier(instance)
                    .use_latest_restorable_time(true)
                    .set_tags(Some(tags(tagged)))
                    .send()
                    .await,
                "DBInstanceAlreadyExists",
                "restore to the latest restorable time",
            )
        }
        .boxed()
    }

    fn describe_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Option<Instance>, RdsError>> {
        async move {
            let described = self.client.describe_db_instances().db_instance_identifier(instance).send().await;
            let out = match described {
                Err(err) if code(&err) == Some("DBInstanceNotFound") => return Ok(None),
                other => other.map_err(|err| error("describe the instance", &err))?,
            };
            Ok(out.db_instances().first().map(|found| Instance {
                status: found.db_instance_status().unwrap_or("unknown").to_owned(),
                endpoint: found
                    .endpoint()
                    .and_then(|e| Some((e.address()?.to_owned(), u16::try_from(e.port().unwrap_or_default()).ok()?))),
                latest_restorable_time: found
                    .latest_restorable_time()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            }))
        }
        .boxed()
    }

    fn delete_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), RdsError>> {
        async move {
            tolerating(
                self.client
                    .delete_db_instance()
                    .db_instance_identifier(instance)
                    .skip_final_snapshot(true)
                    .send()
                    .await,
                "DBInstanceNotFound",
                "delete the instance",
            )
        }
        .boxed()
    }
}
