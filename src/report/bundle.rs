//! The evidence bundle: one tar archive holding the period's records, the newest signed
//! checkpoint and its witness copies, a compact range proof tying the records to that
//! checkpoint, and the report's files, each with its SHA-256 in `manifest.json`, whose own
//! SHA-256 the ledger's key signs in `manifest.note`.
//!
//! [`verify_bundle`] needs nothing but the archive and the pinned verifier key: no database, no
//! configuration, no network. It reads the archive once, in order (`manifest.json` and its
//! signature, the JSON report, the checkpoint and its copies, the proof, the records, the other
//! report files), so a bundle of a million records is checked in one pass and bounded memory.
//! It accepts only the exact members an export writes: regular files under their own relative
//! names, each once, each of the size the signed manifest says, compared before it is read.
//!
//! The records are a contiguous slice of the ledger: the range (from the record after the last
//! appended before the period's start to the last appended before its end) and, as fences, the
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
pub const FORMAT: &str = "vigil.bundle.v2";
/// Records outside the period held back while the range may go on (see [`Scan`]).
const MAX_PENDING: usize = 10_000;

const MANIFEST: &str = "manifest.json";
const MANIFEST_NOTE: &str = "manifest.note";
const CHECKPOINT: &str = "checkpoint.note";
const PROOF: &str = "proof.json";
const RECORDS: &str = "records.jsonl";
const REPORT_JSON: &str = "report/report.json";
const WITNESS: &str = "witness/checkpoint.note";

/// What `manifest.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    period: Period,
    /// The records the report is computed from: the period's, and any between them dated
    /// outside it by a skewed clock.
    range: SeqRange,
    /// The records in the bundle: exactly the range and a fence on each side where the log
    /// has one.
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
    /// A record the bundle holds is dated after the export's own time.
    #[error(
        "record {seq} is dated {time}, after this export's time {generated_at}: the clock of the process that wrote it is ahead of this one; correct it, and export again once this clock has passed that time"
    )]
    Skewed {
        /// The record.
        seq: u64,
        /// Its time.
        time: String,
        /// The export's time.
        generated_at: String,
    },
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

/// What the scan over the ledger keeps: the leaf hashes (for the proof), the range's records
/// fed to the report and written to `records.jsonl`, and the fences.
struct Scan {
    /// The period, in microseconds since the epoch.
    from: i64,
    to: i64,
    builder: Builder,
    leaves: Vec<Hash>,
    out: BufWriter<std::fs::File>,
    error: Option<std::io::Error>,
    /// The newest record before the period, while the period's first is not found: the fence
    /// before the range.
    before: Option<Record>,
    /// The range's first and the period's last record so far.
    first: Option<u64>,
    last: u64,
    /// Records outside the period held back: after the fence while the period's first is not
    /// found, or after the period's newest. They join the range when a record of the period
    /// follows (clocks of two writers may disagree by a little); the first of them is the fence
    /// after it. Past `MAX_PENDING` the period is taken to have ended.
    pending: Vec<Record>,
    closed: bool,
    /// The bundle's first and last record.
    written: Option<SeqRange>,
    /// The bundle's newest record by time: the report cannot be dated before it.
    newest: Option<(u64, String, i64)>,
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
        let at = super::model::micros(&line.time).unwrap_or(i64::MAX);
        if self.newest.as_ref().is_none_or(|(_, _, newest)| at > *newest) {
            self.newest = Some((line.seq, line.time.clone(), at));
        }
    }

    fn visit(&mut self, record: &RecordRef<'_>, leaf: Hash) {
        self.leaves.push(leaf);
        if self.closed {
            return;
        }
        let time = super::model::micros(record.time);
        let in_period = time.is_some_and(|t| t >= self.from && t < self.to);
        match (self.first, in_period) {
            (None, false) if time.is_none_or(|t| t < self.from) => {
                self.before = Some(record.to_record());
                self.pending.clear();
            }
            (None, true) => {
                // Every record from the fence on: one dated after the period that comes before
                // the period's first (a skewed clock) is part of the range, not skipped.
                if let Some(before) = self.before.take() {
                    self.write(&before);
                }
                self.first = Some(self.pending.first().map_or(record.seq, |r| r.seq));
                self.include_pending();
                self.include(record);
            }
            (Some(_), true) => {
                self.include_pending();
                self.include(record);
            }
            (_, false) => {
                self.pending.push(record.to_record());
                if self.pending.len() > MAX_PENDING {
                    self.closed = true;
                }
            }
        }
    }

    fn include_pending(&mut self) {
        for line in std::mem::take(&mut self.pending) {
            self.builder.feed(&line.as_ref());
            self.write(&line);
        }
    }

    fn include(&mut self, record: &RecordRef<'_>) {
        self.builder.feed(record);
        self.last = record.seq;
        self.write(&record.to_record());
    }

    /// Writes the closing fence, and returns the range: the records between the fences.
    fn finish(&mut self) -> SeqRange {
        let range = match self.first {
            Some(first) => SeqRange { first, last: self.last },
            None => {
                let before = self.before.take();
                let next = before.as_ref().map_or(1, |b| b.seq + 1);
                if let Some(before) = &before {
                    self.write(before);
                }
                SeqRange { first: next, last: next - 1 }
            }
        };
        // The record right after the range, if any: the first held back.
        if let Some(after) = self.pending.first().cloned() {
            self.write(&after);
        }
        range
    }
}

/// Exports the report of `period` into `out`: the report's files of the formats in `loose`, then
/// `bundle.tar`, which holds them all.
///
/// A checkpoint is signed first, so the bundle's checkpoint covers every record there is. The
/// ledger is read once, streaming; memory grows with the number of records (32 bytes each, for
/// the proof) and with the report's own size, not with the records' contents.
///
/// `out` is created 0700 (an existing folder must be private already), and every file is
/// written 0600 to a new temporary name beside its own and renamed over it, so that nothing
/// planted at a fixed name (a symbolic link) is written through.
pub async fn export(
    ledger: &Ledger,
    witness: Option<&dyn ObjectStore>,
    policy: Policy,
    period: Period,
    generated_at: String,
    out: &Path,
    loose: &[Format],
) -> Result<Exported, ExportError> {
    private_folder(out, true)?;
    if loose.contains(&Format::Csv) {
        private_folder(&out.join("csv"), false)?;
    }
    let checkpoint = ledger.checkpoint().await?;
    let verifier = ledger.verifier();
    // The checkpoint was just signed by this key: its body parses.
    let (body, _) = evidence::note::open(&checkpoint.note, std::slice::from_ref(&verifier))
        .map_err(|err| EvidenceError::Refused { kind: "checkpoint".into(), why: err.to_string() })?;
    let signed = Checkpoint::parse_body(body)
        .map_err(|err| EvidenceError::Refused { kind: "checkpoint".into(), why: err.to_string() })?;

    // Staged beside the bundle, and removed once it is packed.
    let records_path = out.join(".records.jsonl.partial");
    let Scanned { range, written, proof, builder, newest } =
        scan(ledger, &signed, policy, &period, &records_path).await?;
    // `verify_bundle` refuses a report dated before a record it holds.
    if let Some((seq, time, at)) = newest
        && super::model::micros(&generated_at).is_none_or(|made| at > made)
    {
        let _ = std::fs::remove_file(&records_path);
        return Err(ExportError::Skewed { seq, time, generated_at });
    }
    let integrity = Integrity {
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: signed.size,
        checkpoint_root: hex::encode(signed.root),
        origin: signed.origin.clone(),
        vkey: verifier.vkey(),
        fingerprint: verifier.fingerprint(),
    };
    let report = builder.finish(&generated_at, integrity);

    let (contents, others) = contents(&report, &checkpoint, witness, &proof).await?;
    let witness_copies = contents.iter().filter(|(path, _)| path == WITNESS).count();
    let entry = |(path, bytes): &(String, Vec<u8>)| FileEntry {
        path: path.clone(),
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    };
    let mut entries: Vec<FileEntry> = contents.iter().map(entry).collect();
    let records_sha = sha256_file(&records_path).map_err(write_err(&records_path))?;
    entries.push(FileEntry { path: RECORDS.into(), sha256: records_sha.0, bytes: records_sha.1 });
    entries.extend(others.iter().map(entry));
    let mut files = write_loose(out, loose, contents.iter().chain(&others))?;
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
    let manifest_sha256: Hash = Sha256::digest(&manifest_json).into();
    let manifest_note = ledger.sign_manifest(&manifest_sha256);

    let bundle = out.join("bundle.tar");
    let members =
        Members { manifest: &manifest_json, note: manifest_note.as_bytes(), contents: &contents, others: &others };
    pack(&bundle, &members, &records_path, records_sha.1)?;
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
                "manifest_sha256": hex::encode(manifest_sha256),
            }),
        })
        .await?;
    ledger.checkpoint().await?;
    Ok(Exported { report, files, bundle, witness_copies })
}

