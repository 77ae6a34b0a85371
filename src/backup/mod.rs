//! Backups: logical dumps streamed through zstd and AES-256-GCM into an object store and read
//! back before they count, and RDS snapshots.
//!
//! A dump backup is a saga of two steps, each recorded before it acts: `write` (dump, compress,
//! seal, upload, write the manifest beside) and `verify` (read the object back, authenticate
//! every segment, decompress, compare both SHA-256s with the manifest, and let the engine's
//! own tool read the dump). Only a verified backup counts for retention and drills. A backup
//! that fails either step is removed, and the failure is recorded.

pub mod catalog;
pub mod format;
pub mod manifest;
pub mod physical;
pub mod pipeline;
mod rds;
pub mod retention;

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{BackupMethod, BackupSet};
use crate::context::Ctx;
use crate::engines::dump::{self, DumpError};
use crate::engines::{Endpoint, Engine};
use crate::evidence::{EvidenceError, Kind, NewRecord, Outcome};
use crate::kms::{self, KeyError, KeyService};
use crate::objects::{self, ObjectError, ObjectStore};
use crate::saga::{self, Ended, Executor, SagaDef, SagaError, SagaRow, StepError, Subject};
use crate::state::StateError;
use crate::stores::ReferenceError;
use catalog::{Entry, Status};
use format::DEFAULT_SEGMENT_SIZE;
use manifest::{Globals, Manifest};
use pipeline::{OpenError, StreamFacts};

use crate::rds::RdsError;

/// Why a backup command failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No backup set of that name.
    #[error("no backup set named {0}; `vigil config check` lists them")]
    UnknownSet(String),
    /// The set takes RDS snapshots, which RDS keeps: there is no object to read back or fetch.
    #[error(
        "backup set {0} takes RDS snapshots; restore one with RDS (`aws rds restore-db-instance-from-db-snapshot`), not through vigil's object store"
    )]
    NotADump(String),
    /// No backup of that id in the catalog.
    #[error("no backup {0} in the catalog; `vigil backup list` shows them")]
    UnknownBackup(String),
    /// The backup's set is no longer configured, so its store and key service are unknown.
    #[error(
        "backup {id} belongs to set {set}, which is no longer configured; restore its [backups.{set}] section to read it"
    )]
    SetGone {
        /// The backup.
        id: String,
        /// Its set.
        set: String,
    },
    /// The backup is not in a state the command works on.
    #[error("backup {id} is {status}; {hint}")]
    NotReadable {
        /// The backup.
        id: String,
        /// Its state.
        status: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// A check failed: the backup is not the one its manifest describes.
    #[error("backup {id} failed verification: {check}")]
    Check {
        /// The backup.
        id: String,
        /// Which check failed, and how.
        check: String,
    },
    /// The admin credential could not be read.
    #[error("cannot read the admin credential of {target}: {why}")]
    Admin {
        /// The target.
        target: String,
        /// Why.
        why: String,
    },
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] ObjectError),
    /// The key service failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// RDS failed.
    #[error(transparent)]
    Rds(#[from] RdsError),
    /// The saga could not be recorded.
    #[error(transparent)]
    Saga(#[from] SagaError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The evidence could not be written.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// Writing the fetched dump failed.
    #[error("cannot write the dump: {0}")]
    Output(std::io::Error),
    /// pgBackRest failed.
    #[error(transparent)]
    PgBackRest(#[from] crate::pgbackrest::PgBackRestError),
    /// The set is not a pgbackrest set.
    #[error(
        "backup set {0} is not a pgbackrest set; heartbeats and archive health belong to sets of method = \"pgbackrest\""
    )]
    NotPhysical(String),
    /// The source database failed.
    #[error(transparent)]
    Engine(crate::engines::EngineError),
}

/// Reports bytes streamed, for a progress display.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How a backup run ended.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The set.
    pub set: String,
    /// The backup id.
    pub backup_id: String,
    /// `dump` or `rds_snapshot`.
    pub method: &'static str,
    /// Where it is.
    pub location: String,
    /// Bytes stored (dumps).
    pub bytes: Option<u64>,
    /// Whether it is verified (dumps) or available (snapshots).
    pub verified: bool,
    /// How the saga ended.
    pub ended: Ended,
}

/// The result of reading a backup back.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backup.
    pub backup_id: String,
    /// Its set.
    pub set: String,
    /// Sizes and hashes read.
    pub stream: StreamFacts,
    /// What the engine's tool found: `pg_restore --list` entries, or a complete MariaDB dump.
    pub restore_check: String,
}

/// What prune did, or would do, to one set.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The set.
    pub set: String,
    /// Verified backups kept.
    pub kept: Vec<String>,
    /// Backups deleted (or, in a dry run, to be deleted).
    pub deleted: Vec<String>,
    /// Whether nothing was deleted.
    pub dry_run: bool,
}

/// Everything a backup needs, for one run of the command or the daemon.
pub struct Backups<'a> {
    /// What it runs with.
    pub ctx: Ctx<'a>,
    /// Called with bytes dumped, as they stream.
    pub progress: Option<Progress>,
}

