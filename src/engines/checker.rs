//! The role a drill's checks run as (PostgreSQL): made for one drill run under a random name
//! fixed when the drill starts, neither a superuser nor able to create roles or databases,
//! owning nothing in the copy it reads, and granted only what reading takes: `CONNECT` on the
//! database, `USAGE` on its schemas, `SELECT` on their tables and sequences. Whatever a restored
//! copy holds that runs code when read (a view calling a function, a policy) then runs as a role
//! that can harm nothing, never as the scratch admin or the restored cluster's superuser.
//!
//! Its password is made each time the role is made ready (so a resumed drill needs nothing it
//! did not record), set as a SCRAM verifier computed here and sent only in the connection's
//! options: never on a command line, never stored.

use secrecy::SecretString;

use super::Credential;
use super::postgres::quote_ident;
use crate::secret::PasswordPolicy;

/// How every checking role's name begins.
pub const PREFIX: &str = "vigil_check_";

/// A fresh checking role's name: [`PREFIX`] and 16 random hex digits, which no one can have
/// made ready on the scratch server beforehand.
pub fn random_name() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// The checking role's name for a drill run that began before vigil named one (it recorded
/// none): derived from what the run recorded, `seed`.
pub fn derived_name(seed: &str) -> String {
    use sha2::Digest as _;
    format!("{PREFIX}{}", hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8]))
}

/// Why the checking role could not be made ready.
pub(crate) enum MakeError {
    /// A statement failed.
    Sql(sqlx::Error),
    /// A role of its name exists with more than vigil gives one.
    Unfit(String),
}

impl From<sqlx::Error> for MakeError {
    fn from(err: sqlx::Error) -> Self {
        Self::Sql(err)
    }
}

/// What is wrong with an existing role `$1` for checking, or NULL.
const UNFIT: &str = "\
    SELECT CASE \
      WHEN r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication THEN 'it holds superuser, createrole, createdb or replication' \
      WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid) THEN 'it is a member of another role' \
    END FROM pg_catalog.pg_roles r WHERE r.rolname = $1";

/// Makes `role` ready on `conn` (a connection to `database` as its admin, or as the restored
/// cluster's superuser): created `NOLOGIN` if absent, given a fresh password and `LOGIN`, and
/// granted reading `database`. A role of that name that holds more than that is refused, not
/// used. A superuser also gives it `BYPASSRLS`; an admin that is not one disables row security
/// on the tables it owns (every table of a restored dump): the copy is vigil's, and a count or
/// an assertion must see every row, as the backup counted them.
pub(crate) async fn make(conn: &mut sqlx::PgConnection, database: &str, role: &str) -> Result<Credential, MakeError> {
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
        .fetch_one(&mut *conn)
        .await?;
    let quoted = quote_ident(role);
    let existing: Option<Option<String>> = sqlx::query_scalar(UNFIT).bind(role).fetch_optional(&mut *conn).await?;
    match existing {
        Some(Some(problem)) => {
            return Err(MakeError::Unfit(format!(
                "role {role} exists and {problem}; it is not the one vigil made: drop it and run the drill again"
            )));
        }
        Some(None) => {}
        None => {
            let rls = if superuser { "BYPASSRLS" } else { "NOBYPASSRLS" };
            let create = format!(
                "CREATE ROLE {quoted} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOINHERIT {rls}"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut *conn).await?;
        }
    }
    let password: SecretString = PasswordPolicy::default().generate();
    let salt: [u8; 16] = {
        use rand_core::RngCore as _;
        let mut salt = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut salt);
        salt
    };
    let verifier = super::scram_sha256_verifier(&password, &salt, super::postgres::SCRAM_ITERATIONS);
    // ALTER ROLE takes no bind parameters; the verifier is base64 and `$:` only.
    let login = format!("ALTER ROLE {quoted} LOGIN PASSWORD '{verifier}'");
    sqlx::raw_sql(sqlx::AssertSqlSafe(login)).execute(&mut *conn).await?;
    grant_reading(conn, database, &quoted, superuser).await?;
    Ok(Credential { username: role.to_owned(), password })
}

/// Grants the role `quoted` reading `database`: `CONNECT`, then `USAGE` on every schema but the
/// catalogs and `SELECT` on everything in them.
async fn grant_reading(
    conn: &mut sqlx::PgConnection,
    database: &str,
    quoted: &str,
    superuser: bool,
) -> Result<(), sqlx::Error> {
    let mut statements = vec![format!("GRANT CONNECT ON DATABASE {} TO {quoted}", quote_ident(database))];
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_catalog.pg_namespace \
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    for schema in &schemas {
        let schema = quote_ident(schema);
        statements.push(format!("GRANT USAGE ON SCHEMA {schema} TO {quoted}"));
        statements.push(format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {quoted}"));
        statements.push(format!("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}"));
    }
    if !superuser {
        let guarded: Vec<String> = sqlx::query_scalar(
            "SELECT c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c \
             WHERE c.relrowsecurity AND c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)",
        )
        .fetch_all(&mut *conn)
        .await?;
        statements.extend(guarded.iter().map(|table| format!("ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")));
    }
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers_of_their_own() {
        let (a, b) = (random_name(), random_name());
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 16, "{a}");
        assert_ne!(a, b);
        assert_eq!(derived_name("run 1"), derived_name("run 1"));
        assert_ne!(derived_name("run 1"), derived_name("run 2"));
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
