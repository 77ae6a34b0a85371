//! A scratch database for restore drills: dropped if a previous drill left it, created empty,
//! restored into by the engine's own tool, queried for the drill's checks, and dropped again.
//!
//! Each operation opens its own connection: a drill runs a handful of them, and the restored
//! database cannot be reached through the admin pool, which is bound to the target's database.

use std::collections::BTreeMap;

use sqlx::ConnectOptions as _;
use sqlx::Connection as _;

use super::{Credential, Endpoint, Engine, EngineError};

/// One drill's scratch database on a scratch target.
pub struct ScratchDb {
    engine: Engine,
    /// The target: its host, port, TLS and the database the admin connects to.
    server: Endpoint,
    admin: Credential,
    name: String,
}

/// The scratch database's name for run `run` of drill `drill`: `vigil_drill_`, the drill's
/// name with every character but ASCII letters and digits made `_` (a long one cut and given a
/// hash of the whole), and [`run_suffix`], within both engines' 63-character limit. A name per
/// run, recorded in the run's saga before it acts: a resumed run finds what its crash left, and
/// a run woken after another took it over, or after the next run began, never drops or
/// recreates a database another run is checking.
pub fn scratch_name(drill: &str, run: &str) -> String {
    use sha2::Digest as _;
    let safe: String =
        drill.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let run = run_suffix(run);
    if safe.len() <= 40 {
        return format!("vigil_drill_{safe}_{run}");
    }
    let hash = hex::encode(&sha2::Sha256::digest(drill.as_bytes())[..4]);
    format!("vigil_drill_{}_{hash}_{run}", &safe[..32])
}

/// Eight hex digits naming run `run` of a drill in its scratch database's and folder's names.
pub fn run_suffix(run: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(run.as_bytes())[..4])
}

impl ScratchDb {
    /// Database `name` on the server at `server`, administered by `admin`.
    pub fn new(engine: Engine, server: Endpoint, admin: Credential, name: String) -> Self {
        Self { engine, server, admin, name }
    }

