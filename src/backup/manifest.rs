//! The manifest written beside each backup and recorded in the evidence ledger: what the
//! backup holds, how it was sealed, and the hashes and row counts that prove a restore.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pipeline::StreamFacts;
use crate::engines::dump::Consistency;
use crate::kms::WrappedKey;

/// A backup's manifest. Its canonical JSON's SHA-256 is in the evidence record of the backup,
/// so a manifest edited in the store is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The object format version (`docs/backup-format.md`).
    pub format_version: u8,
    /// The backup id, also in the object's header.
    pub backup_id: String,
    /// The backup set.
    pub set: String,
    /// The target backed up.
    pub target: String,
    /// `postgres` or `mysql`.
    pub engine: String,
    /// The database dumped.
    pub database: String,
    /// The dump tool and format: `pg_dump custom` or `mariadb-dump sql`.
    pub dump: String,
    /// When the backup started and finished (RFC 3339).
    pub started_at: String,
    /// When the object was complete.
    pub finished_at: String,
    /// The server version, snapshot time, consistent point and row counts.
    pub consistency: Consistency,
    /// `zstd` and its level.
    pub compression: String,
    /// `AES-256-GCM STREAM`, and the plaintext bytes per segment.
    pub encryption: String,
    /// Plaintext bytes per segment.
    pub segment_size: u32,
    /// Sizes and SHA-256 of the dump and of the object.
    pub stream: StreamFacts,
    /// The data key, wrapped.
    pub key: WrappedKey,
    /// The object's key in its store.
    pub object: String,
    /// The cluster's globals (roles, memberships, role settings) sealed beside the dump:
    /// PostgreSQL only, and absent from backups made before vigil kept them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<Globals>,
    /// Extra facts, for forward compatibility.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Manifest {
    /// The canonical bytes: the manifest's JSON with sorted keys, as hashed into evidence.
    pub fn canonical(&self) -> String {
        let value = serde_json::to_value(self).expect("a manifest serialises");
        crate::evidence::canonical_json(&value)
    }

    /// SHA-256 of [`Manifest::canonical`], hex.
    pub fn sha256(&self) -> String {
        let mut hash = super::format::Sha256::default();
        hash.update(self.canonical().as_bytes());
        hash.hex()
    }
}

/// `pg_dumpall --globals-only --no-role-passwords`, sealed as an object of its own under a data
/// key of its own, with `BACKUP_ID.globals` as its backup id in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Globals {
    /// Its key in the store, beside the dump's.
    pub object: String,
    /// Its data key, wrapped.
    pub key: WrappedKey,
    /// Its sizes and SHA-256s.
    pub stream: StreamFacts,
}

impl Globals {
    /// The backup id the globals object is sealed under.
    pub fn sealed_id(backup_id: &str) -> String {
        format!("{backup_id}.globals")
    }

    /// The globals object's key beside the dump object's.
    pub fn object_key(object: &str) -> String {
        format!("{}.globals.vbk", object.trim_end_matches(".vbk"))
    }
}
