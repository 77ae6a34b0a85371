//! `vigil config check`: load the configuration and show the resolved plan or every problem.

use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, BackupMethod, Diagnostic, Plan, Severity};
use crate::kms::Settings as KeyService;
use crate::schedule;
use crate::state::StateStore;

/// Check configuration files.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil config check\n  vigil config check /etc/vigil/vigil.toml --output json"
)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Load vigil.toml and its schedule files; print the resolved plan, or every problem
    /// with file:line:column and field. Exits 1 when there are errors.
    Check {
        /// The configuration file; defaults to --config.
        path: Option<PathBuf>,
    },
}

impl ConfigArgs {
    pub(super) fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        let ConfigCommand::Check { path } = &self.command;
        let path = path.as_ref().unwrap_or(&global.config);
        check(path, global.output, &SystemClock)
    }
}

/// When each scheduled item next acts, as computed now.
#[derive(Serialize)]
struct Due {
    name: String,
    /// RFC 3339 time, or `None` for on-demand items.
    next: Option<String>,
    /// Why `next` is what it is, for people.
    note: &'static str,
}

#[derive(Serialize)]
struct CheckReport<'a> {
    ok: bool,
    checked_at: String,
    plan: Option<&'a Plan>,
    secrets_due: Vec<Due>,
    backups_due: Vec<Due>,
    drills_due: Vec<Due>,
    diagnostics: &'a [Diagnostic],
}

fn check(path: &std::path::Path, output: OutputFormat, clock: &dyn Clock) -> anyhow::Result<Exit> {
    let now = clock.now();
    let (plan, diagnostics) = match config::load(path) {
        Ok(loaded) => (Some(loaded.plan), loaded.warnings),
        Err(diagnostics) => (None, diagnostics),
    };
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diagnostics.len() - errors;
    let (secrets_due, backups_due, drills_due) = plan.as_ref().map(|plan| due(plan, now)).unwrap_or_default();
    match output {
        OutputFormat::Json => print_json(&CheckReport {
            ok: errors == 0,
            checked_at: rfc3339(now),
            plan: plan.as_ref(),
            secrets_due,
            backups_due,
            drills_due,
            diagnostics: &diagnostics,
        })?,
        OutputFormat::Human => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            if let Some(plan) = &plan {
                print!("{}", show_plan(plan, &secrets_due, &backups_due, &drills_due));
                println!(
                    "ok: {}, {}, {}, {}{}",
                    count(plan.targets.len(), "target"),
                    count(plan.secrets.len(), "secret"),
                    count(plan.backups.len(), "backup set"),
                    count(plan.drills.len(), "drill"),
                    if warnings > 0 { format!(" ({})", count(warnings, "warning")) } else { String::new() }
                );
            }
        }
    }
    if errors > 0 {
        anyhow::bail!("{} has {}", path.display(), count(errors, "error"));
    }
    Ok(Exit::Success)
}

/// `3 secrets`, `1 drill`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn due(plan: &Plan, now: DateTime<Utc>) -> (Vec<Due>, Vec<Due>, Vec<Due>) {
    // A check reads no state (it must not migrate or even reach a production state store),
    // so the same standing `vigil status` computes is computed here without history.
    let secrets = plan
        .secrets
        .iter()
        .map(|(name, secret)| Due {
            name: name.clone(),
            next: Some(rfc3339(schedule::standing(secret.cadence, None, false, now).next)),
            note: "no rotation recorded here; `vigil status` reads the history",
        })
        .collect();
    let backups = plan
        .backups
        .iter()
        .map(|(name, backup)| Due {
            name: name.clone(),
            next: backup.schedule.next_after(now).map(rfc3339),
            note: "cron",
        })
        .collect();
    let drills = plan
        .drills
        .iter()
        .map(|(name, drill)| match &drill.schedule {
            Some(schedule) => Due { name: name.clone(), next: schedule.next_after(now).map(rfc3339), note: "cron" },
            None => Due { name: name.clone(), next: None, note: "on demand" },
        })
        .collect();
    (secrets, backups, drills)
}

