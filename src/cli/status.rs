//! `vigil status`: each secret's rotation state, and each pgbackrest set's WAL archiving.

use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::backup::physical::ArchiveHealth;
use crate::clock::SystemClock;
use crate::daemon::status::{self, Status};
use crate::state::Db;
use crate::stores::Stores;

/// Show each secret's last rotation, next due time, and any rotation in flight or needing
/// attention; for each pgbackrest backup set, its WAL archiving and RPO exposure; and the alerts
/// `vigil run` has firing.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil status
  vigil status --output json

JSON: {\"secrets\": [...], \"archives\": [...], \"alerts\": [...]}. An archive's rpo_exposure_secs is how much
committed data a restore now would lose at most: the oldest WAL segment still waiting to be
archived, plus archive_timeout for the segment being written. Exits 1 when an archive has a
problem (archiving failing, the source unreadable, no backup yet).")]
pub struct StatusArgs {}

impl StatusArgs {
    pub(super) async fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let stores = Stores::new(plan.aws.as_ref(), plan.vault.as_ref());
        let status = status::collect(&plan, &db, &stores, &SystemClock).await;
        db.close().await;
        let Status { secrets: shown, archives, alerts } = status?;
        let healthy = archives.iter().all(|a| a.problems.is_empty());
        match global.output {
            OutputFormat::Json => print_json(&Status { secrets: shown, archives, alerts })?,
            OutputFormat::Human => {
                let mut rows = vec![
                    [
                        "SECRET",
                        "KIND",
                        "STRATEGY",
                        "LAST ROTATED",
                        "NEXT DUE",
                        "OVERDUE",
                        "IN FLIGHT",
                        "NEEDS ATTENTION",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                for s in &shown {
                    rows.push(vec![
                        s.secret.clone(),
                        s.kind.into(),
                        s.strategy.into(),
                        s.last_rotated.clone().unwrap_or_else(|| "never".into()),
                        s.next_due.clone(),
                        if s.overdue_days > 0 { format!("{}d", s.overdue_days) } else { "-".into() },
                        s.in_flight.clone().unwrap_or_else(|| "-".into()),
                        s.needs_attention.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                print!("{}", table("", &rows));
                if !archives.is_empty() {
                    print!("\n{}", archive_lines(&archives));
                }
                if !alerts.is_empty() {
                    let mut rows = vec![["ALERT", "SUBJECT", "SINCE", "SUMMARY"].map(String::from).to_vec()];
                    for a in &alerts {
                        rows.push(vec![a.kind.clone(), a.subject.clone(), a.since.clone(), a.summary.clone()]);
                    }
                    print!("\n{}", table("", &rows));
                }
            }
        }
        Ok(if healthy { Exit::Success } else { Exit::Failure })
    }
}

/// The archive table, then each problem on a line of its own.
pub(super) fn archive_lines(archives: &[ArchiveHealth]) -> String {
    let mut rows = vec![
        ["SET", "STANZA", "LAST ARCHIVED", "FAILURES", "WAITING", "RPO EXPOSURE", "NEWEST BACKUP"]
            .map(String::from)
            .to_vec(),
    ];
    for a in archives {
        let archiver = a.archiver.as_ref();
        rows.push(vec![
            a.set.clone(),
            a.stanza.clone(),
            archiver
                .and_then(|s| Some(format!("{} at {}", s.last_archived_wal.clone()?, s.last_archived_at.clone()?)))
                .unwrap_or_else(|| "-".into()),
            archiver.map_or_else(|| "-".into(), |s| s.failed_count.to_string()),
            archiver.map_or_else(|| "-".into(), |s| s.waiting_segments.to_string()),
            a.rpo_exposure_secs.map_or_else(|| "unknown".into(), crate::drill::human_measured),
            match (&a.newest_backup, a.newest_backup_age_secs) {
                (Some(label), Some(age)) => format!("{label} ({} ago)", crate::drill::human(age.unsigned_abs())),
                _ => "none".into(),
            },
        ]);
    }
    let mut out = table("", &rows);
    for a in archives {
        for problem in &a.problems {
            out.push_str(&format!("{}: {problem}\n", a.set));
        }
    }
    out
}
