//! `vigil evidence`: the signed, hash-chained evidence ledger.
//!
//! Reading commands (`list`, `show`, `verify`, `prove`) need only the store, so that an auditor
//! with a copy of it and vigil's public key verifies without the signing key. Writing commands
//! (`checkpoint`, `append`, `rollover-key`, and `pubkey`, which creates the key on first use)
//! open the ledger with its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::clock::SystemClock;
use crate::config::Plan;
use crate::evidence::{self, InclusionProof, Ledger, NewRecord, NoteVerifier, Outcome, Record, RecordFilter, Trust};
use crate::state::Db;

/// Read, verify, checkpoint and prove records of the evidence ledger.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil evidence list --kind rotation.step --since 2026-11-01
  vigil evidence verify --vkey \"$(cat vigil.vkey)\"
  vigil evidence verify --bundle q3-report/bundle.tar --vkey-file vigil.vkey
  vigil evidence consistency q2-report/bundle.tar q3-report/bundle.tar --vkey-file vigil.vkey
  vigil evidence prove 42 --output json
  vigil evidence pubkey --vkey > vigil.vkey")]
pub struct EvidenceArgs {
    #[command(subcommand)]
    command: EvidenceCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EvidenceCommand {
    /// List records, oldest first (the newest --limit of those matching).
    List {
        /// Only records of this kind, e.g. rotation.step.
        #[arg(long)]
        kind: Option<String>,
        /// Only records about this subject (a secret, backup set or drill name).
        #[arg(long)]
        subject: Option<String>,
        /// Only records appended at or after this time (RFC 3339, or a date like 2026-11-01).
        #[arg(long)]
        since: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Show one record with its hashes.
    Show {
        /// The record's sequence number.
        seq: u64,
    },
    /// Check every record's hash and link, and every checkpoint's signature and root.
    /// Exits 1 naming the first bad record.
    ///
    /// With --bundle, check a report's evidence bundle instead, offline (no configuration, no
    /// database, no network): the manifest's and the checkpoint's signatures by the pinned key,
    /// only the bundle's own files, the records against the checkpoint and the period, every
    /// number of the JSON report recomputed, every file rendered again.
    Verify {
        /// The verifier key to trust (from `vigil evidence pubkey --vkey`, obtained out of band).
        /// Without it (and without `[evidence] trusted_vkey`), the public half of the configured
        /// signing key: the ledger verifies only if that key's checkpoints vouch for it.
        #[arg(long, value_name = "VKEY", conflicts_with = "vkey_file")]
        vkey: Option<String>,
        /// Read the verifier key from a file.
        #[arg(long, value_name = "PATH")]
        vkey_file: Option<PathBuf>,
        /// A bundle written by `vigil report export` (`bundle.tar`); needs --vkey or --vkey-file.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Check that the ledger only grew between two signed checkpoints (RFC 9162 consistency).
    ///
    /// OLD and NEW are signed checkpoints (`vigil evidence checkpoint` output) or report
    /// bundles. The proof is computed from the ledger the configuration names, or read from
    /// --proof (`--output json` of an earlier run), which needs no configuration.
    Consistency {
        /// The older checkpoint, or a bundle holding it.
        old: PathBuf,
        /// The newer checkpoint, or a bundle holding it.
        new: PathBuf,
        /// The verifier key both must be signed by (default: the configuration's pinned key).
        #[arg(long, value_name = "VKEY", conflicts_with = "vkey_file")]
        vkey: Option<String>,
        /// Read the verifier key from a file.
        #[arg(long, value_name = "PATH")]
        vkey_file: Option<PathBuf>,
        /// A consistency proof saved earlier, instead of computing it from the ledger.
        #[arg(long, value_name = "FILE")]
        proof: Option<PathBuf>,
    },
    /// Sign a checkpoint of the ledger as it is now and print it as a signed note.
    Checkpoint,
    /// Print a record, its Merkle leaf hash and its inclusion proof against a checkpoint.
    Prove {
        /// The record's sequence number.
        seq: u64,
        /// Prove against the checkpoint of this tree size (default: the newest covering it).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Print the ledger's public key and fingerprint (the key is created on first use).
    Pubkey {
        /// Print only the C2SP signed-note verifier key, for other verifiers.
        #[arg(long)]
        vkey: bool,
    },
    /// Record a manual action (kinds must start with `manual.`), e.g. an operator's restore test.
    Append {
        /// The kind, e.g. manual.restore_test.
        #[arg(long)]
        kind: String,
        /// What it is about.
        #[arg(long)]
        subject: String,
        /// How it turned out.
        #[arg(long, value_enum, default_value = "info")]
        outcome: OutcomeArg,
        /// A detail as key=value; repeat for more. Never put a secret here.
        #[arg(long = "detail", value_name = "KEY=VALUE")]
        details: Vec<String>,
    },
    /// Move signing to a new key, announced in the ledger and vouched for by the old one.
    RolloverKey,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OutcomeArg {
    Info,
    Succeeded,
    Failed,
}

impl EvidenceArgs {
    pub(super) async fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        // What an auditor runs offline never reads the configuration.
        match &self.command {
            EvidenceCommand::Verify { vkey, vkey_file, bundle: Some(bundle) } => {
                let Some(vkey) = read_vkey(vkey.as_deref(), vkey_file.as_deref())? else {
                    bail!(
                        "a bundle is checked against a key you pinned: give --vkey or --vkey-file, obtained from the report's owner out of band"
                    );
                };
                return verify_bundle(bundle, &vkey, global.output);
            }
            EvidenceCommand::Consistency { old, new, vkey, vkey_file, proof: Some(proof) } => {
                let Some(vkey) = read_vkey(vkey.as_deref(), vkey_file.as_deref())? else {
                    bail!(
                        "checking a saved proof needs the key both checkpoints are signed by: give --vkey or --vkey-file"
                    );
                };
                let proof = read_proof(proof)?;
                return consistency(old, new, &vkey, Some(proof), None, global.output).await;
            }
            _ => {}
        }
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let result = self.command.run(&plan, &db, global.output).await;
        db.close().await;
        result
    }
}

impl EvidenceCommand {
    async fn run(&self, plan: &Plan, db: &Db, output: OutputFormat) -> anyhow::Result<Exit> {
        match self {
            Self::List { kind, subject, since, limit } => {
                let since = since.as_deref().map(normalize_since).transpose()?;
                let filter = RecordFilter { kind: kind.clone(), subject: subject.clone(), since, limit: *limit };
                let records = evidence::list(db, &filter).await?;
                match output {
                    OutputFormat::Json => print_json(&records)?,
                    OutputFormat::Human => print!("{}", record_table(&records)),
                }
            }
            Self::Show { seq } => {
                let record = evidence::get(db, *seq).await?;
                match output {
                    OutputFormat::Json => print_json(&record)?,
                    OutputFormat::Human => print!("{}", show_record(&record)),
                }
            }
            Self::Consistency { old, new, vkey, vkey_file, proof: _ } => {
                let vkey = match pinned_vkey(plan, vkey.as_deref(), vkey_file.as_deref())? {
                    Some(vkey) => vkey,
                    None => open_ledger(plan, db).await?.verifier(),
                };
                return consistency(old, new, &vkey, None, Some(db), output).await;
            }
            Self::Verify { vkey, vkey_file, bundle: _ } => {
                let trust = match pinned_vkey(plan, vkey.as_deref(), vkey_file.as_deref())? {
                    Some(vkey) => Trust::Pinned(Box::new(vkey)),
                    None => Trust::Configured(Box::new(configured_verifier(plan)?)),
                };
                let witness = witness(plan).await?;
                return verify(db, trust, witness.as_deref(), output).await;
            }
            Self::Checkpoint => {
                let ledger = open_ledger(plan, db).await?;
                let checkpoint = ledger.checkpoint().await?;
                match output {
                    OutputFormat::Json => print_json(&checkpoint)?,
                    OutputFormat::Human => print!("{}", checkpoint.note),
                }
            }
            Self::Prove { seq, size } => {
                let proof = evidence::prove(db, *seq, *size).await?;
                match output {
                    OutputFormat::Json => print_json(&proof)?,
                    OutputFormat::Human => print!("{}", show_proof(&proof)),
                }
            }
            Self::Pubkey { vkey } => {
                let ledger = open_ledger(plan, db).await?;
                let verifier = ledger.verifier();
                #[derive(Serialize)]
                struct Shown {
                    name: String,
                    key_id: String,
                    vkey: String,
                    fingerprint: String,
                }
                let shown = Shown {
                    name: verifier.name().into(),
                    key_id: format!("{:08x}", verifier.id()),
                    vkey: verifier.vkey(),
                    fingerprint: verifier.fingerprint(),
                };
                match (output, vkey) {
                    (OutputFormat::Json, _) => print_json(&shown)?,
                    (OutputFormat::Human, true) => println!("{}", shown.vkey),
                    (OutputFormat::Human, false) => println!(
                        "origin       {}\nkey id       {}\nfingerprint  {}\nvkey         {}",
                        shown.name, shown.key_id, shown.fingerprint, shown.vkey
                    ),
                }
            }
            Self::Append { kind, subject, outcome, details } => {
                if !evidence::is_manual(kind) {
                    bail!(
                        "manual records take a kind starting with `manual.`, e.g. manual.restore_test; other kinds are vigil's own"
                    );
                }
                let mut map = serde_json::Map::new();
                for detail in details {
                    let (key, value) =
                        detail.split_once('=').with_context(|| format!("--detail {detail:?} is not KEY=VALUE"))?;
                    map.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
                }
                let ledger = open_ledger(plan, db).await?;
                let outcome = match outcome {
                    OutcomeArg::Info => Outcome::Info,
                    OutcomeArg::Succeeded => Outcome::Succeeded,
                    OutcomeArg::Failed => Outcome::Failed,
                };
                let record = ledger
                    .append(NewRecord { kind: kind.clone(), subject: subject.clone(), outcome, details: map.into() })
                    .await?;
                // A completed action is signed for at once.
                ledger.checkpoint().await?;
                match output {
                    OutputFormat::Json => print_json(&record)?,
                    OutputFormat::Human => println!("recorded {} as record {}", record.kind, record.seq),
                }
            }
            Self::RolloverKey => {
                let mut ledger = open_ledger(plan, db).await?;
                let rolled = evidence::lifecycle::rollover(&mut ledger, &plan.evidence.signing_key).await?;
                match output {
                    OutputFormat::Json => print_json(&rolled)?,
                    OutputFormat::Human => println!(
                        "signing key rolled over\n  old  {}\n  new  {}\nthe old key signed checkpoint {} (size {}) covering the announcement; the old key file is kept as {}",
                        rolled.old_vkey,
                        rolled.new_vkey,
                        rolled.checkpoint_by_old_key.id,
                        rolled.checkpoint_by_old_key.size,
                        rolled.retired_key.display()
                    ),
                }
            }
        }
        Ok(Exit::Success)
    }
}

async fn verify(
    db: &Db,
    trust: Trust,
    witness: Option<&dyn crate::objects::ObjectStore>,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let pinned = match &trust {
        Trust::Pinned(_) => "pinned",
        Trust::Configured(_) => "announced by the genesis record; the configured signing key vouches for it",
        Trust::Genesis => "trusted on first use from the genesis record",
    };
    let report = evidence::verify(db, trust).await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Human => {
            println!("records      {}", report.records);
            println!(
                "checkpoints  {} verified, newest covers {}",
                report.checkpoints_verified,
                report.newest_checkpoint.unwrap_or(0)
            );
            println!("unsigned     {} records beyond the newest checkpoint", report.beyond_checkpoint);
            for (i, key) in report.keys.iter().enumerate() {
                let how = if i == 0 { pinned } else { "announced by a rollover the previous key vouched for" };
                println!("key          {key} ({how})");
            }
        }
    }
    if let Some(problem) = &report.problem {
        bail!("evidence verification failed at record {}: {}", problem.seq, problem.what);
    }
    if let Some(witness) = witness {
        if let Some(disagreement) = evidence::witness::compare(db, witness).await? {
            bail!("evidence verification failed: the database and the checkpoint witness disagree: {disagreement}");
        }
        if output == OutputFormat::Human {
            println!("witness      every checkpoint matches its copy outside the database");
        }
    }
    if output == OutputFormat::Human {
        println!("ok: every record and checkpoint verifies");
    }
    Ok(Exit::Success)
}

/// The key to trust: --vkey or --vkey-file first, then the configuration's pinned key.
fn pinned_vkey(plan: &Plan, vkey: Option<&str>, vkey_file: Option<&Path>) -> anyhow::Result<Option<NoteVerifier>> {
    let configured = if vkey_file.is_none() { plan.evidence.trusted_vkey.as_deref() } else { None };
    read_vkey(vkey.or(configured), vkey_file)
}

/// The public half of the configured signing key: what `evidence verify` trusts when no key is
/// pinned. Never a key read from the database, which whoever can write to it could replace.
fn configured_verifier(plan: &Plan) -> anyhow::Result<NoteVerifier> {
    let key = evidence::LedgerKey::load(&plan.evidence.signing_key).with_context(|| {
        "no key to verify against: give --vkey or --vkey-file, or set [evidence] trusted_vkey; the configured signing key cannot be read"
    })?;
    Ok(key.verifier())
}

/// The verifier key from --vkey or --vkey-file, if either is given.
fn read_vkey(vkey: Option<&str>, vkey_file: Option<&Path>) -> anyhow::Result<Option<NoteVerifier>> {
    let text = match (vkey, vkey_file) {
        (Some(vkey), _) => vkey.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("read the verifier key {}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(NoteVerifier::parse(&text).context("the verifier key given")?))
}

fn verify_bundle(path: &Path, vkey: &NoteVerifier, output: OutputFormat) -> anyhow::Result<Exit> {
    let file = std::fs::File::open(path).with_context(|| format!("open the bundle {}", path.display()))?;
    let verified = crate::report::verify_bundle(std::io::BufReader::new(file), vkey)
        .with_context(|| format!("bundle verification failed for {}", path.display()))?;
    match output {
        OutputFormat::Json => print_json(&verified)?,
        OutputFormat::Human => {
            println!("period       {} to {}", verified.period.from, verified.period.to);
            println!(
                "records      {} to {}, each hash recomputed and linked to the one before",
                verified.first_seq, verified.last_seq
            );
            println!("checkpoint   size {}, signed by the pinned key {}", verified.checkpoint_size, verified.signed_by);
            println!(
                "proof        the records are the ones that checkpoint covers: the range and a fence on each side, none left out at either end"
            );
            println!("generated    {}, after every record the bundle holds", verified.generated_at);
            println!(
                "policy       sha256 {} (declared by the exporter, not checked: compare it with the configuration under review)",
                verified.policy_sha256
            );
            println!("witness      {} copies identical to the checkpoint", verified.witness_copies);
            println!(
                "report       {} numbers recomputed from the records; every file rendered again and identical",
                verified.numbers
            );
            println!(
                "files        {} SHA-256 hashes match the manifest, which the pinned key signed; no other member",
                verified.files
            );
            println!("ok: the bundle verifies");
        }
    }
    Ok(Exit::Success)
}

/// A signed checkpoint: the file itself, or the one inside a bundle.
fn read_checkpoint(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    // A tar archive says `ustar` at offset 257 of its first header.
    if bytes.get(257..262) == Some(b"ustar".as_slice()) {
        return crate::report::bundle::checkpoint_of(bytes.as_slice())
            .with_context(|| format!("read the checkpoint in the bundle {}", path.display()));
    }
    String::from_utf8(bytes)
        .with_context(|| format!("{} is neither a signed checkpoint nor a report bundle", path.display()))
}

#[derive(Serialize, serde::Deserialize)]
struct ConsistencyShown {
    old_size: u64,
    new_size: u64,
    old_root: String,
    new_root: String,
    proof: Vec<String>,
}

fn read_proof(path: &Path) -> anyhow::Result<ConsistencyShown> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read the proof {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof from `vigil evidence consistency --output json`", path.display()))
}

async fn consistency(
    old: &Path,
    new: &Path,
    vkey: &NoteVerifier,
    saved: Option<ConsistencyShown>,
    db: Option<&Db>,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let open = |path: &Path| -> anyhow::Result<evidence::Checkpoint> {
        let note = read_checkpoint(path)?;
        let (body, _) = evidence::note::open(&note, std::slice::from_ref(vkey)).with_context(|| {
            format!("{} is not signed by the pinned key {}+{:08x}", path.display(), vkey.name(), vkey.id())
        })?;
        evidence::Checkpoint::parse_body(body).with_context(|| format!("read the checkpoint in {}", path.display()))
    };
    let (old_cp, new_cp) = (open(old)?, open(new)?);
    if old_cp.origin != new_cp.origin {
        bail!("the checkpoints are of two different logs: {} and {}", old_cp.origin, new_cp.origin);
    }
    if old_cp.size > new_cp.size {
        bail!("OLD covers {} records and NEW only {}: give the older checkpoint first", old_cp.size, new_cp.size);
    }
    let proof: Vec<evidence::merkle::Hash> = match (saved, db) {
        (Some(saved), _) => {
            if saved.old_size != old_cp.size || saved.new_size != new_cp.size {
                bail!(
                    "the saved proof is from {} to {} records, not {} to {}",
                    saved.old_size,
                    saved.new_size,
                    old_cp.size,
                    new_cp.size
                );
            }
            saved
                .proof
                .iter()
                .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                .collect::<Option<_>>()
                .context("the saved proof holds a hash that is not 32 bytes of hex")?
        }
        (None, Some(db)) => evidence::consistency(db, old_cp.size, new_cp.size).await?,
        (None, None) => bail!("no proof: give --proof, or run with the configuration of the ledger"),
    };
    if !evidence::merkle::verify_consistency(old_cp.size, new_cp.size, &old_cp.root, &new_cp.root, &proof) {
        bail!(
            "consistency check failed: the log of {} records is not an extension of the log of {} records; history was rewritten",
            new_cp.size,
            old_cp.size
        );
    }
    let shown = ConsistencyShown {
        old_size: old_cp.size,
        new_size: new_cp.size,
        old_root: hex::encode(old_cp.root),
        new_root: hex::encode(new_cp.root),
        proof: proof.iter().map(hex::encode).collect(),
    };
    match output {
        OutputFormat::Json => print_json(&shown)?,
        OutputFormat::Human => println!(
            "ok: the log of {} records extends the log of {} records, both signed by {}+{:08x} ({} proof hashes)",
            shown.new_size,
            shown.old_size,
            vkey.name(),
            vkey.id(),
            shown.proof.len()
        ),
    }
    Ok(Exit::Success)
}

/// Opens the ledger for writing with its signing key (see `evidence::lifecycle`).
pub(super) async fn open_ledger(plan: &Plan, db: &Db) -> anyhow::Result<Ledger> {
    let ledger = evidence::lifecycle::open(db, &plan.evidence.signing_key, Arc::new(SystemClock)).await?;
    Ok(match witness(plan).await? {
        Some(witness) => ledger.with_witness(witness).await?,
        None => ledger,
    })
}

/// The checkpoint witness the configuration names, connected.
pub(super) async fn witness(plan: &Plan) -> anyhow::Result<Option<Box<dyn crate::objects::ObjectStore>>> {
    let Some(settings) = &plan.evidence.witness else { return Ok(None) };
    let store = crate::objects::connect(settings, plan.aws.as_ref())
        .await
        .with_context(|| format!("connect the checkpoint witness {settings}"))?;
    Ok(Some(store))
}

/// Accepts RFC 3339 times and plain dates (midnight UTC), in the stored form.
fn normalize_since(since: &str) -> anyhow::Result<String> {
    use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
    if let Ok(at) = DateTime::parse_from_rfc3339(since) {
        return Ok(at.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    if let Ok(day) = NaiveDate::parse_from_str(since, "%Y-%m-%d") {
        let at = day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
        return Ok(at.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    bail!("--since {since:?} is neither an RFC 3339 time nor a YYYY-MM-DD date")
}

fn record_table(records: &[Record]) -> String {
    let mut rows = vec![["SEQ", "TIME", "KIND", "SUBJECT", "OUTCOME", "DETAILS"].map(String::from).to_vec()];
    for record in records {
        let mut details = record.details.clone();
        if details.chars().count() > 60 {
            details = details.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            record.seq.to_string(),
            record.time.clone(),
            record.kind.clone(),
            record.subject.clone(),
            record.outcome.clone(),
            details,
        ]);
    }
    table("", &rows)
}

fn show_record(record: &Record) -> String {
    format!(
        "seq        {}\ntime       {}\nkind       {}\nsubject    {}\noutcome    {}\nactor      {} pid {} vigil {}\ndetails    {}\nprev hash  {}\nhash       {}\nleaf hash  {}\n",
        record.seq,
        record.time,
        record.kind,
        record.subject,
        record.outcome,
        record.actor.host,
        record.actor.pid,
        record.actor.version,
        record.details,
        hex::encode(record.prev_hash),
        hex::encode(record.hash),
        hex::encode(record.leaf_hash()),
    )
}

fn show_proof(proof: &InclusionProof) -> String {
    let mut out = show_record(&proof.record);
    out.push_str(&format!("index      {} (leaf {} of {})\n", proof.index, proof.index + 1, proof.checkpoint.size));
    out.push_str("proof\n");
    for hash in &proof.proof {
        out.push_str(&format!("  {}\n", hex::encode(hash)));
    }
    out.push_str(&format!(
        "checkpoint #{} signed {}\n{}",
        proof.checkpoint.id, proof.checkpoint.signed_at, proof.checkpoint.note
    ));
    out
}
