//! Checkpoints as C2SP signed notes (`c2sp.org/signed-note`, `c2sp.org/tlog-checkpoint`).
//!
//! A checkpoint body is three lines: the origin, the tree size in decimal, and the root hash in
//! base64. The signed note is the body, a blank line, and one line per signature:
//! `— <key name> <base64(key id || ed25519 signature)>`. The key id is the first four bytes of
//! `SHA-256(name || "\n" || 0x01 || public key)`. Any signed-note verifier given vigil's
//! verifier key (`vigil evidence pubkey --vkey`) checks these notes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature algorithm byte for Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 0x01;
/// The em dash that starts every signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note or key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    /// The text is not a signed note.
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    /// The body is not a checkpoint.
    #[error("malformed checkpoint body: {0}")]
    MalformedCheckpoint(&'static str),
    /// No signature by a trusted key verifies.
    #[error("no valid signature by a trusted key (signed by: {signers})")]
    Untrusted {
        /// The key names and ids the note carries signatures from.
        signers: String,
    },
    /// A verifier key string that cannot be read.
    #[error("malformed verifier key: {0}")]
    MalformedKey(&'static str),
}

/// A key name as signed notes allow it: non-empty, no spaces or `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

/// The four-byte id of a key: `SHA-256(name || "\n" || 0x01 || public key)[..4]`.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A public key that checks notes: its name, id and Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The verifier for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Self {
        Self { name: name.to_owned(), id: key_id(name, &key), key }
    }

    /// Reads a verifier key string, `name+hex(id)+base64(0x01 || public key)`.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::MalformedKey("expected name+id+key"));
        };
        if !is_valid_key_name(name) {
            return Err(NoteError::MalformedKey("invalid key name"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::MalformedKey("key id is not 8 hex digits"))?;
        let key = BASE64.decode(key).map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        let [ALG_ED25519, key @ ..] = key.as_slice() else {
            return Err(NoteError::MalformedKey("not an Ed25519 key"));
        };
        let key: [u8; 32] = key.try_into().map_err(|_| NoteError::MalformedKey("Ed25519 keys are 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| NoteError::MalformedKey("not a valid Ed25519 point"))?;
        let verifier = Self::new(name, key);
        if verifier.id != id {
            return Err(NoteError::MalformedKey("key id does not match the key"));
        }
        Ok(verifier)
    }

    /// The key's name (the ledger's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The four-byte key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The verifier key string, `name+hex(id)+base64(0x01 || public key)`.
    pub fn vkey(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, BASE64.encode(key))
    }

    /// `SHA256:` and the base64 SHA-256 of the public key, as SSH shows fingerprints.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(self.key.as_bytes()))
        )
    }
}

/// A tree head: the origin, the number of records and the root over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The ledger's origin line.
    pub origin: String,
    /// Records covered.
    pub size: u64,
    /// The Merkle root over them.
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root))
    }

    /// Reads a body; extension lines after the root are allowed and ignored.
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::MalformedCheckpoint("no origin"))?;
        let size = lines.next().ok_or(NoteError::MalformedCheckpoint("no size"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NoteError::MalformedCheckpoint("size is not a decimal number"));
        }
        let size = size.parse().map_err(|_| NoteError::MalformedCheckpoint("size is too large"))?;
        let root = lines.next().ok_or(NoteError::MalformedCheckpoint("no root hash"))?;
        let root = BASE64.decode(root).map_err(|_| NoteError::MalformedCheckpoint("root is not base64"))?;
        let root = root.try_into().map_err(|_| NoteError::MalformedCheckpoint("root is not 32 bytes"))?;
        Ok(Self { origin: origin.to_owned(), size, root })
    }
}

/// Signs `body` (which must end in a newline) as a note with one signature.
pub fn sign(body: &str, name: &str, key: &SigningKey) -> String {
    debug_assert!(body.ends_with('\n'));
    let id = key_id(name, &key.verifying_key());
    let signature = key.sign(body.as_bytes());
    let mut blob = id.to_be_bytes().to_vec();
    blob.extend_from_slice(&signature.to_bytes());
    format!("{body}\n{SIGNATURE_PREFIX}{name} {}\n", BASE64.encode(blob))
}

/// One signature line: key name, key id, Ed25519 signature.
type SignatureLine<'n> = (&'n str, u32, [u8; 64]);

