//! PostgreSQL: passwords set as SCRAM-SHA-256 verifiers computed here, so the plaintext never
//! reaches the server, its logs or `pg_stat_statements`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, Postgres};

use super::{Credential, DbEngine, Endpoint, EngineError};
use crate::secret::SecretString;

/// PostgreSQL's default SCRAM iteration count.
pub(crate) const SCRAM_ITERATIONS: u32 = 4096;

/// A PostgreSQL server administered by one role.
pub struct PostgresEngine {
    endpoint: Endpoint,
    admin: Credential,
    /// The admin's connections, opened on first use and kept: each SCRAM login costs the client
    /// and the server thousands of hash iterations, which a loop over secrets would repeat.
    pool: PgPool,
}

/// The `search_path` of every session vigil runs its own SQL on (admin, backup, scratch and
/// drill connections): the catalog, then temporary objects last. Anything a database's roles
/// create (a `public.count`, a table shadowing a catalog) is never found by an unqualified name,
/// so no code of theirs runs under vigil's privileges (CVE-2018-1058).
pub const SAFE_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// How to log in to the server at `endpoint` as `credential` for vigil's own SQL, with
/// [`SAFE_SEARCH_PATH`] set from the session's start: what admin, backup, scratch and drill
/// connections use.
pub(crate) fn connect_options(endpoint: &Endpoint, credential: &Credential) -> PgConnectOptions {
    login_options(endpoint, credential).options([("search_path", SAFE_SEARCH_PATH)])
}

/// How an application logs in as `credential`: the database's own `search_path`, for a
/// credential under test and its probes, which are the application's queries.
pub(crate) fn login_options(endpoint: &Endpoint, credential: &Credential) -> PgConnectOptions {
    let mut options = PgConnectOptions::new()
        .host(&endpoint.host)
        .port(endpoint.port)
        .username(&credential.username)
        .password(credential.password.expose_secret())
        .application_name("vigil");
    if let Some(database) = &endpoint.database {
        options = options.database(database);
    }
    endpoint.tls.postgres(options)
}

impl PostgresEngine {
    /// The engine at `endpoint`, administered with `admin`.
    pub fn new(endpoint: Endpoint, admin: Credential) -> Self {
        // Statements are not logged: they name roles, and a verifier is not for logs either.
        let options = connect_options(&endpoint, &admin).disable_statement_logging();
        let pool = super::admin_pool().connect_lazy_with(options);
        Self { endpoint, admin, pool }
    }

    fn options(&self, credential: &Credential) -> PgConnectOptions {
        login_options(&self.endpoint, credential)
    }

    async fn admin(&self, what: &str) -> Result<PoolConnection<Postgres>, EngineError> {
        self.pool
            .acquire()
            .await
            .map_err(|err| EngineError::connecting(&self.endpoint, what, &self.admin.username, err))
    }
}

