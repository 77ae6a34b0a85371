//! The HTTP issuer contract (`docs/api-key-issuer.md`).

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;

use super::{IssuedKey, IssuerError, KeyIssuer};
use crate::secret::SecretString;

/// An issuer at a base URL, managed with an admin token.
pub struct HttpIssuer {
    client: reqwest::Client,
    base: String,
    admin: SecretString,
}

impl HttpIssuer {
    /// The issuer at `base`, managed with `admin`; an `https://` issuer's certificate is checked
    /// against the system's roots and `ca_file`'s.
    pub fn new(base: &str, ca_file: Option<&std::path::Path>, admin: SecretString) -> Result<Self, IssuerError> {
        let setup = |reason: String| IssuerError::Setup { reason };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|err| setup(format!("cannot read {}: {err}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| setup(format!("{} holds no PEM certificate: {err}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|err| setup(err.to_string()))?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), admin })
    }
}

/// Whether `id` is a key id the contract allows: URL-unreserved characters only, so that it is
/// one path segment and nothing else.
pub fn is_safe_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

fn checked_id(id: &str) -> Result<&str, IssuerError> {
    if is_safe_key_id(id) { Ok(id) } else { Err(IssuerError::BadId { id: id.chars().take(80).collect() }) }
}

/// Sorts a response's status; `None` for success.
fn status_error(what: &str, status: reqwest::StatusCode) -> Option<IssuerError> {
    if status.is_success() {
        None
    } else if status.as_u16() == 429 || status.is_server_error() {
        Some(IssuerError::Transient { what: what.to_owned(), reason: format!("HTTP {status}") })
    } else {
        Some(IssuerError::Refused { what: what.to_owned(), status: status.as_u16() })
    }
}

fn network(what: &str, err: reqwest::Error) -> IssuerError {
    // Without the URL, and reqwest never shows headers: no key reaches the message.
    IssuerError::Transient { what: what.to_owned(), reason: err.without_url().to_string() }
}

impl KeyIssuer for HttpIssuer {
    fn issue<'a>(&'a self, name: &'a str, idempotency_key: &'a str) -> BoxFuture<'a, Result<IssuedKey, IssuerError>> {
        async move {
            let what = format!("issue a key for {name}");
            let response = self
                .client
                .post(format!("{}/keys", self.base))
                .bearer_auth(self.admin.expose_secret())
                .json(&serde_json::json!({ "name": name, "idempotency_key": idempotency_key }))
                .send()
                .await
                .map_err(|err| network(&what, err))?;
            if let Some(err) = status_error(&what, response.status()) {
                return Err(err);
            }
            let body: serde_json::Value = response.json().await.map_err(|err| network(&what, err))?;
            match (body["id"].as_str(), body["secret"].as_str()) {
                (Some(id), Some(secret)) => {
                    Ok(IssuedKey { id: checked_id(id)?.to_owned(), secret: SecretString::from(secret.to_owned()) })
                }
                _ => Err(IssuerError::Refused { what, status: 200 }),
            }
        }
        .boxed()
    }

    fn authenticate<'a>(&'a self, secret: &'a SecretString) -> BoxFuture<'a, Result<String, IssuerError>> {
        async move {
            let what = "authenticate with a key";
            let response = self
                .client
                .get(format!("{}/whoami", self.base))
                .bearer_auth(secret.expose_secret())
                .send()
                .await
                .map_err(|err| network(what, err))?;
            if matches!(response.status().as_u16(), 401 | 403) {
                return Err(IssuerError::Rejected);
            }
            if let Some(err) = status_error(what, response.status()) {
                return Err(err);
            }
            let body: serde_json::Value = response.json().await.map_err(|err| network(what, err))?;
            let id = body["id"].as_str().ok_or(IssuerError::Refused { what: what.to_owned(), status: 200 })?;
            Ok(checked_id(id)?.to_owned())
        }
        .boxed()
    }

    fn revoke<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), IssuerError>> {
        async move {
            let id = checked_id(id)?;
            let what = format!("revoke key {id}");
            let response = self
                .client
                .delete(format!("{}/keys/{id}", self.base))
                .bearer_auth(self.admin.expose_secret())
                .send()
                .await
                .map_err(|err| network(&what, err))?;
            if response.status().as_u16() == 404 {
                return Ok(());
            }
            status_error(&what, response.status()).map_or(Ok(()), Err)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_one_safe_path_segment() {
        for good in ["k_1", "2f9c-47aa", "key.v2~a", &"a".repeat(128)] {
            assert!(is_safe_key_id(good), "{good}");
        }
        for bad in ["", ".", "..", "../admin/users/alice?x=", "a/b", "a b", "a%2f", "ключ", &"a".repeat(129)] {
            assert!(!is_safe_key_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_unsafe_stored_id_is_refused_before_any_request() {
        // Nothing listens on port 1: a request would fail as a network error, not BadId.
        let issuer = HttpIssuer::new("http://127.0.0.1:1", None, SecretString::from("admin-token".to_owned())).unwrap();
        let err = issuer.revoke("../admin/users/alice?x=").await.unwrap_err();
        assert!(matches!(err, IssuerError::BadId { .. }), "{err}");
        assert!(!err.is_transient());
    }
}
