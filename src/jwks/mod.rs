//! JWT signing keys and the JWKS document (RFC 7517) that publishes their public halves.
//!
//! Private keys live only in the secret store; the document holds public JWKs alone, each
//! with `kid` (its RFC 7638 thumbprint), `alg` and `use`. The document is vigil's: every
//! publish replaces it whole with the keys the rotation says are live, signing key first.

mod key;
mod publish;

use serde_json::{Value, json};

pub use key::{Algorithm, KeyError, SigningKey, thumbprint};
pub use publish::{JwksPublisher, JwksTarget, PublishError, connect};

/// The JWKS document holding `keys` (public JWKs), in that order, with duplicates (by `kid`)
/// left out.
pub fn document<'a>(keys: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut published: Vec<Value> = Vec::new();
    for key in keys {
        if key.is_object() && !published.iter().any(|k| k["kid"] == key["kid"]) {
            published.push(key.clone());
        }
    }
    json!({ "keys": published })
}

/// A JWK's key id.
pub fn kid(jwk: &Value) -> Option<&str> {
    jwk.get("kid")?.as_str()
}

/// The key ids a JWKS document lists (none for no document).
pub fn kids(document: Option<&Value>) -> impl Iterator<Item = &str> {
    document.and_then(|d| d.get("keys")?.as_array()).into_iter().flatten().filter_map(kid)
}

/// The `Cache-Control` header for a JWKS that verifiers may cache for `max_age`: no longer
/// than vigil waits between publishing a key and signing with it.
pub fn cache_control(max_age: crate::schedule::Duration) -> String {
    format!("public, max-age={}", max_age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_order_and_drop_repeats_and_nulls() {
        let (a, b) = (json!({ "kid": "a" }), json!({ "kid": "b" }));
        let doc = document([&a, &Value::Null, &b, &a]);
        assert_eq!(doc, json!({ "keys": [{ "kid": "a" }, { "kid": "b" }] }));
    }
}
