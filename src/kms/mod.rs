//! Key services: what makes and wraps each backup's data key (envelope encryption). The data
//! key encrypts one backup; only its wrapped form is kept, in the manifest, and the key
//! service unwraps it again to verify, fetch or restore.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::aws::{AwsSettings, SdkFailure, sdk_failure};
use crate::stores::VaultSettings;

/// What makes and wraps data keys: AWS KMS, Vault/OpenBao Transit, or a local key file.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Settings {
    /// AWS KMS `GenerateDataKey` under this key.
    AwsKms {
        /// Key id, ARN or alias.
        key_id: String,
    },
    /// Vault / OpenBao Transit, wrapping under this key (an AEAD type: Transit's default
    /// `aes256-gcm96`, or `chacha20-poly1305`).
    VaultTransit {
        /// The Transit key name.
        key: String,
    },
    /// A local key-encryption key file.
    Local {
        /// The key file.
        key_file: PathBuf,
    },
}

/// A 256-bit data key. Zeroed when dropped; never printed.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyLength> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyLength(bytes.len()))?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        use rand_core::RngCore as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// The key's bytes, for wrapping.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key of the wrong length.
#[derive(Debug, thiserror::Error)]
#[error("a data key is 32 bytes, not {0}")]
pub struct KeyLength(pub usize);

/// A data key as the manifest keeps it: wrapped, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// `aws_kms`, `vault_transit` or `local`.
    pub service: String,
    /// The wrapping key: a KMS key ARN, a Transit key name, or a local key's fingerprint.
    pub key_id: String,
    /// The wrapped data key: base64 of KMS's ciphertext blob or of the local wrapping, or
    /// Transit's `vault:vN:` ciphertext.
    pub wrapped: String,
    /// Transit only: whether the backup id was bound as associated data. Transit data keys made
    /// before vigil bound it have none and still unwrap without. (KMS binds it as encryption
    /// context and the local key as AES-GCM associated data, always; this stays false for them.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound: bool,
}

/// Why a data key could not be made or unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key service is not reachable or is throttling: retrying may pass.
    #[error("the key service {service} is unavailable: {reason}")]
    Unavailable {
        /// The service.
        service: &'static str,
        /// Why.
        reason: String,
    },
    /// The key service refused.
    #[error("the key service {service} refused to {what}: {reason}")]
    Refused {
        /// The service.
        service: &'static str,
        /// What was asked.
        what: &'static str,
        /// Its words.
        reason: String,
    },
    /// The backup's key was wrapped by another service or key than the one configured.
    #[error(
        "this backup's data key was wrapped by {found}, but the set is configured with {configured}; configure that key service to read it"
    )]
    OtherKey {
        /// What wrapped it.
        found: String,
        /// What is configured.
        configured: String,
    },
    /// The local key file could not be read or created.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The service the set names has no configuration (`[aws]` or `[vault]`).
    #[error("key service {0} is not configured in vigil.toml")]
    NotConfigured(&'static str),
}

impl KeyError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Makes and unwraps data keys. `context` (the backup id) is bound to the wrapping where the
/// service supports it, so a wrapped key cannot be moved to another backup's manifest.
pub trait KeyService: Send + Sync {
    /// A fresh data key and its wrapped form.
    fn generate<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>>;

    /// The data key inside `wrapped`.
    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey, context: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>>;
}

/// Connects the key service a backup set names.
pub async fn connect(
    service: &Settings,
    aws: Option<&AwsSettings>,
    vault: Option<&VaultSettings>,
) -> Result<Box<dyn KeyService>, KeyError> {
    Ok(match service {
        Settings::AwsKms { key_id } => {
            let aws = aws.ok_or(KeyError::NotConfigured(KMS))?;
            let sdk = crate::aws::sdk_config(aws).await.map_err(|err| KeyError::Refused {
                service: KMS,
                what: "read AWS credentials",
                reason: err.to_string(),
            })?;
            Box::new(AwsKms { client: aws_sdk_kms::Client::new(&sdk), key_id: key_id.clone() })
        }
        Settings::VaultTransit { key } => {
            let vault = vault.ok_or(KeyError::NotConfigured(TRANSIT))?;
            let client = crate::stores::vault_client(vault).map_err(|err| KeyError::Refused {
                service: TRANSIT,
                what: "connect",
                reason: err.to_string(),
            })?;
            Box::new(VaultTransit { client, mount: vault.transit_mount.clone(), key: key.clone() })
        }
        Settings::Local { key_file } => {
            // A file read (and maybe written): on a blocking thread, not on the runtime's.
            let path = key_file.clone();
            let opened = tokio::task::spawn_blocking(move || LocalKey::open_or_create(&path)).await.map_err(|err| {
                KeyError::KeyFile { path: key_file.clone(), reason: format!("reading it stopped unexpectedly: {err}") }
            })?;
            Box::new(opened?)
        }
    })
}

const KMS: &str = "aws_kms";
const TRANSIT: &str = "vault_transit";
const LOCAL: &str = "local";

/// The encryption-context key under which KMS binds a data key to its backup.
const KMS_CONTEXT_KEY: &str = "vigil-backup-id";

