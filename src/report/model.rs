//! The report's content, computed from the period's records and the declared policy alone.
//!
//! [`Builder`] takes records one at a time, in ledger order, and keeps per subject only what
//! the numbers need: the export feeds it from the database, `vigil evidence verify --bundle`
//! from the bundle, and the two results must be equal. Nothing here reads a clock, a database or
//! the configuration, so whatever the exporter computed, an auditor's copy of vigil recomputes.
//!
//! Times are whole microseconds since the Unix epoch inside and whole seconds (rounded down)
//! in the report; rates are exact fractions rounded to four decimals. Intervals are measured
//! within the period: the first starts at the period's start, so a gap the report shows is never
//! longer than the real one, and an overdue or late finding is never a false alarm.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::evidence::RecordRef;

use super::controls::{self, Section};

/// The report's format, in its `format` field.
pub const FORMAT: &str = "vigil.report.v1";

/// The RPO target of a backup set no drill names.
pub const DEFAULT_RPO_TARGET_SECS: u64 = 15 * 60;

/// The exposure chart's resolution: the period in this many equal buckets, each showing the
/// oldest recovery point reached in it.
const CHART_BUCKETS: i64 = 96;

/// What the report covers: records appended at or after `from` and before `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Period {
    /// The first instant covered (RFC 3339, UTC).
    pub from: String,
    /// The first instant not covered (RFC 3339, UTC).
    pub to: String,
}

impl Period {
    /// The period between two instants; `None` unless `from` is before `to`.
    ///
    /// Sub-second instants are kept: each is rounded up to the whole microsecond, the precision
    /// records are stamped with, which leaves the records in the period exactly those that fall
    /// between the two instants given.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Self> {
        let (from, to) = (micro_ceiling(from), micro_ceiling(to));
        (from < to).then(|| Self { from: rfc3339(from), to: rfc3339(to) })
    }
}

/// `time`, or the next whole microsecond after it.
fn micro_ceiling(time: DateTime<Utc>) -> DateTime<Utc> {
    let below = time.timestamp_subsec_nanos() % 1_000;
    if below == 0 { time } else { time + chrono::Duration::nanoseconds(i64::from(1_000 - below)) }
}

/// What the exporter declares about each secret, backup set and drill: the settings the
/// numbers are measured against. Records do not carry them; the report shows them so that an
/// auditor compares them with the configuration under review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Policy {
    /// Each secret vigil rotates.
    pub secrets: Vec<SecretPolicy>,
    /// Each backup set.
    pub backup_sets: Vec<BackupPolicy>,
    /// Each drill.
    pub drills: Vec<DrillPolicy>,
}

impl Policy {
    /// The SHA-256 (hex) of the policy in canonical JSON (`evidence::canonical_json`): what
    /// `report export` and `evidence verify --bundle` print, so that the declared inputs of two
    /// reports, or of a report and the exporter's word, compare as one line.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let value = serde_json::to_value(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(crate::evidence::canonical_json(&value)))
    }
}

/// A secret's declared settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretPolicy {
    /// Its name.
    pub name: String,
    /// `postgres_password`, `mysql_password`, `api_key` or `jwt_signing_key`.
    pub kind: String,
    /// The secret store.
    pub store: String,
    /// How it is replaced without a lockout.
    pub strategy: String,
    /// How often it must rotate, in seconds.
    pub cadence_secs: u64,
}

/// A backup set's declared settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupPolicy {
    /// Its name.
    pub name: String,
    /// `dump`, `pgbackrest` or `rds_snapshot`.
    pub method: String,
    /// Its schedule, as configured.
    pub schedule: String,
    /// Its retention, in words.
    pub retention: String,
    /// The recovery point objective: the tightest of the drills restoring it, else 15 minutes.
    pub rpo_target_secs: u64,
}

/// A drill's declared settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DrillPolicy {
    /// Its name.
    pub name: String,
    /// The backup set it restores.
    pub backup_set: String,
    /// Its schedule, if it has one.
    pub schedule: Option<String>,
    /// Targets, in seconds.
    pub rpo_target_secs: u64,
    /// Targets, in seconds.
    pub rto_target_secs: u64,
}

