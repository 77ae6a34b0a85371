//! Vault / OpenBao KV version 2.
//!
//! The current value is the secret's newest version, which is what KV readers (Vault Agent,
//! External Secrets, application libraries) read by default; a pending value is therefore
//! never written as a version of the secret, where every such reader would be served it before
//! it passed its test. It is staged at the sibling path `<path>/vigil-pending` (with the token
//! of the rotation that wrote it inside the same write, so the two cannot part), and promoted
//! by a check-and-set write of a new version. The secret's `custom_metadata` records the
//! stages: `vigil_current_version`, `vigil_previous_version`, and `vigil_rotation` (the
//! rotation that made the current version).

use std::collections::HashMap;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;
use serde_json::{Map, Value};
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::kv2;

use super::{Pending, SecretStore, StoreError, Stored};
use crate::secret::{SecretRef, SecretString, StoreKind};

/// Vault or OpenBao settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VaultSettings {
    /// The server address, `http(s)://host:port`.
    pub address: String,
    /// The token, by reference.
    pub token: SecretRef,
    /// The KV version 2 mount holding secrets.
    pub kv_mount: String,
    /// The Transit mount wrapping backup keys.
    pub transit_mount: String,
    /// The Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
    /// CA certificates (PEM) trusted besides the system's, for an `https://` address.
    pub ca_file: Option<std::path::PathBuf>,
}

const PENDING_CHILD: &str = "vigil-pending";

/// The newest version of a secret, as one read returns it.
struct Latest {
    version: u64,
    custom: HashMap<String, String>,
    value: Map<String, Value>,
}

/// A KV v2 mount on a Vault or OpenBao server.
pub struct VaultKv {
    client: VaultClient,
    mount: String,
}

fn classify(what: String, path: &str, err: ClientError) -> StoreError {
    match err {
        ClientError::APIError { code: 404, .. } => {
            StoreError::NotFound { store: StoreKind::VaultKv, path: path.to_owned() }
        }
        ClientError::APIError { code, errors } => {
            let reason = format!("HTTP {code}: {}", errors.join("; "));
            if errors.iter().any(|e| e.contains("check-and-set")) {
                StoreError::Conflict { path: path.to_owned(), reason }
            } else if code == 429 || code >= 500 {
                StoreError::Transient { what, reason }
            } else {
                StoreError::Refused { what, reason }
            }
        }
        ClientError::RestClientError { source } => StoreError::Transient { what, reason: source.to_string() },
        other => StoreError::Refused { what, reason: other.to_string() },
    }
}

fn pending_path(path: &str) -> String {
    format!("{path}/{PENDING_CHILD}")
}

/// A stored value as the JSON object KV keeps.
fn object(path: &str, value: &SecretString) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str(value.expose_secret()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Malformed { path: path.to_owned() }),
    }
}

/// A client for the configured Vault or OpenBao server: address, token and namespace. Shared by
/// KV and Transit.
pub fn client(vault: &VaultSettings) -> Result<VaultClient, StoreError> {
    let token =
        vault.token.resolve_local().map_err(|source| StoreError::Credentials { store: StoreKind::VaultKv, source })?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(&vault.address).token(token.expose_secret());
    // The CA from configuration only (not VAULT_CACERT, which the client library would read):
    // what vigil trusts is what `config check` showed.
    settings.ca_certs(vault.ca_file.iter().map(|ca| ca.display().to_string()).collect());
    // VAULT_SKIP_VERIFY is honoured, as every Vault client honours it, but never silently.
    let skip = std::env::var("VAULT_SKIP_VERIFY")
        .is_ok_and(|v| !matches!(v.to_lowercase().as_str(), "" | "0" | "f" | "false"));
    if skip && vault.address.starts_with("https://") {
        tracing::warn!(address = %vault.address, "VAULT_SKIP_VERIFY is set: Vault's certificate is NOT verified, and an impostor could take the token");
    }
    settings.verify(!skip);
    if let Some(namespace) = &vault.namespace {
        settings.namespace(Some(namespace.clone()));
    }
    let settings = settings
        .build()
        .map_err(|err| StoreError::Refused { what: "configure the Vault client".into(), reason: err.to_string() })?;
    VaultClient::new(settings).map_err(|err| classify("create the Vault client".into(), "", err))
}

impl VaultKv {
    /// A client for the configured address, token and KV mount.
    pub fn connect(vault: &VaultSettings) -> Result<Self, StoreError> {
        Ok(Self { client: client(vault)?, mount: vault.kv_mount.clone() })
    }

    async fn staged(&self, path: &str) -> Result<Option<Pending>, StoreError> {
        let staged: Map<String, Value> = match kv2::read(&self.client, &self.mount, &pending_path(path)).await {
            Ok(staged) => staged,
            Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
            Err(err) => return Err(classify(format!("read the pending value of {path}"), path, err)),
        };
        let (Some(Value::String(token)), Some(Value::Object(value))) = (staged.get("token"), staged.get("value"))
        else {
            return Err(StoreError::Malformed { path: pending_path(path) });
        };
        Ok(Some(Pending { token: token.clone(), value: SecretString::from(Value::Object(value.clone()).to_string()) }))
    }

