//! The evidence bundle: one tar archive holding the period's records, the newest signed
//! checkpoint and its witness copies, a compact range proof tying the records to that
//! checkpoint, and the report's files, each with its SHA-256 in `manifest.json`.
//!
//! [`verify_bundle`] needs nothing but the archive and the pinned verifier key: no database, no
//! configuration, no network. It reads the archive once, in order (`manifest.json`, the JSON
//! report, the checkpoint and its copies, the proof, the records, the other report files), so a
//! bundle of a million records is checked in one pass and bounded memory.
//!
//! The records are a contiguous slice of the ledger: the period's records (from the first
//! appended at or after its start to the last appended before its end) and, as fences, the
//! record just before and the one just after, so that no record of the period can be left out
//! at either end without the proof failing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::evidence::merkle::{self, Hash};
use crate::evidence::{
    self, Checkpoint, EvidenceError, Kind, Ledger, NewRecord, NoteVerifier, Outcome, Record, RecordRef,
};
use crate::objects::ObjectStore;

use super::Format;
use super::model::{Builder, Integrity, ModelError, Period, Policy, Report};

/// The bundle format, in the manifest's `format` field.
pub const FORMAT: &str = "vigil.bundle.v1";
/// Records held back while looking for the period's last record (see [`Scan`]).
const MAX_PENDING: usize = 10_000;

const MANIFEST: &str = "manifest.json";
const CHECKPOINT: &str = "checkpoint.note";
const PROOF: &str = "proof.json";
const RECORDS: &str = "records.jsonl";
const REPORT_JSON: &str = "report/report.json";

/// What `manifest.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    period: Period,
    /// The records of the period.
    range: SeqRange,
    /// The records in the bundle: the range and its fences.
    records: SeqRange,
    checkpoint_size: u64,
    files: Vec<FileEntry>,
}

/// Sequence numbers `first..=last`; empty when `first` is `last + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeqRange {
    first: u64,
    last: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    sha256: String,
    bytes: u64,
}

/// `proof.json`: the range proof of the bundle's records against the checkpoint.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proof {
    /// The tree the checkpoint signs.
    size: u64,
    /// The zero-based index of the bundle's first record.
    start: u64,
    /// The roots of the subtrees outside the records, left to right (hex).
    hashes: Vec<String>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The ledger could not be read or signed.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The period is malformed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTML template failed.
    #[error("cannot render the HTML report: {0}")]
    Render(#[from] askama::Error),
    /// The witness could not be read.
    #[error("cannot read the checkpoint's witness copy: {0}")]
    Witness(String),
    /// The records read do not give the root the checkpoint signs.
    #[error(
        "the ledger's records do not give the root its newest checkpoint signs: a record was changed outside vigil; run `vigil evidence verify` to find it"
    )]
    Tampered,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The report.
    pub report: Report,
    /// Every file written, the bundle last.
    pub files: Vec<PathBuf>,
    /// The bundle archive.
    pub bundle: PathBuf,
    /// Witness copies of the checkpoint included.
    pub witness_copies: usize,
}

/// What the scan over the ledger keeps: the leaf hashes (for the proof), the period's records
/// fed to the report and written to `records.jsonl`, and the fences.
struct Scan {
    /// The period, in microseconds since the epoch.
    from: i64,
    to: i64,
    builder: Builder,
    leaves: Vec<Hash>,
    out: BufWriter<std::fs::File>,
    error: Option<std::io::Error>,
    /// The newest record before the period, while the period's first is not found.
    before: Option<Record>,
    /// The record right after `before`, when the period turns out empty.
    after_empty: Option<Record>,
    /// The period's first and last record so far.
    first: Option<u64>,
    last: u64,
    /// Records after the newest of the period, held until a later record of the period comes
    /// (clocks of two writers may disagree by a little) or the scan ends. Past `MAX_PENDING`
    /// the period is taken to have ended.
    pending: Vec<Record>,
    closed: bool,
    /// The bundle's first and last record.
    written: Option<SeqRange>,
}

