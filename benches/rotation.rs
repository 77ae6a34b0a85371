//! `cargo xtask bench rotation`: 1,000 PostgreSQL secrets rotated with bounded concurrency;
//! total time and p50/p95/p99 per rotation, each variant beside an anchor measured in the same
//! run:
//!
//! - `aws`: alternating users, AWS Secrets Manager on moto, against the same store and database
//!   calls (stage, set, log in, promote) made directly, without the saga, its state rows and its
//!   evidence;
//! - `vault`: single users, Vault KV v2 on OpenBao, against OpenBao's own database static roles
//!   (`database/static-roles`, `rotate-role`, its built-in PostgreSQL plugin) rotating the same
//!   users with the same number of clients. OpenBao neither logs in with the new password nor
//!   records evidence; vigil does both.
//!
//! `--store aws|vault` runs one variant; both run by default. Target: 1,000 rotations in
//! <= 60 s on this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use vigil::clock::SystemClock;
use vigil::context::Ctx;
use vigil::engines::{self, Credential, Endpoint};
use vigil::evidence::{Ledger, LedgerKey};
use vigil::rotation::Rotator;
use vigil::saga::Ended;
use vigil::state::Db;
use vigil::stores::{AwsSecretsManager, SecretStore};

struct Args {
    secrets: usize,
    concurrency: usize,
    aws: bool,
    vault: bool,
}

fn args() -> Args {
    let mut args = Args { secrets: 1000, concurrency: 8, aws: true, vault: true };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--secrets" => args.secrets = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--concurrency" => args.concurrency = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--store" => match it.next().as_deref() {
                Some("aws") => args.vault = false,
                Some("vault") => args.aws = false,
                other => panic!("--store takes aws or vault, not {other:?}"),
            },
            _ => {}
        }
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, total: Duration, mut each: Vec<Duration>) -> Duration {
    each.sort();
    println!(
        "{label:<36} {:>7.2} s total   p50 {:>6.0} ms   p95 {:>6.0} ms   p99 {:>6.0} ms",
        total.as_secs_f64(),
        percentile(&each, 0.50).as_secs_f64() * 1e3,
        percentile(&each, 0.95).as_secs_f64() * 1e3,
        percentile(&each, 0.99).as_secs_f64() * 1e3,
    );
    total
}

#[tokio::main]
async fn main() {
    let args = args();
    let services_file = std::env::var("VIGIL_SERVICES_FILE").expect("run through `cargo xtask bench rotation`");
    let services: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(services_file).unwrap()).unwrap();
    if args.aws {
        aws_variant(&args, &services).await;
    }
    if args.vault {
        vault_variant(&args, &services).await;
    }
}

/// The private PostgreSQL server, from the services file.
struct Pg {
    host: String,
    port: u16,
    admin_user: String,
    admin_password: String,
    /// The CA of the server's certificate: every connection is verify-full.
    ca_file: String,
}

impl Pg {
    fn of(services: &serde_json::Value) -> Self {
        let pg = &services["postgres"];
        Self {
            host: pg["host"].as_str().unwrap().to_owned(),
            port: u16::try_from(pg["port"].as_u64().unwrap()).unwrap(),
            admin_user: pg["user"].as_str().unwrap().to_owned(),
            admin_password: pg["password"].as_str().unwrap().to_owned(),
            ca_file: pg["ca_file"].as_str().unwrap().to_owned(),
        }
    }

    /// A connection as the admin, to the `postgres` database.
    async fn admin(&self) -> sqlx::PgConnection {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.admin_user)
            .password(&self.admin_password)
            .database("postgres");
        sqlx::PgConnection::connect_with(&self.tls().postgres(options)).await.unwrap()
    }

    fn tls(&self) -> vigil::tls::Tls {
        vigil::tls::Tls { mode: vigil::tls::TlsMode::VerifyFull, ca_file: Some(self.ca_file.clone().into()) }
    }

    /// The `tls = …` line of the benchmark's target.
    fn tls_toml(&self) -> String {
        format!("tls = {{ ca_file = \"{}\" }}\n", self.ca_file)
    }
}

