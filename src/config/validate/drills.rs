//! `[drills.NAME]`: a backup set restored into a scratch target, with RPO and RTO targets.

use std::collections::BTreeMap;

use serde_spanned::Spanned;

use super::super::diagnostic::Diagnostic;
use super::super::raw;
use super::super::{
    Assertion, BackupMethod, BackupSet, Drill, DrillRestore, Engine, RdsSource, SecretKind, SecretSpec, Target,
    TargetTime,
};
use super::*;
use crate::secret::resolve_path;

impl Loader {
    /// A dump drill's `restore_jobs` and `restore_grants`, each PostgreSQL's only.
    fn dump_restore(
        &mut self,
        file: usize,
        raw: &raw::Drill,
        source: Engine,
        field: &dyn Fn(&str) -> String,
    ) -> (u32, bool) {
        let jobs = match (&raw.restore_jobs, source) {
            (None, _) => 1,
            (Some(jobs), Engine::Postgres) if (1..=64).contains(jobs.get_ref()) => *jobs.get_ref(),
            (Some(jobs), Engine::Postgres) => {
                self.error(file, jobs.span(), field("restore_jobs"), "restore_jobs is 1 to 64");
                1
            }
            (Some(jobs), Engine::Mysql) => {
                self.error(
                    file,
                    jobs.span(),
                    field("restore_jobs"),
                    "restore_jobs applies to PostgreSQL (pg_restore -j); a MariaDB dump replays in one session",
                );
                1
            }
        };
        let grants = match (&raw.restore_grants, source) {
            (None, _) => false,
            (Some(grants), Engine::Postgres) => *grants.get_ref(),
            (Some(grants), Engine::Mysql) => {
                self.error(file, grants.span(), field("restore_grants"), "restore_grants applies to PostgreSQL (pg_restore without --no-acl); a MariaDB dump holds no grants");
                false
            }
        };
        (jobs, grants)
    }

