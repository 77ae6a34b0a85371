//! JWT signing-key rotation: a key moves from *next* (published, not signing) to *current*
//! (signing) to *previous* (published for verification only) to *retired* (gone).
//!
//! 1. **generate**: a new key pair, staged as pending in the secret store under the rotation
//!    id (signers read the current value, so it does not sign yet);
//! 2. **publish**: the JWKS lists the current key and the new one; the time the new key may
//!    sign is recorded: `jwks_cache` later, when every verifier's cached JWKS has it;
//! 3. **promote** (waits for that time): the new key becomes current in the store, and
//!    signers pick it up; the old one is previous;
//! 4. **retire** (waits `max_token_lifetime + clock_skew` after promote): the JWKS lists only
//!    the new key, once the last token the old one signed has expired.
//!
//! Waits are recorded as the saga's position, so a restart neither loses a step nor runs it
//! early. Public JWKs (never private keys) are kept in the saga's data: the JWKS is rebuilt
//! from them at each step, so each publish is the whole document and idempotent.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{JwtSpec, SecretSpec};
use crate::jwks::{self, JwksPublisher, SigningKey};
use crate::saga::{SagaDef, SagaRow, Step, StepError};
use crate::stores::SecretStore;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtStep {
    /// Generate and stage a new key pair.
    Generate,
    /// Publish its public key beside the current one.
    Publish,
    /// Make it the signing key, once verifiers have it.
    Promote,
    /// Unpublish the previous key, once its tokens have expired.
    Retire,
}

impl Step for JwtStep {
    const ALL: &'static [Self] = &[Self::Generate, Self::Publish, Self::Promote, Self::Retire];

    fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Publish => "publish",
            Self::Promote => "promote",
            Self::Retire => "retire",
        }
    }
}

/// One JWT signing key's rotation.
pub struct JwtKeyRotation<'a> {
    /// The secret's settings.
    pub spec: &'a SecretSpec,
    /// Its JWT settings.
    pub jwt: &'a JwtSpec,
    /// Where the private key is stored.
    pub store: &'a dyn SecretStore,
    /// Where the JWKS is published.
    pub publisher: &'a dyn JwksPublisher,
    /// The time, for the waits.
    pub clock: &'a dyn Clock,
}

/// What a JWT signing-key rotation records: the public JWKs it publishes (never a private
/// key) and the times its waiting steps become due.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JwtData {
    /// `overlap`.
    pub strategy: String,
    /// The algorithm the new key signs with.
    pub algorithm: String,
    /// The public JWK of the key signing when it started, if any.
    pub current_jwk: Option<Value>,
    /// The public JWK of the new key, once generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_jwk: Option<Value>,
    /// When the new key may sign (RFC 3339): the verifiers' cache time after it was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_at: Option<String>,
    /// When the old key leaves the JWKS (RFC 3339): its last token's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}

impl JwtData {
    /// The new key's id, once generated.
    pub fn next_kid(&self) -> Option<&str> {
        self.next_jwk.as_ref().and_then(jwks::kid)
    }
}

impl JwtKeyRotation<'_> {
    /// The key staged by this rotation, if it is still staged.
    async fn staged(&self, saga: &SagaRow) -> Result<Option<SigningKey>, StepError> {
        match self.store.pending(&self.spec.path).await? {
            Some(pending) if pending.token == saga.id => Ok(SigningKey::from_stored(&pending.value)?),
            _ => Ok(None),
        }
    }

    async fn publish(&self, keys: &[Option<&Value>]) -> Result<(), StepError> {
        let document = jwks::document(keys.iter().copied().flatten());
        Ok(self.publisher.publish(&document, &jwks::cache_control(self.jwt.jwks_cache)).await?)
    }

    fn later(&self, by: crate::schedule::Duration) -> String {
        (self.clock.now() + by.to_chrono()).to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// Whether the store's current key is this rotation's new key.
    async fn promoted(&self, data: &JwtData) -> Result<bool, StepError> {
        let current = SigningKey::from_stored(&self.store.current(&self.spec.path).await?.value)?;
        Ok(current.is_some_and(|key| Some(key.kid.as_str()) == data.next_kid()))
    }
}

impl From<jwks::KeyError> for StepError {
    fn from(err: jwks::KeyError) -> Self {
        Self::Failed(err.to_string())
    }
}

fn time(value: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value?).ok().map(|t| t.with_timezone(&Utc))
}

impl SagaDef for JwtKeyRotation<'_> {
    type Step = JwtStep;
    type Data = JwtData;
    const KIND: &'static str = "rotation.jwt_signing_key";
    const AREA: crate::evidence::Area = crate::evidence::Area::Rotation;
    const RESUME: &'static str = "vigil rotate --resume";

    fn not_before(&self, data: &JwtData, step: JwtStep) -> Option<DateTime<Utc>> {
        match step {
            JwtStep::Promote => time(data.sign_at.as_deref()),
            JwtStep::Retire => time(data.retire_at.as_deref()),
            JwtStep::Generate | JwtStep::Publish => None,
        }
    }

    async fn act(&self, saga: &SagaRow, data: &JwtData, step: JwtStep) -> Result<Option<JwtData>, StepError> {
        let mut data = data.clone();
        match step {
            JwtStep::Generate => {
                let key = match self.staged(saga).await? {
                    Some(key) => key,
                    None => {
                        let key = SigningKey::generate(self.jwt.algorithm)?;
                        self.store.put_pending(&self.spec.path, &saga.id, &key.to_stored()).await?;
                        // Read back: if another writer replaced the stage, this rotation fails
                        // instead of publishing a key nobody holds.
                        self.staged(saga).await?.ok_or_else(|| StepError::Failed("the staged key is gone".into()))?
                    }
                };
                data.next_jwk = Some(key.public);
            }
            JwtStep::Publish => {
                self.publish(&[data.current_jwk.as_ref(), data.next_jwk.as_ref()]).await?;
                data.sign_at = Some(self.later(self.jwt.jwks_cache));
            }
            JwtStep::Promote => {
                self.store.promote(&self.spec.path, &saga.id).await?;
                if data.retire_at.is_none() {
                    data.retire_at = Some(self.later(self.jwt.retention()));
                }
            }
            JwtStep::Retire => self.publish(&[data.next_jwk.as_ref()]).await?,
        }
        Ok(Some(data))
    }

    async fn undo(&self, saga: &SagaRow, data: &JwtData, step: JwtStep) -> Result<(), StepError> {
        match step {
            JwtStep::Promote | JwtStep::Retire => Ok(()),
            JwtStep::Publish => {
                // Once the new key signs, unpublishing it would reject every token it signed.
                if self.promoted(data).await? {
                    return Err(StepError::Failed(
                        "the new key is already the signing key, so it stays published; publish the JWKS by hand after checking the store".into(),
                    ));
                }
                // Nothing to take back if the document never listed the new key (the publish
                // failed before writing); an unreadable document is rewritten to be sure.
                let next = data.next_kid();
                if let Ok(published) = self.publisher.fetch().await
                    && !jwks::kids(published.as_ref()).any(|kid| Some(kid) == next)
                {
                    return Ok(());
                }
                self.publish(&[data.current_jwk.as_ref()]).await
            }
            JwtStep::Generate => Ok(self.store.discard_pending(&self.spec.path, &saga.id).await?),
        }
    }
}

impl From<crate::jwks::PublishError> for StepError {
    fn from(err: crate::jwks::PublishError) -> Self {
        match err {
            crate::jwks::PublishError::Transient { .. } => Self::Transient(err.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}