/// A bundle's members as (path, bytes): those before the records (the JSON report, the
/// checkpoint and its witness copy, the proof), and the other report files, after them.
type Files = Vec<(String, Vec<u8>)>;

/// The bundle's members but the manifest, its signature and the records.
async fn contents(
    report: &Report,
    checkpoint: &evidence::StoredCheckpoint,
    witness: Option<&dyn ObjectStore>,
    proof: &Proof,
) -> Result<(Files, Files), ExportError> {
    let rendered = super::render(report)?;
    let (mut contents, others): (Files, Files) = rendered.into_iter().partition(|(path, _)| path == REPORT_JSON);
    contents.push((CHECKPOINT.into(), checkpoint.note.clone().into_bytes()));
    if let Some(witness) = witness {
        let copy = evidence::witness::copy_of(witness, checkpoint)
            .await
            .map_err(|err| ExportError::Witness(err.to_string()))?;
        contents.extend(copy.map(|copy| (WITNESS.to_owned(), copy)));
    }
    let mut proof_json = serde_json::to_vec_pretty(proof).unwrap_or_default();
    proof_json.push(b'\n');
    contents.push((PROOF.into(), proof_json));
    Ok((contents, others))
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_owned();
    move |source| ExportError::Write { path, source }
}

/// Reads the ledger once up to the signed checkpoint: the range's records and its fences into
/// `records_path`, fed to the report's builder; returns the range, the bundle's records and
/// their proof.
async fn scan(
    ledger: &Ledger,
    signed: &Checkpoint,
    policy: Policy,
    period: &Period,
    records_path: &Path,
) -> Result<Scanned, ExportError> {
    let file = create_private_file(records_path)?;
    let scan = Scan {
        from: super::model::micros(&period.from).ok_or(ModelError::BadPeriod("from"))?,
        to: super::model::micros(&period.to).ok_or(ModelError::BadPeriod("to"))?,
        builder: Builder::new(period.clone(), policy)?,
        leaves: Vec::new(),
        out: BufWriter::new(file),
        error: None,
        before: None,
        first: None,
        last: 0,
        pending: Vec::new(),
        closed: false,
        written: None,
        newest: None,
    };
    let mut scan =
        evidence::for_each_record(ledger.db(), signed.size, scan, |scan, record, leaf| scan.visit(record, leaf))
            .await?;
    let range = scan.finish();
    if let Some(err) = scan.error.take() {
        return Err(ExportError::Write { path: records_path.to_owned(), source: err });
    }
    scan.out.flush().map_err(write_err(records_path))?;
    // Records checkpointed long ago are read again here: a bundle of records the checkpoint
    // does not cover would only fail in the auditor's hands.
    if merkle::root(&scan.leaves) != signed.root {
        return Err(ExportError::Tampered);
    }
    // The ledger always holds its genesis record, so the bundle holds at least one.
    let written = scan.written.unwrap_or(SeqRange { first: 1, last: 0 });
    let hashes = if written.first <= written.last {
        let (start, end) = (to_index(written.first - 1), to_index(written.last));
        merkle::range_proof(&scan.leaves, start, end)
    } else {
        Vec::new()
    };
    let proof = Proof {
        size: signed.size,
        start: written.first.saturating_sub(1),
        hashes: hashes.iter().map(hex::encode).collect(),
    };
    Ok(Scanned { range, written, proof, builder: scan.builder, newest: scan.newest })
}

/// What the scan over the ledger gives the export.
struct Scanned {
    range: SeqRange,
    written: SeqRange,
    proof: Proof,
    builder: Builder,
    newest: Option<(u64, String, i64)>,
}

/// Makes `path` a folder only its owner can enter: created 0700 (with its parents when
/// `parents`), or an existing folder refused unless it is private already, since its files
/// would be written where others can replace them.
fn private_folder(path: &Path, parents: bool) -> Result<(), ExportError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let refuse = |why: String| ExportError::Write { path: path.to_owned(), source: std::io::Error::other(why) };
    match std::fs::DirBuilder::new().recursive(parents).mode(0o700).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(write_err(path)(err)),
    }
    // Inside the output folder, a fixed name is never followed: a link there was planted.
    let metadata = if parents { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) };
    let metadata = metadata.map_err(write_err(path))?;
    if !metadata.is_dir() {
        return Err(refuse("it is not a folder (a symbolic link or a file is in its place); remove it".into()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "group or others may enter it (mode {mode:03o}); `chmod 700` it or export into a new folder"
        )));
    }
    Ok(())
}

/// A new 0600 file at `path`, after removing what an interrupted export left there
/// (`secret::create_private_anew`).
fn create_private_file(path: &Path) -> Result<std::fs::File, ExportError> {
    crate::secret::create_private_anew(path).map_err(write_err(path))
}

