//! Configuration: `vigil.toml` (the controller) and `schedules/*.toml` (what to rotate, back
//! up and drill), read strictly into a validated [`Plan`].
//!
//! Parsing refuses unknown fields, and every problem is a [`Diagnostic`] naming file, line,
//! column and field path. All problems are collected before giving up, so one run of
//! `vigil config check` shows them all.

mod diagnostic;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use diagnostic::{Diagnostic, Location, Severity};

use crate::aws::AwsSettings;
use crate::engines::Engine;
use crate::jwks::{Algorithm, JwksTarget};
use crate::schedule::{CronSchedule, Duration, Window};
use crate::secret::{PasswordPolicy, SecretRef, StoreKind};
use crate::state::StateStore;
use crate::stores::VaultSettings;
use crate::tls::Tls;
use crate::{kms, objects};

/// Reads and validates the configuration at `path` and the schedule files it points to.
///
/// On success the plan comes with any warnings; on failure, every diagnostic found (errors
/// first, warnings after).
pub fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    validate::load(path)
}

/// A configuration that loaded, and what was noticed on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The validated plan.
    pub plan: Plan,
    /// Problems that do not stop vigil from running but will surprise someone.
    pub warnings: Vec<Diagnostic>,
}

/// Everything vigil is configured to do, with defaults filled in and references checked.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The `vigil.toml` this plan was read from.
    pub config_file: PathBuf,
    /// The schedule files read, in the order read.
    pub schedule_files: Vec<PathBuf>,
    /// Controller settings.
    pub controller: Controller,
    /// Where evidence is kept and how it is signed.
    pub evidence: Evidence,
    /// How `vigil run` listens, paces and stops.
    pub daemon: Daemon,
    /// Where the daemon's alerts are posted (`[alerts.webhooks.NAME]`), by name.
    pub alerts: Vec<crate::webhooks::Settings>,
    /// AWS settings, when any AWS service is used.
    pub aws: Option<AwsSettings>,
    /// Vault or OpenBao settings, when Vault is used.
    pub vault: Option<VaultSettings>,
    /// Databases, by name.
    pub targets: BTreeMap<String, Target>,
    /// Credentials to rotate, by name.
    pub secrets: BTreeMap<String, SecretSpec>,
    /// Backup sets, by name.
    pub backups: BTreeMap<String, BackupSet>,
    /// Restore drills, by name.
    pub drills: BTreeMap<String, Drill>,
}

/// The controller's own settings.
#[derive(Debug, Serialize)]
pub struct Controller {
    /// Where vigil keeps its state: the embedded evidence store, keys, scratch files.
    pub data_dir: PathBuf,
    /// The folder of schedule files.
    pub schedules_dir: PathBuf,
}

/// `[daemon]`: the settings of `vigil run`.
#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served (loopback by default).
    pub listen: std::net::SocketAddr,
    /// How many jobs (rotations, backups, drills, checks) run at once.
    pub concurrency: usize,
    /// The most a scheduled job is delayed past its time, by an offset fixed per job, so that
    /// jobs due at one instant spread out.
    pub jitter: Duration,
    /// How often every current credential is checked for an out-of-band change.
    pub check_interval: Duration,
    /// How often backup sets' recovery points are measured against their drills' RPO targets.
    pub watch_interval: Duration,
    /// How often the whole evidence ledger is verified (an alert when it does not).
    pub verify_interval: Duration,
    /// How long a SIGTERM waits for the steps in flight to finish and be recorded.
    pub shutdown_grace: Duration,
    /// The bearer token `/status` asks for, by reference (a file or an environment variable);
    /// none: `/status` answers anyone who reaches `listen`.
    pub status_token: Option<crate::secret::SecretRef>,
}

/// Evidence ledger settings.
#[derive(Debug, Serialize)]
pub struct Evidence {
    /// The store.
    pub store: StateStore,
    /// The ed25519 signing key file, created on first use when missing.
    pub signing_key: PathBuf,
    /// The verifier key `vigil evidence verify` trusts (from `vigil evidence pubkey --vkey`,
    /// kept apart from the ledger); without one it trusts the public half of `signing_key`,
    /// never a key read from the database.
    pub trusted_vkey: Option<String>,
    /// Where each checkpoint is also written, outside the database.
    pub witness: Option<objects::Settings>,
}