    /// The engine it runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the scratch database itself is reached: the server, with its name as database.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { database: Some(self.name.clone()), ..self.server.clone() }
    }

    /// The credential the drill restores and checks with.
    pub fn admin(&self) -> &Credential {
        &self.admin
    }

    /// Logs in to the server as the admin, touching nothing: what a drill asks before it
    /// restores, so that a scratch target it cannot reach (a wrong database name, a refused
    /// login) fails the drill cleanly instead of leaving an undo that cannot connect either.
    pub async fn reach(&self) -> Result<(), EngineError> {
        self.on_server(&format!("reach the scratch server {}:{}", self.server.host, self.server.port), "SELECT 1").await
    }

    /// Drops the database if it exists (ending its sessions) and creates it empty. On
    /// PostgreSQL, `PUBLIC` may not connect to it (nor make temporary tables): it is created
    /// refusing every connection, the grants revoked, and only then opened, so no role of the
    /// scratch server is ever in it but the admin and those a drill grants `CONNECT`. (MariaDB
    /// has no `PUBLIC`: only accounts granted the database may enter.)
    pub async fn recreate(&self) -> Result<(), EngineError> {
        self.drop().await?;
        let what = format!("create scratch database {}", self.name);
        match self.engine {
            Engine::Postgres => {
                let name = super::postgres::quote_ident(&self.name);
                self.on_server(&what, &format!("CREATE DATABASE {name} WITH ALLOW_CONNECTIONS false")).await?;
                self.on_server(
                    &what,
                    &format!(
                        "REVOKE ALL ON DATABASE {name} FROM PUBLIC; ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
                    ),
                )
                .await
            }
            Engine::Mysql => {
                self.on_server(&what, &format!("CREATE DATABASE {}", super::mysql::quote_ident(&self.name))).await
            }
        }
    }

    /// Lets `user` connect to the database (PostgreSQL), as a `check_credentials` login must;
    /// nothing when no such role exists, whose login then fails on its own.
    pub async fn grant_connect(&self, user: &str) -> Result<(), EngineError> {
        let what = format!("let {user} connect to scratch database {}", self.name);
        let (database, role) = (super::postgres::quote_ident(&self.name), super::postgres::quote_ident(user));
        self.if_role_exists(user, &what, &format!("GRANT CONNECT ON DATABASE {database} TO {role}")).await
    }

    /// Runs `statement` on the server as the admin if role `role` exists, and nothing otherwise.
    async fn if_role_exists(&self, role: &str, what: &str, statement: &str) -> Result<(), EngineError> {
        let mut conn = self.connect_pg(&self.server, &self.admin, &[], what).await?;
        let found = sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&mut conn)
            .await;
        let done = match found {
            Ok(Some(_)) => sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut conn).await.map(drop),
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        let _ = conn.close().await;
        done.map_err(|err| EngineError::from_sqlx(what, &self.admin.username, err))
    }

    /// Makes `role` the drill's checking role and returns its credential, with a password made
    /// now (PostgreSQL). See [`checker`](super::checker).
    pub async fn make_checker(&self, role: &str) -> Result<Credential, EngineError> {
        let what = format!("make the checking role {role} in {}", self.name);
        let mut conn = self.connect_pg(&self.endpoint(), &self.admin, &[], &what).await?;
        let made = super::checker::make(&mut conn, &self.name, role).await;
        let _ = conn.close().await;
        made.map_err(|err| match err {
            // 42501: insufficient privilege, i.e. an admin set up before drills made this role.
            super::checker::MakeError::Sql(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                let reason = format!(
                    "{}; the scratch admin {} needs CREATEROLE to make the drill's checking role (docs/privileges.md)",
                    db.message(),
                    self.admin.username
                );
                EngineError::Refused { what, reason }
            }
            super::checker::MakeError::Sql(err) => EngineError::from_sqlx(&what, &self.admin.username, err),
            super::checker::MakeError::Unfit(reason) => EngineError::Refused { what, reason },
        })
    }

    /// Drops the checking role `role` if it exists (PostgreSQL), after the database it could
    /// read: it then holds no privilege anywhere. Idempotent.
    pub async fn drop_checker(&self, role: &str) -> Result<(), EngineError> {
        let what = format!("drop the checking role {role}");
        // Looked up first: DROP ROLE IF EXISTS asks for CREATEROLE even when there is nothing
        // to drop, and a drill that never made its role must still roll back.
        let statement = format!("DROP ROLE IF EXISTS {}", super::postgres::quote_ident(role));
        self.if_role_exists(role, &what, &statement).await
    }

    /// Drops the database if it exists, ending its sessions. Idempotent.
    pub async fn drop(&self) -> Result<(), EngineError> {
        let what = format!("drop scratch database {}", self.name);
        match self.engine {
            Engine::Postgres => {
                let name = super::postgres::quote_ident(&self.name);
                // A plain DROP makes autovacuum (a superuser's process) let go of the database,
                // which FORCE run by a role that is not a superuser may not terminate; FORCE
                // then ends what else holds it, e.g. sessions a crashed restore or check left.
                let plain = self.on_server(&what, &format!("DROP DATABASE IF EXISTS {name}")).await;
                match plain {
                    Ok(()) => Ok(()),
                    Err(_) => self.on_server(&what, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await,
                }
            }
            Engine::Mysql => {
                self.on_server(&what, &format!("DROP DATABASE IF EXISTS {}", super::mysql::quote_ident(&self.name)))
                    .await
            }
        }
    }

    /// Every user table's rows in the restored database, as the backup counted them, read as
    /// `reader` (the drill's checking role). Row security is off, as for the backup's count: a
    /// policy the reader is subject to fails the count rather than hide rows or run.
    pub async fn count_rows(&self, reader: &Credential) -> Result<BTreeMap<String, u64>, EngineError> {
        let what = format!("count the rows of scratch database {}", self.name);
        let failed = |err| EngineError::from_sqlx(&what, &reader.username, err);
        let inside = self.endpoint();
        match self.engine {
            Engine::Postgres => {
                let mut conn = self.connect_pg(&inside, reader, &[("row_security", "off")], &what).await?;
                let counts = super::postgres::count_rows(&mut conn).await.map_err(failed);
                let _ = conn.close().await;
                counts
            }
            Engine::Mysql => {
                let mut conn = self.connect_mysql(&inside, reader, &what).await?;
                let counts = super::mysql::count_rows(&mut conn).await.map_err(failed);
                let _ = conn.close().await;
                counts
            }
        }
    }

    /// Runs `sql` in the restored database as `reader` and returns its first row's first column
    /// as text (`None` for no row or SQL NULL), in a read-only transaction that is rolled back:
    /// a drill's assertion reads, it never changes what it checks. On PostgreSQL the reader is
    /// the drill's checking role, on the database's own `search_path`: an assertion is the
    /// operator's query of the application's tables, and names them as the application does;
    /// what it reaches runs as a role that can harm nothing.
    pub async fn first_value(&self, reader: &Credential, sql: &str) -> Result<Option<String>, EngineError> {
        let what = "run the assertion".to_owned();
        let failed = |err| EngineError::from_sqlx(&what, &reader.username, err);
        let inside = self.endpoint();
        let query = sqlx::AssertSqlSafe(sql.to_owned());
        match self.engine {
            Engine::Postgres => {
                // Row security off here too: no policy is evaluated, and a read one would
                // filter fails instead of passing on fewer rows.
                let options = super::postgres::login_options(&inside, reader).options([("row_security", "off")]);
                let mut conn = sqlx::PgConnection::connect_with(&options.disable_statement_logging())
                    .await
                    .map_err(|err| EngineError::connecting(&inside, &what, &reader.username, err))?;
                let mut tx = conn.begin_with("BEGIN READ ONLY").await.map_err(failed)?;
                let row = sqlx::query(query).fetch_optional(&mut *tx).await.map_err(failed)?;
                let value = row.map(|row| text_of::<sqlx::Postgres>(&row)).transpose().map_err(failed)?.flatten();
                let _ = tx.rollback().await;
                let _ = conn.close().await;
                Ok(value)
            }
            Engine::Mysql => {
                let mut conn = self.connect_mysql(&inside, reader, &what).await?;
                let mut tx = conn.begin_with("START TRANSACTION READ ONLY").await.map_err(failed)?;
                let row = sqlx::query(query).fetch_optional(&mut *tx).await.map_err(failed)?;
                let value = row.map(|row| text_of::<sqlx::MySql>(&row)).transpose().map_err(failed)?.flatten();
                let _ = tx.rollback().await;
                let _ = conn.close().await;
                Ok(value)
            }
        }
    }

    /// Creates the `amcheck` extension in the restored database (PostgreSQL), for `pg_amcheck`.
    /// The extension is not trusted: this needs a superuser, or the extension already in
    /// `template1`, from which every new database inherits it.
    pub async fn ensure_amcheck(&self) -> Result<(), EngineError> {
        let what = format!("create the amcheck extension in {}", self.name);
        // In a schema of its own: the pinned search_path would otherwise make pg_catalog the
        // extension's schema, and `public` may be the application's, or gone.
        self.execute(
            &self.endpoint(),
            &what,
            "CREATE SCHEMA IF NOT EXISTS vigil_amcheck; CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA vigil_amcheck",
        )
        .await
    }

    /// Runs `statement` on the server, as the admin, in its own database.
    async fn on_server(&self, what: &str, statement: &str) -> Result<(), EngineError> {
        self.execute(&self.server, what, statement).await
    }

    /// Runs `statement` at `endpoint` on a connection of its own.
    async fn execute(&self, endpoint: &Endpoint, what: &str, statement: &str) -> Result<(), EngineError> {
        let failed = |err| EngineError::from_sqlx(what, &self.admin.username, err);
        let statement = sqlx::AssertSqlSafe(statement.to_owned());
        match self.engine {
            Engine::Postgres => {
                let mut conn = self.connect_pg(endpoint, &self.admin, &[], what).await?;
                let done = sqlx::raw_sql(statement).execute(&mut conn).await.map(drop).map_err(failed);
                let _ = conn.close().await;
                done
            }
            Engine::Mysql => {
                let mut conn = self.connect_mysql(endpoint, &self.admin, what).await?;
                let done = sqlx::raw_sql(statement).execute(&mut conn).await.map(drop).map_err(failed);
                let _ = conn.close().await;
                done
            }
        }
    }

    /// A connection to `endpoint` as `who`, on the pinned `search_path`, with `settings`.
    async fn connect_pg(
        &self,
        endpoint: &Endpoint,
        who: &Credential,
        settings: &[(&str, &str)],
        what: &str,
    ) -> Result<sqlx::PgConnection, EngineError> {
        let options = super::postgres_options(endpoint, who).options(settings.iter().copied());
        sqlx::PgConnection::connect_with(&options.disable_statement_logging())
            .await
            .map_err(|err| EngineError::connecting(endpoint, what, &who.username, err))
    }

    async fn connect_mysql(
        &self,
        endpoint: &Endpoint,
        who: &Credential,
        what: &str,
    ) -> Result<sqlx::MySqlConnection, EngineError> {
        let options = super::mysql_options(endpoint, who).disable_statement_logging();
        sqlx::MySqlConnection::connect_with(&options)
            .await
            .map_err(|err| EngineError::connecting(endpoint, what, &who.username, err))
    }
}

