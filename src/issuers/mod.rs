//! API-key issuers behind one small trait: issue a key, authenticate with one, revoke one.
//! `http.rs` speaks the contract in `docs/api-key-issuer.md`, which any internal service can
//! implement to become rotatable.

mod http;

use futures_util::future::BoxFuture;

pub use http::HttpIssuer;

use crate::secret::SecretString;

/// A key as issued.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The key's id (not secret).
    pub id: String,
    /// The key itself.
    pub secret: SecretString,
}

/// Why an issuer call failed. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The key is unknown or revoked.
    #[error("the issuer does not accept the key")]
    Rejected,
    /// The issuer refused the request (the admin token, a malformed request).
    #[error("{what}: the issuer answered {status}")]
    Refused {
        /// What was attempted.
        what: String,
        /// The HTTP status.
        status: u16,
    },
    /// A key id outside the contract's safe characters: never sent in a path, where it could
    /// name another resource (`../admin/users/alice`).
    #[error(
        "key id {id:?} is not a safe key id (1-128 of A-Z a-z 0-9 . _ ~ -, not . or ..); the issuer must use such ids (docs/api-key-issuer.md), and a stored id outside them was not written by it"
    )]
    BadId {
        /// The id, as found (at most 80 characters of it).
        id: String,
    },
    /// The client could not be set up (its CA file).
    #[error("cannot set up the issuer's client: {reason}")]
    Setup {
        /// Why.
        reason: String,
    },
    /// A failure that may pass: a 429, a 5xx, the network.
    #[error("{what} failed for now: {reason}")]
    Transient {
        /// What was attempted.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

impl IssuerError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// What API-key rotation needs from an issuer. Every method is idempotent.
pub trait KeyIssuer: Send + Sync {
    /// Issues a key named `name`; the same `idempotency_key` always yields the same key.
    fn issue<'a>(&'a self, name: &'a str, idempotency_key: &'a str) -> BoxFuture<'a, Result<IssuedKey, IssuerError>>;

    /// The id of the key `secret`, if the issuer accepts it.
    fn authenticate<'a>(&'a self, secret: &'a SecretString) -> BoxFuture<'a, Result<String, IssuerError>>;

    /// Revokes key `id`; unknown or already revoked is success.
    fn revoke<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), IssuerError>>;
}
