//! `[backups.NAME]`: dumps to an object store under a key service, or RDS snapshots.

use std::collections::BTreeMap;

use serde_spanned::Spanned;

use super::super::diagnostic::Diagnostic;
use super::super::raw;
use super::super::{BackupMethod, BackupSet, Named, PgBackRestSet, RdsCopy, Retention, Target};
use super::*;
use crate::kms::Settings as KeyService;
use crate::objects::{ObjectLock, Settings as ObjectStore};
use crate::secret::{StoreKind, resolve_path};

impl Loader {
    pub(super) fn backup(
        &mut self,
        name: &str,
        def: &Def<raw::Backup>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
    ) -> Option<BackupSet> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let errors_before = self.errors.len();
        if !raw_targets.contains_key(raw.target.get_ref()) {
            self.missing_reference(file, &raw.target, field("target"), "targets", raw_targets.keys());
        }
        let schedule = self.cron(file, &raw.schedule, field("schedule"));
        let target_kind = raw_targets.get(raw.target.get_ref()).map(|t| *t.value.kind.get_ref());
        let is_rds = target_kind == Some(raw::TargetKind::Rds);
        let method = match raw.method.as_ref().map(|m| *m.get_ref()) {
            Some(raw::BackupMethodKind::Pgbackrest) => self.pgbackrest_method(name, def, target_kind),
            Some(raw::BackupMethodKind::RdsSnapshot) | None if is_rds => self.rds_method(name, def),
            Some(raw::BackupMethodKind::Dump) | None => self.dump_method(name, def),
            Some(raw::BackupMethodKind::RdsSnapshot) => {
                let method = raw.method.as_ref().map_or(def.span.clone(), Spanned::span);
                self.error(
                    file,
                    method,
                    field("method"),
                    "rds_snapshot backs up targets of kind rds; this set's target is not one",
                );
                None
            }
        };
        if !matches!(raw.method.as_ref().map(|m| *m.get_ref()), Some(raw::BackupMethodKind::Pgbackrest)) {
            self.refuse_pgbackrest_fields(name, def);
        }
        let retention = match &raw.retention {
            None => Retention::default(),
            Some(r) => {
                let defaults = Retention::default();
                let given = r.get_ref();
                let retention = Retention {
                    keep_last: given.keep_last.unwrap_or(defaults.keep_last),
                    daily: given.daily.unwrap_or(defaults.daily),
                    weekly: given.weekly.unwrap_or(defaults.weekly),
                    monthly: given.monthly.unwrap_or(defaults.monthly),
                };
                if retention.keep_last == 0 {
                    self.error(
                        file,
                        r.span(),
                        field("retention.keep_last"),
                        "keep_last must be at least 1: the newest backup is always kept",
                    );
                }
                retention
            }
        };
        let schedule = schedule?;
        if self.errors.len() > errors_before {
            return None;
        }
        // A target refused on its own (and reported there) leaves the set unresolved.
        let target_name = raw.target.get_ref().clone();
        let target = targets.get(&target_name)?.clone();
        let method = match method? {
            // An rds target names its instance (the target's own check refuses one without).
            MethodOf::Rds { copy } => BackupMethod::RdsSnapshot { instance: target.rds_instance.clone()?, copy },
            MethodOf::Dump(method) => method,
        };
        Some(BackupSet {
            target: Named { name: target_name, value: target },
            schedule,
            method,
            retention,
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// Fields that apply to `method = "pgbackrest"` alone, refused on another set.
    fn refuse_pgbackrest_fields(&mut self, name: &str, def: &Def<raw::Backup>) {
        let raw = &def.value;
        let pgbackrest_only = [
            ("stanza", raw.stanza.as_ref().map(Spanned::span)),
            ("config_file", raw.config_file.as_ref().map(Spanned::span)),
            ("pgbackrest_bin", raw.pgbackrest_bin.as_ref().map(Spanned::span)),
            ("cipher_pass", raw.cipher_pass.as_ref().map(Spanned::span)),
            ("type", raw.backup_type.as_ref().map(Spanned::span)),
            ("differential", raw.differential.as_ref().map(Spanned::span)),
            ("incremental", raw.incremental.as_ref().map(Spanned::span)),
            ("heartbeat", raw.heartbeat.as_ref().map(Spanned::span)),
        ];
        for (field, span) in pgbackrest_only {
            if let Some(span) = span {
                self.error(
                    def.file,
                    span,
                    format!("backups.{name}.{field}"),
                    format!("{field} applies to method = \"pgbackrest\" sets only"),
                );
            }
        }
    }

    /// A PostgreSQL target's set backed up by pgBackRest: a stanza, its configuration file, the
    /// passphrase reference, and a backup type per schedule.
    fn pgbackrest_method(
        &mut self,
        name: &str,
        def: &Def<raw::Backup>,
        target_kind: Option<raw::TargetKind>,
    ) -> Option<MethodOf> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let base = self.folder_of(file);
        if let Some(kind) = target_kind
            && kind != raw::TargetKind::Postgres
        {
            self.error(
                file,
                raw.target.span(),
                field("target"),
                "method = \"pgbackrest\" backs up PostgreSQL clusters; this target is not a postgres target",
            );
        }
        let dump_or_rds_only = [
            ("store", raw.store.as_ref().map(Spanned::span)),
            ("key_service", raw.key_service.as_ref().map(Spanned::span)),
            ("key_id", raw.key_id.as_ref().map(Spanned::span)),
            ("key_file", raw.key_file.as_ref().map(Spanned::span)),
            ("bucket", raw.bucket.as_ref().map(Spanned::span)),
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("object_lock", raw.object_lock.as_ref().map(Spanned::span)),
            ("sse_kms_key_id", raw.sse_kms_key_id.as_ref().map(Spanned::span)),
            ("copy_to_region", raw.copy_to_region.as_ref().map(Spanned::span)),
            ("copy_kms_key_id", raw.copy_kms_key_id.as_ref().map(Spanned::span)),
            ("retention", raw.retention.as_ref().map(Spanned::span)),
        ];
        for (name, span) in dump_or_rds_only {
            if let Some(span) = span {
                self.error(
                    file,
                    span,
                    field(name),
                    "pgBackRest keeps, encrypts and expires its own repository (repo1-cipher-type, repo1-retention-full in its configuration file); store, key and retention settings apply to dump sets",
                );
            }
        }
        let Some(stanza) = &raw.stanza else {
            self.error(
                file,
                def.span.clone(),
                field("stanza"),
                "a pgbackrest set needs `stanza`, the pgBackRest stanza of the target's cluster",
            );
            return None;
        };
        let config = raw.config_file.as_ref().map_or_else(
            || std::path::PathBuf::from("/etc/pgbackrest/pgbackrest.conf"),
            |c| resolve_path(&base, c.get_ref()),
        );
        if !config.is_file() {
            let span = raw.config_file.as_ref().map_or(def.span.clone(), Spanned::span);
            self.warnings.push(Diagnostic::warning(
                self.at(file, span),
                field("config_file"),
                format!(
                    "pgBackRest configuration file {} does not exist here (the daemon's machine may differ)",
                    config.display()
                ),
            ));
        }
        if let Some(pass) = &raw.cipher_pass {
            self.check_ref(pass, file, field("cipher_pass"));
        }
        let mut also = Vec::new();
        for (kind, schedule, what) in [
            (crate::pgbackrest::BackupType::Diff, &raw.differential, "differential"),
            (crate::pgbackrest::BackupType::Incr, &raw.incremental, "incremental"),
        ] {
            if let Some(schedule) = schedule {
                also.push((kind, self.cron(file, schedule, field(what))?));
            }
        }
        if let Some(heartbeat) = &raw.heartbeat
            && heartbeat.get_ref().as_secs() < 1
        {
            self.error(file, heartbeat.span(), field("heartbeat"), "heartbeat must be at least 1s");
        }
        Some(MethodOf::Dump(BackupMethod::PgBackRest(PgBackRestSet {
            repo: crate::pgbackrest::Settings {
                stanza: stanza.get_ref().clone(),
                config,
                binary: raw
                    .pgbackrest_bin
                    .as_ref()
                    .map_or_else(|| std::path::PathBuf::from("pgbackrest"), |b| resolve_path(&base, b.get_ref())),
            },
            cipher_pass: raw.cipher_pass.as_ref().map(|c| c.get_ref().clone().rebase(&base)),
            backup_type: raw.backup_type.as_ref().map_or(crate::pgbackrest::BackupType::Full, |t| *t.get_ref()),
            also,
            heartbeat: raw.heartbeat.as_ref().map(|h| *h.get_ref()),
        })))
    }

    /// An RDS target's set: snapshots, optionally copied to another region.
    fn rds_method(&mut self, name: &str, def: &Def<raw::Backup>) -> Option<MethodOf> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let dump_only = [
            ("store", raw.store.as_ref().map(Spanned::span)),
            ("key_service", raw.key_service.as_ref().map(Spanned::span)),
            ("bucket", raw.bucket.as_ref().map(Spanned::span)),
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("object_lock", raw.object_lock.as_ref().map(Spanned::span)),
            ("sse_kms_key_id", raw.sse_kms_key_id.as_ref().map(Spanned::span)),
        ];
        for (name, span) in dump_only {
            if let Some(span) = span {
                self.error(
                    file,
                    span,
                    field(name),
                    "an rds target is backed up by DB snapshot; store and key settings apply to dump backups (for a logical dump of an RDS database, define a postgres or mysql target at its endpoint)",
                );
            }
        }
        if self.aws_at.is_none() {
            let location = self.at(file, raw.target.span());
            self.require_store(StoreKind::AwsSecretsManager, location, field("target"));
        }
        let copy = match (&raw.copy_to_region, &raw.copy_kms_key_id) {
            (Some(region), kms) => Some(RdsCopy {
                region: region.get_ref().clone(),
                kms_key_id: kms.as_ref().map(|k| k.get_ref().clone()),
            }),
            (None, Some(kms)) => {
                self.error(file, kms.span(), field("copy_kms_key_id"), "copy_kms_key_id needs copy_to_region");
                None
            }
            (None, None) => None,
        };
        Some(MethodOf::Rds { copy })
    }

