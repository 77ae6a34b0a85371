//! pgBackRest, driven as a tool: physical backups of a PostgreSQL cluster with continuous WAL
//! archiving, their verification, the repository's account of itself (`info --output=json`),
//! and restores to a point in time. vigil does not archive WAL itself; the cluster's
//! `archive_command` runs `pgbackrest archive-push`, and this module reads and audits the result.
//!
//! Every command runs with a cleared environment: `PATH`, the repository passphrase (when the
//! set names one) in `PGBACKREST_REPO1_CIPHER_PASS`, and the libpq password file of the login
//! pgBackRest uses, by path. The passphrase goes through the environment because pgBackRest
//! reads it from nowhere else but its configuration file: never its command line, which `ps`
//! shows to every user, while `/proc/PID/environ` is readable by the process's owner alone.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

/// The variable pgBackRest reads the first repository's passphrase from.
pub const CIPHER_PASS_VAR: &str = "PGBACKREST_REPO1_CIPHER_PASS";

/// Where a stanza is and how to run pgBackRest for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The stanza: one cluster's backups and archive.
    pub stanza: String,
    /// The pgBackRest configuration file that defines it.
    pub config: PathBuf,
    /// The `pgbackrest` binary.
    pub binary: PathBuf,
}

/// A pgBackRest backup type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupType {
    /// Every file.
    Full,
    /// Files changed since the last full backup.
    Diff,
    /// Files changed since the last backup of any type.
    Incr,
}

impl BackupType {
    /// pgBackRest's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Diff => "diff",
            Self::Incr => "incr",
        }
    }
}

impl std::str::FromStr for BackupType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "full" => Ok(Self::Full),
            "diff" => Ok(Self::Diff),
            "incr" => Ok(Self::Incr),
            other => Err(format!("backup type {other:?} is not one of full, diff, incr")),
        }
    }
}

/// How far a restore replays the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// To the end of the archive.
    Latest,
    /// To this time (the first transaction committed after it is not applied).
    Time(chrono::DateTime<chrono::Utc>),
}

/// Why a pgBackRest command failed. Never carries the passphrase: pgBackRest does not print it,
/// and nothing here formats the environment.
#[derive(Debug, thiserror::Error)]
pub enum PgBackRestError {
    /// The binary could not be started.
    #[error(
        "cannot run {binary}: {reason}; install pgBackRest (Debian: apt-get install pgbackrest) or set pgbackrest_bin"
    )]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        reason: String,
    },
    /// The command ran and failed.
    #[error("pgbackrest {command} failed ({status}): {stderr}")]
    Failed {
        /// The pgBackRest command.
        command: &'static str,
        /// Its exit code, when it had one: pgBackRest's error number.
        code: Option<i32>,
        /// How it exited.
        status: String,
        /// The end of what it printed.
        stderr: String,
    },
    /// `info --output=json` printed what this version does not read.
    #[error("pgbackrest info printed JSON vigil cannot read: {0}")]
    Info(String),
    /// The stanza has no such backup.
    #[error("stanza {stanza} has no backup labelled {label}; `pgbackrest info` lists them")]
    NoSuchBackup {
        /// The stanza.
        stanza: String,
        /// The label asked for.
        label: String,
    },
}

/// pgBackRest's "unable to acquire lock": another backup or expire of the stanza is running.
const LOCK_ACQUIRE_ERROR: i32 = 50;

impl PgBackRestError {
    /// Whether retrying may succeed: another pgBackRest process held the stanza's lock.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Failed { code: Some(LOCK_ACQUIRE_ERROR), .. })
    }
}

/// One backup as `pgbackrest info` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Its label (`20261130-034127F`, `…_20261130-034131I`).
    pub label: String,
    /// Full, differential or incremental.
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// The backup it depends on, for diff and incr.
    pub prior: Option<String>,
    /// When it started and stopped (Unix seconds, the repository host's clock).
    pub start: i64,
    /// When it stopped: the earliest point a restore of it reaches.
    pub stop: i64,
    /// The first and last WAL segment it needs.
    pub wal_start: Option<String>,
    /// The last WAL segment it needs.
    pub wal_stop: Option<String>,
    /// The LSNs where it started and stopped.
    pub lsn_start: Option<String>,
    /// Where it stopped.
    pub lsn_stop: Option<String>,
    /// The cluster's size.
    pub size: u64,
    /// What this backup copied (all of it for a full backup).
    pub delta: u64,
    /// Its size in the repository, compressed.
    pub repo_size: u64,
    /// What this backup added to the repository.
    pub repo_delta: u64,
    /// Whether pgBackRest found page checksum errors while copying.
    pub error: bool,
}