/// Writes the report's files of the formats asked for loose in `out`, for reading
/// (`report.html`, `csv/`, ...), and removes those of an earlier export in other formats.
fn write_loose<'a>(
    out: &Path,
    loose: &[Format],
    files: impl Iterator<Item = &'a (String, Vec<u8>)>,
) -> Result<Vec<PathBuf>, ExportError> {
    let mut written = Vec::new();
    // An earlier export's CSV files are removed only from a real folder, never through a link.
    let csv_folder = std::fs::symlink_metadata(out.join("csv")).is_ok_and(|m| m.is_dir());
    for (path, bytes) in files {
        let (Some(name), Some(format)) = (path.strip_prefix("report/"), Format::of(path)) else { continue };
        let target = out.join(name);
        if loose.contains(&format) {
            crate::secret::replace_private(&target, bytes).map_err(write_err(&target))?;
            written.push(target);
        } else if format == Format::Csv && !csv_folder {
            continue;
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
    Ok(written)
}

/// The members of a bundle, in the order `verify_bundle` reads them.
struct Members<'a> {
    manifest: &'a [u8],
    note: &'a [u8],
    /// The JSON report, the checkpoint and its witness copy, the proof.
    contents: &'a [(String, Vec<u8>)],
    /// The other report files, after the records.
    others: &'a [(String, Vec<u8>)],
}

/// Packs the bundle at `bundle` (through a temporary name) and removes the staged records.
fn pack(bundle: &Path, members: &Members<'_>, records_path: &Path, records_bytes: u64) -> Result<(), ExportError> {
    let partial = crate::secret::partial_path(bundle);
    let file = create_private_file(&partial)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let fail = write_err(&partial);
    let result = (|| {
        tar.append_data(&mut entry_header(members.manifest.len() as u64), MANIFEST, members.manifest)?;
        tar.append_data(&mut entry_header(members.note.len() as u64), MANIFEST_NOTE, members.note)?;
        for (path, bytes) in members.contents {
            tar.append_data(&mut entry_header(bytes.len() as u64), path, bytes.as_slice())?;
        }
        let records = std::fs::File::open(records_path)?;
        tar.append_data(&mut entry_header(records_bytes), RECORDS, records)?;
        for (path, bytes) in members.others {
            tar.append_data(&mut entry_header(bytes.len() as u64), path, bytes.as_slice())?;
        }
        tar.into_inner().and_then(|mut w| w.flush())
    })();
    result.map_err(fail)?;
    std::fs::rename(&partial, bundle).map_err(write_err(bundle))?;
    std::fs::remove_file(records_path).map_err(write_err(records_path))
}

/// A tar header for a regular file of `size` bytes: mode 0644 and time 0, so the same report
/// always packs to the same bytes.
fn entry_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
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
    /// The range's first record.
    pub first_seq: u64,
    /// The range's last record.
    pub last_seq: u64,
    /// The checkpoint's tree size.
    pub checkpoint_size: u64,
    /// The key that signed it.
    pub signed_by: String,
    /// When the report says it was made (no earlier than its newest record).
    pub generated_at: String,
    /// The SHA-256 of the declared policy in canonical JSON ([`Policy::digest`]): an input the
    /// report is computed from, not checked by it.
    pub policy_sha256: String,
    /// Witness copies found identical to the checkpoint.
    pub witness_copies: usize,
    /// Files whose hash matched.
    pub files: usize,
    /// Numbers recomputed from the records (every number in the JSON report).
    pub numbers: usize,
}

/// The longest `manifest.json`, `manifest.note`, checkpoint, witness copy or `proof.json` read:
/// each is a few kilobytes in a real bundle.
const MAX_SMALL_BYTES: u64 = 1 << 20;
/// The longest other report file (JSON, HTML, CSV, OSCAL), each read whole.
const MAX_REPORT_BYTES: u64 = 256 << 20;
/// The longest line of `records.jsonl`: a record's details are at most 64 KiB of canonical
/// JSON, escaped once more as a JSON string, beside a few short fields.
const MAX_LINE_BYTES: usize = 1 << 20;

/// The one archive entry a member name may be, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    ReportJson,
    Checkpoint,
    Witness,
    Proof,
    Records,
    /// `report/report.html`, `report/oscal.json`, `report/csv/NAME.csv`.
    ReportFile,
}

impl Member {
    /// What `path` is in a bundle, if anything: the exact set of names an export writes.
    fn of(path: &str) -> Option<Self> {
        match path {
            REPORT_JSON => Some(Self::ReportJson),
            CHECKPOINT => Some(Self::Checkpoint),
            WITNESS => Some(Self::Witness),
            PROOF => Some(Self::Proof),
            RECORDS => Some(Self::Records),
            "report/report.html" | "report/oscal.json" => Some(Self::ReportFile),
            _ => path
                .strip_prefix("report/csv/")
                .and_then(|name| name.strip_suffix(".csv"))
                .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .map(|_| Self::ReportFile),
        }
    }

    /// The most bytes this member may hold (`records.jsonl` is read a line at a time).
    fn cap(self) -> u64 {
        match self {
            Self::Checkpoint | Self::Witness | Self::Proof => MAX_SMALL_BYTES,
            Self::ReportJson | Self::ReportFile => MAX_REPORT_BYTES,
            Self::Records => u64::MAX,
        }
    }
}

/// What the members after the manifest give, read once in order.
#[derive(Default)]
struct Unpacked {
    /// The JSON report as bundled, its declared inputs, and the recomputation they start.
    report: Option<(serde_json::Value, Declared, Builder)>,
    checkpoint: Option<String>,
    witness: Vec<(String, Vec<u8>)>,
    proof: Option<Proof>,
    leaves: Vec<Hash>,
    ends: Ends,
    others: Vec<(String, Vec<u8>)>,
}

/// Verifies the bundle read from `reader` with the pinned key `trusted` alone.
///
/// Every check comes before anything it protects is believed: the manifest's signature before
/// its list, each member's name, type and size before a byte of it is read, and every read
/// bounded, so a hostile archive costs at most its own size in memory and never more.
pub fn verify_bundle(reader: impl Read, trusted: &NoteVerifier) -> Result<BundleVerification, BundleError> {
    let mut archive = tar::Archive::new(reader);
    // Raw: each header is an entry of its own, so no PAX or GNU long-name header renames the
    // member after it, and no sparse map is expanded; all are refused as not regular files.
    let mut entries = archive.entries()?.raw(true);
    let manifest_bytes = read_first(&mut entries, MANIFEST)?;
    let manifest = parse_manifest(&manifest_bytes)?;
    let note = read_first(&mut entries, MANIFEST_NOTE)?;
    let note = String::from_utf8(note).map_err(|_| malformed("manifest.note is not text"))?;
    let manifest_sha256: Hash = Sha256::digest(&manifest_bytes).into();
    let (body, _) = evidence::note::open(&note, std::slice::from_ref(trusted))
        .map_err(|err| mismatch(format!("manifest.note is not signed by the pinned key {}: {err}", key_id(trusted))))?;
    if body != evidence::note::manifest_body(trusted.name(), &manifest_sha256) {
        return Err(mismatch(
            "manifest.json was changed: manifest.note signs another manifest (its SHA-256 differs)".into(),
        ));
    }
    let read = read_members(entries, &manifest)?;
    check_contents(manifest, read, trusted)
}

/// The checks once every member is read: the checkpoint, the proof, the range and its fences,
/// the export time, and the report recomputed and rendered again.
fn check_contents(
    manifest: Manifest,
    read: Unpacked,
    trusted: &NoteVerifier,
) -> Result<BundleVerification, BundleError> {
    let files = manifest.files.len();
    let note = read.checkpoint.ok_or_else(|| malformed("no checkpoint.note"))?;
    let (body, signer) = evidence::note::open(&note, std::slice::from_ref(trusted)).map_err(|err| {
        mismatch(format!("the checkpoint is not signed by the pinned key {}: {err}", key_id(trusted)))
    })?;
    let checkpoint = Checkpoint::parse_body(body).map_err(|err| mismatch(format!("checkpoint.note: {err}")))?;
    if checkpoint.size != manifest.checkpoint_size {
        return Err(mismatch(format!(
            "the checkpoint signs {} records, the manifest says {}",
            checkpoint.size, manifest.checkpoint_size
        )));
    }
    for (path, copy) in &read.witness {
        if copy != note.as_bytes() {
            return Err(mismatch(format!("{path} differs from the checkpoint it is a witness copy of")));
        }
    }
    check_proof(read.proof.as_ref(), &read.leaves, &checkpoint, &manifest)?;
    check_range(&manifest, &read.ends, checkpoint.size)?;

    // Every number recomputes: the report again from the records, compared field by field.
    let (bundled, declared, builder) = read.report.ok_or_else(|| malformed("no report/report.json"))?;
    check_generated_at(&declared.generated_at, &read.ends)?;
    let (range, period) = (manifest.range, manifest.period);
    let integrity = Integrity {
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: checkpoint.size,
        checkpoint_root: hex::encode(checkpoint.root),
        origin: checkpoint.origin.clone(),
        vkey: signer.vkey(),
        fingerprint: signer.fingerprint(),
    };
    let recomputed = builder.finish(&declared.generated_at, integrity);
    // Through text and back, as the bundled report came: both numbers then pass the same parse.
    let value: serde_json::Value = serde_json::to_string(&recomputed)
        .and_then(|text| serde_json::from_str(&text))
        .map_err(|err| malformed(&err.to_string()))?;
    if let Some(difference) = first_difference("", &bundled, &value) {
        return Err(mismatch(format!("{REPORT_JSON}: {difference}")));
    }
    let numbers = count_numbers(&value);
    check_rendered(&recomputed, &read.others)?;
    Ok(BundleVerification {
        period,
        first_seq: range.first,
        last_seq: range.last,
        checkpoint_size: checkpoint.size,
        signed_by: key_id(signer),
        generated_at: declared.generated_at,
        policy_sha256: declared.policy.digest(),
        witness_copies: read.witness.len(),
        files,
        numbers,
    })
}