/// A database vigil rotates credentials on, backs up or restores into.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The engine.
    pub engine: Engine,
    /// The RDS instance identifier, for targets of kind `rds`.
    pub rds_instance: Option<String>,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The database to connect to, when the engine needs one.
    pub database: Option<String>,
    /// The administrative credential, by reference.
    pub admin: SecretRef,
    /// A read-only credential backups dump with instead of `admin` (least privilege:
    /// `docs/privileges.md`).
    pub backup_credential: Option<SecretRef>,
    /// How connections are secured.
    pub tls: Tls,
    /// Where the target is defined.
    pub defined_at: Location,
}

/// What sort of credential a secret is, with the settings only that sort has. Serialised as
/// `kind = "postgres_password"` and its fields beside the secret's common ones.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SecretKind {
    /// A PostgreSQL role's password.
    PostgresPassword(DbPassword),
    /// A MySQL or MariaDB user's password.
    MysqlPassword(DbPassword),
    /// An API key issued by an internal service.
    ApiKey(ApiKey),
    /// A JWT signing key pair.
    JwtSigningKey(JwtKey),
}

impl SecretKind {
    /// The database password settings, for a password.
    pub fn db_password(&self) -> Option<&DbPassword> {
        match self {
            Self::PostgresPassword(db) | Self::MysqlPassword(db) => Some(db),
            Self::ApiKey(_) | Self::JwtSigningKey(_) => None,
        }
    }

    /// The name used in configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PostgresPassword(_) => "postgres_password",
            Self::MysqlPassword(_) => "mysql_password",
            Self::ApiKey(_) => "api_key",
            Self::JwtSigningKey(_) => "jwt_signing_key",
        }
    }
}

/// A database user whose password vigil rotates.
#[derive(Debug, Serialize)]
pub struct DbPassword {
    /// The database it logs in to.
    pub target: Named<Target>,
    /// The database user.
    pub username: String,
    /// How generated passwords look.
    pub policy: PasswordPolicy,
    /// Queries a new password must run before it becomes current (beyond logging in).
    pub probes: Vec<String>,
}

/// An API key vigil rotates through its issuer.
#[derive(Debug, Serialize)]
pub struct ApiKey {
    /// The service that issues and revokes API keys (`docs/api-key-issuer.md`).
    pub issuer: Issuer,
}

/// A JWT signing key vigil rotates and publishes.
#[derive(Debug, Serialize)]
pub struct JwtKey {
    /// How its keys are generated and published.
    pub jwt: JwtSpec,
}

/// Something the configuration names, resolved when the plan was made: its name (what the plan
/// shows) and its settings (what code uses, so no lookup by name can miss).
#[derive(Debug, Clone)]
pub struct Named<T> {
    /// The name it is defined under.
    pub name: String,
    /// Its settings.
    pub value: T,
}

impl<T> Serialize for Named<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// How a credential is replaced without locking its users out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "name")]
pub enum Strategy {
    /// One database user whose password changes in place.
    SingleUser,
    /// Two database users; the inactive one is changed, then the store's current label flips.
    AlternatingUsers {
        /// The second user of the pair.
        clone_username: String,
        /// The least time between two flips: at least the clients' secret cache lifetime.
        min_flip_interval: Duration,
    },
    /// The new credential is issued beside the old one, which is retired after `window`.
    Overlap {
        /// How long the old and new credentials are both valid.
        window: Duration,
    },
}

impl Strategy {
    /// The name used in configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::SingleUser => "single_user",
            Self::AlternatingUsers { .. } => "alternating_users",
            Self::Overlap { .. } => "overlap",
        }
    }
}

/// A credential vigil rotates.
#[derive(Debug, Serialize)]
pub struct SecretSpec {
    /// What sort of credential, and that sort's settings.
    #[serde(flatten)]
    pub kind: SecretKind,
    /// Which store holds it.
    pub store: StoreKind,
    /// Its name or path in the store.
    pub path: String,
    /// How it is replaced.
    pub strategy: Strategy,
    /// How often it rotates.
    pub cadence: Duration,
    /// Whether `cadence` is the kind's default rather than configured.
    pub cadence_is_default: bool,
    /// When the daemon may start a rotation that has come due (UTC); any time when absent.
    pub window: Option<Window>,
    /// Where the secret is defined.
    pub defined_at: Location,
}