/// What the repository holds for a stanza.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The stanza's status: `ok`, or pgBackRest's reason.
    pub status: String,
    /// The backups, oldest first.
    pub backups: Vec<BackupInfo>,
    /// The oldest and newest WAL segment archived, of the current database.
    pub archive_min: Option<String>,
    /// The newest WAL segment archived.
    pub archive_max: Option<String>,
    /// The PostgreSQL major version the stanza holds (`15`).
    pub pg_version: Option<String>,
    /// The repository's cipher (`aes-256-cbc`, `none`).
    pub cipher: String,
}

impl Info {
    /// The backup labelled `label`.
    pub fn backup(&self, label: &str) -> Option<&BackupInfo> {
        self.backups.iter().find(|b| b.label == label)
    }
}

/// How pgBackRest logs in to the cluster it backs up: over the socket its configuration names,
/// as `user`, with the password in a libpq password file at `passfile`.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The role (`--pg1-user`).
    pub user: &'a str,
    /// A 0600 `.pgpass` file holding its password.
    pub passfile: &'a Path,
}

/// A stanza, with its repository's passphrase.
pub struct Repo {
    settings: Settings,
    cipher_pass: Option<SecretString>,
}

impl Repo {
    /// The stanza `settings` names; `cipher_pass` when its configuration file holds none.
    pub fn new(settings: Settings, cipher_pass: Option<SecretString>) -> Self {
        Self { settings, cipher_pass }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What a PostgreSQL server restored from this repository needs in its environment: its
    /// `restore_command` runs `pgbackrest archive-get`, which decrypts.
    pub fn server_env(&self) -> Vec<(&'static str, SecretString)> {
        self.cipher_pass.iter().map(|pass| (CIPHER_PASS_VAR, pass.clone())).collect()
    }

    fn command(&self, command: &'static str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.settings.binary);
        cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        if let Some(pass) = &self.cipher_pass {
            cmd.env(CIPHER_PASS_VAR, pass.expose_secret());
        }
        cmd.arg(format!("--config={}", self.settings.config.display()))
            .arg(format!("--stanza={}", self.settings.stanza))
            .arg("--log-level-console=error")
            .arg("--log-level-stderr=error")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // A run dropped (its claim lost past the lease, a shutdown's deadline) takes its
            // pgBackRest with it, rather than leaving a backup running that nobody records.
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, command: &'static str, mut cmd: tokio::process::Command) -> Result<String, PgBackRestError> {
        let output = cmd.output().await.map_err(|err| PgBackRestError::Spawn {
            binary: self.settings.binary.display().to_string(),
            reason: err.to_string(),
        })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let said = if stderr.trim().is_empty() { stdout } else { stderr };
        Err(PgBackRestError::Failed {
            command,
            code: output.status.code(),
            status: output.status.to_string(),
            stderr: tail(&said),
        })
    }

    /// `pgbackrest backup --type=TYPE`, logging in as `login`.
    pub async fn backup(&self, kind: BackupType, login: Login<'_>) -> Result<(), PgBackRestError> {
        let mut cmd = self.command("backup");
        cmd.arg(format!("--type={}", kind.as_str()))
            .arg(format!("--pg1-user={}", login.user))
            .env("PGPASSFILE", login.passfile)
            .env("PGAPPNAME", "vigil-pgbackrest");
        self.run("backup", cmd).await.map(drop)
    }

    /// `pgbackrest verify --set=LABEL`: every file of the backup, and the WAL it needs, read and
    /// checked against the repository's checksums.
    pub async fn verify(&self, label: &str) -> Result<(), PgBackRestError> {
        let mut cmd = self.command("verify");
        cmd.arg(format!("--set={label}"));
        self.run("verify", cmd).await.map(drop)
    }

    /// `pgbackrest expire --set=LABEL`: removes the backup (and those that depend on it). A label
    /// already gone is success.
    pub async fn expire(&self, label: &str) -> Result<(), PgBackRestError> {
        if self.info().await?.backup(label).is_none() {
            return Ok(());
        }
        let mut cmd = self.command("expire");
        cmd.arg(format!("--set={label}"));
        self.run("expire", cmd).await.map(drop)
    }

    /// `pgbackrest info --output=json` for the stanza.
    pub async fn info(&self) -> Result<Info, PgBackRestError> {
        let mut cmd = self.command("info");
        cmd.arg("--output=json");
        let json = self.run("info", cmd).await?;
        parse_info(&json, &self.settings.stanza)
    }

    /// `pgbackrest restore` into `pg_path` (which must not exist or be empty) up to `target`,
    /// promoted when recovery ends. The restored server does not archive (`archive_mode=off`): it
    /// must never write into the stanza it came from. Tablespaces go under `pg_path`'s parent,
    /// never back to the paths the source uses.
    pub async fn restore(&self, pg_path: &Path, target: RecoveryTarget) -> Result<(), PgBackRestError> {
        let mut cmd = self.command("restore");
        cmd.arg(format!("--pg1-path={}", pg_path.display())).arg("--archive-mode=off");
        if let Some(parent) = pg_path.parent() {
            cmd.arg(format!("--tablespace-map-all={}", parent.join("tablespaces").display()));
        }
        match target {
            RecoveryTarget::Latest => {
                cmd.arg("--type=default");
            }
            RecoveryTarget::Time(at) => {
                cmd.arg("--type=time")
                    .arg(format!("--target={}", at.format("%Y-%m-%d %H:%M:%S%.6f+00")))
                    .arg("--target-action=promote");
            }
        }
        self.run("restore", cmd).await.map(drop)
    }
}

/// The last few lines a command printed, for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    if tail.is_empty() { "no output".to_owned() } else { tail }
}