impl saga::Resume for Backups<'_> {
    fn resume(&self, saga: SagaRow) -> futures_util::future::BoxFuture<'_, Result<Ended, String>> {
        use futures_util::FutureExt as _;
        async move {
            match self.resume_one(saga).await {
                Ok(Some(report)) => Ok(report.ended),
                Ok(None) => Err("not a backup".to_owned()),
                Err(err) => Err(err.to_string()),
            }
        }
        .boxed()
    }
}

/// The dump saga's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpStep {
    /// Dump, compress, seal and upload; write the manifest beside.
    Write,
    /// Read back and check everything.
    Verify,
}

impl saga::Step for DumpStep {
    const ALL: &'static [Self] = &[Self::Write, Self::Verify];

    fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Verify => "verify",
        }
    }
}

/// One sealed object of a backup: where it is, its wrapped key, and the id it is sealed under.
struct Sealed<'a> {
    object: &'a str,
    key: &'a crate::kms::WrappedKey,
    id: &'a str,
}

/// A set's store and key service, connected.
struct Connected {
    store: Box<dyn ObjectStore>,
    keys: Box<dyn KeyService>,
}

impl<'a> Backups<'a> {
    /// Backups running with `ctx`.
    pub fn new(ctx: Ctx<'a>) -> Self {
        Self { ctx, progress: None }
    }