/// AWS KMS `GenerateDataKey` and `Decrypt`.
struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

fn kms_error<E, R>(what: &'static str, err: &aws_sdk_kms::error::SdkError<E, R>) -> KeyError
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match sdk_failure(err) {
        SdkFailure::Transient(reason) => KeyError::Unavailable { service: KMS, reason },
        SdkFailure::NotFound(reason) | SdkFailure::Refused(reason) => KeyError::Refused { service: KMS, what, reason },
    }
}

impl KeyService for AwsKms {
    fn generate<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        async move {
            let out = self
                .client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                .encryption_context(KMS_CONTEXT_KEY, context)
                .send()
                .await
                .map_err(|err| kms_error("generate a data key", &err))?;
            let plaintext = Zeroizing::new(out.plaintext.map(|blob| blob.into_inner()).unwrap_or_default());
            let wrapped = out.ciphertext_blob.map(|blob| BASE64.encode(blob.as_ref())).unwrap_or_default();
            let key = DataKey::from_bytes(&plaintext).map_err(|err| KeyError::Refused {
                service: KMS,
                what: "generate a data key",
                reason: err.to_string(),
            })?;
            let key_id = out.key_id.unwrap_or_else(|| self.key_id.clone());
            Ok((key, WrappedKey { service: KMS.into(), key_id, wrapped, bound: false }))
        }
        .boxed()
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey, context: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        async move {
            expect_service(wrapped, KMS, &self.key_id)?;
            let blob = BASE64.decode(&wrapped.wrapped).map_err(|err| KeyError::Refused {
                service: KMS,
                what: "unwrap the data key",
                reason: format!("the wrapped key is not base64: {err}"),
            })?;
            // The configured key, not the one the manifest names: a manifest naming another key
            // (which its writer may control) is refused by KMS itself (IncorrectKeyException).
            let out = self
                .client
                .decrypt()
                .key_id(&self.key_id)
                .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
                .encryption_context(KMS_CONTEXT_KEY, context)
                .send()
                .await
                .map_err(|err| kms_error("unwrap the data key", &err))?;
            let plaintext = Zeroizing::new(out.plaintext.map(|blob| blob.into_inner()).unwrap_or_default());
            DataKey::from_bytes(&plaintext).map_err(|err| KeyError::Refused {
                service: KMS,
                what: "unwrap the data key",
                reason: err.to_string(),
            })
        }
        .boxed()
    }
}

fn expect_service(wrapped: &WrappedKey, service: &str, configured: &str) -> Result<(), KeyError> {
    if wrapped.service != service {
        return Err(KeyError::OtherKey {
            found: wrapped.service.clone(),
            configured: format!("{service} {configured}"),
        });
    }
    Ok(())
}

/// Vault / OpenBao Transit: a data key made here and wrapped with `encrypt/:name`, the backup
/// id bound as associated data (`datakey/` takes none), and unwrapped with `decrypt/:name`.
/// The Transit key must be an AEAD type (`aes256-gcm96`, Transit's default, or
/// `chacha20-poly1305`): Transit refuses associated data for any other.
struct VaultTransit {
    client: vaultrs::client::VaultClient,
    mount: String,
    key: String,
}

fn transit_error(what: &'static str, err: vaultrs::error::ClientError) -> KeyError {
    use vaultrs::error::ClientError;
    match err {
        ClientError::APIError { code, errors } if code == 429 || code >= 500 => {
            KeyError::Unavailable { service: TRANSIT, reason: format!("HTTP {code}: {}", errors.join("; ")) }
        }
        ClientError::APIError { code, errors } => {
            KeyError::Refused { service: TRANSIT, what, reason: format!("HTTP {code}: {}", errors.join("; ")) }
        }
        ClientError::RestClientError { source } => {
            KeyError::Unavailable { service: TRANSIT, reason: source.to_string() }
        }
        // Other variants carry no response body, so no key material.
        other => KeyError::Refused { service: TRANSIT, what, reason: other.to_string() },
    }
}

impl KeyService for VaultTransit {
    fn generate<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        async move {
            use vaultrs::api::transit::requests::EncryptDataRequest;
            let key = DataKey::generate();
            let plaintext = Zeroizing::new(BASE64.encode(key.expose()));
            let mut options = EncryptDataRequest::builder();
            options.associated_data(BASE64.encode(context));
            let out =
                vaultrs::transit::data::encrypt(&self.client, &self.mount, &self.key, &plaintext, Some(&mut options))
                    .await
                    .map_err(|err| transit_error("wrap a data key", err))?;
            let wrapped =
                WrappedKey { service: TRANSIT.into(), key_id: self.key.clone(), wrapped: out.ciphertext, bound: true };
            Ok((key, wrapped))
        }
        .boxed()
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey, context: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        async move {
            use vaultrs::api::transit::requests::DecryptDataRequest;
            expect_service(wrapped, TRANSIT, &self.key)?;
            // Only the configured key unwraps: a manifest naming another Transit key is refused
            // before Vault is asked.
            if wrapped.key_id != self.key {
                return Err(KeyError::OtherKey {
                    found: format!("{TRANSIT} {}", wrapped.key_id),
                    configured: format!("{TRANSIT} {}", self.key),
                });
            }
            let mut options = DecryptDataRequest::builder();
            if wrapped.bound {
                options.associated_data(BASE64.encode(context));
            }
            let out = vaultrs::transit::data::decrypt(
                &self.client,
                &self.mount,
                &self.key,
                &wrapped.wrapped,
                Some(&mut options),
            )
            .await
            .map_err(|err| transit_error("unwrap the data key", err))?;
            let plaintext = Zeroizing::new(out.plaintext);
            decode_key(&plaintext, "unwrap the data key")
        }
        .boxed()
    }
}

