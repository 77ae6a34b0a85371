//! The signing key's life beside the ledger: created with an empty ledger, loaded (and refused
//! when others can read it) after, and rolled over to a new key with crash recovery.
//!
//! A rollover writes the new key to `KEY.next` before the ledger announces it; a crash before
//! the announcement leaves a stray file that the next open removes, and a crash after it leaves
//! a rollover the next open finishes. The old key is kept as `KEY.retired-ID`, so checkpoints
//! it signed can still be audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{EvidenceError, KEY_ROLLOVER, KeyError, Ledger, LedgerKey, NoteVerifier, RecordFilter, StoredCheckpoint};
use crate::clock::Clock;
use crate::state::Db;

/// What a rollover did.
#[derive(Debug, serde::Serialize)]
pub struct Rolled {
    /// The old key's verifier key.
    pub old_vkey: String,
    /// The new key's verifier key.
    pub new_vkey: String,
    /// The checkpoint the old key signed over the announcement of the new one.
    pub checkpoint_by_old_key: StoredCheckpoint,
    /// The first checkpoint the new key signed.
    pub checkpoint_by_new_key: StoredCheckpoint,
    /// Where the old key file is kept.
    pub retired_key: PathBuf,
}

/// Opens the ledger in `db` for writing with the signing key at `key_path`: created with the
/// ledger, loaded after, and a rollover that a crash interrupted is finished first.
pub async fn open(db: &Db, key_path: &Path, clock: Arc<dyn Clock>) -> Result<Ledger, EvidenceError> {
    let next_path = pending_key_path(key_path);
    if !key_path.exists() {
        if super::size(db).await? > 0 {
            return Err(EvidenceError::KeyMissing(key_path.to_owned()));
        }
        let key = LedgerKey::generate(&format!("vigil/{}", hex::encode(random_bytes()?)));
        key.save(key_path)?;
        tracing::info!(key = %key.verifier().vkey(), path = %key_path.display(), "created the evidence signing key");
        return Ledger::open(db.clone(), key, clock).await;
    }
    let key = LedgerKey::load(key_path)?;
    if !next_path.exists() {
        return Ledger::open(db.clone(), key, clock).await;
    }
    let next = LedgerKey::load(&next_path)?;
    let next_vkey = next.verifier().vkey();
    let filter = RecordFilter { kind: Some(KEY_ROLLOVER.into()), limit: u64::MAX >> 1, ..RecordFilter::default() };
    let announced = super::list(db, &filter)
        .await?
        .iter()
        .any(|r| serde_json::from_str::<serde_json::Value>(&r.details).is_ok_and(|d| d["vkey"] == next_vkey.as_str()));
    if !announced {
        // The crash came before the ledger named the new key: forget it.
        tracing::warn!(path = %next_path.display(), "removing a new signing key the ledger never announced");
        std::fs::remove_file(&next_path).map_err(|source| KeyError::Io { path: next_path.clone(), source })?;
        return Ledger::open(db.clone(), key, clock).await;
    }
    let old = key.verifier();
    let newest = super::newest_checkpoint(db).await?;
    let next_id = format!("{}+{:08x}", next.verifier().name(), next.verifier().id());
    let ledger = if newest.is_some_and(|c| c.key == next_id) {
        Ledger::open(db.clone(), next, clock).await?
    } else {
        tracing::warn!("finishing a signing key rollover that was interrupted");
        let mut ledger = Ledger::open(db.clone(), key, clock).await?;
        ledger.complete_rollover(next).await?;
        ledger
    };
    install_key(key_path, &next_path, &old)?;
    Ok(ledger)
}

/// Moves `ledger` to a new signing key, announced in the ledger and vouched for by the old one,
/// and puts the new key file in place of the old at `key_path`.
pub async fn rollover(ledger: &mut Ledger, key_path: &Path) -> Result<Rolled, EvidenceError> {
    let next_path = pending_key_path(key_path);
    let old = ledger.verifier();
    let next = LedgerKey::generate(old.name());
    // Saved before the ledger names it: a crash after this point is finished on the next open.
    next.save(&next_path)?;
    let new_vkey = next.verifier().vkey();
    let (by_old, by_new) = ledger.rollover(next).await?;
    install_key(key_path, &next_path, &old)?;
    Ok(Rolled {
        old_vkey: old.vkey(),
        new_vkey,
        checkpoint_by_old_key: by_old,
        checkpoint_by_new_key: by_new,
        retired_key: retired_key_path(key_path, &old),
    })
}

/// Where a new key waits while a rollover is in flight.
fn pending_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Where a replaced key is kept, so that old checkpoints can still be re-signed or audited.
fn retired_key_path(path: &Path, old: &NoteVerifier) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".retired-{:08x}", old.id()));
    PathBuf::from(name)
}

/// Moves the old key aside and the new one into place.
fn install_key(path: &Path, next_path: &Path, old: &NoteVerifier) -> Result<(), KeyError> {
    let retired = retired_key_path(path, old);
    std::fs::rename(path, &retired).map_err(|source| KeyError::Io { path: retired.clone(), source })?;
    std::fs::rename(next_path, path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    Ok(())
}

fn random_bytes() -> Result<[u8; 8], EvidenceError> {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.try_fill_bytes(&mut bytes).map_err(|err| EvidenceError::Random(err.to_string()))?;
    Ok(bytes)
}
