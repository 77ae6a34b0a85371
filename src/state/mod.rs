//! The state store: one SQL database, SQLite (a file under the data dir, the embedded default)
//! or PostgreSQL (shared by several vigil instances), chosen by the evidence store URL.
//!
//! It holds the evidence ledger, saga state, the backup catalog and the daemon's timetable and
//! leader epoch. Migrations are embedded, versioned and applied on open, under a lock so that two
//! processes opening one database at once apply each migration once.
//!
//! A daemon that leads the store sets its epoch as the [fence](Db::fence) of its handle: from
//! then on every saga write and evidence append through it checks, in its own transaction, that
//! no newer leader took over, and is refused if one did.

mod migrations;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::secret::{ResolveError, SecretRef};
use crate::tls::Tls;

/// Where the state store (and so the evidence ledger) lives.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "backend")]
pub enum StateStore {
    /// An SQLite file: the embedded default.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database shared by several vigil instances.
    Postgres {
        /// The connection URL, without a password.
        url: String,
        /// The password, by reference.
        password: Option<SecretRef>,
        /// How the connection is secured.
        tls: Tls,
    },
}

/// Runs the same code against whichever pool `db` holds: the SQL is shared (both backends take
/// `$1` placeholders), only the driver types differ.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            $crate::state::Pool::Sqlite($pool) => $body,
            $crate::state::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Checks `$guard` (an `Option<&Fence>`) inside the transaction `$tx`: `Err(Fenced)` when a
/// newer leader exists (an epoch) or the work run's row was put back or taken by another session
/// (a claim). `$lock` is ` FOR SHARE` on PostgreSQL, so a new leader's epoch, or the leader's
/// putting the row back, waits for the transaction to end and the check holds until the commit;
/// SQLite's `BEGIN IMMEDIATE` holds the whole database.
macro_rules! check_fence {
    ($guard:expr, $tx:expr, $lock:literal) => {
        match $guard {
            None => Ok(()),
            Some($crate::state::Fence::Epoch(epoch)) => {
                let newest: Option<i64> =
                    sqlx::query_scalar(concat!("SELECT epoch FROM daemon_leader WHERE id = 1", $lock))
                        .fetch_optional($tx)
                        .await?;
                $crate::state::Fenced::check(*epoch, newest)
            }
            Some($crate::state::Fence::Claim(claim)) => {
                let held: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT id FROM daemon_work WHERE id = $1 AND session = $2 AND state = 'running'",
                    $lock
                ))
                .bind(&claim.run)
                .bind(&claim.session)
                .fetch_optional($tx)
                .await?;
                claim.check(held.is_some())
            }
        }
    };
}
pub(crate) use check_fence;