/// The ledger range a report is built from and the checkpoint that signs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Integrity {
    /// The range's first record: the one after the last record dated before the period.
    pub first_seq: u64,
    /// The range's last record: the period's last (one less than `first_seq` when the period
    /// has none).
    pub last_seq: u64,
    /// The size of the tree the checkpoint signs.
    pub checkpoint_size: u64,
    /// Its root, hex.
    pub checkpoint_root: String,
    /// The log's origin line.
    pub origin: String,
    /// The signing key's C2SP verifier key.
    pub vkey: String,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`FORMAT`].
    pub format: String,
    /// When it was exported (RFC 3339): where intervals still open at the period's end stop,
    /// if earlier than the period's end.
    pub generated_at: String,
    /// What it covers.
    pub period: Period,
    /// Records in the period.
    pub records: u64,
    /// What the numbers are measured against.
    pub policy: Policy,
    /// Credential rotation.
    pub rotation: Vec<SecretSection>,
    /// Backups.
    pub backups: Vec<BackupSection>,
    /// Restore drills.
    pub drills: DrillSection,
    /// Everything that missed a target.
    pub exceptions: Vec<Exception>,
    /// The controls each section evidences.
    pub controls: Vec<ControlEvidence>,
    /// Where the records come from and what signs them.
    pub integrity: Integrity,
}

/// One secret's rotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretSection {
    /// The secret.
    pub name: String,
    /// Its declared settings, when the policy names it (a secret since removed has none).
    pub policy: Option<SecretPolicy>,
    /// Every rotation that started or ended in the period.
    pub rotations: Vec<Run>,
    /// Rotations that finished.
    pub succeeded: u64,
    /// Rotations rolled back or left stuck.
    pub failed: u64,
    /// The longest time without a successful rotation, within the period.
    pub longest_interval_secs: i64,
    /// Intervals longer than the cadence.
    pub late: u64,
    /// How far past its cadence the secret was at the period's end (0 when on time).
    pub overdue_secs: i64,
    /// Each failure, and the rotation that cleared it.
    pub failures: Vec<Failure>,
}

/// One saga run (a rotation, a backup) as its records tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    /// The saga's id.
    pub saga: String,
    /// Its `*.started` record, when in the period.
    pub started_seq: Option<u64>,
    /// When it started.
    pub started_at: Option<String>,
    /// Its end record (`*.finished` or `*.rolled_back`), when it ended in the period.
    pub ended_seq: Option<u64>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// How it ended.
    pub outcome: RunOutcome,
}

/// How a saga run ended, as far as the period's records tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every step acted.
    Succeeded,
    /// A step failed and every step taken was undone.
    Failed,
    /// An undo failed: an operator was needed.
    Stuck,
    /// The period holds no end.
    InFlight,
}

impl RunOutcome {
    /// The name the JSON and CSV use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stuck => "stuck",
            Self::InFlight => "in_flight",
        }
    }
}

/// A failed run and what cleared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    /// The record of the failure.
    pub seq: u64,
    /// When.
    pub at: String,
    /// The step that failed.
    pub step: String,
    /// Why, as recorded.
    pub reason: String,
    /// Whether it was left stuck (an undo failed, so it needed an operator) rather than
    /// rolled back.
    pub stuck: bool,
    /// The next successful run of the same subject, which cleared it; none when still open.
    pub resolved_by: Option<u64>,
}

/// One backup set's backups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupSection {
    /// The set.
    pub name: String,
    /// Its declared settings, when the policy names it.
    pub policy: Option<BackupPolicy>,
    /// Backup runs that started or ended in the period.
    pub runs: u64,
    /// Runs that finished.
    pub succeeded: u64,
    /// Runs rolled back or left stuck.
    pub failed: u64,
    /// `succeeded / (succeeded + failed)`, to four decimals; none without an ended run.
    pub success_rate: Option<f64>,
    /// Backups written (`backup.written`).
    pub written: u64,
    /// Verifications that passed.
    pub verified: u64,
    /// Verifications that failed.
    pub verification_failed: u64,
    /// `verified / (verified + verification_failed)`, to four decimals.
    pub verification_rate: Option<f64>,
    /// Each distinct encryption seen: algorithm, key service, key id.
    pub encryption: Vec<Encryption>,
    /// The newest backup that passed verification.
    pub newest_verified: Option<Verified>,
    /// Backups deleted by retention.
    pub pruned: u64,
    /// How old the newest recovery point was over the period.
    pub rpo_exposure: Exposure,
    /// Each failure, and the run that cleared it.
    pub failures: Vec<Failure>,
}

