//! Database engines behind one small trait: log in, change a user's password, count a user's
//! sessions, and list what a user may do. Rotation drives them and never knows which engine
//! (or which cloud hosts it) it talks to.
//!
//! Engines know nothing of sagas, schedules or evidence, and never put a password in an error,
//! a log line or a statement a server might log: PostgreSQL gets a SCRAM verifier computed
//! here, MariaDB a `mysql_native_password` hash.

pub mod archive;
pub mod checker;
pub mod dump;
pub mod mysql;
pub mod postgres;
pub mod scratch;
pub mod server;

use futures_util::future::BoxFuture;

pub use mysql::MysqlEngine;
pub(crate) use mysql::connect_options as mysql_options;
pub(crate) use postgres::connect_options as postgres_options;
pub use postgres::{PostgresEngine, scram_sha256_verifier};

pub use crate::secret::Credential;
use crate::secret::SecretString;
use crate::tls::Tls;

/// A database engine's wire protocol and SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Engine {
    /// The port the engine listens on unless told otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Mysql => 3306,
        }
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// Where a database listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The database to connect to, when the engine needs one.
    pub database: Option<String>,
    /// How connections are secured.
    pub tls: Tls,
}

/// Why an engine operation failed. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The server refused the credential.
    #[error("{user} cannot log in: {reason}")]
    Login {
        /// The user.
        user: String,
        /// The server's words.
        reason: String,
    },
    /// The server refused a statement (a missing privilege, an unknown user).
    #[error("{what}: {reason}")]
    Refused {
        /// What was attempted.
        what: String,
        /// The server's words.
        reason: String,
    },
    /// No TLS connection to the server could be made as its settings ask; nothing was sent.
    #[error(
        "cannot connect to {server} with TLS ({mode}): {reason}; check the target's tls.ca_file, that the server's certificate names the host vigil connects to, and that the server has TLS on"
    )]
    Tls {
        /// `host:port`.
        server: String,
        /// The configured mode.
        mode: &'static str,
        /// What failed.
        reason: String,
    },
    /// The network or the server failed in a way that may pass: retry.
    #[error("{what} failed for now: {reason}")]
    Transient {
        /// What was attempted.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

impl EngineError {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Sorts an error from connecting to `endpoint`: a TLS failure names the server and is not
    /// retried (a certificate does not fix itself); anything else as [`Self::from_sqlx`].
    pub(crate) fn connecting(endpoint: &Endpoint, what: &str, user: &str, err: sqlx::Error) -> Self {
        match tls_failure(&err) {
            Some(reason) => Self::Tls {
                server: format!("{}:{}", endpoint.host, endpoint.port),
                mode: endpoint.tls.mode.as_str(),
                reason,
            },
            None => Self::from_sqlx(what, user, err),
        }
    }

    /// Sorts an sqlx error into login refusal, statement refusal or transient failure.
    pub(crate) fn from_sqlx(what: &str, user: &str, err: sqlx::Error) -> Self {
        let reason = reason(&err);
        match &err {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // 28P01/28000: PostgreSQL's invalid password / authorization; 1045: MySQL's access denied.
                if matches!(code.as_ref(), "28P01" | "28000" | "1045") {
                    Self::Login { user: user.to_owned(), reason }
                } else if matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "1040" | "1205" | "1213") {
                    Self::Transient { what: what.to_owned(), reason }
                } else {
                    Self::Refused { what: what.to_owned(), reason }
                }
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => {
                Self::Transient { what: what.to_owned(), reason }
            }
            _ => Self::Refused { what: what.to_owned(), reason },
        }
    }
}

/// What a database said, as people read it (terminals, the ledger, reports, alerts): for the
/// server's own errors its message alone, since sqlx appends the line of the server's C source
/// that raised it ("… at line 948"), which tells an operator nothing; sqlx's wording otherwise.
pub fn reason(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => format!("error returned from database: {}", db.message()),
        other => other.to_string(),
    }
}

/// What went wrong, when `err` is a failure to set up TLS: sqlx's own TLS errors (no TLS on
/// the server, a bad CA file) and rustls's handshake errors, which reach sqlx as IO errors.
fn tls_failure(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Tls(inner) => Some(inner.to_string()),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            let inner = io.get_ref()?;
            let text = inner.to_string();
            // rustls's errors, as rustls words them: certificate, handshake and alert failures.
            ["certificate", "handshake", "peer", "alert", "TLS"].iter().any(|word| text.contains(word)).then_some(text)
        }
        _ => None,
    }
}

/// Runs `SELECT 1` and then each probe on `conn`, stopping at the first failure, and closes
/// the connection: the test of a credential, the same on every engine.
async fn run_probes<C>(mut conn: C, user: &str, probes: &[String]) -> Result<(), EngineError>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    let mut result = sqlx::raw_sql("SELECT 1").execute(&mut conn).await.map(drop);
    for probe in probes {
        if result.is_err() {
            break;
        }
        result = sqlx::raw_sql(sqlx::AssertSqlSafe(probe.clone())).execute(&mut conn).await.map(drop);
    }
    let _ = conn.close().await;
    result.map_err(|err| EngineError::from_sqlx("run the probe queries", user, err))
}

/// How an engine's admin connections are pooled: a few, opened on first use, closed after a
/// minute idle, so a command or the daemon logs in as admin once per target rather than once
/// per operation.
fn admin_pool<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .idle_timeout(std::time::Duration::from_secs(60))
        .acquire_timeout(std::time::Duration::from_secs(30))
}

/// What rotation needs from a database. Every method is idempotent.
pub trait DbEngine: Send + Sync {
    /// Logs in as `credential` and runs each probe query; succeeds only if all do.
    fn test_login<'a>(
        &'a self,
        credential: &'a Credential,
        probes: &'a [String],
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Sets `user`'s password, as the administrator.
    fn set_password<'a>(&'a self, user: &'a str, password: &'a SecretString) -> BoxFuture<'a, Result<(), EngineError>>;

    /// How many sessions `user` has open now.
    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<u64, EngineError>>;

    /// What `user` may do (privileges, role memberships, attributes), sorted, with the user's
    /// own name left out, so that the two users of an alternating pair compare equal when they
    /// may do the same.
    fn grants<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, EngineError>>;
}

/// The engine for `engine` at `endpoint`, administered with `admin`.
pub fn connect(engine: Engine, endpoint: Endpoint, admin: Credential) -> Box<dyn DbEngine> {
    match engine {
        Engine::Postgres => Box::new(PostgresEngine::new(endpoint, admin)),
        Engine::Mysql => Box::new(MysqlEngine::new(endpoint, admin)),
    }
}
