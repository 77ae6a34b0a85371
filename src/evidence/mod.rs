//! The evidence ledger: every action vigil takes, recorded in an append-only, hash-chained
//! log whose Merkle tree heads are signed as C2SP checkpoints, so that an auditor verifies it
//! with vigil's public key alone.
//!
//! Records are not signed one by one. Each links to its predecessor's hash and is a leaf of an
//! RFC 9162 Merkle tree; a signed checkpoint (origin, size, root) vouches for every record
//! before it, as Certificate Transparency's signed tree heads do, so verifying a million
//! records is hashing, not a million signature checks. `docs/evidence-format.md` specifies the
//! encoding for independent verifiers.

mod key;
mod kind;
pub mod lifecycle;
pub mod merkle;
pub mod note;
mod record;
mod store;
mod verify;
pub mod witness;

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};

pub use key::{KeyError, LedgerKey};
pub use kind::{Area, Kind, is_manual};
pub use note::{Checkpoint, NoteError, NoteVerifier};
pub use record::{Actor, MAX_DETAILS_BYTES, NewRecord, Outcome, Record, RecordRef, canonical_json};
pub use store::{RecordFilter, StoredCheckpoint};
pub use verify::{Problem, Trust, Verification, verify};

use crate::clock::Clock;
use crate::state::{Db, StateError};
use merkle::Hash;

/// The kind of the first record, which announces the first signing key.
pub const GENESIS: &str = Kind::Genesis.as_str();
/// The kind of the record that announces a new signing key.
pub const KEY_ROLLOVER: &str = Kind::KeyRollover.as_str();

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A query failed.
    #[error("evidence store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The verification scan of an SQLite ledger failed.
    #[error("cannot read the SQLite evidence store: {0}")]
    Scan(#[from] rusqlite::Error),
    /// The verification scan's thread died.
    #[error("the evidence scan stopped unexpectedly: {0}")]
    ScanTask(#[from] tokio::task::JoinError),
    /// The head row does not describe a tree.
    #[error(
        "the evidence head row is corrupt ({0}); run `vigil evidence verify` to find out how far the ledger is intact"
    )]
    CorruptHead(&'static str),
    /// The record was refused before it was written.
    #[error("refused to record {kind}: {why}")]
    Refused {
        /// The record's kind.
        kind: String,
        /// Why.
        why: String,
    },
    /// The signing key is not the one the ledger's newest checkpoint names.
    #[error(
        "the signing key {ours} is not the ledger's current key {theirs}; restore the key file, or finish an interrupted rollover"
    )]
    WrongKey {
        /// Our key.
        ours: String,
        /// The key of the newest checkpoint.
        theirs: String,
    },
    /// No record has this sequence number.
    #[error("there is no record {seq}; the ledger has {size}")]
    NoSuchRecord {
        /// The asked-for number.
        seq: u64,
        /// Records in the ledger.
        size: u64,
    },
    /// Fewer records can be read than a checkpoint covers.
    #[error(
        "a proof over {size} records needs them all, but only {readable} can be read; run `vigil evidence verify` to find what is wrong"
    )]
    Incomplete {
        /// Records the proof covers.
        size: u64,
        /// Records read.
        readable: u64,
    },
    /// No checkpoint covers the asked-for tree size.
    #[error("no checkpoint of size {0}; `vigil evidence checkpoint` signs one of the current size")]
    NoSuchCheckpoint(u64),
    /// The signing key file could not be read, written or moved.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The ledger has records but its signing key file is gone.
    #[error("the evidence ledger has records but its signing key {} is missing; restore the key file from backup", .0.display())]
    KeyMissing(std::path::PathBuf),
    /// The operating system's random source failed.
    #[error("cannot read the operating system's random source: {0}")]
    Random(String),
    /// The head row disagrees with the records: no checkpoint is signed over it.
    #[error(
        "refusing to sign a checkpoint: {problem}; the ledger was changed outside vigil. Run `vigil evidence verify` to find the first record that is wrong"
    )]
    Unsigned {
        /// What disagrees.
        problem: String,
    },
    /// The witness could not be read.
    #[error("cannot read the checkpoint witness: {0}")]
    Witness(String),
    /// The transaction that carried this append with others' failed.
    #[error(transparent)]
    Batch(Arc<EvidenceError>),
    /// The append that was writing this record with others' was dropped before it finished.
    #[error("the evidence write carrying this record was abandoned before it finished; the record was not written")]
    Abandoned,
    /// The ledger's key or witness was to change while a claimed run shares it.
    #[error("the ledger is in use by a running job; change its key or witness when nothing runs")]
    Shared,
}

