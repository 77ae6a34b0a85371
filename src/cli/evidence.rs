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
    Verify {
        /// The verifier key to trust (from `vigil evidence pubkey --vkey`, obtained out of band).
        /// Without it, the key announced by the ledger's first record is trusted.
        #[arg(long, value_name = "VKEY", conflicts_with = "vkey_file")]
        vkey: Option<String>,
        /// Read the verifier key from a file.
        #[arg(long, value_name = "PATH")]
        vkey_file: Option<PathBuf>,
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
            Self::Verify { vkey, vkey_file } => {
                // --vkey or --vkey-file first, then the configuration's pinned key.
                let vkey =
                    vkey.as_deref().or(if vkey_file.is_none() { plan.evidence.trusted_vkey.as_deref() } else { None });
                let witness = witness(plan).await?;
                return verify(db, vkey, vkey_file.as_deref(), witness.as_deref(), output).await;
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
    vkey: Option<&str>,
    vkey_file: Option<&Path>,
    witness: Option<&dyn crate::objects::ObjectStore>,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let vkey = match (vkey, vkey_file) {
        (Some(vkey), _) => Some(vkey.to_owned()),
        (None, Some(path)) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("read the verifier key {}", path.display()))?)
        }
        (None, None) => None,
    };
    let trust = match &vkey {
        Some(vkey) => Trust::Pinned(Box::new(NoteVerifier::parse(vkey).context("the verifier key given")?)),
        None => Trust::Genesis,
    };
    let report = evidence::verify(db, trust).await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Human => {
            let pinned = if vkey.is_some() { "pinned" } else { "trusted on first use from the genesis record" };
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

/// Opens the ledger for writing with its signing key (see `evidence::lifecycle`).
pub(super) async fn open_ledger(plan: &Plan, db: &Db) -> anyhow::Result<Ledger> {
    let ledger = evidence::lifecycle::open(db, &plan.evidence.signing_key, Arc::new(SystemClock)).await?;
    Ok(match witness(plan).await? {
        Some(witness) => ledger.with_witness(witness).await?,
        None => ledger,
    })
}

/// The checkpoint witness the configuration names, connected.
async fn witness(plan: &Plan) -> anyhow::Result<Option<Box<dyn crate::objects::ObjectStore>>> {
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
