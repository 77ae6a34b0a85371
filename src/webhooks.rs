//! Webhooks: where alerts are posted, as a generic JSON body or a Slack-compatible text body.
//!
//! A webhook's URL is a secret (Slack's and most chat tools' URLs carry their token in the path),
//! so it is a secret reference, resolved when a message is sent, and never shown: errors name
//! the webhook, never its URL.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;

use crate::secret::SecretRef;

/// One webhook, as configured (`[alerts.webhooks.NAME]`).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Its name, which errors and records show instead of the URL.
    pub name: String,
    /// The URL, by reference.
    pub url: SecretRef,
    /// The body it takes.
    pub format: Format,
    /// Whether an `http://` URL to another host is allowed (an https URL, or one to this
    /// machine, always is).
    pub allow_insecure_http: bool,
}

/// The body a webhook takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// vigil's own JSON object (`docs/alerts.md`).
    Json,
    /// `{"text": "…"}`, which Slack's incoming webhooks and compatible tools take.
    Slack,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "json" => Ok(Self::Json),
            "slack" => Ok(Self::Slack),
            other => Err(format!("unknown webhook format {other:?}; write \"json\" or \"slack\"")),
        }
    }
}

/// Why a post failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not one vigil posts to.
    #[error("webhook {name}: {why}")]
    Url {
        /// The webhook.
        name: String,
        /// What is wrong with the URL (never the URL itself).
        why: &'static str,
    },
    /// Sending failed, or the receiver answered with an error.
    #[error("webhook {name}: {why}")]
    Post {
        /// The webhook.
        name: String,
        /// What happened, without the URL.
        why: String,
        /// Whether trying again may succeed (a network failure, a 5xx or 429 answer).
        transient: bool,
    },
}

impl WebhookError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Post { transient: true, .. })
    }
}

/// The HTTP client every post shares: 10 s per request, no redirects (a redirect could carry
/// the body somewhere the configuration did not name).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Posts `body` (already in the webhook's format) to `url`, once.
pub async fn post(
    client: &reqwest::Client,
    webhook: &Settings,
    url: &SecretString,
    body: &serde_json::Value,
) -> Result<(), WebhookError> {
    let name = webhook.name.clone();
    let parsed = reqwest::Url::parse(url.expose_secret())
        .map_err(|_| WebhookError::Url { name: name.clone(), why: "its URL does not parse" })?;
    let loopback = parsed.host_str().is_some_and(crate::tls::is_loopback);
    match parsed.scheme() {
        "https" => {}
        "http" if loopback || webhook.allow_insecure_http => {}
        "http" => {
            return Err(WebhookError::Url {
                name,
                why: "its URL is http:// to another host; use https://, or set allow_insecure_http = true",
            });
        }
        _ => return Err(WebhookError::Url { name, why: "its URL is neither https:// nor http://" }),
    }
    let sent = client.post(parsed).json(body).send().await;
    // reqwest's errors carry the URL: it is dropped before anything shows them.
    let response = sent.map_err(|err| WebhookError::Post {
        name: name.clone(),
        why: err.without_url().to_string(),
        transient: true,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let transient = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    Err(WebhookError::Post { name, why: format!("the receiver answered {status}"), transient })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(allow_insecure_http: bool) -> Settings {
        let url = SecretRef::Env { name: "UNUSED".into() };
        Settings { name: "ops".into(), url, format: Format::Json, allow_insecure_http }
    }

    /// Plain http leaves this machine only when a line allows it, and no error shows the URL
    /// (its path is a token).
    #[tokio::test]
    async fn plain_http_elsewhere_is_refused_and_errors_never_show_the_url() {
        let client = client();
        let body = serde_json::json!({});
        let url = SecretString::from("http://hooks.example.invalid/T0KEN-in-path");
        let refused = post(&client, &hook(false), &url, &body).await.unwrap_err();
        assert!(refused.to_string().contains("allow_insecure_http"), "{refused}");
        let failed = post(&client, &hook(true), &url, &body).await.unwrap_err();
        assert!(failed.is_transient(), "{failed:?}");
        for err in [refused, failed] {
            assert!(!format!("{err} {err:?}").contains("T0KEN"), "{err:?}");
        }
        let odd = post(&client, &hook(true), &SecretString::from("ftp://T0KEN@x/"), &body).await.unwrap_err();
        assert!(!format!("{odd} {odd:?}").contains("T0KEN"));
    }
}
