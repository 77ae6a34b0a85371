//! The one AWS SDK configuration that every AWS client (Secrets Manager, S3, and later RDS and
//! KMS) is built from: region, endpoint and credentials from `[aws]`.

use aws_config::SdkConfig;
use secrecy::ExposeSecret as _;

use crate::secret::{ResolveError, SecretRef};

/// AWS settings shared by Secrets Manager, S3, RDS and KMS.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AwsSettings {
    /// The region.
    pub region: String,
    /// A custom endpoint (a VPC endpoint, or a local emulator in tests).
    pub endpoint_url: Option<String>,
    /// Static credentials by reference; the SDK's default chain when absent.
    pub credentials: Option<AwsCredentials>,
}

/// Static AWS credentials, by reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AwsCredentials {
    /// The access key id.
    pub access_key_id: SecretRef,
    /// The secret access key.
    pub secret_access_key: SecretRef,
}

/// The SDK configuration for `aws`: static credentials when configured, the SDK's default
/// chain (environment, profile, instance role) otherwise.
pub async fn sdk_config(aws: &AwsSettings) -> Result<SdkConfig, ResolveError> {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).region(aws_config::Region::new(aws.region.clone()));
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(credentials) = &aws.credentials {
        let id = credentials.access_key_id.resolve_local()?;
        let key = credentials.secret_access_key.resolve_local()?;
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id.expose_secret(),
            key.expose_secret(),
            None,
            None,
            "vigil.toml",
        ));
    }
    Ok(loader.load().await)
}

/// An S3 client for `aws`. A custom endpoint (a VPC endpoint, or moto in tests) is addressed
/// path-style, since its buckets have no DNS names of their own.
pub async fn s3_client(aws: &AwsSettings) -> Result<aws_sdk_s3::Client, ResolveError> {
    let sdk = sdk_config(aws).await?;
    let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(aws.endpoint_url.is_some()).build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// An AWS SDK call's failure, sorted once for every AWS provider. Carries the service's error
/// code and message, never a request or response body.
pub(crate) enum SdkFailure {
    /// Unreachable, timed out, throttled or a 5xx: retrying may succeed.
    Transient(String),
    /// The named resource does not exist.
    NotFound(String),
    /// Refused (permissions, a malformed request) or otherwise failed.
    Refused(String),
}

/// Error codes that mean "try again later", across Secrets Manager, S3, RDS and KMS.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "InternalServiceError",
    "ServiceUnavailableException",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
];

/// Sorts `err`.
pub(crate) fn sdk_failure<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> SdkFailure
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            SdkFailure::Transient(format!("{err:?}"))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let reason = format!("{code}: {}", service.err().message().unwrap_or_default());
            if TRANSIENT_CODES.contains(&code) {
                SdkFailure::Transient(reason)
            } else if matches!(code, "ResourceNotFoundException" | "NoSuchKey") {
                SdkFailure::NotFound(reason)
            } else {
                SdkFailure::Refused(reason)
            }
        }
        _ => SdkFailure::Refused(format!("{err:?}")),
    }
}