/// Rotates secrets `s0`… of `plan` through vigil (sagas, state rows, evidence, checkpoints),
/// `args.concurrency` at a time; prints the timings, verifies the ledger, and returns the total
/// time and how many rotations did not finish.
async fn rotate_all(plan: &vigil::config::Plan, args: &Args, force: bool) -> (Duration, usize) {
    let db = Db::open(&plan.evidence.store).await.unwrap();
    let ledger = Ledger::open(db.clone(), LedgerKey::generate("vigil/bench"), Arc::new(SystemClock)).await.unwrap();
    let rotator = Rotator::new(Ctx::new(plan, &db, &ledger, &SystemClock, CancellationToken::new()));
    let start = Instant::now();
    let results: Vec<(Duration, bool)> = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let rotator = &rotator;
            async move {
                let started = Instant::now();
                let report = rotator.rotate(&format!("s{i}"), force).await.unwrap();
                (started.elapsed(), report.ended == Ended::Done)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|(_, done)| !done).count();
    let total =
        summary("vigil rotate (sagas + evidence)", start.elapsed(), results.into_iter().map(|(t, _)| t).collect());
    let report = vigil::evidence::verify(&db, vigil::evidence::Trust::Genesis).await.unwrap();
    assert!(report.problem.is_none());
    println!("  (evidence: {} records, verified)", report.records);
    db.close().await;
    (total, failed)
}

