//! S3: multipart uploads of exact, growing parts, two in flight and their buffers reused;
//! SSE-KMS and Object Lock headers on every object.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::upload_part::{UploadPartError, UploadPartOutput};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::aws::{SdkFailure, sdk_failure};

use super::*;

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
pub(super) struct S3Store {
    pub(super) client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) object_lock: Option<ObjectLock>,
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