    fn executor(&self) -> Executor<'_> {
        self.ctx.executor()
    }

    fn set(&self, name: &str) -> Result<&'a BackupSet, BackupError> {
        self.ctx.plan.backups.get(name).ok_or_else(|| BackupError::UnknownSet(name.to_owned()))
    }

    fn now(&self) -> String {
        self.ctx.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    async fn connect(&self, name: &str, set: &BackupSet) -> Result<Connected, BackupError> {
        let BackupMethod::Dump { store, key_service } = &set.method else {
            return Err(BackupError::NotADump(name.to_owned()));
        };
        Ok(Connected {
            store: objects::connect(store, self.ctx.plan.aws.as_ref()).await?,
            keys: kms::connect(key_service, self.ctx.plan.aws.as_ref(), self.ctx.plan.vault.as_ref()).await?,
        })
    }

    /// Backs up set `name` now: a dump that is then verified, or an RDS snapshot.
    pub async fn run(&self, name: &str) -> Result<BackupReport, BackupError> {
        self.run_typed(name, None).await
    }

    /// Backs up set `name` now; a pgbackrest set takes a backup of `kind` (the set's `type`
    /// when `None`), which other methods refuse.
    pub async fn run_typed(
        &self,
        name: &str,
        kind: Option<crate::pgbackrest::BackupType>,
    ) -> Result<BackupReport, BackupError> {
        self.run_as(name, kind, &crate::clock::sortable_id(self.ctx.clock)).await
    }

    /// Backs up set `name` as backup (and saga) `id`: the daemon's queued work names the saga
    /// before it starts, so that whoever finds the work item after a crash finds its saga.
    pub async fn run_as(
        &self,
        name: &str,
        kind: Option<crate::pgbackrest::BackupType>,
        id: &str,
    ) -> Result<BackupReport, BackupError> {
        let set = self.set(name)?;
        if kind.is_some() && !matches!(set.method, BackupMethod::PgBackRest(_)) {
            return Err(BackupError::NotPhysical(name.to_owned()));
        }
        let id = id.to_owned();
        match &set.method {
            BackupMethod::Dump { .. } => {
                let connected = self.connect(name, set).await?;
                let def = DumpSaga { backups: self, name, set, connected: &connected };
                let data =
                    DumpData { set: name.to_owned(), backup_id: id.clone(), object: None, manifest_sha256: None };
                let (saga, ended) = self.executor().start(&def, &id, &Subject::Backup(name.to_owned()), data).await?;
                self.dump_report(name, &saga, ended, &connected).await
            }
            BackupMethod::RdsSnapshot { instance, copy } => {
                rds::run(self, name, set, &id, instance, copy.as_ref()).await
            }
            BackupMethod::PgBackRest(pg) => physical::run(self, name, set, pg, &id, kind).await,
        }
    }

    async fn dump_report(
        &self,
        name: &str,
        saga: &SagaRow,
        ended: Ended,
        connected: &Connected,
    ) -> Result<BackupReport, BackupError> {
        let data: DumpData = saga.decode()?;
        let id = data.backup_id;
        let entry = catalog::get(self.ctx.db, &id).await?;
        let location = match (&data.object, &entry) {
            (Some(object), _) => connected.store.location(object),
            (None, Some(entry)) => entry.location.clone(),
            (None, None) => String::new(),
        };
        Ok(BackupReport {
            set: name.to_owned(),
            location,
            bytes: entry.as_ref().and_then(|e| e.bytes),
            verified: entry.is_some_and(|e| e.status == Status::Verified),
            backup_id: id,
            method: "dump",
            ended,
        })
    }

    /// Finishes or rolls back every backup a crash left in flight.
    pub async fn resume(&self) -> Result<Vec<BackupReport>, BackupError> {
        let mut reports = Vec::new();
        for saga in saga::in_flight(self.ctx.db).await? {
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            if let Some(report) = self.resume_one(saga).await? {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Resumes `saga` if it is a backup (`None` for another kind): for the daemon's queued work
    /// too, whose backup a crash left in flight.
    pub async fn resume_one(&self, saga: SagaRow) -> Result<Option<BackupReport>, BackupError> {
        let Subject::Backup(name) = saga.subject.clone() else { return Ok(None) };
        Ok(Some(match saga.kind.as_str() {
            DumpSaga::KIND_NAME => {
                let set = self.set(&name)?;
                let connected = self.connect(&name, set).await?;
                let def = DumpSaga { backups: self, name: &name, set, connected: &connected };
                tracing::info!(set = %name, backup = %saga.id, step = %saga.step, "resuming a backup left in flight");
                let (saga, ended) = self.executor().run(&def, saga).await?;
                self.dump_report(&name, &saga, ended, &connected).await?
            }
            rds::KIND_NAME => rds::resume(self, saga).await?,
            physical::KIND_NAME => physical::resume(self, saga).await?,
            _ => return Ok(None),
        }))
    }

    /// Registers the backup kinds with `registry`, resumed by these backups.
    pub fn register<'r>(&'r self, registry: &mut saga::Registry<'r>) {
        for kind in [DumpSaga::KIND_NAME, rds::KIND_NAME, physical::KIND_NAME] {
            registry.register(kind, self);
        }
    }

    /// The catalog entry of `id`, with its set's store and key service.
    async fn readable(&self, id: &str) -> Result<(Entry, Manifest, Connected), BackupError> {
        let (entry, manifest) = self.recorded(id).await?;
        let set = self
            .ctx
            .plan
            .backups
            .get(&entry.set)
            .ok_or_else(|| BackupError::SetGone { id: id.to_owned(), set: entry.set.clone() })?;
        let connected = self.connect(&entry.set, set).await?;
        Ok((entry, manifest, connected))
    }

    /// Backup `id`'s manifest, as recorded in evidence (checked against its recorded hash): what
    /// a restore of it must show.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        Ok(self.recorded(id).await?.1)
    }

    /// The catalog entry of `id` and its manifest, checked against the manifest's recorded hash.
    async fn recorded(&self, id: &str) -> Result<(Entry, Manifest), BackupError> {
        let entry = catalog::get(self.ctx.db, id).await?.ok_or_else(|| BackupError::UnknownBackup(id.to_owned()))?;
        if entry.method != "dump" {
            return Err(BackupError::NotReadable {
                id: id.to_owned(),
                status: "an RDS snapshot",
                hint: "restore it with RDS (RestoreDBInstanceFromDBSnapshot)",
            });
        }
        let (Some(text), Some(sha)) = (&entry.manifest, &entry.manifest_sha256) else {
            return Err(BackupError::NotReadable {
                id: id.to_owned(),
                status: entry.status.as_str(),
                hint: "it was never completely written",
            });
        };
        if matches!(entry.status, Status::Pruned | Status::Failed) {
            return Err(BackupError::NotReadable {
                id: id.to_owned(),
                status: entry.status.as_str(),
                hint: "its object has been deleted",
            });
        }
        let check = |check: String| BackupError::Check { id: id.to_owned(), check };
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|err| check(format!("manifest check failed: the catalog's manifest does not parse: {err}")))?;
        if manifest.sha256() != *sha {
            return Err(check(
                "manifest check failed: the catalog's manifest does not match its recorded SHA-256".into(),
            ));
        }
        Ok((entry, manifest))
    }

    /// Reads backup `id` back and checks it: the manifest beside it, every segment, both
    /// SHA-256s, and the engine's own tool reading the dump. Records the outcome in evidence
    /// and the catalog.
    pub async fn verify(&self, id: &str) -> Result<VerifyReport, BackupError> {
        let (entry, manifest, connected) = self.readable(id).await?;
        self.verify_with(&entry, &manifest, &connected).await
    }

    /// [`Backups::verify`] with the set's store and key service already connected.
    async fn verify_with(
        &self,
        entry: &Entry,
        manifest: &Manifest,
        connected: &Connected,
    ) -> Result<VerifyReport, BackupError> {
        let id = entry.id.as_str();
        let result = self.check(manifest, connected).await;
        let (outcome, details) = match &result {
            Ok(report) => (
                Outcome::Succeeded,
                serde_json::json!({ "backup_id": id, "stream": report.stream, "restore_check": report.restore_check }),
            ),
            Err(err) => (Outcome::Failed, serde_json::json!({ "backup_id": id, "error": err.to_string() })),
        };
        self.ctx
            .ledger
            .append(NewRecord { kind: Kind::BackupVerified.into(), subject: entry.set.clone(), outcome, details })
            .await?;
        match &result {
            Ok(_) => catalog::set_status(self.ctx.db, id, Status::Verified, None, &self.now()).await?,
            Err(BackupError::Check { check, .. }) => {
                // A backup that no longer verifies is written, not verified: retention keeps
                // it out of the count and drills do not pick it.
                catalog::set_status(self.ctx.db, id, Status::Written, Some(check), &self.now()).await?;
            }
            Err(_) => {}
        }
        result
    }

    /// The checks, without recording them.
    async fn check(&self, manifest: &Manifest, connected: &Connected) -> Result<VerifyReport, BackupError> {
        let id = manifest.backup_id.clone();
        let failed = |check: String| BackupError::Check { id: id.clone(), check };
        let beside = connected.store.get(&manifest_key(&manifest.object)).await?;
        let stored: Manifest = serde_json::from_slice(&beside).map_err(|err| {
            failed(format!("manifest check failed: the manifest beside the backup does not parse: {err}"))
        })?;
        if stored != *manifest {
            return Err(failed(format!(
                "manifest check failed: the manifest at {} differs from the one recorded in evidence",
                connected.store.location(&manifest_key(&manifest.object))
            )));
        }
        let engine = engine_of(manifest);
        let (sink, restore_check) = dump::Reader::start(engine).map_err(&failed)?;
        let stream = match self.open(manifest, connected, sink).await {
            Ok(stream) => stream,
            Err(err) => {
                restore_check.abandon();
                return Err(err);
            }
        };
        if let Err(err) = compare(&id, manifest, &stream) {
            restore_check.abandon();
            return Err(err);
        }
        if let Some(globals) = &manifest.globals
            && let Err(err) = self.open_globals(&id, globals, connected, Box::new(std::io::sink())).await
        {
            restore_check.abandon();
            return Err(err);
        }
        // pg_restore is waited for on a blocking thread, not on the runtime's.
        let restore_check = tokio::task::spawn_blocking(move || restore_check.finish())
            .await
            .map_err(|err| failed(format!("the restore check stopped unexpectedly: {err}")))?
            .map_err(&failed)?;
        Ok(VerifyReport { backup_id: id.clone(), set: manifest.set.clone(), stream, restore_check })
    }

    /// Streams backup `id`'s object through the opener into `sink`. A format or decompression
    /// failure is a [`BackupError::Check`] naming the check.
    async fn open(
        &self,
        manifest: &Manifest,
        connected: &Connected,
        sink: Box<dyn Write + Send>,
    ) -> Result<StreamFacts, BackupError> {
        let sealed = Sealed { object: &manifest.object, key: &manifest.key, id: &manifest.backup_id };
        self.open_sealed(&manifest.backup_id, sealed, connected, sink).await
    }

    /// Streams one sealed object of backup `backup_id` (its dump, or its globals) into `sink`.
    async fn open_sealed(
        &self,
        backup_id: &str,
        sealed: Sealed<'_>,
        connected: &Connected,
        sink: Box<dyn Write + Send>,
    ) -> Result<StreamFacts, BackupError> {
        let key = connected.keys.unwrap(sealed.key, sealed.id).await?;
        let reader = tokio_util::io::SyncIoBridge::new(connected.store.open(sealed.object).await?);
        let id = sealed.id.to_owned();
        tokio::task::spawn_blocking(move || pipeline::open(reader, &key, &id, sink))
            .await
            .map_err(|err| BackupError::Output(std::io::Error::other(err)))?
            .map_err(|err| match err {
                OpenError::Sink(err) => BackupError::Output(err),
                other => BackupError::Check { id: backup_id.to_owned(), check: other.to_string() },
            })
    }

    /// Streams backup `id`'s globals (PostgreSQL roles, memberships and settings) to `sink`,
    /// every byte authenticated and the SHA-256 compared with the manifest's.
    pub async fn fetch_globals(&self, id: &str, sink: Box<dyn Write + Send>) -> Result<StreamFacts, BackupError> {
        let (entry, manifest, connected) = self.readable(id).await?;
        let globals = manifest.globals.as_ref().ok_or_else(|| BackupError::NotReadable {
            id: id.to_owned(),
            status: "without globals",
            hint: "only PostgreSQL backups made by this vigil or later carry them",
        })?;
        let stream = self.open_globals(id, globals, &connected, sink).await?;
        self.fetched(
            entry.set,
            serde_json::json!({ "backup_id": id, "globals": true, "plaintext_bytes": stream.plaintext_bytes }),
        )
        .await?;
        Ok(stream)
    }

    /// Records a fetch of one of `set`'s backups.
    async fn fetched(&self, set: String, details: serde_json::Value) -> Result<(), BackupError> {
        let record = NewRecord { kind: Kind::BackupFetched.into(), subject: set, outcome: Outcome::Succeeded, details };
        self.ctx.ledger.append(record).await?;
        Ok(())
    }

    /// The globals object, opened and compared with the manifest.
    async fn open_globals(
        &self,
        id: &str,
        globals: &Globals,
        connected: &Connected,
        sink: Box<dyn Write + Send>,
    ) -> Result<StreamFacts, BackupError> {
        let sealed_id = Globals::sealed_id(id);
        let sealed = Sealed { object: &globals.object, key: &globals.key, id: &sealed_id };
        let stream = self.open_sealed(id, sealed, connected, sink).await.map_err(|err| match err {
            BackupError::Check { id, check } => BackupError::Check { id, check: format!("globals: {check}") },
            other => other,
        })?;
        compare_stream(id, "the globals", &globals.stream, &stream)?;
        Ok(stream)
    }

    /// Writes backup `id`'s dump to `sink`: every byte authenticated, the plaintext SHA-256
    /// compared with the manifest at the end. On error the sink holds a prefix of the dump and
    /// must be discarded.
    pub async fn fetch(&self, id: &str, sink: Box<dyn Write + Send>) -> Result<StreamFacts, BackupError> {
        let (entry, manifest, connected) = self.readable(id).await?;
        let stream = self.open(&manifest, &connected, sink).await?;
        compare(id, &manifest, &stream)?;
        self.fetched(entry.set, serde_json::json!({ "backup_id": id, "plaintext_bytes": stream.plaintext_bytes }))
            .await?;
        Ok(stream)
    }

    /// The catalog, newest first; of one set when `set` is given.
    pub async fn list(&self, set: Option<&str>) -> Result<Vec<Entry>, BackupError> {
        if let Some(set) = set {
            self.set(set)?;
        }
        Ok(catalog::list(self.ctx.db, set).await?)
    }

    /// Deletes each set's backups beyond its retention (only what `dry_run` says would go, when
    /// set). The newest verified backup of a set is never deleted, and backups not verified are
    /// left alone: a crashed one belongs to `resume`.
    pub async fn prune(&self, dry_run: bool) -> Result<Vec<PruneReport>, BackupError> {
        let mut reports = Vec::new();
        for (name, set) in &self.ctx.plan.backups {
            // pgBackRest expires its own repository (repo1-retention-full).
            if matches!(set.method, BackupMethod::PgBackRest(_)) {
                continue;
            }
            let entries = catalog::list(self.ctx.db, Some(name)).await?;
            let verified: Vec<retention::Candidate> = entries
                .iter()
                .filter(|e| e.status == Status::Verified)
                .filter_map(|e| {
                    let taken = chrono::DateTime::parse_from_rfc3339(&e.started_at).ok()?.with_timezone(&chrono::Utc);
                    Some(retention::Candidate { id: e.id.clone(), taken })
                })
                .collect();
            let kept = retention::keep(&set.retention, &verified);
            let doomed: Vec<&Entry> =
                entries.iter().filter(|e| e.status == Status::Verified && !kept.contains(&e.id)).collect();
            let mut report =
                PruneReport { set: name.clone(), kept: kept.into_iter().collect(), deleted: Vec::new(), dry_run };
            if !dry_run && !doomed.is_empty() {
                let connected = match &set.method {
                    BackupMethod::Dump { .. } => Some(self.connect(name, set).await?),
                    BackupMethod::RdsSnapshot { .. } | BackupMethod::PgBackRest(_) => None,
                };
                for entry in &doomed {
                    // The catalog first, through the caller's fence: a run that lost its claim
                    // is refused here and deletes nothing a verified backup names.
                    catalog::set_status(self.ctx.db, &entry.id, Status::Pruned, None, &self.now()).await?;
                    let object = stored_object(entry);
                    // Back to verified only while nothing is gone: the dump first, and once it
                    // is deleted the entry stays pruned whatever else fails (named, left over).
                    let first = match &connected {
                        Some(connected) => connected.store.delete(&object).await.map_err(BackupError::from),
                        None => rds::delete(self, entry).await,
                    };
                    if let Err(err) = first {
                        catalog::set_status(self.ctx.db, &entry.id, Status::Verified, None, &self.now()).await?;
                        return Err(err);
                    }
                    if let Some(connected) = &connected
                        && let Err(err) = delete_companions(connected, &object).await
                    {
                        tracing::warn!(%err, backup = %entry.id, "the pruned backup's dump is deleted, but its globals or manifest are left over");
                    }
                    self.ctx.ledger
                        .append(NewRecord {
                            kind: Kind::BackupPruned.into(),
                            subject: name.clone(),
                            outcome: Outcome::Succeeded,
                            details: serde_json::json!({ "backup_id": entry.id, "location": entry.location, "retention": set.retention }),
                        })
                        .await?;
                }
            }
            report.deleted = doomed.iter().map(|e| e.id.clone()).collect();
            reports.push(report);
        }
        Ok(reports)
    }
}