/// `"name"` with embedded quotes doubled: a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every user table's rows as `schema.table` → count, read on `conn` (inside whatever snapshot
/// or transaction it holds): what a backup records and a restore is checked against.
pub async fn count_rows(conn: &mut PgConnection) -> Result<std::collections::BTreeMap<String, u64>, sqlx::Error> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = std::collections::BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!("SELECT count(*) FROM {}.{}", quote_ident(&schema), quote_ident(&table));
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await?;
        counts.insert(format!("{schema}.{table}"), u64::try_from(count).unwrap_or_default());
    }
    Ok(counts)
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677):
/// `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey`.
///
/// Passwords vigil generates are ASCII, for which SASLprep changes nothing.
pub fn scram_sha256_verifier(password: &SecretString, salt: &[u8], iterations: u32) -> String {
    let mut salted = zeroize::Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password.expose_secret().as_bytes(), salt, iterations, salted.as_mut());
    let hmac = |key: &[u8], message: &[u8]| -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(message);
        mac.finalize().into_bytes().into()
    };
    let client_key = zeroize::Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
    let stored_key: [u8; 32] = Sha256::digest(client_key.as_ref()).into();
    let server_key = hmac(salted.as_ref(), b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

impl DbEngine for PostgresEngine {
    fn test_login<'a>(
        &'a self,
        credential: &'a Credential,
        probes: &'a [String],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let user = &credential.username;
            let conn = PgConnection::connect_with(&self.options(credential))
                .await
                .map_err(|err| EngineError::connecting(&self.endpoint, "log in", user, err))?;
            super::run_probes(conn, user, probes).await
        }
        .boxed()
    }

    fn set_password<'a>(&'a self, user: &'a str, password: &'a SecretString) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            use rand_core::RngCore as _;
            let mut salt = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut salt);
            let verifier = scram_sha256_verifier(password, &salt, SCRAM_ITERATIONS);
            let what = format!("set the password of role {user}");
            let mut conn = self.admin(&what).await?;
            // ALTER ROLE takes no bind parameters; the verifier is base64 and `$:` only.
            let statement = format!("ALTER ROLE {} PASSWORD '{verifier}'", quote_ident(user));
            let result = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await;
            drop(conn);
            result.map(drop).map_err(|err| EngineError::from_sqlx(&what, user, err))
        }
        .boxed()
    }

    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<u64, EngineError>> {
        async move {
            let what = format!("count the sessions of role {user}");
            let mut conn = self.admin(&what).await?;
            let count: Result<i64, _> =
                sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1")
                    .bind(user)
                    .fetch_one(&mut *conn)
                    .await;
            drop(conn);
            let count = count.map_err(|err| EngineError::from_sqlx(&what, user, err))?;
            Ok(u64::try_from(count).unwrap_or(0))
        }
        .boxed()
    }

    fn grants<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, EngineError>> {
        async move {
            const SQL: &str = "\
                SELECT 'member of ' || g.rolname FROM pg_catalog.pg_auth_members m \
                  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE r.rolname = $1 \
                UNION ALL SELECT 'attribute ' || a FROM pg_catalog.pg_roles r, LATERAL (VALUES \
                  (CASE WHEN r.rolsuper THEN 'superuser' END), (CASE WHEN r.rolcreatedb THEN 'createdb' END), \
                  (CASE WHEN r.rolcreaterole THEN 'createrole' END), (CASE WHEN r.rolcanlogin THEN 'login' END), \
                  (CASE WHEN r.rolreplication THEN 'replication' END), (CASE WHEN r.rolbypassrls THEN 'bypassrls' END)) v(a) \
                  WHERE r.rolname = $1 AND a IS NOT NULL \
                UNION ALL SELECT privilege_type || ' on ' || table_schema || '.' || table_name \
                  FROM information_schema.role_table_grants WHERE grantee = $1 \
                UNION ALL SELECT 'database ' || d.datname || ': ' || p.privilege_type FROM pg_catalog.pg_database d, \
                  LATERAL pg_catalog.aclexplode(d.datacl) p JOIN pg_catalog.pg_roles r ON r.oid = p.grantee WHERE r.rolname = $1";
            let what = format!("list the privileges of role {user}");
            let mut conn = self.admin(&what).await?;
            let rows: Result<Vec<String>, _> = sqlx::query_scalar(SQL).bind(user).fetch_all(&mut *conn).await;
            drop(conn);
            let mut grants = rows.map_err(|err| EngineError::from_sqlx(&what, user, err))?;
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

    /// The verifier's form is PostgreSQL's; that the server accepts it as the password is
    /// proved by the integration tests, which log in with the plaintext afterwards.
    #[test]
    fn the_verifier_has_postgresql_s_form_and_hides_the_password() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = scram_sha256_verifier(&SecretString::from("pencil".to_owned()), &salt, 4096);
        let (head, keys) = verifier.rsplit_once('$').unwrap();
        assert_eq!(head, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==");
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!((BASE64.decode(stored).unwrap().len(), BASE64.decode(server).unwrap().len()), (32, 32));
        assert!(!verifier.contains("pencil"));
        let other = scram_sha256_verifier(&SecretString::from("pencil".to_owned()), b"another salt", 4096);
        assert_ne!(verifier, other, "the salt is part of the verifier");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
