//! The ledger's Ed25519 signing key: created on first use, kept in a file only its owner can
//! read, in the signed-note private key format (`PRIVATE+KEY+name+id+base64(0x01 || seed)`).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use super::note::{self, NoteVerifier};

/// Why the signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("signing key file {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Others can read the key.
    #[error("signing key file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a signing key.
    #[error("signing key file {} is not a vigil signing key ({why}); restore it from backup or point evidence.signing_key elsewhere", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// The key that signs checkpoints, with the name (the ledger's origin) it signs under.
pub struct LedgerKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKey").field("vkey", &self.verifier().vkey()).finish_non_exhaustive()
    }
}

impl LedgerKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate(name: &str) -> Self {
        assert!(note::is_valid_key_name(name), "invalid key name {name:?}");
        Self { name: name.to_owned(), key: SigningKey::generate(&mut rand_core::OsRng) }
    }

    /// Reads the key at `path`, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_owned(), mode: mode & 0o777 });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let malformed = |why| KeyError::Malformed { path: path.to_owned(), why };
        let rest = text.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(|| malformed("no PRIVATE+KEY+ prefix"))?;
        // Key names hold no `+`; base64 may, so split from the left.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("expected name+id+key"));
        };
        let raw = Zeroizing::new(BASE64.decode(encoded).map_err(|_| malformed("key is not base64"))?);
        let [0x01, seed @ ..] = raw.as_slice() else {
            return Err(malformed("not an Ed25519 key"));
        };
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(seed.try_into().map_err(|_| malformed("seed is not 32 bytes"))?);
        let key = Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) };
        if format!("{:08x}", key.verifier().id()) != id {
            return Err(malformed("key id does not match the key"));
        }
        Ok(key)
    }

    /// Writes the key to `path` (mode 0600, parent folders 0700); never overwrites a file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        let mut raw = Zeroizing::new(vec![0x01]);
        raw.extend_from_slice(self.key.as_bytes());
        let line = Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}\n",
            self.name,
            self.verifier().id(),
            BASE64.encode(raw.as_slice())
        ));
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The key name, which is the ledger's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, as a note verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier::new(&self.name, self.key.verifying_key())
    }

    /// Signs a note body.
    pub fn sign_note(&self, body: &str) -> String {
        note::sign(body, &self.name, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_whose_base64_holds_a_plus_load() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..64 {
            let path = dir.path().join(format!("k{i}"));
            let key = LedgerKey::generate("vigil/test");
            key.save(&path).unwrap();
            assert_eq!(LedgerKey::load(&path).unwrap().verifier(), key.verifier());
        }
    }

    #[test]
    fn a_saved_key_loads_and_signs_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/evidence.key");
        let key = LedgerKey::generate("vigil/test");
        key.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = LedgerKey::load(&path).unwrap();
        assert_eq!(loaded.verifier(), key.verifier());
        assert!(matches!(key.save(&path), Err(KeyError::Io { .. })), "never overwrites");
        let debug = format!("{loaded:?}");
        assert!(!debug.contains(&BASE64.encode(key.key.as_bytes())), "{debug}");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.key");
        LedgerKey::generate("vigil/test").save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LedgerKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Exposed { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.key");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"hello")
            .unwrap();
        assert!(matches!(LedgerKey::load(&path), Err(KeyError::Malformed { .. })));
    }
}
