//! `vigil report`: compliance reports.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::evidence::{open_ledger, witness};
use super::output::print_json;
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::report::{self, Period};
use crate::state::Db;

/// Export a compliance report that an auditor verifies offline.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil report export --from 2026-07-01 --to 2026-10-01 --out q3-report/
  vigil report export --from 2026-01-01 --to 2027-01-01 --format html,json --out 2026/
  vigil evidence verify --bundle q3-report/bundle.tar --vkey-file vigil.vkey")]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReportCommand {
    /// Write the report (HTML, JSON, CSV, OSCAL) and the evidence bundle (`bundle.tar`) into a folder.
    ///
    /// The bundle holds the period's records, the newest signed checkpoint and its witness
    /// copy, a proof tying the records to the checkpoint, and the report's files; `vigil
    /// evidence verify --bundle` checks it with the verifier key alone.
    Export {
        /// The first instant covered: an RFC 3339 time, or a date (midnight UTC).
        #[arg(long)]
        from: String,
        /// The first instant not covered: an RFC 3339 time, or a date (midnight UTC).
        #[arg(long)]
        to: String,
        /// Which report files to keep beside the bundle (the bundle always holds them all).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Format::Html, Format::Json, Format::Csv, Format::Oscal])]
        format: Vec<Format>,
        /// The folder to write into: created 0700 if missing, else one only its owner can enter.
        /// Files (0600) of an earlier export are replaced, never written through.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Html,
    Json,
    Csv,
    /// OSCAL Assessment Results (JSON).
    Oscal,
}

impl Format {
    fn to_report(self) -> report::Format {
        match self {
            Self::Html => report::Format::Html,
            Self::Json => report::Format::Json,
            Self::Csv => report::Format::Csv,
            Self::Oscal => report::Format::Oscal,
        }
    }
}

impl ReportArgs {
    pub(super) async fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        let ReportCommand::Export { from, to, format, out } = &self.command;
        let (from, to) = (instant(from, "--from")?, instant(to, "--to")?);
        let Some(period) = Period::new(from, to) else {
            bail!("--from must be before --to");
        };
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let result = async {
            let ledger = open_ledger(&plan, &db).await?;
            let witness = witness(&plan).await?;
            // To the microsecond, as records are stamped: a bundle's report is never dated
            // before a record it holds.
            let generated_at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
            let loose: Vec<report::Format> = format.iter().map(|f| f.to_report()).collect();
            let exported =
                report::export(&ledger, witness.as_deref(), report::policy(&plan), period, generated_at, out, &loose)
                    .await
                    .with_context(|| format!("export the report into {}", out.display()))?;
            match global.output {
                OutputFormat::Json => {
                    #[derive(serde::Serialize)]
                    struct Shown<'a> {
                        files: &'a [PathBuf],
                        bundle: &'a PathBuf,
                        records: u64,
                        first_seq: u64,
                        last_seq: u64,
                        checkpoint_size: u64,
                        exceptions: usize,
                        witness_copies: usize,
                        policy_sha256: String,
                    }
                    let r = &exported.report;
                    print_json(&Shown {
                        files: &exported.files,
                        bundle: &exported.bundle,
                        records: r.records,
                        first_seq: r.integrity.first_seq,
                        last_seq: r.integrity.last_seq,
                        checkpoint_size: r.integrity.checkpoint_size,
                        exceptions: r.exceptions.len(),
                        witness_copies: exported.witness_copies,
                        policy_sha256: r.policy.digest(),
                    })?;
                }
                OutputFormat::Human => {
                    let r = &exported.report;
                    println!(
                        "report {} to {}: {} records ({} to {}), {} secrets, {} backup sets, {} drill runs, {} exceptions",
                        r.period.from,
                        r.period.to,
                        r.records,
                        r.integrity.first_seq,
                        r.integrity.last_seq,
                        r.rotation.len(),
                        r.backups.len(),
                        r.drills.runs.len(),
                        r.exceptions.len()
                    );
                    for file in &exported.files {
                        println!("  {}", file.display());
                    }
                    println!("declared policy sha256 {}", r.policy.digest());
                    println!(
                        "signed checkpoint of size {} ({} witness copies); verify with:\n  vigil evidence verify --bundle {} --vkey-file vigil.vkey",
                        r.integrity.checkpoint_size,
                        exported.witness_copies,
                        exported.bundle.display()
                    );
                }
            }
            anyhow::Ok(Exit::Success)
        }
        .await;
        db.close().await;
        result
    }
}

/// An RFC 3339 time, or a date taken as midnight UTC.
fn instant(text: &str, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Some(at) = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)) {
        return Ok(at.and_utc());
    }
    bail!("{flag} {text:?} is neither an RFC 3339 time nor a YYYY-MM-DD date")
}
