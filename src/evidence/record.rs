//! Evidence records and their canonical encoding.
//!
//! A record's hash, and its Merkle leaf, are computed over a byte encoding defined here and
//! in `docs/evidence-format.md`, never over `serde_json` output whose field order or number
//! formatting could drift between versions. Verification hashes the stored values exactly as
//! stored, so a record written by one vigil version verifies under every later one.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::merkle::{self, Hash};

/// The first bytes of every encoded record: the format and its version.
const DOMAIN: &[u8] = b"vigil.evidence.v1\n";
/// The largest details document accepted, in bytes of canonical JSON.
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;

/// Who wrote a record: the host, the process and the vigil version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// vigil's version.
    pub version: String,
}

impl Actor {
    /// This process.
    pub fn current() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Self { host, pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

/// How the action a record describes turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action is about to run (written before it acts).
    Started,
    /// The action completed.
    Succeeded,
    /// The action failed.
    Failed,
    /// A statement of fact rather than an action.
    Info,
}

impl Outcome {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Info => "info",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record to append: what happened to what. The ledger adds sequence, time, actor and hashes.
///
/// `details` must never hold a secret value: it is stored and shown in the clear.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Dotted kind, e.g. `rotation.step`, `backup.verified`, `drill.finished`.
    pub kind: String,
    /// What the record is about: a secret, backup set or drill name.
    pub subject: String,
    /// How it turned out.
    pub outcome: Outcome,
    /// Structured facts, as JSON.
    pub details: serde_json::Value,
}

/// A stored record; its JSON form (hashes in hex) is what `vigil evidence list --output json`
/// prints and a report bundle's `records.jsonl` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the ledger, from 1, without gaps.
    pub seq: u64,
    /// When it was appended, RFC 3339 UTC with microseconds.
    pub time: String,
    /// Dotted kind.
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// Who wrote it.
    pub actor: Actor,
    /// How it turned out, as stored.
    pub outcome: String,
    /// Details as canonical JSON text, exactly as hashed.
    pub details: String,
    /// The previous record's hash (zeros for the first).
    #[serde(serialize_with = "hex_hash", deserialize_with = "from_hex")]
    pub prev_hash: Hash,
    /// This record's hash.
    #[serde(serialize_with = "hex_hash", deserialize_with = "from_hex")]
    pub hash: Hash,
}

fn hex_hash<S: serde::Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(hash))
}

fn from_hex<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
    let text = String::deserialize(deserializer)?;
    hex::decode(&text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| serde::de::Error::custom("a hash is 64 hex digits"))
}

/// A record's fields borrowed from wherever they are stored: what hashing and verification read.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Position in the ledger.
    pub seq: u64,
    /// Append time as stored.
    pub time: &'a str,
    /// Dotted kind.
    pub kind: &'a str,
    /// What it is about.
    pub subject: &'a str,
    /// The writing host.
    pub actor_host: &'a str,
    /// The writing process.
    pub actor_pid: u32,
    /// The writing vigil's version.
    pub actor_version: &'a str,
    /// Outcome as stored.
    pub outcome: &'a str,
    /// Details as stored.
    pub details: &'a str,
    /// The previous record's hash, as stored.
    pub prev_hash: &'a Hash,
    /// This record's hash, as stored.
    pub hash: &'a Hash,
}

