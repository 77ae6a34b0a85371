//! Verification: every hash, every link, every checkpoint's signature and root, in one pass.
//!
//! It trusts nothing the ledger says about itself except what a trusted key signed: the
//! stored hashes are recomputed, the head row and the stored checkpoint columns are ignored in
//! favour of the signed notes, and a new key is trusted only once a checkpoint signed by an
//! already trusted key covers the record announcing it.

use std::ops::ControlFlow;

use serde::Serialize;

use super::merkle::{Frontier, Hash};
use super::note::{self, Checkpoint, NoteVerifier};
use super::store::Scanned;
use super::{EvidenceError, GENESIS, KEY_ROLLOVER, store};
use crate::state::Db;

/// Which key verification starts from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A key obtained out of band: what an auditor should use.
    Pinned(Box<NoteVerifier>),
    /// The key the genesis record announces (trust on first use).
    Genesis,
    /// The public half of the signing key this installation is configured with, and the keys
    /// it endorsed by rollover. The keys before it are followed from the genesis record, but
    /// trusted only once a checkpoint this key signed covers them: a database whose history no
    /// checkpoint of this key vouches for is refused, whatever key its genesis record names.
    Configured(Box<NoteVerifier>),
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
    /// Whether the genesis record's key starts the walk (for `Genesis` and `Configured`).
    trust_genesis: bool,
    /// The configured key (`Trust::Configured`), and whether a checkpoint it signed verified.
    configured: Option<(NoteVerifier, bool)>,
    /// Every checkpoint, by size; `next_checkpoint` is the first not yet checked.
    checkpoints: Vec<store::StoredCheckpoint>,
    next_checkpoint: usize,
    /// Reused for each record's encoding.
    buffer: Vec<u8>,
    problem: Option<Problem>,
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
        let (body, signer) = note::open(&stored.note, &candidates).map_err(|err| {
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
        if let Some((configured, signed_by_it)) = &mut self.configured {
            *signed_by_it |= signer == configured;
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
    // A checkpoint of the empty tree vouches for nothing.
    let checkpoints: Vec<_> = store::checkpoints(db).await?.into_iter().filter(|c| c.size > 0).collect();
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
        trust_genesis: !matches!(trust, Trust::Pinned(_)),
        configured: None,
        checkpoints,
        next_checkpoint: 0,
        buffer: Vec::with_capacity(1024),
        problem: None,
    };
    match trust {
        Trust::Pinned(verifier) => walk.trust(*verifier),
        Trust::Configured(verifier) => walk.configured = Some((*verifier, false)),
        Trust::Genesis => {}
    }
    let mut walk = store::scan(db, walk, |walk, scanned| match walk.step(scanned) {
        Ok(()) => ControlFlow::Continue(()),
        Err(problem) => {
            walk.problem = Some(problem);
            ControlFlow::Break(())
        }
    })
    .await?;
    if walk.problem.is_none()
        && let Some(checkpoint) =
            walk.checkpoints[walk.next_checkpoint..].iter().find(|c| c.size > walk.frontier.size())
    {
        let seq = walk.frontier.size() + 1;
        let what = format!(
            "checkpoint #{} covers {} records but the ledger has only {}: records {seq}..={} were removed",
            checkpoint.id,
            checkpoint.size,
            walk.frontier.size(),
            checkpoint.size
        );
        walk.problem = Some(Problem { seq, what });
    }
    if walk.problem.is_none() {
        walk.problem = walk.unvouched();
    }
    Ok(Verification {
        records: walk.frontier.size(),
        checkpoints_verified: walk.checkpoints_verified,
        newest_checkpoint: (walk.verified_size > 0).then_some(walk.verified_size),
        beyond_checkpoint: walk.frontier.size() - walk.verified_size,
        keys: walk.keys,
        problem: walk.problem,
    })
}

impl Walk {
    /// Under `Trust::Configured`, the problem when the configured key vouches for nothing
    /// read: it is not the genesis record's key and signed no checkpoint that verified.
    fn unvouched(&self) -> Option<Problem> {
        let (configured, signed_by_it) = self.configured.as_ref()?;
        if self.frontier.size() == 0 {
            return None;
        }
        let id = format!("{}+{:08x}", configured.name(), configured.id());
        if *signed_by_it || self.keys.first() == Some(&id) {
            return None;
        }
        let genesis = self.keys.first().map_or("no key", String::as_str);
        Some(Problem {
            seq: 1,
            what: format!(
                "the genesis record announces key {genesis}, and no checkpoint signed by the configured signing key {id} covers it: this is not the ledger that key signs, or its history was replaced; verify with --vkey naming the key you trust"
            ),
        })
    }

    /// Checks one record, then every checkpoint of the size the ledger has reached with it.
    fn step(&mut self, scanned: Scanned<'_>) -> Result<(), Problem> {
        let expected = self.frontier.size() + 1;
        let record = match scanned {
            Scanned::Record(record) => record,
            Scanned::Unreadable { seq, why } => {
                return Err(Problem {
                    seq: expected,
                    what: format!("record {expected} (stored as {seq}) cannot be read: {why}"),
                });
            }
        };
        let problem = |what: String| Err(Problem { seq: expected, what });
        if record.seq != expected {
            return problem(format!("record {expected} is missing (the next stored record is {})", record.seq));
        }
        let (hash, leaf) = record.hashes(&mut self.buffer);
        if &hash != record.hash {
            return problem(format!(
                "record {expected}'s contents do not match its stored hash: it was changed after it was written"
            ));
        }
        if record.prev_hash != &self.last_hash {
            return problem(format!(
                "record {expected} does not link to record {}: a record was removed, inserted or reordered here",
                expected - 1
            ));
        }
        if expected == 1 {
            if record.kind != GENESIS {
                return problem(format!("record 1 is a {} record, not the ledger's genesis", record.kind));
            }
            self.origin = Some(record.subject.to_owned());
            if self.trust_genesis {
                match announced_key(record.details) {
                    Some(verifier) => self.trust(verifier),
                    None => return problem("the genesis record announces no valid key".to_owned()),
                }
            }
        } else if record.kind == KEY_ROLLOVER {
            let Some(verifier) = announced_key(record.details) else {
                return problem(format!("key rollover record {expected} announces no valid key"));
            };
            // Only a key the key it replaces endorsed: a rollover record a database writer
            // inserted (which vigil's next checkpoint would cover) enrols nothing.
            let origin = self.origin.clone().unwrap_or_default();
            let candidates: Vec<NoteVerifier> = self.trusted.iter().chain(&self.promoted).cloned().collect();
            let endorsed = endorsement(record.details).is_some_and(|note| {
                note::open(&note, &candidates)
                    .is_ok_and(|(body, _)| body == note::rollover_body(&origin, &verifier.vkey()))
            });
            if !endorsed {
                return problem(format!(
                    "key rollover record {expected} announces key {}+{:08x}, which the key it replaces did not sign: a key was enrolled outside vigil",
                    verifier.name(),
                    verifier.id()
                ));
            }
            self.announced.push((record.seq, verifier));
        }
        self.last_hash = hash;
        self.frontier.push(leaf);
        while let Some(checkpoint) =
            self.checkpoints.get(self.next_checkpoint).filter(|c| c.size == self.frontier.size())
        {
            let checkpoint = checkpoint.clone();
            self.next_checkpoint += 1;
            self.checkpoint(&checkpoint)?;
        }
        Ok(())
    }
}

fn endorsement(details: &str) -> Option<String> {
    let details: serde_json::Value = serde_json::from_str(details).ok()?;
    Some(details.get("endorsement")?.as_str()?.to_owned())
}

fn announced_key(details: &str) -> Option<NoteVerifier> {
    let details: serde_json::Value = serde_json::from_str(details).ok()?;
    NoteVerifier::parse(details.get("vkey")?.as_str()?).ok()
}
