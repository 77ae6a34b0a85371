//! The harness proves its services are real: wrong passwords are refused by both private
//! databases, and moto and OpenBao answer real API calls.

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::support::Services;

fn pg_options(db: &crate::support::Database, password: &str) -> PgConnectOptions {
    db.pg_options().password(password)
}

fn mysql_options(db: &crate::support::Database, password: &str) -> MySqlConnectOptions {
    db.mysql_options().password(password)
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_enforces_password_authentication() {
    let services = Services::load();
    let db = &services.postgres;
    let err =
        PgConnection::connect_with(&pg_options(db, "not-the-password")).await.expect_err("a wrong password logged in");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    let err = PgConnection::connect_with(
        &db.tls().postgres(PgConnectOptions::new().host(&db.host).port(db.port).username(&db.user)),
    )
    .await
    .expect_err("no password logged in");
    assert!(err.to_string().contains("password"), "{err}");
    let plain = pg_options(db, &db.password).ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let err = PgConnection::connect_with(&plain).await.expect_err("a connection without TLS logged in");
    assert!(err.to_string().contains("no encryption"), "TCP without TLS must be refused: {err}");

    let mut conn = PgConnection::connect_with(&pg_options(db, &db.password)).await.expect("the right password logs in");
    let (version, method): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), (SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(version.starts_with("15."), "expected PostgreSQL 15, got {version}");
    assert_eq!(method, "scram-sha-256", "every pg_hba line must ask for a password");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn mariadb_enforces_password_authentication() {
    let services = Services::load();
    let db = &services.mariadb;
    let err = MySqlConnection::connect_with(&mysql_options(db, "not-the-password"))
        .await
        .expect_err("a wrong password logged in");
    assert!(err.to_string().contains("Access denied"), "{err}");
    let err = MySqlConnection::connect_with(&mysql_options(db, "")).await.expect_err("an empty password logged in");
    assert!(err.to_string().contains("Access denied"), "{err}");
    let plain = mysql_options(db, &db.password).ssl_mode(sqlx::mysql::MySqlSslMode::Disabled);
    let err = MySqlConnection::connect_with(&plain).await.expect_err("a connection without TLS logged in");
    // MariaDB refuses the login (as access denied, or naming secure transport) even with the
    // right password.
    let refused = ["secure transport", "Access denied"].iter().any(|m| err.to_string().contains(m));
    assert!(refused, "TCP without TLS must be refused: {err}");

    let mut conn =
        MySqlConnection::connect_with(&mysql_options(db, &db.password)).await.expect("the right password logs in");
    let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut conn).await.unwrap();
    assert!(version.contains("MariaDB"), "expected MariaDB, got {version}");
    let socket_logins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE plugin = 'unix_socket'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(socket_logins, 0, "no account may log in by unix socket identity");
}

/// A Secrets Manager call in the JSON protocol the AWS SDK speaks. moto reads the service and
/// region from the credential scope and does not check the signature.
async fn secrets_manager(services: &Services, action: &str, body: serde_json::Value) -> reqwest::Response {
    let moto = &services.moto;
    let scope = format!("{}/20261124/{}/secretsmanager/aws4_request", moto.access_key_id, moto.region);
    reqwest::Client::new()
        .post(&moto.endpoint_url)
        .header("X-Amz-Target", format!("secretsmanager.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("Authorization", format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=00"))
        .body(body.to_string())
        .send()
        .await
        .expect("moto answers")
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn moto_answers_secrets_manager_calls() {
    let services = Services::load();
    let name = format!("vigil-harness-{}", std::process::id());
    let created =
        secrets_manager(&services, "CreateSecret", serde_json::json!({"Name": name, "SecretString": "v1"})).await;
    assert!(created.status().is_success(), "CreateSecret: {}", created.text().await.unwrap());
    let got = secrets_manager(&services, "GetSecretValue", serde_json::json!({"SecretId": name})).await;
    let got: serde_json::Value = got.json().await.unwrap();
    assert_eq!(got["SecretString"], "v1");
    assert_eq!(got["VersionStages"], serde_json::json!(["AWSCURRENT"]));
    let missing =
        secrets_manager(&services, "GetSecretValue", serde_json::json!({"SecretId": format!("{name}-absent")})).await;
    assert!(missing.status().is_client_error());
    let error: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(error["__type"], "ResourceNotFoundException");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn openbao_answers_with_the_generated_token_only() {
    let services = Services::load();
    let bao = &services.openbao;
    let client = services.openbao.http();
    let lookup = |token: &str| {
        client
            .get(format!("{}/v1/auth/token/lookup-self", bao.address))
            .header("X-Vault-Token", token.to_owned())
            .send()
    };
    assert_eq!(lookup(&bao.token).await.unwrap().status(), 200);
    assert_eq!(lookup("root").await.unwrap().status(), 403, "the dev server must not accept a guessable token");

    let path = format!("{}/v1/secret/data/vigil-harness-{}", bao.address, std::process::id());
    let written = client
        .post(&path)
        .header("X-Vault-Token", &bao.token)
        .json(&serde_json::json!({"data": {"password": "v1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200, "{}", written.text().await.unwrap());
    let read: serde_json::Value =
        client.get(&path).header("X-Vault-Token", &bao.token).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["data"]["data"]["password"], "v1");
    assert_eq!(read["data"]["metadata"]["version"], 1);
}

#[test]
#[ignore = "needs services: cargo xtask test"]
fn no_service_secret_is_on_any_command_line() {
    let services = Services::load();
    let secrets = [&services.postgres.password, &services.mariadb.password, &services.openbao.token];
    let mut exposed = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if secrets.iter().any(|secret| cmdline.contains(secret.as_str())) {
            exposed.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(exposed.is_empty(), "processes with a service secret in argv: {exposed:?}");
}