/// An API-key issuer: its base URL and management token.
#[derive(Debug, Serialize)]
pub struct Issuer {
    /// The base URL.
    pub url: String,
    /// The management token, by reference.
    pub token: SecretRef,
    /// CA certificates (PEM) trusted besides the system's, for an `https://` issuer.
    pub ca_file: Option<PathBuf>,
}

/// A JWT signing key's algorithm, where its JWKS is published, and the times that decide how
/// long each key is published before it signs and after it stops.
#[derive(Debug, Serialize)]
pub struct JwtSpec {
    /// The one algorithm its keys sign with.
    pub algorithm: Algorithm,
    /// Where the JWKS is published.
    pub jwks: JwksTarget,
    /// How long verifiers cache the JWKS: a new key is published this long before it signs,
    /// and the document's `Cache-Control` max-age.
    pub jwks_cache: Duration,
    /// The longest lifetime of a token signed with the key.
    pub max_token_lifetime: Duration,
    /// The clock skew verifiers allow.
    pub clock_skew: Duration,
}

impl JwtSpec {
    /// How long a key stays published after it stops signing: until the last token it signed
    /// has expired on every verifier's clock.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.max_token_lifetime.as_secs().saturating_add(self.clock_skew.as_secs()))
    }
}

/// How many backups a set keeps. The newest verified backup is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The newest N backups.
    pub keep_last: u32,
    /// The newest backup of each of the last N days.
    pub daily: u32,
    /// The newest backup of each of the last N weeks.
    pub weekly: u32,
    /// The newest backup of each of the last N months.
    pub monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { keep_last: 7, daily: 7, weekly: 4, monthly: 12 }
    }
}

/// A database backed up on a schedule.
#[derive(Debug, Serialize)]
pub struct BackupSet {
    /// The database target.
    pub target: Named<Target>,
    /// When backups run.
    pub schedule: CronSchedule,
    /// How the backup is taken.
    pub method: BackupMethod,
    /// What is kept.
    pub retention: Retention,
    /// Where the set is defined.
    pub defined_at: Location,
}

/// How a backup set's backups are taken.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum BackupMethod {
    /// A logical dump (`pg_dump`, `mariadb-dump`) streamed compressed and encrypted to a store.
    Dump {
        /// Where backups are written.
        store: objects::Settings,
        /// What wraps their keys.
        key_service: kms::Settings,
    },
    /// A physical backup of a PostgreSQL cluster by pgBackRest, whose WAL archive allows
    /// recovery to any point in time.
    #[serde(rename = "pgbackrest")]
    PgBackRest(PgBackRestSet),
    /// An RDS DB snapshot, for targets of kind `rds`.
    RdsSnapshot {
        /// The RDS instance, from the target.
        instance: String,
        /// A copy of each snapshot in another region.
        copy: Option<RdsCopy>,
    },
}

/// A `pgbackrest` set's settings.
#[derive(Debug, Clone, Serialize)]
pub struct PgBackRestSet {
    /// The stanza and how to run pgBackRest.
    pub repo: crate::pgbackrest::Settings,
    /// The repository passphrase, when its configuration file holds none.
    pub cipher_pass: Option<SecretRef>,
    /// The backup type the set's `schedule` takes.
    pub backup_type: crate::pgbackrest::BackupType,
    /// Further schedules, each with its type (`differential`, `incremental`).
    pub also: Vec<(crate::pgbackrest::BackupType, CronSchedule)>,
    /// How often vigil writes the heartbeat row a restored copy dates itself by.
    pub heartbeat: Option<Duration>,
}

/// Where RDS snapshots are copied.
#[derive(Debug, Clone, Serialize)]
pub struct RdsCopy {
    /// The destination region.
    pub region: String,
    /// The KMS key the copy is encrypted with in that region.
    pub kms_key_id: Option<String>,
}

/// A restore drill: the latest backup of a set restored into a scratch target and checked.
#[derive(Debug, Serialize)]
pub struct Drill {
    /// The backup set restored.
    pub backup: String,
    /// What is restored, and into what.
    pub restore: DrillRestore,
    /// When the drill runs on its own; on demand only when absent.
    pub schedule: Option<CronSchedule>,
    /// Recovery point objective: the most data loss accepted.
    pub rpo: Duration,
    /// Recovery time objective: the longest restore accepted.
    pub rto: Duration,
    /// The human procedure this drill exercises.
    pub runbook: Option<PathBuf>,
    /// Queries run on the restored database, each with the text its first value must be.
    pub assertions: Vec<Assertion>,
    /// Database-password secrets whose current credential must log in to the restored database
    /// and pass its probes: the application could run on the restored copy.
    pub check_credentials: Vec<String>,
    /// Where the drill is defined.
    pub defined_at: Location,
}

