//! Who schedules: the one daemon of a SQLite state store (a file lock), or the leader of the
//! daemons sharing a PostgreSQL one (a session advisory lock on a dedicated connection, plus an
//! epoch in `daemon_leader` that every new leader increments).

use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};

use super::DaemonError;
use super::store;

/// The advisory lock key the leader holds: "vigilrun" in ASCII, apart from the migration lock.
const LEADER_LOCK: i64 = 0x7669_6769_6c72_756e;

/// How long the leader's session may go unheard before the server ends it and frees the lock.
/// With the standbys' 2 s poll, a standby leads within 15 s of the leader falling silent.
pub const LEASE: std::time::Duration = crate::state::LEASE;

/// The lock file of the one daemon of a SQLite state store, held while it runs; the kernel
/// releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Locks `<database>.run.lock` beside the SQLite file, writing this process's PID into it;
    /// another daemon holding it is an error naming its PID.
    pub fn acquire(database: &Path) -> Result<Self, DaemonError> {
        let path = lock_path(database);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|err| DaemonError::Io { what: format!("cannot open {}", path.display()), err })?;
        // SAFETY: flock takes the descriptor of a file this function owns, and no pointer.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(DaemonError::AlreadyRunning { pid: text.trim().to_owned(), lock: path });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all());
        written.map_err(|err| DaemonError::Io { what: format!("cannot write {}", path.display()), err })?;
        Ok(Self { _file: file })
    }
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".run.lock");
    database.with_file_name(name)
}

/// A dedicated connection to the state store, made with the pool's settings (TLS, password),
/// that is a lease: the server ends it once it has been idle for [`LEASE`], which a live daemon
/// never is (it polls every few seconds), so a paused or partitioned daemon's lock and claims
/// are freed for the others even though its connection was never closed.
pub async fn session(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let lease = format!("SET idle_session_timeout = '{}s'", LEASE.as_secs());
    if let Err(err) = sqlx::raw_sql(sqlx::AssertSqlSafe(lease)).execute(&mut conn).await {
        // Before PostgreSQL 14: a session ends only when its connection breaks.
        tracing::warn!(%err, "the state store cannot end an idle session (PostgreSQL 14 or later can); a paused daemon keeps its lead and claims until its connection breaks");
    }
    Ok(conn)
}

/// A daemon of a PostgreSQL state store, on its own connection (never a pooled one: a session
/// advisory lock lives as long as the session, and a pooler would hand it to someone else).
pub struct Candidate {
    conn: PgConnection,
    holder: String,
}

impl Candidate {
    /// A dedicated connection to the state store, made with the pool's settings (TLS, password).
    /// The session is the lease (see [`session`]).
    pub async fn connect(pool: &PgPool, holder: String) -> Result<Self, sqlx::Error> {
        Ok(Self { conn: session(pool).await?, holder })
    }

    /// Takes the leader's lock if nobody holds it, and with it the next epoch.
    pub async fn try_lead(&mut self, now: DateTime<Utc>) -> Result<Option<i64>, sqlx::Error> {
        let won: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut self.conn).await?;
        if !won {
            return Ok(None);
        }
        Ok(Some(store::next_epoch_on(&mut self.conn, &self.holder, now).await?))
    }

    /// Whether this connection still leads at `epoch`: the session is alive and no newer
    /// epoch was taken.
    pub async fn still_leads(&mut self, epoch: i64) -> Result<bool, sqlx::Error> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM daemon_leader WHERE id = 1").fetch_optional(&mut self.conn).await?;
        Ok(newest == Some(epoch))
    }

    /// Ends the session, and with it the lock.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}