/// Compares what was read with the manifest.
fn compare(id: &str, manifest: &Manifest, read: &StreamFacts) -> Result<(), BackupError> {
    compare_stream(id, "the dump", &manifest.stream, read)
}

/// `read` against `expected`, for the object holding `what`.
fn compare_stream(id: &str, what: &str, expected: &StreamFacts, read: &StreamFacts) -> Result<(), BackupError> {
    let failed = |check: String| Err(BackupError::Check { id: id.to_owned(), check });
    if read.ciphertext_sha256 != expected.ciphertext_sha256 || read.ciphertext_bytes != expected.ciphertext_bytes {
        return failed(format!(
            "ciphertext check failed: the object of {what} has SHA-256 {} ({} bytes), the manifest says {} ({} bytes)",
            read.ciphertext_sha256, read.ciphertext_bytes, expected.ciphertext_sha256, expected.ciphertext_bytes
        ));
    }
    if read.plaintext_sha256 != expected.plaintext_sha256 || read.plaintext_bytes != expected.plaintext_bytes {
        return failed(format!(
            "plaintext check failed: {what}'s SHA-256 is {} ({} bytes), the manifest says {} ({} bytes)",
            read.plaintext_sha256, read.plaintext_bytes, expected.plaintext_sha256, expected.plaintext_bytes
        ));
    }
    Ok(())
}