/// How one backup was encrypted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Encryption {
    /// The cipher.
    pub algorithm: String,
    /// What wraps the data keys (`aws_kms`, `vault_transit`, `local`), or the repository's.
    pub key_service: String,
    /// The wrapping key.
    pub key_id: String,
}

/// A verified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Verified {
    /// The `backup.verified` record.
    pub seq: u64,
    /// When.
    pub at: String,
    /// The backup.
    pub backup_id: String,
}

/// The age of the newest recovery point over the period, exact from the records: at each
/// instant, now minus the snapshot time of the newest backup written by then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Exposure {
    /// The target.
    pub target_secs: u64,
    /// The oldest the recovery point got.
    pub max_secs: i64,
    /// The age exceeded during only 5% of the period (time-weighted, not sampled).
    pub p95_secs: i64,
    /// How long the age was over the target.
    pub over_target_secs: i64,
    /// The oldest age in each of up to 96 equal slices of the period, for the chart.
    pub chart: Vec<i64>,
}

/// The period's drills.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DrillSection {
    /// Each drill run that ended in the period.
    pub runs: Vec<DrillRun>,
    /// Runs that passed.
    pub passed: u64,
    /// Runs that failed (a target missed, a check failed, or the drill could not run).
    pub failed: u64,
    /// `passed / runs`, to four decimals.
    pub pass_rate: Option<f64>,
}

/// One drill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DrillRun {
    /// Its end record.
    pub seq: u64,
    /// The saga's id.
    pub saga: String,
    /// The drill.
    pub drill: String,
    /// The backup set restored.
    pub backup_set: String,
    /// When it started and ended.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// Measured recovery time, seconds (none when it did not get that far).
    pub rto_secs: Option<f64>,
    /// Target.
    pub rto_target_secs: u64,
    /// Measured recovery point age, seconds.
    pub rpo_secs: Option<i64>,
    /// Target.
    pub rpo_target_secs: u64,
    /// Checks that ran.
    pub checks_run: u64,
    /// Checks that passed.
    pub checks_passed: u64,
    /// The runbook exercised.
    pub runbook: Option<String>,
    /// Whether every check passed and both targets were met.
    pub passed: bool,
    /// Why not.
    pub reasons: Vec<String>,
}

/// Something that missed a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Exception {
    /// `rotation`, `backups` or `drills`.
    pub section: Section,
    /// The secret, set or drill.
    pub subject: String,
    /// What was missed.
    pub what: String,
    /// The records that show it.
    pub records: Vec<u64>,
}

/// One control and where the report evidences it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ControlEvidence {
    /// `SOC 2`, `ISO/IEC 27001:2022`, `NIST SP 800-53 Rev. 5` or `PCI DSS 4.0`.
    pub framework: String,
    /// The control's identifier, e.g. `CC6.1`.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The report sections that evidence it.
    pub sections: Vec<Section>,
    /// What an auditor expects to see, and where it is.
    pub artefacts: Vec<String>,
    /// Records of those sections in the period (every record, for a control of the ledger
    /// itself).
    pub records: u64,
    /// Exceptions in those sections.
    pub exceptions: u64,
}

/// The parts of a record's details the report reads, whatever the record's kind.
#[derive(Debug, Default, Deserialize)]
struct Details {
    #[serde(default)]
    saga: Option<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    backup_id: Option<String>,
    #[serde(default)]
    snapshot_time: Option<String>,
    /// pgBackRest's stop time.
    #[serde(default)]
    stop: Option<String>,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default)]
    cipher: Option<String>,
    #[serde(default)]
    key_service: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
}