/// Splits a signed note into its body and signature lines.
fn split(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let at = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (body, signatures) = (&note[..=at], &note[at + 2..]);
    if !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("the note does not end in a newline"));
    }
    let mut parsed = Vec::new();
    for line in signatures[..signatures.len() - 1].split('\n') {
        let rest =
            line.strip_prefix(SIGNATURE_PREFIX).ok_or(NoteError::Malformed("a signature line lacks the em dash"))?;
        let (name, blob) = rest.split_once(' ').ok_or(NoteError::Malformed("a signature line lacks its signature"))?;
        let blob = BASE64.decode(blob).map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        // Signatures of other algorithms or lengths are someone else's: skip them.
        if let Ok::<[u8; 68], _>(blob) = blob.try_into() {
            let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
            parsed.push((name, id, blob[4..].try_into().expect("64 bytes")));
        }
    }
    Ok((body, parsed))
}

/// The statement a retiring key signs to endorse its successor: the ledger's origin and the
/// new verifier key, so that an endorsement cannot be moved to another ledger or key.
pub fn rollover_body(origin: &str, new_vkey: &str) -> String {
    format!("vigil.evidence.v1 key rollover\n{origin}\n{new_vkey}\n")
}

/// The statement the ledger's key signs to vouch for a report bundle: the ledger's origin and
/// the SHA-256 of the bundle's `manifest.json`, which names every other member with its size and
/// hash. Its first line keeps it from reading as a checkpoint or a rollover endorsement.
pub fn manifest_body(origin: &str, manifest_sha256: &Hash) -> String {
    format!("vigil.bundle.v2 manifest\n{origin}\n{}\n", hex::encode(manifest_sha256))
}

/// Checks that `note` carries a valid signature by one of `trusted`, and returns its body and
/// the verifier that checked it.
pub fn open<'a, 'n>(note: &'n str, trusted: &'a [NoteVerifier]) -> Result<(&'n str, &'a NoteVerifier), NoteError> {
    let (body, signatures) = split(note)?;
    for (name, id, signature) in &signatures {
        let Some(verifier) = trusted.iter().find(|v| v.name == *name && v.id == *id) else { continue };
        if verifier.key.verify(body.as_bytes(), &Signature::from_bytes(signature)).is_ok() {
            return Ok((body, verifier));
        }
    }
    let signers = signatures.iter().map(|(name, id, _)| format!("{name}+{id:08x}")).collect::<Vec<_>>().join(", ");
    Err(NoteError::Untrusted { signers: if signers.is_empty() { "nobody".into() } else { signers } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_only() {
        let checkpoint = Checkpoint { origin: "vigil/test".into(), size: 42, root: [7; 32] };
        let note = sign(&checkpoint.body(), "vigil/test", &key(1));
        let good = NoteVerifier::new("vigil/test", key(1).verifying_key());
        let (body, by) = open(&note, std::slice::from_ref(&good)).unwrap();
        assert_eq!(by, &good);
        assert_eq!(Checkpoint::parse_body(body).unwrap(), checkpoint);

        let other = NoteVerifier::new("vigil/test", key(2).verifying_key());
        assert!(matches!(open(&note, &[other]), Err(NoteError::Untrusted { .. })));
        let tampered = note.replace("\n42\n", "\n43\n");
        assert!(matches!(open(&tampered, &[good]), Err(NoteError::Untrusted { .. })));
    }

    #[test]
    fn verifier_keys_round_trip_and_are_checked() {
        let verifier = NoteVerifier::new("vigil/abc", key(3).verifying_key());
        assert_eq!(NoteVerifier::parse(&verifier.vkey()).unwrap(), verifier);
        let vkey = verifier.vkey();
        let wrong_id = format!("vigil/abc+00000000+{}", vkey.rsplit('+').next().unwrap());
        assert_eq!(NoteVerifier::parse(&wrong_id), Err(NoteError::MalformedKey("key id does not match the key")));
        assert!(NoteVerifier::parse("nonsense").is_err());
    }

    #[test]
    fn checkpoint_bodies_are_strict() {
        for bad in ["", "o\n", "o\nx\nAAAA\n", "o\n01\nAAAA\n", "o\n1\nnot base64\n", "o\n1\nAAAA\n"] {
            assert!(Checkpoint::parse_body(bad).is_err(), "{bad:?}");
        }
    }
}