/// Reads the one stanza of `info --output=json`.
fn parse_info(json: &str, stanza: &str) -> Result<Info, PgBackRestError> {
    #[derive(Deserialize)]
    struct Stanza {
        name: String,
        status: Status,
        #[serde(default)]
        cipher: String,
        #[serde(default)]
        backup: Vec<Backup>,
        #[serde(default)]
        archive: Vec<Archive>,
        #[serde(default)]
        db: Vec<Db>,
    }
    #[derive(Deserialize)]
    struct Status {
        code: i64,
        message: String,
    }
    #[derive(Deserialize)]
    struct Backup {
        label: String,
        #[serde(rename = "type")]
        kind: BackupType,
        prior: Option<String>,
        timestamp: Range<i64>,
        archive: Option<Range<Option<String>>>,
        lsn: Option<Range<Option<String>>>,
        info: Sizes,
        #[serde(default)]
        error: bool,
        database: DbRef,
    }
    #[derive(Deserialize)]
    struct Range<T> {
        start: T,
        stop: T,
    }
    #[derive(Deserialize)]
    struct Sizes {
        size: u64,
        delta: u64,
        repository: RepoSizes,
    }
    #[derive(Deserialize)]
    struct RepoSizes {
        size: u64,
        delta: u64,
    }
    #[derive(Deserialize)]
    struct Archive {
        database: DbRef,
        min: Option<String>,
        max: Option<String>,
    }
    #[derive(Deserialize)]
    struct DbRef {
        id: i64,
    }
    #[derive(Deserialize)]
    struct Db {
        id: i64,
        version: String,
    }

    let stanzas: Vec<Stanza> = serde_json::from_str(json).map_err(|err| PgBackRestError::Info(err.to_string()))?;
    let Some(found) = stanzas.into_iter().find(|s| s.name == stanza) else {
        return Err(PgBackRestError::Info(format!("no stanza {stanza} in its output")));
    };
    // The newest database id is the cluster now (an upgrade adds one).
    let current = found.db.iter().max_by_key(|db| db.id);
    let archive = found.archive.iter().rfind(|a| current.is_none_or(|db| a.database.id == db.id));
    Ok(Info {
        status: if found.status.code == 0 { "ok".to_owned() } else { found.status.message },
        backups: found
            .backup
            .into_iter()
            .filter(|b| current.is_none_or(|db| b.database.id == db.id))
            .map(|b| BackupInfo {
                label: b.label,
                kind: b.kind,
                prior: b.prior,
                start: b.timestamp.start,
                stop: b.timestamp.stop,
                wal_start: b.archive.as_ref().and_then(|a| a.start.clone()),
                wal_stop: b.archive.and_then(|a| a.stop),
                lsn_start: b.lsn.as_ref().and_then(|l| l.start.clone()),
                lsn_stop: b.lsn.and_then(|l| l.stop),
                size: b.info.size,
                delta: b.info.delta,
                repo_size: b.info.repository.size,
                repo_delta: b.info.repository.delta,
                error: b.error,
            })
            .collect(),
        archive_min: archive.and_then(|a| a.min.clone()),
        archive_max: archive.and_then(|a| a.max.clone()),
        pg_version: current.map(|db| db.version.clone()),
        cipher: found.cipher,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pgBackRest 2.45 printed for a stanza with a full and an incremental backup.
    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"00000001000000000000000A","min":"000000010000000000000006"}],
        "backup":[{"archive":{"start":"000000010000000000000007","stop":"000000010000000000000008"},"backrest":{"format":5,"version":"2.45"},
        "database":{"id":1,"repo-key":1},"error":false,"info":{"delta":23213794,"repository":{"delta":3087600,"size":3087600},"size":23213794},
        "label":"20261130-034127F","lsn":{"start":"0/700028","stop":"0/800050"},"prior":null,"reference":null,
        "timestamp":{"start":1796010087,"stop":1796010090},"type":"full"},
        {"archive":{"start":"00000001000000000000000A","stop":"00000001000000000000000A"},"backrest":{"format":5,"version":"2.45"},
        "database":{"id":1,"repo-key":1},"error":false,"info":{"delta":1597704,"repository":{"delta":172400,"size":3093600},"size":23312098},
        "label":"20261130-034127F_20261130-034131I","lsn":{"start":"0/A00028","stop":"0/A00100"},"prior":"20261130-034127F",
        "reference":["20261130-034127F"],"timestamp":{"start":1796010091,"stop":1796010092},"type":"incr"}],
        "cipher":"aes-256-cbc","db":[{"id":1,"repo-key":1,"system-id":7713804493044074560,"version":"15"}],"name":"exp",
        "repo":[{"cipher":"aes-256-cbc","key":1,"status":{"code":0,"message":"ok"}}],
        "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn info_reads_backups_wal_ranges_and_the_archive() {
        let info = parse_info(INFO, "exp").unwrap();
        assert_eq!(info.status, "ok");
        assert_eq!(info.pg_version.as_deref(), Some("15"));
        assert_eq!(info.archive_max.as_deref(), Some("00000001000000000000000A"));
        let incr = info.backup("20261130-034127F_20261130-034131I").unwrap();
        assert_eq!(incr.kind, BackupType::Incr);
        assert_eq!(incr.prior.as_deref(), Some("20261130-034127F"));
        assert_eq!((incr.start, incr.stop), (1_796_010_091, 1_796_010_092));
        assert_eq!(incr.wal_start.as_deref(), Some("00000001000000000000000A"));
        assert_eq!((incr.repo_size, incr.repo_delta), (3_093_600, 172_400));
        assert!(matches!(parse_info(INFO, "other"), Err(PgBackRestError::Info(_))));
        let missing =
            r#"[{"name":"exp","status":{"code":1,"message":"missing stanza path"},"backup":[],"archive":[],"db":[]}]"#;
        assert_eq!(parse_info(missing, "exp").unwrap().status, "missing stanza path");
    }

    #[test]
    fn only_a_held_lock_is_worth_retrying() {
        let failed =
            |code| PgBackRestError::Failed { command: "backup", code, status: String::new(), stderr: String::new() };
        assert!(failed(Some(50)).is_transient());
        assert!(!failed(Some(55)).is_transient());
        assert!(!failed(None).is_transient());
    }
}