/// The nested parts of a record's details: a saga's data and a step's outcome. Read only for
/// the few records that need them (failures, drills): skipped unparsed otherwise, which keeps a
/// year's report within its time.
#[derive(Debug, Default, Deserialize)]
struct Nested {
    #[serde(default)]
    detail: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

fn nested(record: &RecordRef<'_>) -> Nested {
    serde_json::from_str(record.details).unwrap_or_default()
}

#[derive(Debug, Default)]
struct Subject {
    /// Sagas by id, in the order first seen.
    runs: Vec<Run>,
    /// Where each saga is in `runs`: a year of hourly backups is 8,760 runs of one set.
    index: std::collections::HashMap<String, usize>,
    /// Rolled-back runs' failure records.
    failures: Vec<Failure>,
    /// Records about it in the period.
    records: u64,
    // Backups only.
    written: Vec<Written>,
    verified: u64,
    verification_failed: Vec<u64>,
    newest_verified: Option<Verified>,
    pruned: u64,
    encryption: std::collections::BTreeSet<Encryption>,
}

impl Subject {
    /// The run of `saga`, added as in flight when first met.
    fn run(&mut self, saga: String) -> &mut Run {
        let index = match self.index.get(&saga) {
            Some(index) => *index,
            None => {
                self.index.insert(saga.clone(), self.runs.len());
                self.runs.push(Run {
                    saga,
                    started_seq: None,
                    started_at: None,
                    ended_seq: None,
                    ended_at: None,
                    outcome: RunOutcome::InFlight,
                });
                self.runs.len() - 1
            }
        };
        &mut self.runs[index]
    }
}

#[derive(Debug)]
struct Written {
    seq: u64,
    /// When the backup became available.
    at: i64,
    /// Its recovery point.
    point: i64,
}

/// Builds a [`Report`] from records fed in ledger order.
pub struct Builder {
    period: Period,
    from: i64,
    to: i64,
    policy: Policy,
    records: u64,
    secrets: BTreeMap<String, Subject>,
    sets: BTreeMap<String, Subject>,
    drills: Vec<DrillRun>,
    /// Drill records, for the controls' counts.
    drill_records: u64,
}

/// Why a report cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A period bound is not an RFC 3339 time.
    #[error("the period's `{0}` is not an RFC 3339 time")]
    BadPeriod(&'static str),
}

impl Builder {
    /// A report of `period`, measured against `policy`.
    pub fn new(period: Period, policy: Policy) -> Result<Self, ModelError> {
        let from = micros(&period.from).ok_or(ModelError::BadPeriod("from"))?;
        let to = micros(&period.to).ok_or(ModelError::BadPeriod("to"))?;
        Ok(Self {
            period,
            from,
            to,
            policy,
            records: 0,
            secrets: BTreeMap::new(),
            sets: BTreeMap::new(),
            drills: Vec::new(),
            drill_records: 0,
        })
    }