/// An inclusion proof of one record against a signed checkpoint.
#[derive(Debug, serde::Serialize)]
pub struct InclusionProof {
    /// The record.
    pub record: Record,
    /// Its Merkle leaf hash.
    #[serde(serialize_with = "hex_hash")]
    pub leaf_hash: Hash,
    /// Zero-based leaf index (`seq - 1`).
    pub index: u64,
    /// The checkpoint proved against.
    pub checkpoint: StoredCheckpoint,
    /// Sibling hashes from the leaf upwards.
    #[serde(serialize_with = "hex_hashes")]
    pub proof: Vec<Hash>,
}

fn hex_hash<S: serde::Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(hash))
}

fn hex_hashes<S: serde::Serializer>(hashes: &[Hash], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(hashes.iter().map(hex::encode))
}

/// The ledger, open for appending and signing.
///
/// Clones made by [`Ledger::claimed`] share everything but the handle their appends go through,
/// so a claimed run's records carry its claim as their fence.
pub struct Ledger {
    core: Arc<Core>,
    /// The state store handle appends and checkpoints go through, and the fence they carry.
    db: Db,
}

/// What every handle of one ledger shares.
struct Core {
    key: LedgerKey,
    clock: Arc<dyn Clock>,
    actor: Actor,
    /// When this process last signed a checkpoint: appends sign a new one once a minute.
    last_checkpoint: Mutex<Option<DateTime<Utc>>>,
    /// Appends waiting for the writer.
    queue: Mutex<Vec<Waiting>>,
    /// Held by the one task writing the queue out.
    writer: tokio::sync::Mutex<()>,
    /// Where each checkpoint is also written, outside the database.
    witness: Option<Box<dyn crate::objects::ObjectStore>>,
}

/// One append's validated records, and where its outcome goes.
struct Waiting {
    records: Vec<(NewRecord, String)>,
    /// The handle it was appended through: its fence is checked with the records.
    db: Db,
    done: tokio::sync::oneshot::Sender<Result<Vec<Record>, Arc<EvidenceError>>>,
}

/// The longest time records are appended without a checkpoint covering them.
const CHECKPOINT_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);

impl Ledger {
    /// Opens the ledger in `db`, signing with `key`. An empty ledger gets its genesis record,
    /// announcing the key, and a first checkpoint.
    pub async fn open(db: Db, key: LedgerKey, clock: Arc<dyn Clock>) -> Result<Self, EvidenceError> {
        let core = Core {
            key,
            clock,
            actor: Actor::current(),
            last_checkpoint: Mutex::new(None),
            queue: Mutex::default(),
            writer: tokio::sync::Mutex::default(),
            witness: None,
        };
        let ledger = Self { core: Arc::new(core), db };
        if size(&ledger.db).await? == 0 {
            let verifier = ledger.core.key.verifier();
            ledger
                .write(vec![NewRecord {
                    kind: Kind::Genesis.into(),
                    subject: ledger.core.key.name().into(),
                    outcome: Outcome::Info,
                    details: serde_json::json!({
                        "format": "vigil.evidence.v1",
                        "vkey": verifier.vkey(),
                        "fingerprint": verifier.fingerprint(),
                    }),
                }])
                .await?;
            ledger.checkpoint().await?;
        } else if let Some(newest) = store::newest_checkpoint(&ledger.db).await? {
            let ours = ledger.core.key.verifier();
            let ours = format!("{}+{:08x}", ours.name(), ours.id());
            if newest.key != ours {
                return Err(EvidenceError::WrongKey { ours, theirs: newest.key });
            }
            let signed_at = DateTime::parse_from_rfc3339(&newest.signed_at).ok().map(|at| at.with_timezone(&Utc));
            *ledger.core.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = signed_at;
        }
        Ok(ledger)
    }

    /// Writes every checkpoint from now on to `witness` as well; a witness used for the first
    /// time receives the checkpoints the ledger already has.
    pub async fn with_witness(mut self, witness: Box<dyn crate::objects::ObjectStore>) -> Result<Self, EvidenceError> {
        witness::adopt(&self.db, witness.as_ref()).await?;
        self.core_mut()?.witness = Some(witness);
        Ok(self)
    }