impl Scan {
    fn write(&mut self, line: &Record) {
        if self.error.is_some() {
            return;
        }
        let result = serde_json::to_writer(&mut self.out, line)
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(err) = result {
            self.error = Some(err);
        }
        self.written = Some(match self.written {
            Some(range) => SeqRange { first: range.first, last: line.seq },
            None => SeqRange { first: line.seq, last: line.seq },
        });
    }

    fn visit(&mut self, record: &RecordRef<'_>, leaf: Hash) {
        self.leaves.push(leaf);
        if self.closed {
            return;
        }
        let time = super::model::micros(record.time);
        let in_period = time.is_some_and(|t| t >= self.from && t < self.to);
        match (self.first, in_period) {
            (None, false) => {
                if time.is_none_or(|t| t < self.from) {
                    self.before = Some(record.to_record());
                    self.after_empty = None;
                } else if self.after_empty.is_none() {
                    self.after_empty = Some(record.to_record());
                }
            }
            (None, true) => {
                if let Some(before) = self.before.take() {
                    self.write(&before);
                }
                self.first = Some(record.seq);
                self.include(record);
            }
            (Some(_), true) => {
                for line in std::mem::take(&mut self.pending) {
                    self.builder.feed(&line.as_ref());
                    self.write(&line);
                }
                self.include(record);
            }
            (Some(_), false) => {
                self.pending.push(record.to_record());
                if self.pending.len() > MAX_PENDING {
                    self.closed = true;
                }
            }
        }
    }

    fn include(&mut self, record: &RecordRef<'_>) {
        self.builder.feed(record);
        self.last = record.seq;
        self.write(&record.to_record());
    }

    /// Writes the closing fence, and returns the period's range.
    fn finish(&mut self) -> SeqRange {
        match self.first {
            Some(first) => {
                if let Some(after) = self.pending.first().cloned() {
                    self.write(&after);
                }
                SeqRange { first, last: self.last }
            }
            None => {
                let before = self.before.take();
                let next = before.as_ref().map_or(1, |b| b.seq + 1);
                if let Some(before) = &before {
                    self.write(before);
                }
                let after = self.after_empty.take().filter(|a| a.seq == next);
                if let Some(after) = &after {
                    self.write(after);
                }
                SeqRange { first: next, last: next - 1 }
            }
        }
    }
}

