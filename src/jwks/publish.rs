//! Where a JWKS document is published: an S3 object, a Vault KV path or a local file.
//!
//! Each publisher writes the whole document (idempotent: the same document twice is one
//! document) and can read back what it published, for `vigil jwks show`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::aws::AwsSettings;
use crate::objects::{self, ObjectError, ObjectStore, PutOptions};
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

impl From<ObjectError> for PublishError {
    fn from(err: ObjectError) -> Self {
        match err {
            ObjectError::Transient { .. } => {
                Self::Transient { what: "publish the JWKS".into(), reason: err.to_string() }
            }
            other => Self::Refused { what: "publish the JWKS".into(), reason: other.to_string() },
        }
    }
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
            let settings = objects::Settings::S3 {
                bucket: bucket.clone(),
                prefix: String::new(),
                sse_kms_key_id: None,
                object_lock: None,
            };
            let store = objects::connect(&settings, Some(aws.ok_or(PublishError::NotConfigured("S3"))?)).await?;
            Box::new(ObjectDocument { store, key: key.clone() })
        }
        JwksTarget::VaultKv { path } => {
            let vault = vault.ok_or(PublishError::NotConfigured("Vault"))?;
            Box::new(VaultDocument { kv: VaultKv::connect(vault)?, path: path.clone() })
        }
        JwksTarget::File { path } => {
            // A folder store over the file's folder: written beside and renamed over, so a web
            // server never serves half a document, and a crash leaves the old one or the new.
            let folder = path.parent().unwrap_or(Path::new(".")).to_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let store = objects::connect(&objects::Settings::Local { path: folder }, None).await?;
            Box::new(ObjectDocument { store, key: name })
        }
    })
}

const CONTENT_TYPE: &str = "application/jwk-set+json";

/// A JWKS kept as an object: in S3 (served with its `Cache-Control` and `Content-Type`) or a
/// local file (whose web server sets them; `vigil jwks show` prints the value to configure).
struct ObjectDocument {
    store: Box<dyn ObjectStore>,
    key: String,
}

impl JwksPublisher for ObjectDocument {
    fn publish<'a>(&'a self, document: &'a Value, cache_control: &'a str) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            let options = PutOptions {
                content_type: Some(CONTENT_TYPE.to_owned()),
                cache_control: Some(cache_control.to_owned()),
            };
            Ok(self.store.put(&self.key, document.to_string().into_bytes(), &options).await?)
        }
        .boxed()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Option<Value>, PublishError>> {
        async move {
            let bytes = match self.store.get(&self.key).await {
                Ok(bytes) => bytes,
                Err(ObjectError::NotFound { .. }) => return Ok(None),
                Err(err) => return Err(err.into()),
            };
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| PublishError::Malformed(self.store.location(&self.key)))
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