    /// The ledger for one claimed run of queued work: its appends and checkpoints go through
    /// `db` (a [claimed](Db::claimed) handle), so they are refused once the claim is lost;
    /// everything else is shared with this ledger.
    pub fn claimed(&self, db: Db) -> Self {
        Self { core: self.core.clone(), db }
    }

    /// The shared part, to change: only a ledger no claimed run shares (set-up, rollovers).
    fn core_mut(&mut self) -> Result<&mut Core, EvidenceError> {
        Arc::get_mut(&mut self.core).ok_or(EvidenceError::Shared)
    }

    /// The store this ledger writes to.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The signing key's public half.
    pub fn verifier(&self) -> NoteVerifier {
        self.core.key.verifier()
    }

    /// Appends one record.
    pub async fn append(&self, record: NewRecord) -> Result<Record, EvidenceError> {
        let mut written = self.append_batch(vec![record]).await?;
        Ok(written.pop().expect("one record in, one out"))
    }

    /// Appends records in one transaction: all are written or none. A checkpoint follows when
    /// the last one is a minute old.
    pub async fn append_batch(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, EvidenceError> {
        let written = self.write(records).await?;
        if self.checkpoint_due() {
            self.checkpoint().await?;
        }
        Ok(written)
    }

    async fn write(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, EvidenceError> {
        let mut prepared = Vec::with_capacity(records.len());
        for new in records {
            let details = canonical_json(&new.details);
            if details.len() > MAX_DETAILS_BYTES {
                return Err(EvidenceError::Refused {
                    kind: new.kind,
                    why: format!("details are {} bytes; the limit is {MAX_DETAILS_BYTES}", details.len()),
                });
            }
            if new.kind.is_empty() || new.subject.is_empty() {
                return Err(EvidenceError::Refused {
                    kind: new.kind,
                    why: "kind and subject must not be empty".into(),
                });
            }
            prepared.push((new, details));
        }
        // Group commit: the append joins the queue, and whichever appender holds the writer
        // writes everything queued in one transaction. Under concurrent sagas, one commit
        // carries many records instead of one each; alone, an append is written at once. The
        // writer sends every outcome before it lets go, so whoever finds its records taken by
        // an earlier writer finds its outcome waiting.
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.core.queue.lock().unwrap_or_else(|p| p.into_inner()).push(Waiting {
            records: prepared,
            db: self.db.clone(),
            done,
        });
        {
            let _writer = self.core.writer.lock().await;
            let batch = std::mem::take(&mut *self.core.queue.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                // On a task of its own: an appender dropped while it writes (a run dropped after
                // its claim's lease, a shutdown's deadline) takes nobody else's records with it.
                let written = tokio::spawn(write_batch(self.core.clock.clone(), self.core.actor.clone(), batch));
                let _ = written.await;
            }
        }
        match outcome.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(err)) => Err(EvidenceError::Batch(err)),
            Err(_) => Err(EvidenceError::Abandoned),
        }
    }