/// Writes `text` to `dir/name`, 0600, and returns its path.
fn private_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn aws_variant(args: &Args, services: &serde_json::Value) {
    let moto = &services["moto"];
    let pg = Pg::of(services);
    let (host, port, admin_user, admin_password) =
        (pg.host.clone(), pg.port, pg.admin_user.clone(), pg.admin_password.clone());
    let dir = tempfile::tempdir().unwrap();
    let run = format!("b{}", std::process::id());
    println!(
        "rotation benchmark: {} PostgreSQL secrets, alternating users, AWS Secrets Manager (moto), {} at a time",
        args.secrets, args.concurrency
    );

    // Users: a pair per secret, all in one group so their grants agree.
    let setup = Instant::now();
    let mut conn = pg.admin().await;
    let mut sql = format!("CREATE ROLE {run}_group;\n");
    for i in 0..args.secrets {
        for suffix in ["", "_clone"] {
            sql.push_str(&format!(
                "CREATE ROLE {run}_{i}{suffix} LOGIN IN ROLE {run}_group PASSWORD 'initial-{run}-{i}';\n"
            ));
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();

    // Secrets, and configuration naming them.
    let write = |name: &str, text: &str| private_file(dir.path(), name, text);
    let admin =
        write("admin.json", &serde_json::json!({ "username": admin_user, "password": admin_password }).to_string());
    let key_id = write("aws-id", moto["access_key_id"].as_str().unwrap());
    let secret_key = write("aws-secret", moto["secret_access_key"].as_str().unwrap());
    let aws = vigil::aws::AwsSettings {
        region: moto["region"].as_str().unwrap().into(),
        endpoint_url: Some(moto["endpoint_url"].as_str().unwrap().into()),
        credentials: Some(vigil::aws::AwsCredentials {
            access_key_id: vigil::secret::SecretRef::File { path: key_id.clone() },
            secret_access_key: vigil::secret::SecretRef::File { path: secret_key.clone() },
        }),
    };
    let store = AwsSecretsManager::connect(&aws).await.unwrap();
    let sdk = aws_sdk_secretsmanager::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(aws.region.clone()))
            .endpoint_url(aws.endpoint_url.clone().unwrap())
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "testing", "testing", None, None, "bench",
            ))
            .load()
            .await,
    );
    let mut schedule = format!(
        "[targets.db]\nkind = \"postgres\"\nhost = \"{host}\"\nport = {port}\ndatabase = \"postgres\"\nadmin = {{ file = \"{}\" }}\n{}",
        admin.display(),
        pg.tls_toml()
    );
    let created = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let sdk = sdk.clone();
            let value = serde_json::json!({ "engine": "postgres", "host": host, "port": port, "username": format!("{run}_{i}"), "password": format!("initial-{run}-{i}"), "dbname": "postgres" });
            let name = format!("bench/{run}/{i}");
            async move { sdk.create_secret().name(name).secret_string(value.to_string()).send().await.unwrap() }
        })
        .buffer_unordered(16)
        .count()
        .await;
    assert_eq!(created, args.secrets);
    for i in 0..args.secrets {
        schedule.push_str(&format!(
            "\n[secrets.s{i}]\nkind = \"postgres_password\"\nstore = \"aws_secrets_manager\"\npath = \"bench/{run}/{i}\"\ntarget = \"db\"\nusername = \"{run}_{i}\"\nstrategy = \"alternating_users\"\n"
        ));
    }
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::write(dir.path().join("schedules/bench.toml"), schedule).unwrap();
    std::fs::write(
        dir.path().join("vigil.toml"),
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[aws]\nregion = \"{}\"\nendpoint_url = \"{}\"\naccess_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ file = \"{}\" }}\n",
            aws.region,
            aws.endpoint_url.clone().unwrap(),
            key_id.display(),
            secret_key.display()
        ),
    )
    .unwrap();
    let plan = vigil::config::load(&dir.path().join("vigil.toml")).unwrap().plan;
    println!("  (set up {} user pairs and secrets in {:.1} s)", args.secrets, setup.elapsed().as_secs_f64());

    // Baseline: the calls a rotation makes, made directly, for the first half of the pairs' clones.
    let engine: Arc<dyn engines::DbEngine> = Arc::from(engines::connect(
        vigil::engines::Engine::Postgres,
        Endpoint { host: host.clone(), port, database: Some("postgres".into()), tls: pg.tls() },
        Credential { username: admin_user.clone(), password: SecretString::from(admin_password.clone()) },
    ));
    let policy = vigil::secret::PasswordPolicy::default();
    let start = Instant::now();
    let timings: Vec<Duration> = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let (store, engine, policy) = (&store, engine.clone(), &policy);
            let path = format!("bench/{run}/{i}");
            let user = format!("{run}_{i}_clone");
            async move {
                let started = Instant::now();
                let token = format!("00000000-0000-4000-8000-{i:012}");
                let password = policy.generate();
                let value = serde_json::json!({ "username": user, "password": password.expose_secret() }).to_string();
                store.put_pending(&path, &token, &SecretString::from(value)).await.unwrap();
                engine.set_password(&user, &password).await.unwrap();
                engine.test_login(&Credential { username: user.clone(), password }, &[]).await.unwrap();
                store.promote(&path, &token).await.unwrap();
                started.elapsed()
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let baseline = summary("baseline (bare store and DB calls)", start.elapsed(), timings);

    // vigil: full sagas, with state rows, evidence and checkpoints. The baseline left each pair
    // flipped to its clone, so vigil rotates the other user back.
    let (vigil, failed) = rotate_all(&plan, args, true).await;
    println!(
        "vigil took {:.2}x the baseline; {failed} rotations failed; target 1000 in <= 60 s: {}",
        vigil.as_secs_f64() / baseline.as_secs_f64(),
        if vigil <= Duration::from_secs(60) * args.secrets as u32 / 1000 { "met" } else { "MISSED" }
    );

    let mut cleanup = String::new();
    for i in 0..args.secrets {
        cleanup.push_str(&format!("DROP ROLE {run}_{i}; DROP ROLE {run}_{i}_clone;\n"));
    }
    cleanup.push_str(&format!("DROP ROLE {run}_group;\n"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(cleanup)).execute(&mut conn).await.unwrap();
}

/// The Vault KV variant: OpenBao's own static-role rotation of the same users is the anchor.
async fn vault_variant(args: &Args, services: &serde_json::Value) {
    let bao = &services["openbao"];
    let pg = Pg::of(services);
    let (host, port, admin_user, admin_password) =
        (pg.host.clone(), pg.port, pg.admin_user.clone(), pg.admin_password.clone());
    let (address, token) = (bao["address"].as_str().unwrap().to_owned(), bao["token"].as_str().unwrap().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let run = format!("v{}", std::process::id());
    println!(
        "\nrotation benchmark: {} PostgreSQL secrets, single users, Vault KV v2 (OpenBao), {} at a time",
        args.secrets, args.concurrency
    );
    let setup = Instant::now();
    let mut conn = pg.admin().await;
    let mut sql = String::new();
    for i in 0..args.secrets {
        sql.push_str(&format!("CREATE ROLE {run}_{i} LOGIN PASSWORD 'initial-{run}-{i}';\n"));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();

    // OpenBao's database secrets engine on the same server, with SCRAM verifiers as vigil sets.
    // OpenBao runs with TLS; its CA is in the services file.
    let bao_ca = bao["ca_file"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&bao_ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let bao_call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let request = http.request(method, format!("{address}/v1/{path}")).header("X-Vault-Token", &token);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move { request.send().await.unwrap() }
    };
    // Mounted already by an earlier run is fine.
    let _ =
        bao_call(reqwest::Method::POST, "sys/mounts/database", Some(serde_json::json!({ "type": "database" }))).await;
    let configured = bao_call(
        reqwest::Method::POST,
        "database/config/vigil-bench",
        Some(serde_json::json!({
            "plugin_name": "postgresql-database-plugin",
            // OpenBao verifies the server as vigil does.
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}", pg.ca_file),
            "username": admin_user,
            "password": admin_password,
            "allowed_roles": "*",
            "password_authentication": "scram-sha-256",
            "max_open_connections": args.concurrency,
        })),
    )
    .await;
    assert!(configured.status().is_success(), "configure OpenBao's PostgreSQL plugin: {}", configured.status());
    let roles = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let body = serde_json::json!({ "db_name": "vigil-bench", "username": format!("{run}_{i}"), "rotation_period": "768h" });
            let call = bao_call(reqwest::Method::POST, &format!("database/static-roles/{run}-{i}"), Some(body));
            async move { assert!(call.await.status().is_success(), "create static role {i}") }
        })
        .buffer_unordered(args.concurrency)
        .count()
        .await;
    assert_eq!(roles, args.secrets);
    println!("  (set up {} users and static roles in {:.1} s)", args.secrets, setup.elapsed().as_secs_f64());

    // Anchor: OpenBao rotates each user's password itself.
    let start = Instant::now();
    let timings: Vec<Duration> = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let call = bao_call(reqwest::Method::POST, &format!("database/rotate-role/{run}-{i}"), None);
            async move {
                let started = Instant::now();
                let response = call.await;
                assert!(response.status().is_success(), "rotate-role {i}: {}", response.status());
                started.elapsed()
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let anchor = summary("OpenBao rotate-role (static roles)", start.elapsed(), timings);

    // vigil: the same users, their current credentials (as OpenBao left them) in KV v2.
    let seeded = futures_util::stream::iter(0..args.secrets)
        .map(|i| {
            let creds = bao_call(reqwest::Method::GET, &format!("database/static-creds/{run}-{i}"), None);
            let bao_call = &bao_call;
            let (host, run) = (&host, &run);
            async move {
                let creds: serde_json::Value = creds.await.json().await.unwrap();
                let value = serde_json::json!({ "data": {
                    "engine": "postgres", "host": host, "port": port, "dbname": "postgres",
                    "username": creds["data"]["username"], "password": creds["data"]["password"],
                } });
                let written =
                    bao_call(reqwest::Method::POST, &format!("secret/data/bench/{run}/{i}"), Some(value)).await;
                assert!(written.status().is_success(), "seed KV {i}");
            }
        })
        .buffer_unordered(args.concurrency)
        .count()
        .await;
    assert_eq!(seeded, args.secrets);
    let admin = private_file(
        dir.path(),
        "admin.json",
        &serde_json::json!({ "username": admin_user, "password": admin_password }).to_string(),
    );
    let token_file = private_file(dir.path(), "bao-token", &token);
    let mut schedule = format!(
        "[targets.db]\nkind = \"postgres\"\nhost = \"{host}\"\nport = {port}\ndatabase = \"postgres\"\nadmin = {{ file = \"{}\" }}\n{}",
        admin.display(),
        pg.tls_toml()
    );
    for i in 0..args.secrets {
        schedule.push_str(&format!(
            "\n[secrets.s{i}]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"bench/{run}/{i}\"\ntarget = \"db\"\nusername = \"{run}_{i}\"\n"
        ));
    }
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::write(dir.path().join("schedules/bench.toml"), schedule).unwrap();
    std::fs::write(
        dir.path().join("vigil.toml"),
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[vault]\naddress = \"{address}\"\ntoken = {{ file = \"{}\" }}\nca_file = \"{bao_ca}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let plan = vigil::config::load(&dir.path().join("vigil.toml")).unwrap().plan;
    let (vigil, failed) = rotate_all(&plan, args, false).await;
    println!(
        "vigil took {:.2}x OpenBao's static-role rotation; {failed} rotations failed; vigil tests each new password with a login and records every step, OpenBao does neither",
        vigil.as_secs_f64() / anchor.as_secs_f64(),
    );

    // OpenBao forgets the roles before the users go.
    futures_util::stream::iter(0..args.secrets)
        .map(|i| bao_call(reqwest::Method::DELETE, &format!("database/static-roles/{run}-{i}"), None))
        .buffer_unordered(args.concurrency)
        .count()
        .await;
    let mut cleanup = String::new();
    for i in 0..args.secrets {
        cleanup.push_str(&format!("DROP ROLE {run}_{i};\n"));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(cleanup)).execute(&mut conn).await.unwrap();
}