fn key_id(key: &NoteVerifier) -> String {
    format!("{}+{:08x}", key.name(), key.id())
}

fn malformed(what: &str) -> BundleError {
    BundleError::Malformed(what.to_owned())
}

fn mismatch(what: String) -> BundleError {
    BundleError::Mismatch(what)
}

/// The next archive entry, refused unless it is a regular file with a normalised relative name.
fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
) -> Result<Option<(String, tar::Entry<'a, R>)>, BundleError> {
    let Some(entry) = entries.next() else { return Ok(None) };
    let entry = entry?;
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if let Some(why) = unsafe_name(&name) {
        return Err(mismatch(format!(
            "the bundle holds a member named {name:?}, {why}; a bundle holds only its own relative names"
        )));
    }
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        let what = match kind {
            tar::EntryType::Symlink => "a symbolic link",
            tar::EntryType::Link => "a hard link",
            tar::EntryType::GNUSparse => "a sparse file",
            tar::EntryType::Directory => "a directory",
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => "a PAX extended header",
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => "a GNU long-name header",
            _ => "not a regular file",
        };
        return Err(mismatch(format!("{name} is {what}; a bundle holds regular files only")));
    }
    Ok(Some((name, entry)))
}

/// Why `name` is not a plain relative path, if it is not.
fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        return Some("an absolute path");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.contains(&"..") {
        return Some("which climbs out of the folder it is unpacked into");
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") || name.contains(['\\', '\0']) {
        return Some("which is not a normalised relative path");
    }
    None
}