fn engine_of(manifest: &Manifest) -> Engine {
    if manifest.engine == Engine::Mysql.as_str() { Engine::Mysql } else { Engine::Postgres }
}

/// The manifest's key beside the object's.
fn manifest_key(object: &str) -> String {
    format!("{}.manifest.json", object.trim_end_matches(".vbk"))
}

/// The object's key: one folder per set, and a name of its own for each attempt at writing
/// it, so that a run paused mid-write that wakes after another took its work over writes beside
/// the other's object, never over it; the catalog's manifest names the attempt that won.
fn object_key(set: &str, id: &str, attempt: &str) -> String {
    format!("{set}/{id}.{attempt}.vbk")
}

/// A fresh attempt's name.
fn attempt_name() -> String {
    use rand_core::RngCore as _;
    format!("{:08x}", rand_core::OsRng.next_u32())
}

/// The object a catalog entry's manifest names; backups from before attempts had names of
/// their own sit at `SET/ID.vbk`.
fn stored_object(entry: &Entry) -> String {
    entry
        .manifest
        .as_deref()
        .and_then(|text| serde_json::from_str::<Manifest>(text).ok())
        .map_or_else(|| format!("{}/{}.vbk", entry.set, entry.id), |manifest| manifest.object)
}

/// Deletes a dump object, its globals and its manifest (each absent one is fine).
async fn delete_objects(connected: &Connected, object: &str) -> Result<(), BackupError> {
    connected.store.delete(object).await?;
    delete_companions(connected, object).await
}

