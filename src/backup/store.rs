//! Object stores backups are written to, behind one small trait: S3 (multipart, parts uploaded
//! concurrently) and a local folder, the embedded default.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::aws::{SdkFailure, sdk_failure};
use crate::config::{self, Plan};

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

    /// Writes a small object whole.
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>>;

    /// Reads a small object whole.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ObjectError>>;

    /// Opens `key` for streaming.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, ObjectError>>;

    /// Deletes `key`; deleting what does not exist succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>>;
}

/// Connects the store a backup set names.
pub async fn connect(store: &config::ObjectStore, plan: &Plan) -> Result<Box<dyn ObjectStore>, ObjectError> {
    Ok(match store {
        config::ObjectStore::S3 { bucket, prefix, sse_kms_key_id, object_lock } => {
            let aws = plan.aws.as_ref().ok_or(ObjectError::NotConfigured)?;
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
        config::ObjectStore::Local { path } => Box::new(LocalStore { root: path.clone() }),
    })
}

/// S3 multipart parts: above S3's 5 MiB minimum, and few enough in memory to keep a backup's
/// footprint bounded whatever the database's size.
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// An S3 bucket and key prefix.
struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    sse_kms_key_id: Option<String>,
    object_lock: Option<config::ObjectLock>,
}

impl S3Store {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error<E, R>(&self, what: &'static str, key: &str, err: &aws_sdk_s3::error::SdkError<E, R>) -> ObjectError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
        R: std::fmt::Debug,
    {
        let location = self.location(key);
        match sdk_failure(err) {
            SdkFailure::Transient(reason) => ObjectError::Transient { what, location, reason },
            SdkFailure::NotFound(_) => ObjectError::NotFound { location },
            SdkFailure::Refused(reason) => ObjectError::Failed { what, location, reason },
        }
    }

    /// The body of `key`, as a stream.
    async fn body(&self, key: &str) -> Result<aws_sdk_s3::primitives::ByteStream, ObjectError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|err| self.error("read", key, &err))?;
        Ok(out.body)
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        mut body: mpsc::Receiver<Chunk>,
    ) -> Result<(Vec<aws_sdk_s3::types::CompletedPart>, u64), ObjectError> {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut parts = Vec::new();
        let mut buffer = BytesMut::with_capacity(PART_SIZE);
        let mut total = 0u64;
        let mut number = 0i32;
        let mut ended = false;
        while !ended {
            match body.recv().await {
                Some(Chunk::Data(chunk)) => {
                    total += chunk.len() as u64;
                    buffer.extend_from_slice(&chunk);
                    if buffer.len() < PART_SIZE {
                        continue;
                    }
                }
                Some(Chunk::End) => ended = true,
                None => return Err(ObjectError::Interrupted { location: self.location(key) }),
            }
            if ended && buffer.is_empty() && number > 0 {
                break;
            }
            number += 1;
            let part =
                std::mem::replace(&mut buffer, BytesMut::with_capacity(if ended { 0 } else { PART_SIZE })).freeze();
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(self.key(key))
                .upload_id(upload_id)
                .part_number(number);
            in_flight.spawn(async move {
                let out = request.body(part.into()).send().await;
                (number, out)
            });
            while in_flight.len() >= PARTS_IN_FLIGHT || (ended && !in_flight.is_empty()) {
                let Some(joined) = in_flight.join_next().await else { break };
                let (number, out) = joined.map_err(|err| ObjectError::Failed {
                    what: "upload a part",
                    location: self.location(key),
                    reason: err.to_string(),
                })?;
                let out = out.map_err(|err| self.error("upload a part", key, &err))?;
                parts.push(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag)
                        .set_checksum_crc32(out.checksum_crc32)
                        .build(),
                );
            }
        }
        parts.sort_by_key(|part| part.part_number);
        Ok((parts, total))
    }
}

