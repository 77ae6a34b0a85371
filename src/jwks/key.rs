//! Signing key pairs: generation, the stored form, and the public JWK (RFC 7517) with its
//! RFC 7638 thumbprint as `kid`.
//!
//! One algorithm per key (RFC 8725 §3.1): the JWK names its `alg`, so a verifier never lets a
//! token choose how it is checked. Private keys are PKCS#8 v1 PEM, which OpenSSL, jsonwebtoken,
//! jose and the JDK all read.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// A JWS algorithm vigil generates keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    #[serde(rename = "RS256")]
    Rs256,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key could not be made or read. Never carries key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// The crypto library refused to generate a key (no entropy, in practice).
    #[error("generating a {0} key failed")]
    Generate(Algorithm),
    /// A stored key is not what vigil writes.
    #[error("the stored signing key is not usable: {0}; rotate it to replace it")]
    Malformed(String),
}

/// A signing key pair as vigil stores it and publishes its public half.
pub struct SigningKey {
    /// The RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// The public JWK, with `kid`, `alg` and `use`.
    pub public: Value,
    /// The private key, PKCS#8 PEM.
    private_pem: SecretString,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key pair for `alg`.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let failed = |_| KeyError::Generate(alg);
        let der: Zeroizing<Vec<u8>> = match alg {
            Algorithm::EdDsa => Zeroizing::new(
                signature::Ed25519KeyPair::generate().and_then(|k| k.to_pkcs8v1()).map_err(failed)?.as_ref().to_vec(),
            ),
            Algorithm::Es256 => Zeroizing::new(
                signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .and_then(|k| k.to_pkcs8v1())
                    .map_err(failed)?
                    .as_ref()
                    .to_vec(),
            ),
            Algorithm::Rs256 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?;
                Zeroizing::new(pair.as_der().map_err(failed)?.as_ref().to_vec())
            }
        };
        Self::from_pkcs8(alg, &der)
    }

    /// The key in a stored secret, or `None` when the secret holds no key yet (`{}`: a
    /// placeholder created by infrastructure code for vigil to fill).
    pub fn from_stored(value: &SecretString) -> Result<Option<Self>, KeyError> {
        let malformed = |why: &str| KeyError::Malformed(why.to_owned());
        let parsed: Value =
            serde_json::from_str(value.expose_secret()).map_err(|_| malformed("the secret is not JSON"))?;
        let object = parsed.as_object().ok_or_else(|| malformed("the secret is not a JSON object"))?;
        if object.is_empty() {
            return Ok(None);
        }
        let alg: Algorithm = serde_json::from_value(object.get("alg").cloned().unwrap_or_default())
            .map_err(|_| malformed("`alg` is not EdDSA, ES256 or RS256"))?;
        let pem = object.get("private_key").and_then(Value::as_str).ok_or_else(|| malformed("no `private_key`"))?;
        let der = pem_decode(pem).ok_or_else(|| malformed("`private_key` is not a PKCS#8 PEM block"))?;
        Self::from_pkcs8(alg, &der).map(Some)
    }

    fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let rejected = |_| KeyError::Malformed(format!("`private_key` is not a {alg} key"));
        let mut public = match alg {
            Algorithm::EdDsa => {
                let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
                json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()) })
            }
            Algorithm::Es256 => {
                let pair = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?;
                // The uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
            Algorithm::Rs256 => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(rejected)?;
                let key = pair.public_key();
                json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(key.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(key.exponent().big_endian_without_leading_zero()),
                })
            }
        };
        let kid = thumbprint(&public);
        public["kid"] = Value::String(kid.clone());
        public["alg"] = Value::String(alg.as_str().to_owned());
        public["use"] = Value::String("sig".to_owned());
        Ok(Self { kid, alg, public, private_pem: SecretString::from(pem_encode(der)) })
    }

    /// The value stored in the secret store: `kid`, `alg`, the PEM private key and the public
    /// JWK, so that a signer needs nothing else.
    pub fn to_stored(&self) -> SecretString {
        let value = json!({
            "kid": self.kid,
            "alg": self.alg.as_str(),
            "private_key": self.private_pem.expose_secret(),
            "public_jwk": self.public,
        });
        SecretString::from(value.to_string())
    }
}

/// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, with no
/// whitespace, base64url without padding.
pub fn thumbprint(public: &Value) -> String {
    let required: &[&str] = match public["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["e", "kty", "n"],
    };
    // serde_json's Map is ordered by key (no preserve_order feature), and string members need
    // no escaping beyond what serde_json writes, so this is the canonical form.
    let members: Map<String, Value> = required.iter().map(|k| ((*k).to_owned(), public[*k].clone())).collect();
    URL_SAFE_NO_PAD.encode(Sha256::digest(Value::Object(members).to_string()))
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

fn pem_encode(der: &[u8]) -> String {
    let body = Zeroizing::new(STANDARD.encode(der));
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn pem_decode(pem: &str) -> Option<Zeroizing<Vec<u8>>> {
    let body = pem.trim().strip_prefix(PEM_BEGIN)?.strip_suffix(PEM_END)?;
    let joined = Zeroizing::new(body.split_whitespace().collect::<String>());
    STANDARD.decode(joined.as_bytes()).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        });
        assert_eq!(thumbprint(&jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn generated_keys_round_trip_through_the_stored_form() {
        for alg in [Algorithm::EdDsa, Algorithm::Es256, Algorithm::Rs256] {
            let key = SigningKey::generate(alg).unwrap();
            let read = SigningKey::from_stored(&key.to_stored()).unwrap().unwrap();
            assert_eq!(read.kid, key.kid, "{alg}");
            assert_eq!(read.public, key.public, "{alg}");
            assert_eq!(key.public["alg"], alg.as_str());
            assert!(key.public.get("d").is_none(), "{alg}: a public JWK has no private member");
        }
    }

    #[test]
    fn an_empty_object_is_no_key_yet_and_anything_else_is_refused_without_echoing_it() {
        assert!(SigningKey::from_stored(&SecretString::from("{}".to_owned())).unwrap().is_none());
        let leaky = r#"{"alg": "ES256", "private_key": "hunter2-not-a-pem"}"#;
        let err = SigningKey::from_stored(&SecretString::from(leaky.to_owned())).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_has_no_private_key() {
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