/// Reads the entry that must come next, `name` (the manifest and its signature), whole.
fn read_first<R: Read>(entries: &mut tar::Entries<'_, R>, name: &str) -> Result<Vec<u8>, BundleError> {
    let Some((path, entry)) = next_entry(entries)? else {
        return Err(malformed(&format!("the archive ends before {name}")));
    };
    if path != name {
        return Err(malformed(&format!("{path} comes where {name} must be")));
    }
    let size = entry.header().entry_size()?;
    if size > MAX_SMALL_BYTES {
        return Err(mismatch(format!("{name} is {size} bytes; a bundle's is at most {MAX_SMALL_BYTES}")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The manifest, refused unless it names each member a bundle holds once, by its exact name.
fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let format: FormatOnly =
        serde_json::from_slice(bytes).map_err(|err| BundleError::Malformed(format!("manifest.json: {err}")))?;
    if format.format == "vigil.bundle.v1" {
        return Err(BundleError::Malformed(
            "manifest.json: format vigil.bundle.v1, whose manifest is unsigned; export the report again with this vigil".into(),
        ));
    }
    if format.format != FORMAT {
        return Err(BundleError::Malformed(format!("manifest.json: format {:?}, not {FORMAT}", format.format)));
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|err| BundleError::Malformed(format!("manifest.json: {err}")))?;
    let mut names = std::collections::BTreeSet::new();
    for file in &manifest.files {
        if Member::of(&file.path).is_none() {
            return Err(mismatch(format!("manifest.json names {:?}, which is not a member a bundle holds", file.path)));
        }
        if !names.insert(file.path.as_str()) {
            return Err(mismatch(format!("manifest.json names {} twice", file.path)));
        }
    }
    for required in [REPORT_JSON, CHECKPOINT, PROOF, RECORDS] {
        if !names.contains(required) {
            return Err(mismatch(format!("manifest.json does not name {required}")));
        }
    }
    Ok(manifest)
}

/// Reads every member after the manifest's signature, in order, each checked against the
/// manifest before a byte of it is read and hashed as it is read.
fn read_members<R: Read>(mut entries: tar::Entries<'_, R>, manifest: &Manifest) -> Result<Unpacked, BundleError> {
    let expected: BTreeMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut read = Unpacked::default();
    while let Some((path, mut entry)) = next_entry(&mut entries)? {
        let (Some(file), Some(member)) = (expected.get(path.as_str()), Member::of(&path)) else {
            return Err(mismatch(format!("{path} is in the bundle but not in its manifest")));
        };
        if !seen.insert(path.clone()) {
            return Err(mismatch(format!("{path} appears twice in the bundle")));
        }
        let size = entry.header().entry_size()?;
        if size != file.bytes {
            return Err(mismatch(format!("{path} is {size} bytes in the archive; the manifest says {}", file.bytes)));
        }
        if size > member.cap() {
            return Err(mismatch(format!("{path} is {size} bytes; a bundle's is at most {}", member.cap())));
        }
        // Never more than the header says, whatever the reader below would give.
        let mut hashing = HashingReader { inner: (&mut entry).take(size + 1), hasher: Sha256::new(), bytes: 0 };
        if member == Member::Records {
            let Some((_, _, builder)) = read.report.as_mut() else {
                return Err(malformed("records.jsonl comes before report/report.json"));
            };
            read.ends = read_records(&mut hashing, manifest, builder, &mut read.leaves)?;
        } else {
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            hashing.read_to_end(&mut bytes)?;
            keep(&mut read, member, &path, bytes, manifest)?;
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
    Ok(read)
}

/// Keeps a member read whole where the later checks find it.
fn keep(
    read: &mut Unpacked,
    member: Member,
    path: &str,
    bytes: Vec<u8>,
    manifest: &Manifest,
) -> Result<(), BundleError> {
    match member {
        Member::ReportJson => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|err| mismatch(format!("{REPORT_JSON} is not JSON: {err}")))?;
            let declared: Declared =
                serde_json::from_value(value.clone()).map_err(|err| mismatch(format!("{REPORT_JSON}: {err}")))?;
            if declared.period != manifest.period {
                return Err(mismatch(format!("{REPORT_JSON}: the period differs from the manifest's")));
            }
            let builder = Builder::new(declared.period.clone(), declared.policy.clone())
                .map_err(|err| mismatch(format!("{REPORT_JSON}: {err}")))?;
            read.report = Some((value, declared, builder));
        }
        Member::Checkpoint => {
            read.checkpoint = Some(String::from_utf8(bytes).map_err(|_| malformed("checkpoint.note is not text"))?);
        }
        Member::Witness => read.witness.push((path.to_owned(), bytes)),
        Member::Proof => {
            read.proof = Some(
                serde_json::from_slice(&bytes).map_err(|err| BundleError::Malformed(format!("proof.json: {err}")))?,
            );
        }
        Member::ReportFile => read.others.push((path.to_owned(), bytes)),
        Member::Records => {}
    }
    Ok(())
}

/// The records are the slice of the signed tree the proof says.
fn check_proof(
    proof: Option<&Proof>,
    leaves: &[Hash],
    checkpoint: &Checkpoint,
    manifest: &Manifest,
) -> Result<(), BundleError> {
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
    if merkle::range_root(checkpoint.size, proof.start, leaves, &hashes) != Some(checkpoint.root) {
        return Err(mismatch(format!(
            "records {} to {} are not the ones the signed checkpoint of size {} covers: a record was changed, added or removed",
            manifest.records.first, manifest.records.last, checkpoint.size
        )));
    }
    Ok(())
}

/// The bundle's records are exactly the range and a fence on each side where the signed log
/// has one, and each fence lies outside the period: nothing of the period is left out at either
/// end.
fn check_range(manifest: &Manifest, ends: &Ends, size: u64) -> Result<(), BundleError> {
    let (range, records, period) = (manifest.range, manifest.records, &manifest.period);
    if range.first == 0 || range.first > range.last.saturating_add(1) || range.last > size {
        return Err(mismatch(format!(
            "the manifest's range {} to {} is not a range of the signed log of {size} records",
            range.first, range.last
        )));
    }
    let fenced = SeqRange {
        first: if range.first > 1 { range.first - 1 } else { 1 },
        last: if range.last < size { range.last + 1 } else { range.last },
    };
    if records != fenced {
        return Err(mismatch(format!(
            "the bundle holds records {} to {}, but its range {} to {} needs exactly records {} to {}: the range was moved away from its fences",
            records.first, records.last, range.first, range.last, fenced.first, fenced.last
        )));
    }
    let at = super::model::micros;
    if range.first > 1
        && let Some((seq, time)) = &ends.first
        && at(time).is_none_or(|t| t >= at(&period.from).unwrap_or(i64::MIN))
    {
        return Err(mismatch(format!(
            "record {seq}, the fence before the range, is dated {time}, in the period: it is left out of the range"
        )));
    }
    if range.last < size
        && let Some((seq, time)) = &ends.last
        && at(time).is_none_or(|t| t < at(&period.to).unwrap_or(i64::MAX))
    {
        return Err(mismatch(format!(
            "record {seq}, the fence after the range, is dated {time}, in the period: it is left out of the range"
        )));
    }
    Ok(())
}

/// The report cannot have been made before a record it holds.
fn check_generated_at(generated_at: &str, ends: &Ends) -> Result<(), BundleError> {
    let Some(made) = super::model::micros(generated_at) else {
        return Err(mismatch(format!("{REPORT_JSON}: generated_at {generated_at:?} is not an RFC 3339 time")));
    };
    if let Some((seq, time, at)) = &ends.newest
        && *at > made
    {
        return Err(mismatch(format!(
            "{REPORT_JSON} says it was generated at {generated_at}, before record {seq} (dated {time}) that the bundle holds"
        )));
    }
    Ok(())
}

/// Every other report file renders again from the recomputed report to the same bytes, and the
/// bundle holds no file the report does not have.
fn check_rendered(recomputed: &Report, others: &[(String, Vec<u8>)]) -> Result<(), BundleError> {
    let rendered = super::render(recomputed).map_err(|err| malformed(&err.to_string()))?;
    let rendered: Vec<_> = rendered.into_iter().filter(|(path, _)| path != REPORT_JSON).collect();
    for (path, bytes) in &rendered {
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
    if let Some((extra, _)) = others.iter().find(|(path, _)| !rendered.iter().any(|(p, _)| p == path)) {
        return Err(mismatch(format!("{extra} is in the bundle but is not a file of the report")));
    }
    Ok(())
}

/// The signed checkpoint inside the bundle read from `reader`, unverified (the caller checks
/// its signature with the key it pins). Read with the verifier's limits: regular members only,
/// and a checkpoint of at most 1 MiB.
pub fn checkpoint_of(reader: impl Read) -> Result<String, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?.raw(true);
    while let Some((path, entry)) = next_entry(&mut entries)? {
        if path == CHECKPOINT {
            let size = entry.header().entry_size()?;
            if size > MAX_SMALL_BYTES {
                return Err(mismatch(format!("{CHECKPOINT} is {size} bytes; a bundle's is at most {MAX_SMALL_BYTES}")));
            }
            let mut note = String::new();
            entry.take(size).read_to_string(&mut note).map_err(|_| malformed("checkpoint.note is not text"))?;
            return Ok(note);
        }
    }
    Err(BundleError::Malformed("the bundle holds no checkpoint.note".into()))
}

/// The manifest's format alone, read before the rest so that an older format is named.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
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

/// A record's number and time.
type LineEnd = Option<(u64, String)>;

/// The bundle's first and last record, and its newest by time (with its time in microseconds).
#[derive(Default)]
struct Ends {
    first: LineEnd,
    last: LineEnd,
    newest: Option<(u64, String, i64)>,
}

/// Reads `records.jsonl`, a bounded line at a time: each record's hash recomputed, each link
/// checked, numbers without gaps; the range's records fed to `builder`, every leaf hash kept for
/// the proof.
fn read_records(
    reader: impl Read,
    manifest: &Manifest,
    builder: &mut Builder,
    leaves: &mut Vec<Hash>,
) -> Result<Ends, BundleError> {
    let mut lines = BufReader::with_capacity(1 << 16, reader);
    let mut text = Vec::new();
    let mut buffer = Vec::new();
    let mut previous: Option<(u64, Hash)> = None;
    let mut ends = Ends::default();
    let mut number = 0u64;
    loop {
        text.clear();
        if (&mut lines).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut text)? == 0 {
            break;
        }
        number += 1;
        if text.len() > MAX_LINE_BYTES {
            return Err(mismatch(format!("{RECORDS} line {number} is longer than {MAX_LINE_BYTES} bytes")));
        }
        let line: Record = serde_json::from_slice(&text)
            .map_err(|err| mismatch(format!("{RECORDS} line {number} is not a record: {err}")))?;
        check_link(&line, previous, manifest, &mut buffer)?;
        let record = line.as_ref();
        if (manifest.range.first..=manifest.range.last).contains(&record.seq) {
            builder.feed(&record);
        }
        leaves.push(record.hashes(&mut buffer).1);
        let at = super::model::micros(&line.time).unwrap_or(i64::MAX);
        if ends.newest.as_ref().is_none_or(|(_, _, newest)| at > *newest) {
            ends.newest = Some((line.seq, line.time.clone(), at));
        }
        if ends.first.is_none() {
            ends.first = Some((line.seq, line.time.clone()));
        }
        previous = Some((line.seq, line.hash));
        ends.last = Some((line.seq, line.time));
    }
    if previous.map(|(seq, _)| seq) != Some(manifest.records.last) && manifest.records.first <= manifest.records.last {
        return Err(mismatch(format!(
            "{RECORDS} ends before record {}, which the manifest names",
            manifest.records.last
        )));
    }
    Ok(ends)
}

/// One record's hash recomputed and its place after `previous` checked.
fn check_link(
    line: &Record,
    previous: Option<(u64, Hash)>,
    manifest: &Manifest,
    buffer: &mut Vec<u8>,
) -> Result<(), BundleError> {
    let seq = line.seq;
    if line.as_ref().hashes(buffer).0 != line.hash {
        return Err(mismatch(format!("record {seq} was changed: its contents do not give its hash")));
    }
    match previous {
        None if seq != manifest.records.first => {
            Err(mismatch(format!("{RECORDS} starts at record {seq}, the manifest says {}", manifest.records.first)))
        }
        Some((p, _)) if seq != p + 1 => Err(mismatch(format!("record {} is missing: {p} is followed by {seq}", p + 1))),
        Some((_, p)) if p != line.prev_hash => {
            Err(mismatch(format!("record {seq} does not link to record {}: the chain is broken", seq - 1)))
        }
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::evidence::LedgerKey;
    use crate::state::{Db, StateStore};

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// A ledger whose records are appended at the times given.
    struct Events {
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        ledger: Ledger,
    }

    impl Events {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
            let clock = Arc::new(ManualClock::new(t("2025-12-31T00:00:00Z")));
            let ledger = Ledger::open(db, LedgerKey::generate("vigil/bundle-test"), clock.clone()).await.unwrap();
            Self { dir, clock, ledger }
        }

        /// Appends a record dated `time` (the clock may go back: a writer with a skewed clock).
        async fn at(&self, time: &str, kind: &str, outcome: Outcome, details: serde_json::Value) -> u64 {
            self.clock.advance(t(time) - self.clock.now());
            let record = NewRecord { kind: kind.into(), subject: "orders".into(), outcome, details };
            self.ledger.append(record).await.unwrap().seq
        }

        async fn export(&self, out: &str) -> Exported {
            let period = Period::new(t("2026-01-01T00:00:00Z"), t("2026-01-11T00:00:00Z")).unwrap();
            let out = self.dir.path().join(out);
            export(&self.ledger, None, Policy::default(), period, "2026-01-12T00:00:00Z".into(), &out, &Format::ALL)
                .await
                .unwrap()
        }
    }

    /// A backup set's period: a failed run between two good ones, and a record on each side.
    async fn known() -> Events {
        let e = Events::new().await;
        let saga = |n: u32, phase: &str| serde_json::json!({ "saga": format!("s{n}"), "step": "saga", "phase": phase });
        e.at("2025-12-31T12:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        e.at("2026-01-02T06:00:00Z", "backup.started", Outcome::Started, saga(1, "started")).await;
        e.at("2026-01-02T06:00:00Z", "backup.finished", Outcome::Succeeded, saga(1, "finished")).await;
        e.at("2026-01-03T06:00:00Z", "backup.started", Outcome::Started, saga(2, "started")).await;
        let mut failed = saga(2, "rolled_back");
        failed["detail"] = serde_json::json!({ "step": "write", "error": "bucket unreachable" });
        e.at("2026-01-03T06:00:00Z", "backup.rolled_back", Outcome::Failed, failed).await;
        e.at("2026-01-04T06:00:00Z", "backup.started", Outcome::Started, saga(3, "started")).await;
        e.at("2026-01-04T06:00:00Z", "backup.finished", Outcome::Succeeded, saga(3, "finished")).await;
        e.at("2026-01-11T00:00:01Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        e
    }

    /// A bundle's members, to forge.
    struct Bundle(Vec<(String, Vec<u8>)>);

    impl Bundle {
        fn read(path: &Path) -> Self {
            let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
            let members = archive.entries().unwrap().raw(true).map(|entry| {
                let mut entry = entry.unwrap();
                let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            });
            Self(members.collect())
        }

        fn get(&self, path: &str) -> &[u8] {
            &self.0.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{path} in the bundle")).1
        }

        fn set(&mut self, path: &str, bytes: Vec<u8>) {
            self.0.iter_mut().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{path} in the bundle")).1 = bytes;
        }

        fn manifest(&self) -> serde_json::Value {
            serde_json::from_slice(self.get(MANIFEST)).unwrap()
        }

        /// The manifest edited, its entries made to match the members, and signed again by the
        /// ledger's key: what reaches the later checks had the exporter itself been fooled.
        fn sign(&mut self, ledger: &Ledger, edit: impl FnOnce(&mut serde_json::Value)) {
            let mut manifest = self.manifest();
            for entry in manifest["files"].as_array_mut().unwrap() {
                if let Some((_, bytes)) = self.0.iter().find(|(p, _)| *p == entry["path"]) {
                    entry["sha256"] = hex::encode(Sha256::digest(bytes)).into();
                    entry["bytes"] = bytes.len().into();
                }
            }
            edit(&mut manifest);
            let mut json = serde_json::to_vec_pretty(&manifest).unwrap();
            json.push(b'\n');
            let note = ledger.sign_manifest(&Sha256::digest(&json).into());
            self.set(MANIFEST, json);
            self.set(MANIFEST_NOTE, note.into_bytes());
        }

        /// Every report file computed again, as a careful forger would, from the bundle's
        /// records in `range` and the report's time.
        fn report_again(&mut self, range: SeqRange, generated_at: &str) {
            let mut bundled: serde_json::Value = serde_json::from_slice(self.get(REPORT_JSON)).unwrap();
            let declared: Declared = serde_json::from_value(bundled.clone()).unwrap();
            let mut builder = Builder::new(declared.period, declared.policy).unwrap();
            for line in self.get(RECORDS).split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let record: Record = serde_json::from_slice(line).unwrap();
                if (range.first..=range.last).contains(&record.seq) {
                    builder.feed(&record.as_ref());
                }
            }
            bundled["integrity"]["first_seq"] = range.first.into();
            bundled["integrity"]["last_seq"] = range.last.into();
            let integrity: Integrity = serde_json::from_value(bundled["integrity"].clone()).unwrap();
            for (path, bytes) in super::super::render(&builder.finish(generated_at, integrity)).unwrap() {
                self.set(&path, bytes);
            }
        }

        fn tar(&self) -> Vec<u8> {
            let members: Vec<_> = self.0.iter().map(|(p, b)| member(p, tar::EntryType::Regular, b, None)).collect();
            pack_raw(&members)
        }
    }

    /// A member as given: the name written into the header as it is (the tar crate's own
    /// setter refuses `..` and absolute names, as a forger's tool would not).
    fn member(name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> (tar::Header, Vec<u8>) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        (header, data.to_vec())
    }

    fn pack_raw(members: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (header, data) in members {
            tar.append(header, data.as_slice()).unwrap();
        }
        tar.into_inner().unwrap()
    }

    /// Why `bundle` does not verify.
    fn refusal(bundle: &[u8], vkey: &NoteVerifier) -> String {
        match verify_bundle(bundle, vkey) {
            Ok(verified) => panic!("the forged bundle verified: {verified:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn assert_says(why: &str, says: &str) {
        assert!(why.contains(says), "{why:?} does not say {says:?}");
    }

    #[tokio::test]
    async fn an_exported_bundle_verifies_and_shows_its_declared_policy_and_time() {
        let e = known().await;
        let exported = e.export("out").await;
        let verified = verify_bundle(std::fs::File::open(&exported.bundle).unwrap(), &e.ledger.verifier()).unwrap();
        assert_eq!((verified.first_seq, verified.last_seq), (3, 8), "the genesis record and the fence before");
        assert_eq!(verified.generated_at, "2026-01-12T00:00:00Z");
        assert_eq!(verified.policy_sha256, Policy::default().digest());
        assert_eq!(Bundle::read(&exported.bundle).0[1].0, MANIFEST_NOTE, "the signature follows the manifest");
    }

    /// The finding: genuine records and proof, the range moved past the period's failed run and
    /// every report file computed again without it, the manifest signed: the bundle's records
    /// no longer are the range and its fences.
    #[tokio::test]
    async fn a_range_moved_past_records_of_the_period_is_refused() {
        let e = known().await;
        let mut bundle = Bundle::read(&e.export("out").await.bundle);
        let moved = SeqRange { first: 7, last: 8 };
        bundle.report_again(moved, "2026-01-12T00:00:00Z");
        bundle.sign(&e.ledger, |m| m["range"]["first"] = 7.into());
        let why = refusal(&bundle.tar(), &e.ledger.verifier());
        assert_says(&why, "the bundle holds records 2 to 9, but its range 7 to 8 needs exactly records 6 to 9");
        // The records cut to fit the moved range: the proof no longer holds.
        let lines: Vec<&[u8]> = bundle.get(RECORDS).split_inclusive(|&b| b == b'\n').skip(4).collect();
        bundle.set(RECORDS, lines.concat());
        bundle.sign(&e.ledger, |m| m["records"]["first"] = 6.into());
        let why = refusal(&bundle.tar(), &e.ledger.verifier());
        assert_says(&why, "proof.json does not describe the bundle's records");
    }

    /// The range cut short at the end (records and proof genuine) is refused like one moved at
    /// the start; a period stretched over the fence after it (every report file computed again
    /// for it, the manifest signed) leaves that fence in the period, and is refused naming it.
    #[tokio::test]
    async fn a_range_cut_short_or_a_fence_inside_the_period_is_refused() {
        let e = known().await;
        let genuine = Bundle::read(&e.export("out").await.bundle);
        let mut short = Bundle(genuine.0.clone());
        short.report_again(SeqRange { first: 3, last: 7 }, "2026-01-12T00:00:00Z");
        short.sign(&e.ledger, |m| m["range"]["last"] = 7.into());
        let why = refusal(&short.tar(), &e.ledger.verifier());
        assert_says(&why, "the bundle holds records 2 to 9, but its range 3 to 7 needs exactly records 2 to 8");

        let mut stretched = Bundle(genuine.0);
        let text = String::from_utf8(stretched.get(REPORT_JSON).to_vec()).unwrap();
        let text = text.replace("\"to\": \"2026-01-11T00:00:00Z\"", "\"to\": \"2026-01-11T00:00:02Z\"");
        stretched.set(REPORT_JSON, text.into_bytes());
        stretched.report_again(SeqRange { first: 3, last: 8 }, "2026-01-12T00:00:00Z");
        stretched.sign(&e.ledger, |m| m["period"]["to"] = "2026-01-11T00:00:02Z".into());
        let why = refusal(&stretched.tar(), &e.ledger.verifier());
        assert_says(&why, "record 9, the fence after the range, is dated 2026-01-11T00:00:01.000000Z, in the period");
    }

    /// Members no export writes, under names that would unpack outside the folder or over a
    /// real member, or that are not files at all, are each refused by name.
    #[tokio::test]
    async fn members_that_are_not_the_bundles_own_regular_files_are_refused() {
        let e = known().await;
        let bundle = Bundle::read(&e.export("out").await.bundle);
        let vkey = e.ledger.verifier();
        let regular = |b: &Bundle| -> Vec<(tar::Header, Vec<u8>)> {
            b.0.iter().map(|(p, d)| member(p, tar::EntryType::Regular, d, None)).collect()
        };
        let with = |extra: (tar::Header, Vec<u8>)| {
            let mut members = regular(&bundle);
            members.push(extra);
            pack_raw(&members)
        };
        let forged = b"<html>forged</html>".as_slice();
        let cases = [
            (member("../x", tar::EntryType::Regular, forged, None), "named \"../x\", which climbs out of the folder"),
            (
                member("/etc/cron.d/x", tar::EntryType::Regular, forged, None),
                "named \"/etc/cron.d/x\", an absolute path",
            ),
            (
                member("./report/report.html", tar::EntryType::Regular, forged, None),
                "named \"./report/report.html\", which is not a normalised relative path",
            ),
            (member("report/report.html", tar::EntryType::Regular, forged, None), "report/report.html appears twice"),
            (
                member("report/x.html", tar::EntryType::Regular, forged, None),
                "report/x.html is in the bundle but not in its manifest",
            ),
        ];
        for (extra, says) in cases {
            assert_says(&refusal(&with(extra), &vkey), says);
        }
        // A real member's name, as a link or a folder.
        let replaced = |path: &str, kind: tar::EntryType, link: Option<&str>| {
            let mut members = regular(&bundle);
            let at = bundle.0.iter().position(|(p, _)| p == path).unwrap();
            members[at] = member(path, kind, &[], link);
            pack_raw(&members)
        };
        let cases = [
            (
                replaced("report/report.html", tar::EntryType::Symlink, Some("/tmp/forged.html")),
                "report/report.html is a symbolic link",
            ),
            (
                replaced("report/oscal.json", tar::EntryType::Link, Some(REPORT_JSON)),
                "report/oscal.json is a hard link",
            ),
            (replaced("report/report.html", tar::EntryType::Directory, None), "report/report.html is a directory"),
        ];
        for (forged, says) in cases {
            assert_says(&refusal(&forged, &vkey), says);
        }
        // A manifest that names a member no export writes, signed.
        let mut named = Bundle(bundle.0.clone());
        named.sign(&e.ledger, |m| {
            let files = m["files"].as_array_mut().unwrap();
            let mut extra = files[0].clone();
            extra["path"] = "../x".into();
            files.push(extra);
        });
        assert_says(
            &refusal(&named.tar(), &vkey),
            "manifest.json names \"../x\", which is not a member a bundle holds",
        );
    }

    /// A member's size in its header is compared with the manifest before it is read.
    #[tokio::test]
    async fn a_member_whose_size_is_not_the_manifests_is_refused_before_it_is_read() {
        let e = known().await;
        let mut bundle = Bundle::read(&e.export("out").await.bundle);
        let mut html = bundle.get("report/report.html").to_vec();
        html.extend_from_slice(b"<p>added</p>");
        bundle.set("report/report.html", html.clone());
        let why = refusal(&bundle.tar(), &e.ledger.verifier());
        assert_says(
            &why,
            &format!(
                "report/report.html is {} bytes in the archive; the manifest says {}",
                html.len(),
                html.len() - 12
            ),
        );
    }

    /// The finding: a 3 GiB `records.jsonl` held sparse in a few kilobytes. Refused by its
    /// header, before anything is expanded.
    #[tokio::test]
    async fn a_sparse_member_is_refused_unread() {
        let e = known().await;
        let mut bundle = Bundle::read(&e.export("out").await.bundle);
        let real: u64 = 3 << 30;
        bundle.sign(&e.ledger, |m| {
            let records = m["files"].as_array_mut().unwrap().iter_mut().find(|f| f["path"] == RECORDS).unwrap();
            records["bytes"] = real.into();
        });
        let mut members: Vec<_> = bundle.0.iter().map(|(p, d)| member(p, tar::EntryType::Regular, d, None)).collect();
        let at = bundle.0.iter().position(|(p, _)| p == RECORDS).unwrap();
        members[at] = sparse(RECORDS, real);
        let why = refusal(&pack_raw(&members), &e.ledger.verifier());
        assert_says(&why, "records.jsonl is a sparse file; a bundle holds regular files only");
    }

    /// A GNU sparse member of `real` bytes, all of it a hole but its last 512.
    pub(crate) fn sparse(name: &str, real: u64) -> (tar::Header, Vec<u8>) {
        let (mut header, _) = member(name, tar::EntryType::GNUSparse, &[b'\n'; 512], None);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
        header.set_cksum();
        (header, vec![b'\n'; 512])
    }

    /// JSON members and record lines are bounded: a padded proof (still valid JSON) is refused
    /// by its size, a record line by its length.
    #[tokio::test]
    async fn oversized_json_members_and_record_lines_are_refused() {
        let e = known().await;
        let genuine = Bundle::read(&e.export("out").await.bundle);
        let vkey = e.ledger.verifier();
        let mut bundle = Bundle(genuine.0.clone());
        let mut proof = bundle.get(PROOF).to_vec();
        proof.extend(std::iter::repeat_n(b' ', 2 << 20));
        bundle.set(PROOF, proof);
        bundle.sign(&e.ledger, |_| {});
        assert_says(&refusal(&bundle.tar(), &vkey), "proof.json is 2097");
        assert_says(&refusal(&bundle.tar(), &vkey), "bytes; a bundle's is at most 1048576");

        let mut bundle = Bundle(genuine.0.clone());
        let records = bundle.get(RECORDS);
        let first_line = records.iter().position(|&b| b == b'\n').unwrap();
        let mut padded = records[..first_line].to_vec();
        padded.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES));
        padded.extend_from_slice(&records[first_line..]);
        bundle.set(RECORDS, padded);
        bundle.sign(&e.ledger, |_| {});
        assert_says(&refusal(&bundle.tar(), &vkey), "records.jsonl line 1 is longer than 1048576 bytes");

        let mut bundle = Bundle(genuine.0);
        let mut manifest = bundle.get(MANIFEST).to_vec();
        manifest.extend(std::iter::repeat_n(b' ', 2 << 20));
        bundle.set(MANIFEST, manifest);
        let size = bundle.get(MANIFEST).len();
        assert_says(
            &refusal(&bundle.tar(), &vkey),
            &format!("manifest.json is {size} bytes; a bundle's is at most 1048576"),
        );
    }

    /// The manifest is signed: one edited, one without its signature, one signed by another
    /// key and one of the unsigned first format are each refused, named.
    #[tokio::test]
    async fn an_unsigned_or_altered_manifest_is_refused() {
        let e = known().await;
        let genuine = Bundle::read(&e.export("out").await.bundle);
        let vkey = e.ledger.verifier();

        let mut altered = Bundle(genuine.0.clone());
        let text = String::from_utf8(altered.get(MANIFEST).to_vec()).unwrap();
        altered.set(MANIFEST, text.replacen("\"first\": 3", "\"first\": 7", 1).into_bytes());
        assert_says(&refusal(&altered.tar(), &vkey), "manifest.json was changed: manifest.note signs another manifest");

        let mut unsigned = Bundle(genuine.0.clone());
        unsigned.0.remove(1);
        assert_says(&refusal(&unsigned.tar(), &vkey), "report/report.json comes where manifest.note must be");

        let other = Events::new().await;
        let mut foreign = Bundle(genuine.0.clone());
        foreign
            .set(MANIFEST_NOTE, other.ledger.sign_manifest(&Sha256::digest(genuine.get(MANIFEST)).into()).into_bytes());
        assert_says(
            &refusal(&foreign.tar(), &vkey),
            "manifest.note is not signed by the pinned key vigil/bundle-test+",
        );

        let mut old = Bundle(genuine.0);
        let text = String::from_utf8(old.get(MANIFEST).to_vec()).unwrap();
        old.set(MANIFEST, text.replacen(FORMAT, "vigil.bundle.v1", 1).into_bytes());
        old.0.remove(1);
        assert_says(&refusal(&old.tar(), &vkey), "format vigil.bundle.v1, whose manifest is unsigned");
    }

    /// A report dated before a record it holds (every file computed again for that date, the
    /// manifest signed) is refused.
    #[tokio::test]
    async fn a_report_generated_before_its_newest_record_is_refused() {
        let e = known().await;
        let mut bundle = Bundle::read(&e.export("out").await.bundle);
        bundle.report_again(SeqRange { first: 3, last: 8 }, "2026-01-10T00:00:00Z");
        let text = String::from_utf8(bundle.get(REPORT_JSON).to_vec()).unwrap();
        assert!(text.contains("\"generated_at\": \"2026-01-10T00:00:00Z\""), "{text}");
        bundle.sign(&e.ledger, |_| {});
        let why = refusal(&bundle.tar(), &e.ledger.verifier());
        assert_says(&why, "says it was generated at 2026-01-10T00:00:00Z, before record 9 (dated 2026-01-11T00:00:01");
    }

    /// The smaller finding: the record before the period's first is followed by one dated after
    /// the period (a writer's clock ahead). The export writes every record from the fence on,
    /// and its bundle verifies.
    #[tokio::test]
    async fn a_record_dated_after_the_period_before_its_first_is_bundled_and_verifies() {
        let e = Events::new().await;
        let fence = e.at("2025-12-31T12:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        let skewed = e.at("2026-01-11T00:00:05Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        e.at("2026-01-02T00:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        e.at("2026-01-12T00:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        let exported = e.export("out").await;
        assert_eq!(exported.report.integrity.first_seq, skewed, "the range starts right after the fence {fence}");
        let verified = verify_bundle(std::fs::File::open(&exported.bundle).unwrap(), &e.ledger.verifier()).unwrap();
        assert_eq!((verified.first_seq, verified.last_seq), (skewed, skewed + 1));
        // The fence after the period dated after the export's own time: refused at export, not
        // in the auditor's hands.
        let e = Events::new().await;
        e.at("2026-01-02T00:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        e.at("2026-01-13T00:00:00Z", "manual.note", Outcome::Info, serde_json::json!({})).await;
        let period = Period::new(t("2026-01-01T00:00:00Z"), t("2026-01-11T00:00:00Z")).unwrap();
        let out = e.dir.path().join("out");
        let err = export(&e.ledger, None, Policy::default(), period, "2026-01-12T00:00:00Z".into(), &out, &Format::ALL)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is dated 2026-01-13T00:00:00.000000Z, after this export's time"), "{err}");
    }

    /// The export's files are 0600 in a 0700 folder, written to new names and renamed: a link
    /// planted at a fixed name is replaced, its target untouched; a folder others may enter is
    /// refused.
    #[tokio::test]
    async fn exported_files_are_private_and_a_planted_link_is_not_written_through() {
        let e = known().await;
        let exported = e.export("new/out").await;
        let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777;
        let out = e.dir.path().join("new/out");
        assert_eq!((mode(&out), mode(&out.join("csv"))), (0o700, 0o700));
        assert!(exported.files.len() > 4, "{:?}", exported.files);
        for file in &exported.files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }

        let victim = e.dir.path().join("victim.html");
        std::fs::write(&victim, "the victim's own page").unwrap();
        for planted in ["report.html", "bundle.tar", ".report.json.partial"] {
            let _ = std::fs::remove_file(out.join(planted));
            std::os::unix::fs::symlink(&victim, out.join(planted)).unwrap();
        }
        e.export("new/out").await;
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the victim's own page");
        assert!(std::fs::symlink_metadata(out.join("report.html")).unwrap().file_type().is_file());
        assert_eq!(mode(&out.join("report.html")), 0o600);

        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        let period = Period::new(t("2026-01-01T00:00:00Z"), t("2026-01-11T00:00:00Z")).unwrap();
        let err = export(&e.ledger, None, Policy::default(), period, "2026-01-12T00:00:00Z".into(), &out, &Format::ALL)
            .await
            .unwrap_err();
        assert_says(&err.to_string(), "group or others may enter it (mode 755); `chmod 700` it");
    }
}
