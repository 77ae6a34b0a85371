//! Verification: every hash, every link, every checkpoint's signature and root, in one pass.
//!
//! It trusts nothing the ledger says about itself except what a trusted key signed: the
//! stored hashes are recomputed, the head row and the stored checkpoint columns are ignored in
//! favour of the signed notes, and a new key is trusted only once a checkpoint signed by an
//! already trusted key covers the record announcing it.

use futures_util::TryStreamExt as _;
use serde::Serialize;

use super::merkle::{Frontier, Hash};
use super::note::{self, Checkpoint, NoteVerifier};
use super::{EvidenceError, GENESIS, KEY_ROLLOVER, store};
use crate::state::Db;

/// Which key verification starts from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A key obtained out of band: what an auditor should use.
    Pinned(Box<NoteVerifier>),
    /// The key the genesis record announces (trust on first use).
    Genesis,
}

/// What verification found.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// Checkpoints whose signature and root were verified.
    pub checkpoints_verified: usize,
    /// The size of the newest verified checkpoint.
    pub newest_checkpoint: Option<u64>,
    /// Records after the newest verified checkpoint: chained, but not yet signed for.
    pub beyond_checkpoint: u64,
    /// Keys trusted along the way, oldest first (`name+id`).
    pub keys: Vec<String>,
    /// The first problem, if any; verification stops there.
    pub problem: Option<Problem>,
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first record that cannot be trusted.
    pub seq: u64,
    /// What is wrong, for people.
    pub what: String,
}

struct Walk {
    trusted: Vec<NoteVerifier>,
    /// Keys whose announcement a checkpoint of the current size covered: trusted beside the
    /// old key for the rest of the checkpoints of that size, and alone after it.
    promoted: Vec<NoteVerifier>,
    /// The size of the checkpoint checked last.
    checkpoint_size: u64,
    keys: Vec<String>,
    origin: Option<String>,
    /// Rollover records seen, not yet covered by a verified checkpoint.
    announced: Vec<(u64, NoteVerifier)>,
    frontier: Frontier,
    last_hash: Hash,
    verified_size: u64,
    checkpoints_verified: usize,
}

impl Walk {
    fn trust(&mut self, verifier: NoteVerifier) {
        self.keys.push(format!("{}+{:08x}", verifier.name(), verifier.id()));
        self.trusted = vec![verifier];
    }

    /// Checks one checkpoint against the records read so far (exactly `checkpoint.size` of them).
    fn checkpoint(&mut self, stored: &store::StoredCheckpoint) -> Result<(), Problem> {
        if stored.size > self.checkpoint_size && !self.promoted.is_empty() {
            // The old key's last word was at the previous size: from here on, only the new key.
            self.trusted = std::mem::take(&mut self.promoted);
        }
        self.checkpoint_size = stored.size;
        let first_unverified = if stored.size == self.verified_size { stored.size } else { self.verified_size + 1 };
        let bad = |what: String| Problem { seq: first_unverified, what };
        let candidates: Vec<NoteVerifier> = self.trusted.iter().chain(&self.promoted).cloned().collect();
        let (body, _) = note::open(&stored.note, &candidates).map_err(|err| {
            bad(format!(
                "checkpoint #{} (size {}) is not vouched for: {err}; records {first_unverified}..={} are unproven",
                stored.id, stored.size, stored.size
            ))
        })?;
        let signed = Checkpoint::parse_body(body).map_err(|err| bad(format!("checkpoint #{}: {err}", stored.id)))?;
        if self.origin.as_deref().is_some_and(|origin| origin != signed.origin) {
            return Err(bad(format!("checkpoint #{} is for origin {:?}, not this ledger's", stored.id, signed.origin)));
        }
        if signed.size != self.frontier.size() {
            return Err(bad(format!(
                "checkpoint #{} signs size {} but is stored as size {}",
                stored.id, signed.size, stored.size
            )));
        }
        if signed.root != self.frontier.root() {
            return Err(bad(format!(
                "checkpoint #{} signs a root over {} records that the stored records do not hash to: a record in {first_unverified}..={} was changed, inserted or removed after it was signed",
                stored.id, signed.size, signed.size
            )));
        }
        self.checkpoints_verified += 1;
        self.verified_size = signed.size;
        let (covered, later): (Vec<_>, Vec<_>) = self.announced.drain(..).partition(|(seq, _)| *seq <= signed.size);
        self.announced = later;
        for (_, verifier) in covered {
            self.keys.push(format!("{}+{:08x}", verifier.name(), verifier.id()));
            self.promoted.push(verifier);
        }
        Ok(())
    }
}

