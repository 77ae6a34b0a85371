//! The database engines against the private PostgreSQL and MariaDB: passwords change without
//! the plaintext reaching the server, logins and probes are told apart, sessions are counted,
//! and privilege lists compare equal exactly when two users may do the same.

use secrecy::SecretString;
use vigil::engines::Engine;
use vigil::engines::{self, Credential, DbEngine, EngineError};

use crate::support::{Database, Services, admin_sql};

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn engine(engine: Engine, db: &Database) -> Box<dyn DbEngine> {
    let endpoint = db.endpoint();
    engines::connect(engine, endpoint, Credential { username: db.user.clone(), password: secret(&db.password) })
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

fn create_user(kind: Engine, user: &str, table: &str) -> Vec<String> {
    match kind {
        Engine::Postgres => vec![
            format!("CREATE ROLE {user} LOGIN"),
            format!("CREATE TABLE IF NOT EXISTS {table} (id int)"),
            format!("GRANT SELECT ON {table} TO {user}"),
        ],
        Engine::Mysql => vec![
            format!("CREATE USER '{user}'@'%'"),
            format!("CREATE TABLE IF NOT EXISTS {table} (id int)"),
            format!("GRANT SELECT ON mysql.{table} TO '{user}'@'%'"),
        ],
    }
}

async fn passwords_change_and_logins_follow(kind: Engine, db: &Database) {
    let engine = engine(kind, db);
    let user = unique("vigil_app");
    let table = unique("vigil_orders");
    admin_sql(kind, db, &create_user(kind, &user, &table)).await;

    let first = secret("first-Password-123");
    engine.set_password(&user, &first).await.unwrap();
    let login = |password: &SecretString| Credential { username: user.clone(), password: password.clone() };
    let probe = match kind {
        Engine::Postgres => format!("SELECT count(*) FROM {table}"),
        Engine::Mysql => format!("SELECT COUNT(*) FROM mysql.{table}"),
    };
    engine.test_login(&login(&first), std::slice::from_ref(&probe)).await.unwrap();

    let second = secret("second-Password-456");
    engine.set_password(&user, &second).await.unwrap();
    engine.test_login(&login(&second), &[]).await.unwrap();
    let err = engine.test_login(&login(&first), &[]).await.unwrap_err();
    assert!(matches!(err, EngineError::Login { .. }), "{err}");
    assert!(!err.to_string().contains("first-Password"), "{err}");

    // A probe the user lacks the privilege for fails as a refusal, not as a login failure.
    let forbidden = match kind {
        Engine::Postgres => "SELECT * FROM pg_authid".to_owned(),
        Engine::Mysql => "SELECT * FROM mysql.global_priv".to_owned(),
    };
    let err = engine.test_login(&login(&second), &[forbidden]).await.unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");

    // An unknown user cannot be given a password.
    let err = engine.set_password(&unique("nobody"), &second).await.unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
}

async fn sessions_and_grants(kind: Engine, db: &Database) {
    use sqlx::Connection as _;
    let engine = engine(kind, db);
    let table = unique("vigil_pair");
    let (a, b) = (unique("vigil_a"), unique("vigil_b"));
    let mut statements = create_user(kind, &a, &table);
    statements.extend(create_user(kind, &b, &table));
    admin_sql(kind, db, &statements).await;
    let password = secret("pair-Password-789");
    engine.set_password(&a, &password).await.unwrap();
    assert_eq!(engine.grants(&a).await.unwrap(), engine.grants(&b).await.unwrap(), "same grants compare equal");
    let extra = match kind {
        Engine::Postgres => format!("GRANT INSERT ON {table} TO {b}"),
        Engine::Mysql => format!("GRANT INSERT ON mysql.{table} TO '{b}'@'%'"),
    };
    admin_sql(kind, db, &[extra]).await;
    let (ga, gb) = (engine.grants(&a).await.unwrap(), engine.grants(&b).await.unwrap());
    assert_ne!(ga, gb, "an extra grant is drift");
    assert!(gb.iter().any(|g| g.contains("INSERT")), "{gb:?}");

    assert_eq!(engine.sessions(&a).await.unwrap(), 0);
    let held = match kind {
        Engine::Postgres => {
            let options = db.pg_options().username(&a).password("pair-Password-789");
            Box::new(sqlx::PgConnection::connect_with(&options).await.unwrap()) as Box<dyn std::any::Any>
        }
        Engine::Mysql => {
            let options = db.mysql_options().username(&a).password("pair-Password-789");
            Box::new(sqlx::MySqlConnection::connect_with(&options).await.unwrap())
        }
    };
    assert_eq!(engine.sessions(&a).await.unwrap(), 1);
    drop(held);
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_passwords_change_and_logins_follow() {
    passwords_change_and_logins_follow(Engine::Postgres, &Services::load().postgres).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn mariadb_passwords_change_and_logins_follow() {
    passwords_change_and_logins_follow(Engine::Mysql, &Services::load().mariadb).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_counts_sessions_and_compares_grants() {
    sessions_and_grants(Engine::Postgres, &Services::load().postgres).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn mariadb_counts_sessions_and_compares_grants() {
    sessions_and_grants(Engine::Mysql, &Services::load().mariadb).await;
}

/// What a server's error says reaches people as the server's message: sqlx's own wording adds
/// the line of PostgreSQL's C source that raised it, which the reason leaves out.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_database_error_reads_without_the_servers_source_line() {
    use sqlx::Connection as _;
    let services = Services::load();
    let mut conn = sqlx::PgConnection::connect_with(&services.postgres.pg_options()).await.unwrap();
    let err = sqlx::query("SELECT * FROM vigil_no_such_table").execute(&mut conn).await.unwrap_err();
    assert!(err.to_string().contains(" at line "), "sqlx's own wording has it: {err}");
    let reason = engines::reason(&err);
    assert_eq!(reason, "error returned from database: relation \"vigil_no_such_table\" does not exist");
}
