//! AWS Secrets Manager, with its own staging labels moved exactly as AWS's rotation functions
//! move them, so that existing AWS consumers (reading `AWSCURRENT`) keep working unchanged.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;

use super::{Pending, SecretStore, StoreError, Stored};
use crate::aws::{AwsSettings, SdkFailure};
use crate::secret::{SecretString, StoreKind};

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";

/// A Secrets Manager client.
pub struct AwsSecretsManager {
    client: Client,
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    what: String,
    path: &str,
    err: SdkError<E, R>,
) -> StoreError {
    match crate::aws::sdk_failure(&err) {
        SdkFailure::Transient(reason) => StoreError::Transient { what, reason },
        SdkFailure::NotFound(_) => StoreError::NotFound { store: StoreKind::AwsSecretsManager, path: path.to_owned() },
        SdkFailure::Refused(reason) => StoreError::Refused { what, reason },
    }
}

impl AwsSecretsManager {
    /// A client for the configured region and endpoint, with static credentials when given.
    pub async fn connect(aws: &AwsSettings) -> Result<Self, StoreError> {
        let sdk = crate::aws::sdk_config(aws)
            .await
            .map_err(|source| StoreError::Credentials { store: StoreKind::AwsSecretsManager, source })?;
        Ok(Self { client: Client::new(&sdk) })
    }

    /// Version ids by the labels they carry.
    async fn stages(&self, path: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let described = self
            .client
            .describe_secret()
            .secret_id(path)
            .send()
            .await
            .map_err(|err| classify(format!("describe secret {path}"), path, err))?;
        Ok(described
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    /// Takes AWSPENDING off version `token`.
    async fn remove_pending(&self, path: &str, token: &str) -> Result<(), StoreError> {
        self.client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(PENDING)
            .remove_from_version_id(token)
            .send()
            .await
            .map_err(|err| classify(format!("remove the pending stage of {path}"), path, err))?;
        Ok(())
    }

    async fn version_with(&self, path: &str, stage: &str) -> Result<Option<String>, StoreError> {
        Ok(self.stages(path).await?.into_iter().find(|(_, stages)| stages.iter().any(|s| s == stage)).map(|(id, _)| id))
    }
}

impl SecretStore for AwsSecretsManager {
    fn current<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Stored, StoreError>> {
        async move {
            let got = self
                .client
                .get_secret_value()
                .secret_id(path)
                .version_stage(CURRENT)
                .send()
                .await
                .map_err(|err| classify(format!("read the current value of {path}"), path, err))?;
            let value = got.secret_string().ok_or_else(|| StoreError::Malformed { path: path.to_owned() })?;
            Ok(Stored {
                version: got.version_id().unwrap_or_default().to_owned(),
                value: SecretString::from(value.to_owned()),
            })
        }
        .boxed()
    }

    fn pending<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Pending>, StoreError>> {
        async move {
            // One call: the version labelled AWSPENDING, with its id (the token it was staged
            // under). No such version is AWS's ResourceNotFoundException, as for a missing secret,
            // so a missing secret is told apart by the current value's read that precedes any
            // rotation.
            let got = match self.client.get_secret_value().secret_id(path).version_stage(PENDING).send().await {
                Ok(got) => got,
                Err(err) => {
                    return match classify(format!("read the pending value of {path}"), path, err) {
                        StoreError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    };
                }
            };
            let token = got.version_id().unwrap_or_default().to_owned();
            let value = got.secret_string().ok_or_else(|| StoreError::Malformed { path: path.to_owned() })?;
            Ok(Some(Pending { token, value: SecretString::from(value.to_owned()) }))
        }
        .boxed()
    }

    fn put_pending<'a>(
        &'a self,
        path: &'a str,
        token: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if !matches!(serde_json::from_str(value.expose_secret()), Ok(serde_json::Value::Object(_))) {
                return Err(StoreError::Malformed { path: path.to_owned() });
            }
            // The token is the ClientRequestToken: repeating the call is a no-op, and attaching
            // AWSPENDING here takes it off any older version.
            self.client
                .put_secret_value()
                .secret_id(path)
                .client_request_token(token)
                .secret_string(value.expose_secret())
                .version_stages(PENDING)
                .send()
                .await
                .map_err(|err| classify(format!("stage a pending value of {path}"), path, err))?;
            Ok(())
        }
        .boxed()
    }

    fn promote<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let stages = self.stages(path).await?;
            let Some((_, token_stages)) = stages.iter().find(|(id, _)| id == token) else {
                return Err(StoreError::Conflict {
                    path: path.to_owned(),
                    reason: format!("no version was staged by rotation {token}"),
                });
            };
            let staged = token_stages.iter().any(|s| s == PENDING);
            let current = token_stages.iter().any(|s| s == CURRENT);
            if !staged && !current {
                // The version exists but another rotation's stage replaced it: never promote it.
                return Err(StoreError::Conflict {
                    path: path.to_owned(),
                    reason: format!("rotation {token}'s value is no longer staged"),
                });
            }
            if !current {
                let current = stages.iter().find(|(_, s)| s.iter().any(|s| s == CURRENT)).map(|(id, _)| id.clone());
                let mut update = self
                    .client
                    .update_secret_version_stage()
                    .secret_id(path)
                    .version_stage(CURRENT)
                    .move_to_version_id(token);
                if let Some(current) = current {
                    update = update.remove_from_version_id(current);
                }
                update
                    .send()
                    .await
                    .map_err(|err| classify(format!("make rotation {token}'s value current in {path}"), path, err))?;
            }
            if staged {
                // The stages read above say AWSPENDING is on this version: take it off without
                // reading them again.
                self.remove_pending(path, token).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn discard_pending<'a>(&'a self, path: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if self.version_with(path, PENDING).await?.as_deref() != Some(token) {
                return Ok(());
            }
            self.remove_pending(path, token).await
        }
        .boxed()
    }
}