    pub(super) fn drill(
        &mut self,
        name: &str,
        def: &Def<raw::Drill>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
        raw_backups: &BTreeMap<String, Def<raw::Backup>>,
        backups: &BTreeMap<String, BackupSet>,
    ) -> Option<Drill> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("drills.{name}.{f}");
        let errors_before = self.errors.len();
        let base = self.folder_of(file);
        let backup_name = raw.backup.get_ref();
        let mut restore = None;
        match (raw_backups.get(backup_name), backups.get(backup_name)) {
            (None, _) => self.missing_reference(file, &raw.backup, field("backup"), "backups", raw_backups.keys()),
            // Refused on its own, and reported there.
            (Some(_), None) => {}
            (Some(backup_def), Some(backup)) => {
                if !matches!(backup.method, BackupMethod::PgBackRest(_)) {
                    for (name, span) in [
                        ("target_time", raw.target_time.as_ref().map(Spanned::span)),
                        ("scratch_dir", raw.scratch_dir.as_ref().map(Spanned::span)),
                        ("postgres_bin", raw.postgres_bin.as_ref().map(Spanned::span)),
                    ] {
                        if let Some(span) = span {
                            self.error(file, span, field(name), format!("{name} applies to drills of pgbackrest sets, which recover a cluster to a point in time"));
                        }
                    }
                }
                match &backup.method {
                    BackupMethod::PgBackRest(_) => {
                        for (name, span) in [
                            ("scratch", raw.scratch.as_ref().map(Spanned::span)),
                            ("source", raw.source.as_ref().map(Spanned::span)),
                            ("restore_jobs", raw.restore_jobs.as_ref().map(Spanned::span)),
                            ("restore_grants", raw.restore_grants.as_ref().map(Spanned::span)),
                        ] {
                            if let Some(span) = span {
                                self.error(file, span, field(name), format!("backup set `{backup_name}` is a pgbackrest set: its drill restores the cluster into a temporary server on scratch_dir, so {name} does not apply"));
                            }
                        }
                        let target = match &raw.target_time {
                            None => Some(TargetTime::Latest),
                            Some(text) => match TargetTime::parse(text.get_ref()) {
                                Ok(target) => Some(target),
                                Err(err) => {
                                    self.error(file, text.span(), field("target_time"), err);
                                    None
                                }
                            },
                        };
                        restore = target.map(|target| DrillRestore::PgBackRest {
                            target,
                            scratch_dir: raw.scratch_dir.as_ref().map(|d| resolve_path(&base, d.get_ref())),
                            postgres_bin: raw.postgres_bin.as_ref().map(|d| resolve_path(&base, d.get_ref())),
                        });
                    }
                    BackupMethod::RdsSnapshot { instance, .. } => {
                        if let Some(scratch) = &raw.scratch {
                            self.error(file, scratch.span(), field("scratch"), format!("backup set `{backup_name}` takes RDS snapshots: its drill restores into a temporary instance, so scratch applies to drills of dump sets only"));
                        }
                        for (name, span) in [
                            ("restore_jobs", raw.restore_jobs.as_ref().map(Spanned::span)),
                            ("restore_grants", raw.restore_grants.as_ref().map(Spanned::span)),
                        ] {
                            if let Some(span) = span {
                                self.error(
                                    file,
                                    span,
                                    field(name),
                                    format!("{name} applies to drills of dump sets; RDS restores the instance itself"),
                                );
                            }
                        }
                        let source = match raw.source.as_ref().map(|s| *s.get_ref()) {
                            None | Some(raw::RdsSource::Snapshot) => RdsSource::Snapshot,
                            Some(raw::RdsSource::PointInTime) => RdsSource::PointInTime,
                        };
                        restore = Some(DrillRestore::Rds { instance: instance.clone(), source });
                    }
                    BackupMethod::Dump { .. } => {
                        if let Some(source) = &raw.source {
                            self.error(file, source.span(), field("source"), "source applies to drills of RDS sets; a dump set's drill restores its newest verified dump");
                        }
                        match &raw.scratch {
                            None => {
                                let location = self.at(file, def.span.clone());
                                self.errors.push(Diagnostic::error(location, field("scratch"), format!("a drill of dump set `{backup_name}` needs `scratch`, the target it restores into")));
                            }
                            Some(scratch) if scratch.get_ref() == backup_def.value.target.get_ref() => {
                                let scratch_name = scratch.get_ref();
                                let location = self.at(file, scratch.span());
                                let target_at = self.at(backup_def.file, backup_def.value.target.span());
                                self.errors.push(
                                Diagnostic::error(location, field("scratch"), format!("`{scratch_name}` is the backup's own target; a drill restores into a scratch database, never the one backed up"))
                                    .with_related(target_at, format!("backup set `{backup_name}` backs up `{scratch_name}` here")),
                            );
                            }
                            Some(scratch) if !raw_targets.contains_key(scratch.get_ref()) => {
                                self.missing_reference(file, scratch, field("scratch"), "targets", raw_targets.keys());
                            }
                            Some(scratch) => {
                                let source = backup.target.value.engine;
                                self.check_target_ref(file, scratch, &field("scratch"), source, raw_targets, targets);
                                let (jobs, grants) = self.dump_restore(file, raw, source, &field);
                                restore = Some(DrillRestore::Dump { scratch: scratch.get_ref().clone(), jobs, grants });
                            }
                        }
                    }
                }
            }
        }
        let schedule = raw.schedule.as_ref().map(|s| self.cron(file, s, field("schedule")));
        let runbook = raw.runbook.as_ref().map(|r| {
            let path = resolve_path(&base, r.get_ref());
            if !path.is_file() {
                self.error(
                    file,
                    r.span(),
                    field("runbook"),
                    format!("runbook {} does not exist (paths are relative to the schedule file)", path.display()),
                );
            }
            path
        });
        // A drill measures RPO from the newest backup: backups further apart than the target
        // fail it whenever it runs late in a gap. Said now, not at drill time.
        let rpo = raw.rpo.as_ref().map_or(DEFAULT_RPO, |r| *r.get_ref());
        // A pgbackrest set recovers from its WAL archive, not from its newest backup alone: its
        // RPO is the archive's (`vigil status` measures it), not the schedule's.
        if let Some(backup) = backups.get(backup_name)
            && !matches!(backup.method, BackupMethod::PgBackRest(_))
            && let Some(gap) = backup.schedule.longest_gap(SCHEDULE_REFERENCE)
            && gap.num_seconds() > i64::try_from(rpo.as_secs()).unwrap_or(i64::MAX)
        {
            let span = raw.rpo.as_ref().map_or(def.span.clone(), Spanned::span);
            let gap = crate::schedule::Duration::from_secs(gap.num_seconds().unsigned_abs());
            self.warnings.push(
                Diagnostic::warning(
                    self.at(file, span),
                    field("rpo"),
                    format!(
                        "backup set `{backup_name}` runs on `{}`, up to {gap} apart: longer than this drill's RPO target of {rpo}, so the drill fails its RPO whenever the newest backup is older than that",
                        backup.schedule.as_str()
                    ),
                )
                .with_help("back up more often than the RPO target, or raise the target to what the schedule gives")
                .advisory(),
            );
        }
        let mut assertions = Vec::new();
        for (i, assertion) in raw.assertions.iter().flatten().enumerate() {
            let assertion = assertion.get_ref();
            if assertion.sql.get_ref().trim().is_empty() {
                self.error(file, assertion.sql.span(), field(&format!("assertions[{i}].sql")), "sql is empty");
            }
            assertions.push(Assertion { sql: assertion.sql.get_ref().clone(), expect: assertion.expect.clone() });
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Drill {
            backup: backup_name.clone(),
            restore: restore?,
            schedule: schedule.flatten(),
            rpo,
            rto: raw.rto.as_ref().map_or(DEFAULT_RTO, |r| *r.get_ref()),
            runbook,
            assertions,
            check_credentials: Vec::new(),
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// A drill's `check_credentials`: each a database-password secret of the scratch target's
    /// engine. `None` after an error.
    pub(super) fn drill_credentials(
        &mut self,
        name: &str,
        def: &Def<raw::Drill>,
        raw_secrets: &BTreeMap<String, Def<raw::Secret>>,
        secrets: &BTreeMap<String, SecretSpec>,
        scratch: Option<&Target>,
    ) -> Option<Vec<String>> {
        let file = def.file;
        let field = format!("drills.{name}.check_credentials");
        let errors_before = self.errors.len();
        let mut names = Vec::new();
        for reference in def.value.check_credentials.iter().flatten() {
            let secret = reference.get_ref();
            if !raw_secrets.contains_key(secret) {
                self.missing_reference(file, reference, field.clone(), "secrets", raw_secrets.keys());
                continue;
            }
            // A secret refused on its own was reported there.
            let Some(spec) = secrets.get(secret) else { continue };
            let engine = match &spec.kind {
                SecretKind::PostgresPassword(_) => Some(Engine::Postgres),
                SecretKind::MysqlPassword(_) => Some(Engine::Mysql),
                SecretKind::ApiKey(_) | SecretKind::JwtSigningKey(_) => None,
            };
            if engine.is_none() || engine != scratch.map(|t| t.engine) {
                self.error(
                    file,
                    reference.span(),
                    field.clone(),
                    format!(
                        "`{secret}` is a {} secret; check_credentials names database passwords of the scratch target's engine, whose users log in to the restored database",
                        spec.kind.as_str()
                    ),
                );
                continue;
            }
            names.push(secret.clone());
        }
        (self.errors.len() == errors_before).then_some(names)
    }
}
