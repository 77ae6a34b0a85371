//! Object stores, behind one small trait: S3 (multipart, parts uploaded concurrently) and a
//! local folder, the embedded default. Backups are written to them; drills and report exports
//! read and write them next. Object stores know nothing of backups, sagas or evidence.

use std::path::{Path, PathBuf};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::upload_part::{UploadPartError, UploadPartOutput};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::aws::{AwsSettings, SdkFailure, sdk_failure};

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

/// S3 multipart parts: above S3's 5 MiB minimum, and few enough in memory to keep a backup's
/// footprint bounded. Parts grow past [`PARTS_AT_FIRST_SIZE`] so that an object can still
/// complete within S3's 10,000 parts (see [`part_size`]).
const PART_SIZE: usize = 8 << 20;
/// Parts of [`PART_SIZE`] before they start to double: 46.9 GiB stored, a database of well
/// over 100 GiB at the usual compression, uploads in constant memory.
const PARTS_AT_FIRST_SIZE: i32 = 6_000;
/// Parts per size step after the first: 1,000 each of 16, 32, 64 and 128 MiB.
const PARTS_PER_STEP: i32 = 1_000;
/// S3's limit on the parts of one upload.
const MAX_PARTS: i32 = 10_000;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// The size of multipart part `number` (from 1): [`PART_SIZE`] for the first 6,000, then
/// doubling every 1,000 up to 128 MiB, so that 10,000 parts hold 281 GiB.
fn part_size(number: i32) -> usize {
    let step = (number - 1 - (PARTS_AT_FIRST_SIZE - PARTS_PER_STEP)).max(0) / PARTS_PER_STEP;
    PART_SIZE << step.min(4)
}

/// An S3 bucket and key prefix.
struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    sse_kms_key_id: Option<String>,
    object_lock: Option<ObjectLock>,
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
        let mut upload =
            Multipart { store: self, key, upload_id, in_flight: JoinSet::new(), done: Vec::new(), spare: Vec::new() };
        let mut number = 1i32;
        let mut buffer = upload.buffer(number);
        let mut total = 0u64;
        while let Some(chunk) = body.recv().await {
            let Chunk::Data(chunk) = chunk else {
                // The last part may be short; an empty object is one empty part.
                if !buffer.is_empty() || number == 1 {
                    upload.start(number, buffer.freeze())?;
                }
                while upload.finish_one().await? {}
                upload.done.sort_by_key(|part| part.part_number);
                return Ok((upload.done, total));
            };
            total += chunk.len() as u64;
            // Parts are cut at exactly their size, so their buffers never grow.
            let mut rest = &chunk[..];
            while buffer.len() + rest.len() >= part_size(number) {
                let (fits, after) = rest.split_at(part_size(number) - buffer.len());
                buffer.extend_from_slice(fits);
                rest = after;
                upload.start(number, std::mem::take(&mut buffer).freeze())?;
                // Waiting here, before the next part's buffer is taken, holds at most
                // PARTS_IN_FLIGHT parts in memory, the one filling included.
                while upload.in_flight.len() >= PARTS_IN_FLIGHT {
                    upload.finish_one().await?;
                }
                number += 1;
                buffer = upload.buffer(number);
            }
            buffer.extend_from_slice(rest);
        }
        Err(ObjectError::Interrupted { location: self.location(key) })
    }
}

/// S3's answer to one part.
type PartUploaded = Result<UploadPartOutput, SdkError<UploadPartError, HttpResponse>>;

/// One multipart upload under way: its parts in flight, those done, and the buffers of finished
/// parts, reused so that a long upload allocates its few part buffers once.
struct Multipart<'a> {
    store: &'a S3Store,
    key: &'a str,
    upload_id: &'a str,
    in_flight: JoinSet<(i32, Bytes, PartUploaded)>,
    done: Vec<aws_sdk_s3::types::CompletedPart>,
    spare: Vec<BytesMut>,
}

impl Multipart<'_> {
    /// An empty buffer for part `number`.
    fn buffer(&mut self, number: i32) -> BytesMut {
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.reserve(part_size(number));
        buffer
    }

    /// Starts uploading part `number`, or refuses when S3 would.
    fn start(&mut self, number: i32, part: Bytes) -> Result<(), ObjectError> {
        if number > MAX_PARTS {
            return Err(ObjectError::Failed {
                what: "upload a part",
                location: self.store.location(self.key),
                reason: format!(
                    "the backup outgrew S3's {MAX_PARTS} parts ({} GiB); split the database into several backup sets",
                    (1..=MAX_PARTS).map(|n| part_size(n) as u64).sum::<u64>() >> 30
                ),
            });
        }
        // Each part carries a CRC32 checksum that S3 checks, and the whole object is read back
        // and authenticated before it counts: hashing every byte again to sign it adds nothing.
        let request = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(self.store.key(self.key))
            .upload_id(self.upload_id)
            .part_number(number)
            .body(part.clone().into())
            .customize()
            .disable_payload_signing();
        self.in_flight.spawn(async move { (number, part, request.send().await) });
        Ok(())
    }

    /// Waits for one part upload to end and records it; false when none was under way.
    async fn finish_one(&mut self) -> Result<bool, ObjectError> {
        let Some(joined) = self.in_flight.join_next().await else { return Ok(false) };
        let (number, part, out) = joined.map_err(|err| ObjectError::Failed {
            what: "upload a part",
            location: self.store.location(self.key),
            reason: err.to_string(),
        })?;
        let out = out.map_err(|err| self.store.error("upload a part", self.key, &err))?;
        // The request is gone, so the part's buffer is ours again unless the SDK kept a copy.
        if let Ok(mut buffer) = part.try_into_mut() {
            buffer.clear();
            self.spare.push(buffer);
        }
        self.done.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .set_checksum_crc32(out.checksum_crc32)
                .build(),
        );
        Ok(true)
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

    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        options: &'a PutOptions,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .body(bytes.into())
                .set_content_type(options.content_type.clone())
                .set_cache_control(options.cache_control.clone());
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

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>, _: &'a PutOptions) -> BoxFuture<'a, Result<(), ObjectError>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_their_first_size_then_double_to_fit_281_gib_in_10000_parts() {
        assert_eq!(part_size(1), PART_SIZE);
        assert_eq!(part_size(6_000), PART_SIZE);
        assert_eq!(part_size(6_001), 2 * PART_SIZE);
        assert_eq!(part_size(7_000), 2 * PART_SIZE);
        assert_eq!(part_size(7_001), 4 * PART_SIZE);
        assert_eq!(part_size(9_001), 16 * PART_SIZE);
        assert_eq!(part_size(MAX_PARTS), 16 * PART_SIZE);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert_eq!(total >> 30, 281);
        // S3 refuses parts over 5 GiB and (but the last) under 5 MiB.
        assert!((1..=MAX_PARTS).all(|n| (5 << 20..=5 << 30).contains(&part_size(n))));
    }
}