/// Exports the report of `period` into `out`: the report's files of the formats in `loose`, then
/// `bundle.tar`, which holds them all.
///
/// A checkpoint is signed first, so the bundle's checkpoint covers every record there is. The
/// ledger is read once, streaming; memory grows with the number of records (32 bytes each, for
/// the proof) and with the report's own size, not with the records' contents.
pub async fn export(
    ledger: &Ledger,
    witness: Option<&dyn ObjectStore>,
    policy: Policy,
    period: Period,
    generated_at: String,
    out: &Path,
    loose: &[Format],
) -> Result<Exported, ExportError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Write { path, source }
    };
    let folder = if loose.contains(&Format::Csv) { out.join("csv") } else { out.to_owned() };
    std::fs::create_dir_all(&folder).map_err(write_err(&folder))?;
    let checkpoint = ledger.checkpoint().await?;
    let verifier = ledger.verifier();
    // The checkpoint was just signed by this key: its body parses.
    let (body, _) = evidence::note::open(&checkpoint.note, std::slice::from_ref(&verifier))
        .map_err(|err| EvidenceError::Refused { kind: "checkpoint".into(), why: err.to_string() })?;
    let signed = Checkpoint::parse_body(body)
        .map_err(|err| EvidenceError::Refused { kind: "checkpoint".into(), why: err.to_string() })?;

    // Staged beside the bundle, and removed once it is packed.
    let records_path = out.join(".records.jsonl.partial");
    let file = std::fs::File::create(&records_path).map_err(write_err(&records_path))?;
    let scan = Scan {
        from: super::model::micros(&period.from).ok_or(ModelError::BadPeriod("from"))?,
        to: super::model::micros(&period.to).ok_or(ModelError::BadPeriod("to"))?,
        builder: Builder::new(period.clone(), policy)?,
        leaves: Vec::new(),
        out: BufWriter::new(file),
        error: None,
        before: None,
        after_empty: None,
        first: None,
        last: 0,
        pending: Vec::new(),
        closed: false,
        written: None,
    };
    let mut scan =
        evidence::for_each_record(ledger.db(), signed.size, scan, |scan, record, leaf| scan.visit(record, leaf))
            .await?;
    let range = scan.finish();
    if let Some(err) = scan.error.take() {
        return Err(ExportError::Write { path: records_path, source: err });
    }
    scan.out.flush().map_err(write_err(&records_path))?;
    // Records checkpointed long ago are read again here: a bundle of records the checkpoint
    // does not cover would only fail in the auditor's hands.
    if merkle::root(&scan.leaves) != signed.root {
        return Err(ExportError::Tampered);
    }
    // The ledger always holds its genesis record, so the bundle holds at least one.
    let written = scan.written.unwrap_or(SeqRange { first: 1, last: 0 });
    let proof = if written.first <= written.last {
        let (start, end) = (to_index(written.first - 1), to_index(written.last));
        merkle::range_proof(&scan.leaves, start, end)
    } else {
        Vec::new()
    };
    let proof = Proof {
        size: signed.size,
        start: written.first.saturating_sub(1),
        hashes: proof.iter().map(hex::encode).collect(),
    };

    let integrity = Integrity {
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: signed.size,
        checkpoint_root: hex::encode(signed.root),
        origin: signed.origin.clone(),
        vkey: verifier.vkey(),
        fingerprint: verifier.fingerprint(),
    };
    let report = scan.builder.finish(&generated_at, integrity);

    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    let rendered = super::render(&report)?;
    let (json, others): (Vec<_>, Vec<_>) = rendered.into_iter().partition(|(path, _)| path == REPORT_JSON);
    contents.extend(json);
    contents.push((CHECKPOINT.into(), checkpoint.note.clone().into_bytes()));
    let mut witness_copies = 0;
    if let Some(witness) = witness {
        let copy = evidence::witness::copy_of(witness, &checkpoint)
            .await
            .map_err(|err| ExportError::Witness(err.to_string()))?;
        if let Some(copy) = copy {
            contents.push(("witness/checkpoint.note".into(), copy));
            witness_copies += 1;
        }
    }
    let mut proof_json = serde_json::to_vec_pretty(&proof).unwrap_or_default();
    proof_json.push(b'\n');
    contents.push((PROOF.into(), proof_json));

    let mut files = Vec::new();
    let mut entries = Vec::new();
    for (path, bytes) in &contents {
        entries.push(FileEntry {
            path: path.clone(),
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        });
    }
    let records_sha = sha256_file(&records_path).map_err(write_err(&records_path))?;
    entries.push(FileEntry { path: RECORDS.into(), sha256: records_sha.0, bytes: records_sha.1 });
    for (path, bytes) in &others {
        entries.push(FileEntry {
            path: path.clone(),
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        });
    }
    // The report's files of the formats asked for also sit loose in the folder, for reading
    // (`report.html`, `csv/`, ...); those of an earlier export in other formats are removed.
    for (path, bytes) in contents.iter().chain(&others) {
        let (Some(name), Some(format)) = (path.strip_prefix("report/"), Format::of(path)) else { continue };
        let target = out.join(name);
        if loose.contains(&format) {
            std::fs::write(&target, bytes).map_err(write_err(&target))?;
            files.push(target);
        } else if let Err(err) = std::fs::remove_file(&target)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ExportError::Write { path: target, source: err });
        }
    }
    if !loose.contains(&Format::Csv) {
        // Only when empty: nothing but an earlier export's files is ever removed.
        let _ = std::fs::remove_dir(out.join("csv"));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        period,
        range,
        records: written,
        checkpoint_size: signed.size,
        files: entries,
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    manifest_json.push(b'\n');

    let bundle = out.join("bundle.tar");
    let file = std::fs::File::create(&bundle).map_err(write_err(&bundle))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    // The order `verify_bundle` reads in: the manifest and the JSON report before the records.
    tar.append_data(&mut entry_header(manifest_json.len()), MANIFEST, manifest_json.as_slice())
        .map_err(write_err(&bundle))?;
    for (path, bytes) in &contents {
        tar.append_data(&mut entry_header(bytes.len()), path, bytes.as_slice()).map_err(write_err(&bundle))?;
    }
    let records = std::fs::File::open(&records_path).map_err(write_err(&records_path))?;
    let mut header = entry_header(0);
    header.set_size(records_sha.1);
    header.set_cksum();
    tar.append_data(&mut header, RECORDS, records).map_err(write_err(&bundle))?;
    for (path, bytes) in &others {
        tar.append_data(&mut entry_header(bytes.len()), path, bytes.as_slice()).map_err(write_err(&bundle))?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(write_err(&bundle))?;
    std::fs::remove_file(&records_path).map_err(write_err(&records_path))?;
    files.push(bundle.clone());
    // The export is an action like any other: recorded, with the manifest's hash (which covers
    // every file of the bundle), and signed for at once.
    ledger
        .append(NewRecord {
            kind: Kind::ReportExported.into(),
            subject: "report".into(),
            outcome: Outcome::Succeeded,
            details: serde_json::json!({
                "from": report.period.from,
                "to": report.period.to,
                "first_seq": report.integrity.first_seq,
                "last_seq": report.integrity.last_seq,
                "checkpoint_size": report.integrity.checkpoint_size,
                "exceptions": report.exceptions.len(),
                "manifest_sha256": hex::encode(Sha256::digest(&manifest_json)),
            }),
        })
        .await?;
    ledger.checkpoint().await?;
    Ok(Exported { report, files, bundle, witness_copies })
}

/// A tar header for a file of `size` bytes: mode 0644 and time 0, so the same report always
/// packs to the same bytes.
fn entry_header(size: usize) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    header
}