    /// Takes the next record of the period.
    pub fn feed(&mut self, record: &RecordRef<'_>) {
        self.records += 1;
        let (area, event) = record.kind.split_once('.').unwrap_or((record.kind, ""));
        let subjects = match area {
            "rotation" => &mut self.secrets,
            "backup" => &mut self.sets,
            "drill" => {
                self.drill_records += 1;
                if matches!(event, "finished" | "rolled_back") {
                    let details: Details = serde_json::from_str(record.details).unwrap_or_default();
                    self.drills.push(drill_run(record, event, details.saga, nested(record)));
                }
                return;
            }
            _ => return,
        };
        let subject = subjects.entry(record.subject.to_owned()).or_default();
        subject.records += 1;
        // Steps are most of the ledger and, but for a failed undo, carry nothing the report
        // counts: not parsed.
        if (event == "step" && record.outcome != "failed") || event == "check" || event == "watch" {
            return;
        }
        let details: Details = serde_json::from_str(record.details).unwrap_or_default();
        match event {
            // An undo that failed leaves the saga stuck: it needs an operator.
            "step" => {
                let (Some(saga), Some("undo")) = (details.saga.clone(), details.phase.as_deref()) else { return };
                subject.run(saga).outcome = RunOutcome::Stuck;
                let detail = nested(record).detail;
                let error = detail.as_ref().and_then(|d| d.get("error")).and_then(|e| e.as_str());
                subject.failures.push(Failure {
                    seq: record.seq,
                    at: record.time.to_owned(),
                    step: details.step.unwrap_or_default(),
                    reason: error.unwrap_or_default().to_owned(),
                    stuck: true,
                    resolved_by: None,
                });
            }
            "started" | "finished" | "rolled_back" => {
                let Some(saga) = details.saga.clone() else { return };
                let at = record.time.to_owned();
                let run = subject.run(saga);
                if event == "started" {
                    run.started_seq = Some(record.seq);
                    run.started_at = Some(at);
                } else {
                    // A stuck saga an operator later rolled back is one failure, not two.
                    let was_stuck = run.outcome == RunOutcome::Stuck;
                    run.ended_seq = Some(record.seq);
                    run.ended_at = Some(at.clone());
                    run.outcome = if event == "finished" { RunOutcome::Succeeded } else { RunOutcome::Failed };
                    if event == "rolled_back" && !was_stuck {
                        let detail = nested(record).detail.unwrap_or_default();
                        let text = |key: &str| detail.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                        subject.failures.push(Failure {
                            seq: record.seq,
                            at,
                            step: text("step"),
                            reason: text("error"),
                            stuck: false,
                            resolved_by: None,
                        });
                    }
                }
            }
            "written" if record.outcome == "succeeded" => {
                let at = micros(record.time).unwrap_or(self.from);
                let point = details.snapshot_time.as_deref().or(details.stop.as_deref()).and_then(micros).unwrap_or(at);
                subject.written.push(Written { seq: record.seq, at, point: point.min(at) });
                let algorithm = details.encryption.or(details.cipher).unwrap_or_else(|| "not recorded".into());
                subject.encryption.insert(Encryption {
                    algorithm,
                    key_service: details.key_service.unwrap_or_else(|| "not recorded".into()),
                    key_id: details.key_id.unwrap_or_else(|| "not recorded".into()),
                });
            }
            "snapshot_available" => {
                let at = micros(record.time).unwrap_or(self.from);
                subject.written.push(Written { seq: record.seq, at, point: at });
            }
            "verified" if record.outcome == "succeeded" => {
                subject.verified += 1;
                subject.newest_verified = Some(Verified {
                    seq: record.seq,
                    at: record.time.to_owned(),
                    backup_id: details.backup_id.unwrap_or_default(),
                });
            }
            "verified" if record.outcome == "failed" => subject.verification_failed.push(record.seq),
            "pruned" => subject.pruned += 1,
            _ => {}
        }
    }