    /// A postgres or mysql target's set: dumps to a store, under a key service.
    fn dump_method(&mut self, name: &str, def: &Def<raw::Backup>) -> Option<MethodOf> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let base = self.folder_of(file);
        for (name, value) in [("copy_to_region", &raw.copy_to_region), ("copy_kms_key_id", &raw.copy_kms_key_id)] {
            if let Some(value) = value {
                self.error(file, value.span(), field(name), "snapshot copies apply to rds targets only");
            }
        }
        let Some(store_kind) = &raw.store else {
            self.error(
                file,
                def.span.clone(),
                field("store"),
                "a backup set needs store = \"s3\" (with bucket) or \"local\" (with path)",
            );
            return None;
        };
        let Some(key_service) = &raw.key_service else {
            self.error(
                file,
                def.span.clone(),
                field("key_service"),
                "a backup set needs key_service = \"aws_kms\", \"vault_transit\" (with key_id) or \"local\" (with key_file)",
            );
            return None;
        };
        let store = match store_kind.get_ref() {
            raw::ObjectStoreKind::S3 => {
                if let Some(path) = &raw.path {
                    self.error(
                        file,
                        path.span(),
                        field("path"),
                        "path applies to store = \"local\"; S3 backups use bucket and prefix",
                    );
                }
                if self.aws_at.is_none() {
                    let location = self.at(file, store_kind.span());
                    self.require_store(StoreKind::AwsSecretsManager, location, field("store"));
                }
                let object_lock = raw.object_lock.as_ref().map(|lock| ObjectLock {
                    mode: match lock.get_ref().mode {
                        raw::ObjectLockMode::Governance => "GOVERNANCE".to_owned(),
                        raw::ObjectLockMode::Compliance => "COMPLIANCE".to_owned(),
                    },
                    retain: *lock.get_ref().retain.get_ref(),
                });
                match &raw.bucket {
                    Some(bucket) => ObjectStore::S3 {
                        bucket: bucket.get_ref().clone(),
                        prefix: raw.prefix.clone().unwrap_or_default(),
                        sse_kms_key_id: raw.sse_kms_key_id.as_ref().map(|k| k.get_ref().clone()),
                        object_lock,
                    },
                    None => {
                        self.error(file, store_kind.span(), field("bucket"), "an s3 backup set needs `bucket`");
                        return None;
                    }
                }
            }
            raw::ObjectStoreKind::Local => {
                if let Some(bucket) = &raw.bucket {
                    self.error(file, bucket.span(), field("bucket"), "bucket applies to store = \"s3\"");
                }
                for (name, span) in [
                    ("object_lock", raw.object_lock.as_ref().map(Spanned::span)),
                    ("sse_kms_key_id", raw.sse_kms_key_id.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.error(file, span, field(name), "applies to store = \"s3\" only");
                    }
                }
                match &raw.path {
                    Some(path) => ObjectStore::Local { path: resolve_path(&base, path.get_ref()) },
                    None => {
                        self.error(
                            file,
                            store_kind.span(),
                            field("path"),
                            "a local backup set needs `path`, the folder backups are written to",
                        );
                        return None;
                    }
                }
            }
        };
        let key_id = raw.key_id.as_ref().map(|k| k.get_ref().clone());
        let key_service = match (key_service.get_ref(), key_id, &raw.key_file) {
            (raw::KeyServiceKind::AwsKms, Some(key_id), None) => {
                if self.aws_at.is_none() {
                    let location = self.at(file, key_service.span());
                    self.require_store(StoreKind::AwsSecretsManager, location, field("key_service"));
                }
                KeyService::AwsKms { key_id }
            }
            (raw::KeyServiceKind::VaultTransit, Some(key), None) => {
                let location = self.at(file, key_service.span());
                self.require_store(StoreKind::VaultKv, location, field("key_service"));
                KeyService::VaultTransit { key }
            }
            (raw::KeyServiceKind::Local, None, Some(key_file)) => {
                KeyService::Local { key_file: resolve_path(&base, key_file.get_ref()) }
            }
            (raw::KeyServiceKind::Local, _, _) => {
                self.error(
                    file,
                    key_service.span(),
                    field("key_file"),
                    "key_service = \"local\" takes key_file (and no key_id)",
                );
                return None;
            }
            (_, _, _) => {
                self.error(
                    file,
                    key_service.span(),
                    field("key_id"),
                    "key_service = \"aws_kms\" or \"vault_transit\" takes key_id (and no key_file)",
                );
                return None;
            }
        };
        Some(MethodOf::Dump(BackupMethod::Dump { store, key_service }))
    }
}

/// A backup set's method as its own fields give it, before its target is resolved.
enum MethodOf {
    /// A dump or a pgBackRest set, complete.
    Dump(BackupMethod),
    /// An RDS snapshot, whose instance comes from the target.
    Rds { copy: Option<RdsCopy> },
}