fn to_index(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Why a bundle did not verify: the first thing that does not match, named.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The archive could not be read.
    #[error("cannot read the bundle: {0}")]
    Read(#[from] std::io::Error),
    /// The archive is not a vigil bundle, or a part of it is malformed.
    #[error("not a valid vigil bundle: {0}")]
    Malformed(String),
    /// Something in it does not match.
    #[error("{0}")]
    Mismatch(String),
}

/// What a verified bundle holds.
#[derive(Debug, Serialize)]
pub struct BundleVerification {
    /// The period.
    pub period: Period,
    /// The period's first and last record.
    pub first_seq: u64,
    /// The period's last record.
    pub last_seq: u64,
    /// The checkpoint's tree size.
    pub checkpoint_size: u64,
    /// The key that signed it.
    pub signed_by: String,
    /// Witness copies found identical to the checkpoint.
    pub witness_copies: usize,
    /// Files whose hash matched.
    pub files: usize,
    /// Numbers recomputed from the records (every number in the JSON report).
    pub numbers: usize,
}

/// Verifies the bundle read from `reader` with the pinned key `trusted` alone.
pub fn verify_bundle(reader: impl Read, trusted: &NoteVerifier) -> Result<BundleVerification, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let malformed = |what: &str| BundleError::Malformed(what.to_owned());
    let mismatch = |what: String| BundleError::Mismatch(what);

    let mut first = entries.next().ok_or_else(|| malformed("the archive is empty"))??;
    if first.path()?.to_str() != Some(MANIFEST) {
        return Err(malformed("the first file is not manifest.json"));
    }
    let mut text = Vec::new();
    first.read_to_end(&mut text)?;
    drop(first);
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|err| BundleError::Malformed(format!("manifest.json: {err}")))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Malformed(format!("manifest.json: format {:?}, not {FORMAT}", manifest.format)));
    }
    let expected: BTreeMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = std::collections::BTreeSet::new();

    // The JSON report as bundled, when it was made, and the recomputation it starts.
    let mut bundled: Option<(serde_json::Value, String, Builder)> = None;
    let mut checkpoint_note: Option<String> = None;
    let mut witness_notes: Vec<(String, Vec<u8>)> = Vec::new();
    let mut proof: Option<Proof> = None;
    let mut leaves: Vec<Hash> = Vec::new();
    let mut first_line: Option<(u64, String)> = None;
    let mut last_line: Option<(u64, String)> = None;
    let mut others: Vec<(String, Vec<u8>)> = Vec::new();

    for entry in entries {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(file) = expected.get(path.as_str()) else {
            return Err(mismatch(format!("{path} is in the bundle but not in its manifest")));
        };
        if !seen.insert(path.clone()) {
            return Err(mismatch(format!("{path} appears twice in the bundle")));
        }
        let mut hashing = HashingReader { inner: &mut entry, hasher: Sha256::new(), bytes: 0 };
        if path == RECORDS {
            let Some((_, _, builder)) = bundled.as_mut() else {
                return Err(malformed("records.jsonl comes before report/report.json"));
            };
            let ends = read_records(&mut hashing, &manifest, builder, &mut leaves)?;
            first_line = ends.0;
            last_line = ends.1;
        } else {
            let mut bytes = Vec::new();
            hashing.read_to_end(&mut bytes)?;
            if path == REPORT_JSON {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|err| mismatch(format!("{REPORT_JSON} is not JSON: {err}")))?;
                let declared: Declared =
                    serde_json::from_value(value.clone()).map_err(|err| mismatch(format!("{REPORT_JSON}: {err}")))?;
                if declared.period != manifest.period {
                    return Err(mismatch(format!("{REPORT_JSON}: the period differs from the manifest's")));
                }
                let builder = Builder::new(declared.period, declared.policy)
                    .map_err(|err| mismatch(format!("{REPORT_JSON}: {err}")))?;
                bundled = Some((value, declared.generated_at, builder));
            } else if path == CHECKPOINT {
                checkpoint_note = Some(String::from_utf8(bytes).map_err(|_| malformed("checkpoint.note is not text"))?);
            } else if path.starts_with("witness/") {
                witness_notes.push((path.clone(), bytes));
            } else if path == PROOF {
                proof = Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|err| BundleError::Malformed(format!("proof.json: {err}")))?,
                );
            } else {
                others.push((path.clone(), bytes));
            }
        }
        let (sha, bytes) = (hex::encode(hashing.hasher.finalize()), hashing.bytes);
        if sha != file.sha256 || bytes != file.bytes {
            return Err(mismatch(format!(
                "{path} was changed: its SHA-256 is {sha}, the manifest says {}",
                file.sha256
            )));
        }
    }
    if let Some(missing) = expected.keys().find(|path| !seen.contains(**path)) {
        return Err(mismatch(format!("{missing} is in the manifest but not in the bundle")));
    }

    // The checkpoint, by the pinned key alone.
    let note = checkpoint_note.ok_or_else(|| malformed("no checkpoint.note"))?;
    let (body, signer) = evidence::note::open(&note, std::slice::from_ref(trusted)).map_err(|err| {
        mismatch(format!(
            "the checkpoint is not signed by the pinned key {}+{:08x}: {err}",
            trusted.name(),
            trusted.id()
        ))
    })?;
    let checkpoint = Checkpoint::parse_body(body).map_err(|err| mismatch(format!("checkpoint.note: {err}")))?;
    if checkpoint.size != manifest.checkpoint_size {
        return Err(mismatch(format!(
            "the checkpoint signs {} records, the manifest says {}",
            checkpoint.size, manifest.checkpoint_size
        )));
    }
    for (path, copy) in &witness_notes {
        if copy != note.as_bytes() {
            return Err(mismatch(format!("{path} differs from the checkpoint it is a witness copy of")));
        }
    }

    // The records are the slice of the signed tree the proof says.
    let proof = proof.ok_or_else(|| malformed("no proof.json"))?;
    let hashes: Vec<Hash> = proof
        .hashes
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| malformed("proof.json: a hash is not 32 bytes of hex"))?;
    if proof.size != checkpoint.size || proof.start + 1 != manifest.records.first {
        return Err(mismatch("proof.json does not describe the bundle's records and checkpoint".into()));
    }
    if merkle::range_root(checkpoint.size, proof.start, &leaves, &hashes) != Some(checkpoint.root) {
        return Err(mismatch(format!(
            "records {} to {} are not the ones the signed checkpoint of size {} covers: a record was changed, added or removed",
            manifest.records.first, manifest.records.last, checkpoint.size
        )));
    }

    // Nothing of the period is left out at either end.
    let (range, period) = (manifest.range, &manifest.period);
    let before = super::model::micros;
    match &first_line {
        Some((seq, time)) if *seq < range.first && before(time) >= before(&period.from) => {
            return Err(mismatch(format!("record {seq} is in the period but left out of its range")));
        }
        Some((seq, _)) if *seq < range.first => {}
        _ if range.first != 1 && range.first <= range.last => {
            return Err(mismatch(format!(
                "the bundle starts at record {}, without the record before it that shows where the period begins",
                range.first
            )));
        }
        _ => {}
    }
    match &last_line {
        Some((seq, time)) if *seq > range.last && before(time) < before(&period.to) => {
            return Err(mismatch(format!("record {seq} is in the period but left out of its range")));
        }
        Some((seq, _)) if *seq > range.last => {}
        _ if range.last != checkpoint.size => {
            return Err(mismatch(format!(
                "the bundle ends at record {}, without the record after it that shows where the period ends",
                range.last
            )));
        }
        _ => {}
    }

    // Every number recomputes: the report again from the records, compared field by field.
    let (bundled, generated_at, builder) = bundled.ok_or_else(|| malformed("no report/report.json"))?;
    let integrity = Integrity {
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: checkpoint.size,
        checkpoint_root: hex::encode(checkpoint.root),
        origin: checkpoint.origin.clone(),
        vkey: signer.vkey(),
        fingerprint: signer.fingerprint(),
    };
    let recomputed = builder.finish(&generated_at, integrity);
    // Through text and back, as the bundled report came: both numbers then pass the same parse.
    let value: serde_json::Value = serde_json::to_string(&recomputed)
        .and_then(|text| serde_json::from_str(&text))
        .map_err(|err| malformed(&err.to_string()))?;
    if let Some(difference) = first_difference("", &bundled, &value) {
        return Err(mismatch(format!("{REPORT_JSON}: {difference}")));
    }
    let numbers = count_numbers(&value);

    // Every other report file renders again to the same bytes.
    let rendered = super::render(&recomputed).map_err(|err| malformed(&err.to_string()))?;
    let files = seen.len();
    for (path, bytes) in rendered.iter().filter(|(path, _)| path != REPORT_JSON) {
        match others.iter().find(|(p, _)| p == path) {
            None => return Err(mismatch(format!("{path} is missing from the bundle"))),
            Some((_, theirs)) if theirs != bytes => {
                let line = first_different_line(theirs, bytes);
                return Err(mismatch(format!(
                    "{path} does not match the report its records give (first at line {line})"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(BundleVerification {
        period: manifest.period,
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: checkpoint.size,
        signed_by: format!("{}+{:08x}", signer.name(), signer.id()),
        witness_copies: witness_notes.len(),
        files,
        numbers,
    })
}

/// The signed checkpoint inside the bundle read from `reader`, unverified (the caller checks
/// its signature with the key it pins).
pub fn checkpoint_of(reader: impl Read) -> Result<String, BundleError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(CHECKPOINT) {
            let mut note = String::new();
            entry
                .read_to_string(&mut note)
                .map_err(|_| BundleError::Malformed("checkpoint.note is not text".into()))?;
            return Ok(note);
        }
    }
    Err(BundleError::Malformed("the bundle holds no checkpoint.note".into()))
}

/// The parts of the JSON report that are inputs rather than results.
#[derive(Deserialize)]
struct Declared {
    generated_at: String,
    period: Period,
    policy: Policy,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

type LineEnd = Option<(u64, String)>;

/// Reads `records.jsonl`: each record's hash recomputed, each link checked, numbers without
/// gaps; the period's records fed to `builder`, every leaf hash kept for the proof.
fn read_records(
    reader: impl Read,
    manifest: &Manifest,
    builder: &mut Builder,
    leaves: &mut Vec<Hash>,
) -> Result<(LineEnd, LineEnd), BundleError> {
    let mut lines = BufReader::with_capacity(1 << 16, reader);
    let mut text = String::new();
    let mut buffer = Vec::new();
    let mut previous: Option<(u64, Hash)> = None;
    let mut first: LineEnd = None;
    let mut last: LineEnd = None;
    let mut number = 0u64;
    loop {
        text.clear();
        if lines.read_line(&mut text)? == 0 {
            break;
        }
        number += 1;
        let line: Record = serde_json::from_str(&text)
            .map_err(|err| BundleError::Mismatch(format!("{RECORDS} line {number} is not a record: {err}")))?;
        let (seq, prev_hash, hash) = (line.seq, line.prev_hash, line.hash);
        let record = line.as_ref();
        let (computed, leaf) = record.hashes(&mut buffer);
        if computed != hash {
            return Err(BundleError::Mismatch(format!("record {seq} was changed: its contents do not give its hash")));
        }
        match previous {
            None if seq != manifest.records.first => {
                return Err(BundleError::Mismatch(format!(
                    "{RECORDS} starts at record {seq}, the manifest says {}",
                    manifest.records.first
                )));
            }
            Some((p, _)) if seq != p + 1 => {
                return Err(BundleError::Mismatch(format!("record {} is missing: {p} is followed by {seq}", p + 1)));
            }
            Some((_, p)) if p != prev_hash => {
                return Err(BundleError::Mismatch(format!(
                    "record {seq} does not link to record {}: the chain is broken",
                    seq - 1
                )));
            }
            _ => {}
        }
        if (manifest.range.first..=manifest.range.last).contains(&seq) {
            builder.feed(&record);
        }
        leaves.push(leaf);
        if first.is_none() {
            first = Some((seq, line.time.clone()));
        }
        last = Some((seq, line.time));
        previous = Some((seq, hash));
    }
    if previous.map(|(seq, _)| seq) != Some(manifest.records.last) && manifest.records.first <= manifest.records.last {
        return Err(BundleError::Mismatch(format!(
            "{RECORDS} ends before record {}, which the manifest names",
            manifest.records.last
        )));
    }
    Ok((first, last))
}

/// The first place two JSON documents differ, as a JSON pointer and both values.
fn first_difference(at: &str, theirs: &serde_json::Value, ours: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (theirs, ours) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{at}/{key}");
                match b.get(key) {
                    Some(other) => {
                        if let Some(found) = first_difference(&here, value, other) {
                            return Some(found);
                        }
                    }
                    None => return Some(format!("{here} is not part of the report")),
                }
            }
            b.keys().find(|key| !a.contains_key(*key)).map(|key| format!("{at}/{key} is missing"))
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(found) = first_difference(&format!("{at}/{i}"), x, y) {
                    return Some(found);
                }
            }
            (a.len() != b.len()).then(|| format!("{at} has {} entries; the records give {}", a.len(), b.len()))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{at} is {a}; the records give {b}")),
    }
}

fn count_numbers(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Number(_) => 1,
        serde_json::Value::Array(items) => items.iter().map(count_numbers).sum(),
        serde_json::Value::Object(map) => map.values().map(count_numbers).sum(),
        _ => 0,
    }
}

fn first_different_line(a: &[u8], b: &[u8]) -> usize {
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    1 + a[..at].iter().filter(|&&c| c == b'\n').count()
}
