//! Secret stores behind one small trait: the current value, a pending value written under a
//! rotation's idempotency token, its promotion to current, and its removal.
//!
//! AWS Secrets Manager keeps stages as its own labels (`AWSCURRENT`, `AWSPENDING`,
//! `AWSPREVIOUS`), moved as AWS's rotation functions move them. Vault/OpenBao KV v2 keeps the
//! current value as the newest version of the secret, which is what its readers read; the
//! mapping is in ARCHITECTURE.md. Stores know nothing of sagas, schedules or evidence; every
//! write takes the rotation id as its idempotency token.

mod aws_sm;
mod vault_kv;

use futures_util::future::BoxFuture;

pub use aws_sm::AwsSecretsManager;
pub use vault_kv::{VaultKv, VaultSettings, client as vault_client};

use crate::aws::AwsSettings;
use crate::secret::{Credential, ResolveError, SecretRef, SecretString, StoreKind};

/// A secret's value (a JSON object, as text) and the store's id for that version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The store's version id: AWS's VersionId, Vault's version number.
    pub version: String,
    /// The value: a JSON object, e.g. AWS's rotation template for databases.
    pub value: SecretString,
}

/// A pending value and the rotation that wrote it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The rotation id it was written under.
    pub token: String,
    /// The value.
    pub value: SecretString,
}

/// Why a store operation failed. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The secret does not exist.
    #[error("secret {path} does not exist in {store}")]
    NotFound {
        /// The store.
        store: StoreKind,
        /// The secret's path.
        path: String,
    },
    /// Another writer got there first (a check-and-set lost, another rotation's pending value).
    #[error("secret {path}: {reason}")]
    Conflict {
        /// The secret's path.
        path: String,
        /// What conflicted.
        reason: String,
    },
    /// A failure that may pass: throttling, a 5xx, a connection reset. Retry.
    #[error("{what} failed for now: {reason}")]
    Transient {
        /// What was attempted.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The store refused: permissions, a malformed request.
    #[error("{what}: {reason}")]
    Refused {
        /// What was attempted.
        what: String,
        /// What the store said.
        reason: String,
    },
    /// The stored value is not what vigil writes.
    #[error("secret {path} is not a JSON object; vigil stores each credential as one")]
    Malformed {
        /// The secret's path.
        path: String,
    },
    /// The store's own credentials could not be read.
    #[error("cannot read the credentials for {store}: {source}")]
    Credentials {
        /// The store.
        store: StoreKind,
        /// Why.
        source: ResolveError,
    },
    /// The store is used but not configured.
    #[error("{0} is not configured; add its section to vigil.toml")]
    NotConfigured(StoreKind),
}

impl StoreError {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Store clients for one run of a command or the daemon, connected on first use and kept: a
/// client builds its HTTP and TLS stack, which a loop over secrets would otherwise repeat.
pub struct Stores<'a> {
    aws: Option<&'a AwsSettings>,
    vault: Option<&'a VaultSettings>,
    clients: std::sync::Mutex<std::collections::HashMap<StoreKind, std::sync::Arc<dyn SecretStore>>>,
}

/// Why a credential reference could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Its store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It was read but is not what it should be, or its file or variable is missing.
    #[error("{0}")]
    Unreadable(String),
}

impl<'a> Stores<'a> {
    /// No clients yet, for the stores these settings configure.
    pub fn new(aws: Option<&'a AwsSettings>, vault: Option<&'a VaultSettings>) -> Self {
        Self { aws, vault, clients: std::sync::Mutex::default() }
    }

    /// The client for `kind`, connected once. No lock is held while it connects: two callers
    /// racing may both connect, and the first kept serves both from then on.
    pub async fn get(&self, kind: StoreKind) -> Result<std::sync::Arc<dyn SecretStore>, StoreError> {
        let known = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(&kind).cloned();
        if let Some(client) = known {
            return Ok(client);
        }
        let client: std::sync::Arc<dyn SecretStore> = std::sync::Arc::from(connect(kind, self.aws, self.vault).await?);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        Ok(clients.entry(kind).or_insert(client).clone())
    }

    /// The value `reference` names: from its store (one JSON field of it when `key` is given),
    /// the environment or a file.
    pub async fn resolve(&self, reference: &SecretRef) -> Result<SecretString, ReferenceError> {
        use secrecy::ExposeSecret as _;
        match reference {
            SecretRef::Store { store, path, key } => {
                let value = self.get(*store).await?.current(path).await?.value;
                let Some(key) = key else { return Ok(value) };
                let parsed: serde_json::Value = serde_json::from_str(value.expose_secret()).unwrap_or_default();
                let field = parsed[key.as_str()]
                    .as_str()
                    .ok_or_else(|| ReferenceError::Unreadable(format!("secret {path} has no string field {key}")))?;
                Ok(SecretString::from(field.to_owned()))
            }
            SecretRef::File { .. } => {
                // A file is read on a blocking thread, not the runtime's.
                let file = reference.clone();
                tokio::task::spawn_blocking(move || file.resolve_local())
                    .await
                    .map_err(|err| {
                        ReferenceError::Unreadable(format!("reading {reference} stopped unexpectedly: {err}"))
                    })?
                    .map_err(|err| ReferenceError::Unreadable(err.to_string()))
            }
            SecretRef::Env { .. } => {
                reference.resolve_local().map_err(|err| ReferenceError::Unreadable(err.to_string()))
            }
        }
    }

    /// A database login `reference` names: a JSON object with `username` and `password`.
    pub async fn login(&self, reference: &SecretRef) -> Result<Credential, ReferenceError> {
        let value = self.resolve(reference).await?;
        Credential::from_json(&value).map_err(ReferenceError::Unreadable)
    }
}

/// A place credentials live. Every method is idempotent.
pub trait SecretStore: Send + Sync {
    /// The value labelled current.
    fn current<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Stored, StoreError>>;

    /// The pending value, if one is staged.
    fn pending<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Pending>, StoreError>>;

    /// Stages `value` (a JSON object) as pending under `token`, a rotation id (a UUID: AWS wants
    /// 32 to 64 characters). Writing the same token again is a no-op; a
    /// pending value of another token is replaced, so no stale stage blocks a new rotation.
    fn put_pending<'a>(
        &'a self,
        path: &'a str,
        token: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Makes the value staged under `token` current, and the old current previous. Done
    /// already (the token's value is current) is success.
    fn promote<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes the pending stage written under `token`, if it is still there.
    fn discard_pending<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The store of `kind`, configured by `aws` or `vault`.
pub async fn connect(
    kind: StoreKind,
    aws: Option<&AwsSettings>,
    vault: Option<&VaultSettings>,
) -> Result<Box<dyn SecretStore>, StoreError> {
    Ok(match kind {
        StoreKind::AwsSecretsManager => {
            let aws = aws.ok_or(StoreError::NotConfigured(kind))?;
            Box::new(AwsSecretsManager::connect(aws).await?)
        }
        StoreKind::VaultKv => {
            let vault = vault.ok_or(StoreError::NotConfigured(kind))?;
            Box::new(VaultKv::connect(vault)?)
        }
    })
}
