//! A pgBackRest repository for the private PostgreSQL: the server archives its WAL there
//! (`archive_mode = on`, a short `archive_timeout`), encrypted with a generated passphrase, so
//! that backups of method `pgbackrest` and point-in-time drills have a real archive to read.
//!
//! The passphrase reaches the server (whose `archive_command` runs `pgbackrest archive-push`)
//! through its environment, as a deployment gives it; the configuration file holds none.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::process::{RunAs, as_account, run_checked};
use super::tools::ensure_debian_packages;

/// The stanza the private server archives to.
pub const STANZA: &str = "vigil";
/// Seconds after which the server switches to a new WAL segment when it has written anything:
/// the recovery point of an idle-ish database is at most this old.
pub const ARCHIVE_TIMEOUT_SECS: u32 = 10;
/// The environment variable pgBackRest reads the repository passphrase from.
pub const CIPHER_PASS_VAR: &str = "PGBACKREST_REPO1_CIPHER_PASS";

/// The repository, as `services.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgBackRest {
    /// The pgBackRest configuration file (stanza, repository, server paths; no passphrase).
    pub config: PathBuf,
    pub stanza: String,
    /// The repository folder.
    pub repo: PathBuf,
    /// The repository's encryption passphrase.
    pub cipher_pass: String,
    pub archive_timeout_secs: u32,
}

/// Installs pgBackRest when missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    ensure_debian_packages(&[("/usr/bin/pgbackrest", "pgbackrest")])
}

/// Writes the configuration for a server whose private folder is `dir` (data in `dir/data`,
/// socket in `dir`) listening on `port`; returns the repository settings. Everything it names
/// sits inside `dir`, owned by the server's account.
///
/// `archive-push` is asynchronous with two processes, as pgBackRest's user guide advises for a
/// busy server: the drill benchmark restores gigabytes of dumps into this cluster (the suite many
/// smaller ones), and one synchronous push per 1 MiB segment fell thousands of segments behind,
/// so that a backup (which waits `archive-timeout` for its own segment) failed. `archive-get` stays
/// synchronous: drills restoring at the same time would otherwise share one spool queue.
pub fn configure(dir: &Path, port: u16, cipher_pass: String) -> anyhow::Result<PgBackRest> {
    let root = dir.join("pgbackrest");
    let config = root.join("pgbackrest.conf");
    let repo = root.join("repo");
    std::fs::create_dir(&root)?;
    let text = format!(
        "[global]\n\
         repo1-path={repo}\n\
         repo1-cipher-type=aes-256-cbc\n\
         repo1-retention-full=4\n\
         lock-path={root}/lock\n\
         spool-path={root}/spool\n\
         log-level-console=warn\n\
         log-level-file=off\n\
         start-fast=y\n\
         compress-type=lz4\n\
         \n\
         [global:archive-push]\n\
         archive-async=y\n\
         process-max=2\n\
         \n\
         [{STANZA}]\n\
         pg1-path={data}\n\
         pg1-socket-path={socket}\n\
         pg1-port={port}\n\
         pg1-user=postgres\n",
        repo = repo.display(),
        root = root.display(),
        data = dir.join("data").display(),
        socket = dir.display(),
    );
    write_private(&config, &text)?;
    Ok(PgBackRest { config, stanza: STANZA.into(), repo, cipher_pass, archive_timeout_secs: ARCHIVE_TIMEOUT_SECS })
}

/// The server settings that archive into the repository.
pub fn server_args(repo: &PgBackRest) -> Vec<String> {
    vec![
        "-c".into(),
        "archive_mode=on".into(),
        "-c".into(),
        format!("archive_timeout={}", repo.archive_timeout_secs),
        "-c".into(),
        format!(
            "archive_command=/usr/bin/pgbackrest --config={} --stanza={} archive-push %p",
            repo.config.display(),
            repo.stanza
        ),
    ]
}

/// Gives every file under `dir` to `run_as` (the configuration was written by xtask).
pub fn chown_all(dir: &Path, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let Some(RunAs { uid, gid }) = run_as else { return Ok(()) };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chown_all(&path, run_as)?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// `pgbackrest stanza-create`, then `check` (which waits for a WAL segment to arrive in the
/// archive): the server archives before anything uses it. `passfile` is a 0600 libpq password
/// file for the superuser, which pgBackRest logs in with over the socket.
pub fn create_stanza(repo: &PgBackRest, passfile: &Path, run_as: Option<RunAs>) -> anyhow::Result<()> {
    for command in ["stanza-create", "check"] {
        let mut pgbackrest = Command::new("/usr/bin/pgbackrest");
        pgbackrest
            .env_clear()
            .env(CIPHER_PASS_VAR, &repo.cipher_pass)
            .env("PGPASSFILE", passfile)
            .arg(format!("--config={}", repo.config.display()))
            .arg(format!("--stanza={}", repo.stanza))
            .arg(command);
        as_account(&mut pgbackrest, run_as);
        run_checked(pgbackrest, &format!("pgbackrest {command}"))?;
    }
    Ok(())
}

/// Writes `text` to a new file only its owner reads.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