/// Verifies the whole ledger in `db`, stopping at the first problem.
pub async fn verify(db: &Db, trust: Trust) -> Result<Verification, EvidenceError> {
    let checkpoints = store::checkpoints(db).await?;
    // A checkpoint of the empty tree vouches for nothing.
    let mut pending = checkpoints.iter().filter(|c| c.size > 0).peekable();
    let mut walk = Walk {
        trusted: Vec::new(),
        promoted: Vec::new(),
        checkpoint_size: 0,
        keys: Vec::new(),
        origin: None,
        announced: Vec::new(),
        frontier: Frontier::new(),
        last_hash: [0; 32],
        verified_size: 0,
        checkpoints_verified: 0,
    };
    if let Trust::Pinned(verifier) = &trust {
        walk.trust(verifier.as_ref().clone());
    }
    let finish = |walk: &Walk, problem: Option<Problem>| Verification {
        records: walk.frontier.size(),
        checkpoints_verified: walk.checkpoints_verified,
        newest_checkpoint: (walk.verified_size > 0).then_some(walk.verified_size),
        beyond_checkpoint: walk.frontier.size() - walk.verified_size,
        keys: walk.keys.clone(),
        problem,
    };

    let mut records = store::stream(db, 1);
    while let Some(record) = records.try_next().await? {
        let expected = walk.frontier.size() + 1;
        if record.seq != expected {
            let what = format!("record {expected} is missing (the next stored record is {})", record.seq);
            return Ok(finish(&walk, Some(Problem { seq: expected, what })));
        }
        let (hash, leaf) = record.hashes();
        if hash != record.hash {
            let what = format!(
                "record {expected}'s contents do not match its stored hash: it was changed after it was written"
            );
            return Ok(finish(&walk, Some(Problem { seq: expected, what })));
        }
        if record.prev_hash != walk.last_hash {
            let what = format!(
                "record {expected} does not link to record {}: a record was removed, inserted or reordered here",
                expected - 1
            );
            return Ok(finish(&walk, Some(Problem { seq: expected, what })));
        }
        if expected == 1 {
            if record.kind != GENESIS {
                let what = format!("record 1 is a {} record, not the ledger's genesis", record.kind);
                return Ok(finish(&walk, Some(Problem { seq: 1, what })));
            }
            walk.origin = Some(record.subject.clone());
            if matches!(trust, Trust::Genesis) {
                match announced_key(&record.details) {
                    Some(verifier) => walk.trust(verifier),
                    None => {
                        let what = "the genesis record announces no valid key".to_owned();
                        return Ok(finish(&walk, Some(Problem { seq: 1, what })));
                    }
                }
            }
        } else if record.kind == KEY_ROLLOVER {
            match announced_key(&record.details) {
                Some(verifier) => walk.announced.push((record.seq, verifier)),
                None => {
                    let what = format!("key rollover record {expected} announces no valid key");
                    return Ok(finish(&walk, Some(Problem { seq: expected, what })));
                }
            }
        }
        walk.last_hash = record.hash;
        walk.frontier.push(leaf);
        while let Some(checkpoint) = pending.next_if(|c| c.size == walk.frontier.size()) {
            if let Err(problem) = walk.checkpoint(checkpoint) {
                return Ok(finish(&walk, Some(problem)));
            }
        }
    }
    if let Some(checkpoint) = pending.find(|c| c.size > walk.frontier.size()) {
        let seq = walk.frontier.size() + 1;
        let what = format!(
            "checkpoint #{} covers {} records but the ledger has only {}: records {seq}..={} were removed",
            checkpoint.id,
            checkpoint.size,
            walk.frontier.size(),
            checkpoint.size
        );
        return Ok(finish(&walk, Some(Problem { seq, what })));
    }
    Ok(finish(&walk, None))
}

fn announced_key(details: &str) -> Option<NoteVerifier> {
    let details: serde_json::Value = serde_json::from_str(details).ok()?;
    NoteVerifier::parse(details.get("vkey")?.as_str()?).ok()
}