fn show_plan(plan: &Plan, secrets_due: &[Due], backups_due: &[Due], drills_due: &[Due]) -> String {
    let mut out = String::new();
    let mut settings = vec![
        vec!["config".into(), plan.config_file.display().to_string()],
        vec![
            "schedules".into(),
            format!("{} ({} files)", plan.controller.schedules_dir.display(), plan.schedule_files.len()),
        ],
        vec!["data dir".into(), plan.controller.data_dir.display().to_string()],
        vec![
            "evidence".into(),
            match &plan.evidence.store {
                StateStore::Sqlite { path } => format!("sqlite {}", path.display()),
                StateStore::Postgres { url, .. } => format!("postgres {url}"),
            } + &format!(", signing key {}", plan.evidence.signing_key.display()),
        ],
    ];
    if let Some(aws) = &plan.aws {
        let endpoint = aws.endpoint_url.as_deref().map(|url| format!(", endpoint {url}")).unwrap_or_default();
        settings.push(vec!["aws".into(), format!("region {}{endpoint}", aws.region)]);
    }
    if let Some(vault) = &plan.vault {
        settings.push(vec![
            "vault".into(),
            format!("{}, kv mount {}, token from {}", vault.address, vault.kv_mount, vault.token),
        ]);
    }
    out.push_str(&table("", &settings));

    out.push_str(&format!("\ntargets ({})\n", plan.targets.len()));
    let mut rows = vec![vec!["NAME".into(), "ENGINE".into(), "ADDRESS".into(), "ADMIN CREDENTIAL".into()]];
    for (name, target) in &plan.targets {
        let rds = target.rds_instance.as_deref().map(|id| format!(" (rds {id})")).unwrap_or_default();
        let database = target.database.as_deref().map(|db| format!("/{db}")).unwrap_or_default();
        rows.push(vec![
            name.clone(),
            format!("{}{rds}", target.engine.as_str()),
            format!("{}:{}{database}", target.host, target.port),
            target.admin.to_string(),
        ]);
    }
    out.push_str(&table("  ", &rows));

    out.push_str(&format!("\nsecrets ({})\n", plan.secrets.len()));
    let mut rows = vec![["NAME", "KIND", "STORE", "STRATEGY", "CADENCE", "NEXT DUE"].map(String::from).to_vec()];
    for ((name, secret), due) in plan.secrets.iter().zip(secrets_due) {
        let default = if secret.cadence_is_default { " (default)" } else { "" };
        rows.push(vec![
            name.clone(),
            secret.kind.as_str().into(),
            format!("{}:{}", secret.store, secret.path),
            secret.strategy.as_str().into(),
            format!("{}{default}", secret.cadence),
            format!("{} ({})", due.next.as_deref().unwrap_or("-"), due.note),
        ]);
    }
    out.push_str(&table("  ", &rows));

    out.push_str(&format!("\nbackups ({})\n", plan.backups.len()));
    let mut rows = vec![["NAME", "TARGET", "SCHEDULE", "NEXT RUN", "STORE", "KEYS"].map(String::from).to_vec()];
    for ((name, backup), due) in plan.backups.iter().zip(backups_due) {
        rows.push(vec![
            name.clone(),
            backup.target.name.clone(),
            backup.schedule.to_string(),
            due.next.clone().unwrap_or_else(|| "never".into()),
            match &backup.method {
                BackupMethod::Dump { store, .. } => store.to_string(),
                BackupMethod::RdsSnapshot { copy: None, .. } => "rds snapshot".into(),
                BackupMethod::RdsSnapshot { copy: Some(copy), .. } => {
                    format!("rds snapshot, copied to {}", copy.region)
                }
                BackupMethod::PgBackRest(pg) => {
                    let mut types = vec![pg.backup_type.as_str().to_owned()];
                    types.extend(pg.also.iter().map(|(kind, cron)| format!("{} at {cron}", kind.as_str())));
                    format!("pgbackrest stanza {} ({})", pg.repo.stanza, types.join(", "))
                }
            },
            match &backup.method {
                BackupMethod::Dump { key_service: KeyService::AwsKms { key_id }, .. } => format!("aws_kms:{key_id}"),
                BackupMethod::Dump { key_service: KeyService::VaultTransit { key }, .. } => {
                    format!("vault_transit:{key}")
                }
                BackupMethod::Dump { key_service: KeyService::Local { key_file }, .. } => {
                    format!("local:{}", key_file.display())
                }
                BackupMethod::RdsSnapshot { .. } => "rds".into(),
                BackupMethod::PgBackRest(pg) if pg.cipher_pass.is_some() => "pgbackrest cipher_pass".into(),
                BackupMethod::PgBackRest(_) => "pgbackrest configuration".into(),
            },
        ]);
    }
    out.push_str(&table("  ", &rows));

    out.push_str(&format!("\ndrills ({})\n", plan.drills.len()));
    let mut rows = vec![["NAME", "RESTORES", "INTO", "RPO", "RTO", "NEXT RUN"].map(String::from).to_vec()];
    for ((name, drill), due) in plan.drills.iter().zip(drills_due) {
        rows.push(vec![
            name.clone(),
            drill.backup.clone(),
            match &drill.restore {
                crate::config::DrillRestore::Dump { scratch, .. } => scratch.clone(),
                crate::config::DrillRestore::PgBackRest { target, .. } => match target {
                    crate::config::TargetTime::Latest => "a temporary server, to the end of the archive".into(),
                    crate::config::TargetTime::Ago(secs) => {
                        format!(
                            "a temporary server, to {} before the drill",
                            crate::schedule::Duration::from_secs(*secs)
                        )
                    }
                    crate::config::TargetTime::At(at) => format!("a temporary server, to {}", at.to_rfc3339()),
                },
                crate::config::DrillRestore::Rds { instance, source } => match source {
                    crate::config::RdsSource::Snapshot => format!("a new instance from {instance}'s snapshot"),
                    crate::config::RdsSource::PointInTime => {
                        format!("a new instance from {instance} at its latest time")
                    }
                },
            },
            drill.rpo.to_string(),
            drill.rto.to_string(),
            due.next.clone().unwrap_or_else(|| due.note.into()),
        ]);
    }
    out.push_str(&table("  ", &rows));
    out.push('\n');
    out
}
