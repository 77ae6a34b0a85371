//! The files exactly as written: serde shapes with spans, refusing unknown fields.
//!
//! Nothing here is checked beyond types; `validate` turns these into a [`super::Plan`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::jwks::Algorithm;
use crate::schedule::Duration;
use crate::secret::{CharClass, SecretRef, StoreKind};

/// `vigil.toml`: the controller's own settings, one optional value per section.
///
/// Sections are deserialized one by one (see `validate`), so that a mistake in one does not
/// hide the mistakes in the others.
#[derive(Debug, Default)]
pub(super) struct ControllerFile {
    pub controller: Option<Spanned<ControllerSection>>,
    pub evidence: Option<Spanned<EvidenceSection>>,
    pub aws: Option<Spanned<AwsSection>>,
    pub vault: Option<Spanned<VaultSection>>,
    pub daemon: Option<Spanned<DaemonSection>>,
    pub alerts: Option<Spanned<AlertsSection>>,
}

/// A top-level section of `vigil.toml`.
#[derive(Debug, Clone, Copy)]
pub(super) enum TopSection {
    Controller,
    Evidence,
    Aws,
    Vault,
    Daemon,
    Alerts,
}

/// The top-level sections `vigil.toml` may have, by name.
pub(super) const CONTROLLER_SECTIONS: [(&str, TopSection); 6] = [
    ("controller", TopSection::Controller),
    ("evidence", TopSection::Evidence),
    ("aws", TopSection::Aws),
    ("vault", TopSection::Vault),
    ("daemon", TopSection::Daemon),
    ("alerts", TopSection::Alerts),
];

/// `[alerts]`: where the daemon's alerts go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsSection {
    #[serde(default)]
    pub webhooks: BTreeMap<String, Spanned<Webhook>>,
}

/// `[alerts.webhooks.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Webhook {
    pub url: Spanned<SecretRef>,
    pub format: Option<Spanned<String>>,
    pub allow_insecure_http: Option<bool>,
}

/// `[daemon]`: how `vigil run` listens, paces and stops.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonSection {
    pub listen: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<i64>>,
    pub jitter: Option<Duration>,
    pub check_interval: Option<Duration>,
    pub watch_interval: Option<Duration>,
    pub verify_interval: Option<Duration>,
    pub shutdown_grace: Option<Spanned<Duration>>,
    pub status_token: Option<Spanned<SecretRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControllerSection {
    pub data_dir: Option<PathBuf>,
    pub schedules: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EvidenceSection {
    pub url: Option<Spanned<String>>,
    pub password: Option<Spanned<SecretRef>>,
    pub signing_key: Option<PathBuf>,
    pub tls: Option<Spanned<Tls>>,
    pub trusted_vkey: Option<Spanned<String>>,
    pub witness: Option<Spanned<Witness>>,
}

/// `witness = { store = "local", path = "…" }` or `{ store = "s3", bucket = "…", prefix = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Witness {
    pub store: Spanned<String>,
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
}