    /// Writes a public document (a JWKS, never a credential) as the newest version of `path`,
    /// with `metadata` (such as the `cache-control` a proxy in front of Vault should serve) in
    /// its custom metadata. An unchanged document is not written again.
    pub async fn write_document(
        &self,
        path: &str,
        document: &Value,
        metadata: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        if self.read_document(path).await?.as_ref() != Some(document) {
            kv2::set(&self.client, &self.mount, path, document)
                .await
                .map_err(|err| classify(format!("write {path}"), path, err))?;
        }
        let mut request = SetSecretMetadataRequest::builder();
        request.custom_metadata(metadata);
        kv2::set_metadata(&self.client, &self.mount, path, Some(&mut request))
            .await
            .map_err(|err| classify(format!("set the metadata of {path}"), path, err))
    }

    /// The newest version of the public document at `path`, if there is one.
    pub async fn read_document(&self, path: &str) -> Result<Option<Value>, StoreError> {
        match kv2::read::<Value>(&self.client, &self.mount, path).await {
            Ok(document) => Ok(Some(document)),
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(err) => Err(classify(format!("read {path}"), path, err)),
        }
    }

    async fn remove_pending(&self, path: &str) -> Result<(), StoreError> {
        kv2::delete_metadata(&self.client, &self.mount, &pending_path(path))
            .await
            .map_err(|err| classify(format!("remove the pending value of {path}"), path, err))
    }

    /// The newest version of `path` with its number and the secret's custom metadata, in one
    /// read (KV v2 returns the metadata beside the data); `None` when there is no such secret.
    async fn latest(&self, path: &str) -> Result<Option<Latest>, StoreError> {
        let what = || format!("read the current value of {path}");
        let request = ReadSecretRequest::builder()
            .mount(&self.mount)
            .path(path)
            .build()
            .map_err(|err| StoreError::Refused { what: what(), reason: err.to_string() })?;
        let read = match vaultrs::api::exec_with_result(&self.client, request).await {
            Ok(read) => read,
            Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
            Err(err) => return Err(classify(what(), path, err)),
        };
        let Value::Object(value) = read.data else {
            return Err(StoreError::Malformed { path: path.to_owned() });
        };
        let custom = read.metadata.custom_metadata.unwrap_or_default();
        Ok(Some(Latest { version: read.metadata.version, custom, value }))
    }
}

impl SecretStore for VaultKv {
    fn current<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Stored, StoreError>> {
        async move {
            let latest = self
                .latest(path)
                .await?
                .ok_or_else(|| StoreError::NotFound { store: StoreKind::VaultKv, path: path.to_owned() })?;
            Ok(Stored {
                version: latest.version.to_string(),
                value: SecretString::from(Value::Object(latest.value).to_string()),
            })
        }
        .boxed()
    }

    fn pending<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Pending>, StoreError>> {
        self.staged(path).boxed()
    }

    fn put_pending<'a>(
        &'a self,
        path: &'a str,
        token: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            // One write of the whole pending document: repeated with the same token and value,
            // it stages the same thing again.
            let staged = serde_json::json!({ "token": token, "value": Value::Object(object(path, value)?) });
            kv2::set(&self.client, &self.mount, &pending_path(path), &staged)
                .await
                .map_err(|err| classify(format!("stage a pending value of {path}"), path, err))?;
            Ok(())
        }
        .boxed()
    }

    fn promote<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let latest = self.latest(path).await?;
            let Some(staged) = self.staged(path).await?.filter(|p| p.token == token) else {
                // Promoted and cleaned up already?
                if latest.as_ref().is_some_and(|l| l.custom.get("vigil_rotation").map(String::as_str) == Some(token)) {
                    return Ok(());
                }
                return Err(StoreError::Conflict {
                    path: path.to_owned(),
                    reason: format!("no value was staged by rotation {token}"),
                });
            };
            let value = object(path, &staged.value)?;
            let (latest_version, mut custom, already_written) = match latest {
                Some(l) => (l.version, l.custom, l.value == value),
                None => (0, HashMap::new(), false),
            };
            let (version, previous) = if already_written {
                // A promotion cut short after its write: the version before is still the one the
                // stages name as current.
                let previous = custom
                    .get("vigil_current_version")
                    .cloned()
                    .unwrap_or_else(|| latest_version.saturating_sub(1).to_string());
                (latest_version, previous)
            } else {
                // Check-and-set on the version read: a concurrent writer makes this fail, not vanish.
                let options = SetSecretRequestOptions { cas: u32::try_from(latest_version).unwrap_or(u32::MAX) };
                let written = kv2::set_with_options(&self.client, &self.mount, path, &value, options)
                    .await
                    .map_err(|err| classify(format!("write the new current value of {path}"), path, err))?;
                (written.version, latest_version.to_string())
            };
            custom.insert("vigil_current_version".into(), version.to_string());
            custom.insert("vigil_previous_version".into(), previous);
            custom.insert("vigil_rotation".into(), token.to_owned());
            let mut request = SetSecretMetadataRequest::builder();
            request.custom_metadata(custom);
            kv2::set_metadata(&self.client, &self.mount, path, Some(&mut request))
                .await
                .map_err(|err| classify(format!("record the stages of {path}"), path, err))?;
            // The pending value read above is this rotation's: remove it without reading again.
            self.remove_pending(path).await
        }
        .boxed()
    }

    fn discard_pending<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if self.staged(path).await?.is_none_or(|p| p.token != token) {
                return Ok(());
            }
            self.remove_pending(path).await
        }
        .boxed()
    }
}
