//! Object stores, behind one small trait: S3 (multipart, parts uploaded concurrently) and a
//! local folder, the embedded default. Backups are written to them; drills and report exports
//! read and write them next. Object stores know nothing of backups, sagas or evidence.

mod fs;
mod s3;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::aws::AwsSettings;
use fs::LocalStore;
use s3::S3Store;

/// An object's bytes, read as a stream.
pub type ObjectReader = Box<dyn AsyncRead + Send + Unpin>;

/// What an upload receives: the object's bytes, then [`Chunk::End`]. A channel that closes
/// without `End` means the producer failed, and the upload is abandoned, never completed.
#[derive(Debug)]
pub enum Chunk {
    /// The next bytes.
    Data(Bytes),
    /// Every byte has been sent.
    End,
}

/// Why an object store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store is unreachable or throttling: retrying may pass.
    #[error("{what} at {location} failed for now: {reason}")]
    Transient {
        /// What was attempted.
        what: &'static str,
        /// Where.
        location: String,
        /// Why.
        reason: String,
    },
    /// The object does not exist.
    #[error("{location} does not exist")]
    NotFound {
        /// Where.
        location: String,
    },
    /// The store refused, or the disk failed.
    #[error("{what} at {location} failed: {reason}")]
    Failed {
        /// What was attempted.
        what: &'static str,
        /// Where.
        location: String,
        /// Why.
        reason: String,
    },
    /// The stream feeding an upload stopped before its end.
    #[error("the backup stream to {location} stopped before its end")]
    Interrupted {
        /// Where.
        location: String,
    },
    /// S3 is named but `[aws]` is missing.
    #[error("store = \"s3\" needs an [aws] section in vigil.toml")]
    NotConfigured,
}

impl ObjectError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Where backups are kept. Keys are relative (`set/id.vbk`); each store adds its own prefix.
pub trait ObjectStore: Send + Sync {
    /// Where `key` is, for people: `s3://bucket/prefix/key` or a file path.
    fn location(&self, key: &str) -> String;

    /// Writes the chunks received on `body` to `key`, replacing it; returns the bytes written.
    /// The object appears whole (after [`Chunk::End`]) or not at all.
    fn upload<'a>(&'a self, key: &'a str, body: mpsc::Receiver<Chunk>) -> BoxFuture<'a, Result<u64, ObjectError>>;

    /// Writes a small object whole, replacing it, with the headers `options` name.
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        options: &'a PutOptions,
    ) -> BoxFuture<'a, Result<(), ObjectError>>;

    /// Reads a small object whole.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ObjectError>>;

    /// Opens `key` for streaming.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, ObjectError>>;

    /// Deletes `key`; deleting what does not exist succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>>;
}

/// How a small object is served: headers S3 keeps with it (a local folder has none; the web
/// server in front of it sets them).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
}

/// Where objects are kept: an S3 bucket (and prefix) or a local folder.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Settings {
    /// An S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix inside it.
        prefix: String,
        /// Server-side encryption under this KMS key, on top of vigil's own encryption.
        sse_kms_key_id: Option<String>,
        /// S3 Object Lock retention set on each backup object.
        object_lock: Option<ObjectLock>,
    },
    /// A local folder: the embedded default.
    Local {
        /// The folder.
        path: PathBuf,
    },
}

impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Local { path } => write!(f, "{}", path.display()),
        }
    }
}

/// S3 Object Lock retention for backup objects: not even the bucket owner (in compliance
/// mode) deletes one before `retain` has passed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// How long each object is locked after it is written.
    pub retain: crate::schedule::Duration,
}

/// Connects the store `settings` name, with the AWS settings S3 needs.
pub async fn connect(settings: &Settings, aws: Option<&AwsSettings>) -> Result<Box<dyn ObjectStore>, ObjectError> {
    Ok(match settings {
        Settings::S3 { bucket, prefix, sse_kms_key_id, object_lock } => {
            let aws = aws.ok_or(ObjectError::NotConfigured)?;
            let client = crate::aws::s3_client(aws).await.map_err(|err| ObjectError::Failed {
                what: "read AWS credentials",
                location: format!("s3://{bucket}"),
                reason: err.to_string(),
            })?;
            Box::new(S3Store {
                client,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                sse_kms_key_id: sse_kms_key_id.clone(),
                object_lock: object_lock.clone(),
            })
        }
        Settings::Local { path } => Box::new(LocalStore { root: path.clone() }),
    })
}