/// `tls = { mode = "verify-full", ca_file = "ca.pem" }` on a database connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tls {
    pub mode: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsSection {
    pub region: String,
    pub endpoint_url: Option<Spanned<String>>,
    pub access_key_id: Option<Spanned<SecretRef>>,
    pub secret_access_key: Option<Spanned<SecretRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultSection {
    pub address: Spanned<String>,
    pub token: Spanned<SecretRef>,
    pub kv_mount: Option<String>,
    pub transit_mount: Option<String>,
    pub namespace: Option<String>,
    pub allow_insecure_http: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<PathBuf>>,
}

/// One file under `schedules/`: what to rotate, back up and drill, each item by name.
///
/// Items are deserialized one by one, so every item's mistakes are reported.
#[derive(Debug, Default)]
pub(super) struct ScheduleFile {
    pub targets: BTreeMap<String, Spanned<Target>>,
    pub secrets: BTreeMap<String, Spanned<Secret>>,
    pub backups: BTreeMap<String, Spanned<Backup>>,
    pub drills: BTreeMap<String, Spanned<Drill>>,
}

/// A top-level section of a schedule file.
#[derive(Debug, Clone, Copy)]
pub(super) enum ScheduleSection {
    Targets,
    Secrets,
    Backups,
    Drills,
}

/// The top-level sections a schedule file may have, by name.
pub(super) const SCHEDULE_SECTIONS: [(&str, ScheduleSection); 4] = [
    ("targets", ScheduleSection::Targets),
    ("secrets", ScheduleSection::Secrets),
    ("backups", ScheduleSection::Backups),
    ("drills", ScheduleSection::Drills),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum TargetKind {
    Postgres,
    Mysql,
    Rds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Engine {
    Postgres,
    Mysql,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    pub kind: Spanned<TargetKind>,
    pub engine: Option<Spanned<Engine>>,
    pub host: Spanned<String>,
    pub port: Option<Spanned<u16>>,
    pub database: Option<String>,
    pub admin: Spanned<SecretRef>,
    pub instance_id: Option<Spanned<String>>,
    pub tls: Option<Spanned<Tls>>,
    pub backup_credential: Option<Spanned<SecretRef>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SecretKind {
    PostgresPassword,
    MysqlPassword,
    ApiKey,
    JwtSigningKey,
}

impl SecretKind {
    /// The cadence used when a secret names none: 30 days for passwords, 90 for API keys,
    /// 7 for JWT signing keys.
    pub fn default_cadence(self) -> crate::schedule::Duration {
        let days = match self {
            Self::PostgresPassword | Self::MysqlPassword => 30,
            Self::ApiKey => 90,
            Self::JwtSigningKey => 7,
        };
        crate::schedule::Duration::from_secs(days * 86_400)
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PostgresPassword => "postgres_password",
            Self::MysqlPassword => "mysql_password",
            Self::ApiKey => "api_key",
            Self::JwtSigningKey => "jwt_signing_key",
        }
    }
}

/// How a database password rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum PasswordStrategy {
    SingleUser,
    AlternatingUsers,
}

/// How an API key or JWT signing key rotates: there is one way, and writing it is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum OverlapStrategy {
    Overlap,
}

/// One `[secrets.NAME]`, with the fields of its kind and no other: the table's `kind` is read
/// first (see `validate`), then the whole table as that kind, so a field that belongs to another
/// kind is refused by name and spans stay exact. (A `#[serde(tag = "kind")]` enum would buffer
/// the table and lose them.)
#[derive(Debug)]
pub(super) enum Secret {
    /// `postgres_password` or `mysql_password`: a password of the engine's user.
    Password(crate::engines::Engine, PasswordSecret),
    /// `api_key`.
    ApiKey(ApiKeySecret),
    /// `jwt_signing_key`.
    JwtSigningKey(JwtSecret),
}

impl Secret {
    /// The fields every kind has.
    pub fn common(&self) -> Common<'_> {
        let (kind, store, path, cadence, window) = match self {
            Self::Password(_, s) => (&s.kind, &s.store, &s.path, &s.cadence, &s.window),
            Self::ApiKey(s) => (&s.kind, &s.store, &s.path, &s.cadence, &s.window),
            Self::JwtSigningKey(s) => (&s.kind, &s.store, &s.path, &s.cadence, &s.window),
        };
        Common { kind: *kind.get_ref(), store, path, cadence: cadence.as_ref(), window: window.as_ref() }
    }
}