/// Pauses here when the `failpoints` feature is on and `VIGIL_PAUSE=POINT:MILLISECONDS` names
/// `point`: how tests stop a process (SIGSTOP) at an exact place, such as inside a fenced
/// transaction or between a backup's upload and its commit. Release builds do not have it.
pub async fn pause_point(point: &str) {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("VIGIL_PAUSE")
        && let Some((at, millis)) = spec.rsplit_once(':')
        && at == point
        && let Ok(millis) = millis.parse::<u64>()
    {
        tracing::info!(point, millis, "failpoint: pausing");
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let _ = point;
}

/// Runs `$body` in a transaction of `$db` that first checks `$guard` (an `Option<Fence>`: the
/// handle's own is `db.guard()`) and commits after it; `Ok(Err(Fenced))` when the guard no
/// longer holds: nothing is written. `$body` uses `&mut *$tx`.
macro_rules! fenced {
    ($db:expr, $guard:expr, $tx:ident => $body:expr) => {
        match $db.pool() {
            $crate::state::Pool::Sqlite(pool) => {
                fenced!(@in pool.begin_with("BEGIN IMMEDIATE"), "", $guard, $tx => $body)
            }
            $crate::state::Pool::Postgres(pool) => fenced!(@in pool.begin(), " FOR SHARE", $guard, $tx => $body),
        }
    };
    (@in $begin:expr, $lock:literal, $guard:expr, $tx:ident => $body:expr) => {{
        let guard: Option<$crate::state::Fence> = $guard;
        let mut $tx = $begin.await?;
        match $crate::state::check_fence!(guard.as_ref(), &mut *$tx, $lock) {
            Err(fenced) => Ok(Err(fenced)),
            Ok(()) => {
                if guard.is_some() {
                    $crate::state::pause_point("state:fenced").await;
                }
                let out = $body;
                $tx.commit().await?;
                Ok(Ok(out))
            }
        }
    }};
}
pub(crate) use fenced;

/// How long a session of the PostgreSQL state store may sit idle inside a transaction, or have
/// data unacknowledged by a silent peer, before the server ends it. No transaction of vigil's
/// waits on anything but the state store, so one idle this long is a paused or cut-off process:
/// its row locks (a leader row read `FOR SHARE`, a claimed row) must not outlive its lease, or
/// no standby can take over while it sleeps.
pub const LEASE: Duration = Duration::from_secs(10);

/// The settings every connection to a PostgreSQL state store starts with, so that a paused or
/// partitioned vigil loses its locks and claims within [`LEASE`]:
/// `idle_in_transaction_session_timeout` ends a session paused inside a transaction (which
/// `idle_session_timeout`, set on the lease connections, does not), and TCP keepalives with
/// `tcp_user_timeout` end one whose peer stopped answering mid-query.
///
/// Each is `SET` after connecting rather than sent at startup, which a pooler (PgBouncer) refuses,
/// and one the server does not know (before PostgreSQL 12) is skipped with a warning.
fn session_settings() -> [(&'static str, String); 5] {
    let lease = LEASE.as_secs();
    [
        ("idle_in_transaction_session_timeout", format!("{}", LEASE.as_millis())),
        ("tcp_keepalives_idle", format!("{}", lease / 2)),
        ("tcp_keepalives_interval", "1".to_owned()),
        ("tcp_keepalives_count", format!("{}", lease / 2)),
        ("tcp_user_timeout", format!("{}", LEASE.as_millis())),
    ]
}

/// Sets [`session_settings`] on a new connection; one the server refuses is warned about once
/// per process, and the connection is used without it.
async fn set_lease(conn: &mut sqlx::PgConnection) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    for (name, value) in session_settings() {
        let set = format!("SET {name} = {value}");
        if let Err(err) = sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *conn).await
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(setting = name, %err, "the state store refused a setting that ends a paused vigil's session within the lease; a paused daemon keeps its locks until its connection breaks");
        }
    }
}

/// An open state database: a pool, and the fence its writes carry.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
    /// The epoch this process leads at, shared by every clone (0: none, writes unfenced).
    fence: Arc<AtomicI64>,
    /// The work run this handle writes for, if it is one: its writes are guarded by the claim
    /// instead of the epoch.
    claim: Option<Arc<Claim>>,
}

/// What a handle's writes are checked against, in their own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// The epoch of the leader this process is: refused once a newer one exists.
    Epoch(i64),
    /// A claimed run of queued work: refused once its row is no longer running under the
    /// session that claimed it.
    Claim(Arc<Claim>),
}

/// A claim on a row of the work queue: the fencing token of one run (Kleppmann's, for leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The row's id (the run's saga id).
    pub run: String,
    /// The session that claimed it.
    pub session: String,
}

impl Claim {
    /// Refuses the write when the row is no longer `held` by this claim.
    pub fn check(&self, held: bool) -> Result<(), Fenced> {
        if held { Ok(()) } else { Err(Fenced::Claim { run: self.run.clone() }) }
    }
}

/// The connection pool of a state database.
#[derive(Debug, Clone)]
pub enum Pool {
    /// SQLite in WAL mode.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// A write refused by its fencing token: a newer daemon leads the store, or the work run it
/// belongs to was taken from this replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// A newer leader took over.
    #[error(
        "this daemon led at epoch {epoch}, but another took over at epoch {newer}: its writes are refused; it stops scheduling and stands by"
    )]
    Epoch {
        /// The epoch the write carried.
        epoch: i64,
        /// The newest leader's.
        newer: i64,
    },
    /// The run's claim was lost (its session ended, the row was put back or claimed again).
    #[error(
        "work run {run} is no longer this replica's (its session lost the claim): its writes are refused; whoever claimed it next carries it on"
    )]
    Claim {
        /// The run.
        run: String,
    },
}

impl Fenced {
    /// Refuses `epoch` when `newest` (the leader row's) is newer.
    pub fn check(epoch: i64, newest: Option<i64>) -> Result<(), Self> {
        match newest {
            Some(newer) if newer > epoch => Err(Self::Epoch { epoch, newer }),
            _ => Ok(()),
        }
    }
}