    /// The report, as of `generated_at`, with `integrity` describing the range and checkpoint.
    pub fn finish(self, generated_at: &str, integrity: Integrity) -> Report {
        // Open intervals end at the period's end, or at the export if that came first.
        let end = micros(generated_at).map_or(self.to, |at| at.min(self.to)).max(self.from);
        let mut exceptions = Vec::new();

        let rotation_records: u64 = self.secrets.values().map(|s| s.records).sum();
        let backup_records: u64 = self.sets.values().map(|s| s.records).sum();
        let mut secrets = self.secrets;
        for policy in &self.policy.secrets {
            secrets.entry(policy.name.clone()).or_default();
        }
        let rotation: Vec<SecretSection> = secrets
            .into_iter()
            .map(|(name, subject)| {
                let policy = self.policy.secrets.iter().find(|p| p.name == name).cloned();
                secret_section(name, subject, policy, self.from, end, &mut exceptions)
            })
            .collect();

        let mut sets = self.sets;
        for policy in &self.policy.backup_sets {
            sets.entry(policy.name.clone()).or_default();
        }
        let backups: Vec<BackupSection> = sets
            .into_iter()
            .map(|(name, subject)| {
                let policy = self.policy.backup_sets.iter().find(|p| p.name == name).cloned();
                backup_section(name, subject, policy, self.from, end, &mut exceptions)
            })
            .collect();

        let passed = self.drills.iter().filter(|run| run.passed).count() as u64;
        for run in self.drills.iter().filter(|run| !run.passed) {
            exceptions.push(Exception {
                section: Section::Drills,
                subject: run.drill.clone(),
                what: format!("drill failed: {}", run.reasons.join("; ")),
                records: vec![run.seq],
            });
        }
        let drills = DrillSection {
            passed,
            failed: self.drills.len() as u64 - passed,
            pass_rate: rate(passed, self.drills.len() as u64),
            runs: self.drills,
        };

        // A control's records are those of the sections it is evidenced by (rotation, backups,
        // drills); one evidenced by the ledger alone (integrity) counts every record.
        let records_of = |section: &Section| match section {
            Section::Rotation => rotation_records,
            Section::Backups => backup_records,
            Section::Drills => self.drill_records,
            Section::Exceptions | Section::Integrity => 0,
        };
        let controls = controls::catalog()
            .iter()
            .map(|control| {
                let mut records: u64 = control.sections.iter().map(records_of).sum();
                if records == 0 && control.sections.contains(&Section::Integrity) {
                    records = self.records;
                }
                let missed = exceptions.iter().filter(|e| control.sections.contains(&e.section)).count() as u64;
                ControlEvidence {
                    framework: control.framework.clone(),
                    id: control.id.clone(),
                    title: control.title.clone(),
                    sections: control.sections.clone(),
                    artefacts: control.artefacts.clone(),
                    records,
                    exceptions: missed,
                }
            })
            .collect();

        Report {
            format: FORMAT.into(),
            generated_at: generated_at.to_owned(),
            period: self.period,
            records: self.records,
            policy: self.policy,
            rotation,
            backups,
            drills,
            exceptions,
            controls,
            integrity,
        }
    }
}

fn secret_section(
    name: String,
    mut subject: Subject,
    policy: Option<SecretPolicy>,
    from: i64,
    end: i64,
    exceptions: &mut Vec<Exception>,
) -> SecretSection {
    subject.runs.sort_by_key(|run| run.started_seq.or(run.ended_seq));
    resolve(&mut subject.failures, &subject.runs);
    // Successes in the order they ended, as (time, record).
    let mut successes: Vec<(i64, u64)> = subject
        .runs
        .iter()
        .filter(|run| run.outcome == RunOutcome::Succeeded)
        .filter_map(|run| Some((micros(run.ended_at.as_deref()?)?, run.ended_seq?)))
        .collect();
    successes.sort_unstable();
    let mut longest = 0;
    let mut late = 0;
    let mut previous: (i64, Option<u64>) = (from, None);
    for &(at, seq) in &successes {
        let gap = at.max(from) - previous.0;
        longest = longest.max(gap);
        if let Some(cadence) = &policy
            && gap > secs_to_micros(cadence.cadence_secs)
        {
            late += 1;
            exceptions.push(Exception {
                section: Section::Rotation,
                subject: name.clone(),
                what: format!(
                    "rotated {} after the {}, over its cadence of {}",
                    human(gap),
                    if previous.1.is_some() { "previous rotation" } else { "period's start" },
                    human(secs_to_micros(cadence.cadence_secs))
                ),
                records: previous.1.into_iter().chain([seq]).collect(),
            });
        }
        previous = (at.max(from), Some(seq));
    }
    let open = end - previous.0;
    longest = longest.max(open);
    let overdue = policy.as_ref().map_or(0, |p| (open - secs_to_micros(p.cadence_secs)).max(0));
    if overdue > 0 {
        exceptions.push(Exception {
            section: Section::Rotation,
            subject: name.clone(),
            what: format!("overdue by {} at the period's end", human(overdue)),
            records: previous.1.into_iter().collect(),
        });
    }
    for failure in &subject.failures {
        exceptions.push(Exception {
            section: Section::Rotation,
            subject: name.clone(),
            what: failure_text("rotation", failure),
            records: std::iter::once(failure.seq).chain(failure.resolved_by).collect(),
        });
    }
    SecretSection {
        name,
        policy,
        succeeded: successes.len() as u64,
        failed: subject.failures.len() as u64,
        rotations: subject.runs,
        longest_interval_secs: to_secs(longest),
        late,
        overdue_secs: to_secs(overdue),
        failures: subject.failures,
    }
}

fn backup_section(
    name: String,
    mut subject: Subject,
    policy: Option<BackupPolicy>,
    from: i64,
    end: i64,
    exceptions: &mut Vec<Exception>,
) -> BackupSection {
    subject.runs.sort_by_key(|run| run.started_seq.or(run.ended_seq));
    resolve(&mut subject.failures, &subject.runs);
    let succeeded = subject.runs.iter().filter(|run| run.outcome == RunOutcome::Succeeded).count() as u64;
    let failed = subject.failures.len() as u64;
    let target = policy.as_ref().map_or(DEFAULT_RPO_TARGET_SECS, |p| p.rpo_target_secs);
    let exposure = exposure(&mut subject.written, from, end, target);
    for failure in &subject.failures {
        exceptions.push(Exception {
            section: Section::Backups,
            subject: name.clone(),
            what: failure_text("backup", failure),
            records: std::iter::once(failure.seq).chain(failure.resolved_by).collect(),
        });
    }
    if !subject.verification_failed.is_empty() {
        exceptions.push(Exception {
            section: Section::Backups,
            subject: name.clone(),
            what: format!("{} verification(s) failed", subject.verification_failed.len()),
            records: subject.verification_failed.clone(),
        });
    }
    if exposure.max_secs > i64::try_from(target).unwrap_or(i64::MAX) {
        exceptions.push(Exception {
            section: Section::Backups,
            subject: name.clone(),
            what: format!(
                "recovery point up to {} old, over the {} target for {}",
                human(secs_to_micros(exposure.max_secs.unsigned_abs())),
                human(secs_to_micros(target)),
                human(secs_to_micros(exposure.over_target_secs.unsigned_abs()))
            ),
            records: subject.written.iter().map(|w| w.seq).take(1).collect(),
        });
    }
    let verification_failed = subject.verification_failed.len() as u64;
    BackupSection {
        name,
        policy,
        runs: subject.runs.len() as u64,
        succeeded,
        failed,
        success_rate: rate(succeeded, succeeded + failed),
        written: subject.written.len() as u64,
        verified: subject.verified,
        verification_failed,
        verification_rate: rate(subject.verified, subject.verified + verification_failed),
        encryption: subject.encryption.into_iter().collect(),
        newest_verified: subject.newest_verified,
        pruned: subject.pruned,
        rpo_exposure: exposure,
        failures: subject.failures,
    }
}

/// Each failure is cleared by the first successful run that started after it.
fn resolve(failures: &mut [Failure], runs: &[Run]) {
    for failure in failures {
        failure.resolved_by = runs
            .iter()
            .filter(|run| run.outcome == RunOutcome::Succeeded && run.started_seq.is_some_and(|s| s > failure.seq))
            .filter_map(|run| run.ended_seq)
            .min();
    }
}

fn failure_text(what: &str, failure: &Failure) -> String {
    let cleared = match failure.resolved_by {
        Some(seq) => format!("cleared by the {what} ending at record {seq}"),
        None => "not cleared in the period".into(),
    };
    let how = if failure.stuck { "stuck, needing an operator," } else { "failed" };
    format!("{what} {how} at step {}: {}; {cleared}", failure.step, failure.reason)
}

/// The exposure over `[from, end]`: piecewise linear, rising at one second per second, falling
/// when a backup with a newer recovery point is written. Before the first, the period's start
/// stands in for the recovery point.
fn exposure(written: &mut [Written], from: i64, end: i64, target_secs: u64) -> Exposure {
    written.sort_by_key(|w| (w.at, w.seq));
    // Segments (start, end, age at start): the age grows by the time elapsed.
    let mut segments: Vec<(i64, i64, i64)> = Vec::new();
    let (mut at, mut point) = (from, from);
    for w in written.iter().filter(|w| w.at < end) {
        let when = w.at.max(from);
        if when > at {
            segments.push((at, when, at - point));
            at = when;
        }
        point = point.max(w.point);
    }
    if end > at {
        segments.push((at, end, at - point));
    }
    let total: i64 = segments.iter().map(|(s, e, _)| e - s).sum();
    let max = segments.iter().map(|(s, e, a)| a + (e - s)).max().unwrap_or(0).max(0);
    // Time spent with the age above `x`.
    let above = |x: i64| -> i64 { segments.iter().map(|&(s, e, a)| ((a + (e - s)) - x.max(a)).clamp(0, e - s)).sum() };
    // The smallest whole second with at most 5% of the period above it.
    let (mut low, mut high) = (0i64, to_secs(max) + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        if i128::from(above(secs_to_micros(mid.unsigned_abs()))) * 20 <= i128::from(total) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let target = secs_to_micros(target_secs);
    let slice = ((end - from) / CHART_BUCKETS).max(1);
    let chart = (0..CHART_BUCKETS)
        .map_while(|i| {
            let (start, stop) = (from + i * slice, (from + (i + 1) * slice).min(end));
            (start < end).then(|| {
                segments
                    .iter()
                    .filter(|&&(s, e, _)| s < stop && e > start)
                    .map(|&(s, e, a)| a + (e.min(stop) - s))
                    .max()
                    .map_or(0, to_secs)
            })
        })
        .collect();
    Exposure { target_secs, max_secs: to_secs(max), p95_secs: low, over_target_secs: to_secs(above(target)), chart }
}

fn drill_run(record: &RecordRef<'_>, event: &str, saga: Option<String>, details: Nested) -> DrillRun {
    let data = details.data.unwrap_or_default();
    let text = |key: &str| data.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let checks = data.get("checks").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let flag = |check: &serde_json::Value, key: &str, default: bool| {
        check.get(key).and_then(|v| v.as_bool()).unwrap_or(default)
    };
    let verdict = data.get("verdict");
    let mut reasons: Vec<String> = verdict
        .and_then(|v| v.get("reasons"))
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let passed = event == "finished" && verdict.and_then(|v| v.get("passed")).and_then(|p| p.as_bool()) == Some(true);
    if event == "rolled_back" {
        let detail = details.detail.unwrap_or_default();
        let text = |key: &str| detail.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        reasons.push(format!("could not run: {}: {}", text("step"), text("error")));
    } else if !passed && reasons.is_empty() {
        reasons.push("finished without a verdict".into());
    }
    DrillRun {
        seq: record.seq,
        saga: saga.unwrap_or_default(),
        drill: text("drill").unwrap_or_else(|| record.subject.to_owned()),
        backup_set: text("backup_set").unwrap_or_default(),
        started_at: text("started_at").unwrap_or_default(),
        ended_at: record.time.to_owned(),
        rto_secs: data.get("rto_secs").and_then(|v| v.as_f64()),
        rto_target_secs: data.get("rto_target_secs").and_then(|v| v.as_u64()).unwrap_or(0),
        rpo_secs: data.get("rpo_secs").and_then(|v| v.as_i64()),
        rpo_target_secs: data.get("rpo_target_secs").and_then(|v| v.as_u64()).unwrap_or(0),
        checks_run: checks.iter().filter(|c| flag(c, "ran", true)).count() as u64,
        checks_passed: checks.iter().filter(|c| flag(c, "passed", false)).count() as u64,
        runbook: text("runbook"),
        passed,
        reasons,
    }
}

/// `part / whole` to four decimals; none when `whole` is 0.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| ((part as f64 / whole as f64) * 10_000.0).round() / 10_000.0)
}

/// Microseconds since the epoch of an RFC 3339 time.
pub(super) fn micros(time: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(time).ok().map(|t| t.timestamp_micros())
}

fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 1_000_000).saturating_mul(1_000_000)
}

