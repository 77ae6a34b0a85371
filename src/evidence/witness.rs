//! A copy of every signed checkpoint outside the database: an object store prefix (with S3
//! Object Lock where the bucket has it) or a folder. Whoever can rewrite the database can
//! rewrite its checkpoints too; the witness is where `vigil evidence verify` finds out.
//!
//! Each checkpoint is written as `checkpoints/<size>-<id>.note` (zero-padded, so names sort
//! by size), and the newest again as `checkpoints/latest.note`.

use crate::objects::{ObjectError, ObjectStore, PutOptions};

use super::EvidenceError;
use super::store::{self, StoredCheckpoint};
use crate::state::Db;

fn key(checkpoint: &StoredCheckpoint) -> String {
    format!("checkpoints/{:020}-{:010}.note", checkpoint.size, checkpoint.id)
}

const LATEST: &str = "checkpoints/latest.note";

/// Writes `checkpoint` to the witness, then as the newest.
pub(super) async fn record(witness: &dyn ObjectStore, checkpoint: &StoredCheckpoint) -> Result<(), ObjectError> {
    let options = PutOptions { content_type: Some("text/plain; charset=utf-8".into()), cache_control: None };
    witness.put(&key(checkpoint), checkpoint.note.clone().into_bytes(), &options).await?;
    witness.put(LATEST, checkpoint.note.clone().into_bytes(), &options).await
}

/// The witness's copy of `checkpoint`, if it holds one.
pub async fn copy_of(witness: &dyn ObjectStore, checkpoint: &StoredCheckpoint) -> Result<Option<Vec<u8>>, ObjectError> {
    match witness.get(&key(checkpoint)).await {
        Ok(note) => Ok(Some(note.to_vec())),
        Err(ObjectError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A witness used for the first time (it holds no newest checkpoint) receives every checkpoint
/// the database has, so that a ledger older than its witness, or one whose first checkpoint was
/// signed as it opened, is covered from the start. Afterwards only new checkpoints are written.
pub(super) async fn adopt(db: &Db, witness: &dyn ObjectStore) -> Result<(), EvidenceError> {
    match witness.get(LATEST).await {
        Ok(_) => return Ok(()),
        Err(ObjectError::NotFound { .. }) => {}
        Err(err) => return Err(EvidenceError::Witness(err.to_string())),
    }
    for checkpoint in store::checkpoints(db).await? {
        record(witness, &checkpoint).await.map_err(|err| EvidenceError::Witness(err.to_string()))?;
    }
    Ok(())
}

/// The first disagreement between the database's checkpoints and the witness's, if any: a
/// checkpoint the witness lacks or holds differently, or a newest witnessed checkpoint the
/// database no longer has (checkpoints removed or replaced).
pub async fn compare(db: &Db, witness: &dyn ObjectStore) -> Result<Option<String>, EvidenceError> {
    let checkpoints = store::checkpoints(db).await?;
    let mut witnessed = Vec::new();
    for checkpoint in &checkpoints {
        match witness.get(&key(checkpoint)).await {
            Ok(note) if note == checkpoint.note.as_bytes() => witnessed.push(checkpoint),
            Ok(_) => {
                return Ok(Some(format!(
                    "checkpoint #{} (size {}) differs from its copy at {}",
                    checkpoint.id,
                    checkpoint.size,
                    witness.location(&key(checkpoint))
                )));
            }
            Err(ObjectError::NotFound { .. }) => {
                return Ok(Some(format!(
                    "checkpoint #{} (size {}) is not in the witness at {}: it was signed while the witness was unreachable, or added to the database outside vigil",
                    checkpoint.id,
                    checkpoint.size,
                    witness.location(&key(checkpoint))
                )));
            }
            Err(err) => return Err(EvidenceError::Witness(err.to_string())),
        }
    }
    match witness.get(LATEST).await {
        Ok(latest) if checkpoints.iter().any(|c| c.note.as_bytes() == latest) => Ok(None),
        Ok(_) => Ok(Some(format!(
            "the newest checkpoint in the witness ({}) is not in the database: checkpoints were removed or replaced",
            witness.location(LATEST)
        ))),
        Err(ObjectError::NotFound { .. }) if checkpoints.is_empty() => Ok(None),
        Err(ObjectError::NotFound { .. }) => {
            Ok(Some(format!("the witness at {} holds no newest checkpoint", witness.location(LATEST))))
        }
        Err(err) => Err(EvidenceError::Witness(err.to_string())),
    }
}