/// Why the state store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Connecting failed.
    #[error("cannot open the state store {target}: {source}")]
    Open {
        /// The file or URL (never with a password).
        target: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The password reference could not be read.
    #[error("cannot read the state store password: {0}")]
    Password(#[from] ResolveError),
    /// A migration failed.
    #[error("state store migration {version} ({name}) failed: {source}; the database is unchanged by it")]
    Migrate {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The database has migrations this vigil does not know: it was used by a newer version.
    #[error("the state store has schema version {found}, newer than this vigil knows ({known}); upgrade vigil")]
    TooNew {
        /// The newest version applied in the database.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A query failed.
    #[error("state store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A newer daemon leads the store.
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

impl Db {
    /// Opens the configured store and brings its schema up to date.
    pub async fn open(store: &StateStore) -> Result<Self, StateError> {
        let db = match store {
            StateStore::Sqlite { path } => Self::open_sqlite(path).await?,
            StateStore::Postgres { url, password, tls } => {
                let password = password.as_ref().map(|p| p.resolve_local()).transpose()?;
                let options = PgConnectOptions::from_str(url)
                    .map_err(|source| StateError::Open { target: url.clone(), source })?;
                let mut options = tls.postgres(options);
                if let Some(password) = &password {
                    options = options.password(password.expose_secret());
                }
                Self::open_postgres(options, url).await?
            }
        };
        migrations::apply(&db).await?;
        Ok(db)
    }

    async fn open_sqlite(path: &Path) -> Result<Self, StateError> {
        let target = path.display().to_string();
        if let Some(parent) = path.parent() {
            // The data dir holds the signing key too: only vigil's user enters it.
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .await
                .map_err(|err| StateError::Open { target: target.clone(), source: sqlx::Error::Io(err) })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL is durable against process crashes; only power loss can drop the
            // newest transactions, never corrupt older ones.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StateError::Open { target, source })?;
        Ok(Self::new(Pool::Sqlite(pool)))
    }

    async fn open_postgres(options: PgConnectOptions, url: &str) -> Result<Self, StateError> {
        let pool = PgPoolOptions::new()
            .after_connect(|conn, _| {
                Box::pin(async move {
                    set_lease(conn).await;
                    Ok(())
                })
            })
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|source| StateError::Open { target: url.to_owned(), source })?;
        Ok(Self::new(Pool::Postgres(pool)))
    }

    fn new(pool: Pool) -> Self {
        Self { pool, fence: Arc::default(), claim: None }
    }

    /// A handle for one claimed run of queued work: every saga write, catalog write and evidence
    /// append through it is refused once `claim` no longer holds its row, so a replica that was
    /// paused or cut off while another took the run over cannot write for it afterwards.
    pub fn claimed(&self, claim: Claim) -> Self {
        Self { pool: self.pool.clone(), fence: Arc::default(), claim: Some(Arc::new(claim)) }
    }

    /// Checks this handle's fence now, outside any write: what a run asks immediately before
    /// an effect outside the state store, and before it reports how it ended.
    pub async fn check_fence(&self) -> Result<(), StateError> {
        let guard = self.guard();
        let checked: Result<(), Fenced> = on_pool!(self, pool => check_fence!(guard.as_ref(), pool, ""));
        Ok(checked?)
    }

    /// What this handle's writes are checked against: its claim, or the epoch it leads at.
    pub fn guard(&self) -> Option<Fence> {
        match &self.claim {
            Some(claim) => Some(Fence::Claim(claim.clone())),
            None => self.epoch().map(Fence::Epoch),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Fences every later saga write and evidence append through this handle and its clones
    /// with `epoch`, the fencing token this process took when it became the leader: each is
    /// refused once a newer epoch exists.
    pub fn fence(&self, epoch: i64) {
        self.fence.store(epoch, Ordering::SeqCst);
    }

    /// Lifts the fence: a daemon that stopped leading (its lead's jobs ended) works on as a
    /// standby, whose work is guarded by its claim's session instead.
    pub fn unfence(&self) {
        self.fence.store(0, Ordering::SeqCst);
    }

    /// The epoch writes are fenced with, if any.
    pub fn epoch(&self) -> Option<i64> {
        Some(self.fence.load(Ordering::SeqCst)).filter(|&epoch| epoch > 0)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection, waiting for queries in flight.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}
