//! MySQL and MariaDB: passwords set as `mysql_native_password` hashes computed here, so the
//! plaintext never reaches the server or its logs.
//!
//! MariaDB has no dual passwords, so single-user rotation there has a short window in which
//! clients holding the old password cannot open new connections; alternating users avoid it
//! (docs/configuration.md). MySQL (caching_sha2_password, `RETAIN CURRENT PASSWORD`) is not
//! yet driven: there is no MySQL server among the test services to prove it against.

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;
use sha1::{Digest, Sha1};
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::pool::PoolConnection;

use super::{Credential, DbEngine, Endpoint, EngineError};
use crate::secret::SecretString;

/// A MySQL or MariaDB server administered by one user.
pub struct MysqlEngine {
    endpoint: Endpoint,
    admin: Credential,
    /// The admin's connections, opened on first use and kept for the process.
    pool: MySqlPool,
}

/// How to log in to the server at `endpoint` as `credential`; also what backups connect with.
pub(crate) fn connect_options(endpoint: &Endpoint, credential: &Credential) -> MySqlConnectOptions {
    let mut options = MySqlConnectOptions::new()
        .host(&endpoint.host)
        .port(endpoint.port)
        .username(&credential.username)
        .password(credential.password.expose_secret());
    if let Some(database) = &endpoint.database {
        options = options.database(database);
    }
    endpoint.tls.mysql(options)
}

impl MysqlEngine {
    /// The engine at `endpoint`, administered with `admin`.
    pub fn new(endpoint: Endpoint, admin: Credential) -> Self {
        // Statements are not logged: they carry password hashes.
        let options = connect_options(&endpoint, &admin).disable_statement_logging();
        let pool = super::admin_pool().connect_lazy_with(options);
        Self { endpoint, admin, pool }
    }

    fn options(&self, credential: &Credential) -> MySqlConnectOptions {
        connect_options(&self.endpoint, credential)
    }

    async fn admin(&self, what: &str) -> Result<PoolConnection<MySql>, EngineError> {
        self.pool
            .acquire()
            .await
            .map_err(|err| EngineError::connecting(&self.endpoint, what, &self.admin.username, err))
    }

    /// The hosts `user` is defined for (`'user'@'host'` accounts).
    async fn hosts(&self, conn: &mut MySqlConnection, user: &str, what: &str) -> Result<Vec<String>, EngineError> {
        let hosts: Vec<String> = sqlx::query_scalar("SELECT Host FROM mysql.user WHERE User = ?")
            .bind(user)
            .fetch_all(&mut *conn)
            .await
            .map_err(|err| EngineError::from_sqlx(what, user, err))?;
        if hosts.is_empty() {
            return Err(EngineError::Refused { what: what.to_owned(), reason: format!("no account named {user}") });
        }
        Ok(hosts)
    }
}

/// `` `name` `` with embedded backquotes doubled: a MySQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Every base table's rows in the connection's database as `schema.table` → count, read on
/// `conn` (inside whatever transaction it holds).
pub async fn count_rows(conn: &mut MySqlConnection) -> Result<std::collections::BTreeMap<String, u64>, sqlx::Error> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(table_schema AS CHAR), CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = std::collections::BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!("SELECT COUNT(*) FROM {}.{}", quote_ident(&schema), quote_ident(&table));
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await?;
        counts.insert(format!("{schema}.{table}"), u64::try_from(count).unwrap_or_default());
    }
    Ok(counts)
}

/// `'text'` with quotes and backslashes escaped: a MySQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The `mysql_native_password` hash: `*` and the upper-case hex of SHA1(SHA1(password)).
pub fn native_password_hash(password: &SecretString) -> String {
    let inner = Sha1::digest(password.expose_secret().as_bytes());
    format!("*{}", hex::encode_upper(Sha1::digest(inner)))
}

impl DbEngine for MysqlEngine {
    fn test_login<'a>(
        &'a self,
        credential: &'a Credential,
        probes: &'a [String],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let user = &credential.username;
            let conn = MySqlConnection::connect_with(&self.options(credential))
                .await
                .map_err(|err| EngineError::connecting(&self.endpoint, "log in", user, err))?;
            super::run_probes(conn, user, probes).await
        }
        .boxed()
    }

    fn set_password<'a>(&'a self, user: &'a str, password: &'a SecretString) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let what = format!("set the password of user {user}");
            let mut conn = self.admin(&what).await?;
            let hash = native_password_hash(password);
            let mut result = Ok(());
            for host in self.hosts(&mut conn, user, &what).await? {
                // ALTER USER takes no bind parameters; the hash is `*` and hex only.
                let statement = format!("ALTER USER {}@{} IDENTIFIED BY PASSWORD '{hash}'", quote(user), quote(&host));
                result = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await.map(drop);
                if result.is_err() {
                    break;
                }
            }
            drop(conn);
            result.map_err(|err| EngineError::from_sqlx(&what, user, err))
        }
        .boxed()
    }

    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<u64, EngineError>> {
        async move {
            let what = format!("count the sessions of user {user}");
            let mut conn = self.admin(&what).await?;
            let count: Result<i64, _> =
                sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?")
                    .bind(user)
                    .fetch_one(&mut *conn)
                    .await;
            drop(conn);
            Ok(u64::try_from(count.map_err(|err| EngineError::from_sqlx(&what, user, err))?).unwrap_or(0))
        }
        .boxed()
    }

    fn grants<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, EngineError>> {
        async move {
            let what = format!("list the privileges of user {user}");
            let mut conn = self.admin(&what).await?;
            let mut grants = Vec::new();
            for host in self.hosts(&mut conn, user, &what).await? {
                let grantee = format!("{}@{}", quote(user), quote(&host));
                let rows: Result<Vec<String>, _> = sqlx::query_scalar(
                    "SELECT CONCAT(PRIVILEGE_TYPE, ' on *.*') FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
                     UNION ALL SELECT CONCAT(PRIVILEGE_TYPE, ' on ', TABLE_SCHEMA, '.*') FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = ? \
                     UNION ALL SELECT CONCAT(PRIVILEGE_TYPE, ' on ', TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = ? \
                     UNION ALL SELECT CONCAT('member of ', Role) FROM mysql.roles_mapping WHERE User = ? AND Host = ?",
                )
                .bind(&grantee)
                .bind(&grantee)
                .bind(&grantee)
                .bind(user)
                .bind(&host)
                .fetch_all(&mut *conn)
                .await;
                grants.extend(rows.map_err(|err| EngineError::from_sqlx(&what, user, err))?.into_iter().map(|g| format!("{host}: {g}")));
            }
            drop(conn);
            grants.sort();
            grants.dedup();
            Ok(grants)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_hashes_match_mysql_s_password_function() {
        // MySQL/MariaDB: SELECT PASSWORD('password') = '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19'.
        assert_eq!(
            native_password_hash(&SecretString::from("password".to_owned())),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
    }
}
