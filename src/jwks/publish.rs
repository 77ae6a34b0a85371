//! Where a JWKS document is published: an S3 object, a Vault KV path or a local file.
//!
//! Each publisher writes the whole document (idempotent: the same document twice is one
//! document) and can read back what it published, for `vigil jwks show`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::aws::{AwsSettings, SdkFailure};
use crate::stores::{StoreError, VaultKv, VaultSettings};

/// Where a JWKS document is published.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "publish")]
pub enum JwksTarget {
    /// An S3 object, written with `Cache-Control` and `Content-Type` headers.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// A Vault KV v2 path, with `cache-control` in its custom metadata.
    VaultKv {
        /// The path in the KV mount.
        path: String,
    },
    /// A local file a web server serves.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl std::fmt::Display for JwksTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::VaultKv { path } => write!(f, "vault_kv:{path}"),
            Self::File { path } => write!(f, "{}", path.display()),
        }
    }
}

/// Why a JWKS could not be published or read.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A failure that may pass (a 5xx, throttling, a connection reset).
    #[error("{what} failed for now: {reason}")]
    Transient {
        /// What was attempted.
        what: String,
        /// Why.
        reason: String,
    },
    /// Refused: permissions, a missing bucket, an unwritable folder.
    #[error("{what}: {reason}")]
    Refused {
        /// What was attempted.
        what: String,
        /// Why.
        reason: String,
    },
    /// The published document is not JSON.
    #[error("the document at {0} is not JSON; vigil replaces it at the next publish")]
    Malformed(String),
    /// The service it is published to is not configured.
    #[error("the JWKS is published to {0}, which is not configured; add its section to vigil.toml")]
    NotConfigured(&'static str),
}

impl From<StoreError> for PublishError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Transient { what, reason } => Self::Transient { what, reason },
            other => Self::Refused { what: "publish the JWKS to Vault".into(), reason: other.to_string() },
        }
    }
}

/// A place a JWKS document is published.
pub trait JwksPublisher: Send + Sync {
    /// Replaces the published document with `document`, served with `cache_control`.
    fn publish<'a>(&'a self, document: &'a Value, cache_control: &'a str) -> BoxFuture<'a, Result<(), PublishError>>;

    /// The published document, if any.
    fn fetch(&self) -> BoxFuture<'_, Result<Option<Value>, PublishError>>;
}

/// The publisher for `target`, with the AWS and Vault settings it may need.
pub async fn connect(
    target: &JwksTarget,
    aws: Option<&AwsSettings>,
    vault: Option<&VaultSettings>,
) -> Result<Box<dyn JwksPublisher>, PublishError> {
    Ok(match target {
        JwksTarget::S3 { bucket, key } => {
            let aws = aws.ok_or(PublishError::NotConfigured("S3"))?;
            let client = crate::aws::s3_client(aws).await.map_err(|err| PublishError::Refused {
                what: "configure the S3 client".into(),
                reason: err.to_string(),
            })?;
            Box::new(S3Object { client, bucket: bucket.clone(), key: key.clone() })
        }
        JwksTarget::VaultKv { path } => {
            let vault = vault.ok_or(PublishError::NotConfigured("Vault"))?;
            Box::new(VaultDocument { kv: VaultKv::connect(vault)?, path: path.clone() })
        }
        JwksTarget::File { path } => Box::new(LocalFile { path: path.clone() }),
    })
}

const CONTENT_TYPE: &str = "application/jwk-set+json";

struct S3Object {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
}

impl S3Object {
    fn classify<E, R>(&self, what: &str, err: aws_sdk_s3::error::SdkError<E, R>) -> PublishError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
        R: std::fmt::Debug,
    {
        let what = format!("{what} s3://{}/{}", self.bucket, self.key);
        match crate::aws::sdk_failure(&err) {
            SdkFailure::Transient(reason) => PublishError::Transient { what, reason },
            SdkFailure::NotFound(reason) | SdkFailure::Refused(reason) => PublishError::Refused { what, reason },
        }
    }
}

impl JwksPublisher for S3Object {
    fn publish<'a>(&'a self, document: &'a Value, cache_control: &'a str) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(CONTENT_TYPE)
                .cache_control(cache_control)
                .body(document.to_string().into_bytes().into())
                .send()
                .await
                .map_err(|err| self.classify("publish the JWKS to", err))?;
            Ok(())
        }
        .boxed()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Option<Value>, PublishError>> {
        async move {
            let got = match self.client.get_object().bucket(&self.bucket).key(&self.key).send().await {
                Ok(got) => got,
                Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
                Err(err) => return Err(self.classify("read the JWKS at", err)),
            };
            let body = got.body.collect().await.map_err(|err| PublishError::Transient {
                what: format!("read the JWKS at s3://{}/{}", self.bucket, self.key),
                reason: err.to_string(),
            })?;
            let location = format!("s3://{}/{}", self.bucket, self.key);
            serde_json::from_slice(&body.into_bytes()).map(Some).map_err(|_| PublishError::Malformed(location))
        }
        .boxed()
    }
}

struct VaultDocument {
    kv: VaultKv,
    path: String,
}

impl JwksPublisher for VaultDocument {
    fn publish<'a>(&'a self, document: &'a Value, cache_control: &'a str) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            let metadata = HashMap::from([
                ("cache-control".to_owned(), cache_control.to_owned()),
                ("content-type".to_owned(), CONTENT_TYPE.to_owned()),
            ]);
            Ok(self.kv.write_document(&self.path, document, metadata).await?)
        }
        .boxed()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Option<Value>, PublishError>> {
        async move { Ok(self.kv.read_document(&self.path).await?) }.boxed()
    }
}

/// A file served by a web server, which sets its `Cache-Control` (`vigil jwks show` prints the
/// value to configure).
struct LocalFile {
    path: PathBuf,
}

fn refused(what: &str, path: &Path, err: &std::io::Error) -> PublishError {
    PublishError::Refused { what: format!("{what} {}", path.display()), reason: err.to_string() }
}

impl JwksPublisher for LocalFile {
    fn publish<'a>(&'a self, document: &'a Value, _cache_control: &'a str) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            let path = self.path.clone();
            let text = document.to_string();
            // Written beside the target and renamed over it, so a web server never serves half
            // a document, and a crash leaves the old one or the new one.
            tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let folder = path.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(folder).map_err(|err| refused("create the folder of", &path, &err))?;
                let mut temp = tempfile_in(folder).map_err(|err| refused("write a file beside", &path, &err))?;
                temp.1.write_all(text.as_bytes()).and_then(|()| temp.1.sync_all()).map_err(|err| {
                    let _ = std::fs::remove_file(&temp.0);
                    refused("write", &temp.0, &err)
                })?;
                std::fs::rename(&temp.0, &path).map_err(|err| refused("replace", &path, &err))
            })
            .await
            .map_err(|err| PublishError::Refused { what: "write the JWKS file".into(), reason: err.to_string() })?
        }
        .boxed()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Option<Value>, PublishError>> {
        async move {
            match tokio::fs::read(&self.path).await {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|_| PublishError::Malformed(self.path.display().to_string())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(refused("read", &self.path, &err)),
            }
        }
        .boxed()
    }
}

/// A new file in `folder` (readable by all: the document is public), and its path.
fn tempfile_in(folder: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = format!(".jwks-{}-{}.tmp", std::process::id(), chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let path = folder.join(name);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
    Ok((path, file))
}