    fn checkpoint_due(&self) -> bool {
        let last = *self.core.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|at| self.core.clock.now() - at >= CHECKPOINT_INTERVAL)
    }

    /// Signs and stores a checkpoint of the ledger as it is now.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, EvidenceError> {
        let verifier = self.core.key.verifier();
        let (head, problem) = store::verified_head(&self.db, &verifier).await?;
        if let Some(problem) = problem {
            return Err(EvidenceError::Unsigned { problem });
        }
        let checkpoint =
            Checkpoint { origin: self.core.key.name().into(), size: head.frontier.size(), root: head.frontier.root() };
        let note = self.core.key.sign_note(&checkpoint.body());
        let now = self.core.clock.now();
        let signed_at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let id = store::insert_checkpoint(&self.db, &head.frontier, verifier.name(), verifier.id(), &signed_at, &note)
            .await?;
        *self.core.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        let stored = StoredCheckpoint {
            id,
            size: checkpoint.size,
            key: format!("{}+{:08x}", verifier.name(), verifier.id()),
            signed_at,
            note,
        };
        if let Some(witness) = &self.core.witness
            && let Err(err) = witness::record(witness.as_ref(), &stored).await
        {
            // The checkpoint stands in the database; `vigil evidence verify` names the one the
            // witness lacks. Failing the action it closes (a rotation, a backup) would not help.
            tracing::error!(checkpoint = stored.id, size = stored.size, %err, "cannot write the checkpoint to the witness");
        }
        Ok(stored)
    }

    /// Signs the statement that vouches for a report bundle whose `manifest.json` has this
    /// SHA-256 (`note::manifest_body`), as a signed note.
    pub fn sign_manifest(&self, manifest_sha256: &Hash) -> String {
        self.core.key.sign_note(&note::manifest_body(self.core.key.name(), manifest_sha256))
    }

    /// Moves signing to `new_key`: a record announces it, a checkpoint signed with the old key
    /// covers that record (so a verifier trusting the old key learns the new one), and a
    /// checkpoint signed with the new key follows.
    pub async fn rollover(
        &mut self,
        new_key: LedgerKey,
    ) -> Result<(StoredCheckpoint, StoredCheckpoint), EvidenceError> {
        self.append(rollover_record(&self.core.key, &new_key.verifier())).await?;
        self.complete_rollover(new_key).await
    }

    /// The second half of a rollover, also run to finish one a crash interrupted after the
    /// announcing record was written: a checkpoint by the current key covering everything so
    /// far (the announcement included), then the switch and a checkpoint by the new key.
    pub async fn complete_rollover(
        &mut self,
        new_key: LedgerKey,
    ) -> Result<(StoredCheckpoint, StoredCheckpoint), EvidenceError> {
        let by_old = self.checkpoint().await?;
        self.core_mut()?.key = new_key;
        let by_new = self.checkpoint().await?;
        Ok((by_old, by_new))
    }
}

/// Writes every waiting append's records, one transaction per fence they carry (almost
/// always one), and tells each its outcome.
async fn write_batch(clock: Arc<dyn Clock>, actor: Actor, batch: Vec<Waiting>) {
    let mut groups: Vec<(Option<crate::state::Fence>, Vec<Waiting>)> = Vec::new();
    for waiting in batch {
        let guard = waiting.db.guard();
        match groups.iter_mut().find(|(g, _)| *g == guard) {
            Some((_, group)) => group.push(waiting),
            None => groups.push((guard, vec![waiting])),
        }
    }
    for (_, group) in groups {
        write_group(clock.as_ref(), &actor, group).await;
    }
}