fn decode_key(base64: &str, what: &'static str) -> Result<DataKey, KeyError> {
    let bytes = Zeroizing::new(BASE64.decode(base64).map_err(|_| KeyError::Refused {
        service: TRANSIT,
        what,
        reason: "the key is not base64".into(),
    })?);
    DataKey::from_bytes(&bytes).map_err(|err| KeyError::Refused { service: TRANSIT, what, reason: err.to_string() })
}

/// A local key-encryption key: 32 random bytes, hex, in a 0600 file created on first use.
/// Data keys are wrapped with AES-256-GCM under it, the backup id bound as associated data.
struct LocalKey {
    key: LessSafeKey,
    fingerprint: String,
}

impl LocalKey {
    fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let failed = |reason: String| KeyError::KeyFile { path: path.to_owned(), reason };
        let text = match crate::secret::read_private(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = DataKey::generate();
                let text = Zeroizing::new(hex::encode(key.expose()) + "\n");
                crate::secret::write_private(path, text.as_bytes())
                    .map_err(|err| failed(format!("cannot create it: {err}")))?;
                tracing::info!(path = %path.display(), "created a local backup key; keep a copy apart from the backups");
                text
            }
            Err(err) => return Err(failed(err.to_string())),
        };
        let bytes =
            Zeroizing::new(hex::decode(text.trim()).map_err(|_| failed("not 64 hex digits (a 256-bit key)".into()))?);
        let kek = DataKey::from_bytes(&bytes).map_err(|_| failed("not 64 hex digits (a 256-bit key)".into()))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kek.expose());
        Ok(Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek.expose()).expect("32 bytes")),
            fingerprint: format!("local:{}", &hex::encode(digest.as_ref())[..16]),
        })
    }
}

impl KeyService for LocalKey {
    fn generate<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        async move {
            use rand_core::RngCore as _;
            let key = DataKey::generate();
            let mut nonce = [0u8; NONCE_LEN];
            rand_core::OsRng.fill_bytes(&mut nonce);
            let mut sealed = key.expose().to_vec();
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(context.as_bytes()),
                    &mut sealed,
                )
                .map_err(|_| KeyError::Refused {
                    service: LOCAL,
                    what: "wrap the data key",
                    reason: "AES-GCM failed".into(),
                })?;
            let wrapped = BASE64.encode([nonce.as_slice(), &sealed].concat());
            Ok((key, WrappedKey { service: LOCAL.into(), key_id: self.fingerprint.clone(), wrapped, bound: false }))
        }
        .boxed()
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey, context: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        async move {
            expect_service(wrapped, LOCAL, &self.fingerprint)?;
            if wrapped.key_id != self.fingerprint {
                return Err(KeyError::OtherKey {
                    found: format!("local key {}", wrapped.key_id),
                    configured: format!("local key {}", self.fingerprint),
                });
            }
            let refused =
                |reason: &str| KeyError::Refused { service: LOCAL, what: "unwrap the data key", reason: reason.into() };
            let bytes = BASE64.decode(&wrapped.wrapped).map_err(|_| refused("the wrapped key is not base64"))?;
            if bytes.len() < NONCE_LEN {
                return Err(refused("the wrapped key is too short"));
            }
            let (nonce, sealed) = bytes.split_at(NONCE_LEN);
            let mut sealed = Zeroizing::new(sealed.to_vec());
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused("bad nonce"))?;
            let plain = self
                .key
                .open_in_place(nonce, Aad::from(context.as_bytes()), &mut sealed)
                .map_err(|_| refused("the wrapped key does not authenticate (altered, or another backup's)"))?;
            DataKey::from_bytes(plain).map_err(|err| refused(&err.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_key_wraps_for_one_backup_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/backup.key");
        let service = LocalKey::open_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (key, wrapped) = service.generate("backup-a").await.unwrap();
        let again = LocalKey::open_or_create(&path).unwrap();
        assert_eq!(again.unwrap(&wrapped, "backup-a").await.unwrap().expose(), key.expose());
        assert!(matches!(again.unwrap(&wrapped, "backup-b").await, Err(KeyError::Refused { .. })));
        let other = LocalKey::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(matches!(other.unwrap(&wrapped, "backup-a").await, Err(KeyError::OtherKey { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = LocalKey::open_or_create(&path).err().expect("a key others can read is refused");
        assert!(exposed.to_string().contains("mode 644"), "{exposed}");
    }
}