/// What a drill restores into, by the kind of its backup set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DrillRestore {
    /// A dump, into a scratch database on this target (never the backup's own).
    Dump {
        /// The scratch target.
        scratch: String,
        /// `pg_restore -j`: above 1, the dump is staged to a 0600 file first (a parallel
        /// restore needs to seek); 1 streams it straight in.
        jobs: u32,
        /// Restore the dump's grants (`restore_grants`); `pg_restore --no-acl` when false.
        grants: bool,
    },
    /// A pgBackRest stanza, into a temporary PostgreSQL server on a scratch data directory,
    /// recovered to `target`, stopped and removed afterwards.
    #[serde(rename = "pgbackrest")]
    PgBackRest {
        /// How far to recover.
        target: TargetTime,
        /// The folder the scratch data directory is made in (one subfolder per drill); the
        /// data dir's `drills/` when absent.
        scratch_dir: Option<PathBuf>,
        /// The PostgreSQL server binaries; by default Debian's folder of the stanza's version.
        postgres_bin: Option<PathBuf>,
    },
    /// An RDS instance, into a temporary instance restored from its newest snapshot or to its
    /// latest restorable time, deleted afterwards.
    Rds {
        /// The instance backed up.
        instance: String,
        /// Snapshot or point in time.
        source: RdsSource,
    },
}

/// How far a point-in-time drill recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum TargetTime {
    /// The end of the archive.
    Latest,
    /// This long before the drill starts (`now-10m`), in seconds.
    Ago(u64),
    /// A fixed time.
    At(chrono::DateTime<chrono::Utc>),
}

impl Target {
    /// Where the target listens, with its database and TLS settings.
    pub fn endpoint(&self) -> crate::engines::Endpoint {
        crate::engines::Endpoint {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            tls: self.tls.clone(),
        }
    }
}

impl TargetTime {
    /// Reads `latest`, `now-DURATION` or an RFC 3339 time.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "latest" {
            return Ok(Self::Latest);
        }
        if let Some(ago) = text.strip_prefix("now-") {
            let duration: Duration =
                ago.parse().map_err(|err| format!("{ago:?} after now- is not a duration: {err}"))?;
            return Ok(Self::Ago(duration.as_secs()));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Self::At(t.with_timezone(&chrono::Utc)))
            .map_err(|_| format!("{text:?} is not `latest`, `now-DURATION` (now-10m) or an RFC 3339 time"))
    }

    /// The time to recover to, for a drill started at `started` (`None`: the end of the archive).
    pub fn resolve(self, started: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Self::Latest => None,
            Self::Ago(secs) => {
                Some(started - chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000)))
            }
            Self::At(at) => Some(at),
        }
    }
}

/// What an RDS drill restores from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RdsSource {
    /// The set's newest available snapshot (`RestoreDBInstanceFromDBSnapshot`).
    Snapshot,
    /// The instance's latest restorable time (`RestoreDBInstanceToPointInTime`).
    PointInTime,
}

/// A drill's check of the restored data: `sql`'s first row's first column must read `expect`.
#[derive(Debug, Clone, Serialize)]
pub struct Assertion {
    /// A read-only query, run in a transaction that is rolled back.
    pub sql: String,
    /// The expected value, as text (`NULL` for SQL NULL or no row).
    pub expect: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_time_is_latest_an_offset_or_a_time() {
        let started = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(TargetTime::parse("latest").unwrap().resolve(started), None);
        let ago = TargetTime::parse("now-10m").unwrap();
        assert_eq!(ago, TargetTime::Ago(600));
        assert_eq!(ago.resolve(started).unwrap().to_rfc3339(), "2026-11-30T09:50:00+00:00");
        let at = TargetTime::parse("2026-11-30T09:59:00+01:00").unwrap();
        assert_eq!(at.resolve(started).unwrap().to_rfc3339(), "2026-11-30T08:59:00+00:00");
        for bad in ["yesterday", "now-", "now-10 minutes", "2026-11-30"] {
            assert!(TargetTime::parse(bad).is_err(), "{bad}");
        }
    }
}