/// The fields every kind of secret has.
pub(super) struct Common<'a> {
    pub kind: SecretKind,
    pub store: &'a Spanned<StoreKind>,
    pub path: &'a Spanned<String>,
    pub cadence: Option<&'a Spanned<Duration>>,
    pub window: Option<&'a Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordSecret {
    pub kind: Spanned<SecretKind>,
    pub store: Spanned<StoreKind>,
    pub path: Spanned<String>,
    pub cadence: Option<Spanned<Duration>>,
    pub window: Option<Spanned<String>>,
    pub target: Spanned<String>,
    pub username: Spanned<String>,
    pub clone_username: Option<Spanned<String>>,
    pub strategy: Option<Spanned<PasswordStrategy>>,
    pub min_flip_interval: Option<Spanned<Duration>>,
    pub policy: Option<Spanned<Policy>>,
    pub probes: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeySecret {
    pub kind: Spanned<SecretKind>,
    pub store: Spanned<StoreKind>,
    pub path: Spanned<String>,
    pub cadence: Option<Spanned<Duration>>,
    pub window: Option<Spanned<String>>,
    pub issuer: Spanned<Issuer>,
    /// Accepted for symmetry with passwords; `overlap` is the only value, and the default.
    #[serde(rename = "strategy")]
    pub _strategy: Option<Spanned<OverlapStrategy>>,
    pub overlap: Option<Spanned<Duration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtSecret {
    pub kind: Spanned<SecretKind>,
    pub store: Spanned<StoreKind>,
    pub path: Spanned<String>,
    pub cadence: Option<Spanned<Duration>>,
    pub window: Option<Spanned<String>>,
    /// Accepted for symmetry with passwords; `overlap` is the only value, and the default.
    #[serde(rename = "strategy")]
    pub _strategy: Option<Spanned<OverlapStrategy>>,
    pub algorithm: Option<Spanned<Algorithm>>,
    pub jwks: Spanned<Jwks>,
    pub jwks_cache: Option<Spanned<Duration>>,
    pub max_token_lifetime: Option<Spanned<Duration>>,
    pub clock_skew: Option<Spanned<Duration>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum JwksPublish {
    S3,
    VaultKv,
    File,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Jwks {
    pub publish: Spanned<JwksPublish>,
    pub bucket: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Issuer {
    pub url: Spanned<String>,
    pub token: Spanned<SecretRef>,
    pub allow_insecure_http: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    pub length: Option<Spanned<usize>>,
    pub classes: Option<Spanned<Vec<CharClass>>>,
    pub exclude: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ObjectStoreKind {
    S3,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum KeyServiceKind {
    AwsKms,
    VaultTransit,
    Local,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Backup {
    pub target: Spanned<String>,
    pub schedule: Spanned<String>,
    pub method: Option<Spanned<BackupMethodKind>>,
    pub stanza: Option<Spanned<String>>,
    pub config_file: Option<Spanned<PathBuf>>,
    pub pgbackrest_bin: Option<Spanned<PathBuf>>,
    pub cipher_pass: Option<Spanned<SecretRef>>,
    #[serde(rename = "type")]
    pub backup_type: Option<Spanned<crate::pgbackrest::BackupType>>,
    pub differential: Option<Spanned<String>>,
    pub incremental: Option<Spanned<String>>,
    pub heartbeat: Option<Spanned<Duration>>,
    pub store: Option<Spanned<ObjectStoreKind>>,
    pub bucket: Option<Spanned<String>>,
    pub prefix: Option<String>,
    pub path: Option<Spanned<PathBuf>>,
    pub sse_kms_key_id: Option<Spanned<String>>,
    pub object_lock: Option<Spanned<ObjectLock>>,
    pub key_service: Option<Spanned<KeyServiceKind>>,
    pub key_id: Option<Spanned<String>>,
    pub key_file: Option<Spanned<PathBuf>>,
    pub copy_to_region: Option<Spanned<String>>,
    pub copy_kms_key_id: Option<Spanned<String>>,
    pub retention: Option<Spanned<Retention>>,
}

/// How a set's backups are taken, when it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum BackupMethodKind {
    Dump,
    Pgbackrest,
    RdsSnapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ObjectLockMode {
    Governance,
    Compliance,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectLock {
    pub mode: ObjectLockMode,
    pub retain: Spanned<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Retention {
    pub keep_last: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Drill {
    pub backup: Spanned<String>,
    pub scratch: Option<Spanned<String>>,
    pub source: Option<Spanned<RdsSource>>,
    pub restore_jobs: Option<Spanned<u32>>,
    pub restore_grants: Option<Spanned<bool>>,
    pub target_time: Option<Spanned<String>>,
    pub scratch_dir: Option<Spanned<PathBuf>>,
    pub postgres_bin: Option<Spanned<PathBuf>>,
    pub schedule: Option<Spanned<String>>,
    pub rpo: Option<Spanned<Duration>>,
    pub rto: Option<Spanned<Duration>>,
    pub runbook: Option<Spanned<PathBuf>>,
    pub assertions: Option<Vec<Spanned<Assertion>>>,
    pub check_credentials: Option<Vec<Spanned<String>>>,
}

/// What an RDS drill restores from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RdsSource {
    Snapshot,
    PointInTime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Assertion {
    pub sql: Spanned<String>,
    pub expect: String,
}
