//! Shared test support: the services file `cargo xtask services up` writes, and a runner for
//! the real `vigil` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod issuer;

use serde::Deserialize;

/// The connection settings of the local services, as `cargo xtask services up` records them.
#[derive(Debug, Deserialize)]
pub struct Services {
    pub moto: Moto,
    pub openbao: OpenBao,
    pub postgres: Database,
    pub mariadb: Database,
    /// The pgBackRest stanza the private PostgreSQL archives its WAL to.
    pub pgbackrest: PgBackRest,
    /// compliance-trestle and Chromium, for the report tests.
    pub report_tools: ReportTools,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportTools {
    pub trestle: PathBuf,
    /// A Python with `jsonschema`.
    pub python: PathBuf,
    pub chromium: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PgBackRest {
    pub config: PathBuf,
    pub stanza: String,
    /// The repository folder.
    pub repo: PathBuf,
    pub cipher_pass: String,
    pub archive_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
pub struct Moto {
    pub endpoint_url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug, Deserialize)]
pub struct OpenBao {
    pub address: String,
    pub token: String,
    /// The CA of its certificate: OpenBao runs with TLS.
    pub ca_file: PathBuf,
}

impl OpenBao {
    /// An HTTP client for OpenBao's API that trusts its CA, as an operator's tooling would.
    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_file).unwrap();
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The server's private folder (data in `data/`).
    pub data_dir: PathBuf,
}

impl Database {
    /// The `tls = …` line of a target on this server: verified against the services' CA.
    pub fn tls_toml(&self) -> String {
        format!("tls = {{ mode = \"verify-full\", ca_file = \"{}\" }}", self.ca_file.display())
    }

    /// The same settings for a connection made by a test.
    pub fn tls(&self) -> vigil::tls::Tls {
        vigil::tls::Tls { mode: vigil::tls::TlsMode::VerifyFull, ca_file: Some(self.ca_file.clone()) }
    }

    /// Superuser connection options, TLS verified.
    pub fn pg_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.tls().postgres(
            sqlx::postgres::PgConnectOptions::new()
                .host(&self.host)
                .port(self.port)
                .username(&self.user)
                .password(&self.password)
                .database(&self.database),
        )
    }

    /// Superuser connection options, TLS verified.
    pub fn mysql_options(&self) -> sqlx::mysql::MySqlConnectOptions {
        self.tls().mysql(
            sqlx::mysql::MySqlConnectOptions::new()
                .host(&self.host)
                .port(self.port)
                .username(&self.user)
                .password(&self.password)
                .database(&self.database),
        )
    }

    /// Where this server listens, TLS verified, for engines built by tests.
    pub fn endpoint(&self) -> vigil::engines::Endpoint {
        vigil::engines::Endpoint {
            host: self.host.clone(),
            port: self.port,
            database: Some(self.database.clone()),
            tls: self.tls(),
        }
    }
}

impl Services {
    /// Reads `$VIGIL_SERVICES_FILE`, or `target/services/services.json` of this checkout.
    pub fn load() -> Self {
        let path = std::env::var_os("VIGIL_SERVICES_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/services/services.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!("cannot read {}: {err}; start the services with `cargo xtask services up`", path.display())
        });
        serde_json::from_str(&text).expect("services file parses")
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The result of one `vigil` run, shown whole when an assertion fails.
pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    /// Both streams, for "this never appears anywhere" checks.
    pub fn all_output(&self) -> String {
        self.stdout() + &self.stderr()
    }

    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            expected,
            "vigil {:?} exited {}, expected {expected}\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            self.code(),
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|err| panic!("vigil {:?} printed no JSON ({err}):\n{}", self.args, self.stdout()))
    }
}

/// Runs the real `vigil` binary in `dir` with `args`, with no inherited VIGIL_CONFIG or RUST_LOG.
pub fn vigil(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("VIGIL_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run vigil");
    Run { args: args.iter().map(ToString::to_string).collect(), output }
}

impl Services {
    /// `[aws]` settings for moto, credentials by file reference as a deployment would give them.
    pub fn aws(&self, dir: &Path) -> vigil::aws::AwsSettings {
        vigil::aws::AwsSettings {
            region: self.moto.region.clone(),
            endpoint_url: Some(self.moto.endpoint_url.clone()),
            credentials: Some(vigil::aws::AwsCredentials {
                access_key_id: secret_file(dir, "aws-key-id", &self.moto.access_key_id),
                secret_access_key: secret_file(dir, "aws-secret-key", &self.moto.secret_access_key),
            }),
        }
    }

    /// `[vault]` settings for OpenBao, the token by file reference.
    pub fn vault(&self, dir: &Path) -> vigil::stores::VaultSettings {
        vigil::stores::VaultSettings {
            address: self.openbao.address.clone(),
            token: secret_file(dir, "vault-token", &self.openbao.token),
            kv_mount: "secret".into(),
            transit_mount: "transit".into(),
            namespace: None,
            ca_file: Some(self.openbao.ca_file.clone()),
        }
    }
}