impl ObjectStore for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }

    fn upload<'a>(&'a self, key: &'a str, body: mpsc::Receiver<Chunk>) -> BoxFuture<'a, Result<u64, ObjectError>> {
        async move {
            let mut create = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(self.key(key))
                .content_type("application/octet-stream");
            if let Some(kms_key) = &self.sse_kms_key_id {
                create = create
                    .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                    .ssekms_key_id(kms_key);
            }
            if let Some(lock) = &self.object_lock {
                let until = chrono::Utc::now() + lock.retain.to_chrono();
                create = create
                    .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::from(lock.mode.as_str()))
                    .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp()));
            }
            let created = create.send().await.map_err(|err| self.error("start the upload", key, &err))?;
            let upload_id = created.upload_id.unwrap_or_default();
            let abort = || async {
                let aborted = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(self.key(key))
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(err) = aborted {
                    tracing::warn!(location = %self.location(key), "could not abort the upload: {}", self.error("abort", key, &err));
                }
            };
            let (parts, total) = match self.upload_parts(key, &upload_id, body).await {
                Ok(done) => done,
                Err(err) => {
                    abort().await;
                    return Err(err);
                }
            };
            let completed = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(self.key(key))
                .upload_id(&upload_id)
                .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await;
            if let Err(err) = completed {
                abort().await;
                return Err(self.error("complete the upload", key, &err));
            }
            Ok(total)
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let mut put = self.client.put_object().bucket(&self.bucket).key(self.key(key)).body(bytes.into());
            if let Some(kms_key) = &self.sse_kms_key_id {
                put =
                    put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(kms_key);
            }
            put.send().await.map_err(|err| self.error("write", key, &err))?;
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ObjectError>> {
        async move {
            let body = self.body(key).await?.collect().await.map_err(|err| ObjectError::Transient {
                what: "read",
                location: self.location(key),
                reason: err.to_string(),
            })?;
            Ok(body.to_vec())
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, ObjectError>> {
        async move { Ok(Box::new(self.body(key).await?.into_async_read()) as ObjectReader) }.boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .send()
                .await
                .map_err(|err| self.error("delete", key, &err))?;
            Ok(())
        }
        .boxed()
    }
}

/// A local folder.
struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn failed(&self, what: &'static str, key: &str, err: &std::io::Error) -> ObjectError {
        let location = self.location(key);
        if err.kind() == std::io::ErrorKind::NotFound {
            ObjectError::NotFound { location }
        } else {
            ObjectError::Failed { what, location, reason: err.to_string() }
        }
    }

    /// Writes through a `.partial` sibling renamed over `key` once synced, so a reader never
    /// sees half an object.
    async fn write(&self, key: &str, mut body: mpsc::Receiver<Chunk>) -> Result<u64, ObjectError> {
        use tokio::io::AsyncWriteExt as _;
        let path = self.path(key);
        let partial = partial_path(&path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|err| self.failed("create the folder", key, &err))?;
        }
        let mut file = tokio::fs::File::create(&partial).await.map_err(|err| self.failed("create", key, &err))?;
        let mut total = 0u64;
        loop {
            match body.recv().await {
                Some(Chunk::Data(chunk)) => {
                    total += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(|err| self.failed("write", key, &err))?;
                }
                Some(Chunk::End) => break,
                None => return Err(ObjectError::Interrupted { location: self.location(key) }),
            }
        }
        file.sync_all().await.map_err(|err| self.failed("sync", key, &err))?;
        drop(file);
        tokio::fs::rename(&partial, &path).await.map_err(|err| self.failed("rename", key, &err))?;
        Ok(total)
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

impl ObjectStore for LocalStore {
    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn upload<'a>(&'a self, key: &'a str, body: mpsc::Receiver<Chunk>) -> BoxFuture<'a, Result<u64, ObjectError>> {
        async move {
            let written = self.write(key, body).await;
            if written.is_err() {
                let _ = tokio::fs::remove_file(partial_path(&self.path(key))).await;
            }
            written
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let (sender, receiver) = mpsc::channel(2);
            sender.send(Chunk::Data(Bytes::from(bytes))).await.expect("the receiver is here");
            sender.send(Chunk::End).await.expect("the receiver is here");
            self.upload(key, receiver).await.map(drop)
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ObjectError>> {
        async move { tokio::fs::read(self.path(key)).await.map_err(|err| self.failed("read", key, &err)) }.boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, ObjectError>> {
        async move {
            let file = tokio::fs::File::open(self.path(key)).await.map_err(|err| self.failed("open", key, &err))?;
            Ok(Box::new(file) as ObjectReader)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            match tokio::fs::remove_file(self.path(key)).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(self.failed("delete", key, &err)),
                _ => Ok(()),
            }
        }
        .boxed()
    }
}