/// Deletes the globals and the manifest beside a dump object (each absent one is fine).
async fn delete_companions(connected: &Connected, object: &str) -> Result<(), BackupError> {
    connected.store.delete(&Globals::object_key(object)).await?;
    connected.store.delete(&manifest_key(object)).await?;
    Ok(())
}

/// The dump saga of one set.
struct DumpSaga<'a> {
    backups: &'a Backups<'a>,
    name: &'a str,
    set: &'a BackupSet,
    connected: &'a Connected,
}

/// What a dump saga records: the backup's id, and once written the object key of the attempt
/// that won and the manifest's hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DumpData {
    set: String,
    backup_id: String,
    /// Sagas from before attempts had names of their own hold `SET/ID.vbk` here from the start.
    #[serde(default)]
    object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest_sha256: Option<String>,
}

impl DumpSaga<'_> {
    const KIND_NAME: &'static str = "backup.dump";

    async fn write(&self, saga: &SagaRow, data: &DumpData) -> Result<Option<DumpData>, StepError> {
        if let Some(adopted) = self.adopt(saga, data).await? {
            return Ok(Some(adopted));
        }
        let backups = self.backups;
        let id = data.backup_id.clone();
        let object = object_key(self.name, &id, &attempt_name());
        let target = &self.set.target.value;
        let started_at = backups.now();
        let location = self.connected.store.location(&object);
        let started = catalog::Started {
            id: &id,
            set: self.name,
            target: &self.set.target.name,
            method: "dump",
            location: &location,
        };
        catalog::started(backups.ctx.db, &started, &started_at).await?;
        // The read-only backup credential when the target names one: a dump needs no more.
        let (credential, which) = match &target.backup_credential {
            Some(reader) => (reader, "backup_credential"),
            None => (&target.admin, "admin credential"),
        };
        let admin = backups.ctx.stores.login(credential).await.map_err(|err| match err {
            ReferenceError::Store(err) if err.is_transient() => StepError::Transient(err.to_string()),
            err => StepError::Failed(format!("cannot read the {which} of {}: {err}", self.set.target.name)),
        })?;
        let (key, wrapped) = self.connected.keys.generate(&id).await?;
        let endpoint = target.endpoint();
        let scratch = backups.scratch_folder().await?;
        let (mut dump, stdout) = dump::start(target.engine, &endpoint, &admin, &scratch).await?;
        tracing::debug!(tool = dump.tool, pid = dump.pid(), "dump tool started");
        let (sender, receiver) = mpsc::channel(pipeline::CHUNKS_QUEUED);
        let progress = backups.progress.clone();
        let sealing = tokio::task::spawn_blocking({
            let id = id.clone();
            move || {
                let report = |n| {
                    if let Some(progress) = &progress {
                        progress(n);
                    }
                };
                pipeline::seal(stdout, &key, &id, DEFAULT_SEGMENT_SIZE, sender, &report)
            }
        });
        let (uploaded, counted, sealed) =
            tokio::join!(self.connected.store.upload(&object, receiver), dump.count_rows(&admin), sealing);
        let sealed = sealed.map_err(|err| StepError::Failed(format!("the backup stream stopped: {err}")));
        if uploaded.is_err() || counted.is_err() || !matches!(sealed, Ok(Ok(_))) {
            dump.kill();
        }
        let uploaded = uploaded?;
        let stream = sealed?.map_err(|err| StepError::Failed(format!("the backup stream failed: {err}")))?;
        counted?;
        let consistency = dump.finish().await?;
        let globals = match target.engine {
            Engine::Postgres => Some(self.write_globals(&id, &object, &endpoint, &admin, &scratch).await?),
            Engine::Mysql => None,
        };
        debug_assert_eq!(uploaded, stream.ciphertext_bytes);
        let manifest = Manifest {
            format_version: format::VERSION,
            backup_id: id.clone(),
            set: self.name.to_owned(),
            target: self.set.target.name.clone(),
            engine: target.engine.as_str().to_owned(),
            database: target.database.clone().unwrap_or_default(),
            dump: match target.engine {
                Engine::Postgres => "pg_dump custom".into(),
                Engine::Mysql => "mariadb-dump sql".into(),
            },
            started_at,
            finished_at: backups.now(),
            consistency,
            compression: format!("zstd level {}", pipeline::ZSTD_LEVEL),
            encryption: "AES-256-GCM STREAM".into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            stream,
            key: wrapped,
            object: object.clone(),
            globals,
            extra: Default::default(),
        };
        let sha = manifest.sha256();
        crate::state::pause_point("backup.dump:commit").await;
        if let Err(err) = self.commit(&id, &manifest, &sha).await {
            // This attempt's objects are its own: no other run names them.
            if let Err(cleanup) = delete_objects(self.connected, &object).await {
                tracing::warn!(%cleanup, object, "cannot remove the objects of a backup attempt that did not commit");
            }
            return Err(err);
        }
        crate::state::pause_point("backup.dump:committed").await;
        self.record_written(&id, &location, &manifest, &sha).await?;
        Ok(Some(DumpData { object: Some(object), manifest_sha256: Some(sha), ..data.clone() }))
    }

    /// The attempt a crash or a pause left committed (the catalog holds its manifest, written,
    /// though the saga never said so): adopted, with its `backup.written` record appended if the
    /// crash came before it, rather than another written beside it and this one orphaned.
    async fn adopt(&self, saga: &SagaRow, data: &DumpData) -> Result<Option<DumpData>, StepError> {
        let backups = self.backups;
        let Some(entry) = catalog::get(backups.ctx.db, &data.backup_id).await? else { return Ok(None) };
        let (Some(text), Some(sha), Status::Written) = (&entry.manifest, &entry.manifest_sha256, entry.status) else {
            return Ok(None);
        };
        let Ok(manifest) = serde_json::from_str::<Manifest>(text) else { return Ok(None) };
        let filter = crate::evidence::RecordFilter {
            kind: Some(Kind::BackupWritten.into()),
            subject: Some(self.name.to_owned()),
            since: Some(saga.started_at.clone()),
            limit: 1_000,
        };
        let records =
            crate::evidence::list(backups.ctx.db, &filter).await.map_err(|e| StepError::Transient(e.to_string()))?;
        let recorded = records.iter().any(|r| {
            serde_json::from_str::<serde_json::Value>(&r.details)
                .is_ok_and(|d| d["backup_id"] == data.backup_id.as_str())
        });
        if !recorded {
            self.record_written(&data.backup_id, &entry.location, &manifest, sha).await?;
        }
        tracing::info!(backup = %data.backup_id, object = %manifest.object, "adopting the backup an interrupted attempt committed");
        Ok(Some(DumpData { object: Some(manifest.object), manifest_sha256: Some(sha.clone()), ..data.clone() }))
    }

    /// The `backup.written` record: the manifest's hash and what a drill or auditor compares;
    /// the wrapped key stays in the manifest.
    async fn record_written(&self, id: &str, location: &str, manifest: &Manifest, sha: &str) -> Result<(), StepError> {
        self.backups
            .ctx
            .ledger
            .append(NewRecord {
                kind: Kind::BackupWritten.into(),
                subject: self.name.to_owned(),
                outcome: Outcome::Succeeded,
                details: serde_json::json!({
                    "backup_id": id,
                    "location": location,
                    "manifest_sha256": sha,
                    "server_version": manifest.consistency.server_version,
                    "snapshot_time": manifest.consistency.snapshot_time,
                    "point": manifest.consistency.point,
                    "row_counts": manifest.consistency.row_counts,
                    "stream": manifest.stream,
                    "encryption": manifest.encryption,
                    "key_service": manifest.key.service,
                    "key_id": manifest.key.key_id,
                }),
            })
            .await
            .map_err(|err| StepError::Transient(err.to_string()))?;
        Ok(())
    }

    /// Stores `manifest` beside its object and commits it to the catalog, which names this
    /// attempt as the backup's from then on. The commit goes through the run's fence: a run
    /// whose claim was lost is refused here, and the caller removes what it wrote.
    async fn commit(&self, id: &str, manifest: &Manifest, sha: &str) -> Result<(), StepError> {
        let pretty = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        let json = objects::PutOptions { content_type: Some("application/json".into()), cache_control: None };
        self.connected.store.put(&manifest_key(&manifest.object), pretty, &json).await?;
        let now = self.backups.now();
        catalog::written(self.backups.ctx.db, id, &manifest.canonical(), sha, manifest.stream.ciphertext_bytes, &now)
            .await?;
        Ok(())
    }

    /// Seals the cluster's globals beside the dump, under a data key of their own.
    async fn write_globals(
        &self,
        id: &str,
        object: &str,
        endpoint: &Endpoint,
        credential: &crate::secret::Credential,
        scratch: &std::path::Path,
    ) -> Result<Globals, StepError> {
        let (endpoint, credential, scratch) = (endpoint.clone(), credential.clone(), scratch.to_owned());
        let sql = tokio::task::spawn_blocking(move || dump::pg_globals(&endpoint, &credential, &scratch))
            .await
            .map_err(|err| StepError::Failed(format!("pg_dumpall stopped unexpectedly: {err}")))??;
        let sealed_id = Globals::sealed_id(id);
        let (key, wrapped) = self.connected.keys.generate(&sealed_id).await?;
        let (sender, receiver) = mpsc::channel(pipeline::CHUNKS_QUEUED);
        let sealing = tokio::task::spawn_blocking(move || {
            pipeline::seal(std::io::Cursor::new(sql), &key, &sealed_id, DEFAULT_SEGMENT_SIZE, sender, &|_| {})
        });
        let globals_object = Globals::object_key(object);
        let (uploaded, sealed) = tokio::join!(self.connected.store.upload(&globals_object, receiver), sealing);
        uploaded?;
        let stream = sealed
            .map_err(|err| StepError::Failed(format!("sealing the globals stopped: {err}")))?
            .map_err(|err| StepError::Failed(format!("sealing the globals failed: {err}")))?;
        Ok(Globals { object: globals_object, key: wrapped, stream })
    }

    async fn verify(&self, data: &DumpData) -> Result<(), StepError> {
        let id = &data.backup_id;
        // The saga's own store and key service: verifying must not connect them again. A
        // verification a crash or a pause left done (its record is appended before the catalog
        // says verified) is adopted, not repeated: a store failing for a moment on the repeat
        // must not unwind the saga and delete a backup already proven.
        let verified = match self.backups.recorded(id).await {
            Ok((entry, _))
                if entry.status == Status::Verified
                    && entry.manifest_sha256.is_some()
                    && entry.manifest_sha256 == data.manifest_sha256 =>
            {
                tracing::info!(backup = %id, "adopting the verification an interrupted run recorded");
                return Ok(());
            }
            Ok((entry, manifest)) => self.backups.verify_with(&entry, &manifest, self.connected).await,
            Err(err) => Err(err),
        };
        if verified.is_ok() {
            crate::state::pause_point("backup.dump:verified").await;
        }
        match verified {
            Ok(_) => Ok(()),
            Err(BackupError::Store(err)) if err.is_transient() => Err(StepError::Transient(err.to_string())),
            Err(BackupError::Key(err)) if err.is_transient() => Err(StepError::Transient(err.to_string())),
            Err(err) => Err(StepError::Failed(err.to_string())),
        }
    }
}