/// Writes `value` to a 0600 file in `dir` and returns the reference to it.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> vigil::secret::SecretRef {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    vigil::secret::SecretRef::File { path }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Runs administrative SQL on a private server as its superuser.
pub async fn admin_sql(engine: vigil::engines::Engine, db: &Database, statements: &[String]) {
    use sqlx::Connection as _;
    match engine {
        vigil::engines::Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect_with(&db.pg_options()).await.unwrap();
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut conn).await.unwrap();
            }
        }
        vigil::engines::Engine::Mysql => {
            let mut conn = sqlx::MySqlConnection::connect_with(&db.mysql_options()).await.unwrap();
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut conn).await.unwrap();
            }
        }
    }
}

impl Services {
    /// The AWS SDK configuration for moto, as an application would load it.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.moto.region.clone()))
            .endpoint_url(&self.moto.endpoint_url)
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                &self.moto.access_key_id,
                &self.moto.secret_access_key,
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    /// A Secrets Manager client for moto.
    pub async fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config().await)
    }

    /// An S3 client for moto, path-style since its buckets have no DNS names.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk_config().await).force_path_style(true).build(),
        )
    }
}

/// Which secret store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// AWS Secrets Manager (moto).
    Aws,
    /// Vault KV v2 (OpenBao).
    Vault,
}

impl Store {
    /// The name in configuration.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Aws => "aws_secrets_manager",
            Self::Vault => "vault_kv",
        }
    }
}

impl Services {
    /// Creates the secret `path` holding `value` in `store`, as the platform team's own tooling
    /// would, and returns vigil's client for that store.
    pub async fn seed(
        &self,
        store: Store,
        dir: &Path,
        path: &str,
        value: &serde_json::Value,
    ) -> Box<dyn vigil::stores::SecretStore> {
        match store {
            Store::Aws => {
                let client = self.secrets_manager().await;
                client.create_secret().name(path).secret_string(value.to_string()).send().await.unwrap();
                Box::new(vigil::stores::AwsSecretsManager::connect(&self.aws(dir)).await.unwrap())
            }
            Store::Vault => {
                let response = self
                    .openbao
                    .http()
                    .post(format!("{}/v1/secret/data/{path}", self.openbao.address))
                    .header("X-Vault-Token", &self.openbao.token)
                    .json(&serde_json::json!({ "data": value }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                Box::new(vigil::stores::VaultKv::connect(&self.vault(dir)).unwrap())
            }
        }
    }

    /// Writes `dir/vigil.toml` with `[aws]` (moto) and `[vault]` (OpenBao), credentials by
    /// file reference, state under `dir/data` and schedules under `dir/schedules`; returns its
    /// path.
    pub fn write_controller_config(&self, dir: &Path) -> PathBuf {
        let aws = self.aws(dir);
        let vault = self.vault(dir);
        let file_of = |r: &vigil::secret::SecretRef| match r {
            vigil::secret::SecretRef::File { path } => path.display().to_string(),
            _ => unreachable!("test credentials are files"),
        };
        let credentials = aws.credentials.as_ref().unwrap();
        let config = dir.join("vigil.toml");
        std::fs::write(
            &config,
            format!(
                "[controller]\ndata_dir = \"data\"\n\n[aws]\nregion = \"{}\"\nendpoint_url = \"{}\"\n\
                 access_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ file = \"{}\" }}\n\n\
                 [vault]\naddress = \"{}\"\ntoken = {{ file = \"{}\" }}\nca_file = \"{}\"\n",
                aws.region,
                aws.endpoint_url.unwrap(),
                file_of(&credentials.access_key_id),
                file_of(&credentials.secret_access_key),
                vault.address,
                file_of(&vault.token),
                self.openbao.ca_file.display(),
            ),
        )
        .unwrap();
        config
    }
}

impl Services {
    /// GETs `api_path` (e.g. `secret/metadata/a/b`) from OpenBao with the root token, as an
    /// operator's tooling would read it.
    pub async fn vault_get(&self, api_path: &str) -> serde_json::Value {
        self.openbao
            .http()
            .get(format!("{}/v1/{api_path}", self.openbao.address))
            .header("X-Vault-Token", &self.openbao.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// How a process sent SIGINT ended.
#[cfg(feature = "failpoints")]
#[derive(Debug)]
pub struct Interrupted {
    /// Its exit code (none when a signal killed it).
    pub code: Option<i32>,
    /// Everything it wrote on standard error.
    pub stderr: String,
    /// From the signal to its exit.
    pub elapsed: std::time::Duration,
    /// Its `/proc/PID/limits` when the marker showed.
    pub limits: String,
}

/// Sends SIGINT to `child` (spawned with piped stderr) as soon as its standard error shows a
/// line containing `marker`, as a person pressing Ctrl-C at that moment would, and waits for it
/// to exit.
#[cfg(feature = "failpoints")]
pub fn interrupt_when(mut child: std::process::Child, marker: &str) -> Interrupted {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) if line.contains(marker) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("{marker:?} never showed on stderr:\n{}", reader.join().unwrap_or_default());
            }
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let signalled = std::time::Instant::now();
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -INT failed");
    let status = child.wait().unwrap();
    let elapsed = signalled.elapsed();
    Interrupted { code: status.code(), stderr: reader.join().unwrap_or_default(), elapsed, limits }
}