/// Writes appends that carry one fence in one transaction, and tells each its outcome.
async fn write_group(clock: &dyn Clock, actor: &Actor, batch: Vec<Waiting>) {
    let time = clock.now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let count = batch.iter().map(|w| w.records.len()).sum();
    let Some(db) = batch.first().map(|w| w.db.clone()) else { return };
    let mut sizes = Vec::with_capacity(batch.len());
    let mut dones = Vec::with_capacity(batch.len());
    let mut prepared = Vec::with_capacity(count);
    for waiting in batch {
        sizes.push(waiting.records.len());
        dones.push(waiting.done);
        prepared.extend(waiting.records);
    }
    let mut prepared = prepared.into_iter();
    let appended = store::append(&db, count, |seq, prev_hash| {
        let (new, details) = prepared.next().expect("append asks for as many records as it was given");
        let mut record = Record {
            seq,
            time: time.clone(),
            kind: new.kind,
            subject: new.subject,
            actor: actor.clone(),
            outcome: new.outcome.as_str().into(),
            details,
            prev_hash,
            hash: [0; 32],
        };
        record.hash = record.compute_hash();
        record
    })
    .await;
    match appended {
        Ok((written, _)) => {
            let mut written = written.into_iter();
            for (size, done) in sizes.into_iter().zip(dones) {
                let _ = done.send(Ok(written.by_ref().take(size).collect()));
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for done in dones {
                let _ = done.send(Err(err.clone()));
            }
        }
    }
}

/// The record announcing `new` as the ledger's next signing key. The retiring key `old` signs
/// the new verifier key (`endorsement`): a verifier trusts the new key only with it, so a
/// database writer cannot enrol a key of their own by inserting a record.
pub fn rollover_record(old: &LedgerKey, new: &NoteVerifier) -> NewRecord {
    NewRecord {
        kind: Kind::KeyRollover.into(),
        subject: old.name().into(),
        outcome: Outcome::Info,
        details: serde_json::json!({
            "old_vkey": old.verifier().vkey(),
            "vkey": new.vkey(),
            "fingerprint": new.fingerprint(),
            "endorsement": old.sign_note(&note::rollover_body(old.name(), &new.vkey())),
        }),
    }
}

/// Records in the ledger.
pub async fn size(db: &Db) -> Result<u64, EvidenceError> {
    Ok(store::head(db).await?.frontier.size())
}

/// Records matching `filter`.
pub async fn list(db: &Db, filter: &RecordFilter) -> Result<Vec<Record>, EvidenceError> {
    store::records(db, filter).await
}

/// One record.
pub async fn get(db: &Db, seq: u64) -> Result<Record, EvidenceError> {
    match store::record(db, seq).await? {
        Some(record) => Ok(record),
        None => Err(EvidenceError::NoSuchRecord { seq, size: size(db).await? }),
    }
}

/// The checkpoint signed last, if any.
pub async fn newest_checkpoint(db: &Db) -> Result<Option<StoredCheckpoint>, EvidenceError> {
    store::newest_checkpoint(db).await
}

/// Every stored checkpoint, by size.
pub async fn checkpoints(db: &Db) -> Result<Vec<StoredCheckpoint>, EvidenceError> {
    store::checkpoints(db).await
}

/// The inclusion proof of record `seq` against the newest checkpoint of size `size`, or else
/// the newest checkpoint that covers it.
pub async fn prove(db: &Db, seq: u64, size: Option<u64>) -> Result<InclusionProof, EvidenceError> {
    let record = get(db, seq).await?;
    let checkpoints = store::checkpoints(db).await?;
    let checkpoint = match size {
        Some(size) => {
            checkpoints.into_iter().rev().find(|c| c.size == size).ok_or(EvidenceError::NoSuchCheckpoint(size))?
        }
        None => checkpoints.into_iter().rev().find(|c| c.size >= seq).ok_or(EvidenceError::NoSuchCheckpoint(seq))?,
    };
    if checkpoint.size < seq {
        return Err(EvidenceError::Refused {
            kind: record.kind,
            why: format!("the checkpoint of size {} does not cover record {seq}", checkpoint.size),
        });
    }
    let leaves = leaf_hashes(db, checkpoint.size).await?;
    let index = seq - 1;
    // leaf_hashes returned all `checkpoint.size >= seq` leaves, so the record's is there.
    let Some((at, leaf_hash)) = usize::try_from(index).ok().and_then(|at| Some((at, *leaves.get(at)?))) else {
        return Err(EvidenceError::Incomplete { size: checkpoint.size, readable: leaves.len() as u64 });
    };
    let proof = merkle::inclusion_proof(&leaves, at);
    Ok(InclusionProof { leaf_hash, record, index, checkpoint, proof })
}

/// The consistency proof from the tree of the first `old_size` records to that of `new_size`.
pub async fn consistency(db: &Db, old_size: u64, new_size: u64) -> Result<Vec<Hash>, EvidenceError> {
    let total = size(db).await?;
    if old_size == 0 || old_size > new_size || new_size > total {
        return Err(EvidenceError::Refused {
            kind: "consistency".into(),
            why: format!("need 0 < old size <= new size <= {total}"),
        });
    }
    let leaves = leaf_hashes(db, new_size).await?;
    // old_size <= new_size == leaves.len(), checked above and by leaf_hashes.
    Ok(merkle::consistency_proof(&leaves, usize::try_from(old_size).unwrap_or(leaves.len())))
}

/// Feeds the first `size` records to `visit` in order, each with its Merkle leaf hash: one
/// streaming pass, as the verifier's scan reads them. An unreadable record stops it.
pub async fn for_each_record<S: Send + 'static>(
    db: &Db,
    size: u64,
    state: S,
    visit: fn(&mut S, &RecordRef<'_>, Hash),
) -> Result<S, EvidenceError> {
    struct Walk<S> {
        state: S,
        visit: fn(&mut S, &RecordRef<'_>, Hash),
        wanted: u64,
        seen: u64,
        buffer: Vec<u8>,
        unreadable: Option<(u64, String)>,
    }
    let walk = Walk { state, visit, wanted: size, seen: 0, buffer: Vec::new(), unreadable: None };
    let walk = store::scan(db, walk, |walk, scanned| {
        if walk.seen >= walk.wanted {
            return std::ops::ControlFlow::Break(());
        }
        match scanned {
            store::Scanned::Record(record) => {
                let (_, leaf) = record.hashes(&mut walk.buffer);
                (walk.visit)(&mut walk.state, &record, leaf);
                walk.seen += 1;
                std::ops::ControlFlow::Continue(())
            }
            store::Scanned::Unreadable { seq, why } => {
                walk.unreadable = Some((seq, why));
                std::ops::ControlFlow::Break(())
            }
        }
    })
    .await?;
    if let Some((seq, why)) = walk.unreadable {
        return Err(EvidenceError::Refused {
            kind: "export".into(),
            why: format!("record {seq} cannot be read ({why}); run `vigil evidence verify`"),
        });
    }
    if walk.seen < size {
        return Err(EvidenceError::Incomplete { size, readable: walk.seen });
    }
    Ok(walk.state)
}

/// The leaf hashes of the first `size` records, read by the verifier's scan.
///
/// Memory grows with the records actually read, never with `size` itself: a stored
/// checkpoint's size is data, and a tampered one (2^59) must give an error, not an allocation
/// failure.
async fn leaf_hashes(db: &Db, size: u64) -> Result<Vec<Hash>, EvidenceError> {
    struct Collect {
        wanted: u64,
        leaves: Vec<Hash>,
        buffer: Vec<u8>,
    }
    let state = Collect { wanted: size, leaves: Vec::new(), buffer: Vec::new() };
    let collected = store::scan(db, state, |state, scanned| {
        if state.leaves.len() as u64 >= state.wanted {
            return std::ops::ControlFlow::Break(());
        }
        // An unreadable row yields no leaf: the proof then fails to verify, as it should.
        if let store::Scanned::Record(record) = scanned {
            state.leaves.push(record.hashes(&mut state.buffer).1);
        }
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    if (collected.leaves.len() as u64) < size {
        return Err(EvidenceError::Incomplete { size, readable: collected.leaves.len() as u64 });
    }
    Ok(collected.leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::state::StateStore;

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_each_gets_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
        let ledger = Ledger::open(db.clone(), LedgerKey::generate("test"), Arc::new(SystemClock)).await.unwrap();
        let record = |task: usize, n: usize| NewRecord {
            kind: "test.append".into(),
            subject: format!("task-{task}"),
            outcome: Outcome::Info,
            details: serde_json::json!({ "n": n }),
        };
        let appends = (0..16).map(|task| {
            let ledger = &ledger;
            async move {
                let mut seqs = Vec::new();
                for n in 0..10 {
                    // Batches of two stay together: consecutive numbers, in the order given.
                    let written =
                        ledger.append_batch(vec![record(task, 2 * n), record(task, 2 * n + 1)]).await.unwrap();
                    assert_eq!(written.len(), 2);
                    assert!(written.iter().all(|r| r.subject == format!("task-{task}")));
                    assert_eq!(written[1].seq, written[0].seq + 1);
                    assert_eq!(written[0].details, format!("{{\"n\":{}}}", 2 * n));
                    seqs.extend(written.iter().map(|r| (r.seq, r.time.clone())));
                }
                seqs
            }
        });
        let written: Vec<(u64, String)> = futures_util::future::join_all(appends).await.into_iter().flatten().collect();
        // One commit stamps its records with one time: fewer times than appends shows appends
        // shared commits.
        let commits: std::collections::BTreeSet<&String> = written.iter().map(|(_, time)| time).collect();
        assert!(commits.len() < 160, "160 appends took {} commits", commits.len());
        let mut seqs: Vec<u64> = written.iter().map(|(seq, _)| *seq).collect();
        seqs.sort_unstable();
        let before = seqs[0];
        assert_eq!(seqs, (before..before + 320).collect::<Vec<_>>(), "every record written once, none lost");
        let verified = verify(&db, Trust::Genesis).await.unwrap();
        assert!(verified.problem.is_none(), "{:?}", verified.problem);
    }

    #[tokio::test]
    async fn a_refused_record_fails_only_its_own_append() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
        let ledger = Ledger::open(db, LedgerKey::generate("test"), Arc::new(SystemClock)).await.unwrap();
        let empty = NewRecord {
            kind: String::new(),
            subject: "s".into(),
            outcome: Outcome::Info,
            details: serde_json::Value::Null,
        };
        let fine = NewRecord {
            kind: "test.append".into(),
            subject: "s".into(),
            outcome: Outcome::Info,
            details: serde_json::Value::Null,
        };
        let (refused, written) = tokio::join!(ledger.append(empty), ledger.append(fine));
        assert!(matches!(refused, Err(EvidenceError::Refused { .. })), "{refused:?}");
        assert_eq!(written.unwrap().kind, "test.append");
    }
}