impl From<KeyError> for StepError {
    fn from(err: KeyError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

impl From<ObjectError> for StepError {
    fn from(err: ObjectError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

impl From<DumpError> for StepError {
    fn from(err: DumpError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

impl SagaDef for DumpSaga<'_> {
    type Step = DumpStep;
    type Data = DumpData;
    const KIND: &'static str = Self::KIND_NAME;
    const AREA: crate::evidence::Area = crate::evidence::Area::Backup;
    const RESUME: &'static str = "vigil backup resume";

    async fn act(&self, saga: &SagaRow, data: &DumpData, step: DumpStep) -> Result<Option<DumpData>, StepError> {
        match step {
            DumpStep::Write => self.write(saga, data).await,
            DumpStep::Verify => self.verify(data).await.map(|()| None),
        }
    }

    async fn undo(&self, saga: &SagaRow, data: &DumpData, step: DumpStep) -> Result<(), StepError> {
        match step {
            // Verification changes nothing to undo; the written backup is removed next.
            DumpStep::Verify => Ok(()),
            DumpStep::Write => {
                let id = &data.backup_id;
                // The attempt the catalog names (a crash may have come after its commit and
                // before the saga's data said so), and the one the saga's data names.
                let entry = catalog::get(self.backups.ctx.db, id).await?;
                for object in
                    entry.iter().filter(|e| e.manifest.is_some()).map(stored_object).chain(data.object.clone())
                {
                    delete_objects(self.connected, &object).await.map_err(|err| StepError::Failed(err.to_string()))?;
                }
                let reason = saga.error.clone().unwrap_or_else(|| "rolled back".into());
                Ok(catalog::set_status(self.backups.ctx.db, id, Status::Failed, Some(&reason), &self.backups.now())
                    .await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_sit_beside_their_objects() {
        assert_eq!(
            manifest_key("orders/20261124T020000Z-00ff00ff.vbk"),
            "orders/20261124T020000Z-00ff00ff.manifest.json"
        );
        let object = object_key("orders", "20261124T020000Z-00ff00ff", "0badcafe");
        assert_eq!(object, "orders/20261124T020000Z-00ff00ff.0badcafe.vbk");
        assert_eq!(manifest_key(&object), "orders/20261124T020000Z-00ff00ff.0badcafe.manifest.json");
        assert_ne!(attempt_name(), attempt_name(), "each attempt writes under a name of its own");
    }
}
