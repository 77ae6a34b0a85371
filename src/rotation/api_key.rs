//! API-key rotation: a new key issued beside the old one, which stays valid for the overlap
//! window and is then revoked.
//!
//! 1. **create**: a key issued under the rotation id (the issuer returns the same key when
//!    asked again) and staged as pending;
//! 2. **test**: the issuer accepts it;
//! 3. **finish**: it becomes current; the retire time is recorded;
//! 4. **retire**: once the overlap has passed, the previous key is revoked. Until then the saga
//!    waits at this step, recorded, so a restart neither loses it nor runs it early.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret as _;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{SecretSpec, Strategy};
use crate::issuers::{IssuerError, KeyIssuer};
use crate::saga::{SagaDef, SagaRow, Step, StepError};
use crate::secret::SecretString;
use crate::stores::SecretStore;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// Issue and stage a new key.
    Create,
    /// Authenticate with it.
    Test,
    /// Make it current.
    Finish,
    /// Revoke the previous key after the overlap.
    Retire,
}

impl Step for KeyStep {
    const ALL: &'static [Self] = &[Self::Create, Self::Test, Self::Finish, Self::Retire];

    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Test => "test",
            Self::Finish => "finish",
            Self::Retire => "retire",
        }
    }
}

impl From<IssuerError> for StepError {
    fn from(err: IssuerError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

/// What an API-key rotation records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyData {
    /// `overlap`.
    pub strategy: String,
    /// The id of the key current when it started, revoked at retire.
    pub previous_id: String,
    /// The id of the new key, once issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the previous key is revoked (RFC 3339), once the new one is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}

/// One API key's rotation.
pub struct ApiKeyRotation<'a> {
    /// The secret's name (the key's name at the issuer).
    pub name: &'a str,
    /// Its settings.
    pub spec: &'a SecretSpec,
    /// Where it is stored.
    pub store: &'a dyn SecretStore,
    /// Who issues it.
    pub issuer: &'a dyn KeyIssuer,
    /// The time, for the retire step.
    pub clock: &'a dyn Clock,
}

/// A stored key: `{"id": …, "key": …}`.
pub(super) struct StoredKey {
    pub id: String,
    pub secret: SecretString,
}

pub(super) fn parse_key(path: &str, value: &SecretString) -> Result<StoredKey, StepError> {
    let parsed: Value = serde_json::from_str(value.expose_secret()).unwrap_or(Value::Null);
    match (parsed["id"].as_str(), parsed["key"].as_str()) {
        (Some(id), Some(key)) => Ok(StoredKey { id: id.to_owned(), secret: SecretString::from(key.to_owned()) }),
        _ => Err(StepError::Failed(format!("secret {path} is not a JSON object with string `id` and `key`"))),
    }
}

impl ApiKeyRotation<'_> {
    async fn staged(&self, saga: &SagaRow) -> Result<Option<StoredKey>, StepError> {
        match self.store.pending(&self.spec.path).await? {
            Some(pending) if pending.token == saga.id => Ok(Some(parse_key(&self.spec.path, &pending.value)?)),
            _ => Ok(None),
        }
    }

    fn overlap(&self) -> chrono::Duration {
        match &self.spec.strategy {
            Strategy::Overlap { window } => window.to_chrono(),
            _ => chrono::Duration::zero(),
        }
    }
}

impl SagaDef for ApiKeyRotation<'_> {
    type Step = KeyStep;
    type Data = KeyData;
    const KIND: &'static str = "rotation.api_key";
    const AREA: crate::evidence::Area = crate::evidence::Area::Rotation;
    const RESUME: &'static str = "vigil rotate --resume";

    fn not_before(&self, data: &KeyData, step: KeyStep) -> Option<DateTime<Utc>> {
        let retire_at = data.retire_at.as_deref()?;
        (step == KeyStep::Retire)
            .then(|| DateTime::parse_from_rfc3339(retire_at).ok().map(|t| t.with_timezone(&Utc)))?
    }

    async fn act(&self, saga: &SagaRow, data: &KeyData, step: KeyStep) -> Result<Option<KeyData>, StepError> {
        match step {
            KeyStep::Create => {
                if self.staged(saga).await?.is_none() {
                    let issued = self.issuer.issue(self.name, &saga.id).await?;
                    let value =
                        serde_json::json!({ "id": issued.id, "key": issued.secret.expose_secret() }).to_string();
                    self.store.put_pending(&self.spec.path, &saga.id, &SecretString::from(value)).await?;
                }
                let staged =
                    self.staged(saga).await?.ok_or_else(|| StepError::Failed("the staged key is gone".into()))?;
                Ok(Some(KeyData { key_id: Some(staged.id), ..data.clone() }))
            }
            KeyStep::Test => {
                let staged =
                    self.staged(saga).await?.ok_or_else(|| StepError::Failed("the staged key is gone".into()))?;
                match self.issuer.authenticate(&staged.secret).await {
                    Ok(id) if id == staged.id => Ok(None),
                    Ok(id) => {
                        Err(StepError::Failed(format!("the issuer knows the new key as {id}, not {}", staged.id)))
                    }
                    Err(IssuerError::Rejected) => {
                        Err(StepError::Failed("the issuer does not accept the new key".into()))
                    }
                    Err(err) => Err(err.into()),
                }
            }
            KeyStep::Finish => {
                self.store.promote(&self.spec.path, &saga.id).await?;
                // Kept when repeated: the overlap runs from the first promotion.
                let retire_at = data
                    .retire_at
                    .clone()
                    .unwrap_or_else(|| (self.clock.now() + self.overlap()).to_rfc3339_opts(SecondsFormat::Secs, true));
                Ok(Some(KeyData { retire_at: Some(retire_at), ..data.clone() }))
            }
            KeyStep::Retire => {
                self.issuer.revoke(&data.previous_id).await?;
                Ok(None)
            }
        }
    }

    async fn undo(&self, saga: &SagaRow, _: &KeyData, step: KeyStep) -> Result<(), StepError> {
        match step {
            KeyStep::Test | KeyStep::Finish | KeyStep::Retire => Ok(()),
            // A key issued for a rotation that did not finish must not stay valid.
            KeyStep::Create => {
                if let Some(staged) = self.staged(saga).await? {
                    self.issuer.revoke(&staged.id).await?;
                }
                self.store.discard_pending(&self.spec.path, &saga.id).await?;
                Ok(())
            }
        }
    }
}