impl RecordRef<'_> {
    /// The record, owned.
    pub fn to_record(&self) -> Record {
        Record {
            seq: self.seq,
            time: self.time.to_owned(),
            kind: self.kind.to_owned(),
            subject: self.subject.to_owned(),
            actor: Actor {
                host: self.actor_host.to_owned(),
                pid: self.actor_pid,
                version: self.actor_version.to_owned(),
            },
            outcome: self.outcome.to_owned(),
            details: self.details.to_owned(),
            prev_hash: *self.prev_hash,
            hash: *self.hash,
        }
    }

    /// Writes the canonical encoding into `out` (cleared first): the domain line, then each
    /// field in order, strings as a 4-byte big-endian length and their UTF-8 bytes, numbers
    /// big-endian, the previous hash last.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        for text in [self.time, self.kind, self.subject, self.actor_host] {
            push_str(out, text);
        }
        out.extend_from_slice(&self.actor_pid.to_be_bytes());
        for text in [self.actor_version, self.outcome, self.details] {
            push_str(out, text);
        }
        out.extend_from_slice(self.prev_hash);
    }

    /// The record's hash and Merkle leaf hash, encoding once into `buffer`: the verifier's hot path.
    pub fn hashes(&self, buffer: &mut Vec<u8>) -> (Hash, Hash) {
        self.encode_into(buffer);
        (Sha256::digest(&buffer[..]).into(), merkle::leaf_hash(buffer))
    }
}

impl Record {
    /// The borrowed view of this record.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            time: &self.time,
            kind: &self.kind,
            subject: &self.subject,
            actor_host: &self.actor.host,
            actor_pid: self.actor.pid,
            actor_version: &self.actor.version,
            outcome: &self.outcome,
            details: &self.details,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }

    /// The canonical encoding (see [`RecordRef::encode_into`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 128 + self.details.len());
        self.as_ref().encode_into(&mut out);
        out
    }

    /// `SHA-256` of the canonical encoding: the chain link the next record names.
    pub fn compute_hash(&self) -> Hash {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// The record's Merkle leaf hash, `SHA-256(0x00 || canonical encoding)`.
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.canonical_bytes())
    }
}

fn push_str(out: &mut Vec<u8>, text: &str) {
    let len = u32::try_from(text.len()).expect("fields are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// JSON with object keys sorted by their UTF-8 bytes and no insignificant whitespace.
///
/// Written by hand rather than relying on `serde_json`'s map order, which a feature flag
/// anywhere in the dependency graph can change.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            seq: 7,
            time: "2026-11-24T10:00:00.000000Z".into(),
            kind: "rotation.step".into(),
            subject: "orders-app".into(),
            actor: Actor { host: "vigil-1".into(), pid: 4242, version: "0.1.0".into() },
            outcome: "succeeded".into(),
            details: canonical_json(&serde_json::json!({"step": "create", "attempt": 1})),
            prev_hash: [0xab; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value = serde_json::json!({"b": [{"z": 1, "a": "x"}], "a": null, "é": true, "A": 1.5});
        assert_eq!(canonical_json(&value), r#"{"A":1.5,"a":null,"b":[{"a":"x","z":1}],"é":true}"#);
    }

    /// The encoding is a contract with every verifier: this pins it byte for byte.
    #[test]
    fn the_encoding_is_stable() {
        let record = record();
        assert_eq!(record.details, r#"{"attempt":1,"step":"create"}"#);
        assert_eq!(
            hex::encode(record.compute_hash()),
            "3c6abdf0e82327255d08aa5ac19abf6b0f51eff60bcf6ec47214738bc28e22b7"
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = record().compute_hash();
        let mut changed = Vec::new();
        let edits: [fn(&mut Record); 10] = [
            |r| r.seq += 1,
            |r| r.time.push('1'),
            |r| r.kind.push('x'),
            |r| r.subject.push('x'),
            |r| r.actor.host.push('x'),
            |r| r.actor.pid += 1,
            |r| r.actor.version.push('x'),
            |r| r.outcome = "failed".into(),
            |r| r.details = "{}".into(),
            |r| r.prev_hash[31] ^= 1,
        ];
        for edit in edits {
            let mut r = record();
            edit(&mut r);
            changed.push(r.compute_hash() != base);
        }
        assert!(changed.iter().all(|c| *c), "{changed:?}");
        // Moving a byte from one field to its neighbour changes the hash too (length prefixes).
        let mut shifted = record();
        shifted.kind = "rotation.ste".into();
        shifted.subject = "porders-app".into();
        assert_ne!(shifted.compute_hash(), base);
    }
}