/// The first column of `row` as text, whatever its SQL type of the common ones: an assertion's
/// expected value is written as text.
fn text_of<DB>(row: &DB::Row) -> Result<Option<String>, sqlx::Error>
where
    DB: sqlx::Database,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> Option<String>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<i64>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<i32>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<f64>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<bool>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    use sqlx::Row as _;
    if let Ok(value) = row.try_get::<Option<String>, _>(0) {
        return Ok(value);
    }
    if let Ok(value) = row.try_get::<Option<i64>, _>(0) {
        return Ok(value.map(|v| v.to_string()));
    }
    if let Ok(value) = row.try_get::<Option<i32>, _>(0) {
        return Ok(value.map(|v| v.to_string()));
    }
    if let Ok(value) = row.try_get::<Option<f64>, _>(0) {
        return Ok(value.map(|v| v.to_string()));
    }
    if let Ok(value) = row.try_get::<Option<bool>, _>(0) {
        return Ok(value.map(|v| v.to_string()));
    }
    Err(sqlx::Error::Decode(
        "the first column is of a type assertions do not read; cast it to text in the query".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_plain_identifiers() {
        let run = "20261208T020000Z-0badcafe";
        let suffix = run_suffix(run);
        assert_eq!(scratch_name("orders-restore", run), format!("vigil_drill_orders_restore_{suffix}"));
        assert_eq!(scratch_name("Ünï", run), format!("vigil_drill__n__{suffix}"));
        assert_ne!(scratch_name("orders", run), scratch_name("orders", "20261208T020001Z-0badcafe"), "a name per run");
        let long = scratch_name(&"a".repeat(63), run);
        assert!(long.len() <= 63 && long != scratch_name(&format!("{}b", "a".repeat(62)), run), "{long}");
    }
}
