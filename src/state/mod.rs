//! The state store: one SQL database, SQLite (a file under the data dir, the embedded default)
//! or PostgreSQL (shared by several vigil instances), chosen by the evidence store URL.
//!
//! It holds the evidence ledger's tables today; saga state and leases join them with the
//! capabilities that need them. Migrations are embedded, versioned and applied on open, under
//! a lock so that two processes opening one database at once apply each migration once.

mod migrations;

use std::path::{Path, PathBuf};
use std::str::FromStr;
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
        match $db {
            $crate::state::Db::Sqlite($pool) => $body,
            $crate::state::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// An open state database.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite in WAL mode.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
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
        Ok(Self::Sqlite(pool))
    }

    async fn open_postgres(options: PgConnectOptions, url: &str) -> Result<Self, StateError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|source| StateError::Open { target: url.to_owned(), source })?;
        Ok(Self::Postgres(pool))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection, waiting for queries in flight.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}