fn to_secs(micros: i64) -> i64 {
    micros.div_euclid(1_000_000)
}

/// Whole seconds as before (`2026-01-01T00:00:00Z`), a fraction only when there is one.
fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `3d 4h`, `12m 5s`: the two largest units.
pub(super) fn human(micros: i64) -> String {
    let secs = to_secs(micros).max(0);
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(secs, |left, &(size, unit)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() { "0s".into() } else { parts.join(" ") }
}

/// [`human`] of whole seconds.
pub(super) fn human_secs(secs: i64) -> String {
    human(secs.saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn a_period_keeps_sub_second_instants_to_the_microsecond() {
        let p = Period::new(t("2026-01-05T12:00:00.6Z"), t("2026-01-05T12:00:01.5Z")).unwrap();
        assert_eq!((p.from.as_str(), p.to.as_str()), ("2026-01-05T12:00:00.600Z", "2026-01-05T12:00:01.500Z"));
        let whole = Period::new(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z")).unwrap();
        assert_eq!((whole.from.as_str(), whole.to.as_str()), ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"));
        // Below a microsecond, rounded up: the first record at or after it is stamped .000001.
        let p = Period::new(t("2026-01-05T12:00:00.0000005Z"), t("2026-01-05T12:00:01Z")).unwrap();
        assert_eq!(p.from, "2026-01-05T12:00:00.000001Z");
        assert!(Period::new(t("2026-01-05T12:00:00.0000005Z"), t("2026-01-05T12:00:00.0000009Z")).is_none());
    }
}
